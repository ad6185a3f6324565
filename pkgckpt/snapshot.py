"""`pkgckpt snapshot`: scan and checkpoint now (a preStop hook), through the running daemon
when there is one (SIGHUP: one writer per manifest), else in this process.

Apart from the daemon's module: the daemon's process never runs it, and its idle memory
holds no code it does not run.
"""

from __future__ import annotations

import os
import signal
import time

import msgspec

from . import checkpoint, inventory, status
from .artifacts import session as art
from .artifacts.summary import remember
from .config import Config
from .errors import PkgckptError, StoreError
from .inventory import Target
from .logs import getLogger
from .store import open_store

log = getLogger(__name__)


class SnapshotResult(msgspec.Struct, frozen=True, kw_only=True):
    """What `pkgckpt snapshot` did."""

    generation: int | None
    committed: bool
    """A new generation was written (False: the store already had this record)."""
    by_daemon: bool = False
    """The running daemon did it (one writer per manifest)."""
    uncaptured: dict[str, str] = {}
    """Recorded packages without an artifact on the store, and why."""
    capturing: int = 0
    """Packages the daemon was still capturing when the wait ended (`shutdown_timeout`)."""
    untracked: tuple[str, ...] = ()
    """Environments the command named (--env, --r-lib) that the daemon does not track: the
    command checkpoints them itself (`snapshot`)."""
    pid: int | None = None
    """The daemon's, when it did the snapshot."""
    refused: str | None = None
    """Why captures of this process's own failed on the store, the manifest on it: exit 1
    (`_captured`)."""

    def render(self) -> str:
        text = ""
        if self.untracked:
            text = (
                f"the running daemon (pid {self.pid}) does not track "
                f"{', '.join(self.untracked)} (its --env / --r-lib settings name what it "
                "tracks): snapshot checkpointed what is installed there; a later install "
                "there needs another snapshot, and no uninstall there is recorded\n"
            )
        if self.generation is None:
            text += "nothing to checkpoint: nothing recorded\n"
        elif not self.committed:
            text += f"nothing to checkpoint: generation {self.generation} is current\n"
        else:
            who = "the daemon" if self.by_daemon else "snapshot"
            text += f"{who} wrote generation {self.generation}\n"
        if self.capturing:
            text += (
                f"still capturing {self.capturing} package(s) after the wait "
                "(shutdown_timeout): the daemon goes on, or captures them at its next start\n"
            )
        if self.uncaptured:
            text += f"not captured ({len(self.uncaptured)}):\n"
            text += "".join(f"  {k}: {v}\n" for k, v in sorted(self.uncaptured.items()))
        return text


def snapshot(config: Config) -> SnapshotResult:
    """Scan and commit now. When a daemon for this key runs, it is asked to (SIGHUP); the
    environments named (--env, --r-lib) that it does not track, this command checkpoints
    itself, after it, as another writer of the key: the daemon's next commit folds them in
    as the store has them.

    Without one, the captures get what is left of `shutdown_timeout` (the preStop hook's
    share of the grace period, as with a daemon) once the manifest is on the store; those
    not done by then are stopped and listed with why, exit 0. A capture the store refused
    raises StoreError naming it (exit 1), once the others are on the store."""
    deadline = time.monotonic() + max(config.shutdown_timeout, 1.0)
    found = status.find_daemon(config)
    if found is None:
        return _captured(_snapshot_here(config, checkpoint.targets(config), deadline))
    asked = _ask_daemon(config, found.state)
    if not asked.untracked:
        return asked
    named = {os.path.realpath(p) for p in asked.untracked}
    # Not `checkpoint.targets`: none left (the one --env of a daemon waiting for it to be
    # made) is no usage error once the daemon did its part.
    targets = [t for t in inventory.targets(config) if os.path.realpath(t.env.path) in named]
    found_here = {os.path.realpath(t.env.path) for t in targets}
    # One missing (which the daemon does not track for that reason) was warned of above:
    # nothing of it is checkpointed, and no message says it was.
    asked = msgspec.structs.replace(
        asked, untracked=tuple(p for p in asked.untracked if os.path.realpath(p) in found_here)
    )
    if not asked.untracked:
        return asked
    # What the daemon did is done: the user must not take the whole snapshot as failed.
    if asked.committed:
        done = f"wrote generation {asked.generation}"
    elif asked.generation is not None:
        done = f"found generation {asked.generation} current"
    else:
        done = "had nothing to checkpoint"
    untracked = ", ".join(asked.untracked)
    theirs = f"the daemon (pid {asked.pid}) {done}; {untracked}, which it does not track,"
    try:
        here = _snapshot_here(config, targets, deadline, beside=found.state)
    except PkgckptError as e:
        e.args = (f"{theirs} was not checkpointed: {e}",)
        raise
    _captured(here, f"{theirs} was checkpointed, but the captures there failed: ")
    return msgspec.structs.replace(
        asked,
        generation=here.generation if here.committed else asked.generation,
        committed=asked.committed or here.committed,
        by_daemon=not here.committed,
        uncaptured={**asked.uncaptured, **here.uncaptured},
    )


def _snapshot_here(
    config: Config,
    targets: list[Target],
    deadline: float,
    beside: status.DaemonState | None = None,
) -> SnapshotResult:
    """Scan `targets` and commit, in this process; `beside`: the running daemon's state,
    which tracks none of them. Its start is theirs too (`status.made_since`), as `status`
    reads them, and the artifacts' bookkeeping is left to it."""
    store = open_store(config)
    since = status.made_since(beside) if beside is not None else None
    session, _ = checkpoint.open_session(config, targets, store, since)
    for env in session.tracker.inferred:
        # Said here, where nothing comes after: no later scan of this process sees a change.
        log.warning(
            "no baseline for %s: what it holds now is taken for the image's, and what is "
            "not recorded yet stays so; %s (a baseline made with `pkgckpt baseline` names it)",
            env.where(),
            "the running daemon does not track it: a later install there needs another snapshot"
            if beside is not None
            else "a running daemon records the changes it sees",
        )
    committed = checkpoint.commit(session)
    uncaptured: dict[str, str] = {}
    refused = None
    if config.artifacts:
        # The manifest is on the store first: a capture that fails loses nothing.
        before = committed.body if committed is not None else session.tracker.body()
        within = max(0.0, deadline - time.monotonic())
        try:
            left, failed = art.capture_now(session, config, targets, within)
        except PkgckptError as e:
            left, failed, refused = {}, {}, str(e)
        else:
            uncaptured = {**art.never(session, targets), **left, **failed}
            committed = checkpoint.commit(session) or committed
            if beside is None:
                art.tidy(session, config, before, session.tracker.body())
                remember(config, uncaptured)
        if failed:
            refused = f"could not capture {len(failed)} package(s): " + "; ".join(
                f"{k}: {v}" for k, v in sorted(failed.items())
            )
    return SnapshotResult(
        generation=committed.generation if committed else session.generation,
        committed=committed is not None,
        uncaptured=uncaptured,
        refused=refused,
    )


def _captured(result: SnapshotResult, said: str = "") -> SnapshotResult:
    """`result`, once no capture of it failed; else StoreError saying why, after `said`
    (what was done before)."""
    if result.refused is not None:
        raise StoreError(f"{said}{result.refused}")
    return result


def _ask_daemon(config: Config, state: status.DaemonState) -> SnapshotResult:
    """SIGHUP the daemon `running` vouched for (this user's `pkgckpt daemon`, this store
    and key, started when its private status file says); wait for its rescan count.

    The whole wait is bounded by `shutdown_timeout`: the preStop hook's budget, which the
    pod's grace period counts before the daemon's own flush. Once the daemon answered, the
    manifest is on the store (or `pending` says why not); captures it still runs at the
    bound go on in the background, are captured again at its next start if SIGTERM stops
    them, and are reported as still running (exit 0), never waited for."""
    before = state.rescans
    os.kill(state.pid, signal.SIGHUP)
    wait = max(config.shutdown_timeout, 1.0)
    deadline = time.monotonic() + wait
    while True:
        time.sleep(0.02)
        late = time.monotonic() >= deadline
        now = status.read_state(config)
        if now is None or not status.running(now, config):
            raise PkgckptError(f"the daemon (pid {state.pid}) stopped before checkpointing")
        if now.rescans > before and now.unread is not None:
            raise StoreError(f"the daemon (pid {state.pid}) {now.unread}: nothing was changed")
        if now.rescans > before and (late or not now.capturing):
            if now.pending:
                raise StoreError(
                    f"the daemon could not commit {now.pending} change(s): {now.last_error}"
                )
            if now.capture_failed and not now.capturing:
                raise StoreError(
                    f"the daemon could not capture {len(now.capture_failed)} package(s): "
                    + "; ".join(f"{k}: {now.uncaptured.get(k, '')}" for k in now.capture_failed)
                )
            return SnapshotResult(
                uncaptured=now.uncaptured,
                generation=now.generation,
                committed=now.generation != state.generation,
                by_daemon=True,
                capturing=now.capturing,
                untracked=_untracked(config, now),
                pid=state.pid,
            )
        if late:
            raise PkgckptError(f"the daemon (pid {state.pid}) did not answer within {wait:.0f} s")


def _untracked(config: Config, state: status.DaemonState) -> tuple[str, ...]:
    """The environments `config` names that the daemon of `state` does not track, by the
    directory each path leads to (a venv named through a link is the venv)."""
    if state.tracked is None:
        return ()
    theirs = {os.path.realpath(p) for p in state.tracked}
    named = dict.fromkeys(str(p) for p in (*config.env, *config.r_lib))
    return tuple(p for p in named if os.path.realpath(p) not in theirs)
