"""Invariant 1 in the merge the daemon and `snapshot` share (`pkgckpt.checkpoint`)."""

from __future__ import annotations

import time
from pathlib import Path

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pkgckpt import manifest
from pkgckpt.checkpoint import Observation, Tracker, commit, open_session
from pkgckpt.config import Config
from pkgckpt.inventory import Identity
from pkgckpt.manifest import Baseline, Body, Delta, Environment, Inventory, Manifest, Package
from pkgckpt.store import Store, init_store

ENV = Environment(kind="python", path="/opt/venv", interpreter="3.11.7")
OTHER = Environment(kind="r", path="/usr/lib/R/site-library")


def pkgs(*specs: str) -> dict[str, Package]:
    out = {}
    for spec in specs:
        name, version = spec.split("==")
        out[name] = Package(name=name, version=version)
    return out


IMAGE = pkgs("numpy==1.26.0", "pip==24.0", "six==1.16.0")
BASELINE = Baseline(environments=(Inventory(env=ENV, packages=tuple(IMAGE.values())),))
IMAGE_ID = manifest.image_identity(IMAGE.values())


def recorded(added=(), changed=(), removed=(), extra=()) -> Manifest:
    delta = Delta(
        env=ENV,
        added=tuple(pkgs(*added).values()),
        changed=tuple(pkgs(*changed).values()),
        removed=tuple(pkgs(*removed).values()),
    )
    return Manifest(generation=3, body=Body(environments=(delta, *extra)))


def names(delta: Delta | None) -> dict[str, list[str]]:
    assert delta is not None
    return {
        "added": [f"{p.name}=={p.version}" for p in delta.added],
        "changed": [f"{p.name}=={p.version}" for p in delta.changed],
        "removed": [f"{p.name}=={p.version}" for p in delta.removed],
    }


@pytest.mark.parametrize(("mine", "theirs"), [("user", "site"), ("named", "named")])
def test_an_r_user_librarys_copy_of_a_site_package_records_the_version_it_hides(
    mine: str, theirs: str
) -> None:
    """R searches the user's library before the site ones: `install.packages()` of an
    older ckptA than the site library's 1.0 into the user library is a downgrade of what
    R loads, recorded with the version it hides, as a user site's copy of its prefix's
    package is; one the site libraries do not ship hides nothing. Libraries named by
    `--r-lib` are read against each other, as a restore reads them."""
    user = Environment(kind="r", path="/home/u/R", role=mine, interpreter="4.2.2")
    site = Environment(kind="r", path="/usr/lib/R/site-library", role=theirs, interpreter="4.2.2")
    shipped = (Package(name="ckptA", version="1.0"),)
    baseline = Baseline(environments=(Inventory(env=user), Inventory(env=site, packages=shipped)))
    tracker = Tracker(baseline, None)
    tracker.observe(user, Observation({}))
    found = pkgs("ckptA==0.5", "own==2.0")
    tracker.observe(user, Observation(found))
    delta = tracker.body().delta(user)
    assert delta is not None
    assert {p.name: p.replaced for p in delta.added} == {"ckptA": "1.0", "own": None}


def test_first_scan_keeps_recorded_packages_that_are_not_installed_yet() -> None:
    """A fresh container before (or after a failed) restore loses nothing from the record."""
    t = Tracker(BASELINE, recorded(added=["requests==2.31.0"], changed=["numpy==2.0.0"]))
    changes = t.observe(ENV, Observation(IMAGE))
    assert changes == []
    assert names(t.body().delta(ENV)) == {
        "added": ["requests==2.31.0"],
        "changed": ["numpy==2.0.0"],
        "removed": [],
    }


def test_first_scan_keeps_a_recorded_removal_of_an_image_package() -> None:
    """The image package is back after a restart; the user's uninstall stays recorded."""
    t = Tracker(BASELINE, recorded(removed=["six==1.16.0"]))
    t.observe(ENV, Observation(IMAGE))
    assert names(t.body().delta(ENV))["removed"] == ["six==1.16.0"]


def test_what_restore_would_refuse_is_never_recorded() -> None:
    """A dist-info planted in a shared library with a version that is no PEP 440 one, or a
    source path with a NUL: recorded, it would make restore refuse the whole manifest, so
    it is not, and the user's own install beside it is. Planted over a recorded package,
    it takes nothing out of the record; once a valid install replaces it, that one is."""
    t = Tracker(BASELINE, recorded(added=["attrs==23.1.0"]))
    t.observe(ENV, Observation({**IMAGE, **pkgs("attrs==23.1.0")}))
    nul = Package(name="evil", version="1.0", source=manifest.DirectorySource(path="/tmp/a\0b"))
    planted = {
        **IMAGE,
        **pkgs("attrs==1 0", "bad==not a version", "mine==1.0"),
        "evil": nul,
    }
    changes = t.observe(ENV, Observation(planted))
    assert [(c.action, c.name) for c in changes] == [("install", "mine")]
    assert names(t.body().delta(ENV))["added"] == ["attrs==23.1.0", "mine==1.0"]
    changes = t.observe(ENV, Observation({**planted, **pkgs("attrs==24.1.0")}))
    assert [(c.action, c.name, c.new) for c in changes] == [("upgrade", "attrs", "24.1.0")]


def test_a_venv_made_again_seeds_only_what_its_making_wrote(tmp_path: Path) -> None:
    """A venv made again at a tracked path while the tracker ran, found made: pip, written
    before bin/activate, is its making's; setuptools, written after (Python 3.12 seeds pip
    alone, the user installed it), is the user's and recorded."""
    prefix = tmp_path / "k"
    env = Environment(kind="python", path=str(prefix))
    t = Tracker(None, recorded(), made_since=time.time() - 60)
    t.observe(env, Observation({}, trusted=False))
    (prefix / "bin").mkdir(parents=True)
    (prefix / "pyvenv.cfg").write_text("home = /usr/bin\n")
    (prefix / "bin" / "activate").write_text("")
    activated = (prefix / "bin" / "activate").stat().st_mtime_ns
    written = {"pip": activated - 10**9, "setuptools": activated + 10**9}
    found = Observation(
        pkgs("pip==24.0", "setuptools==75.0.0"),
        identity=Identity(0, ((1, 2),)),
        made=written.get,
    )
    changes = t.observe(env, found)
    assert [(c.action, c.name) for c in changes] == [("install", "setuptools")]
    assert names(t.body().delta(env))["added"] == ["setuptools==75.0.0"]


def test_a_venv_new_here_found_made_seeds_only_what_its_making_wrote(tmp_path: Path) -> None:
    """A venv made while the tracker ran, first scanned once made (the watch on its parent
    came late): as for one made again, only what was written before bin/activate is its
    making's; a setuptools the user installed after is recorded."""
    prefix = tmp_path / "k"
    env = Environment(kind="python", path=str(prefix))
    (prefix / "bin").mkdir(parents=True)
    (prefix / "pyvenv.cfg").write_text("home = /usr/bin\n")
    (prefix / "bin" / "activate").write_text("")
    activated = (prefix / "bin" / "activate").stat().st_mtime_ns
    written = {"pip": activated - 10**9, "setuptools": activated + 10**9}
    t = Tracker(None, recorded(), made_since=time.time() - 60)
    t.observe(env, Observation(pkgs("pip==24.0", "setuptools==75.0.0"), made=written.get))
    assert names(t.body().delta(env))["added"] == ["setuptools==75.0.0"]


def test_install_upgrade_and_observed_uninstall_are_recorded() -> None:
    """Seen installs and upgrades enter the record; a package seen and then gone leaves it."""
    t = Tracker(BASELINE, None)
    t.observe(ENV, Observation(IMAGE))
    changes = t.observe(ENV, Observation({**IMAGE, **pkgs("attrs==23.1.0", "numpy==2.0.0")}))
    assert [(c.action, c.name) for c in changes] == [("install", "attrs"), ("upgrade", "numpy")]
    changes = t.observe(ENV, Observation(pkgs("attrs==23.1.0", "numpy==1.25.0", "pip==24.0")))
    assert [(c.action, c.name, c.old, c.new) for c in changes] == [
        ("downgrade", "numpy", "2.0.0", "1.25.0"),
        ("remove", "six", "1.16.0", None),
    ]
    assert names(t.body().delta(ENV)) == {
        "added": ["attrs==23.1.0"],
        "changed": ["numpy==1.25.0"],
        "removed": ["six==1.16.0"],
    }
    assert [c.action for c in t.body().delta(ENV).history] == [  # type: ignore[union-attr]
        "install",
        "upgrade",
        "downgrade",
        "remove",
    ]


def test_untrusted_scan_removes_nothing_until_a_trusted_one_confirms() -> None:
    """A scan with a missing or unreadable root cannot prove an uninstall; a later one can."""
    t = Tracker(BASELINE, recorded(added=["attrs==23.1.0"]))
    t.observe(ENV, Observation({**IMAGE, **pkgs("attrs==23.1.0")}))
    assert t.observe(ENV, Observation(pkgs("pip==24.0"), trusted=False)) == []
    changes = t.observe(ENV, Observation(pkgs("pip==24.0", "numpy==1.26.0")))
    assert sorted(c.name for c in changes) == ["attrs", "six"]


def test_a_broken_or_half_installed_entry_is_not_an_uninstall() -> None:
    """A name the scanner could not read stays recorded."""
    t = Tracker(BASELINE, None)
    t.observe(ENV, Observation({**IMAGE, **pkgs("attrs==23.1.0")}))
    assert t.observe(ENV, Observation(IMAGE, uncertain=frozenset({"attrs"}))) == []
    assert names(t.body().delta(ENV))["added"] == ["attrs==23.1.0"]


def test_a_library_that_empties_at_once_is_not_a_mass_uninstall() -> None:
    """An unmounted or wiped library shrinks nothing; a lone package uninstalled is seen."""
    t = Tracker(BASELINE, None)
    t.observe(ENV, Observation({**IMAGE, **pkgs("attrs==23.1.0")}))
    assert t.observe(ENV, Observation({})) == []
    assert len(t.body().delta(ENV).added) == 1  # type: ignore[union-attr]


def test_a_one_package_library_found_empty_keeps_its_package_until_a_scan_finds_others() -> None:
    """The empty-library guard holds for one package too; a later scan of the same
    directory that finds something else confirms the absence."""
    user = Environment(kind="python", path="/opt/venv", user=True)
    t = Tracker(Baseline(environments=(Inventory(env=user),)), None)
    t.observe(user, Observation(pkgs("tqdm==4.66.0")))
    assert t.observe(user, Observation({})) == []
    assert names(t.body().delta(user))["added"] == ["tqdm==4.66.0"]
    changes = t.observe(user, Observation(pkgs("rich==13.0.0")))
    assert [(c.action, c.name) for c in changes] == [("install", "rich"), ("remove", "tqdm")]


HERE, ELSEWHERE = ((1, 100), (1, 100)), ((1, 200), (1, 201))


def test_a_root_replaced_by_another_directory_is_a_new_environment_not_uninstalls() -> None:
    """`rm -rf env && python3 -m venv env`: a bare venv where the image and the user's
    packages were records no removal; the user's records for the path stay."""
    t = Tracker(BASELINE, recorded(added=["requests==2.31.0"]))
    t.observe(ENV, Observation({**IMAGE, **pkgs("requests==2.31.0")}, identity=HERE))
    assert t.observe(ENV, Observation(pkgs("pip==24.0"), identity=ELSEWHERE)) == []
    assert names(t.body().delta(ENV)) == {
        "added": ["requests==2.31.0"],
        "changed": [],
        "removed": [],
    }


def test_removals_count_again_once_the_new_directory_was_seen() -> None:
    """After a rebuild, an uninstall seen in the new directory is recorded; an install
    into it is recorded at once."""
    t = Tracker(BASELINE, None)
    t.observe(ENV, Observation(IMAGE, identity=HERE))
    t.observe(ENV, Observation(pkgs("pip==24.0"), identity=ELSEWHERE))
    installed = t.observe(ENV, Observation(pkgs("pip==24.0", "attrs==23.1.0"), identity=ELSEWHERE))
    assert [(c.action, c.name) for c in installed] == [("install", "attrs")]
    removed = t.observe(ENV, Observation(pkgs("attrs==23.1.0"), identity=ELSEWHERE))
    assert [(c.action, c.name) for c in removed] == [("remove", "pip")]


def test_a_mount_over_a_library_and_its_removal_record_nothing() -> None:
    """A tmpfs over a one-package library (another device), then unmounted: no change."""
    lib = Environment(kind="r", path="/home/u/R/library")
    t = Tracker(Baseline(environments=(Inventory(env=lib),)), None)
    t.observe(lib, Observation(pkgs("glue==1.7.0"), identity=((1, 5),)))
    assert t.observe(lib, Observation({}, identity=((42, 1),))) == []
    assert t.observe(lib, Observation(pkgs("glue==1.7.0"), identity=((1, 5),))) == []
    assert names(t.body().delta(lib))["added"] == ["glue==1.7.0"]


def test_environments_the_tracker_does_not_scan_stay_recorded() -> None:
    """A delta recorded for an environment outside this config is carried over untouched."""
    other = Delta(env=OTHER, added=(Package(name="glue", version="1.7.0"),))
    t = Tracker(BASELINE, recorded(extra=[other]))
    t.observe(ENV, Observation(IMAGE))
    assert t.body().delta(OTHER) == other


def test_without_a_baseline_the_record_only_grows() -> None:
    """A lost baseline keeps every recorded entry, restored or not, and adds what is seen."""
    record = recorded(added=["attrs==23.1.0"], changed=["numpy==2.0.0"], removed=["six==1.16.0"])
    live = {**IMAGE, **pkgs("attrs==23.1.0", "numpy==2.0.0")}  # restored, six back
    t = Tracker(None, record)
    assert t.observe(ENV, Observation(live)) == []
    assert t.inferred == [ENV]
    assert t.body().delta(ENV) == record.body.delta(ENV)
    t.observe(ENV, Observation({**live, **pkgs("tqdm==4.66.0")}))
    assert names(t.body().delta(ENV)) == {
        "added": ["attrs==23.1.0", "tqdm==4.66.0"],
        "changed": ["numpy==2.0.0"],
        "removed": ["six==1.16.0"],
    }


def test_without_a_baseline_a_version_differing_from_the_record_is_the_image_one() -> None:
    """Unrestored changes stay recorded as changes; an observed upgrade replaces them."""
    record = recorded(changed=["numpy==2.0.0"])
    t = Tracker(None, record)
    assert t.observe(ENV, Observation(IMAGE)) == []
    assert names(t.body().delta(ENV))["changed"] == ["numpy==2.0.0"]
    t.observe(ENV, Observation({**IMAGE, **pkgs("numpy==2.1.0")}))
    assert names(t.body().delta(ENV))["changed"] == ["numpy==2.1.0"]


def test_reinstall_by_restore_does_not_rewrite_the_record() -> None:
    """REQUESTED/INSTALLER flags set by restore are not changes: the body stays equal."""
    dep = Package(name="idna", version="3.6", requested=False, installer="pip")
    record = Manifest(body=Body(environments=(Delta(env=ENV, added=(dep,), image=IMAGE_ID),)))
    t = Tracker(BASELINE, record)
    restored = Package(name="idna", version="3.6", requested=True, installer="uv")
    assert t.observe(ENV, Observation({**IMAGE, "idna": restored})) == []
    assert t.body() == record.body


# -- the property: nothing leaves the record without an observed uninstall ------------

NAMES = ["a", "b", "c", "d"]
scan = st.tuples(
    st.dictionaries(st.sampled_from(NAMES), st.sampled_from("123")),
    st.booleans(),
    st.frozensets(st.sampled_from(NAMES), max_size=1),
)


@settings(max_examples=300, deadline=None)
@given(
    image=st.dictionaries(st.sampled_from(NAMES), st.sampled_from("123")),
    record_added=st.dictionaries(st.sampled_from(NAMES), st.sampled_from("123")),
    scans=st.lists(scan, min_size=1, max_size=6),
)
def test_a_package_leaves_the_record_only_through_an_observed_uninstall(
    image: dict[str, str],
    record_added: dict[str, str],
    scans: list[tuple[dict[str, str], bool, frozenset[str]]],
) -> None:
    """A name leaves the record only after this tracker saw it installed, then gone.

    Random scans, some untrusted, some with unreadable names: "gone" means absent from a
    later trusted scan where the name was readable."""
    base = {n: Package(name=n, version=v) for n, v in image.items()}
    baseline = Baseline(environments=(Inventory(env=ENV, packages=tuple(base.values())),))
    added = {n: Package(name=n, version=v) for n, v in record_added.items() if n not in base}
    delta = Delta(env=ENV, added=tuple(added.values()))
    start = manifest.apply(base, delta)
    t = Tracker(baseline, Manifest(body=Body(environments=(delta,))))
    seen: set[str] = set()
    observed_gone: set[str] = set()
    for found, trusted, uncertain in scans:
        live = {n: Package(name=n, version=v) for n, v in found.items()}
        counts = trusted and not (not live and len(seen) > 1)
        for n in list(seen):
            if n not in live and counts and n not in uncertain:
                observed_gone.add(n)
                seen.discard(n)
        observed_gone -= live.keys()
        t.observe(ENV, Observation(live, trusted=trusted, uncertain=uncertain))
        seen |= live.keys()
        state = t.state(ENV)
        assert state is not None
        for n in (start.keys() | seen) - state.keys():
            assert n in observed_gone, f"{n} left the record without an observed uninstall"


def test_a_damaged_current_generation_is_rewritten_by_the_first_commit(tmp_path: Path) -> None:
    """After a fallback read, the next commit replaces the torn manifest.json."""
    init_store(tmp_path / "store")
    store = Store(tmp_path / "store", "alice")
    env = Environment(kind="python", path=str(tmp_path / "venv"))
    body = Body(environments=(Delta(env=env, added=(Package(name="a", version="1.0"),)),))
    store.commit(body)
    current = store.path / "manifest.json"
    torn = current.read_bytes()[:40]
    current.write_bytes(torn)
    current.chmod(0o600)
    config = Config(
        store=tmp_path / "store",
        key="alice",
        env=(tmp_path / "venv",),
        runtime_dir=tmp_path / "run",
    )
    session, _ = open_session(config, [], Store(tmp_path / "store", "alice"))
    assert session.on_store is None
    commit(session)
    assert Store(tmp_path / "store", "alice").read() is not None
    assert manifest.decode(current.read_bytes()).body == body


def test_a_vcs_package_restored_at_its_commit_does_not_rewrite_the_record() -> None:
    """Restore installs a VCS package at its recorded commit, so pip records the commit
    as the requested revision, and may spell a file URL file://localhost/: the same
    install, not an upgrade to record (which would also lose the branch asked for)."""
    sha = "0123456789abcdef0123456789abcdef01234567"
    asked = manifest.VcsSource(
        vcs="git", url="file:///src/tool", commit=sha, requested_revision="main"
    )
    recorded = Package(name="tool", version="0.3", source=asked)
    record = Manifest(body=Body(environments=(Delta(env=ENV, added=(recorded,), image=IMAGE_ID),)))
    t = Tracker(BASELINE, record)
    as_restored = manifest.VcsSource(
        vcs="git", url="file://localhost/src/tool", commit=sha, requested_revision=sha
    )
    found = Package(name="tool", version="0.3", source=as_restored)
    assert t.observe(ENV, Observation({**IMAGE, "tool": found})) == []
    assert t.body() == record.body
    moved_on = manifest.VcsSource(vcs="git", url="file:///src/tool", commit="f" * 40)
    changes = t.observe(
        ENV, Observation({**IMAGE, "tool": Package(name="tool", version="0.3", source=moved_on)})
    )
    assert [(c.action, c.name) for c in changes] == [("upgrade", "tool")]


def test_identity_names_the_directories_a_scan_read(tmp_path: Path) -> None:
    """A prefix whose pyvenv.cfg (or conda-meta/) was replaced is another environment even
    where its site-packages survived, and so is one renewed by the watcher (a freed inode
    number comes back at once on ext4); the same directories give the same identity."""
    from pkgckpt.inventory import Target

    venv, conda = tmp_path / "venv", tmp_path / "conda"
    for prefix in (venv, conda):
        (prefix / "lib" / "site-packages").mkdir(parents=True)
    (venv / "pyvenv.cfg").write_text("home = /usr/bin\n")
    (conda / "conda-meta").mkdir()
    targets = {
        p: Target(env=Environment(kind="python", path=str(p)), roots=(p / "lib" / "site-packages",))
        for p in (venv, conda)
    }

    def identities() -> dict[Path, object]:
        for target in targets.values():
            target.scan()
        return {p: t.identity for p, t in targets.items()}

    before = identities()
    assert identities() == before
    (venv / "pyvenv.cfg").rename(tmp_path / "old.cfg")
    (venv / "pyvenv.cfg").write_text("home = /usr/bin\n")
    (conda / "conda-meta").rename(tmp_path / "old-meta")
    (conda / "conda-meta").mkdir()
    replaced = identities()
    assert all(replaced[p] != before[p] for p in (venv, conda))
    targets[venv].renew()
    assert identities() == {venv: replaced[venv]._replace(epoch=1), conda: replaced[conda]}


# -- a baseline taken from a library that already held the user's packages ------------

ATTRS = pkgs("attrs==23.1.0")
POLLUTED = Baseline(environments=(Inventory(env=ENV, packages=tuple({**IMAGE, **ATTRS}.values())),))


def _recorded_attrs(image: str | None) -> Manifest:
    delta = Delta(env=ENV, added=tuple(ATTRS.values()), image=image)
    return Manifest(generation=3, body=Body(environments=(delta,)))


def test_a_baseline_holding_a_recorded_addition_does_not_drop_it() -> None:
    """A persistent library's packages taken into the baseline stay recorded as added,
    whatever image the record names, until the user is seen changing them."""
    polluted_id = manifest.image_identity({**IMAGE, **ATTRS}.values())
    for image in (IMAGE_ID, None, polluted_id):
        t = Tracker(POLLUTED, _recorded_attrs(image))
        t.observe(ENV, Observation({**IMAGE, **ATTRS}))
        t.observe(ENV, Observation({**IMAGE, **ATTRS, **pkgs("tqdm==4.66.0")}))
        assert names(t.body().delta(ENV))["added"] == ["attrs==23.1.0", "tqdm==4.66.0"], image


def test_an_observed_uninstall_of_an_addition_the_baseline_holds_is_recorded() -> None:
    """Keeping such an entry does not make it permanent: uninstalled here, it leaves the
    additions (as the removal of what that baseline calls the image's)."""
    t = Tracker(POLLUTED, _recorded_attrs(None))
    t.observe(ENV, Observation({**IMAGE, **ATTRS}))
    t.observe(ENV, Observation(dict(IMAGE)))
    assert names(t.body().delta(ENV)) == {"added": [], "changed": [], "removed": ["attrs==23.1.0"]}


def test_an_uninstall_before_the_first_scan_of_what_the_container_started_with_counts() -> None:
    """A library in a persistent home: this container's own baseline lists attrs, which
    the record holds as added. Found gone at the first scan (the user uninstalled it while
    the store was not mounted yet, before a session could open), it was uninstalled here:
    it leaves the record. With the image's baseline it is one a restore has not made yet,
    and stays; an empty library (unmounted, not emptied) takes nothing out either."""
    container = msgspec.structs.replace(POLLUTED, container=True)
    t = Tracker(container, _recorded_attrs(IMAGE_ID))
    changes = t.observe(ENV, Observation(dict(IMAGE)))
    assert [(c.action, c.name) for c in changes] == [("remove", "attrs")]
    assert names(t.body().delta(ENV)) == {"added": [], "changed": [], "removed": []}
    image = Tracker(BASELINE, _recorded_attrs(IMAGE_ID))
    assert image.observe(ENV, Observation(dict(IMAGE))) == []
    assert names(image.body().delta(ENV))["added"] == ["attrs==23.1.0"]
    empty = Tracker(container, _recorded_attrs(IMAGE_ID))
    assert empty.observe(ENV, Observation({})) == []
    assert names(empty.body().delta(ENV))["added"] == ["attrs==23.1.0"]


def test_a_record_without_an_image_keeps_it_unknown_while_entries_do_not_fit() -> None:
    """A record written before images were recorded is not stamped with this image while
    it holds an entry this image would not have recorded: restore must not read it as
    relative to this image."""
    t = Tracker(POLLUTED, _recorded_attrs(None))
    t.observe(ENV, Observation({**IMAGE, **ATTRS}))
    delta = t.body().delta(ENV)
    assert delta is not None and delta.image is None
    clean = Tracker(BASELINE, _recorded_attrs(None))
    clean.observe(ENV, Observation({**IMAGE, **ATTRS}))
    delta = clean.body().delta(ENV)
    assert delta is not None and delta.image == IMAGE_ID


def test_a_user_site_baseline_holding_the_users_copy_is_still_the_recorded_image() -> None:
    """A user site in a persistent home, its baseline taken by this container's first
    command: it lists the user's numpy 2.0.0 shadowing the prefix's 1.26.0. That is the
    recorded image with the user's copy in place, so the record stays relative to it,
    and the user's uninstall of the copy takes it out of the record instead of recording
    the removal of an image package."""
    user = Environment(kind="python", path="/opt/venv", interpreter="3.11.7", user=True)
    mine = Package(name="numpy", version="2.0.0", replaced="1.26.0")
    delta = Delta(env=user, added=(mine,), image=IMAGE_ID)
    outlived = Baseline(
        environments=(
            Inventory(env=ENV, packages=tuple(IMAGE.values())),
            Inventory(env=user, packages=(Package(name="numpy", version="2.0.0"),)),
        ),
        container=True,
    )
    t = Tracker(outlived, Manifest(generation=3, body=Body(environments=(delta,))))
    assert t.observe(user, Observation(pkgs("numpy==2.0.0"))) == []
    kept = t.body().delta(user)
    assert kept is not None and kept.image == IMAGE_ID
    assert names(kept)["added"] == ["numpy==2.0.0"] and kept.added[0].replaced == "1.26.0"
    t.observe(user, Observation(pkgs("numpy==2.0.0", "tqdm==4.66.0")))
    changes = t.observe(user, Observation(pkgs("tqdm==4.66.0")))
    assert [(c.action, c.name) for c in changes] == [("remove", "numpy")]
    assert names(t.body().delta(user)) == {"added": ["tqdm==4.66.0"], "changed": [], "removed": []}


def test_a_user_site_over_a_prefix_that_outlived_its_container_too_sees_the_prefix_image() -> None:
    """The prefix and its user site both outlived the container, the baseline taken by its
    first command: the prefix lists the user's attrs, the user site the user's tqdm and
    click. Once the prefix's image is told apart, the user site sees it beneath its own
    listing: its record stays relative to the recorded image, and the user's uninstall of
    tqdm takes it out of the record. The user site saw the prefix's whole listing, attrs
    in it, as a new image, and the uninstall became the removal of an image package."""
    user = msgspec.structs.replace(ENV, user=True)
    attrs, tqdm, click = (
        Package(name=n, version=v)
        for n, v in (("attrs", "23.1.0"), ("tqdm", "4.66.0"), ("click", "8.1.0"))
    )
    recorded = Body(
        environments=(
            Delta(env=ENV, added=(attrs,), image=IMAGE_ID),
            Delta(env=user, added=(click, tqdm), image=IMAGE_ID),
        )
    )
    outlived = Baseline(
        environments=(
            Inventory(env=ENV, packages=(*IMAGE.values(), attrs)),
            Inventory(env=user, packages=(click, tqdm)),
        ),
        container=True,
    )
    t = Tracker(outlived, Manifest(generation=3, body=recorded))
    assert t.observe(ENV, Observation({**IMAGE, "attrs": attrs})) == []
    changes = t.observe(user, Observation({"click": click}))
    assert [(c.action, c.name) for c in changes] == [("remove", "tqdm")]
    kept = t.body().delta(user)
    assert kept is not None and kept.image == IMAGE_ID
    assert names(kept) == {"added": ["click==8.1.0"], "changed": [], "removed": []}
    assert {e.user: image for e, image in t.told.values()} == {
        False: tuple(IMAGE.values()),
        True: (),
    }


# -- on a new image, the user's own install of what a rebase superseded ----------------

NEW_IMAGE = pkgs("numpy==3.0.0", "pip==24.0", "six==1.16.0")
NEW_BASELINE = Baseline(environments=(Inventory(env=ENV, packages=tuple(NEW_IMAGE.values())),))


def _superseded() -> Tracker:
    """numpy 1.26.0 -> 2.0.0 recorded on the old image; the restore on the new one, which
    ships 3.0.0, superseded it."""
    mark = manifest.Rebased(
        name="numpy",
        version="2.0.0",
        state="superseded",
        reason="the image ships 3.0.0",
        image=manifest.image_identity(NEW_IMAGE.values()),
    )
    mine = Package(name="numpy", version="2.0.0", replaced="1.26.0")
    delta = Delta(env=ENV, changed=(mine,), image=IMAGE_ID, rebased=(mark,))
    t = Tracker(NEW_BASELINE, Manifest(generation=3, body=Body(environments=(delta,))))
    assert t.observe(ENV, Observation(dict(NEW_IMAGE))) == []
    return t


def test_installing_a_superseded_version_by_hand_is_recorded_against_this_image() -> None:
    """The user goes back to numpy 2.0.0 on the image that ships 3.0.0: a downgrade of
    this image's, no longer superseded. It was taken for the recorded entry, unchanged,
    and the next restore superseded it again: the user's install was lost."""
    t = _superseded()
    changes = t.observe(ENV, Observation({**NEW_IMAGE, **pkgs("numpy==2.0.0")}))
    assert [(c.action, c.old, c.new) for c in changes] == [("downgrade", "3.0.0", "2.0.0")]
    delta = t.body().delta(ENV)
    assert delta is not None
    assert [(p.name, p.version, p.replaced) for p in delta.changed] == [("numpy", "2.0.0", "3.0.0")]
    assert delta.rebased == () and delta.image == manifest.image_identity(NEW_IMAGE.values())


def test_a_mixed_record_stays_so_on_its_image_until_every_entry_is_in_place() -> None:
    """The record names this image, but holds an install made on another (`mixed`): attrs,
    held back here by the last restore. Scans that find it missing keep the record mixed,
    so that the next restore checks it again rather than putting it in `--no-deps`; once
    attrs is installed here, next to the user's other install, the record is this image's."""
    held = manifest.Rebased(
        name="attrs", version="24.1.0", state="held-back", reason="needs numpy>=2",
        image=IMAGE_ID,
    )  # fmt: skip
    delta = Delta(
        env=ENV,
        added=tuple(pkgs("attrs==24.1.0", "tqdm==4.66.0").values()),
        image=IMAGE_ID,
        mixed=True,
        rebased=(held,),
    )
    t = Tracker(BASELINE, Manifest(generation=3, body=Body(environments=(delta,))))
    assert t.observe(ENV, Observation({**IMAGE, **pkgs("tqdm==4.66.0")})) == []
    kept = t.body().delta(ENV)
    assert kept is not None and kept.mixed and kept.image == IMAGE_ID
    t.observe(ENV, Observation({**IMAGE, **pkgs("tqdm==4.66.0", "attrs==24.1.0")}))
    whole = t.body().delta(ENV)
    assert whole is not None and not whole.mixed
    assert names(whole)["added"] == ["attrs==24.1.0", "tqdm==4.66.0"]


def test_a_record_from_another_image_is_taken_on_as_mixed_until_in_place() -> None:
    """attrs was installed on the old image, and the new one ships none: the entry fits
    the new image, so the daemon there, before any restore, takes the record on as this
    image's. Unchecked here (attrs may need what only the old image shipped), it is mixed,
    and the next restore checks it rather than installing it `--no-deps`; found installed
    (a restore put it in, checked), it is this image's."""
    delta = Delta(env=ENV, added=tuple(pkgs("attrs==24.1.0").values()), image=IMAGE_ID)
    t = Tracker(NEW_BASELINE, Manifest(generation=3, body=Body(environments=(delta,))))
    assert t.observe(ENV, Observation(dict(NEW_IMAGE))) == []
    new = manifest.image_identity(NEW_IMAGE.values())
    taken = t.body().delta(ENV)
    assert taken is not None and (taken.image, taken.mixed) == (new, True)
    t.observe(ENV, Observation({**NEW_IMAGE, **pkgs("attrs==24.1.0")}))
    placed = t.body().delta(ENV)
    assert placed is not None and (placed.image, placed.mixed) == (new, False)


def test_an_uninstall_is_logged_with_the_version_that_was_installed() -> None:
    """Uninstalling the image's numpy 3.0.0 is logged as such, not as the recorded 2.0.0
    this container never had."""
    t = _superseded()
    changes = t.observe(ENV, Observation(pkgs("pip==24.0", "six==1.16.0")))
    assert [(c.action, c.name, c.old) for c in changes] == [("remove", "numpy", "3.0.0")]
    assert names(t.body().delta(ENV))["removed"] == ["numpy==3.0.0"]


def test_without_a_baseline_what_was_installed_since_the_start_is_the_users() -> None:
    """An environment with no baseline, first scanned by a daemon that started at `since`
    (an R library a new ~/.Renviron names, found at the next discovery): an entry
    written since is the user's install and is recorded; one written before, or whose
    time is unknown, counts as the image's, as before. A conda environment starts from
    what it holds, as README says: one made since holds only what making it put there."""
    since = time.time()
    before, after = int((since - 60) * 1e9), int((since + 1) * 1e9)
    written = {"ckptA": after, "ckptImports": after, "image.pkg": before}
    found = {
        n: Package(name=n, version="1.0")
        for n in ("ckptA", "ckptImports", "image.pkg", "unknown.time")
    }
    t = Tracker(None, None, made_since=since)
    t.observe(OTHER, Observation(found, made=written.get))
    assert names(t.body().delta(OTHER))["added"] == ["ckptA==1.0", "ckptImports==1.0"]
    assert t.inferred == [OTHER]
    untimed = Tracker(None, None, made_since=since)
    untimed.observe(OTHER, Observation(found))
    assert untimed.body().delta(OTHER) is None
    # A conda environment made since (`conda create`): what making it linked, not installs.
    conda = Environment(kind="conda", path="/opt/conda/envs/made")
    linked = {n: Package(name=n, version="1.0", build="h0_0") for n in ("zlib", "libgcc")}
    made = Tracker(None, None, made_since=since)
    made.observe(conda, Observation(linked, made=dict.fromkeys(linked, after).get))
    assert made.body().delta(conda) is None
