"""A Python prefix (a venv, a conda prefix, /usr) -> its site directories and identity.

The prefix's own interpreter is asked once, because only it knows its `sysconfig`
scheme (Debian's dist-packages, conda, a framework build) and whether it enables the
user site. When it cannot run (a foreign architecture, a broken venv), the layout is
guessed from `lib/python3*/site-packages`.

Starting the interpreter costs ~25 ms, a sixth of a no-op `pkgckpt restore`, so its answer
is kept in the runtime directory (`cache_dir`; held until a command that changes state
makes it: `kept.keep`) under a key that cannot go stale: the probe, the interpreter's
path and resolved path, the variables that steer `site` and `sysconfig`, and the identity
(device, inode, size, mtime, ctime) of the interpreter, of `pyvenv.cfg` and of the
directories holding the site directories. Rebuilding the environment or replacing its
interpreter changes one of them. A cache file that is not ours, is writable by others or
does not decode is ignored, never trusted.

A new container has no runtime directory: there the answer `pkgckpt baseline` kept beside
the image's baseline is used instead, under the same key and with identities that hold
across containers of one image (`kept`).
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Protocol, TypeVar

import msgspec

from ..digest import sha256
from ..errors import ScanError
from ..logs import getLogger
from ..manifest import Environment
from ..trust import read_owned
from . import kept as image_kept
from .kept import Stable, stable

log = getLogger(__name__)

ASK_TIMEOUT = 30.0
"""Seconds the interpreter gets to answer; a first start on a cold NFS home can be slow."""

ASK_AGAIN = 600.0
"""Seconds before an interpreter that gave no answer, and has not changed since, is asked
again in the same process (the daemon's rediscoveries)."""

_unanswered: dict[str, tuple[tuple[_Stamp, ...], float]] = {}
"""Interpreter key -> its stamps when it gave no answer, and until when it is not asked
again: one that hangs (on a stalled mount) would otherwise hold every rediscovery for
ASK_TIMEOUT, and with it the checkpoints of every other environment."""

# Runs inside the prefix's interpreter, which may be any Python 3: keep it plain. It runs
# with -I, so nothing from the working directory, PYTHONPATH or the user site is imported
# (a json.py where the user stands would run as the user); -I also turns the user site off
# in this process, so whether the interpreter enables it for the user is worked out as
# site.py does: not with PYTHONNOUSERSITE, not setuid, not in a venv without system site
# packages. The user base itself comes from os.environ (PYTHONUSERBASE), which -I leaves.
# Printed with repr(), read with ast.literal_eval: json would be half of the probe's cost
# (it imports re, enum and functools into an interpreter that needs none of them).
_PROBE = """\
import os, site, sys, sysconfig
paths = sysconfig.get_paths()
enabled = not os.environ.get("PYTHONNOUSERSITE")
if hasattr(os, "getuid") and (os.geteuid() != os.getuid() or os.getegid() != os.getgid()):
    enabled = False
if sys.prefix != sys.base_prefix:
    system = False
    try:
        with open(os.path.join(sys.prefix, "pyvenv.cfg")) as f:
            for line in f:
                key, _, value = line.partition("=")
                if key.strip().lower() == "include-system-site-packages":
                    system = value.strip().lower() == "true"
    except OSError:
        pass
    enabled = enabled and system
user = site.getusersitepackages() if enabled else None
# The ABI tag as packaging.tags reads it from EXT_SUFFIX: ".cpython-313t-x86_64-linux-gnu.so"
# is cp313t, ".pypy310-pp73-x86_64-linux-gnu.so" pypy310_pp73; another form is not named.
soabi = str(sysconfig.get_config_var("EXT_SUFFIX") or "").split(".")
soabi = soabi[1].split("-") if len(soabi) > 2 else []
abi = None
if len(soabi) > 1 and soabi[0] == "cpython":
    abi = "cp" + soabi[1]
elif len(soabi) > 1 and soabi[0].startswith("pypy"):
    abi = soabi[0] + "_" + soabi[1]
print(repr({
    "prefix": sys.prefix,
    "base_prefix": sys.base_prefix,
    "purelib": paths["purelib"],
    "platlib": paths["platlib"],
    "version": "%d.%d.%d" % sys.version_info[:3],
    "implementation": sys.implementation.name,
    "platform": sysconfig.get_platform().replace("-", "_").replace(".", "_"),
    "abi": abi,
    "user_site": user,
}))
"""


class PythonEnv(msgspec.Struct, frozen=True):
    """Where a prefix's distributions live and what interpreter they are for."""

    prefix: Path
    python: Path | None
    """The interpreter that answered; None when the layout was guessed."""
    version: str | None
    implementation: str | None
    platform: str | None
    """The platform tag, e.g. "linux_x86_64"."""
    abi: str | None
    """The ABI tag, e.g. "cp311" (`manifest.Environment.abi`)."""
    site_dirs: tuple[Path, ...]
    user_site: Path | None
    """The user site (`pip install --user`) when the interpreter enables it, whether or
    not it exists yet; None in a venv without system site packages."""
    base_prefix: Path | None = None
    """The interpreter's `sys.base_prefix` (another than `prefix` in a venv); None when the
    layout was guessed."""

    def environment(self, user: bool = False) -> Environment:
        return Environment(
            kind="python",
            path=str(self.prefix),
            user=user,
            interpreter=self.version,
            implementation=self.implementation,
            platform=self.platform,
            abi=self.abi,
        )


def absence(path: Path) -> str:
    """Why `path` is not there for this user: "missing", "not a directory", or "not
    readable" beneath a directory they may not enter (a HOME that is root's)."""
    if os.path.lexists(path):
        return "not a directory"
    above = next((p for p in path.parents if os.path.lexists(p)), Path("/"))
    if os.access(above, os.X_OK):
        return "missing"
    return f"not readable: {above} is closed to this user"


def interpreter(prefix: Path) -> Path | None:
    for name in ("python3", "python"):
        candidate = prefix / "bin" / name
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def python_env(
    prefix: Path, *, cache_dir: Path | None = None, image: Path | None = None
) -> PythonEnv:
    """The environment at `prefix`, asking its interpreter once (else guessing).

    `cache_dir`: a private directory (the runtime directory) where the answer is kept for
    the next call, in this process or another; None: always ask. `image`: the image's
    baseline file, beside which `pkgckpt baseline` kept the answers it got (`kept`).
    """
    if not os.path.isdir(prefix):  # noqa: PTH112 (pathlib's raises on EACCES)
        raise ScanError(f"no Python environment at {prefix}: {absence(prefix)}")
    python = interpreter(prefix)
    if python is not None:
        found = probe(python, cache_dir=cache_dir, image=image)
        if found is not None:
            return found
    return _guess(prefix)


def probe(
    python: Path, *, cache_dir: Path | None = None, image: Path | None = None
) -> PythonEnv | None:
    """What the interpreter `python` says of its environment (its prefix first of all);
    None when it does not answer. `cache_dir` and `image` as for `python_env`."""
    return _cached_ask(python, cache_dir, image)


# -- the interpreter's answer, kept ---------------------------------------------------

_CACHE_FORMAT = 2
_CACHE_MAX = 64 * 1024
_ANSWER_MAX = 64 * 1024
"""The probe's answer is a few hundred characters: a longer last line is not read."""
# Prefixes of the variables that change what the probe reports, with HOME: the user site
# (PYTHONUSERBASE, PYTHONNOUSERSITE), the platform and scheme (_PYTHON_HOST_PLATFORM,
# PYTHONPLATLIBDIR, _PYTHON_SYSCONFIGDATA_NAME, ...). PYTHONPATH and PYTHONHOME are never
# passed to the probe.
_STEERING = ("PYTHON", "_PYTHON")


class _Stamp(msgspec.Struct, frozen=True, array_like=True):
    """A file's identity: a rebuilt or replaced file differs in at least one field."""

    path: str
    follow: bool
    id: tuple[int, int, int, int, int] | None
    """(st_dev, st_ino, st_size, st_mtime_ns, st_ctime_ns); None: absent or unreadable."""


class _Answer(msgspec.Struct, frozen=True, kw_only=True):
    """What the interpreter said, as kept."""

    prefix: str
    version: str | None
    implementation: str | None
    platform: str | None
    site_dirs: tuple[str, ...]
    user_site: str | None
    abi: str | None = None
    base_prefix: str | None = None


class _Kept(msgspec.Struct, frozen=True, kw_only=True):
    key: str
    stamps: tuple[_Stamp, ...]
    stable: tuple[Stable, ...]
    """The same files' identities as a new container of the image sees them (`kept`):
    what `pkgckpt baseline` writes beside the baseline."""
    answer: _Answer


_kept_decoder = msgspec.json.Decoder(_Kept)
_answer_decoder = msgspec.json.Decoder(_Answer)


def _identity(path: str, follow: bool) -> _Stamp:
    try:
        st = os.stat(path, follow_symlinks=follow)  # noqa: PTH116 (a str path, no Path object)
    except OSError:
        return _Stamp(path, follow, None)
    return _Stamp(path, follow, (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))


def _stamps(python: Path, resolved: str) -> tuple[_Stamp, ...]:
    # The venv's link (recreated with the venv), the interpreter it leads to (replaced by
    # an upgrade) and pyvenv.cfg (home, system site packages).
    cfg = str(python.parent.parent / "pyvenv.cfg")
    return (_identity(str(python), False), _identity(resolved, True), _identity(cfg, True))


def _layout_stamps(site_dirs: tuple[Path, ...]) -> tuple[_Stamp, ...]:
    # The parents of the site directories (lib/pythonX.Y: rebuilt with the environment),
    # not the site directories themselves, whose mtime changes with every install.
    return tuple(_identity(str(d.parent), True) for d in dict.fromkeys(site_dirs))


def _stable_stamps(python: Path, resolved: str) -> tuple[Stable, ...]:
    # As `_stamps`, for another container of the image. Besides the variables of the key
    # and pyvenv.cfg, the probe (run with -I) reads nothing a user controls: the user site
    # it reports depends on HOME and PYTHONUSERBASE (in the key), not on what exists.
    cfg = str(python.parent.parent / "pyvenv.cfg")
    return (stable(str(python), False), stable(resolved), stable(cfg, content=True))


def _stable_layout(site_dirs: tuple[str, ...]) -> tuple[Stable, ...]:
    return tuple(stable(str(Path(d).parent)) for d in dict.fromkeys(site_dirs))


def _key(python: Path, resolved: str) -> str:
    steering = sorted(
        (k, v)
        for k, v in os.environ.items()
        if (k == "HOME" or k.startswith(_STEERING)) and k not in ("PYTHONPATH", "PYTHONHOME")
    )
    # ENABLE_USER_SITE is off when the real and effective ids differ.
    ids = (os.getuid(), os.geteuid(), os.getgid(), os.getegid())
    text = msgspec.json.encode([_CACHE_FORMAT, _PROBE, str(python), resolved, steering, ids])
    return sha256(text).hexdigest()


def _cache_file(cache_dir: Path, python: Path) -> Path:
    name = sha256(str(python).encode()).hexdigest()[:32]
    return cache_dir / f"python-env-{name}.json"


def read_private(path: Path, limit: int) -> bytes | None:
    """Up to `limit` bytes of a regular file of ours that no one else can write, else
    None: a runtime directory in a shared /tmp could hold a planted answer pointing the
    scan anywhere."""
    try:
        return read_owned(path, limit)
    except PermissionError:
        log.debug("%s is not a private file of ours; ignored", path)
    except OSError:
        pass
    return None


class _Stamped(Protocol):
    """A kept answer: the key it was asked under and the stamps that must still hold."""

    @property
    def key(self) -> str: ...
    @property
    def stamps(self) -> tuple[_Stamp, ...]: ...


_K = TypeVar("_K", bound=_Stamped)


def recall(path: Path, key: str, decoder: msgspec.json.Decoder[_K]) -> _K | None:
    """The answer kept in the runtime directory's `path` when it was asked under `key` and
    every stamp still holds; else None (the caller asks). Shared with `scan.r`."""
    data = read_private(path, _CACHE_MAX)
    if data is None:
        return None
    try:
        kept = decoder.decode(data)
    except (msgspec.DecodeError, UnicodeDecodeError):
        # msgspec reports invalid UTF-8 inside a JSON string as UnicodeDecodeError.
        log.debug("%s does not decode; ignored", path)
        return None
    if kept.key != key or any(_identity(s.path, s.follow) != s for s in kept.stamps):
        return None
    return kept


def _found(python: Path, answer: _Answer) -> PythonEnv:
    return PythonEnv(
        prefix=Path(answer.prefix),
        python=python,
        version=answer.version,
        implementation=answer.implementation,
        platform=answer.platform,
        abi=_abi(answer.abi),
        site_dirs=tuple(Path(d) for d in answer.site_dirs),
        user_site=Path(answer.user_site) if answer.user_site else None,
        base_prefix=Path(answer.base_prefix) if answer.base_prefix else None,
    )


def _answer(found: PythonEnv) -> _Answer:
    return _Answer(
        prefix=str(found.prefix),
        version=found.version,
        implementation=found.implementation,
        platform=found.platform,
        abi=found.abi,
        site_dirs=tuple(str(d) for d in found.site_dirs),
        user_site=None if found.user_site is None else str(found.user_site),
        base_prefix=None if found.base_prefix is None else str(found.base_prefix),
    )


def _from_image(image: Path | None, key: str) -> tuple[_Answer, tuple[Stable, ...]] | None:
    entry = image_kept.lookup(image, "python", key)
    if entry is None:
        return None
    try:
        return _answer_decoder.decode(entry.answer), entry.stable
    except (msgspec.DecodeError, UnicodeDecodeError):
        return None


def _cached_ask(python: Path, cache_dir: Path | None, image: Path | None) -> PythonEnv | None:
    resolved = os.path.realpath(python)
    key = _key(python, resolved)
    path = _cache_file(cache_dir, python) if cache_dir is not None else None
    kept = recall(path, key, _kept_decoder) if path is not None else None
    if kept is not None:
        image_kept.note("python", key, kept.stable, msgspec.json.encode(kept.answer))
        return _found(python, kept.answer)
    # Taken before asking: a change while the interpreter runs makes the entry stale at
    # once rather than hiding the change.
    before = _stamps(python, resolved)
    from_image = _from_image(image, key)
    if from_image is not None:
        answer, stamps = from_image
    else:
        stamps = _stable_stamps(python, resolved)
        silent = _unanswered.get(key)
        if silent is not None and silent[0] == before and time.monotonic() < silent[1]:
            log.debug("%s gave no answer lately; not asked again yet", python)
            return None
        found = _ask(python)
        if found is None:
            _unanswered[key] = (before, time.monotonic() + ASK_AGAIN)
            return None
        _unanswered.pop(key, None)
        answer = _answer(found)
        stamps += _stable_layout(answer.site_dirs)
    site_dirs = tuple(Path(d) for d in answer.site_dirs)
    if path is not None:
        kept = _Kept(
            key=key, stamps=before + _layout_stamps(site_dirs), stable=stamps, answer=answer
        )
        image_kept.keep(path, msgspec.json.encode(kept))
    image_kept.note("python", key, stamps, msgspec.json.encode(answer))
    return _found(python, answer)


def _ask(python: Path) -> PythonEnv | None:
    # Imported here: when the answer is kept, a run starts no process and parses nothing.
    import ast

    from ..runner import Deadline, call

    # -I: PYTHONPATH and friends would make the probe report another environment's layout,
    # and the working directory would be on sys.path; the runner gives a private one too.
    proc = call(
        [str(python), "-I", "-c", _PROBE], deadline=Deadline(ASK_TIMEOUT), split_stderr=True
    )
    if proc.returncode is None:
        log.warning("%s did not answer (%s); guessing its layout", python, proc.tail(2))
        return None
    try:
        # The last line: a .pth file of the environment may print before the probe does.
        line = proc.output.strip().splitlines()[-1]
        if len(line) > _ANSWER_MAX:
            raise ValueError(f"an answer of {len(line)} characters")
        # Literals only: the interpreter's output is data, never code.
        answer = ast.literal_eval(line)
        purelib, platlib = Path(answer["purelib"]), Path(answer["platlib"])
        user = answer["user_site"]
        return PythonEnv(
            prefix=Path(answer["prefix"]),
            python=python,
            version=str(answer["version"]),
            implementation=str(answer["implementation"]),
            platform=str(answer["platform"]),
            abi=_abi(answer.get("abi")),
            site_dirs=(purelib,) if purelib == platlib else (purelib, platlib),
            user_site=Path(user) if user else None,
            base_prefix=Path(answer["base_prefix"]),
        )
    except (ValueError, IndexError, KeyError, TypeError, SyntaxError, MemoryError, RecursionError):
        log.warning(
            "%s failed to describe itself (exit %s): %s; guessing its layout",
            python,
            proc.returncode,
            proc.errors.strip()[-500:],
        )
        return None


def _abi(value: object) -> str | None:
    """The answer's ABI tag when it reads as one (lower-case letters, digits, `_`)."""
    if isinstance(value, str) and _ABI.fullmatch(value):
        return value
    return None


_ABI = re.compile(r"[a-z][a-z0-9_]{0,63}")


def _guess(prefix: Path) -> PythonEnv:
    sites = [*prefix.glob("lib/python3*/site-packages"), *prefix.glob("lib/pypy3*/site-packages")]
    if not sites:
        raise ScanError(f"no Python environment at {prefix}: no interpreter, no site-packages")
    # Several: a leftover of an upgraded interpreter beside the live one; take the newest.
    site = max(sites, key=_version_key)
    lib = site.parent.name  # "python3.11" or "pypy3.10"
    implementation = "pypy" if lib.startswith("pypy") else "cpython"
    version = lib.removeprefix("pypy").removeprefix("python")
    return PythonEnv(
        prefix=prefix,
        python=None,
        version=version,
        implementation=implementation,
        platform=None,
        abi=None,
        site_dirs=(site,),
        user_site=None,
    )


def _version_key(site: Path) -> tuple[int, ...]:
    digits = site.parent.name.removeprefix("pypy").removeprefix("python").split(".")
    return tuple(int(d) for d in digits if d.isdigit())
