"""R on a new image, with real R: packages built for another R `major.minor` are rebuilt,
and the user library that an R upgrade moved is matched by its role, not its path."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import msgspec
import pytest
import restore_kit
import rpkgs

from pkgckpt import inventory, manifest
from pkgckpt.checkpoint import Observation, Tracker
from pkgckpt.config import Config
from pkgckpt.discovery import Discovered
from pkgckpt.manifest import Artifact, Baseline, Body, Delta, Environment, Inventory, Package
from pkgckpt.rmatch import carried, minor, pair, predecessors, stale_build
from pkgckpt.scan.r import RLibraryScanner, r_environment, r_info
from pkgckpt.store import Store

needs_r = rpkgs.needs_r

IMAGE = ("ckpt.base", "ckptOld", "ckptGone")
USER = ("ckptAfirst", "ckptImports", "ckptC")
"""What the user installs: ckptAfirst imports ckptImports, which imports ckpt.base."""

FAKE_BUILT = r"""
a <- commandArgs(TRUE)
for (p in a[-(1:2)]) {
    dir <- file.path(a[[1L]], p)
    # library() reads Meta/package.rds, pkgckpt and installed.packages() the DESCRIPTION.
    rds <- file.path(dir, "Meta", "package.rds")
    meta <- readRDS(rds)
    meta$Built$R <- R_system_version(a[[2L]])
    built <- sub("^R [^;]*", paste("R", a[[2L]]), meta$DESCRIPTION[["Built"]])
    meta$DESCRIPTION[["Built"]] <- built
    saveRDS(meta, rds)
    desc <- read.dcf(file.path(dir, "DESCRIPTION"))
    desc[, "Built"] <- built
    write.dcf(desc, file.path(dir, "DESCRIPTION"))
}
"""


def built_under(lib: Path, version: str, *names: str) -> None:
    """Make installed packages look built by R `version`, as R itself would read them."""
    rpkgs.rscript(FAKE_BUILT, str(lib), version, *names)


def x_y(version: str) -> str:
    """R's major.minor of a version the test knows to have one."""
    found = minor(version)
    assert found is not None, version
    return found


def older_r() -> str:
    """A version of R one minor release before the running one (4.2.2 -> 4.1.3)."""
    major, minor_, *_ = (int(p) for p in r_info()[0].split("."))
    return f"{major}.{minor_ - 1}.3" if minor_ else f"{major - 1}.9.0"


def built(lib: Path, name: str) -> str:
    """The R version in an installed package's `Built:` field."""
    text = (lib / name / "DESCRIPTION").read_text()
    line = next(ln for ln in text.splitlines() if ln.startswith("Built:"))
    return line.split(";")[0].removeprefix("Built: R ").strip()


def identities(lib: Path) -> dict[str, tuple[int, int]]:
    """(inode, mtime) of every DESCRIPTION: any reinstall changes them."""
    return {
        p.parent.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in lib.glob("*/DESCRIPTION")
    }


def loads(lib: Path, names: tuple[str, ...]) -> dict[str, str]:
    """Each package loaded by a fresh R from `lib`: "" when it loads, else R's error."""
    out = rpkgs.rscript(
        "a <- commandArgs(TRUE); .libPaths(a[[1L]]);"
        "for (n in a[-1L]) cat(n, tryCatch({ loadNamespace(n); 'ok' },"
        " error = function(e) gsub('\\n', ' ', conditionMessage(e))), sep = '\\t', fill = TRUE)",
        str(lib),
        *names,
    )
    return dict(line.split("\t", 1) for line in out.splitlines() if line)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> rpkgs.Repo:
    return rpkgs.shared_repo(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def user_lib(repo: rpkgs.Repo, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The image's packages and the user's, installed once; each test copies them."""
    lib = tmp_path_factory.mktemp("image") / "lib"
    rpkgs.install(lib, repo, (*IMAGE, *USER))
    return lib


def recorded(lib: Path, names: tuple[str, ...]) -> tuple[Package, ...]:
    """The manifest entries of `names` as pkgckpt's scanner reads them from `lib`."""
    found = RLibraryScanner(lib).scan().packages
    return tuple(found[n] for n in sorted(names))


def environ(tmp: Path, discover_r: bool = False) -> dict[str, str]:
    """A container's environment: its own runtime directory, HOME and R site files."""
    env = restore_kit.hermetic(tmp / "container")
    home, site = tmp / "home", tmp / "site"
    home.mkdir(exist_ok=True)
    site.mkdir(exist_ok=True)
    (tmp / "Renviron.site").write_text(f"R_LIBS_SITE={site}\n")
    (tmp / "Rprofile.site").write_text("")
    env.update(
        HOME=str(home),
        R_ENVIRON=str(tmp / "Renviron.site"),
        R_PROFILE=str(tmp / "Rprofile.site"),
        PKGCKPT_DEBUG="1",
    )
    if discover_r:
        del env["PKGCKPT_DISCOVER"]  # pkgckpt's default: the libraries R uses
    return env


def run(
    command: str, tmp: Path, env: dict[str, str], *extra: str
) -> subprocess.CompletedProcess[str]:
    return restore_kit.pkgckpt(
        command, "--store", str(tmp / "store"), "--key", "k", *extra, env=env
    )


@needs_r
def test_packages_built_for_another_r_are_rebuilt_and_say_why(
    tmp_path: Path, repo: rpkgs.Repo, user_lib: Path
) -> None:
    """Same library, same versions, but built under the previous R minor: restore reinstalls
    the recorded ones (dry run, --json and status say why), leaves a patch-release build and
    the image's packages alone, R loads every restored package, and a rerun does nothing."""
    lib = tmp_path / "lib"
    shutil.copytree(user_lib, lib)
    version = r_info()[0]
    patch = f"{x_y(version)}.0" if not version.endswith(".0") else f"{x_y(version)}.99"
    env = r_environment(lib, role="named")
    restore_kit.put_manifest(
        tmp_path / "store", "k", Body(environments=(Delta(env=env, added=recorded(lib, USER)),))
    )
    old = older_r()
    built_under(lib, old, "ckptC", "ckptImports", "ckpt.base")
    built_under(lib, patch, "ckptAfirst")
    before = identities(lib)
    environment = environ(tmp_path)
    args = ("--r-lib", str(lib), "--r-repo", repo.url)
    why = f"built under R {x_y(old)}, this is R {x_y(version)}"

    dry = run("restore", tmp_path, environment, *args, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert f"install ckptC 0.3.1 (added; installed 0.3.1, {why})" in dry.stdout
    assert f"install ckptImports 1.2.0 (added; installed 1.2.0, {why})" in dry.stdout
    assert "ckptAfirst" not in dry.stdout and "ckpt.base" not in dry.stdout
    as_json = run("restore", tmp_path, environment, *args, "--dry-run", "--json")
    steps = json.loads(as_json.stdout)["plan"]["environments"][0]["install"]
    assert {s["name"]: s["rebuild"] for s in steps} == {"ckptC": why, "ckptImports": why}
    status = run("status", tmp_path, environment, "--r-lib", str(lib))
    assert "    rebuild  ckptC 0.3.1 (" in status.stdout
    assert f"ckptC 0.3.1 ({why})" in status.stdout
    assert f"ckptImports 1.2.0 ({why})" in status.stdout
    assert identities(lib) == before

    done = run("restore", tmp_path, environment, *args)
    assert done.returncode == 0, done.stdout + done.stderr
    assert {n: built(lib, n) for n in (*USER, "ckpt.base")} == {
        "ckptC": version,
        "ckptImports": version,
        "ckptAfirst": patch,
        "ckpt.base": old,
    }
    after = identities(lib)
    assert after["ckptAfirst"] == before["ckptAfirst"]
    assert after["ckpt.base"] == before["ckpt.base"]
    assert loads(lib, USER) == dict.fromkeys(USER, "ok")
    out = rpkgs.rscript(".libPaths(commandArgs(TRUE)); cat(ckptC::c_add(2L, 3L))", str(lib))
    assert out == "5"

    again = run("restore", tmp_path, environment, *args)
    assert again.returncode == 0, again.stderr
    assert "Nothing to restore" in again.stdout
    assert identities(lib) == after


@needs_r
@pytest.mark.parametrize("role", ["user", None], ids=["role recorded", "before roles"])
def test_an_r_upgrade_brings_the_user_library_back_in_the_new_versions_user_library(
    tmp_path: Path, repo: rpkgs.Repo, user_lib: Path, role: str | None
) -> None:
    """The manifest recorded the user library `~/R/<platform>-library/<older R>` (with its
    role, or before roles were recorded); R's user library is now the running version's,
    which does not exist yet. Restore creates it as R would, installs the user's packages
    there from the repository (the old library, still in the home, is left alone), R loads
    them all, and a rerun does nothing."""
    version, platform = r_info()
    old = older_r()
    home = tmp_path / "home"
    old_lib = home / "R" / f"{platform}-library" / x_y(old)
    new_lib = home / "R" / f"{platform}-library" / x_y(version)
    old_lib.parent.mkdir(parents=True)
    shutil.copytree(user_lib, old_lib)
    for name in ("ckptOld", "ckptGone"):
        shutil.rmtree(old_lib / name)
    wanted = (*USER, "ckpt.base")
    built_under(old_lib, old, *wanted)
    old_env = Environment(
        kind="r", path=str(old_lib), interpreter=old, platform=platform, role=role
    )
    delta = Delta(env=old_env, added=recorded(old_lib, wanted))
    restore_kit.put_manifest(tmp_path / "store", "k", Body(environments=(delta,)))
    untouched = identities(old_lib)
    environment = environ(tmp_path, discover_r=True)

    dry = run("restore", tmp_path, environment, "--r-repo", repo.url, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert f"{new_lib} (Rscript): install 4, remove 0" in dry.stdout
    moved = f"(recorded as the user library {old_lib} of R {x_y(old)})"
    assert moved in dry.stdout
    assert not new_lib.exists()

    done = run("restore", tmp_path, environment, "--r-repo", repo.url)
    assert done.returncode == 0, done.stdout + done.stderr
    assert rpkgs.installed(new_lib) == {
        "ckptAfirst": "2.0.1",
        "ckptImports": "1.2.0",
        "ckptC": "0.3.1",
        "ckpt.base": "1.0.0",
    }
    assert all(built(new_lib, n) == version for n in wanted)
    assert new_lib.stat().st_mode & 0o777 == 0o777 & ~_umask()
    assert loads(new_lib, wanted) == dict.fromkeys(wanted, "ok")
    assert identities(old_lib) == untouched

    status = run("status", tmp_path, environment)
    assert moved in status.stdout

    # A checkpoint on the new image records the new library and keeps the old record.
    snap = run("snapshot", tmp_path, environment)
    assert snap.returncode == 0, snap.stdout + snap.stderr
    stored = Store(tmp_path / "store", "k").read()
    assert stored is not None
    by_path = {d.env.path: d for d in stored.body.environments if d.env.kind == "r"}
    assert {p.name for p in by_path[str(old_lib)].added} == set(wanted)
    assert {p.name for p in by_path[str(new_lib)].added} == set(wanted)
    assert by_path[str(new_lib)].env.role == "user"
    again = run("restore", tmp_path, environment, "--r-repo", repo.url)
    assert again.returncode == 0, again.stderr
    assert "Nothing to restore" in again.stdout
    assert (
        f"Skipped r {old_lib}: 4 recorded package(s), another record speaks for the user "
        f"library here ({new_lib})"
    ) in again.stdout


@needs_r
def test_an_r_upgrade_moves_rstudio_s_user_library_and_r_s_own_each_to_its_own(
    tmp_path: Path, repo: rpkgs.Repo, user_lib: Path
) -> None:
    """rsession.conf's `r-libs-user=<tmp>/R/library/%v` beside R's default user library:
    each recorded under an older R is matched to the new R's library of its own role
    ("rstudio", "user"), where two of one role would have matched nothing."""
    version, platform = r_info()
    old = older_r()
    home = tmp_path / "home"
    conf_dir = tmp_path / "rstudio"
    conf_dir.mkdir()
    (conf_dir / "rsession.conf").write_text(f"r-libs-user={tmp_path}/R/library/%v\n")
    libs = {
        "user": home / "R" / f"{platform}-library",
        "rstudio": tmp_path / "R" / "library",
    }
    deltas = []
    for role, parent in libs.items():
        old_lib = parent / x_y(old)
        parent.mkdir(parents=True)
        shutil.copytree(user_lib, old_lib)
        built_under(old_lib, old, "ckpt.base")
        env = Environment(
            kind="r", path=str(old_lib), interpreter=old, platform=platform, role=role
        )
        deltas.append(Delta(env=env, added=recorded(old_lib, ("ckpt.base",))))
    restore_kit.put_manifest(tmp_path / "store", "k", Body(environments=tuple(deltas)))
    environment = {**environ(tmp_path, discover_r=True), "RSTUDIO_CONFIG_DIR": str(conf_dir)}

    dry = run("restore", tmp_path, environment, "--r-repo", repo.url, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    for role, parent in libs.items():
        assert f"{parent / x_y(version)} (Rscript): install 1, remove 0" in dry.stdout
        moved = f"(recorded as the {role} library {parent / x_y(old)} of R {x_y(old)})"
        assert moved in dry.stdout, dry.stdout


@needs_r
def test_each_r_library_is_recorded_with_its_role_r_version_and_platform(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What R says of its libraries gives each its role: R_LIBS_USER "user", R_LIBS_SITE
    "site", R_LIBS "libs", --r-lib "named" (which wins where a path is both)."""
    for key in [k for k in os.environ if k.startswith("R_") and k != "R_HOME"]:
        monkeypatch.delenv(key)
    environment = environ(tmp_path)
    mine, libs, named = tmp_path / "mine", tmp_path / "rlibs", tmp_path / "named"
    libs.mkdir()
    for key in ("HOME", "R_ENVIRON", "R_PROFILE"):
        monkeypatch.setenv(key, environment[key])
    monkeypatch.setenv("R_LIBS_USER", str(mine))
    monkeypatch.setenv("R_LIBS", str(libs))
    run_dir = tmp_path / "run"
    run_dir.mkdir(mode=0o700)
    config = Config(runtime_dir=run_dir, env=(), r_lib=(named, mine), r_discover=True)
    found = inventory.targets(config, found=Discovered())
    roles = {t.env.path: t.env.role for t in found if t.env.kind == "r"}
    assert roles == {
        str(named): "named",
        str(mine): "named",
        str(libs): "libs",
        str(tmp_path / "site"): "site",
    }
    config = Config(runtime_dir=run_dir, env=())
    envs = [t.env for t in inventory.targets(config, found=Discovered()) if t.env.kind == "r"]
    assert {e.path: e.role for e in envs}[str(mine)] == "user"
    version, platform = r_info()
    assert {(e.interpreter, e.platform) for e in envs} == {(version, platform)}


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# -- matching without R -----------------------------------------------------------------


def r_env(path: str, role: str | None, version: str = "4.3.2") -> Environment:
    return Environment(kind="r", path=path, interpreter=version, role=role)


def test_a_path_match_wins_and_is_never_taken_again_by_role() -> None:
    """The library the daemon recorded under its new path is that record's; the old user
    library's record does not claim it too."""
    old, new = r_env("/h/R/4.3", "user"), r_env("/h/R/4.4", "user", "4.4.0")
    assert pair([old, new], [new]) == {1: 0}
    assert pair([old], [new]) == {0: 0}


def test_the_newest_r_record_of_a_role_takes_the_one_library_left_of_it() -> None:
    """Two R upgrades in a row (records of 4.1 and 4.2, now 4.3): the 4.2 record, the
    user's latest, goes to the user library; between records of the same R, the one that
    changed last; a tie on both matches nothing."""
    r41, r42 = r_env("/h/R/4.1", "user", "4.1.3"), r_env("/h/R/4.2", "user", "4.2.2")
    here = [r_env("/h/R/4.3", "user", "4.3.0")]
    assert pair([r41, r42], here) == {1: 0}
    assert pair([r42, r41], here) == {0: 0}
    other = r_env("/other/4.2", "user", "4.2.2")
    assert pair([r42, other], here) == {}
    # The same R twice (R_LIBS_USER moved A -> B): the record that changed last wins.
    later = ["2026-12-01T10:00:00.000+00:00", "2026-12-02T09:00:00.000+00:00"]
    assert pair([r42, other], here, later) == {1: 0}
    assert pair([r42, other], here, later[::-1]) == {0: 0}
    assert pair([r42, other], here, [later[0], later[0]]) == {}


def test_roles_match_only_one_library_left_here() -> None:
    """Two site libraries moved at once are ambiguous; a library with no role (an older
    manifest) and a Python prefix never match by role."""
    sites = [r_env("/a/4.3", "site"), r_env("/b/4.3", "site")]
    here = [r_env("/a/4.4", "site"), r_env("/b/4.4", "site")]
    assert pair(sites, here) == {}
    assert pair(sites[:1], here) == {}
    assert pair([r_env("/x/4.3", None)], [r_env("/x/4.4", None)]) == {}
    assert pair([r_env("/x", "named")], [r_env("/y", "user")]) == {}
    python = Environment(kind="python", path="/venv/a", role="user")
    assert pair([python], [Environment(kind="python", path="/venv/b", role="user")]) == {}


def test_a_record_from_before_roles_is_the_user_library_where_r_would_have_put_it() -> None:
    """No role recorded: `~/R/x86_64-pc-linux-gnu-library/4.3` is the 4.4 user library
    `.../4.4` of the same home; another path, or the same R minor, is not."""
    here = [r_env("/h/R/x86_64-pc-linux-gnu-library/4.4", "user", "4.4.0")]
    assert pair([r_env("/h/R/x86_64-pc-linux-gnu-library/4.3", None)], here) == {0: 0}
    assert pair([r_env("/other/R/x86_64-pc-linux-gnu-library/4.3", None)], here) == {}
    assert pair([r_env("/h/R/x86_64-pc-linux-gnu-library/4.4x", None, "4.4.1")], here) == {}


def test_a_library_matched_by_path_carries_on_the_older_record_of_its_role() -> None:
    """The new user library's own record carries on the newest older record of its role:
    not when that library is not the only one of its role here, nor on a tie."""
    r42, new = r_env("/h/R/4.2", "user", "4.2.2"), r_env("/h/R/4.3", "user", "4.3.0")
    here = [new]
    assert predecessors([r42, new], here, pair([r42, new], here)) == {1: 0}
    r41 = r_env("/h/R/4.1", "user", "4.1.3")
    assert predecessors([r41, r42, new], here, {2: 0}) == {2: 1}
    assert predecessors([r42, r_env("/o/4.2", "user", "4.2.2"), new], here, {2: 0}) == {}
    two = [new, r_env("/h/R/other", "user", "4.3.0")]
    assert predecessors([r42, new], two, {1: 0}) == {}
    assert predecessors([r_env("/s/4.2", "site"), new], here, {1: 0}) == {}


def test_the_installs_carried_on_are_those_the_new_record_does_not_speak_for() -> None:
    """Left out: a package the new record holds in any form (added, changed, removed,
    forgotten) and one the user was seen uninstalling there (its last change a remove)."""

    def pkgs(*names: str) -> tuple[Package, ...]:
        return tuple(Package(name=n, version="1.0") for n in names)

    old = Delta(
        env=r_env("/h/R/4.2", "user"),
        added=pkgs("a", "b", "c", "d", "e", "f"),
        changed=pkgs("g", "h"),
        removed=pkgs("i"),
    )
    new = Delta(
        env=r_env("/h/R/4.3", "user"),
        added=pkgs("a"),
        changed=pkgs("b"),
        removed=pkgs("c"),
        forgotten=pkgs("d"),
        history=(
            manifest.Change(action="install", name="e", new="1.0"),
            manifest.Change(action="remove", name="e", old="1.0"),
            manifest.Change(action="remove", name="f", old="1.0"),
            manifest.Change(action="install", name="f", new="1.0"),
            manifest.Change(action="remove", name="h", old="1.0"),
        ),
    )
    added, changed = carried(old, new)
    assert [p.name for p in added] == ["f"]
    assert [p.name for p in changed] == ["g"]


def test_only_another_minor_release_needs_a_rebuild() -> None:
    """4.3.1 in a 4.3.2 library stays; 4.2.3 is rebuilt; an unknown version is left as is."""
    env = r_env("/lib", "user", "4.3.2")
    assert stale_build(Package(name="a", version="1.0", built="4.3.1"), env) is None
    assert (
        stale_build(Package(name="a", version="1.0", built="4.2.3"), env)
        == "built under R 4.2, this is R 4.3"
    )
    assert stale_build(Package(name="a", version="1.0"), env) is None
    assert (
        stale_build(Package(name="a", version="1.0", built="4.2.3"), r_env("/l", None, "")) is None
    )


def test_an_older_manifest_without_roles_still_reads_and_keeps_its_bytes() -> None:
    """No role: decoded as None, and encoding it writes no role (the checksum stays)."""
    env = Environment(kind="r", path="/lib", interpreter="4.3.2")
    body = Body(environments=(Delta(env=env, added=(Package(name="a", version="1.0"),)),))
    data = manifest.encode(manifest.Manifest(generation=1, body=body))
    assert b"role" not in data
    assert manifest.decode(data).body.environments[0].env.role is None
    newer = manifest.encode(
        manifest.Manifest(
            generation=1,
            body=Body(environments=(Delta(env=msgspec.structs.replace(env, role="a later role")),)),
        )
    )
    assert manifest.decode(newer).body.environments[0].env.role == "a later role"


def test_a_package_rebuilt_for_another_r_minor_is_recorded_anew_for_its_artifact() -> None:
    """The daemon's record takes a reinstall built for the next R minor (its artifact, keyed
    by R minor, is captured anew); a patch-level rebuild keeps the recorded install."""
    env = r_env("/lib", "named", "4.4.0")
    art = Artifact(file="R-4.3/aa_1.0_R_x86_64-pc-linux-gnu.tar.gz", sha256="0" * 64, size=1)
    old = Package(name="aa", version="1.0", built="4.3.2", artifact=art)
    record = manifest.Manifest(
        generation=1, body=Body(environments=(Delta(env=env, added=(old,)),))
    )
    for built, kept in (("4.4.0", False), ("4.3.3", True)):
        tracker = Tracker(Baseline.of([Inventory(env=env)]), record)
        found = Package(name="aa", version="1.0", built=built)
        tracker.observe(env, Observation(packages={"aa": found}))
        (now,) = tracker.body().environments[0].added
        assert now == (old if kept else found), built


@needs_r
def test_a_failure_in_the_moved_user_library_counts_against_its_record(
    tmp_path: Path, repo: rpkgs.Repo
) -> None:
    """A package of the old user library's record that cannot be installed in the new one
    is counted as failing in that record, where `pkgckpt forget` finds it."""
    version, platform = r_info()
    old = older_r()
    base = tmp_path / "home" / "R" / f"{platform}-library"
    env = Environment(
        kind="r", path=str(base / x_y(old)), interpreter=old, platform=platform, role="user"
    )
    gone = Package(name="ckptNowhere", version="1.0", built=old)
    restore_kit.put_manifest(
        tmp_path / "store", "k", Body(environments=(Delta(env=env, added=(gone,)),))
    )
    done = run("restore", tmp_path, environ(tmp_path, discover_r=True), "--r-repo", repo.url)
    assert done.returncode == 3, done.stdout + done.stderr
    assert str(base / x_y(version)) in done.stdout
    stored = Store(tmp_path / "store", "k").read()
    assert stored is not None
    (delta,) = [d for d in stored.body.environments if d.env.kind == "r"]
    assert delta.env.path == env.path
    assert [(f.name, f.count) for f in delta.failing] == [("ckptNowhere", 1)]


@needs_r
def test_a_superseded_mark_in_the_moved_user_library_lands_on_its_record(
    tmp_path: Path, repo: rpkgs.Repo, user_lib: Path, other_base: rpkgs.Repo
) -> None:
    """The old user library's record holds ckpt.base 1.0.0, which the new image's site
    library ships newer: restore into the new R's user library supersedes it, and the
    mark is kept on the record it reads, the old library's (where `status` and the next
    checkpoint find it), not lost for want of a record at the new path."""
    version, platform = r_info()
    old = older_r()
    base = tmp_path / "home" / "R" / f"{platform}-library"
    old_lib, new_lib = base / x_y(old), base / x_y(version)
    env = Environment(kind="r", path=str(old_lib), interpreter=old, platform=platform, role="user")
    delta = Delta(env=env, added=recorded(user_lib, ("ckpt.base", "ckptImports")))
    restore_kit.put_manifest(tmp_path / "store", "k", Body(environments=(delta,)))
    environment = environ(tmp_path, discover_r=True)
    site = tmp_path / "site"
    rpkgs.install(site, other_base, tarballs=[other_base.tarball("ckpt.base", "1.1.0")])

    done = run("restore", tmp_path, environment, "--r-repo", repo.url)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "superseded ckpt.base 1.0.0: the image ships 1.1.0" in done.stdout, done.stdout
    assert rpkgs.installed(new_lib) == {"ckptImports": "1.2.0"}
    stored = Store(tmp_path / "store", "k").read()
    assert stored is not None
    (kept,) = [d for d in stored.body.environments if d.env.kind == "r"]
    assert kept.env.path == str(old_lib)
    assert [(r.name, r.version, r.state) for r in kept.rebased] == [
        ("ckpt.base", "1.0.0", "superseded")
    ]
    assert stored.generation == 1  # bookkeeping: the generation is amended


@pytest.mark.parametrize("how", ["moved", "carried"])
def test_a_rebases_marks_land_on_the_record_that_holds_each_entry(
    monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """An R library matched by its role (moved by an R upgrade) marks the old library's
    record; a library matched by its path marks its own record for what it holds, and
    the older record it carries on for the installs planned from that one."""
    from pkgckpt import record
    from pkgckpt.restore import EnvPlan, EnvReport, Plan, Report
    from pkgckpt.restore.rebase import Decision, Rebase

    old = r_env("/home/u/R/x86_64-pc-linux-gnu-library/4.2", "user", "4.2.3")
    new = r_env("/home/u/R/x86_64-pc-linux-gnu-library/4.3", "user")
    mine, theirs = Package(name="mine", version="1.0"), Package(name="theirs", version="2.0")
    deltas = [Delta(env=old, added=(mine, theirs))]
    if how == "carried":
        deltas.append(Delta(env=new, added=(mine,)))
    recorded_ = manifest.Manifest(generation=4, body=Body(environments=tuple(deltas)))
    rebase = Rebase(
        image_new="sha256:" + "1" * 64,
        decisions=(
            Decision(name="mine", version="1.0", recorded="added", action="superseded", reason="a"),
            Decision(
                name="theirs", version="2.0", recorded="added", action="held-back", reason="b"
            ),
        ),
    )
    planned = EnvPlan(
        env=new,
        installer="Rscript",
        rebase=rebase,
        recorded=old if how == "moved" else None,
        carried=old if how == "carried" else None,
    )
    report = Report(
        plan=Plan(key="k", store="/s", environments=(planned,)),
        environments=(EnvReport(env=new, installer="Rscript"),),
    )
    asked: list[record.Outcome] = []
    monkeypatch.setattr(
        record, "_write", lambda config, request, **_: asked.extend(request.outcomes)
    )
    record.remember(Config(), recorded_, report)
    marks = {o.env.path: [(r.name, r.state) for r in o.rebased or ()] for o in asked}
    if how == "moved":
        assert marks == {old.path: [("mine", "superseded"), ("theirs", "held-back")]}
    else:
        assert marks == {old.path: [("theirs", "held-back")], new.path: [("mine", "superseded")]}


@needs_r
def test_what_a_restore_after_an_r_upgrade_missed_is_restored_by_the_next_one(
    tmp_path: Path, repo: rpkgs.Repo
) -> None:
    """The first restore on a new R installs only part of the old user library's record (a
    repository down, the timeout); the daemon then records the new user library with what
    got in place. The old record's missing package stays planned for the new library, its
    failures counted in the old record, until it is in place; then nothing is left."""
    partial = rpkgs.build_repo(tmp_path / "partial" / "cran", (("ckptC", "0.3.1"),), ())
    version, platform = r_info()
    old = older_r()
    old_lib = tmp_path / "home" / "R" / f"{platform}-library" / x_y(old)
    new_lib = old_lib.parent / x_y(version)
    rpkgs.install(old_lib, repo, ("ckpt.base", "ckptC"))
    built_under(old_lib, old, "ckpt.base", "ckptC")
    env = Environment(kind="r", path=str(old_lib), interpreter=old, platform=platform, role="user")
    delta = Delta(env=env, added=recorded(old_lib, ("ckpt.base", "ckptC")))
    restore_kit.put_manifest(tmp_path / "store", "k", Body(environments=(delta,)))
    environment = environ(tmp_path, discover_r=True)

    def failing() -> list[tuple[str, int]]:
        stored = Store(tmp_path / "store", "k").read()
        assert stored is not None
        (was,) = [d for d in stored.body.environments if d.env.path == str(old_lib)]
        return [(f.name, f.count) for f in was.failing]

    first = run("restore", tmp_path, environment, "--r-repo", partial.url)
    assert first.returncode == 3, first.stdout + first.stderr
    assert set(rpkgs.installed(new_lib)) == {"ckptC"}
    assert failing() == [("ckpt.base", 1)]
    snap = run("snapshot", tmp_path, environment)
    assert snap.returncode == 0, snap.stdout + snap.stderr
    stored = Store(tmp_path / "store", "k").read()
    assert stored is not None
    by_path = {d.env.path: d for d in stored.body.environments}
    assert [p.name for p in by_path[str(new_lib)].added] == ["ckptC"]

    dry = run("restore", tmp_path, environment, "--r-repo", repo.url, "--dry-run")
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert f"{new_lib} (Rscript): install 1, remove 0" in dry.stdout
    assert "install ckpt.base 1.0.0" in dry.stdout
    assert f"(and what the record of {old_lib} holds that its own lacks)" in dry.stdout
    assert "1 of them, missing from that record, are planned for it" in dry.stdout
    status = run("status", tmp_path, environment, "--json")
    assert status.returncode == 0, status.stdout + status.stderr
    (mine,) = [
        e for e in json.loads(status.stdout)["environments"] if e["env"]["path"] == str(new_lib)
    ]
    assert [(c["action"], c["name"]) for c in mine["unrestored"]] == [("install", "ckpt.base")]

    again = run("restore", tmp_path, environment, "--r-repo", partial.url)
    assert again.returncode == 3, again.stdout + again.stderr
    assert failing() == [("ckpt.base", 2)]

    healthy = run("restore", tmp_path, environment, "--r-repo", repo.url)
    assert healthy.returncode == 0, healthy.stdout + healthy.stderr
    assert rpkgs.installed(new_lib) == {"ckptC": "0.3.1", "ckpt.base": "1.0.0"}
    assert built(new_lib, "ckpt.base") == version
    assert failing() == []

    snap = run("snapshot", tmp_path, environment)
    assert snap.returncode == 0, snap.stdout + snap.stderr
    untouched = identities(new_lib)
    last = run("restore", tmp_path, environment, "--r-repo", repo.url)
    assert last.returncode == 0, last.stdout + last.stderr
    assert "Nothing to restore" in last.stdout
    assert identities(new_lib) == untouched


# -- the image's R packages (restore/rimage.py) --------------------------------------------


@pytest.fixture(scope="module")
def other_base(tmp_path_factory: pytest.TempPathFactory) -> rpkgs.Repo:
    """ckpt.base 1.1.0 (newer than the user's 1.0.0) and, in the archive, 0.9-1 (older)."""
    return rpkgs.build_repo(
        tmp_path_factory.mktemp("base") / "cran",
        current=(("ckpt.base", "1.1.0"),),
        archived=(("ckpt.base", "0.9-1"),),
    )


@needs_r
@pytest.mark.parametrize(("shipped", "superseded"), [("1.1.0", True), ("0.9-1", False)])
def test_a_user_package_the_image_ships_newer_is_superseded_not_downgraded(
    tmp_path: Path,
    repo: rpkgs.Repo,
    user_lib: Path,
    other_base: rpkgs.Repo,
    shipped: str,
    superseded: bool,
) -> None:
    """The user added ckpt.base 1.0.0 and ckptImports to their library; the new image's
    site library ships ckpt.base `shipped`. Newer (1.1.0, R's package_version order):
    superseded, not installed over it (dry run and restore say so), ckptImports is
    installed and loads against the image's copy; older (0.9-1): the user's 1.0.0 is
    installed. A second restore installs nothing; a checkpoint keeps the record."""
    mine, site = tmp_path / "mine", tmp_path / "site-lib"
    rpkgs.install(site, other_base, tarballs=[other_base.tarball("ckpt.base", shipped)])
    delta = Delta(
        env=r_environment(mine, role="named"),
        added=recorded(user_lib, ("ckpt.base", "ckptImports")),
        image="sha256:" + "0" * 64,
    )
    restore_kit.put_manifest(tmp_path / "store", "k", Body(environments=(delta,)))
    environment = environ(tmp_path)
    args = ("--r-lib", str(mine), "--r-lib", str(site), "--r-repo", repo.url)

    dry = run("restore", tmp_path, environment, *args, "--dry-run")
    assert dry.returncode == 0, dry.stdout + dry.stderr
    line = f"superseded ckpt.base 1.0.0: the image ships {shipped}"
    assert (line in dry.stdout) is superseded, dry.stdout

    done = run("restore", tmp_path, environment, *args)
    assert done.returncode == 0, done.stdout + done.stderr
    want = (
        {"ckptImports": "1.2.0"} if superseded else {"ckptImports": "1.2.0", "ckpt.base": "1.0.0"}
    )
    assert rpkgs.installed(mine) == want
    assert rpkgs.installed(site) == {"ckpt.base": shipped}
    out = rpkgs.rscript(
        ".libPaths(commandArgs(TRUE)); library(ckptImports);"
        "cat(format(packageVersion('ckpt.base')))",
        str(mine),
        str(site),
    )
    assert out == (shipped.replace("-", ".") if superseded else "1.0.0")
    again = run("restore", tmp_path, environment, *args)
    assert again.returncode == 0, again.stdout + again.stderr
    assert rpkgs.installed(mine) == want
    # The user uninstalled nothing: a checkpoint on the new image keeps the record.
    snap = run("snapshot", tmp_path, environment, "--r-lib", str(mine), "--r-lib", str(site))
    assert snap.returncode == 0, snap.stdout + snap.stderr
    stored = Store(tmp_path / "store", "k").read()
    assert stored is not None
    (kept,) = [d for d in stored.body.environments if d.env.path == str(mine)]
    assert {p.name: p.version for p in kept.added} == {"ckpt.base": "1.0.0", "ckptImports": "1.2.0"}


@needs_r
def test_a_user_package_older_than_the_images_on_purpose_is_installed(
    tmp_path: Path, repo: rpkgs.Repo, user_lib: Path, other_base: rpkgs.Repo
) -> None:
    """The user installed ckpt.base 1.0.0 into their library over the site library's
    1.1.0, which the record says (`replaced`): on that image, or on one that ships
    1.1.0 still, restore installs the user's choice, where one recorded over an older
    site copy is superseded by the image's newer one."""
    mine, site = tmp_path / "mine", tmp_path / "site-lib"
    rpkgs.install(site, other_base, tarballs=[other_base.tarball("ckpt.base", "1.1.0")])
    (base,) = recorded(user_lib, ("ckpt.base",))
    delta = Delta(
        env=r_environment(mine, role="named"),
        added=(msgspec.structs.replace(base, replaced="1.1.0"),),
        image=manifest.image_identity(()),
    )
    restore_kit.put_manifest(tmp_path / "store", "k", Body(environments=(delta,)))
    args = ("--r-lib", str(mine), "--r-lib", str(site), "--r-repo", repo.url)
    done = run("restore", tmp_path, environ(tmp_path), *args)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "superseded" not in done.stdout, done.stdout
    assert rpkgs.installed(mine) == {"ckpt.base": "1.0.0"}


@needs_r
def test_removing_an_image_r_package_another_image_package_imports_is_held_back(
    tmp_path: Path, repo: rpkgs.Repo
) -> None:
    """The user removed ckpt.base and ckptGone from the image's library; on the new image
    ckptImports imports ckpt.base (>= 1.0.0): that removal is held back (exit 3, named
    with the requirement as its DESCRIPTION states it), ckptGone is removed, ckptImports
    still loads; status says the same. `--on-conflict user` removes it anyway and names
    what it breaks."""
    site = tmp_path / "site-lib"
    rpkgs.install(site, repo, ("ckpt.base", "ckptImports", "ckptGone"))
    delta = Delta(
        env=r_environment(site, role="named"),
        removed=(
            Package(name="ckpt.base", version="1.0.0"),
            Package(name="ckptGone", version="1.0"),
        ),
        image="sha256:" + "0" * 64,
    )
    restore_kit.put_manifest(tmp_path / "store", "k", Body(environments=(delta,)))
    environment = environ(tmp_path)
    args = ("--r-lib", str(site), "--r-repo", repo.url)
    held = "ckpt.base 1.0.0 held back: ckptImports 1.2.0 (image) requires ckpt.base (>= 1.0.0)"

    done = run("restore", tmp_path, environment, *args)
    assert done.returncode == 3, done.stdout + done.stderr
    assert held in done.stdout, done.stdout
    assert rpkgs.installed(site) == {"ckpt.base": "1.0.0", "ckptImports": "1.2.0"}
    assert loads(site, ("ckptImports",)) == {"ckptImports": "ok"}
    status = run("status", tmp_path, environment, "--r-lib", str(site))
    assert held in status.stdout, status.stdout + status.stderr
    again = run("restore", tmp_path, environment, *args)
    assert again.returncode == 3 and held in again.stdout, again.stdout + again.stderr

    forced = run("restore", tmp_path, environment, *args, "--on-conflict", "user")
    assert forced.returncode == 0, forced.stdout + forced.stderr
    assert "broken: ckptImports 1.2.0 (image) requires ckpt.base (>= 1.0.0)" in forced.stdout
    assert rpkgs.installed(site) == {"ckptImports": "1.2.0"}


def test_a_removal_held_back_on_the_records_own_image_says_so(
    tmp_path: Path, repo: rpkgs.Repo
) -> None:
    """The same removal on the very image the record was taken against: held back all the
    same, but said to be read against its image and held back by the image, not
    "rebased onto a new image" under one image digest."""
    site = tmp_path / "site-lib"
    rpkgs.install(site, repo, ("ckpt.base", "ckptImports"))
    shipped = [
        Package(name="ckpt.base", version="1.0.0"),
        Package(name="ckptImports", version="1.2.0"),
    ]
    delta = Delta(
        env=r_environment(site, role="named"),
        removed=(shipped[0],),
        image=manifest.image_identity(shipped),
    )
    restore_kit.put_manifest(tmp_path / "store", "k", Body(environments=(delta,)))
    done = run("restore", tmp_path, environ(tmp_path), "--r-lib", str(site), "--r-repo", repo.url)
    assert done.returncode == 3, done.stdout + done.stderr
    assert f"{site}: read against its image\n" in done.stdout, done.stdout
    assert "held back by the image" in done.stderr, done.stderr
    assert "new image" not in done.stdout + done.stderr


def test_r_versions_order_as_package_version_and_requirements_parse_as_r_writes_them(
    tmp_path: Path,
) -> None:
    """Integer components split on `.` and `-` ("1.0-3" < "1.0.10", "1.10" > "1.9"); an
    image package's Depends/Imports/LinkingTo are read with their constraints (over
    continuation lines), R itself and Suggests are not requirements, and a DESCRIPTION
    naming another package or version, or an item that does not parse, gives nothing."""
    from pkgckpt.restore.rimage import requirements
    from pkgckpt.rmatch import r_version

    assert r_version("1.0-3") == (1, 0, 3)
    assert r_version("1.0-3") < r_version("1.0.10")  # type: ignore[operator]
    assert r_version("1.10") > r_version("1.9")  # type: ignore[operator]
    assert r_version("1.0a") is None
    (tmp_path / "Yimg").mkdir()
    (tmp_path / "Yimg" / "DESCRIPTION").write_text(
        "Package: Yimg\nVersion: 2.0\nDepends: R (>= 4.0), Xdep (>= 2.0-1)\n"
        "Imports: Zdep,\n    Wdep(<1.5), bad (>= x), --opt\nLinkingTo: Ldep\nSuggests: Sdep\n"
    )
    found = [str(n) for n in requirements(tmp_path, "Yimg", "2.0")]
    assert found == [
        "Yimg 2.0 (image) requires Xdep (>= 2.0-1)",
        "Yimg 2.0 (image) requires Zdep",
        "Yimg 2.0 (image) requires Wdep (< 1.5)",
        "Yimg 2.0 (image) requires Ldep",
    ]
    (x,) = [n for n in requirements(tmp_path, "Yimg", "2.0") if n.name == "Xdep"]
    assert (x.allows("2.0-1"), x.allows("2.0.0"), x.allows("2.1"), x.allows("1.99")) == (
        True,
        False,
        True,
        False,
    )
    assert requirements(tmp_path, "Yimg", "1.0") == []
    assert requirements(tmp_path, "Other", "2.0") == []


@needs_r
def test_a_user_library_that_outlives_its_container_is_not_read_as_a_new_image(
    tmp_path: Path, repo: rpkgs.Repo, user_lib: Path
) -> None:
    """A user library in a persistent home, no image-build baseline: each container's
    restore takes its baseline with the user's packages in that library. Those are the
    live installs, which restore never reads as the image's, so nothing is superseded
    or rebased, at this container's start or the next one's."""
    mine, site = tmp_path / "mine", tmp_path / "site-lib"
    rpkgs.install(site, repo, ("ckpt.base",))
    mine.mkdir()
    shutil.copytree(user_lib / "ckptImports", mine / "ckptImports")
    delta = Delta(
        env=r_environment(mine, role="named"),
        added=recorded(mine, ("ckptImports",)),
        image=manifest.image_identity(()),
    )
    restore_kit.put_manifest(tmp_path / "store", "k", Body(environments=(delta,)))
    args = ("--r-lib", str(mine), "--r-lib", str(site), "--r-repo", repo.url)
    for _ in range(2):
        shutil.rmtree(tmp_path / "container", ignore_errors=True)
        environment = environ(tmp_path)
        done = run("restore", tmp_path, environment, *args)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "nothing to restore" in done.stdout.lower(), done.stdout
        assert "image" not in done.stdout and "superseded" not in done.stdout, done.stdout
        status = run("status", tmp_path, environment, *args)
        assert "image" not in status.stdout and "superseded" not in status.stdout, status.stdout
    assert rpkgs.installed(mine) == {"ckptImports": "1.2.0"}
