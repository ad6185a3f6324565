"""Artifact records spend none of the user's kept generations: a capture amends the
generation it annotates under its own number, unless anything else changed on the way."""

from __future__ import annotations

from pathlib import Path

import msgspec
from artifact_kit import baselined_venv, cache_on
from daemon_kit import World
from wheelhouse import Dist, build_wheel

from pkgckpt.manifest import Artifact, Body, Delta, Environment, Package
from pkgckpt.store import Store, init_store

ENV = Environment(kind="python", path="/venv")


def _body(*names: str, captured: bool = False) -> Body:
    packages = tuple(
        Package(
            name=n,
            version="1",
            artifact=Artifact(file=f"{n}-1-py3-none-any.whl", sha256="0" * 64, size=1)
            if captured
            else None,
        )
        for n in names
    )
    return Body.of([Delta(env=ENV, added=packages)])


def test_an_amend_rewrites_the_newest_generation_under_its_own_number(tmp_path: Path) -> None:
    """The annotated body replaces generation 1 in manifest.json and in its kept copy;
    no generation is added."""
    init_store(tmp_path)
    store = Store(tmp_path, "k")
    first = store.commit(_body("a"))
    assert first is not None and first.generation == 1
    amended = store.commit(_body("a", captured=True), amend=1)
    assert amended is not None and amended.generation == 1
    assert store.generations() == [1]
    for found in (Store(tmp_path, "k").read(), store.read_generation(1)):
        assert found is not None and found.body == _body("a", captured=True)


def test_an_amend_after_another_writer_is_a_new_generation(tmp_path: Path) -> None:
    """When the store no longer holds the generation the caller annotates as newest (a
    forget, another writer), the annotated body is a new generation: nothing on the store
    is overwritten."""
    init_store(tmp_path)
    store = Store(tmp_path, "k")
    store.commit(_body("a"))
    other = Store(tmp_path, "k")
    other.read()
    assert other.commit(_body("a", "b")) is not None
    written = store.commit(_body("a", captured=True), amend=1)
    assert written is not None and written.generation == 3
    assert store.generations() == [3, 2, 1]
    again = store.read_generation(2)
    assert again is not None and again.body == _body("a", "b")


def test_snapshots_with_artifacts_keep_as_many_installs_back_as_without(tmp_path: Path) -> None:
    """Three installs, each followed by `snapshot` (manifest, then its artifacts) with
    `keep_generations = 2`: the store keeps generations 3 and 2, each with the artifacts
    of what it records, so `revert` reaches the second install and finds its artifacts."""
    world = cache_on(World.make(tmp_path))
    world.env["PKGCKPT_KEEP_GENERATIONS"] = "2"
    wheels = tmp_path / "wheels"
    for name in ("one", "two", "three"):
        build_wheel(Dist(name, "1.0"), wheels)
    venv, flags = baselined_venv(world, tmp_path)
    for generation, name in enumerate(("one", "two", "three"), start=1):
        venv.install(wheels, name)
        snap = world.pkgckpt("snapshot", *flags, timeout=300)
        assert snap.returncode == 0, snap.stdout + snap.stderr
        assert f"wrote generation {generation}\n" in snap.stdout, snap.stdout
    store = Store(world.store, world.key)
    assert store.generations() == [3, 2]
    second = store.read_generation(2)
    assert second is not None
    recorded = {p.name: p for d in second.body.deltas() for p in d.added}
    assert set(recorded) == {"one", "two"}
    assert all(p.artifact is not None for p in recorded.values()), recorded
    history = world.pkgckpt("history", *flags, "--json")
    assert history.returncode == 0, history.stderr
    assert msgspec.json.decode(history.stdout)["kept"] == [3, 2]
    preview = world.pkgckpt("revert", *flags, "2", "--dry-run")
    assert preview.returncode == 0, preview.stdout + preview.stderr
    assert "Revert generation 3 to the record of generation 2." in preview.stdout
    assert "the 2 package(s) of generation 2" in preview.stdout, preview.stdout
