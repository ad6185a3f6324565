"""The rebase's consistency check reads less than every requirement of the image, and what
it reads is what `packaging` reads: the name prefilter and the specifier-only reading of a
plain `NAME SPECIFIERS` line are held to `Requirement(line)`, the lazily ranked wheel tags
to the full list, and an installed METADATA is read up to its header (restore/rebase.py)."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from packaging.requirements import InvalidRequirement, Requirement
from packaging.tags import Tag
from packaging.utils import canonicalize_name
from wheelhouse import Dist, build_wheel

from pkgckpt.config import Config
from pkgckpt.inventory import Target
from pkgckpt.manifest import Delta, Environment, Package
from pkgckpt.restore.rebase import (
    MAX_METADATA,
    _Check,
    _Dist,
    _named,
    _parse,
    _Simple,
    installed_metadata,
    rebase,
)
from pkgckpt.wheeltags import TargetTags, target_tags

PY311 = Environment(kind="python", path="/opt/venv", interpreter="3.11.7")

_PIECES = st.sampled_from(
    [
        "foo", "Foo.Bar_baz", "a", "x-", "_y", "9z", " ", "\t", "  ", ">=", "==", "~=", "!=",
        "<", ">", "<=", "===", "1.0", "2!1.0", "1.0.*", "1.0+local.1", "1.0a1", "1.0.post2",
        "v1", "abc", ",", ";", "[", "]", "(", ")", "@", "extra", '"x"', "'3.8'", "and",
        "python_version", "https://e.org/f.whl", ".", "-", "*", "#", "\u00a0", "é", "\x00",
        "\r", "K", "\\", "/", "!", "+", "$",
    ]
)  # fmt: skip
_LINES = st.one_of(
    st.lists(_PIECES, max_size=10).map("".join),
    st.text(max_size=30),
)


def _packaging(line: str) -> Requirement | None:
    try:
        return Requirement(line)
    except InvalidRequirement:
        return None


@settings(max_examples=2000, deadline=None)
@given(_LINES)
@example("foo>=1.0,<2")
@example("foo >= 1.0 , < 2 ")
@example("foo>=1,")
@example("foo>=1,,<2")
@example("foo_>=1")
@example("foo.>=1")
@example("foo (>=1)")
@example("foo>=1\u00a0")
@example("foo===abc def")
@example("foo==1.0.*")
@example("foo>=1; python_version < '3'")
@example("foo @ https://e.org/f.whl")
@example("foo[bar]>=1")
@example("\tfoo\t>=\t1")
def test_a_requirement_line_is_read_as_packaging_reads_it(line: str) -> None:
    """Whatever a line is, it is read as `Requirement(line)` reads it (the same name,
    specifiers, extras, marker and text, or invalid both ways), and the name the prefilter
    takes from it is the requirement's, canonical, whenever the line parses without
    extras."""
    want = _packaging(line)
    got = _parse(line)
    if want is None:
        assert got is None
        return
    assert got is not None
    assert (got.name, got.specifier, got.extras) == (want.name, want.specifier, want.extras)
    assert str(got.marker) == str(want.marker) and str(got) == str(want)
    if "[" not in line:
        assert _named(line) == canonicalize_name(want.name)


@pytest.mark.parametrize("line", ["foo", "foo>=1.0,<2", "Foo.Bar >= 1.0 , != 1.5", "x==1.0.*"])
def test_plain_lines_are_read_without_the_requirement_grammar(line: str) -> None:
    """A line with neither marker, extras nor URL takes the specifier-only reading (so that
    the test above compares something); one with a marker goes to the grammar."""
    assert isinstance(_parse(line), _Simple)
    assert isinstance(_parse(f'{line}; python_version >= "3.8"'), Requirement)


def test_only_requirements_on_what_the_plan_touches_are_parsed() -> None:
    """An image package's requirement on a package the plan leaves alone is never parsed
    (an image has thousands), even behind an extra; one on a planned package, or asking for
    extras, is. A planned package's requirements are all read when asked (what
    `--on-conflict user` reports), else only those on what stays installed."""
    state = {
        "img": _Dist("img", "1.0", "image", ["other>=1", "dep>=2", "opt[fast]", "bad ~= ~"]),
        "other": _Dist("other", "1.0", "image", []),
        "opt": _Dist("opt", "1.0", "image", ['accel>=1; extra == "fast"']),
        "dep": _Dist("dep", "1.0", "planned", ["gone>=1", "other<1"]),
    }
    check = _Check(PY311)
    found = {(d.name, str(r)) for d, r in check.violations(state, {"dep"})}
    assert found == {
        ("img", "dep>=2"),
        ("dep", "gone>=1"),
        ("dep", "other<1"),
    }
    assert set(check._parsed) == {"dep>=2", "opt[fast]", "gone>=1", "other<1"}
    kept = _Check(PY311)
    found = {(d.name, str(r)) for d, r in kept.violations(state, {"dep"}, {"img", "other"})}
    assert found == {("img", "dep>=2"), ("dep", "other<1")}
    assert set(kept._parsed) == {"dep>=2", "opt[fast]", "other<1"}


def test_extras_asked_by_an_untouched_requirement_still_hold_back(tmp_path: Path) -> None:
    """The image's evalimg requires `extraimg[strict]`, whose `strict` extra requires
    evaldep>=2: the user's evaldep 1.0 is held back, though the line asking for the extra
    names nothing the plan touches."""
    site = tmp_path / "site"
    for name, version, requires in (
        ("evalimg", "2.0", "extraimg[strict]"),
        ("extraimg", "1.0", 'evaldep>=2; extra == "strict"'),
        ("evaldep", "2.0", None),
    ):
        info = site / f"{name}-{version}.dist-info"
        info.mkdir(parents=True)
        lines = [f"Name: {name}", f"Version: {version}"]
        lines += [f"Requires-Dist: {requires}"] if requires else []
        (info / "METADATA").write_text("\n".join(lines) + "\n")
    image = [
        Package(name="evalimg", version="2.0"),
        Package(name="extraimg", version="1.0"),
        Package(name="evaldep", version="2.0"),
    ]
    delta = Delta(
        env=PY311, changed=(Package(name="evaldep", version="1.0", replaced="2.0"),), image="x"
    )
    live = {p.name: p for p in image}
    config = Config(store=tmp_path / "s", key="k")
    planned = rebase(delta, Target(env=PY311, roots=(site,)), image, live, config)
    (held,) = planned.held_back()
    assert held.reason == 'extraimg 1.0 (image) requires evaldep>=2; extra == "strict"'


def test_what_a_planned_package_needs_through_an_image_packages_extra_counts(
    tmp_path: Path,
) -> None:
    """userapp asks for `lib[fast]`, and lib (the image's) needs x==2.0 for `fast`: the
    user's x 2.0, which the new image's 2.1 would supersede, is installed after all.
    userapp2 asks for `lib2[fast]`, which needs y<2 where the image ships y 2.1 and needs
    nothing of it: userapp2 is held back, its reason naming the extra. userapp3 asks for
    `lib3[fast]`, whose `fast` asks for `other[gpu]`, whose `gpu` needs z==2.0: the
    user's z 2.0 comes back too, the reason naming the way."""
    site = tmp_path / "site"
    for name, version, requires in (
        ("lib", "1.0", 'x==2.0; extra == "fast"'),
        ("lib2", "1.0", 'y<2; extra == "fast"'),
        ("lib3", "1.0", 'other[gpu]; extra == "fast"'),
        ("other", "1.0", 'z==2.0; extra == "gpu"'),
        ("z", "2.1", None),
        ("x", "2.1", None),
        ("y", "2.1", None),
    ):
        info = site / f"{name}-{version}.dist-info"
        info.mkdir(parents=True)
        lines = [
            f"Name: {name}",
            f"Version: {version}",
            "Provides-Extra: fast",
            "Provides-Extra: gpu",
        ]
        lines += [f"Requires-Dist: {requires}"] if requires else []
        (info / "METADATA").write_text("\n".join(lines) + "\n")
    links = tmp_path / "links"
    build_wheel(Dist("userapp", "1.0", requires=["lib[fast]>=1.0"]), links)
    build_wheel(Dist("userapp2", "1.0", requires=["lib2[fast]>=1.0"]), links)
    build_wheel(Dist("userapp3", "1.0", requires=["lib3[fast]"]), links)
    build_wheel(Dist("x", "2.0"), links)
    build_wheel(Dist("z", "2.0"), links)
    image = [
        Package(name="lib", version="1.0"),
        Package(name="lib2", version="1.0"),
        Package(name="x", version="2.1"),
        Package(name="y", version="2.1"),
        Package(name="lib3", version="1.0"),
        Package(name="other", version="1.0"),
        Package(name="z", version="2.1"),
    ]
    delta = Delta(
        env=PY311,
        added=tuple(Package(name=n, version="1.0") for n in ("userapp", "userapp2", "userapp3")),
        changed=(
            Package(name="x", version="2.0", replaced="1.0"),
            Package(name="z", version="2.0", replaced="1.0"),
        ),
        image="v1",
    )
    live = {p.name: p for p in image}
    config = Config(store=tmp_path / "s", key="k", find_links=(str(links),), no_index=True)
    planned = rebase(delta, Target(env=PY311, roots=(site,)), image, live, config)
    by = {d.name: (d.action, d.reason) for d in planned.decisions}
    assert by["userapp"][0] == "install"
    assert by["x"] == (
        "install",
        "userapp 1.0 requires x==2.0 (through lib[fast]); the image ships 2.1",
    )
    assert by["userapp2"] == (
        "held-back",
        "requires y<2 (through lib2[fast]), and y 2.1 (image) stays",
    )
    assert by["z"] == (
        "install",
        "userapp3 1.0 requires z==2.0 (through lib3[fast] -> other[gpu]); the image ships 2.1",
    )


def test_an_extra_asked_inside_an_extra_of_a_planned_package_counts(tmp_path: Path) -> None:
    """userapp asks for the image's `lib[fast]`, whose `fast` asks for `other[gpu]`, and
    other is the user's too (pip brought it in), its `gpu` needing z==2.0: the user's z 2.0
    comes back over the image's 2.1, as when other is the image's."""
    site = tmp_path / "site"
    for name, version, requires in (
        ("lib", "1.0", 'other[gpu]; extra == "fast"'),
        ("z", "2.1", None),
    ):
        info = site / f"{name}-{version}.dist-info"
        info.mkdir(parents=True)
        lines = [f"Name: {name}", f"Version: {version}", "Provides-Extra: fast"]
        lines += [f"Requires-Dist: {requires}"] if requires else []
        (info / "METADATA").write_text("\n".join(lines) + "\n")
    links = tmp_path / "links"
    build_wheel(Dist("userapp", "1.0", requires=["lib[fast]"]), links)
    build_wheel(Dist("other", "1.0", requires=['z==2.0; extra == "gpu"']), links)
    build_wheel(Dist("z", "2.0"), links)
    image = [Package(name="lib", version="1.0"), Package(name="z", version="2.1")]
    delta = Delta(
        env=PY311,
        added=(Package(name="other", version="1.0"), Package(name="userapp", version="1.0")),
        changed=(Package(name="z", version="2.0", replaced="1.0"),),
        image="v1",
    )
    config = Config(store=tmp_path / "s", key="k", find_links=(str(links),), no_index=True)
    live = {p.name: p for p in image}
    planned = rebase(delta, Target(env=PY311, roots=(site,)), image, live, config)
    by = {d.name: (d.action, d.reason) for d in planned.decisions}
    assert by["z"] == (
        "install",
        "userapp 1.0 requires z==2.0 (through lib[fast] -> other[gpu]); the image ships 2.1",
    )


def test_what_requires_a_recorded_package_held_back_is_held_back_with_it(
    tmp_path: Path,
) -> None:
    """The user's userapp requires their libv, which requires x==2.0; the new image ships
    x 2.1 and needs it. libv is held back, and userapp with it: the installer, asked for
    userapp, would resolve libv against the image and fail (it was installed and reported
    failed, with `pkgckpt forget` as the way out). `--on-conflict user` forces both."""
    site = tmp_path / "site"
    for name, version, requires in (("x", "2.1", None), ("imgx", "1.0", "x>=2.1")):
        info = site / f"{name}-{version}.dist-info"
        info.mkdir(parents=True)
        lines = [f"Name: {name}", f"Version: {version}"]
        lines += [f"Requires-Dist: {requires}"] if requires else []
        (info / "METADATA").write_text("\n".join(lines) + "\n")
    links = tmp_path / "links"
    build_wheel(Dist("libv", "1.0", requires=["x==2.0"]), links)
    build_wheel(Dist("userapp", "1.0", requires=["libv>=1.0"]), links)
    image = [Package(name="x", version="2.1"), Package(name="imgx", version="1.0")]
    delta = Delta(
        env=PY311,
        added=(Package(name="libv", version="1.0"), Package(name="userapp", version="1.0")),
        image="v1",
    )
    live = {p.name: p for p in image}
    for conflict, want in (
        ("image", {
            "libv": ("held-back", "requires x==2.0, and x 2.1 (image) stays"),
            "userapp": ("held-back", "requires libv>=1.0, and libv 1.0 is held back"),
        }),
        ("user", {"libv": ("install",), "userapp": ("install",)}),
    ):  # fmt: skip
        config = Config(
            store=tmp_path / "s", key="k", find_links=(str(links),), no_index=True,
            on_conflict=conflict,
        )  # fmt: skip
        planned = rebase(delta, Target(env=PY311, roots=(site,)), image, live, config)
        by = {d.name: (d.action, d.reason) for d in planned.decisions}
        assert {k: by[k][: len(v)] for k, v in want.items()} == want, by


@pytest.mark.parametrize(
    "env",
    [
        PY311,
        msgspec.structs.replace(PY311, interpreter="3.12.1"),
        msgspec.structs.replace(PY311, platform="linux_aarch64"),
        msgspec.structs.replace(PY311, implementation="pypy"),
    ],
)
def test_wheel_tags_rank_as_the_full_list_orders_them(env: Environment) -> None:
    """Every tag of the full list ranks in the list's order, pure-Python ones computed
    without the full list, and a tag the interpreter does not install ranks nowhere."""
    full = target_tags(env)
    pure = TargetTags(env)
    foreign = [Tag("py313", "none", "any"), Tag("cp311", "abi3", "any"), Tag("py2", "none", "any")]
    foreign = [t for t in foreign if t not in full]
    assert foreign and all(pure.rank([t]) is None for t in foreign)
    ranked = [(pure.rank([t]), t) for t in full if t.platform == "any"]
    assert pure._full is None, "pure-Python tags are ranked without the full list"
    assert [t for _, t in sorted(ranked)] == [t for t in full if t.platform == "any"]
    tags = TargetTags(env)
    ranks = [tags.rank([t]) for t in full]
    assert None not in ranks and ranks == sorted(ranks)
    assert tags.rank([full[-1], full[3]]) == ranks[3]
    assert tags.rank([Tag("cp30", "cp30", "win32")]) is None


def test_an_installed_metadata_is_read_up_to_its_header(tmp_path: Path) -> None:
    """A METADATA whose description is larger than the bound still gives its requirements
    (only its header is read); a header that never ends within the bound gives nothing."""
    site = tmp_path / "site"
    long = site / "long-1.0.dist-info"
    long.mkdir(parents=True)
    header = "Name: long\r\nVersion: 1.0\r\nRequires-Dist: dep>=1\r\n\r\n"
    (long / "METADATA").write_text(header + "x" * (2 * MAX_METADATA), newline="")
    endless = site / "endless-1.0.dist-info"
    endless.mkdir()
    (endless / "METADATA").write_text("Name: endless\nVersion: 1.0\n" + "X: y\n" * MAX_METADATA)
    assert installed_metadata([site]) == {"long": ("1.0", ["dep>=1"])}
