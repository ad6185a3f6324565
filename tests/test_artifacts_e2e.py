"""End to end: packages installed from wheels, from a C sdist and from a git repository
are captured by `pkgckpt snapshot`; with the wheelhouse and the repository gone and no
compiler, a fresh venv gets them back from the artifacts alone."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from artifact_kit import artifacts, cache_on, make_git_repo, make_wheelhouse, record_hashes
from daemon_kit import World
from wheelhouse import Venv, make_venv

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("installer", ["pip", "uv"])
def test_a_fresh_venv_is_restored_from_artifacts_alone(tmp_path: Path, installer: str) -> None:
    """No index, no wheelhouse, no repository, CC=false: `restore --no-index` puts back the
    same `pip freeze`, a working console script and C extension, and RECORD hashes
    identical to the original install's (scripts and bytecode apart)."""
    world = cache_on(World.make(tmp_path))
    wheels = make_wheelhouse(tmp_path / "wheels")
    repo = make_git_repo(tmp_path / "repo")
    prefix = make_venv(tmp_path / "venv").prefix
    user = Venv(prefix)
    baseline = tmp_path / "baseline.json"
    flags = [*world.flags(prefix), "--baseline", str(baseline)]
    made = world.pkgckpt("baseline", "--env", str(prefix), "--output", str(baseline))
    assert made.returncode == 0, made.stderr
    user.install(wheels, "app", "fastmath")
    if repo is not None:
        user.install(wheels, f"git+{repo.as_uri()}")
    before = user.freeze()
    hashes = record_hashes(user.site_packages)

    snap = world.pkgckpt("snapshot", *flags, timeout=300)
    assert snap.returncode == 0, snap.stdout + snap.stderr
    assert "not captured" not in snap.stdout, snap.stdout
    names = artifacts(world.store, world.key)
    assert "fastmath-1.0-cp311-cp311-linux_x86_64.whl" in names or any(
        n.startswith("fastmath-1.0-cp") for n in names
    ), names
    assert len(names) == (4 if repo is not None else 3), names

    shutil.rmtree(wheels)
    if repo is not None:
        shutil.rmtree(repo)
    world.env["CC"] = "false"
    shutil.rmtree(world.runtime, ignore_errors=True)
    make_venv(prefix)
    assert user.freeze() != before
    restore = world.pkgckpt("restore", *flags, "--installer", installer, "--no-index", timeout=600)
    assert restore.returncode == 0, restore.stdout + restore.stderr
    assert user.freeze() == before
    assert record_hashes(user.site_packages) == hashes
    script = subprocess.run([str(prefix / "bin" / "app-cli")], capture_output=True, text=True)
    assert script.stdout.strip() == "app 1.0", script.stderr
    ext = subprocess.run(
        [str(user.python), "-c", "import fastmath; print(fastmath.add(40, 2))"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert ext.stdout.strip() == "42", ext.stderr
    if repo is not None:
        vcs = subprocess.run([str(prefix / "bin" / "gitpkg")], capture_output=True, text=True)
        assert vcs.stdout.strip() == "gitpkg 0.3", vcs.stderr
    again = world.pkgckpt("restore", *flags, "--installer", installer, "--no-index")
    assert again.returncode == 0 and again.stdout.startswith("Nothing to restore"), again.stdout
