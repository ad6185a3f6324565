"""`pkgckpt daemon` hands over to its own lean interpreter: same pid, same settings, no
click, still known to `status` and `snapshot`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest
from daemon_kit import World, eventually
from wheelhouse import make_venv

from pkgckpt import handoff, status
from pkgckpt.config import Config

DUMP_MODULES = """\
import atexit, os, sys
atexit.register(lambda: open(os.environ["MODULES_OUT"], "w").write(
    "\\n".join(name for name, module in sys.modules.items() if module is not None)))
"""


def test_the_settings_pass_whole_and_are_checked_on_arrival(tmp_path: Path) -> None:
    """Every setting (paths, tuples, None, numbers, flags) arrives as it left; a value of
    the wrong type is refused, not taken."""
    config = Config(
        store=tmp_path / "store",
        key="k",
        store_uid=1234,
        store_secret_file=tmp_path / "secret",
        key_defaulted="jovyan",
        env=(tmp_path / "a", tmp_path / "b"),
        r_lib=(tmp_path / "r",),
        r_home=None,
        discover=("kernels",),
        quiet_ms=50,
        shutdown_timeout=2.5,
        metrics_file=tmp_path / "k.prom",
        artifacts=False,
        find_links=("https://example.invalid/links",),
        runtime_dir=tmp_path / "run",
    )
    assert handoff.decode(handoff.encode(config)) == config
    bad = handoff.encode(config).replace(b'"quiet_ms":50', b'"quiet_ms":"50"')
    with pytest.raises(msgspec.ValidationError):
        handoff.decode(bad)


def test_the_daemon_keeps_its_pid_and_its_command_line_without_click(tmp_path: Path) -> None:
    """The process that stays up is the one started (systemd's MAINPID, the shell's $!),
    never loads click, runs with the flags given, and `status` still knows it for the
    `pkgckpt daemon` of its store and key."""
    world = World.make(tmp_path)
    venv = make_venv(tmp_path / "venv", with_pip=False)
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(DUMP_MODULES)
    modules = tmp_path / "modules.txt"
    env = {
        **world.env,
        "PYTHONPATH": str(hooks),
        "MODULES_OUT": str(modules),
    }
    d = world.daemon(*world.flags(venv.prefix), "--quiet-ms", "77")
    try:
        ready = d.start(ready=False, extra_env=env).wait_message("READY=1")
        assert d.proc is not None
        assert f"MAINPID={d.proc.pid}" in ready
        argv = Path(f"/proc/{d.proc.pid}/cmdline").read_bytes().split(b"\0")[:-1]
        assert any(b"pkgckpt.handoff" in a for a in argv)
        given = [b"daemon", *map(os.fsencode, world.flags(venv.prefix)), b"--quiet-ms", b"77"]
        assert argv[-len(given) :] == given
        config = Config(store=world.store, key=world.key, runtime_dir=world.runtime)
        state = eventually(lambda: status.read_state(config), what="status file")
        assert state.pid == d.proc.pid and status.running(state, config)
        assert d.stop() == 0
    finally:
        d.close()
    loaded = modules.read_text().split()
    assert "pkgckpt.daemon" in loaded
    assert "click" not in loaded and "pkgckpt.cli" not in loaded
    assert "_hashlib" not in loaded  # OpenSSL: a plain store and no local archive need none


def test_settings_json_cannot_hold_leave_the_daemon_in_the_commands_process(
    tmp_path: Path,
) -> None:
    """A path that is not UTF-8 cannot travel as JSON: the hand-off steps aside (returns)
    and the command runs the daemon itself, rather than not at all."""
    code = (
        "import os, sys; from pathlib import Path; from pkgckpt import handoff; "
        "from pkgckpt.config import Config; "
        f"handoff.replace(Config(env=(Path(os.fsdecode(b'{tmp_path}/\\xff')),), "
        f"runtime_dir=Path({str(tmp_path / 'run')!r}))); print('returned')"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout == "returned\n"


def test_a_first_daemon_finds_its_probe_answers_kept_and_starts_no_child(tmp_path: Path) -> None:
    """With nothing kept in the runtime directory (no restore ran first), the command asks
    the interpreter before the hand-off and keeps the answer: the daemon's own process
    recalls it and never loads subprocess, tempfile or shutil for the whole session."""
    world = World.make(tmp_path)
    venv = make_venv(tmp_path / "venv", with_pip=False)
    assert not world.runtime.exists()
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(DUMP_MODULES)
    modules = tmp_path / "modules.txt"
    env = {**world.env, "PYTHONPATH": str(hooks), "MODULES_OUT": str(modules)}
    d = world.daemon(*world.flags(venv.prefix))
    try:
        d.start(extra_env=env)
        assert list(world.runtime.glob("python-env-*.json"))
        assert d.stop() == 0
    finally:
        d.close()
    loaded = modules.read_text().split()
    assert "pkgckpt.daemon" in loaded
    # What msgspec loads by itself is not the daemon's doing (msgspec 0.19 imports json).
    code = "import sys, msgspec; print(' '.join(sys.modules))"
    own = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout
    assert not {"subprocess", "tempfile", "shutil", "json"} - set(own.split()) & set(loaded)
    # Installed here, and kept out of the daemon's process with the inspect it imports.
    assert not {"typing_extensions", "inspect", "dataclasses"} & set(loaded)
