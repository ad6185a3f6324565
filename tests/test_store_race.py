"""Two writers of one key at the same moment (a user's two notebook servers, a pod
replaced while the old one still flushes, a new pod's restore while the old daemon
commits): neither replaces the other's generation."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from test_store_merge import ENV, IMAGE, first_record, installs, pkgs, recorded, session

from pkgckpt import manifest
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
