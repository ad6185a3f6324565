"""The idle daemon's import graph: what it would keep in memory for nothing."""

from __future__ import annotations

import subprocess
import sys


def test_the_daemon_path_loads_neither_packaging_utils_nor_socket() -> None:
    """Importing the daemon with everything it runs loads neither packaging.utils (and its
    packaging.tags) nor socket: 0.6 MB of the idle daemon's RSS for a one-line name
    normalization and a host name."""
    code = (
        "import sys, pkgckpt.daemon, pkgckpt._inotify_native, pkgckpt.scan.r; "
        "print(' '.join(sorted(m for m in ('packaging.utils', 'packaging.tags', 'socket') "
        "if m in sys.modules)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == ""
