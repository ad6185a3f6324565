"""Every commit merges with what is on the store: another generation, a deleted key
directory or an older copy is folded into the record, never the other way round."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import msgspec
import pytest

from pkgckpt import manifest
from pkgckpt.checkpoint import Observation, Session, Tracker, commit, confirm
from pkgckpt.manifest import Baseline, Body, Delta, Environment, Inventory, Package
from pkgckpt.store import Store, init_store

ENV = Environment(kind="python", path="/opt/venv")
R = Environment(kind="r", path="/opt/R/library")


def pkgs(*specs: str) -> dict[str, Package]:
    return {n: Package(name=n, version=v) for n, v in (spec.split("==") for spec in specs)}


IMAGE = pkgs("numpy==1.26.0", "six==1.16.0")
BASELINE = Baseline(environments=(Inventory(env=ENV, packages=tuple(IMAGE.values())),))


@pytest.fixture
def store(tmp_path: Path) -> Store:
    init_store(tmp_path / "store")
    return Store(tmp_path / "store", "alice")


def session(store: Store) -> Session:
    """A daemon's session on `store`, started from what it holds."""
    found = store.read()
    return Session(
        store=store,
        tracker=Tracker(BASELINE, found),
        baseline_origin="test",
        generation=found.generation if found is not None else None,
        on_store=manifest.encode_body(found.body if found is not None else Body()),
    )


def recorded(store: Store, env: Environment = ENV) -> set[str]:
    found = Store(store.root, store.key).read()
    assert found is not None
    delta = found.body.delta(env)
    assert delta is not None
    return {f"{p.name}=={p.version}" for p in (*delta.added, *delta.changed)}


def installs(s: Session, *specs: str) -> None:
    s.tracker.observe(ENV, Observation({**IMAGE, **pkgs(*specs)}))
    assert commit(s) is not None


def test_an_unchanged_store_is_checked_without_a_full_read(store: Store) -> None:
    """After a commit, check() finds manifest.json as written: no re-read, nothing to fold."""
    s = session(store)
    installs(s, "a==1")
    assert store.check() == (False, None)


def test_another_generation_on_the_store_is_folded_in(store: Store) -> None:
    """Packages another writer recorded join the record; the daemon's own stay."""
    s = session(store)
    installs(s, "a==1")
    other = Store(store.root, store.key)
    extra = Delta(env=ENV, added=tuple(pkgs("a==1", "b==2").values()))
    r_lib = Delta(env=R, added=tuple(pkgs("cli==3.6.0").values()))
    assert other.commit(Body(environments=(extra, r_lib))) is not None
    installs(s, "a==1", "c==3")
    assert recorded(store) == {"a==1", "b==2", "c==3"}
    assert recorded(store, R) == {"cli==3.6.0"}


def test_a_deleted_key_directory_is_written_whole_again(store: Store) -> None:
    """The key directory removed under the daemon: the next commit writes the whole record,
    at a generation above every one written before."""
    s = session(store)
    installs(s, "a==1")
    installs(s, "a==1", "b==2")
    shutil.rmtree(store.path)
    assert not confirm(s)
    done = commit(s)
    assert done is not None and done.generation == 3
    assert recorded(store) == {"a==1", "b==2"}
    assert confirm(s)


def test_a_key_directory_rolled_back_to_an_older_copy_loses_nothing(
    store: Store, tmp_path: Path
) -> None:
    """A snapshot restore of the directory brings back an older generation: the record
    keeps the newer installs and the generations keep growing."""
    s = session(store)
    installs(s, "a==1")
    shutil.copytree(store.path, tmp_path / "old", symlinks=True)
    installs(s, "a==1", "b==2")
    shutil.rmtree(store.path)
    shutil.copytree(tmp_path / "old", store.path, symlinks=True)
    assert not confirm(s)
    done = commit(s)
    assert done is not None and done.generation == 3
    assert recorded(store) == {"a==1", "b==2"}


def test_an_uninstall_observed_here_is_not_brought_back_by_an_older_store(
    store: Store, tmp_path: Path
) -> None:
    """A package this process saw uninstalled stays out when a rollback still records it."""
    s = session(store)
    installs(s, "a==1", "b==2")
    shutil.copytree(store.path, tmp_path / "old", symlinks=True)
    installs(s, "a==1")
    shutil.rmtree(store.path)
    shutil.copytree(tmp_path / "old", store.path, symlinks=True)
    assert commit(s) is not None
    assert recorded(store) == {"a==1"}


def test_an_edit_of_the_current_manifest_is_noticed_by_the_next_commit(store: Store) -> None:
    """Same inode, other bytes (edited in place): the head differs, so it is read again."""
    s = session(store)
    installs(s, "a==1")
    current = store.path / "manifest.json"
    data = current.read_bytes()
    with current.open("r+b") as f:
        f.write(data[:30] + (b"0" if data[30:31] != b"0" else b"1"))
    changed, found = store.check()
    assert changed and found is not None and found.generation == 1  # manifest.1.json


def test_an_edit_in_place_that_keeps_the_checksum_digits_is_noticed(store: Store) -> None:
    """A byte of the body edited in place leaves the head (schema and checksum) as it was:
    the file's stamp (mtime, ctime) still tells `check` to read it again."""
    s = session(store)
    installs(s, "a==1")
    current = store.path / "manifest.json"
    data = current.read_bytes()
    at = data.index(b'"version":"1"', data.index(b'"body":'))
    time.sleep(0.02)  # past the kernel's coarse timestamp tick after the commit's write
    with current.open("r+b") as f:
        f.seek(at + len(b'"version":"'))
        f.write(b"7")
    assert current.read_bytes()[:200] == data[:200]
    changed, found = store.check()
    assert changed and found is not None and found.generation == 1  # manifest.1.json


def test_a_store_with_no_valid_generation_is_replaced_by_the_next_commit(store: Store) -> None:
    """Every generation corrupt: nothing to fold in, and the commit writes the record."""
    s = session(store)
    installs(s, "a==1")
    for path in store.path.glob("manifest*.json"):
        path.write_bytes(b"\0" * 100)
    assert store.check() == (True, None)
    installs(s, "a==1", "b==2")
    assert recorded(store) == {"a==1", "b==2"}


def test_a_key_directory_deleted_right_after_the_rename_is_noticed(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The directory deleted between a commit's rename and its stamp: the commit cannot
    stamp its file, so the next check and commit look again and write it back."""
    s = session(store)
    installs(s, "a==1")
    real = Store._write

    def write_then_delete(self: Store, dfd: int, parts: object, generation: int) -> None:
        real(self, dfd, parts, generation)  # type: ignore[arg-type]
        shutil.rmtree(self.path)

    monkeypatch.setattr(Store, "_write", write_then_delete)
    installs(s, "a==1", "b==2")
    monkeypatch.undo()
    assert not store.path.exists()
    assert not confirm(s)
    assert commit(s) is not None
    assert recorded(store) == {"a==1", "b==2"}


def test_what_a_newer_pkgckpt_knows_of_the_interpreter_amends_the_generation(
    store: Store,
) -> None:
    """A record written before the ABI tag was recorded, read by a daemon that records it:
    the tag fills in the newest generation under its own number (no kept generation is
    spent on it). Another interpreter version is a change: a new generation."""
    before = Environment(kind="python", path="/opt/venv", interpreter="3.11.7")
    first = Tracker(
        Baseline(environments=(Inventory(env=before, packages=tuple(IMAGE.values())),)), None
    )
    first.observe(before, Observation(IMAGE))
    first.observe(before, Observation({**IMAGE, **pkgs("a==1")}))
    assert store.commit(first.body()) is not None

    def daemon() -> Session:
        found = store.read()
        assert found is not None
        return Session(
            store=store,
            tracker=Tracker(BASELINE, found),
            baseline_origin="test",
            generation=found.generation,
            on_store=manifest.encode_body(found.body),
            stored=found.body,
        )

    s = daemon()
    tagged = msgspec.structs.replace(before, abi="cp311")
    s.tracker.observe(tagged, Observation({**IMAGE, **pkgs("a==1")}))
    done = commit(s)
    assert done is not None and done.generation == 1
    assert store.generations() == [1]
    for found in (Store(store.root, store.key).read(), store.read_generation(1)):
        assert found is not None and found.body.environments[0].env == tagged

    s = daemon()
    newer = msgspec.structs.replace(tagged, interpreter="3.12.1", abi="cp312")
    s.tracker.observe(newer, Observation({**IMAGE, **pkgs("a==1")}))
    done = commit(s)
    assert done is not None and done.generation == 2
    assert store.generations() == [2, 1]
