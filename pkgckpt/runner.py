"""Every process pkgckpt starts goes through `call()`: children start clean (invariant 9).

    call(argv, *, deadline, env=None, cwd=None, split_stderr=False) -> Outcome

- `argv`: a list, never a shell. stdin is closed; stdout and stderr are captured
  together (`Outcome.output`), or apart with `split_stderr=True` (`Outcome.errors`).
- `deadline`: a `Deadline` shared by the whole command; on expiry the child's whole
  process group (pip's build backends, uv's workers, R's compilers) is killed. A
  deadline that has already run out starts nothing.
- `env`: overrides of the environment pkgckpt itself runs with: `name: value` sets,
  `name: None` removes. Everything else is passed on as the image set it (`PIP_*`,
  `UV_*`, `R_*`, `PYTHONUSERBASE` are the image's configuration).
- `cwd`: None (the default) runs the child in a fresh private directory (`mkdtemp`,
  mode 0700) removed afterwards, so nothing where the user happened to stand (`json.py`,
  `pip/__main__.py`, `uv.toml`, `.Rprofile`) is read. A caller that passes `cwd` vouches
  that the directory is its own private one.

`Watchdog(deadline, grace, ...)` ends the process, its children's groups first, when its
main thread is still blocked `grace` seconds after the deadline (a store that stopped
answering), for a command bounded as a whole (`restore`).

`call()` never raises for the child's sake: a program that cannot start or is killed is an
`Outcome` (`returncode` None). What each tool needs beyond a clean start is said by its
caller: `python -I` for the interpreter probe, `uv --no-config` with explicit settings,
`Rscript --no-init-file`. Which program runs is `which()`'s answer: never one found through
a relative `PATH` entry.

The stdlib and msgspec only, no other pkgckpt module: the daemon (the interpreter probe)
and restore share it, and the idle daemon must not load restore.
"""

from __future__ import annotations

import _thread
import contextlib
import os
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import msgspec

if TYPE_CHECKING:
    import subprocess

__all__ = [
    "TAIL_LINES",
    "Deadline",
    "Outcome",
    "Watchdog",
    "call",
    "owned",
    "redact_text",
    "spawn",
]

TAIL_LINES = 12
"""Lines of a child's output kept in a failure report: enough for pip's and R's errors."""

# `scheme://userinfo@`: a password or a token, except what PEP 610 keeps in a record too
# (ssh's `git` user, a `${VAR}` placeholder that names a secret without holding it).
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)(?!git@)(?!\$\{\w+\}@)[^/@\s]+@")


def redact_text(text: str) -> str:
    """`text` with the `user:secret@` part of every URL in it taken out."""
    return _USERINFO.sub(r"\1", text)


class Deadline:
    """The end of the whole run (`--timeout`); `seconds=None` or 0 means no limit."""

    def __init__(self, seconds: float | None) -> None:
        self.started = time.monotonic()
        """Where the limit counts from: what a run that used it up took (`restore`'s report)."""
        self._end = self.started + seconds if seconds else None

    def remaining(self) -> float | None:
        """Seconds left (never negative), or None when unbounded."""
        return None if self._end is None else max(0.0, self._end - time.monotonic())

    def expired(self) -> bool:
        left = self.remaining()
        return left is not None and left <= 0.0


class Outcome(msgspec.Struct, frozen=True):
    """What one child process did."""

    argv: tuple[str, ...]
    returncode: int | None
    """None: the process was killed because the deadline passed (or could not start)."""
    output: str
    timed_out: bool = False
    errors: str = ""
    """stderr, when the call asked for it apart (`split_stderr`); else it is in `output`."""

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def tail(self, lines: int = TAIL_LINES) -> str:
        """The last non-blank lines of the output (where installers explain errors),
        with credentials taken out of any URL: this text goes into reports. An `error:`
        line above them leads, with `...`: pip's explanation of PEP 668's refusal is
        longer than the tail, and its first line is the one that names it."""
        kept = [line.rstrip() for line in self.output.splitlines() if line.strip()]
        head = kept[:-lines]
        first = next((line for line in head if line.lower().startswith("error:")), None)
        shown = kept[-lines:] if first is None else [first, "...", *kept[2 - lines :]]
        return redact_text("\n".join(shown))


def which(name: str) -> str | None:
    """The program `name` as `shutil.which` finds it, but only in PATH's absolute
    directories: an empty or relative entry ("", ".") names the working directory, where
    anyone may have left an `R` or a `uv` for pkgckpt to run as the user."""
    # Not shutil's: it imports bz2 and lzma (0.6 MB of the idle daemon) for its archives;
    # and strings, as everywhere in this module, which the daemon loads without pathlib.
    path = os.environ.get("PATH")
    for directory in (os.defpath if path is None else path).split(os.pathsep):
        if os.path.isabs(directory):  # noqa: PTH117
            program = os.path.join(directory, name)  # noqa: PTH118
            if os.access(program, os.X_OK) and not os.path.isdir(program):  # noqa: PTH112
                return program
    return None


_live: set[subprocess.Popen[bytes]] = set()
"""The children `call()` waits for, in any thread, and those `spawn` started: what
`stop_on_signals` and a `Watchdog` that fires take down."""
_spawned: set[subprocess.Popen[bytes]] = set()
"""Those of `_live` that `spawn` started."""
_stopping = False


def stop_children() -> None:
    """Kill the group of every child running now, and of each one started from now on
    as it starts: the process is ending and waits for none of them."""
    global _stopping
    _stopping = True
    for proc in list(_live):
        _kill_group(proc)


_calls_stopped = False


def stop_calls() -> None:
    """Kill the group of every child `call()` waits for now, and of each it starts until
    `resume_calls`; `spawn`'s children are their starter's to stop (the capture worker:
    SIGTERM, then the results it has). For the daemon at SIGTERM, whose last checkpoint
    must not wait for a child it was waiting for (an interpreter's probe that hangs on a
    stalled mount)."""
    global _calls_stopped
    _calls_stopped = True
    for proc in list(_live - _spawned):
        _kill_group(proc)


def resume_calls() -> None:
    """Undo `stop_calls`: the daemon that stopped has ended, and the process goes on."""
    global _calls_stopped
    _calls_stopped = False


def stop_on_signals() -> None:
    """From now on, SIGTERM and SIGHUP kill the process group of every child `call()` runs
    and then end this process as an exception (`SystemExit(128 + signal)`), so that what
    it holds is cleaned up on the way out. Each child runs in a session of its own, which
    the signal from `timeout(1)` or a closed terminal never reaches: left alone, an
    installer would go on writing into the environment after the restore it served was
    stopped. Main thread only (`signal.signal`); the caller arms it before its first
    long child, as `signal` is loaded then anyway (`subprocess` imports it)."""
    import signal

    def stop(signum: int, _frame: object) -> None:
        stop_children()
        raise SystemExit(128 + signum)

    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, stop)


class Watchdog:
    """Ends this process `grace` seconds after `deadline` ran out, whatever its main thread
    is blocked in. A store on a hard NFS mount whose server stopped answering holds
    `open()` or `fsync()` for as long as the server is gone, where no deadline is looked
    at: only another thread can still act. It kills every child's group (as
    `stop_on_signals` does), writes `pkgckpt: error: <what> stopped: ...` naming `doing`,
    and exits with `code`. `doing` and `code` follow the caller's steps; `stop()` when
    done. `grace` leaves the caller time to stop its children at the deadline (`call()`
    waits up to 5 s for a killed child's pipes) and to report. No deadline: no thread.
    Threads from `_thread`, built in: a no-op restore does not load `threading`."""

    def __init__(
        self,
        deadline: Deadline,
        grace: float,
        what: str,
        doing: str,
        code: int,
        *,
        bound: str = "the timeout",
    ) -> None:
        self.doing = doing
        self.code = code
        self._what = what
        self._bound = bound
        self._done = _thread.allocate_lock()
        self._done.acquire()  # held until stop()
        # Who acts, stop() or the watch: held for good by the watch once it fires.
        self._acting = _thread.allocate_lock()
        left = deadline.remaining()
        if left is not None:
            _thread.start_new_thread(self._watch, (left + grace, grace))

    def _watch(self, seconds: float, grace: float) -> None:
        if self._done.acquire(timeout=seconds) or not self._acting.acquire(blocking=False):
            return
        if self._done.acquire(blocking=False):
            return  # stop() came first, between the two
        stop_children()
        message = (
            f"pkgckpt: error: {self._what} stopped: {self._bound} ran out and {grace:g} s "
            f"later it was still {self.doing}\n"
        )
        # Not through `logs` or sys.stderr, whose locks the blocked main thread may hold;
        # in a thread of its own, and waited for a second at most: stderr can block too (a
        # log file on the same NFS mount, a pipe no one reads).
        said = _thread.allocate_lock()
        said.acquire()
        _thread.start_new_thread(_say, (message, said))
        said.acquire(timeout=SAY_SECONDS)
        os._exit(self.code)

    def stop(self) -> None:
        """Called once, when the work is done: the watch ends without acting. When it has
        fired already, this never returns: the process is ending, with the watch's code,
        and nothing may be reported as done meanwhile."""
        self._acting.acquire()
        self._done.release()
        self._acting.release()


SAY_SECONDS = 1.0
"""How long a watchdog that fired waits for its message to be written before it exits."""


def _say(message: str, said: _thread.LockType) -> None:
    with contextlib.suppress(OSError):
        os.write(2, message.encode("utf-8", "replace"))
    said.release()


@contextlib.contextmanager
def owned(proc: subprocess.Popen[bytes]) -> Iterator[None]:
    """Within the block, `proc` (started in a session of its own, as `call()` starts its
    children) is taken down with pkgckpt: its group is killed by `stop_on_signals`, by a
    `Watchdog` that fires, and when the block raises (a timeout, Ctrl-C)."""
    _live.add(proc)
    if _stopping or _calls_stopped:
        _kill_group(proc)  # started by another thread while the signal was handled
    try:
        yield
    except BaseException:
        _kill_group(proc)
        proc.wait()
        raise
    finally:
        _live.discard(proc)


def popen(argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[bytes]:
    """`subprocess.Popen(argv, **kwargs)`, the child started with SIGTERM, SIGINT and
    SIGHUP unblocked. A child inherits the signal mask of the thread that starts it, across
    exec, and the daemon's thread has those blocked for its whole loop (a thread of their
    own takes them): a child started so (an interpreter's probe, R, the capture worker)
    would go on after the SIGTERM that stops it."""
    import signal
    import subprocess

    from .signals import HANDLED

    previous = signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED)
    try:
        return subprocess.Popen(tuple(argv), **kwargs)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    import signal

    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def _environment(overrides: Mapping[str, str | None] | None) -> dict[str, str]:
    env = dict(os.environ)
    for name, value in (overrides or {}).items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


def call(
    argv: Sequence[str],
    *,
    deadline: Deadline,
    env: Mapping[str, str | None] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    split_stderr: bool = False,
) -> Outcome:
    """Run `argv` cleanly to completion or until the deadline (see the module docstring)."""
    args = tuple(argv)
    if deadline.expired():
        return Outcome(args, None, "not started: the timeout had run out", timed_out=True)
    if cwd is not None:
        return _run(args, deadline, _environment(env), os.fspath(cwd), split_stderr)
    import shutil
    import tempfile

    try:
        private = tempfile.mkdtemp(prefix="pkgckpt-child-")
    except OSError as e:
        where = tempfile.gettempdir()
        return Outcome(args, None, f"not started: no private directory in {where}: {e.strerror}")
    try:
        return _run(args, deadline, _environment(env), private, split_stderr)
    finally:
        shutil.rmtree(private, ignore_errors=True)


def spawn(
    argv: Sequence[str],
    *,
    cwd: str,
    stdin: int,
    stdout: int,
    env: Mapping[str, str | None] | None = None,
) -> subprocess.Popen[bytes]:
    """Start `argv` to run beside pkgckpt (the artifact capture worker) with `call()`'s
    clean start: no shell, in the caller's own private directory `cwd`, its own session,
    pkgckpt's environment changed by `env` as in `call()`; stderr is pkgckpt's (its log
    lines join ours). The caller waits for it, then calls `release`; until then its group
    is killed with `call()`'s children (`stop_on_signals`, a `Watchdog` that fires).
    Raises OSError when it cannot start."""
    proc = popen(
        argv,
        stdin=stdin,
        stdout=stdout,
        env=_environment(env),
        cwd=cwd,
        start_new_session=True,
    )
    _live.add(proc)
    _spawned.add(proc)
    return proc


def release(proc: subprocess.Popen[bytes]) -> None:
    """`spawn`'s child, waited for: no longer pkgckpt's to kill."""
    _live.discard(proc)
    _spawned.discard(proc)


def _run(
    args: tuple[str, ...], deadline: Deadline, env: dict[str, str], cwd: str, split_stderr: bool
) -> Outcome:
    # Imported here: a command with nothing to do starts no process and need not load it.
    import subprocess

    try:
        proc = popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE if split_stderr else subprocess.STDOUT,
            env=env,
            cwd=cwd,
            start_new_session=True,
        )
    except OSError as e:
        return Outcome(args, None, f"cannot run {args[0]}: {e.strerror}")
    # Ctrl-C or a signal turned into an exception: the child runs in its own session and
    # did not get the signal, so `owned` takes its group down with us.
    with owned(proc):
        try:
            out, err = proc.communicate(timeout=deadline.remaining())
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            try:
                # A grandchild that left the group could hold the pipe open: do not wait
                # forever.
                out, err = proc.communicate(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, err = b"", b""
            text = out.decode("utf-8", "replace")
            return Outcome(
                args,
                None,
                text + "\nkilled: the timeout ran out",
                timed_out=True,
                errors=(err or b"").decode("utf-8", "replace"),
            )
    return Outcome(
        args,
        proc.returncode,
        out.decode("utf-8", "replace"),
        errors=(err or b"").decode("utf-8", "replace"),
    )
