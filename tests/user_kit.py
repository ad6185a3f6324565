"""Shared by tests about what another user may see: run a check as `nobody`."""

from __future__ import annotations

import os
from collections.abc import Callable

NOBODY = 65534


def as_nobody(check: Callable[[], bool], unless_root: Callable[[], None] = lambda: None) -> bool:
    """`check()` run in a child that is not root (root reads and looks into anything): the
    child drops to nobody, or, when these tests do not run as root, calls `unless_root()`
    to take the access away by other means. The child answers through its exit status, so
    an exception in it is a False here, not a test passing in the child's copy of pytest."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through its exit status
        code = 3
        try:
            if os.geteuid() == 0:
                os.setgid(NOBODY)
                os.setuid(NOBODY)
            else:
                unless_root()
            code = 0 if check() else 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) == 0
