"""The rebase planner's parts without installers: image identity, markers for the target
interpreter, hostile metadata, and the daemon's record on a new image (restore/rebase.py,
checkpoint.py). The whole restore runs on real venvs in test_rebase.py."""

from __future__ import annotations

from pathlib import Path

import msgspec
from wheelhouse import Dist, build_wheel

from pkgckpt import manifest
from pkgckpt.checkpoint import Observation, Tracker
from pkgckpt.config import Config
from pkgckpt.inventory import Target
from pkgckpt.manifest import (
    Baseline,
    Body,
    Delta,
    Environment,
    Inventory,
    Manifest,
    Package,
    Rebased,
    VcsSource,
)
from pkgckpt.restore.python import _pin
from pkgckpt.restore.rebase import _Check, _Dist, installed_metadata, needed, rebase

PY311 = Environment(kind="python", path="/opt/venv", interpreter="3.11.7")
PY312 = msgspec.structs.replace(PY311, interpreter="3.12.1")


def pkgs(*specs: str) -> dict[str, Package]:
    out = {}
    for spec in specs:
        name, version = spec.split("==")
        out[name] = Package(name=name, version=version)
    return out


def dist_info(root: Path, name: str, version: str, *requires: str) -> None:
    info = root / f"{name}-{version}.dist-info"
    info.mkdir(parents=True)
    lines = [f"Name: {name}", f"Version: {version}", *(f"Requires-Dist: {r}" for r in requires)]
    (info / "METADATA").write_text("Metadata-Version: 2.1\n" + "\n".join(lines) + "\n")


def test_identical_images_have_identical_identities() -> None:
    """The identity is over sorted (name, version) pairs: order and other fields do not
    count, a version does."""
    a = pkgs("numpy==1.26.0", "six==1.16.0")
    b = {"six": Package(name="six", version="1.16.0", installer="uv"), "numpy": a["numpy"]}
    assert manifest.image_identity(a.values()) == manifest.image_identity(b.values())
    c = pkgs("numpy==1.26.1", "six==1.16.0")
    assert manifest.image_identity(a.values()) != manifest.image_identity(c.values())


def test_a_manifest_without_the_new_fields_still_reads() -> None:
    """A manifest written before image identities decodes, with no identity: restore then
    takes it for the same image, as before."""
    old = Body(environments=(Delta(env=PY311, changed=tuple(pkgs("six==1.0").values())),))
    data = manifest.encode(Manifest(generation=1, body=old))
    assert b'"image"' not in data and b'"replaced"' not in data
    (delta,) = manifest.decode(data).body.environments
    assert delta.image is None and delta.changed[0].replaced is None
    assert not needed(delta, PY311, list(pkgs("six==2.0").values()), {})


def test_rebase_is_needed_for_another_image_or_python_minor_only() -> None:
    """Same identity and Python minor: the fast path; another image, another minor,
    implementation, ABI or platform: a rebase. A new patch release is the same interpreter."""
    image = list(pkgs("six==1.16.0").values())
    same = Delta(env=PY311, image=manifest.image_identity(image))
    assert not needed(same, msgspec.structs.replace(PY311, interpreter="3.11.9"), image, {})
    assert needed(same, PY312, image, {})
    assert needed(same, msgspec.structs.replace(PY311, implementation="pypy"), image, {}) is False
    pypy = msgspec.structs.replace(PY311, implementation="cpython")
    assert needed(
        msgspec.structs.replace(same, env=pypy),
        msgspec.structs.replace(PY311, implementation="pypy"),
        image,
        {},
    )
    assert needed(same, PY311, list(pkgs("six==1.17.0").values()), {})
    x86 = msgspec.structs.replace(same, env=msgspec.structs.replace(PY311, platform="linux_x86_64"))
    assert needed(x86, msgspec.structs.replace(PY311, platform="linux_aarch64"), image, {})
    # A free-threaded build of the same version loads none of the plain build's extensions.
    plain = msgspec.structs.replace(same, env=msgspec.structs.replace(PY311, abi="cp311"))
    assert needed(plain, msgspec.structs.replace(PY311, abi="cp311t"), image, {})
    assert not needed(plain, msgspec.structs.replace(PY311, abi="cp311"), image, {})
    assert not needed(plain, PY311, image, {}), "an ABI not recorded on one side is the same"


def test_a_build_for_another_python_needs_a_rebase_only_where_it_is_not_in_place() -> None:
    """An install recorded with WHEEL tags of another Python (a daemon on the new one
    kept it as recorded) makes a rebase needed; the same one in place here does not, and
    is not even read: a no-op restore imports no packaging.tags for it."""
    image = list(pkgs("six==1.16.0").values())
    cext = Package(name="CExt", version="1.0", tags=("cp310-cp310-linux_x86_64",))
    delta = Delta(env=PY311, image=manifest.image_identity(image), added=(cext,))
    assert needed(delta, PY311, image, {})
    assert not needed(delta, PY311, image, {"cext": Package(name="cext", version="1.0")})
    assert needed(delta, PY311, image, {"cext": Package(name="cext", version="0.9")})
    pure = Package(name="pure", version="1.0", tags=("py3-none-any",))
    both = msgspec.structs.replace(cext, tags=(*cext.tags, "py2.py3-none-any"))
    for fits in (pure, both):
        assert not needed(msgspec.structs.replace(delta, added=(fits,)), PY311, image, {})


def test_markers_are_evaluated_for_the_target_interpreter() -> None:
    """A requirement behind `python_version < "3.12"` binds on 3.11 and not on 3.12; an
    extra's requirement binds only when something asks for that extra."""
    state = {
        "img": _Dist("img", "1.0", "image", ['dep>=2; python_version < "3.12"', "opt[fast]"]),
        "dep": _Dist("dep", "1.0", "planned", []),
        "opt": _Dist("opt", "1.0", "image", ['accel>=1; extra == "fast"', 'slow; extra == "x"']),
    }
    on311 = {(d.name, str(r)) for d, r in _Check(PY311).violations(state)}
    on312 = {(d.name, str(r)) for d, r in _Check(PY312).violations(state)}
    assert on311 == {
        ("img", 'dep>=2; python_version < "3.12"'),
        ("opt", 'accel>=1; extra == "fast"'),
    }
    assert on312 == {("opt", 'accel>=1; extra == "fast"')}


def test_planted_metadata_is_skipped_not_trusted(tmp_path: Path) -> None:
    """A dist-info whose Name is not a distribution name, a METADATA over the size limit
    and a METADATA that is a symlink are all left out of the check."""
    site = tmp_path / "site"
    dist_info(site, "good", "1.0", "dep>=1")
    dist_info(site, "--index-url=https:--evil", "1.0")
    dist_info(site, "huge", "1.0")
    (site / "huge-1.0.dist-info" / "METADATA").write_bytes(b"Name: huge\n" + b"x" * (2 << 20))
    dist_info(site, "linked", "1.0")
    meta = site / "linked-1.0.dist-info" / "METADATA"
    meta.unlink()
    meta.symlink_to(site / "good-1.0.dist-info" / "METADATA")
    assert installed_metadata([site]) == {"good": ("1.0", ["dep>=1"])}


def test_constraints_are_validated_pins_only(tmp_path: Path) -> None:
    """Nothing but `name==version` with a valid name and version reaches the constraints
    file: a requirements-file option in a planted name does not."""
    assert _pin("six==1.16.0")
    assert not _pin("--index-url==1.0")
    assert not _pin("six==1.0\n--index-url https://evil")
    assert not _pin("six>=1.0")
    site = tmp_path / "lib" / "python3.11" / "site-packages"
    site.mkdir(parents=True)
    live = {
        "six": Package(name="six", version="1.16.0"),
        "-e evil": Package(name="-e evil", version="1.0"),
    }
    target = Target(env=PY311, roots=(site,))
    delta = Delta(env=PY311, added=tuple(pkgs("newpkg==1.0").values()), image="sha256:old")
    planned = rebase(delta, target, [live["six"]], live, Config(store=tmp_path / "s", key="k"))
    assert planned.constraints == ("six==1.16.0",)
    assert [d.action for d in planned.decisions] == ["install"]


def test_the_same_version_from_a_vcs_is_not_superseded_by_the_image(tmp_path: Path) -> None:
    """An addition from a VCS commit, where the image now ships the same version from an
    index, is still the user's to reinstall; from an index it is superseded."""
    site = tmp_path / "site"
    site.mkdir()
    vcs = VcsSource(vcs="git", url="https://example.org/tool.git", commit="a" * 40)
    added = (
        Package(name="tool", version="0.3", source=vcs),
        Package(name="plain", version="0.3"),
    )
    image = list(pkgs("tool==0.3", "plain==0.3").values())
    delta = Delta(env=PY311, added=added, image="sha256:old")
    target = Target(env=PY311, roots=(site,))
    live = {p.name: p for p in image}
    planned = rebase(delta, target, image, live, Config(store=tmp_path / "s", key="k"))
    assert {d.name: d.action for d in planned.decisions} == {
        "plain": "superseded",
        "tool": "install",
    }


def test_a_build_picked_by_its_local_label_is_superseded_by_that_build_only(
    tmp_path: Path,
) -> None:
    """The user's `2.1.0+cpu` is not superseded by the image's `2.1.0+cu118` or `2.2.0`,
    which `==2.1.0+cpu` does not admit, whichever way the labels sort; by `2.2.0+cpu` it
    is. A version without a label is superseded by a labelled build of it, as before."""
    site = tmp_path / "site"
    site.mkdir()
    user = [("cu", "2.1.0+cpu"), ("az", "2.1.0+cpu"), ("pub", "2.1.0+cpu"), ("cpu", "2.1.0+cpu")]
    user += [("plain", "2.1.0")]
    image = pkgs("cu==2.1.0+cu118", "az==2.1.0+abc", "pub==2.2.0", "cpu==2.2.0+cpu")
    image |= pkgs("plain==2.1.0+cu118")
    added = tuple(Package(name=n, version=v) for n, v in user)
    delta = Delta(env=PY311, added=added, image="sha256:old")
    target = Target(env=PY311, roots=(site,))
    planned = rebase(delta, target, list(image.values()), image, Config(store=tmp_path, key="k"))
    assert {d.name: d.action for d in planned.decisions} == {
        "cu": "install",
        "az": "install",
        "pub": "install",
        "cpu": "superseded",
        "plain": "superseded",
    }


def test_a_daemon_on_a_new_image_keeps_untouched_entries_as_recorded() -> None:
    """On another image, an addition the image now ships, a downgrade the image needs
    undone, and a removal of a package the image dropped all stay as recorded (with
    their marks) until the user changes that package; the record stays relative to the
    old image while any of them remains."""
    v1 = pkgs("catchup==0.1", "evaldep==2.0", "dropped==1.0")
    v2 = pkgs("catchup==1.1", "evaldep==2.1")
    user = Package(name="evaldep", version="1.0", replaced="2.0")
    mark = Rebased(name="evaldep", version="1.0", state="held-back", reason="img needs it")
    record = Delta(
        env=PY311,
        added=(Package(name="newer", version="1.0"),),
        changed=(Package(name="catchup", version="1.0", replaced="0.1"), user),
        removed=(v1["dropped"],),
        image=manifest.image_identity(v1.values()),
        rebased=(mark,),
    )
    baseline = Baseline(environments=(Inventory(env=PY311, packages=tuple(v2.values())),))
    t = Tracker(baseline, Manifest(generation=1, body=Body(environments=(record,))))
    assert t.observe(PY311, Observation({**v2, **pkgs("newer==1.0")})) == []
    kept = t.body().delta(PY311)
    assert kept is not None
    assert (kept.added, kept.changed, kept.removed) == (
        record.added,
        record.changed,
        record.removed,
    )
    assert kept.rebased == (mark,) and kept.image == record.image

    # The user upgrades evaldep here: that entry is now theirs against this image.
    t.observe(PY311, Observation({**v2, **pkgs("newer==1.0", "evaldep==3.0")}))
    now = t.body().delta(PY311)
    assert now is not None and now.rebased == ()
    assert {p.name: (p.version, p.replaced) for p in now.changed}["evaldep"] == ("3.0", "2.1")
    assert now.image == record.image, "catchup and dropped are still relative to v1"


def test_metadata_header_is_read_up_to_the_body_only() -> None:
    """Name, Version and Requires-Dist come from the header: a continued line is joined,
    the first Name wins, and a `Requires-Dist:` line in the description body is text."""
    from pkgckpt.restore.rebase import _requires

    text = (
        "Metadata-Version: 2.1\nName: good\nVersion: 1.0\nName: other\n"
        'Requires-Dist: dep>=1;\n python_version >= "3.8"\nRequires-Dist: six\n'
        "\nRequires-Dist: not-a-requirement\n"
    )
    assert _requires(text) == ("good", "1.0", ['dep>=1; python_version >= "3.8"', "six"])


def test_a_user_package_the_image_contradicts_is_held_back_from_its_wheel(
    tmp_path: Path,
) -> None:
    """The planned wheel's METADATA (from the find-links, not installed) requires
    `evaldep<2`; the image keeps evaldep 2.0: the package is held back with that reason,
    while one whose dependency is missing altogether is left to the installer."""
    links = tmp_path / "links"
    build_wheel(Dist("olduser", "1.0", requires=["evaldep<2"]), links)
    build_wheel(Dist("needsgone", "1.0", requires=["gonedep>=1"]), links)
    site = tmp_path / "lib" / "python3.11" / "site-packages"
    dist_info(site, "evaldep", "2.0")
    image = list(pkgs("evaldep==2.0").values())
    delta = Delta(
        env=PY311, added=tuple(pkgs("olduser==1.0", "needsgone==1.0").values()), image="x"
    )
    config = Config(store=tmp_path / "s", key="k", find_links=(str(links),), no_index=True)
    live = {p.name: p for p in image}
    planned = rebase(delta, Target(env=PY311, roots=(site,)), image, live, config)
    decided = {d.name: (d.action, d.reason) for d in planned.decisions}
    assert decided == {
        "olduser": ("held-back", "requires evaldep<2, and evaldep 2.0 (image) stays"),
        "needsgone": ("install", "added by the user"),
    }


def test_a_superseded_upgrade_a_user_package_pins_is_installed_after_all(
    tmp_path: Path,
) -> None:
    """upg 1.0 -> 1.1 and `pinned` (requires upg==1.1) recorded; the new image ships upg
    1.2. The image caught up with upg, but pinned needs the user's 1.1: upg is installed
    too, unless an image package needs 1.2; then both are held back, or with
    `--on-conflict user` both installed and the image's broken requirement listed. It
    held pinned back for the superseded upg it needs."""
    links = tmp_path / "links"
    build_wheel(Dist("pinned", "1.0", requires=["upg==1.1"]), links)
    build_wheel(Dist("upg", "1.1"), links)
    delta = Delta(
        env=PY311,
        added=tuple(pkgs("pinned==1.0").values()),
        changed=(Package(name="upg", version="1.1", replaced="1.0"),),
        image="sha256:old",
    )

    def plan(*image_reqs: str, on_conflict: str = "image") -> dict[str, tuple[str, str]]:
        site = tmp_path / f"site{len(list(tmp_path.glob('site*')))}"
        dist_info(site, "upg", "1.2")
        image = [*pkgs("upg==1.2").values()]
        if image_reqs:
            dist_info(site, "needsnew", "1.0", *image_reqs)
            image.append(Package(name="needsnew", version="1.0"))
        config = Config(
            store=tmp_path / "s",
            key="k",
            find_links=(str(links),),
            no_index=True,
            on_conflict=on_conflict,
        )
        live = {p.name: p for p in image}
        planned = rebase(delta, Target(env=PY311, roots=(site,)), image, live, config)
        return {d.name: (d.action, d.reason) for d in planned.decisions}

    assert plan() == {
        "pinned": ("install", "added by the user"),
        "upg": ("install", "pinned 1.0 requires upg==1.1; the image ships 1.2"),
    }
    assert plan("upg>=1.2") == {
        "pinned": ("held-back", "requires upg==1.1, and upg 1.2 (image) stays"),
        "upg": ("held-back", "needsnew 1.0 (image) requires upg>=1.2"),
    }
    forced = plan("upg>=1.2", on_conflict="user")
    assert {n: a for n, (a, _) in forced.items()} == {"pinned": "install", "upg": "install"}


def test_a_reason_from_planted_metadata_is_printable(tmp_path: Path) -> None:
    """A marker may quote any character: the held-back reason built from it carries no
    terminal control sequence."""
    site = tmp_path / "site"
    dist_info(site, "evalimg", "2.0", 'evaldep>=2; python_version != "\x1b]0;owned\x07"')
    dist_info(site, "evaldep", "2.0")
    image = list(pkgs("evalimg==2.0", "evaldep==2.0").values())
    delta = Delta(
        env=PY311,
        changed=(Package(name="evaldep", version="1.0", replaced="2.0"),),
        image="x",
    )
    live = {p.name: p for p in image}
    config = Config(store=tmp_path / "s", key="k")
    planned = rebase(delta, Target(env=PY311, roots=(site,)), image, live, config)
    (held,) = planned.held_back()
    assert held.reason.startswith("evalimg 2.0 (image) requires evaldep>=2")
    assert held.reason.isprintable()


def test_a_user_site_copy_over_the_prefix_image_is_a_downgrade(tmp_path: Path) -> None:
    """Where the user site comes before the prefix (a conda base, a system Python),
    `pip install --user evaldep==1.0` over the image's 2.0 is recorded with the version it
    shadows, and a new image whose evalimg needs evaldep>=2.0 holds it back."""
    user_env = msgspec.structs.replace(PY311, user=True)
    v1 = pkgs("evalimg==1.0", "evaldep==2.0")
    baseline = Baseline(
        environments=(
            Inventory(env=PY311, packages=tuple(v1.values())),
            Inventory(env=user_env),
        )
    )
    t = Tracker(baseline, None)
    t.observe(user_env, Observation({}))
    t.observe(user_env, Observation(pkgs("evaldep==1.0")))
    delta = t.body().delta(user_env)
    assert delta is not None and delta.added[0].replaced == "2.0"
    assert delta.image == manifest.image_identity(v1.values())

    prefix_site, user_site = tmp_path / "prefix", tmp_path / "user"
    dist_info(prefix_site, "evalimg", "2.0", "evaldep>=2.0")
    dist_info(prefix_site, "evaldep", "2.0")
    user_site.mkdir()
    v2 = list(pkgs("evalimg==2.0", "evaldep==2.0").values())
    prefix = Target(env=PY311, roots=(prefix_site,))
    config = Config(store=tmp_path / "s", key="k")
    live = {p.name: p for p in v2}
    planned = rebase(delta, Target(env=user_env, roots=(user_site,)), v2, live, config, prefix)
    (held,) = planned.held_back()
    assert held.render() == "evaldep 1.0 held back: evalimg 2.0 (image) requires evaldep>=2.0"


def test_another_abi_of_the_same_python_is_a_new_interpreter(tmp_path: Path) -> None:
    """A venv recorded on a plain 3.11 and found on a free-threaded 3.11 at the same prefix:
    every recorded install is installed for it, and the plan says why (the versions alone
    are the same)."""
    plain = msgspec.structs.replace(PY311, abi="cp311")
    delta = Delta(env=plain, added=tuple(pkgs("six==1.16.0").values()))
    site = tmp_path / "site"
    site.mkdir()
    threaded = Target(env=msgspec.structs.replace(PY311, abi="cp311t"), roots=(site,))
    config = Config(store=tmp_path / "s", key="k")
    planned = rebase(delta, threaded, [], {}, config, ask_index=False)
    assert planned.render()[1] == "  python 3.11.7 (cp311) -> 3.11.7 (cp311t)"
    (decision,) = planned.decisions
    assert decision.action == "install", decision
    assert (planned.abi_old, planned.abi_new) == ("cp311", "cp311t")
    same = rebase(delta, Target(env=plain, roots=(site,)), [], {}, config, ask_index=False)
    assert not any(line.startswith("  python") for line in same.render())
    newer = Target(env=msgspec.structs.replace(PY312, abi="cp312"), roots=(site,))
    moved = rebase(delta, newer, [], {}, config, ask_index=False)
    assert moved.render()[1] == "  python 3.11.7 -> 3.12.1", "the version says it"


def test_non_standard_image_versions_are_read_as_the_checkpoint_recorded_them(
    tmp_path: Path,
) -> None:
    """An upgrade from an image's non-PEP 440 version (Ubuntu's `0.1.43ubuntu1`) is an
    upgrade: superseded where the new image ships a newer release, not put over it as a
    downgrade; a non-standard version the new image ships is not newer than the user's;
    a removal is carried out whatever the version; none of them is ever a constraint."""
    site = tmp_path / "site"
    site.mkdir()
    delta = Delta(
        env=PY311,
        changed=(
            Package(name="python-debian", version="0.1.49", replaced="0.1.43ubuntu1"),
            Package(name="imgtool", version="2.1", replaced="2.0build1"),
        ),
        removed=(Package(name="distro-info", version="1.1build1"),),
        image="sha256:old",
    )
    image = list(
        pkgs(
            "python-debian==0.1.50",
            "imgtool==2.0build3",
            "distro-info==1.1build2",
            "command-not-found==0.3build1",
            "six==1.16.0",
        ).values()
    )
    live = {p.name: p for p in image}
    config = Config(store=tmp_path / "s", key="k")
    planned = rebase(delta, Target(env=PY311, roots=(site,)), image, live, config)
    assert {d.name: d.action for d in planned.decisions} == {
        "python-debian": "superseded",
        "imgtool": "install",
        "distro-info": "remove",
    }
    assert planned.constraints == ("python-debian==0.1.50", "six==1.16.0")
