"""Library roots ↔ inotify watches. Reports which roots are dirty and, where every event
carried one, the names of the entries that changed; never what a change means (the
scanner reads that from the file system).

Roots are watched non-recursively: an install shows at the top level of site-packages as
its ``*.dist-info`` and package directories (the engine follows each new ``*.dist-info``
one level down until its ``RECORD`` arrives), and R installs each package as one
top-level directory through ``00LOCK-*``.

* A root that does not exist yet is watched through its nearest existing ancestor and
  armed when it appears; a root deleted (or moved away) and recreated is re-armed.
* Watches follow the path, not the directory: every ancestor of a watched directory is
  guarded for its own move or deletion (``mv env env-old``, ``rm -rf env``), after which
  the root is resolved again by its path. What then happens in the moved directory is
  no longer watched, and a scan reads the path anyway.
* IN_Q_OVERFLOW marks every root dirty and re-arms them all; so does a failed read of
  the inotify fd, after which the instance is replaced (events may have been lost).
* When a watch cannot be added (ENOSPC: the per-user watch limit, shared by every
  container of that user on the node), the root is rescanned every ``rescan_interval``
  seconds instead, after one warning; so are all roots when no inotify instance can be
  had at all.
"""

from __future__ import annotations

import contextlib
import errno
import operator
import os
import select
import stat
import time
from collections.abc import Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from pathlib import Path
from types import TracebackType
from typing import Literal, NamedTuple

import msgspec

from .inotify import (
    _MARKER_SUFFIXES,
    IN_CLOSE_WRITE,
    IN_CREATE,
    IN_DELETE,
    IN_DELETE_SELF,
    IN_EXCL_UNLINK,
    IN_IGNORED,
    IN_MASK_ADD,
    IN_MOVE_SELF,
    IN_MOVED_FROM,
    IN_MOVED_TO,
    IN_ONLYDIR,
    IN_UNMOUNT,
    PKW_DIRTY,
    PKW_RECORD,
    Events,
    Inotify,
    drain_wake,
    is_marker,
)
from .logs import getLogger
from .scan.python import install_running

log = getLogger(__name__)

# IN_MASK_ADD: a directory can be both a root and the ancestor of a missing root, and the
# kernel keeps one watch per inode; masks (and the engine's markers flag) only accumulate,
# Python filters the extra.
ROOT_MASK = (
    IN_CREATE
    | IN_DELETE
    | IN_MOVED_FROM
    | IN_MOVED_TO
    | IN_CLOSE_WRITE
    | IN_DELETE_SELF
    | IN_MOVE_SELF
    | IN_ONLYDIR
    | IN_EXCL_UNLINK
    | IN_MASK_ADD
)
ANCESTOR_MASK = IN_CREATE | IN_MOVED_TO | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR | IN_MASK_ADD
# Only the directory's own fate: no event for what happens in it.
GUARD_MASK = IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR | IN_MASK_ADD
_GONE = IN_IGNORED | IN_DELETE_SELF | IN_MOVE_SELF | IN_UNMOUNT
_LEFT = IN_DELETE | IN_MOVED_FROM  # an entry that went away (and may have come back)
_DEGRADED = operator.attrgetter("degraded")
_new_tuple = tuple.__new__
_APPEARED = IN_CREATE | IN_MOVED_TO
_R_LOCK = "00LOCK"


class Root(msgspec.Struct, frozen=True):
    path: Path
    kind: Literal["python", "r", "conda", "discovery"]
    """"discovery": a directory where new environments show (Jupyter's `kernels`, conda's
    `envs`), watched like a library but holding no packages."""


class Batch(NamedTuple):
    """What one wait saw. A tuple, not a frozen Struct: one is made per wake-up, and
    its sets are made for it alone, so it is handed over as they are."""

    dirty: AbstractSet[Path]
    """Roots to rescan: all of them on overflow; degraded roots when their rescan is due."""
    markers: Mapping[Path, AbstractSet[str]]
    """Root -> names of the marker directories (``*.dist-info``, ...) that changed."""
    changed: Mapping[Path, AbstractSet[str]]
    """Dirty root -> the names of the entries that changed in it, for roots where every
    event came with a name. A dirty root missing here may have changed anywhere: an
    overflow, a watch armed anew, a degraded root, an event on the root itself."""
    overflow: bool
    woken: bool
    replaced: AbstractSet[Path] = frozenset()
    """Roots seen deleted or moved away, themselves or through an ancestor: what is at
    the path from now on is another directory."""
    last: float = 0.0
    """`time.monotonic()` when the last event of the batch was read (0.0: no event), for
    a debouncer that counts its quiet window from the events, not from the wake-up."""


Role = Literal["root", "ancestor", "guard"]


class _State(msgspec.Struct):
    root: Root
    wd: int | None = None
    role: Role = "root"
    next_name: str = ""  # ancestor role: the child whose creation brings the root closer
    degraded: bool = False
    next_rescan: float = 0.0
    # names that may be installs in progress
    candidates: set[str] = msgspec.field(default_factory=set)
    # wds of the watched directory's ancestors
    guards: list[int] = msgspec.field(default_factory=list)


class _Unwatchable(Exception):
    def __init__(self, error: OSError) -> None:
        super().__init__(error)
        self.error = error


def _limit(kind: Literal["watches", "instances"]) -> str:
    """The limit in force: the node's, or a lower one of this user namespace."""
    values = []
    for knob in (f"fs/inotify/max_user_{kind}", f"user/max_inotify_{kind}"):
        with contextlib.suppress(OSError, ValueError):
            values.append(int(Path("/proc/sys", knob).read_text()))
    return str(min(values)) if values else "unknown"


def _installing(path: str) -> bool:
    """An install is still writing the dist-info directory at ``path``, by the scanner's
    rule (`install_running`): an old dist-info without RECORD is a leftover (a killed pip,
    a Debian package), which would otherwise keep its library busy for good. What is not a
    directory (a symlink) or cannot be looked into is no install either: anyone who can
    write to a shared library could leave one there, and none may raise out of the watcher.
    """
    try:
        st = os.lstat(path)
    except OSError:
        return False
    # Searchable last: only a verdict of "running" needs it, since a RECORD that cannot be
    # looked up (EACCES) reads as absent.
    return (
        stat.S_ISDIR(st.st_mode)
        and install_running(path, st.st_mtime_ns, time.time_ns())
        and os.access(path, os.X_OK)
    )


class Watcher:
    def __init__(
        self,
        roots: Sequence[Root],
        *,
        quiet_ms: int = 200,
        max_ms: int = 2000,
        rescan_interval: float = 60.0,
        wake_fd: int | None = None,
        backend: str | None = None,
        r_lock_stale: float = 600.0,
        leading: bool = False,
    ) -> None:
        """``leading``: see `Inotify.read_batch`; for a caller that debounces by
        `Batch.last`, as the daemon does."""
        if rescan_interval <= 0:
            raise ValueError("rescan_interval must be positive")
        self.quiet_ms = quiet_ms
        self.max_ms = max_ms
        self.leading = leading
        self.rescan_interval = rescan_interval
        self.wake_fd = wake_fd
        self.r_lock_stale = r_lock_stale
        """Seconds after which an R lock nothing writes under no longer counts as busy."""
        self._states: dict[Path, _State] = {}
        for root in roots:
            self._states.setdefault(root.path, _State(root))
        self._roles: dict[int, set[tuple[Role, Path]]] = {}
        self._backend = backend
        self._ino: Inotify | None = None
        self._start(time.monotonic())

    def _start(self, now: float) -> None:
        """Open and arm; without an inotify instance, every root is rescanned periodically."""
        if not self._open(now):
            for st in self._states.values():
                st.degraded = True
                st.next_rescan = now + self.rescan_interval

    def _open(self, now: float) -> bool:
        """Create the inotify instance and arm every root; False when the instance limit
        is reached (the roots are then rescanned periodically)."""
        try:
            self._ino = Inotify(self._backend)
        except OSError as e:
            if e.errno not in (errno.EMFILE, errno.ENFILE, errno.ENOMEM):
                raise
            if not any(st.degraded for st in self._states.values()):
                log.warning(
                    "cannot create an inotify instance (%s; fs.inotify.max_user_instances = "
                    "%s, shared by every process of this user on the node): every library "
                    "is rescanned every %g s instead of watched",
                    e.strerror,
                    _limit("instances"),
                    self.rescan_interval,
                )
            return False
        for st in self._states.values():
            self._arm(st, now)
        return True

    def add(self, roots: Sequence[Root]) -> None:
        """Watch `roots` too from now on; a root already watched is left as it is."""
        now = time.monotonic()
        for root in roots:
            if root.path in self._states:
                continue
            st = self._states[root.path] = _State(root)
            if self._ino is None:
                st.degraded = True
                st.next_rescan = now + self.rescan_interval
            else:
                self._arm(st, now)

    # ---- lifetime -------------------------------------------------------------------

    @property
    def backend(self) -> str | None:
        """The inotify backend in use; None when every root is rescanned periodically."""
        return None if self._ino is None else self._ino.backend

    def close(self) -> None:
        if self._ino is not None:
            self._ino.close()

    def __enter__(self) -> Watcher:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ---- arming ---------------------------------------------------------------------

    def _release(self, st: _State) -> None:
        for wd in st.guards:
            self._unrole(wd, "guard", st.root.path)
        st.guards.clear()
        if st.wd is None:
            return
        wd, st.wd = st.wd, None
        self._unrole(wd, st.role, st.root.path)

    def _unrole(self, wd: int, role: Role, root: Path) -> None:
        roles = self._roles.get(wd)
        if roles is not None:
            roles.discard((role, root))
            if not roles:
                del self._roles[wd]
                assert self._ino is not None
                # EINVAL: the kernel dropped the watch already (directory deleted).
                with contextlib.suppress(OSError):
                    self._ino.rm_watch(wd)

    def _guard(self, st: _State, watched: Path) -> None:
        """Watch the ancestors of ``watched`` for their own move or deletion."""
        assert self._ino is not None
        # "/" can be neither moved nor deleted.
        for ancestor in watched.parents[:-1]:
            try:
                wd = self._ino.add_watch(ancestor, GUARD_MASK)
            except OSError:
                # Gone already (the rearm it causes follows) or no watch left: the root
                # itself is still watched; only a move of this ancestor would go unseen.
                continue
            self._roles.setdefault(wd, set()).add(("guard", st.root.path))
            st.guards.append(wd)

    def _watch_path(self, st: _State, path: Path, role: Role) -> int:
        assert self._ino is not None
        markers = role == "root" and st.root.kind == "python"
        mask = ROOT_MASK if role == "root" else ANCESTOR_MASK
        return self._ino.add_watch(path, mask, markers=markers)

    def _watch(self, st: _State, path: Path, role: Role) -> int:
        try:
            wd = self._watch_path(st, path, role)
        except OSError as e:
            if e.errno in (errno.ENOENT, errno.ENOTDIR):
                raise
            raise _Unwatchable(e) from e
        self._roles.setdefault(wd, set()).add((role, st.root.path))
        st.wd, st.role = wd, role
        return wd

    def _arm(self, st: _State, now: float) -> None:
        """(Re)watch the root, or its nearest existing ancestor; degrade when impossible."""
        self._release(st)
        path = st.root.path
        try:
            # Each retry follows a directory that appeared or vanished meanwhile. os.path's
            # isdir: False, not an error, beneath a directory this user may not enter (a
            # user site under a HOME that is root's): the root is then watched from the
            # nearest ancestor that can be, or degrades to rescans like any unwatchable root.
            for _ in range(100):
                target = next((p for p in (path, *path.parents) if os.path.isdir(p)), None)  # noqa: PTH112
                if target is None:
                    raise _Unwatchable(OSError(errno.ENOENT, "no existing ancestor", str(path)))
                try:
                    wd = self._watch(st, target, "root" if target == path else "ancestor")
                except (FileNotFoundError, NotADirectoryError):
                    continue
                if target == path:
                    self._sync(st, wd)
                    break
                st.next_name = path.relative_to(target).parts[0]
                if not os.path.isdir(target / st.next_name):  # noqa: PTH112
                    break
                self._release(st)
            else:
                raise _Unwatchable(OSError(errno.ELOOP, "directories keep changing", str(path)))
        except _Unwatchable as u:
            self._release(st)
            self._degrade(st, u.error, now)
            return
        self._guard(st, target)
        if st.degraded:
            st.degraded = False
            log.warning("%s is watched again", path)

    def _degrade(self, st: _State, error: OSError, now: float) -> None:
        st.next_rescan = now + self.rescan_interval
        if st.degraded:
            return
        st.degraded = True
        if error.errno == errno.ENOSPC:
            why = (
                "the inotify watch limit is reached (fs.inotify.max_user_watches = "
                f"{_limit('watches')}, shared by every process of this user on "
                "the node; raise it to watch again)"
            )
        else:
            why = f"it cannot be watched ({error.strerror})"
        log.warning(
            "%s: %s; rescanning it every %g s instead", st.root.path, why, self.rescan_interval
        )

    def _sync(self, st: _State, wd: int | None) -> None:
        """Find installs already in progress (at arming, after lost events) from the disk."""
        st.candidates.clear()
        try:
            entries = list(os.scandir(st.root.path))
        except OSError:
            return
        for entry in entries:
            name = entry.name
            if st.root.kind == "r":
                if name.startswith(_R_LOCK):
                    st.candidates.add(name)
            elif name.endswith(".dist-info") and is_marker(name) and _installing(entry.path):
                st.candidates.add(name)
                if wd is not None and self._ino is not None:
                    with contextlib.suppress(OSError):
                        self._ino.add_marker(wd, name)

    # ---- the wait -------------------------------------------------------------------

    def wait(self, timeout: float | None) -> Batch:
        """Block until events, ``timeout`` seconds (None: forever) or the wake fd.

        Returns an empty batch on timeout. Degraded roots come back dirty each time their
        rescan is due, which is then the only reason this wakes up without an event.
        """
        # One function from the wait to the batch, the rare cases aside (`_rescans`,
        # `_recover`): it runs at every wake-up, after a sleep that left the caches cold,
        # where each Python call costs more than the work it does.
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            wait_s = None if deadline is None else max(0.0, deadline - time.monotonic())
            # map and attrgetter: no Python frame for the check.
            if any(map(_DEGRADED, self._states.values())):
                due = self._rescans()
                if isinstance(due, Batch):
                    return due
                wait_s = due if wait_s is None else min(wait_s, due)
            if self._ino is None:
                woken = self._wait_wake(wait_s)
                if woken or (deadline is not None and time.monotonic() >= deadline):
                    return Batch(frozenset(), {}, {}, overflow=False, woken=woken)
                continue
            try:
                events = self._ino.read_batch(
                    wait_s,
                    quiet_ms=self.quiet_ms,
                    max_ms=self.max_ms,
                    wake_fd=self.wake_fd,
                    leading=self.leading,
                )
            except OSError as e:
                # The first poll() failed: nothing was taken (later errors come in the batch).
                events = Events(overflow=False, woken=False, error=e.errno or errno.EIO)
            # The dirty roots are those of `named` and `unnamed`: every root made dirty
            # below without a name goes to `unnamed`.
            markers: dict[Path, set[str]] = {}
            named: dict[Path, set[str]] = {}
            unnamed: set[Path] = set()
            rearm: set[Path] = set()
            gone: set[Path] = set()
            resync: set[Path] = set()
            for wd, mask, name in zip(events.wds, events.masks, events.names, strict=True):
                # Nothing below changes the roles: no copy of them is needed.
                for role, root in self._roles.get(wd, ()):
                    st = self._states[root]
                    if role == "root" and name:  # nearly every record
                        named.setdefault(root, set()).add(name)
                        if st.root.kind == "python":
                            if name.endswith(_MARKER_SUFFIXES) and is_marker(name):
                                markers.setdefault(root, set()).add(name)
                                if mask & PKW_RECORD and not mask & _LEFT:
                                    # Made (or there) and its RECORD arrived since: that
                                    # install is complete, no need to look at the disk.
                                    st.candidates.discard(name)
                                else:
                                    st.candidates.add(name)
                        elif name.startswith(_R_LOCK):
                            st.candidates.add(name)
                        continue
                    if role == "guard":
                        if not name and mask & _GONE:
                            rearm.add(root)
                            gone.add(root)
                        continue
                    if role == "ancestor":
                        if (not name and mask & _GONE) or (
                            name == st.next_name and mask & _APPEARED
                        ):
                            rearm.add(root)
                        if not name and mask & _GONE:
                            gone.add(root)
                        continue
                    # An event on the root itself: it may have changed anywhere.
                    if mask & _GONE:
                        rearm.add(root)
                        gone.add(root)
                    if mask & PKW_DIRTY:
                        resync.add(root)
                    unnamed.add(root)
            if events.error or events.overflow or rearm or resync:
                self._recover(events, unnamed, rearm, resync)
            if named or unnamed or events.overflow or events.woken:
                # tuple.__new__, as NamedTuple's own _make: the generated __new__ is one
                # more Python call.
                return _new_tuple(
                    Batch,
                    (
                        # The keys themselves when they are all: no set made, no Path hashed.
                        named.keys() | unnamed if unnamed else named.keys(),
                        markers,
                        {root: names for root, names in named.items() if root not in unnamed}
                        if unnamed
                        else named,
                        events.overflow,
                        events.woken,
                        gone,
                        events.last,
                    ),
                )
            if deadline is not None and time.monotonic() >= deadline:
                return Batch(frozenset(), {}, {}, overflow=False, woken=False, replaced=gone)

    def _rescans(self) -> Batch | float:
        """The degraded roots whose rescan is due, armed again where possible; else the
        seconds until the next one is due."""
        now = time.monotonic()
        degraded = [s for s in self._states.values() if s.degraded]
        dirty = {s.root.path for s in degraded if s.next_rescan <= now}
        if not dirty:
            return max(0.0, min(s.next_rescan for s in degraded) - now)
        if self._ino is None and not self._open(now):
            for st in self._states.values():
                st.next_rescan = now + self.rescan_interval
                self._sync(st, None)
        else:
            for path in dirty:
                st = self._states[path]
                st.next_rescan = now + self.rescan_interval
                self._arm(st, now)
        return Batch(frozenset(dirty), {}, {}, overflow=False, woken=False)

    def rearm(self, roots: Iterable[Path]) -> None:
        """Watch ``roots`` by their path again: a scan found another directory there that
        no event announced (a mount over it). A root already watched there keeps its
        watch, so no event is lost in between."""
        if self._ino is None:
            return
        now = time.monotonic()
        for root in roots:
            st = self._states.get(root)
            # A root not there yet is followed by the events on its way already.
            if st is None or st.wd is None or st.role != "root":
                continue
            try:
                wd = self._watch_path(st, root, "root")
            except OSError:
                wd = None
            if wd != st.wd:
                self._arm(st, now)

    def reopen(self, why: str) -> None:
        """Replace the inotify instance and arm every root anew: after an error that may
        have lost events (the caller rescans every root)."""
        self._reopen(time.monotonic(), why)

    def _reopen(self, now: float, why: str) -> None:
        log.warning("%s: replacing the inotify instance, rescanning every library", why)
        if self._ino is not None:
            with contextlib.suppress(OSError):
                self._ino.close()
        self._ino = None
        self._roles.clear()
        for st in self._states.values():
            st.wd = None
            st.guards.clear()
        try:
            self._start(now)
        except OSError as e:
            # Rescanned periodically meanwhile; each due rescan tries to open again.
            for st in self._states.values():
                self._degrade(st, e, now)

    def _recover(
        self, events: Events, unnamed: set[Path], rearm: set[Path], resync: set[Path]
    ) -> None:
        """After a read error, an overflow, a root (or its way) that changed, or a full
        batch table: arm again, and add to `unnamed` the roots to read in full."""
        now = time.monotonic()
        if events.error:
            self._reopen(now, f"reading inotify events failed ({os.strerror(events.error)})")
            unnamed.update(self._states)
        elif events.overflow:
            log.warning("inotify queue overflowed: rescanning every library")
            rearm.update(self._states)
            unnamed.update(self._states)
        for root in rearm:
            st = self._states[root]
            was_root = st.wd is not None and st.role == "root"
            self._arm(st, now)
            # Appeared, vanished or re-created: whatever is there now must be read.
            if was_root or (st.wd is not None and st.role == "root") or st.degraded:
                unnamed.add(root)
        for root in resync - rearm:
            self._sync(self._states[root], self._states[root].wd)

    def _wait_wake(self, timeout: float | None) -> bool:
        poller = select.poll()
        if self.wake_fd is not None:
            poller.register(self.wake_fd, select.POLLIN)
        if not poller.poll(None if timeout is None else timeout * 1000):
            return False
        assert self.wake_fd is not None
        drain_wake(self.wake_fd)
        return True

    # ---- install in progress --------------------------------------------------------

    def busy(self, root: Path) -> bool:
        """An install is visibly in progress in ``root``: a recent ``*.dist-info`` without
        RECORD yet (`_installing`), an R ``00LOCK-*`` directory something wrote under
        within ``r_lock_stale`` seconds (older ones are leftovers). Checked on the disk, so
        never stale."""
        st = self._states.get(root)
        if st is None:
            return False
        for name in tuple(st.candidates):
            if name.startswith(_R_LOCK):
                from .scan.r import lock_active  # only where R locks are seen

                in_progress = lock_active(root / name, self.r_lock_stale)
            elif name.endswith(".dist-info"):
                # Strings, not pathlib: asked after every batch that names a marker, and
                # building Path objects cost more than the stat calls themselves.
                in_progress = _installing(f"{root}/{name}")
                if not in_progress and st.role == "root" and st.wd and self._ino is not None:
                    # A leftover the engine follows since it appeared (a pip killed since,
                    # an old one moved in) would hold its watch, and keep every batch
                    # waiting for its RECORD (`read_batch`'s ``leading``), for good.
                    self._ino.drop_marker(st.wd, name)
            else:
                in_progress = False  # an *.egg-info: no RECORD to wait for
            if not in_progress:
                st.candidates.discard(name)
        return bool(st.candidates)
