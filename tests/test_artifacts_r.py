"""R artifacts with real R: installed packages captured as binary package tarballs on the
store, then installed with R CMD INSTALL into a fresh library with no repository and no
compiler, as the very same install; a tampered or foreign one is never installed."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import stat
import tarfile
from pathlib import Path

import msgspec
import pytest
import rpkgs

from pkgckpt import artifacts
from pkgckpt.artifacts import ArtifactRefused, Job, rpkg
from pkgckpt.config import Config
from pkgckpt.errors import Uncapturable
from pkgckpt.manifest import Artifact, Environment, Package
from pkgckpt.restore.r import RInstaller
from pkgckpt.restore.runner import Deadline
from pkgckpt.rmatch import minor
from pkgckpt.scan.r import RLibraryScanner, r_environment, r_info
from pkgckpt.store import Store, init_store

needs_r = rpkgs.needs_r

USER = ("ckptAfirst", "ckptC")
"""Installed by name: ckptAfirst brings ckptImports and ckpt.base; ckptC has C code."""


class Captured:
    """A user's library captured on a store, and the repository it came from (removable)."""

    def __init__(self, root: Path) -> None:
        self.repo = rpkgs.build_repo(root / "cran")
        self.lib = root / "lib"
        rpkgs.install(self.lib, self.repo, USER, [self.repo.tarball("ckptOld", "0.9-1")])
        self.env = r_environment(self.lib)
        init_store(root / "store")
        self.store = Store(root / "store", "k")
        self.config = Config(store=root / "store", key="k")
        self.packages: dict[str, Package] = {}
        for p in RLibraryScanner(self.lib).scan().packages.values():
            job = Job(env=self.env, roots=(self.lib,), package=p)
            art = artifacts.capture(self.store, self.config, job)
            self.packages[p.name] = msgspec.structs.replace(p, artifact=art)

    def fetch(self, into: Path) -> dict[str, Path]:
        """A verified private copy of every artifact."""
        into.mkdir(exist_ok=True)
        return {
            n: artifacts.fetch(self.store, self.config, p, into) for n, p in self.packages.items()
        }


@pytest.fixture(scope="module")
def captured(tmp_path_factory: pytest.TempPathFactory) -> Captured:
    return Captured(tmp_path_factory.mktemp("captured"))


def no_compiler(monkeypatch: pytest.MonkeyPatch, tmp: Path) -> None:
    """CC=false, and R's own make variables too: R CMD INSTALL takes CC from R's Makeconf,
    not the environment, unless a user Makevars says otherwise."""
    makevars = tmp / "Makevars"
    makevars.write_text("CC=false\nCXX=false\nCXX11=false\nCXX17=false\nFC=false\nF77=false\n")
    monkeypatch.setenv("CC", "false")
    monkeypatch.setenv("R_MAKEVARS_USER", str(makevars))


def tree(directory: Path) -> dict[str, bytes]:
    """Every file of an installed package, by relative path: its bytes (a link: its target)."""
    found = {}
    for path in sorted(directory.rglob("*")):
        rel = str(path.relative_to(directory))
        if path.is_symlink():
            found[rel] = b"->" + str(path.readlink()).encode()
        elif path.is_file():
            found[rel] = path.read_bytes()
    return found


def installer(lib: Path) -> RInstaller:
    # No discovery: the machine's own R libraries are not the test's.
    return RInstaller(r_environment(lib), Config(discover=()), jobs=2)


@needs_r
def test_a_captured_library_installs_offline_without_a_compiler_as_the_same_install(
    captured: Captured, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Repository gone and no compiler: every package installs from its artifact into a
    fresh library, installed.packages() and every installed file are the same as the
    user's, the C code runs, and R loads each one."""
    version, platform = r_info()
    for name, p in captured.packages.items():
        assert p.artifact is not None
        assert p.artifact.file == f"R-{minor(version)}/{name}_{p.version}_R_{platform}.tar.gz"
    shutil.rmtree(captured.repo.root)
    no_compiler(monkeypatch, tmp_path)
    source = tmp_path / "src"
    shutil.copytree(rpkgs.SOURCES / "ckptC", source / "ckptC")
    with pytest.raises(RuntimeError, match="compilation failed"):
        rpkgs.install(tmp_path / "would-compile", captured.repo, tarballs=[source / "ckptC"])

    fresh = tmp_path / "fresh"
    files = captured.fetch(tmp_path / "fetched")
    wanted = list(captured.packages.values())
    outcome = installer(fresh).install_artifacts(wanted, files, deadline=Deadline(300))
    assert outcome.ok, outcome.output
    assert rpkgs.installed(fresh) == rpkgs.installed(captured.lib)
    for name in captured.packages:
        assert tree(fresh / name) == tree(captured.lib / name), name
    assert RLibraryScanner(fresh).scan().packages == RLibraryScanner(captured.lib).scan().packages
    out = rpkgs.rscript(
        ".libPaths(commandArgs(TRUE)); cat(ckptC::c_add(2L, 3L), ckptAfirst::afirst_value(),"
        " ckptOld::old_version())",
        str(fresh),
    )
    assert out.split() == ["5", "84", "0.9-1"]


@needs_r
def test_capture_is_deterministic_and_stored_private(captured: Captured, tmp_path: Path) -> None:
    """The same install packs to the same bytes; the store holds it 0600 under R-x.y/ (0700),
    with the sha256 and size the manifest records."""
    p = captured.packages["ckptC"]
    assert p.artifact is not None
    job = Job(env=captured.env, roots=(captured.lib,), package=p)
    again = tmp_path / "again"
    again.mkdir()
    data = rpkg.capture(job, again).read_bytes()
    assert hashlib.sha256(data).hexdigest() == p.artifact.sha256
    assert len(data) == p.artifact.size
    on_store = captured.store.path / "artifacts" / p.artifact.file
    assert stat.S_IMODE(on_store.stat().st_mode) == 0o600
    assert stat.S_IMODE(on_store.parent.stat().st_mode) == 0o700
    with tarfile.open(on_store) as tar:
        members = tar.getmembers()
    assert all(m.name == "ckptC" or m.name.startswith("ckptC/") for m in members)
    assert {(m.uid, m.gid, m.mtime) for m in members} == {(0, 0, rpkg.EPOCH)}


@needs_r
def test_a_tampered_truncated_or_missing_artifact_is_refused_naming_its_hash(
    captured: Captured, tmp_path: Path
) -> None:
    """The store's copy changed by one byte, cut short or deleted: fetch refuses it and
    names the recorded hash; nothing reaches the library."""
    p = captured.packages["ckpt.base"]
    assert p.artifact is not None
    on_store = captured.store.path / "artifacts" / p.artifact.file
    good = on_store.read_bytes()
    into = tmp_path / "into"
    into.mkdir()
    try:
        for bad in (good[:-1] + bytes([good[-1] ^ 1]), good[: len(good) // 2]):
            on_store.write_bytes(bad)
            with pytest.raises(ArtifactRefused, match=p.artifact.sha256):
                artifacts.fetch(captured.store, captured.config, p, into)
            assert not list(into.iterdir())
        on_store.unlink()
        with pytest.raises(ArtifactRefused, match="missing"):
            artifacts.fetch(captured.store, captured.config, p, into)
    finally:
        on_store.write_bytes(good)
        on_store.chmod(0o600)


def _retar(source: Path, dest: Path, edit: dict[str, bytes | None]) -> Path:
    """A copy of binary tarball `source` with members replaced (bytes) or added as links
    (None: a link to /etc/passwd)."""
    with tarfile.open(source) as tar, tarfile.open(dest, "w:gz") as out:
        for m in tar.getmembers():
            content = edit.get(m.name)
            if content is None:
                out.addfile(m, tar.extractfile(m) if m.isfile() else None)
            else:
                m.size = len(content)
                out.addfile(m, io.BytesIO(content))
        for name in (n for n, c in edit.items() if c is None):
            link = tarfile.TarInfo(name)
            link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
            out.addfile(link)
    return dest


@needs_r
def test_a_binary_for_another_r_or_another_package_is_never_installed(
    captured: Captured, tmp_path: Path
) -> None:
    """Built for the previous R minor, holding another package or version, or carrying a
    link out of the package: refused before R CMD INSTALL runs, each with its reason."""
    files = captured.fetch(tmp_path / "fetched")
    desc = captured.lib / "ckpt.base" / "DESCRIPTION"
    text = desc.read_bytes()
    version = r_info()[0]
    major, minor_ = version.split(".")[:2]
    older = f"{major}.{int(minor_) - 1}.3".encode()
    source = files["ckpt.base"]
    cases: dict[str, dict[str, bytes | None]] = {
        "built for R": {
            "ckpt.base/DESCRIPTION": text.replace(f"R {version}".encode(), b"R " + older)
        },
        "holds ckpt.base 9.9": {
            "ckpt.base/DESCRIPTION": text.replace(b"Version: 1.0.0", b"Version: 9.9")
        },
        "links out of the package": {"ckpt.base/R/evil": None},
    }
    fresh = tmp_path / "fresh"
    p = captured.packages["ckpt.base"]
    for i, (why, edit) in enumerate(cases.items()):
        bad = _retar(source, tmp_path / f"bad{i}.tar.gz", edit)
        results = installer(fresh).install_binaries([p], {p.name: bad}, deadline=Deadline(120))
        assert not results[p.name].ok
        assert why in results[p.name].output, results[p.name].output
        assert not (fresh / "ckpt.base").exists()


@needs_r
def test_a_binary_whose_links_climb_out_through_its_own_links_is_never_installed(
    captured: Captured, tmp_path: Path
) -> None:
    """Links each inside the package on their own (`d/b -> ..`) but chained to climb above
    it, a member beneath a link, a link given twice: refused before R runs, and nothing is
    written through them outside the package."""
    files = captured.fetch(tmp_path / "fetched")
    planted = tmp_path / "planted"
    planted.mkdir()
    hops = 30  # each `d/b` is the top again: 2 * hops levels above it reach "/"
    climb = "/".join(["d/b"] * hops + [".."] * (2 * hops))
    cases = {
        "links out of the package": [("d/b", ".."), ("a", climb), (f"a{planted}/PLANTED", None)],
        "beneath the link": [("d/b", ".."), ("a", "d/b"), ("a/PLANTED", None)],
        "more than once": [("d/b", ".."), ("a", "d/b/../.."), ("d/b", "R")],
    }
    p = captured.packages["ckpt.base"]
    for i, (why, members) in enumerate(cases.items()):
        bad = tmp_path / f"bad{i}.tar.gz"
        with tarfile.open(files["ckpt.base"]) as tar, tarfile.open(bad, "w:gz") as out:
            for m in tar.getmembers():
                out.addfile(m, tar.extractfile(m) if m.isfile() else None)
            directory = tarfile.TarInfo("ckpt.base/d")
            directory.type = tarfile.DIRTYPE
            out.addfile(directory)
            for member, target in members:
                info = tarfile.TarInfo(f"ckpt.base/{member}")
                if target is None:  # a file written through the link
                    info.size = len(b"planted\n")
                    out.addfile(info, io.BytesIO(b"planted\n"))
                else:
                    info.type, info.linkname = tarfile.SYMTYPE, target
                    out.addfile(info)
        fresh = tmp_path / f"fresh{i}"
        results = installer(fresh).install_binaries([p], {p.name: bad}, deadline=Deadline(60))
        assert not results[p.name].ok
        assert why in results[p.name].output, results[p.name].output
        assert not (fresh / "ckpt.base").exists()
        assert not (planted / "PLANTED").exists()


@needs_r
def test_a_binary_that_installs_but_does_not_load_is_reported_alone_and_removed(
    captured: Captured, tmp_path: Path
) -> None:
    """ckptC's shared library garbled (its checks pass, R unpacks it): the one R that
    installs and load-checks them all names ckptC as not loading and removes it; every
    other package is installed and loads."""
    files = captured.fetch(tmp_path / "fetched")
    edit: dict[str, bytes | None] = {"ckptC/libs/ckptC.so": b"not an ELF object"}
    files["ckptC"] = _retar(files["ckptC"], tmp_path / "broken.tar.gz", edit)
    fresh = tmp_path / "fresh"
    wanted = list(captured.packages.values())
    results = installer(fresh).install_binaries(wanted, files, deadline=Deadline(300))
    assert sorted(n for n, o in results.items() if not o.ok) == ["ckptC"]
    assert "installed but does not load" in results["ckptC"].output, results["ckptC"].output
    assert "ckptC.so" in results["ckptC"].output, results["ckptC"].output
    installed = rpkgs.installed(fresh)
    assert installed == {n: v for n, v in rpkgs.installed(captured.lib).items() if n != "ckptC"}
    out = rpkgs.rscript(".libPaths(commandArgs(TRUE)); cat(ckptAfirst::afirst_value())", str(fresh))
    assert out == "84"


@needs_r
def test_a_binary_r_cannot_install_is_named_alone_with_its_dependents(
    captured: Captured, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """R's tar failing on ckpt.base's tarball alone (R_INSTALL_TAR in ~/.Renviron): the one
    R for them all installs nothing, each package is then tried alone, so ckpt.base is
    named with R's reason, those importing it are not attempted, the others install."""
    tar = tmp_path / "tar"
    tar.write_text('#!/bin/sh\ncase "$*" in *ckpt.base_*) exit 2;; esac\nexec tar "$@"\n')
    tar.chmod(0o755)
    home = tmp_path / "home"
    home.mkdir()
    (home / ".Renviron").write_text(f"R_INSTALL_TAR={tar}\n")
    monkeypatch.setenv("HOME", str(home))
    files = captured.fetch(tmp_path / "fetched")
    fresh = tmp_path / "fresh"
    wanted = list(captured.packages.values())
    results = installer(fresh).install_binaries(wanted, files, deadline=Deadline(300))
    bad = sorted(n for n, o in results.items() if not o.ok)
    assert bad == ["ckpt.base", "ckptAfirst", "ckptImports"], bad
    assert "error unpacking tarball" in results["ckpt.base"].output, results["ckpt.base"].output
    for name, dependency in (("ckptImports", "ckpt.base"), ("ckptAfirst", "ckptImports")):
        why = results[name].output
        assert f"not installed: its dependency {dependency} failed" in why, why
    assert rpkgs.installed(fresh) == {
        n: v for n, v in rpkgs.installed(captured.lib).items() if n not in bad
    }


def test_fits_refuses_another_r_minor_or_platform() -> None:
    """R 4.3's binary in a 4.4 library, or an aarch64 one on x86_64: another R is never
    used; the same major.minor with another patch level fits."""
    env = Environment(kind="r", path="/lib", interpreter="4.4.1", platform="x86_64-pc-linux-gnu")
    art = Artifact(file="R-4.4/ckptC_0.3.1_R_x86_64-pc-linux-gnu.tar.gz", sha256="0" * 64, size=1)
    assert rpkg.fits(env, art) is None
    # Another build under the same name, stored under its hash (`Store.put_artifact`).
    other = msgspec.structs.replace(
        art, file="R-4.4/0123456789abcdef/ckptC_0.3.1_R_x86_64-pc-linux-gnu.tar.gz"
    )
    assert rpkg.fits(env, other) is None
    older = Artifact(file="R-4.3/ckptC_0.3.1_R_x86_64-pc-linux-gnu.tar.gz", sha256="0" * 64, size=1)
    assert rpkg.fits(env, older) == (
        "built for R 4.3, this is R 4.4: another R major.minor is never used"
    )
    arm = Artifact(
        file="R-4.4/ckptC_0.3.1_R_aarch64-unknown-linux-gnu.tar.gz", sha256="0" * 64, size=1
    )
    assert "aarch64" in (rpkg.fits(env, arm) or "")
    wheel = Artifact(file="ckptc-0.3.1-py3-none-any.whl", sha256="0" * 64, size=1)
    assert "not an R binary" in (rpkg.fits(env, wheel) or "")


@needs_r
def test_what_is_not_the_recorded_install_is_not_captured(
    captured: Captured, tmp_path: Path
) -> None:
    """Gone, another version, or holding a FIFO or a link out of the package (on its own
    or through another link): Uncapturable with the reason."""
    lib = tmp_path / "lib"
    shutil.copytree(captured.lib / "ckpt.base", lib / "ckpt.base", symlinks=True)
    p = captured.packages["ckpt.base"]
    out = tmp_path / "out"

    def attempt(package: Package) -> str:
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir()
        job = Job(env=captured.env, roots=(lib,), package=package)
        with pytest.raises(Uncapturable) as e:
            rpkg.capture(job, out)
        return str(e.value)

    assert "not installed" in attempt(Package(name="ckptGone", version="1.0"))
    assert "not the recorded one" in attempt(msgspec.structs.replace(p, version="0.9"))
    (lib / "ckpt.base" / "R" / "evil").symlink_to("/etc/passwd")
    assert "links out of the package" in attempt(p)
    (lib / "ckpt.base" / "R" / "evil").unlink()
    # Each inside on paper; `evil` through `up` is the library's parent.
    (lib / "ckpt.base" / "R" / "up").symlink_to("..")
    (lib / "ckpt.base" / "R" / "evil").symlink_to("up/../..")
    assert "R/evil links out of the package" in attempt(p)
    (lib / "ckpt.base" / "R" / "evil").unlink()
    (lib / "ckpt.base" / "R" / "up").unlink()
    os.mkfifo(lib / "ckpt.base" / "R" / "pipe")
    assert "not a file" in attempt(p)


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch) -> None:
    """R children inherit this environment: this machine's R_LIBS_USER is not the test's."""
    monkeypatch.delenv("R_LIBS_USER", raising=False)


def test_without_r_no_artifact_is_attempted(tmp_path: Path) -> None:
    """No R here: every package fails with the one reason, and no library is created."""
    lib = tmp_path / "lib"
    env = Environment(kind="r", path=str(lib), interpreter="4.2.2", platform="x86_64")
    r = RInstaller(env, Config(discover=(), r_home=tmp_path / "no-r"))
    p = Package(name="ckptC", version="0.3.1")
    results = r.install_binaries([p], {"ckptC": tmp_path / "x.tar.gz"}, deadline=Deadline(10))
    assert not results["ckptC"].ok
    assert "R is not installed here" in results["ckptC"].output
    assert not lib.exists()
