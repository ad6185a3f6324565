"""bob plants R startup files where alice happens to stand (a shared /tmp): R started by
pkgckpt must not run them, whether it asks R for its libraries or restores packages."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from .conftest import User

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(shutil.which("Rscript") is None, reason="R is not installed")


def plant(shared: Path, bob: User) -> Path:
    """bob's .Rprofile and .Renviron (which points R_PROFILE_USER at more of his code) in
    the shared directory, owned by him; the marker proves a run."""
    marker = shared / "bob-ran"
    profile = f'cat("profile", file = "{marker}", append = TRUE)\n'
    files = {".Rprofile": profile, ".Renviron": f"R_PROFILE_USER={shared}/p.R\n", "p.R": profile}
    for name, text in files.items():
        (shared / name).write_text(text)
        os.chown(shared / name, bob.uid, bob.gid)
    return marker


@pytest.fixture(scope="module")
def pkgckpt(tool: Path) -> Path:
    """The `pkgckpt` console script alice can run (the suite's tool venv, conftest.py)."""
    return tool / "bin" / "pkgckpt"


def test_r_discovery_from_a_planted_directory_runs_none_of_bobs_r_code(
    alice: User, bob: User, shared_tmp: Path, pkgckpt: Path
) -> None:
    """alice's `pkgckpt status --r-discover` from bob's directory: bob's profile never runs
    and the command still works."""
    marker = plant(shared_tmp, bob)
    done = alice.run(
        [
            str(pkgckpt),
            "status",
            "--r-discover",
            "--store",
            str(alice.home / "st"),
        ],
        cwd=shared_tmp,
    )
    assert done.returncode == 0, done.stderr
    assert not marker.exists(), marker.read_text()
