"""When a dirty library root is worth scanning: pure logic, the clock is passed in.

A root is ready when nothing touched it for the quiet window and no install is visibly in
progress in it (a marker directory without RECORD, an R ``00LOCK-*``), or at the latest
when the maximum delay since its first event has passed: an install that dies half-way
must not keep the manifest stale forever. A root the maximum delay hands out while it is
still changing is `unsettled`: what it lacks then may be a deletion in progress (`rm -rf`
of a whole environment on a slow file system), not an uninstall.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import msgspec


class _Pending(msgspec.Struct):
    first: float  # the first event since the root was last ready
    last: float  # the latest event, or the latest check that found the root busy


class Debouncer:
    def __init__(self, quiet: float, max_delay: float) -> None:
        """``quiet`` and ``max_delay`` in seconds."""
        if quiet < 0 or max_delay < 0:
            raise ValueError("quiet and max_delay must not be negative")
        self.quiet = quiet
        self.max_delay = max_delay
        self._pending: dict[Path, _Pending] = {}
        self.unsettled: frozenset[Path] = frozenset()
        """The roots of the last `ready()` that the maximum delay handed out less than a
        quiet window after their last event (or the check that found them busy)."""

    def touch(self, root: Path, now: float) -> None:
        """``root`` changed at ``now``."""
        p = self._pending.get(root)
        if p is None:
            self._pending[root] = _Pending(now, now)
        else:
            p.last = max(p.last, now)

    def ready(self, now: float, busy: Callable[[Path], bool]) -> list[Path]:
        """Pop and return the roots to scan now, in path order.

        ``busy(root)`` is asked only for roots whose quiet window has passed; a root still
        busy is asked again one quiet window later (the install's completion normally
        arrives as an event first).
        """
        out = []
        unsettled = []
        for root, p in self._pending.items():
            # The same sums as next_deadline(), so that waking at the deadline is enough.
            if now >= p.first + self.max_delay:
                out.append(root)
                if now < p.last + self.quiet:
                    unsettled.append(root)
            elif now >= p.last + self.quiet:
                if busy(root):
                    p.last = now
                else:
                    out.append(root)
        for root in out:
            del self._pending[root]
        self.unsettled = frozenset(unsettled)
        return sorted(out)

    def next_deadline(self, now: float) -> float | None:
        """Seconds until :meth:`ready` may return something; None when nothing is pending."""
        if not self._pending:
            return None
        due = min(
            min(p.last + self.quiet, p.first + self.max_delay) for p in self._pending.values()
        )
        return max(0.0, due - now)

    def pending(self) -> frozenset[Path]:
        return frozenset(self._pending)
