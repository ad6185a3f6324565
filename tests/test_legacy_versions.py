"""An image whose own distributions have non-PEP 440 versions (Ubuntu's apt installs
`distro-info 1.1build1` and `python-debian 0.1.43ubuntu1`): the user removes and upgrades
them under the real daemon, and `pkgckpt restore` with the default installer puts the
record back, on the same image and on a new one (validate.py, restore/rebase.py,
the installer choice in restore/python.py, status.py)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from daemon_kit import World, uv_install
from wheelhouse import PIP_REFUSES_INVALID, Dist, Venv, build_wheel, make_venv, pip

from pkgckpt.manifest import Delta

pytestmark = pytest.mark.slow

V1 = {"distro-info": "1.1build1", "python-debian": "0.1.43ubuntu1", "imgtool": "2.0build1"}
"""Image v1's apt-installed distributions."""
V2 = {"distro-info": "1.1build2", "imgtool": "2.0build3"}
"""Image v2's: python-debian now comes as 0.1.50 from an index (`V2_WHEELS`)."""
V2_WHEELS = ["python-debian==0.1.50"]
USER = ["python-debian==0.1.49", "imgtool==2.1", "newpkg==1.0"]
"""The user's upgrades of two of the image's packages, and an addition."""
PIP_REFUSES = PIP_REFUSES_INVALID
"""The user uninstalls such a version first, and restore, which takes this pip, reports
an upgrade over one as failed (README: a new image)."""


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The releases from an index: the user's, v2's python-debian, an ordinary one."""
    out = tmp_path_factory.mktemp("legacy-wheels")
    for dist in (
        Dist("python-debian", "0.1.49"),
        Dist("python-debian", "0.1.50"),
        Dist("imgtool", "2.1"),
        Dist("newpkg", "1.0"),
        Dist("six", "1.16.0"),
    ):
        build_wheel(dist, out)
    return out


def apt_install(site: Path, name: str, version: str) -> None:
    """What Ubuntu's apt leaves for a distribution: an `.egg-info` directory named and
    versioned as setuptools wrote it, with no list of files (pip uninstalls it by its
    top_level.txt)."""
    module = name.replace("-", "_")
    info = site / f"{module}-{version}.egg-info"
    info.mkdir()
    (site / f"{module}.py").write_text(f"__version__ = {version!r}\n")
    (info / "PKG-INFO").write_text(f"Metadata-Version: 1.1\nName: {name}\nVersion: {version}\n")
    (info / "top_level.txt").write_text(f"{module}\n")
    (info / "dependency_links.txt").write_text("\n")


@dataclass
class Image:
    world: World
    wheels: Path

    @property
    def venv(self) -> Venv:
        return Venv(self.world.tmp / "venv")

    def start(self, apt: dict[str, str], reqs: list[str], name: str) -> Path:
        """A new container: the venv made again with `reqs` from the index and `apt`
        planted beside them, its baseline taken to `name`, an empty runtime directory."""
        v = make_venv(self.venv.prefix, with_pip=False)
        # uv refuses to work in an environment holding a non-standard version at all:
        # it installs first, then the package manager's files go in.
        uv_install(v.python, self.wheels, "six==1.16.0", *reqs, env=self.world.env)
        for dist, version in apt.items():
            apt_install(v.site_packages, dist, version)
        shutil.rmtree(self.world.runtime, ignore_errors=True)
        baseline = self.world.tmp / name
        made = self.world.pkgckpt("baseline", "--env", str(v.prefix), "--output", str(baseline))
        assert made.returncode == 0, made.stderr
        return baseline

    def flags(self, baseline: Path) -> list[str]:
        return [*self.world.flags(self.venv.prefix), "--baseline", str(baseline)]

    def pip(self, *args: str) -> str:
        """The user's pip (the one running the tests, pointed at the venv)."""
        return pip(sys.executable, "--python", str(self.venv.python), *args, env=self.world.env)

    def restore(self, baseline: Path, *extra: str) -> subprocess.CompletedProcess[str]:
        return self.world.pkgckpt(
            "restore", *self.flags(baseline), "--no-index",
            "--find-links", str(self.wheels), *extra, timeout=300,
        )  # fmt: skip

    def installed(self) -> dict[str, str]:
        """name -> version of the dist-infos and egg-infos, straight from the directory."""
        found = {}
        for info in self.venv.site_packages.glob("*.*-info"):
            name, version = info.name.rsplit(".", 1)[0].rsplit("-", 1)
            found[name.replace("_", "-")] = version
        return found


def recorded_on_v1(tmp_path: Path, wheels: Path) -> Image:
    image = Image(World.make(tmp_path), wheels)
    b1 = image.start(V1, [], "b1.json")
    daemon = image.world.daemon(*image.flags(b1), "--quiet-ms", "100").start()
    try:
        image.pip("uninstall", "--yes", "distro-info")
        if PIP_REFUSES:
            image.pip("uninstall", "--yes", "python-debian", "imgtool")
        image.pip("install", "--no-index", "--find-links", str(wheels), *USER)
        assert daemon.stop() == 0, daemon.output()
    finally:
        daemon.close()
    delta: Delta = image.world.delta()
    assert [(p.name, p.version) for p in delta.removed] == [("distro-info", "1.1build1")]
    assert {p.name: (p.replaced, p.version) for p in delta.changed} == {
        "python-debian": ("0.1.43ubuntu1", "0.1.49"),
        "imgtool": ("2.0build1", "2.1"),
    }
    assert [(p.name, p.version) for p in delta.added] == [("newpkg", "1.0")]
    return image


def test_the_same_image_restores_changes_to_non_pep440_image_packages(
    tmp_path: Path, wheels: Path
) -> None:
    """The removal and the upgrades of image packages whose versions pip calls
    non-standard are recorded, `status` lists all of them for restore, and a new
    container of the same image gets all of the record back instead of a refused
    manifest (with a pip that refuses to install over such a version, once the user
    uninstalled them, as README says); a second restore does nothing."""
    image = recorded_on_v1(tmp_path, wheels)
    b1 = image.start(V1, [], "b1.json")
    assert image.installed()["distro-info"] == "1.1build1"

    status = image.world.pkgckpt("status", *image.flags(b1), "--json")
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)
    assert report["refused"] is None
    (env,) = report["environments"]
    would = {(c["action"], c["name"]) for c in env["unrestored"]}
    assert would == {
        ("remove", "distro-info"),
        ("upgrade", "python-debian"),
        ("upgrade", "imgtool"),
        ("install", "newpkg"),
    }

    done = image.restore(b1)
    assert f"{image.venv.prefix} (pip)" in done.stdout, "uv does nothing in such a venv"
    have = image.installed()
    assert "distro-info" not in have
    if PIP_REFUSES:
        # The rest of the record is back; the upgrades are reported, and stay recorded.
        assert done.returncode == 3, done.stdout + done.stderr
        assert "invalid version" in done.stdout + done.stderr, done.stdout + done.stderr
        assert {k: have.get(k) for k in ("python-debian", "imgtool", "newpkg", "six")} == {
            "python-debian": "0.1.43ubuntu1",
            "imgtool": "2.0build1",
            "newpkg": "1.0",
            "six": "1.16.0",
        }
        # What README tells the user to do: uninstall them, and restore again.
        image.pip("uninstall", "--yes", "python-debian", "imgtool")
        done = image.restore(b1)
        assert done.returncode == 0, done.stdout + done.stderr
        have = image.installed()
    else:
        assert done.returncode == 0, done.stdout + done.stderr
    assert {k: have.get(k) for k in ("python-debian", "imgtool", "newpkg", "six")} == {
        "python-debian": "0.1.49",
        "imgtool": "2.1",
        "newpkg": "1.0",
        "six": "1.16.0",
    }
    again = image.restore(b1)
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.startswith("Nothing to restore"), again.stdout


def test_a_new_image_rebases_changes_to_non_pep440_image_packages(
    tmp_path: Path, wheels: Path
) -> None:
    """On a new image: the removal is carried out whatever version the image has now; an
    upgrade from a non-standard version that the image caught up with is superseded, as
    an upgrade is; one over a version the image still ships non-standard is installed (a
    version that cannot be compared is not newer than the user's); nothing fails."""
    image = recorded_on_v1(tmp_path, wheels)
    b2 = image.start(V2, V2_WHEELS, "b2.json")

    dry = image.restore(b2, "--dry-run", "--json")
    assert dry.returncode == 0, dry.stdout + dry.stderr
    (plan,) = json.loads(dry.stdout)["plan"]["environments"]
    actions = {d["name"]: d["action"] for d in plan["rebase"]["decisions"]}
    assert actions == {
        "distro-info": "remove",
        "python-debian": "superseded",
        "imgtool": "install",
        "newpkg": "install",
    }

    done = image.restore(b2)
    assert done.returncode == (3 if PIP_REFUSES else 0), done.stdout + done.stderr
    have = image.installed()
    assert "distro-info" not in have
    assert {k: have.get(k) for k in ("python-debian", "imgtool", "newpkg", "six")} == {
        "python-debian": "0.1.50",
        # Over v2's non-PEP 440 2.0build3, pip >= 24.1 installs nothing (PIP_REFUSES).
        "imgtool": "2.0build3" if PIP_REFUSES else "2.1",
        "newpkg": "1.0",
        "six": "1.16.0",
    }
    delta = image.world.delta()
    assert [(p.name, p.version) for p in delta.removed] == [("distro-info", "1.1build1")]
    assert {r.name: r.state for r in delta.rebased} == {"python-debian": "superseded"}
