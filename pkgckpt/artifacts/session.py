"""The artifact cache inside a checkpoint session: what the daemon and `snapshot` share.

pending(session, targets, skip) -> list[Job]
    The recorded packages to capture now: no artifact yet, capturable, and not in
    `skip` (the ones this process already failed to capture, by `key()`).
attach(session, results) -> tuple[int, dict[str, str]]
    Record each captured artifact in the session's record (`Tracker.attach`: only
    for the very install captured); how many were, and the failures, `key()` -> reason.
    The next commit amends the generation on the store with them (`checkpoint.commit`).
capture_now(session, config, targets, within) -> tuple[dict[str, str], dict[str, str]]
    `snapshot`: capture every pending package, and every package whose pooled artifact
    left the pool (pruned, deleted by its owner), in a worker (`Background`) stopped
    after `within` seconds, then attach; the packages not captured and why: those it
    never will be or had no time for, and those whose capture failed for a reason that
    may pass (the store).
tidy(session, config, before, after, collect=True)
    After a commit: date what left the record, then GC to the quota. Not while a
    capture worker runs (`collect=False`): what it wrote is referenced once attached.
never(session, targets) -> dict[str, str]
    Recorded packages that are never captured (editable, directory, conda), why.
keep(session) -> set[str]
    The artifacts GC must not remove (`quota.protected`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from ..checkpoint import Session
from ..config import Config
from ..errors import PkgckptError, StoreError
from ..inventory import Target
from ..manifest import Artifact, Body, Environment, Package
from . import Job, Result, missing, pool, quota


def key(env: Environment, package: Package) -> str:
    """How a package is named in status and in the skip list: `name==version (where)`."""
    return f"{package.name}=={package.version} ({env.where()})"


def pending(session: Session, targets: Iterable[Target], skip: Mapping[str, str]) -> list[Job]:
    body = session.tracker.body()
    found = missing(body, ((t.env, t.roots) for t in targets))
    return [j for j in found if key(j.env, j.package) not in skip]


def attach(session: Session, results: Iterable[Result]) -> tuple[int, dict[str, str]]:
    attached = 0
    failed: dict[str, str] = {}
    for r in results:
        if r.artifact is not None:
            attached += session.tracker.attach(r.env, r.package, r.artifact)
        else:
            failed[key(r.env, r.package)] = r.reason or "not captured"
    return attached, failed


def keep(session: Session) -> set[str]:
    return quota.protected(session.store, session.tracker.body())


def lost(session: Session, config: Config, targets: Iterable[Target]) -> list[Job]:
    """Recorded packages of `targets` whose pooled artifact the pool no longer holds
    (or holds at another size)."""
    jobs: list[Job] = []
    body = session.tracker.body()
    for t in targets:
        delta = body.delta(t.env)
        for p in (*delta.added, *delta.changed) if delta is not None else ():
            if p.artifact is None or not p.artifact.pooled:
                continue
            if not _pooled(config, p.artifact):
                jobs.append(Job(env=t.env, roots=tuple(t.roots), package=p))
    return jobs


def _pooled(config: Config, artifact: Artifact) -> bool:
    if config.artifact_pool is None:
        return False
    try:
        return pool.present(config.artifact_pool, artifact.sha256, artifact.size)
    except PkgckptError:  # a pool refused now: captured again, under the key this time
        return False


def capture_now(
    session: Session, config: Config, targets: Iterable[Target], within: float
) -> tuple[dict[str, str], dict[str, str]]:
    targets = list(targets)
    jobs = pending(session, targets, {}) + lost(session, config, targets)
    if not jobs:
        return {}, {}
    from .background import Background

    # A child, as in the daemon, so that the bound holds: a capture stalled in the file
    # system (a hung NFS home, a slow store) is stopped with its temp files removed.
    # Not at idle priority: someone waits for it.
    worker = Background(config, session.store, idle=False)
    if not worker.start(jobs, quota.used(session.store), keep(session)):
        raise StoreError("the artifact capture worker could not start")
    results = worker.wait(within)
    # By name: a package's source may hold a dict (URL hashes), and an environment has
    # one install of a name.
    done = {(r.env, r.package.name) for r in results}
    late = {
        key(j.env, j.package): f"not captured within shutdown_timeout ({within:.0f} s): "
        "the daemon or the next snapshot captures it"
        for j in jobs
        if (j.env, j.package.name) not in done
    }
    _, never = attach(session, (r for r in results if not r.retry))
    failed = {key(r.env, r.package): r.reason or "capture failed" for r in results if r.retry}
    return {**never, **late}, failed


def tidy(
    session: Session, config: Config, before: Body, after: Body, *, collect: bool = True
) -> None:
    quota.note_dropped(session.store, before, after)
    if collect and quota.used(session.store) > config.artifact_quota:
        quota.collect(session.store, config.artifact_quota, quota.protected(session.store, after))


def never(session: Session, targets: Iterable[Target]) -> dict[str, str]:
    """Recorded packages of `targets` that are never captured, known from the record
    alone (editable and directory installs, kinds without a capturer), with the reason."""
    from . import CAPTURERS, uncapturable

    found: dict[str, str] = {}
    body = session.tracker.body()
    for t in targets:
        delta = body.delta(t.env)
        if delta is None:
            continue
        for p in (*delta.added, *delta.changed):
            why = uncapturable(p)
            if why is None and t.env.kind not in CAPTURERS:
                why = f"{t.env.kind} packages are not captured"
            if why is not None and p.artifact is None:
                found[key(t.env, p)] = why
    return found
