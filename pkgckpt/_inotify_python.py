"""The pure-Python backend of `pkgckpt.inotify`: the engine's behaviour, event by event,
on inotify_simple (see `pkgckpt.inotify` for what both backends do)."""

from __future__ import annotations

import contextlib
import errno
import math
import os
import select
import time
from pathlib import Path

import inotify_simple  # type: ignore[import-untyped]
import msgspec

from .inotify import (
    _MARKER_MASK,
    IN_CLOSE_WRITE,
    IN_CREATE,
    IN_DELETE,
    IN_IGNORED,
    IN_ISDIR,
    IN_MASK_ADD,
    IN_MOVED_FROM,
    IN_MOVED_TO,
    IN_Q_OVERFLOW,
    PKW_DIRTY,
    PKW_INSIDE,
    PKW_RECORD,
    Events,
    Inotify,
    _oserror,
    closed_error,
    drain_wake,
    is_marker,
    timeout_ms,
)

# struct inotify_event (16 bytes) and the longest name with its NUL.
_LARGEST_EVENT = 16 + 255 + 1


class _PyWatch(msgspec.Struct):
    parent: int  # wd of the directory a marker belongs to; -1 for top-level watches
    markers: bool
    path: Path
    name: str  # a marker's name in its parent


class _Table:
    """One batch: records coalesced per (wd, name), bounded like the C table."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.named: dict[tuple[int, str], int] = {}
        self.own: dict[int, int] = {}
        self.overflow = False
        self.woken = False
        self.error = 0
        self.recorded = False  # a RECORD was reported in this batch
        self.last = 0.0  # when the last event was read

    def add(self, wd: int, name: str, bits: int) -> None:
        if bits & PKW_RECORD:
            self.recorded = True
        if not name:
            self.own[wd] = self.own.get(wd, 0) | bits
        elif (wd, name) in self.named or len(self.named) < self.capacity:
            self.named[wd, name] = self.named.get((wd, name), 0) | bits
        else:
            self.own[wd] = self.own.get(wd, 0) | PKW_DIRTY

    def events(self) -> Events:
        named = [(wd, mask, name) for (wd, name), mask in self.named.items()]
        named += ((wd, mask, "") for wd, mask in self.own.items())
        wds, masks, names = zip(*named, strict=True) if named else ((), (), ())
        return Events(self.overflow, self.woken, self.error, self.last, wds, masks, names)


class Python(Inotify):
    """The native engine's behaviour, event by event in Python, on inotify_simple."""

    backend = "python"

    def __init__(self, backend: str | None = None, *, max_records: int = 1024) -> None:
        self._ino = inotify_simple.INotify(inheritable=False, nonblocking=True)
        self._max = max_records
        self._watches: dict[int, _PyWatch] = {}
        self._returned = -math.inf  # when the last batch with records was returned

    @property
    def closed(self) -> bool:
        return bool(self._ino.closed)

    def fileno(self) -> int:
        if self._ino.closed:
            raise closed_error()
        return int(self._ino.fileno())

    def close(self) -> None:
        self._ino.close()  # a second call does nothing

    def _add(self, path: str | os.PathLike[str], mask: int) -> int:
        if self._ino.closed:
            raise closed_error()
        try:
            wd = int(self._ino.add_watch(path, mask))
        except OSError as e:
            raise _oserror(e.errno or errno.EIO, path) from None
        return wd

    def _drop_markers_of(self, parent: int) -> None:
        for wd in [wd for wd, w in self._watches.items() if w.parent == parent]:
            self._marker_drop(wd)

    def _marker_drop(self, wd: int) -> None:
        del self._watches[wd]
        # EINVAL: the kernel dropped it already; its IN_IGNORED is then ignored too.
        with contextlib.suppress(OSError):
            self._ino.rm_watch(wd)

    def add_watch(self, path: str | os.PathLike[str], mask: int, *, markers: bool = False) -> int:
        wd = self._add(path, mask)
        old = self._watches.get(wd)
        if old is not None and old.parent < 0 and mask & IN_MASK_ADD:
            markers = markers or old.markers  # the kernel kept the old bits: keep its markers
        if not markers:
            self._drop_markers_of(wd)
        self._watches[wd] = _PyWatch(-1, markers, Path(path), "")
        return wd

    def _marker_find(self, parent: int, name: str) -> int | None:
        for wd, w in self._watches.items():
            if w.parent == parent and w.name == name:
                return wd
        return None

    def _marker_watch(self, parent: int, name: str, table: _Table | None) -> int:
        if self._marker_find(parent, name) is not None:
            return 0
        path = self._watches[parent].path / name
        # As the engine does: an install that completed before we looked needs no watch.
        if (path / "RECORD").exists():
            if table is not None:
                table.add(parent, name, PKW_RECORD)
            return 0
        wd = self._add(path, _MARKER_MASK)
        if wd in self._watches:
            return 0
        self._watches[wd] = _PyWatch(parent, False, path, name)
        if (path / "RECORD").exists():
            # RECORD arrived between the look and the watch.
            if table is not None:
                table.add(parent, name, PKW_RECORD)
            self._marker_drop(wd)
            return 0
        return wd

    def add_marker(self, parent_wd: int, name: str) -> int:
        p = self._watches.get(parent_wd)
        if p is None or p.parent >= 0 or not p.markers or not is_marker(name) or "/" in name:
            raise _oserror(errno.EINVAL, name)
        return self._marker_watch(parent_wd, name, None)

    def drop_marker(self, parent_wd: int, name: str) -> None:
        if self._ino.closed:
            raise closed_error()
        wd = self._marker_find(parent_wd, name)
        if wd is not None:
            self._marker_drop(wd)

    def rm_watch(self, wd: int) -> None:
        if self._ino.closed:
            raise closed_error()
        w = self._watches.get(wd)
        if w is None or w.parent >= 0:
            raise _oserror(errno.EINVAL)
        self._drop_markers_of(wd)
        del self._watches[wd]
        try:
            self._ino.rm_watch(wd)
        except OSError as e:
            raise _oserror(e.errno or errno.EIO) from None

    def _on_event(self, table: _Table, ev: inotify_simple.Event) -> None:
        wd, mask, name = ev.wd, ev.mask, ev.name
        if wd < 0:
            table.overflow = table.overflow or bool(mask & IN_Q_OVERFLOW)
            return
        w = self._watches.get(wd)
        if w is None:
            return  # a watch we removed; the kernel still had events queued for it
        if w.parent >= 0:
            if mask & IN_IGNORED:
                del self._watches[wd]
            elif name == "RECORD" and mask & (IN_CLOSE_WRITE | IN_MOVED_TO):
                table.add(w.parent, w.name, PKW_RECORD)
                self._marker_drop(wd)
            elif name:
                table.add(w.parent, w.name, PKW_INSIDE)
            return
        if mask & IN_IGNORED:
            self._drop_markers_of(wd)
            del self._watches[wd]
            table.add(wd, "", mask)
            return
        if w.markers and mask & IN_ISDIR and name and is_marker(name):
            if mask & (IN_DELETE | IN_MOVED_FROM):
                mwd = self._marker_find(wd, name)
                if mwd is not None:
                    self._marker_drop(mwd)
            if mask & (IN_CREATE | IN_MOVED_TO):
                # A failure loses nothing: the creation is reported, the scanner reads the disk.
                with contextlib.suppress(OSError):
                    self._marker_watch(wd, name, table)
        table.add(wd, name, mask)

    def _drain(self, table: _Table) -> int:
        count = 0
        while True:
            try:
                data = os.read(self._ino.fileno(), 65536)
            except BlockingIOError:
                return count
            except OSError as e:
                # As the engine does: the events taken so far are kept, the error reported.
                table.error = e.errno or errno.EIO
                return count
            for ev in inotify_simple.parse_events(data):
                self._on_event(table, ev)
                count += 1
            table.last = time.monotonic()
            # As the engine does: with room left for the largest event, the queue was empty.
            if len(data) <= 65536 - _LARGEST_EVENT:
                return count

    def _markers_pending(self) -> bool:
        return any(w.parent >= 0 for w in self._watches.values())

    def read_batch(
        self,
        timeout: float | None,
        *,
        quiet_ms: int = 200,
        max_ms: int = 2000,
        wake_fd: int | None = None,
        leading: bool = False,
    ) -> Events:
        if self._ino.closed:
            raise closed_error()
        deadline = None if timeout is None else time.monotonic() + timeout
        events = self._wait(wake_fd, timeout_ms(deadline), quiet_ms, max_ms, leading)
        if events.wds:
            self._returned = time.monotonic()
        return events

    def _wait(
        self, wake_fd: int | None, wait_ms: int, quiet_ms: int, max_ms: int, leading: bool
    ) -> Events:
        table = _Table(self._max)
        fd = self._ino.fileno()
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        if wake_fd is not None:
            poller.register(wake_fd, select.POLLIN)
        # select.poll retries EINTR itself (PEP 475), so this backend never returns None.
        ready = dict(poller.poll(None if wait_ms < 0 else wait_ms))
        if not ready:
            return table.events()
        first = last = time.monotonic()
        # As the engine does (PKW_LEADING): after a quiet spell, return at once.
        fresh = leading and first - self._returned >= quiet_ms / 1000
        while True:
            if ready.get(fd, 0) & select.POLLNVAL:
                table.error = errno.EBADF  # as the engine does: the records taken still go back
                break
            if wake_fd is not None and wake_fd in ready:
                drain_wake(wake_fd)
                table.woken = True
                self._drain(table)
                break
            if fd in ready and self._drain(table):
                last = table.last
            if table.error:
                break
            if leading and (fresh or table.recorded) and not self._markers_pending():
                break
            until = min(last + quiet_ms / 1000, first + max_ms / 1000) - time.monotonic()
            if until <= 0:
                break
            try:
                ready = dict(poller.poll(until * 1000))
            except OSError as e:
                table.error = e.errno or errno.EIO
                break
        return table.events()
