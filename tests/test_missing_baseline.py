"""An image whose configured baseline file went missing (moved or dropped in a derived
image) still restores the record and records what the user installs, through the real
CLI and daemon: this container's own baseline stands in (inventory._without_missing)."""

from __future__ import annotations

from pathlib import Path

import pytest
from daemon_kit import World, eventually, pins, uv_install
from restore_kit import put_manifest
from wheelhouse import Dist, build_wheel, make_venv

from pkgckpt.manifest import Body, Delta, Environment, Package

pytestmark = pytest.mark.slow


def test_a_missing_baseline_file_neither_stops_restore_nor_the_record(tmp_path: Path) -> None:
    world = World.make(tmp_path)
    wheels = tmp_path / "wheels"
    for dist in (Dist("image-pkg", "1.0"), Dist("alpha", "1.0"), Dist("beta", "1.0")):
        build_wheel(dist, wheels)
    venv = make_venv(tmp_path / "venv", with_pip=False)
    uv_install(venv.python, wheels, "image-pkg==1.0", env=world.env)
    env = Environment(kind="python", path=str(venv.prefix))
    put_manifest(world.store, world.key, Body(environments=(Delta(env=env, added=(
        Package(name="alpha", version="1.0"),)),)))  # fmt: skip
    missing = tmp_path / "etc" / "baseline.json"
    flags = [*world.flags(venv.prefix), "--baseline", str(missing)]

    done = world.pkgckpt(
        "restore", *flags, "--installer", "uv", "--no-index", "--find-links", str(wheels)
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"baseline file {missing} does not exist" in done.stderr
    assert (world.runtime / "baseline.json").exists()

    daemon = world.daemon(*flags, "--quiet-ms", "50").start()
    try:
        uv_install(venv.python, wheels, "beta==1.0", env=world.env)
        eventually(lambda: "beta==1.0" in pins(world.delta().added), what="beta recorded")
        assert pins(world.delta().added) == ["alpha==1.0", "beta==1.0"]  # image-pkg: the image's
    finally:
        daemon.close()
    status = world.pkgckpt("status", *flags)
    assert status.returncode == 0, status.stderr
    assert "beta" in status.stdout
