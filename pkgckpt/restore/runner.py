"""Running one installer process, and the interface every installer back end offers.

`call()` is the only place restore starts a process: an argv list (never a shell), stdin
closed, stdout and stderr captured together (the last lines explain a failure), in a new
session so that on timeout the whole process group — pip's build backends, uv's workers,
R's compilers — is killed, not just the process we started. It runs as the invoking user
and with the invoking user's environment: the installer's own configuration in the
container (pip.conf, uv.toml, PIP_* / UV_* variables) applies; nothing from the manifest.

`Installer` is the protocol that `restore/python.py` and `restore/r.py` implement and
`restore/__init__.py` drives.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from ..manifest import Package

if TYPE_CHECKING:
    import subprocess

TAIL_LINES = 12
"""Lines of installer output kept in a failure report: enough for pip's and R's errors."""


class Deadline:
    """The end of the whole restore run (`--timeout`); `seconds=None` or 0 means no limit."""

    def __init__(self, seconds: float | None) -> None:
        self._end = time.monotonic() + seconds if seconds else None

    def remaining(self) -> float | None:
        """Seconds left (never negative), or None when unbounded."""
        return None if self._end is None else max(0.0, self._end - time.monotonic())

    def expired(self) -> bool:
        left = self.remaining()
        return left is not None and left <= 0.0


@dataclass(frozen=True)
class Outcome:
    """What one installer process did."""

    argv: tuple[str, ...]
    returncode: int | None
    """None: the process was killed because the deadline passed (or could not start)."""
    output: str
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def tail(self, lines: int = TAIL_LINES) -> str:
        """The last non-blank lines of the output, which is where installers explain errors."""
        kept = [line.rstrip() for line in self.output.splitlines() if line.strip()]
        return "\n".join(kept[-lines:])


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    import signal

    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def call(
    argv: Sequence[str], *, deadline: Deadline, env: Mapping[str, str] | None = None
) -> Outcome:
    """Run `argv` to completion or until the deadline; never raises for the process' sake."""
    # Imported here: a restore with nothing to do starts no process and need not load it.
    import subprocess

    args = tuple(argv)
    if deadline.expired():
        return Outcome(args, None, "not started: the restore timeout had run out", timed_out=True)
    try:
        proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=None if env is None else dict(env),
            start_new_session=True,
        )
    except OSError as e:
        return Outcome(args, None, f"cannot run {args[0]}: {e.strerror}")
    try:
        out, _ = proc.communicate(timeout=deadline.remaining())
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        try:
            # A grandchild that left the group could hold the pipe open: do not wait forever.
            out, _ = proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            out = b""
        text = out.decode("utf-8", "replace")
        return Outcome(args, None, text + "\nkilled: the restore timeout ran out", timed_out=True)
    except BaseException:
        # Ctrl-C or a signal turned into an exception: the child runs in its own session and
        # did not get the signal, so take its group down with us.
        _kill_group(proc)
        proc.wait()
        raise
    return Outcome(args, proc.returncode, out.decode("utf-8", "replace"))


class Installer(Protocol):
    """One environment's installer, as `restore/__init__.py` drives it.

    Packages reach an installer already validated (`restore/validate.py`): names and
    versions are safe to pass as arguments after `--`; sources have been shape-checked,
    and `blocked()` is where an installer refuses a source it cannot or may not fetch.
    """

    @property
    def name(self) -> str:
        """Shown in the plan and the report: "uv", "pip", "Rscript", ..."""
        ...

    def blocked(self, package: Package) -> str | None:
        """Why `package` cannot be restored from its recorded source here, or None."""
        ...

    def install(
        self, packages: Sequence[Package], *, reinstall: bool, deadline: Deadline
    ) -> Outcome:
        """One installer call for all `packages` at their exact versions, no dependencies.

        `reinstall`: some package is installed at the wanted version but from another
        source, so the installer must replace it rather than call it satisfied.
        """
        ...

    def remove(self, packages: Sequence[Package], *, deadline: Deadline) -> Outcome:
        """One installer call that uninstalls `packages` from this environment only."""
        ...
