"""The durable atomic write: replace a file so that readers see the old bytes or the new
ones, whole, across kill -9, EIO, ENOSPC and ESTALE (DESIGN invariant 2).

Used by the store (manifests), the baseline, the daemon's status file and the
interpreter cache. The recipe, in the target's directory:

    unique temp file (O_CREAT|O_EXCL|O_NOFOLLOW, 0600) -> write -> fsync -> close
    (checked: NFS reports write errors there) -> rename over the target -> fsync the
    directory

On any error the temp file is removed and `StoreUnavailable` (EIO, ENOSPC, ESTALE, ...:
retry later) or `StoreError` (permissions, a missing directory: a person must look) is
raised. An ambiguous rename (ESTALE, EIO, a retransmitted rename answered ENOENT) is
settled by reading the target back: the same bytes mean it happened.

Temp files are named `.<target>.tmp.<host>.<pid>.<random>`: a writer killed mid-write
leaves one, which the next writer of that target on that host removes once <pid> is gone.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from .errors import StoreError, StoreUnavailable
from .logs import getLogger

log = getLogger(__name__)

# A person has to act on these; every other errno (EIO, ENOSPC, ESTALE, EDQUOT, ETIMEDOUT,
# ENOTCONN, ...) may clear by itself, so it is reported as StoreUnavailable: retry later.
_PERMANENT = frozenset(
    {
        errno.EACCES,
        errno.EPERM,
        errno.EROFS,
        errno.ENOTDIR,
        errno.EISDIR,
        errno.ELOOP,
        errno.ENAMETOOLONG,
        errno.ENOENT,
        errno.EXDEV,
        errno.EINVAL,
    }
)
# fsync of a directory is not supported everywhere (some FUSE and network file systems).
_NO_DIR_FSYNC = frozenset({errno.EINVAL, errno.EOPNOTSUPP})

Buffers = Sequence[bytes | memoryview]


def error(e: OSError, what: str) -> StoreError:
    """`e` as the error a caller reports: StoreUnavailable when it may clear by itself."""
    kind = StoreError if e.errno in _PERMANENT else StoreUnavailable
    return kind(f"{what}: {e.strerror or e}")


def close_quietly(fd: int) -> None:
    """Close a descriptor read from or already failed on: its close() reports nothing
    that could change the outcome."""
    with contextlib.suppress(OSError):
        os.close(fd)


@functools.cache
def host() -> str:
    """This host's name, as it goes into temp file names (characters safe in a name).

    Taken once per process: every durable write names two temps with it. A host renamed
    under a running process only delays the removal of that process's dead temps.
    """
    # uname's nodename is what socket.gethostname() returns on Linux, without importing
    # socket (~2 ms of a no-op restore, which writes its metrics file).
    return re.sub(r"[^A-Za-z0-9_.-]", "_", os.uname().nodename)[:64] or "unknown"


def _temp_prefix(target: str, on: str) -> str:
    return f".{target}.tmp.{on}."


def stale_temps(names: Iterable[str], target: str) -> list[str]:
    """The temp files among `names` that this host's writers of `target` left behind when
    they died (killed mid-write: nothing else removes them)."""
    prefix = _temp_prefix(target, host())
    stale = []
    for name in names:
        if name.startswith(prefix):
            pid = name[len(prefix) :].partition(".")[0]
            if pid.isdigit() and not _alive(int(pid)):
                stale.append(name)
    return stale


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def discard(dfd: int, name: str, leftovers: set[str]) -> None:
    """Remove `name` from the directory `dfd`; add it to `leftovers` when that fails."""
    try:
        os.unlink(name, dir_fd=dfd)
    except FileNotFoundError:
        pass
    except OSError:
        leftovers.add(name)


def _write_all(fd: int, parts: Buffers) -> None:
    views = [memoryview(p).cast("B") for p in parts if len(p)]
    while views:
        written = os.writev(fd, views)
        if written == 0:  # never for a regular file, but an endless loop would be worse
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        while views and written >= len(views[0]):
            written -= len(views.pop(0))
        if written:
            views[0] = views[0][written:]


def read_all(fd: int, limit: int, expected: int | None = None) -> bytes:
    """Up to `limit` bytes (a short result means the file was smaller).

    `expected`: the size fstat gave. Reads then ask for one byte more than that, and a
    short read at exactly that size is the end: no read is spent to find it, and no
    `limit`-sized buffer is allocated (a file that grew is read on).
    """
    chunks: list[bytes] = []
    size = 0
    step = limit if expected is None else min(limit, expected + 1)
    while size < limit:
        chunk = os.read(fd, min(step, limit - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
        if size == expected:
            break
    return b"".join(chunks)


def sha256_of(fd: int, limit: int | None = None) -> str:
    """The sha256 (hex) of what `fd` holds from its offset to its end, or of its first
    `limit` + 1 bytes: a file someone else can grow is not read whole."""
    import hashlib

    digest = hashlib.sha256()
    left = float("inf") if limit is None else limit + 1
    while left > 0 and (chunk := os.read(fd, int(min(1 << 20, left)))):
        digest.update(chunk)
        left -= len(chunk)
    return digest.hexdigest()


def _reads_back(path: Path, data: bytes) -> bool:
    """Whether `path` holds exactly `data`: settles a rename whose outcome is unknown.

    Opened by path, not through the directory descriptor, which may be the stale one.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        return read_all(fd, len(data) + 1) == data
    except OSError:
        return False
    finally:
        close_quietly(fd)


def fsync_dir(dfd: int, directory: Path, *, reopen: bool = False) -> None:
    """Make `directory`'s entries durable; `reopen`: through a new descriptor (the old one
    may be stale after a rename settled by path)."""
    fd = dfd
    try:
        if reopen:
            fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            if fd != dfd:
                close_quietly(fd)
    except OSError as e:
        if e.errno not in _NO_DIR_FSYNC:
            raise error(e, f"cannot make the new {directory} entries durable (fsync)") from e


def _copy_all(fd: int, source: int) -> None:
    """Copy `source` from its offset to its end into `fd`, in the kernel where it can."""
    while True:
        try:
            copied = os.copy_file_range(source, fd, 1 << 24)
        except OSError as e:
            if e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
                raise
            copied = os.sendfile(fd, source, None, 1 << 24)
        if copied == 0:
            return


def stage(dfd: int, path: Path, parts: Buffers | int, mode: int, leftovers: set[str]) -> str:
    """Write `parts` (buffers, or an open file to copy from its offset on) to a new unique
    temp file beside `path` (in the directory `dfd`), fsynced and closed; its name. On
    error it is removed (or added to `leftovers`)."""
    # os.urandom, as secrets.token_hex uses, without importing secrets and random (~3 ms).
    tmp = f"{_temp_prefix(path.name, host())}{os.getpid()}.{os.urandom(4).hex()}"
    try:
        fd = os.open(
            tmp,
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
            0o600,
            dir_fd=dfd,
        )
    except OSError as e:
        raise error(e, f"cannot create a temporary file in {path.parent}") from e
    try:
        if mode != 0o600:
            os.fchmod(fd, mode)
        if isinstance(parts, int):
            _copy_all(fd, parts)
        else:
            _write_all(fd, parts)
        os.fsync(fd)
    except BaseException as e:
        # A signal's exception (SIGTERM mid-copy) must not leave the temp file either.
        close_quietly(fd)
        discard(dfd, tmp, leftovers)
        if isinstance(e, OSError):
            raise error(e, f"cannot write {path}") from e
        raise
    try:
        os.close(fd)
    except OSError as e:
        discard(dfd, tmp, leftovers)
        raise error(e, f"cannot write {path} (reported at close)") from e
    return tmp


def install(dfd: int, tmp: str, path: Path, parts: Buffers, leftovers: set[str]) -> bool:
    """Rename the staged `tmp` over `path`; True when the outcome was settled by reading
    `path` back (the directory descriptor may then be stale)."""
    try:
        os.rename(tmp, path.name, src_dir_fd=dfd, dst_dir_fd=dfd)
    except OSError as e:
        # The server may have done the rename and lost the reply (ESTALE, EIO, ENOENT on a
        # retransmission): the target holding our exact bytes says it is done.
        discard(dfd, tmp, leftovers)
        if not _reads_back(path, b"".join(parts)):
            raise error(e, f"cannot replace {path}") from e
        log.info("%s: rename reported %s but the new file is in place", path, e.strerror)
        return True
    return False


def replace(
    dfd: int,
    path: Path,
    data: bytes | Buffers,
    mode: int = 0o600,
    leftovers: set[str] | None = None,
) -> None:
    """The durable recipe, in the directory open as `dfd`; `path` names the target in it.

    `data`: the bytes, or buffers to be written one after the other. `leftovers` collects
    the names of temp files that could not be removed after a failure.
    """
    parts = (data,) if isinstance(data, bytes) else data
    leftovers = set() if leftovers is None else leftovers
    tmp = stage(dfd, path, parts, mode, leftovers)
    settled = install(dfd, tmp, path, parts, leftovers)
    fsync_dir(dfd, path.parent, reopen=settled)


def atomic_write(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Replace `path` with `data` durably: readers see the old file or the new one, whole.

    Raises StoreUnavailable (EIO, ENOSPC, ESTALE, ...: retry later) or StoreError
    (permissions, a missing directory); on error the temp file is removed (unless the
    removal fails too). After a write, the temp files of this host's writers of `path`
    that died are removed.
    """
    path = Path(path)
    try:
        dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        raise error(e, f"cannot open the directory {path.parent}") from e
    try:
        replace(dfd, path, data, mode)
        with contextlib.suppress(OSError):  # tidying up: never a reason to fail the write
            for name in stale_temps(os.listdir(dfd), path.name):  # noqa: PTH208
                discard(dfd, name, set())
    finally:
        close_quietly(dfd)
