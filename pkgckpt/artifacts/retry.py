"""Failed captures, retried while the daemon runs: with bounded backoff, and never on a
timer unless something failed (DESIGN invariant 5, idle costs nothing).

    Retries(attempts)
        .settle(failed, now)   after a capture round: `failed` maps each package
                               (`session.key`) whose capture failed for a reason that may
                               pass (the store, the worker) to that reason; empty when the
                               round went through. A failed round waits `delay` before the
                               next; after `attempts` failed rounds in a row the packages
                               are given up until the daemon restarts.
        .at -> float | None    when the next round is due (the daemon's loop wakes then)
        .due(now) -> bool      it is: `release()`, then capture again
        .skip -> dict          what a round must not take now (waiting or given up)
        .ask()                 a person asked (`snapshot`): retry everything now, once
        .reasons() -> dict     for `status`: each waiting or given-up package, and why

A capture that can never succeed (`Uncapturable`: an editable install, an egg-info,
over the quota) is not retried: the daemon reports it once. The backoff is per round,
not per package: one outage of the store fails every package at once, and they are
retried together.
"""

from __future__ import annotations

from collections.abc import Mapping

FIRST = 5.0
CAP = 600.0


class Retries:
    """See the module docstring."""

    def __init__(self, attempts: int, first: float = FIRST, cap: float = CAP) -> None:
        self.attempts = attempts
        self.first = first
        self.cap = cap
        self.failures = 0
        """Failed rounds in a row."""
        self.at: float | None = None
        self.waiting: dict[str, str] = {}
        self.gave_up: dict[str, str] = {}

    def settle(self, failed: Mapping[str, str], now: float) -> None:
        if not failed:
            if not self.waiting:
                self.failures = 0
            return
        self.failures += 1
        if self.failures > self.attempts:
            self.gave_up.update(failed)
            self.waiting.clear()
            self.at = None
            return
        self.waiting.update(failed)
        delay = min(self.cap, self.first * 2.0 ** (self.failures - 1))
        import random  # only after a failure: the idle daemon does without

        # Jittered: the daemons of many containers do not hammer one NFS server together.
        self.at = now + delay * random.uniform(0.5, 1.0)

    def due(self, now: float) -> bool:
        return self.at is not None and now >= self.at

    def ask(self) -> None:
        """A person asked (`snapshot`): every failed package is captured again in the next
        round, given up or not; one more failure gives it up again."""
        self.gave_up.clear()
        self.failures = min(self.failures, self.attempts)
        self.release()

    def release(self) -> None:
        """The waiting packages may be captured again (their round is due)."""
        self.waiting.clear()
        self.at = None

    @property
    def skip(self) -> dict[str, str]:
        return {**self.waiting, **self.gave_up}

    def reasons(self) -> dict[str, str]:
        retried = f"retry {self.failures} of {self.attempts}"
        out = {k: f"{why} ({retried} is due)" for k, why in self.waiting.items()}
        for k, why in self.gave_up.items():
            out[k] = (
                f"{why} (gave up after {self.attempts} retries; the daemon tries again "
                "when it restarts)"
            )
        return out
