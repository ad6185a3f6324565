"""How every pkgckpt process speaks: one line per message on stderr, credentials redacted.

`setup()` gives the root logger that one handler; `report()` turns an error that ends a
command into its line and its exit code (a `PkgckptError` says why; anything else is an
internal error, with its traceback under `PKGCKPT_DEBUG=1`); `guarded()` runs a command
that way; `emit()` prints its report. The command line (click's and `entry`'s) and the
daemon's own process (`handoff`) share them, and none of them imports click here.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
from collections.abc import Callable

from .errors import PkgckptError
from .runner import redact_text


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        # Log messages quote URLs (sources, indexes): never with their credentials.
        message = redact_text(record.getMessage())
        if record.levelno >= logging.WARNING:
            return f"pkgckpt: {record.levelname.lower()}: {message}"
        return f"pkgckpt: {message}"


def setup(level: int = logging.WARNING) -> None:
    # The record's caller, thread and process are never printed: not looked up either
    # (the logging HOWTO's "Optimization"; the daemon logs a line per change).
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def report(error: Exception) -> int:
    """Say on stderr why the command failed; its exit code."""
    if isinstance(error, PkgckptError):
        print(f"pkgckpt: {redact_text(str(error))}", file=sys.stderr)
        return error.exit_code
    if os.environ.get("PKGCKPT_DEBUG"):
        traceback.print_exception(error)
    print(
        f"pkgckpt: internal error: {type(error).__name__}: {redact_text(str(error))} "
        "(PKGCKPT_DEBUG=1 shows where)",
        file=sys.stderr,
    )
    return 1


def guarded(command: Callable[[], int]) -> int:
    """Run `command`; its exit code, or the error's (no traceback for any error)."""
    try:
        return command()
    except PkgckptError as e:
        return report(e)
    except (KeyboardInterrupt, EOFError):
        # What click prints for its Abort: the interrupted line ends first.
        print("\npkgckpt: interrupted", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # The reader went away (`pkgckpt status | head`): nothing more to say.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except Exception as e:
        return report(e)


def emit(data: str | bytes) -> None:
    """Print a rendered report (text, or JSON bytes) ending in exactly one newline."""
    text = data.decode() if isinstance(data, bytes) else data
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
    sys.stdout.flush()
