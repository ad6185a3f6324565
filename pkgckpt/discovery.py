"""Which Python environments exist for this user: never what changed in them.

Without `--env`, pkgckpt tracks, besides its own environment and the user site:

* every Python environment a Jupyter kernelspec names: `kernels/*/kernel.json` in each
  directory of Jupyter's data path, in `jupyter_core.paths.jupyter_path()`'s order
  (`JUPYTER_PATH`, `JUPYTER_DATA_DIR` or the user data directory, the user base's
  `share/jupyter`, `{sys.prefix}/share/jupyter`, `/usr/local/share/jupyter`,
  `/usr/share/jupyter`); a kernel name found earlier hides later ones, as in Jupyter.
  `argv[0]` of a Python kernel is its interpreter; the interpreter itself says its prefix.
  A bare `python` is the Jupyter server's: taken as the prefix's whose `share/jupyter`
  holds the kernelspec, never as one of the user's data directory;
* every conda environment listed in `~/.conda/environments.txt` or found in an
  `envs_dirs` directory (`.condarc` files, `CONDA_ENVS_PATH`, `~/.conda/envs`, the root
  prefix's `envs`).

"Its own environment" and `sys` above are the environment Jupyter runs from (`Own`):
pkgckpt's own by default, the one the `own_env` setting names when pkgckpt runs from a
venv of its own beside the notebook server's. Its facts (prefix, base prefix, user site)
are then what its interpreter says (`scan.env.probe`), never what pkgckpt's `sys` holds.

Every path read from a kernelspec, a `.condarc` or `environments.txt` is hostile: before
an interpreter named there is started, it and every directory above it must belong to this
user or root and be writable by no one else (a sticky directory such as /tmp excepted:
its other users cannot replace what is ours in it). An environment that fails the check or
cannot be probed is reported (`Discovered.unreadable`), never fatal.

`Discovered.watch` lists the directories whose changes may mean a new environment (the
`kernels` directories and each kernelspec in them, `~/.conda`, the `envs_dirs`, and where
a missing environment that something names would appear): the daemon watches them and
discovers again after their quiet window.
"""

from __future__ import annotations

import os
import re
import site
import stat
import sys
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import msgspec

from .logs import getLogger
from .trust import MISSING, unsafe

log = getLogger(__name__)

MAX_FILE = 256 * 1024
"""A kernel.json, environments.txt or .condarc larger than this is not read."""
_BARE_PYTHON = ("python", "python3")
# What a Python interpreter is called: the probe is started only with one of these names,
# never a wrapper (`/bin/sh`, `conda run`) that would take `-c CODE` for something else.
_PYTHON_NAME = re.compile(r"(?:python|pypy)[0-9.]*", re.ASCII)


class Found(msgspec.Struct, frozen=True):
    """A Python prefix to track, and what named it."""

    prefix: Path
    origin: str


class Unreadable(msgspec.Struct, frozen=True):
    """An environment something named but that cannot be tracked, and why."""

    path: str
    origin: str
    reason: str


class Own(msgspec.Struct, frozen=True):
    """The environment Jupyter and conda are taken to run from, as its interpreter sees it."""

    prefix: Path
    base_prefix: Path
    """Another than `prefix` in a venv."""
    user_site: bool
    """Whether the interpreter enables the user site (`site.ENABLE_USER_SITE`)."""


def running() -> Own:
    """The environment running pkgckpt: the default `Own`."""
    return Own(
        prefix=Path(sys.prefix),
        base_prefix=Path(sys.base_prefix),
        user_site=bool(site.ENABLE_USER_SITE),
    )


class Discovered(msgspec.Struct, frozen=True):
    found: tuple[Found, ...] = ()
    unreadable: tuple[Unreadable, ...] = ()
    watch: tuple[Path, ...] = ()


# -- the hostile-path check ------------------------------------------------------------


def _read_small(path: Path) -> str | None:
    """The text of a file checked by `unsafe()`, or None (logged) when it cannot be read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as e:
        log.debug("cannot open %s: %s", path, e.strerror)
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        data = b""
        while len(data) <= MAX_FILE and (chunk := os.read(fd, MAX_FILE + 1 - len(data))):
            data += chunk
    except OSError as e:
        log.debug("cannot read %s: %s", path, e.strerror)
        return None
    finally:
        os.close(fd)
    if len(data) > MAX_FILE:
        return None
    return data.decode("utf-8", "replace")


# -- Jupyter ---------------------------------------------------------------------------


def jupyter_data_dir(environ: Mapping[str, str]) -> Path:
    """`jupyter_core.paths.jupyter_data_dir()` on Linux."""
    if environ.get("JUPYTER_DATA_DIR"):
        return Path(environ["JUPYTER_DATA_DIR"]).expanduser()
    home = Path(environ.get("HOME") or Path.home())
    xdg = environ.get("XDG_DATA_HOME") or str(home / ".local" / "share")
    return Path(xdg) / "jupyter"


def _envset(value: str) -> bool:
    return value.lower() not in ("no", "n", "false", "off", "0", "0.0")


def _prefer_env(environ: Mapping[str, str], own: Own) -> bool:
    """`jupyter_core.paths.prefer_environment_over_user()`, in the `own` environment."""
    if "JUPYTER_PREFER_ENV_PATH" in environ:
        return _envset(environ["JUPYTER_PREFER_ENV_PATH"])
    try:
        mine = own.prefix.stat().st_uid == os.geteuid()
    except OSError:
        mine = False
    if own.prefix != own.base_prefix and mine:
        return True
    conda = environ.get("CONDA_PREFIX")
    return bool(
        conda
        and str(own.prefix).startswith(conda)
        and environ.get("CONDA_DEFAULT_ENV", "base") != "base"
        and mine
    )


def user_data_dirs(environ: Mapping[str, str], own: Own | None = None) -> list[Path]:
    """The user's own directories of Jupyter's data path, as Jupyter running in `own`
    (default: pkgckpt's environment) has them: no environment's `share`."""
    own = own or running()
    user = [jupyter_data_dir(environ)]
    if own.user_site:
        base = environ.get("PYTHONUSERBASE") or site.getuserbase()
        if base:
            userdir = Path(base) / "share" / "jupyter"
            if userdir not in user:
                user.append(userdir)
    return user


def jupyter_path(environ: Mapping[str, str], own: Own | None = None) -> list[Path]:
    """`jupyter_core.paths.jupyter_path()` on Linux, as Jupyter running in `own` (default:
    pkgckpt's environment) computes it: the data directories, first wins."""
    own = own or running()
    paths: list[Path] = []
    if environ.get("JUPYTER_PATH"):
        paths.extend(Path(p.rstrip(os.sep)) for p in environ["JUPYTER_PATH"].split(os.pathsep) if p)
    user = user_data_dirs(environ, own)
    system = [Path("/usr/local/share/jupyter"), Path("/usr/share/jupyter")]
    env = [p for p in (own.prefix / "share" / "jupyter",) if p not in system]
    paths.extend([*env, *user] if _prefer_env(environ, own) else [*user, *env])
    paths.extend(system)
    return list(dict.fromkeys(paths))


class _Kernel(msgspec.Struct, frozen=True):
    name: str
    directory: Path
    data_dir: Path
    user: bool
    """In one of the user's own data directories (`user_data_dirs`)."""


def _kernelspecs(environ: Mapping[str, str], watch: list[Path], own: Own) -> Iterator[_Kernel]:
    seen: set[str] = set()
    user = user_data_dirs(environ, own)
    for data_dir in jupyter_path(environ, own):
        kernels = data_dir / "kernels"
        watch.append(kernels)
        try:
            names = sorted(e.name for e in os.scandir(kernels))
        except OSError:
            continue
        for name in names:
            directory = kernels / name
            # As jupyter_client lists kernels: a directory (a link to one) holding a
            # kernel.json, whatever its name (it only warns of one outside its rule); an
            # entry that is neither, a link loop included, is passed over, not the rest
            # (os.path's answer False to any error, where pathlib's raises some).
            if not os.path.isdir(directory):  # noqa: PTH112
                continue
            # Watched even without kernel.json: its kernel.json, written after it, comes
            # as an event of its own.
            watch.append(directory)
            if name.lower() in seen or not os.path.isfile(directory / "kernel.json"):  # noqa: PTH113
                continue
            seen.add(name.lower())
            yield _Kernel(name, directory, data_dir, data_dir in user)


def _kernel_interpreter(kernel: _Kernel, own: Own) -> tuple[Path | None, str]:
    """The interpreter of a Python kernelspec, or (None, why not); (None, "") for other
    languages, which are not Python environments (R is found by its own discovery), and
    for a kernel of the `own` environment, which is tracked anyway."""
    spec_file = kernel.directory / "kernel.json"
    loose = unsafe(spec_file)
    # The own environment's kernelspec may be as open as that environment, which is
    # trusted as configured (docker-stacks' /opt/conda is group-writable): read it, only to
    # see whether it names that environment, or another language (its R kernel), which
    # then need no word.
    if loose is not None and kernel.data_dir != own.prefix / "share" / "jupyter":
        return None, f"kernel.json: {loose}"
    python, why = _spec_interpreter(kernel, spec_file)
    if (python is None and not why) or (python is not None and python.parent == own.prefix / "bin"):
        return None, ""
    if loose is not None:
        return None, f"kernel.json: {loose}"
    return python, why


def _spec_interpreter(kernel: _Kernel, spec_file: Path) -> tuple[Path | None, str]:
    text = _read_small(spec_file)
    if text is None:
        return None, "kernel.json cannot be read"
    try:
        # msgspec's, which the daemon has loaded anyway: the json module is 0.15 MB more.
        spec: Any = msgspec.json.decode(text)
    except msgspec.DecodeError as e:
        return None, f"kernel.json is not JSON ({e})"
    if not isinstance(spec, dict):
        return None, "kernel.json is not a JSON object"
    language = spec.get("language")
    if not isinstance(language, str) or language.lower() != "python":
        return None, ""
    argv = spec.get("argv")
    if not isinstance(argv, list) or not argv or not isinstance(argv[0], str) or not argv[0]:
        return None, "kernel.json has no argv[0]"
    first = argv[0]
    if "\0" in first:
        return None, "argv[0] holds a NUL byte"
    if first in _BARE_PYTHON:
        # Jupyter runs a bare python with the server's own interpreter, which pkgckpt
        # cannot know. An environment's own kernelspec ({prefix}/share/jupyter) is there
        # for a server of that environment; in the user's data directory it names none
        # (~/.local/bin/python3 is not its interpreter).
        if kernel.user or kernel.data_dir.parts[-2:] != ("share", "jupyter"):
            return None, (
                f"argv[0] {first!r} runs the Jupyter server's own interpreter, which the "
                "kernelspec does not name"
            )
        return kernel.data_dir.parent.parent / "bin" / first, ""
    if not first.startswith("/"):
        return None, f"argv[0] {first!r} is not an absolute path to an interpreter"
    if not _PYTHON_NAME.fullmatch(Path(first).name):
        return None, f"argv[0] {first!r} is not a Python interpreter"
    return Path(first), ""


def _kernels(
    environ: Mapping[str, str],
    own: Own,
    cache_dir: Path | None,
    image: Path | None,
    watch: list[Path],
) -> Iterator[Found | Unreadable]:
    from .scan.env import probe

    for kernel in _kernelspecs(environ, watch, own):
        origin = f"kernelspec {kernel.directory}"
        python, why = _kernel_interpreter(kernel, own)
        if python is None:
            if why:
                yield Unreadable(str(kernel.directory), origin, why)
            continue
        why = unsafe(python) or ("" if os.access(python, os.X_OK) else "not executable")
        if why:
            if why == MISSING:
                # Its environment made again at that path (a venv that was not on the
                # persistent volume) rewrites no kernelspec: the interpreter's appearance
                # in its directory brings discovery back.
                watch.append(python.parent)
            yield Unreadable(str(python), origin, f"interpreter {python}: {why}")
            continue
        answer = probe(python, cache_dir=cache_dir, image=image)
        if answer is None:
            yield Unreadable(str(python), origin, f"interpreter {python} did not answer")
            continue
        loose = unsafe(answer.prefix)
        if loose:
            yield Unreadable(str(answer.prefix), origin, f"prefix {answer.prefix}: {loose}")
            continue
        # Tracking the prefix starts its own interpreter, which need not be argv[0]
        # (bin/python3 for a kernel of bin/python).
        loose = _loose_interpreter(answer.prefix)
        if loose:
            yield Unreadable(str(answer.prefix), origin, loose)
            continue
        yield Found(answer.prefix, origin)


def _loose_interpreter(prefix: Path) -> str | None:
    """Why an interpreter of `prefix` that `scan.env.python_env()` may start (the names
    `scan.env.interpreter()` tries) cannot be trusted, or None."""
    for python in (prefix / "bin" / "python3", prefix / "bin" / "python"):
        if os.path.lexists(python):
            why = unsafe(python)
            if why:
                return why
    return None


# -- conda -----------------------------------------------------------------------------


def conda_root(environ: Mapping[str, str], own: Own | None = None) -> Path | None:
    """The root (base) prefix of the image's conda, as conda and mamba find it; without a
    variable naming it, `own`'s (default: pkgckpt's environment's) when it is conda's."""
    for var in ("CONDA_ROOT", "MAMBA_ROOT_PREFIX"):
        if environ.get(var):
            return Path(environ[var])
    exe = environ.get("CONDA_EXE") or environ.get("MAMBA_EXE")
    if exe and Path(exe).is_absolute():
        return Path(exe).parent.parent
    own = own or running()
    if (own.prefix / "conda-meta").is_dir():
        return own.base_prefix
    return None


def condarc_files(environ: Mapping[str, str], own: Own | None = None) -> list[Path]:
    """conda's configuration search path, in its order (later files add to earlier)."""
    home = Path(environ.get("HOME") or Path.home())
    xdg = Path(environ.get("XDG_CONFIG_HOME") or home / ".config")
    bases = [Path("/etc/conda"), Path("/var/lib/conda")]
    root = conda_root(environ, own)
    if root is not None:
        bases.append(root)
    bases += [xdg / "conda", home / ".config" / "conda", home / ".conda"]
    files: list[Path] = []
    for base in bases:
        files += [base / ".condarc", base / "condarc"]
        d = base / "condarc.d"
        if os.path.isdir(d):  # noqa: PTH112 (see `_condarc_envs_dirs`)
            try:
                names = [e.name for e in os.scandir(d)]
            except OSError as e:
                # A root-only condarc.d (channel tokens, say): the other files still count.
                log.warning("%s is not read: %s", d, e.strerror)
                continue
            files += sorted(p for n in names if (p := d / n).suffix in (".yml", ".yaml"))
    files.append(home / ".condarc")
    if environ.get("CONDA_PREFIX"):
        files += [Path(environ["CONDA_PREFIX"]) / n for n in (".condarc", "condarc")]
    if environ.get("CONDARC"):
        files.append(Path(environ["CONDARC"]))
    return list(dict.fromkeys(files))


def _condarc_envs_dirs(path: Path) -> list[Path]:
    # os.path's, here and below: False where a directory above may not be entered (a HOME
    # still root's after a switch to the user, s6-setuidgid), where pathlib's would raise.
    if not os.path.isfile(path):  # noqa: PTH113
        return []
    why = unsafe(path)
    text = _read_small(path) if why is None else None
    if text is None:
        log.warning("%s is not read: %s", path, why or "unreadable")
        return []
    # Imported here: most images have no .condarc, and the idle daemon stays lean.
    import yaml

    try:
        data = yaml.safe_load(text)
    except (yaml.YAMLError, RecursionError) as e:  # RecursionError: "[[[[..." nested deep
        log.warning("%s is not valid YAML: %s", path, e)
        return []
    dirs = data.get("envs_dirs") if isinstance(data, dict) else None
    if not isinstance(dirs, list):
        return []
    paths = []
    for d in dirs:
        if not isinstance(d, str) or not d:
            continue
        if "\0" in d:
            # No path holds one: os.scandir and pwd would raise ValueError.
            log.warning("%s: envs_dirs entry %r is not read: it holds a NUL byte", path, d)
            continue
        paths.append(Path(_expanduser(os.path.expandvars(d))))
    return paths


def _expanduser(path: str) -> str:
    # os.path's: `~nosuchuser` stays as it is (relative, then left out), where pathlib's
    # raises RuntimeError.
    return os.path.expanduser(path)  # noqa: PTH111


def envs_dirs(environ: Mapping[str, str], own: Own | None = None) -> list[Path]:
    """conda's `envs_dirs`: CONDA_ENVS_PATH, then the .condarc files, then the defaults."""
    dirs: list[Path] = []
    for var in ("CONDA_ENVS_PATH", "CONDA_ENVS_DIRS"):
        dirs += [Path(_expanduser(p)) for p in environ.get(var, "").split(os.pathsep) if p]
    for rc in condarc_files(environ, own):
        dirs += _condarc_envs_dirs(rc)
    root = conda_root(environ, own)
    if root is not None:
        dirs.append(root / "envs")
    home = Path(environ.get("HOME") or Path.home())
    dirs.append(home / ".conda" / "envs")
    return [d for d in dict.fromkeys(dirs) if d.is_absolute()]


def _conda(environ: Mapping[str, str], own: Own, watch: list[Path]) -> Iterator[Found | Unreadable]:
    home = Path(environ.get("HOME") or Path.home())
    listing = home / ".conda" / "environments.txt"
    watch.append(listing.parent)
    named: list[tuple[str, str]] = []
    if os.path.isfile(listing):  # noqa: PTH113
        why = unsafe(listing)
        text = _read_small(listing) if why is None else None
        if text is None:
            yield Unreadable(str(listing), "conda", why or "cannot be read")
        else:
            lines = (line.strip() for line in text.splitlines())
            named += [(line, str(listing)) for line in lines if line and not line.startswith("#")]
    for d in envs_dirs(environ, own):
        watch.append(d)
        try:
            entries = sorted(e.name for e in os.scandir(d) if e.is_dir(follow_symlinks=False))
        except OSError:
            continue
        named += [(str(d / name), f"envs_dirs {d}") for name in entries]
    for text, origin in dict.fromkeys(named):
        prefix = Path(text)
        if "\0" in text or not prefix.is_absolute():
            yield Unreadable(text, origin, "not an absolute path")
            continue
        why = unsafe(prefix)
        if why is None and not os.path.isdir(prefix / "conda-meta"):  # noqa: PTH112
            # Not (yet) an environment: `conda create` is still writing it. Its
            # conda-meta/ appearing brings discovery back.
            watch.append(prefix)
            if origin.startswith("envs_dirs"):
                continue
            why = "no conda-meta/ directory"
        elif why == MISSING:
            # Listed but gone: `conda create -p` making it again does not list it twice,
            # so environments.txt is not written; its own appearance brings discovery back.
            watch.append(prefix)
        # The interpreter python_env() will start, when the environment has one.
        why = why or _loose_interpreter(prefix)
        if why:
            yield Unreadable(text, origin, why)
            continue
        yield Found(prefix, f"conda ({origin})")


# -- all of it -------------------------------------------------------------------------


def discover(
    sources: Iterable[str],
    *,
    cache_dir: Path | None = None,
    image: Path | None = None,
    environ: Mapping[str, str] | None = None,
    own: Own | None = None,
) -> Discovered:
    """The environments `sources` name (kernels, conda), each once, first origin kept.

    `cache_dir` and `image`: where interpreters' answers are kept (`scan.env.probe`).
    `own`: the environment Jupyter and conda run from; None: pkgckpt's (`running()`)."""
    environ = os.environ if environ is None else environ
    own = own or running()
    wanted = set(sources)
    watch: list[Path] = []
    found: dict[Path, Found] = {}
    unreadable: dict[str, Unreadable] = {}
    parts: list[Iterator[Found | Unreadable]] = []
    if "kernels" in wanted:
        parts.append(_kernels(environ, own, cache_dir, image, watch))
    if "conda" in wanted:
        parts.append(_conda(environ, own, watch))
    for part in parts:
        for item in part:
            if isinstance(item, Found):
                found.setdefault(item.prefix, item)
            else:
                unreadable.setdefault(item.path, item)
    for item in unreadable.values():
        log.debug("discovery: %s (%s): %s", item.path, item.origin, item.reason)
    return Discovered(
        found=tuple(found.values()),
        unreadable=tuple(u for p, u in unreadable.items() if Path(p) not in found),
        watch=tuple(dict.fromkeys(watch)),
    )
