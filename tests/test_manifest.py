"""Manifest and baseline encoding, the named diff, and diff(baseline, scan) against a model."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
import zlib
from pathlib import Path

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from packaging.utils import canonicalize_name
from packaging.version import Version

from pkgckpt import manifest
from pkgckpt.errors import ManifestError, UnknownSchema
from pkgckpt.manifest import (
    Baseline,
    Body,
    Change,
    Delta,
    DirectorySource,
    Environment,
    Inventory,
    Manifest,
    Package,
    UrlSource,
    VcsSource,
    Writer,
)
from pkgckpt.scan.python import SiteScanner, scan_site

ENV = Environment(kind="python", path="/opt/conda", interpreter="3.11.7", platform="linux_x86_64")


def sample() -> Manifest:
    added = (
        Package(name="a", version="1.0", tags=("py3-none-any",), installer="pip"),
        Package(
            name="b",
            version="2.0",
            source=UrlSource(url="https://h/b.whl", hashes={"sha256": "ab"}),
        ),
        Package(
            name="c", version="0.1", source=VcsSource(vcs="git", url="https://h/c", commit="f00")
        ),
        Package(name="d", version="0.2", source=DirectorySource(path="/src/d", editable=True)),
    )
    delta = Delta(
        env=ENV,
        added=added,
        changed=(Package(name="numpy", version="2.0.0", requested=False),),
        removed=(Package(name="pandas", version="2.1.0"),),
        history=(Change(action="install", name="a", new="1.0", time="2026-01-01T00:00:00+00:00"),),
    )
    return Manifest(
        generation=3,
        writer=Writer(host="h", pid=1, version="0.1.0"),
        time="2026-01-01T00:00:00+00:00",
        body=Body(environments=(delta,)),
    )


def test_manifest_round_trips_through_its_bytes() -> None:
    """decode(encode(m)) == m for every kind of source, change and field."""
    m = sample()
    assert manifest.decode(manifest.encode(m)) == m


def test_checksum_holds_whatever_the_strings_hold() -> None:
    """Strings that look like the envelope's layout (newlines, a "body" key) still verify."""
    tricky = '"body":{}}\n\n "body": {}\n}\n'
    m = msgspec.structs.replace(
        sample(),
        writer=Writer(host=tricky, pid=1, version=tricky),
        time=tricky,
        body=Body(environments=(Delta(env=ENV, added=(Package(name=tricky, version="1"),)),)),
    )
    assert manifest.decode(manifest.encode(m)) == m
    assert manifest.decode(manifest.encode(Manifest(generation=1))) == Manifest(generation=1)


def test_encoding_is_deterministic_and_compact() -> None:
    """Equal manifests give equal bytes whatever the dict order; the JSON is one line whose
    body is `encode_body`'s bytes as they are."""
    one = UrlSource(url="u", hashes={"sha256": "1", "md5": "2"})
    two = UrlSource(url="u", hashes={"md5": "2", "sha256": "1"})

    def make(source: UrlSource) -> Manifest:
        delta = Delta(env=ENV, added=(Package(name="x", version="1", source=source),))
        return msgspec.structs.replace(sample(), body=Body(environments=(delta,)))

    assert manifest.encode(make(one)) == manifest.encode(make(two))
    data = manifest.encode(sample())
    assert data.endswith(b"}\n") and data.count(b"\n") == 1
    assert data.endswith(b',"body":' + manifest.encode_body(sample().body) + b"}\n")
    assert b'"requested"' not in manifest.encode(make(one)), "defaults are left out"


def test_an_empty_tuple_built_from_nothing_is_left_out_as_a_default() -> None:
    """Fields emptied by a filter encode as those read back, which leave them out: on
    Python 3.10, `tuple()` of an empty generator is not `()`, which omit_defaults knows
    by identity, and a daemon then took every commit it read back for another one's."""
    nothing = [Package(name="x", version="1")][1:]
    delta = Delta(env=ENV, added=tuple(p for p in nothing), forgotten=tuple(p for p in nothing))
    body = Body(environments=(delta,), events=tuple(e for e in ()))
    data = manifest.encode_body(body)
    assert data == b'{"environments":[{"env":' + manifest.encode_body(ENV) + b"}]}"
    assert manifest.encode_body(msgspec.json.decode(data, type=Body)) == data


def test_any_edit_or_tear_is_caught_by_the_checksum() -> None:
    """A changed byte in the body, or a file cut short, is a ManifestError."""
    data = manifest.encode(sample())
    edited = data.replace(b'"2.0.0"', b'"2.0.1"')
    assert edited != data
    with pytest.raises(ManifestError, match="checksum"):
        manifest.decode(edited)
    for cut in (0, 1, len(data) // 2, len(data) - 3):
        with pytest.raises(ManifestError):
            manifest.decode(data[:cut])


HEAD = b'{"schema":4,"checksum":"crc32:'


def sealed(data: bytes) -> bytes:
    """`data` with its whole-file checksum recomputed: what a writer of these bytes gives."""
    at = len(HEAD)
    assert data.startswith(HEAD)
    kept = data.rstrip()
    digest = b"%08x" % zlib.crc32(kept[:at] + kept[at + 8 :])
    return data[:at] + digest + data[at + 8 :]


def schema_3(m: Manifest) -> bytes:
    """`m` as pkgckpt wrote it in schema 3: compact, the whole-file checksum a sha256."""
    head = b'{"schema":3,"checksum":"sha256:'
    data = head + b"0" * 64 + manifest.encode(m)[len(HEAD) + 8 :]
    at = len(head)
    kept = data.rstrip()
    digest = hashlib.sha256(kept[:at] + kept[at + 64 :]).hexdigest().encode()
    return data[:at] + digest + data[at + 64 :]


def test_newer_fields_are_read_by_this_version_and_a_newer_schema_is_refused() -> None:
    """Unknown fields (a newer minor) are ignored; a newer major schema is UnknownSchema."""
    data = manifest.encode(sample())
    newer = sealed(
        data.replace(b',"generation"', b',"future":{"x":[1]},"generation"', 1)
        .replace(b'"env":{', b'"future_field":{"x":1},"env":{', 1)
        .replace(b'"name":"a"', b'"also_new":true,"name":"a"', 1)
    )
    assert manifest.decode(newer) == sample()
    with pytest.raises(UnknownSchema):
        manifest.decode(newer.replace(b'"schema":4', b'"schema":%d' % (manifest.SCHEMA + 1)))
    with pytest.raises(UnknownSchema):
        manifest.decode_baseline(json.dumps({"schema": manifest.BASELINE_SCHEMA + 1}).encode())


def legacy(m: Manifest) -> bytes:
    """`m` as pkgckpt wrote it before schema 2: the checksum covers the body only."""
    body = manifest._pretty(manifest.encode_body(m.body))
    envelope = {"schema": 1, "generation": m.generation, "time": m.time}
    head = json.dumps(envelope, indent=1)[:-2]
    digest = manifest.checksum(body).encode()
    return head.encode() + b',\n "checksum": "' + digest + b'",\n "body": ' + body + b"\n}\n"


def schema_2(m: Manifest) -> bytes:
    """`m` as pkgckpt wrote it in schema 2: the whole-file checksum, the envelope and the
    body indented by one space."""
    compact = schema_3(m).replace(b'"schema":3', b'"schema":2', 1)
    data = msgspec.json.format(compact, indent=1) + b"\n"
    at = len(b'{\n "schema": 2,\n "checksum": "sha256:')
    kept = data.rstrip()
    digest = hashlib.sha256(kept[:at] + kept[at + 64 :]).hexdigest().encode()
    return data[:at] + digest + data[at + 64 :]


def test_schema_2_indented_manifests_are_still_read() -> None:
    """A manifest as schema 2 wrote it (indented) decodes to the same record, and its
    checksum still guards every byte."""
    m = sample()
    data = schema_2(m)
    assert data.startswith(b'{\n "schema": 2,\n "checksum": "sha256:')
    found = manifest.decode(data)
    assert (found.schema, found.generation, found.body) == (2, m.generation, m.body)
    with pytest.raises(ManifestError, match="checksum"):
        manifest.decode(data.replace(b'"generation": 3', b'"generation": 4'))
    with pytest.raises(ManifestError, match="does not start"):
        manifest.decode(data.replace(b'"schema": 2', b'"schema": 3', 1))


def test_schema_3_sha256_manifests_are_still_read() -> None:
    """A manifest as schema 3 wrote it (compact, sha256 over the whole file) decodes to the
    same record, and its checksum still guards every byte of the envelope and body."""
    m = sample()
    data = schema_3(m)
    found = manifest.decode(data)
    assert (found.schema, found.generation, found.body) == (3, m.generation, m.body)
    for old, new in ((b'"generation":3', b'"generation":4'), (b'"2.0.0"', b'"2.0.1"')):
        with pytest.raises(ManifestError, match="checksum"):
            manifest.decode(data.replace(old, new, 1))
    with pytest.raises(ManifestError, match="does not start"):
        manifest.decode(data.replace(b'"schema":3', b'"schema":4', 1))


def test_schema_4_checksum_is_crc32_of_every_byte_but_its_digits() -> None:
    """The 8 digits after the head are the CRC-32 of the file without them and without
    the trailing newline: what another implementation needs to check one."""
    data = manifest.encode(sample())
    assert data.startswith(HEAD) and sealed(data) == data
    kept = data.rstrip()
    assert int(data[len(HEAD) : len(HEAD) + 8], 16) == zlib.crc32(
        kept[: len(HEAD)] + kept[len(HEAD) + 8 :]
    )
    assert json.loads(data)["checksum"] == "crc32:" + data[len(HEAD) : len(HEAD) + 8].decode()


def test_schema_1_manifests_are_still_read() -> None:
    """A manifest written by the previous format decodes to the same record."""
    m = msgspec.structs.replace(sample(), writer=None)
    found = manifest.decode(legacy(m))
    assert (found.schema, found.generation, found.body) == (1, m.generation, m.body)
    with pytest.raises(ManifestError, match="checksum"):
        manifest.decode(legacy(m).replace(b'"2.0.0"', b'"2.0.1"'))


def test_the_checksum_covers_the_envelope_too() -> None:
    """An edit to the generation, the writer or the time fails the checksum."""
    data = manifest.encode(sample())
    for old, new in (
        (b'"generation":3', b'"generation":4'),
        (b'"host":"h"', b'"host":"x"'),
        (b"2026-01-01T00:00:00+00:00", b"2026-01-01T00:00:01+00:00"),
        (b',"body":{', b',"body": {'),
    ):
        edited = data.replace(old, new, 1)
        assert edited != data
        with pytest.raises(ManifestError, match="checksum"):
            manifest.decode(edited)


REFUSED = {
    "invalid UTF-8 in an envelope key": (
        lambda d: d.replace(b'"time"', b'"ti\xffme"'),
        "not valid UTF-8",
    ),
    "a key twice in the envelope": (
        lambda d: d.replace(b'"generation":3,', b'"generation":3,"generation":9,'),
        "'generation' twice",
    ),
    "a second checksum": (
        lambda d: d.replace(b'"generation":3,', b'"checksum":"sha256:0","generation":3,'),
        "'checksum' twice",
    ),
    "generation zero": (lambda d: d.replace(b'"generation":3', b'"generation":0'), "outside 1"),
    "negative generation": (
        lambda d: d.replace(b'"generation":3', b'"generation":-5'),
        "outside 1",
    ),
    "generation past 2**53": (
        lambda d: d.replace(b'"generation":3', b'"generation":18446744073709551615'),
        "outside 1",
    ),
    "a field after the body": (lambda d: d[:-2] + b',"x":1}\n', "after its body"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_a_sealed_but_malformed_envelope_is_refused(case: str) -> None:
    """Defects a correct checksum does not excuse are each a ManifestError with a reason."""
    edit, reason = REFUSED[case]
    data = edit(manifest.encode(sample()))
    if data.startswith(HEAD) and b"\xff" not in data:
        data = sealed(data)
    with pytest.raises(ManifestError, match=reason):
        manifest.decode(data)


@pytest.mark.parametrize("depth", [manifest.MAX_DEPTH + 1, 1000, 100_000])
def test_deep_nesting_is_refused_without_recursion_error(depth: int) -> None:
    """A body nested past MAX_DEPTH is a ManifestError, however deep: never RecursionError."""
    deep = b"[" * depth + b"]" * depth
    data = manifest.encode(sample()).replace(
        b'"environments":[', b'"x":%s,"environments":[' % deep, 1
    )
    with pytest.raises(ManifestError, match="nested deeper"):
        manifest.decode(sealed(data))


def test_brackets_inside_strings_do_not_count_as_nesting() -> None:
    """A string full of brackets is data, not depth."""
    m = msgspec.structs.replace(sample(), time="[" * 100 + "{" * 100)
    assert manifest.decode(manifest.encode(m)) == m


def test_an_environment_twice_is_refused() -> None:
    """Two deltas for one environment would make two plans: the manifest is refused."""
    twice = msgspec.structs.replace(
        sample(), body=Body(environments=(sample().body.environments * 2))
    )
    with pytest.raises(ManifestError, match="twice"):
        manifest.decode(manifest.encode(twice))


ENVELOPE_END = manifest.encode(sample()).index(b',"body":')


@settings(max_examples=10_000, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, ENVELOPE_END - 1),
            st.sampled_from(["flip", "set", "insert", "delete"]),
            st.integers(0, 255),
        ),
        min_size=1,
        max_size=4,
    )
)
def test_mutated_envelope_is_refused_or_means_the_same(
    mutations: list[tuple[int, str, int]],
) -> None:
    """Random byte edits of the envelope never crash the reader and never change its meaning."""
    original = sample()
    data = bytearray(manifest.encode(original))
    for at, how, value in mutations:
        if how == "flip":
            data[at] ^= 1 << (value % 8)
        elif how == "set":
            data[at] = value
        elif how == "insert":
            data.insert(at, value)
        else:
            del data[at]
    try:
        found = manifest.decode(bytes(data))
    except ManifestError:
        return
    assert found == original


def test_baseline_round_trips_and_finds_its_environments() -> None:
    """A baseline decodes to what was encoded; inventory() matches on kind, path and user."""
    inv = Inventory(env=ENV, packages=(Package(name="a", version="1"),))
    user = Inventory(env=msgspec.structs.replace(ENV, user=True))
    b = Baseline(time="2026-01-01T00:00:00+00:00", environments=(inv, user))
    back = manifest.decode_baseline(manifest.encode_baseline(b))
    assert back == b
    assert back.inventory(msgspec.structs.replace(ENV, interpreter="3.12.0")) == inv
    assert back.inventory(msgspec.structs.replace(ENV, user=True)) == user
    with pytest.raises(ManifestError):
        manifest.decode_baseline(b"[1, 2]")


def test_diff_names_each_change() -> None:
    """install, remove, upgrade, downgrade; a new source at the same version is an upgrade."""
    old = {
        "gone": Package(name="gone", version="1"),
        "up": Package(name="up", version="1.9"),
        "down": Package(name="down", version="10.0"),
        "same": Package(name="same", version="1"),
        "moved": Package(name="moved", version="1"),
    }
    new = {
        "new": Package(name="new", version="1"),
        "up": Package(name="up", version="1.10"),
        "down": Package(name="down", version="9.0"),
        "same": Package(name="same", version="1", requested=False),
        "moved": Package(name="moved", version="1", source=VcsSource(vcs="git", url="u")),
    }
    got = [(c.action, c.name, c.old, c.new) for c in manifest.diff(old, new)]
    assert got == [
        ("downgrade", "down", "10.0", "9.0"),
        ("remove", "gone", "1", None),
        ("upgrade", "moved", "1", "1"),
        ("install", "new", None, "1"),
        ("upgrade", "up", "1.9", "1.10"),
    ]
    r = manifest.diff(
        {"x": Package(name="x", version="1.0-2")}, {"x": Package(name="x", version="1.0-10")}, "r"
    )
    assert [c.action for c in r] == ["upgrade"]
    respelled = manifest.diff(
        {"x": Package(name="x", version="1.0")}, {"x": Package(name="x", version="1.0.0")}
    )
    assert [c.action for c in respelled] == ["upgrade"], "equal versions are no downgrade"


# -- the property: random installs on a real (fake) site-packages, diff vs a model ------

NAMES = ("Alpha", "beta_pkg", "Gamma.Py", "delta-x", "Eps")
VERSIONS = ("0.9", "1.0", "1.0.post1", "1.1rc1", "1.1", "2.0", "10.0", "1!0.1")

op = st.tuples(st.sampled_from(NAMES), st.sampled_from((None, *VERSIONS)))
"""(name, version): install / upgrade / downgrade to version, or remove when None."""


def spelled(name: str, variant: int) -> str:
    """One of the spellings a distribution's metadata may use for a canonical name."""
    return (name, name.upper(), name.replace("-", "_"), name.replace("_", "."))[variant % 4]


class Site:
    """A site-packages written the way pip leaves it, and the model of what it holds."""

    def __init__(self, root: Path, aged: bool) -> None:
        self.root = root
        self.aged = aged
        self.stamp = time.time_ns() - 3600 * 10**9
        self.state: dict[str, str] = {}
        self.dirs: dict[str, Path] = {}
        root.mkdir()

    def apply(self, name: str, version: str | None, variant: int) -> None:
        key = canonicalize_name(name)
        if key in self.dirs:
            # pip moves the old dist-info aside (~ stash), installs, then deletes the stash.
            stash = self.root / ("~" + self.dirs[key].name[1:])
            self.dirs.pop(key).rename(stash)
            shutil.rmtree(stash)
            del self.state[key]
        if version is not None:
            d = self.root / f"{key.replace('-', '_')}-{version}.dist-info"
            d.mkdir()
            spelling = spelled(name, variant)
            (d / "METADATA").write_text(f"Name: {spelling}\nVersion: {version}\n\nName: body\n")
            (d / "RECORD").write_text("")
            self.dirs[key] = d
            self.state[key] = version
            self.touch(d)
        self.touch(self.root)

    def touch(self, path: Path) -> None:
        if self.aged:
            # Each change gets a distinct past time: what a scan long after the change sees.
            self.stamp += 1000
            os.utime(path, ns=(self.stamp, self.stamp))


def truth(
    base: dict[str, str], now: dict[str, str]
) -> list[tuple[str, str, str | None, str | None]]:
    """The changes from `base` to `now`, worked out from the model alone."""
    out: list[tuple[str, str, str | None, str | None]] = []
    for name in sorted(base.keys() | now.keys()):
        a, b = base.get(name), now.get(name)
        if a is None:
            out.append(("install", name, None, b))
        elif b is None:
            out.append(("remove", name, a, None))
        elif a != b:
            out.append(("upgrade" if Version(b) > Version(a) else "downgrade", name, a, b))
    return out


@settings(max_examples=80, deadline=None)
@given(
    image=st.lists(op, max_size=5),
    steps=st.lists(st.tuples(op, st.integers(0, 3), st.booleans()), max_size=25),
    aged=st.booleans(),
)
def test_diff_of_baseline_and_scan_equals_the_model(
    image: list[tuple[str, str | None]],
    steps: list[tuple[tuple[str, str | None], int, bool]],
    aged: bool,
) -> None:
    """Random install/upgrade/downgrade/remove sequences: diff(baseline, scan) is the truth."""
    shm = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
    with tempfile.TemporaryDirectory(dir=shm) as tmp:
        site = Site(Path(tmp) / "site", aged)
        for name, version in image:
            site.apply(name, version, 0)
        scanner = SiteScanner(site.root)
        baseline = scanner.scan().packages
        assert {k: p.version for k, p in baseline.items()} == site.state
        image_state = dict(site.state)
        for (name, version), variant, scan_now in steps:
            site.apply(name, version, variant)
            if scan_now:
                scanner.scan()
        current = scanner.scan().packages
        got = [(c.action, c.name, c.old, c.new) for c in manifest.diff(baseline, current)]
        assert got == truth(image_state, site.state)
        assert current == scan_site(site.root).packages, "incremental equals a full scan"


@pytest.mark.parametrize(
    ("want", "have", "same"),
    [
        # pip's record of `pip install 'file:///p#subdirectory=sub'`, and of the reinstall
        # restore makes from /p/sub: one directory, written down two ways.
        (DirectorySource(path="/p", subdirectory="sub"), DirectorySource(path="/p/sub"), True),
        (DirectorySource(path="/p/sub"), DirectorySource(path="/p", subdirectory="sub"), True),
        (DirectorySource(path="/p", subdirectory="a/b"), DirectorySource(path="/p/a/b/"), True),
        (DirectorySource(path="/p", subdirectory="./sub/"), DirectorySource(path="/p/sub"), True),
        (DirectorySource(path="/p", subdirectory="sub"), DirectorySource(path="/p"), False),
        (DirectorySource(path="/p", subdirectory="sub"), DirectorySource(path="/p/other"), False),
        (
            DirectorySource(path="/p", subdirectory="sub", editable=True),
            DirectorySource(path="/p/sub"),
            False,
        ),
    ],
)
def test_a_directory_source_is_the_directory_the_installer_is_given(
    want: DirectorySource, have: DirectorySource, same: bool
) -> None:
    """A directory and its subdirectory are the same source as the joined directory: what
    restore gives the installer, and what the installer then records."""
    assert manifest.same_source(want, have) is same


versions = st.dictionaries(
    st.sampled_from(["attrs", "idna", "numpy", "tinyx", "zlib-ng"]),
    st.sampled_from(["1.0", "1.1", "2.0"]),
)


@given(image=versions, user=versions, gone=st.sets(st.sampled_from(["attrs", "idna", "numpy"])))
def test_the_recorded_image_is_told_from_a_baseline_holding_the_users_packages(
    image: dict[str, str], user: dict[str, str], gone: set[str]
) -> None:
    """A baseline taken where the user's state persisted gives back the record's image."""
    shipped = {n: Package(name=n, version=v) for n, v in image.items()}
    state = {**shipped, **{n: Package(name=n, version=v) for n, v in user.items()}}
    for name in gone - user.keys():
        state.pop(name, None)
    d = msgspec.structs.replace(
        manifest.delta(ENV, shipped, state), image=manifest.image_identity(shipped.values())
    )
    found = manifest.recorded_image(state.values(), d, taken_here=True)
    assert found is not None
    assert [(p.name, p.version) for p in found] == sorted(image.items())
    assert manifest.recorded_image(shipped.values(), d, taken_here=True) == sorted(
        shipped.values(), key=lambda p: p.name
    ), "the image itself, with nothing of the user's in place, is the image"


def test_a_forgotten_install_still_in_place_is_not_taken_for_the_images() -> None:
    """`pkgckpt forget` leaves the package installed, so a baseline a new container takes
    from a library that outlived the last one lists it: the record's image is still told
    from it, an addition and an upgrade forgotten alike. Read as the image, it made the
    restore rebase, and an install the record holds pass for one the image ships."""
    old = {"idna": Package(name="idna", version="3.8")}
    state = {
        "idna": Package(name="idna", version="3.10"),
        "tinyx": Package(name="tinyx", version="1.0"),
        "gamma": Package(name="gamma", version="1.0"),
    }
    recorded = {"idna": old["idna"], "tinyx": state["tinyx"]}
    d = msgspec.structs.replace(
        manifest.delta(ENV, old, recorded),
        image=manifest.image_identity(old.values()),
        forgotten=(
            Package(name="gamma", version="1.0"),
            Package(name="idna", version="3.10", replaced="3.8"),
        ),
    )
    assert manifest.recorded_image(state.values(), d, taken_here=True) == [old["idna"]]
    user_site = msgspec.structs.replace(d, env=msgspec.structs.replace(ENV, user=True))
    assert manifest.unapply(state.values(), user_site, own=True) == {}


def test_another_image_or_an_unrecorded_one_is_not_taken_for_the_record() -> None:
    """A baseline that differs from the record's image by more than the user's packages,
    an image-build baseline, or a record with no image, gives no recorded image."""
    old = {"idna": Package(name="idna", version="3.8")}
    state = {**old, "tinyx": Package(name="tinyx", version="1.0")}
    d = msgspec.structs.replace(
        manifest.delta(ENV, old, state), image=manifest.image_identity(old.values())
    )
    assert manifest.recorded_image(state.values(), d, taken_here=True) == [old["idna"]]
    assert manifest.recorded_image(state.values(), d, taken_here=False) is None, (
        "an image-build baseline is the image: it may ship just what the user installed"
    )
    newer = {**state, "idna": Package(name="idna", version="3.10")}
    assert manifest.recorded_image(newer.values(), d, taken_here=True) is None
    assert (
        manifest.recorded_image(
            state.values(), msgspec.structs.replace(d, image=None), taken_here=True
        )
        is None
    )


def test_unapply_of_a_user_sites_own_listing_drops_an_addition_that_shadowed_its_prefix() -> None:
    """The user site's own library never held its prefix's copy, so an addition that
    replaced it goes out of that listing, and back to the prefix's version in the image."""
    user_site = msgspec.structs.replace(ENV, user=True)
    mine = Package(name="idna", version="3.10", replaced="3.8")
    d = Delta(env=user_site, added=(mine,))
    assert manifest.unapply([mine], d, own=True) == {}
    assert manifest.unapply([mine], d) == {"idna": Package(name="idna", version="3.8")}
