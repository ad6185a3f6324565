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

import dataclasses
import errno
import logging
import os
import re
import stat
from datetime import datetime, timezone
from pathlib import Path

from . import __version__, durable, manifest
from .config import Config
from .errors import ManifestError, StoreError, StoreUnavailable, UnknownSchema, UsageError
from .manifest import Body, Manifest, Writer
from .seal import Seal, guard

log = logging.getLogger(__name__)

CURRENT = "manifest.json"
_GENERATION = re.compile(r"manifest\.([1-9][0-9]{0,15})\.json")
SYNCED = ".pkgckpt-synced."
"""`SYNCED + str(gen)`: the directory was fsynced after generation `gen` was written."""


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
    numbers = (int(m.group(1)) for m in found if m)
    return sorted((g for g in numbers if g <= manifest.MAX_GENERATION), reverse=True)


def _synced(names: list[str]) -> list[int]:
    """The generations the sync markers among `names` name, newest first."""
    found = (n[len(SYNCED) :] for n in names if n.startswith(SYNCED))
    return sorted((int(g) for g in found if g.isdigit() and len(g) < 17), reverse=True)


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
    synced: int | None
    """The generation the sync marker names (None: no marker)."""
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
            durable.close_quietly(dfd)
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
            raise durable.error(e, f"cannot open {self.path}") from e
        try:
            _check_owned(os.fstat(dfd), self.path, directory=True, owner=self.owner)
        except BaseException:
            durable.close_quietly(dfd)
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
                raise durable.error(e, f"cannot create {d}") from e

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
            raise durable.error(e, f"cannot open {where}") from e
        try:
            st = os.fstat(fd)
            _check_owned(st, where, directory=False, owner=self.owner)
            data = durable.read_all(fd, manifest.MAX_BYTES + 1)
        except OSError as e:
            raise durable.error(e, f"cannot read {where}") from e
        finally:
            durable.close_quietly(fd)
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
            raise durable.error(e, f"cannot list {self.path}") from e
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
            raise durable.error(e, f"cannot list {self.path}") from e
        finally:
            durable.close_quietly(dfd)

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
            durable.close_quietly(dfd)
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
            durable.close_quietly(dfd)

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
        self._write(dfd, self.seal.sign(manifest.encode_parts(result, encoded)), generation)
        known.generation = generation
        known.body = encoded
        known.kept.add(generation)
        known.stamp = self._stamp(dfd)
        self._known = known
        self._rewrite = False
        self._mark_synced(dfd, known)
        self._prune(dfd, known)
        return result

    def _write(self, dfd: int, parts: durable.Buffers, generation: int) -> None:
        """The durable recipe for manifest.<generation>.json and manifest.json: two files,
        so that an edit in place of one leaves the other whole; one directory fsync."""
        current = self.path / CURRENT
        history = self.path / _generation_name(generation)
        # Both temps carry manifest.json's prefix: one name for a dead writer's leftovers.
        kept = durable.stage(dfd, current, parts, 0o600, self._leftovers)
        try:
            tmp = durable.stage(dfd, current, parts, 0o600, self._leftovers)
        except BaseException:
            durable.discard(dfd, kept, self._leftovers)
            raise
        try:
            settled = durable.install(dfd, kept, history, parts, self._leftovers)
        except BaseException:
            durable.discard(dfd, tmp, self._leftovers)
            raise
        try:
            settled = durable.install(dfd, tmp, current, parts, self._leftovers) or settled
        except BaseException:
            # manifest.json still holds the previous generation: a kept file newer than
            # it would only be taken for it by a fallback.
            durable.discard(dfd, history.name, set())
            raise
        durable.fsync_dir(dfd, self.path, reopen=settled)

    def _mark_synced(self, dfd: int, known: _Known) -> None:
        """Say, in the name of an empty file, that known.generation is durable: a later
        process that does not find it fsyncs the directory before calling it current.

        Not itself fsynced: a marker lost in a crash costs one more fsync, nothing else.
        """
        new = f"{SYNCED}{known.generation}"
        try:
            if known.synced is not None:
                os.rename(f"{SYNCED}{known.synced}", new, src_dir_fd=dfd, dst_dir_fd=dfd)
            else:
                os.close(
                    os.open(
                        new,
                        os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                        0o600,
                        dir_fd=dfd,
                    )
                )
        except OSError as e:
            log.debug("cannot mark %s synced: %s", self.path, e)
            known.synced = None
            return
        known.synced = known.generation

    def _sync(self, dfd: int) -> _Known:
        """Learn the directory's state: last generation, current body; clean stale temps."""
        try:
            names = os.listdir(dfd)
        except OSError as e:
            raise durable.error(e, f"cannot list {self.path}") from e
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
        marks = _synced(names)
        for extra in marks[1:]:
            durable.discard(dfd, f"{SYNCED}{extra}", set())
        known = _Known(
            generation=last,
            body=body,
            kept=set(generations),
            stamp=stamp,
            synced=marks[0] if marks else None,
        )
        if last and known.synced != last:
            # The writer of `last` may have died (or failed) before its directory fsync:
            # make it durable before anyone is told it is current.
            durable.fsync_dir(dfd, self.path)
            self._mark_synced(dfd, known)
        return known

    def _stamp(self, dfd: int) -> tuple[int, ...] | None:
        try:
            st = os.stat(CURRENT, dir_fd=dfd, follow_symlinks=False)
        except FileNotFoundError:
            return None
        except OSError as e:
            raise durable.error(e, f"cannot stat {self.path / CURRENT}") from e
        return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    def _remove_stale_temps(self, dfd: int, names: list[str]) -> None:
        """Remove this host's temp files whose writer is gone, and our own leftovers."""
        self._leftovers.update(durable.stale_temps(names, CURRENT))
        for name in sorted(self._leftovers):
            self._leftovers.discard(name)
            durable.discard(dfd, name, self._leftovers)

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
