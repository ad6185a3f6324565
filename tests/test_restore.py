"""Restore end to end: real venvs, real uv and pip, wheels and sdists built here, a real store."""

from __future__ import annotations

import base64
import functools
import hashlib
import http.server
import json
import signal
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import fault_kit
import msgspec
import pytest
from fault_kit import faults, glob_escape, hung_open
from restore_kit import (
    broken_sdist,
    hermetic,
    installed,
    isolated,  # noqa: F401 (an autouse fixture)
    pkgckpt,
    put_manifest,
    slow_sdist,
)
from wheelhouse import Dist, Venv, build_wheel, make_venv

from pkgckpt import restore
from pkgckpt.config import DISCOVER, Config
from pkgckpt.inventory import load_baseline, targets
from pkgckpt.manifest import Body, Delta, Environment, Failing, Package, UrlSource
from pkgckpt.restore import PartialRestore
from pkgckpt.restore.python import PythonInstaller
from pkgckpt.restore.runner import Deadline
from pkgckpt.scan.r import r_environment
from pkgckpt.store import Store, init_store

pytestmark = pytest.mark.slow
shim = fault_kit.shim

IMAGE = {"image": "1.0", "gone": "1.0", "keeper": "1.0"}


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheels")
    for dist in (
        Dist("alpha", "1.0"),
        Dist("alpha", "2.0"),
        Dist("beta", "1.0", requires=["gamma"]),
        Dist("gamma", "1.0"),
        Dist("image", "1.0"),
        Dist("image", "2.0"),
        Dist("gone", "1.0"),
        Dist("keeper", "1.0"),
        Dist("same", "3.0"),
    ):
        build_wheel(dist, out)
    broken_sdist("brokenpkg", "1.0", out)
    return out


@pytest.fixture
def image(tmp_path: Path, wheels: Path) -> Iterator[Venv]:
    """The image's venv: three packages, no pip (the fast kind of venv)."""
    venv = make_venv(tmp_path / "venv", with_pip=False)
    config = Config(installer="uv", no_index=True, find_links=(str(wheels),))
    pins = [Package(name=n, version=v) for n, v in IMAGE.items()]
    out = PythonInstaller(Environment(kind="python", path=str(venv.prefix)), config).install(
        pins, reinstall=(), deadline=Deadline(120)
    )
    assert out.ok, out.output
    yield venv


def make_config(tmp_path: Path, venv: Venv, wheels: Path, **settings: object) -> Config:
    values: dict[str, object] = {
        "store": tmp_path / "store",
        "key": "alice",
        "env": (venv.prefix,),
        "runtime_dir": tmp_path / "run",
        "installer": "uv",
        "no_index": True,
        "find_links": (str(wheels),),
        "timeout": 300.0,
        # The machine's own R libraries are not this test's.
        "discover": tuple(d for d in DISCOVER if d != "r"),
    }
    values.update(settings)
    return Config(**values)  # type: ignore[arg-type]


def env_of(config: Config) -> Environment:
    """The environment as the scanner names it (the manifest must say the same)."""
    return next(t.env for t in targets(config) if not t.env.user)


def user_delta(env: Environment, *added: Package) -> Body:
    """What a user did: added alpha and beta, upgraded image, uninstalled gone."""
    return Body(
        environments=(
            Delta(
                env=env,
                added=(
                    Package(name="alpha", version="1.0"),
                    Package(name="beta", version="1.0"),
                    *added,
                ),
                changed=(Package(name="image", version="2.0"),),
                removed=(Package(name="gone", version="1.0"),),
            ),
        )
    )


@pytest.mark.parametrize("tool", ["uv", "pip"])
def test_restore_installs_exactly_the_recorded_delta(
    tool: str, tmp_path: Path, image: Venv, wheels: Path
) -> None:
    """Added and changed packages at their versions, the removal done, nothing else touched."""
    config = make_config(tmp_path, image, wheels, installer=tool)
    put_manifest(config.store, config.key, user_delta(env_of(config)))
    report = restore.run(config)
    assert report.exit_code == 0, report.render()
    assert installed(image.site_packages) == {
        "alpha": "1.0",
        "beta": "1.0",  # gamma, its dependency, was not in the delta: not installed
        "image": "2.0",
        "keeper": "1.0",
    }
    (env_report,) = report.environments
    assert env_report.installer == tool
    assert set(env_report.installed) == {"alpha==1.0", "beta==1.0", "image==2.0"}
    assert env_report.removed == ("gone==1.0",)


def test_second_restore_finds_nothing_and_runs_no_installer(
    tmp_path: Path, image: Venv, wheels: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Run twice, the second run plans nothing, starts no installer and says so."""
    config = make_config(tmp_path, image, wheels)
    put_manifest(config.store, config.key, user_delta(env_of(config)))
    restore.run(config)
    after = installed(image.site_packages)
    # With uv gone from PATH, building an installer would fail: none may be needed now.
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    report = restore.run(config)
    assert report.plan.is_empty() and report.environments == ()
    assert "Nothing to restore" in report.render() and "4 package(s)" in report.render()
    assert installed(image.site_packages) == after


def test_dry_run_changes_nothing(tmp_path: Path, image: Venv, wheels: Path) -> None:
    """A dry run shows the plan, installs nothing and does not even take the baseline."""
    config = make_config(tmp_path, image, wheels)
    put_manifest(config.store, config.key, user_delta(env_of(config)))
    report = restore.run(config, dry_run=True)
    assert installed(image.site_packages) == IMAGE
    assert not (config.runtime_dir / "baseline.json").exists()
    (planned,) = report.plan.environments
    assert [s.name for s in planned.install] == ["alpha", "beta", "image"]
    assert [s.name for s in planned.remove] == ["gone"]
    text = report.render()
    assert "install alpha 1.0 (added; not installed)" in text
    assert "install image 2.0 (changed; installed 1.0)" in text
    assert "remove  gone 1.0" in text


def test_baseline_is_taken_before_anything_is_installed(
    tmp_path: Path, image: Venv, wheels: Path
) -> None:
    """The baseline restore leaves for the daemon is the image, not the image plus the restore."""
    config = make_config(tmp_path, image, wheels)
    put_manifest(config.store, config.key, user_delta(env_of(config)))
    restore.run(config)
    baseline = load_baseline(config)
    assert baseline is not None
    (inventory,) = [i for i in baseline.environments if not i.env.user]
    assert {p.name: p.version for p in inventory.packages} == IMAGE


def test_keep_removed_leaves_image_packages_in_place(
    tmp_path: Path, image: Venv, wheels: Path
) -> None:
    """With keep_removed, image packages the user uninstalled stay; the rest is restored."""
    config = make_config(tmp_path, image, wheels, keep_removed=True)
    put_manifest(config.store, config.key, user_delta(env_of(config)))
    report = restore.run(config)
    assert installed(image.site_packages)["gone"] == "1.0"
    assert installed(image.site_packages)["alpha"] == "1.0"
    assert report.environments[0].kept == ("gone==1.0",)
    assert restore.plan(config).is_empty(), "a kept package is not work for the next run"


@pytest.mark.parametrize("tool", ["uv", "pip"])
def test_failing_packages_are_named_and_the_others_installed(
    tool: str, tmp_path: Path, image: Venv, wheels: Path
) -> None:
    """A missing version and a broken sdist fail alone, with their own reasons; others install."""
    config = make_config(tmp_path, image, wheels, installer=tool)
    body = user_delta(
        env_of(config),
        Package(name="ghost", version="9.9"),
        Package(name="brokenpkg", version="1.0"),
    )
    put_manifest(config.store, config.key, body)
    with pytest.raises(PartialRestore) as info:
        restore.run(config)
    report = info.value.report
    assert report is not None and report.exit_code == 3 and info.value.exit_code == 3
    failures = {f.name: f for f in report.failures}
    assert set(failures) == {"ghost", "brokenpkg"}
    assert "ghost" in failures["ghost"].message
    assert "BUILD FAILED: brokenpkg" in failures["brokenpkg"].message
    assert "BUILD FAILED" not in failures["ghost"].message
    assert installed(image.site_packages) == {
        "alpha": "1.0",
        "beta": "1.0",
        "image": "2.0",
        "keeper": "1.0",
    }
    text = report.render()
    assert "failed to install ghost 9.9" in text and "failed 2" in text


def _gone(pid: int, within: float) -> bool:
    """The process `pid` exited (a zombie counts: it runs no more) within `within` s."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            if Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z"):
                return True
        except FileNotFoundError:
            return True
        time.sleep(0.05)
    return False


def test_timeout_bounds_the_run_and_kills_the_build(
    tmp_path: Path, image: Venv, wheels: Path
) -> None:
    """A hung build is killed at the timeout with its process group; the report says so."""
    pidfile = tmp_path / "build.pid"
    slow_sdist("hangs", "1.0", wheels_for_slow := tmp_path / "slow", pidfile)
    config = make_config(
        tmp_path,
        image,
        wheels,
        timeout=8.0,
        find_links=(str(wheels), str(wheels_for_slow)),
    )
    put_manifest(
        config.store, config.key, user_delta(env_of(config), Package(name="hangs", version="1.0"))
    )
    began = time.monotonic()
    with pytest.raises(PartialRestore) as info:
        restore.run(config)
    assert time.monotonic() - began < 60  # a bound, not a benchmark: the build sleeps 600 s
    report = info.value.report
    assert report is not None and report.timed_out
    assert "hangs" in {f.name for f in report.failures}
    assert "timeout ran out" in report.render()
    assert _gone(int(pidfile.read_text()), 10), "the build backend outlived the timeout"


def test_same_version_from_its_recorded_source_is_reinstalled(
    tmp_path: Path, image: Venv, wheels: Path
) -> None:
    """A package at the right version but from the wrong place is replaced from the recorded one."""
    config = make_config(tmp_path, image, wheels)
    local = build_wheel(Dist("same", "3.0", files=2), tmp_path / "local")
    env = env_of(config)
    put_manifest(
        config.store,
        config.key,
        Body(environments=(Delta(env=env, added=(Package(name="same", version="3.0"),)),)),
    )
    restore.run(config)
    digest = hashlib.sha256(local.read_bytes()).hexdigest()
    source = UrlSource(url=local.as_uri(), hashes={"sha256": digest})
    put_manifest(
        config.store,
        config.key,
        Body(
            environments=(
                Delta(env=env, added=(Package(name="same", version="3.0", source=source),)),
            )
        ),
        generation=2,
    )
    planned = restore.plan(config)
    (step,) = planned.environments[0].install
    assert step.installed == "3.0" and step.source == source
    restore.run(config)
    assert (image.site_packages / "same" / "m1.py").exists()
    assert restore.plan(config).is_empty()


@pytest.mark.parametrize("links", ["empty", "another-build"])
@pytest.mark.parametrize("tool", ["uv", "pip"])
def test_on_a_new_image_a_same_version_reinstall_leaves_the_image_alone(
    tool: str, links: str, tmp_path: Path
) -> None:
    """On a new image the installs resolve dependencies: replacing a package the image
    ships at the recorded version, from the user's source, reinstalls that package alone,
    never the image's dependency of it (which the find-links may not hold at all, or hold
    another build of)."""
    shipped = tmp_path / "image-wheels"
    build_wheel(Dist("dep", "1.0"), shipped)
    build_wheel(Dist("solo", "1.0", requires=["dep"]), shipped)
    mine = build_wheel(Dist("solo", "1.0", requires=["dep"], files=2), tmp_path / "mine")
    venv = make_venv(tmp_path / "venv", with_pip=False)
    config = Config(installer="uv", no_index=True, find_links=(str(shipped),))
    pins = [Package(name="dep", version="1.0"), Package(name="solo", version="1.0")]
    out = PythonInstaller(Environment(kind="python", path=str(venv.prefix)), config).install(
        pins, reinstall=(), deadline=Deadline(120)
    )
    assert out.ok, out.output
    found = tmp_path / "links"
    found.mkdir()
    if links == "another-build":
        build_wheel(Dist("dep", "1.0", files=3), found)
    config = make_config(tmp_path, venv, found, installer=tool)
    source = UrlSource(
        url=mine.as_uri(), hashes={"sha256": hashlib.sha256(mine.read_bytes()).hexdigest()}
    )
    recorded = Delta(
        env=env_of(config),
        image="sha256:" + "0" * 64,  # another image than this one
        added=(Package(name="solo", version="1.0", source=source),),
    )
    put_manifest(config.store, config.key, Body(environments=(recorded,)))
    (planned,) = restore.plan(config).environments
    assert planned.rebase is not None
    assert [(s.name, s.installed) for s in planned.install] == [("solo", "1.0")]
    report = restore.run(config)
    assert report.exit_code == 0, report.render()
    assert (venv.site_packages / "solo" / "m1.py").exists(), "the user's build of solo"
    assert not (venv.site_packages / "dep" / "m2.py").exists(), "the image's dep moved"
    assert installed(venv.site_packages) == {"dep": "1.0", "solo": "1.0"}


def test_an_environment_not_restorable_here_beside_one_restored_is_partial(
    tmp_path: Path, image: Venv, wheels: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Exit 1 says nothing was changed: an R library that cannot be restored here (no R)
    beside a venv whose packages were installed is a partial restore, exit 3."""
    monkeypatch.setenv("PATH", str(Path(sys.executable).parent))  # uv, and no R
    lib = tmp_path / "rlib"
    lib.mkdir()
    config = make_config(
        tmp_path, image, wheels, r_lib=(lib,), r_repo=("https://cloud.r-project.org",)
    )
    venv = next(t.env for t in targets(config) if t.env.kind == "python" and not t.env.user)
    body = Body(
        environments=(
            Delta(env=venv, added=(Package(name="alpha", version="1.0"),)),
            Delta(env=r_environment(lib), added=(Package(name="ckpt.base", version="1.0.0"),)),
        )
    )
    put_manifest(config.store, config.key, body)
    with pytest.raises(PartialRestore) as raised:
        restore.run(config)
    report = raised.value.report
    assert raised.value.exit_code == 3 and report is not None and report.exit_code == 3
    assert "R is not installed here" in report.render()
    assert installed(image.site_packages)["alpha"] == "1.0"


def test_environments_not_here_are_left_alone(tmp_path: Path, image: Venv, wheels: Path) -> None:
    """A manifest environment that is not a target here is listed with its package count
    and why: "missing" when its directory is gone, "not tracked here" when it exists."""
    config = make_config(tmp_path, image, wheels)
    missing = Environment(kind="python", path=str(tmp_path / "not-here"))
    (tmp_path / "untracked").mkdir()
    untracked = Environment(kind="python", path=str(tmp_path / "untracked"))
    body = Body(
        environments=(*user_delta(missing).environments, *user_delta(untracked).environments)
    )
    put_manifest(config.store, config.key, body)
    report = restore.run(config)
    assert report.plan.elsewhere == (missing, untracked) and report.exit_code == 0
    assert installed(image.site_packages) == IMAGE
    text = report.render()
    assert f"Skipped python {missing.path}: 4 recorded package(s), missing" in text
    assert f"drop them with pkgckpt forget --env {missing.path} NAME..." in text
    assert (
        f"Skipped python {untracked.path}: 4 recorded package(s), "
        "not tracked here (use --env PATH or discovery)"
    ) in text
    assert "Nothing to restore in the environments tracked here" in text
    library = Environment(kind="r", path=str(tmp_path / "untracked"))
    assert restore.unpaired(library, ()) == "not tracked here (use --r-lib DIR or discovery)"


def test_a_dry_run_names_the_installed_version_of_a_removal(
    tmp_path: Path, image: Venv, wheels: Path
) -> None:
    """The dry run's JSON gives `installed` for a package it would remove."""
    config = make_config(tmp_path, image, wheels)
    put_manifest(
        config.store, config.key, user_delta(Environment(kind="python", path=str(image.prefix)))
    )
    report = restore.run(config, dry_run=True)
    removals = [s for e in report.plan.environments for s in e.remove]
    assert [(s.name, s.version, s.installed) for s in removals] == [("gone", "1.0", "1.0")]
    assert (
        json.loads(report.to_json())["plan"]["environments"][0]["remove"][0]["installed"] == "1.0"
    )


def test_no_manifest_is_nothing_to_do(tmp_path: Path, image: Venv, wheels: Path) -> None:
    """A key with no manifest yet restores nothing, says so, and still takes the baseline."""
    config = make_config(tmp_path, image, wheels)
    init_store(config.store)
    report = restore.run(config)
    assert report.plan.generation is None and "No manifest" in report.render()
    assert (config.runtime_dir / "baseline.json").exists()


def test_progress_reports_counts_per_environment(
    tmp_path: Path, image: Venv, wheels: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """Progress goes to the callback (counts per environment); off a terminal: quiet."""
    config = make_config(tmp_path, image, wheels)
    put_manifest(config.store, config.key, user_delta(env_of(config)))
    lines: list[str] = []
    restore.run(config, progress=lines.append)
    assert len(lines) == 2
    assert "install 3, remove 1" in lines[0] and "installed 3, removed 1, failed 0" in lines[1]
    put_manifest(
        config.store,
        config.key,
        user_delta(env_of(config), Package(name="gamma", version="1.0")),
        generation=2,
    )
    restore.run(config)
    assert capfd.readouterr().err == ""


def test_report_json_carries_plan_and_results(tmp_path: Path, image: Venv, wheels: Path) -> None:
    """`--json` output is the Report as JSON: plan, per-environment results, exit status inputs."""
    config = make_config(tmp_path, image, wheels)
    put_manifest(config.store, config.key, user_delta(env_of(config)))
    report = restore.run(config)
    data = json.loads(report.to_json())
    assert data["plan"]["generation"] == 1 and data["timed_out"] is False
    assert data["environments"][0]["removed"] == ["gone==1.0"]
    assert msgspec.json.decode(report.to_json(), type=restore.Report) == report


# -- the real command ----------------------------------------------------------------------


def cli_args(config: Config, *extra: str) -> list[str]:
    return [
        "restore",
        "--store",
        str(config.store),
        "--key",
        config.key,
        "--env",
        str(config.env[0]),
        "--no-index",
        "--find-links",
        config.find_links[0],
        *extra,
    ]


def hanging(tmp_path: Path, shim: Path, pattern: str, nth: int = 1) -> dict[str, str]:
    """The test's environment with the `nth` open() of a path matching `pattern` hung by
    the fault shim, as on a hard NFS mount whose server went away."""
    rules = f"open:0:{nth}:hang:{pattern}"
    return {**hermetic(tmp_path), **faults(shim, rules, tmp_path / "faults.log")}


def hung(tmp_path: Path) -> bool:
    """The fault shim did hang a call (its log)."""
    return hung_open(tmp_path / "faults.log")


def test_a_store_that_stops_answering_ends_the_restore_within_its_bound(
    tmp_path: Path, image: Venv, wheels: Path, shim: Path
) -> None:
    """A hard NFS mount whose server went away blocks `open()` on the store for as long as
    it is gone, and no deadline check runs then. The restore still ends within the bound
    `--print-bound` gives (its timeout and 10 s to report), exit 1 as nothing was
    installed, and says what it was waiting for."""
    config = make_config(tmp_path, image, wheels)
    put_manifest(config.store, config.key, user_delta(env_of(config)))
    env = hanging(tmp_path, shim, glob_escape(config.store))
    started = time.monotonic()
    out = pkgckpt(*cli_args(config, "--timeout", "2"), env=env, timeout=60)
    took = time.monotonic() - started
    assert hung(tmp_path), "the store really hung"
    assert out.returncode == 1, out
    assert 12 <= took < 12 + 5, f"{took:.1f} s: the bound is 12 s, and the interpreter's start"
    assert "restore stopped: the timeout ran out and 10 s later it was still reading the " \
        f"store at {config.store}" in out.stderr, out.stderr  # fmt: skip
    assert installed(image.site_packages).get("alpha") is None
    bound = pkgckpt(*cli_args(config, "--timeout", "2", "--print-bound"), env=hermetic(tmp_path))
    assert bound.stdout == "12\n", bound


def test_a_store_that_stops_answering_after_the_installs_keeps_them(
    tmp_path: Path, image: Venv, wheels: Path, shim: Path
) -> None:
    """The store stops answering when restore records the outcome (here: a failed package
    to count). What was installed stays installed, the restore ends within its bound, exit
    3, and it says the outcome was not recorded."""
    config = make_config(tmp_path, image, wheels)
    put_manifest(
        config.store, config.key, user_delta(env_of(config), Package(name="ghost", version="9.9"))
    )
    env = hanging(tmp_path, shim, f"{glob_escape(config.store / config.key)}/.manifest*")
    started = time.monotonic()
    out = pkgckpt(*cli_args(config, "--timeout", "8"), env=env, timeout=60)
    took = time.monotonic() - started
    assert hung(tmp_path), "the store really hung"
    assert out.returncode == 3, out
    assert took < 18 + 5, f"{took:.1f} s: the bound is 18 s, and the interpreter's start"
    assert "10 s later it was still recording the outcome on the store at" in out.stderr
    assert installed(image.site_packages)["alpha"] == "1.0"
    assert installed(image.site_packages)["image"] == "2.0"


def test_a_store_that_stops_answering_when_nothing_was_installed_exits_1(
    tmp_path: Path, image: Venv, wheels: Path, shim: Path
) -> None:
    """Everything recorded is in place, and restore only clears the count of an earlier
    failure: a store that stops answering then ends it with exit 1 (nothing changed),
    not 3, which says packages were installed."""
    config = make_config(tmp_path, image, wheels)
    put_manifest(config.store, config.key, user_delta(env_of(config)))
    first = pkgckpt(*cli_args(config), env=hermetic(tmp_path))
    assert first.returncode == 0, first
    failed = Failing(name="alpha", version="1.0", reason="the index was down")
    (delta,) = user_delta(env_of(config)).environments
    body = Body(environments=(msgspec.structs.replace(delta, failing=(failed,)),))
    put_manifest(config.store, config.key, body, generation=2)
    env = hanging(tmp_path, shim, f"{glob_escape(config.store / config.key)}/.manifest*")
    out = pkgckpt(*cli_args(config, "--timeout", "2"), env=env, timeout=60)
    assert hung(tmp_path), "the store really hung"
    assert out.returncode == 1, out
    assert "10 s later it was still recording the outcome on the store at" in out.stderr


def test_revert_then_restore_is_bounded_by_the_timeout_too(
    tmp_path: Path, image: Venv, wheels: Path, shim: Path
) -> None:
    """`revert --restore` takes restore's `--timeout`, and with it the bound: the store
    stops answering when its restore records a failure, and it ends within the timeout
    and 10 s, exit 3 (the revert is written, the restore did not finish)."""
    config = make_config(tmp_path, image, wheels)
    ghost = Package(name="ghost", version="9.9")  # on no index: its install fails
    init_store(config.store)
    store = Store(config.store, config.key)
    store.commit(user_delta(env_of(config), ghost))
    store.commit(user_delta(env_of(config)))
    # The revert's commit (generation 3) opens its two temp files; the third is restore's.
    env = hanging(tmp_path, shim, f"{glob_escape(config.store / config.key)}/.manifest*", nth=3)
    revert = ["revert", "1", "--yes", *cli_args(config, "--timeout", "4")[1:], "--restore"]
    started = time.monotonic()
    out = pkgckpt(*revert, env=env, timeout=60)
    took = time.monotonic() - started
    assert hung(tmp_path), "the store really hung"
    assert out.returncode == 3, out
    assert took < 14 + 5, f"{took:.1f} s"
    assert "10 s later it was still recording the outcome on the store at" in out.stderr
    assert installed(image.site_packages)["alpha"] == "1.0"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_a_restore_stopped_by_a_signal_takes_its_installer_down(
    signum: signal.Signals, tmp_path: Path, image: Venv, wheels: Path
) -> None:
    """timeout(1) stops a restore with SIGTERM: the installer, in a session of its own,
    does not get the signal and must not go on installing into the opening session. The
    exit code is a killed process's, SIGINT's too (it was 1, "nothing was changed", after
    part of the plan may have been installed)."""
    pidfile = tmp_path / "build.pid"
    slow_sdist("hangs", "1.0", slow := tmp_path / "slow", pidfile)
    config = make_config(tmp_path, image, wheels)
    put_manifest(
        config.store, config.key, user_delta(env_of(config), Package(name="hangs", version="1.0"))
    )
    argv = cli_args(config, "--installer", "pip", "--find-links", str(slow))
    (tmp := tmp_path / "tmp").mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-m", "pkgckpt", *argv], env={**hermetic(tmp_path), "TMPDIR": str(tmp)},
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not pidfile.exists() or not pidfile.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0]
            time.sleep(0.05)
        build = int(pidfile.read_text())
        proc.send_signal(signum)
        output = proc.communicate(timeout=30)[0]
        assert proc.returncode == 128 + signum, output
        assert _gone(build, 10), "the build went on after the restore was stopped"
        assert not list(tmp.glob("pkgckpt-child-*")), "the installer's private directory stayed"
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("tool", ["uv", "pip"])
def test_command_reads_a_relative_find_links_from_where_it_started(
    tool: str, tmp_path: Path, image: Venv, wheels: Path
) -> None:
    """A relative `--find-links DIR` names DIR in the directory the command started in,
    although the installers run in a private, empty one."""
    config = make_config(tmp_path, image, wheels)
    put_manifest(config.store, config.key, user_delta(env_of(config)))
    argv = cli_args(config, "--installer", tool)
    argv[argv.index("--find-links") + 1] = wheels.name
    done = subprocess.run(
        [sys.executable, "-m", "pkgckpt", *argv],
        capture_output=True, text=True, env=hermetic(tmp_path), cwd=wheels.parent,
        stdin=subprocess.DEVNULL, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert installed(image.site_packages)["alpha"] == "1.0"


@pytest.mark.parametrize("tool", ["uv", "pip"])
def test_command_installs_from_a_find_links_url_in_the_environment(
    tool: str, tmp_path: Path, image: Venv, wheels: Path
) -> None:
    """PKGCKPT_FIND_LINKS=http://host:port/ reaches the installer whole: it was cut at
    its colons into paths that name nothing, and the restore failed."""
    config = make_config(tmp_path, image, wheels)
    put_manifest(config.store, config.key, user_delta(env_of(config)))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(wheels))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/"
        argv = [a for a in cli_args(config, "--installer", tool) if a != str(wheels)]
        argv.remove("--find-links")
        done = pkgckpt(*argv, env={**hermetic(tmp_path), "PKGCKPT_FIND_LINKS": url})
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    assert done.returncode == 0, done.stdout + done.stderr
    assert installed(image.site_packages)["alpha"] == "1.0"


def test_command_restores_then_says_nothing_to_do(
    tmp_path: Path, image: Venv, wheels: Path
) -> None:
    """`pkgckpt restore` installs, exits 0; the second time it reports nothing to do."""
    config = make_config(tmp_path, image, wheels)
    put_manifest(config.store, config.key, user_delta(env_of(config)))
    env = hermetic(tmp_path)
    first = pkgckpt(*cli_args(config), env=env)
    assert first.returncode == 0, first.stderr
    assert installed(image.site_packages)["alpha"] == "1.0"
    second = pkgckpt(*cli_args(config), env=env)
    assert second.returncode == 0 and "Nothing to restore" in second.stdout + second.stderr


def test_command_dry_run_json_parses_and_changes_nothing(
    tmp_path: Path, image: Venv, wheels: Path
) -> None:
    """`--dry-run --json` prints the plan as JSON and installs nothing."""
    config = make_config(tmp_path, image, wheels)
    put_manifest(config.store, config.key, user_delta(env_of(config)))
    out = pkgckpt(*cli_args(config, "--dry-run", "--json"), env=hermetic(tmp_path))
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["dry_run"] is True
    assert [s["name"] for s in data["plan"]["environments"][0]["install"]] == [
        "alpha",
        "beta",
        "image",
    ]
    assert installed(image.site_packages) == IMAGE


def test_command_partial_restore_exits_3_and_names_the_failure(
    tmp_path: Path, image: Venv, wheels: Path
) -> None:
    """A failing package makes the command exit 3, name it, and still install the rest."""
    config = make_config(tmp_path, image, wheels)
    put_manifest(
        config.store, config.key, user_delta(env_of(config), Package(name="ghost", version="9.9"))
    )
    out = pkgckpt(*cli_args(config, "--json"), env=hermetic(tmp_path))
    assert out.returncode == 3, out.stderr
    assert "Traceback" not in out.stderr
    data = json.loads(out.stdout)
    assert [f["name"] for f in data["environments"][0]["failed"]] == ["ghost"]
    assert installed(image.site_packages)["alpha"] == "1.0"


def shared_module_wheel(name: str, version: str, outdir: Path, text: str) -> Path:
    """A wheel of distribution `name` whose code is the import package `cv` (like opencv-*)."""
    info = f"{name}-{version}.dist-info"
    files = {
        "cv/__init__.py": text.encode(),
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = [
        f"{p},sha256={base64.urlsafe_b64encode(hashlib.sha256(d).digest()).rstrip(b'=').decode()},"
        f"{len(d)}"
        for p, d in files.items()
    ]
    files[f"{info}/RECORD"] = ("\n".join([*record, f"{info}/RECORD,,"]) + "\n").encode()
    path = outdir / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        for p, d in files.items():
            zf.writestr(p, d)
    return path


@pytest.mark.parametrize("tool", ["uv", "pip"])
def test_replacing_a_package_that_shares_files_keeps_the_new_files(
    tool: str, tmp_path: Path, wheels: Path
) -> None:
    """Removals run first, so removing the old package cannot delete the new one's files."""
    local = tmp_path / "cv-wheels"
    local.mkdir()
    shared_module_wheel("oldcv", "1.0", local, "WHO = 'old'\n")
    shared_module_wheel("newcv", "1.0", local, "WHO = 'new'\n")
    venv = make_venv(tmp_path / "venv", with_pip=False)
    config = make_config(tmp_path, venv, wheels, installer=tool, find_links=(str(local),))
    image_env = Environment(kind="python", path=str(venv.prefix))
    assert (
        PythonInstaller(image_env, config)
        .install([Package(name="oldcv", version="1.0")], reinstall=(), deadline=Deadline(60))
        .ok
    )
    body = Body(
        environments=(
            Delta(
                env=env_of(config),
                added=(Package(name="newcv", version="1.0"),),
                removed=(Package(name="oldcv", version="1.0"),),
            ),
        )
    )
    put_manifest(config.store, config.key, body)
    restore.run(config)
    assert installed(venv.site_packages) == {"newcv": "1.0"}
    assert (venv.site_packages / "cv" / "__init__.py").read_text() == "WHO = 'new'\n"
