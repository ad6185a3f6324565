"""The R library scanner against libraries real R installed, and fake trees for edge cases."""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
import time
from pathlib import Path

import pytest
import rpkgs

from pkgckpt import manifest
from pkgckpt.inventory import Target
from pkgckpt.manifest import (
    DirectorySource,
    IndexSource,
    LocalSource,
    Package,
    UrlSource,
    VcsSource,
)
from pkgckpt.scan import ScanResult
from pkgckpt.scan import r as rscan
from pkgckpt.scan.r import RLibraryScanner, parse_dcf

needs_r = rpkgs.needs_r


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> rpkgs.Repo:
    return rpkgs.shared_repo(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def library(repo: rpkgs.Repo, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A library as a user makes it: install.packages() from the repository, then a tarball."""
    lib = tmp_path_factory.mktemp("rlib") / "lib"
    old = repo.tarball("ckptOld", "0.9-1")
    rpkgs.install(lib, repo, ["ckptImports", "ckptC"], [old])
    return lib


def description(lib: Path, name: str, text: str) -> Path:
    (lib / name).mkdir(parents=True, exist_ok=True)
    path = lib / name / "DESCRIPTION"
    path.write_text(text)
    return path


def installed_text(name: str, version: str, extra: str = "") -> str:
    return (
        f"Package: {name}\nVersion: {version}\nTitle: T\n{extra}"
        "Built: R 4.2.2; ; 2024-01-01 00:00:00 UTC; unix\n"
    )


# -- real R libraries ----------------------------------------------------------------------


@needs_r
def test_scan_equals_installed_packages(library: Path) -> None:
    """The scan lists exactly what R's installed.packages() lists, with the same versions."""
    found = RLibraryScanner(library).scan()
    assert {p.name: p.version for p in found.packages.values()} == rpkgs.installed(library)
    assert found.packages.keys() == {"ckpt.base", "ckptImports", "ckptC", "ckptOld"}
    assert found.broken == {} and found.in_progress == frozenset()


@needs_r
def test_built_gives_r_version_and_platform_only_for_compiled_code(library: Path) -> None:
    """Built: yields the R version; only the package with C code carries the platform tag."""
    version, platform = rscan.r_info()
    found = RLibraryScanner(library).scan().packages
    assert {p.built for p in found.values()} == {version}
    assert found["ckptC"].tags == (platform,)
    assert found["ckptImports"].tags == () and found["ckptOld"].tags == ()


@needs_r
def test_dependencies_and_requested_in_the_user_delta(library: Path) -> None:
    """Imports are recorded; in the delta the imported package counts as a dependency."""
    found = RLibraryScanner(library).scan().packages
    assert found["ckptImports"].depends == ("ckpt.base",)
    env = rscan.r_environment(library)
    d = manifest.delta(env, {}, found)
    requested = {p.name: p.requested for p in d.added}
    assert requested == {"ckpt.base": False, "ckptImports": True, "ckptC": True, "ckptOld": True}


@needs_r
def test_image_packages_do_not_make_a_user_package_a_dependency(library: Path) -> None:
    """A user package that only an image package imports still counts as requested."""
    found = RLibraryScanner(library).scan().packages
    image = {"ckptImports": found["ckptImports"]}
    d = manifest.delta(rscan.r_environment(library), image, found)
    assert {p.name: p.requested for p in d.added}["ckpt.base"] is True


@needs_r
def test_r_own_library_matches_installed_packages() -> None:
    """R's system library scans like installed.packages() (its `translations` dir skipped)."""
    system = Path(rpkgs.rscript('cat(R.home("library"))'))
    found = RLibraryScanner(system).scan()
    assert {p.name: p.version for p in found.packages.values()} == rpkgs.installed(system)
    assert found.broken == {}


@needs_r
def test_reinstall_at_another_version_is_seen_by_the_same_scanner(
    repo: rpkgs.Repo, library: Path, tmp_path: Path
) -> None:
    """After R replaces a package (new version), a rescan reports the new version."""
    lib = tmp_path / "lib"
    shutil.copytree(library, lib)
    scanner = RLibraryScanner(lib)
    assert scanner.scan().packages["ckptOld"].version == "0.9-1"
    rpkgs.install(lib, repo, ["ckptOld"])
    assert scanner.scan().packages["ckptOld"].version == "1.0"


@needs_r
def test_discover_reports_lib_paths_and_a_missing_user_library(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """r_discover() lists .libPaths() and R_LIBS_USER even before that directory exists,
    never R's base library."""
    site = tmp_path / "site"
    site.mkdir()
    user = tmp_path / "not-yet"
    monkeypatch.setenv("R_LIBS", str(site))
    monkeypatch.setenv("R_LIBS_USER", str(user))
    found = rscan.r_discover()
    assert found[0] == site
    assert user in found
    assert Path(rpkgs.rscript('cat(R.home("library"))')) not in found


@needs_r
def test_environment_names_the_r_version_and_platform(tmp_path: Path) -> None:
    """r_environment() identifies the library with R's own version and platform."""
    env = rscan.r_environment(tmp_path)
    version, platform = rpkgs.rscript(
        'cat(as.character(getRversion()), R.version$platform, sep = "\\n")'
    ).split()
    assert (env.kind, env.path, env.interpreter, env.platform) == (
        "r",
        str(tmp_path),
        version,
        platform,
    )


# -- fake trees: what interrupted installs and odd libraries leave ---------------------------


def test_lock_directories_are_in_progress_not_packages(tmp_path: Path) -> None:
    """00LOCK-* (R CMD INSTALL's lock and staging area) is reported in progress, not read."""
    description(tmp_path, "00LOCK-ckptC/00new/ckptC", installed_text("ckptC", "1.0"))
    description(tmp_path, "ok", installed_text("ok", "1.0"))
    (tmp_path / "00LOCK").mkdir()
    found = RLibraryScanner(tmp_path).scan()
    assert found.in_progress == {"00LOCK-ckptC", "00LOCK"}
    assert found.packages.keys() == {"ok"} and found.broken == {}


def test_entries_without_an_installed_description_are_skipped(tmp_path: Path) -> None:
    """No DESCRIPTION, no Built field (a source tree), plain files: none is a package."""
    (tmp_path / "empty").mkdir()
    description(tmp_path, "src", "Package: src\nVersion: 1.0\n")
    (tmp_path / "R.css").write_text("body {}\n")
    description(tmp_path, "ok", installed_text("ok", "2.0-1"))
    found = RLibraryScanner(tmp_path).scan()
    assert found.packages.keys() == {"ok"}
    assert found.broken == {} and found.in_progress == frozenset()


def test_a_broken_entry_is_reported_and_the_rest_scanned(tmp_path: Path) -> None:
    """Malformed DCF, a missing Version, or another package's name: broken, never fatal."""
    description(tmp_path, "garbage", "this is not DCF\n\x00\n")
    description(tmp_path, "nover", "Package: nover\nBuilt: R 4.2.2; ; x; unix\n")
    description(tmp_path, "alias", installed_text("other", "1.0"))
    description(tmp_path, "ok", installed_text("ok", "1.0"))
    found = RLibraryScanner(tmp_path).scan()
    assert found.packages.keys() == {"ok"}
    assert found.broken.keys() == {"garbage", "nover", "alias"}
    assert "other" in found.broken["alias"]


def test_unreadable_description_is_broken(tmp_path: Path) -> None:
    """A DESCRIPTION that is not a regular file is reported broken and never read: a
    directory, or a FIFO another user of a shared library planted, whose open would wait
    for a writer, and the daemon with it."""
    (tmp_path / "odd" / "DESCRIPTION").mkdir(parents=True)
    (tmp_path / "fifo").mkdir()
    fifo = tmp_path / "fifo" / "DESCRIPTION"
    os.mkfifo(fifo)
    description(tmp_path, "ok", installed_text("ok", "1.0"))
    done: list[ScanResult] = []
    scan = threading.Thread(target=lambda: done.append(RLibraryScanner(tmp_path).scan()))
    scan.start()
    scan.join(30)
    stuck = scan.is_alive()
    if stuck:  # a writer lets the blocked open return
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        scan.join()
    assert not stuck, "the scan waited on the FIFO"
    (found,) = done
    assert found.packages.keys() == {"ok"}
    assert found.broken == {
        "odd": "cannot read DESCRIPTION: Is a directory",
        "fifo": "DESCRIPTION is not a regular file",
    }


def test_a_description_whose_remote_a_parser_refuses_is_broken_alone(tmp_path: Path) -> None:
    """A planted DESCRIPTION with a RemoteUrl urlsplit refuses: that entry is broken, and
    the scan (the daemon's, a restore's) goes on."""
    remote = "RemoteType: url\nRemoteUrl: https://[x/p_1.0.tar.gz\n"
    description(tmp_path, "badhost", installed_text("badhost", "1.0", remote))
    description(tmp_path, "ok", installed_text("ok", "1.0"))
    found = RLibraryScanner(tmp_path).scan()
    assert found.packages.keys() == {"ok"}
    assert found.broken.keys() == {"badhost"}
    assert "Invalid IPv6 URL" in found.broken["badhost"]


def test_a_package_installed_from_a_local_url_records_the_files_sha256(tmp_path: Path) -> None:
    """remotes::install_url() of a `file://` tarball records no hash; the scan takes the
    sha256 of the file, without which restore refuses it. A URL over https, or a file that
    is gone, records none."""
    tarball = tmp_path / "src" / "p_1.0.tar.gz"
    tarball.parent.mkdir()
    tarball.write_bytes(b"the tarball's bytes")
    lib = tmp_path / "lib"
    for name, url in (
        ("local", tarball.as_uri()),
        ("gone", (tmp_path / "gone.tar.gz").as_uri()),
        ("remote", "https://example.org/p_1.0.tar.gz"),
    ):
        description(lib, name, installed_text(name, "1.0", f"RemoteType: url\nRemoteUrl: {url}\n"))
    found = RLibraryScanner(lib).scan().packages
    digest = hashlib.sha256(b"the tarball's bytes").hexdigest()
    assert found["local"].source == UrlSource(url=tarball.as_uri(), hashes={"sha256": digest})
    assert found["gone"].source == UrlSource(url=(tmp_path / "gone.tar.gz").as_uri())
    assert found["remote"].source == UrlSource(url="https://example.org/p_1.0.tar.gz")


def old_tree_sha256(directory: Path) -> str:
    """The installed-tree hash as os.walk computed it, which manifests already record."""
    digest = hashlib.sha256()
    for top, dirs, files in os.walk(directory):
        dirs.sort()
        for name in sorted(files):
            path = Path(top, name)
            digest.update(str(path.relative_to(directory)).encode() + b"\0")
            if path.is_symlink():
                digest.update(b"->" + str(path.readlink()).encode())
            else:
                digest.update(hashlib.sha256(path.read_bytes()).hexdigest().encode())
            digest.update(b"\0")
    return digest.hexdigest()


def local_package(lib: Path, name: str) -> Path:
    """A package built here and installed from a file (no Repository:, no Remote*), with
    files in subdirectories, a link to a file and one to a directory."""
    description(lib, name, installed_text(name, "1.0"))
    package = lib / name
    (package / "R").mkdir()
    (package / "R" / name).write_text("f <- function() 1\n")
    (package / "x" / "a").mkdir(parents=True)
    (package / "x" / "a" / "0big").write_bytes(b"0" * 4096)
    (package / "x" / "a" / "key").write_bytes(b"the package's own\n")
    (package / "x" / "m").symlink_to("a/key")
    (package / "x" / "d").symlink_to("a")
    return package


def installed_hash(lib: Path, name: str) -> str | None:
    source = RLibraryScanner(lib).scan().packages[name].source
    assert isinstance(source, LocalSource)
    return source.installed


def test_a_local_install_hashes_its_tree_as_manifests_recorded_it(tmp_path: Path) -> None:
    """Read through directory descriptors, the tree hash of a local install is the one
    os.walk gave: a manifest's recorded hash does not change for an untouched package."""
    package = local_package(tmp_path / "lib", "mine")
    assert installed_hash(tmp_path / "lib", "mine") == old_tree_sha256(package)


def test_a_sparse_file_over_the_byte_cap_leaves_the_package_recorded_without_a_hash(
    tmp_path: Path,
) -> None:
    """Another user's package in a shared library with a 20 GiB sparse file: not read (its
    size is over the cap), so the package is recorded without the installed tree's hash,
    as a tree with too many files is; a package beside it keeps its hash."""
    lib = tmp_path / "lib"
    local_package(lib, "mine")
    evil = local_package(lib, "evil")
    with (evil / "sparse").open("wb") as f:
        f.truncate(20 << 30)
    found = RLibraryScanner(lib).scan().packages
    assert found["evil"].source == LocalSource(installed=None)
    assert installed_hash(lib, "mine") is not None


def test_the_tree_hash_never_reads_through_a_directory_swapped_for_a_link(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`x/a` renamed away and made a link to the user's ~/.ssh once `x/a/0big` is open:
    the rest of `x/a` is read from the directory listed, so the hash is the untouched
    tree's, not one over the user's key."""
    package = local_package(tmp_path / "lib", "evil")
    untouched = old_tree_sha256(package)
    ssh = tmp_path / "home" / ".ssh"
    ssh.mkdir(parents=True)
    (ssh / "key").write_bytes(b"alice's own\n")
    real = os.open
    swapped: list[bool] = []

    def watched(path: str | os.PathLike[str], flags: int, *args: object, **kw: object) -> int:
        fd = real(path, flags, *args, **kw)  # type: ignore[arg-type]
        if not swapped and Path(path).name == "0big":
            swapped.append(True)
            (package / "x" / "a").rename(package / "x" / "a.real")
            (package / "x" / "a").symlink_to(ssh)
        return fd

    monkeypatch.setattr(os, "open", watched)
    assert installed_hash(tmp_path / "lib", "evil") == untouched
    assert swapped


def test_a_file_grown_once_open_is_not_read_past_its_listed_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another user who sees the hash open `x/a/0big` and grows it to 2 GiB: the hash
    reads no further than the size the byte cap counted, and the grown tree has none."""
    package = local_package(tmp_path / "lib", "evil")
    big = package / "x" / "a" / "0big"
    real = os.fstat
    grown: list[bool] = []

    def watched(fd: int) -> os.stat_result:
        st = real(fd)
        # Once the open file is checked against its listing: the growth the check missed.
        if not grown and (st.st_dev, st.st_ino) == (big.stat().st_dev, big.stat().st_ino):
            grown.append(True)
            os.truncate(big, 2 << 30)
        return st

    monkeypatch.setattr(os, "fstat", watched)
    # Read to its end, the grown file would give a hash (after 2 GiB of reads).
    assert installed_hash(tmp_path / "lib", "evil") is None
    assert grown


def test_a_package_directory_that_is_a_link_keeps_its_tree_hash(tmp_path: Path) -> None:
    """renv-style libraries link each package in from a cache: the link is followed, as
    os.walk followed it, and the hash is the one manifests recorded."""
    package = local_package(tmp_path / "cache", "mine")
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "mine").symlink_to(package)
    assert installed_hash(lib, "mine") == old_tree_sha256(package)


def test_missing_library_scans_empty_and_says_so(tmp_path: Path) -> None:
    """A library that does not exist yet (R_LIBS_USER before the first install) is empty."""
    scanner = RLibraryScanner(tmp_path / "nope")
    assert scanner.scan().packages == {}
    assert scanner.exists is False
    (tmp_path / "nope").mkdir()
    scanner.scan()
    assert scanner.exists is True


def test_rescan_rereads_only_descriptions_whose_identity_changed(tmp_path: Path) -> None:
    """Same inode, mtime and size: the cached entry stands; a replaced file is read again."""
    hour_ago = time.time_ns() - 3600 * 10**9  # older than the racy window
    kept = description(tmp_path, "kept", installed_text("kept", "1.0"))
    moved = description(tmp_path, "moved", installed_text("moved", "1.0"))
    for path in (kept, moved):
        os.utime(path, ns=(hour_ago, hour_ago))
    scanner = RLibraryScanner(tmp_path)
    scanner.scan()
    assert scanner.reads == 2
    with kept.open("r+") as f:  # same inode and size, mtime put back: not re-read
        f.write(installed_text("kept", "9.0"))
    os.utime(kept, ns=(hour_ago, hour_ago))
    new = tmp_path / "new-description"
    new.write_text(installed_text("moved", "2.0"))
    os.utime(new, ns=(hour_ago, hour_ago))
    new.replace(moved)  # R renames the staged package into place: a new inode
    found = scanner.scan().packages
    assert scanner.reads == 1
    assert found["kept"].version == "1.0"
    assert found["moved"].version == "2.0"
    assert RLibraryScanner(tmp_path).scan().packages["kept"].version == "9.0"


def test_renewed_names_a_package_installed_again_as_it_was(tmp_path: Path) -> None:
    """R CMD INSTALL of the same version renames a new DESCRIPTION into place: renewed;
    the first scan and an untouched package are not."""
    hour_ago = time.time_ns() - 3600 * 10**9
    for name in ("kept", "again"):
        os.utime(description(tmp_path, name, installed_text(name, "1.0")), ns=(hour_ago,) * 2)
    scanner = RLibraryScanner(tmp_path)
    scanner.scan()
    assert scanner.renewed == frozenset()
    staged = tmp_path / "staged"
    staged.write_text(installed_text("again", "1.0"))
    os.utime(staged, ns=(hour_ago, hour_ago))
    staged.replace(tmp_path / "again" / "DESCRIPTION")
    scanner.scan()
    assert scanner.renewed == {"again"}
    scanner.scan()
    assert scanner.renewed == frozenset()


def test_made_ns_is_when_the_package_was_installed(tmp_path: Path) -> None:
    """`made_ns` (what a first scan compares with a forget's time): when the package's
    DESCRIPTION was written, its ctime, not the mtime a binary package's tarball carries
    from where it was built; None for a source tree or a name not there."""
    path = description(tmp_path, "ok", installed_text("ok", "1.0"))
    os.utime(path, ns=(1_500_000_000_000_000_000, 1_500_000_000_000_000_000))  # as unpacked
    description(tmp_path, "src", "Package: src\nVersion: 1.0\n")
    scanner = RLibraryScanner(tmp_path)
    scanner.scan()
    assert scanner.made_ns("ok") == path.stat().st_ctime_ns > 1_600_000_000_000_000_000
    assert scanner.made_ns("src") is None and scanner.made_ns("gone") is None


def test_recent_and_broken_entries_are_read_again(tmp_path: Path) -> None:
    """An entry written within the racy window, or broken, is re-read at the next scan."""
    description(tmp_path, "fresh", installed_text("fresh", "1.0"))
    broken = description(tmp_path, "bad", "not DCF\n")
    hour_ago = time.time_ns() - 3600 * 10**9
    os.utime(broken, ns=(hour_ago, hour_ago))
    scanner = RLibraryScanner(tmp_path)
    scanner.scan()
    scanner.scan()
    assert scanner.reads == 2


def test_removed_package_leaves_the_scan(tmp_path: Path) -> None:
    """remove.packages() deletes the directory: the next scan no longer lists it."""
    description(tmp_path, "gone", installed_text("gone", "1.0"))
    scanner = RLibraryScanner(tmp_path)
    assert "gone" in scanner.scan().packages
    shutil.rmtree(tmp_path / "gone")
    assert scanner.scan().packages == {}


def test_latin1_description_is_read(tmp_path: Path) -> None:
    """Older packages declare Encoding: latin1; their DESCRIPTION still scans."""
    (tmp_path / "old").mkdir()
    text = installed_text("old", "0.1-2", "Encoding: latin1\nAuthor: Fran\xe7ois\n")
    (tmp_path / "old" / "DESCRIPTION").write_bytes(text.encode("latin-1"))
    assert RLibraryScanner(tmp_path).scan().packages["old"].version == "0.1-2"


# -- DESCRIPTION fields --------------------------------------------------------------------


def test_dcf_joins_continuation_lines_and_keeps_the_first_record() -> None:
    """Continuation lines belong to their field; a blank line ends the record."""
    fields = parse_dcf(
        "Package: aa\nDepends: R (>= 3.5),\n    methods,\n\tbb (>= 1.0)\n"
        "Imports: cc\n\nPackage: zz\n"
    )
    assert fields["Depends"] == "R (>= 3.5), methods, bb (>= 1.0)"
    assert fields["Package"] == "aa"
    assert rscan.dependencies(fields) == ("bb", "cc", "methods")


def test_linking_to_counts_and_suggests_does_not() -> None:
    """Depends, Imports and LinkingTo make a dependency; Suggests and Enhances do not."""
    fields = {"LinkingTo": "Rcpp", "Suggests": "testthat", "Enhances": "x", "Imports": "R6"}
    assert rscan.dependencies(fields) == ("R6", "Rcpp")


def _source(extra: str) -> object:
    return rscan.package(parse_dcf(installed_text("p", "1.0", extra))).source


def test_repository_field_gives_an_index_source() -> None:
    """`Repository: CRAN` (and pak's RemoteType: standard) is an index source."""
    assert _source("Repository: CRAN\n") == IndexSource(repository="CRAN")
    assert _source("RemoteType: standard\nRepository: RSPM\n") == IndexSource(repository="RSPM")
    assert _source("RemoteType: standard\n") == IndexSource()


def test_no_repository_and_no_remote_is_a_local_install() -> None:
    """No `Repository:` (which repositories add) and no `Remote*`: built and installed from
    a local file; remotes' install_local of a tarball records its path."""
    assert _source("") == LocalSource()
    assert _source("Date/Publication: 2024-01-01 00:00:00 UTC\n") == IndexSource()
    assert _source("git_url: https://git.bioconductor.org/packages/x\n") == IndexSource()
    local = "RemoteType: local\nRemoteUrl: /home/u/x_1.0.tar.gz\n"
    assert _source(local) == LocalSource(path="/home/u/x_1.0.tar.gz")


def test_github_remote_gives_the_repository_and_commit() -> None:
    """remotes::install_github fields become a git source with the commit and ref."""
    source = _source(
        "RemoteType: github\nRemoteHost: api.github.com\nRemoteRepo: pkg\n"
        "RemoteUsername: someone\nRemoteRef: main\nRemoteSha: 0123abcd\nRemoteSubdir: sub\n"
    )
    assert source == VcsSource(
        vcs="git",
        url="https://github.com/someone/pkg",
        commit="0123abcd",
        requested_revision="main",
        subdirectory="sub",
    )


def test_enterprise_and_gitlab_hosts_give_their_web_url() -> None:
    """The API host remotes records is turned back into the forge's web host."""
    enterprise = _source(
        "RemoteType: github\nRemoteHost: https://github.example.com/api/v3\n"
        "RemoteRepo: r\nRemoteUsername: u\nRemoteSha: ab12\n"
    )
    assert isinstance(enterprise, VcsSource)
    assert enterprise.url == "https://github.example.com/u/r"
    gitlab = _source("RemoteType: gitlab\nRemoteRepo: r\nRemoteUsername: u\n")
    assert isinstance(gitlab, VcsSource) and gitlab.url == "https://gitlab.com/u/r"


def test_git_and_url_remotes_drop_credentials() -> None:
    """Tokens in RemoteUrl never reach the manifest."""
    git = _source("RemoteType: git2r\nRemoteUrl: https://user:tok@git.example.com/r.git\n")
    assert isinstance(git, VcsSource) and git.url == "https://git.example.com/r.git"
    url = _source("RemoteType: url\nRemoteUrl: https://tok@example.com:8443/p_1.0.tar.gz\n")
    assert url == UrlSource(url="https://example.com:8443/p_1.0.tar.gz")


def test_local_remote_gives_a_directory_source() -> None:
    """remotes::install_local records the directory."""
    assert _source("RemoteType: local\nRemoteUrl: /home/u/pkg\n") == DirectorySource(
        path="/home/u/pkg"
    )


def test_delta_marks_a_changed_package_needed_by_an_added_one_as_dependency() -> None:
    """An image package the user upgraded because a new package needs it is a dependency."""
    env = manifest.Environment(kind="r", path="/lib")
    base = {"dep": Package(name="dep", version="1.0")}
    now = {
        "dep": Package(name="dep", version="2.0"),
        "top": Package(name="top", version="1.0", depends=("dep",)),
    }
    d = manifest.delta(env, base, now)
    assert [(p.name, p.requested) for p in d.changed] == [("dep", False)]
    assert [(p.name, p.requested) for p in d.added] == [("top", True)]


def test_a_package_being_replaced_is_uncertain_not_removed(tmp_path: Path) -> None:
    """R moves the package it replaces into 00LOCK-<pkg>: its absence proves nothing."""
    description(tmp_path, "00LOCK-ckptC/ckptC", installed_text("ckptC", "1.0"))
    target = Target(env=manifest.Environment(kind="r", path=str(tmp_path)), roots=(tmp_path,))
    assert target.scan().packages == ()
    assert target.uncertain() == {"ckptC"}


def test_what_a_whole_library_lock_holds_is_uncertain_not_removed(tmp_path: Path) -> None:
    """`R CMD INSTALL a b` locks the library with a bare 00LOCK, moves the installed `a`
    into it and leaves `a/` empty: every package directory in the lock (not its `00new`
    staging area) and every package directory without a DESCRIPTION is uncertain while a
    lock exists; without a lock an empty directory is nothing."""
    description(tmp_path, "00LOCK/ckptA", installed_text("ckptA", "1.0"))
    description(tmp_path, "00LOCK/00new/ckptNew", installed_text("ckptNew", "1.0"))
    (tmp_path / "ckptA").mkdir()
    (tmp_path / "ckptHalf").mkdir()
    description(tmp_path, "ok", installed_text("ok", "1.0"))
    target = Target(env=manifest.Environment(kind="r", path=str(tmp_path)), roots=(tmp_path,))
    assert [p.name for p in target.scan().packages] == ["ok"]
    assert {"ckptA", "ckptHalf"} <= target.uncertain()
    assert "ckptNew" not in target.uncertain() and "ok" not in target.uncertain()
    shutil.rmtree(tmp_path / "00LOCK")
    target.scan()
    assert target.uncertain() == frozenset()
