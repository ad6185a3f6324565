"""The artifact cache on a new image with another Python at the same prefix: pure
wheels install from their artifacts, a compiled one for the old ABI is not used (the
report says so) and its package is built from its sdist."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from artifact_kit import artifacts, cache_on, make_wheelhouse
from daemon_kit import World
from test_rebase import Scenario, _other_python
from wheelhouse import Dist, build_wheel

pytestmark = pytest.mark.slow


def test_on_a_new_python_fitting_artifacts_are_used_and_the_others_are_said(
    tmp_path: Path,
) -> None:
    """Captured under this Python, restored after the image moved the prefix to another
    minor: app and libdep come from their artifacts (their wheels are gone), fastmath's
    cp3X artifact does not fit, the report names its tags, and fastmath is rebuilt from
    its sdist for the new interpreter."""
    other = _other_python()
    if other is None:
        pytest.skip("needs a second CPython minor version under ~/.pyenv/versions")
    world = cache_on(World.make(tmp_path))
    wheels = make_wheelhouse(tmp_path / "wheels")
    build_wheel(Dist("imgpkg", "1.0"), wheels)
    s = Scenario(world, wheels, tmp_path / "venv")
    b1 = s.image(sys.executable, ["imgpkg==1.0"], "b1.json")
    s.user_changes(b1, ["app", "fastmath"], [])
    snap = world.pkgckpt("snapshot", *s.flags(b1), timeout=300)
    assert snap.returncode == 0, snap.stdout + snap.stderr
    captured = artifacts(world.store, world.key)
    assert len(captured) == 3, captured
    for wheel in (*wheels.glob("app-*.whl"), *wheels.glob("libdep-*.whl")):
        wheel.unlink()
    b2 = s.image(other, ["imgpkg==1.0"], "b2.json")
    done = s.restore(b2)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "fastmath 1.0: its artifact fastmath-1.0-cp" in done.stdout, done.stdout
    assert "do not fit" in done.stdout
    want = {"app": "1.0", "libdep": "1.0", "fastmath": "1.0", "imgpkg": "1.0"}
    assert s.installed() == want
    ext = subprocess.run(
        [str(s.python), "-c", "import fastmath, sys; print(fastmath.add(40, 2))"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert ext.stdout.strip() == "42", ext.stderr
    script = subprocess.run([str(s.prefix / "bin" / "app-cli")], capture_output=True, text=True)
    assert script.stdout.strip() == "app 1.0", script.stderr
    shutil.rmtree(s.prefix, ignore_errors=True)
