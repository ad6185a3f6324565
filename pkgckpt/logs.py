"""How every pkgckpt process speaks: one line per message on stderr, credentials redacted.

`setup()` gives the root logger that one handler; `report()` turns an error that ends a
command into its line and its exit code (a `PkgckptError` says why; anything else is an
internal error, with its traceback under `PKGCKPT_DEBUG=1`); `guarded()` runs a command
that way; `emit()` prints its report. The command line (click's and `entry`'s) and the
daemon's own process (`handoff`) share them, and none of them imports click here.

The modules the daemon loads log through `getLogger(name)`: its loggers hand each message
to the standard `logging` (the command line's handler, pytest's capture, the capture
worker's own set-up), except in the daemon's own process, where `direct(level)` makes them
write the same line to stderr themselves. That process never imports `logging` (with
`threading`, `traceback`, `weakref`: ~0.6 MB for the whole session) to print a few lines.
"""

from __future__ import annotations

import gc
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn

from .errors import PkgckptError
from .runner import redact_text

if TYPE_CHECKING:
    import logging

# The standard levels' values, without importing logging for them.
DEBUG, INFO, WARNING, ERROR, CRITICAL = 10, 20, 30, 40, 50
_NAMES = {WARNING: "warning", ERROR: "error", CRITICAL: "critical"}

_direct: int | None = None
"""The level below which the daemon's own process drops a message (`direct`); None:
messages go through the standard logging."""


_CONTROLS = dict.fromkeys(
    (
        *range(0x00, 0x09),
        *range(0x0B, 0x20),
        *range(0x7F, 0xA0),
        *range(0x202A, 0x202F),
        *range(0x2066, 0x206A),
    ),
    "?",
)
"""What a terminal acts on (escape sequences, carriage return, bidi overrides) but tab and
newline: shown as "?"."""


def printable(text: str) -> str:
    """`text` without terminal controls: names and reasons come from libraries and stores
    others may have written (a directory in a group-writable site library)."""
    return text.translate(_CONTROLS)


def line(level: int, message: str) -> str:
    """The line a message is printed as (without its newline)."""
    # Log messages quote URLs (sources, indexes): never with their credentials.
    message = printable(redact_text(message))
    if level >= WARNING:
        return f"pkgckpt: {_NAMES.get(level, f'level {level}')}: {message}"
    return f"pkgckpt: {message}"


class Logger:
    """The part of `logging.Logger` pkgckpt uses: `%`-style messages by level."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def _log(
        self, level: int, msg: str, args: tuple[Any, ...], exc_info: BaseException | bool = False
    ) -> None:
        if _direct is None:
            import logging

            logging.getLogger(self.name).log(level, msg, *args, exc_info=exc_info)
            return
        if level < _direct:
            return
        try:
            text = msg % args if args else msg
        except (TypeError, ValueError, KeyError):
            # logging would print a "Logging error" report and go on: never stop the daemon.
            text = f"{msg} {args!r}"
        try:
            sys.stderr.write(line(level, text) + "\n")
            sys.stderr.flush()
        except (OSError, ValueError, AttributeError):
            # A closed or broken stderr (None, EPIPE, EIO): logging's handler would drop
            # the line too, and the daemon goes on watching.
            pass

    def debug(self, msg: str, *args: Any) -> None:
        self._log(DEBUG, msg, args)

    def info(self, msg: str, *args: Any) -> None:
        self._log(INFO, msg, args)

    def warning(self, msg: str, *args: Any) -> None:
        self._log(WARNING, msg, args)

    def error(self, msg: str, *args: Any, exc_info: BaseException | bool = False) -> None:
        # `exc_info` goes to logging's handlers; the line itself never shows a traceback.
        self._log(ERROR, msg, args, exc_info)

    def exception(self, msg: str, *args: Any) -> None:
        self._log(ERROR, msg, args, exc_info=True)


def getLogger(name: str) -> Logger:
    """`logging.getLogger`'s name, so that call sites read alike."""
    return Logger(name)


def direct(level: int) -> None:
    """The daemon's own process: loggers write their lines to stderr themselves, from
    `level` up, and the standard logging is never imported."""
    global _direct
    _direct = level


def setup(level: int = WARNING) -> None:
    import logging

    class _Formatter(logging.Formatter):
        def format(self, record: logging.LogRecord) -> str:
            return line(record.levelno, record.getMessage())

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
        print(f"pkgckpt: {printable(redact_text(str(error)))}", file=sys.stderr)
        return error.exit_code
    if os.environ.get("PKGCKPT_DEBUG"):
        import traceback

        traceback.print_exception(error)
    print(
        f"pkgckpt: internal error: {type(error).__name__}: {printable(redact_text(str(error)))} "
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
    except KeyboardInterrupt:
        # What click prints for its Abort: the interrupted line ends first. The exit code
        # of a process SIGINT killed, as SIGTERM's and SIGHUP's are (143, 129): a restore
        # may have installed part of its plan, which 1 ("nothing was changed") denies.
        print("\npkgckpt: interrupted", file=sys.stderr)
        return 128 + 2
    except EOFError:
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


def finish(code: int) -> NoReturn:
    """End a command's process with `code`.

    Its last garbage collection would walk every object of every module loaded (click,
    msgspec, packaging: ~15-20 ms, more than a no-op restore's own work) to free memory the
    process is about to give back anyway. Frozen objects are skipped; atexit handlers,
    thread joins and the flush of stdout/stderr still run. Not in `guarded`: tests run
    commands in-process many times.
    """
    gc.freeze()
    sys.exit(code)
