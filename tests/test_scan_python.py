"""The site-packages scanner against what real pip and uv write, and against damaged trees."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import packaging.utils
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pkgckpt.manifest import DirectorySource, IndexSource, Package, UrlSource, VcsSource
from pkgckpt.scan import ScanResult
from pkgckpt.scan.python import SiteScanner, canonicalize_name, scan_site, strip_credentials
from tests.user_kit import as_nobody
from tests.wheelhouse import Dist, Venv, add_build_backend, build_wheel, make_venv

HOUR_NS = 3600 * 1_000_000_000


def isolate(mp: pytest.MonkeyPatch, tmp: Path) -> None:
    """The machine's pip.conf, PIP_FIND_LINKS and caches must not leak into what is tested."""
    mp.setenv("PIP_CONFIG_FILE", os.devnull)
    mp.delenv("PIP_FIND_LINKS", raising=False)
    mp.setenv("PIP_NO_CACHE_DIR", "1")
    mp.setenv("UV_CACHE_DIR", str(tmp / "uv-cache"))
    mp.setenv("UV_NO_CONFIG", "1")


@pytest.fixture(autouse=True)
def hermetic(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    isolate(monkeypatch, tmp_path)


def setuptools_project(root: Path, name: str, version: str, *, src: bool = False) -> Path:
    """A minimal setuptools project (flat or src layout) with one import package."""
    module = name.replace("-", "_")
    pkg = root / "src" / module if src else root / module
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(f"VERSION = {version!r}\n")
    (root / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools>=64"]\nbuild-backend = "setuptools.build_meta"\n'
        f'[project]\nname = "{name}"\nversion = "{version}"\n'
    )
    return root


@dataclass(frozen=True)
class Installed:
    venv: Venv
    site: Path
    direct_wheel: Path
    direct_sha256: str
    flat: Path
    src: Path
    repo: Path | None
    commit: str | None


@pytest.fixture(scope="session")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheelhouse")
    for dist in (
        Dist("lib", "1.0"),
        Dist("lib", "2.0"),
        Dist("App", "1.0", requires=["lib"], scripts={"app": "app:main"}),
    ):
        build_wheel(dist, out)
    with pytest.MonkeyPatch.context() as mp:
        isolate(mp, out)
        add_build_backend(out)  # setuptools and wheel, from PyPI: for the editable installs
    return out


@pytest.fixture(scope="session")
def installed(tmp_path_factory: pytest.TempPathFactory, wheelhouse: Path) -> Installed:
    """One venv where real pip installed each kind of distribution (read-only for tests)."""
    tmp = tmp_path_factory.mktemp("installed")
    with pytest.MonkeyPatch.context() as mp:
        isolate(mp, tmp)
        return install_each_kind(tmp, wheelhouse)


def install_each_kind(tmp: Path, wheelhouse: Path) -> Installed:
    venv = make_venv(tmp / "venv")
    venv.install(wheelhouse, "App")
    direct = build_wheel(Dist("direct", "1.0"), tmp / "direct")
    sha = hashlib.sha256(direct.read_bytes()).hexdigest()
    venv.install(wheelhouse, f"direct @ {direct.as_uri()}#sha256={sha}")
    flat = setuptools_project(tmp / "flat-proj", "flat-edit", "0.1")
    src = setuptools_project(tmp / "src-proj", "src-edit", "0.2", src=True)
    venv.install(wheelhouse, "-e", str(flat), "-e", str(src))
    repo = commit = None
    if shutil.which("git"):
        repo = setuptools_project(tmp / "repo", "vcs-thing", "0.3")
        git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
        subprocess.run([*git, "init", "-q"], check=True)
        subprocess.run([*git, "add", "."], check=True)
        subprocess.run([*git, "commit", "-qm", "one"], check=True)
        commit = subprocess.run(
            [*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True
        ).stdout.strip()
        # A bare URL: pip 23's PEP 508 parser wants a host in git+file URLs.
        venv.install(wheelhouse, f"git+{repo.as_uri()}@{commit}#egg=vcs-thing")
    return Installed(venv, venv.site_packages, direct, sha, flat, src, repo, commit)


def importlib_view(python: Path) -> dict[str, str]:
    """canonical name -> version as importlib.metadata sees them inside the venv itself."""
    code = (
        "import importlib.metadata as m, json, re\n"
        "print(json.dumps({re.sub(r'[-_.]+', '-', d.metadata['Name']).lower(): d.version"
        " for d in m.distributions()}))"
    )
    out = subprocess.run([str(python), "-I", "-c", code], check=True, capture_output=True)
    found: dict[str, str] = json.loads(out.stdout)
    return found


def test_scan_agrees_with_importlib_metadata_in_a_real_venv(installed: Installed) -> None:
    """Every distribution pip installed is found with the name and version importlib reports."""
    result = scan_site(installed.site)
    assert {k: p.version for k, p in result.packages.items()} == importlib_view(
        installed.venv.python
    )
    assert result.broken == {}
    assert result.in_progress == frozenset()


def test_requested_separates_the_users_choice_from_its_dependencies(installed: Installed) -> None:
    """`pip install App` marks app requested and lib (pulled in) not; names are canonical."""
    packages = scan_site(installed.site).packages
    assert packages["app"].requested is True
    assert packages["lib"].requested is False
    assert packages["app"].installer == "pip"
    assert packages["app"].tags == ("py3-none-any",)
    assert packages["app"].source == IndexSource()
    assert (installed.venv.prefix / "bin" / "app").exists()  # the console script is there


def test_direct_url_wheel_is_a_url_source_with_its_hash(installed: Installed) -> None:
    """A wheel installed by file:// URL records the URL and the archive hash (PEP 610)."""
    source = scan_site(installed.site).packages["direct"].source
    assert isinstance(source, UrlSource)
    assert source.url == installed.direct_wheel.as_uri()
    assert source.hashes == {"sha256": installed.direct_sha256}


def test_editable_installs_are_directory_sources(installed: Installed) -> None:
    """`pip install -e` of a flat and a src-layout project records the project, editable."""
    packages = scan_site(installed.site).packages
    for name, project in (("flat-edit", installed.flat), ("src-edit", installed.src)):
        assert packages[name].source == DirectorySource(path=str(project), editable=True)


def test_editable_without_direct_url_is_found_from_its_editable_pth(
    installed: Installed, tmp_path: Path
) -> None:
    """Without direct_url.json, setuptools' __editable__ pth (path or finder) names the project."""
    site = tmp_path / "site"
    site.mkdir()
    for entry in installed.site.iterdir():
        if "edit" in entry.name:
            if entry.is_dir():
                shutil.copytree(entry, site / entry.name)
            else:
                shutil.copy2(entry, site / entry.name)
    direct_urls = list(site.glob("*.dist-info/direct_url.json"))
    assert len(direct_urls) == 2
    for path in direct_urls:
        path.unlink()
    assert any(site.glob("__editable___*finder.py")), "the flat layout uses a finder"
    packages = scan_site(site).packages
    assert packages["flat-edit"].source == DirectorySource(path=str(installed.flat), editable=True)
    assert packages["src-edit"].source == DirectorySource(path=str(installed.src), editable=True)


def test_git_install_is_a_vcs_source_with_its_commit(installed: Installed) -> None:
    """`pip install git+file://repo@sha` records vcs, URL and the exact commit."""
    if installed.repo is None:
        pytest.skip("git is not installed")
    source = scan_site(installed.site).packages["vcs-thing"].source
    assert source == VcsSource(
        vcs="git",
        url=installed.repo.as_uri(),
        commit=installed.commit,
        requested_revision=installed.commit,
    )


def test_upgrade_and_removal_by_pip_are_seen_by_a_rescan(wheelhouse: Path, tmp_path: Path) -> None:
    """A scanner reused across real pip upgrade and uninstall reports each new state."""
    venv = make_venv(tmp_path / "venv")
    venv.install(wheelhouse, "lib==1.0")
    scanner = SiteScanner(venv.site_packages)
    assert scanner.scan().packages["lib"].version == "1.0"
    venv.install(wheelhouse, "lib==2.0")
    assert scanner.scan().packages["lib"].version == "2.0"
    venv.uninstall("lib")
    assert "lib" not in scanner.scan().packages
    assert scanner.scan().packages.keys() == scan_site(venv.site_packages).packages.keys()


def test_uv_installs_are_read_like_pip_ones(wheelhouse: Path, tmp_path: Path) -> None:
    """What `uv pip install` writes is read the same way (uv marks every package REQUESTED)."""
    venv = make_venv(tmp_path / "venv", with_pip=False)
    subprocess.run(
        [
            "uv", "pip", "install", "--python", str(venv.python), "--no-index",
            "--find-links", str(wheelhouse), "App",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    packages = scan_site(venv.site_packages).packages
    assert packages["app"].installer == "uv"
    for name, package in packages.items():
        info = venv.site_packages / f"{name}-{package.version}.dist-info"
        assert package.requested == (info / "REQUESTED").exists()
    assert {k: p.version for k, p in packages.items()} == importlib_view(venv.python)


# -- fake trees: damage and formats pip no longer writes ---------------------------------


def dist_info(
    site: Path,
    name: str,
    version: str,
    *,
    record: bool = True,
    direct_url: dict[str, object] | None = None,
    metadata: str | None = None,
    age_ns: int = HOUR_NS,
) -> Path:
    """A dist-info laid out as pip writes it, its times set `age_ns` in the past."""
    d = site / f"{name.replace('-', '_')}-{version}.dist-info"
    d.mkdir(parents=True)
    text = metadata if metadata is not None else f"Metadata-Version: 2.1\nName: {name}\n"
    if metadata is None:
        text += f"Version: {version}\nSummary: s\n\nName: not-a-header\n"
    (d / "METADATA").write_text(text)
    (d / "INSTALLER").write_text("pip\n")
    (d / "WHEEL").write_text("Wheel-Version: 1.0\nTag: py3-none-any\nTag: py2-none-any\n")
    if direct_url is not None:
        (d / "direct_url.json").write_text(json.dumps(direct_url))
    if record:
        (d / "RECORD").write_text("")
    age(d, age_ns)
    return d


def age(path: Path, age_ns: int) -> None:
    t = time.time_ns() - age_ns
    os.utime(path, ns=(t, t))


def test_broken_entries_are_reported_and_the_rest_still_scanned(tmp_path: Path) -> None:
    """No METADATA, no Version, bad direct_url.json, a file named .dist-info: each broken alone."""
    site = tmp_path / "site"
    dist_info(site, "good", "1.0")
    no_meta = dist_info(site, "nometa", "1.0")
    (no_meta / "METADATA").unlink()
    age(no_meta, HOUR_NS)
    dist_info(site, "nover", "1.0", metadata="Metadata-Version: 2.1\nName: nover\n\n")
    bad = dist_info(site, "badurl", "1.0")
    (bad / "direct_url.json").write_text("{not json")
    age(bad, HOUR_NS)
    (site / "afile-1.0.dist-info").write_text("")
    dist_info(site, "last", "2.0")
    result = scan_site(site)
    assert set(result.packages) == {"good", "last"}
    assert set(result.broken) == {
        "nometa-1.0.dist-info",
        "nover-1.0.dist-info",
        "badurl-1.0.dist-info",
        "afile-1.0.dist-info",
    }
    assert "METADATA" in result.broken["nometa-1.0.dist-info"]
    assert "direct_url.json" in result.broken["badurl-1.0.dist-info"]


def test_entries_planted_to_hang_or_crash_a_scan_are_broken_alone(tmp_path: Path) -> None:
    """What another writer of a shared library can plant, each broken alone while the rest
    is scanned: a FIFO as METADATA, INSTALLER or direct_url.json (whose open would wait for
    a writer), METADATA linked to /dev/zero (read for ever), a direct_url.json whose URL
    urlsplit refuses, an egg-link naming a path with a NUL, and an editable finder whose
    MAPPING is a set (each raised out of the scan, and ended the daemon)."""
    site = tmp_path / "site"
    dist_info(site, "good", "1.0")
    for name, planted in (("fifometa", "METADATA"), ("fifoinst", "INSTALLER")):
        d = dist_info(site, name, "1.0")
        (d / planted).unlink()
        os.mkfifo(d / planted)
    fifourl = dist_info(site, "fifourl", "1.0")
    os.mkfifo(fifourl / "direct_url.json")
    zero = dist_info(site, "zero", "1.0")
    (zero / "METADATA").unlink()
    (zero / "METADATA").symlink_to("/dev/zero")
    ipv6 = {"url": "https://[x/p-1.0.whl", "archive_info": {}}
    dist_info(site, "badhost", "1.0", direct_url=ipv6)
    (site / "nul.egg-link").write_text("/tmp\0x\n.\n")
    (site / "__editable__.setfinder-1.0.pth").write_text("import __editable___setfinder\n")
    (site / "__editable___setfinder.py").write_text("MAPPING = {'/a', '/b'}\n")
    for entry in site.iterdir():
        age(entry, HOUR_NS)
    done: list[ScanResult] = []
    scan = threading.Thread(target=lambda: done.append(scan_site(site)), daemon=True)
    scan.start()
    scan.join(30)
    assert not scan.is_alive(), "the scan is stuck on a planted file"
    (result,) = done
    assert set(result.packages) == {"good", "fifoinst"}, result.broken
    assert result.packages["fifoinst"].installer is None
    assert set(result.broken) == {
        "fifometa-1.0.dist-info",
        "fifourl-1.0.dist-info",
        "zero-1.0.dist-info",
        "badhost-1.0.dist-info",
        "nul.egg-link",
    }
    assert "first MiB" in result.broken["zero-1.0.dist-info"]
    assert "Invalid IPv6 URL" in result.broken["badhost-1.0.dist-info"]


def test_interrupted_install_leftovers_are_skipped(tmp_path: Path) -> None:
    """pip's `~name` stash dirs are neither packages nor broken entries."""
    site = tmp_path / "site"
    dist_info(site, "kept", "1.0")
    shutil.copytree(dist_info(site, "gone", "1.0"), site / "~one-1.0.dist-info")
    shutil.rmtree(site / "gone-1.0.dist-info")
    result = scan_site(site)
    assert set(result.packages) == {"kept"}
    assert result.broken == {}


def test_dist_info_without_record_is_in_progress_only_while_recent(tmp_path: Path) -> None:
    """No RECORD: an install running if just written, installed (Debian strips RECORD) if old."""
    site = tmp_path / "site"
    dist_info(site, "running", "1.0", record=False, age_ns=0)
    dist_info(site, "debian", "1.0", record=False, age_ns=24 * HOUR_NS)
    early = site / "early-1.0.dist-info"
    early.mkdir()
    result = scan_site(site)
    assert result.in_progress == {"running-1.0.dist-info", "early-1.0.dist-info"}
    assert set(result.packages) == {"running", "debian"}
    assert result.broken == {}


def test_egg_info_dir_file_and_egg_link_are_read(tmp_path: Path) -> None:
    """setuptools' egg-info dir, distutils' egg-info file and a develop egg-link all count."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "eggdir-1.0-py3.11.egg-info").mkdir()
    (site / "eggdir-1.0-py3.11.egg-info" / "PKG-INFO").write_text("Name: EggDir\nVersion: 1.0\n")
    (site / "Egg_File-2.0.egg-info").write_text(
        "Metadata-Version: 1.0\nName: Egg_File\nVersion: 2.0\n"
    )
    project = tmp_path / "proj"
    (project / "src" / "linked.egg-info").mkdir(parents=True)
    (project / "src" / "linked.egg-info" / "PKG-INFO").write_text("Name: linked\nVersion: 0.5\n")
    (site / "linked.egg-link").write_text(f"{project / 'src'}\n../\n")
    packages = scan_site(site).packages
    assert packages["eggdir"].version == "1.0"
    assert packages["egg-file"].version == "2.0"
    assert packages["egg-file"].requested is True
    assert packages["linked"].source == DirectorySource(path=str(project), editable=True)


def test_first_name_wins_dist_info_before_egg_info(tmp_path: Path) -> None:
    """Two entries for one canonical name: the dist-info wins, whatever directory order says."""
    site = tmp_path / "site"
    dist_info(site, "Twin", "2.0")
    (site / "twin-1.0.egg-info").write_text("Name: twin\nVersion: 1.0\n")
    assert scan_site(site).packages["twin"].version == "2.0"


def test_credentials_never_leave_the_direct_url(tmp_path: Path) -> None:
    """user:password is stripped from archive and VCS URLs; ssh's git user and ${VAR} stay."""
    site = tmp_path / "site"
    dist_info(
        site,
        "arch",
        "1.0",
        direct_url={
            "url": "https://bob:s3cret@example.org/a.whl",
            "archive_info": {"hash": "sha256=abc"},
        },
    )
    dist_info(
        site,
        "repo",
        "1.0",
        direct_url={
            "url": "https://token@example.org/r.git",
            "vcs_info": {"vcs": "git", "commit_id": "c0ffee"},
            "subdirectory": "./sub/",
        },
    )
    packages = scan_site(site).packages
    assert packages["arch"].source == UrlSource(
        url="https://example.org/a.whl", hashes={"sha256": "abc"}
    )
    assert packages["repo"].source == VcsSource(
        vcs="git", url="https://example.org/r.git", commit="c0ffee", subdirectory="sub"
    )
    assert strip_credentials("ssh://git@example.org/r.git") == "ssh://git@example.org/r.git"
    assert strip_credentials("https://${USER}:${PASS}@h/x") == "https://${USER}:${PASS}@h/x"
    assert "s3cret" not in repr(packages)


def test_missing_root_scans_empty_and_says_so(tmp_path: Path) -> None:
    """A root that does not exist (or is a file) is empty with exists=False, not an error."""
    scanner = SiteScanner(tmp_path / "nope")
    assert scanner.scan().packages == {}
    assert scanner.exists is False
    (tmp_path / "file").write_text("")
    assert SiteScanner(tmp_path / "file").scan().packages == {}
    dist_info(tmp_path / "nope", "later", "1.0")
    assert "later" in scanner.scan().packages
    assert scanner.exists is True


@pytest.fixture
def aged_site(tmp_path: Path) -> Iterator[Path]:
    """50 installed dist-infos and a site directory, all last changed an hour ago."""
    site = tmp_path / "site"
    for i in range(50):
        dist_info(site, f"p{i}", "1.0")
    age(site, HOUR_NS)
    yield site


def test_rescan_rereads_only_the_new_entry(aged_site: Path) -> None:
    """After one install, a rescan reads one entry and reuses every other Package object."""
    scanner = SiteScanner(aged_site)
    first = scanner.scan()
    assert scanner.reads == 50
    dist_info(aged_site, "newcomer", "1.0")
    second = scanner.scan()
    assert scanner.reads == 1
    assert second.packages["newcomer"].version == "1.0"
    assert all(second.packages[k] is p for k, p in first.packages.items())


def test_rescan_of_an_unchanged_directory_reads_nothing(aged_site: Path) -> None:
    """Nothing changed: no entry is read and the previous result is returned."""
    scanner = SiteScanner(aged_site)
    first = scanner.scan()
    assert scanner.scan() is first
    assert scanner.reads == 0


def test_entry_replaced_under_the_same_name_is_read_again(aged_site: Path) -> None:
    """A dist-info removed and recreated with the same name (a reinstall) is re-read."""
    scanner = SiteScanner(aged_site)
    scanner.scan()
    shutil.rmtree(aged_site / "p7-1.0.dist-info")
    dist_info(aged_site, "p7", "1.0", direct_url={"url": "file:///src/p7", "dir_info": {}})
    age(aged_site, HOUR_NS)  # even with the directory's time put back
    result = scanner.scan()
    assert result.packages["p7"].source == DirectorySource(path="/src/p7")
    assert scanner.reads == 1


def test_renewed_names_an_entry_made_again_as_it_was_and_nothing_else(aged_site: Path) -> None:
    """A reinstall of the same version, even on a reused inode with the site's time put
    back, is renewed; a first scan, an untouched entry and a racy re-read are not."""
    scanner = SiteScanner(aged_site)
    scanner.scan()
    assert scanner.renewed == frozenset()  # a first scan has nothing to compare with
    shutil.rmtree(aged_site / "p7-1.0.dist-info")
    dist_info(aged_site, "p7", "1.0")
    dist_info(aged_site, "new_comer", "1.0", age_ns=0)
    age(aged_site, HOUR_NS)
    scanner.scan(["p7-1.0.dist-info", "new_comer-1.0.dist-info"])  # as the events name them
    assert scanner.renewed == {"p7", "new-comer"}
    scanner.scan()  # new_comer is racy, read again as it is
    assert scanner.reads == 1 and scanner.renewed == frozenset()


def test_change_within_one_timestamp_tick_is_not_missed(aged_site: Path) -> None:
    """An entry scanned right after it changed is re-read next time, even if its mtime holds."""
    scanner = SiteScanner(aged_site)
    info = dist_info(aged_site, "racy", "1.0", age_ns=0)
    stamp = info.stat().st_mtime_ns
    assert scanner.scan().packages["racy"].requested is False
    (info / "REQUESTED").write_text("")
    os.utime(info, ns=(stamp, stamp))  # the same coarse tick as before
    assert scanner.scan().packages["racy"].requested is True


def test_removal_within_one_timestamp_tick_of_the_directory_is_not_missed(
    tmp_path: Path,
) -> None:
    """An entry removed while the directory's mtime holds (same tick) leaves the rescan."""
    site = tmp_path / "site"
    for name in ("kept", "gone"):
        dist_info(site, name, "1.0")
    scanner = SiteScanner(site)
    assert set(scanner.scan().packages) == {"kept", "gone"}
    st = site.stat()
    shutil.rmtree(site / "gone-1.0.dist-info")
    os.utime(site, ns=(st.st_atime_ns, st.st_mtime_ns))  # the same coarse tick as before
    assert set(scanner.scan().packages) == {"kept"}


def test_finished_install_leaves_in_progress(tmp_path: Path) -> None:
    """An in-progress entry is looked at again each scan until its RECORD appears."""
    site = tmp_path / "site"
    info = dist_info(site, "slow", "1.0", record=False, age_ns=0)
    scanner = SiteScanner(site)
    assert scanner.scan().in_progress == {"slow-1.0.dist-info"}
    (info / "RECORD").write_text("")
    assert scanner.scan().in_progress == frozenset()


def test_unreadable_root_is_an_error_not_an_empty_library() -> None:
    """A root that exists but cannot be listed raises ScanError: it is not proof of removal."""
    from pkgckpt.errors import ScanError

    # Somewhere another user can reach (pytest's tmp is private to root).
    shm = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
    with tempfile.TemporaryDirectory(dir=shm) as tmp:
        base = Path(tmp)
        base.chmod(0o755)
        readable, site = base / "readable", base / "site"
        dist_info(readable, "x", "1.0")
        dist_info(site, "x", "1.0")
        readable.chmod(0o755)
        site.chmod(0o700)

        def refused() -> bool:
            assert set(SiteScanner(readable).scan().packages) == {"x"}
            try:
                SiteScanner(site).scan()
            except ScanError:
                return True
            return False

        ok = as_nobody(refused, unless_root=lambda: site.chmod(0))
        site.chmod(0o755)
        assert ok


def test_scan_of_this_interpreter_matches_importlib() -> None:
    """The scanner agrees with importlib.metadata on the site-packages running these tests."""
    import importlib.metadata
    import sysconfig

    from packaging.utils import canonicalize_name

    site = Path(sysconfig.get_paths()["purelib"])
    expected: dict[str, str] = {}
    for d in importlib.metadata.distributions(path=[str(site)]):
        expected.setdefault(canonicalize_name(d.metadata["Name"]), d.version)
    found = scan_site(site).packages
    assert {k: p.version for k, p in found.items()} == expected


# -- a first scan against the baseline's packages -----------------------------------------


def test_scan_against_known_packages_gives_what_a_full_read_gives(installed: Installed) -> None:
    """Every kind of entry pip writes, aged as an image's: the same result either way."""
    site = installed.site
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "site"
        shutil.copytree(site, copy, symlinks=True)
        for entry in [*copy.iterdir(), copy]:
            age(entry, 2 * HOUR_NS)
        full = scan_site(copy)
        assert SiteScanner(copy, full.packages).scan() == full


def test_known_package_is_taken_from_the_baseline_without_reading_its_files(
    tmp_path: Path,
) -> None:
    """A settled dist-info named for a known version, without direct_url.json, is the
    known package: what its files say about the installer is not read again."""
    site = tmp_path / "site"
    dist_info(site, "numpy", "1.26.4")
    dist_info(site, "PyYAML", "6.0.1")  # older installers kept the project's spelling
    age(site, HOUR_NS)
    known = {
        "numpy": Package(name="numpy", version="1.26.4", installer="image-build"),
        "pyyaml": Package(name="pyyaml", version="6.0.1", installer="image-build"),
    }
    result = SiteScanner(site, known).scan()
    assert result.packages == known


def test_known_name_is_read_when_anything_says_it_may_differ(tmp_path: Path) -> None:
    """Another version, a direct_url.json (a reinstall from elsewhere), a recent dist-info
    (an install may be running) or a known package from a URL: the files are read."""
    site = tmp_path / "site"
    dist_info(site, "upgraded", "2.0")
    url = {"url": "https://example.org/same-1.0.whl", "archive_info": {}}
    dist_info(site, "same", "1.0", direct_url=url)
    dist_info(site, "fresh", "1.0", age_ns=0)
    dist_info(site, "from-url", "1.0")
    age(site, HOUR_NS)
    mark = "image-build"
    known = {
        "upgraded": Package(name="upgraded", version="1.0", installer=mark),
        "same": Package(name="same", version="1.0", installer=mark),
        "fresh": Package(name="fresh", version="1.0", installer=mark),
        "from-url": Package(
            name="from-url", version="1.0", source=UrlSource(url="https://x/y.whl"), installer=mark
        ),
    }
    result = SiteScanner(site, known).scan()
    assert result.packages["upgraded"].version == "2.0"
    assert result.packages["same"].source == UrlSource(url=url["url"])
    assert result.packages["from-url"].source == IndexSource()
    assert all(p.installer == "pip" for p in result.packages.values())
    assert result == scan_site(site)


def test_known_packages_only_shape_the_first_scan(aged_site: Path) -> None:
    """A reinstall of a known version from a directory, after the first scan, is seen."""
    known = scan_site(aged_site).packages
    scanner = SiteScanner(aged_site, known)
    assert scanner.scan().packages == known
    shutil.rmtree(aged_site / "p3-1.0.dist-info")
    dist_info(aged_site, "p3", "1.0", direct_url={"url": "file:///src/p3", "dir_info": {}})
    assert scanner.scan().packages["p3"].source == DirectorySource(path="/src/p3")


# -- a rescan told which entries changed (the watcher's names) -------------------------------


def test_rescan_told_the_changed_names_looks_at_those_only(aged_site: Path) -> None:
    """An install and a removal, named: both seen, one entry read, the rest not even
    stat'ed (a change the names leave out is not looked for: they are the kernel's account)."""
    scanner = SiteScanner(aged_site)
    first = scanner.scan()
    dist_info(aged_site, "newcomer", "1.0")
    (aged_site / "newcomer").mkdir()
    shutil.rmtree(aged_site / "p1-1.0.dist-info")
    unnamed = aged_site / "p2-1.0.dist-info" / "REQUESTED"
    unnamed.write_text("")
    age(unnamed.parent, HOUR_NS // 2)
    result = scanner.scan({"newcomer-1.0.dist-info", "newcomer", "p1-1.0.dist-info", "gone.pth"})
    assert scanner.reads == 1
    assert result.packages.keys() == first.packages.keys() - {"p1"} | {"newcomer"}
    assert result.packages["p2"] is first.packages["p2"]
    assert scanner.scan().packages["p2"].requested  # by identity: the directory changed


def test_rescan_told_names_still_rereads_suspect_entries(aged_site: Path) -> None:
    """An install still running (no RECORD yet) is looked at again whatever the names say."""
    scanner = SiteScanner(aged_site)
    info = dist_info(aged_site, "slow", "1.0", record=False, age_ns=0)
    assert "slow-1.0.dist-info" in scanner.scan().in_progress
    (info / "RECORD").write_text("")
    result = scanner.scan(set())
    assert result.in_progress == frozenset()
    assert result.packages["slow"].version == "1.0"


def test_names_for_a_directory_made_anew_are_not_trusted(aged_site: Path, tmp_path: Path) -> None:
    """A site replaced by another directory (a rebuilt venv): every entry is read."""
    scanner = SiteScanner(aged_site)
    scanner.scan()
    aged_site.rename(tmp_path / "old-site")
    aged_site.mkdir()
    dist_info(aged_site, "only", "1.0")
    assert scanner.scan(set()).packages.keys() == {"only"}


_OPS = st.lists(
    st.tuples(
        st.sampled_from(["dist", "url", "egg-dir", "egg-file", "broken", "running", "pth", "rm"]),
        st.sampled_from(["a", "b", "c"]),
        st.sampled_from(["1.0", "2.0"]),
    ),
    min_size=1,
    max_size=12,
)


@settings(max_examples=60, deadline=None)
@given(ops=_OPS)
def test_rescans_told_the_names_agree_with_a_full_scan(ops: list[tuple[str, str, str]]) -> None:
    """Random installs, removals, reinstalls from URLs, egg-infos, editables, broken and
    running installs, each followed by a rescan told the entries touched: the result is
    always what a fresh full scan of the directory gives."""
    with tempfile.TemporaryDirectory() as tmp:
        site = Path(tmp) / "site"
        site.mkdir()
        scanner = SiteScanner(site)
        scanner.scan()
        for op, name, version in ops:
            touched = _apply(site, op, name, version)
            assert scanner.scan(touched) == scan_site(site), (op, name, version)


def _apply(site: Path, op: str, name: str, version: str) -> set[str]:
    """Carry out one operation on `site`; the entry names it touched."""
    entries = {
        "egg-dir": f"{name}-{version}.egg-info",
        "egg-file": f"{name}-{version}.egg-info",
        "pth": f"__editable__.{name}-{version}.pth",
    }
    entry = entries.get(op, f"{name}-{version}.dist-info")
    if op == "rm":
        gone = [
            p for p in site.iterdir() if p.name.startswith((f"{name}-", f"__editable__.{name}-"))
        ]
        for path in gone:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        return {p.name for p in gone}
    path = site / entry
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()
    if op in ("dist", "url", "broken", "running"):
        url = {"url": f"https://example.org/{name}.whl", "archive_info": {}}
        info = dist_info(
            site,
            name,
            version,
            direct_url=url if op == "url" else None,
            record=op != "running",
            age_ns=0 if op == "running" else HOUR_NS,
        )
        if op == "broken":
            (info / "METADATA").unlink()
            age(info, HOUR_NS)
    elif op == "egg-dir":
        path.mkdir()
        (path / "PKG-INFO").write_text(f"Metadata-Version: 1.0\nName: {name}\nVersion: {version}\n")
        age(path, HOUR_NS)
    elif op == "egg-file":
        path.write_text(f"Metadata-Version: 1.0\nName: {name}\nVersion: {version}\n")
        age(path, HOUR_NS)
    else:
        path.write_text(f"/src/{name}\n")
        age(path, HOUR_NS)
    return {entry}


def test_names_given_to_a_scan_that_failed_are_not_lost(
    aged_site: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rescan that could not read the directory (EIO, injected): the next one reads
    every entry, as the names it was told are the only account of what changed."""
    from pkgckpt.errors import ScanError
    from pkgckpt.scan import listing

    scanner = SiteScanner(aged_site)
    scanner.scan()
    dist_info(aged_site, "newcomer", "1.0")

    def eio(fd: int, names: object) -> list[object]:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    with monkeypatch.context() as mp:
        mp.setattr(listing, "lstat_each", eio)
        with pytest.raises(ScanError):
            scanner.scan({"newcomer-1.0.dist-info"})
    assert "newcomer" in scanner.scan(set()).packages


@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=40))
def test_canonical_names_are_packagings(name: str) -> None:
    """The scanner's own PEP 503 normalization gives what packaging's does, for any name."""
    assert canonicalize_name(name) == packaging.utils.canonicalize_name(name)
