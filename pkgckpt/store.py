"""The store: the only code that reads or writes manifests on shared storage (NFS, or a
local directory). It knows files, generations and owners, never packages.

Layout of a store::

    <store>/                    the store root: made by `pkgckpt store init` (an admin, once,
                                on the NFS export; the default local store is made on first
                                use). Never a symlink; writable by group or others only
                                with the sticky bit (1777), else they could move a key
                                away; owned by root, the user, store_uid or nobody (what
                                root_squash makes of root), since its owner can move any
                                key away, sticky bit or not.
      .pkgckpt-store            the marker: a root without it is unavailable, not empty
      <key>/                    0700, owned by its one writer (DESIGN invariant 3)
        manifest.json           the current generation, 0600
        manifest.<gen>.json     the newest `keep` generations, each a file of its own (an
                                edit in place damages one file only); its name is how a
                                writer claims the number <gen>; read when manifest.json is
                                damaged, or older than the newest of them
        .pkgckpt-synced.<gen>   empty; renamed after each directory fsync: the newest
                                generation without it may not be durable yet
        .manifest.json.tmp.<host>.<pid>.<random>
                                a commit in flight or left by a killed writer: readers ignore
                                it; the next writer on <host> removes it once <pid> is gone
        .nfs*                   NFS "silly renames" of files still open somewhere: ignored

A store is present only when it says so: a missing root, or one without the marker (an
NFS mount that has not arrived, a bind mount that is missing), is `StoreUnavailable`
("store DIR is not available (not mounted?)"), never an empty store, and pkgckpt never
creates a store root (but the default local one) nor writes into an unmarked one.

A commit (DESIGN invariant 2, recipe in `durable`) stages two temp files, fsynced and
closed, links one as manifest.<gen>.json (never replacing: that name claims the number),
renames the other over manifest.json, fsyncs the directory and renames the sync marker,
so a reader sees the previous generation or the new one, whole. Before writing, a commit
compares manifest.json with what this writer last read or wrote (`check`): when another
writer, a deleted directory or a rollback changed it, the caller folds what the store
holds into its record first. An ambiguous rename (ESTALE, EIO, a retransmitted rename
answered ENOENT, ...) is settled by reading the file back, an ambiguous link (EEXIST to
a retransmitted one) by its inode. An amend (`commit`'s `amend`) renames over its own
generation's file, as manifest.json holds it as this writer saw it.

Two writers of one key (a user's two notebook servers, a pod replaced while the old one
still flushes, a new pod's restore while the old daemon commits) take no lock (NFS): a
commit that loses a race raises `StoreConflict` and replaces no generation the other
claimed (two amends of one generation at one moment aside: the later one's annotations
stand, the other's writer finds manifest.json changed at its next commit). It happens
when the number it picked is claimed already (the link answers EEXIST), when the number
after its own is claimed once its manifest.json is in place (one stat: the other's
manifest.json may have landed first, and this one put an older generation over it), or
when it finds a kept generation newer than manifest.json and newer than any it has seen
(the other's rename not landed yet, or its writer killed before it). The next `check` or
`read` then returns the newest valid generation, whichever file holds it; the caller
folds it in and commits again above it (`checkpoint.commit`, `record`), so manifest.json
ends at a generation that holds both writers' records. Readers keep reading
manifest.json alone (one file, no listing): an older generation over a newer one lasts
until that writer's retry, or, if it was killed in between, the next commit.

Every store call can be a round trip to an NFS server, so they are counted
(tests/test_store_cost.py): `cycle()` checks the root, its marker and the key directory
once for a check and the commit after it; `check` opens manifest.json and compares its
stamp without reading it; a read asks for the size fstat gave, in one call. Claiming the
number costs a commit two calls more than a rename did (the temp name's unlink, the stat
for the next number); a check and a read cost what they did.

Errors: `StoreUnavailable` (EIO, ENOSPC, ESTALE, EDQUOT, ETIMEDOUT, an unmounted store,
...: retry later, the caller keeps its state), `StoreConflict` (a StoreUnavailable: fold
the newest generation in and commit again), `StoreError` (permissions, ownership, layout:
a person must look), `ManifestError` from `read()` when neither manifest.json nor any
kept generation is valid, `UnknownSchema` when manifest.json was written by a newer
pkgckpt (never overwritten).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import msgspec

from . import __version__, durable, manifest
from .config import Config
from .errors import (
    ManifestError,
    StoreConflict,
    StoreError,
    StoreUnavailable,
    UnknownSchema,
    UsageError,
)
from .logs import getLogger
from .manifest import Body, Manifest, Writer
from .seal import Seal, guard

log = getLogger(__name__)
_T = TypeVar("_T")

CURRENT = "manifest.json"
_GENERATION = re.compile(r"manifest\.([1-9][0-9]{0,15})\.json")
SYNCED = ".pkgckpt-synced."
"""`SYNCED + str(gen)`: the directory was fsynced after generation `gen` was written."""


MARKER = ".pkgckpt-store"
"""The file that makes a directory a store root (`pkgckpt store init`)."""


def open_store(config: Config, *, layout: bool = True) -> Store:
    """The store and key `config` names, owned as it says, after `seal.guard`'s checks
    (`layout`: see there). The default local store is initialised on first use; any other
    must have been (`init_store`)."""
    from .config import default_store

    if config.store == default_store():
        init_store(config.store, parents=True)
    return Store(
        config.store,
        config.key,
        keep=config.keep_generations,
        owner=config.store_uid,
        seal=guard(config, layout=layout),
    )


def answered(seconds: float, call: Callable[[], _T], root: Path, *, unsure: str = "") -> _T:
    """`call()`'s answer when it comes within `seconds`, else StoreUnavailable. A hard NFS
    mount whose server stopped answering blocks the call for as long as it is gone: it is
    left waiting in a thread of its own, which the process's exit ends. For the commands a
    person waits for (`status`, `forget`). `unsure`: what the message adds about a call
    that may still finish (a write)."""
    import threading

    answer: list[tuple[_T | None, BaseException | None]] = []
    done = threading.Event()

    def ask() -> None:
        try:
            answer.append((call(), None))
        except BaseException as e:  # raised again in the asking thread
            answer.append((None, e))
        finally:
            done.set()

    threading.Thread(target=ask, name="store", daemon=True).start()
    if not done.wait(seconds):
        raise StoreUnavailable(
            f"store {root} did not answer within {seconds:g} s (an NFS server that stopped "
            f"answering?){unsure}"
        )
    value, error = answer[0]
    if error is not None:
        raise error
    return value  # type: ignore[return-value]


def init_store(root: Path, *, parents: bool = False) -> bool:
    """Make `root` a store: create it (0700) when missing, then write its marker.

    Idempotent: False when it was a store already. `parents`: create missing parents too
    (the default local store). Refuses a root that every `Store` would refuse; its owner
    is checked by each user's `Store`, against the owners that user trusts (an
    administrator makes a root on the server and may then give it to a user's uid).
    """
    root = Path(root)
    try:
        root.mkdir(0o700, parents=parents)
    except FileExistsError:
        pass
    except OSError as e:
        raise durable.error(e, f"cannot create the store {root}") from e
    rfd = _open_root(root)
    try:
        try:
            marker = os.stat(MARKER, dir_fd=rfd, follow_symlinks=False)
            # Another user's (see `Store._open_dir`) is replaced by this one's.
            if _may_own(marker.st_uid, os.geteuid()):
                return False
        except FileNotFoundError:
            pass
        except OSError as e:
            raise durable.error(e, f"cannot look for {root / MARKER}") from e
        text = f"pkgckpt store (written by pkgckpt {__version__} at {_now()})\n".encode()
        durable.replace(rfd, root / MARKER, text, 0o644)
    finally:
        durable.close_quietly(rfd)
    return True


def _not_available(root: Path, why: str) -> StoreUnavailable:
    return StoreUnavailable(
        f"store {root} is not available (not mounted?): {why}; "
        f"an administrator makes a directory a store once with `pkgckpt store init {root}`"
    )


NOBODY = 65534
"""`nobody`: the uid an NFS server's root_squash gives what a client's root creates (an
administrator's `pkgckpt store init` on a client), and the kernel's overflow uid (a
root-owned directory seen from a user namespace)."""


def _open_root(root: Path, owner: int | None = None) -> int:
    """The store root, checked: a root that someone other than this user (`owner`: the
    uid of what this user writes there) and the administrators could rearrange is
    refused. `owner` None: the owner is not checked (`init_store`)."""
    try:
        rfd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        if e.errno == errno.ENOENT:
            raise _not_available(root, "the directory does not exist") from e
        if e.errno == errno.ELOOP or (e.errno == errno.ENOTDIR and root.is_symlink()):
            raise StoreError(
                f"store {root} is a symbolic link: refused "
                f"(configure the directory it points to, {os.path.realpath(root)})"
            ) from e
        if e.errno == errno.ENOTDIR:
            raise StoreError(f"store {root} is not a directory: refused") from e
        raise durable.error(e, f"cannot open the store {root}") from e
    try:
        _check_root(os.fstat(rfd), root, owner)
    except BaseException:
        durable.close_quietly(rfd)
        raise
    return rfd


def _may_own(uid: int, owner: int) -> bool:
    """`uid` may own the store's root and its marker: root, this user, the store's owner
    (`store_uid`) or nobody (see `NOBODY`)."""
    return uid in (0, os.geteuid(), owner, NOBODY)


def _check_root(st: os.stat_result, root: Path, owner: int | None) -> None:
    mode = stat.S_IMODE(st.st_mode)
    # Without the sticky bit, whoever may write a directory may rename what is in it.
    group, others = st.st_mode & stat.S_IWGRP, st.st_mode & stat.S_IWOTH
    if (group or others) and not st.st_mode & stat.S_ISVTX:
        who = f"its group ({_group(st.st_gid)})" if group else ""
        who = " and ".join(w for w in (who, "others" if others else "") if w)
        bits = ("g" if group else "") + ("o" if others else "") + "-w"
        raise StoreError(
            f"store {root} is writable by {who} without the sticky bit "
            f"(mode {mode:04o}): any of them could move a key directory away: refused "
            f"(fix: chmod +t {root}, or chmod {bits} {root})"
        )
    # The sticky bit binds everyone but the directory's owner.
    if owner is not None and not _may_own(st.st_uid, owner):
        trusted = ["root", "this user"]
        if owner not in (0, os.geteuid()):
            trusted.append(f"store_uid (uid {owner})")
        raise StoreError(
            f"store {root} is owned by {_user(st.st_uid)}, not by {', '.join(trusted)} or "
            "nobody: its owner could move any key directory away, sticky bit or not: "
            f"refused (fix: an administrator gives it to root, `chown root {root}` on the "
            "NFS server, or to the user whose store it alone is; if the export maps every "
            "user's files to one uid, set store_uid to it)"
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
        if directory:
            hint = (
                f"; ask {_user(st.st_uid)} or an administrator to remove it, or use another "
                f"key (--key or PKGCKPT_KEY){hint}"
            )
        raise StoreError(
            f"{where} is owned by {_user(st.st_uid)}, not by {whose} (uid {owner}): refused{hint}"
        )
    if st.st_mode & 0o022:
        raise StoreError(
            f"{where} is writable by group or others (mode {stat.S_IMODE(st.st_mode):04o}): refused"
        )


def _user(uid: int) -> str:
    import pwd

    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def _group(gid: int) -> str:
    import grp

    try:
        return f"{grp.getgrgid(gid).gr_name}, gid {gid}"
    except KeyError:
        return f"gid {gid}"


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
    # What datetime.now(timezone.utc).isoformat(timespec="seconds") says, at half its cost
    # (once per commit).
    return time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())


Stamp = tuple[int, int, int, int]
"""A file's inode, size, mtime and ctime (ns): any write, rename or replacement changes
one of them, and ctime cannot be set back."""


_UNKNOWN: Stamp = (-1, -1, -1, -1)


def _stamp_of(st: os.stat_result) -> Stamp:
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class _Known(msgspec.Struct):
    """What this writer knows of its key directory since its last successful commit."""

    generation: int
    body: bytes | None
    """`encode_body` of manifest.json, None to force the next commit to write."""
    kept: set[int]
    """Generations present as manifest.<gen>.json (to prune)."""
    synced: int | None
    """The generation the sync marker names (None: no marker)."""
    stamp: Stamp | None
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
        self._current = self.path / CURRENT
        self._writer_as: Writer | None = None
        self.last_read_warning: str | None = None
        self._known: _Known | None = None
        self._rewrite = False
        self._leftovers: set[str] = set()
        self._stamp_read: Stamp | None = None
        """The stamp of the file `_load` read last (from the descriptor it read)."""
        self._seen: Stamp | None = None
        """manifest.json as last read whole or written (`check`)."""
        self._cycle: int | None = None
        """The key directory, open for the length of a `cycle()`."""
        self._checked: Stamp | None = None
        """manifest.json's stamp as `check` found it unchanged in this cycle."""
        self._last_read: tuple[Stamp, Manifest] | None = None
        """manifest.json as last read whole: a first commit need not read it again."""
        self._high = 0
        """The highest generation this Store has seen or written: a rolled-back directory
        must not make the generations run backwards."""
        self._conflict = False
        """Another writer took or passed this Store's last generation number: `check`
        (once) and `read` (until a commit succeeds) return the newest generation,
        whichever file holds it."""

    # -- reading ---------------------------------------------------------------------------

    def read(self) -> Manifest | None:
        """The current manifest; None when there is none yet (no key directory or no file).

        A damaged manifest.json falls back to the newest valid kept generation (see
        `last_read_warning`); hostile files (foreign owner, group/other writable, symlink,
        not a regular file) are refused with StoreError, never fallen back from. After
        this Store's commit raised StoreConflict, and until one succeeds, the newest valid
        generation, whichever file holds it.
        """
        self.last_read_warning = None
        dfd = self._key_dir()
        if dfd is None:
            return None
        try:
            # Until a commit succeeds or `check` hands the newest generation over: a read
            # that only compares (`checkpoint.confirm`) folds nothing in.
            found, warning = self._newest(dfd) if self._conflict else self._read_in(dfd)
        finally:
            self._done(dfd)
        if warning is not None:
            log.warning("%s", warning)
            self.last_read_warning = warning
        return found

    @contextmanager
    def cycle(self) -> Iterator[None]:
        """Open the key directory once for the `check` and `commit` (or `read`) made inside:
        the store root, its marker and the directory are checked once, not per call."""
        if self._cycle is not None:
            yield
            return
        self._cycle = self._open_dir()
        self._checked = None
        try:
            yield
        finally:
            if self._cycle is not None:
                durable.close_quietly(self._cycle)
            self._cycle = None
            self._checked = None

    def _key_dir(self, *, create: bool = False) -> int | None:
        """The key directory: the cycle's, else opened for this call (`_done` closes it).

        A pair of calls, not a context manager: a generator's costs as much as a store
        call, and a commit makes a few."""
        return self._cycle if self._cycle is not None else self._open_dir(create=create)

    def _done(self, dfd: int) -> None:
        """Close `dfd` unless it is the cycle's."""
        if dfd != self._cycle:
            durable.close_quietly(dfd)

    def check(self) -> tuple[bool, Manifest | None]:
        """Whether manifest.json is no longer what this Store last read or wrote (another
        writer, a deleted key directory, a copy rolled back), and if so what the store holds
        now (None: no manifest).

        Cheap when nothing changed: manifest.json is opened (over NFS, open revalidates
        what the client cached, a stat may not) and its stamp (inode, size, mtime, ctime)
        compared with the one this Store recorded; it is read whole only when they
        differ. The stamp catches an edit in place that keeps the checksum's digits,
        which a comparison of heads did not; it misses only a same-size change, on a
        reused inode, within the file system's timestamp tick of this Store's write.
        Once after this Store's commit raised StoreConflict: a change, and the newest
        valid generation, whichever file holds it (see `read()`). Raises as `read()`, but for a
        ManifestError (no valid generation): that is a change with nothing to fold in,
        which the next commit replaces.
        """
        dfd = self._key_dir()
        if dfd is None:
            changed = self._seen is not None
            self._seen = None
            return changed, None
        try:
            stamp = self._peek(dfd)
            if stamp == self._seen and not self._conflict:
                if self._cycle is not None:
                    self._checked = stamp
                return False, None
            conflict, self._conflict = self._conflict, False
            try:
                found, warning = self._newest(dfd) if conflict else self._read_in(dfd)
            except UnknownSchema:
                raise
            except ManifestError as e:
                # Nothing valid left to fold in: the commit that follows replaces it.
                log.warning("%s; the next commit replaces it", e)
                return True, None
        finally:
            self._done(dfd)
        if warning is not None:
            log.warning("%s", warning)
        return True, found

    def _peek(self, dfd: int) -> Stamp | None:
        """manifest.json's stamp, through a descriptor; None when it does not exist."""
        try:
            fd = os.open(
                CURRENT,
                os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY,
                dir_fd=dfd,
            )
        except FileNotFoundError:
            return None
        except OSError as e:
            raise durable.error(e, f"cannot open {self.path / CURRENT}") from e
        try:
            return _stamp_of(os.fstat(fd))
        except OSError as e:
            raise durable.error(e, f"cannot read {self.path / CURRENT}") from e
        finally:
            durable.close_quietly(fd)

    def _open_dir(self, *, create: bool = False) -> int | None:
        """The key directory, checked; None when it does not exist (and not `create`).

        Through the checked store root: a root that is missing or carries no marker is
        an unavailable store (StoreUnavailable), never an empty one.
        """
        rfd = _open_root(self.root, self.owner)
        try:
            try:
                marker = os.stat(MARKER, dir_fd=rfd, follow_symlinks=False)
            except FileNotFoundError as e:
                raise _not_available(self.root, f"it has no {MARKER} marker") from e
            except OSError as e:
                raise durable.error(e, f"cannot look for {self.root / MARKER}") from e
            # In a sticky mount point whose export is gone, anyone may leave a marker: one
            # that none of those who may own the store made does not make it the store.
            if not _may_own(marker.st_uid, self.owner):
                why = f"its {MARKER} marker belongs to {_user(marker.st_uid)}"
                why += ", not root, this user or the store's owner"
                raise _not_available(self.root, why)
            try:
                dfd = self._open_key(rfd)
            except FileNotFoundError:
                if not create:
                    return None
                # Made only when missing: a mkdir answered EEXIST is a store operation too.
                try:
                    os.mkdir(self.key, 0o700, dir_fd=rfd)
                except FileExistsError:
                    pass
                except OSError as e:
                    raise durable.error(e, f"cannot create {self.path}") from e
                dfd = self._open_key(rfd)
        finally:
            durable.close_quietly(rfd)
        try:
            _check_owned(os.fstat(dfd), self.path, directory=True, owner=self.owner)
        except BaseException:
            durable.close_quietly(dfd)
            raise
        return dfd

    def _open_key(self, rfd: int) -> int:
        """The key directory in the open store root; FileNotFoundError when missing."""
        try:
            return os.open(
                self.key, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=rfd
            )
        except FileNotFoundError:
            raise
        except OSError as e:
            if e.errno in (errno.ELOOP, errno.ENOTDIR):
                raise StoreError(
                    f"{self.path} is not a directory (a symlink or a file): refused"
                ) from e
            if e.errno in (errno.EACCES, errno.EPERM):
                # Another user's key directory, 0700 as they are: say whose, and what to do,
                # as for one we may open; "Permission denied" reads like an outage.
                with contextlib.suppress(OSError):
                    st = os.stat(self.key, dir_fd=rfd, follow_symlinks=False)
                    _check_owned(st, self.path, directory=True, owner=self.owner)
            raise durable.error(e, f"cannot open {self.path}") from e

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
            data = durable.read_all(fd, manifest.MAX_BYTES + 1, st.st_size)
        except OSError as e:
            raise durable.error(e, f"cannot read {where}") from e
        finally:
            durable.close_quietly(fd)
        self._stamp_read = _stamp_of(st)  # of the inode these bytes came from: for `check`
        return self.seal.open(data, where)

    def _read_in(
        self, dfd: int, names: list[str] | None = None
    ) -> tuple[Manifest | None, str | None]:
        """The manifest and, when it came from an earlier generation, the reason why.

        `names`: the directory's entries, when the caller listed it already.
        """
        current = self.path / CURRENT
        self._seen = None
        self._last_read = None
        try:
            data = self._load(dfd, CURRENT)
            if data is not None:
                found = manifest.decode(data, str(current))
                stamp = self._stamp_read
                self._saw(found.generation, stamp)
                self._last_read = None if stamp is None else (stamp, found)
                return found, None
            problem = f"{current} is missing"
        except UnknownSchema:
            raise
        except ManifestError as e:
            problem = str(e)
        try:
            generations = _generations(os.listdir(dfd) if names is None else names)
        except OSError as e:
            raise durable.error(e, f"cannot list {self.path}") from e
        if data is None and not generations:
            return None, None
        hit = self._first_valid(dfd, generations)
        if hit is None:
            raise ManifestError(f"{problem}; no earlier generation in {self.path} is valid")
        found, name = hit
        self._high = max(self._high, found.generation)
        return found, f"{problem}; using generation {found.generation} from {name}"

    def _first_valid(self, dfd: int, generations: list[int]) -> tuple[Manifest, str] | None:
        """The first of the kept `generations` (newest first) that reads whole and valid,
        with its file name; None when none does. UnknownSchema is raised, not skipped."""
        for generation in generations:
            name = _generation_name(generation)
            data = self._load(dfd, name)
            if data is None:
                continue
            try:
                return manifest.decode(data, str(self.path / name)), name
            except UnknownSchema:
                raise
            except ManifestError:
                continue
        return None

    def _newest(self, dfd: int) -> tuple[Manifest | None, str | None]:
        """After a `StoreConflict`: the newest valid generation, from manifest.json or a
        kept file newer than it (another writer's, whose manifest.json rename has not
        landed yet, or was overtaken by an older one)."""
        try:
            names = os.listdir(dfd)
        except OSError as e:
            raise durable.error(e, f"cannot list {self.path}") from e
        found, warning = self._read_in(dfd, names)
        generations = _generations(names)
        newer = [g for g in generations if found is None or g > found.generation]
        hit = self._first_valid(dfd, newer)
        if hit is not None:
            found, warning = hit[0], None
            # manifest.json is not this generation: nothing this Store may amend.
            self._seen, self._last_read = _UNKNOWN, None
        # The newest number is known now, even when its file is damaged: the next commit
        # goes above it instead of finding it again.
        self._high = max([self._high, *generations[:1]])
        return found, warning

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

    def _saw(self, generation: int, stamp: Stamp | None) -> None:
        """Remember manifest.json as read whole or written: `check` compares with it."""
        self._high = max(self._high, generation)
        self._seen = stamp

    # -- writing ---------------------------------------------------------------------------

    def commit(
        self, body: Body, encoded: bytes | None = None, *, amend: int | None = None
    ) -> Manifest | None:
        """Write `body` as the next generation, durably; None when it is unchanged.

        `encoded`: `manifest.encode_body(body)`, when the caller has it already.
        `amend`: the generation `body` only annotates (the caller vouches that it records
        the same packages): written again under that number, so that annotations cost no
        kept generation, when manifest.json holds it as this writer last wrote or read it
        (not rewritten by another writer since, not even under the same number) and it is
        the newest; a new generation otherwise. Either way a reader sees one
        whole file or the other.

        Raises StoreConflict when another writer took this generation's number or wrote a
        newer one meanwhile: the next `check` or `read` returns the newest generation, to
        be folded in before committing again. Raises StoreUnavailable (retry later: nothing
        was lost, the previous generation is intact or the new one is in place, whole) or
        StoreError / UnknownSchema.
        """
        dfd = self._key_dir(create=True)
        assert dfd is not None  # created
        try:
            return self._commit(dfd, body, encoded, amend)
        except StoreConflict:
            self._conflict = True
            self._known = None
            self._checked = None
            raise
        except BaseException:
            # The outcome may be visible but not durable: re-read the directory and
            # write again next time, even an unchanged body.
            self._known = None
            self._rewrite = True
            raise
        finally:
            self._done(dfd)

    def _commit(
        self, dfd: int, body: Body, encoded: bytes | None, amend: int | None = None
    ) -> Manifest | None:
        known = self._known
        # `check` in this cycle stamped manifest.json a moment ago: no second stat.
        now = self._checked if self._checked is not None else self._stamp(dfd)
        # Only manifest.json as this writer last read or wrote it is its to amend: one
        # another writer rewrote since (an amend of its own) keeps its only copy.
        ours = now is not None and now == self._seen
        if known is not None and now != known.stamp:
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
        generation = max(known.generation, self._high) + 1
        if generation > manifest.MAX_GENERATION:
            # Only a file named for the last number can bring this (a planted or damaged
            # one): a manifest past it could not be read, and what it holds would be lost.
            raise StoreError(
                f"{self.path}: {_generation_name(generation - 1)} takes the last generation "
                f"a manifest may have; nothing is written until it is removed"
            )
        if (
            amend is not None
            and ours
            and known.body is not None
            and amend == known.generation == self._high
        ):
            generation = amend
        result = Manifest(
            generation=generation,
            writer=self._writer(),
            time=_now(),
            body=body,
        )
        parts = self.seal.sign(manifest.encode_parts(result, encoded))
        self._write(dfd, parts, generation, new=generation != known.generation)
        stamp = self._stamp(dfd)
        self._high = max(self._high, generation)
        self._passed(dfd, generation)
        if stamp is None or stamp[1] != sum(map(len, parts)):
            # Deleted or replaced at once, not by this writer: a stamp no file has makes
            # `check` and the next commit look again.
            stamp = _UNKNOWN
        self._saw(generation, stamp)
        self._checked = None
        self._last_read = None  # superseded: not kept for the life of a daemon
        known.generation = generation
        known.body = encoded
        known.kept.add(generation)
        known.stamp = stamp
        self._known = known
        self._rewrite = False
        self._conflict = False
        self._mark_synced(dfd, known)
        self._prune(dfd, known)
        return result

    def _writer(self) -> Writer:
        """Who writes: the same for every commit of this process (a fork has its pid)."""
        pid = os.getpid()
        if self._writer_as is None or self._writer_as.pid != pid:
            self._writer_as = Writer(host=os.uname().nodename, pid=pid, version=__version__)
        return self._writer_as

    def _passed(self, dfd: int, generation: int) -> None:
        """StoreConflict when another writer has claimed the number after `generation`:
        its manifest.json may have landed before this one's, which then went backwards."""
        after = _generation_name(generation + 1)
        try:
            os.stat(after, dir_fd=dfd, follow_symlinks=False)
        except FileNotFoundError:
            return
        except OSError as e:
            raise durable.error(e, f"cannot stat {self.path / after}") from e
        raise StoreConflict(
            f"{self.path / after} was written while this writer wrote generation "
            f"{generation}: is another writer using key {self.key!r}?"
        )

    def _claim(self, dfd: int, tmp: str, history: Path, parts: durable.Buffers) -> bool:
        """Publish the staged `tmp` as `history` only if no other writer holds that name;
        True when the outcome was settled by path (see `durable.install`), StoreConflict
        when another writer has it. `tmp` is gone either way."""
        try:
            os.link(tmp, history.name, src_dir_fd=dfd, dst_dir_fd=dfd, follow_symlinks=False)
        except OSError as e:
            if e.errno in (errno.EPERM, errno.EOPNOTSUPP, errno.EMLINK):
                return self._claim_without_links(dfd, tmp, history, parts)
            # The server may have made the link and lost its reply (EEXIST to the
            # retransmission, ESTALE, EIO): the name then holds our temp's inode. By path,
            # as the directory descriptor may be the stale one.
            try:
                done = history.lstat().st_ino == (history.parent / tmp).lstat().st_ino
            except OSError:
                done = False
            durable.discard(dfd, tmp, self._leftovers)
            if done:
                log.info("%s: link reported %s but the new file is in place", history, e.strerror)
                return True
            if e.errno == errno.EEXIST:
                raise self._taken(history) from e
            raise durable.error(e, f"cannot write {history}") from e
        durable.discard(dfd, tmp, self._leftovers)
        return False

    def _claim_without_links(
        self, dfd: int, tmp: str, history: Path, parts: durable.Buffers
    ) -> bool:
        """`_claim` on a file system without hard links: look, then rename (a writer racing
        for the same number in the moment between may still replace it)."""
        if os.path.lexists(history):
            durable.discard(dfd, tmp, self._leftovers)
            raise self._taken(history)
        return durable.install(dfd, tmp, history, parts, self._leftovers)

    def _taken(self, history: Path) -> StoreConflict:
        return StoreConflict(
            f"{history} was written by another writer meanwhile: "
            f"is another writer using key {self.key!r}?"
        )

    def _write(self, dfd: int, parts: durable.Buffers, generation: int, *, new: bool) -> None:
        """The durable recipe for manifest.<generation>.json and manifest.json: two files,
        so that an edit in place of one leaves the other whole; one directory fsync.

        `new`: the number is claimed (`_claim`), never replacing another writer's file;
        else it is this writer's amend of the generation manifest.json holds as it saw it.
        """
        current = self._current
        history = self.path / _generation_name(generation)
        # Both temps carry manifest.json's prefix: one name for a dead writer's leftovers.
        kept = durable.stage(dfd, current, parts, 0o600, self._leftovers)
        try:
            tmp = durable.stage(dfd, current, parts, 0o600, self._leftovers)
        except BaseException:
            durable.discard(dfd, kept, self._leftovers)
            raise
        try:
            if new:
                settled = self._claim(dfd, kept, history, parts)
            else:
                settled = durable.install(dfd, kept, history, parts, self._leftovers)
        except BaseException:
            durable.discard(dfd, tmp, self._leftovers)
            raise
        try:
            settled = durable.install(dfd, tmp, current, parts, self._leftovers) or settled
        except BaseException:
            # manifest.json still holds the previous generation: a kept file newer than
            # it would only be taken for it by a fallback. An amended one (a generation
            # this writer has seen already, `commit`'s `amend`) is that very generation,
            # annotated: removing it would lose the generation's only kept copy.
            if new:
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
        stamp = self._checked if self._checked is not None else self._stamp(dfd)
        last_read = self._last_read
        current: Manifest | None
        warning: str | None
        if stamp is not None and last_read is not None and last_read[0] == stamp:
            # Read whole when the daemon started, or by `check`, and unchanged since.
            current, warning = last_read[1], None
            self._saw(last_read[1].generation, stamp)
        else:
            try:
                current, warning = self._read_in(dfd, names)
            except UnknownSchema:
                raise
            except ManifestError as e:
                log.warning("%s; the next commit replaces it", e)
                current, warning = None, str(e)
        generations = _generations(names)
        if current is not None and generations and generations[0] > self._high:
            # Another writer claimed a newer number and its manifest.json is not (or no
            # longer) the current one: what it recorded is folded in before writing.
            raise StoreConflict(
                f"{self.path / _generation_name(generations[0])} is newer than "
                f"{self.path / CURRENT} (generation {current.generation}): "
                f"is another writer using key {self.key!r}?"
            )
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

    def _stamp(self, dfd: int) -> Stamp | None:
        try:
            st = os.stat(CURRENT, dir_fd=dfd, follow_symlinks=False)
        except FileNotFoundError:
            return None
        except OSError as e:
            raise durable.error(e, f"cannot stat {self.path / CURRENT}") from e
        return _stamp_of(st)

    def _remove_stale_temps(self, dfd: int, names: list[str]) -> None:
        """Remove this host's temp files whose writer is gone, and our own leftovers."""
        self._leftovers.update(durable.stale_temps(names, CURRENT))
        for name in sorted(self._leftovers):
            self._leftovers.discard(name)
            durable.discard(dfd, name, self._leftovers)

    def _prune(self, dfd: int, known: _Known) -> None:
        """Keep the newest `keep` generation files; a failure here does not fail the commit.
        Counted by file, not by number: a file far above the others (planted, or another
        writer's damaged one) must not push every readable generation out."""
        for generation in sorted(known.kept)[: -self.keep]:
            try:
                os.unlink(_generation_name(generation), dir_fd=dfd)
            except FileNotFoundError:
                pass
            except OSError as e:
                log.warning("cannot remove %s: %s", self.path / _generation_name(generation), e)
                continue
            known.kept.discard(generation)

    # -- artifacts -------------------------------------------------------------------------
    #
    # <key>/artifacts/ (0700) holds captured packages (files 0600), each written with the
    # durable recipe; `R-<major.minor>/` subdirectories hold R binaries. Names come from
    # manifests and are hostile until `artifact_name` has checked them.

    def _artifact_dir(self, name: str, *, create: bool) -> tuple[int, Path] | None:
        """The directory artifact `name` lives in, opened and checked like the key
        directory; None when it does not exist (and not `create`)."""
        return self._artifacts_open(artifact_name(name).split("/")[:-1], create=create)

    def _artifacts_open(self, subdirs: list[str], *, create: bool) -> tuple[int, Path] | None:
        """`<key>/artifacts/<subdirs...>`, each level checked (see `_open_sub`)."""
        dfd = self._open_dir(create=create)
        if dfd is None:
            return None
        where = self.path
        for part in (ARTIFACTS, *subdirs):
            where = where / part
            # _open_sub closes the parent, whatever happens.
            sub = _open_sub(dfd, part, where, create=create, owner=self.owner)
            if sub is None:
                return None
            dfd = sub
        return dfd, where

    def put_artifact(self, name: str, source: int, sha256: str) -> str:
        """Write the open file `source` (from its offset) as artifact `name`, durably; the
        name it is stored under.

        A file `name` holding other bytes stays: a manifest may still record it (two builds
        under one wheel name: a pip install and another from a URL differ in
        `direct_url.json`). This one then goes to `[R-x.y/]<sha256[:16]>/<file>`. The
        caller hashed `source`: an ambiguous link or rename is settled by hashing what is
        there.
        """
        found = self._artifact_dir(name, create=True)
        assert found is not None  # created
        dfd, where = found
        base = name.rsplit("/", 1)[-1]
        leftovers: set[str] = set()
        try:
            tmp = durable.stage(dfd, where / base, source, 0o600, leftovers)
            try:
                held = _link_new(dfd, tmp, base, where / base)
            except BaseException:
                durable.discard(dfd, tmp, leftovers)
                raise
            if held is None or held == sha256:  # ours now, or ours already
                durable.discard(dfd, tmp, leftovers)
                durable.fsync_dir(dfd, where, reopen=held is not None)
                return name
            parent, _, _ = name.rpartition("/")
            other = "/".join(filter(None, (parent, sha256[:16], base)))
            self._move_artifact(dfd, tmp, other, sha256, leftovers)
            # The new subdirectory's entry and the temp file's removal.
            durable.fsync_dir(dfd, where)
            return other
        finally:
            durable.close_quietly(dfd)

    def _move_artifact(
        self, dfd: int, tmp: str, name: str, sha256: str, leftovers: set[str]
    ) -> None:
        """Rename the temp file `tmp` (in `dfd`) to artifact `name`: named by its hash,
        whatever was there is replaced."""
        try:
            found = self._artifact_dir(name, create=True)
        except BaseException:
            durable.discard(dfd, tmp, leftovers)
            raise
        assert found is not None  # created
        sub, where = found
        target = where / name.rsplit("/", 1)[-1]
        try:
            settled = False
            try:
                os.rename(tmp, target.name, src_dir_fd=dfd, dst_dir_fd=sub)
            except OSError as e:
                durable.discard(dfd, tmp, leftovers)
                if _sha256_at(target) != sha256:
                    raise durable.error(e, f"cannot write {target}") from e
                settled = True
            durable.fsync_dir(sub, where, reopen=settled)
        finally:
            durable.close_quietly(sub)

    def open_artifact(self, name: str) -> int | None:
        """Artifact `name` open for reading, checked (ours, a regular file, not writable
        by others, no symlink on the way); None when it is not there."""
        found = self._artifact_dir(name, create=False)
        if found is None:
            return None
        dfd, where = found
        base = name.rsplit("/", 1)[-1]
        try:
            fd = os.open(
                base, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=dfd
            )
        except FileNotFoundError:
            return None
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise StoreError(f"{where / base} is a symbolic link: refused") from e
            raise durable.error(e, f"cannot open {where / base}") from e
        finally:
            durable.close_quietly(dfd)
        try:
            _check_owned(os.fstat(fd), where / base, directory=False, owner=self.owner)
        except BaseException:
            durable.close_quietly(fd)
            raise
        return fd

    def artifacts(self) -> dict[str, os.stat_result]:
        """Every artifact under the key (name -> its stat); this host's dead writers'
        temp files are removed on the way."""
        found: dict[str, os.stat_result] = {}
        top = self._artifacts_open([], create=False)
        if top is None:
            return found
        dfd, where = top
        try:
            self._list_artifacts(dfd, where, "", found)
        finally:
            durable.close_quietly(dfd)
        return found

    def _list_artifacts(
        self, dfd: int, where: Path, prefix: str, found: dict[str, os.stat_result]
    ) -> None:
        try:
            names = os.listdir(dfd)
        except OSError as e:
            raise durable.error(e, f"cannot list {where}") from e
        _remove_dead_temps(dfd, names)
        for name in names:
            try:
                st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
            except FileNotFoundError:
                continue
            except OSError as e:
                raise durable.error(e, f"cannot stat {where / name}") from e
            if stat.S_ISDIR(st.st_mode) and _artifact_dirs([*prefix.split("/")[:-1], name]):
                # _open_sub closes the descriptor it is given: this one lists on.
                sub = _open_sub(os.dup(dfd), name, where / name, create=False, owner=self.owner)
                if sub is not None:
                    try:
                        self._list_artifacts(sub, where / name, f"{prefix}{name}/", found)
                    finally:
                        durable.close_quietly(sub)
            elif stat.S_ISREG(st.st_mode) and _ARTIFACT_FILE.fullmatch(name):
                found[prefix + name] = st

    def touch_artifact(self, name: str) -> None:
        """Date artifact `name` now (GC removes the least recently referenced first)."""
        self._on_artifact(
            name, "date", lambda base, dfd: os.utime(base, dir_fd=dfd, follow_symlinks=False)
        )

    def remove_artifact(self, name: str) -> None:
        """Remove artifact `name` (gone already is fine)."""
        self._on_artifact(name, "remove", lambda base, dfd: os.unlink(base, dir_fd=dfd))
        *dirs, _ = name.split("/")
        if dirs and _HASH_DIR.fullmatch(dirs[-1]):
            found = self._artifacts_open(dirs[:-1], create=False)
            if found is not None:
                with contextlib.suppress(OSError):  # holds another file still, or gone
                    os.rmdir(dirs[-1], dir_fd=found[0])
                durable.close_quietly(found[0])

    def _on_artifact(self, name: str, verb: str, act: Callable[[str, int], None]) -> None:
        """`act(file name, its directory's fd)` on artifact `name`; a missing artifact (or
        directory) is fine, any other failure a store error saying what could not `verb`."""
        found = self._artifact_dir(name, create=False)
        if found is None:
            return
        dfd, where = found
        base = name.rsplit("/", 1)[-1]
        try:
            act(base, dfd)
        except FileNotFoundError:
            pass
        except OSError as e:
            raise durable.error(e, f"cannot {verb} {where / base}") from e
        finally:
            durable.close_quietly(dfd)


ARTIFACTS = "artifacts"
_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
_R_DIR = re.compile(r"R-[0-9]{1,3}\.[0-9]{1,3}")
_HASH_DIR = re.compile(r"[0-9a-f]{16}")
# `!`: a version's epoch (`1!2.0`), which wheel names keep as it is.
_ARTIFACT_FILE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+!-]{0,250}\.(?:whl|tar\.gz)")


def artifact_name(name: str) -> str:
    """`name` when it is an artifact's name (`file.whl`, `R-4.4/file.tar.gz`, either with
    a `<sha256[:16]>/` directory before the file), else StoreError: a name from a
    manifest never climbs out of `<key>/artifacts/`."""
    *dirs, file = name.split("/")
    if not (_artifact_dirs(dirs) and _ARTIFACT_FILE.fullmatch(file)):
        raise StoreError(f"invalid artifact name {name!r}: refused")
    return name


def _artifact_dirs(dirs: list[str]) -> bool:
    """`[R-x.y/][<hash>/]`: the directories an artifact's name may hold."""
    if dirs and _R_DIR.fullmatch(dirs[0]):
        dirs = dirs[1:]
    return not dirs or (len(dirs) == 1 and bool(_HASH_DIR.fullmatch(dirs[0])))


def _open_sub(dfd: int, name: str, where: Path, *, create: bool, owner: int) -> int | None:
    """The subdirectory `name` of `dfd`, checked like a key directory; closes `dfd`."""
    try:
        if create:
            with contextlib.suppress(FileExistsError):
                os.mkdir(name, 0o700, dir_fd=dfd)
        try:
            sub = os.open(
                name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd
            )
        except FileNotFoundError:
            return None
        except OSError as e:
            if e.errno in (errno.ELOOP, errno.ENOTDIR):
                raise StoreError(
                    f"{where} is not a directory (a symlink or a file): refused"
                ) from e
            raise
    except OSError as e:
        raise durable.error(e, f"cannot open {where}") from e
    finally:
        durable.close_quietly(dfd)
    try:
        st = os.fstat(sub)
        _check_owned(st, where, directory=True, owner=owner)
        if st.st_mode & 0o077:
            raise StoreError(
                f"{where} is open to group or others (mode {stat.S_IMODE(st.st_mode):04o}): "
                "refused (artifacts are private: chmod 700)"
            )
    except BaseException:
        durable.close_quietly(sub)
        raise
    return sub


def _remove_dead_temps(dfd: int, names: list[str]) -> None:
    """Temp files of this host's writers that died (killed mid-capture)."""
    marker = f".tmp.{durable.host()}."
    for name in names:
        if name.startswith(".") and marker in name:
            target = name[1 : name.index(marker)]
            for stale in durable.stale_temps([name], target):
                durable.discard(dfd, stale, set())


def _link_new(dfd: int, tmp: str, base: str, target: Path) -> str | None:
    """Link the temp file `tmp` (in `dfd`) as `base` unless `base` exists: None when it
    is linked now, else the sha256 of what `base` holds ("" when it cannot be read)."""
    try:
        os.link(tmp, base, src_dir_fd=dfd, dst_dir_fd=dfd, follow_symlinks=False)
        return None
    except FileExistsError:
        # Also what a link that was done answers when NFS retries it: then the hash is ours.
        return _sha256_at(target) or ""
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EMLINK):
            raise durable.error(e, f"cannot write {target}") from e
    # A file system without hard links: what is there is looked at first, a writer racing
    # for the same name the moment between may lose its file (one user writes a key).
    held = _sha256_at(target)
    if held is not None or os.path.lexists(target):
        return held or ""
    try:
        os.rename(tmp, base, src_dir_fd=dfd, dst_dir_fd=dfd)
    except OSError as e:
        held = _sha256_at(target)  # an ambiguous rename that took: our hash
        if held is None:
            raise durable.error(e, f"cannot write {target}") from e
        return held
    return None


def _sha256_at(path: Path) -> str | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return durable.sha256_of(fd)
    except OSError:
        return None
    finally:
        durable.close_quietly(fd)
