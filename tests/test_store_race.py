"""Two writers of one key at the same moment (a user's two notebook servers, a pod
replaced while the old one still flushes, a new pod's restore while the old daemon
commits): neither replaces the other's generation, and manifest.json never goes back to
an older one for good."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from test_store_merge import ENV, IMAGE, first_record, installs, pkgs, recorded, session

from pkgckpt import manifest, record
from pkgckpt.checkpoint import Observation, commit
from pkgckpt.store import Store, init_store


@pytest.fixture
def store(tmp_path: Path) -> Store:
    init_store(tmp_path / "store")
    return Store(tmp_path / "store", "alice")


def before_write(
    monkeypatch: pytest.MonkeyPatch, writer: Store, other: Callable[[], None]
) -> list[int]:
    """Run `other` once, when `writer` has picked its generation number and is about to
    write it (a writer whose fsyncs are slow); the numbers `writer` wrote with."""
    real = Store._write
    numbers: list[int] = []

    def write(self: Store, dfd: int, parts: Any, generation: int, *args: Any, **kw: Any) -> None:
        if self is writer:
            if not numbers:
                other()
            numbers.append(generation)
        real(self, dfd, parts, generation, *args, **kw)

    monkeypatch.setattr(Store, "_write", write)
    return numbers


def names(m: manifest.Manifest) -> set[str]:
    delta = m.body.delta(ENV)
    assert delta is not None
    return {f"{p.name}=={p.version}" for p in (*delta.added, *delta.changed)}


def test_a_generation_number_taken_meanwhile_is_never_replaced(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Writer B picks generation 2; writer A commits generation 2 first. B does not replace
    A's files: it folds A's generation in and writes 3, which holds both installs; A's 2
    stays kept as A wrote it."""
    first_record(store, "wa==1")
    a = session(Store(store.root, store.key))
    b = session(Store(store.root, store.key))
    b.tracker.observe(ENV, Observation({**IMAGE, **pkgs("wa==1", "wb==1")}))
    numbers = before_write(monkeypatch, b.store, lambda: installs(a, "wa==1", "wx==1"))
    written = commit(b)
    assert recorded(store) == {"wa==1", "wb==1", "wx==1"}
    assert numbers == [2, 3]
    assert written is not None and written.generation == 3
    theirs = store.read_generation(2)
    assert theirs is not None and names(theirs) == {"wa==1", "wx==1"}
    assert store.generations() == [3, 2, 1]


def test_an_older_generation_landing_over_a_newer_manifest_json_is_written_over(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A restore's bookkeeping amends generation 1, read a moment ago; the daemon commits 2
    before the amend's rename lands, which puts 1 back over it. The amending writer sees
    2 after its rename and commits again above it: manifest.json holds the daemon's
    install and the restore's bookkeeping."""
    first_record(store, "wa==1")
    daemon = session(Store(store.root, store.key))
    restore = session(Store(store.root, store.key))
    restore.stored = restore.tracker.body()  # what it read: its bookkeeping may amend it
    failing = manifest.Failing(name="wa", version="1", reason="not on the index")
    restore.tracker.adopt(
        record.with_failures(restore.tracker.body(), [record.Outcome(env=ENV, failed=(failing,))])
    )
    numbers = before_write(monkeypatch, restore.store, lambda: installs(daemon, "wa==1", "wx==1"))
    written = commit(restore)
    current = Store(store.root, store.key).read()
    assert current is not None and names(current) == {"wa==1", "wx==1"}
    assert numbers == [1, 3], "an amend of 1, then a new generation above the daemon's"
    assert written is not None and written.generation == current.generation == 3
    delta = current.body.delta(ENV)
    assert delta is not None and delta.failing == (failing,)


def test_an_older_generation_left_over_manifest_json_is_not_what_the_next_commit_takes(
    store: Store,
) -> None:
    """manifest.json holds generation 1 again after 2 was written (its writer died between
    its rename and its look for a newer generation). The next writer's commit folds 2 in
    before writing 3: the install only 2 recorded stays."""
    first_record(store, "wa==1")
    installs(session(Store(store.root, store.key)), "wa==1", "wx==1")
    (store.path / "manifest.json").write_bytes((store.path / "manifest.1.json").read_bytes())
    late = session(Store(store.root, store.key))
    installs(late, "wa==1", "wb==1")
    assert recorded(store) == {"wa==1", "wb==1", "wx==1"}
    assert Store(store.root, store.key).generations()[0] == 3
