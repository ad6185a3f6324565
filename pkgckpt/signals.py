"""The daemon's signals before its handlers are in place.

SIGTERM at a container's stop can come at any moment, the daemon's first 0.1 s too: the
command line is still reading its settings, or the daemon's own interpreter (`handoff`)
is still importing. Dying of it there (exit 143) is what a daemon that lost changes
does, and entrypoints and supervisors say so. So from the command's first line until the
daemon's handlers are in place, these signals are noted (`hold`), then made pending again
and blocked (`pass_on`) for the daemon's handlers to take: a process keeps its signal
mask and its pending signals across exec.

A stop noted so is not left waiting on the start: what the process registered with
`on_stop` runs at once (the command line stops its children, an interpreter's probe that
may take 30 s; the daemon's process arms its shutdown's bound, as its handlers would).
"""

from __future__ import annotations

import _thread
import os
import signal
import sys
from collections.abc import Callable
from types import FrameType

STOPS = frozenset({signal.SIGTERM, signal.SIGINT})
HANDLED = frozenset({*STOPS, signal.SIGHUP})
"""The daemon's: stop (`STOPS`), or rescan and commit now (SIGHUP)."""

_noted: list[int] = []
_on_stop: list[Callable[[], None]] = []
"""What to do at the first stop: run once, then emptied."""


def _note(signum: int, frame: FrameType | None) -> None:
    _noted.append(signum)
    if signum in STOPS:
        _stopping()


def _stopping() -> None:
    while _on_stop:
        _on_stop.pop()()


def stopped() -> bool:
    """Whether a stop was noted in this process (and not passed on)."""
    return any(signum in STOPS for signum in _noted)


def on_stop(callback: Callable[[], None]) -> None:
    """Run `callback` at the first stop `hold` notes, at once when one was noted already."""
    _on_stop.append(callback)
    if stopped():
        _stopping()


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
        # To this thread: another one that has them unblocked (a watch armed meanwhile)
        # would take it, and it would reach `_note` again.
        signal.pthread_kill(_thread.get_ident(), signum)
    _noted.clear()
    _on_stop.clear()


def release() -> None:
    """Back to the default actions. A signal noted and not passed on then ends the process
    as it would have when it came (143, 130, 129), once its output is written: a command
    line that ends without starting the daemon (`--help`, a usage error) ends as any."""
    noted = list(dict.fromkeys(_noted))
    _noted.clear()
    _on_stop.clear()
    for handled in HANDLED:
        signal.signal(handled, signal.SIG_DFL)
    if noted:
        sys.stdout.flush()
        sys.stderr.flush()
    for signum in noted:
        os.kill(os.getpid(), signum)
