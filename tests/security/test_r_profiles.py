"""bob plants R startup files where alice happens to stand (a shared /tmp): R started by
pkgckpt must not run them, whether it asks R for its libraries or restores packages."""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import tempfile
from collections.abc import Iterator
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
def pkgckpt(alice: User) -> Iterator[Path]:
    """A `pkgckpt` console script alice can run: a root-owned venv (0755) made from a Python
    she can execute, whose .pth names this checkout and the test venv's site-packages (the
    interpreter running the tests may live where she cannot go)."""
    want = f"{sys.version_info[0]}.{sys.version_info[1]}"
    bases = [getattr(sys, "_base_executable", sys.executable), "/usr/bin/python3"]
    version = "import sys; print('%d.%d' % sys.version_info[:2])"
    base = next((b for b in bases if alice.run([b, "-c", version]).stdout.strip() == want), None)
    if base is None:
        pytest.skip(f"no Python {want} that {alice.name} can run")
    root = Path(tempfile.mkdtemp(prefix="pkgckpt-sec-r-", dir="/var/tmp"))
    root.chmod(0o755)
    try:
        venv = root / "tool"
        subprocess.run([base, "-m", "venv", "--without-pip", str(venv)], check=True)
        (site_dir,) = venv.glob("lib/python3*/site-packages")
        paths = [str(REPO), *site.getsitepackages()]
        (site_dir / "pkgckpt_checkout.pth").write_text("\n".join(paths) + "\n")
        # As pip writes it: `python -m pkgckpt` would import from the working directory.
        script = venv / "bin" / "pkgckpt"
        script.write_text(
            f"#!{venv / 'bin' / 'python'}\nimport sys\nfrom pkgckpt.cli import main\n"
            "sys.exit(main())\n"
        )
        script.chmod(0o755)
        probe = alice.run([str(venv / "bin" / "python"), "-c", "import pkgckpt.cli"])
        if probe.returncode != 0:
            pytest.skip(f"{alice.name} cannot import this checkout: {probe.stderr.strip()}")
        yield script
    finally:
        shutil.rmtree(root, ignore_errors=True)


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
