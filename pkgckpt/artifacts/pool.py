"""The shared pool (`artifact_pool = DIR`): artifacts stored once for every user.

Layout: `DIR/sha256/<hex>`, the directory mode 1777 like /tmp, each file named by the
sha256 of its bytes and readable by everyone. Capture adds a file create-exclusive
(`link()` of a fully written temp file: an entry is never seen half-written and never
replaced); an entry that exists already is used only when its bytes hash to its name.

Another user may delete an entry they created, and put other bytes under that name:
restore therefore verifies every pooled artifact against the sha256 in the user's own
manifest (`artifacts.fetch`) and refuses a mismatch. Every user can read every pooled
artifact: what one user installed is visible to the others (README: the trade-off).

`prune(root, days)` (`pkgckpt store prune-pool`, an administrator's command) removes the
entries nobody read or added for `days` days. It cannot know which manifests still name
an entry (it cannot read other users'), so age is the only rule, and a removed entry
costs a re-download or a new capture, never a wrong install: each user's manifest
verifies by hash and restore falls back to the package's source. It follows no symlink
and removes only regular files named by a sha256, and the temp files of captures that
died before linking theirs.
"""

from __future__ import annotations

import errno
import os
import re
import stat
import time
from collections.abc import Iterable
from pathlib import Path

import msgspec

from .. import durable
from ..errors import PkgckptError, StoreError

SUBDIR = "sha256"


def _open_dir(root: Path, *, create: bool) -> int | None:
    """`root/sha256`, checked: a real directory, sticky when its group or others may
    write it, and owned by root, this user or the owner of `root` (the administrator who
    made the pool): the sticky bit binds everyone but the directory's owner, so a
    `sha256/` made by another user would let them remove or replace every entry.
    `create`: make it when this user owns `root` (a pool of one's own); an administrator
    makes it for everyone else."""
    try:
        owner = root.stat().st_uid
        if create and owner == os.geteuid():
            try:
                (root / SUBDIR).mkdir(0o700)
                (root / SUBDIR).chmod(0o1777)  # mkdir's mode passes through the umask
            except FileExistsError:
                pass
        fd = os.open(root / SUBDIR, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENOTDIR):
            raise StoreError(f"artifact pool {root / SUBDIR} is not a directory: refused") from e
        raise durable.error(e, f"cannot open the artifact pool {root}") from e
    st = os.fstat(fd)
    why = None
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not st.st_mode & stat.S_ISVTX:
        why = "is writable by its group or others without the sticky bit"
    elif st.st_uid not in (0, os.geteuid(), owner):
        why = f"is owned by uid {st.st_uid}, not by root, you or the owner of {root}"
    if why is not None:
        durable.close_quietly(fd)
        raise StoreError(f"artifact pool {root / SUBDIR} {why}: refused")
    return fd


def put(root: Path, source: int, digest: str) -> None:
    """Put the bytes of `source` (whose sha256 is `digest`) into the pool, unless it holds
    exactly them already. Raises StoreError when it cannot take them: missing (not
    mounted, or no `sha256/` made), refused, or someone else's bytes under that name."""
    dfd = _open_dir(root, create=True)
    if dfd is None:
        raise StoreError(missing(root))
    size = os.fstat(source).st_size
    try:
        if _holds(dfd, digest, size):
            return
        os.lseek(source, 0, os.SEEK_SET)
        where = root / SUBDIR / digest
        leftovers: set[str] = set()
        tmp = durable.stage(dfd, where, source, 0o644, leftovers)
        try:
            os.link(tmp, digest, src_dir_fd=dfd, dst_dir_fd=dfd, follow_symlinks=False)
        except FileExistsError:
            # Another user's capture won the race, or planted other bytes there.
            if not _holds(dfd, digest, size):
                raise StoreError(f"{where} holds other bytes than this capture's") from None
            return
        except OSError as e:
            raise durable.error(e, f"cannot add {where}") from e
        finally:
            durable.discard(dfd, tmp, leftovers)
        durable.fsync_dir(dfd, root / SUBDIR)
    finally:
        durable.close_quietly(dfd)


def missing(root: Path) -> str:
    """Why the pool at `root` holds nothing, when `sha256/` or `root` does not exist."""
    if root.is_dir():
        return (
            f"artifact pool {root / SUBDIR} does not exist: an administrator makes it, "
            "mode 1777, in a pool shared by users"
        )
    return f"artifact pool {root} does not exist (not mounted?)"


def _holds(dfd: int, digest: str, size: int) -> bool:
    """Whether the entry for `digest` holds `size` bytes hashing to it. The size first,
    and no more than one byte past it read: another user's entry may be a sparse
    file of terabytes, or grow while it is hashed."""
    fd = _open_entry(dfd, digest, size)
    if fd is None:
        return False
    try:
        return durable.sha256_of(fd, limit=size) == digest
    finally:
        durable.close_quietly(fd)


def _open_entry(dfd: int, digest: str, size: int | None = None) -> int | None:
    """The entry for `digest`, open: a regular file, of `size` bytes when given."""
    try:
        fd = os.open(digest, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=dfd)
    except OSError:
        return None  # missing, a symlink, unreadable: not an entry to use
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or (size is not None and st.st_size != size):
        durable.close_quietly(fd)
        return None
    return fd


def held(root: Path, entries: Iterable[tuple[str, int]]) -> set[tuple[str, int]]:
    """The `(digest, size)` among `entries` that the pool holds as a regular file of
    that size. Not hashed (restore does): a cheap check, one open of the pool and a stat
    per entry, that finds an entry pruned, deleted or truncated, or replaced by other
    bytes of another size. A digest that is not one is never looked up."""
    dfd = _open_dir(root, create=False)
    if dfd is None:
        return set()
    found: set[tuple[str, int]] = set()
    try:
        for digest, size in entries:
            if not _ENTRY.fullmatch(digest):
                continue
            try:
                st = os.stat(digest, dir_fd=dfd, follow_symlinks=False)
            except OSError:
                continue  # missing, or not ours to see: not an entry to use
            # An entry its owner made unreadable to others is as gone to a restore.
            readable = st.st_mode & stat.S_IROTH or st.st_uid == os.geteuid()
            if stat.S_ISREG(st.st_mode) and st.st_size == size and readable:
                found.add((digest, size))
    finally:
        durable.close_quietly(dfd)
    return found


def unusable(root: Path | None) -> str | None:
    """Why no pooled artifact can be read here now; None when the pool can be read."""
    if root is None:
        return "this container names no artifact_pool"
    try:
        dfd = _open_dir(root, create=False)
    except PkgckptError as e:
        return str(e)
    if dfd is None:
        return missing(root)
    durable.close_quietly(dfd)
    return None


def read(root: Path | None, digest: str) -> int | None:
    """The pool's entry for `digest`, open for reading, unverified (the caller hashes
    what it reads); None when there is no pool or no such entry."""
    if root is None:
        return None
    dfd = _open_dir(root, create=False)
    if dfd is None:
        return None
    try:
        return _open_entry(dfd, digest)
    finally:
        durable.close_quietly(dfd)


_ENTRY = re.compile(r"[0-9a-f]{64}")
_TEMP = re.compile(r"\.[0-9a-f]{64}\.tmp\..+")
"""`durable.stage`'s temp files for an entry: a capture killed before its link."""
DAY = 86400.0


class Pruned(msgspec.Struct):
    """What `prune` removed (or, dry, would remove), kept, and could not remove."""

    removed: list[str] = msgspec.field(default_factory=list)
    freed: int = 0
    kept: int = 0
    errors: list[str] = msgspec.field(default_factory=list)


def prune(root: Path, days: int, *, dry_run: bool = False, now: float | None = None) -> Pruned:
    """Remove the entries of the pool at `root` that nobody read or added for `days` days
    (at least 1: relatime updates a file's atime only once a day). Raises StoreError when
    the pool is missing or hostile."""
    if days < 1:
        raise StoreError(f"prune-pool: --older-than must be at least 1 day, not {days}")
    dfd = _open_dir(root, create=False)
    if dfd is None:
        raise StoreError(f"{root / SUBDIR} does not exist: not an artifact pool")
    now = time.time() if now is None else now
    done = Pruned()
    try:
        for name in sorted(os.listdir(dfd)):  # noqa: PTH208
            if not (_ENTRY.fullmatch(name) or _TEMP.fullmatch(name)):
                continue
            try:
                st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
            except FileNotFoundError:
                continue
            if not stat.S_ISREG(st.st_mode):
                continue
            # Read by a restore or a capture (atime), or added (mtime): whichever is later.
            if now - max(st.st_atime, st.st_mtime) < days * DAY:
                done.kept += 1
                continue
            if not dry_run:
                try:
                    os.unlink(name, dir_fd=dfd)  # a name swapped for a symlink: the link goes
                except FileNotFoundError:
                    continue
                except OSError as e:
                    done.errors.append(f"cannot remove {root / SUBDIR / name}: {e.strerror}")
                    continue
            done.removed.append(name)
            done.freed += st.st_size
    except OSError as e:
        raise durable.error(e, f"cannot list {root / SUBDIR}") from e
    finally:
        durable.close_quietly(dfd)
    return done
