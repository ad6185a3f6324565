"""`pkgckpt daemon` leaves the command line behind: the long-lived process holds only the
daemon's own modules.

The command line checks the flags and resolves the settings (click, the config files),
then `replace()` execs a fresh interpreter in the same process, which runs `main()`:
click, the command line's other commands and whatever they import are never loaded into
the process that stays up for the whole session (~1.5 MB of its idle RSS).

- The pid stays: `exec` replaces the program, not the process. systemd (`Type=notify`,
  `MAINPID`), a shell's `$!` (examples/entrypoint.sh) and signals sent at any moment
  reach the daemon; the environment (`NOTIFY_SOCKET`, `WATCHDOG_USEC`) and stdin, stdout
  and stderr are the same.
- The settings are the ones already resolved, never read again: JSON in a pipe that only
  this process holds (a command line is world-readable in /proc, an environment variable
  would be inherited by the daemon's children). The new interpreter checks them into a
  `Config` as strictly as any manifest.
- The new process's command line is the old one behind `python -c`, so that `status` and
  `snapshot` still know it for `pkgckpt daemon` of its store and key (`status.is_daemon`).
- It imports pkgckpt from where this process did, and not from the working directory
  (`-c` would put it first on sys.path); the interpreter keeps this one's flags (`-I`,
  `-X ...`).
- Before the exec, this process asks every environment's interpreter (and R) what the
  daemon will ask, and keeps the answers in the runtime directory (`keep_answers`), as
  `pkgckpt restore` does: the daemon's own process then recalls them and starts no child,
  so it never loads subprocess, tempfile, shutil and json (~1.8 MB for the session) to
  start one once. After a restore they are kept already, and this costs a look-up.

When any of it cannot be done (settings that do not fit the pipe, a path JSON cannot
hold, an exec refused), the daemon runs in this process as before: the hand-off saves
memory, it is never a reason not to watch.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, NoReturn

from . import signals
from .config import Config
from .logs import INFO, direct, getLogger, report

log = getLogger(__name__)


def _encode_path(obj: Any) -> str:
    if isinstance(obj, Path):
        return str(obj)
    raise NotImplementedError(type(obj))


def _decode_path(kind: type, obj: Any) -> Any:
    if kind is Path and isinstance(obj, str):
        return Path(obj)
    raise NotImplementedError(kind)


def encode(config: Config) -> bytes:
    import msgspec

    return msgspec.json.encode(config, enc_hook=_encode_path)


def decode(data: bytes) -> Config:
    """The settings `encode` wrote, checked field by field (msgspec.ValidationError)."""
    import msgspec

    return msgspec.json.decode(data, type=Config, dec_hook=_decode_path)


def command(fd: int) -> list[str]:
    """The argv of the daemon's own interpreter, reading its settings from `fd`."""
    import subprocess

    import pkgckpt

    where = str(Path(pkgckpt.__file__).resolve().parent.parent)
    code = (
        f"import sys; sys.path[:] = [{where!r}] + [p for p in sys.path if p]; "
        f"import pkgckpt; pkgckpt.own_process(); from pkgckpt.handoff import main; main({fd})"
    )
    # The interpreter's own flags (-I, -E, -s, -X importtime, -W ...), as this one had.
    flags = subprocess._args_from_interpreter_flags()  # type: ignore[attr-defined]
    return [sys.executable, *flags, "-c", code, *sys.argv]


def replace(config: Config) -> None:
    """Exec the daemon's own interpreter in this process; returns only when it could not
    (the caller then runs the daemon itself)."""
    if not sys.executable:
        return
    try:
        data = encode(config)
    except (TypeError, ValueError) as e:  # msgspec.EncodeError is a ValueError
        log.debug("settings not passed on (%s): the daemon runs in the command's process", e)
        return
    if not signals.stopped():  # a stop killed every probe (`entry`): the daemon asks
        keep_answers(config)
    read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
    try:
        os.set_blocking(write_fd, False)
        try:
            written = os.write(write_fd, data)
        except BlockingIOError:
            written = 0
        if written < len(data):
            log.debug("settings larger than a pipe: the daemon runs in the command's process")
            return
        os.close(write_fd)
        write_fd = -1
        os.set_inheritable(read_fd, True)
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        argv = command(read_fd)
        signals.pass_on()
        os.execv(argv[0], argv)
    except OSError as e:
        log.warning("cannot start the daemon's own interpreter (%s): running it here", e)
    finally:
        if write_fd >= 0:
            os.close(write_fd)
        os.close(read_fd)


def keep_answers(config: Config) -> None:
    """Probe what the daemon's targets need and keep the answers in the runtime directory
    (see the module docstring). Silent and never fatal: whatever goes wrong here the daemon
    meets again, and reports once, in its own process."""
    import logging  # this process's (the command line's): see `logs`

    from . import inventory
    from .scan import kept

    previous = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    try:
        inventory.targets(config, unreadable=[])
        kept.settle(config.runtime_dir)
    except Exception as e:
        log.debug("answers not kept before the hand-off (%s)", e)
    finally:
        logging.disable(previous)


def main(fd: int) -> NoReturn:
    """The daemon's process: the settings from `fd`, then `daemon.run` until it ends."""
    direct(INFO)
    try:
        with os.fdopen(fd, "rb") as f:
            config = decode(f.read())
        from . import daemon

        code = daemon.run(config)
    except Exception as e:
        code = report(e)
    sys.exit(code)
