"""Whether a path named by someone else may be trusted: it and every directory above it,
as written and once resolved, belong to this user or root and no one else can write them
(a sticky directory such as /tmp excepted: its other users cannot replace what is ours in
it). Apart from `discovery`, which uses it for every path a kernelspec or a `.condarc`
names, so that `scan.kept` checks the image's files without importing discovery
(json and the rest: 3-8 ms of a restore).
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

MISSING = "missing"
"""What `unsafe()` says of a path that is not there (yet)."""


def unsafe(path: Path) -> str | None:
    """Why `path` may not be trusted (None: it may): relative, missing, or a path on the
    way to it (each directory, each link and each directory a link leads through, to the
    file itself) belongs to someone other than this user or root, or is writable by group
    or others. Every step is checked, not just the path as written and where it ends: a
    link on the way that someone else owns, or that sits in their directory, can be
    pointed elsewhere between the check and the use."""
    if not path.is_absolute():
        return "not an absolute path"
    uid = os.geteuid()
    try:
        steps = _steps(path)
    except FileNotFoundError:
        return MISSING
    except OSError as e:
        return f"cannot be read ({e.strerror})"
    for p, st in steps:
        if st.st_uid not in (uid, 0):
            return f"{p} belongs to uid {st.st_uid}, neither this user nor root"
        loose = st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
        sticky = stat.S_ISDIR(st.st_mode) and st.st_mode & stat.S_ISVTX
        if loose and not stat.S_ISLNK(st.st_mode) and not sticky:
            return f"{p} is writable by group or others"
    return None


_MAX_LINKS = 40
"""Links followed in one path before giving up, as the kernel does (ELOOP)."""


def _steps(path: Path) -> list[tuple[Path, os.stat_result]]:
    """Every path the kernel looks up to reach `path` (absolute), with its lstat: `/`,
    then each component, a link's target walked in its place (from `/`, or from the
    directory the link is in)."""
    here = Path("/")
    out = [(here, os.lstat(here))]
    todo = list(path.parts[1:])
    links = 0
    while todo:
        part = todo.pop(0)
        if part == ".":
            continue
        if part == "..":
            here = here.parent  # `here` is resolved: its parent is the kernel's too
            continue
        step = here / part
        st = os.lstat(step)
        out.append((step, st))
        if not stat.S_ISLNK(st.st_mode):
            here = step
            continue
        links += 1
        if links > _MAX_LINKS:
            raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), str(path))
        target = step.readlink()
        if target.is_absolute():
            here = Path("/")
            todo[:0] = target.parts[1:]
        else:
            todo[:0] = target.parts
    return out


LOOSE = stat.S_IWGRP | stat.S_IWOTH
"""Mode bits that let someone else write a file."""


def read_owned(
    path: Path | str,
    limit: int,
    *,
    forbid: int = LOOSE,
    root_ok: bool = False,
    root_only: bool = False,
    dir_fd: int | None = None,
) -> bytes:
    """The bytes of a regular file of this user's (or root's, with `root_ok`; root's alone,
    with `root_only`) whose mode has none of `forbid`, read through no link and without
    blocking on a FIFO: what is in a runtime directory or beside a baseline may have been
    planted. Raises OSError: PermissionError when the file is not such a file, EFBIG when
    it is over `limit` bytes.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        st = os.fstat(fd)
        owners = (0,) if root_only else (os.geteuid(), 0) if root_ok else (os.geteuid(),)
        if not stat.S_ISREG(st.st_mode) or st.st_uid not in owners or st.st_mode & forbid:
            raise PermissionError(errno.EPERM, "not a private file of this user", str(path))
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(limit + 1)
    finally:
        os.close(fd)
    if len(data) > limit:
        raise OSError(errno.EFBIG, "too large", str(path))
    return data
