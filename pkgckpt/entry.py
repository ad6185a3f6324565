"""The `pkgckpt` command's first module: `restore` runs without importing click.

`pkgckpt restore` is on every container's start-up path, before the notebook opens, and
its no-op is mostly the time to import what it runs on. click alone costs ~30 ms of CPU
there (it imports inspect, ast, dis, enum, uuid, platform, datetime), more than the
no-op's own work. So a command line that is a plain `restore` with known options is
parsed here, from `RESTORE`, and anything else goes to click (`pkgckpt.cli`): every
other command, `--help`, and any argument this parser is not sure it reads exactly as
click does (an unknown option, a value click would refuse, a value that looks like an
option). Then click parses it again and answers as it always has, usage errors included.

`RESTORE` is held to click's declaration of the command, option by option, and this
parser to click's on generated command lines (tests/test_entry.py): the two cannot
drift apart silently.
"""

from __future__ import annotations

import gc
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple, NoReturn

from . import own_process


class Option(NamedTuple):
    """One of restore's options as click declares it (`cli.restore`)."""

    opts: tuple[str, ...]
    name: str
    kind: str
    """"flag" (no value; given: True), "value" (the last one given), or "multiple"."""
    convert: Callable[[str], Any] | None = None
    """The value as click's type converts it; None: click would refuse it."""
    default: Any = None


def _path(value: str) -> Path | None:
    # cli._Path(path_type=Path) with its defaults: anything but "" goes, but an existing
    # path must be readable (click stats it and calls access(2)).
    if value == "":
        return None
    path = Path(value)
    try:
        path.stat()
    except OSError:
        return path
    return path if os.access(path, os.R_OK) else None


MAX_SECONDS = 86_400.0
"""config.MAX_SECONDS (not imported: this module loads before the settings' own)."""


def _seconds(high: float = MAX_SECONDS) -> Callable[[str], float | None]:
    # As cli._Seconds: 0 to `high`; NaN fails the comparison, as click refuses it too.
    def convert(value: str) -> float | None:
        try:
            number = float(value)
        except ValueError:
            return None
        if not 0 <= number <= high:
            return None
        return number

    return convert


def _store_path(value: str) -> Path | None:
    # cli._StorePath: taken as given, but for "".
    return Path(value) if value else None


def _choice(*choices: str) -> Callable[[str], str | None]:
    return lambda value: value if value in choices else None


def _text(value: str) -> str:
    return value


RESTORE = (
    # The selectors every command takes (cli._SELECTORS).
    Option(("--env",), "env", "multiple", _path, ()),
    Option(("--own-env",), "own_env", "value", _path),
    Option(("--r-lib",), "r_lib", "multiple", _path, ()),
    Option(("--r-discover",), "r_discover", "flag"),
    Option(("--store",), "store", "value", _store_path),
    Option(("--key",), "key", "value", _text),
    Option(("--baseline",), "baseline", "value", _path),
    Option(("--config",), "config_file", "value", _path),
    # restore's own.
    Option(("--dry-run",), "dry_run", "flag", default=False),
    Option(("--json",), "as_json", "flag", default=False),
    Option(("--print-bound",), "print_bound", "flag", default=False),
    Option(("--timeout",), "timeout", "value", _seconds()),
    Option(("--jitter",), "jitter", "value", _seconds(600)),
    Option(("--installer",), "installer", "value", _choice("auto", "pip", "uv")),
    Option(("--index-url",), "index_url", "value", _text),
    Option(("--find-links",), "find_links", "multiple", _text, ()),
    Option(("--no-index",), "no_index", "flag"),
    Option(("--keep-removed",), "keep_removed", "flag"),
    Option(("--on-conflict",), "on_conflict", "value", _choice("image", "user")),
    Option(("--r-repo",), "r_repo", "multiple", _text, ()),
)
_BY_OPT = {opt: option for option in RESTORE for opt in option.opts}


def parse_restore(args: Sequence[str]) -> dict[str, Any] | None:
    """restore's parameters as click would pass them, or None: leave it to click."""
    params: dict[str, Any] = {o.name: o.default for o in RESTORE}
    many: dict[str, list[Any]] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        name, eq, value = arg.partition("=")
        option = _BY_OPT.get(name)
        if option is None:
            return None
        if option.kind == "flag":
            if eq:
                return None
            params[option.name] = True
            i += 1
            continue
        if not eq:
            if i + 1 == len(args):
                return None
            value = args[i + 1]
            i += 1
        i += 1
        if value.startswith("-"):
            return None
        assert option.convert is not None
        converted = option.convert(value)
        if converted is None:
            return None
        if option.kind == "multiple":
            many.setdefault(option.name, []).append(converted)
        else:
            params[option.name] = converted
    for name, values in many.items():
        params[name] = tuple(values)
    return params


def _restore(params: dict[str, Any]) -> int:
    from . import logs

    # Its lines as `logs.setup` would print them, without importing logging for them.
    logs.direct(logs.WARNING)

    def body() -> int:
        from . import config

        dry_run, as_json = params.pop("dry_run"), params.pop("as_json")
        print_bound, config_file = params.pop("print_bound"), params.pop("config_file")
        # As cli.with_config: every other option is a setting, given or None.
        cfg = config.load(params, config_file)
        if print_bound:
            from .jitter import print_bound as print_it

            return print_it(cfg)
        from . import restore

        return restore.command(cfg, dry_run=dry_run, as_json=as_json)

    return logs.guarded(body)


def main() -> NoReturn:
    # No garbage collection in a restore's process: the ~26 collections its imports set off
    # (~6 ms of a no-op's ~90) walk objects that all live until exit, and what it allocates
    # afterwards (a plan, each installer's output) is bounded by the manifest.
    gc.disable()
    own_process()
    args = sys.argv[1:]
    daemon = args[:1] == ["daemon"]  # `pkgckpt` has no options that could come before it
    if daemon:
        from . import signals

        signals.hold()
        from .runner import stop_children

        signals.on_stop(stop_children)  # the probes `handoff` runs: the daemon asks again
    params = parse_restore(args[1:]) if args[:1] == ["restore"] else None
    from .logs import finish

    if params is None:
        gc.enable()
        from .cli import run

        code = run()
        if daemon:  # it did not start (`--help`, a usage error), or it ran here and ended
            signals.release()
        finish(code)
    finish(_restore(params))
