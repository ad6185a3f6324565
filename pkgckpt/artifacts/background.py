"""Capture in the background: the daemon hands the packages to capture to one child
process, which captures them one at a time at idle priority and reports each result.

    Background(config, store, idle=True)
        .start(jobs, used) -> bool    start a worker for `jobs` (False: one runs already)
        .running -> bool
        .collect() -> list[Result] | None
                                      the finished worker's results (None: still running)
        .wait(timeout) -> list[Result]
                                      wait for the worker's end; at `timeout`, stop it
        .stop(timeout) -> list[Result]
                                      SIGTERM the worker, wait for it, its results so far

A child rather than a thread: a thread at idle priority holding the GIL would stall the
daemon's own loop behind every busy process of the machine (priority inversion), and
compressing a wheel is CPU work the daemon's commits must never wait for. The worker sets
`nice 19` and the idle I/O class (`ioprio_set`) on itself, unless `idle` is False:
`snapshot` without a daemon waits for it, within a bound, so that a capture it cannot
finish in time stops cleanly. It gets its orders in a private
file and appends one JSON line per finished capture to another; an artifact is reported
only once `Store.put_artifact` returned (written, fsynced, renamed), so a worker killed
at any point leaves at worst an unreferenced file, which GC removes, or a temp file,
which the next listing of the artifacts directory removes; its local temporary files
live in the daemon's private directory for it, removed when it ends however it ends.
At SIGTERM it stops at once: the capture in progress unwinds (its temp files removed)
and the worker exits 143. It gets that SIGTERM too when the daemon dies (killed -9):
nobody would read its results, so it then also removes its private directory. A worker
that had ended before its daemon was killed leaves that directory to no one: a daemon
holds a lock (`flock`) on each private directory it made until it has removed it, and
its next start of a worker first removes this user's private directories that no one
holds (`_sweep`).

A worker that exits on its own without reporting a job reports it as a failure that may
pass (`Result.retry`): the daemon retries it after a backoff (`retry.py`), never at once.

The daemon learns that the worker ended from SIGCHLD, which wakes its loop like every
other signal: nothing polls.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

import msgspec

from ..config import Config
from ..errors import NotInstalled, PkgckptError, Uncapturable
from ..logs import getLogger
from ..manifest import Environment, Package
from ..runner import release, spawn
from ..store import Store
from . import Job, Result, capture

if TYPE_CHECKING:
    import subprocess

log = getLogger(__name__)


class _Job(msgspec.Struct, frozen=True, kw_only=True):
    env: Environment
    roots: tuple[str, ...]
    package: Package


class _Orders(msgspec.Struct, frozen=True, kw_only=True):
    store: str
    key: str
    owner: int
    pool: str | None
    quota: int
    used: int
    keep: tuple[str, ...]
    jobs: tuple[_Job, ...]
    idle: bool = True


_result_decoder = msgspec.json.Decoder(Result)
_orders_decoder = msgspec.json.Decoder(_Orders)
_encoder = msgspec.json.Encoder()

ORDERS = "orders.json"
RESULTS = "results.jsonl"


class Background:
    """The daemon's handle on its one capture worker (see the module docstring)."""

    def __init__(self, config: Config, store: Store, *, idle: bool = True) -> None:
        self.config = config
        self.store = store
        self.idle = idle
        self._proc: subprocess.Popen[bytes] | None = None
        self._dir: str | None = None
        self._held: int | None = None
        """A descriptor of `_dir`, locked while this daemon has it (`_sweep`)."""
        self._swept = False
        self._jobs: tuple[_Job, ...] = ()

    @property
    def running(self) -> bool:
        return self._proc is not None

    def start(self, jobs: Sequence[Job], used: int, keep: set[str]) -> bool:
        """Start a worker for `jobs` (`used`, `keep`: as `artifacts.capture` takes them);
        False when one runs already or none can start."""
        if self._proc is not None or not jobs:
            return False
        orders = _Orders(
            store=str(self.store.root),
            key=self.store.key,
            owner=self.store.owner,
            pool=None if self.config.artifact_pool is None else str(self.config.artifact_pool),
            quota=self.config.artifact_quota,
            used=used,
            keep=tuple(sorted(keep)),
            jobs=tuple(
                _Job(env=j.env, roots=tuple(map(str, j.roots)), package=j.package) for j in jobs
            ),
            idle=self.idle,
        )
        # Here, not at the top: tempfile and shutil (with bz2, lzma, random) are ~0.8 MB
        # that an idle daemon, which has captured nothing yet, does without.
        import shutil
        import tempfile

        if not self._swept:
            self._swept = True
            _sweep(tempfile.gettempdir())
        private = tempfile.mkdtemp(prefix=_PREFIX)
        try:
            self._held = _hold(private)
            Path(private, ORDERS).write_bytes(_encoder.encode(orders))
            with (
                open(Path(private, ORDERS), "rb") as stdin,
                open(Path(private, RESULTS), "xb") as stdout,
            ):
                self._proc = spawn(
                    [sys.executable, "-I", "-m", __name__],
                    cwd=private,
                    stdin=stdin.fileno(),
                    stdout=stdout.fileno(),
                    # Its temporary files go here too: removed with this directory even
                    # when a starved worker had to be killed before it could clean up.
                    env={"TMPDIR": private},
                )
        except OSError as e:
            shutil.rmtree(private, ignore_errors=True)
            self._let_go()
            log.warning("cannot start the artifact capture: %s", e)
            return False
        self._dir = private
        self._jobs = orders.jobs
        log.info("capturing %d package(s) in the background (pid %d)", len(jobs), self._proc.pid)
        return True

    def collect(self) -> list[Result] | None:
        """The results of a worker that has ended; None while it runs (or none ran)."""
        if self._proc is None or self._proc.poll() is None:
            return None
        return self._finish(stopped=False)

    def wait(self, timeout: float) -> list[Result]:
        """The results of the worker once it ended, `timeout` seconds at most in all: it is
        stopped (`stop`) in time to be gone by then, and the jobs it did not report have
        no result."""
        if self._proc is None:
            return []
        # Stopping takes up to twice the grace (SIGTERM, then SIGKILL): taken out of the
        # bound, not added to it, since the caller's deadline is someone's grace period.
        grace = min(1.0, max(timeout, 0.4) / 4)
        try:
            self._proc.wait(max(0.0, timeout - 2 * grace))
        except Exception:  # subprocess.TimeoutExpired, without importing subprocess here
            return self.stop(timeout=grace)
        return self._finish(stopped=False)

    def stop(self, timeout: float = 5.0) -> list[Result]:
        """Stop the worker (SIGTERM; SIGKILL after `timeout`) and return what it finished.

        A worker SIGKILL does not end within `timeout` either (a read the kernel cannot
        interrupt) is left to die on its own: whoever stops it has a deadline too."""
        if self._proc is None:
            return []
        with contextlib.suppress(ProcessLookupError):
            self._proc.send_signal(signal.SIGTERM)
        try:
            self._proc.wait(timeout)
        except Exception:  # subprocess.TimeoutExpired, without importing subprocess here
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._proc.pid, signal.SIGKILL)
            try:
                self._proc.wait(timeout)
            except Exception:
                log.warning(
                    "the artifact capture worker (pid %d) is still there after SIGKILL",
                    self._proc.pid,
                )
        return self._finish(stopped=True)

    def _finish(self, *, stopped: bool) -> list[Result]:
        """The results the worker reported; when it died on its own, a failure that may
        pass for each job it did not report (the daemon retries them)."""
        assert self._proc is not None and self._dir is not None
        code = self._proc.returncode
        results = []
        try:
            for line in Path(self._dir, RESULTS).read_bytes().splitlines():
                # A line cut by a kill is the only one that may not decode: it was not done.
                with contextlib.suppress(msgspec.DecodeError, msgspec.ValidationError):
                    results.append(_result_decoder.decode(line))
        except OSError as e:
            log.warning("cannot read the capture results: %s", e)
        finally:
            import shutil  # loaded by `start` already

            shutil.rmtree(self._dir, ignore_errors=True)
            self._let_go()
            release(self._proc)
            self._proc = None
            self._dir = None
        jobs, self._jobs = self._jobs, ()
        if code not in (None, 0, 143, -signal.SIGTERM, -signal.SIGKILL):
            log.warning("the artifact capture worker exited with %s", code)
        if not stopped and code != 0:
            # By name: a source may hold a dict (URL hashes), unhashable.
            done = {(r.env, r.package.name) for r in results}
            results += [
                Result(
                    env=j.env,
                    package=j.package,
                    reason=f"the capture worker exited with {code}",
                    retry=True,
                )
                for j in jobs
                if (j.env, j.package.name) not in done
            ]
        return results

    def _let_go(self) -> None:
        """The lock on the private directory given up: it is removed, or was never used."""
        if self._held is not None:
            os.close(self._held)
            self._held = None


_PREFIX = "pkgckpt-capture-"


def _hold(private: str) -> int:
    """A descriptor of the new directory `private`, locked: no other daemon's `_sweep`
    takes it. Raises OSError when that sweep took it first (between its making and now)."""
    import fcntl

    fd = os.open(private, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise
        except OSError:
            pass  # a file system without locks: no sweep can take the directory either
        if os.fstat(fd).st_nlink == 0:
            raise FileNotFoundError(f"{private} was removed as it was made")
    except OSError:
        os.close(fd)
        raise
    return fd


def _sweep(tmp: str) -> None:
    """Remove from `tmp` the private directories of capture workers (`_PREFIX`) that are
    this user's and that no daemon holds: those of daemons killed after their worker ended.
    Another user's, a symbolic link, or one a live daemon holds is left alone."""
    import fcntl
    import shutil

    try:
        with os.scandir(tmp) as listing:
            entries = [e for e in listing if e.name.startswith(_PREFIX)]
    except OSError:
        return
    for entry in entries:
        try:
            fd = os.open(entry.path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            if os.fstat(fd).st_uid != os.geteuid():
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue
            log.info("removing %s, left by a capture whose daemon is gone", entry.path)
            shutil.rmtree(entry.path, ignore_errors=True)
        finally:
            os.close(fd)


# -- the worker ----------------------------------------------------------------------------


_IOPRIO_SET = {"x86_64": 251, "aarch64": 30, "ppc64le": 273, "s390x": 282}
_IOPRIO_WHO_PROCESS = 1
_IOPRIO_CLASS_IDLE = 3


def idle_priority() -> None:
    """CPU nice 19 and the idle I/O class for this process: capture only takes what
    nobody else wants."""
    # Imported here: the worker needs them, the daemon that imports this module does not.
    import ctypes
    import platform

    os.nice(19 - os.nice(0))
    number = _IOPRIO_SET.get(platform.machine())
    if number is None:
        log.debug("no ioprio_set number known for %s", platform.machine())
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.syscall(number, _IOPRIO_WHO_PROCESS, 0, _IOPRIO_CLASS_IDLE << 13) != 0:
        log.debug("ioprio_set: %s", os.strerror(ctypes.get_errno()))


_stopping = False


def _terminate(signum: int, frame: FrameType | None) -> None:
    global _stopping
    _stopping = True
    raise SystemExit(128 + signum)


def work(orders: _Orders, out: int) -> None:
    """Capture every job in `orders`, one at a time; one result line each on `out`."""
    store = Store(Path(orders.store), orders.key, owner=orders.owner)
    config = Config(
        store=Path(orders.store),
        key=orders.key,
        artifact_quota=orders.quota,
        artifact_pool=None if orders.pool is None else Path(orders.pool),
    )
    used = orders.used
    keep = set(orders.keep)
    for job in orders.jobs:
        try:
            artifact = capture(
                store,
                config,
                Job(job.env, tuple(map(Path, job.roots)), job.package),
                used=used,
                keep=keep,
            )
        except Uncapturable as e:
            absent = isinstance(e, NotInstalled)
            result = Result(env=job.env, package=job.package, reason=str(e), absent=absent)
        except PkgckptError as e:
            result = Result(env=job.env, package=job.package, reason=str(e), retry=True)
        except Exception as e:  # one package's surprise must not stop the others
            if not _stopping:
                log.exception("capturing %s %s", job.package.name, job.package.version)
            result = Result(
                env=job.env, package=job.package, reason=f"capture failed: {e!r}", retry=True
            )
        else:
            if not artifact.pooled:
                used += artifact.size
                keep.add(artifact.file)  # not referenced until attached: GC must spare it
            result = Result(env=job.env, package=job.package, artifact=artifact)
        if _stopping:
            # SIGTERM's SystemExit surfaced as another error of the code it interrupted
            # (zipfile closing around a half-written member) and was caught above: a stop,
            # not this package's failure, so nothing is reported for it.
            raise SystemExit(128 + signal.SIGTERM)
        line = _encoder.encode(result) + b"\n"
        while line:
            line = line[os.write(out, line) :]


_PR_SET_PDEATHSIG = 1


def die_with(parent: int) -> None:
    """SIGTERM this process when `parent` dies (a daemon killed -9 must not leave a
    worker capturing for nobody); exits at once when it is gone already."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        log.debug("prctl(PR_SET_PDEATHSIG): %s", os.strerror(ctypes.get_errno()))
    if os.getppid() != parent:
        raise SystemExit(128 + signal.SIGTERM)


def main() -> int:
    parent = os.getppid()
    signal.signal(signal.SIGTERM, _terminate)
    import logging  # the worker's own lines; pkgckpt's loggers hand theirs to it

    logging.basicConfig(level=logging.WARNING, format="pkgckpt capture: %(message)s")
    try:
        die_with(parent)
        orders = _orders_decoder.decode(sys.stdin.buffer.read())
        if orders.idle:
            idle_priority()
        work(orders, sys.stdout.fileno())
    except BaseException:
        # SIGTERM's SystemExit may surface as another error of the code it interrupted
        # (zipfile closing around a half-written member): it is still the stop asked for.
        if _stopping or os.getppid() != parent:
            return 128 + signal.SIGTERM
        raise
    finally:
        if os.getppid() != parent:
            # The daemon died without collecting: its private directory (our cwd, named
            # by `Background.start`) has no one else to remove it.
            here = Path.cwd()
            if here.name.startswith(_PREFIX):
                import shutil

                shutil.rmtree(here, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
