"""`pkgckpt daemon`: watch the library roots, checkpoint every change to the store.

Start: take the store and key's lock in the runtime directory (`status.StatusFile.claim`:
a second daemon for them exits 4, AlreadyRunning), open the session
(`checkpoint.open_session`: the store's manifest, the baseline, a full scan), commit if
the record changed, tell systemd `READY=1`. Then loop: the watcher blocks in the kernel
until a root changes (or a signal arrives through the wake-up pipe); the debouncer holds
a root until its install has gone quiet; only the ready roots are rescanned, and in them
only the entries their events named (every entry's identity when the events could not
name them: an overflow, a root armed anew); the tracker folds the scan into the record
(invariant 1); the store commits it. One log line per change and per commit, on stderr.

Signals: SIGTERM / SIGINT flush (every root rescanned at once, no quiet window, then
commit at once, retried until `shutdown_timeout` with a backoff started anew and capped
at `SHUTDOWN_RETRY_CAP`, whatever delay an outage grew before) and exit: 0 when
everything seen is on the store, 1 when the store stayed unreachable, or when a call on
it had not returned `STOP_REPORT_SECONDS` after `shutdown_timeout` (a hard NFS mount
whose server went away, under the store or a library: the signals are taken by a thread
of their own, see `_Taker`, and a watchdog ends the process). SIGHUP rescans
every root and commits now (`pkgckpt snapshot` uses it when a daemon runs, so the
manifest keeps one writer); it also applies the requests `forget`, `revert` and
`restore` left in the runtime directory (`record.serve`) and answers each with the
generation written. A change made on request that the store did not take is pending like
one a scan saw: retried with the same backoff, counted in `pending`, and at SIGTERM exit
1 if it never reached the store.

The watcher may fail too: a failed read of the inotify fd, or anything else it raises,
is logged, the inotify instance is replaced, and every root is rescanned after the quiet
window (events may have been lost); the daemon never exits because of the watcher.

The store may fail at any time: the changes stay in memory, the commit is retried with
exponential backoff and jitter, the error is in the status file; the daemon never exits
because of the store. If the store cannot even be read at start, nothing is scanned into
the record until it can be (the record must start from the manifest); a SIGHUP tries it
at once, and the requests of `forget` and `revert` are answered with why it cannot be
read (`status.DaemonState.unread`: `snapshot` says it too), nothing changed.

Idle costs nothing: the only timed wake-ups are a pending debounce deadline, a store
retry, systemd's watchdog (`WATCHDOG=1` when `WATCHDOG_USEC` asks for it) and the
backstop rescan when `rescan_interval` is set.
"""

from __future__ import annotations

import _thread
import contextlib
import math
import os
import signal
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from pathlib import Path
from types import FrameType
from typing import TypeAlias

import msgspec

from . import checkpoint, inventory, metrics, runner, seal, signals, status
from .artifacts import Result, quota
from .artifacts import session as art
from .artifacts.background import Background
from .artifacts.retry import Retries
from .config import Config
from .debounce import Debouncer
from .discovery import Unreadable
from .errors import ManifestError, PkgckptError, StoreError
from .inventory import Target
from .logs import getLogger
from .manifest import Body, Change, Environment, Package
from .scan import kept as scan_kept
from .signals import HANDLED, STOPS
from .store import open_store
from .watcher import Batch, Root, Watcher

log = getLogger("pkgckpt.daemon")

_STORE_ERRORS = (StoreError, ManifestError)
BATCH_MS = 50
"""The watcher's own quiet window: events closer than this are one batch, one wake-up."""
BATCH_MAX_MS = 1000
"""A long install still wakes the daemon once a second, so its maximum delay holds."""
SHUTDOWN_RETRY_CAP = 2.0
"""After SIGTERM the store is retried at least this often: a grace period is short."""
STOP_REPORT_SECONDS = 2.0
"""A daemon still blocked in a store call this long after `shutdown_timeout` ran out (a
hard NFS mount whose server stopped answering, where only SIGKILL ends the wait) is ended
from another thread, exit 1: the grace period's end is a bound, not a hope."""


def install_lock(name: str) -> bool:
    """Whether `name`, an entry of a Python prefix, is only an installer's lock, which says
    nothing of a remade environment: uv opens `<prefix>/.lock` for writing at every
    `uv pip install`, and makes it at the first through a temporary `.tmpXXXXXX` renamed
    into place."""
    return name == ".lock" or name.startswith(".tmp")


def sd_notify(message: str, environ: Mapping[str, str] | None = None) -> bool:
    """Send `message` (e.g. "READY=1") to systemd's `$NOTIFY_SOCKET`; False when unset.

    The protocol is one datagram on a Unix socket; a leading '@' names an abstract socket.
    """
    address = (os.environ if environ is None else environ).get("NOTIFY_SOCKET")
    if not address or address[0] not in "/@":
        return False
    target = "\0" + address[1:] if address[0] == "@" else address
    import socket  # only under systemd: 0.6 MB the idle daemon otherwise does without

    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect(target)
            # Never block: a manager that stopped reading (its queue holds ~10 datagrams)
            # must not stall the daemon. A dropped STATUS or WATCHDOG is resent later.
            s.send(message.encode(), socket.MSG_DONTWAIT)
    except BlockingIOError:
        log.debug("systemd's notify socket %s is full: %r dropped", address, message)
        return False
    except OSError as e:
        log.warning("cannot notify systemd at %s: %s", address, e.strerror or e)
        return False
    return True


def watchdog_interval(environ: Mapping[str, str] | None = None) -> float | None:
    """Seconds between `WATCHDOG=1` keep-alives: half of what systemd asked, or None."""
    environ = os.environ if environ is None else environ
    usec = environ.get("WATCHDOG_USEC", "")
    pid = environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0 or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 2e6


class Backoff:
    """Exponential delays with jitter, so that many daemons do not hammer one NFS server."""

    def __init__(self, first: float = 0.5, cap: float = 60.0) -> None:
        self.first = first
        self.cap = cap
        self.failures = 0

    def next(self) -> float:
        delay = min(self.cap, self.first * 2.0**self.failures)
        self.failures += 1
        import random  # only after a failure: the idle daemon does without

        return delay * random.uniform(0.5, 1.0)

    def reset(self) -> None:
        self.failures = 0


def describe(env: Environment, change: Change) -> str:
    versions = " -> ".join(v for v in (change.old, change.new) if v)
    return f"{change.action} {change.name} {versions} in {env.where()}"


_Handler: TypeAlias = Callable[[int, FrameType | None], None]


def _ignore(signum: int, frame: FrameType | None) -> None:
    pass


@contextlib.contextmanager
def _signals(on_stop: _Handler, on_rescan: _Handler) -> Iterator[tuple[int, int]]:
    """Route SIGTERM/SIGINT/SIGHUP to the handlers; yield the wake-up pipe (read, write).

    `signal.set_wakeup_fd` makes the C-level handler write to the pipe, which the watcher
    polls beside the inotify fd: a signal ends a blocking wait at once.
    """
    read_fd, write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    previous = {
        signum: signal.signal(signum, handler)
        for signum, handler in (
            (signal.SIGTERM, on_stop),
            (signal.SIGINT, on_stop),
            (signal.SIGHUP, on_rescan),
            # A handler, even one doing nothing, makes a child's end wake the loop
            # through the pipe: the artifact capture worker is waited for without polling.
            (signal.SIGCHLD, _ignore),
        )
    }
    old_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    try:
        yield read_fd, write_fd
    finally:
        signal.set_wakeup_fd(old_fd)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        os.close(read_fd)
        os.close(write_fd)


def _prefixes(targets: Iterable[Target]) -> set[Path]:
    """The prefixes of the Python environments among `targets`: a venv remade on another
    Python (`python3.12 -m venv --clear` over a 3.11 one) has its site-packages in a new
    directory, which no watch of the old one sees appear; its prefix's entries do."""
    return {Path(t.env.path) for t in targets if t.env.kind == "python" and not t.env.user}


def _tracked(targets: list[Target]) -> tuple[str, ...]:
    """What the status file says the daemon tracks (`status.DaemonState.tracked`)."""
    return tuple(sorted({t.env.path for t in targets}))


class _Taker:
    """A thread that takes SIGTERM, SIGINT and SIGHUP for the daemon's thread, which has
    them blocked from the start of its loop to its end (`Daemon._taking`).

    A call that waits in the kernel for good (`open()` or `fsync()` on a hard NFS mount
    whose server went away: the store, or a library in an NFS home) holds that thread
    where no handler runs, and only SIGKILL ends the wait: a signal pending on it would
    never be handled, and the grace period would end only with the pod's SIGKILL (never
    under s6, which sends none). So the taker arms the shutdown's bound at once for a stop
    (`on_stop`), holds the signal for the daemon's thread, which runs its handler at the
    next turn of its loop or the end of its call (`handle`), and writes the wake-up pipe so
    that a waiting loop comes round to it. One thread for the daemon's life, asleep in
    sigwait: no wake-up when idle."""

    def __init__(
        self, on_stop: Callable[[], None], handlers: Mapping[int, _Handler], wake_fd: int
    ) -> None:
        self._on_stop = on_stop
        self._handlers = handlers
        self._wake_fd = wake_fd
        self._lock = _thread.allocate_lock()
        self._taken: list[int] = []
        self._closed = False
        # Started with the signals blocked, which it inherits, as sigwait needs.
        signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED)
        try:
            self._ident = _thread.start_new_thread(self._take, ())
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED)

    def _take(self) -> None:
        while True:
            signum = signal.sigwait(HANDLED)
            if self._closed:
                return
            if signum in STOPS:
                self._on_stop()
            with self._lock:
                self._taken.append(signum)
            with contextlib.suppress(OSError):  # full: a wake-up is pending anyway
                os.write(self._wake_fd, bytes((signum,)))

    def handle(self) -> None:
        """Run, in the daemon's thread and in their order, the handlers of the signals the
        taker holds."""
        if not self._taken:
            return
        with self._lock:
            taken, self._taken = self._taken, []
        for signum in taken:
            self._handlers[signum](signum, None)

    def close(self) -> None:
        self._closed = True
        signal.pthread_kill(self._ident, signal.SIGHUP)  # to the thread alone: its sigwait


class Daemon:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.started = time.time()
        """A venv made since is no image's (`checkpoint.made_here`); the container's first
        daemon's start once the lock is held (`status.first_start`)."""
        # Asked once: a broken own_env is a usage error at the start, not in the loop.
        self.own = inventory.own_env(config)
        found = inventory.discover(config, self.own)
        self.targets: list[Target] = inventory.targets(config, found)
        self.prefixes = _prefixes(self.targets)
        # A named one missing now (a venv that was not on the persistent volume) is
        # tracked once it is made again at its path, even when it is the only one.
        named = set(config.env) - self.prefixes
        if not self.targets and all(p.exists() for p in named):
            raise checkpoint.nothing(config)
        self.discovery: set[Path] = set(found.watch) | self.prefixes | named
        """Directories where a new environment may show (see `discovery`), and the Python
        prefixes, where one remade on another Python shows (see `_prefixes`)."""
        self.unreadable = {u.path for u in found.unreadable}
        # Its mount is checked at each read of the manifest (`_open`), not here: a store
        # mounted after the start, or refused then and fixed since, is judged as it is.
        self.store = open_store(config, layout=False)
        self.session: checkpoint.Session | None = None
        self.baseline_tried = False
        """`_take_baseline` looked (once: the first failed read is the start's)."""
        self.start: dict[checkpoint.EnvKey, checkpoint.Observation] | None = None
        """What each environment held at the first failed read of the store (`_take_start`);
        None once the session is open, or before that read."""
        self.state = msgspec.structs.replace(
            status.new_state(config, self.started), tracked=_tracked(self.targets)
        )
        self.status_file = status.StatusFile(config)
        self._written = False
        self._unwritten = False
        """The state changed since the status file was last written (see `_flush`)."""
        # The watcher batches events closer than `batch_ms`, and returns at once the first
        # one after a quiet spell (leading edge); the debouncer counts the quiet window from
        # each batch's last event (`Batch.last`), so a root is scanned `quiet_ms` after its
        # last event however the batch ended, with no wake-up of its own for the batch.
        self.batch_ms = min(BATCH_MS, config.quiet_ms)
        self.debouncer = Debouncer(config.quiet_ms / 1000, config.max_delay_ms / 1000)
        self.backoff = Backoff()
        self.watch_backoff = Backoff(cap=10.0)
        self.retry_at: float | None = None
        self.uncommitted: list[Change] = []
        self.stop = False
        self.rescan = False
        self.watchdog = watchdog_interval()
        self.next_ping: float | None = None
        self.next_backstop: float | None = None
        # inventory.targets gives each root to one target only.
        self._by_root = {r: t for t in self.targets for r in t.roots}
        self.replaced: set[Path] = set()
        """Roots a scan found to be another directory than before (see `Watcher.rearm`)."""
        self.changed: dict[Path, set[str] | None] = {}
        """Root -> the entries its events named since its last scan; None: the events
        could not say (see `watcher.Batch.changed`), so the scan goes by identities."""
        self.captures = Background(config, self.store) if config.artifacts else None
        self.uncaptured: dict[str, str] = {}
        """Packages this process can never capture, and why: not tried again."""
        self.absent: dict[str, tuple[Environment, Package, str]] = {}
        """Packages whose capture did not find them installed (a restore held them back or
        failed them), and why: tried again once a scan finds that install."""
        self.recapture = False
        """A scan found such an install: the next step starts a capture round."""
        self.retries = Retries(config.artifact_retries)
        """Captures that failed for a reason that may pass: tried again after a backoff."""
        self.attached = 0
        """Artifacts attached to the record since its last commit (pending like changes)."""
        self.requested = 0
        """Changes made to the record on request (`forget`, `revert`, a restore's failures)
        since its last commit: pending like the changes a scan saw, retried alike, and
        counted at SIGTERM."""
        self.last_written: Body | None = None
        """The body of the last generation this process wrote (GC dates what left it)."""
        self.stop_by: runner.Deadline | None = None
        """`shutdown_timeout` from the first SIGTERM/SIGINT: the flush ends by then."""
        self.bound: runner.Watchdog | None = None
        """Ends the process `STOP_REPORT_SECONDS` after `stop_by`, whatever blocks it."""
        self.doing = "starting"
        """What the bound says the daemon was still doing when it ended it (`_doing`)."""
        self.taker: _Taker | None = None
        """Takes the signals for this thread (`_taking`), from `run` on."""

    # -- signals ---------------------------------------------------------------------------

    def _on_stop(self, signum: int, frame: FrameType | None) -> None:
        self.stop = True
        self._arm()

    def _arm(self) -> None:
        """At the first SIGTERM/SIGINT: the shutdown's deadline, and its bound."""
        if self.stop_by is not None:
            return
        self.stop_by, self.bound = _shutdown_bound(self.config, self.doing)
        # In the taker's thread, at once: the daemon's may be waiting for an interpreter
        # that does not answer, while the changes it saw wait for their checkpoint.
        runner.stop_calls()

    @contextlib.contextmanager
    def _doing(self, doing: str) -> Iterator[None]:
        """Around a call that may block in the file system for good (the store, a library
        in an NFS home): what the shutdown's bound says the daemon was still doing if it
        ends it there (`_Taker`), and the signals taken meanwhile handled once it returns."""
        before = self.doing
        self._say(doing)
        try:
            yield
        finally:
            self._say(before)
            if self.taker is not None:
                self.taker.handle()

    def _say(self, doing: str) -> None:
        self.doing = doing
        if self.bound is not None:
            self.bound.doing = doing

    def _on_rescan(self, signum: int, frame: FrameType | None) -> None:
        self.rescan = True

    @contextlib.contextmanager
    def _taking(self, wake_write: int) -> Iterator[None]:
        """SIGTERM, SIGINT and SIGHUP blocked in this thread, and taken by the taker."""
        handlers: dict[int, _Handler] = {signum: self._on_stop for signum in STOPS}
        self.taker = _Taker(self._arm, {**handlers, signal.SIGHUP: self._on_rescan}, wake_write)
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED)
        try:
            yield
        finally:
            self.taker.close()
            runner.resume_calls()  # the stop was this daemon's (see `_arm`)
            # A signal that came after the taker's end reaches its handler here.
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)

    # -- the run ---------------------------------------------------------------------------

    def run(self) -> int:
        """Watch until SIGTERM/SIGINT; the exit code (0: everything seen is on the store)."""
        # Signals first, given back last: `forget` and `revert` find a daemon by its lock
        # too (`status.find_daemon`) and SIGHUP it for as long as it holds the lock, which
        # SIGHUP's default action would end.
        with (
            _signals(self._on_stop, self._on_rescan) as (wake_fd, wake_write),
            contextlib.closing(self.status_file),
            self._taking(wake_write),
        ):
            # One daemon per store and key (AlreadyRunning, before anything is written).
            # Someone else's runtime directory is passed over for the private fallback,
            # which `snapshot` looks in too: the daemon never exits because of it.
            runtime = self.status_file.claim()
            self.config = msgspec.structs.replace(self.config, runtime_dir=runtime)
            # Restarted in the same container: what was installed since the first start
            # is the user's still, though the store was away all along.
            earlier = status.first_start(self.config)
            if earlier is not None and earlier < self.started:
                self.started = earlier
                self.state = msgspec.structs.replace(self.state, since=earlier)
            # The answers of the probes its targets needed, held since no runtime directory
            # existed (the daemon first in a new container): the next command needs none.
            scan_kept.settle(self.config.runtime_dir)
            roots = [Root(path=r, kind=t.env.kind) for r, t in self._by_root.items()]
            roots += [Root(path=p, kind="discovery") for p in self.discovery - self._by_root.keys()]
            with Watcher(
                roots,
                quiet_ms=self.batch_ms,
                max_ms=max(self.batch_ms, BATCH_MAX_MS),
                # Roots that cannot be watched (the inotify watch limit) are rescanned
                # this often; the backstop interval when one is configured.
                rescan_interval=self.config.rescan_interval or 60.0,
                wake_fd=wake_fd,
                r_lock_stale=self.config.r_lock_stale,
                leading=True,
            ) as watcher:
                log.info(
                    "watching %d librar%s of %d environment(s); store %s",
                    len(self._by_root),
                    "y" if len(self._by_root) == 1 else "ies",
                    len(self.targets),
                    self.store.path,
                )
                if waiting := sorted(p for p in self.config.env if not p.exists()):
                    log.info("waiting for %s to be made", ", ".join(map(str, waiting)))
                # Said before the store is read: a hard mount whose server stopped
                # answering holds that read, and `status` would meanwhile find no daemon.
                self._set(phase="starting")
                self._flush()
                self._open()
                self._commit()
                self._set(phase="watching")
                self._flush()
                sd_notify(f"READY=1\nSTATUS={self._summary()}\nMAINPID={os.getpid()}")
                now = time.monotonic()
                if self.watchdog is not None:
                    self.next_ping = now
                if self.config.rescan_interval > 0:
                    self.next_backstop = now + self.config.rescan_interval
                self._say("watching the libraries")
                while not self.stop:
                    self._step(watcher)
                return self._shutdown(watcher)

    def _step(self, watcher: Watcher) -> None:
        now = time.monotonic()
        self._ping(now)
        try:
            batch = watcher.wait(self._timeout(now))
        except Exception as e:  # whatever the watcher hits, the daemon goes on
            batch = self._watcher_failed(watcher, e)
        else:
            self.watch_backoff.reset()
        if self.taker is not None:
            self.taker.handle()  # what it took while this thread could not (a pending one)
        now = time.monotonic()
        if batch.overflow:
            self._count(watch_overflows=self.state.counters.watch_overflows + 1)
        for root in batch.replaced:
            target = self._by_root.get(root)  # None: a discovery directory, no packages
            if target is not None:
                target.renew()
        for root in batch.dirty:
            self.debouncer.touch(root, batch.last or now)
            names = batch.changed.get(root)
            held = self.changed.setdefault(root, set())
            if names is None:
                self.changed[root] = None
            elif held is not None:
                held.update(names)
        if self.stop:
            return
        if self.session is None and self.rescan:
            # A person asked (snapshot, forget, revert): try the store now, not at the end
            # of a backoff grown while it was not mounted; still unreadable, they are told.
            self._open()
            if self.session is None:
                self.rescan = False
                from . import record

                runtime = self.status_file.directory or self.config.runtime_dir
                record.refuse(self.config, runtime, self.state.unread or "")
                self._set(rescans=self.state.rescans + 1)
        if self.session is None:
            # Nothing is folded in before the manifest is read: the start scan covers it.
            if self.discovery.intersection(self.debouncer.ready(math.inf, watcher.busy)):
                self._rediscover(watcher)
            if self._due(self.retry_at, now):
                self._open()
                self._commit()
        elif self.rescan or self._due(self.next_backstop, now):
            self.rescan = False
            self.debouncer.ready(math.inf, watcher.busy)  # every root is rescanned now
            self._rediscover(watcher)
            # Here: the requests of forget, revert and restore come with a rescan, which
            # `serve` runs after the reverts; and the record's code (~0.2 MB) need not stay
            # loaded in a daemon never asked.
            from . import record

            # From where the status file is now, where `forget` and `revert` found it: it
            # moves to the fallback when the runtime directory is taken after a clean.
            runtime = self.status_file.directory or self.config.runtime_dir
            with self._doing(f"reading the store at {self.store.path} for a request"):
                taken = record.serve(
                    self.config, self.session, runtime, lambda: self._scan(self.targets)
                )
            self.requested += sum(1 for _, reply in taken if reply is None)
            self.retry_at = None  # a person asked (snapshot): try the store now
            self.retries.ask()  # and the captures that failed, once more each
            self._commit()
            if taken:  # forget, revert, restore failures: answered once on the store or not
                failed = self.state.last_error if self.retry_at is not None else None
                record.answer(runtime, taken, self.state.generation, failed)
            self._set(rescans=self.state.rescans + 1)
            if self.next_backstop is not None:
                self.next_backstop = now + self.config.rescan_interval
        else:
            ready = self.debouncer.ready(now, watcher.busy)
            if any(self._may_be_new(root) for root in self.discovery.intersection(ready)):
                self._rediscover(watcher)
            if ready:
                unsettled = self.debouncer.unsettled
                self._scan(self._targets_of(ready), by_events=True, unsettled=unsettled)
                # Read again once quiet: then what is still gone was uninstalled.
                for root in unsettled:
                    self.debouncer.touch(root, now)
            if (self.uncommitted or self.attached or self.requested) and (
                self.retry_at is None or self._due(self.retry_at, now)
            ):
                self._commit()
            elif self.recapture:
                self._capture_more(None)  # no commit to start it: nothing else changed
        if self.replaced:
            watcher.rearm(self.replaced)
            for root in self.replaced:  # what changed before the watch was there: read it
                self.debouncer.touch(root, now)
                self.changed[root] = None
            self.replaced.clear()
        self._set(pending_roots=tuple(sorted(str(p) for p in self.debouncer.pending())))
        if self.captures is not None and self.session is not None:
            results = self.captures.collect()
            if results is not None:
                self._took(results)
                self._commit()  # which starts the next worker, if anything new is pending
                if not self.captures.running:
                    self._set(capturing=0)
            elif self.retries.due(now) and not self.captures.running:
                self.retries.release()
                self._capture_more(None)
        self._flush()

    def _took(self, results: list[Result]) -> None:
        """A capture worker's results into the record (committed by the caller)."""
        assert self.session is not None
        settled = (r for r in results if not r.retry and not r.absent)
        attached, never = art.attach(self.session, settled)
        self.attached += attached
        self.uncaptured.update(never)
        self.absent.update(
            (art.key(r.env, r.package), (r.env, r.package, r.reason or ""))
            for r in results
            if r.absent
        )
        again = {art.key(r.env, r.package): r.reason or "" for r in results if r.retry}
        if self.state.phase != "stopping":
            self.retries.settle(again, time.monotonic())
        done = sum(1 for r in results if r.artifact is not None)
        log.info("captured %d artifact(s), %d not captured", done, len(results) - done)
        if again:
            log.warning(
                "%d capture(s) failed, %s: %s",
                len(again),
                "retrying" if self.retries.at is not None else "given up",
                "; ".join(f"{k}: {v}" for k, v in sorted(again.items())),
            )

    def _capture_more(self, written: Body | None) -> None:
        """After a commit (`written`: the body of the generation it wrote, if any): GC,
        then start a worker for what has no artifact yet. Never raises: an artifact cache
        that fails costs a slower restore, not a checkpoint."""
        if self.captures is None or self.session is None:
            return
        self.recapture = False
        if written is not None:
            try:
                with self._doing(f"removing artifacts from the store at {self.store.path}"):
                    art.tidy(
                        self.session,
                        self.config,
                        self.last_written or written,
                        written,
                        collect=not self.captures.running,
                    )
            except PkgckptError as e:  # the next commit collects again
                log.warning("artifact GC: %s", e)
            self.last_written = written
        never = art.never(self.session, self.targets)
        not_captured = self._not_captured()
        self._set(
            uncaptured={**never, **not_captured},
            capture_failed=tuple(sorted(self.retries.skip)),
        )
        if self.captures.running:
            return
        skip = {**not_captured, **self.retries.skip}
        jobs = art.pending(self.session, self.targets, skip)
        try:
            # After every commit and rescan, not once per process: the pool is pruned, and
            # the key's files deleted, while a daemon runs for weeks. The key's listing is
            # taken for the quota anyway; a pooled artifact costs a stat. Never at idle.
            with self._doing(f"listing the artifacts on the store at {self.store.path}"):
                files = self.store.artifacts()
            jobs += art.lost(self.session, self.config, self.targets, skip, files)
            used = quota.bytes_of(files)
            if used != self.state.counters.artifact_bytes:
                self._count(artifact_bytes=used)
                self._write_metrics()
            if not jobs:
                return
            started = self.captures.start(jobs, used, art.keep(self.session))
            failure = None if started else "the capture worker could not start"
        except PkgckptError as e:
            failure = str(e)
            if not jobs:  # nothing to capture: the next commit counts again
                log.warning("artifact cache: %s", failure)
                return
        if failure is None:
            self._set(capturing=len(jobs))
            return
        log.warning("artifact cache: %s", failure)
        self.retries.settle({art.key(j.env, j.package): failure for j in jobs}, time.monotonic())
        self._set(
            uncaptured={**never, **self._not_captured()},
            capture_failed=tuple(sorted(self.retries.skip)),
        )

    def _not_captured(self) -> dict[str, str]:
        """The packages this process did not capture, and why (`status`'s `uncaptured`)."""
        absent = {k: why for k, (_, _, why) in self.absent.items()}
        return {**self.uncaptured, **absent, **self.retries.reasons()}

    def _installed_again(self, targets: Iterable[Target]) -> bool:
        """Whether the scan of `targets` found installed a package whose capture did not (a
        restore put it back): it leaves `absent`, to be captured at the next round. Asked
        after a scan only: were the scan to say so while the capture does not (a dist-info
        whose name and METADATA disagree), a round after each commit would follow the
        commit each round makes."""
        assert self.session is not None
        scanned = {checkpoint.env_key(t.env) for t in targets}
        tracker = self.session.tracker
        back = [
            k
            for k, (env, p, _) in self.absent.items()
            if checkpoint.env_key(env) in scanned and tracker.installed(env, p)
        ]
        for k in back:
            del self.absent[k]
        return bool(back)

    def _shutdown(self, watcher: Watcher) -> int:
        self._say("stopping")
        self._arm()  # armed by the signal; here too for a stop that came another way
        assert self.stop_by is not None and self.bound is not None
        deadline = time.monotonic() + (self.stop_by.remaining() or 0.0)
        sd_notify("STOPPING=1")
        self._set(phase="stopping")
        if self.captures is not None:
            # Stopped first, so that the captures it finished are in the flushed manifest;
            # SIGTERM and SIGKILL get a quarter of the bound each, so that a worker stalled
            # in the file system (a hung NFS home) leaves the flush its time.
            results = self.captures.stop(timeout=min(5.0, self.config.shutdown_timeout / 4))
            if self.session is not None and results:  # [] too when no worker ran
                self._took(results)
        self._flush()
        # The delay the outage grew while running (up to a minute) would leave a store
        # that comes back during the grace period untried until its end, or past it. Set
        # before the open below, whose failure logs (and sets) the time of its next try.
        self.backoff = Backoff(cap=SHUTDOWN_RETRY_CAP)
        self.retry_at = None
        # An install that ended just before the signal may not have reached the debouncer
        # (or is still in its quiet window): rescan everything now; scans are incremental.
        if self.session is None:
            self._open()
        else:
            self._scan(self.targets)
        while True:
            if self.session is not None:
                self._commit()
            # Said only once the store, read back, holds this daemon's last generation:
            # a directory deleted or rolled back under it is written again.
            # `attached`: captures recorded since the last commit, which the store's
            # manifest, though it reads back as this daemon's last, does not hold.
            if (
                self.session is not None
                and not self.uncommitted
                and not self.requested
                and not self.attached
                and self._confirmed()
            ):
                log.info("stopped: every change is on the store (%s)", _generation(self.state))
                code = 0
                break
            now = time.monotonic()
            left = deadline - now - 0.2
            # A failed commit or read set `retry_at`; a read-back that found another
            # generation did not.
            delay = self.backoff.next() if self.retry_at is None else self.retry_at - now
            if left <= 0:
                held = len(self.uncommitted) + self.attached + self.requested
                lost = held if self.session is not None else "unknown"
                log.error(
                    "exiting with changes not on the store (%s): %s", lost, self.state.last_error
                )
                code = 1
                break
            self._ping(time.monotonic())
            self._flush()
            time.sleep(max(0.0, min(delay, left)))
            if self.session is None:
                self._open()
        self._set(phase="stopped")
        self._flush()
        self.bound.stop()
        return code

    # -- the pieces ------------------------------------------------------------------------

    @staticmethod
    def _due(when: float | None, now: float) -> bool:
        return when is not None and now >= when

    def _timeout(self, now: float) -> float | None:
        """How long the watcher may block: until the nearest deadline, or forever."""
        deadlines = [
            self.debouncer.next_deadline(now),
            *(
                when - now
                for when in (self.retry_at, self.next_ping, self.next_backstop, self._recapture())
                if when is not None
            ),
        ]
        known = [max(0.0, d) for d in deadlines if d is not None]
        return min(known) if known else None

    def _recapture(self) -> float | None:
        """When failed captures are due again; None while a worker runs (its end wakes
        the loop) or when nothing failed."""
        if self.captures is None or self.captures.running:
            return None
        return self.retries.at

    def _ping(self, now: float) -> None:
        if self.watchdog is not None and self.next_ping is not None and now >= self.next_ping:
            sd_notify("WATCHDOG=1")
            self.next_ping = now + self.watchdog

    def _targets_of(self, roots: Iterable[Path]) -> list[Target]:
        chosen = {id(t): t for t in (self._by_root.get(r) for r in roots) if t is not None}
        return list(chosen.values())

    def _rediscover(self, watcher: Watcher) -> None:
        """Discover again (a kernelspec, a conda environment may have appeared) and track
        the environments that are new, from their first scan on."""
        with self._doing("looking for new environments"):
            self._discover_again(watcher)

    def _discover_again(self, watcher: Watcher) -> None:
        for _ in range(5):
            found = inventory.discover(self.config, self.own)
            fresh = [p for p in found.watch if p not in self.discovery]
            # Watched before they are read again: what is written into them from now on
            # (kernel.json after its directory) comes back as an event.
            self.discovery.update(fresh)
            watcher.add([Root(path=p, kind="discovery") for p in fresh])
            if not fresh:
                break
        for path in self.discovery:
            self.changed.pop(path, None)
        unreadable: list[Unreadable] = []
        tracked = {checkpoint.env_key(t.env): t for t in self.targets}
        added: list[Target] = []
        remade: list[tuple[Target, Target]] = []
        for t in inventory.targets(self.config, found, unreadable):
            old = tracked.get(checkpoint.env_key(t.env))
            ours = old.roots if old is not None else ()
            roots = tuple(r for r in t.roots if r not in self._by_root or r in ours)
            if not roots or (old is not None and set(roots) == set(old.roots)):
                continue
            target = Target(
                env=t.env, roots=roots, conda_owned=t.conda_owned, r_lock_stale=t.r_lock_stale
            )
            if old is None:
                added.append(target)
            else:
                # The same environment read from other directories: a venv remade on
                # another Python (lib/python3.X). Its first scan is a new directory's.
                remade.append((old, target))
        inventory.warn(u for u in unreadable if u.path not in self.unreadable)
        self.unreadable = {u.path for u in unreadable}
        if not added and not remade:
            return
        for old, target in remade:
            log.info(
                "tracking %s in %s (remade at its path), no longer in %s",
                target.env.where(),
                ", ".join(map(str, target.roots)),
                ", ".join(map(str, old.roots)),
            )
            # Another directory even on the old one's inode numbers (ext4 hands freed ones
            # out again at once): `Identity` tells them apart by the epoch.
            target.epoch = old.epoch + 1
            self.targets[next(i for i, t in enumerate(self.targets) if t is old)] = target
            for r in old.roots:
                if self._by_root.get(r) is old:
                    del self._by_root[r]
            self._by_root.update((r, target) for r in target.roots)
            fresh = [r for r in target.roots if r not in old.roots]
            watcher.add([Root(path=r, kind=target.env.kind) for r in fresh])
        for target in added:
            log.info("tracking %s (discovered)", target.env.where())
            self.targets.append(target)
            self._by_root.update((r, target) for r in target.roots)
            watcher.add([Root(path=r, kind=target.env.kind) for r in target.roots])
        prefixes = _prefixes(added) - self.discovery
        self.prefixes.update(prefixes)
        self.discovery.update(prefixes)
        watcher.add([Root(path=p, kind="discovery") for p in prefixes])
        self._set(tracked=_tracked(self.targets))
        if self.session is not None:
            if added:
                # The store may record them since this daemon read it (`snapshot --env`
                # beside it): their first scans start from that record, or each install
                # in it would be recorded again, as a change of this daemon's own.
                with (
                    contextlib.suppress(*_STORE_ERRORS),
                    self._doing(f"reading the store at {self.store.path}"),
                ):
                    checkpoint.refresh(self.session)
            self._scan([*added, *(target for _, target in remade)])

    def _may_be_new(self, root: Path) -> bool:
        """Whether what changed in the discovery directory `root` may be an environment
        new or remade there. Not when the events named only a Python prefix's install
        lock (`install_lock`): every uv install would otherwise cost a discovery of every
        environment, their interpreters' probes included."""
        names = self.changed.get(root)
        if root in self.prefixes and names is not None and all(map(install_lock, names)):
            del self.changed[root]
            return False
        return True

    def _open(self) -> None:
        """Read the manifest and the baseline, scan everything: the record's starting point."""
        try:
            with self._doing(f"reading the store at {self.store.path}"):
                seal.check_layout(self.config)
                session, changes = checkpoint.open_session(
                    self.config, self.targets, self.store, self.started, self.start
                )
        except _STORE_ERRORS as e:
            self._store_failed(e, "cannot read the store or the baseline")
            self._set(unread=self.state.last_error)
            self._take_baseline()
            self._take_start()
            return
        self.session = session
        self.start = None
        self._set(unread=None)
        self._count(tracked=metrics.tracked(session.tracker.body()))
        self.changed.clear()  # the scan just made read every entry
        self.retry_at = None
        self.backoff.reset()
        self._set(baseline=session.baseline_origin, generation=session.generation)
        log.info("baseline: %s; %s", session.baseline_origin, _generation(self.state))
        for env, change in changes:
            log.info("%s", describe(env, change))
        self.uncommitted.extend(c for _, c in changes)
        # With a baseline file from the image, one not in it (a venv on the user's volume)
        # never gets one: taking one now would count the user's packages as the image's.
        image = inventory.baseline_path(self.config)  # the stand-in for a missing file
        advice = (
            f"it is not in {image}"
            if image == self.config.baseline
            else "run `pkgckpt baseline` or `pkgckpt restore` first"
        )
        for env in session.tracker.inferred:
            log.warning(
                "no baseline for %s: every recorded package is kept, changes seen from "
                "now on are added (%s)",
                env.where(),
                advice,
            )

    def _take_start(self) -> None:
        """At the first read of the store that fails, what each environment holds: the
        session opened once the store answers starts from it, and an uninstall made
        meanwhile (a package restore put back, or the image's) is one this daemon saw.
        Nothing more is kept until then, however long the store stays away: what is
        installed and uninstalled in between is no change of the record."""
        if self.start is not None:
            return
        self.start = {}
        with self._doing("scanning what is installed at the start"):
            for target in self.targets:
                try:
                    self.start[checkpoint.env_key(target.env)] = checkpoint.observe(target)
                except PkgckptError:
                    continue  # scanned at the open, as the first

    def _take_baseline(self) -> None:
        """With no baseline at all, take this container's at the first read of the store
        that fails: what is installed before the store answers (a late mount, an outage)
        is then the user's. Taken when the store answers, it would be the image's, and
        never recorded; with a manifest there, only the changes after it would be."""
        if self.baseline_tried:
            return
        self.baseline_tried = True
        try:
            if inventory.load_baseline(self.config) is not None:
                return
            with self._doing("taking the baseline"):
                inventory.ensure_baseline(self.config, self.targets)
        except PkgckptError as e:
            log.warning("cannot take a baseline now: %s", e)
            return
        log.info(
            "baseline: %s (taken now: what is installed until the store answers is recorded)",
            inventory.baseline_path(self.config),
        )

    def _scan(
        self,
        targets: Iterable[Target],
        *,
        by_events: bool = False,
        unsettled: Collection[Path] = (),
    ) -> None:
        """Rescan `targets`; `by_events`: look only at the entries the events named, where
        they could (a scan on request or at shutdown checks every entry's identity);
        `unsettled`: roots still changing, whose absences do not count yet."""
        assert self.session is not None
        targets = list(targets)
        changed: dict[Path, set[str]] = {}
        for root in (r for t in targets for r in t.roots):
            names = self.changed.pop(root, None)
            if by_events and names is not None:
                changed[root] = names
        started = time.perf_counter()
        before = [t.identity for t in targets]
        roots = ", ".join(str(r) for t in targets for r in t.roots)
        with self._doing(f"reading the libraries at {roots}"):
            for env, change in checkpoint.scan(self.session, targets, changed, unsettled):
                log.info("%s", describe(env, change))
                self.uncommitted.append(change)
        c = self.state.counters
        self._count(scans=c.scans + 1, scan_seconds=c.scan_seconds + time.perf_counter() - started)
        if self.absent and self._installed_again(targets):
            self.recapture = True
        for target, old in zip(targets, before, strict=True):
            if old is None or target.identity is None:
                continue
            stats = zip(target.roots, old.stats, target.identity.stats, strict=False)
            for root, was, now in stats:
                if was != now:
                    self.replaced.add(root)
                if was != now and now is not None:
                    log.info(
                        "%s is another directory than at the last scan (rebuilt, moved or "
                        "mounted over): a new environment, nothing it lacks is uninstalled",
                        root,
                    )
        if self.session.scan_errors:
            self._set(
                last_error="; ".join(self.session.scan_errors), error_time=checkpoint.now_iso()
            )
            self._write_metrics()

    def _commit(self) -> None:
        if self.session is None:
            return
        try:
            with self._doing(f"writing the manifest to the store at {self.store.path}"):
                committed = checkpoint.commit(self.session)
        except _STORE_ERRORS as e:
            self._store_failed(e, "commit failed")
            return
        count = len(self.uncommitted) + self.requested
        self.uncommitted.clear()
        self.attached = 0
        self.requested = 0
        self.retry_at = None
        self.backoff.reset()
        if committed is not None:
            what = f"{count} change{'' if count == 1 else 's'}" if count else "details updated"
            log.info(
                "checkpoint: generation %d (%s) in %s", committed.generation, what, self.store.path
            )
            self._set(generation=committed.generation, committed=checkpoint.now_iso())
            self._count(tracked=metrics.tracked(committed.body))
            sd_notify(f"STATUS={self._summary()}")
        elif self.session.generation != self.state.generation:
            # Another writer's generation, folded in, already holds the whole record.
            self._set(generation=self.session.generation)
        self._count(committed_at=time.time())
        self._set(last_error=None, error_time=None)
        self._write_metrics()
        if self.state.phase != "stopping":
            self._capture_more(committed.body if committed is not None else None)

    def _watcher_failed(self, watcher: Watcher, error: Exception) -> Batch:
        """Log, replace the inotify instance, and take every root as changed anywhere."""
        log.error("watcher error: %r", error, exc_info=error)
        self._set(last_error=f"watcher error: {error!r}", error_time=checkpoint.now_iso())
        self._flush()
        # An error that comes back at once must not spin: the delay grows up to 10 s.
        time.sleep(self.watch_backoff.next())
        try:
            watcher.reopen(f"after a watcher error ({error!r})")
        except Exception as e:  # the next wait retries
            log.error("cannot re-arm the watches: %r", e)
        return Batch(
            frozenset(self._by_root.keys() | self.discovery), {}, {}, overflow=True, woken=False
        )

    def _confirmed(self) -> bool:
        assert self.session is not None
        try:
            with self._doing(f"reading the manifest back from {self.store.path}"):
                confirmed = checkpoint.confirm(self.session)
            if confirmed:
                return True
        except _STORE_ERRORS as e:
            self._store_failed(e, "cannot read the store back")
            return False
        log.warning(
            "%s does not hold generation %s: writing again",
            self.store.path,
            self.session.generation,
        )
        return False

    def _store_failed(self, error: PkgckptError, what: str) -> None:
        delay = self.backoff.next()
        self.retry_at = time.monotonic() + delay
        log.warning("%s: %s (retrying in %.1f s)", what, error, delay)
        self._set(last_error=f"{what}: {error}", error_time=checkpoint.now_iso())
        failures = dict(self.state.counters.commit_failures)
        reason = metrics.failure_reason(error)
        failures[reason] = failures.get(reason, 0) + 1
        self._count(commit_failures=failures)
        self._write_metrics()

    def _count(self, **changes: object) -> None:
        """Update the metrics' counters (in the status file, for `status --prometheus`)."""
        self._set(counters=msgspec.structs.replace(self.state.counters, **changes))

    def _write_metrics(self) -> None:
        """After a commit or an error, never on a timer: the file is as fresh as the state."""
        path = self.config.metrics_file
        if path is None:
            return
        restore = metrics.read_restore(self.config)
        text = metrics.render(
            self.config.key, self.state.generation, self.state.pending, self.state.counters, restore
        )
        try:
            metrics.write(path, text)
        except PkgckptError as e:
            log.warning("cannot write the metrics file: %s", e)

    def _summary(self) -> str:
        generation = self.state.generation
        return f"watching {len(self._by_root)} libraries; generation {generation or 'none'}"

    def _set(self, **changes: object) -> None:
        """Update the state; `_flush` writes it to the status file."""
        changes["pending"] = len(self.uncommitted) + self.attached + self.requested
        state = msgspec.structs.replace(self.state, **changes)
        if state == self.state and self._written:
            return
        self.state = state
        self._unwritten = True

    def _pending_changes(self) -> tuple[status.EnvChanges, ...] | None:
        """`status.DaemonState.pending_changes`: worked out at each write of the status
        file, not at each `_set`, of which a step makes several."""
        session = self.session
        if session is None or session.on_store is None:
            return None
        stored = session.stored if session.stored is not None else Body()
        return tuple(
            status.EnvChanges(env=env, changes=tuple(changes), forgotten=tuple(forgets))
            for env, changes, forgets in session.tracker.unwritten(stored)
        )

    def _flush(self) -> None:
        """Write the status file when something in it changed (never on a timer): once per
        step of the loop, however many of the step's pieces changed it (a commit changes
        five), and before the daemon tells systemd anything or sleeps."""
        if not self._unwritten:
            return
        self.state = msgspec.structs.replace(
            self.state, updated=checkpoint.now_iso(), pending_changes=self._pending_changes()
        )
        self._unwritten = False
        self._written = True
        try:
            self.status_file.write(self.state)
        except PkgckptError as e:
            log.warning("cannot write the status file: %s", e)


def _shutdown_bound(config: Config, doing: str) -> tuple[runner.Deadline, runner.Watchdog]:
    """From a stop on: its deadline (`shutdown_timeout`), and the watch that ends the
    process 2 s after it, whatever its thread is blocked in."""
    deadline = runner.Deadline(max(config.shutdown_timeout, 0.001))
    bound = f"shutdown_timeout ({config.shutdown_timeout:g} s)"
    # The watch's thread with the signals blocked, which it inherits: one that takes them
    # would leave the daemon's thread blocked in its call (see `_Taker`).
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED)
    try:
        watch = runner.Watchdog(deadline, STOP_REPORT_SECONDS, "the daemon", doing, 1, bound=bound)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
    return deadline, watch


def run(config: Config) -> int:
    # Signals that come while the daemon starts are its handlers' once in place (`signals`);
    # a stop arms the shutdown's bound at once, which the start (an interpreter's probe
    # that hangs, a library on a hung NFS mount) then counts against.
    armed: list[tuple[runner.Deadline, runner.Watchdog]] = []
    signals.hold()
    signals.on_stop(lambda: armed.append(_shutdown_bound(config, "starting")))
    daemon = Daemon(config)
    signals.pass_on()
    if armed:
        daemon.stop_by, daemon.bound = armed[0]
    return daemon.run()


def _generation(state: status.DaemonState) -> str:
    return "no manifest yet" if state.generation is None else f"generation {state.generation}"
