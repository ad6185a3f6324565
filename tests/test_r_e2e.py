"""R end to end, with real R: the daemon records what install.packages() did, restore puts
it back from a local CRAN-like repository (current versions and the archive)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import restore_kit
import rpkgs

from pkgckpt.config import Config
from pkgckpt.errors import RestoreError
from pkgckpt.manifest import (
    Body,
    Delta,
    DirectorySource,
    Environment,
    IndexSource,
    LocalSource,
    Package,
    UrlSource,
    VcsSource,
)
from pkgckpt.restore.r import RInstaller, read_tarball
from pkgckpt.restore.runner import Deadline
from pkgckpt.scan.r import DescriptionError, RLibraryScanner, r_environment, r_info
from pkgckpt.store import Store, init_store

needs_r = rpkgs.needs_r

IMAGE = ("ckpt.base", "ckptOld", "ckptGone")
"""What the test image ships in the library: ckptOld at 1.0, the repository's."""


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> rpkgs.Repo:
    return rpkgs.shared_repo(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def image(repo: rpkgs.Repo, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The image's R library, installed once; each test copies it."""
    lib = tmp_path_factory.mktemp("image") / "lib"
    rpkgs.install(lib, repo, IMAGE)
    return lib


def site_files(tmp: Path, repos: str | None = None) -> dict[str, str]:
    """A throwaway R site: its own site library (`tmp/site`), Renviron.site and
    Rprofile.site (setting `repos` when given), named by R_ENVIRON and R_PROFILE."""
    site = tmp / "site"
    site.mkdir(exist_ok=True)
    renviron, rprofile = tmp / "Renviron.site", tmp / "Rprofile.site"
    renviron.write_text(f"R_LIBS_SITE={site}\n")
    rprofile.write_text(f'options(repos = c(CRAN = "{repos}"))\n' if repos else "")
    return {"R_ENVIRON": str(renviron), "R_PROFILE": str(rprofile)}


class Session:
    """One user's container sessions: a library, a store, a key, a home with an .Rprofile."""

    def __init__(
        self, tmp: Path, repo: rpkgs.Repo, r_libs_user: bool = False, user_lib: str | None = None
    ) -> None:
        self.tmp = tmp
        self.repo = repo
        self.lib = tmp / "lib"
        self.r_libs_user = r_libs_user
        """Name the library by R_LIBS_USER (pkgckpt's default) instead of --r-lib."""
        self.user_lib = user_lib
        """R_LIBS_USER as written (`~/R/%p/%v`); `lib` is then what R makes of it."""
        self.site_repos: str | None = None
        """The repository the image's Rprofile.site sets (none: R's `@CRAN@`)."""
        self.rstudio: Path | None = None
        """The image's RStudio config directory (RSTUDIO_CONFIG_DIR), if any."""
        self.site = tmp / "site"
        """The site library (R_LIBS_SITE in the site's Renviron.site)."""
        self.store = tmp / "store"
        init_store(self.store)
        self.home = tmp / "home"
        self.home.mkdir()
        self.marker = tmp / "profile-ran"
        # A user profile that leaves a trace: restore must run R without it.
        (self.home / ".Rprofile").write_text(
            f'cat(commandArgs(), file = "{self.marker}", append = TRUE)\n'
        )
        self.containers = 0
        self.env = self.new_container()

    def new_container(self) -> dict[str, str]:
        """A fresh runtime directory: the next pod of the same image."""
        self.containers += 1
        env = restore_kit.hermetic(self.tmp / f"c{self.containers}")
        env.update(HOME=str(self.home), PKGCKPT_DEBUG="1")
        env.pop("R_PROFILE_USER", None)
        # A site of the test's own: the machine's Renviron.site would add its site library,
        # its Rprofile.site a repository the tests cannot reach.
        env.update(site_files(self.tmp, self.site_repos))
        if self.r_libs_user:
            # pkgckpt's default: the libraries R uses.
            env.pop("PKGCKPT_DISCOVER")
            env["R_LIBS_USER"] = self.user_lib or str(self.lib)
        if self.rstudio is not None:
            env["RSTUDIO_CONFIG_DIR"] = str(self.rstudio)
        self.env = env
        return env

    def args(self, *extra: str) -> list[str]:
        lib = [] if self.r_libs_user else ["--r-lib", str(self.lib)]
        return [*lib, "--store", str(self.store), "--key", "k", *extra]

    def pkgckpt(self, command: str, *extra: str) -> subprocess.CompletedProcess[str]:
        return restore_kit.pkgckpt(command, *self.args(*extra), env=self.env)

    def restore(self, *extra: str) -> subprocess.CompletedProcess[str]:
        return self.pkgckpt("restore", "--r-repo", self.repo.url, *extra)


@pytest.fixture
def session(tmp_path: Path, repo: rpkgs.Repo, image: Path) -> Session:
    s = Session(tmp_path, repo)
    shutil.copytree(image, s.lib)
    return s


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[socket.socket]:
    """A systemd-style notify socket: the daemon says READY=1 on it."""
    path = tmp_path / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(60)
    yield sock
    sock.close()


def descriptions(lib: Path) -> dict[str, tuple[int, int]]:
    """(inode, mtime) of every DESCRIPTION: any reinstall changes them."""
    found = {}
    for path in lib.glob("*/DESCRIPTION"):
        st = path.stat()
        found[path.parent.name] = (st.st_ino, st.st_mtime_ns)
    return found


def watched(session: Session, notify: socket.socket, user: Callable[[], None]) -> dict[str, str]:
    """Run the daemon while `user` installs, SIGTERM it right after; what R then listed."""
    daemon = subprocess.Popen(
        [sys.executable, "-m", "pkgckpt", "daemon", *session.args("--quiet-ms", "200")],
        env={**session.env, "NOTIFY_SOCKET": notify.getsockname()},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert notify.recv(4096).startswith(b"READY=1")
        user()
        before = rpkgs.installed(session.lib)
        daemon.send_signal(signal.SIGTERM)
        _, log = daemon.communicate(timeout=60)
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
    assert daemon.returncode == 0, log
    return before


def r_lib_delta(store: Path, lib: Path | None = None) -> Delta:
    """The recorded delta of R library `lib` (default: the first R library)."""
    found = Store(store, "k").read()
    assert found is not None
    return next(
        d
        for d in found.body.environments
        if d.env.kind == "r" and (lib is None or d.env.path == str(lib))
    )


# -- the loop: daemon -> SIGTERM -> new container -> restore ------------------------------


@needs_r
def test_install_packages_survive_a_container_restart(
    session: Session, image: Path, notify: socket.socket
) -> None:
    """What install.packages() did under the daemon comes back and runs; a rerun is a no-op."""
    first = session.restore()  # the entrypoint: no manifest yet, takes the baseline
    assert first.returncode == 0, first.stderr

    def user() -> None:
        rpkgs.install(
            session.lib,
            session.repo,
            ["ckptImports", "ckptC"],
            [session.repo.tarball("ckptOld", "0.9-1")],
        )
        rpkgs.rscript(
            "remove.packages(commandArgs(TRUE)[1], lib = commandArgs(TRUE)[2])",
            "ckptGone",
            str(session.lib),
        )

    before = watched(session, notify, user)
    assert before == {
        "ckpt.base": "1.0.0",
        "ckptImports": "1.2.0",
        "ckptC": "0.3.1",
        "ckptOld": "0.9-1",
    }

    d = r_lib_delta(session.store)
    assert {p.name: (p.version, p.requested) for p in d.added} == {
        "ckptImports": ("1.2.0", True),
        "ckptC": ("0.3.1", True),
    }
    assert [(p.name, p.version) for p in d.changed] == [("ckptOld", "0.9-1")]
    assert [(p.name, p.version) for p in d.removed] == [("ckptGone", "1.0")]

    # The next pod: same image, so the library is the image's again.
    shutil.rmtree(session.lib)
    shutil.copytree(image, session.lib)
    session.new_container()
    restored = session.restore()
    assert restored.returncode == 0, restored.stdout + restored.stderr
    assert rpkgs.installed(session.lib) == before
    out = rpkgs.rscript(
        ".libPaths(commandArgs(TRUE)[1]);"
        "cat(ckptImports::imports_value(), ckptC::c_add(2L, 3L), ckptOld::old_version())",
        str(session.lib),
    )
    assert out.split() == ["42", "5", "0.9-1"]
    assert not session.marker.exists(), f"R ran the user's .Rprofile: {session.marker.read_text()}"

    untouched = descriptions(session.lib)
    again = session.restore()
    assert again.returncode == 0, again.stderr
    assert "Nothing to restore" in again.stdout
    assert descriptions(session.lib) == untouched


@needs_r
def test_a_personal_library_created_under_the_daemon_comes_back_after_a_wipe(
    tmp_path: Path, repo: rpkgs.Repo, notify: socket.socket
) -> None:
    """R_LIBS_USER (`~/Rlib/%v/%p`, as R expands it), absent at start, made and filled
    under the daemon: wiped, restored whole."""
    session = Session(tmp_path, repo, r_libs_user=True, user_lib="~/Rlib/%v/%p")
    version, platform = r_info()
    session.lib = session.home / "Rlib" / ".".join(version.split(".")[:2]) / platform
    assert session.restore().returncode == 0

    def user() -> None:
        rpkgs.rscript("dir.create(Sys.getenv('R_LIBS_USER'), recursive = TRUE)", env=session.env)
        rpkgs.install(session.lib, repo, ["ckptAfirst"])

    before = watched(session, notify, user)
    assert before == {"ckptAfirst": "2.0.1", "ckptImports": "1.2.0", "ckpt.base": "1.0.0"}
    d = r_lib_delta(session.store, session.lib)
    assert {p.name: p.requested for p in d.added} == {
        "ckptAfirst": True,
        "ckptImports": False,
        "ckpt.base": False,
    }
    shutil.rmtree(session.lib)
    session.new_container()
    restored = session.restore()
    assert restored.returncode == 0, restored.stdout + restored.stderr
    assert rpkgs.installed(session.lib) == before
    out = rpkgs.rscript(
        ".libPaths(commandArgs(TRUE)[1]); cat(ckptAfirst::afirst_value())", str(session.lib)
    )
    assert out == "84"


@needs_r
def test_a_user_library_a_new_renviron_names_records_what_was_installed_before_it_was_found(
    tmp_path: Path, repo: rpkgs.Repo, notify: socket.socket
) -> None:
    """The user sets R_LIBS_USER in ~/.Renviron while the daemon runs and installs into
    it; the daemon finds that library at its next discovery (here `snapshot`'s), with no
    baseline for it. What was installed there since the daemon started is the user's and
    is recorded. It took everything found then as the image's, and nothing came back."""
    session = Session(tmp_path, repo, r_libs_user=True, user_lib=str(tmp_path / "unused"))
    session.env.pop("R_LIBS_USER")  # R's default, which does not exist here
    assert session.restore().returncode == 0
    lib = session.home / "Rnew"

    def user() -> None:
        (session.home / ".Renviron").write_text(f"R_LIBS_USER={lib}\n")
        rpkgs.install(lib, repo, ["ckptAfirst"])
        snap = session.pkgckpt("snapshot")
        assert snap.returncode == 0, snap.stdout + snap.stderr

    watched(session, notify, user)
    d = r_lib_delta(session.store, lib)
    assert {p.name: p.requested for p in d.added} == {
        "ckptAfirst": True,
        "ckptImports": False,
        "ckpt.base": False,
    }


@needs_r
def test_what_rstudio_sessions_install_into_r_libs_user_of_rsession_conf_comes_back(
    tmp_path: Path, repo: rpkgs.Repo, notify: socket.socket
) -> None:
    """rsession.conf's `r-libs-user=<tmp>/R/library/%v`, which the daemon's R never sees
    (its R_LIBS_USER is another library): what a session installs there, absent at start,
    is recorded as the RStudio library, listed by baseline and status, and a new container
    gets it back in the same place."""
    session = Session(tmp_path, repo, r_libs_user=True, user_lib=str(tmp_path / "own"))
    session.rstudio = tmp_path / "rstudio"
    session.rstudio.mkdir()
    value = f"{tmp_path}/R/library/%v"
    (session.rstudio / "rsession.conf").write_text(f"r-libs-user={value}\n")
    session.new_container()
    session.lib = tmp_path / "R" / "library" / ".".join(r_info()[0].split(".")[:2])
    assert session.restore().returncode == 0

    def user() -> None:
        # As RStudio starts its sessions: R_LIBS_USER is the value, R expands it.
        env = {**session.env, "R_LIBS_USER": value}
        rpkgs.rscript("dir.create(Sys.getenv('R_LIBS_USER'), recursive = TRUE)", env=env)
        rpkgs.rscript(
            "options(warn = 2); install.packages('ckptAfirst', repos = commandArgs(TRUE)[1])",
            repo.url,
            env=env,
        )

    before = watched(session, notify, user)
    assert before == {"ckptAfirst": "2.0.1", "ckptImports": "1.2.0", "ckpt.base": "1.0.0"}
    d = r_lib_delta(session.store, session.lib)
    assert d.env.role == "rstudio"
    assert {p.name for p in d.added} == set(before)
    status = session.pkgckpt("status")
    assert status.returncode == 0, status.stderr
    assert f"r {session.lib}:" in status.stdout

    out = tmp_path / "baseline.json"
    done = restore_kit.pkgckpt("baseline", "-o", str(out), env=session.env)
    assert done.returncode == 0, done.stderr
    roles = {
        e["env"]["path"]: e["env"]["role"]
        for e in json.loads(out.read_text())["environments"]
        if e["env"]["kind"] == "r"
    }
    assert roles[str(session.lib)] == "rstudio"

    shutil.rmtree(tmp_path / "R")
    session.new_container()
    restored = session.restore()
    assert restored.returncode == 0, restored.stdout + restored.stderr
    assert rpkgs.installed(session.lib) == before


@needs_r
def test_the_profile_marker_would_catch_a_non_vanilla_r(session: Session) -> None:
    """The test's .Rprofile runs in plain Rscript: its absence after restore proves that
    pkgckpt starts R without the user's profile."""
    subprocess.run(["Rscript", "-e", "1"], env=session.env, check=True, capture_output=True)
    assert session.marker.exists()


# -- restore alone, from manifests written here ----------------------------------------------


def put(session: Session, *packages: Package, removed: tuple[Package, ...] = ()) -> None:
    env: Environment = r_environment(session.lib)
    delta = Delta(env=env, added=packages, removed=removed)
    restore_kit.put_manifest(session.store, "k", Body(environments=(delta,)))


@needs_r
def test_failures_are_reported_per_package_and_the_rest_installed(session: Session) -> None:
    """Failed build or load, a missing version, its dependent: reported (exit 3); rest install."""
    shutil.rmtree(session.lib)
    session.lib.mkdir()
    put(
        session,
        Package(name="ckptC", version="0.3.1"),
        Package(name="ckptBroken", version="1.0"),
        Package(name="ckptNoLoad", version="1.0"),
        Package(name="ckpt.base", version="0.5"),
        Package(name="ckptImports", version="1.2.0", depends=("ckpt.base",)),
        Package(name="ckptOld", version="0.9-1"),
    )
    done = session.restore("--json")
    assert done.returncode == 3, done.stderr
    report = json.loads(done.stdout)
    failures = {f["name"]: f["message"] for e in report["environments"] for f in e["failed"]}
    assert failures.keys() == {"ckptBroken", "ckptNoLoad", "ckpt.base", "ckptImports"}
    assert "ckptBroken" in failures["ckptBroken"] and "ERROR" in failures["ckptBroken"]
    assert "does not load" in failures["ckptNoLoad"] and "libckpt.so.1" in failures["ckptNoLoad"]
    assert "nor in their archives" in failures["ckpt.base"]
    assert "ckpt.base" in failures["ckptImports"]
    assert rpkgs.installed(session.lib) == {"ckptC": "0.3.1", "ckptOld": "0.9-1"}


@needs_r
def test_a_failure_behind_a_leftover_lock_says_to_remove_the_lock(session: Session) -> None:
    """An interrupted install's `00LOCK-<pkg>` makes R refuse every install of that
    package: the failure says which directory to remove (what fixes it), not only that
    `pkgckpt forget` stops the retries (which gives the package up)."""
    shutil.rmtree(session.lib)
    session.lib.mkdir()
    put(session, Package(name="ckptC", version="0.3.1"), Package(name="ckptOld", version="0.9-1"))
    lock = session.lib / "00LOCK-ckptOld"
    lock.mkdir()
    hours_ago = time.time() - 7200
    os.utime(lock, (hours_ago, hours_ago))
    done = session.restore()
    assert done.returncode == 3, done.stderr
    said = f"{lock} is left over from an interrupted install: remove it (rm -rf -- {lock})"
    assert said in done.stdout, done.stdout
    assert rpkgs.installed(session.lib) == {"ckptC": "0.3.1"}
    # A lock written under lately may be an install still running: said as such.
    os.utime(lock)
    fresh = session.restore()
    assert fresh.returncode == 3, fresh.stderr
    assert f"{lock} is written under lately: an install may still run" in fresh.stdout
    shutil.rmtree(lock)
    assert session.restore().returncode == 0
    assert rpkgs.installed(session.lib) == {"ckptC": "0.3.1", "ckptOld": "0.9-1"}
    # A failure of another cause is not blamed on a lock that happens to be there.
    whole = session.lib / "00LOCK"
    whole.mkdir()
    os.utime(whole, (hours_ago, hours_ago))
    put(session, Package(name="ckpt.base", version="0.5"))
    other = session.restore()
    assert other.returncode == 3, other.stderr
    assert "nor in their archives" in other.stdout and "00LOCK" not in other.stdout


@needs_r
def test_repositories_never_come_from_the_manifest(session: Session) -> None:
    """A repository named in the manifest is not used: with no --r-repo and R's `@CRAN@`,
    restore is a usage error (exit 2) that says how to set one, and installs nothing."""
    put(
        session,
        Package(name="ckptC", version="0.3.1", source=IndexSource(repository=session.repo.url)),
    )
    for args in ((), ("--dry-run",)):
        done = session.pkgckpt("restore", *args)
        assert done.returncode == 2, done.stdout + done.stderr
        assert "no R repository to restore from" in done.stderr
        assert "--r-repo URL" in done.stderr and "Rprofile.site" in done.stderr
    assert "ckptC" not in rpkgs.installed(session.lib)


@needs_r
def test_the_image_rprofile_site_repository_is_used_without_r_repo(session: Session) -> None:
    """No --r-repo: the repository the image's Rprofile.site sets is where restore installs
    from (R runs with the site files, not --vanilla)."""
    session.site_repos = session.repo.url
    session.new_container()
    put(session, Package(name="ckptImports", version="1.2.0", depends=("ckpt.base",)))
    done = session.pkgckpt("restore")
    assert done.returncode == 0, done.stdout + done.stderr
    assert rpkgs.installed(session.lib)["ckptImports"] == "1.2.0"
    assert not session.marker.exists()


@needs_r
def test_an_unreadable_repository_is_one_message_and_exit_1(session: Session) -> None:
    """A repository with no PACKAGES index: said once, with R's cause; nothing installable
    for that global cause is exit 1, not 3."""
    put(
        session,
        Package(name="ckptC", version="0.3.1"),
        Package(name="ckptImports", version="1.2.0"),
    )
    missing = session.tmp / "no-such-repo"
    done = session.pkgckpt("restore", "--r-repo", missing.as_uri())
    assert done.returncode == 1, done.stdout + done.stderr
    output = done.stdout + done.stderr
    assert output.count("cannot be read") == 1, output
    assert "PACKAGES" in output
    assert "nor in their archives" not in output


@needs_r
def test_no_r_on_path_is_one_message_and_exit_1(session: Session) -> None:
    """R missing: no `cannot run : Permission denied`, one message, exit 1; a recorded
    removal says the same."""
    put(
        session,
        Package(name="ckptC", version="0.3.1"),
        removed=(Package(name="ckptGone", version="1.0"),),
    )
    bare = session.tmp / "bin"  # no R, no Rscript
    bare.mkdir()
    env = {**session.env, "PATH": str(bare)}
    done = restore_kit.pkgckpt("restore", *session.args("--r-repo", session.repo.url), env=env)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "cannot run" not in done.stdout + done.stderr
    assert "R is not installed here" in done.stderr


@needs_r
def test_keep_removed_says_what_it_kept(session: Session) -> None:
    """--keep-removed with only a removal to skip: not a bare "Nothing to restore"."""
    put(session, removed=(Package(name="ckptGone", version="1.0"),))
    kept = session.restore("--keep-removed")
    assert kept.returncode == 0, kept.stderr
    assert "Kept (--keep-removed): ckptGone 1.0" in kept.stdout
    assert "ckptGone" in rpkgs.installed(session.lib)


@needs_r
def test_a_persistent_home_with_a_wiped_site_library_restores_in_dependency_order(
    tmp_path: Path, repo: rpkgs.Repo, notify: socket.socket
) -> None:
    """No R flags: root installs ckpt.base into the site library, the user ckptImports (which
    imports it) into a user library created under the daemon, and the home's ~/.Rprofile
    loads it. The next pod keeps the home but has both libraries empty: one restore puts
    both back, the site one first, without running the profile."""
    session = Session(tmp_path, repo, r_libs_user=True)
    assert session.restore().returncode == 0

    def user() -> None:
        rpkgs.install(session.site, repo, ["ckpt.base"])
        rpkgs.rscript("dir.create(Sys.getenv('R_LIBS_USER'))", env=session.env)
        rpkgs.rscript(
            "options(warn = 2); a <- commandArgs(TRUE); .libPaths(a[3]);"
            "install.packages(a[1], lib = a[2], repos = a[4], dependencies = FALSE)",
            "ckptImports",
            str(session.lib),
            str(session.site),
            repo.url,
        )

    watched(session, notify, user)
    recorded = Store(session.store, "k").read()
    assert recorded is not None
    by_lib = {d.env.path: {p.name for p in d.added} for d in recorded.body.environments}
    assert by_lib[str(session.site)] == {"ckpt.base"}
    assert by_lib[str(session.lib)] == {"ckptImports"}

    (session.home / ".Rprofile").write_text(
        f'cat("ran", file = "{session.marker}"); library(ckptImports)\n'
    )
    shutil.rmtree(session.site)
    session.site.mkdir()
    shutil.rmtree(session.lib)
    session.new_container()
    done = session.restore()
    assert done.returncode == 0, done.stdout + done.stderr
    assert rpkgs.installed(session.site) == {"ckpt.base": "1.0.0"}
    assert rpkgs.installed(session.lib) == {"ckptImports": "1.2.0"}
    assert not session.marker.exists()


@needs_r
def test_recorded_removal_removes_only_that_package(session: Session) -> None:
    """An image package the user removed is removed again; --keep-removed leaves it."""
    gone = Package(name="ckptGone", version="1.0")
    put(session, removed=(gone,))
    kept = session.restore("--keep-removed")
    assert kept.returncode == 0, kept.stderr
    assert "ckptGone" in rpkgs.installed(session.lib)
    done = session.restore()
    assert done.returncode == 0, done.stderr
    assert rpkgs.installed(session.lib) == {"ckpt.base": "1.0.0", "ckptOld": "1.0"}


@needs_r
def test_hostile_r_names_refuse_the_manifest(session: Session) -> None:
    """An R name shaped like R code or an option refuses the manifest; nothing is installed."""
    for name in ('x");system("touch pwned', "-l", "a b", "ckpt_C"):
        put(session, Package(name="ckptC", version="0.3.1"), Package(name=name, version="1.0"))
        done = session.restore()
        assert done.returncode == 1, (name, done.stdout, done.stderr)
        assert "refusing the manifest" in done.stderr
    assert "ckptC" not in rpkgs.installed(session.lib)
    assert not list(session.tmp.rglob("pwned"))


@needs_r
def test_invalid_r_versions_refuse_the_manifest(session: Session) -> None:
    """R versions are digits joined by '.' or '-', at least two parts: anything else refused."""
    for version in ("1", "1.0a", "1..0", "1.0; q()", "-1.0"):
        put(session, Package(name="ckptC", version=version))
        done = session.restore()
        assert done.returncode == 1, (version, done.stdout, done.stderr)
    assert "ckptC" not in rpkgs.installed(session.lib)


@needs_r
def test_dry_run_lists_r_packages_and_installs_nothing(session: Session) -> None:
    """--dry-run shows the R plan (Rscript) and leaves the library as it was."""
    put(session, Package(name="ckptC", version="0.3.1"))
    before = descriptions(session.lib)
    done = session.restore("--dry-run")
    assert done.returncode == 0, done.stderr
    assert "install ckptC 0.3.1" in done.stdout and "Rscript" in done.stdout
    assert descriptions(session.lib) == before


# -- the installer itself ------------------------------------------------------------------


def installer(session: Session, jobs: int) -> RInstaller:
    env = r_environment(session.lib)
    return RInstaller(env, Config(r_repo=(session.repo.url,)), jobs=jobs)


@needs_r
@pytest.mark.parametrize("jobs", [1, 2])
def test_dependencies_install_before_their_dependents(session: Session, jobs: int) -> None:
    """Dependency order from the tarballs (name order would fail), one at a time or in parallel."""
    shutil.rmtree(session.lib)
    wanted = [
        Package(name="ckptAfirst", version="2.0.1"),
        Package(name="ckptImports", version="1.2.0"),
        Package(name="ckpt.base", version="1.0.0"),
        Package(name="ckptC", version="0.3.1"),
    ]
    results = installer(session, jobs).install_each(wanted, deadline=Deadline(600))
    assert {n: o.ok for n, o in results.items()} == dict.fromkeys(
        ("ckptAfirst", "ckptImports", "ckpt.base", "ckptC"), True
    ), {n: o.tail() for n, o in results.items()}
    out = rpkgs.rscript(
        ".libPaths(commandArgs(TRUE)[1]); cat(ckptAfirst::afirst_value())", str(session.lib)
    )
    assert out == "84"


@needs_r
def test_a_failed_dependency_stops_its_dependents_without_running_them(session: Session) -> None:
    """What imports a package that failed is reported as blocked by it, and not built."""
    shutil.rmtree(session.lib)
    inst = installer(session, 1)
    results = inst.install_each(
        [
            Package(name="ckpt.base", version="9.9"),
            Package(name="ckptImports", version="1.2.0"),
            Package(name="ckptAfirst", version="2.0.1"),
        ],
        deadline=Deadline(600),
    )
    assert "nor in their archives" in results["ckpt.base"].output
    assert "ckpt.base" in results["ckptImports"].output  # R's own "not available" error
    assert results["ckptAfirst"].output == "not installed: its dependency ckptImports failed"
    assert not session.lib.exists() or rpkgs.installed(session.lib) == {}


@needs_r
def test_a_tarball_must_hold_the_package_and_version_asked_for(session: Session) -> None:
    """A repository serving another package or version under the asked-for name is refused."""
    renamed = session.tmp / "ckptImports_1.2.0.tar.gz"
    shutil.copy(session.repo.tarball("ckpt.base", "1.0.0"), renamed)
    with pytest.raises(DescriptionError, match="not a source package"):
        read_tarball(renamed, "ckptImports", "1.2.0")
    with pytest.raises(DescriptionError, match=r"holds ckptOld 1\.0"):
        read_tarball(session.repo.tarball("ckptOld", "1.0"), "ckptOld", "0.9-1")
    assert read_tarball(session.repo.tarball("ckptAfirst", "2.0.1"), "ckptAfirst", "2.0.1") == {
        "ckptImports"
    }


@needs_r
def test_the_installer_refuses_invalid_names_itself(session: Session) -> None:
    """Even past manifest validation, an invalid name never reaches R."""
    with pytest.raises(RestoreError):
        installer(session, 1).install_each(
            [Package(name="ckptC", version="0.3.1; q()")], deadline=Deadline(60)
        )
    with pytest.raises(RestoreError):
        installer(session, 1).remove([Package(name="-l", version="1.0")], deadline=Deadline(60))


# -- sources other than a repository (remotes / pak) -----------------------------------------


def git(*args: str, cwd: Path) -> str:
    done = subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.org", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


def remote_sources(session: Session) -> dict[str, Package]:
    """ckptC from a git commit (in a subdirectory), ckptOld 0.9-1 from a tarball URL, ckpt.base
    from a local directory: what remotes' install_git/_url/_local record."""
    checkout = session.tmp / "git-repo"
    rpkgs.stage("ckptC", "0.3.2", session.tmp / "staged")
    shutil.copytree(session.tmp / "staged" / "ckptC-0.3.2" / "ckptC", checkout / "pkg")
    git("init", "--quiet", cwd=checkout)
    git("add", ".", cwd=checkout)
    git("commit", "--quiet", "-m", "0.3.2", cwd=checkout)
    commit = git("rev-parse", "HEAD", cwd=checkout)
    # A later commit: restore must check out the recorded one, not the branch head.
    (checkout / "pkg" / "DESCRIPTION").write_text(
        (checkout / "pkg" / "DESCRIPTION").read_text().replace("0.3.2", "0.4.0")
    )
    git("commit", "--quiet", "-am", "0.4.0", cwd=checkout)
    tarball = session.repo.tarball("ckptOld", "0.9-1")
    local = rpkgs.stage("ckpt.base", "1.0.0", session.tmp / "local")
    return {
        "ckptC": Package(
            name="ckptC",
            version="0.3.2",
            source=VcsSource(vcs="git", url=checkout.as_uri(), commit=commit, subdirectory="pkg"),
        ),
        "ckptOld": Package(
            name="ckptOld",
            version="0.9-1",
            # What the checkpoint records of remotes::install_url() from a local file: the
            # sha256 it takes itself, without which restore would refuse the file.
            source=UrlSource(
                url=tarball.as_uri(),
                hashes={"sha256": hashlib.sha256(tarball.read_bytes()).hexdigest()},
            ),
        ),
        "ckpt.base": Package(
            name="ckpt.base", version="1.0.0", source=DirectorySource(path=str(local))
        ),
    }


@needs_r
def test_git_url_and_local_sources_are_reinstalled_from_there(session: Session) -> None:
    """Remote sources install at the recorded commit/hash, rescan as recorded; rerun no-op."""
    shutil.rmtree(session.lib)
    session.lib.mkdir()
    wanted = remote_sources(session)
    put(session, *wanted.values())
    done = session.pkgckpt("restore")  # no --r-repo: none of these needs a repository
    assert done.returncode == 0, done.stdout + done.stderr
    found = RLibraryScanner(session.lib).scan().packages
    assert {n: (p.version, p.source) for n, p in found.items()} == {
        n: (p.version, p.source) for n, p in wanted.items()
    }
    out = rpkgs.rscript(
        ".libPaths(commandArgs(TRUE)[1]); cat(ckptC::c_add(1L, 1L), ckptOld::old_version())",
        str(session.lib),
    )
    assert out.split() == ["2", "0.9-1"]
    again = session.pkgckpt("restore")
    assert again.returncode == 0 and "Nothing to restore" in again.stdout, again.stdout


@needs_r
def test_a_remote_source_that_is_not_what_was_recorded_is_refused(session: Session) -> None:
    """A wrong hash, a version the commit does not hold, a missing directory: reported (exit 3)."""
    wanted = remote_sources(session)
    tarball = session.repo.tarball("ckptOld", "0.9-1")
    digest = hashlib.sha256(tarball.read_bytes()).hexdigest()
    good_hash = UrlSource(url=tarball.as_uri(), hashes={"sha256": digest})
    bad_hash = UrlSource(url=tarball.as_uri(), hashes={"sha256": "0" * 64})
    put(
        session,
        Package(name="ckptOld", version="0.9-1", source=bad_hash),
        Package(name="ckpt.base", version="1.0.0", source=good_hash),
        Package(name="ckptC", version="0.4.1", source=wanted["ckptC"].source),
        Package(name="ckptGone", version="1.0", source=DirectorySource(path="/nonexistent/x")),
    )
    done = session.pkgckpt("restore", "--json")
    assert done.returncode == 3, done.stderr
    report = json.loads(done.stdout)
    failures = {f["name"]: f["message"] for e in report["environments"] for f in e["failed"]}
    assert failures["ckptOld"] == (
        f"{tarball} has changed since checkpoint: its sha256 is not the one recorded"
    )
    assert "holds ckptOld 0.9-1" in failures["ckpt.base"]  # hash right, package wrong
    assert "holds ckptC 0.3.2" in failures["ckptC"]
    assert "does not exist" in failures["ckptGone"]
    assert rpkgs.installed(session.lib)["ckptOld"] == "1.0"


# -- packages installed from a local file -----------------------------------------------


@needs_r
def test_a_local_tarball_install_is_recorded_as_local_and_not_faked_from_a_repo(
    session: Session, image: Path, notify: socket.socket
) -> None:
    """install.packages(file, repos = NULL) is recorded as a local source (not as an index
    install); without the file, the dry run and the restore say it is not here."""
    assert session.restore().returncode == 0
    tarball = rpkgs.local_tarball("ckptImports", "1.2.0", session.tmp / "build")

    watched(session, notify, lambda: rpkgs.install(session.lib, session.repo, (), [tarball]))
    d = r_lib_delta(session.store)
    (added,) = d.added
    assert added.name == "ckptImports"
    assert isinstance(added.source, LocalSource)
    assert added.source.installed is not None and added.source.path is None

    shutil.rmtree(session.lib)
    shutil.copytree(image, session.lib)
    session.new_container()
    dry = session.restore("--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "installed from a local file that is not here" in dry.stdout
    # status says what restore would do: not an install it cannot make.
    said = session.pkgckpt("status").stdout
    assert "cannot   ckptImports 1.2.0: installed from a local file that is not here" in said
    assert "install ckptImports" not in said, said
    done = session.restore()
    assert done.returncode == 3, done.stdout + done.stderr
    assert "installed from a local file that is not here" in done.stdout
    assert "nor in their archives" not in done.stdout
    assert "ckptImports" not in rpkgs.installed(session.lib)


@needs_r
def test_a_recorded_local_file_is_used_only_when_it_is_the_same_and_ours(
    session: Session,
) -> None:
    """A local source with a path (remotes' install_local) is reinstalled from that file when
    its sha256 matches and no one else can write it; a swapped or foreign file is refused,
    and the dry run already says so."""
    tarball = rpkgs.local_tarball("ckptImports", "1.2.0", session.tmp / "build")
    digest = hashlib.sha256(tarball.read_bytes()).hexdigest()
    local = LocalSource(path=str(tarball), hashes={"sha256": digest})
    put(session, Package(name="ckptImports", version="1.2.0", source=local))

    def refused(why: str) -> None:
        dry = session.restore("--dry-run")
        assert why in dry.stdout, dry.stdout
        done = session.restore()
        assert done.returncode == 3 and why in done.stdout, done.stdout

    tarball.chmod(0o666)
    refused("writable by others")
    tarball.chmod(0o644)
    os.chown(tarball, 65534, 65534)
    refused("not by you or root")
    os.chown(tarball, os.getuid(), os.getgid())
    good = tarball.read_bytes()
    tarball.write_bytes(good + b"\0")
    refused("changed since checkpoint")
    assert "ckptImports" not in rpkgs.installed(session.lib)

    tarball.write_bytes(good)
    done = session.restore()
    assert done.returncode == 0, done.stdout + done.stderr
    assert rpkgs.installed(session.lib)["ckptImports"] == "1.2.0"
    again = session.restore()
    assert "Nothing to restore" in again.stdout, again.stdout


@needs_r
def test_a_git_install_from_a_local_path_is_reinstalled_from_it(
    session: Session, image: Path
) -> None:
    """remotes::install_git("/path/to/repo") records the path itself as RemoteUrl: it is
    recorded as the file: URL git reads it as, and a new container reinstalls it at that
    commit (a plain path refused the whole manifest: nothing restored, nothing else either)."""
    assert session.restore().returncode == 0
    checkout = session.tmp / "src" / "ckptImports"
    rpkgs.stage("ckptImports", "1.2.0", session.tmp / "staged")
    shutil.copytree(session.tmp / "staged" / "ckptImports-1.2.0" / "ckptImports", checkout)
    git("init", "--quiet", cwd=checkout)
    git("add", ".", cwd=checkout)
    git("commit", "--quiet", "-m", "1.2.0", cwd=checkout)
    commit = git("rev-parse", "HEAD", cwd=checkout)
    # What remotes' install_git() installs: the clone with the fields it adds.
    clone = session.tmp / "clone" / "ckptImports"
    shutil.copytree(checkout, clone, ignore=shutil.ignore_patterns(".git"))
    with (clone / "DESCRIPTION").open("a") as f:
        f.write(f"RemoteType: xgit\nRemoteUrl: {checkout}\nRemoteSha: {commit}\n")
    rpkgs.install(session.lib, session.repo, (), [clone])
    rpkgs.install(session.lib, session.repo, ("ckptC",))
    snap = session.pkgckpt("snapshot")
    assert snap.returncode == 0, snap.stdout + snap.stderr
    wanted = VcsSource(vcs="git", url=checkout.as_uri(), commit=commit)
    recorded = {p.name: p.source for p in r_lib_delta(session.store).added}
    assert recorded["ckptImports"] == wanted

    shutil.rmtree(session.lib)
    shutil.copytree(image, session.lib)
    session.new_container()
    done = session.restore()
    assert done.returncode == 0, done.stdout + done.stderr
    assert rpkgs.installed(session.lib)["ckptImports"] == "1.2.0"
    assert rpkgs.installed(session.lib)["ckptC"] == "0.3.1"
    assert RLibraryScanner(session.lib).scan().packages["ckptImports"].source == wanted
