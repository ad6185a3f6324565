"""Local sources (a `file://` archive, a directory, a `git+file://` repository): trusted
only when no other user could have put what is there now.

    path_problem(path) -> str | None
        Why `path` may not be trusted, or None. The path itself and every directory above
        it, up to `/`, must be owned by the user or by root and not writable by others
        unless it has the sticky bit (like `/tmp`: then only an entry's owner, or the
        directory's, can rename or replace it). A root-owned directory does not end the
        walk: only root can change what it holds, but whoever may write the directory
        above it can rename it away and put another in its place, between the check and
        the install. This is done for the path it resolves to; each symbolic link on the
        way as written must be owned by the user or root (its mode means nothing) and sit
        in a directory that passes the same walk, since whoever can change a link chooses
        where the path leads.
    directory_problem(path, subdirectory) -> str | None
        A directory source: `path_problem` of the recorded `path` and of every directory
        below it down to `path/subdirectory`, the one the installer is given, so a
        symbolic link anywhere in the subdirectory is checked as one on the recorded path
        is. That directory itself must not be writable by others even with the sticky bit,
        which keeps them from replacing its files but not from adding one the build reads.
        So must everything below it, which the build may read: each file and directory
        the user's or root's and not writable by others, each symbolic link trusted as
        `path_problem` trusts one (at most 200,000 entries are checked; a larger tree is
        refused).
        A subdirectory that is absolute or climbs with `..` is refused: it does not lie
        below `path`.
    file_problem(path, hashes) -> str | None
        `path_problem`, then: a regular file whose sha256 is the one recorded at checkpoint
        (`hashes["sha256"]`); no recorded sha256 is itself a refusal.
    sha256_file(path) -> str | None
        The hex sha256 of a trusted regular file, or None (missing, untrusted, not a
        regular file): what the checkpoint records when the installer wrote no hash.
    file_url_sha256(url) -> dict[str, str]
        `{"sha256": ...}` of the trusted archive a `file:` URL names, else `{}`.
    not_here(path) -> str | None
        Why an R package recorded as installed from a local file (at `path`, when that is
        known) cannot be installed from it here at all: no such file; else None.

Group-writable components are accepted: a group is something the user or the operator
chose to share with. Checking at restore and then installing leaves a window; for files
it is closed by the installer, which is given the recorded hash and checks it on the bytes
it installs; a directory can only change in that window by the hands of its owner (the
user or root), which the check established.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Iterator, Mapping
from pathlib import PurePath
from urllib.parse import unquote, urlsplit

__all__ = [
    "directory_problem",
    "file_problem",
    "file_url_sha256",
    "not_here",
    "path_problem",
    "sha256_file",
]

_CHUNK = 1 << 20


def _owner(uid: int) -> str:
    import pwd

    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def _chain(path: PurePath) -> Iterator[str]:
    """`path` and each directory above it, up to `/`."""
    yield str(path)
    yield from map(str, path.parents)


def _component_problem(path: str, me: int) -> str | None:
    """Why `path` itself is not trusted (its owner, its mode), or None."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return f"{path} does not exist here"
    except OSError as e:
        return f"{path} cannot be checked: {e.strerror}"
    if st.st_uid not in (me, 0):
        return f"{path} is owned by {_owner(st.st_uid)}, not by you or root"
    if stat.S_ISLNK(st.st_mode) or not st.st_mode & stat.S_IWOTH:
        return None
    if stat.S_ISDIR(st.st_mode) and st.st_mode & stat.S_ISVTX:
        return None
    return f"{path} is writable by others"


def _walk(path: str, me: int) -> str | None:
    """The rule of `path_problem` for a path without symbolic links."""
    for component in _chain(PurePath(path)):
        problem = _component_problem(component, me)
        if problem is not None:
            return problem
    return None


def path_problem(path: str) -> str | None:
    """Why the local source at `path` may not be trusted, or None (see the module)."""
    written = PurePath(os.path.normpath(path))
    if not written.is_absolute():
        return f"{path} is not an absolute path"
    me = os.geteuid()
    literal = str(written)
    resolved = os.path.realpath(literal)
    problem = _walk(resolved, me)
    if problem is None and resolved != literal:
        for prefix in reversed((written, *written.parents)):
            try:
                st = os.lstat(prefix)
            except OSError as e:
                problem = f"{prefix} cannot be checked: {e.strerror}"
                break
            if not stat.S_ISLNK(st.st_mode):
                continue
            if st.st_uid not in (me, 0):
                problem = f"{prefix} is owned by {_owner(st.st_uid)}, not by you or root"
                break
            problem = _walk(os.path.realpath(prefix.parent), me)
            if problem is not None:
                break
    if problem is None or problem.startswith(f"{literal} "):
        return problem
    return f"{path}: {problem}"


def directory_problem(path: str, subdirectory: str | None = None) -> str | None:
    """Why the directory source at `path` (and `subdirectory` in it) may not be trusted, or
    None (see the module)."""
    problem = path_problem(path)
    if problem is not None:
        return problem
    below = PurePath(subdirectory or "")
    if below.is_absolute() or ".." in below.parts:
        return f"subdirectory {subdirectory} of {path} leads out of it"
    # The installer is given the joined path: every directory from `path` down to it is
    # one another user could otherwise have put there.
    current = PurePath(path)
    for part in below.parts:
        current /= part
        problem = path_problem(str(current))
        if problem is not None:
            return problem
    # The sticky bit keeps others from replacing what is in it, not from adding to it: a
    # pyproject.toml beside a setup.py, a DESCRIPTION's neighbour, which the build reads.
    try:
        writable = os.stat(current).st_mode & stat.S_IWOTH  # noqa: PTH116
    except OSError as e:
        return f"{current} cannot be checked: {e.strerror}"
    if writable:
        return f"{current} is writable by others: they could add files the installer reads"
    return _tree_problem(str(current), os.geteuid())


_MAX_ENTRIES = 200_000
"""Entries of a directory source checked before it is refused as too large to check."""


def _tree_problem(top: str, me: int) -> str | None:
    """Why what lies below the directory `top` may not be trusted: the build reads any of
    it, so a file or directory there that another user owns, or that others can write
    (sticky or not: a directory others can add to), is refused, and a symbolic link must
    be the user's or root's and lead where `path_problem` trusts."""
    count = 0
    for where, dirs, files in os.walk(top):
        for name in (*dirs, *files):
            count += 1
            if count > _MAX_ENTRIES:
                return f"{top} holds more than {_MAX_ENTRIES} entries: too many to check"
            entry = os.path.join(where, name)  # noqa: PTH118
            try:
                st = os.lstat(entry)
            except FileNotFoundError:
                continue  # gone since the listing: nothing the build could read
            except OSError as e:
                return f"{entry} cannot be checked: {e.strerror}"
            if st.st_uid not in (me, 0):
                return f"{entry} is owned by {_owner(st.st_uid)}, not by you or root"
            if stat.S_ISLNK(st.st_mode):
                problem = path_problem(entry)
                if problem is not None:
                    return problem
            elif st.st_mode & stat.S_IWOTH:
                return f"{entry} is writable by others"
    return None


_digests: dict[tuple[int, ...], str] = {}
"""Files hashed by this process, by identity. The path comes from a package's metadata,
which whoever may write a shared library writes: one naming a large file of the user's
(a 50 GB dataset), with its version bumped again and again, would otherwise have the
daemon read that file in its main loop at every bump. The identity includes the ctime,
which a write to the file moves, so a digest is not served for other bytes: that of a
file changed in the last `_SETTLED_NS` is not kept, as file times tick coarsely (a write
in the same tick as the one hashed would leave the identity as it was). Writes that move
no time (through a shared mmap whose page is dirty already) or an NFS server's clock far
from ours could still leave a stale digest: it fails closed, as restore checks the file
against the digest recorded and refuses it."""
_DIGESTS_MAX = 256
_SETTLED_NS = 2 * 10**9


def _digest(path: str) -> str | None:
    # O_NONBLOCK: a FIFO planted at the path must not hang the open; fstat then refuses it.
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    import hashlib  # OpenSSL's, for files; not loaded by a daemon that hashes none

    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        known = _digests.get(key)
        if known is not None:
            return known
        digest = hashlib.sha256()
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    found = digest.hexdigest()
    if time.time_ns() - st.st_ctime_ns > _SETTLED_NS:
        if len(_digests) >= _DIGESTS_MAX:
            _digests.clear()
        _digests[key] = found
    return found


def sha256_file(path: str) -> str | None:
    """The sha256 of a trusted regular file at `path`, else None."""
    if path_problem(path) is not None:
        return None
    return _digest(path)


def file_url_sha256(url: str) -> dict[str, str]:
    """`{"sha256": ...}` of the archive a `file:` URL names, when it is still there and
    trusted (`sha256_file`), else `{}`.

    Restore installs a local archive only against a recorded sha256 (`file_problem`), and
    not every installer records one: pip writes it into direct_url.json, uv and R's
    remotes do not. So the checkpoint takes it, once per install, from the file the
    installer just read. A file another user could have changed is not hashed: its hash
    would vouch for that user's bytes.
    """
    parts = urlsplit(url)
    if parts.scheme != "file" or parts.netloc not in ("", "localhost"):
        return {}
    digest = sha256_file(unquote(parts.path))
    return {"sha256": digest} if digest else {}


def not_here(path: str | None) -> str | None:
    """See the module: what restore's plan and `status` both say of such a package."""
    # os.path's: a path named by the store may lie beneath a directory this user may not
    # enter, where pathlib's is_file raises.
    if path is None or not os.path.isfile(path):  # noqa: PTH113
        where = f" ({path})" if path else ""
        return f"installed from a local file that is not here{where}"
    return None


def file_problem(path: str, hashes: Mapping[str, str]) -> str | None:
    """Why the file source at `path` may not be installed, or None (see the module)."""
    problem = path_problem(path)
    if problem is not None:
        return problem
    recorded = hashes.get("sha256")
    if recorded is None:
        return f"no sha256 of {path} was recorded at checkpoint, so it cannot be verified"
    actual = _digest(path)
    if actual is None:
        return f"{path} is not a regular file"
    if actual != recorded.lower():
        return f"{path} has changed since checkpoint: its sha256 is not the one recorded"
    return None
