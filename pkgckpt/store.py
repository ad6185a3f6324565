"""The store: the only code that reads or writes manifests on shared storage (NFS, or a
local directory).

Layout of a store::

    <store>/                    created 0700 when missing (on NFS an admin provides it)
      <key>/                    0700, owned by its one writer (DESIGN invariant 3)
        manifest.json           the current generation, 0600
        manifest.<gen>.json     the newest `keep` generations, hard links (cheap on NFS):
                                the newest is the same file as manifest.json; the older ones
                                are read only when manifest.json is damaged
        .manifest.json.tmp.<host>.<pid>.<random>
                                a commit in flight or left by a killed writer: readers ignore
                                it; the next writer on <host> removes it once <pid> is gone
        .nfs*                   NFS "silly renames" of files still open somewhere: ignored

A commit (DESIGN invariant 2) writes a unique temp file (O_CREAT|O_EXCL|O_NOFOLLOW, 0600),
fsyncs and closes it (checked: NFS reports write errors at close), links it as
manifest.<gen>.json, renames it over manifest.json and fsyncs the directory, so a reader
sees the previous generation or the new one, whole. On any error the temp file (and its
link) is removed and the commit raises; an ambiguous rename (ESTALE, EIO, a retransmitted
rename answered ENOENT, ...) is settled by reading manifest.json back: the same bytes
(so the same generation and checksum) mean it happened.

Errors: `StoreUnavailable` (EIO, ENOSPC, ESTALE, EDQUOT, ETIMEDOUT, ...: retry later, the
caller keeps its state), `StoreError` (permissions, ownership, layout: a person must look),
`ManifestError` from `read()` when neither manifest.json nor any kept generation is valid,
`UnknownSchema` when manifest.json was written by a newer pkgckpt (never overwritten).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import logging
import os
import re
import stat
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from pathlib import Path

from . import __version__, manifest
from .config import Config
from .errors import ManifestError, StoreError, StoreUnavailable, UnknownSchema, UsageError
from .manifest import Body, Manifest, Writer
from .seal import Seal, guard

log = logging.getLogger(__name__)

CURRENT = "manifest.json"
_GENERATION = re.compile(r"manifest\.([1-9][0-9]{0,17})\.json")

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
# link() errors that mean "no hard links on this file system": commit without history.
_NO_HARD_LINKS = frozenset({errno.EPERM, errno.EOPNOTSUPP, errno.EMLINK})
# Said once per directory and process: a daemon would otherwise say it at every commit.
_WARNED_NO_LINKS: set[Path] = set()
# fsync of a directory is not supported everywhere (some FUSE and network file systems).
_NO_DIR_FSYNC = frozenset({errno.EINVAL, errno.EOPNOTSUPP})


def _error(e: OSError, what: str) -> StoreError:
    kind = StoreError if e.errno in _PERMANENT else StoreUnavailable
    return kind(f"{what}: {e.strerror or e}")


def _close_quietly(fd: int) -> None:
    # Only for descriptors we read from or already failed on: their close() reports nothing
    # that could change the outcome.
    with contextlib.suppress(OSError):
        os.close(fd)


def _host() -> str:
    # socket and secrets are imported where a write needs them: reading a manifest, all
    # a no-op restore does with the store, needs neither.
    import socket

    # The host goes into temp file names: keep it to characters safe in a file name.
    return re.sub(r"[^A-Za-z0-9_.-]", "_", socket.gethostname())[:64] or "unknown"


def _temp_prefix(target: str, host: str) -> str:
    return f".{target}.tmp.{host}."


def _stale_temps(names: Iterable[str], target: str) -> list[str]:
    """The temp files among `names` that this host's writers of `target` left behind when
    they died (killed mid-write: nothing else removes them)."""
    prefix = _temp_prefix(target, _host())
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


def _discard(dfd: int, name: str, leftovers: set[str]) -> None:
    try:
        os.unlink(name, dir_fd=dfd)
    except FileNotFoundError:
        pass
    except OSError:
        leftovers.add(name)


def _write_all(fd: int, parts: Sequence[bytes | memoryview]) -> None:
    views = [memoryview(p).cast("B") for p in parts if len(p)]
    while views:
        written = os.writev(fd, views)
        if written == 0:  # never for a regular file, but an endless loop would be worse
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        while views and written >= len(views[0]):
            written -= len(views.pop(0))
        if written:
            views[0] = views[0][written:]


def _reads_back(path: Path, data: bytes) -> bool:
    """Whether `path` holds exactly `data`: settles a rename whose outcome is unknown.

    Opened by path, not through the directory descriptor, which may be the stale one.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        return _read_all(fd, len(data) + 1) == data
    except OSError:
        return False
    finally:
        _close_quietly(fd)


def _read_all(fd: int, limit: int) -> bytes:
    """Up to `limit` bytes (a short result means the file was smaller)."""
    chunks: list[bytes] = []
    size = 0
    while size < limit:
        chunk = os.read(fd, limit - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def _fsync_dir(dfd: int, directory: Path, settled: bool) -> None:
    fd = dfd
    try:
        if settled:
            # The rename was settled through the path: the old descriptor may be stale.
            fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            if fd != dfd:
                _close_quietly(fd)
    except OSError as e:
        if e.errno not in _NO_DIR_FSYNC:
            raise _error(e, f"cannot make the new {directory} entries durable (fsync)") from e


def _replace(
    dfd: int,
    path: Path,
    data: bytes | Sequence[bytes | memoryview],
    mode: int,
    *,
    history: str | None = None,
    leftovers: set[str] | None = None,
) -> None:
    """The durable recipe, in the directory open as `dfd`; `path` names the target in it.

    `data`: the bytes, or buffers to be written one after the other. `history`: also link
    the new file under this name before the rename. `leftovers` collects the names of temp
    files that could not be removed after a failure.
    """
    import secrets

    parts = (data,) if isinstance(data, bytes) else data

    leftovers = set() if leftovers is None else leftovers
    tmp = f"{_temp_prefix(path.name, _host())}{os.getpid()}.{secrets.token_hex(4)}"
    try:
        fd = os.open(
            tmp,
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
            0o600,
            dir_fd=dfd,
        )
    except OSError as e:
        raise _error(e, f"cannot create a temporary file in {path.parent}") from e
    try:
        if mode != 0o600:
            os.fchmod(fd, mode)
        _write_all(fd, parts)
        os.fsync(fd)
    except OSError as e:
        _close_quietly(fd)
        _discard(dfd, tmp, leftovers)
        raise _error(e, f"cannot write {path}") from e
    try:
        os.close(fd)
    except OSError as e:
        _discard(dfd, tmp, leftovers)
        raise _error(e, f"cannot write {path} (reported at close)") from e
    linked = False
    if history is not None:
        try:
            os.link(tmp, history, src_dir_fd=dfd, dst_dir_fd=dfd)
            linked = True
        except FileExistsError as e:
            _discard(dfd, tmp, leftovers)
            raise StoreUnavailable(
                f"cannot record {path.parent / history}: it already exists "
                "(is another writer using this key?)"
            ) from e
        except OSError as e:
            if e.errno not in _NO_HARD_LINKS:
                _discard(dfd, tmp, leftovers)
                raise _error(e, f"cannot record {path.parent / history}") from e
            if path.parent not in _WARNED_NO_LINKS:
                _WARNED_NO_LINKS.add(path.parent)
                log.warning(
                    "%s: no hard links here (%s): earlier generations are not kept",
                    path.parent,
                    e.strerror,
                )
    settled = False
    try:
        os.rename(tmp, path.name, src_dir_fd=dfd, dst_dir_fd=dfd)
    except OSError as e:
        # The server may have done the rename and lost the reply (ESTALE, EIO, ENOENT on a
        # retransmission): the target holding our exact bytes says it is done.
        _discard(dfd, tmp, leftovers)
        settled = _reads_back(path, b"".join(parts))
        if not settled:
            if linked and history is not None:
                _discard(dfd, history, set())
            raise _error(e, f"cannot replace {path}") from e
        log.info("%s: rename reported %s but the new file is in place", path, e.strerror)
    _fsync_dir(dfd, path.parent, settled)


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
        raise _error(e, f"cannot open the directory {path.parent}") from e
    try:
        _replace(dfd, path, data, mode)
        with contextlib.suppress(OSError):  # tidying up: never a reason to fail the write
            for name in _stale_temps(os.listdir(dfd), path.name):  # noqa: PTH208
                _discard(dfd, name, set())
    finally:
        _close_quietly(dfd)


def open_store(config: Config) -> Store:
    """The store and key `config` names, owned as it says, after `seal.guard`'s checks."""
    return Store(
        config.store,
        config.key,
        keep=config.keep_generations,
        owner=config.store_uid,
        seal=guard(config),
    )


def _check_key(key: str) -> None:
    # A key is one directory name: nothing that climbs out of the store or hides in it.
    if not key or key.startswith(".") or "/" in key or "\0" in key:
        raise UsageError(
            f"invalid store key {key!r}: it must be a non-empty file name "
            "without '/' that does not start with '.'"
        )
    if len(os.fsencode(key)) > 200:
        raise UsageError(f"invalid store key {key!r}: longer than 200 bytes")


def _check_owned(st: os.stat_result, where: Path, *, directory: bool, owner: int) -> None:
    """Refuse what this user does not solely control (DESIGN invariant 4)."""
    if directory and not stat.S_ISDIR(st.st_mode):
        raise StoreError(f"{where} is not a directory: refused")
    if not directory and not stat.S_ISREG(st.st_mode):
        raise StoreError(f"{where} is not a regular file: refused")
    if st.st_uid != owner:
        whose, hint = "store_uid", ""
        if owner == os.geteuid():
            whose = "this user"
            hint = " (if the NFS server maps this user's files to one uid, set store_uid to it)"
        raise StoreError(
            f"{where} is owned by uid {st.st_uid}, not by {whose} (uid {owner}): refused{hint}"
        )
    if st.st_mode & 0o022:
        raise StoreError(
            f"{where} is writable by group or others (mode {stat.S_IMODE(st.st_mode):04o}): refused"
        )


def _generation_name(generation: int) -> str:
    return f"manifest.{generation}.json"


def _generations(names: list[str]) -> list[int]:
    """Kept generations among directory entries, newest first."""
    found = (_GENERATION.fullmatch(n) for n in names)
    return sorted((int(m.group(1)) for m in found if m), reverse=True)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclasses.dataclass
class _Known:
    """What this writer knows of its key directory since its last successful commit."""

    generation: int
    body: bytes | None
    """`encode_body` of manifest.json, None to force the next commit to write."""
    kept: set[int]
    """Generations present as manifest.<gen>.json (to prune)."""
    stamp: tuple[int, ...] | None
    """manifest.json's identity when last seen: another change means another writer."""


class Store:
    """One key's directory on the store: read its manifest, commit new generations.

    After `read()`, `last_read_warning` is None when manifest.json was used, or says why
    an earlier generation was returned instead (also logged as a warning): the caller can
    tell a fallback from a normal read, and the next `commit()` replaces the damaged file.
    """

    def __init__(
        self,
        root: Path,
        key: str,
        *,
        keep: int = 5,
        owner: int | None = None,
        seal: Seal | None = None,
    ) -> None:
        """`owner`: the uid that owns what this user writes here; this process's euid by
        default. An NFS export with all_squash (or anonuid) gives every file its one uid.
        `seal`: signs what is written and checks what is read (see seal.py)."""
        _check_key(key)
        if keep < 1:
            raise UsageError(f"keep must be at least 1, not {keep}")
        self.root = Path(root)
        self.key = key
        self.keep = keep
        self.owner = os.geteuid() if owner is None else owner
        self.seal = Seal() if seal is None else seal
        self.path = self.root / key
        self.last_read_warning: str | None = None
        self._known: _Known | None = None
        self._rewrite = False
        self._leftovers: set[str] = set()

    # -- reading ---------------------------------------------------------------------------

    def read(self) -> Manifest | None:
        """The current manifest; None when there is none yet (no key directory or no file).

        A damaged manifest.json falls back to the newest valid kept generation (see
        `last_read_warning`); hostile files (foreign owner, group/other writable, symlink,
        not a regular file) are refused with StoreError, never fallen back from.
        """
        self.last_read_warning = None
        dfd = self._open_dir()
        if dfd is None:
            return None
        try:
            found, warning = self._read_in(dfd)
        finally:
            _close_quietly(dfd)
        if warning is not None:
            log.warning("%s", warning)
            self.last_read_warning = warning
        return found

    def _open_dir(self) -> int | None:
        """The key directory, checked; None when it does not exist."""
        try:
            dfd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as e:
            if e.errno == errno.ENOENT:
                return None
            if e.errno in (errno.ELOOP, errno.ENOTDIR):
                raise StoreError(
                    f"{self.path} is not a directory (a symlink or a file): refused"
                ) from e
            raise _error(e, f"cannot open {self.path}") from e
        try:
            _check_owned(os.fstat(dfd), self.path, directory=True, owner=self.owner)
        except BaseException:
            _close_quietly(dfd)
            raise
        return dfd

    def _make_dirs(self) -> None:
        missing: list[Path] = []
        directory = self.path
        while not os.path.lexists(directory):
            missing.append(directory)
            directory = directory.parent
        for d in reversed(missing):
            try:
                d.mkdir(0o700)
            except FileExistsError:
                pass
            except OSError as e:
                raise _error(e, f"cannot create {d}") from e

    def _load(self, dfd: int, name: str) -> bytes | None:
        """The bytes of a manifest file, checked; None when it does not exist."""
        where = self.path / name
        try:
            fd = os.open(
                name,
                os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY,
                dir_fd=dfd,
            )
        except OSError as e:
            if e.errno == errno.ENOENT:
                return None
            if e.errno == errno.ELOOP:
                raise StoreError(f"{where} is a symbolic link: refused") from e
            raise _error(e, f"cannot open {where}") from e
        try:
            st = os.fstat(fd)
            _check_owned(st, where, directory=False, owner=self.owner)
            data = _read_all(fd, manifest.MAX_BYTES + 1)
        except OSError as e:
            raise _error(e, f"cannot read {where}") from e
        finally:
            _close_quietly(fd)
        return self.seal.open(data, where)

    def _read_in(self, dfd: int) -> tuple[Manifest | None, str | None]:
        """The manifest and, when it came from an earlier generation, the reason why."""
        current = self.path / CURRENT
        try:
            data = self._load(dfd, CURRENT)
            if data is not None:
                return manifest.decode(data, str(current)), None
            problem = f"{current} is missing"
        except UnknownSchema:
            raise
        except ManifestError as e:
            problem = str(e)
        try:
            generations = _generations(os.listdir(dfd))
        except OSError as e:
            raise _error(e, f"cannot list {self.path}") from e
        if data is None and not generations:
            return None, None
        for generation in generations:
            name = _generation_name(generation)
            kept = self._load(dfd, name)
            if kept is None:
                continue
            try:
                found = manifest.decode(kept, str(self.path / name))
            except UnknownSchema:
                raise
            except ManifestError:
                continue
            return found, f"{problem}; using generation {found.generation} from {name}"
        raise ManifestError(f"{problem}; no earlier generation in {self.path} is valid")

    def generations(self) -> list[int]:
        """The kept generations, newest first (what `read_generation` can read)."""
        dfd = self._open_dir()
        if dfd is None:
            return []
        try:
            return _generations(os.listdir(dfd))  # noqa: PTH208
        except OSError as e:
            raise _error(e, f"cannot list {self.path}") from e
        finally:
            _close_quietly(dfd)

    def read_generation(self, generation: int) -> Manifest | None:
        """A kept generation, checked like manifest.json; None when it is not kept.

        Raises ManifestError when it is damaged, StoreError when it is hostile.
        """
        dfd = self._open_dir()
        if dfd is None:
            return None
        name = _generation_name(generation)
        try:
            data = self._load(dfd, name)
        finally:
            _close_quietly(dfd)
        if data is None:
            return None
        found = manifest.decode(data, str(self.path / name))
        if found.generation != generation:
            raise ManifestError(f"{self.path / name} holds generation {found.generation}")
        return found

    # -- writing ---------------------------------------------------------------------------

    def commit(self, body: Body, encoded: bytes | None = None) -> Manifest | None:
        """Write `body` as the next generation, durably; None when it is unchanged.

        `encoded`: `manifest.encode_body(body)`, when the caller has it already.

        Raises StoreUnavailable (retry later: nothing was lost, the previous generation is
        intact or the new one is in place, whole) or StoreError / UnknownSchema.
        """
        self._make_dirs()
        dfd = self._open_dir()
        if dfd is None:
            raise StoreUnavailable(f"{self.path} disappeared while committing")
        try:
            return self._commit(dfd, body, encoded)
        except BaseException:
            # The outcome may be visible but not durable: re-read the directory and write
            # again next time, even an unchanged body.
            self._known = None
            self._rewrite = True
            raise
        finally:
            _close_quietly(dfd)

    def _commit(self, dfd: int, body: Body, encoded: bytes | None) -> Manifest | None:
        import socket

        known = self._known
        if known is not None and self._stamp(dfd) != known.stamp:
            log.warning(
                "%s changed since this writer's last commit: is another writer using key %r?",
                self.path / CURRENT,
                self.key,
            )
            known = None
        if known is None:
            known = self._sync(dfd)
        if encoded is None:
            encoded = manifest.encode_body(body)
        if encoded == known.body:
            self._known = known
            return None
        generation = known.generation + 1
        result = Manifest(
            generation=generation,
            writer=Writer(host=socket.gethostname(), pid=os.getpid(), version=__version__),
            time=_now(),
            body=body,
        )
        _replace(
            dfd,
            self.path / CURRENT,
            self.seal.sign(manifest.encode_parts(result, encoded)),
            0o600,
            history=_generation_name(generation),
            leftovers=self._leftovers,
        )
        known.generation = generation
        known.body = encoded
        known.kept.add(generation)
        known.stamp = self._stamp(dfd)
        self._known = known
        self._rewrite = False
        self._prune(dfd, known)
        return result

    def _sync(self, dfd: int) -> _Known:
        """Learn the directory's state: last generation, current body; clean stale temps."""
        try:
            names = os.listdir(dfd)
        except OSError as e:
            raise _error(e, f"cannot list {self.path}") from e
        self._remove_stale_temps(dfd, names)
        stamp = self._stamp(dfd)
        try:
            current, warning = self._read_in(dfd)
        except UnknownSchema:
            raise
        except ManifestError as e:
            log.warning("%s; the next commit replaces it", e)
            current, warning = None, str(e)
        generations = _generations(names)
        last = max([current.generation if current else 0, *generations[:1]])
        body = None
        if current is not None and warning is None and not self._rewrite:
            body = manifest.encode_body(current.body)
        return _Known(generation=last, body=body, kept=set(generations), stamp=stamp)

    def _stamp(self, dfd: int) -> tuple[int, ...] | None:
        try:
            st = os.stat(CURRENT, dir_fd=dfd, follow_symlinks=False)
        except FileNotFoundError:
            return None
        except OSError as e:
            raise _error(e, f"cannot stat {self.path / CURRENT}") from e
        return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    def _remove_stale_temps(self, dfd: int, names: list[str]) -> None:
        """Remove this host's temp files whose writer is gone, and our own leftovers."""
        self._leftovers.update(_stale_temps(names, CURRENT))
        for name in sorted(self._leftovers):
            self._leftovers.discard(name)
            _discard(dfd, name, self._leftovers)

    def _prune(self, dfd: int, known: _Known) -> None:
        """Keep the newest `keep` generations; a failure here does not fail the commit."""
        for generation in sorted(known.kept):
            if generation > known.generation - self.keep:
                break
            try:
                os.unlink(_generation_name(generation), dir_fd=dfd)
            except FileNotFoundError:
                pass
            except OSError as e:
                log.warning("cannot remove %s: %s", self.path / _generation_name(generation), e)
                continue
            known.kept.discard(generation)
