"""Every commit merges with what is on the store: another generation, a deleted key
directory or an older copy is folded into the record, never the other way round."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import msgspec
import pytest
from daemon_kit import Daemon, World, eventually, uv_install, uv_uninstall
from wheelhouse import Dist, Venv, build_wheel, make_venv

from pkgckpt import checkpoint, manifest, record
from pkgckpt.checkpoint import Observation, Session, Tracker, commit, confirm
from pkgckpt.inventory import Identity
from pkgckpt.manifest import Baseline, Body, Delta, Environment, Inventory, Package, Rebased
from pkgckpt.store import Store, init_store

ENV = Environment(kind="python", path="/opt/venv")
ENV2 = Environment(kind="python", path="/opt/venv2")
R = Environment(kind="r", path="/opt/R/library")
CONDA = Environment(kind="conda", path="/opt/conda/envs/work")


def pkgs(*specs: str) -> dict[str, Package]:
    return {n: Package(name=n, version=v) for n, v in (spec.split("==") for spec in specs)}


IMAGE = pkgs("numpy==1.26.0", "six==1.16.0")
BASELINE = Baseline(
    environments=(
        Inventory(env=ENV, packages=tuple(IMAGE.values())),
        Inventory(env=ENV2, packages=tuple(IMAGE.values())),
    )
)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    init_store(tmp_path / "store")
    return Store(tmp_path / "store", "alice")


def session(store: Store, *, inferred: bool = False) -> Session:
    """A daemon's session on `store`, started from what it holds; `inferred`: without a
    baseline (the image's state inferred from its first scan)."""
    found = store.read()
    return Session(
        store=store,
        tracker=Tracker(None if inferred else BASELINE, found),
        baseline_origin="inferred" if inferred else "test",
        generation=found.generation if found is not None else None,
        on_store=manifest.encode_body(found.body if found is not None else Body()),
    )


def first_record(store: Store, *specs: str) -> None:
    """What a first writer recorded on `store`: `specs` installed over the image."""
    first = Tracker(BASELINE, None)
    first.observe(ENV, Observation(IMAGE))
    first.observe(ENV, Observation({**IMAGE, **pkgs(*specs)}))
    assert store.commit(first.body()) is not None


def stored(store: Store) -> Delta:
    """The store's delta for ENV."""
    found = store.read()
    assert found is not None
    delta = found.body.delta(ENV)
    assert delta is not None
    return delta


def recorded(store: Store, env: Environment = ENV) -> set[str]:
    found = Store(store.root, store.key).read()
    assert found is not None
    delta = found.body.delta(env)
    assert delta is not None
    return {f"{p.name}=={p.version}" for p in (*delta.added, *delta.changed)}


def installs(s: Session, *specs: str, env: Environment = ENV) -> None:
    s.tracker.observe(env, Observation({**IMAGE, **pkgs(*specs)}))
    assert commit(s) is not None


def upgrade(name: str, version: str, was: str) -> Package:
    """A `changed` entry: the image's `was` replaced by the user's `version`."""
    return Package(name=name, version=version, replaced=was)


def pins(packages: tuple[Package, ...]) -> list[str]:
    return sorted(f"{p.name}=={p.version}" for p in packages)


def revert_elsewhere(other: Store, generation: int) -> None:
    """The user reverts the record to `generation` through another writer of the key
    (`other`: a daemon in another container)."""
    found, old = other.read(), other.read_generation(generation)
    assert found is not None and old is not None
    assert other.commit(record.reverted(found.body, old)) is not None


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


@pytest.mark.parametrize("again", ["", "renewed", "remade"])
def test_another_writers_forget_holds_unless_made_again_here_since(
    store: Store, again: str
) -> None:
    """The user forgets b and the removal of six through another writer of the key (a
    daemon in another container). This daemon recorded both and still finds them as they
    were: its next commit keeps them out of the record, and the forget in its history.
    Found installed anew here after that forget (`--force-reinstall`, or in a venv made
    again at the path and moved over it), b is recorded again."""
    s = session(store)
    here = {**IMAGE, **pkgs("a==1", "b==2")}
    first = Identity(0, ((1, 2),))
    s.tracker.observe(ENV, Observation(here, identity=first))
    del here["six"]
    s.tracker.observe(ENV, Observation(here, identity=first))
    assert commit(s) is not None
    other = Store(store.root, store.key)
    found = other.read()
    assert found is not None
    assert other.commit(record.forgotten(found.body, ["b", "six"], (ENV,))) is not None
    time.sleep(0.01)  # the forget's time is cut to the millisecond
    renewed = frozenset({"b"} if again == "renewed" else ())
    directory = Identity(0, ((1, 3 if again == "remade" else 2),))
    s.tracker.observe(ENV, Observation(here, identity=directory, renewed=renewed))
    s.tracker.observe(ENV, Observation({**here, **pkgs("c==3")}, identity=directory))
    assert commit(s) is not None
    assert recorded(store) == ({"a==1", "b==2", "c==3"} if again else {"a==1", "c==3"})
    delta = stored(store)
    assert delta.removed == ()
    assert pins(delta.forgotten) == ([] if again else ["b==2"])
    assert [(e.action, e.name) for e in Store(store.root, store.key).read().body.events] == [
        ("forget", "b"),
        ("forget", "six"),
    ]


@pytest.mark.parametrize("written", [True, False], ids=["written", "pending"])
def test_another_writers_revert_holds_for_the_removal_it_took_out(
    store: Store, written: bool
) -> None:
    """This daemon records b and the removal of six over generation 1 (a); the user
    reverts to generation 1 through another writer of the key. Both stay out of this
    daemon's next commit, which records c: the removal, which no `forgotten` entry keeps,
    was written back. Not written yet when the revert came (in the quiet window), they
    were not in what the revert took out, and stay recorded."""
    s = session(store)
    here = {**IMAGE, **pkgs("a==1")}
    installs(s, "a==1")
    here = {**here, **pkgs("b==2")}
    del here["six"]
    s.tracker.observe(ENV, Observation(here))
    if written:
        assert commit(s) is not None
    other = Store(store.root, store.key)
    revert_elsewhere(other, 1)
    time.sleep(0.01)
    s.tracker.observe(ENV, Observation({**here, **pkgs("c==3")}))
    assert commit(s) is not None
    if written:
        assert recorded(store) == {"a==1", "c==3"}
        assert stored(store).removed == ()
    else:
        assert recorded(store) == {"a==1", "b==2", "c==3"}
        assert pins(stored(store).removed) == ["six==1.16.0"]


def test_another_writers_revert_in_the_scans_millisecond_holds(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A record's times are cut to the millisecond: a scan made in the millisecond a
    revert is stamped with came before it as far as the record can tell, and the revert
    holds for the entry that scan found."""
    moment = 1_800_000_000.1237
    stamp = datetime.fromtimestamp(moment, timezone.utc).isoformat(timespec="milliseconds")
    monkeypatch.setattr(checkpoint, "now", lambda: moment)
    monkeypatch.setattr(record, "now_iso", lambda: stamp)
    s = session(store)
    installs(s, "a==1")
    here = {**IMAGE, **pkgs("a==1", "b==2")}
    s.tracker.observe(ENV, Observation(here))
    assert commit(s) is not None
    revert_elsewhere(Store(store.root, store.key), 1)
    s.tracker.observe(ENV, Observation({**here, **pkgs("c==3")}))
    assert commit(s) is not None
    assert recorded(store) == {"a==1", "c==3"}


def test_another_writers_revert_of_a_forget_holds_here(store: Store) -> None:
    """The user forgets b through another writer of the key, and this daemon's next
    commit keeps it out; then the user reverts to the generation before the forget, there
    too. b, still installed here, is recorded again and stays so at this daemon's next
    commit: the forget it had taken in kept it out for good."""
    s = session(store)
    here = {**IMAGE, **pkgs("a==1", "b==2")}
    installs(s, "a==1", "b==2")
    other = Store(store.root, store.key)
    found = other.read()
    assert found is not None
    assert other.commit(record.forgotten(found.body, ["b"], (ENV,))) is not None
    here = {**here, **pkgs("c==3")}
    s.tracker.observe(ENV, Observation(here))
    assert commit(s) is not None
    assert recorded(store) == {"a==1", "c==3"}
    revert_elsewhere(other, 1)
    assert recorded(store) == {"a==1", "b==2"}
    s.tracker.observe(ENV, Observation({**here, **pkgs("d==4")}))
    assert commit(s) is not None
    assert recorded(store) == {"a==1", "b==2", "d==4"}
    assert pins(stored(store).forgotten) == ["c==3"]


def test_a_forget_made_here_after_another_writers_revert_holds(store: Store) -> None:
    """Another writer reverts to generation 1 (b) while this daemon cannot read the store,
    and the user forgets b here meanwhile: the forget came last, and b stays out of the
    record once this daemon commits. The revert's entry for b was taken over it."""
    s = session(store)
    here = {**IMAGE, **pkgs("b==2")}
    installs(s, "b==2")
    here = {**here, **pkgs("c==3")}
    installs(s, "b==2", "c==3")
    other = Store(store.root, store.key)
    revert_elsewhere(other, 1)
    time.sleep(0.01)
    s.tracker.adopt(record.forgotten(s.tracker.body(), ["b"], (ENV,)))
    assert commit(s) is not None
    assert recorded(store) == set()
    assert pins(stored(store).forgotten) == ["b==2", "c==3"]


def test_an_old_revert_cut_from_the_daemons_history_is_no_news(store: Store) -> None:
    """The record's history is full (`HISTORY_LIMIT`), its second oldest event a revert.
    This daemon forgets b and c, which cuts that revert from its own history, before
    another writer adds one event of its own to the store's, which keeps it. The revert
    is not taken for a new one at the fold: b and c stay forgotten."""
    limit = manifest.HISTORY_LIMIT
    old = "2020-01-01T00:00:00.000+00:00"
    events = tuple(
        manifest.Event(action="forget", time=old, env=ENV2, name=f"x{i}") for i in range(limit)
    )
    events = (events[0], manifest.Event(action="revert", time=old, generation=1), *events[2:])
    installs(session(store), "b==2", "c==3")
    found = store.read()
    assert found is not None
    assert store.commit(msgspec.structs.replace(found.body, events=events)) is not None
    s = session(store)
    s.tracker.observe(ENV, Observation({**IMAGE, **pkgs("b==2", "c==3")}))
    s.tracker.adopt(record.forgotten(s.tracker.body(), ["b", "c"], (ENV,)))
    other = Store(store.root, store.key)
    found = other.read()
    assert found is not None
    theirs = manifest.Event(action="forget", time=checkpoint.now_iso(), env=ENV2, name="y")
    assert other.commit(
        Body.of(found.body.environments, events=(*found.body.events, theirs)[-limit:])
    )
    assert commit(s) is not None
    assert recorded(store) == set()
    kept = Store(store.root, store.key).read()
    assert kept is not None
    assert [e.name for e in kept.body.events][-3:] == ["y", "b", "c"]


def test_a_revert_after_a_read_without_a_write_holds_for_the_removal(store: Store) -> None:
    """This daemon's removal of six is on the store; it reads another writer's generation
    and writes nothing (a request it refused, a write that failed); then the user reverts
    to generation 1 there. The removal stays out at this daemon's next commit: it did not
    know the body it had read, and wrote the removal back."""
    s = session(store)
    installs(s, "a==1")
    here = {**IMAGE, **pkgs("a==1")}
    del here["six"]
    s.tracker.observe(ENV, Observation(here))
    assert commit(s) is not None
    other = Store(store.root, store.key)
    found = other.read()
    assert found is not None
    extra = Delta(env=ENV2, added=tuple(pkgs("x==1").values()))
    assert other.commit(Body.of((*found.body.environments, extra), events=found.body.events))
    checkpoint.refresh(s)
    revert_elsewhere(other, 1)
    time.sleep(0.01)
    s.tracker.observe(ENV, Observation({**here, **pkgs("c==3")}))
    assert commit(s) is not None
    assert stored(store).removed == ()
    assert recorded(store) == {"a==1", "c==3"}


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

    def write_then_delete(
        self: Store, dfd: int, parts: object, generation: int, *, new: bool
    ) -> None:
        real(self, dfd, parts, generation, new=new)  # type: ignore[arg-type]
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


def test_the_version_an_r_addition_hides_amends_the_generation(store: Store) -> None:
    """A record written before R additions recorded the version they hide (ckptA 0.5 in
    the user's library over the site library's 1.0), read by a daemon that records it:
    it fills in the newest generation under its own number, as the ABI tag does."""
    user = Environment(kind="r", path="/home/u/R", role="user", interpreter="4.2.2")
    site = Environment(kind="r", path="/usr/lib/R/site-library", role="site", interpreter="4.2.2")
    mine = Package(name="ckptA", version="0.5")
    old = Body(environments=(Delta(env=user, added=(mine,), image=manifest.image_identity(())),))
    assert store.commit(old) is not None
    found = store.read()
    assert found is not None
    shipped = (Package(name="ckptA", version="1.0"),)
    baseline = Baseline(environments=(Inventory(env=user), Inventory(env=site, packages=shipped)))
    s = Session(
        store=store,
        tracker=Tracker(baseline, found),
        baseline_origin="test",
        generation=found.generation,
        on_store=manifest.encode_body(found.body),
        stored=found.body,
    )
    s.tracker.observe(user, Observation({"ckptA": mine}))
    done = commit(s)
    assert done is not None and done.generation == 1
    assert store.generations() == [1]
    again = Store(store.root, store.key).read()
    assert again is not None
    (delta,) = again.body.environments
    assert [(p.name, p.replaced) for p in delta.added] == [("ckptA", "1.0")]


def test_another_writers_upgrade_of_an_image_package_stays_in_the_record(store: Store) -> None:
    """Another writer of the key (a second container of the same user) records an upgrade
    of a package the image ships; this process never saw that package change, so its
    next commit keeps the upgrade beside its own install."""
    s = session(store)
    installs(s, "a==1")
    other = Store(store.root, store.key)
    theirs = Delta(
        env=ENV, added=(Package(name="a", version="1"),), changed=(upgrade("six", "2.0", "1.16.0"),)
    )
    assert other.commit(Body(environments=(theirs,))) is not None
    installs(s, "a==1", "b==2")
    assert recorded(store) == {"a==1", "b==2", "six==2.0"}
    found = store.read()
    assert found is not None
    delta = found.body.delta(ENV)
    assert delta is not None and delta.changed == (upgrade("six", "2.0", "1.16.0"),)


def test_what_this_process_saw_of_a_package_wins_over_another_writers_entry(
    store: Store,
) -> None:
    """An image package this process saw upgraded, and a recorded install it finds as
    recorded, keep this process's record against another writer's versions of them."""
    first_record(store, "a==1")
    s = session(store)  # restored: finds a==1 as recorded
    s.tracker.observe(ENV, Observation({**IMAGE, **pkgs("a==1")}))
    installs(s, "a==1", "numpy==2.0")
    other = Store(store.root, store.key)
    theirs = Delta(
        env=ENV,
        added=(Package(name="a", version="2"),),
        changed=(upgrade("numpy", "1.9", "1.26.0"), upgrade("six", "2.0", "1.16.0")),
    )
    assert other.commit(Body(environments=(theirs,))) is not None
    installs(s, "a==1", "numpy==2.0", "b==2")
    assert recorded(store) == {"a==1", "b==2", "numpy==2.0", "six==2.0"}


def test_an_older_copy_does_not_replace_a_recorded_version(store: Store, tmp_path: Path) -> None:
    """A key directory rolled back to an older copy: a recorded install this process
    never found keeps the newer record's version; what only the copy holds joins."""
    other = Store(store.root, store.key)
    old = Delta(
        env=ENV, added=tuple(pkgs("a==1").values()), changed=(upgrade("six", "2.0", "1.16.0"),)
    )
    assert other.commit(Body(environments=(old,))) is not None
    shutil.copytree(store.path, tmp_path / "old", symlinks=True)
    assert (
        other.commit(Body(environments=(Delta(env=ENV, added=tuple(pkgs("a==2").values())),)))
        is not None
    )
    s = session(store)
    s.tracker.observe(ENV, Observation(IMAGE))  # a restore has not run yet
    shutil.rmtree(store.path)
    shutil.copytree(tmp_path / "old", store.path, symlinks=True)
    installs(s, "b==2")
    assert recorded(store) == {"a==2", "b==2", "six==2.0"}


def test_another_writers_held_back_entry_keeps_its_form(store: Store) -> None:
    """Another writer's entry recorded on another image, held back by its restore, joins
    the record as it was recorded (`replaced`, the mark and the old image), so that a
    restore still reads it against the image it was recorded on."""
    s = session(store)
    installs(s, "a==1")
    held = upgrade("numpy", "1.20", "1.25")  # a downgrade on the old image
    mark = Rebased(
        name="numpy", version="1.20", state="held-back", reason="pandas needs numpy>=1.26"
    )
    theirs = Delta(
        env=ENV,
        added=tuple(pkgs("a==1").values()),
        changed=(held,),
        image="old-image",
        rebased=(mark,),
    )
    assert Store(store.root, store.key).commit(Body(environments=(theirs,))) is not None
    installs(s, "a==1", "b==2")
    delta = stored(store)
    assert delta.changed == (held,)
    assert delta.rebased == (mark,)
    assert delta.image == "old-image"
    assert pins(delta.added) == ["a==1", "b==2"]
    assert delta.mixed, "a and b were recorded on this image, not on the old one"


def test_without_a_baseline_another_writers_upgrade_is_kept_as_an_upgrade(store: Store) -> None:
    """The baseline lost (the image's state inferred from the first scan): another
    writer's upgrade of a package found at the image's version is still recorded as an
    upgrade of it, and an install of its that the first scan found joins as an addition."""
    first_record(store, "a==1")
    s = session(store, inferred=True)
    s.tracker.observe(ENV, Observation({**IMAGE, **pkgs("a==1", "z==1")}))
    assert s.tracker.inferred == [ENV]
    theirs = Delta(
        env=ENV,
        added=tuple(pkgs("a==1", "z==1").values()),
        changed=(upgrade("six", "2.0", "1.16.0"),),
    )
    assert Store(store.root, store.key).commit(Body(environments=(theirs,))) is not None
    installs(s, "a==1", "z==1", "b==2")
    assert recorded(store) == {"a==1", "b==2", "six==2.0", "z==1"}
    found = store.read()
    assert found is not None
    delta = found.body.delta(ENV)
    assert delta is not None and delta.changed == (upgrade("six", "2.0", "1.16.0"),)


def removals(store: Store, env: Environment = ENV) -> list[str]:
    found = Store(store.root, store.key).read()
    delta = found.body.delta(env) if found is not None else None
    return pins(delta.removed) if delta is not None else []


def test_another_writers_removal_of_an_image_package_stays_in_the_record(store: Store) -> None:
    """Another writer of the key records the user's uninstall of an image package; here
    it is still installed at the image's version (the removal is not replayed here yet),
    so the next commits keep the removal, and the next restore still makes it."""
    s = session(store)
    installs(s, "a==1")
    theirs = Delta(env=ENV, added=tuple(pkgs("a==1").values()), removed=(IMAGE["six"],))
    assert Store(store.root, store.key).commit(Body(environments=(theirs,))) is not None
    installs(s, "a==1", "b==2")
    assert recorded(store) == {"a==1", "b==2"}
    assert removals(store) == ["six==1.16.0"]
    installs(s, "a==1", "b==2", "c==3")  # six still found as the image ships it
    assert removals(store) == ["six==1.16.0"]
    assert s.tracker.state(ENV) == {**pkgs("numpy==1.26.0"), **pkgs("a==1", "b==2", "c==3")}


def test_what_this_process_finds_installed_wins_over_another_writers_removal(
    store: Store,
) -> None:
    """Another writer's removals: of an image package found here at the image's version,
    taken; of one found here at the user's version, and of a recorded install found here
    that another image shipped, not: this process sees those installed."""
    first_record(store, "numpy==2.0", "a==1")
    s = session(store)  # restored: finds numpy==2.0 and a==1 as recorded
    s.tracker.observe(ENV, Observation({**IMAGE, **pkgs("numpy==2.0", "a==1")}))
    theirs = Delta(
        env=ENV,
        removed=(IMAGE["numpy"], IMAGE["six"], Package(name="a", version="1")),
        image="another-image",
    )
    assert Store(store.root, store.key).commit(Body(environments=(theirs,))) is not None
    installs(s, "numpy==2.0", "a==1", "b==2")
    assert recorded(store) == {"a==1", "b==2", "numpy==2.0"}
    assert removals(store) == ["six==1.16.0"]


def test_another_writers_removal_does_not_take_out_a_recorded_upgrade(store: Store) -> None:
    """A recorded upgrade not restored here yet (the image's version found) stays when
    another writer records a removal of that package: only an uninstall seen here takes
    an install out of the record. Its removal of another image package joins."""
    first_record(store, "numpy==2.0")
    s = session(store)
    s.tracker.observe(ENV, Observation(IMAGE))  # a restore has not run yet
    theirs = Delta(env=ENV, removed=(IMAGE["numpy"], IMAGE["six"]))
    assert Store(store.root, store.key).commit(Body(environments=(theirs,))) is not None
    installs(s, "b==2")
    assert recorded(store) == {"b==2", "numpy==2.0"}
    assert removals(store) == ["six==1.16.0"]


def test_another_writers_held_back_removal_keeps_its_form(store: Store) -> None:
    """A removal another writer recorded on an older image, held back by its restore onto
    this one (an image package needs it), joins as it was recorded: the old image's
    version, the mark and the old image, so that the next restore still rebases it."""
    s = session(store)
    installs(s, "a==1")
    was = Package(name="six", version="1.15.0")
    mark = Rebased(name="six", version="1.15.0", state="held-back", reason="numpy needs six")
    theirs = Delta(
        env=ENV,
        added=tuple(pkgs("a==1").values()),
        removed=(was,),
        image="old-image",
        rebased=(mark,),
    )
    assert Store(store.root, store.key).commit(Body(environments=(theirs,))) is not None
    installs(s, "a==1", "b==2")  # six still installed: the restore held its removal back
    delta = stored(store)
    assert delta.removed == (was,)
    assert delta.rebased == (mark,)
    assert delta.image == "old-image"
    assert pins(delta.added) == ["a==1", "b==2"]
    assert delta.mixed, "a and b were recorded on this image, not on the old one"


def test_without_a_baseline_another_writers_removal_is_kept(store: Store) -> None:
    """The baseline lost (the image's state inferred from the first scan): another
    writer's removals, of a package the first scan found and of one it did not, join the
    record as they were recorded."""
    first_record(store, "a==1")
    s = session(store, inferred=True)
    s.tracker.observe(ENV, Observation({**IMAGE, **pkgs("a==1")}))
    assert s.tracker.inferred == [ENV]
    gone = Package(name="gone", version="3")
    theirs = Delta(env=ENV, added=tuple(pkgs("a==1").values()), removed=(gone, IMAGE["six"]))
    assert Store(store.root, store.key).commit(Body(environments=(theirs,))) is not None
    installs(s, "a==1", "b==2")
    installs(s, "a==1", "b==2", "c==3")
    assert recorded(store) == {"a==1", "b==2", "c==3"}
    assert removals(store) == ["gone==3", "six==1.16.0"]


def test_an_older_copy_adds_a_removal_but_not_over_a_recorded_entry(
    store: Store, tmp_path: Path
) -> None:
    """A key directory rolled back to a copy that records two removals: the one the record
    holds nothing of joins it; the other does not replace the newer record's upgrade."""
    other = Store(store.root, store.key)
    old = Delta(env=ENV, removed=(IMAGE["numpy"], IMAGE["six"]))
    assert other.commit(Body(environments=(old,))) is not None
    shutil.copytree(store.path, tmp_path / "old", symlinks=True)
    newer = Delta(env=ENV, changed=(upgrade("numpy", "2.0", "1.26.0"),))
    assert other.commit(Body(environments=(newer,))) is not None
    s = session(store)
    s.tracker.observe(ENV, Observation(IMAGE))  # a restore has not run yet
    shutil.rmtree(store.path)
    shutil.copytree(tmp_path / "old", store.path, symlinks=True)
    installs(s, "b==2")
    assert recorded(store) == {"b==2", "numpy==2.0"}
    assert removals(store) == ["six==1.16.0"]


def test_a_forgotten_removal_is_not_brought_back_by_another_writer(store: Store) -> None:
    """The user tells this process to forget a recorded removal; another writer's
    generation still records it: it stays forgotten, while that writer's other removal
    joins the record."""
    first = Tracker(BASELINE, None)
    first.observe(ENV, Observation(IMAGE))
    first.observe(ENV, Observation(pkgs("numpy==1.26.0")))
    assert store.commit(first.body()) is not None
    s = session(store)
    s.tracker.observe(ENV, Observation(pkgs("numpy==1.26.0")))  # six removed, as recorded
    s.tracker.adopt(record.forgotten(s.tracker.body(), ["six"], stamp="t"))
    assert commit(s) is not None
    assert removals(store) == []
    theirs = Delta(env=ENV, removed=(IMAGE["numpy"], IMAGE["six"]))
    assert Store(store.root, store.key).commit(Body(environments=(theirs,))) is not None
    s.tracker.observe(ENV, Observation(pkgs("numpy==1.26.0", "b==2")))
    assert commit(s) is not None
    assert removals(store) == ["numpy==1.26.0"]
    theirs = Delta(env=ENV, added=tuple(pkgs("b==2").values()), removed=(IMAGE["six"],))
    assert Store(store.root, store.key).commit(Body(environments=(theirs,))) is not None
    s.tracker.observe(ENV, Observation(pkgs("numpy==1.26.0", "b==2", "c==3")))
    assert commit(s) is not None
    assert recorded(store) == {"b==2", "c==3"}
    assert removals(store) == ["numpy==1.26.0"]


def test_an_environment_another_process_tracks_is_taken_as_that_process_wrote_it(
    store: Store,
) -> None:
    """Two processes of one key, each scanning its own environment: an uninstall and an
    upgrade the other one saw in its environment stay when this one commits next."""
    a = session(store)
    b = session(Store(store.root, store.key))
    installs(b, "alpha==1", "my==1", env=ENV2)
    installs(a, "beta==1")
    assert recorded(store, ENV2) == {"alpha==1", "my==1"}
    installs(b, "my==2", env=ENV2)  # alpha uninstalled, my upgraded
    installs(a, "beta==1", "gamma==1")
    assert recorded(store) == {"beta==1", "gamma==1"}
    assert recorded(store, ENV2) == {"my==2"}


def test_a_forget_not_written_yet_survives_another_writers_generation(store: Store) -> None:
    """This process forgets a package of an environment it does not scan; another writer's
    generation arrives before the forget is written: the forget stays, the other writer's
    new install joins."""
    a = session(store)
    b = session(Store(store.root, store.key))
    installs(b, "alpha==1", "my==1", env=ENV2)
    installs(a, "beta==1")
    a.tracker.adopt(record.forgotten(a.tracker.body(), ["alpha"], scope=[ENV2], stamp="t"))
    installs(b, "alpha==1", "my==1", "zeta==1", env=ENV2)
    assert commit(a) is not None
    assert recorded(store, ENV2) == {"my==1", "zeta==1"}
    found = store.read()
    assert found is not None
    delta = found.body.delta(ENV2)
    assert delta is not None and [p.name for p in delta.forgotten] == ["alpha"]


def test_a_conda_environment_no_scan_reads_stays_through_a_merge(store: Store) -> None:
    """Another writer's generation folded in keeps the record of a conda environment
    neither process scans."""
    kept = Delta(env=CONDA, added=(Package(name="tiny", version="1.0", build="0"),))
    assert store.commit(Body.of([kept])) is not None
    a = session(store)
    b = session(Store(store.root, store.key))
    installs(b, "alpha==1", env=ENV2)
    installs(a, "beta==1")
    found = store.read()
    assert found is not None
    assert found.body.delta(CONDA) == kept


def test_a_record_equal_to_the_merged_store_is_confirmed_without_a_write(store: Store) -> None:
    """Another writer's generation already holds the whole record: nothing is written,
    and the store is confirmed to hold it (a daemon stopping then says so, exit 0)."""
    a = session(store)
    b = session(Store(store.root, store.key))
    installs(a, "beta==1")
    installs(b, "alpha==1", env=ENV2)
    assert commit(a) is None
    assert confirm(a)


# -- real daemons: two containers of one user, one key, one store ----------------------


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World.make(tmp_path)


@pytest.fixture
def wheels(tmp_path: Path) -> Path:
    out = tmp_path / "wheels"
    for name, version in [
        ("alpha", "1.0"),
        ("beta", "1.0"),
        ("gamma", "1.0"),
        ("image-pkg", "1.0"),
    ]:
        build_wheel(Dist(name, version), out)
    return out


def entries(world: World, prefix: Path) -> list[str] | None:
    found = world.manifest()
    delta = found.body.delta(Environment(kind="python", path=str(prefix))) if found else None
    if delta is None:
        return None
    return sorted(f"{p.name}=={p.version}" for p in (*delta.added, *delta.changed))


def test_a_daemon_keeps_another_writers_upgrade_of_an_image_package(
    world: World, wheels: Path
) -> None:
    """The daemon records an install; another writer of the key commits an upgrade of a
    package the image ships; the daemon's next commit keeps that upgrade."""
    venv = world.image_venv(wheels, "image-pkg==1.0", aged=True)
    daemon = world.daemon(
        *world.flags(venv.prefix), "--baseline", str(world.tmp / "b.json"), "--quiet-ms", "100"
    ).start()
    try:
        uv_install(venv.python, wheels, "alpha==1.0", env=world.env)
        eventually(lambda: entries(world, venv.prefix) == ["alpha==1.0"], 30, "alpha recorded")
        other = Store(world.store, world.key)
        found = other.read()
        assert found is not None
        (delta,) = found.body.environments
        theirs = msgspec.structs.replace(delta, changed=(upgrade("image-pkg", "2.0", "1.0"),))
        assert other.commit(Body(environments=(theirs,))) is not None
        uv_install(venv.python, wheels, "beta==1.0", env=world.env)
        eventually(lambda: "beta==1.0" in (entries(world, venv.prefix) or []), 30, "beta")
        assert entries(world, venv.prefix) == ["alpha==1.0", "beta==1.0", "image-pkg==2.0"]
        assert daemon.stop() == 0
    finally:
        daemon.close()


def test_a_daemon_keeps_another_writers_removal_of_an_image_package(
    world: World, wheels: Path
) -> None:
    """The daemon records an install; another writer of the key commits the user's
    uninstall of a package the image ships, still installed here; the daemon's next
    commits keep that removal."""
    venv = world.image_venv(wheels, "image-pkg==1.0", aged=True)
    daemon = world.daemon(
        *world.flags(venv.prefix), "--baseline", str(world.tmp / "b.json"), "--quiet-ms", "100"
    ).start()

    def removed() -> list[str]:
        found = world.manifest()
        delta = (
            found.body.delta(Environment(kind="python", path=str(venv.prefix))) if found else None
        )
        return pins(delta.removed) if delta is not None else []

    try:
        uv_install(venv.python, wheels, "alpha==1.0", env=world.env)
        eventually(lambda: entries(world, venv.prefix) == ["alpha==1.0"], 30, "alpha recorded")
        other = Store(world.store, world.key)
        found = other.read()
        assert found is not None
        (delta,) = found.body.environments
        gone = Package(name="image-pkg", version="1.0")
        assert other.commit(Body(environments=(msgspec.structs.replace(delta, removed=(gone,)),)))
        uv_install(venv.python, wheels, "beta==1.0", env=world.env)
        eventually(lambda: "beta==1.0" in (entries(world, venv.prefix) or []), 30, "beta")
        assert entries(world, venv.prefix) == ["alpha==1.0", "beta==1.0"]
        assert removed() == ["image-pkg==1.0"]
        seen = world.generation()
        uv_install(venv.python, wheels, "gamma==1.0", env=world.env)
        eventually(lambda: world.generation() > seen, 30, "gamma's commit")
        assert removed() == ["image-pkg==1.0"]
        assert daemon.stop() == 0
    finally:
        daemon.close()
    assert removed() == ["image-pkg==1.0"]


def two_containers(world: World, wheels: Path) -> tuple[Venv, Venv]:
    """Two venvs of one baseline: one for each container's daemon (`container`)."""
    v1 = world.image_venv(wheels)
    v2 = make_venv(world.tmp / "venv2", with_pip=False)
    made = world.pkgckpt(
        "baseline", "--env", str(v1.prefix), "--env", str(v2.prefix),
        "--output", str(world.tmp / "b.json"),
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    return v1, v2


def container(world: World, prefix: Path, name: str) -> Daemon:
    """A daemon of the key scanning `prefix`, with a runtime directory of its own (tmp/NAME),
    as in a container of its own."""
    d = world.daemon(
        *world.flags(prefix), "--baseline", str(world.tmp / "b.json"), "--quiet-ms", "100"
    )
    d.log = world.tmp / f"{name}.log"
    (world.tmp / name).mkdir(mode=0o700)
    return d.start(extra_env={"XDG_RUNTIME_DIR": str(world.tmp / name)})


def test_two_daemons_of_one_key_keep_each_others_environments(world: World, wheels: Path) -> None:
    """Daemon A scans one venv, daemon B another (two containers of one user). B sees
    alpha uninstalled from its venv; A's next commit does not write alpha back, and both
    stop saying every change is on the store."""
    v1, v2 = two_containers(world, wheels)
    a = container(world, v1.prefix, "a")
    b = container(world, v2.prefix, "b")
    try:
        uv_install(v2.python, wheels, "alpha==1.0", "gamma==1.0", env=world.env)
        eventually(lambda: entries(world, v2.prefix) == ["alpha==1.0", "gamma==1.0"], 30, "B")
        uv_install(v1.python, wheels, "beta==1.0", env=world.env)
        eventually(lambda: entries(world, v1.prefix) == ["beta==1.0"], 30, "A's beta")
        uv_uninstall(v2.python, "alpha", env=world.env)
        eventually(lambda: entries(world, v2.prefix) == ["gamma==1.0"], 30, "B's uninstall")
        seen = world.generation()
        uv_install(v1.python, wheels, "alpha==1.0", env=world.env)  # in A's venv
        eventually(lambda: world.generation() > seen, 30, "A's commit")
        assert entries(world, v1.prefix) == ["alpha==1.0", "beta==1.0"]
        assert entries(world, v2.prefix) == ["gamma==1.0"]
        assert a.stop() == 0
        assert b.stop() == 0, b.output()
    finally:
        a.close()
        b.close()
    assert "every change is on the store" in b.output()
    assert entries(world, v2.prefix) == ["gamma==1.0"]


@pytest.mark.parametrize("change", ["forget", "revert"])
def test_a_forget_served_in_one_container_holds_in_the_other(
    world: World, wheels: Path, change: str
) -> None:
    """The user forgets alpha of container B's venv, or reverts to the generation before
    B recorded it, through container A's daemon. B's next commit (its own install of beta)
    keeps alpha out of the record, and the record's history keeps the change; alpha
    installed again in B is recorded again."""
    v1, v2 = two_containers(world, wheels)
    a = container(world, v1.prefix, "a")
    b = container(world, v2.prefix, "b")
    try:
        uv_install(v2.python, wheels, "gamma==1.0", env=world.env)
        eventually(lambda: entries(world, v2.prefix) == ["gamma==1.0"], 30, "B's gamma")
        before = world.generation()
        uv_install(v2.python, wheels, "alpha==1.0", env=world.env)
        eventually(lambda: entries(world, v2.prefix) == ["alpha==1.0", "gamma==1.0"], 30, "alpha")
        ask = ["forget", "alpha", "--env", str(v2.prefix)]
        if change == "revert":
            ask = ["revert", str(before), "--yes"]
        done = subprocess.run(
            [sys.executable, "-m", "pkgckpt", *ask, *world.flags()[:4]],
            capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
            env={**world.env, "XDG_RUNTIME_DIR": str(world.tmp / "a")},
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert "daemon wrote" in done.stdout + done.stderr
        assert entries(world, v2.prefix) == ["gamma==1.0"]
        seen = world.generation()
        uv_install(v2.python, wheels, "beta==1.0", env=world.env)
        eventually(lambda: world.generation() > seen, 30, "B's commit of beta")
        assert entries(world, v2.prefix) == ["beta==1.0", "gamma==1.0"]
        found = world.manifest()
        assert found is not None
        assert [e.action for e in found.body.events] == [change]
        uv_install(v2.python, wheels, "--reinstall", "alpha==1.0", env=world.env)
        eventually(
            lambda: entries(world, v2.prefix) == ["alpha==1.0", "beta==1.0", "gamma==1.0"],
            30, "alpha installed again",
        )  # fmt: skip
        assert a.stop() == 0, a.output()
        assert b.stop() == 0, b.output()
    finally:
        a.close()
        b.close()
    assert entries(world, v2.prefix) == ["alpha==1.0", "beta==1.0", "gamma==1.0"]


def _restored(s: Session, failed: tuple[str, ...], marks: tuple[Rebased, ...] = ()) -> None:
    """What a restore hands the daemon: `failed` (name==version) failed, `marks` made."""
    failing = tuple(
        manifest.Failing(name=n, version=v, reason="not on the index")
        for n, v in (spec.split("==") for spec in failed)
    )
    outcome = record.Outcome(env=ENV, failed=failing, rebased=marks)
    s.tracker.adopt(record.with_failures(s.tracker.body(), [outcome]))


def test_a_restores_bookkeeping_amends_the_generation_and_costs_none(store: Store) -> None:
    """Failure counts and a rebase's marks, which the daemon writes for a restore, annotate
    the record: they amend the generation on the store, so a package failing at every
    container start never pushes the user's generations out of `keep_generations`. The
    next install is a new generation that carries them."""
    s = session(store)
    installs(s, "a==1", "b==2")
    mark = Rebased(name="a", version="1", state="held-back", reason="six needs a<1")
    for count in (1, 2, 3):
        _restored(s, ("b==2",), (mark,))
        done = commit(s)
        assert done is not None and done.generation == 1, count
        assert store.generations() == [1]
        for found in (Store(store.root, store.key).read(), store.read_generation(1)):
            assert found is not None
            delta = found.body.delta(ENV)
            assert delta is not None
            assert [(f.name, f.count) for f in delta.failing] == [("b", count)]
            assert delta.rebased == (mark,)
    installs(s, "a==1", "b==2", "c==3")
    found = store.read()
    assert found is not None and found.generation == 2
    delta = found.body.delta(ENV)
    assert delta is not None and [(f.name, f.count) for f in delta.failing] == [("b", 3)]


def test_a_restores_bookkeeping_after_another_writers_generation_is_a_new_one(
    store: Store,
) -> None:
    """Another writer's generation on the store since the daemon last read it is folded
    in, and the failure counts ride on a new generation: that writer's is not amended."""
    s = session(store)
    installs(s, "a==1")
    other = Store(store.root, store.key)
    theirs = Delta(env=ENV, added=tuple(pkgs("a==1", "b==2").values()))
    assert other.commit(Body(environments=(theirs,))) is not None
    _restored(s, ("a==1",))
    done = commit(s)
    assert done is not None and done.generation == 3
    assert store.generations() == [3, 2, 1]
    kept = store.read_generation(2)
    assert kept is not None and kept.body == Body(environments=(theirs,))
    delta = done.body.delta(ENV)
    assert delta is not None
    assert pins(delta.added) == ["a==1", "b==2"]
    assert [(f.name, f.count) for f in delta.failing] == [("a", 1)]
