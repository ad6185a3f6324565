"""Reading files in a tree another user can change while it is read: an R library others
write, a group-writable environment.

A path is resolved anew at every open, and O_NOFOLLOW guards only its last component: a
directory swapped for a link between a listing and an open (`a/ -> ~/.ssh`) would be
followed, and the reader would take its own user's private files for the tree's. Here
every open is relative to a directory already open, one component at a time, with
O_NOFOLLOW (O_DIRECTORY for directories, O_NONBLOCK so that a FIFO never blocks), and
what is opened is checked against what was listed: the tree read is the tree that was
listed, or the read fails with `Changed`.

    walk(fd) -> (relative path, directory fd, entries), top-down
        os.fwalk without its gaps: that opens a subdirectory without O_NOFOLLOW or
        O_NONBLOCK (Python 3.11: a link swapped in just before that open is followed, to
        a FIFO the open then waits on) and skips a directory changed meanwhile silently.
    open_file(dir_fd, entry) -> fd
        A regular file listed by `walk`, if it is still the one listed.
    open_beneath(dir_fd, path) -> fd
        A regular file at a relative path that goes through no link.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Generator, Iterator
from typing import NamedTuple

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
"""The flags of every open here: a link is never followed, a FIFO never waited on."""


class Changed(OSError):
    """What was opened is not what was listed under that name: the tree changed."""

    def __init__(self, path: str) -> None:
        super().__init__(f"{path} changed while it was read")
        self.path = path
        """Relative to the top of the walk."""


class Entry(NamedTuple):
    """One name in a directory, as `walk` listed it."""

    name: str
    path: str
    """Relative to the top of the walk, `/`-separated."""
    st: os.stat_result
    """lstat at the listing: a link is a link."""


def walk(top: int) -> Generator[tuple[str, int, list[Entry]], None, None]:
    """Every directory under the open directory `top`, as (its path relative to `top`, ""
    for `top`; a descriptor open on it; its entries in name order), each directory before
    its subdirectories and those in name order: os.walk's order. A link is an entry,
    never descended into; a subdirectory that is no longer the one listed (swapped, even
    for a link) raises `Changed`. The descriptors are closed by the walk."""
    entries = _list(top, "")
    yield "", top, entries
    # One descriptor per level, as os.fwalk; a stack rather than recursion, so a deep tree
    # costs descriptors (EMFILE at worst), not Python's recursion limit.
    stack: list[tuple[int, Iterator[Entry]]] = [(top, _subdirectories(entries))]
    try:
        while stack:
            fd, pending = stack[-1]
            entry = next(pending, None)
            if entry is None:
                stack.pop()
                if fd != top:
                    os.close(fd)
                continue
            sub = _open_listed(fd, entry, DIR_FLAGS)
            stack.append((sub, iter(())))  # closed by `finally` if the listing fails
            entries = _list(sub, entry.path)
            stack[-1] = (sub, _subdirectories(entries))
            yield entry.path, sub, entries
    finally:
        for fd, _ in stack:
            if fd != top:
                os.close(fd)


def open_file(dir_fd: int, entry: Entry) -> int:
    """`entry` (of the directory open at `dir_fd`) opened for reading, if it is still the
    regular file listed, with the size listed; else `Changed`."""
    return _open_listed(dir_fd, entry, FILE_FLAGS)


def open_beneath(dir_fd: int, path: str) -> int:
    """The regular file at `path`, relative to the directory open at `dir_fd`, opened for
    reading; OSError (its strerror says which component and why) when a component is a
    link or missing, or the file is not a regular file. `path` is lexical: no `..`, `.`
    or empty component."""
    parts = path.split("/")
    if {"", ".", ".."} & set(parts):
        raise OSError(errno.EINVAL, f"{path}: not a plain relative path", path)
    fd = dir_fd
    try:
        for i, part in enumerate(parts[:-1]):
            try:
                sub = os.open(part, DIR_FLAGS, dir_fd=fd)
            except OSError as e:
                where = "/".join(parts[: i + 1])
                why = "a link or not a directory" if e.errno == errno.ENOTDIR else e.strerror
                raise type(e)(e.errno, f"{where}: {why}", path) from None
            if fd != dir_fd:
                os.close(fd)
            fd = sub
        try:
            found = os.open(parts[-1], FILE_FLAGS, dir_fd=fd)
        except OSError as e:
            why = "a link" if e.errno == errno.ELOOP else e.strerror
            raise type(e)(e.errno, f"{path}: {why}", path) from None
    finally:
        if fd != dir_fd:
            os.close(fd)
    if not stat.S_ISREG(os.fstat(found).st_mode):
        os.close(found)
        raise OSError(errno.EINVAL, f"{path}: not a regular file", path)
    return found


def _list(fd: int, path: str) -> list[Entry]:
    with os.scandir(fd) as it:
        names = sorted(e.name for e in it)
    prefix = f"{path}/" if path else ""
    return [Entry(n, prefix + n, os.stat(n, dir_fd=fd, follow_symlinks=False)) for n in names]


def _subdirectories(entries: list[Entry]) -> Iterator[Entry]:
    return (e for e in entries if stat.S_ISDIR(e.st.st_mode))


def _open_listed(dir_fd: int, entry: Entry, flags: int) -> int:
    try:
        fd = os.open(entry.name, flags, dir_fd=dir_fd)
    except OSError as e:
        # A link now (ELOOP; ENOTDIR with O_DIRECTORY), or gone: not the entry listed.
        if e.errno in (errno.ELOOP, errno.ENOTDIR, errno.ENOENT):
            raise Changed(entry.path) from None
        raise
    st = os.fstat(fd)
    want = entry.st
    same = (st.st_dev, st.st_ino, stat.S_IFMT(st.st_mode)) == (
        want.st_dev,
        want.st_ino,
        stat.S_IFMT(want.st_mode),
    )
    if not same or (stat.S_ISREG(st.st_mode) and st.st_size != want.st_size):
        os.close(fd)
        raise Changed(entry.path)
    return fd
