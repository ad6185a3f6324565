"""examples/entrypoint.sh as a container would run it: restore (bounded), the daemon in the
background, the notebook server in front, SIGTERM forwarded so the daemon flushes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from daemon_kit import World, eventually, pins, uv_install
from restore_kit import put_manifest, slow_sdist
from wheelhouse import Dist, build_wheel, make_venv

from pkgckpt.config import Config
from pkgckpt.manifest import Body, Delta, Environment, Package
from pkgckpt.status import status_path

pytestmark = pytest.mark.slow

ENTRYPOINT = Path(__file__).resolve().parent.parent / "examples" / "entrypoint.sh"

SERVER = """\
import signal, sys, time
open(sys.argv[1], "w").close()
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
time.sleep(600)
"""


@pytest.mark.parametrize("failure", ["missing-package", "hanging-build"])
def test_entrypoint_survives_a_failed_restore_and_flushes_on_sigterm(
    tmp_path: Path, failure: str
) -> None:
    """A failed or hanging restore still starts the server; SIGTERM flushes the daemon.

    The restore fails on a package nowhere to be found, or hangs on a build that never
    ends (cut by the restore timeout). SIGTERM to the entrypoint stops the server and the
    daemon, whose flush puts the last install in the manifest."""
    world = World.make(tmp_path)
    wheels = tmp_path / "wheels"
    build_wheel(Dist("good-one", "1.0"), wheels)
    build_wheel(Dist("late", "1.0"), wheels)
    if failure == "hanging-build":
        slow_sdist("stuck", "1.0", wheels, tmp_path / "stuck.pid")
    venv = make_venv(tmp_path / "venv", with_pip=False)
    baseline = tmp_path / "baseline.json"
    made = world.pkgckpt("baseline", "--env", str(venv.prefix), "--output", str(baseline))
    assert made.returncode == 0, made.stderr
    bad = "stuck" if failure == "hanging-build" else "nowhere"
    added = (Package(name="good-one", version="1.0"), Package(name=bad, version="1.0"))
    env_ = Environment(kind="python", path=str(venv.prefix))
    put_manifest(world.store, world.key, Body(environments=(Delta(env=env_, added=added),)))

    bindir = str(Path(os.path.realpath(sys.executable)).parent)
    variables = {
        **world.env,
        "PATH": f"{bindir}{os.pathsep}{world.env['PATH']}",
        "PKGCKPT_ENV": str(venv.prefix),
        "PKGCKPT_STORE": str(world.store),
        "PKGCKPT_KEY": world.key,
        "PKGCKPT_BASELINE": str(baseline),
        "PKGCKPT_INSTALLER": "uv",
        "PKGCKPT_NO_INDEX": "1",
        "PKGCKPT_FIND_LINKS": str(wheels),
        "PKGCKPT_QUIET_MS": "60000",  # nothing is committed before SIGTERM
        "PKGCKPT_RESTORE_TIMEOUT": "5",
    }
    started = tmp_path / "server-started"
    server = tmp_path / "server.py"
    server.write_text(SERVER)
    log = tmp_path / "entrypoint.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            ["bash", str(ENTRYPOINT), sys.executable, str(server), str(started)],
            stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=variables,
        )  # fmt: skip
    try:
        eventually(started.exists, timeout=120, what="the server to start")
        if failure == "missing-package":  # the hanging build uses up the whole timeout
            assert list(venv.site_packages.glob("good_one-1.0.dist-info"))
        where = Config(store=world.store, key=world.key, runtime_dir=tmp_path / "run" / "pkgckpt")
        status = status_path(where)
        eventually(lambda: status.exists() and '"watching"' in status.read_text(), what="daemon")
        uv_install(venv.python, wheels, "late==1.0", env=world.env)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    assert "some packages could not be restored" in text, text
    found = world.manifest()
    assert found is not None
    (delta,) = found.body.environments
    assert pins(delta.added) == sorted([f"{bad}==1.0", "good-one==1.0", "late==1.0"]), text
    assert "stopped: every change is on the store" in text
