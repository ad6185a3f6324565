"""Settings: flags > `PKGCKPT_*` environment > config file(s) > defaults.

Config files are TOML with the same names as the settings below (`store`, `key`,
`env = [...]`, `quiet_ms`, ...). `/etc/pkgckpt/config.toml` (the image's) is read first,
then `~/.config/pkgckpt/config.toml` (the user's), then `--config FILE`; later files
override earlier ones key by key. The environment variable of a setting is its name in
upper case with a `PKGCKPT_` prefix; list settings take `os.pathsep`-separated values,
but in the lists whose entries may be URLs (`URL_LISTS`) a URL keeps its colons
(`_split`).

Paths are made absolute where they are read (`_absolute`, `_absolute_links`): restore's
installers and the interpreters asked for their layout run in a private, empty working
directory, where a relative path names nothing, and an environment's path is recorded in
the manifest. A relative path is relative to the working directory pkgckpt started in,
but in a config file a `find_links` path is relative to that file's directory. URLs stay
as they are.
"""

from __future__ import annotations

import contextlib
import os
import stat
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import msgspec

from .digest import sha256
from .errors import PkgckptError, UsageError
from .logs import getLogger
from .trust import read_owned

SYSTEM_CONFIG = Path("/etc/pkgckpt/config.toml")

MAX_SECONDS = 86_400.0
"""The largest value of a setting in seconds (timeout, shutdown_timeout, jitter, ...): a
day. Beyond it a number is a slip (1e9, or `inf` for "no bound", which is 0 where there is
one), and the waits it reaches refuse it (OverflowError). NaN is no number of seconds."""

MAX_MS = 86_400_000
"""The largest value of a setting in milliseconds (quiet_ms, max_delay_ms): a day, as for
seconds. A larger window is a slip (10**12: no checkpoint until the daemon stops)."""

INT_BOUNDS: dict[str, tuple[int, int, str]] = {
    "store_uid": (0, 2**32 - 2, "a uid"),  # uid_t; (uid_t)-1 is no uid
    "max_download_bytes": (0, 2**50, "bytes"),
    "artifact_quota": (0, 2**50, "bytes"),
    "keep_generations": (1, 10_000, "generations"),
    "quiet_ms": (0, MAX_MS, "milliseconds"),
    "max_delay_ms": (0, MAX_MS, "milliseconds"),
    "artifact_retries": (0, 1_000, "retries"),
}
"""Each integer setting's least and largest value, and what it counts. Beyond them a
number is a slip, and the code it reaches fails on it (10**400 ms is no float; past
1,024 retries the backoff's 2.0**n overflows): a usage error instead. Bytes: up to a PiB;
retries: a week at the backoff's 10 minutes; generations: 10,000 files per key."""

DISCOVER = ("kernels", "conda", "user-site", "r")
"""The values of the `discover` setting, all on by default."""

log = getLogger(__name__)


def user_config(environ: Mapping[str, str]) -> Path:
    base = environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "pkgckpt" / "config.toml"


def default_store() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "pkgckpt"


GENERIC_USERS = ("jovyan", "rstudio", "root")
"""Login names that images give every user (Jupyter Docker Stacks, Rocker): no key."""


def default_key(environ: Mapping[str, str] | None = None) -> str:
    """JUPYTERHUB_USER (JupyterHub sets it in every single-user server), else the login."""
    environ = os.environ if environ is None else environ
    if environ.get("JUPYTERHUB_USER"):
        return environ["JUPYTERHUB_USER"]
    import getpass  # with termios: only where no name is given, as in a JupyterHub pod

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        # A container user without a passwd entry (OpenShift's random uids).
        return f"uid-{os.getuid()}"


def check_key(config: Config) -> None:
    """Refuse a shared store when the key fell back to a name every user of the image has.

    Jupyter Docker Stacks run every user as `jovyan`: keyed by the login, all sessions
    would write one directory of the store, and its owner check would pass for all.
    """
    name = config.key_defaulted
    if name is None or name not in config.generic_users:
        return
    # The default however it is written: `DIR/../pkgckpt`, relative (see `status_path`).
    if os.path.abspath(config.store) == os.path.abspath(default_store()):  # noqa: PTH100
        return
    if config.key_from_hub:
        fell_back = f"JUPYTERHUB_USER is {name!r}, a name"
        hint = ""
    else:
        fell_back = f"the login name {name!r} is one"
        hint = " (JupyterHub sets JUPYTERHUB_USER, which is used when present)"
    raise UsageError(
        f"no key is set, and {fell_back} every user of this image shares: on the store "
        f"{config.store} all sessions would write one directory. Set a key per user: "
        f"PKGCKPT_KEY=<user> in the environment{hint}, `key` in the config file, or --key"
    )


def runtime_dir() -> Path:
    """Where this container keeps its baseline and the daemon its status file."""
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg:
        return Path(xdg) / "pkgckpt"
    return Path(os.environ.get("TMPDIR") or "/tmp") / f"pkgckpt-{os.getuid()}"


def container_id() -> str:
    """Names this container's run: the host name, the boot id, the start of its pid 1.

    A home directory outlives the container: a baseline kept there by an earlier run (of
    another image, maybe) must not be taken for this one's.
    """
    # uname's node name is socket.gethostname(), without socket's 0.6 MB in the daemon.
    parts = [os.uname().nodename]
    with contextlib.suppress(OSError):
        parts.append(Path("/proc/sys/kernel/random/boot_id").read_text().strip())
    with contextlib.suppress(OSError, IndexError):
        # The start time is field 22, counted after the end of the command name's ")".
        parts.append(Path("/proc/1/stat").read_text().rpartition(")")[2].split()[19])
    return sha256("\0".join(parts).encode()).hexdigest()[:16]


def fallback_runtime_dir() -> Path:
    """The private runtime directory used when the usual one is someone else's.

    Deterministic, so that `snapshot` finds the daemon there; in the user's cache (not
    in /tmp, where another user could take the name first); one per container run.
    """
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "pkgckpt" / f"run-{container_id()}"


def untrusted(path: Path) -> str | None:
    """Why the existing directory `path` is not this user's alone; None when it is.

    Its parent counts too: whoever may rename entries there could swap the directory.
    """
    st = path.lstat()
    if not stat.S_ISDIR(st.st_mode):
        return "not a directory (or a symlink)"
    if st.st_uid != os.geteuid():
        return f"owned by uid {st.st_uid}"
    if stat.S_IMODE(st.st_mode) & 0o077:
        return f"open to group or others (mode {stat.S_IMODE(st.st_mode):04o})"
    parent = path.parent.stat()
    if parent.st_uid not in (0, os.geteuid()):
        return f"in {path.parent}, owned by uid {parent.st_uid}"
    if parent.st_mode & 0o022 and not parent.st_mode & stat.S_ISVTX:
        return f"in {path.parent}, writable by others without the sticky bit"
    return None


def read_private(path: Path) -> bytes | None:
    """A runtime directory file's bytes (up to 1 MiB) when it and its directory are this
    user's alone, else None: what is in a shared /tmp may have been planted."""
    try:
        if untrusted(path.parent) is not None:
            return None
        return read_owned(path, 1 << 20, forbid=0o077)
    except OSError:
        return None


_WARNED: set[Path] = set()


def _passed_over(path: Path, why: str, instead: Path) -> None:
    if path not in _WARNED:
        _WARNED.add(path)
        log.warning("runtime directory %s is not ours (%s): using %s", path, why, instead)


def find_runtime_dir(path: Path) -> Path:
    """The runtime directory to read: `path` when missing or ours alone, else the fallback.

    Creates nothing: read-only commands (status, snapshot) use it.
    """
    try:
        why = untrusted(path)
    except FileNotFoundError:
        return _moved() or path
    except OSError as e:
        why = e.strerror or str(e)
    if why is None:
        return path
    fallback = fallback_runtime_dir()
    _passed_over(path, why, fallback)
    return fallback


def _moved() -> Path | None:
    """The private fallback, when this container's run has one: it passed the usual
    directory over earlier, and that directory gone since (whoever planted it removed
    it) does not move the runtime directory back, away from what is kept there (the
    container's baseline, the daemon's status)."""
    fallback = fallback_runtime_dir()
    try:
        return fallback if untrusted(fallback) is None else None
    except OSError:
        return None


def _make_private(path: Path) -> str | None:
    try:
        for d in reversed([path, *path.parents]):
            if not os.path.lexists(d):
                with contextlib.suppress(FileExistsError):
                    d.mkdir(mode=0o700)
        return untrusted(path)
    except OSError as e:
        return e.strerror or str(e)


def ensure_runtime_dir(path: Path) -> Path:
    """The runtime directory to write in: `path`, created 0700 when missing, if it is ours
    alone; else the private fallback (said once). Never fails because of the other user.

    `/tmp` is shared: another user could plant `/tmp/pkgckpt-<uid>` (or a symlink of that
    name) to read our status or feed us a baseline or a daemon pid. Nothing in one that is
    not ours is read or written.
    """
    if not os.path.lexists(path):
        moved = _moved()
        if moved is not None:
            return moved
    why = _make_private(path)
    if why is None:
        return path
    fallback = fallback_runtime_dir()
    _passed_over(path, why, fallback)
    problem = _make_private(fallback)
    if problem is None:
        return fallback
    raise PkgckptError(
        f"runtime directory {path} is not ours ({why}), and neither is the fallback "
        f"{fallback} ({problem}): set PKGCKPT_RUNTIME_DIR to a private directory"
    )


class Config(msgspec.Struct, frozen=True, kw_only=True):
    store: Path = msgspec.field(default_factory=default_store)
    key: str = msgspec.field(default_factory=default_key)
    store_uid: int | None = None
    """The uid owning what this user writes on the store, where the NFS server maps it
    (all_squash, anonuid); ownership is checked against it. None: this process's uid.
    Every file then has that one uid: `seal.guard` says what keeps users apart."""
    store_secret_file: Path | None = None
    """A per-user secret (0600, the user's, not on the store) that seals manifests."""
    generic_users: tuple[str, ...] = GENERIC_USERS
    """Login names shared by every user of the image: never a key on a shared store."""
    key_defaulted: str | None = None
    """The name the key fell back to when none was set (set by `load` only); see check_key."""
    key_from_hub: bool = False
    """That name is JUPYTERHUB_USER's, not the login's (set by `load` only)."""
    env: tuple[Path, ...] = ()
    """Python prefixes, exactly these; empty: `own_env` and what discovery finds."""
    own_env: Path | None = None
    """The environment pkgckpt takes as its own: tracked with its user site, and the one
    whose Jupyter data directory and conda root discovery reads (`inventory.own_env`).
    None: the environment running pkgckpt (`sys.prefix`). For an image that runs pkgckpt
    from a venv of its own beside the notebook server's environment."""
    r_lib: tuple[Path, ...] = ()
    """R libraries; given, exactly these are tracked. Empty: the libraries R uses (see
    `discover`)."""
    r_discover: bool = False
    """Track the libraries R uses even beside `r_lib`."""
    r_home: Path | None = None
    """The R installation (`R.home()`); None: the Rscript and R on PATH."""
    discover: tuple[str, ...] = DISCOVER
    """What is found without being named (see `discovery`): leave a source out to switch
    it off. `r`: the libraries R uses when no `r_lib` is given."""
    r_lock_stale: float = 600.0
    """Seconds after which a `00LOCK-*` directory nothing writes under is left over from
    an interrupted install, not an install in progress."""
    max_download_bytes: int = 2 << 30
    """The largest source archive restore downloads or copies."""
    baseline: Path | None = None
    runtime_dir: Path = msgspec.field(default_factory=runtime_dir)
    keep_generations: int = 5
    """Generations kept on the store, the current one included: how far `revert` goes back."""
    # daemon
    quiet_ms: int = 500
    max_delay_ms: int = 30_000
    shutdown_timeout: float = 10.0
    rescan_interval: float = 0.0
    """Backstop full rescan every N seconds; 0 disables it (idle then costs nothing)."""
    metrics_file: Path | None = None
    """Prometheus text the daemon rewrites after each commit and error (textfile collector)."""
    # artifacts
    artifacts: bool = True
    """Capture every recorded package as a file on the store (`pkgckpt.artifacts`)."""
    artifact_quota: int = 5 << 30
    """Bytes of artifacts kept under one key; a capture that would exceed it is skipped."""
    artifact_pool: Path | None = None
    """A content-addressed directory shared by every user (`sha256/<hex>`, mode 1777)."""
    artifact_retries: int = 6
    """Times the daemon retries a failed capture (backoff from 5 s, doubling, at most
    10 min apart) before it gives up until its restart; 0: never while it runs."""
    # restore
    timeout: float = 900.0
    jitter: float = 0.0
    """Seconds: a container's first restore waits a random 0 to `jitter` s before it reads
    the store, spreading the restores of pods that start together (jitter.py)."""
    installer: str = "auto"
    index_url: str | None = None
    find_links: tuple[str, ...] = ()
    no_index: bool = False
    keep_removed: bool = False
    on_conflict: str = "image"
    """On another image, a recorded change that would break an image package: "image"
    holds it back (exit 3), "user" installs it anyway (see restore/rebase.py)."""
    r_repo: tuple[str, ...] = ()
    conda_client: tuple[str, ...] = ("mamba", "micromamba", "conda")
    """conda clients restore tries, in order: names on PATH or absolute paths."""
    conda_channels: tuple[str, ...] = ("conda-forge",)
    """The only channels conda packages are restored from (`--override-channels`)."""

    def __post_init__(self) -> None:
        unknown = sorted(set(self.discover) - set(DISCOVER))
        if unknown:
            raise UsageError(
                f"discover: unknown value(s) {', '.join(unknown)}; known: {', '.join(DISCOVER)}"
            )
        if self.on_conflict not in ("image", "user"):
            raise UsageError(f"on_conflict: {self.on_conflict!r} is neither 'image' nor 'user'")

    def python_envs(self) -> tuple[Path, ...]:
        return self.env or (self.own_env or Path(sys.prefix),)

    def r_libs(self) -> tuple[Path, ...]:
        """The R libraries named in the settings; the ones R uses are found in inventory."""
        return self.r_lib


_FIELDS = {
    name: Config.__annotations__[name]
    for name in Config.__struct_fields__
    if name not in ("key_defaulted", "key_from_hub")
}
"""Setting -> its type as written: a string (annotations are not evaluated), which
`_coerce` reads as it is, without `typing.get_type_hints`."""


LINK_URL_SCHEMES = ("http", "https", "file")
"""`find_links` entries with these schemes are URLs, passed on as they are; in a variable
of `URL_LISTS`, a URL with one of them keeps its colons (`_split`)."""

URL_LISTS = frozenset({"find_links", "r_repo", "conda_channels"})
"""List settings whose entries may be URLs: an R repository, a conda channel and a
find-links place are as often `https://...` as a name or a path."""


def _split(value: str, urls: bool) -> list[str]:
    """A list variable's entries, `os.pathsep`-separated. In a list of URLs, the colons of
    a URL do not separate: a scheme (`LINK_URL_SCHEMES`) followed by an entry that starts
    with `//` is one URL, and so are the entries that follow while its host part is still
    open (no `/` after the `//` yet) and they go on with it (`_goes_on`): a port
    (`https://host:8443/wheels`), a password (`https://user:secret@host/`), an IPv6
    address (`http://[::1]:8080/`). `https://host:/opt/wheels` is two entries, and so are
    `https://host:https://other/` and `https://host:channel`."""
    pieces = value.split(os.pathsep)
    if not urls or os.pathsep != ":":
        return pieces
    out: list[str] = []
    url_open = False  # the last entry is a URL whose host part goes on in the next piece
    for piece in pieces:
        starts = piece.startswith("//") and bool(out) and out[-1].lower() in LINK_URL_SCHEMES
        if starts or (url_open and _goes_on(out[-1].partition("://")[2], piece)):
            out[-1] += ":" + piece
            url_open = not any(c in out[-1].partition("://")[2] for c in "/?#")
        else:
            out.append(piece)
            url_open = False
    return out


def _goes_on(host: str, piece: str) -> bool:
    """Whether `piece`, after a colon, is more of the URL host part `host` (what follows
    `//`, up to that colon): within an IPv6 address's brackets, a password (up to `@`),
    or a port (digits, up to the path). Anything else (a scheme, a path, a conda
    channel's name) starts the next entry."""
    if host.count("[") > host.count("]"):
        return True
    head = piece.split("/", 1)[0].split("?", 1)[0].split("#", 1)[0]
    if "@" in head and "@" not in host:
        return True
    return head.isdigit() and head.isascii()


def _coerce(name: str, value: Any, origin: str) -> Any:
    """Turn a file, environment or flag value into the field's type, or raise UsageError."""
    kind = str(_FIELDS[name])
    try:
        if kind.startswith("tuple"):
            if isinstance(value, str):
                items = _split(value, name in URL_LISTS)
            elif isinstance(value, (list, tuple)):
                items = [_text(i) for i in value]
            else:  # a TOML table would be the list of its keys
                raise ValueError(value)
            items = [i for i in items if i != ""]
            if "Path" in kind:
                return tuple(_absolute(Path(i).expanduser(), name, origin) for i in items)
            return tuple(items)
        if kind == "bool":
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("1", "true", "yes", "on"):
                return True
            if str(value).lower() in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(value)
        if kind in ("int", "int | None"):
            # A TOML float is taken when whole (500.0), not cut (1.5) nor overflowing (inf).
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError(value)
            count = int(value)
            low, high, what = INT_BOUNDS[name]
            if not low <= count <= high:
                raise UsageError(
                    f"{origin}: invalid value {value!r} for {name}: {what}, from {low} to {high}"
                )
            return count
        if kind == "float":
            if isinstance(value, bool):
                raise ValueError(value)
            number = float(value)
            if not 0 <= number <= MAX_SECONDS:  # NaN fails too
                raise UsageError(
                    f"{origin}: invalid value {value!r} for {name}: seconds, "
                    f"from 0 to {MAX_SECONDS:g} (a day)"
                )
            return number
        if "Path" in kind:
            if _text(value) == "":
                raise UsageError(
                    f"{origin}: {name} is empty, which would be the working directory: "
                    "name a path, or leave the setting out for its default"
                )
            return _absolute(Path(_text(value)).expanduser(), name, origin)
        return _text(value)
    except (TypeError, ValueError):
        raise UsageError(f"{origin}: invalid value {value!r} for {name}") from None


def _text(value: object) -> str:
    """A text setting's value: text, or a path; never the text of a TOML list, table or
    number (`store = ["/mnt/pkgckpt"]` would name a directory `['/mnt/pkgckpt']`)."""
    if isinstance(value, str):
        return value
    path = os.fspath(value) if isinstance(value, os.PathLike) else None
    if isinstance(path, str):
        return path
    raise ValueError(value)


def _cwd(origin: str, name: str, value: object) -> Path:
    try:
        return Path.cwd()
    except OSError as e:
        raise UsageError(
            f"{origin}: {name} {value!r} is relative to the working directory, which "
            f"cannot be read: {e.strerror}"
        ) from None


def _absolute(path: Path, name: str, origin: str) -> Path:
    """A path setting as every process must read it: an environment's path is recorded
    in the manifest and handed to interpreters that run in a private working directory,
    where a relative path names nothing (or another directory)."""
    return path if path.is_absolute() else _cwd(origin, name, str(path)) / path


def _absolute_links(links: tuple[str, ...], base: Path | None, origin: str) -> tuple[str, ...]:
    """`find_links` as pip and uv must get them in the private working directory they run
    in: URLs as they are, paths with `~` expanded and, when relative, joined to `base` (a
    config file's directory), else to the working directory pkgckpt started in."""
    out: list[str] = []
    for link in links:
        try:
            scheme = urlsplit(link).scheme.lower()
        except ValueError:  # a malformed URL (`http://[`): the installer says so
            scheme = "http"
        if scheme in LINK_URL_SCHEMES:
            out.append(link)
            continue
        path = Path(link).expanduser()
        if not path.is_absolute():
            if base is None:
                base = _cwd(origin, "find_links", link)
            path = base / path
        out.append(str(path))
    return tuple(out)


def _present(path: Path) -> bool:
    """Whether a config file is at one of its default places. One in a directory this user
    may not enter is not theirs: a container whose HOME is still root's after a switch to
    the user (s6-setuidgid, `docker run --user`) is warned of, as git does, not an error."""
    try:
        return path.is_file()
    except PermissionError:
        log.warning("config file %s skipped: its directory is not readable by this user", path)
        return False


def _read_file(path: Path) -> dict[str, Any]:
    # Imported here: most runs find no config file and need no TOML parser.
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib

    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise UsageError(f"cannot read config file {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"config file {path} is not valid TOML: {e}") from None
    values = {}
    for k, v in data.items():
        name = k.replace("-", "_")
        if name not in _FIELDS:
            raise UsageError(f"config file {path}: unknown setting {k!r}")
        values[name] = _coerce(name, v, str(path))
    if "find_links" in values:
        values["find_links"] = _absolute_links(
            values["find_links"], path.absolute().parent, str(path)
        )
    return values


def load(
    flags: Mapping[str, Any] | None = None,
    config_file: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Build the config once; flags whose value is None (not given) do not override."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for path in (SYSTEM_CONFIG, user_config(environ)):
        if _present(path):
            values.update(_read_file(path))
    explicit = config_file
    if explicit is None and "PKGCKPT_CONFIG" in environ:
        if not environ["PKGCKPT_CONFIG"]:
            raise UsageError(
                "PKGCKPT_CONFIG is empty: name a config file, or leave the variable out"
            )
        explicit = Path(environ["PKGCKPT_CONFIG"])
    if explicit is not None:
        values.update(_read_file(explicit))
    for name in _FIELDS:
        var = f"PKGCKPT_{name.upper()}"
        if var in environ:
            values[name] = _coerce(name, environ[var], var)
            if name == "find_links":
                values[name] = _absolute_links(values[name], None, var)
    for name, value in (flags or {}).items():
        if value is None or value == ():
            continue
        flag = f"--{name.replace('_', '-')}"
        values[name] = _coerce(name, value, flag)
        if name == "find_links":
            values[name] = _absolute_links(values[name], None, flag)
    if "key" not in values:
        values["key"] = values["key_defaulted"] = default_key(environ)
        values["key_from_hub"] = bool(environ.get("JUPYTERHUB_USER"))
    # Read-only commands read what is there: never from a directory someone else planted.
    values["runtime_dir"] = find_runtime_dir(values.get("runtime_dir") or runtime_dir())
    return Config(**values)
