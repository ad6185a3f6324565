"""A user whose HOME, or a tracked path, lies beneath a directory they may not enter:
`docker run --user` or s6-setuidgid leaving HOME at root's. pathlib's `is_dir` and
`is_file` raise on EACCES, and the daemon, status and restore stopped there with an
internal error. Now such a path is "not readable": said once, rescanned, never fatal.
alice is a real second user; the closed directory is root's, mode 0700."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from pkgckpt.manifest import Body, Delta, DirectorySource, Environment, Package
from tests.restore_kit import put_manifest
from tests.security.conftest import User
from tests.security.test_children import chown_tree

pytestmark = pytest.mark.slow

WATCH = """
import json, logging, sys
from pathlib import Path
from pkgckpt.watcher import Root, Watcher

closed, good = Path(sys.argv[1]), Path(sys.argv[2])
logs = []
handler = logging.Handler()
handler.emit = lambda record: logs.append(record.getMessage())
logging.getLogger("pkgckpt").addHandler(handler)
logging.getLogger("pkgckpt").setLevel(logging.INFO)
with Watcher([Root(closed, "python"), Root(good, "python")], quiet_ms=20) as w:
    w.wait(0.2)
    (good / "alpha-1.0.dist-info").mkdir()
    seen = set()
    for _ in range(20):
        seen |= {str(p) for p in w.wait(0.2).dirty}
        if str(good) in seen:
            break
print(json.dumps({"logs": logs, "seen": sorted(seen)}))
"""


@pytest.fixture
def place(alice: User) -> Iterator[Path]:
    """A root-owned tree: `closed` (0700, root's, with a site-packages inside) and
    `open` (alice's)."""
    root = Path(tempfile.mkdtemp(prefix="pkgckpt-closed-", dir="/var/tmp"))
    root.chmod(0o755)
    try:
        (root / "closed" / "lib" / "site-packages").mkdir(parents=True)
        (root / "closed").chmod(0o700)
        for name in ("open", "run"):
            (root / name).mkdir(mode=0o700)
            os.chown(root / name, alice.uid, alice.gid)
        (root / "watch.py").write_text(WATCH)
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_a_root_beneath_a_closed_directory_degrades(alice: User, tool: Path, place: Path) -> None:
    """The watcher warns that the root cannot be watched and goes on watching the rest."""
    good = place / "open" / "site-packages"
    alice.run(["mkdir", str(good)], check=True)
    closed = place / "closed" / "lib" / "site-packages"
    done = alice.run(
        [str(tool / "bin" / "python"), str(place / "watch.py"), str(closed), str(good)]
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert f"{closed}: it cannot be watched (Permission denied)" in " ".join(out["logs"])
    assert str(good) in out["seen"]


def test_commands_with_home_and_env_beneath_a_closed_directory(
    alice: User, tool: Path, place: Path
) -> None:
    """HOME and --env in the closed directory: status reports the environment as not
    readable (exit 0), restore warns that it is not tracked and why, in one line, and goes
    on with the rest (nothing here: exit 0), the daemon starts, skips the config file
    there with a warning and stops cleanly; none says "internal error"."""
    pkgckpt = str(tool / "bin" / "pkgckpt")
    store = place / "open" / "store"
    alice.run([pkgckpt, "store", "init", str(store)], check=True)
    env = {"HOME": str(place / "closed"), "XDG_RUNTIME_DIR": str(place / "run")}
    common = ["--store", str(store), "--env", str(place / "closed" / "venv")]

    status = alice.run([pkgckpt, "status", *common], env=env)
    assert status.returncode == 0, status.stderr
    assert f"not readable: {place / 'closed'} is closed to this user" in status.stdout

    restore = alice.run([pkgckpt, "restore", *common], env=env)
    assert restore.returncode == 0, restore.stderr
    venv = place / "closed" / "venv"
    assert f"{venv} (--env) is not tracked: not readable: " in restore.stderr, restore.stderr
    assert "internal error" not in restore.stderr

    own = ["--store", str(store), "--env", str(tool)]
    # setpriv execs (runuser would stay as the parent and take the signal itself).
    argv = ["setpriv", f"--reuid={alice.uid}", f"--regid={alice.gid}", "--init-groups"]
    argv += ["env", "-i", f"PATH={os.environ['PATH']}"]
    argv += [f"{k}={v}" for k, v in env.items()]
    daemon = subprocess.Popen(
        [*argv, pkgckpt, "daemon", *own], stderr=subprocess.PIPE, text=True, cwd="/"
    )
    try:
        assert daemon.stderr is not None
        lines: list[str] = []
        for line in daemon.stderr:
            lines.append(line)
            if "watching" in line:
                break
        daemon.send_signal(signal.SIGTERM)
        rest = daemon.communicate(timeout=60)[1]
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
    text = "".join(lines) + rest
    assert daemon.returncode == 0, text
    assert "config.toml skipped: its directory is not readable by this user" in text
    assert "internal error" not in text


def test_a_directory_source_beneath_a_closed_directory_is_not_here(
    alice: User, tool: Path, place: Path
) -> None:
    """A manifest naming a directory source beneath the closed directory: restore reports
    that package as not restorable here and exits 3, without an internal error."""
    venv = place / "open" / "venv"
    alice.run([str(tool / "bin" / "python"), "-m", "venv", "--without-pip", str(venv)], check=True)
    store = place / "open" / "store"
    env = Environment(kind="python", path=str(venv))
    source = DirectorySource(path=str(place / "closed" / "project"))
    body = Body(environments=(Delta(env=env, added=(Package("proj", "1.0", source=source),)),))
    put_manifest(store, alice.name, body)
    chown_tree(store, alice)
    restore = alice.run(
        [str(tool / "bin" / "pkgckpt"), "restore", "--store", str(store), "--env", str(venv)],
        env={"XDG_RUNTIME_DIR": str(place / "run"), "PKGCKPT_DISCOVER": ""},
    )
    assert restore.returncode == 3, restore.stdout + restore.stderr
    assert "does not exist here" in restore.stdout + restore.stderr
    assert "internal error" not in restore.stderr


DISCOVER = """
import json, logging
from pkgckpt import discovery

logs = []
handler = logging.Handler()
handler.emit = lambda record: logs.append(record.getMessage())
logging.getLogger("pkgckpt").addHandler(handler)
found = discovery.discover(["conda"])
print(json.dumps({"found": [str(f.prefix) for f in found.found], "logs": logs}))
"""


def test_a_condarc_d_closed_to_the_user_is_skipped_with_a_warning(
    alice: User, tool: Path, place: Path
) -> None:
    """The conda root's condarc.d is root's and closed (it holds channel tokens): discovery
    warns that it is not read and still finds the environment the root's .condarc names;
    status and restore run as usual, without an internal error."""
    conda = place / "conda"
    (conda / "condarc.d").mkdir(parents=True)
    (conda / "condarc.d" / "token.yml").write_text("channels: [private]\n")
    (conda / "condarc.d").chmod(0o700)
    envs = place / "open" / "envs"
    (conda / ".condarc").write_text(f"envs_dirs: [{envs}]\n")
    alice.run(["mkdir", "-p", str(envs / "e" / "conda-meta")], check=True)
    env = {"CONDA_ROOT": str(conda), "XDG_RUNTIME_DIR": str(place / "run")}
    (place / "discover.py").write_text(DISCOVER)

    done = alice.run([str(tool / "bin" / "python"), str(place / "discover.py")], env=env)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["found"] == [str(envs / "e")]
    assert f"{conda / 'condarc.d'} is not read: Permission denied" in out["logs"]

    pkgckpt = str(tool / "bin" / "pkgckpt")
    store = place / "open" / "store"
    alice.run([pkgckpt, "store", "init", str(store)], check=True)
    for command in (["status"], ["restore", "--dry-run"]):
        run = alice.run([pkgckpt, *command, "--store", str(store)], env=env)
        assert run.returncode == 0, run.stdout + run.stderr
        assert "internal error" not in run.stderr
        assert "condarc.d is not read: Permission denied" in run.stderr
