"""Which R libraries pkgckpt tracks without R flags: the ones R itself uses, as R reports
them under pkgckpt's rule for starting R (site files yes, user and working-directory
profiles no), asked once and kept in the runtime directory."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import restore_kit
import rpkgs

from pkgckpt import inventory, status
from pkgckpt.config import Config
from pkgckpt.errors import ScanError
from pkgckpt.scan import r as rscan

needs_r = rpkgs.needs_r


class Site:
    """A throwaway R site: HOME, site library, Renviron.site and Rprofile.site of its own."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.home = tmp / "home"
        self.home.mkdir()
        self.site = tmp / "site"
        self.site.mkdir()
        self.renviron = tmp / "Renviron.site"
        self.rprofile = tmp / "Rprofile.site"
        self.renviron.write_text(f"R_LIBS_SITE={self.site}\n")
        self.rprofile.write_text("")
        self.run = tmp / "run"
        self.run.mkdir(mode=0o700)
        self.marker = tmp / "profile-ran"

    def environ(self) -> dict[str, str]:
        return {
            "HOME": str(self.home),
            "R_ENVIRON": str(self.renviron),
            "R_PROFILE": str(self.rprofile),
        }

    def config(self, **values: object) -> Config:
        return Config(runtime_dir=self.run, env=(), **values)  # type: ignore[arg-type]


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Site]:
    s = Site(tmp_path)
    for key in [k for k in os.environ if k.startswith("R_") and k != "R_HOME"]:
        monkeypatch.delenv(key)
    for key, value in s.environ().items():
        monkeypatch.setenv(key, value)
    yield s


def base_library() -> Path:
    return Path(rpkgs.rscript('cat(normalizePath(R.home("library")))'))


@needs_r
def test_default_tracks_site_and_user_libraries_but_never_the_base_library(site: Site) -> None:
    """No R flags: the site library and a user library that does not exist yet are tracked,
    R's own base library is not."""
    user = site.tmp / "mine"
    os.environ["R_LIBS_USER"] = str(user)
    found = inventory.r_libraries(site.config())
    assert found.libs == (site.site, user)
    assert base_library() not in found.libs
    assert found.untracked is None


@needs_r
def test_a_library_reached_through_a_link_is_tracked_once_as_named(site: Site) -> None:
    """R_LIBS_USER is a link to the volume's directory: R reports `.libPaths()` resolved,
    the variable as written. One directory is one library, tracked (and restored) once,
    under the name the user gave it, which stays when the link is pointed elsewhere."""
    volume = site.tmp / "volume"
    volume.mkdir()
    user = site.home / "Rlib"
    user.symlink_to(volume)
    os.environ["R_LIBS_USER"] = str(user)
    assert inventory.r_libraries(site.config()).libs == (user, site.site)
    found = [t.env for t in inventory.targets(site.config(discover=("r",))) if t.env.kind == "r"]
    assert [(e.path, e.role) for e in found] == [(str(user), "user"), (str(site.site), "site")]


@needs_r
def test_r_libs_user_is_expanded_as_r_expands_it(site: Site) -> None:
    """`~/Rlib/%v/%p` is the directory R installs into: home, R's x.y version, platform."""
    os.environ["R_LIBS_USER"] = "~/Rlib/%v/%p"
    version, platform = rscan.r_info()
    x_y = ".".join(version.split(".")[:2])
    found = inventory.r_libraries(site.config()).libs
    assert site.home / "Rlib" / x_y / platform in found
    assert not any("%" in str(p) for p in found)


@needs_r
def test_r_lib_restricts_tracking_to_exactly_what_it_names(site: Site) -> None:
    """--r-lib given: only that library, not the site library R would add."""
    named = site.tmp / "named"
    assert inventory.r_libraries(site.config(r_lib=(named,))).libs == (named,)


@needs_r
def test_without_r_in_discover_status_says_why_nothing_is_tracked(site: Site) -> None:
    """`discover` without `r`: nothing tracked, and the reason is given."""
    found = inventory.r_libraries(site.config(discover=("kernels",)))
    assert found.libs == ()
    assert found.untracked is not None and "discover" in found.untracked


@needs_r
def test_user_and_working_directory_profiles_do_not_run_but_site_files_do(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    """~/.Rprofile and ./.Rprofile (planted by someone else) never run; the image's
    Rprofile.site and Renviron.site do."""
    planted = site.tmp / "planted"
    planted.mkdir()
    for profile in (site.home / ".Rprofile", planted / ".Rprofile"):
        profile.write_text(f'cat("user", file = "{site.marker}", append = TRUE); stop("x")\n')
    (planted / ".Renviron").write_text(f"R_LIBS_USER={site.tmp}/planted-lib\n")
    extra = site.tmp / "from-profile"
    extra.mkdir()
    site.rprofile.write_text(f'.libPaths(c("{extra}", .libPaths()))\n')
    monkeypatch.chdir(planted)
    found = inventory.r_libraries(site.config())
    assert not site.marker.exists()
    assert extra in found.libs and site.site in found.libs
    assert all("planted" not in str(p) for p in found.libs)


@needs_r
def test_a_failing_site_profile_is_named_in_the_error(site: Site) -> None:
    """R says only "Execution halted"; pkgckpt's message names the profile that failed."""
    site.rprofile.write_text('stop("the site profile broke")\n')
    programs = rscan.r_programs()
    assert programs is not None
    with pytest.raises(ScanError, match=r"Rprofile\.site.*the site profile broke"):
        rscan.r_libraries(programs[0])
    found = inventory.r_libraries(site.config())
    assert found.libs == ()
    assert found.untracked is not None and "Rprofile.site" in found.untracked


def _count_runs(site: Site) -> int:
    return len(site.marker.read_text()) if site.marker.exists() else 0


@needs_r
def test_r_is_asked_once_and_again_when_its_environment_or_files_change(site: Site) -> None:
    """The answer is kept in the runtime directory; a new R_LIBS_USER or an edited
    Renviron.site makes pkgckpt ask R again."""
    site.rprofile.write_text(f'cat("x", file = "{site.marker}", append = TRUE)\n')
    config = site.config()
    first = inventory.r_libraries(config).libs
    assert inventory.r_libraries(config).libs == first
    assert _count_runs(site) == 1
    os.environ["R_LIBS_USER"] = str(site.tmp / "other")
    assert site.tmp / "other" in inventory.r_libraries(config).libs
    assert _count_runs(site) == 2
    second_site = site.tmp / "site2"
    second_site.mkdir()
    site.renviron.write_text(f"R_LIBS_SITE={second_site}\n")
    assert second_site in inventory.r_libraries(config).libs
    assert _count_runs(site) == 3


@needs_r
def test_a_planted_cached_answer_is_not_trusted(site: Site) -> None:
    """A cache file that others can write is ignored: R is asked again."""
    site.rprofile.write_text(f'cat("x", file = "{site.marker}", append = TRUE)\n')
    config = site.config()
    inventory.r_libraries(config)
    (kept,) = site.run.glob("r-libs-*.json")
    kept.write_text(kept.read_text().replace(str(site.site), "/etc"))
    kept.chmod(0o666)
    assert Path("/etc") not in inventory.r_libraries(config).libs
    assert _count_runs(site) == 2


@needs_r
def test_status_says_when_r_is_installed_but_untracked(tmp_path: Path) -> None:
    """`pkgckpt status` prints a plain line saying R is not tracked, and why."""
    env = restore_kit.hermetic(tmp_path)
    env["HOME"] = str(tmp_path)
    out = restore_kit.pkgckpt("status", "--store", str(tmp_path / "store"), "--key", "k", env=env)
    assert out.returncode == 0, out.stderr
    assert "R:          installed, but no R library is tracked" in out.stdout
    assert "`discover` does not include `r`" in out.stdout


@needs_r
def test_baseline_includes_the_libraries_r_uses(site: Site, tmp_path: Path) -> None:
    """`pkgckpt baseline` with no R flags records the site library R uses."""
    env = {**restore_kit.hermetic(tmp_path), **site.environ()}
    env.pop("PKGCKPT_DISCOVER")
    out_file = tmp_path / "baseline.json"
    done = restore_kit.pkgckpt("baseline", "-o", str(out_file), env=env)
    assert done.returncode == 0, done.stderr
    recorded = json.loads(out_file.read_text())
    paths = [e["env"]["path"] for e in recorded["environments"] if e["env"]["kind"] == "r"]
    assert str(site.site) in paths
    assert str(base_library()) not in paths


# -- RStudio's own user library (r-libs-user in rsession.conf) ----------------------------


def rstudio_conf(site: Site, text: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An RStudio config directory of root's (the tests run as root) with `rsession.conf`
    holding `text`, named by RSTUDIO_CONFIG_DIR as an administrator would."""
    conf_dir = site.tmp / "rstudio"
    conf_dir.mkdir(exist_ok=True)
    conf = conf_dir / "rsession.conf"
    conf.write_text(text)
    conf.chmod(0o644)
    monkeypatch.setenv("RSTUDIO_CONFIG_DIR", str(conf_dir))
    return conf


def x_y() -> str:
    return ".".join(rscan.r_info()[0].split(".")[:2])


@needs_r
def test_the_rstudio_user_library_of_rsession_conf_is_tracked_as_r_expands_it(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`r-libs-user=<tmp>/R/library/%v` (beside comments and other keys): the library an
    RStudio session installs into is tracked, as R expands it, before it exists, with the
    role "rstudio"; the daemon's own R_LIBS_USER still is, with its role "user"."""
    os.environ["R_LIBS_USER"] = str(site.tmp / "mine")
    rstudio_conf(
        site,
        "# set by the platform team\nsession-timeout-minutes=0\n"
        f"  r-libs-user = {site.tmp}/R/library/%v   # one per R version\n",
        monkeypatch,
    )
    found = inventory.r_libraries(site.config())
    lib = site.tmp / "R" / "library" / x_y()
    assert not lib.exists()
    assert found.libs == (site.site, site.tmp / "mine", lib)
    assert found.info is not None
    assert found.info.role(lib) == "rstudio"
    assert found.info.role(site.tmp / "mine") == "user"


@needs_r
def test_an_renviron_site_r_libs_user_wins_over_rsession_conf_as_in_a_session(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Renviron.site setting R_LIBS_USER outright overrides what RStudio hands its session
    (R reads it after RStudio set the variable): no second library is tracked. One that
    keeps an inherited value (`${R_LIBS_USER:-...}`) lets rsession.conf's through."""
    fixed = site.tmp / "fixed"
    site.renviron.write_text(f"R_LIBS_SITE={site.site}\nR_LIBS_USER={fixed}\n")
    rstudio_conf(site, f"r-libs-user={site.tmp}/R/library/%v\n", monkeypatch)
    assert inventory.r_libraries(site.config()).libs == (site.site, fixed)
    site.renviron.write_text(f"R_LIBS_SITE={site.site}\nR_LIBS_USER=${{R_LIBS_USER:-'{fixed}'}}\n")
    libs = inventory.r_libraries(site.config()).libs
    assert site.tmp / "R" / "library" / x_y() in libs


@needs_r
def test_r_is_asked_again_when_rsession_conf_changes(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The kept answer holds until r-libs-user changes: then the new library is tracked."""
    conf = rstudio_conf(site, f"r-libs-user={site.tmp}/one\n", monkeypatch)
    config = site.config()
    assert site.tmp / "one" in inventory.r_libraries(config).libs
    conf.write_text(f"r-libs-user={site.tmp}/two\n")
    libs = inventory.r_libraries(config).libs
    assert site.tmp / "two" in libs and site.tmp / "one" not in libs


@needs_r
def test_a_carriage_return_in_r_libs_user_is_part_of_the_library_tracked(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`r-libs-user=<tmp>/a\\r<tmp>/b` is one library to RStudio and to R: R's answer is
    read by newlines alone, so it is tracked whole, never as `<tmp>/a`, a directory no
    session uses."""
    rstudio_conf(site, f"r-libs-user={site.tmp}/a\r{site.tmp}/b\n", monkeypatch)
    found = inventory.r_libraries(site.config())
    assert found.info is not None
    assert found.info.rstudio == (f"{site.tmp}/a\r{site.tmp}/b",)
    assert site.tmp / "a" not in found.libs


@needs_r
@pytest.mark.parametrize("loose", ["another owner", "writable by others"])
def test_an_rsession_conf_root_does_not_own_alone_is_ignored_with_a_warning(
    site: Site, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, loose: str
) -> None:
    """rsession.conf owned by another user, or writable by others, names no library: it
    is ignored, and the warning says which file and why."""
    conf = rstudio_conf(site, f"r-libs-user={site.tmp}/planted\n", monkeypatch)
    if loose == "another owner":
        os.chown(conf, 65534, 65534)
    else:
        conf.chmod(0o646)
    libs = inventory.r_libraries(site.config()).libs
    assert all("planted" not in str(p) for p in libs)
    assert any(str(conf) in r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    # `pkgckpt status` says it too, where a person looks.
    report = status.collect(site.config(store=site.tmp / "store"))
    assert report.rstudio_ignored is not None
    assert report.rstudio_ignored.startswith(f"{conf} is ignored: ")
    assert f"RStudio:    {conf} is ignored: " in status.to_text(report)
