"""The `pkgckpt` command: a thin click front end.

Each command builds the config once from its flags (`config.load`), makes one library
call and renders the result. Library code raises `PkgckptError` subclasses; only
`logs.guarded` turns them into one line on stderr and an exit code: 0 done or nothing to
do, 1 error (nothing changed), 2 usage, 3 partial restore. A plain `pkgckpt restore`
never gets here: `entry` runs it without importing click, from the same options.
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click

from . import __version__, config, logs

F = TypeVar("F", bound=Callable[..., Any])

EXIT_CODES = """\b
Exit codes:
  0  done, or nothing to do
  1  error: nothing was changed (the message says why)
  2  usage: a bad flag, setting or config file
  3  partial restore: some packages failed or were held back by a new image, the
     others were installed
  4  daemon: one for this store and key already runs; this one did not start
  5  forget, revert: the running daemon made the change, the store did not take it
     yet; the daemon keeps it and retries (pending in status)"""

SETTINGS = """\b
Settings: flags > PKGCKPT_* environment variables (PKGCKPT_STORE, PKGCKPT_KEY,
PKGCKPT_ENV=prefix1:prefix2, PKGCKPT_QUIET_MS, ...) > config files
(/etc/pkgckpt/config.toml, then ~/.config/pkgckpt/config.toml, then --config FILE
or PKGCKPT_CONFIG; TOML with the same names: store, key, env = [...]) > defaults."""

_FIELDS = frozenset(config.Config.__struct_fields__)
_OWN_ARGV = "own argv"
"""click's `obj` when the command line is this process's own (`sys.argv`)."""


class _Path(click.Path):
    """click.Path, but "" is refused: click makes it Path(""), which is ".", the working
    directory (`store init ""` marked it as a store). An empty path is a slip (a variable
    that was not set), never a way to say "here"."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        self.refuse_empty(value, param, ctx)
        return super().convert(value, param, ctx)

    def refuse_empty(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> None:
        if isinstance(value, str) and value == "":
            self.fail("an empty path names nothing (say '.' for this directory).", param, ctx)


class _StorePath(_Path):
    """Taken as given: the store checks its root itself (O_NOFOLLOW, the marker), and
    click's stat and access(2) would be two more round trips to an NFS server."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        self.refuse_empty(value, param, ctx)
        return value if isinstance(value, Path) else Path(value)


class _Seconds(click.FloatRange):
    """Seconds, from 0 to `max` (at most config.MAX_SECONDS, a day); not NaN, which
    FloatRange lets through (every comparison with it is false)."""

    def __init__(self, max: float = config.MAX_SECONDS) -> None:
        super().__init__(min=0, max=max)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if number != number:
            self.fail(f"{value!r} is not a number of seconds.", param, ctx)
        return number


_SELECTORS = (
    click.option(
        "--env",
        multiple=True,
        type=_Path(path_type=Path),
        metavar="PREFIX",
        help="Python environment (venv or conda prefix) to track; repeatable. "
        "Default: the environment running pkgckpt (or --own-env) and its user site, the "
        "environments Jupyter kernelspecs and conda name, and R's libraries (`discover`).",
    ),
    click.option(
        "--own-env",
        type=_Path(path_type=Path),
        metavar="PREFIX",
        help="The environment to take as pkgckpt's own, e.g. the notebook server's when "
        "pkgckpt runs from a venv of its own: tracked, and searched for Jupyter kernels "
        "and conda's root. Default: the environment running pkgckpt.",
    ),
    click.option(
        "--r-lib",
        multiple=True,
        type=_Path(path_type=Path),
        metavar="DIR",
        help="R library to track; repeatable; given, only these. "
        "Default: the libraries R uses (.libPaths() and R_LIBS_USER, not R's base library).",
    ),
    click.option(
        "--r-discover",
        is_flag=True,
        default=None,
        help="Track the libraries R uses beside those --r-lib names.",
    ),
    click.option(
        "--store",
        type=_StorePath(path_type=Path),
        metavar="DIR",
        help="Where manifests live (an NFS mount in production). Default: ~/.local/state/pkgckpt.",
    ),
    click.option(
        "--key",
        metavar="KEY",
        help="This session's directory in the store. "
        "Default: JUPYTERHUB_USER, else the login name.",
    ),
    click.option(
        "--baseline",
        type=_Path(path_type=Path),
        metavar="FILE",
        help="What the image shipped (`pkgckpt baseline` at build time). Default: the one "
        "this container took at its first start, in the runtime directory.",
    ),
    click.option(
        "--config",
        "config_file",
        type=_Path(path_type=Path),
        metavar="FILE",
        help="A TOML config file, read after the system and user ones.",
    ),
)


def with_config(command: F) -> F:
    """Add the selectors every command takes; call `command(cfg, ...)` with the config.

    Options named like a config setting (the selectors, `--quiet-ms`, `--timeout`, ...)
    are passed to `config.load` as flags, so that a flag not given leaves the lower
    layers (environment, files, defaults) in force.
    """

    @functools.wraps(command)
    def wrapper(config_file: Path | None, **kwargs: Any) -> Any:
        flags = {name: kwargs.pop(name) for name in list(kwargs) if name in _FIELDS}
        return command(config.load(flags, config_file), **kwargs)

    for option in reversed(_SELECTORS):
        wrapper = option(wrapper)
    return wrapper  # type: ignore[return-value]


@click.group(epilog=f"{EXIT_CODES}\n\n{SETTINGS}")
@click.version_option(__version__, prog_name="pkgckpt")
def cli() -> None:
    """Checkpoint the packages users install in notebook containers; restore them at start.

    \b
    In the image build:      pkgckpt baseline --output /etc/pkgckpt/baseline.json
    In the entrypoint:       pkgckpt restore --timeout 300; pkgckpt daemon &
    Whenever:                pkgckpt status
    """


@cli.command(epilog=EXIT_CODES)
@click.option(
    "--quiet-ms",
    type=click.IntRange(min=0, max=config.MAX_MS),
    default=None,
    help="Checkpoint a library once it has been quiet this long, in milliseconds up to a "
    "day (default 500).",
)
@click.option(
    "--max-delay-ms",
    type=click.IntRange(min=0, max=config.MAX_MS),
    default=None,
    help="Checkpoint a library at the latest this long after its first change, even "
    "while an install still runs (default 30000).",
)
@click.option(
    "--shutdown-timeout",
    type=_Seconds(),
    default=None,
    metavar="S",
    help="On SIGTERM, seconds to get pending changes onto the store (default 10).",
)
@click.option(
    "--metrics-file",
    type=_Path(path_type=Path, dir_okay=False),
    default=None,
    metavar="PATH",
    help="Write Prometheus metrics here after each commit and error (node_exporter's "
    "textfile collector: PATH ending in .prom).",
)
@with_config
def daemon(cfg: config.Config) -> int:
    """Watch the libraries and checkpoint every change to the store (foreground).

    Logs one line per change and per checkpoint on stderr. Tells systemd READY=1 when
    $NOTIFY_SOCKET is set and sends WATCHDOG=1 when it asks for them.

    \b
    SIGTERM, SIGINT  rescan everything at once, commit, exit (0: all changes are on the
                     store; 1: the store stayed unreachable until --shutdown-timeout,
                     or a call on it had not returned 2 s later)
    SIGHUP           rescan everything and commit now
    A store that fails is retried with backoff; the daemon never exits because of it.
    One daemon per store and key: a second one exits 4 at once, the first runs on.
    Status (pid, last checkpoint, pending changes, last error): `pkgckpt status`.

    A package leaves the manifest only when the daemon saw it uninstalled. With no
    baseline (--baseline, or the one `restore` took) the daemon takes one at start if the
    store has no manifest yet, or cannot be read; if it has one, every recorded entry is
    kept and only changes seen from now on are added.
    """
    if click.get_current_context().obj == _OWN_ARGV:
        from . import handoff

        handoff.replace(cfg)  # returns only when the daemon must run in this process
    from . import daemon as daemon_

    logging.getLogger().setLevel(logging.INFO)
    return daemon_.run(cfg)


@cli.command(epilog=EXIT_CODES)
@with_config
def snapshot(cfg: config.Config) -> int:
    """Scan and checkpoint now (for a preStop hook).

    When a daemon runs for this key, it is asked to do it (so the manifest keeps one
    writer) and this command waits for its checkpoint and artifacts; else it commits
    and captures itself. At most shutdown_timeout in all, the manifest first: captures
    still running then are listed (they go on in the daemon; without one, they are
    stopped, and the next snapshot takes them). A package leaves the manifest only
    through an uninstall the daemon saw: snapshot itself only adds and updates.
    """
    from .snapshot import snapshot as snapshot_

    click.echo(snapshot_(cfg).render(), nl=False)
    return 0


@cli.command(epilog=EXIT_CODES)
@click.option("--dry-run", is_flag=True, help="Print the plan; change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option(
    "--print-bound",
    is_flag=True,
    help="Print the longest this restore may take, in whole seconds: its timeout, the "
    "10 s it has to report after it, and its jitter, wherever each is set (0: no bound); "
    "restore nothing. For a wrapper that bounds it too.",
)
@click.option(
    "--timeout",
    type=_Seconds(),
    default=None,
    metavar="S",
    help="Bound the whole run, in seconds up to a day (default 900; 0: no bound). What is "
    "not done is reported. The installers are stopped when it runs out; a restore still "
    "blocked 10 s later (a store that stopped answering) ends with exit 1, or 3 once it "
    "has installed (revert --restore: 3, the revert is written).",
)
@click.option(
    "--jitter",
    type=_Seconds(max=600),
    default=None,
    metavar="S",
    help="A container's first restore waits a random 0-S seconds first, spreading pods "
    "that start together over the store (default 0: no wait).",
)
@click.option(
    "--installer",
    type=click.Choice(["auto", "pip", "uv"]),
    default=None,
    help="Python installer (auto: uv when installed, else pip).",
)
@click.option(
    "--index-url", metavar="URL", default=None, help="Package index (never the manifest's)."
)
@click.option(
    "--find-links",
    multiple=True,
    metavar="DIR",
    help="Extra place with wheels and sdists; repeatable.",
)
@click.option("--no-index", is_flag=True, default=None, help="Use --find-links only.")
@click.option(
    "--keep-removed",
    is_flag=True,
    default=None,
    help="Do not uninstall the image packages the user had removed.",
)
@click.option(
    "--on-conflict",
    type=click.Choice(["image", "user"]),
    default=None,
    help="On a new image, a recorded Python or R change that would break an image "
    "package: hold it back (image, the default; exit 3) or install it anyway (user). "
    "Conda changes the image moved under are held back either way.",
)
@click.option(
    "--r-repo", multiple=True, metavar="URL", help="R repository (CRAN mirror); repeatable."
)
@with_config
def restore(cfg: config.Config, dry_run: bool, as_json: bool, print_bound: bool) -> int:
    """Install what the manifest records that is not installed here (the entrypoint).

    Takes this container's baseline first when it has none. Installs added and changed
    packages at their exact versions and removes the image packages the user removed;
    nothing else. Run twice, the second run does nothing and says so. Index settings come
    from these flags, the config or the installer's own configuration, never the store.
    On a new image or Python, the record is rebased: what would break an image package is
    held back and named (exit 3) unless --on-conflict user. A recorded venv whose Python
    the new image took away is made again first, with the Python that now stands in its
    pyvenv.cfg's home.
    """
    if print_bound:
        from .jitter import print_bound as print_it

        return print_it(cfg)
    from . import restore as restore_

    return restore_.command(cfg, dry_run=dry_run, as_json=as_json)


@cli.command(epilog=EXIT_CODES)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option(
    "--prometheus",
    is_flag=True,
    help="Print the daemon's metrics (what --metrics-file holds) in Prometheus text format.",
)
@with_config
def status(cfg: config.Config, as_json: bool, prometheus: bool) -> int:
    """What is checkpointed, what is not yet, and whether the daemon runs.

    Per environment: the packages the manifest tracks (added, changed, removed), changes
    seen now that are not checkpointed yet, and what `restore` would still do. Then the
    last checkpoint (generation, age), the daemon (pid alive) and the last store error.
    Reads only: changes nothing, not even the baseline (the local default store, like
    every command, it makes on first use).
    """
    from . import status as status_

    if prometheus:
        logs.emit(status_.to_prometheus(cfg))
        return 0
    report = status_.collect(cfg)
    logs.emit(status_.to_json(report) if as_json else status_.to_text(report))
    return 0


@cli.command(epilog=EXIT_CODES)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option(
    "--limit", type=click.IntRange(min=1), default=None, metavar="N", help="The N newest only."
)
@with_config
def history(cfg: config.Config, as_json: bool, limit: int | None) -> int:
    """What changed in the record, when, in which generation: newest first.

    Installs, upgrades, downgrades and removals the daemon recorded, and the forgets and
    reverts of the user, read from the manifest and the generations the store keeps.
    A generation shown as <=N: N or earlier (the generation before N is not kept).
    Reads only (the local default store, like every command, it makes on first use).
    """
    from . import record

    found = record.history(cfg, limit)
    logs.emit(found.to_json() if as_json else found.render())
    return 0


@cli.command(epilog=EXIT_CODES)
@click.argument("names", nargs=-1, required=True, metavar="NAME...")
@click.option(
    "--user-site/--no-user-site",
    "user_site",
    default=None,
    help="With --env: only the user site of those prefixes / only the prefixes themselves "
    "(default: both).",
)
@with_config
def forget(cfg: config.Config, names: tuple[str, ...], user_site: bool | None) -> int:
    """Drop packages from the record without touching any environment.

    Restore no longer installs them (nor retries them when they fail), and the daemon
    does not record them again until they are installed, upgraded or removed again in a
    container. Names match in normalized form (Foo_Bar is foo-bar). With --env / --r-lib,
    only in those environments (a prefix with its interpreter's user site); else in every
    one the record holds them in. A daemon running for this key makes the change (the
    manifest keeps one writer).
    """
    from . import record
    from .errors import UsageError

    if user_site is not None and not cfg.env:
        raise UsageError("--user-site / --no-user-site choose among what --env names")
    click.echo(record.forget(cfg, names, user_site=user_site).render(), nl=False)
    return 0


@cli.command(epilog=EXIT_CODES)
@click.argument("generation", type=click.IntRange(min=1))
@click.option("--dry-run", is_flag=True, help="Print what would change; change nothing.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.option("--restore", "then_restore", is_flag=True, help="Apply it here now (restore).")
@with_config
def revert(
    cfg: config.Config, generation: int, dry_run: bool, yes: bool, then_restore: bool
) -> int:
    """Make the record of a kept GENERATION current again, as a new generation.

    Prints the restore plan: what this container would need to change to match it.
    Asks first on a terminal (--yes: do not ask). Installs nothing unless --restore:
    the next `pkgckpt restore` applies it. History is appended, never rewritten, so a
    revert can itself be reverted. `pkgckpt status` shows how far back it can go.
    """
    from . import record

    ask = None
    if not yes and not dry_run and sys.stdin.isatty():

        def ask(preview: str) -> bool:
            click.echo(preview)
            return click.confirm("Revert?", default=False)

    result = record.revert(
        cfg, generation, dry_run=dry_run, confirm=ask, restore=then_restore, bounded=True
    )
    # Asked on a terminal: the plan is on the screen already.
    click.echo(result.render(preview=ask is None), nl=False)
    return result.exit_code


# Revert plans a restore (and runs one with --restore): it takes restore's settings, the
# very same options, so that the two cannot drift apart.
revert.params += [
    p for p in restore.params if p.name in _FIELDS and p.name not in {q.name for q in revert.params}
]


@cli.command(epilog=EXIT_CODES)
@click.option(
    "--output",
    "-o",
    type=_Path(path_type=Path, dir_okay=False),
    required=True,
    metavar="FILE",
    help="Where to write it (e.g. /etc/pkgckpt/baseline.json); readable by everyone.",
)
@with_config
def baseline(cfg: config.Config, output: Path) -> int:
    """Record what the image ships (run at image build time).

    Every container started from the image then records only the user's changes to it.
    Give the same --env / --r-lib as the daemon will use.
    """
    from .checkpoint import write_baseline

    found = write_baseline(cfg, output)
    every = (*found.environments, *found.conda)
    count = sum(len(i.packages) for i in every)
    click.echo(f"baseline: {count} packages in {len(every)} environment(s) -> {output}")
    return 0


@cli.group()
def store() -> None:
    """Manage a store root (an administrator's task, once per store)."""


@store.command("init", epilog=EXIT_CODES)
@click.argument("directory", metavar="DIR", type=_Path(path_type=Path, file_okay=False))
def store_init(directory: Path) -> int:
    """Make DIR a store: create it when missing (mode 0700) and write its marker.

    pkgckpt reads and writes only store roots that carry the marker (.pkgckpt-store): a
    missing or unmarked root (an NFS mount that has not arrived) is "not available",
    never empty. Run it once on the export; it is idempotent. A root shared by several
    users must be writable by them with the sticky bit (chmod 1777 DIR).
    """
    from .store import init_store

    made = init_store(directory)
    click.echo(f"store {directory} {'is ready' if made else 'was already a store'}")
    return 0


@store.command("prune-pool", epilog=EXIT_CODES)
@click.argument("directory", metavar="DIR", type=_Path(path_type=Path, file_okay=False))
@click.option(
    "--older-than",
    "days",
    type=click.IntRange(min=1),
    required=True,
    metavar="DAYS",
    help="Remove entries nobody read or added for DAYS days (at least 1).",
)
@click.option("--dry-run", is_flag=True, help="List what would be removed; remove nothing.")
def store_prune_pool(directory: Path, days: int, dry_run: bool) -> int:
    """Remove old entries of the shared artifact pool DIR (`artifact_pool`).

    The pool cannot tell which users' manifests still name an entry, so age is the rule:
    an entry nobody restored from or captured into for DAYS days goes. That costs at
    most a re-download or a new capture: every user's manifest verifies its artifacts
    by hash and falls back to the package's source. Only regular files named by their
    sha256 (and dead captures' temp files) are removed; no symlink is followed. Run it
    as root or as the pool's owner (the sticky bit lets others remove only their own).
    """
    from .artifacts import _bytes
    from .artifacts.pool import prune

    done = prune(directory, days, dry_run=dry_run)
    verb = "would remove" if dry_run else "removed"
    for name in done.removed:
        click.echo(f"{verb} {name}")
    click.echo(
        f"{verb} {len(done.removed)} entr{'y' if len(done.removed) == 1 else 'ies'} "
        f"({_bytes(done.freed)}), kept {done.kept}"
    )
    for error in done.errors:
        click.echo(f"pkgckpt: error: {error}", err=True)
    return 1 if done.errors else 0


def run(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code (no traceback for any error)."""
    logs.setup()

    def command() -> int:
        try:
            # The process's own command line (argv None) is the only one `daemon` can hand
            # over to a leaner interpreter (see handoff): tests call run() in their process.
            obj = _OWN_ARGV if argv is None else None
            result = cli.main(args=argv, prog_name="pkgckpt", standalone_mode=False, obj=obj)
        except click.ClickException as e:
            e.show()
            return e.exit_code
        except click.Abort:
            click.echo("pkgckpt: interrupted", err=True)
            return 1
        return result if isinstance(result, int) else 0

    return logs.guarded(command)


def main() -> NoReturn:
    logs.finish(run())
