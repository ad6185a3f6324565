"""Capture in an environment another user can write: a link planted in it, or a directory
swapped for one while the capture reads it, never makes the capture read the capturing
user's own files (`~/.ssh`) into an artifact. Fake installed trees, real captures."""

from __future__ import annotations

import os
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

from pkgckpt.artifacts import Job, rpkg, wheel
from pkgckpt.errors import Uncapturable
from pkgckpt.manifest import Environment, Package

SECRET = b"-----BEGIN OPENSSH PRIVATE KEY----- alice's own\n"


@pytest.fixture
def ssh(tmp_path: Path) -> Path:
    """The capturing user's private directory, outside every environment."""
    home = tmp_path / "home" / ".ssh"
    home.mkdir(parents=True)
    (home / "id_rsa").write_bytes(SECRET)
    (home / "secret").write_bytes(SECRET)
    return home


# -- Python ------------------------------------------------------------------------------


def python_env(tmp_path: Path, record: list[str]) -> tuple[Job, Path]:
    """A prefix whose site-packages holds evil 1.0's dist-info with `record` as RECORD."""
    prefix = tmp_path / "env"
    site = prefix / "lib" / "python3.11" / "site-packages"
    info = site / "evil-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: evil\nVersion: 1.0\n")
    (info / "WHEEL").write_text("Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
    rows = [*record, "evil-1.0.dist-info/METADATA", "evil-1.0.dist-info/WHEEL"]
    (info / "RECORD").write_text("".join(f"{r},,\n" for r in rows))
    env = Environment(kind="python", path=str(prefix), interpreter="3.11.7")
    return Job(env=env, roots=(site,), package=Package(name="evil", version="1.0")), site


def test_a_wheel_capture_never_reads_record_paths_through_a_planted_link(
    tmp_path: Path, ssh: Path
) -> None:
    """RECORD lists `evil/secret` and `site-packages/evil` links to the user's ~/.ssh: the
    package is not captured, the reason names the link, and nothing is written."""
    job, site = python_env(tmp_path, ["evil/__init__.py", "evil/secret"])
    (ssh / "__init__.py").write_text("")
    (site / "evil").symlink_to(ssh)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(
        Uncapturable,
        match=r"\(in RECORD\) cannot be read: .*site-packages/evil: a link or not a directory",
    ):
        wheel.capture(job, out)
    assert not any(SECRET in f.read_bytes() for f in out.rglob("*") if f.is_file())


def test_a_wheel_capture_refuses_a_record_file_that_is_a_link(tmp_path: Path, ssh: Path) -> None:
    """The last component a link (`evil/key -> ~/.ssh/id_rsa`): not read, not captured."""
    job, site = python_env(tmp_path, ["evil/key"])
    (site / "evil").mkdir()
    (site / "evil" / "key").symlink_to(ssh / "id_rsa")
    with pytest.raises(Uncapturable, match="evil/key: a link"):
        wheel.capture(job, tmp_path)


def test_a_wheel_capture_still_takes_scripts_and_data_from_the_prefix(tmp_path: Path) -> None:
    """RECORD's `../../../bin/x` and `../../../share/...` are under the prefix, read
    beneath it: packed as the wheel's .data, the package's own files beside them."""
    job, site = python_env(
        tmp_path, ["evil/__init__.py", "../../../bin/evil-tool", "../../../share/evil/data.txt"]
    )
    prefix = Path(job.env.path)
    (site / "evil").mkdir()
    (site / "evil" / "__init__.py").write_text("x = 1\n")
    (prefix / "bin").mkdir()
    (prefix / "bin" / "evil-tool").write_text(f"#!{prefix}/bin/python3\nprint('hi')\n")
    (prefix / "share" / "evil").mkdir(parents=True)
    (prefix / "share" / "evil" / "data.txt").write_text("data\n")
    built = wheel.capture(job, tmp_path)
    with zipfile.ZipFile(built) as zf:
        names = set(zf.namelist())
        assert zf.read("evil-1.0.data/scripts/evil-tool") == b"#!python\nprint('hi')\n"
    assert {
        "evil/__init__.py",
        "evil-1.0.data/data/share/evil/data.txt",
        "evil-1.0.dist-info/RECORD",
    } <= names


# -- R -----------------------------------------------------------------------------------

DESCRIPTION = "Package: evil\nVersion: 1.0\nBuilt: R 4.4.1; ; 2024-06-14 08:00:00 UTC; unix\n"


def r_library(tmp_path: Path) -> tuple[Job, Path]:
    """A library whose package evil holds `x/m` and `x/a/{0big,id_rsa}` (a dummy key)."""
    lib = tmp_path / "lib"
    package = lib / "evil"
    (package / "x" / "a").mkdir(parents=True)
    (package / "DESCRIPTION").write_text(DESCRIPTION)
    (package / "x" / "m").write_bytes(b"m\n")
    (package / "x" / "a" / "0big").write_bytes(b"0" * 4096)
    (package / "x" / "a" / "id_rsa").write_bytes(b"bob's dummy\n")
    env = Environment(kind="r", path=str(lib), interpreter="4.4.1", platform="x86_64-pc-linux-gnu")
    return Job(env=env, roots=(lib,), package=Package(name="evil", version="1.0")), package


def members(tarball: Path) -> dict[str, bytes]:
    """Every file member of a tarball: its bytes."""
    found = {}
    with tarfile.open(tarball) as tar:
        for m in tar:
            f = tar.extractfile(m) if m.isfile() else None
            if f is not None:
                found[m.name] = f.read()
    return found


def on_open(
    monkeypatch: pytest.MonkeyPatch, name: str, then: Callable[[], None], after: bool = True
) -> None:
    """Call `then` once, right after (or before) the capture opens a file named `name`:
    what another user watching with inotify can do."""
    real = os.open
    done: list[bool] = []

    def watched(path: str | os.PathLike[str], flags: int, *args: object, **kw: object) -> int:
        hit = not done and Path(path).name == name
        if hit and not after:
            done.append(True)
            then()
        fd = real(path, flags, *args, **kw)  # type: ignore[arg-type]
        if hit and after:
            done.append(True)
            then()
        return fd

    monkeypatch.setattr(os, "open", watched)


def test_an_r_capture_never_follows_a_directory_swapped_for_a_link_mid_read(
    tmp_path: Path, ssh: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once `x/a/0big` is open, `x/a` is renamed away and made a link to ~/.ssh: the rest
    of `x/a` is read from the directory listed, so the tarball holds the dummy key and
    never the user's own."""
    job, package = r_library(tmp_path)

    def swap() -> None:
        (package / "x" / "a").rename(package / "x" / "a.real")
        (package / "x" / "a").symlink_to(ssh)

    on_open(monkeypatch, "0big", swap)
    out = tmp_path / "out"
    out.mkdir()
    found = members(rpkg.capture(job, out))
    assert found["evil/x/a/id_rsa"] == b"bob's dummy\n"
    assert not any(SECRET in data for data in found.values())


def test_an_r_capture_refuses_a_directory_swapped_for_a_link_before_it_is_read(
    tmp_path: Path, ssh: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`x/a` listed as a directory, then made a link before the capture reaches it: the
    package is uncapturable, rather than packed with `x/a` empty or followed."""
    job, package = r_library(tmp_path)

    def swap() -> None:
        (package / "x" / "a").rename(package / "x" / "a.real")
        (package / "x" / "a").symlink_to(ssh)

    on_open(monkeypatch, "m", swap)
    with pytest.raises(Uncapturable, match="evil/x/a changed while it was captured"):
        rpkg.capture(job, tmp_path)


def test_an_r_capture_packs_a_planted_directory_link_as_a_link_and_refuses_it(
    tmp_path: Path, ssh: Path
) -> None:
    """A link to ~/.ssh planted inside the package before the capture is not descended
    into: it is a link out of the package, which makes the package uncapturable."""
    job, package = r_library(tmp_path)
    (package / "x" / "keys").symlink_to(ssh)
    with pytest.raises(Uncapturable, match="evil/x/keys links out of the package"):
        rpkg.capture(job, tmp_path)


def test_an_r_package_directory_that_is_a_link_is_not_captured(tmp_path: Path) -> None:
    """`lib/evil` a link to the user's own private install of evil: not captured, and the
    reason says it is a link; nothing of the private install reaches an artifact."""
    job, package = r_library(tmp_path)
    private = tmp_path / "home" / "private-lib" / "evil"
    private.parent.mkdir(parents=True)
    package.rename(private)
    (private / "x" / "a" / "id_rsa").write_bytes(SECRET)
    package.symlink_to(private)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(Uncapturable, match="is a link, not a directory"):
        rpkg.capture(job, out)
    assert not any(f.is_file() for f in out.rglob("*"))


def test_an_r_file_replaced_after_its_listing_is_not_captured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`x/a/id_rsa` replaced by another file between the listing and its open: uncapturable
    (the file opened is compared with the one listed), never packed as listed."""
    job, package = r_library(tmp_path)
    key = package / "x" / "a" / "id_rsa"

    def replace() -> None:
        key.unlink()
        key.write_bytes(b"other\n")

    on_open(monkeypatch, "id_rsa", replace, after=False)
    with pytest.raises(Uncapturable, match="evil/x/a/id_rsa changed while it was captured"):
        rpkg.capture(job, tmp_path)


def test_an_untouched_r_package_packs_to_the_same_members_as_before(tmp_path: Path) -> None:
    """Walking through descriptors keeps the order the tarball always had: each directory's
    entries in name order, then its subdirectories' (os.walk's order)."""
    job, package = r_library(tmp_path)
    (package / "R").mkdir()
    (package / "R" / "evil").write_text("f <- function() 1\n")
    (package / "x" / "link").symlink_to("./a//0big")
    with tarfile.open(rpkg.capture(job, tmp_path)) as tar:
        names = [m.name for m in tar]
        # As Path.readlink spelled it: a capture of the same install keeps its bytes.
        assert tar.getmember("evil/x/link").linkname == "a/0big"
    assert names == [
        "evil",
        "evil/DESCRIPTION",
        "evil/R",
        "evil/x",
        "evil/R/evil",
        "evil/x/a",
        "evil/x/link",
        "evil/x/m",
        "evil/x/a/0big",
        "evil/x/a/id_rsa",
    ]
