"""The artifact cache inside a checkpoint session: what the daemon and `snapshot` share.

pending(session, targets, skip) -> list[Job]
    The recorded packages to capture now: no artifact yet, capturable, and not in
    `skip` (the ones this process already failed to capture, by `key()`).
lost(session, config, targets, skip, files) -> list[Job]
    The other recorded packages to capture now: those whose artifact is gone (`gone`),
    not in `skip`; captured again from the package installed, when it still is at the
    recorded version (else `Uncapturable`). `files`: the key's artifacts
    (`Store.artifacts()`, which the quota lists anyway).
gone(config, artifacts, files) -> set[Artifact]
    The recorded `artifacts` the store no longer holds at their size: under the key, by
    the listing `files`; pooled, by a stat each in the pool (pruned, deleted by its owner).
attach(session, results) -> tuple[int, dict[str, str]]
    Record each captured artifact in the session's record (`Tracker.attach`: only
    for the very install captured); how many were, and the failures, `key()` -> reason.
    The next commit amends the generation on the store with them (`checkpoint.commit`).
capture_now(session, config, targets, within) -> tuple[dict[str, str], dict[str, str]]
    `snapshot`: capture every package pending or lost, in a worker (`Background`)
    stopped after `within` seconds, then attach; the packages not captured and why:
    those it never will be or had no time for, and those whose capture failed for a
    reason that may pass (the store).
tidy(session, config, before, after, collect=True)
    After a commit: date what left the record, then GC to the quota. Not while a
    capture worker runs (`collect=False`): what it wrote is referenced once attached.
never(session, targets) -> dict[str, str]
    Recorded packages that are never captured (editable, directory, conda), why.
keep(session) -> set[str]
    The artifacts GC must not remove (`quota.protected`).
"""

from __future__ import annotations

import contextlib
import os
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


def lost(
    session: Session,
    config: Config,
    targets: Iterable[Target],
    skip: Mapping[str, str],
    files: Mapping[str, os.stat_result],
) -> list[Job]:
    targets = list(targets)
    body = session.tracker.body()
    # A misfit is `pending` already, whether its file is there or not.
    taken = {(j.env, j.package.name) for j in missing(body, ((t.env, t.roots) for t in targets))}
    recorded = [
        Job(env=t.env, roots=tuple(t.roots), package=p)
        for t in targets
        for p in _recorded(body, t.env)
        if p.artifact is not None and (t.env, p.name) not in taken
    ]
    found = gone(config, (j.package.artifact for j in recorded if j.package.artifact), files)
    return [
        j for j in recorded if j.package.artifact in found and key(j.env, j.package) not in skip
    ]


def _recorded(body: Body, env: Environment) -> tuple[Package, ...]:
    delta = body.delta(env)
    return (*delta.added, *delta.changed) if delta is not None else ()


def gone(
    config: Config, artifacts: Iterable[Artifact], files: Mapping[str, os.stat_result]
) -> set[Artifact]:
    artifacts = set(artifacts)
    pooled = {(a.sha256, a.size) for a in artifacts if a.pooled}
    held: set[tuple[str, int]] = set()
    if pooled and config.artifact_pool is not None:
        # A pool refused now holds nothing: captured again, under the key this time.
        with contextlib.suppress(PkgckptError):
            held = pool.held(config.artifact_pool, pooled)

    def lost(a: Artifact) -> bool:
        if a.pooled:
            return (a.sha256, a.size) not in held
        found = files.get(a.file)
        return found is None or found.st_size != a.size

    return {a for a in artifacts if lost(a)}


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


def capture_now(
    session: Session, config: Config, targets: Iterable[Target], within: float
) -> tuple[dict[str, str], dict[str, str]]:
    targets = list(targets)
    files = session.store.artifacts()
    jobs = pending(session, targets, {}) + lost(session, config, targets, {}, files)
    if not jobs:
        return {}, {}
    from .background import Background

    # A child, as in the daemon, so that the bound holds: a capture stalled in the file
    # system (a hung NFS home, a slow store) is stopped with its temp files removed.
    # Not at idle priority: someone waits for it.
    worker = Background(config, session.store, idle=False)
    if not worker.start(jobs, quota.bytes_of(files), keep(session)):
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
