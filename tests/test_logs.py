"""pkgckpt's log lines: the daemon's own writer and the logging handler say the same."""

from __future__ import annotations

import subprocess
import sys

SPEAK = """\
import sys
import msgspec
# What msgspec imports itself (on Python 3.10, threading through uuid and platform).
own = set(sys.modules)
from pkgckpt import logs
if sys.argv[1] == "direct":
    logs.direct(logs.INFO)
else:
    logs.setup(logs.INFO)
log = logs.getLogger("pkgckpt.example")
log.debug("not shown %s", 1)
log.info("scanned %d root(s) of %s", 2, "/venv")
log.warning("index https://user:secret@example.invalid/simple refused")
log.error("plain %s", "error")
try:
    raise OSError("boom")
except OSError:
    log.exception("capturing %s", "pkg")
log.info("50% done, no arguments")
print(*(m in sys.modules and m not in own for m in ("logging", "threading")), file=sys.stdout)
"""


def _speak(mode: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", SPEAK, mode], capture_output=True, text=True, timeout=60, check=True
    )


def test_the_direct_writer_prints_the_handlers_lines_without_importing_logging() -> None:
    """`logs.direct` (the daemon's own process) prints exactly the lines `logs.setup`'s
    handler prints, one per message, levels and redaction alike, and imports neither
    logging nor threading (unless msgspec, which it needs, imports them itself)."""
    direct, handler = _speak("direct"), _speak("setup")
    assert direct.stderr == handler.stderr
    assert direct.stderr.splitlines() == [
        "pkgckpt: scanned 2 root(s) of /venv",
        "pkgckpt: warning: index https://example.invalid/simple refused",
        "pkgckpt: error: plain error",
        "pkgckpt: error: capturing pkg",
        "pkgckpt: 50% done, no arguments",
    ]
    assert direct.stdout.split() == ["False", "False"]
    assert handler.stdout.split()[0] == "True"


def test_a_broken_stderr_does_not_stop_the_direct_writer() -> None:
    """With stderr closed under it, a line the daemon logs is dropped, as logging's handler
    would drop it, and the process goes on."""
    code = (
        "import os; from pkgckpt import logs; logs.direct(logs.INFO); os.close(2); "
        "logs.getLogger('pkgckpt.example').warning('lost %s', 1); print('alive')"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout == "alive\n"


def test_terminal_controls_in_a_message_are_never_written_raw() -> None:
    """A name read from a library (a directory someone else could make in a shared site
    library) with an escape sequence, a carriage return or a bidi override: each shows as
    "?" in the daemon's line and the handler's, and in a command's error report."""
    code = (
        "import sys\n"
        "from pkgckpt import logs\n"
        "from pkgckpt.errors import ScanError\n"
        "if sys.argv[1] == 'direct':\n"
        "    logs.direct(logs.INFO)\n"
        "else:\n"
        "    logs.setup(logs.INFO)\n"
        "name = 'ev\\x1b]0;title\\x07il\\r\\u202e\\x9b'\n"
        "logs.getLogger('pkgckpt.example').warning('%s is unreadable', name)\n"
        "logs.report(ScanError(name))\n"
    )
    for mode in ("direct", "setup"):
        done = subprocess.run(
            [sys.executable, "-c", code, mode], capture_output=True, text=True, timeout=60
        )
        assert done.stderr.splitlines() == [
            "pkgckpt: warning: ev?]0;title?il??? is unreadable",
            "pkgckpt: ev?]0;title?il???",
        ], done.stderr
