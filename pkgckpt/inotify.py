"""The one object that owns the inotify file descriptor.

Two backends with the same behaviour:

* ``native``: the C engine in ``csrc/`` (``pkgckpt._inotify``). It waits for the quiet
  window, coalesces events and follows marker directories without waking Python, so a
  pip install of 20,000 files costs Python a handful of records.
* ``python``: the same logic on top of inotify_simple, for when the compiled module
  cannot be loaded (or ``PKGCKPT_WATCH_BACKEND=python`` asks for it).

A batch holds one :class:`Record` per (watch, name) with the union of the event masks.
For a watch added with ``markers=True`` every ``*.dist-info`` / ``*.egg-info`` directory
that appears in it is watched too, one level deep and only until its ``RECORD`` arrives:
what happens inside such a marker is reported on the parent's record for the marker's
name, as :data:`PKW_RECORD` (RECORD written or moved in) or :data:`PKW_INSIDE` (anything
else). When a batch holds more distinct names than ``max_records``, the watch as a whole
is reported with :data:`PKW_DIRTY` instead: memory stays bounded and nothing is lost.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
import select
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, NamedTuple, Protocol

from .errors import UsageError

if TYPE_CHECKING:
    import inotify_simple  # type: ignore[import-untyped]

    from ._inotify import _Engine

log = logging.getLogger(__name__)

ENV_BACKEND = "PKGCKPT_WATCH_BACKEND"
BACKENDS = ("native", "python")

# <sys/inotify.h>: the Linux ABI. Literal values, so that the native backend does not pay
# for importing inotify_simple (and ctypes) in an idle daemon's memory.
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_UNMOUNT = 0x00002000
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
IN_DONT_FOLLOW = 0x02000000
IN_EXCL_UNLINK = 0x04000000
IN_MASK_ADD = 0x20000000
IN_ISDIR = 0x40000000

# The engine's own bits (csrc/pkw.h; tests/test_native.py checks that they agree).
PKW_RECORD = 0x00010000
PKW_INSIDE = 0x00020000
PKW_DIRTY = 0x00040000

_MARKER_MASK = (
    IN_CLOSE_WRITE
    | IN_MOVED_TO
    | IN_CREATE
    | IN_DELETE
    | IN_ONLYDIR
    | IN_DONT_FOLLOW
    | IN_EXCL_UNLINK
)
_MARKER_SUFFIXES = (".dist-info", ".egg-info")


def is_marker(name: str) -> bool:
    """A directory name that announces a Python distribution (not pip's ``~`` stashes)."""
    return (
        not name.startswith(("~", "."))
        and name.endswith(_MARKER_SUFFIXES)
        and name not in _MARKER_SUFFIXES
    )


class Record(NamedTuple):
    wd: int
    mask: int
    name: str
    """"" for the watched directory itself."""


class Events(NamedTuple):
    records: tuple[Record, ...]
    overflow: bool
    """IN_Q_OVERFLOW: the kernel dropped events; anything may have changed."""
    woken: bool
    """The wake fd was readable (and has been drained)."""
    error: int = 0
    """errno of a read() that failed (not EAGAIN/EINTR): events may have been lost after
    the records given; the instance may be unusable, so replace it."""


def _oserror(err: int, path: str | os.PathLike[str] | None = None) -> OSError:
    if path is None:
        return OSError(err, os.strerror(err))
    return OSError(err, os.strerror(err), os.fspath(path))


class _Backend(Protocol):
    def fileno(self) -> int: ...
    def close(self) -> None: ...
    def add_watch(self, path: str | os.PathLike[str], mask: int, markers: bool) -> int: ...
    def add_marker(self, parent_wd: int, name: str) -> int: ...
    def rm_watch(self, wd: int) -> None: ...
    def wait(
        self, wake_fd: int | None, timeout_ms: int, quiet_ms: int, max_ms: int
    ) -> Events | None:
        """A batch, or None when a signal interrupted the wait before anything arrived."""


class _Native:
    def __init__(self, max_records: int) -> None:
        from ._inotify import ffi, lib

        self._ffi = ffi
        self._lib = lib
        engine = lib.pkw_new(max_records)
        if engine == ffi.NULL:
            raise _oserror(ffi.errno)
        self._engine: _Engine = engine
        self._out = ffi.new("struct pkw_batch *")

    def fileno(self) -> int:
        return self._lib.pkw_fileno(self._engine)

    def close(self) -> None:
        # Called once (Inotify.close). close(2) releases the fd even when it reports an
        # error; there is nothing a caller could do about one here.
        self._lib.pkw_free(self._engine)

    def add_watch(self, path: str | os.PathLike[str], mask: int, markers: bool) -> int:
        flags = self._lib.PKW_MARKERS if markers else 0
        wd = self._lib.pkw_add_watch(self._engine, os.fsencode(path), mask, flags)
        if wd < 0:
            raise _oserror(self._ffi.errno, path)
        return wd

    def add_marker(self, parent_wd: int, name: str) -> int:
        wd = self._lib.pkw_add_marker(self._engine, parent_wd, os.fsencode(name))
        if wd < 0:
            raise _oserror(self._ffi.errno, name)
        return wd

    def rm_watch(self, wd: int) -> None:
        if self._lib.pkw_rm_watch(self._engine, wd) < 0:
            raise _oserror(self._ffi.errno)

    def wait(
        self, wake_fd: int | None, timeout_ms: int, quiet_ms: int, max_ms: int
    ) -> Events | None:
        out = self._out
        n = self._lib.pkw_wait(
            self._engine, -1 if wake_fd is None else wake_fd, timeout_ms, quiet_ms, max_ms, out
        )
        if n < 0:
            err = self._ffi.errno
            if err == errno.EINTR:
                return None
            raise _oserror(err)
        string = self._ffi.string
        recs = out.records
        return Events(
            tuple(
                Record(r.wd, r.mask, os.fsdecode(string(r.name)))
                for r in (recs[i] for i in range(n))
            ),
            bool(out.overflow),
            bool(out.woken),
            int(out.error),
        )


@dataclass
class _PyWatch:
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

    def add(self, wd: int, name: str, bits: int) -> None:
        if not name:
            self.own[wd] = self.own.get(wd, 0) | bits
        elif (wd, name) in self.named or len(self.named) < self.capacity:
            self.named[wd, name] = self.named.get((wd, name), 0) | bits
        else:
            self.own[wd] = self.own.get(wd, 0) | PKW_DIRTY

    def events(self) -> Events:
        records = [Record(wd, mask, name) for (wd, name), mask in self.named.items()]
        records += (Record(wd, mask, "") for wd, mask in self.own.items())
        return Events(tuple(records), self.overflow, self.woken, self.error)


class _Python:
    """The native engine's behaviour, event by event in Python, on inotify_simple."""

    def __init__(self, max_records: int) -> None:
        import inotify_simple

        self._ino = inotify_simple.INotify(inheritable=False, nonblocking=True)
        self._max = max_records
        self._watches: dict[int, _PyWatch] = {}

    def fileno(self) -> int:
        return int(self._ino.fileno())

    def close(self) -> None:
        self._ino.close()

    def _add(self, path: str | os.PathLike[str], mask: int) -> int:
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

    def add_watch(self, path: str | os.PathLike[str], mask: int, markers: bool) -> int:
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
        wd = self._add(path, _MARKER_MASK)
        if wd in self._watches:
            return 0
        self._watches[wd] = _PyWatch(parent, False, path, name)
        if (path / "RECORD").exists():
            # RECORD was written before the watch existed.
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

    def rm_watch(self, wd: int) -> None:
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
        from inotify_simple import parse_events

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
            for ev in parse_events(data):
                self._on_event(table, ev)
                count += 1

    def wait(
        self, wake_fd: int | None, timeout_ms: int, quiet_ms: int, max_ms: int
    ) -> Events | None:
        table = _Table(self._max)
        fd = self._ino.fileno()
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        if wake_fd is not None:
            poller.register(wake_fd, select.POLLIN)
        # select.poll retries EINTR itself (PEP 475), so this backend never returns None.
        ready = dict(poller.poll(None if timeout_ms < 0 else timeout_ms))
        if not ready:
            return table.events()
        first = last = time.monotonic()
        while True:
            if ready.get(fd, 0) & select.POLLNVAL:
                raise _oserror(errno.EBADF)
            if wake_fd is not None and wake_fd in ready:
                drain_wake(wake_fd)
                table.woken = True
                self._drain(table)
                break
            if fd in ready and self._drain(table):
                last = time.monotonic()
            if table.error:
                break
            until = min(last + quiet_ms / 1000, first + max_ms / 1000) - time.monotonic()
            if until <= 0:
                break
            ready = dict(poller.poll(until * 1000))
        return table.events()


def drain_wake(fd: int) -> None:
    """Empty the wake pipe (the daemon's set_wakeup_fd), so the next wait blocks again."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    # Polls before each read so that a blocking wake fd cannot hang us.
    while poller.poll(0):
        try:
            if not os.read(fd, 256):
                return
        except BlockingIOError:
            return


def _choose(backend: str | None) -> str:
    chosen = backend or os.environ.get(ENV_BACKEND) or None
    if chosen is not None and chosen not in BACKENDS:
        raise UsageError(
            f"unknown watch backend {chosen!r} (from {ENV_BACKEND} or the caller); "
            f"expected one of: {', '.join(BACKENDS)}"
        )
    return chosen or "auto"


class Inotify:
    """An inotify instance: watches and batched, coalesced reads.

    Not thread-safe. To interrupt a wait from elsewhere (a signal handler, another
    thread), write to the ``wake_fd`` given to :meth:`read_batch`.
    """

    backend: str
    """``"native"`` or ``"python"``."""

    def __init__(self, backend: str | None = None, *, max_records: int = 1024) -> None:
        if max_records < 1:
            raise ValueError("max_records must be at least 1")
        chosen = _choose(backend)
        impl: _Backend
        if chosen in ("auto", "native"):
            try:
                impl = _Native(max_records)
            except ImportError as e:
                if chosen == "native":
                    raise UsageError(f"the native watch backend cannot be loaded: {e}") from e
                impl = _Python(max_records)
                self.backend = "python"
                log.warning(
                    "inotify backend: python (inotify_simple); native engine unavailable: %s", e
                )
            else:
                self.backend = "native"
                log.info("inotify backend: native (pkgckpt._inotify)")
        else:
            impl = _Python(max_records)
            self.backend = "python"
            log.info("inotify backend: python (inotify_simple), as configured")
        self._impl: _Backend | None = impl

    def _live(self) -> _Backend:
        if self._impl is None:
            raise ValueError("I/O operation on a closed Inotify")
        return self._impl

    @property
    def closed(self) -> bool:
        return self._impl is None

    def fileno(self) -> int:
        return self._live().fileno()

    def close(self) -> None:
        """Close the fd; calling it again does nothing."""
        impl, self._impl = self._impl, None
        if impl is not None:
            impl.close()

    def __enter__(self) -> Inotify:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def add_watch(self, path: str | os.PathLike[str], mask: int, *, markers: bool = False) -> int:
        """Watch a directory; with ``markers``, also the marker directories appearing in it.

        Adding a directory already watched replaces its mask and its ``markers``; with
        IN_MASK_ADD in ``mask``, both accumulate instead.
        """
        return self._live().add_watch(path, mask, markers)

    def add_marker(self, parent_wd: int, name: str) -> int:
        """Watch marker ``name`` of ``parent_wd`` (a ``markers`` watch) that already exists.

        Returns its wd, or 0 when its RECORD is already there (nothing left to wait for).
        """
        return self._live().add_marker(parent_wd, name)

    def rm_watch(self, wd: int) -> None:
        """Stop watching ``wd`` (and the markers followed under it)."""
        self._live().rm_watch(wd)

    def read_batch(
        self,
        timeout: float | None,
        *,
        quiet_ms: int = 200,
        max_ms: int = 2000,
        wake_fd: int | None = None,
    ) -> Events:
        """Wait up to ``timeout`` seconds (None: forever) for events or ``wake_fd``.

        After the first event, keep reading until nothing arrived for ``quiet_ms`` or
        ``max_ms`` passed. A readable ``wake_fd`` ends the wait at once (it is drained).
        An empty batch means the timeout expired.
        """
        impl = self._live()
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if deadline is None:
                timeout_ms = -1
            else:
                timeout_ms = min(max(0, math.ceil((deadline - time.monotonic()) * 1000)), 2**31 - 1)
            events = impl.wait(wake_fd, timeout_ms, quiet_ms, max_ms)
            if events is not None:
                return events
            # EINTR before anything arrived. The interpreter has run the signal handlers
            # by now (and propagated any exception they raised): wait for the rest.
