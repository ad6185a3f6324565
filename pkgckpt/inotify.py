"""The one object that owns the inotify file descriptor.

Two backends with the same behaviour, one module each, loaded only when chosen:

* ``native`` (``_inotify_native.py``): the C engine in ``csrc/`` (``pkgckpt._inotify``).
  It waits for the quiet window, coalesces events and follows marker directories without
  waking Python, so a pip install of 20,000 files costs Python a handful of records.
* ``python`` (``_inotify_python.py``): the same logic on top of inotify_simple, for when
  the compiled module cannot be loaded (or ``PKGCKPT_WATCH_BACKEND=python`` asks for it).

A batch holds one :class:`Record` per (watch, name) with the union of the event masks.
For a watch added with ``markers=True`` every ``*.dist-info`` / ``*.egg-info`` directory
that appears in it is watched too, one level deep and only until its ``RECORD`` arrives:
what happens inside such a marker is reported on the parent's record for the marker's
name, as :data:`PKW_RECORD` (RECORD written or moved in) or :data:`PKW_INSIDE` (anything
else). When a batch holds more distinct names than ``max_records``, the watch as a whole
is reported with :data:`PKW_DIRTY` instead: memory stays bounded and nothing is lost.
"""

from __future__ import annotations

import logging
import math
import os
import select
import time
from types import TracebackType
from typing import NamedTuple, Protocol

from .errors import UsageError

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
    last: float = 0.0
    """`time.monotonic()` when the batch's last event was read; 0.0 when none was."""


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
        self, wake_fd: int | None, timeout_ms: int, quiet_ms: int, max_ms: int, leading: bool
    ) -> Events | None:
        """A batch, or None when a signal interrupted the wait before anything arrived."""


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


def _python(max_records: int) -> _Backend:
    from ._inotify_python import Python

    return Python(max_records)


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
                from ._inotify_native import Native

                impl = Native(max_records)
            except ImportError as e:
                if chosen == "native":
                    raise UsageError(f"the native watch backend cannot be loaded: {e}") from e
                impl = _python(max_records)
                self.backend = "python"
                log.warning(
                    "inotify backend: python (inotify_simple); native engine unavailable: %s", e
                )
            else:
                self.backend = "native"
                log.info("inotify backend: native (pkgckpt._inotify)")
        else:
            impl = _python(max_records)
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
        leading: bool = False,
    ) -> Events:
        """Wait up to ``timeout`` seconds (None: forever) for events or ``wake_fd``.

        After the first event, keep reading until nothing arrived for ``quiet_ms`` or
        ``max_ms`` passed. A readable ``wake_fd`` ends the wait at once (it is drained).
        An empty batch means the timeout expired.

        ``leading``: the first event after a quiet spell (no batch returned for
        ``quiet_ms``) ends the batch at once, and so does a RECORD's arrival, unless a
        followed marker still waits for its RECORD. For a caller that debounces on its
        own (``Events.last`` says when the last event came): an isolated change then
        costs one wake-up instead of two, and a stream of events is still batched.
        """
        impl = self._live()
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if deadline is None:
                timeout_ms = -1
            else:
                timeout_ms = min(max(0, math.ceil((deadline - time.monotonic()) * 1000)), 2**31 - 1)
            events = impl.wait(wake_fd, timeout_ms, quiet_ms, max_ms, leading)
            if events is not None:
                return events
            # EINTR before anything arrived. The interpreter has run the signal handlers
            # by now (and propagated any exception they raised): wait for the rest.
