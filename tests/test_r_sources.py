"""R sources from the store are hostile until validated: the same checks as Python's, and
fetching them stays inside its limits (scheme, size, deadline, the tree it was copied to)."""

from __future__ import annotations

import hashlib
import http.server
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import rpkgs

from pkgckpt.config import Config
from pkgckpt.errors import ManifestError
from pkgckpt.manifest import (
    Body,
    Delta,
    DirectorySource,
    Environment,
    LocalSource,
    Package,
    Source,
    UrlSource,
    VcsSource,
)
from pkgckpt.restore.r import Prepared, RInstaller, fetch_archive, mark_source
from pkgckpt.restore.runner import Deadline
from pkgckpt.scan.r import DescriptionError, RLibraryScanner, source
from pkgckpt.validate import check_body

needs_r = rpkgs.needs_r

ENV = Environment(kind="r", path="/lib")
GIT = "https://example.org/u/repo.git"


def refused(source: Source) -> str:
    body = Body(
        environments=(Delta(env=ENV, added=(Package(name="evil", version="1.0", source=source),)),)
    )
    with pytest.raises(ManifestError) as e:
        check_body(body)
    return str(e.value)


@pytest.mark.parametrize(
    ("source", "why"),
    [
        (VcsSource(vcs="git", url=GIT, requested_revision="--orphan=evil"), "revision"),
        (VcsSource(vcs="git", url="ssh://-oProxyCommand=touch%20x/r"), "host"),
        (VcsSource(vcs="git", url="https://example.org/-upload-pack=x"), "'-'"),
        (UrlSource(url="https://example.org/a b.tar.gz"), "whitespace"),
        (UrlSource(url="https://example.org/a\n.tar.gz"), "whitespace"),
        (UrlSource(url="ftp://example.org/a.tar.gz"), "scheme"),
        (UrlSource(url="-https://example.org/a.tar.gz"), "absolute URL"),
        (VcsSource(vcs="git", url=GIT, subdirectory="/etc"), "subdirectory"),
        (VcsSource(vcs="git", url=GIT, subdirectory="pkg/../../x"), "subdirectory"),
        (VcsSource(vcs="git", url=GIT, subdirectory="-x"), "subdirectory"),
        (DirectorySource(path="/src/-rf"), "'-'"),
        (LocalSource(path="/src/-x_1.0.tar.gz"), "'-'"),
        (LocalSource(path="relative.tar.gz"), "absolute"),
        (VcsSource(vcs="git", url="-c/x/../pkg"), "absolute URL"),
        (VcsSource(vcs="git", url="../-upload-pack=x"), "'-'"),
        (VcsSource(vcs="git", url="../pkg#x"), "fragment"),
        (LocalSource(path="/x.tar.gz", hashes={"sha256": "zz"}), "hash"),
    ],
)
def test_hostile_r_sources_refuse_the_manifest(source: Source, why: str) -> None:
    """Option-shaped, blank-holding, unknown-scheme or escaping R sources never reach git or R."""
    assert why in refused(source)


def test_a_plain_r_source_passes() -> None:
    """The shapes remotes records pass (no false refusal of a normal manifest)."""
    ok = VcsSource(
        vcs="git", url=GIT, commit="a" * 40, requested_revision="v1.0", subdirectory="pkg"
    )
    check_body(
        Body(environments=(Delta(env=ENV, added=(Package(name="ok", version="1.0", source=ok),)),))
    )


def test_a_device_is_never_copied(tmp_path: Path) -> None:
    """file:///dev/zero is refused before a byte is copied: not a regular file."""
    with pytest.raises(ValueError, match="not a regular file"):
        fetch_archive("file:///dev/zero", tmp_path / "a", Deadline(10), 1 << 20)


def test_a_file_over_the_size_cap_is_refused(tmp_path: Path) -> None:
    """max_download_bytes bounds what is copied."""
    big = tmp_path / "big.tar.gz"
    big.write_bytes(b"x" * 5000)
    with pytest.raises(ValueError, match="limit"):
        fetch_archive(big.as_uri(), tmp_path / "a", Deadline(10), 4096)
    fetch_archive(big.as_uri(), tmp_path / "b", Deadline(10), 5000)
    assert (tmp_path / "b").stat().st_size == 5000


class _Redirect(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(302)
        self.send_header("Location", "https://127.0.0.1:1/elsewhere.tar.gz")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def redirecting() -> Iterator[str]:
    server = http.server.HTTPServer(("127.0.0.1", 0), _Redirect)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/pkg.tar.gz"
    server.shutdown()
    server.server_close()


def test_a_redirect_to_another_scheme_is_refused(redirecting: str, tmp_path: Path) -> None:
    """A download is never followed to another scheme (https -> http, here http -> https)."""
    with pytest.raises(ValueError, match="refusing a redirect from http to https"):
        fetch_archive(redirecting, tmp_path / "a", Deadline(10), 1 << 20)


def test_a_subdirectory_linking_out_of_the_tree_is_not_rewritten(tmp_path: Path) -> None:
    """A clone whose subdirectory is a symlink cannot make pkgckpt edit a file outside it."""
    outside = tmp_path / "outside"
    outside.mkdir()
    description = outside / "DESCRIPTION"
    description.write_text("Package: evil\nVersion: 1.0\n")
    root = tmp_path / "clone"
    root.mkdir()
    (root / "pkg").symlink_to(outside)
    with pytest.raises(DescriptionError, match="out of the source tree"):
        mark_source(root / "pkg", "evil", "1.0", "RemoteType: git\n", root)
    assert description.read_text() == "Package: evil\nVersion: 1.0\n"


def test_a_linked_description_is_not_rewritten(tmp_path: Path) -> None:
    """DESCRIPTION itself as a symlink is refused, not followed."""
    target = tmp_path / "elsewhere"
    target.write_text("Package: evil\nVersion: 1.0\n")
    root = tmp_path / "clone"
    root.mkdir()
    (root / "DESCRIPTION").symlink_to(target)
    with pytest.raises(DescriptionError, match="link"):
        mark_source(root, "evil", "1.0", "RemoteType: git\n", root)
    assert target.read_text() == "Package: evil\nVersion: 1.0\n"


@needs_r
def test_a_directory_source_is_copied_without_following_symlinks(tmp_path: Path) -> None:
    """A link in a local package source stays a link in the copy that is built."""
    src = tmp_path / "src"
    (src / "R").mkdir(parents=True)
    (src / "DESCRIPTION").write_text("Package: ckptLocal\nVersion: 1.0\nTitle: T\n")
    (src / "etc").symlink_to("/etc")
    installer = RInstaller(Environment(kind="r", path=str(tmp_path / "lib")), Config())
    package = Package(name="ckptLocal", version="1.0", source=DirectorySource(path=str(src)))
    work = tmp_path / "work"
    prepared = installer._prepare(package, DirectorySource(path=str(src)), work, Deadline(60))
    assert isinstance(prepared, Prepared), prepared
    assert (prepared.path / "etc").is_symlink()
    assert "RemoteType: local" in (prepared.path / "DESCRIPTION").read_text()


@needs_r
def test_a_directory_source_with_a_subdirectory_copies_only_the_subdirectory(
    tmp_path: Path,
) -> None:
    """`remotes::install_local(path, subdir = ...)` records the directory and the
    subdirectory; restore copies the package's directory alone (the recorded one may be the
    home directory, or /tmp), installs it with the Remote* fields remotes writes, and a
    rescan records the same source."""
    home = tmp_path / "home"
    package_dir = rpkgs.stage("ckpt.base", "1.0.0", home)
    subdirectory = str(package_dir.relative_to(home))  # ckpt.base-1.0.0/ckpt.base
    (home / "secret.txt").write_text("not the package's\n")
    (home / "ckpt.base-1.0.0" / "notes.txt").write_text("beside the package\n")
    source = DirectorySource(path=str(home), subdirectory=subdirectory)
    package = Package(name="ckpt.base", version="1.0.0", source=source)
    lib = tmp_path / "lib"
    installer = RInstaller(Environment(kind="r", path=str(lib)), Config())
    assert installer.blocked(package) is None
    work = tmp_path / "work"
    prepared = installer._prepare(package, source, work, Deadline(60))
    assert isinstance(prepared, Prepared), prepared
    copied = {p.relative_to(prepared.path) for p in prepared.path.rglob("*")}
    assert copied == {p.relative_to(package_dir) for p in package_dir.rglob("*")}
    assert not [p for p in work.rglob("*") if p.name in ("secret.txt", "notes.txt")]

    outcome = installer.install_each([package], deadline=Deadline(120))["ckpt.base"]
    assert outcome.ok, outcome.output
    found = RLibraryScanner(lib).scan().packages["ckpt.base"]
    assert (found.version, found.source) == ("1.0.0", source)


@needs_r
def test_a_subdirectory_linking_out_of_the_recorded_directory_is_not_copied(
    tmp_path: Path,
) -> None:
    """A subdirectory that is a link out of the recorded directory is refused, as when the
    whole directory was copied with its links kept: the recorded directory does not hold
    that package."""
    elsewhere = rpkgs.stage("ckpt.base", "1.0.0", tmp_path / "elsewhere")
    home = tmp_path / "home"
    home.mkdir()
    (home / "pkg").symlink_to(elsewhere)
    source = DirectorySource(path=str(home), subdirectory="pkg")
    package = Package(name="ckpt.base", version="1.0.0", source=source)
    installer = RInstaller(Environment(kind="r", path=str(tmp_path / "lib")), Config())
    prepared = installer._prepare(package, source, tmp_path / "work", Deadline(60))
    assert not isinstance(prepared, Prepared) and "out of" in prepared.output, prepared
    assert not list((tmp_path / "work").rglob("DESCRIPTION"))


@needs_r
@pytest.mark.parametrize("attack", ["none", "owner", "writable", "subdirectory", "link"])
def test_a_directory_source_others_could_change_is_blocked(attack: str, tmp_path: Path) -> None:
    """`remotes::install_local()` sources pass the checks of Python's directory sources
    (`localsource.directory_problem`), down to the recorded subdirectory: R CMD INSTALL
    runs their code. Run as root, another user is nobody (the security suite has a real
    one); tmp_path is root's, so each attack is on the source itself."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)  # like /tmp: root's and sticky, so it passes
    src = tmp_path / "src"
    (src / "R").mkdir(parents=True)
    (src / "DESCRIPTION").write_text("Package: ckptLocal\nVersion: 1.0\nTitle: T\n")
    source = DirectorySource(path=str(src))
    nobody = "is owned by nobody (uid 65534), not by you or root"
    expect: str | None = None
    if attack == "owner":
        for path in (src, *src.rglob("*")):
            os.lchown(path, 65534, 65534)
        expect = f"{src} {nobody}"
    elif attack == "writable":
        src.chmod(0o777)
        expect = f"{src} is writable by others"
    elif attack == "subdirectory":
        mine = shutil.copytree(src, shared / "mine")
        for path in (mine, *mine.rglob("*")):
            os.lchown(path, 65534, 65534)
        source = DirectorySource(path=str(shared), subdirectory="mine")
        expect = f"{mine} {nobody}"
    elif attack == "link":
        # The tree is root's, but the subdirectory is another user's link to it.
        (shared / "mine").symlink_to(src)
        os.lchown(shared / "mine", 65534, 65534)
        source = DirectorySource(path=str(shared), subdirectory="mine")
        expect = f"{shared / 'mine'} {nobody}"
    installer = RInstaller(Environment(kind="r", path=str(tmp_path / "lib")), Config())
    package = Package(name="ckptLocal", version="1.0", source=source)
    assert installer.blocked(package) == expect
    if expect is not None:
        prepared = installer._prepare(package, source, tmp_path / "work", Deadline(60))
        assert not isinstance(prepared, Prepared) and expect in prepared.output


def test_an_scp_like_git_remote_is_recorded_as_the_ssh_url_it_means() -> None:
    """`git@host:user/repo` (what remotes records for install_git over ssh) becomes an
    ssh:// URL, which restore accepts, instead of a manifest restore would refuse."""
    fields = {"RemoteType": "git2r", "RemoteUrl": "git@example.org:u/repo.git"}
    recorded = source(fields)
    assert recorded == VcsSource(vcs="git", url="ssh://git@example.org/u/repo.git")
    check_body(
        Body(
            environments=(
                Delta(env=ENV, added=(Package(name="ok", version="1.0", source=recorded),)),
            )
        )
    )


@pytest.mark.parametrize(
    "fields",
    [
        {"RemoteType": "git2r", "RemoteUrl": "../pkg"},
        {"RemoteType": "xgit", "RemoteUrl": "src/pkg"},
        {"RemoteType": "local", "RemoteUrl": "pkg_1.0.tar.gz"},
    ],
)
def test_a_remote_at_a_relative_path_is_recorded_as_a_local_install(fields: dict[str, str]) -> None:
    """`install_git("../pkg")` (remotes records the path as typed): where it was relative to
    is lost, so it is recorded as installed from a local file, which restore accepts, not as
    a source that refused the whole manifest."""
    recorded = source(fields)
    assert recorded == LocalSource()
    check_body(
        Body(
            environments=(
                Delta(env=ENV, added=(Package(name="ok", version="1.0", source=recorded),)),
            )
        )
    )


@needs_r
def test_a_relative_git_remote_recorded_before_fails_alone(tmp_path: Path) -> None:
    """A manifest that older daemons wrote with `install_git("../pkg")` as typed is
    restored: that package alone is blocked, saying why; nothing is asked of git."""
    old = Package(name="old", version="1.0", source=VcsSource(vcs="git", url="../pkg"))
    other = Package(name="other", version="1.0")
    check_body(Body(environments=(Delta(env=ENV, added=(old, other)),)))
    installer = RInstaller(Environment(kind="r", path=str(tmp_path / "lib")), Config())
    assert installer.blocked(old) == (
        "installed with git from a relative path (../pkg); where it was relative to is not recorded"
    )


def test_a_git_remote_in_the_home_directory_is_recorded_as_its_file_url(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`install_git("~/src/pkg")` (remotes records the path as typed): the file:// URL of
    that directory in this home, which restore accepts."""
    monkeypatch.setenv("HOME", str(tmp_path))
    recorded = source({"RemoteType": "xgit", "RemoteUrl": "~/src/pkg"})
    assert recorded == VcsSource(vcs="git", url=(tmp_path / "src" / "pkg").as_uri())
    check_body(
        Body(
            environments=(
                Delta(env=ENV, added=(Package(name="ok", version="1.0", source=recorded),)),
            )
        )
    )


@needs_r
def test_a_file_url_archive_is_installed_only_against_its_recorded_sha256(tmp_path: Path) -> None:
    """A `file://` tarball (remotes::install_url() of a local file) follows the rules of
    Python's: R CMD INSTALL runs its code, so without a recorded sha256 it is refused, and
    with one it must still match; a missing file is named as such."""
    tarball = tmp_path / "p_1.0.tar.gz"
    tarball.write_bytes(b"the tarball's bytes")
    digest = hashlib.sha256(b"the tarball's bytes").hexdigest()
    installer = RInstaller(Environment(kind="r", path=str(tmp_path / "lib")), Config())

    def blocked(source: UrlSource) -> str | None:
        return installer.blocked(Package(name="p", version="1.0", source=source))

    url = tarball.as_uri()
    assert blocked(UrlSource(url=url, hashes={"sha256": digest})) is None
    assert blocked(UrlSource(url=url)) == (
        f"no sha256 of {tarball} was recorded at checkpoint, so it cannot be verified"
    )
    assert blocked(UrlSource(url=url, hashes={"sha256": "0" * 64})) == (
        f"{tarball} has changed since checkpoint: its sha256 is not the one recorded"
    )
    gone = (tmp_path / "gone.tar.gz").as_uri()
    assert blocked(UrlSource(url=gone, hashes={"sha256": digest})) == (
        f"{tmp_path / 'gone.tar.gz'} does not exist here"
    )
