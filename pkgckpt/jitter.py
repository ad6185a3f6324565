"""The restore's start delay: spreads a storm of container starts over the store.

When every notebook pod of a node pool starts at once (the pool replaced, a cluster
upgraded), each one's `pkgckpt restore` reads the store in the same second. `jitter`
(seconds: `--jitter`, `PKGCKPT_JITTER`, or `jitter =` in the config) makes a container's
first restore wait a uniform random 0 to `jitter` seconds before it does anything, so N
restores reach the store spread over the window, about N / `jitter` a second, rather
than all at once.

- Default 0, off: one container starting alone gains nothing by waiting, and its user
  waits for the restore before the session opens; only a fleet's operator knows its
  storms and the delay its users accept.
- At most `MAX_JITTER` seconds: a larger value is a typo, not a plan (exit 2).
- Only a container's first restore waits: one whose runtime directory records a restore
  already (a restore run again, by hand or by a retrying entrypoint) is not part of a
  storm and stays quick (DESIGN invariant 6); a dry run never waits.
- The wait comes before `timeout` starts: the timeout bounds the restore's own work.
  Whatever bounds a restore from outside (the timeout(1) of the example entrypoint and
  of the RStudio image's start-up script) must allow both, wherever each is set: `bound`
  is their sum with `REPORT_SECONDS`, `pkgckpt restore --print-bound` prints it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from time import sleep

from .config import Config
from .errors import UsageError

MAX_JITTER = 600.0
"""Seconds: ten minutes spread 3,500 pods to about six restores a second."""


REPORT_SECONDS = 10.0
"""After its timeout, what a restore has to stop its installers, report and record the
outcome; a restore still blocked then (a store that stopped answering) ends itself."""


def _check(jitter: float) -> None:
    if not 0 <= jitter <= MAX_JITTER:
        raise UsageError(f"jitter must be 0 to {MAX_JITTER:g} seconds, not {jitter:g}")


def start_delay(jitter: float, draw: Callable[[float, float], float] | None = None) -> float:
    """A delay in [0, jitter] seconds, uniform; `draw(a, b)`: random.uniform by default."""
    _check(jitter)
    if jitter == 0:
        return 0.0
    if draw is None:
        import random  # only when a delay is asked for: the no-op restore counts milliseconds

        draw = random.uniform
    return min(max(draw(0.0, jitter), 0.0), jitter)


def wait(config: Config) -> float:
    """Sleep this container's start delay, if its first restore; the seconds slept."""
    delay = start_delay(config.jitter)
    if delay == 0:
        return 0.0
    from .metrics import restore_path

    if os.path.lexists(restore_path(config)):
        return 0.0
    sleep(delay)
    return delay


def bound(config: Config) -> int:
    """The longest a restore with `config` may take, in whole seconds rounded up: the
    longest start delay, then the timeout and `REPORT_SECONDS`; 0 when the timeout is 0
    (no bound). A restore run again waits less (not at all), never more."""
    _check(config.jitter)
    return math.ceil(config.jitter + config.timeout + REPORT_SECONDS) if config.timeout else 0


def print_bound(config: Config) -> int:
    """`pkgckpt restore --print-bound`: print `bound`, touch nothing. Its own function,
    apart from restore's modules: each container start asks it before its restore, and
    what it imports is all it costs."""
    from .logs import emit

    emit(str(bound(config)))
    return 0
