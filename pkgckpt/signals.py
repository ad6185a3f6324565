"""The daemon's signals before its handlers are in place.

SIGTERM at a container's stop can come at any moment, the daemon's first 0.1 s too: the
command line is still reading its settings, or the daemon's own interpreter (`handoff`)
is still importing. Dying of it there (exit 143) is what a daemon that lost changes
does, and entrypoints and supervisors say so. So from the command's first line until the
daemon's handlers are in place, these signals are noted (`hold`), then made pending again
and blocked (`pass_on`) for the daemon's handlers to take: a process keeps its signal
mask and its pending signals across exec.
"""

from __future__ import annotations

import os
import signal
from types import FrameType

STOPS = frozenset({signal.SIGTERM, signal.SIGINT})
HANDLED = frozenset({*STOPS, signal.SIGHUP})
"""The daemon's: stop (`STOPS`), or rescan and commit now (SIGHUP)."""

_noted: list[int] = []


def _note(signum: int, frame: FrameType | None) -> None:
    _noted.append(signum)


def hold() -> None:
    """Note `HANDLED` instead of dying of it, with those signals unblocked: a child started
    meanwhile (an interpreter's probe) must not inherit them blocked, and the ones
    `pass_on` left pending arrive here."""
    for signum in HANDLED:
        signal.signal(signum, _note)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED)


def pass_on() -> None:
    """Block `HANDLED` and make the noted signals pending again, for the next `hold` or the
    daemon's handlers (which unblock them once in place)."""
    signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED)
    for signum in dict.fromkeys(_noted):
        os.kill(os.getpid(), signum)
    _noted.clear()
