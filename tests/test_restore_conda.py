"""Restoring conda packages: real .conda packages from a local channel, real prefixes
(py-rattler), the real `pkgckpt restore` command.

No mamba, micromamba or conda can be installed on the test machine, so the client restore
finds on PATH is `conda_kit`'s thin shim over py-rattler. It accepts exactly the command
line of the mamba/conda client (and refuses any other), so these tests check that line."""

from __future__ import annotations

import functools
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any, cast

import msgspec
import pytest
from conda_kit import (
    CondaPkg,
    build_conda,
    client_calls,
    conda_client,
    conda_install,
    conda_remove,
    index,
)
from restore_kit import hermetic, installed, isolated, pkgckpt, put_manifest  # noqa: F401
from wheelhouse import Dist, build_wheel, make_venv

from pkgckpt.checkpoint import Observation, Tracker
from pkgckpt.manifest import (
    Baseline,
    Body,
    Delta,
    Environment,
    Inventory,
    Manifest,
    Package,
    image_identity,
)
from pkgckpt.restore import _conda_rebase
from pkgckpt.scan.conda import CondaScanner
from pkgckpt.validate import conda_problem

PACKAGES = [
    CondaPkg("tiny", "1.0"),
    CondaPkg("tiny", "2.0", build="h1_0"),
    CondaPkg("tiny", "3.0", build="h2_0"),
    CondaPkg("dep", "1.0"),
    CondaPkg("top", "1.0", depends=("dep",)),
    CondaPkg("extra", "1.0"),
]


@pytest.fixture(scope="module")
def channel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    ch = tmp_path_factory.mktemp("channel")
    for pkg in PACKAGES:
        build_conda(pkg, ch)
    index(ch)
    return ch


def conda_pkg(name: str, version: str, build: str, channel: Path) -> Package:
    return Package(name=name, version=version, build=build, channel=f"file://{channel}",
                   installer="conda")  # fmt: skip


def image(tmp_path: Path, channel: Path, python: bool = False) -> Path:
    """The image's conda prefix (tiny 1.0 and dep), a real venv beneath when `python`."""
    prefix = tmp_path / "env"
    if python:
        make_venv(prefix, with_pip=False)
    conda_install(prefix, channel, "tiny=1.0", "dep", cache=tmp_path / "cache")
    return prefix


def conda_state(prefix: Path) -> dict[str, str]:
    found = CondaScanner(prefix / "conda-meta").scan().packages
    return {n: f"{p.version}={p.build}" for n, p in found.items()}


def restore_env(tmp_path: Path, channel: Path, client: str | None = "mamba") -> dict[str, str]:
    env = hermetic(tmp_path)
    bindir = tmp_path / "bin"
    if client is not None:
        conda_client(bindir, client, tmp_path / "client.log")
    # The shim's directory and the test venv's (pip, uv); no other conda client is found.
    env["PATH"] = os.pathsep.join(
        [str(bindir), str(Path(sys.executable).parent), "/usr/bin", "/bin"]
    )
    config = tmp_path / "config" / "pkgckpt" / "config.toml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(f'conda_channels = ["file://{channel}"]\n')
    return env


def run_restore(tmp_path: Path, env: dict[str, str], prefix: Path, *extra: str) -> tuple[int, str]:
    out = pkgckpt("restore", "--store", str(tmp_path / "store"), "--key", "k",
                  "--env", str(prefix), *extra, env=env)  # fmt: skip
    return out.returncode, out.stdout + out.stderr


def test_restore_installs_exact_specs_from_configured_channels(
    tmp_path: Path, channel: Path
) -> None:
    """Recorded conda packages come back at their version and build, with one client call
    whose channels are the configured ones and which solves no dependencies."""
    prefix = image(tmp_path, channel)
    conda = Environment(kind="conda", path=str(prefix))
    put_manifest(tmp_path / "store", "k", Body.of([Delta(
        env=conda,
        added=(conda_pkg("top", "1.0", "h0_0", channel),),
        changed=(conda_pkg("tiny", "2.0", "h1_0", channel),),
    )]))  # fmt: skip
    env = restore_env(tmp_path, channel)
    code, out = run_restore(tmp_path, env, prefix)
    assert code == 0, out
    assert conda_state(prefix) == {"tiny": "2.0=h1_0", "dep": "1.0=h0_0", "top": "1.0=h0_0"}
    chan = f"file://{channel}"
    assert client_calls(tmp_path / "client.log") == [
        ["mamba", "install", "--prefix", str(prefix), "--yes", "--override-channels",
         "--channel", chan, "--no-deps", "--", f"{chan}::tiny=2.0=h1_0", f"{chan}::top=1.0=h0_0"],
    ]  # fmt: skip
    again, out = run_restore(tmp_path, env, prefix)
    assert again == 0 and "Nothing to restore" in out
    assert len(client_calls(tmp_path / "client.log")) == 1


def test_restore_removes_with_the_same_client(tmp_path: Path, channel: Path) -> None:
    """An image package the user removed is removed again, by the client, and only it."""
    prefix = image(tmp_path, channel)
    conda = Environment(kind="conda", path=str(prefix))
    put_manifest(tmp_path / "store", "k", Body.of([
        Delta(env=conda, removed=(conda_pkg("dep", "1.0", "h0_0", channel),)),
    ]))  # fmt: skip
    env = restore_env(tmp_path, channel, client="micromamba")
    code, out = run_restore(tmp_path, env, prefix)
    assert code == 0, out
    assert conda_state(prefix) == {"tiny": "1.0=h0_0"}
    assert client_calls(tmp_path / "client.log") == [
        ["micromamba", "remove", "--prefix", str(prefix), "--yes", "--force", "--", "dep"],
    ]


def test_on_a_new_image_what_it_moved_under_is_held_back(tmp_path: Path, channel: Path) -> None:
    """Recorded on an image of tiny 1.0 and dep: tiny upgraded to 2.0, dep removed. The new
    image ships tiny 3.0, dep, and top, which needs dep. conda's records keep no
    dependencies, so restore neither puts tiny 2.0 over 3.0 with --no-deps nor removes
    dep with --force from under top: both are held back, saying why (exit 3), and the
    client is not run. On the recorded image the same record is applied."""
    prefix, env = moved_under(tmp_path, channel, extra=False)
    old = tmp_path / "old"
    code, out = run_restore(tmp_path, env, prefix)
    assert code == 3, out
    assert "held back: the new image ships tiny 3.0" in out, out
    assert "held back: the new image ships it, and may need it" in out, out
    assert conda_state(prefix) == {"tiny": "3.0=h2_0", "dep": "1.0=h0_0", "top": "1.0=h0_0"}
    assert client_calls(tmp_path / "client.log") == []
    shutil.rmtree(prefix)
    shutil.copytree(old, prefix, symlinks=True)
    shutil.rmtree(env["XDG_RUNTIME_DIR"])  # a new container: no baseline of the new image
    code, out = run_restore(tmp_path, env, prefix)
    assert code == 0, out
    assert conda_state(prefix) == {"tiny": "2.0=h1_0"}, out


def moved_under(
    tmp_path: Path, channel: Path, *, extra: bool = True
) -> tuple[Path, dict[str, str]]:
    """A prefix of the new image (tiny 3.0, dep, top, which needs dep) and a record taken
    on the old one (tiny 1.0, dep, at tmp_path/old): extra added (unless not `extra`), tiny
    upgraded to 2.0, dep removed. The image moved under the upgrade and the removal, not
    under the addition."""
    old = tmp_path / "old"
    conda_install(old, channel, "tiny=1.0", "dep", cache=tmp_path / "cache")
    was = image_identity(CondaScanner(old / "conda-meta").scan().packages.values())
    prefix = tmp_path / "env"
    conda_install(prefix, channel, "tiny=3.0", "dep", "top", cache=tmp_path / "cache")
    conda = Environment(kind="conda", path=str(prefix))
    upgraded = msgspec.structs.replace(conda_pkg("tiny", "2.0", "h1_0", channel), replaced="1.0")
    added = (conda_pkg("extra", "1.0", "h0_0", channel),) if extra else ()
    put_manifest(tmp_path / "store", "k", Body.of([Delta(
        env=conda, added=added, changed=(upgraded,),
        removed=(conda_pkg("dep", "1.0", "h0_0", channel),), image=was,
    )]))  # fmt: skip
    return prefix, restore_env(tmp_path, channel)


def held_back(env_json: dict[str, Any]) -> dict[str, str]:
    """name -> version of what one environment of a plan or status holds back."""
    rebase = env_json["rebase"]
    assert rebase is not None, env_json
    return {d["name"]: d["version"] for d in rebase["decisions"] if d["action"] == "held-back"}


def test_a_held_conda_change_is_reported_as_held_back_not_failed(
    tmp_path: Path, channel: Path
) -> None:
    """What the new image moved under is held back as a Python change is: the dry run,
    the report, `--json` (the rebase's decisions, not a failure) and the summary say so
    and count it as held back, and the restore exits 3; the addition is installed."""
    prefix, env = moved_under(tmp_path, channel)
    code, out = run_restore(tmp_path, env, prefix, "--dry-run")
    assert code == 0, out
    assert "tiny 2.0 held back: the new image ships tiny 3.0" in out, out
    assert "dep 1.0 held back: the new image ships it" in out, out
    assert "install extra 1.0" in out and "install tiny" not in out and "cannot" not in out, out
    code, out = run_restore(tmp_path, env, prefix, "--dry-run", "--json")
    assert code == 0, out
    (planned,) = json.loads(out)["plan"]["environments"]
    assert planned["blocked"] == [] and held_back(planned) == {"tiny": "2.0", "dep": "1.0"}

    code, out = run_restore(tmp_path, env, prefix)
    assert code == 3, out
    assert "installed 1, removed 0, failed 0" in out and "failed to" not in out, out
    assert "Restore incomplete: 2 package(s) held back by the new image." in out, out
    assert "restore incomplete: 2 package(s) held back by the new image (" in out, out
    assert conda_state(prefix) == {
        "tiny": "3.0=h2_0", "dep": "1.0=h0_0", "top": "1.0=h0_0", "extra": "1.0=h0_0"
    }  # fmt: skip
    metrics = pkgckpt("status", "--prometheus", "--store", str(tmp_path / "store"),
                      "--key", "k", "--env", str(prefix), env=env)  # fmt: skip
    outcomes = 'pkgckpt_restore_packages{key="k",outcome="%s"} %d'
    assert outcomes % ("held_back", 2) in metrics.stdout, metrics.stdout
    assert outcomes % ("failed", 0) in metrics.stdout, metrics.stdout

    conda_remove(prefix, "extra", cache=tmp_path / "cache")
    code, out = run_restore(tmp_path, env, prefix, "--json")
    assert code == 3, out
    report = json.loads(out[: out.rindex("}") + 1])
    (planned,) = report["plan"]["environments"]
    assert planned["blocked"] == [] and held_back(planned) == {"tiny": "2.0", "dep": "1.0"}
    (done,) = report["environments"]
    assert done["failed"] == [] and done["installed"] == ["extra==1.0"], done
    chan = f"file://{channel}"
    assert client_calls(tmp_path / "client.log") == 2 * [
        ["mamba", "install", "--prefix", str(prefix), "--yes", "--override-channels",
         "--channel", chan, "--no-deps", "--", f"{chan}::extra=1.0=h0_0"],
    ]  # fmt: skip


def test_status_says_a_conda_change_is_held_back_not_restored_or_failing(
    tmp_path: Path, channel: Path
) -> None:
    """`pkgckpt status` reads a conda record against the new image as restore does: what
    restore holds back is listed as held back, not as something restore would do, and
    after a restore it is not a failing package."""
    prefix, env = moved_under(tmp_path, channel)

    def status() -> dict[str, Any]:
        out = pkgckpt("status", "--json", "--store", str(tmp_path / "store"), "--key", "k",
                      "--env", str(prefix), env=env)  # fmt: skip
        assert out.returncode == 0, out.stderr
        found = json.loads(out.stdout)["environments"]
        (conda,) = (e for e in found if e["env"]["kind"] == "conda")
        return cast("dict[str, Any]", conda)

    seen = status()
    assert held_back(seen) == {"tiny": "2.0", "dep": "1.0"}
    assert [c["name"] for c in seen["unrestored"]] == ["extra"], seen
    code, out = run_restore(tmp_path, env, prefix)
    assert code == 3, out
    seen = status()
    assert held_back(seen) == {"tiny": "2.0", "dep": "1.0"}
    assert seen["unrestored"] == [] and seen["failing"] == [], seen
    text = pkgckpt("status", "--store", str(tmp_path / "store"), "--key", "k",
                   "--env", str(prefix), env=env).stdout  # fmt: skip
    assert "tiny 2.0 held back: the new image ships tiny 3.0" in text, text
    assert "failing" not in text and "restore  " not in text, text


def held(delta: Delta, image: list[Package], live: dict[str, Package]) -> list[str]:
    """The names restore holds back of `delta` on `image` with `live` installed."""
    rebase = _conda_rebase(delta, image, live)
    return [d.name for d in rebase.held_back()] if rebase is not None else []


def test_a_held_conda_removal_stays_held_once_the_daemon_writes_on_the_new_image() -> None:
    """dep's removal, recorded on an image without top, is held back on the new image
    (which ships top, needing dep). The daemon then records an install there: the record
    it writes stays relative to the recorded image, so the next restore still holds
    dep's removal instead of running `remove --force` from under top; once the user
    removes dep by hand, nothing is held."""
    conda = Environment(kind="conda", path="/opt/conda/envs/e")
    pkg = functools.partial(Package, installer="conda", build="h0_0")
    old = [pkg(name="tiny", version="1.0"), pkg(name="dep", version="1.0")]
    new = [*old, pkg(name="top", version="1.0")]
    record = Manifest(generation=1, body=Body.of([Delta(
        env=conda, removed=(pkg(name="dep", version="1.0"),), image=image_identity(old),
    )]))  # fmt: skip
    live = {p.name: p for p in new}
    assert held(record.body.deltas()[0], new, live) == ["dep"]
    tracker = Tracker(Baseline.of([Inventory(env=conda, packages=tuple(new))]), record)
    tracker.observe(conda, Observation(live))
    extra = pkg(name="extra", version="1.0")
    tracker.observe(conda, Observation({**live, "extra": extra}))
    (written,) = tracker.body().deltas()
    assert written.image == image_identity(old)
    assert held(written, new, {**live, "extra": extra}) == ["dep"]
    # Removed by hand on the new image: nothing left to hold back, nor to do.
    gone = {n: p for n, p in live.items() if n != "dep"}
    assert held(written, new, gone) == []


def test_a_conda_change_made_on_the_new_image_is_held_back_on_the_old_one() -> None:
    """The record stays relative to the old image on the new one (dep's removal is held
    back there), and the user upgrades tiny from the new image's 2.0 to 3.0. With the old
    image rolled back, the record names that image, but tiny's upgrade was made over 2.0,
    not over the 1.0 it ships: it is held back, not put over 1.0 unchecked. The removal,
    which the record cannot tell was made there, is kept (held back) too."""
    conda = Environment(kind="conda", path="/opt/conda/envs/e")
    pkg = functools.partial(Package, installer="conda", build="h0_0")
    old = [pkg(name="tiny", version="1.0"), pkg(name="dep", version="1.0")]
    new = [pkg(name="tiny", version="2.0"), pkg(name="dep", version="1.0"),
           pkg(name="top", version="1.0")]  # fmt: skip
    record = Manifest(generation=1, body=Body.of([Delta(
        env=conda, removed=(pkg(name="dep", version="1.0"),), image=image_identity(old),
    )]))  # fmt: skip
    live = {p.name: p for p in new}
    tracker = Tracker(Baseline.of([Inventory(env=conda, packages=tuple(new))]), record)
    tracker.observe(conda, Observation(live))
    tracker.observe(conda, Observation({**live, "tiny": pkg(name="tiny", version="3.0")}))
    (written,) = tracker.body().deltas()
    assert (written.image, written.mixed) == (image_identity(old), True)
    assert [(p.name, p.replaced) for p in written.changed] == [("tiny", "2.0")]
    assert held(written, old, {p.name: p for p in old}) == ["dep", "tiny"]


def test_micromamba_gets_the_same_command_line(tmp_path: Path, channel: Path) -> None:
    """With only micromamba installed, it is the client, called as mamba would be."""
    prefix = image(tmp_path, channel)
    conda = Environment(kind="conda", path=str(prefix))
    put_manifest(tmp_path / "store", "k", Body.of([
        Delta(env=conda, changed=(conda_pkg("tiny", "2.0", "h1_0", channel),)),
    ]))  # fmt: skip
    env = restore_env(tmp_path, channel, client="micromamba")
    code, out = run_restore(tmp_path, env, prefix)
    assert code == 0, out
    chan = f"file://{channel}"
    assert client_calls(tmp_path / "client.log") == [
        ["micromamba", "install", "--prefix", str(prefix), "--yes", "--override-channels",
         "--channel", chan, "--no-deps", "--", f"{chan}::tiny=2.0=h1_0"],
    ]  # fmt: skip
    assert conda_state(prefix)["tiny"] == "2.0=h1_0"


def test_without_a_client_conda_packages_fail_and_pip_packages_install(
    tmp_path: Path, channel: Path
) -> None:
    """No conda client: exit 3, each conda package named with the reason; pip's package in
    the same prefix is installed all the same."""
    prefix = image(tmp_path, channel, python=True)
    wheels = tmp_path / "wheels"
    build_wheel(Dist("alpha", "1.0"), wheels)
    site = next((prefix / "lib").glob("python3*/site-packages"))
    put_manifest(tmp_path / "store", "k", Body.of([
        Delta(env=Environment(kind="conda", path=str(prefix)),
              changed=(conda_pkg("tiny", "2.0", "h1_0", channel),)),
        Delta(env=Environment(kind="python", path=str(prefix)),
              added=(Package(name="alpha", version="1.0"),)),
    ]))  # fmt: skip
    env = restore_env(tmp_path, channel, client=None)
    code, out = run_restore(tmp_path, env, prefix, "--no-index", "--find-links", str(wheels))
    assert code == 3, out
    assert "no conda client: none of mamba, micromamba, conda" in out
    assert installed(site) == {"alpha": "1.0"}
    assert conda_state(prefix)["tiny"] == "1.0=h0_0"


def test_a_channel_that_is_not_configured_is_not_used(tmp_path: Path, channel: Path) -> None:
    """A record from a channel outside conda_channels is reported, never fetched from."""
    prefix = image(tmp_path, channel)
    foreign = Package(name="tiny", version="2.0", build="h1_0", channel="evil-channel")
    put_manifest(tmp_path / "store", "k", Body.of([
        Delta(env=Environment(kind="conda", path=str(prefix)), changed=(foreign,)),
    ]))  # fmt: skip
    env = restore_env(tmp_path, channel)
    code, out = run_restore(tmp_path, env, prefix, "--dry-run", "--json")
    assert code == 0, out
    (plan,) = json.loads(out)["plan"]["environments"]
    (blocked,) = plan["blocked"]
    assert "evil-channel is not among the configured conda_channels" in blocked["message"]
    code, out = run_restore(tmp_path, env, prefix)
    assert code == 3, out
    assert client_calls(tmp_path / "client.log") == []


MIRROR = "http://conda-mirror.corp.example/conda-forge"
"""An internal plain-http mirror, as conda records it (the subdir taken off)."""


def test_a_package_from_an_http_mirror_is_reported_and_the_rest_restored(
    tmp_path: Path, channel: Path
) -> None:
    """A record from a plain-http channel that is not configured leaves only that package
    out, with the reason (exit 3): the configured channel's package and pip's package in
    the same prefix are restored, and the client is given the configured channel only."""
    prefix = image(tmp_path, channel, python=True)
    wheels = tmp_path / "wheels"
    build_wheel(Dist("alpha", "1.0"), wheels)
    site = next((prefix / "lib").glob("python3*/site-packages"))
    mirrored = Package(name="tiny", version="2.0", build="h1_0", channel=MIRROR,
                       installer="conda")  # fmt: skip
    put_manifest(tmp_path / "store", "k", Body.of([
        Delta(env=Environment(kind="conda", path=str(prefix)),
              added=(conda_pkg("top", "1.0", "h0_0", channel),), changed=(mirrored,)),
        Delta(env=Environment(kind="python", path=str(prefix)),
              added=(Package(name="alpha", version="1.0"),)),
    ]))  # fmt: skip
    env = restore_env(tmp_path, channel)
    code, out = run_restore(tmp_path, env, prefix, "--no-index", "--find-links", str(wheels))
    assert code == 3, out
    assert f"its channel {MIRROR} is not among the configured conda_channels" in out
    chan = f"file://{channel}"
    assert client_calls(tmp_path / "client.log") == [
        ["mamba", "install", "--prefix", str(prefix), "--yes", "--override-channels",
         "--channel", chan, "--no-deps", "--", f"{chan}::top=1.0=h0_0"],
    ]  # fmt: skip
    assert conda_state(prefix) == {"tiny": "1.0=h0_0", "dep": "1.0=h0_0", "top": "1.0=h0_0"}
    assert installed(site) == {"alpha": "1.0"}


def test_a_recorded_http_channel_selects_a_configured_one() -> None:
    """Configured in conda_channels, an http mirror is the channel of the spec: the
    record's channel is well-formed and is looked up, not passed on."""
    from pkgckpt.config import load
    from pkgckpt.restore.conda import CondaInstaller

    recorded = Package(name="tiny", version="2.0", build="h1_0", channel=MIRROR)
    assert conda_problem(recorded) is None
    config = load({"conda_channels": (MIRROR,), "conda_client": ("/bin/true",)}, environ={})
    installer = CondaInstaller(Environment(kind="conda", path="/opt/conda"), config)
    assert installer.blocked(recorded) is None
    assert installer.spec(recorded) == f"{MIRROR}::tiny=2.0=h1_0"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("name", "--channel"),
        ("name", "Numpy"),
        ("version", "1.0=h0"),
        ("version", ">=1"),
        ("build", "h0 --force"),
        ("build", "*"),
        ("channel", "a b"),
        ("channel", "--override-channels"),
        ("channel", "http://mirror/x\n"),
    ],
)
def test_hostile_conda_records_are_refused(field: str, value: str) -> None:
    """Names, versions, build strings and channels that a spec would misread are refused."""
    good = {"name": "tiny", "version": "1.0", "build": "h0_0", "channel": "conda-forge"}
    assert conda_problem(Package(**good)) is None  # type: ignore[arg-type]
    assert conda_problem(Package(**{**good, field: value})) is not None  # type: ignore[arg-type]


def test_a_hostile_conda_manifest_installs_nothing(tmp_path: Path, channel: Path) -> None:
    """One bad conda record refuses the whole manifest (exit 1) before any client runs."""
    prefix = image(tmp_path, channel)
    bad = Package(name="tiny", version="2.0", build="h1_0 --override-channels", channel="x")
    put_manifest(tmp_path / "store", "k", Body.of([
        Delta(env=Environment(kind="conda", path=str(prefix)), changed=(bad,)),
    ]))  # fmt: skip
    env = restore_env(tmp_path, channel)
    code, out = run_restore(tmp_path, env, prefix)
    assert code == 1 and "is not a valid conda build string" in out, out
    assert client_calls(tmp_path / "client.log") == []
