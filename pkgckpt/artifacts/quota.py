"""The artifact quota (`artifact_quota`, 5 GiB per key by default) and its garbage
collection.

    referenced(bodies) -> set[str]
        The artifact names (under the key, not pooled) that manifests reference.
    protected(store, current) -> set[str]
        What GC must never remove: the artifacts `current` and every kept generation
        reference (a `revert` to any of them finds its artifacts).
    collect(store, quota, keep, need=0) -> list[str]
        Remove artifacts outside `keep`, least recently referenced first, until the
        key's artifacts plus `need` bytes fit the quota; the names removed. Runs after a
        commit (the daemon, `snapshot`) and before a capture that would not fit.
    note_dropped(store, before, after)
        Date the artifacts `after` no longer references as referenced now: a file's
        mtime is when it was last referenced (or captured), which is the GC's order.

Pooled artifacts are not the key's: they count against no quota and no key removes them
(an administrator prunes the pool by age: `pool.prune`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

from ..errors import ManifestError, PkgckptError
from ..logs import getLogger
from ..manifest import Body
from ..store import Store

log = getLogger(__name__)


def referenced(bodies: Iterable[Body]) -> set[str]:
    names: set[str] = set()
    for body in bodies:
        for delta in body.deltas():
            for p in (*delta.added, *delta.changed):
                if p.artifact is not None and not p.artifact.pooled:
                    names.add(p.artifact.file)
    return names


def protected(store: Store, current: Body) -> set[str]:
    """`current`'s artifacts and every kept generation's. A kept generation that cannot
    be read protects everything: nothing is removed on a guess."""
    bodies = [current]
    for generation in store.generations():
        try:
            found = store.read_generation(generation)
        except ManifestError as e:
            log.warning("artifact GC skipped: %s", e)
            return set(store.artifacts())
        if found is not None:
            bodies.append(found.body)
    return referenced(bodies)


def used(store: Store) -> int:
    """Bytes of the key's artifacts."""
    return bytes_of(store.artifacts())


def bytes_of(files: Mapping[str, os.stat_result]) -> int:
    """Bytes of the artifacts in a listing of them (`Store.artifacts()`)."""
    return sum(st.st_size for st in files.values())


def collect(store: Store, quota: int, keep: set[str], need: int = 0) -> list[str]:
    """See the module docstring; raises StoreError when the store fails."""
    files = store.artifacts()
    total = sum(st.st_size for st in files.values())
    removed: list[str] = []
    if total + need <= quota:
        return removed
    candidates = sorted((st.st_mtime_ns, name) for name, st in files.items() if name not in keep)
    for _, name in candidates:
        if total + need <= quota:
            break
        store.remove_artifact(name)
        total -= files[name].st_size
        removed.append(name)
    if removed:
        log.info("artifact quota: removed %d unreferenced artifact(s)", len(removed))
    return removed


def note_dropped(store: Store, before: Body, after: Body) -> None:
    for name in sorted(referenced([before]) - referenced([after])):
        try:
            store.touch_artifact(name)
        except PkgckptError as e:  # only the GC's order suffers
            log.debug("cannot date %s: %s", name, e)
