"""The one object that owns the inotify file descriptor.

Two backends with the same behaviour, one module each, loaded only when chosen; each is a
subclass of :class:`Inotify`, which ``Inotify(backend)`` makes:

* ``native`` (``_inotify_native.py``): the C engine in ``csrc/`` (``pkgckpt._inotify``).
  It waits for the quiet window, coalesces events and follows marker directories without
  waking Python, so a pip install of 20,000 files costs Python a handful of records,
  handed over as one piece of text per batch.
* ``python`` (``_inotify_python.py``): the same logic on top of inotify_simple, for when
  the compiled module cannot be loaded (or ``PKGCKPT_WATCH_BACKEND=python`` asks for it).

A batch (:class:`Events`) holds one record per (watch, name) with the union of the event
masks.
For a watch added with ``markers=True`` every ``*.dist-info`` / ``*.egg-info`` directory
that appears in it is watched too, one level deep and only until its ``RECORD`` arrives
(or `Inotify.drop_marker` gives up on it): what happens inside such a marker is reported
on the parent's record for the marker's name, as :data:`PKW_RECORD` (RECORD written or
moved in) or :data:`PKW_INSIDE` (anything else). When a batch holds more distinct names
than ``max_records``, the watch as a whole is reported with :data:`PKW_DIRTY` instead:
memory stays bounded and nothing is lost.
"""

from __future__ import annotations

import importlib
import math
import os
import select
import time
from types import TracebackType
from typing import ClassVar, NamedTuple

from .errors import UsageError
from .logs import getLogger

log = getLogger(__name__)

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

# As csrc/pkw.c's MARKER_MASK: RECORD's arrival, and the other files' writes as activity.
_MARKER_MASK = IN_CLOSE_WRITE | IN_MOVED_TO | IN_ONLYDIR | IN_DONT_FOLLOW | IN_EXCL_UNLINK
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
    """One batch. Its records are in three parallel tuples, record i being ``wds[i]``,
    ``masks[i]``, ``names[i]``: the native back end makes them without a Python object per
    record, which a batch read after a long sleep pays for in cache misses. `records`
    gives them as `Record` objects."""

    overflow: bool
    """IN_Q_OVERFLOW: the kernel dropped events; anything may have changed."""
    woken: bool
    """The wake fd was readable (and has been drained)."""
    error: int = 0
    """errno of a read() that failed (not EAGAIN/EINTR): events may have been lost after
    the records given; the instance may be unusable, so replace it."""
    last: float = 0.0
    """`time.monotonic()` when the batch's last event was read; 0.0 when none was."""
    wds: tuple[int, ...] = ()
    masks: tuple[int, ...] = ()
    names: tuple[str, ...] = ()

    @property
    def records(self) -> tuple[Record, ...]:
        return tuple(map(Record, self.wds, self.masks, self.names))


def _oserror(err: int, path: str | os.PathLike[str] | None = None) -> OSError:
    if path is None:
        return OSError(err, os.strerror(err))
    return OSError(err, os.strerror(err), os.fspath(path))


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


def timeout_ms(deadline: float | None) -> int:
    """Milliseconds left until ``deadline`` (`time.monotonic()`), as poll() takes them;
    -1 (forever) for None."""
    if deadline is None:
        return -1
    return min(max(0, math.ceil((deadline - time.monotonic()) * 1000)), 2**31 - 1)


def closed_error() -> ValueError:
    return ValueError("I/O operation on a closed Inotify")


class Inotify:
    """An inotify instance: watches and batched, coalesced reads.

    ``Inotify(backend)`` makes an instance of the chosen back end's class, a subclass (as
    ``pathlib.Path`` makes a ``PosixPath``): the wait made at every wake-up then runs in
    one Python call, the back end's own, not in a wrapper around it.

    Not thread-safe. To interrupt a wait from elsewhere (a signal handler, another
    thread), write to the ``wake_fd`` given to :meth:`read_batch`.
    """

    backend: ClassVar[str]
    """``"native"`` or ``"python"``."""

    def __new__(cls, backend: str | None = None, *, max_records: int = 1024) -> Inotify:
        if cls is not Inotify:
            return super().__new__(cls)
        if max_records < 1:
            raise ValueError("max_records must be at least 1")
        chosen = _choose(backend)
        if chosen in ("auto", "native"):
            try:
                # The compiled engine itself first, through sys.modules: _inotify_native
                # may have been imported while the engine could still be loaded.
                importlib.import_module("._inotify", __package__)
                from ._inotify_native import Native
            except ImportError as e:
                if chosen == "native":
                    raise UsageError(f"the native watch backend cannot be loaded: {e}") from e
                log.warning(
                    "inotify backend: python (inotify_simple); native engine unavailable: %s", e
                )
            else:
                log.info("inotify backend: native (pkgckpt._inotify)")
                return super().__new__(Native)
        else:
            log.info("inotify backend: python (inotify_simple), as configured")
        from ._inotify_python import Python

        return super().__new__(Python)

    # What each back end implements.

    @property
    def closed(self) -> bool:
        raise NotImplementedError

    def fileno(self) -> int:
        raise NotImplementedError

    def close(self) -> None:
        """Close the fd; calling it again does nothing."""
        raise NotImplementedError

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
        raise NotImplementedError

    def add_marker(self, parent_wd: int, name: str) -> int:
        """Watch marker ``name`` of ``parent_wd`` (a ``markers`` watch) that already exists.

        Returns its wd, or 0 when its RECORD is already there (nothing left to wait for).
        """
        raise NotImplementedError

    def drop_marker(self, parent_wd: int, name: str) -> None:
        """Stop following marker ``name`` of ``parent_wd``, whose RECORD will never come (a
        leftover of an interrupted install); nothing when it is not followed."""
        raise NotImplementedError

    def rm_watch(self, wd: int) -> None:
        """Stop watching ``wd`` (and the markers followed under it)."""
        raise NotImplementedError

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
        An empty batch means the timeout expired. A signal whose handler returns does not
        end the wait (unless it writes to ``wake_fd``, as ``signal.set_wakeup_fd`` does).

        ``leading``: the first event after a quiet spell (no batch returned for
        ``quiet_ms``) ends the batch at once, and so does a RECORD's arrival, unless a
        followed marker still waits for its RECORD. For a caller that debounces on its
        own (``Events.last`` says when the last event came): an isolated change then
        costs one wake-up instead of two, and a stream of events is still batched.
        """
        raise NotImplementedError
