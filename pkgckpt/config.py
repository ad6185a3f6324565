"""Settings: flags > `PKGCKPT_*` environment > config file(s) > defaults.

Config files are TOML with the same names as the settings below (`store`, `key`,
`env = [...]`, `quiet_ms`, ...). `/etc/pkgckpt/config.toml` (the image's) is read first,
then `~/.config/pkgckpt/config.toml` (the user's), then `--config FILE`; later files
override earlier ones key by key. The environment variable of a setting is its name in
upper case with a `PKGCKPT_` prefix; list settings take `os.pathsep`-separated values.
"""

from __future__ import annotations

import dataclasses
import getpass
import os
import stat
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .errors import PkgckptError, UsageError

SYSTEM_CONFIG = Path("/etc/pkgckpt/config.toml")

DISCOVER = ("kernels", "conda", "user-site", "r")
"""The values of the `discover` setting, all on by default."""


def user_config(environ: Mapping[str, str]) -> Path:
    base = environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "pkgckpt" / "config.toml"


def default_store() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "pkgckpt"


def default_key() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        # A container user without a passwd entry (OpenShift's random uids).
        return f"uid-{os.getuid()}"


def runtime_dir() -> Path:
    """Where this container keeps its baseline and the daemon its status file."""
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    return Path(xdg) / "pkgckpt" if xdg else Path(f"/tmp/pkgckpt-{os.getuid()}")


def ensure_runtime_dir(path: Path) -> Path:
    """Create the runtime directory (0700) when missing; refuse one that is not ours.

    `/tmp` is shared: another user could plant `/tmp/pkgckpt-<uid>` (or a symlink of that
    name) to read our status or feed us a baseline. Ours with a loose mode is tightened.
    """
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = path.lstat()
    except OSError as e:
        raise PkgckptError(f"cannot create the runtime directory {path}: {e.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise PkgckptError(f"runtime directory {path} is not a directory (or is a symlink)")
    if st.st_uid != os.geteuid():
        raise PkgckptError(f"runtime directory {path} belongs to uid {st.st_uid}, not to us")
    if stat.S_IMODE(st.st_mode) & 0o077:
        try:
            path.chmod(0o700)
        except OSError as e:
            raise PkgckptError(f"cannot make {path} private: {e.strerror}") from None
    return path


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
    store: Path = dataclasses.field(default_factory=default_store)
    key: str = dataclasses.field(default_factory=default_key)
    store_uid: int | None = None
    """The uid owning what this user writes on the store, where the NFS server maps it
    (all_squash, anonuid); ownership is checked against it. None: this process's uid."""
    env: tuple[Path, ...] = ()
    """Python prefixes; empty means the environment running pkgckpt (`sys.prefix`)."""
    r_lib: tuple[Path, ...] = ()
    """R libraries; empty means `R_LIBS_USER` when set."""
    r_discover: bool = False
    discover: tuple[str, ...] = DISCOVER
    """What is found without being named (see `discovery`): leave a source out to switch
    it off."""
    baseline: Path | None = None
    runtime_dir: Path = dataclasses.field(default_factory=runtime_dir)
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
    # restore
    timeout: float = 900.0
    installer: str = "auto"
    index_url: str | None = None
    find_links: tuple[str, ...] = ()
    no_index: bool = False
    keep_removed: bool = False
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

    def python_envs(self) -> tuple[Path, ...]:
        return self.env or (Path(sys.prefix),)

    def r_libs(self) -> tuple[Path, ...]:
        if self.r_lib:
            return self.r_lib
        user = os.environ.get("R_LIBS_USER")
        # R expands a leading ~ in R_LIBS_USER itself.
        return tuple(Path(p).expanduser() for p in user.split(os.pathsep) if p) if user else ()


_FIELDS = {f.name: f for f in dataclasses.fields(Config)}


def _coerce(name: str, value: Any, origin: str) -> Any:
    """Turn a file, environment or flag value into the field's type, or raise UsageError."""
    kind = str(_FIELDS[name].type)
    try:
        if kind.startswith("tuple"):
            items = value.split(os.pathsep) if isinstance(value, str) else list(value)
            items = [i for i in items if i != ""]
            return tuple(Path(i).expanduser() if "Path" in kind else str(i) for i in items)
        if kind == "bool":
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("1", "true", "yes", "on"):
                return True
            if str(value).lower() in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(value)
        if kind in ("int", "int | None"):
            if isinstance(value, bool):
                raise ValueError(value)
            count = int(value)
            if count < 0:
                raise ValueError(value)
            return count
        if kind == "float":
            number = float(value)
            if number < 0:
                raise ValueError(value)
            return number
        if "Path" in kind:
            return Path(str(value)).expanduser()
        return str(value)
    except (TypeError, ValueError):
        raise UsageError(f"{origin}: invalid value {value!r} for {name}") from None


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
        if path.is_file():
            values.update(_read_file(path))
    explicit = config_file
    if explicit is None and environ.get("PKGCKPT_CONFIG"):
        explicit = Path(environ["PKGCKPT_CONFIG"])
    if explicit is not None:
        values.update(_read_file(explicit))
    for name in _FIELDS:
        var = f"PKGCKPT_{name.upper()}"
        if var in environ:
            values[name] = _coerce(name, environ[var], var)
    for name, value in (flags or {}).items():
        if value is None or value == ():
            continue
        values[name] = _coerce(name, value, f"--{name.replace('_', '-')}")
    return Config(**values)
