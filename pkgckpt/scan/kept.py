"""The interpreters' and R's answers kept beside the image's baseline, for new containers.

`env.py` and `r.py` keep the answers of their probes in the runtime directory, which a new
container never has: every container start of an image with R would start Rscript
(~0.8 s) before installing anything. `pkgckpt baseline --output FILE` therefore also
writes `answers_path(FILE)` (`baseline.json` -> `baseline.probes.json`): every answer the
command obtained, with the stamps below. A command given `--baseline FILE` uses an answer
from it, on a miss of the runtime cache, only when it cannot be stale:

* its key is the runtime cache's (the probe, the program's path and resolved path, the
  steering variables, HOME, the real and effective ids, and for R the `r-libs-user` of
  RStudio's `rsession.conf`): `env._key`, `r._probe_key`;
* every `Stable` stamp still holds. A new container of one image changes st_dev, st_ctime
  and possibly st_ino of the image's files (overlayfs), and a pulled layer's tar keeps
  mtimes in whole seconds, so: a file or link by size and mtime (a whole-second mtime
  also matches the build's mtime cut to seconds), a directory by mtime, the startup files
  the probes read (pyvenv.cfg, R's Renviron files, Rprofile.site, ~/.Renviron) by a
  digest of their content. A file absent at build time must still be absent;
* the file and its baseline are trusted: regular files of this user or root, writable by
  no one else, in directories no one else can write (`trust.unsafe`; stricter than
  `load_baseline` for a configured file, which only warns of nothing).

The runtime directory's own copies (`keep`, `settle`): a read-only command (status,
restore --dry-run) creates no runtime directory, and every command probes before it
knows whether it will make one, so an answer whose directory does not exist yet is held
in memory. The command that changes state makes the directory private
(`config.ensure_runtime_dir`, never trusting one planted in a shared /tmp) and writes
what is held (`inventory.ensure_baseline` calls `settle`): the first restore of a new
container keeps its answers for the daemon started after it.

A separate file, not a field of the baseline: the answers are read before any
environment is scanned, from a few KB rather than by decoding a baseline of thousands of
packages; the baseline stays the record of what the image shipped, readable by every
version of pkgckpt, and losing or dropping the answers costs only the probes.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import msgspec

from ..digest import sha256
from ..errors import PkgckptError
from ..logs import getLogger

log = getLogger(__name__)

_SCHEMA = 1
_MAX = 1 << 20
_DIGEST_MAX = 1 << 20
"""A startup file larger than this is not digested: the answer is not kept for the image."""
_SECOND = 1_000_000_000


class Stable(msgspec.Struct, frozen=True, array_like=True):
    """A file's identity that holds across containers of one image (see the module)."""

    path: str
    follow: bool
    content: bool
    id: tuple[int, int] | str | None
    """`content`: "sha256:<hex>" of a regular file, "other" for anything else; else
    (size, mtime_ns) of a file or link, (-1, mtime_ns) of a directory. None: absent."""


def stable(path: str, follow: bool = True, content: bool = False) -> Stable:
    try:
        st = os.stat(path, follow_symlinks=follow)  # noqa: PTH116 (a str path)
    except FileNotFoundError:
        return Stable(path, follow, content, None)
    except OSError:
        # Unreadable now: an identity no later check can match, so the answer is not kept.
        return Stable(path, follow, content, "unreadable")
    if content:
        return Stable(path, follow, content, _digest(path) if stat.S_ISREG(st.st_mode) else "other")
    size = -1 if stat.S_ISDIR(st.st_mode) else st.st_size
    return Stable(path, follow, content, (size, st.st_mtime_ns))


def _digest(path: str) -> str:
    try:
        # O_NONBLOCK: a FIFO put where a startup file is expected must not hang us.
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return "unreadable"
    try:
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                return "other"
            data = f.read(_DIGEST_MAX + 1)
    except OSError:
        return "unreadable"
    if len(data) > _DIGEST_MAX:
        return "unreadable"
    return "sha256:" + sha256(data).hexdigest()


def holds(kept: Stable) -> bool:
    """Whether the file still has the identity `kept` recorded."""
    if kept.id == "unreadable":
        return False
    now = stable(kept.path, kept.follow, kept.content).id
    if now == kept.id:
        return True
    if not isinstance(now, tuple) or not isinstance(kept.id, tuple) or now[0] != kept.id[0]:
        return False
    # A pulled image: its layer's tar cut the build's mtime to whole seconds. A file
    # changed since would have a fresh mtime, whole seconds only by a 1-in-10^9 chance.
    return now[1] % _SECOND == 0 and now[1] == kept.id[1] - kept.id[1] % _SECOND


def usable(stamps: tuple[Stable, ...]) -> bool:
    """Stamps that a later check can match (nothing was unreadable when they were taken)."""
    return all(s.id != "unreadable" for s in stamps)


class Entry(msgspec.Struct, frozen=True, kw_only=True):
    kind: str
    """"python" (`env.py`), "r" (`r.py`'s libraries) or "r-home" (`r.py`'s `R RHOME`)."""
    key: str
    stable: tuple[Stable, ...]
    answer: msgspec.Raw
    """The answer as its module encodes it."""


class _File(msgspec.Struct, frozen=True, kw_only=True):
    schema: int = _SCHEMA
    entries: tuple[Entry, ...] = ()


_decoder = msgspec.json.Decoder(_File)

_noted: dict[tuple[str, str], Entry] = {}
"""Every answer this process used, with its stamps: what `save` writes."""


def note(kind: str, key: str, stamps: tuple[Stable, ...], answer: bytes) -> None:
    """Remember an answer this process used (asked, or recalled with its stamps)."""
    if usable(stamps):
        _noted[(kind, key)] = Entry(kind=kind, key=key, stable=stamps, answer=msgspec.Raw(answer))


def answers_path(baseline: Path) -> Path:
    """Where `pkgckpt baseline --output baseline` keeps the answers."""
    return baseline.with_name(baseline.stem + ".probes.json")


def save(baseline: Path) -> Path:
    """Write the answers noted so far beside `baseline`, durably, readable by all."""
    from ..durable import atomic_write

    path = answers_path(baseline)
    entries = tuple(_noted[k] for k in sorted(_noted))
    atomic_write(path, msgspec.json.encode(_File(entries=entries)), mode=0o644)
    return path


def lookup(baseline: Path | None, kind: str, key: str) -> Entry | None:
    """The answer kept beside `baseline` for `key`, when every stamp still holds and the
    files are trusted; else None (the caller asks)."""
    if baseline is None or not baseline.name:
        return None
    path = answers_path(baseline)
    data = _read_trusted(path, baseline)
    if data is None:
        return None
    try:
        found = _decoder.decode(data)
    except (msgspec.DecodeError, UnicodeDecodeError):
        log.debug("%s does not decode; ignored", path)
        return None
    if found.schema != _SCHEMA:
        return None
    for entry in found.entries:
        if entry.kind == kind and entry.key == key:
            if usable(entry.stable) and all(holds(s) for s in entry.stable):
                return entry
            log.debug("%s: the %s answer is stale; asking again", path, kind)
            return None
    return None


def _read_trusted(path: Path, baseline: Path) -> bytes | None:
    # Imported here: a run that recalls from the runtime directory never gets this far.
    from ..trust import read_owned, unsafe

    for p in (baseline, path):
        why = unsafe(p)
        if why is not None:
            if why != "missing":
                log.debug("%s is not trusted (%s); its answers are ignored", p, why)
            return None
    try:
        return read_owned(path, _MAX, root_ok=True)
    except OSError:
        return None


# -- the runtime directory -----------------------------------------------------------------

_held: dict[Path, bytes] = {}
"""Runtime-cache files not written yet: their directory did not exist when they were kept."""


def keep(path: Path, data: bytes) -> None:
    """Keep a probe's answer at `path` in the runtime directory: written now when the
    directory exists, else held until the command makes it (`settle`)."""
    _held[path] = data
    # False, not an error, where a directory above may not be entered (a HOME still
    # root's after a switch to the user, for the fallback runtime directory in it).
    if os.path.isdir(path.parent):  # noqa: PTH112
        settle(path.parent)


def settle(runtime: Path) -> None:
    """Write the answers held for `runtime`, made private first when missing; for a
    command that changes state. Nothing is created when nothing is held, and nothing is
    written in a directory that is not ours alone (the answers are then dropped: they are
    looked up in `runtime` only). A failure only costs the next command the probes."""
    held = [p for p in _held if p.parent == runtime]
    if not held:
        return
    from ..config import ensure_runtime_dir
    from ..durable import atomic_write

    try:
        ours = ensure_runtime_dir(runtime) == runtime
        for path in held:
            data = _held.pop(path)
            if ours:
                atomic_write(path, data)
    except PkgckptError as e:
        log.debug("cannot keep the probes' answers in %s: %s", runtime, e)
