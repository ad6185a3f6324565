"""Manifest validation before restore (DESIGN invariant 4): what passes, what is refused."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from pkgckpt import validate
from pkgckpt.errors import ManifestError
from pkgckpt.manifest import (
    Body,
    Delta,
    DirectorySource,
    Environment,
    Package,
    Source,
    UrlSource,
    VcsSource,
)

PY = Environment(kind="python", path="/opt/venv")
R = Environment(kind="r", path="/opt/rlib")


def body(*packages: Package, env: Environment = PY, removed: tuple[Package, ...] = ()) -> Body:
    return Body(environments=(Delta(env=env, added=packages, removed=removed),))


@pytest.mark.parametrize(
    "name",
    [
        "numpy",
        "scikit-learn",
        "zope.interface",
        "typing_extensions",
        "A",
        "a1",
        "Pillow",
        "x-y_z.w",
    ],
)
def test_real_distribution_names_pass(name: str) -> None:
    """Names as PyPI has them are accepted."""
    assert validate.python_name(name)
    validate.check_body(body(Package(name=name, version="1.0")))


@pytest.mark.parametrize(
    "name",
    [
        "--index-url=https://evil.example/simple",
        "-e",
        "-r/etc/passwd",
        "https://evil.example/x.whl",
        "x @ https://evil.example/x.whl",
        "../../etc/passwd",
        "a/b",
        "numpy; rm -rf ~",
        "numpy$(id)",
        "numpy`id`",
        "numpy|sh",
        "numpy&&id",
        "num py",
        "numpy\n",
        "numpy\x00",
        "\tnumpy",
        "numpy[extra]",
        "numpy==1.0",
        "-numpy",
        "numpy-",
        "",
        "\u212aeras",  # KELVIN SIGN, which IGNORECASE would fold to "k"
        "n\u00famero",
        "a" * 201,
    ],
)
def test_hostile_names_refuse_the_manifest(name: str) -> None:
    """Option-shaped, URL, path, shell and whitespace names refuse the whole manifest."""
    assert not validate.python_name(name)
    with pytest.raises(ManifestError, match="not a valid distribution name"):
        validate.check_body(
            body(Package(name="ok", version="1.0"), Package(name=name, version="1"))
        )


@pytest.mark.parametrize(
    "version", ["1.0", "2.1.0rc1", "1!2.0", "1.0.post1.dev3", "1.0+local.7", "2024.1", "v1.2"]
)
def test_pep440_versions_pass(version: str) -> None:
    """Every PEP 440 version form is accepted."""
    assert validate.python_version(version)


@pytest.mark.parametrize(
    "version",
    [
        "1.0; rm -rf ~",
        "1.0 --index-url=x",
        "$(id)",
        "1.0`id`",
        " 1.0",
        "1.0 ",
        "1.0\n",
        "1.0\x00",
        ">=1.0",
        "1.*",
        "latest",
        "",
        "1" * 129,
    ],
)
def test_hostile_versions_refuse_the_manifest(version: str) -> None:
    """Anything but an exact PEP 440 version (even one Version() would strip) is refused."""
    assert not validate.python_version(version)
    with pytest.raises(ManifestError, match="not a valid PEP 440 version"):
        validate.check_body(body(Package(name="ok", version=version)))


@given(st.from_regex(validate._PY_NAME.compiled, fullmatch=True))
def test_every_accepted_name_is_one_requirement_pinned_name(name: str) -> None:
    """An accepted name parses as exactly that name in a `name==version` requirement."""
    req = Requirement(f"{name}==1.0")
    assert req.name == name and not req.url and not req.extras and req.marker is None
    assert validate.canonical(name) == canonicalize_name(name)


@given(st.text(max_size=40))
def test_an_accepted_version_is_a_version_as_written(text: str) -> None:
    """Whatever text passes the version check is a PEP 440 version with nothing around it."""
    if validate.python_version(text):
        assert str(Version(text)) == str(Version(text.strip())) and text == text.strip()
        assert not any(c in text for c in " ;|&$`'\"\\\n\x00<>=")


@given(st.from_regex(validate._PY_RELEASE.compiled, fullmatch=True))
def test_the_release_shortcut_takes_only_what_packaging_takes(version: str) -> None:
    """A version the shortcut accepts without packaging (a release segment alone) is one
    packaging's own PEP 440 pattern accepts too, exactly as written."""
    assert validate._PY_VERSION.fullmatch(version) is not None


@pytest.mark.parametrize(
    "source",
    [
        UrlSource(url="https://files.example/pkg-1.0.whl"),
        UrlSource(url="file:///wheels/pkg-1.0.whl", hashes={"sha256": "ab" * 32}),
        UrlSource(url="http://plain.example/pkg-1.0.whl"),  # shape ok; blocked by policy later
        VcsSource(vcs="git", url="https://github.com/o/r", commit="0123abc" * 5 + "01234"),
        VcsSource(vcs="git", url="ssh://git@github.com/o/r", requested_revision="v1.0"),
        VcsSource(vcs="hg", url="https://hg.example/r", subdirectory="sub/pkg"),
        DirectorySource(path="/home/u/src/pkg", editable=True),
        # As pip records what the user typed: `file:///home/u/src#subdirectory=./pkg/`.
        DirectorySource(path="/home/u/src", subdirectory="./pkg/"),
    ],
)
def test_recorded_sources_pass(source: Source) -> None:
    """The source shapes a scan records are accepted (whether they are reachable is apart)."""
    validate.check_body(body(Package(name="pkg", version="1.0", source=source)))


@pytest.mark.parametrize(
    ("source", "why"),
    [
        (UrlSource(url="--index-url=https://evil.example"), "not an absolute URL"),
        (UrlSource(url="https://x.example/a b.whl"), "whitespace"),
        (UrlSource(url="https://x.example/a.whl\n--pre"), "whitespace"),
        (UrlSource(url="https://x.example/a.whl#egg=other"), "fragment"),
        (UrlSource(url="relative/path.whl"), "not an absolute URL"),
        (VcsSource(vcs="git", url="../pkg"), "not an absolute URL"),  # R's alone may be
        (UrlSource(url="https://x.example/a.whl", hashes={"sha256": "$(id)"}), "invalid hash"),
        (VcsSource(vcs="git", url="ssh://-oProxyCommand=id/x"), "invalid host"),
        (VcsSource(vcs="git", url="ssh://-oProxyCommand=id@host/x"), "invalid host"),
        (VcsSource(vcs="cvs", url="https://x.example/r"), "unknown VCS"),
        (VcsSource(vcs="git", url="https://x.example/r", commit="main; id"), "hexadecimal"),
        (
            VcsSource(vcs="git", url="https://x/r", requested_revision="--upload-pack=id"),
            "revision",
        ),
        (VcsSource(vcs="git", url="https://x.example/r", subdirectory="../../etc"), "subdirectory"),
        (DirectorySource(path="/home/u", subdirectory="./../../etc"), "subdirectory"),
        (DirectorySource(path="/home/u", subdirectory="/etc"), "subdirectory"),
        (DirectorySource(path="relative/dir"), "absolute path"),
        (DirectorySource(path="/tmp/x\n--pre"), "control characters"),
    ],
)
def test_hostile_sources_refuse_the_manifest(source: Source, why: str) -> None:
    """Sources shaped like options, with whitespace, bad hosts or traversal are refused."""
    with pytest.raises(ManifestError, match=why):
        validate.check_body(body(Package(name="pkg", version="1.0", source=source)))


def test_duplicate_names_refuse_the_manifest() -> None:
    """A name listed twice (even spelled differently) is ambiguous, so refused."""
    bad = body(
        Package(name="Foo_Bar", version="1.0"), removed=(Package(name="foo-bar", version="2"),)
    )
    with pytest.raises(ManifestError, match="more than once"):
        validate.check_body(bad)


def test_r_rules_apply_to_r_libraries() -> None:
    """R libraries use R's name and version rules, Python's do not leak in."""
    validate.check_body(body(Package(name="data.table", version="1.14-8"), env=R))
    for package in (
        Package(name="data_table", version="1.0"),
        Package(name="2fast", version="1.0"),
        Package(name="ok", version="1.0rc1"),
        Package(name="ok", version="1"),
    ):
        with pytest.raises(ManifestError):
            validate.check_body(body(package, env=R))


def test_message_is_bounded_and_shows_hostile_text_escaped() -> None:
    """Thousands of bad names give a short message with control characters escaped."""
    many = tuple(Package(name=f"bad name {i}\x1b[31m", version="1") for i in range(1000))
    with pytest.raises(ManifestError) as info:
        validate.check_body(body(*many))
    message = str(info.value)
    assert "\x1b" not in message and "\\x1b" in message
    assert "and 990 more" in message and len(message) < 2000


@pytest.mark.parametrize(
    "delta",
    [
        Delta(env=PY, changed=(Package(name="six", version="1.0", replaced="1.0\x1b[2J"),)),
        Delta(env=PY, image="sha256:\x1b]0;owned\x07"),
        Delta(env=Environment(kind="python", path="/opt/venv", interpreter="3.12\nfake")),
        Delta(env=R, changed=(Package(name="Rcpp", version="1.0.12", replaced="latest"),)),
    ],
)
def test_hostile_rebase_fields_refuse_the_manifest(delta: Delta) -> None:
    """What a rebase plan shows from the store (the replaced version, the image identity,
    the interpreter) must be a version, a digest, a version: else nothing is installed."""
    with pytest.raises(ManifestError):
        validate.check_body(Body(environments=(delta,)))


LEGACY = ["1.1build1", "0.1.43ubuntu1", "2.4.0-ubuntu1", "1.0~rc1", "1.0_1", "0.3-SNAPSHOT"]
"""Versions an image's apt or an old setuptools wrote, which pip calls non-standard."""


@pytest.mark.parametrize("version", LEGACY)
def test_a_non_pep440_image_version_passes_as_replaced_or_removed(version: str) -> None:
    """The image's version an upgrade replaced, and the version of an image package the
    user removed, may be a non-standard one (Ubuntu's `distro-info 1.1build1`): neither
    is put on a command line, and refusing them would restore nothing at all."""
    assert not validate.python_version(version)
    upgraded = Package(name="python-debian", version="0.1.49", replaced=version)
    removed = Package(name="distro-info", version=version)
    validate.check_body(Body(environments=(Delta(env=PY, changed=(upgraded,)),)))
    validate.check_body(body(Package(name="six", version="1.16.0"), removed=(removed,)))
    assert validate.package_problem(removed, "python", removed=True) is None


@pytest.mark.parametrize("version", LEGACY)
def test_what_the_user_installed_stays_pep440(version: str) -> None:
    """An addition's version, and a change's new version, are pinned as `name==version`:
    a non-standard one still refuses the manifest, and the checkpoint does not record it."""
    with pytest.raises(ManifestError, match="not a valid PEP 440 version"):
        validate.check_body(body(Package(name="ok", version=version)))
    changed = Package(name="ok", version=version, replaced="1.0")
    with pytest.raises(ManifestError, match="not a valid PEP 440 version"):
        validate.check_body(Body(environments=(Delta(env=PY, changed=(changed,)),)))
    assert validate.package_problem(Package(name="ok", version=version), "python") is not None


@pytest.mark.parametrize(
    "version",
    [
        "-1.0",
        "--index-url=https://evil.example/simple",
        ".1",
        "_1",
        "~1",
        " 1.0",
        "1.0 ",
        "1.0 beta",
        "1.0\t",
        "1.0\n",
        "1.0\x00",
        "1.0\x1b[2J",
        "1.0;id",
        "$(id)",
        "1.0`id`",
        "1.0|sh",
        "1.0/../x",
        ">=1.0",
        "1.*",
        "1.0,2.0",
        "1.0@x",
        "1:2.0",
        "1.\u0661",  # ARABIC-INDIC DIGIT ONE
        "1.0\u200b",
        "",
        "1" * 129,
    ],
)
def test_hostile_image_versions_still_refuse_the_manifest(version: str) -> None:
    """A replaced or removed version with whitespace, control characters, shell or
    requirement syntax, a leading `-`, non-ASCII or over 128 characters refuses the
    manifest as before."""
    assert not validate.legacy_version(version)
    upgraded = Package(name="six", version="1.16.0", replaced=version)
    with pytest.raises(ManifestError, match="is not a version"):
        validate.check_body(Body(environments=(Delta(env=PY, changed=(upgraded,)),)))
    with pytest.raises(ManifestError, match="not a valid version"):
        validate.check_body(body(removed=(Package(name="distro-info", version=version),)))


def test_r_versions_stay_strict_where_python_takes_legacy_ones() -> None:
    """R CMD INSTALL refuses a malformed version, so no R library holds one: in an R
    library a removed or replaced version must still be R's."""
    removed = Package(name="foo", version="1.0build1")
    with pytest.raises(ManifestError, match="not a valid R version"):
        validate.check_body(body(removed=(removed,), env=R))
    upgraded = Package(name="foo", version="1.1", replaced="1.0build1")
    with pytest.raises(ManifestError, match="is not a version"):
        validate.check_body(Body(environments=(Delta(env=R, changed=(upgraded,)),)))


@given(st.text(max_size=40))
def test_an_accepted_legacy_version_is_one_harmless_word(text: str) -> None:
    """Whatever the legacy check accepts is printable ASCII with no whitespace, no shell
    or requirement syntax, and no leading `-`."""
    if validate.legacy_version(text):
        assert text.isascii() and text.isprintable() and text[0] not in "-._~+"
        assert not any(c in text for c in " \t;|&$`'\"\\\n\x00<>=!,@:/*()[]{}#%")
