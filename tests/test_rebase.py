"""Restore onto a new image: image v1 and v2 as real venvs at the same prefix, each with
its baseline file, the user's changes made with uv under the real daemon on v1, then
`pkgckpt restore` on v2 (DESIGN: invariant 10; restore/rebase.py)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from daemon_kit import World, eventually, uv_install, uv_uninstall
from restore_kit import put_manifest
from wheelhouse import Dist, add_build_backend, build_c_sdist, build_wheel

from pkgckpt import manifest
from pkgckpt.config import Config
from pkgckpt.inventory import targets
from pkgckpt.manifest import Body, Delta, Package

pytestmark = pytest.mark.slow

V1 = [
    "evalimg==1.0",
    "evaldep==2.0",
    "upg==1.0",
    "upg2==1.0",
    "down==2.0",
    "gone==1.0",
    "needed==1.0",
    "dropped==1.0",
    "libold==1.0",
]
"""Image v1. Every row of the rebase table is one package of this scenario."""
V2 = [
    "evalimg==2.0",  # requires evaldep>=2.0 and needed
    "evaldep==2.0",
    "catchup==1.1",
    "olderimg==1.0",
    "upg==1.2",
    "upg2==1.1",
    "down==2.1",
    "gone==1.1",
    "needed==1.0",
]
"""Image v2: no dropped, no libold (userapp's dependency), no newpkg."""
USER = [
    "newpkg==1.0",  # added, v2 ships none: install
    "catchup==1.0",  # added, v2 ships 1.1: superseded
    "olderimg==2.0",  # added, v2 ships 1.0: install (a change now)
    "upg==1.1",  # upgrade 1.0 -> 1.1, v2 ships 1.2: superseded
    "upg2==1.2",  # upgrade 1.0 -> 1.2, v2 ships 1.1: install
    "down==1.0",  # downgrade 2.0 -> 1.0, v2 ships 2.1: install (nothing needs down)
    "evaldep==1.0",  # downgrade 2.0 -> 1.0, v2's evalimg needs >=2.0: held back
    "userapp==1.0",  # needs libold, which v2 no longer ships: the installer fetches it
]
REMOVED = [
    "gone",  # v2 ships 1.1, nothing needs it: removed
    "needed",  # v2's evalimg requires it: kept, held back
    "dropped",  # v2 ships none: nothing to do
]


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every version of every package of the scenario, as wheels built here."""
    out = tmp_path_factory.mktemp("rebase-wheels")
    dists = [
        Dist("evalimg", "1.0"),
        Dist("evalimg", "2.0", requires=["evaldep>=2.0", "needed"]),
        Dist("evalimg", "3.0"),
        *(Dist("evaldep", v) for v in ("1.0", "2.0", "2.1")),
        *(Dist(n, v) for n in ("upg", "upg2") for v in ("1.0", "1.1", "1.2")),
        *(Dist("down", v) for v in ("1.0", "2.0", "2.1")),
        *(Dist("gone", v) for v in ("1.0", "1.1")),
        *(Dist("catchup", v) for v in ("1.0", "1.1")),
        *(Dist("olderimg", v) for v in ("1.0", "2.0")),
        Dist("needed", "1.0"),
        Dist("dropped", "1.0"),
        Dist("libold", "1.0"),
        Dist("newpkg", "1.0"),
        Dist("userapp", "1.0", requires=["libold>=1.0"]),
        Dist("pinsdown", "1.0", requires=["down<2.1"]),
        Dist("pinsupg", "1.0", requires=["upg==1.1"]),
        Dist("needsnew", "1.0", requires=["evalimg>=2.0"]),
    ]
    for dist in dists:
        build_wheel(dist, out)
    return out


@dataclass
class Scenario:
    world: World
    wheels: Path
    prefix: Path
    installer: str = "auto"

    @property
    def python(self) -> Path:
        return self.prefix / "bin" / "python"

    def image(self, python: str, reqs: list[str], name: str) -> Path:
        """A new container: the venv rebuilt at the same prefix with `reqs`, its baseline
        taken to `name`, an empty runtime directory."""
        shutil.rmtree(self.prefix, ignore_errors=True)
        shutil.rmtree(self.world.runtime, ignore_errors=True)
        subprocess.run(
            [python, "-m", "venv", "--without-pip", str(self.prefix)],
            check=True, capture_output=True,
        )  # fmt: skip
        uv_install(self.python, self.wheels, *reqs, env=self.world.env)
        baseline = self.world.tmp / name
        made = self.world.pkgckpt("baseline", "--env", str(self.prefix), "--output", str(baseline))
        assert made.returncode == 0, made.stderr
        return baseline

    def flags(self, baseline: Path) -> list[str]:
        return [*self.world.flags(self.prefix), "--baseline", str(baseline)]

    def restore(self, baseline: Path, *extra: str) -> subprocess.CompletedProcess[str]:
        return self.world.pkgckpt(
            "restore", *self.flags(baseline), "--no-index", "--find-links", str(self.wheels),
            "--installer", self.installer, *extra, timeout=600,
        )  # fmt: skip

    def installed(self) -> dict[str, str]:
        out = subprocess.run(
            ["uv", "pip", "list", "--python", str(self.python), "--format", "json"],
            check=True, capture_output=True, text=True, env=self.world.env,
        )  # fmt: skip
        return {p["name"]: p["version"] for p in json.loads(out.stdout)}

    def check(self) -> subprocess.CompletedProcess[str]:
        """`pip check` of the environment (uv's, the venvs have no pip)."""
        return subprocess.run(
            ["uv", "pip", "check", "--python", str(self.python)],
            capture_output=True, text=True, env=self.world.env,
        )  # fmt: skip

    def user_changes(self, baseline: Path, installs: list[str], removes: list[str]) -> Delta:
        """The user's installs and uninstalls, made with uv under the real daemon."""
        daemon = self.world.daemon(*self.flags(baseline), "--quiet-ms", "100").start()
        try:
            if installs:
                uv_install(self.python, self.wheels, *installs, env=self.world.env)
            if removes:
                uv_uninstall(self.python, *removes, env=self.world.env)
            assert daemon.stop() == 0, daemon.output()
        finally:
            daemon.close()
        return self.world.delta()


def recorded_on_v1(tmp_path: Path, wheels: Path, python: str = sys.executable) -> Scenario:
    s = Scenario(World.make(tmp_path), wheels, tmp_path / "venv")
    b1 = s.image(python, V1, "b1.json")
    delta = s.user_changes(b1, USER, REMOVED)
    assert {p.name for p in delta.removed} == set(REMOVED)
    assert delta.image == manifest.image_identity(
        manifest.decode_baseline(b1.read_bytes()).environments[0].packages
    )
    changed = {p.name: p.replaced for p in delta.changed}
    assert changed == {"upg": "1.0", "upg2": "1.0", "down": "2.0", "evaldep": "2.0"}
    return s


HELD_DOWNGRADE = "evaldep 1.0 held back: evalimg 2.0 (image) requires evaldep>=2.0"
HELD_REMOVAL = "needed 1.0 held back: evalimg 2.0 (image) requires needed"


@pytest.mark.parametrize("installer", ["uv", "pip"])
def test_every_row_of_the_rebase_table_on_a_new_image(
    tmp_path: Path, wheels: Path, installer: str
) -> None:
    """On image v2, each recorded change gets the table's action; held-back ones are
    named with the requirement that blocked them, exit 3, and `pip check` is clean."""
    s = recorded_on_v1(tmp_path, wheels)
    s.installer = installer
    b2 = s.image(sys.executable, V2, "b2.json")

    dry = s.restore(b2, "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    (env_plan,) = json.loads(dry.stdout)["plan"]["environments"]
    rebase = env_plan["rebase"]
    assert rebase["image_old"] != rebase["image_new"]
    actions = {d["name"]: d["action"] for d in rebase["decisions"]}
    assert actions == {
        "newpkg": "install",
        "catchup": "superseded",
        "olderimg": "install",
        "upg": "superseded",
        "upg2": "install",
        "down": "install",
        "evaldep": "held-back",
        "userapp": "install",
        "gone": "remove",
        "needed": "held-back",
        "dropped": "nothing",
    }

    status = s.world.pkgckpt("status", *s.flags(b2), "--json")
    assert status.returncode == 0, status.stderr
    (shown,) = [e for e in json.loads(status.stdout)["environments"] if not e["env"].get("user")]
    assert {d["name"]: d["action"] for d in shown["rebase"]["decisions"]} == actions
    assert HELD_DOWNGRADE in s.world.pkgckpt("status", *s.flags(b2)).stdout

    done = s.restore(b2)
    assert done.returncode == 3, done.stdout + done.stderr
    assert HELD_DOWNGRADE in done.stdout and HELD_REMOVAL in done.stdout, done.stdout
    have = s.installed()
    assert {k: have.get(k) for k in ("newpkg", "catchup", "olderimg", "upg", "upg2")} == {
        "newpkg": "1.0",
        "catchup": "1.1",
        "olderimg": "2.0",
        "upg": "1.2",
        "upg2": "1.2",
    }
    assert (have["down"], have["evaldep"], have["needed"]) == ("1.0", "2.0", "1.0")
    assert "gone" not in have and "dropped" not in have
    assert (have["userapp"], have["libold"]) == ("1.0", "1.0"), "the dependency v2 dropped"
    check = s.check()
    assert check.returncode == 0, check.stdout + check.stderr

    # Nothing lost: the held-back and superseded entries stay recorded, marked.
    delta = s.world.delta()
    assert {p.name: p.version for p in delta.changed}["evaldep"] == "1.0"
    assert {p.name for p in delta.added} >= {"catchup", "newpkg"}
    assert {p.name for p in delta.removed} == set(REMOVED)
    marks = {r.name: r.state for r in delta.rebased}
    assert marks == {
        "evaldep": "held-back",
        "needed": "held-back",
        "catchup": "superseded",
        "upg": "superseded",
    }

    # No installer on PATH: the second restore must not need one.
    s.world.env["PATH"] = "/usr/bin:/bin"
    s.installer = "auto"
    again = s.restore(b2)
    assert again.returncode == 3, again.stdout + again.stderr
    assert again.stdout.startswith("Nothing to restore"), again.stdout
    assert HELD_DOWNGRADE in again.stdout
    s.world.env["PATH"] = os.environ["PATH"]
    assert s.installed() == have


def test_on_conflict_user_installs_the_users_choice_and_reports_what_breaks(
    tmp_path: Path, wheels: Path
) -> None:
    """`--on-conflict user`: the held-back downgrade and removal are carried out anyway,
    the broken requirements named, the rest as with the default."""
    s = recorded_on_v1(tmp_path, wheels)
    b2 = s.image(sys.executable, V2, "b2.json")
    done = s.restore(b2, "--on-conflict", "user")
    assert done.returncode == 0, done.stdout + done.stderr
    have = s.installed()
    assert have["evaldep"] == "1.0" and "needed" not in have
    assert (have["userapp"], have["libold"], have["upg"]) == ("1.0", "1.0", "1.2")
    assert "broken: evalimg 2.0 requires evaldep>=2.0" in done.stdout, done.stdout
    assert "broken: evalimg 2.0 requires needed" in done.stdout, done.stdout
    assert s.check().returncode != 0, "the user chose to break evalimg"


def test_what_on_conflict_user_forced_in_is_in_place_at_the_next_restore(
    tmp_path: Path, wheels: Path
) -> None:
    """pinsdown needs down<2.1; v2 ships down 2.1. `--on-conflict user` installs it,
    naming what breaks. The next restore, forced or not, has nothing to do: pinsdown is
    in place, its requirement unmet by the image's down, which installing it again would
    not change (it was installed again at every restore, and the default restore called
    it held back and exited 3)."""
    s = Scenario(World.make(tmp_path), wheels, tmp_path / "venv")
    b1 = s.image(sys.executable, ["down==2.0"], "b1.json")
    s.user_changes(b1, ["pinsdown==1.0"], [])
    b2 = s.image(sys.executable, ["down==2.1"], "b2.json")
    forced = s.restore(b2, "--on-conflict", "user")
    assert forced.returncode == 0, forced.stdout + forced.stderr
    assert "broken: pinsdown 1.0 requires down<2.1" in forced.stdout, forced.stdout
    for how in (["--on-conflict", "user"], []):
        again = s.restore(b2, *how)
        assert again.returncode == 0, again.stdout + again.stderr
        assert again.stdout.startswith("Nothing to restore"), again.stdout
        assert "pinsdown 1.0 held back" not in again.stdout, again.stdout
    assert s.installed() == {"down": "2.1", "pinsdown": "1.0"}


def test_a_superseded_version_brought_back_for_a_package_is_in_place_after(
    tmp_path: Path, wheels: Path
) -> None:
    """The user upgrades upg 1.0 -> 1.1 and installs pinsupg, which requires upg==1.1; v2
    ships upg 1.2, which supersedes 1.1, but pinsupg needs 1.1: the restore brings it
    back. The next restore and `status` find it in place, not "superseded" by a 1.2
    that is not installed."""
    s = Scenario(World.make(tmp_path), wheels, tmp_path / "venv")
    b1 = s.image(sys.executable, ["upg==1.0"], "b1.json")
    s.user_changes(b1, ["upg==1.1", "pinsupg==1.0"], [])
    b2 = s.image(sys.executable, ["upg==1.2"], "b2.json")
    done = s.restore(b2)
    assert done.returncode == 0, done.stdout + done.stderr
    assert s.installed() == {"upg": "1.1", "pinsupg": "1.0"}
    again = s.restore(b2)
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.startswith("Nothing to restore"), again.stdout
    assert "superseded upg" not in again.stdout, again.stdout
    status = s.world.pkgckpt("status", *s.flags(b2))
    assert "superseded upg" not in status.stdout, status.stdout
    assert s.installed() == {"upg": "1.1", "pinsupg": "1.0"}


def test_a_removal_that_a_restored_package_needs_is_held_back(tmp_path: Path, wheels: Path) -> None:
    """On v1 the user installs userapp and then uninstalls libold, which it requires. On
    v2, which ships libold and needs nothing of it, the installer would fetch libold back
    for userapp: the removal is held back, named with userapp's requirement, the same on
    the restore after, and `pip check` stays clean. `--on-conflict user` removes it after
    the install, so that it stays removed, names the requirement it breaks, and has
    nothing to do when run again."""
    s = Scenario(World.make(tmp_path), wheels, tmp_path / "venv")
    b1 = s.image(sys.executable, ["libold==1.0", "evalimg==1.0"], "b1.json")
    s.user_changes(b1, ["userapp==1.0"], ["libold"])
    v2 = ["libold==1.0", "evalimg==3.0"]
    b2 = s.image(sys.executable, v2, "b2.json")
    for who in ("restored", "installed"):
        done = s.restore(b2)
        assert done.returncode == 3, done.stdout + done.stderr
        held = f"libold 1.0 held back: userapp 1.0 ({who}) requires libold>=1.0"
        assert held in done.stdout and "failed" not in done.stdout.replace("failed 0", "")
        assert s.installed() == {"evalimg": "3.0", "libold": "1.0", "userapp": "1.0"}
        assert s.check().returncode == 0
    assert [p.name for p in s.world.delta().removed] == ["libold"], "still recorded"

    b2 = s.image(sys.executable, v2, "b2.json")
    forced = s.restore(b2, "--on-conflict", "user")
    assert forced.returncode == 0, forced.stdout + forced.stderr
    assert "broken: userapp 1.0 requires libold>=1.0" in forced.stdout, forced.stdout
    assert s.installed() == {"evalimg": "3.0", "userapp": "1.0"}
    # Run again, it has nothing to do: installing userapp "for its missing requirement"
    # fetched libold back, which the next forced restore removed, and so on.
    again = s.restore(b2, "--on-conflict", "user")
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.startswith("Nothing to restore"), again.stdout
    assert s.installed() == {"evalimg": "3.0", "userapp": "1.0"}


def test_same_image_restores_exact_pins_as_before(tmp_path: Path, wheels: Path) -> None:
    """The same image and interpreter: no rebase, every recorded change put back as it
    was (even the downgrade v2 would hold back), `pip freeze` as before."""
    s = recorded_on_v1(tmp_path, wheels)
    before = s.installed()
    b1 = s.image(sys.executable, V1, "b1.json")
    done = s.restore(b1, "--dry-run", "--json")
    (env_plan,) = json.loads(done.stdout)["plan"]["environments"]
    assert env_plan["rebase"] is None
    assert s.restore(b1).returncode == 0
    assert s.installed() == before


def test_a_daemon_on_the_new_image_keeps_what_was_held_back(tmp_path: Path, wheels: Path) -> None:
    """After the rebase, a daemon on v2 keeps the held-back and superseded entries (and
    their marks) until the user changes that package here; a later image that lifts the
    conflict gets the user's version back. The user's own install of a superseded
    version (upg 1.1, v2 ships 1.2) is a downgrade of v2's, restored by the next image."""
    s = recorded_on_v1(tmp_path, wheels)
    b2 = s.image(sys.executable, V2, "b2.json")
    assert s.restore(b2).returncode == 3
    recorded = s.world.delta()

    daemon = s.world.daemon(*s.flags(b2), "--quiet-ms", "100").start()
    try:
        uv_install(s.python, s.wheels, "upg2==1.1", env=s.world.env)  # the user's own change
        uv_install(s.python, s.wheels, "upg==1.1", env=s.world.env)  # what v2 superseded

        def moved() -> Delta | None:
            d = s.world.delta()
            changed = {p.name: p.replaced for p in d.changed}
            return d if "upg2" not in changed and changed.get("upg") == "1.2" else None

        after = eventually(moved, what="the daemon records the change to upg2")
        assert daemon.stop() == 0, daemon.output()
    finally:
        daemon.close()
    kept = {(p.name, p.version, p.replaced) for p in after.changed}
    assert ("evaldep", "1.0", "2.0") in kept and ("upg", "1.1", "1.2") in kept
    assert "upg2" not in {p.name for p in after.changed}, "v2 ships 1.1: the user's own"
    added = {p.name for p in after.added}
    assert added == {p.name for p in recorded.added} | {"libold"}, "v2 dropped libold"
    assert {p.name for p in after.removed} == set(REMOVED)
    assert {r.name for r in after.rebased} == {"evaldep", "needed", "catchup"}
    assert after.image == recorded.image, "still relative to v1: restore keeps rebasing"

    b3 = s.image(sys.executable, [*V2[1:], "evalimg==3.0"], "b3.json")
    lifted = s.restore(b3)
    assert lifted.returncode == 0, lifted.stdout + lifted.stderr
    have = s.installed()
    assert (have["evaldep"], "needed" in have, have["upg"]) == ("1.0", False, "1.1")
    assert s.check().returncode == 0
    marks = {(r.name, r.state, r.reason) for r in s.world.delta().rebased}
    assert marks == {("catchup", "superseded", "the image ships 1.1")}


def test_an_install_made_on_the_new_image_is_checked_when_the_old_one_comes_back(
    tmp_path: Path, wheels: Path
) -> None:
    """The record stays relative to v1 on v2 (an entry there is held back), and the user
    installs on v2 a package that needs v2's evalimg. The image is rolled back to v1: the
    record's label is v1's, yet that install was never checked against v1, so restore
    rebases and holds it back instead of installing it `--no-deps` over v1's evalimg 1.0.
    A daemon on v1 keeps it so; v2 again brings it back."""
    s = recorded_on_v1(tmp_path, wheels)
    b2 = s.image(sys.executable, V2, "b2.json")
    assert s.restore(b2).returncode == 3
    on_v2 = s.user_changes(b2, ["needsnew==1.0"], [])
    assert "needsnew" in {p.name for p in on_v2.added}
    assert on_v2.mixed, "v1's record with an install made on v2"

    b1 = s.image(sys.executable, V1, "b1.json")
    back = s.restore(b1)
    held = "needsnew 1.0 held back: requires evalimg>=2.0, and evalimg 1.0 (image) stays"
    assert back.returncode == 3 and held in back.stdout, back.stdout + back.stderr
    assert "read against its image, as some changes were recorded on another" in back.stdout
    assert "(some changes were recorded on another image)" in back.stdout
    assert " -> " not in back.stdout.split("image ", 1)[1].splitlines()[0], back.stdout
    assert "1 package(s) held back by the image." in back.stdout, back.stdout
    assert "needsnew" not in s.installed()
    assert s.check().returncode == 0, s.check().stdout

    on_v1 = s.user_changes(b1, [], ["newpkg"])
    assert on_v1.mixed and "needsnew" in {p.name for p in on_v1.added}
    again = s.restore(b1)
    assert again.returncode == 3 and held in again.stdout, again.stdout + again.stderr

    s.image(sys.executable, V2, "b2.json")
    assert s.restore(b2).returncode == 3  # evaldep and needed, as before
    assert s.installed()["needsnew"] == "1.0"
    assert s.check().returncode == 0, s.check().stdout


def test_an_image_that_ships_just_the_users_changes_is_still_a_new_image(
    tmp_path: Path, wheels: Path
) -> None:
    """v2 is v1 with the user's upgrade (upg 1.1) and addition (newpkg 1.0) in it, and
    nothing else. Its image-build baseline is v2, not v1 with the user's packages in
    place (as a container's own baseline over a library in a persistent home may be):
    restore finds both superseded, and the user's changes there (back to upg 1.0, newpkg
    uninstalled), seen by the daemon on v2, are recorded and made again in the next v2
    container."""
    s = Scenario(World.make(tmp_path), wheels, tmp_path / "venv")
    b1 = s.image(sys.executable, ["upg==1.0", "gone==1.0"], "b1.json")
    s.user_changes(b1, ["upg==1.1", "newpkg==1.0"], [])
    v2 = ["upg==1.1", "gone==1.0", "newpkg==1.0"]
    b2 = s.image(sys.executable, v2, "b2.json")
    first = s.restore(b2)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "superseded upg 1.1" in first.stdout and "superseded newpkg 1.0" in first.stdout
    after = s.user_changes(b2, ["upg==1.0"], ["newpkg"])
    assert [(p.name, p.version, p.replaced) for p in after.changed] == [("upg", "1.0", "1.1")]
    assert [p.name for p in after.removed] == ["newpkg"]
    s.image(sys.executable, v2, "b2.json")
    again = s.restore(b2)
    assert again.returncode == 0, again.stdout + again.stderr
    have = s.installed()
    assert have["upg"] == "1.0" and "newpkg" not in have, have


# -- a new Python at the same prefix -------------------------------------------------------

PYENV = Path.home() / ".pyenv" / "versions"


def _other_python() -> str | None:
    mine = f"{sys.version_info[0]}.{sys.version_info[1]}."
    for candidate in sorted(PYENV.glob("3.1[0-9].*"), reverse=True):
        python = candidate / "bin" / "python3"
        if not candidate.name.startswith(mine) and python.exists():
            return str(python)
    return None


def _retag(wheel: Path, tag: str) -> Path:
    """A copy of a pure wheel, renamed and re-tagged for one interpreter's ABI only."""
    name, version = wheel.name.split("-")[:2]
    out = wheel.with_name(f"{name}-{version}-{tag}.whl")
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename.endswith("/WHEEL"):
                data = data.replace(b"Tag: py3-none-any", f"Tag: {tag}".encode())
            dst.writestr(info, data)
    wheel.unlink()
    return out


@pytest.fixture(scope="module")
def abi_wheels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Pure wheels, a wheel for this interpreter's ABI only, a C sdist, and setuptools."""
    wheels = tmp_path_factory.mktemp("abi-wheels")
    for dist in (Dist("imgpkg", "1.0"), Dist("purepkg", "1.0"), Dist("abionly", "1.0")):
        build_wheel(dist, wheels)
    mine = f"cp{sys.version_info[0]}{sys.version_info[1]}"
    _retag(wheels / "abionly-1.0-py3-none-any.whl", f"{mine}-{mine}-linux_x86_64")
    build_c_sdist("fastmath", "1.0", wheels)
    add_build_backend(wheels)
    return wheels


def test_a_new_python_reinstalls_for_its_abi(tmp_path: Path, abi_wheels: Path) -> None:
    """v2 is another Python minor at the same prefix: the C sdist is rebuilt for it, a
    wheel only for the old ABI with no sdist is held back with that reason, the rest is
    reinstalled, and `pip check` is clean."""
    other = _other_python()
    if other is None:
        pytest.skip("needs a second CPython minor version under ~/.pyenv/versions")
    s = Scenario(World.make(tmp_path), abi_wheels, tmp_path / "venv")
    b1 = s.image(sys.executable, ["imgpkg==1.0"], "b1.json")
    s.user_changes(b1, ["purepkg==1.0", "abionly==1.0", "fastmath==1.0"], [])
    b2 = s.image(other, ["imgpkg==1.0"], "b2.json")
    done = s.restore(b2)
    assert done.returncode == 3, done.stdout + done.stderr
    assert "abionly 1.0 held back: no distribution of abionly 1.0 for this interpreter" in (
        done.stdout
    ), done.stdout
    have = s.installed()
    assert (have["purepkg"], have["fastmath"]) == ("1.0", "1.0") and "abionly" not in have
    ext = subprocess.run(
        [str(s.python), "-c", "import fastmath, sys; print(fastmath.add(40, 2), sys.version)"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert ext.stdout.startswith("42 "), ext.stderr
    assert s.check().returncode == 0
    assert {p.name for p in s.world.delta().added} == {"purepkg", "abionly", "fastmath"}


def test_a_dependency_nowhere_to_be_found_fails_its_package_only(
    tmp_path: Path, wheels: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A user package whose dependency v2 dropped and no find-links holds fails with the
    installer's own message; the other packages of the rebase are installed. The report
    and the error count the held-back packages beside the failed one."""
    s = recorded_on_v1(tmp_path, wheels)
    b2 = s.image(sys.executable, V2, "b2.json")
    without = tmp_path_factory.mktemp("without-libold")
    for wheel in wheels.glob("*.whl"):
        if not wheel.name.startswith("libold-"):
            shutil.copy(wheel, without)
    s.wheels = without
    done = s.restore(b2)
    assert done.returncode == 3, done.stdout + done.stderr
    assert "failed to install userapp 1.0" in done.stdout and "libold" in done.stdout
    counted = "1 package(s) failed, 2 held back by the new image"
    assert f"Restore incomplete: {counted}." in done.stdout, done.stdout
    assert f"restore incomplete: {counted} (userapp)" in done.stderr, done.stderr
    have = s.installed()
    assert "userapp" not in have and "libold" not in have
    assert (have["newpkg"], have["upg2"], have["down"]) == ("1.0", "1.2", "1.0")
    assert s.check().returncode == 0


def test_a_rebase_from_the_find_links_alone_loads_only_what_it_uses(
    tmp_path: Path, wheels: Path
) -> None:
    """Every planned package in the find-links, `--no-index`, no artifacts: the rebase
    reads no index, and the restore's process loads none of the HTTP client, TLS and
    thread pool that index reads use (a fifth of a 40-wheel rebase's time over the
    installer's), nor the artifact cache."""
    s = Scenario(World.make(tmp_path), wheels, tmp_path / "venv")
    b2 = s.image(sys.executable, V2, "b2.json")
    env = targets(Config(env=(s.prefix,), runtime_dir=tmp_path / "probe"))[0].env
    v1 = manifest.image_identity(
        Package(name=r.split("==")[0], version=r.split("==")[1]) for r in V1
    )
    delta = Delta(env=env, added=(Package(name="newpkg", version="1.0"),), image=v1)
    put_manifest(s.world.store, s.world.key, Body(environments=(delta,)))
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "pkgckpt", "restore", *s.flags(b2),
         "--no-index", "--find-links", str(wheels)],
        capture_output=True, text=True, env=s.world.env, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "rebased onto a new image" in done.stdout, done.stdout
    assert s.installed()["newpkg"] == "1.0"
    loaded = {
        line.rsplit("|", 1)[1].strip()
        for line in done.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }
    assert "pkgckpt.restore.rebase" in loaded
    unused = {"pkgckpt.restore.indexmeta", "http.client", "ssl", "concurrent.futures"}
    assert not loaded & {*unused, "pkgckpt.artifacts"}


# -- the user site (`pip install --user`) over a new image -------------------------------


def test_a_user_site_is_read_against_the_new_prefix_image(tmp_path: Path, wheels: Path) -> None:
    """`pip install --user` additions are read against the prefix's new image: one the
    image now ships is superseded (pip would refuse a user copy under a venv's own), the
    rest is installed in the user site, the exit is 0 and `pip check` is clean."""
    world = World.make(tmp_path)
    world.env["PYTHONUSERBASE"] = str(tmp_path / "userbase")
    s = Scenario(world, wheels, tmp_path / "venv")

    def image(reqs: list[str], name: str) -> Path:
        shutil.rmtree(s.prefix, ignore_errors=True)
        shutil.rmtree(tmp_path / "userbase", ignore_errors=True)  # a new pod: no home
        shutil.rmtree(world.runtime, ignore_errors=True)
        subprocess.run(
            [sys.executable, "-m", "venv", "--without-pip", "--system-site-packages",
             str(s.prefix)], check=True, capture_output=True,
        )  # fmt: skip
        uv_install(s.python, wheels, *reqs, env=world.env)
        baseline = tmp_path / name
        made = world.pkgckpt("baseline", "--env", str(s.prefix), "--output", str(baseline))
        assert made.returncode == 0, made.stderr
        return baseline

    def pip(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "pip", "--python", str(s.python), *args],
            capture_output=True, text=True, env=world.env,
        )  # fmt: skip

    b1 = image(["evalimg==1.0", "evaldep==2.0"], "b1.json")
    daemon = world.daemon(*s.flags(b1), "--quiet-ms", "100").start()
    try:
        user = ["catchup==1.0", "newpkg==1.0"]
        done = pip("install", "--user", "--no-index", "--find-links", str(wheels), *user)
        assert done.returncode == 0, done.stderr
        assert daemon.stop() == 0, daemon.output()
    finally:
        daemon.close()
    recorded = world.manifest()
    assert recorded is not None
    (mine,) = [d for d in recorded.body.environments if d.env.user]
    assert sorted(p.name for p in mine.added) == ["catchup", "newpkg"]

    b2 = image(V2, "b2.json")  # ships catchup 1.1
    done = s.restore(b2)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "superseded catchup 1.0: the image ships 1.1" in done.stdout, done.stdout
    site = next((tmp_path / "userbase").glob("lib/python3*/site-packages"))
    assert {p.name.split("-")[0] for p in site.glob("*.dist-info")} == {"newpkg"}
    check = pip("check")
    assert check.returncode == 0, check.stdout + check.stderr


# -- a package in place whose dependencies are not ---------------------------------------


@pytest.mark.parametrize("installer", ["uv", "pip"])
def test_a_same_version_reinstall_whose_dependency_fails_is_reported(
    tmp_path: Path, installer: str
) -> None:
    """The user's own build of solo 1.0 (a file wheel, requiring newdep, which the old
    image shipped) over a new image that ships solo 1.0 from its index and no newdep, with
    newdep nowhere to be found:
    whether or not the user's solo is put in place (pip replaces it in a call of its own
    before resolving), solo is reported failed with the missing dependency, exit 3."""
    wheels = tmp_path / "wheels"
    for dist in (Dist("solo", "1.0"), Dist("newdep", "1.0"), Dist("imgpkg", "1.0")):
        build_wheel(dist, wheels)
    mine = build_wheel(Dist("solo", "1.0", requires=["newdep"], files=2), tmp_path / "mine")
    s = Scenario(World.make(tmp_path), wheels, tmp_path / "venv", installer)
    b1 = s.image(sys.executable, ["imgpkg==1.0", "newdep==1.0"], "b1.json")
    delta = s.user_changes(b1, [f"solo @ {mine.as_uri()}"], [])
    assert [(p.name, type(p.source).__name__) for p in delta.added] == [("solo", "UrlSource")]
    b2 = s.image(sys.executable, ["imgpkg==1.0", "solo==1.0"], "b2.json")
    (wheels / Dist("newdep", "1.0").wheel_name).unlink()
    done = s.restore(b2)
    assert done.returncode == 3, done.stdout + done.stderr
    assert "failed to install solo 1.0" in done.stdout, done.stdout
    assert "newdep" in done.stdout, done.stdout
    assert "newdep" not in s.installed()


def test_a_package_in_place_without_its_dependency_is_retried_at_the_next_restore(
    tmp_path: Path,
) -> None:
    """solo in place, its dependency newdep missing (the first restore's failure): the
    next restore on that image tries it again (exit 3 while newdep is nowhere, then
    installs newdep once it is back). It said "nothing to restore" (exit 0) and never
    fetched newdep, although the first restore promised a retry at every restore."""
    wheels = tmp_path / "wheels"
    for dist in (Dist("solo", "1.0"), Dist("newdep", "1.0"), Dist("imgpkg", "1.0")):
        build_wheel(dist, wheels)
    mine = build_wheel(Dist("solo", "1.0", requires=["newdep"], files=2), tmp_path / "mine")
    s = Scenario(World.make(tmp_path), wheels, tmp_path / "venv", "pip")
    b1 = s.image(sys.executable, ["imgpkg==1.0", "newdep==1.0"], "b1.json")
    s.user_changes(b1, [f"solo @ {mine.as_uri()}"], [])
    b2 = s.image(sys.executable, ["imgpkg==1.0", "solo==1.0"], "b2.json")
    newdep = wheels / Dist("newdep", "1.0").wheel_name
    kept = newdep.rename(tmp_path / newdep.name)
    assert s.restore(b2).returncode == 3
    again = s.restore(b2)
    assert again.returncode == 3, again.stdout + again.stderr
    assert "failed to install solo 1.0" in again.stdout, again.stdout
    kept.rename(newdep)
    last = s.restore(b2)
    assert last.returncode == 0, last.stdout + last.stderr
    assert s.installed().get("newdep") == "1.0"


def test_what_no_distribution_fits_stays_held_back_after_a_daemon_ran_on_the_new_python(
    tmp_path: Path, abi_wheels: Path
) -> None:
    """abionly (a wheel for the old ABI only) is held back on the new Python; a daemon
    there records the environment's new interpreter, and the next pod's restore still
    holds abionly back with the same reason: its recorded build (WHEEL tags) is for the
    old ABI. It read the record as the same interpreter and reported abionly failed,
    retried at every restore."""
    other = _other_python()
    if other is None:
        pytest.skip("needs a second CPython minor version under ~/.pyenv/versions")
    s = Scenario(World.make(tmp_path), abi_wheels, tmp_path / "venv")
    b1 = s.image(sys.executable, ["imgpkg==1.0"], "b1.json")
    s.user_changes(b1, ["purepkg==1.0", "abionly==1.0"], [])
    b2 = s.image(other, ["imgpkg==1.0"], "b2.json")
    held = "abionly 1.0 held back: no distribution of abionly 1.0 for this interpreter"
    first = s.restore(b2)
    assert first.returncode == 3 and held in first.stdout, first.stdout + first.stderr
    s.user_changes(b2, [], [])  # the daemon on the new image, as the entrypoint starts it
    assert s.world.delta().env.interpreter != sys.version.split()[0]
    b2 = s.image(other, ["imgpkg==1.0"], "b2.json")
    again = s.restore(b2)
    assert again.returncode == 3, again.stdout + again.stderr
    assert held in again.stdout and "failed to install" not in again.stdout, again.stdout
    assert s.installed() == {"imgpkg": "1.0", "purepkg": "1.0"}
