"""The user's control over the record: `history`, `forget`, `revert` and the failure memory,
with real installs (uv) into real venvs, the real daemon and real restores."""

from __future__ import annotations

import contextlib
import json
import os
import pty
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import fault_kit
import msgspec
import pytest
from daemon_kit import Daemon, World, eventually, pins, uv_install, uv_uninstall
from fault_kit import faults, glob_escape, hung_open
from restore_kit import broken_sdist, installed, put_manifest
from rpkgs import SOURCES, needs_r
from wheelhouse import Dist, Venv, build_wheel, make_venv

from pkgckpt import manifest, record, status
from pkgckpt.checkpoint import Observation, Tracker
from pkgckpt.config import Config
from pkgckpt.errors import UnknownPackage
from pkgckpt.inventory import targets
from pkgckpt.manifest import (
    Artifact,
    Baseline,
    Body,
    Delta,
    Environment,
    Inventory,
    Manifest,
    Package,
)
from pkgckpt.store import Store, init_store

WHEELS = [
    Dist("alpha", "1.0"),
    Dist("alpha", "2.0"),
    Dist("beta", "1.0"),
    Dist("delta", "1.0"),
    Dist("dash-pkg", "1.0"),
    Dist("image-pkg", "1.0"),
]


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("record-wheels")
    for dist in WHEELS:
        build_wheel(dist, out)
    broken_sdist("brokenpkg", "1.0", out)
    return out


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World.make(tmp_path)


@pytest.fixture
def venv(world: World, wheels: Path) -> Venv:
    """A venv whose image ships image-pkg (dated an hour back), and its baseline."""
    return world.image_venv(wheels, "image-pkg==1.0", aged=True)


def flags(world: World, venv: Venv) -> list[str]:
    return [*world.flags(venv.prefix), "--baseline", str(world.tmp / "b.json")]


def restore_flags(wheels: Path) -> list[str]:
    return ["--installer", "uv", "--no-index", "--find-links", str(wheels)]


@pytest.fixture
def daemon(world: World, venv: Venv) -> Iterator[Daemon]:
    """A daemon that commits only when asked (snapshot, forget, revert): its quiet window
    is longer than any test, so each generation is one step of the test."""
    d = world.daemon(*flags(world, venv), "--quiet-ms", "600000", "--max-delay-ms", "600000")
    yield d.start()
    d.close()


def snapshot(world: World, venv: Venv) -> str:
    done = world.pkgckpt("snapshot", *flags(world, venv))
    assert done.returncode == 0, done.stderr
    return done.stdout


def key_files(world: World) -> dict[str, bytes]:
    directory = world.store / world.key
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


# -- history ---------------------------------------------------------------------------


def test_history_lists_installs_upgrades_removals_forgets_and_reverts_newest_first(
    world: World, venv: Venv, wheels: Path, daemon: Daemon
) -> None:
    """Every kind of change appears once, newest first, with the generation that made it."""
    uv_install(venv.python, wheels, "alpha==1.0", env=world.env)
    assert "the daemon wrote generation 1" in snapshot(world, venv)
    uv_install(venv.python, wheels, "alpha==2.0", "delta==1.0", env=world.env)
    assert "generation 2" in snapshot(world, venv)
    uv_uninstall(venv.python, "delta", "image-pkg", env=world.env)
    assert "generation 3" in snapshot(world, venv)
    forgot = world.pkgckpt("forget", "alpha", *flags(world, venv))
    assert forgot.returncode == 0 and "generation 4" in forgot.stdout, forgot.stderr
    back = world.pkgckpt("revert", "2", "--yes", *flags(world, venv))
    assert back.returncode == 0 and "generation 5" in back.stdout, back.stderr

    shown = world.pkgckpt("history", "--json", *flags(world, venv))
    assert shown.returncode == 0, shown.stderr
    found = json.loads(shown.stdout)
    assert found["generation"] == 5 and found["kept"] == [5, 4, 3, 2, 1]
    lines = [
        (e["generation"], e["action"], e["name"], e["old"], e["new"], e["reverted_to"])
        for e in found["entries"]
    ]
    assert lines == [
        (5, "revert", None, None, None, 2),
        (4, "forget", "alpha", None, None, None),
        (3, "remove", "delta", "1.0", None, None),
        (3, "remove", "image-pkg", "1.0", None, None),
        (2, "upgrade", "alpha", "1.0", "2.0", None),
        (2, "install", "delta", None, "1.0", None),
        (1, "install", "alpha", None, "1.0", None),
    ]
    assert all(e["exact"] and e["time"] for e in found["entries"])
    text = world.pkgckpt("history", "--limit", "3", *flags(world, venv)).stdout.splitlines()
    assert len(text) == 3
    assert text[0].endswith("revert to generation 2") and text[1].endswith("forget alpha")
    assert "remove delta 1.0" in text[2] and str(venv.prefix) in text[2]
    # Generation 2's record is current: alpha 2.0 and delta, image-pkg back as shipped.
    assert pins(world.delta().added) == ["alpha==2.0", "delta==1.0"]
    assert world.delta().removed == ()
    # The daemon's next scan leaves the reverted record alone: delta is not installed, yet
    # it stays recorded (an absence this process saw before the revert is no uninstall).
    assert "generation 5 is current" in snapshot(world, venv)


# -- forget ----------------------------------------------------------------------------


def test_forget_beside_a_running_daemon_keeps_one_writer_and_stays_forgotten(
    world: World, venv: Venv, wheels: Path, daemon: Daemon
) -> None:
    """The daemon writes the forget; neither its next scan nor a new daemon records the
    package again, until the user upgrades it."""
    uv_install(venv.python, wheels, "alpha==1.0", "beta==1.0", env=world.env)
    snapshot(world, venv)
    forgot = world.pkgckpt("forget", "alpha", *flags(world, venv))
    assert forgot.returncode == 0, forgot.stderr
    assert "forgot alpha: the daemon wrote generation 2" in forgot.stdout
    written = world.manifest()
    assert written is not None and written.writer is not None and daemon.proc is not None
    assert written.writer.pid == daemon.proc.pid  # one writer: the daemon
    assert pins(world.delta().added) == ["beta==1.0"]
    assert pins(world.delta().forgotten) == ["alpha==1.0"]
    assert not list(world.runtime.glob("request-*")) and not list(world.runtime.glob("reply-*"))

    assert "generation 2 is current" in snapshot(world, venv)  # the daemon's next scan
    assert daemon.stop() == 0
    again = world.daemon(*flags(world, venv), "--quiet-ms", "600000").start()
    try:
        assert "generation 2 is current" in snapshot(world, venv)  # a new process's first scan
        uv_install(venv.python, wheels, "alpha==2.0", env=world.env)
        assert "generation 3" in snapshot(world, venv)
    finally:
        again.close()
    assert pins(world.delta().added) == ["alpha==2.0", "beta==1.0"]
    assert world.delta().forgotten == ()


def pip_reinstall(world: World, venv: Venv, wheels: Path, pin: str) -> None:
    """pip's forced reinstall: the old dist-info moved aside (`~lpha-1.0.dist-info`), then
    the new one written."""
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(venv.python), "install", "--no-deps",
         "--force-reinstall", "--no-index", "--find-links", str(wheels), pin],
        check=True, capture_output=True, env=world.env,
    )  # fmt: skip


@pytest.mark.parametrize("tool", ["uv", "pip"])
def test_a_forgotten_package_reinstalled_at_the_same_version_is_recorded_again(
    tool: str, world: World, venv: Venv, wheels: Path, daemon: Daemon
) -> None:
    """A forced reinstall after a forget is the user installing it again, though nothing
    about the package differs: its forget ends, not that of a package merely left be."""
    uv_install(venv.python, wheels, "alpha==1.0", "beta==1.0", env=world.env)
    snapshot(world, venv)
    assert world.pkgckpt("forget", "alpha", "beta", *flags(world, venv)).returncode == 0
    assert "generation 2 is current" in snapshot(world, venv)
    if tool == "uv":
        uv_install(venv.python, wheels, "--reinstall-package", "alpha", "alpha==1.0", env=world.env)
    else:
        pip_reinstall(world, venv, wheels, "alpha==1.0")
    assert "generation 3" in snapshot(world, venv)
    assert pins(world.delta().added) == ["alpha==1.0"]
    assert pins(world.delta().forgotten) == ["beta==1.0"]
    history = world.pkgckpt("history", *flags(world, venv))
    assert history.stdout.splitlines()[0].endswith("install alpha 1.0"), history.stdout


def test_without_a_daemon_a_forgotten_package_reinstalled_as_it_was_is_recorded_again(
    world: World, venv: Venv, wheels: Path
) -> None:
    """`snapshot` with no daemon scans once, so it never sees an entry made anew; it finds
    alpha's made after the forget. beta, installed before it and left be, stays
    forgotten, by this first scan and by the next."""
    uv_install(venv.python, wheels, "alpha==1.0", "beta==1.0", env=world.env)
    snapshot(world, venv)
    assert world.pkgckpt("forget", "alpha", "beta", *flags(world, venv)).returncode == 0
    assert "generation 2 is current" in snapshot(world, venv)
    pip_reinstall(world, venv, wheels, "alpha==1.0")
    assert "generation 3" in snapshot(world, venv)
    assert pins(world.delta().added) == ["alpha==1.0"]
    assert pins(world.delta().forgotten) == ["beta==1.0"]
    assert "generation 3 is current" in snapshot(world, venv)


def test_a_forget_naming_the_store_in_another_spelling_reaches_the_daemon(
    world: World, venv: Venv, wheels: Path, daemon: Daemon
) -> None:
    """The store as `DIR/../store`, or relative to where the command runs, is the
    daemon's store: the forget is handed to the daemon, whose next commit does not
    record the package again, and a second daemon given that spelling does not start."""
    uv_install(venv.python, wheels, "alpha==1.0", "beta==1.0", "delta==1.0", env=world.env)
    snapshot(world, venv)
    detour = world.tmp / "run" / ".." / "store"
    spelled = [
        "--store", str(detour), "--key", world.key, "--env", str(venv.prefix),
        "--baseline", str(world.tmp / "b.json"),
    ]  # fmt: skip
    forgot = world.pkgckpt("forget", "alpha", *spelled)
    assert forgot.returncode == 0, forgot.stderr
    assert "forgot alpha: the daemon wrote generation 2" in forgot.stdout
    relative = subprocess.run(
        [sys.executable, "-m", "pkgckpt", "forget", "beta", *flags(world, venv)[2:],
         "--store", "store/"],
        capture_output=True, text=True, env=world.env, cwd=world.tmp, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert relative.returncode == 0, relative.stderr
    assert "forgot beta: the daemon wrote generation 3" in relative.stdout
    uv_install(venv.python, wheels, "dash-pkg==1.0", env=world.env)
    assert "generation 4" in snapshot(world, venv)
    assert pins(world.delta().added) == ["dash-pkg==1.0", "delta==1.0"]
    assert "daemon:     running" in world.pkgckpt("status", *spelled).stdout
    second = Daemon(args=[*spelled, "--quiet-ms", "100"], env=world.env, log=world.tmp / "2.log")
    second.start(ready=False)
    try:
        assert second.proc is not None and second.proc.wait(timeout=30) == 4, second.output()
    finally:
        second.close()
    assert daemon.stop() == 0


def test_an_environment_named_relative_to_the_working_directory_is_that_directory(
    world: World, venv: Venv, wheels: Path
) -> None:
    """`--env venv` run from its parent is the venv at its absolute path: snapshot
    records what it holds under that path (not "nothing to checkpoint", nor a path that
    means another directory wherever restore runs), and status and forget find it."""
    uv_install(venv.python, wheels, "alpha==1.0", "beta==1.0", env=world.env)
    rel = [*world.flags(), "--env", venv.prefix.name, "--baseline", "b.json"]

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "pkgckpt", *args, *rel],
            capture_output=True, text=True, env=world.env, cwd=world.tmp,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip

    done = run("snapshot")
    assert done.returncode == 0 and "generation 1" in done.stdout, done.stdout + done.stderr
    assert "did not answer" not in done.stderr
    assert [d.env.path for d in world.manifest().body.deltas()] == [str(venv.prefix)]
    assert pins(world.delta().added) == ["alpha==1.0", "beta==1.0"]
    shown = run("status")
    assert f"python {venv.prefix}:" in shown.stdout and "python venv:" not in shown.stdout
    forgot = run("forget", "alpha")
    assert forgot.returncode == 0 and "generation 2" in forgot.stdout, forgot.stderr
    assert pins(world.delta().added) == ["beta==1.0"]


def test_a_daemon_that_cannot_read_the_store_yet_answers_at_once_and_tries_it_when_asked(
    world: World, venv: Venv, wheels: Path
) -> None:
    """The store is not mounted (no marker) when the daemon starts, and its retries have
    grown apart: forget and snapshot are told why at once (exit 1, nothing changed), not
    after a silent wait; once the store is there, a snapshot has the daemon read it now,
    not at the end of its backoff."""
    late = world.tmp / "late"
    late.mkdir(mode=0o700)
    here = ["--store", str(late), *flags(world, venv)[2:]]
    d = world.daemon(*here, "--quiet-ms", "600000").start()
    try:
        uv_install(venv.python, wheels, "alpha==1.0", env=world.env)
        log = world.tmp / "daemon.log"
        eventually(
            lambda: any(
                float(line.rpartition("retrying in ")[2].split()[0]) >= 6
                for line in log.read_text().splitlines()
                if "retrying in " in line
            ),
            what="a retry delay of 6 s or more",
        )
        world.env["PKGCKPT_SHUTDOWN_TIMEOUT"] = "5"  # the commands' wait for the daemon
        forgot = world.pkgckpt("forget", "alpha", *here)
        assert forgot.returncode == 1
        assert "cannot read the store" in forgot.stderr and "nothing was changed" in forgot.stderr
        assert "did not answer" not in forgot.stderr
        snap = world.pkgckpt("snapshot", *here)
        assert snap.returncode == 1 and "cannot read the store" in snap.stderr, snap.stderr
        init_store(late)
        snap = world.pkgckpt("snapshot", *here)
        assert snap.returncode == 0, snap.stderr
        assert "the daemon wrote generation 1" in snap.stdout
        assert pins(Store(late, world.key).read().body.environments[0].added) == ["alpha==1.0"]
        assert d.stop() == 0
    finally:
        d.close()


def test_a_forget_whose_daemon_dies_before_answering_says_so_at_once(
    world: World, venv: Venv, wheels: Path, daemon: Daemon
) -> None:
    """The daemon is killed while a forget waits for it: the forget says it stopped
    before answering, at once, not that it did not answer within the whole wait."""
    uv_install(venv.python, wheels, "alpha==1.0", env=world.env)
    snapshot(world, venv)
    assert daemon.proc is not None
    daemon.signal(signal.SIGSTOP)  # it cannot take the request
    waiting = subprocess.Popen(
        [sys.executable, "-m", "pkgckpt", "forget", "alpha", *flags(world, venv)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=world.env,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    eventually(lambda: list(world.runtime.glob("request-*")), what="the request")
    daemon.kill()
    _, err = waiting.communicate(timeout=8)
    assert waiting.returncode == 1
    assert f"the daemon (pid {daemon.proc.pid}) stopped before it answered" in err, err
    assert "nothing was changed" in err and "within" not in err


def refused_second_daemon(world: World, venv: Venv, daemon: Daemon) -> None:
    """A second `pkgckpt daemon` for the same store and key exits 4 naming `daemon`."""
    second = Daemon(
        args=[*flags(world, venv), "--quiet-ms", "100"], env=world.env, log=world.tmp / "2.log"
    ).start(ready=False)
    try:
        assert second.proc is not None and daemon.proc is not None
        assert second.proc.wait(timeout=30) == 4, second.output()
    finally:
        second.close()
    assert f"a pkgckpt daemon (pid {daemon.proc.pid}) already runs" in second.output()


def test_a_second_daemon_for_the_key_refuses_to_start_so_a_forget_stays_forgotten(
    world: World, venv: Venv, wheels: Path, daemon: Daemon
) -> None:
    """A second `pkgckpt daemon` for the same store and key (an entrypoint run twice, a
    unit beside the entrypoint) exits 4 naming the one that runs, which keeps its status
    file: the forget reaches the only writer, and no later commit records the package
    again."""
    refused_second_daemon(world, venv, daemon)
    assert json.loads(world.status_file.read_text())["pid"] == daemon.proc.pid

    uv_install(venv.python, wheels, "alpha==1.0", "beta==1.0", env=world.env)
    assert "generation 1" in snapshot(world, venv)
    forgot = world.pkgckpt("forget", "alpha", *flags(world, venv))
    assert forgot.returncode == 0, forgot.stderr
    assert "forgot alpha: the daemon wrote generation 2" in forgot.stdout
    uv_install(venv.python, wheels, "delta==1.0", env=world.env)
    assert "generation 3" in snapshot(world, venv)
    assert daemon.stop() == 0
    assert pins(world.delta().added) == ["beta==1.0", "delta==1.0"]
    assert pins(world.delta().forgotten) == ["alpha==1.0"]


def hide_runtime_dir(world: World) -> None:
    """The runtime directory removed with the daemon's status file and lock in it, and
    made again empty by the user's own command, before the daemon writes its status."""
    import shutil

    shutil.rmtree(world.runtime)
    world.runtime.mkdir(mode=0o700)


def test_a_forget_reaches_a_daemon_whose_runtime_directory_was_made_again(
    world: World, venv: Venv, wheels: Path, daemon: Daemon
) -> None:
    """No status file names the daemon, but it holds the lock of the store and key: the
    forget (and a snapshot) wakes it and hands it the change; the daemon's next commit
    keeps it forgotten."""
    uv_install(venv.python, wheels, "alpha==1.0", "beta==1.0", env=world.env)
    snapshot(world, venv)
    hide_runtime_dir(world)
    forgot = world.pkgckpt("forget", "alpha", *flags(world, venv))
    assert forgot.returncode == 0, forgot.stderr
    assert "forgot alpha: the daemon wrote generation 2" in forgot.stdout
    written = world.manifest()
    assert written is not None and written.writer is not None and daemon.proc is not None
    assert written.writer.pid == daemon.proc.pid
    uv_install(venv.python, wheels, "delta==1.0", env=world.env)
    hide_runtime_dir(world)
    assert "generation 3" in snapshot(world, venv)  # written on the wake-up, or on request
    written = world.manifest()
    assert written is not None and written.writer is not None
    assert (written.generation, written.writer.pid) == (3, daemon.proc.pid)
    assert daemon.stop() == 0
    assert pins(world.delta().added) == ["beta==1.0", "delta==1.0"]


def test_a_second_daemon_refuses_to_start_beside_one_whose_runtime_directory_was_made_again(
    world: World, venv: Venv, wheels: Path, daemon: Daemon
) -> None:
    """The new runtime directory holds no lock, but the running daemon still holds it on
    the removed file: a second daemon exits 4 naming it, and stays no second writer."""
    hide_runtime_dir(world)
    refused_second_daemon(world, venv, daemon)
    uv_install(venv.python, wheels, "alpha==1.0", env=world.env)
    assert "generation 1" in snapshot(world, venv)
    assert daemon.stop() == 0


def test_a_forget_that_cannot_reach_the_daemon_holding_the_lock_writes_nothing(
    world: World, venv: Venv, wheels: Path, daemon: Daemon
) -> None:
    """A daemon that holds the lock but neither has a status file to find nor answers
    (stopped): the forget exits 1 naming it and what to do, and the store is untouched,
    since the daemon's record would write the package back."""
    uv_install(venv.python, wheels, "alpha==1.0", env=world.env)
    snapshot(world, venv)
    before = key_files(world)
    hide_runtime_dir(world)
    assert daemon.proc is not None
    daemon.signal(signal.SIGSTOP)
    try:
        refused = world.pkgckpt("forget", "alpha", *flags(world, venv))
    finally:
        daemon.signal(signal.SIGCONT)
    assert refused.returncode == 1, refused.stdout
    assert f"daemon (pid {daemon.proc.pid})" in refused.stderr
    assert "nothing was changed" in refused.stderr
    assert key_files(world) == before
    assert daemon.stop() == 0
    assert pins(world.delta().added) == ["alpha==1.0"]


def test_a_daemon_that_exits_as_it_is_woken_leaves_no_daemon_and_no_error(
    world: World, venv: Venv, daemon: Daemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The daemon found by its lock exits between being found and being sent SIGHUP (it
    was being stopped): there is no daemon to hand the change to, never a traceback."""
    hide_runtime_dir(world)
    checked = status.is_daemon

    def exits_once_checked(pid: int, config: Config) -> bool:
        found = checked(pid, config)
        daemon.kill()
        return found

    monkeypatch.setattr(status, "is_daemon", exits_once_checked)
    config = Config(store=world.store, key=world.key, runtime_dir=world.runtime)
    assert status.find_daemon(config) is None


@contextlib.contextmanager
def holding_lock(path: Path) -> Iterator[int]:
    """Another process of this user holds `path` locked as a daemon holds its lock."""
    code = (
        "import fcntl, os, sys, time\n"
        "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX)\n"
        "print('locked', flush=True)\n"
        "time.sleep(120)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"locked\n"
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()


def test_a_lock_taken_before_the_status_file_is_written_is_waited_for(tmp_path: Path) -> None:
    """A daemon takes its lock in the runtime directory (at its start, or moving into one
    made again) a moment before it writes its status file there. A forget that looked in
    that moment took it for no daemon and wrote the store behind its back (a CI run saw
    'pkgckpt wrote generation 2'): it waits for the status file, and exits 1 when none
    comes. A lock of that name in another directory is another container's."""
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    config = Config(store=tmp_path / "store", key="k", runtime_dir=run, shutdown_timeout=0)
    lock = run / status.lock_name(config)
    with holding_lock(lock) as pid, pytest.raises(status.Unreachable, match=f"pid {pid}"):
        status.find_daemon(config)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    with holding_lock(elsewhere / status.lock_name(config)):
        assert status.find_daemon(config) is None


def test_a_sighup_while_the_daemon_still_holds_its_lock_never_ends_it(
    world: World, venv: Venv
) -> None:
    """`find_daemon` SIGHUPs whoever holds the lock: the daemon lets the lock go before it
    gives SIGHUP back its default action (the end of the process), never after. Its last
    step, letting the lock go, is made slow here, so that a SIGHUP lands in it."""
    script = world.tmp / "slow_close.py"
    script.write_text(
        "import sys, time\n"
        "sys.argv[1:1] = ['daemon']\n"
        "from pkgckpt import handoff, status\n"
        "handoff.replace = lambda config: None  # the patch below must stay in the daemon\n"
        "close = status.StatusFile.close\n"
        "def slow(self):\n"
        "    if self._lock is not None:\n"
        f"        open({str(world.tmp / 'closing')!r}, 'w').close()\n"
        "        time.sleep(3)\n"
        "    close(self)\n"
        "status.StatusFile.close = slow\n"
        "from pkgckpt.entry import main\n"
        "main()\n"
    )
    log = world.tmp / "slow.log"
    with log.open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, str(script), *flags(world, venv)],
            stdout=err, stderr=err, stdin=subprocess.DEVNULL, env=world.env,
        )  # fmt: skip
    try:
        eventually(lambda: "watching" in log.read_text(), 60, "the daemon's start")
        proc.send_signal(signal.SIGTERM)
        eventually((world.tmp / "closing").exists, 60, "the daemon letting its lock go")
        proc.send_signal(signal.SIGHUP)
        assert proc.wait(30) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_forget_of_an_unknown_name_fails_and_lists_the_recorded_names(
    world: World, venv: Venv, wheels: Path
) -> None:
    """Exit 1 naming what the record holds, nothing written; names match normalized."""
    uv_install(venv.python, wheels, "alpha==1.0", "dash-pkg==1.0", env=world.env)
    snapshot(world, venv)
    before = key_files(world)
    unknown = world.pkgckpt("forget", "alpha", "nope", *flags(world, venv))
    assert unknown.returncode == 1
    assert "not in the record" in unknown.stderr and "nope" in unknown.stderr
    assert "it holds: alpha, dash-pkg" in unknown.stderr
    assert key_files(world) == before
    forgot = world.pkgckpt("forget", "Dash_Pkg", "ALPHA", *flags(world, venv))
    assert forgot.returncode == 0, forgot.stderr
    assert "pkgckpt wrote generation 2" in forgot.stdout
    assert world.delta().added == ()
    assert "generation 2 is current" in snapshot(world, venv)  # still installed, not recorded


def recorded_in(world: World) -> dict[str, list[str]]:
    found = world.manifest()
    assert found is not None
    return {d.env.path: pins((*d.added, *d.changed)) for d in found.body.deltas()}


def test_forget_with_env_forgets_in_an_environment_deleted_since(
    world: World, venv: Venv, wheels: Path
) -> None:
    """The record still holds a venv removed since (restore leaves it alone as missing):
    `forget --env` of it drops its packages there, and only there, without reading it."""
    old = make_venv(world.tmp / "old", with_pip=False)
    both = [*flags(world, venv), "--env", str(old.prefix)]
    made = world.pkgckpt("baseline", *world.flags(venv.prefix, old.prefix), "--output",
                         str(world.tmp / "b.json"))  # fmt: skip
    assert made.returncode == 0, made.stderr
    uv_install(venv.python, wheels, "alpha==1.0", "beta==1.0", env=world.env)
    uv_install(old.python, wheels, "alpha==1.0", env=world.env)
    done = world.pkgckpt("snapshot", *both)
    assert done.returncode == 0, done.stderr
    assert recorded_in(world) == {
        str(venv.prefix): ["alpha==1.0", "beta==1.0"],
        str(old.prefix): ["alpha==1.0"],
    }
    import shutil

    shutil.rmtree(old.prefix)
    forgot = world.pkgckpt("forget", "alpha", *world.flags(old.prefix))
    assert forgot.returncode == 0, forgot.stderr
    assert "forgot alpha: pkgckpt wrote generation 2" in forgot.stdout
    assert recorded_in(world) == {
        str(venv.prefix): ["alpha==1.0", "beta==1.0"],
        str(old.prefix): [],
    }


@needs_r
def test_forget_with_r_lib_alone_leaves_the_python_environments_alone(
    world: World, venv: Venv, tmp_path: Path
) -> None:
    """R's ckpt.base and Python's ckpt-base are both recorded, the venv found through its
    Jupyter kernel: `forget ckpt.base --r-lib LIB` forgets the R package only."""
    wheels = tmp_path / "wheels"
    build_wheel(Dist("ckpt.base", "1.0.0"), wheels)
    lib = world.tmp / "rlib"
    lib.mkdir()
    spec = world.tmp / "jupyter" / "kernels" / "venv"
    spec.mkdir(parents=True)
    kernel = {"argv": [str(venv.python), "-m", "ipykernel_launcher", "-f", "{c}"],
              "display_name": "venv", "language": "python"}  # fmt: skip
    (spec / "kernel.json").write_text(json.dumps(kernel))
    world.env["JUPYTER_PATH"] = str(world.tmp / "jupyter")
    tracked = [*world.flags(venv.prefix), "--r-lib", str(lib), "--baseline", "b.json"]
    made = world.pkgckpt("baseline", *tracked[:-2], "--output", str(world.tmp / "b.json"))
    assert made.returncode == 0, made.stderr
    uv_install(venv.python, wheels, "ckpt.base==1.0.0", env=world.env)
    r = subprocess.run(
        ["R", "CMD", "INSTALL", "--no-test-load", "-l", str(lib), str(SOURCES / "ckpt.base")],
        env=world.env, cwd=world.tmp, capture_output=True, text=True,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    tracked[-1] = str(world.tmp / "b.json")
    done = world.pkgckpt("snapshot", *tracked)
    assert done.returncode == 0, done.stderr
    assert recorded_in(world) == {
        str(venv.prefix): ["ckpt-base==1.0.0"],
        str(lib): ["ckpt.base==1.0.0"],
    }
    forgot = world.pkgckpt("forget", "ckpt.base", *world.flags(), "--r-lib", str(lib))
    assert forgot.returncode == 0, forgot.stderr
    assert recorded_in(world) == {str(venv.prefix): ["ckpt-base==1.0.0"], str(lib): []}


def test_a_request_file_others_could_write_is_refused_by_the_daemon(
    world: World, venv: Venv, wheels: Path, daemon: Daemon
) -> None:
    """A request readable or writable by others is removed unread: nothing forgotten."""
    uv_install(venv.python, wheels, "alpha==1.0", env=world.env)
    snapshot(world, venv)
    planted = world.runtime / f"request-{world.key}.1.{'0' * 16}.json"
    planted.write_text('{"type": "forget", "names": ["alpha"]}')
    planted.chmod(0o644)
    snapshot(world, venv)  # SIGHUP: the daemon looks at its requests
    assert not planted.exists()
    assert pins(world.delta().added) == ["alpha==1.0"]
    assert "refused" in daemon.output()


@contextlib.contextmanager
def read_only(directory: Path) -> Iterator[Callable[[], None]]:
    """`directory` read-only (a read-only bind mount over itself), as a store the server
    exports read-only or that refuses writes: reads go through, every write fails.
    Yields the function that makes it writable again (also called on the way out)."""
    bound = subprocess.run(["mount", "--bind", str(directory), str(directory)], check=False)
    if bound.returncode != 0:
        pytest.skip("cannot bind-mount here")
    mounted = True

    def writable() -> None:
        nonlocal mounted
        if mounted:
            subprocess.run(["umount", "-l", str(directory)], check=True)
            mounted = False

    try:
        ro = ["mount", "-o", "remount,bind,ro", str(directory)]
        if subprocess.run(ro, check=False).returncode != 0:
            pytest.skip("cannot remount read-only here")
        yield writable
    finally:
        writable()


def pending(world: World, venv: Venv) -> int:
    shown = world.pkgckpt("status", "--json", *flags(world, venv))
    assert shown.returncode == 0, shown.stderr
    return int(json.loads(shown.stdout)["daemon"].get("pending", 0))


def test_a_forget_the_store_refused_is_pending_and_retried_until_it_takes_it(
    world: World, venv: Venv, wheels: Path, daemon: Daemon
) -> None:
    """The daemon keeps a forget the store did not take: the command exits 5 (not 1,
    which says nothing was changed), `status` and the metrics count it, and it is written
    once the store takes writes again, with no other event."""
    uv_install(venv.python, wheels, "alpha==1.0", "beta==1.0", env=world.env)
    snapshot(world, venv)
    with read_only(world.store) as writable:
        forgot = world.pkgckpt("forget", "alpha", *flags(world, venv))
        assert forgot.returncode == 5, forgot.stderr
        assert "not on the store yet (the daemon keeps it and retries)" in forgot.stderr
        assert "nothing was changed" not in forgot.stderr
        assert pending(world, venv) == 1
        printed = world.pkgckpt("status", "--prometheus", *flags(world, venv)).stdout
        assert f'pkgckpt_pending_changes{{key="{world.key}"}} 1' in printed, printed
        # The store still records alpha; only the daemon knows it is going.
        text = world.pkgckpt("status", *flags(world, venv)).stdout
        assert "    pending  forget alpha\n" in text, text
        assert world.generation() == 1
        writable()
        eventually(lambda: world.generation() == 2, what="the forget retried")
    assert pins(world.delta().added) == ["beta==1.0"]
    assert pins(world.delta().forgotten) == ["alpha==1.0"]
    assert pending(world, venv) == 0
    assert daemon.stop() == 0, daemon.output()


def test_sigterm_with_a_forget_the_store_never_took_exits_1(
    world: World, venv: Venv, wheels: Path
) -> None:
    """A forget the daemon holds when the store keeps refusing it until --shutdown-timeout
    is not "every change is on the store": exit 1, saying it is not."""
    d = world.daemon(*flags(world, venv), "--quiet-ms", "600000", "--shutdown-timeout", "2")
    d.start()
    try:
        uv_install(venv.python, wheels, "alpha==1.0", env=world.env)
        snapshot(world, venv)
        with read_only(world.store):
            assert world.pkgckpt("forget", "alpha", *flags(world, venv)).returncode == 5
            assert d.stop() == 1, d.output()
        assert "exiting with changes not on the store (1)" in d.output()
        assert "every change is on the store" not in d.output()
    finally:
        d.close()
    assert pins(world.delta().added) == ["alpha==1.0"]  # what the exit code said


def test_restore_failures_the_store_refused_are_retried_by_the_daemon(
    world: World, venv: Venv, wheels: Path
) -> None:
    """A restore's failure count, handed to a daemon while the store refuses writes, is
    pending in the daemon and written once the store takes it."""
    recorded_broken(world, venv)
    d = world.daemon(*flags(world, venv), "--quiet-ms", "600000", "--max-delay-ms", "600000")
    d.start()
    try:
        with read_only(world.store) as writable:
            run = world.pkgckpt("restore", *flags(world, venv), *restore_flags(wheels))
            assert run.returncode == 3, run.stderr
            assert "cannot record the failed packages" in run.stderr, run.stderr
            assert pending(world, venv) == 1
            writable()
            eventually(lambda: world.delta().failing, what="the failure count retried")
        (failing,) = world.delta().failing
        assert (failing.name, failing.count) == ("brokenpkg", 1)
        assert d.stop() == 0, d.output()
    finally:
        d.close()


# -- revert ----------------------------------------------------------------------------


def two_generations(world: World, venv: Venv, wheels: Path) -> None:
    """Generation 1: alpha 1.0. Generation 2: alpha 2.0 and delta 1.0."""
    uv_install(venv.python, wheels, "alpha==1.0", env=world.env)
    assert "generation 1" in snapshot(world, venv)
    uv_install(venv.python, wheels, "alpha==2.0", "delta==1.0", env=world.env)
    assert "generation 2" in snapshot(world, venv)


def test_revert_then_restore_brings_the_generation_back(
    world: World, venv: Venv, wheels: Path
) -> None:
    """Revert writes generation 3 with generation 1's record and installs nothing; a scan
    does not record what it took out; the next restore applies it."""
    two_generations(world, venv, wheels)
    back = world.pkgckpt("revert", "1", "--yes", *flags(world, venv), *restore_flags(wheels))
    assert back.returncode == 0, back.stderr
    assert "install alpha 1.0 (added; installed 2.0)" in back.stdout
    assert "pkgckpt wrote generation 3" in back.stdout
    assert "the next `pkgckpt restore` applies it" in back.stdout
    assert installed(venv.site_packages)["alpha"] == "2.0"
    assert pins(world.delta().added) == ["alpha==1.0"]
    assert pins(world.delta().forgotten) == ["alpha==2.0", "delta==1.0"]
    assert "generation 3 is current" in snapshot(world, venv)

    done = world.pkgckpt("restore", *flags(world, venv), *restore_flags(wheels))
    assert done.returncode == 0, done.stderr
    assert installed(venv.site_packages)["alpha"] == "1.0"
    assert "delta" in installed(venv.site_packages)  # restore removes only what it records
    assert "generation 3 is current" in snapshot(world, venv)
    assert pins(world.delta().added) == ["alpha==1.0"]


def test_a_second_revert_or_a_forget_goes_on_ignoring_the_version_installed_here(
    world: World, venv: Venv, wheels: Path
) -> None:
    """After `revert 1` the record says alpha 1.0, and alpha 2.0, installed here, is
    ignored. Another revert, and a forget of alpha, go on ignoring 2.0, not the 1.0 the
    record named: else the next scan takes alpha 2.0 for an install and records it."""
    two_generations(world, venv, wheels)
    for step in (["revert", "1", "--yes"], ["revert", "1", "--yes"], ["forget", "alpha"]):
        done = world.pkgckpt(*step, *flags(world, venv))
        assert done.returncode == 0, done.stdout + done.stderr
        assert "alpha==2.0" in pins(world.delta().forgotten), (step, world.delta())
        found = world.manifest()
        assert found is not None
        assert f"generation {found.generation} is current" in snapshot(world, venv), step
    assert pins(world.delta().added) == []


def test_a_revert_beside_a_daemon_keeps_an_install_it_had_not_committed_yet(
    world: World, venv: Venv, wheels: Path, daemon: Daemon
) -> None:
    """beta is installed while the daemon waits out its quiet window; `revert 1` reads
    its plan from the store, which does not hold beta, and does not name it. The daemon
    reverts first and then scans: beta is recorded on top of generation 1's record, as
    it would be without a daemon, not taken out of the record unnamed."""
    two_generations(world, venv, wheels)
    uv_install(venv.python, wheels, "beta==1.0", env=world.env)
    back = world.pkgckpt("revert", "1", "--yes", *flags(world, venv))
    assert back.returncode == 0, back.stdout + back.stderr
    (line,) = [x for x in back.stdout.splitlines() if x.startswith("Leaves the record")]
    assert "delta 1.0" in line and "beta" not in line, line
    after = world.delta()
    assert pins(after.added) == ["alpha==1.0", "beta==1.0"], after
    assert pins(after.forgotten) == ["alpha==2.0", "delta==1.0"], after


def test_revert_names_what_leaves_the_record_and_stays_as_it_is_here(
    world: World, venv: Venv, wheels: Path
) -> None:
    """Generation 2 added delta; reverting to 1 takes it out of the record but not out of
    this container: the preview says so, as the restore plan cannot (it has nothing to do
    for delta), so that the user knows a new container will not get it."""
    two_generations(world, venv, wheels)
    preview = world.pkgckpt("revert", "1", "--dry-run", *flags(world, venv))
    assert preview.returncode == 0, preview.stderr
    assert (
        "Leaves the record (stays as it is here; a new container has what the image ships): "
        f"delta 1.0 in {venv.prefix}"
    ) in preview.stdout, preview.stdout
    (line,) = [x for x in preview.stdout.splitlines() if x.startswith("Leaves the record")]
    assert "alpha" not in line  # still recorded, at 1.0: the plan shows it


def test_revert_with_restore_installs_it_now(world: World, venv: Venv, wheels: Path) -> None:
    """`--restore` applies the reverted record in this container at once."""
    two_generations(world, venv, wheels)
    back = world.pkgckpt(
        "revert", "1", "--yes", "--restore", *flags(world, venv), *restore_flags(wheels)
    )
    assert back.returncode == 0, back.stderr
    assert "Restored generation 3" in back.stdout
    assert installed(venv.site_packages)["alpha"] == "1.0"


def test_a_revert_to_the_current_generation_is_nothing_to_do(
    world: World, venv: Venv, wheels: Path
) -> None:
    """Nothing to do is exit 0, as for any command, and writes nothing; it shows the plan
    of what this container lacks of the record, and `--restore` still applies it. It
    exited 1, as an error."""
    two_generations(world, venv, wheels)
    uv_uninstall(venv.python, "delta", env=world.env)
    before = key_files(world)
    same = world.pkgckpt("revert", "2", "--yes", *flags(world, venv), *restore_flags(wheels))
    assert same.returncode == 0, same.stderr
    head, *plan = same.stdout.splitlines()
    assert head == "Generation 2 is the current one: nothing to revert."
    assert "install delta 1.0" in same.stdout  # the plan: what this container lacks of it
    assert plan[-1] == "Nothing was installed: the next `pkgckpt restore` applies it."
    asked = revert_on_a_terminal(world, venv, "n", generation="2")
    assert asked.returncode == 0, asked.stderr
    assert "Revert?" not in asked.stdout and "install delta 1.0" in asked.stdout
    assert key_files(world) == before
    again = world.pkgckpt(
        "revert", "2", "--yes", "--restore", *flags(world, venv), *restore_flags(wheels)
    )
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith("Generation 2 is the current one: nothing to revert.\n")
    assert "Restored generation 2" in again.stdout
    assert installed(venv.site_packages)["delta"] == "1.0"
    assert world.generation() == 2


def test_revert_dry_run_changes_nothing(world: World, venv: Venv, wheels: Path) -> None:
    """The plan is printed; the store's files and the environment stay as they were."""
    two_generations(world, venv, wheels)
    before, packages = key_files(world), installed(venv.site_packages)
    dry = world.pkgckpt("revert", "1", "--dry-run", *flags(world, venv), *restore_flags(wheels))
    assert dry.returncode == 0, dry.stderr
    assert "install alpha 1.0" in dry.stdout and "Dry run: nothing was changed." in dry.stdout
    assert key_files(world) == before
    assert installed(venv.site_packages) == packages


def test_a_revert_the_daemon_holds_for_a_refusing_store_exits_5_and_lands_later(
    world: World, venv: Venv, wheels: Path, daemon: Daemon
) -> None:
    """A revert the daemon took while the store refuses writes is a change made, not
    "nothing was changed": exit 5 saying the daemon keeps it; written once the store
    takes writes again."""
    two_generations(world, venv, wheels)
    with read_only(world.store) as writable:
        held = world.pkgckpt("revert", "1", "--yes", *flags(world, venv))
        assert held.returncode == 5, held.stderr
        assert "the daemon keeps it and retries" in held.stderr
        assert world.generation() == 2
        writable()
        eventually(lambda: world.generation() == 3, what="the revert retried")
    assert pins(world.delta().added) == ["alpha==1.0"]
    assert daemon.stop() == 0, daemon.output()


def test_revert_goes_back_as_far_as_keep_generations_and_status_says_so(
    world: World, venv: Venv, wheels: Path
) -> None:
    """With keep_generations = 2, generation 1 is gone: revert says how far it can go."""
    world.env["PKGCKPT_KEEP_GENERATIONS"] = "2"
    two_generations(world, venv, wheels)
    uv_install(venv.python, wheels, "beta==1.0", env=world.env)
    assert "generation 3" in snapshot(world, venv)
    refused = world.pkgckpt("revert", "1", "--yes", *flags(world, venv))
    assert refused.returncode == 1
    assert "generation 1 is not kept" in refused.stderr
    assert "back to generation 2" in refused.stderr
    shown = world.pkgckpt("status", *flags(world, venv))
    assert "revert:     back to generation 2" in shown.stdout
    as_json = json.loads(world.pkgckpt("status", "--json", *flags(world, venv)).stdout)
    assert as_json["revert_back_to"] == 2


def test_with_only_the_current_generation_kept_revert_and_status_say_there_is_no_going_back(
    world: World, venv: Venv, wheels: Path
) -> None:
    """keep_generations = 1: no generation before the current one is kept, so neither
    `revert` nor `status` offers to go back to the current one."""
    world.env["PKGCKPT_KEEP_GENERATIONS"] = "1"
    two_generations(world, venv, wheels)
    refused = world.pkgckpt("revert", "1", "--yes", *flags(world, venv))
    assert refused.returncode == 1
    assert "generation 1 is not kept on the store" in refused.stderr
    assert "no generation before the current one (2) is kept" in refused.stderr
    assert "go back to generation 2" not in refused.stderr
    shown = world.pkgckpt("status", *flags(world, venv))
    assert "revert:     nothing to go back to: generation 2 is the only one kept" in shown.stdout
    as_json = json.loads(world.pkgckpt("status", "--json", *flags(world, venv)).stdout)
    assert as_json["revert_back_to"] == 2


# -- failure memory --------------------------------------------------------------------


def test_a_package_failing_three_restores_shows_its_count_and_reason_in_status(
    world: World, venv: Venv, wheels: Path
) -> None:
    """Each failed restore counts; status shows the count, the reason and the forget hint;
    after `forget` restore no longer tries it. The counts amend the generation they count
    in: no kept generation is spent on them, and history shows nothing new."""
    recorded_broken(world, venv)
    for attempt in range(3):
        run = world.pkgckpt("restore", *flags(world, venv), *restore_flags(wheels))
        assert run.returncode == 3, run.stderr
        assert "`pkgckpt forget brokenpkg` stops" in run.stderr
        assert "`pkgckpt forget brokenpkg` stops it" in run.stdout
        (failing,) = world.delta().failing
        assert (failing.name, failing.count) == ("brokenpkg", attempt + 1)
        assert world.generation() == 1
        assert Store(world.store, world.key).generations() == [1]
    assert "BUILD FAILED: brokenpkg cannot be built here" in failing.reason
    text = world.pkgckpt("status", *flags(world, venv)).stdout
    assert "failing  brokenpkg 1.0: 3 restore(s) in a row" in text
    assert "`pkgckpt forget brokenpkg` stops retrying it" in text
    assert "BUILD FAILED" in text
    report = json.loads(world.pkgckpt("status", "--json", *flags(world, venv)).stdout)
    (shown,) = [f for e in report["environments"] for f in e["failing"]]
    assert shown["count"] == 3 and "BUILD FAILED" in shown["reason"]

    assert world.pkgckpt("forget", "brokenpkg", *flags(world, venv)).returncode == 0
    calm = world.pkgckpt("restore", *flags(world, venv), *restore_flags(wheels))
    assert calm.returncode == 0 and "Nothing to restore" in calm.stdout, calm.stderr
    assert world.delta().failing == ()


def test_the_forget_offered_for_a_failing_package_recorded_twice_names_its_env(
    world: World, venv: Venv, wheels: Path
) -> None:
    """brokenpkg fails in the venv but is recorded in a second one too: the command restore
    and status offer stops the retries there and keeps the other environment's record."""
    other = make_venv(world.tmp / "other", with_pip=False)
    config = Config(env=(venv.prefix, other.prefix), runtime_dir=world.tmp / "probe")
    mine, theirs = (t.env for t in targets(config) if t.env.kind == "python" and not t.env.user)
    broken = Package(name="brokenpkg", version="1.0")
    put_manifest(world.store, world.key, Body(environments=(
        Delta(env=mine, added=(Package(name="alpha", version="1.0"), broken)),
        Delta(env=theirs, added=(broken,)),
    )))  # fmt: skip
    run = world.pkgckpt("restore", *flags(world, venv), *restore_flags(wheels))
    assert run.returncode == 3, run.stderr
    # The failed restore names the same command, in its report and in its last line.
    assert f"`pkgckpt forget brokenpkg --env {venv.prefix}` stops it" in run.stdout
    assert f"`pkgckpt forget brokenpkg --env {venv.prefix}` stops retrying it" in run.stderr
    both = [*flags(world, venv), "--env", str(other.prefix)]
    text = world.pkgckpt("status", *both).stdout
    hint = f"`pkgckpt forget brokenpkg --env {venv.prefix}` stops retrying it"
    assert hint in text, text
    forgot = world.pkgckpt("forget", "brokenpkg", *world.flags(venv.prefix))
    assert forgot.returncode == 0, forgot.stderr
    assert recorded_in(world) == {
        str(venv.prefix): ["alpha==1.0"],
        str(other.prefix): ["brokenpkg==1.0"],
    }


def recorded_broken(world: World, venv: Venv) -> None:
    """A manifest on the store recording alpha 1.0 and brokenpkg 1.0 (whose build fails)."""
    config = Config(env=(venv.prefix,), runtime_dir=world.tmp / "probe")
    env = next(t.env for t in targets(config) if not t.env.user)
    added = (Package(name="alpha", version="1.0"), Package(name="brokenpkg", version="1.0"))
    put_manifest(world.store, world.key, Body(environments=(Delta(env=env, added=added),)))


def test_a_restore_beside_a_running_daemon_has_the_daemon_count_its_failures(
    world: World, venv: Venv, wheels: Path
) -> None:
    """The failure count is written by the daemon when one runs: one writer. It amends
    the generation the daemon holds: a restore at each start spends none."""
    recorded_broken(world, venv)
    d = world.daemon(*flags(world, venv), "--quiet-ms", "600000", "--max-delay-ms", "600000")
    d.start()
    try:
        before = world.generation()
        for attempt in range(2):
            run = world.pkgckpt("restore", *flags(world, venv), *restore_flags(wheels))
            assert run.returncode == 3, run.stderr
            written = world.manifest()
            assert written is not None and written.writer is not None and d.proc is not None
            assert written.writer.pid == d.proc.pid
            assert written.generation == before
            (failing,) = world.delta().failing
            assert (failing.name, failing.count) == ("brokenpkg", attempt + 1)
            assert pins(world.delta().added) == ["alpha==1.0", "brokenpkg==1.0"]
    finally:
        d.close()


def test_a_failure_reason_is_trimmed_and_stripped_of_credentials() -> None:
    """URL credentials and secrets go; control characters go; at most 500 bytes, the end."""
    message = (
        "é" * 400
        + "\nLooking in indexes: https://bob:hunter2@pypi.example/simple\n"
        + "token=abc123 \x1b[31mERROR: no such version\x1b[0m"
    )
    kept = record.reason(message)
    assert len(kept.encode()) <= manifest.REASON_BYTES
    assert "hunter2" not in kept and "bob" not in kept and "abc123" not in kept
    assert "https://***@pypi.example/simple" in kept and "token=***" in kept
    assert "\x1b" not in kept and kept.endswith("ERROR: no such version?[0m")
    # The last whole lines, what was left out marked: no line is shown cut in two.
    assert kept.startswith("… Looking in indexes: "), kept
    long_line = record.reason("x" * 600)
    assert long_line.startswith("… x") and len(long_line.encode()) == manifest.REASON_BYTES
    assert record.reason("short\nreason") == "short\nreason"


# -- the tracker's side of a forget ----------------------------------------------------

ENV = Environment(kind="python", path="/opt/venv")
IMAGE = {"six": Package(name="six", version="1.16.0")}
ALPHA = Package(name="alpha", version="1.0")


def forgot_alpha() -> Manifest:
    return Manifest(generation=2, body=Body(environments=(Delta(env=ENV, forgotten=(ALPHA,)),)))


def test_a_new_process_does_not_record_a_forgotten_install_it_finds_as_it_was() -> None:
    """First scan: alpha 1.0 installed as forgotten: not recorded, the forget kept."""
    t = Tracker(
        Baseline(environments=(Inventory(env=ENV, packages=(*IMAGE.values(),)),)), forgot_alpha()
    )
    assert t.observe(ENV, Observation({**IMAGE, "alpha": ALPHA})) == []
    delta = t.body().delta(ENV)
    assert delta is not None and delta.added == () and delta.forgotten == (ALPHA,)


def test_a_forgotten_package_installed_again_is_recorded_again() -> None:
    """Absent at the first scan, then installed (same version): the forget ends."""
    t = Tracker(
        Baseline(environments=(Inventory(env=ENV, packages=(*IMAGE.values(),)),)), forgot_alpha()
    )
    t.observe(ENV, Observation(dict(IMAGE)))
    changes = t.observe(ENV, Observation({**IMAGE, "alpha": ALPHA}))
    assert [(c.action, c.name) for c in changes] == [("install", "alpha")]
    delta = t.body().delta(ENV)
    assert delta is not None and delta.added == (ALPHA,) and delta.forgotten == ()


def test_a_forgotten_package_removed_under_the_daemons_eyes_ends_the_forget() -> None:
    """Seen installed, then uninstalled: the forget is over, nothing recorded."""
    t = Tracker(
        Baseline(environments=(Inventory(env=ENV, packages=(*IMAGE.values(),)),)), forgot_alpha()
    )
    t.observe(ENV, Observation({**IMAGE, "alpha": ALPHA}))
    assert t.observe(ENV, Observation(dict(IMAGE))) == []
    delta = t.body().delta(ENV)
    assert delta is not None and delta.added == () and delta.forgotten == ()


def test_a_forgotten_package_installed_anew_as_it_was_ends_the_forget() -> None:
    """Seen as forgotten, then the scanner finds its entry made again: recorded again."""
    t = Tracker(
        Baseline(environments=(Inventory(env=ENV, packages=(*IMAGE.values(),)),)), forgot_alpha()
    )
    assert t.observe(ENV, Observation({**IMAGE, "alpha": ALPHA}, renewed=frozenset({"six"}))) == []
    changes = t.observe(ENV, Observation({**IMAGE, "alpha": ALPHA}, renewed=frozenset({"alpha"})))
    assert [(c.action, c.name) for c in changes] == [("install", "alpha")]
    delta = t.body().delta(ENV)
    assert delta is not None and delta.added == (ALPHA,) and delta.forgotten == ()


shim = fault_kit.shim


@pytest.mark.parametrize("hangs", ["manifest.json", "manifest.1.json"])
def test_history_on_a_store_that_stops_answering_ends_within_a_bounded_wait(
    world: World, shim: Path, hangs: str
) -> None:
    """A hard NFS mount whose server went away blocks `open()` for as long as it is gone,
    and Ctrl-C does not end that wait. `history` waits 10 s for each answer of the store
    (the current manifest, the kept generations), then says which store did not answer,
    exit 1."""
    store = Store(world.store, world.key)
    for version in ("1.0", "2.0"):
        env = Environment(kind="python", path="/opt/venv")
        store.commit(Body(environments=(Delta(env=env, added=(Package("a", version),)),)))
    hung_for_10_s(world, shim, glob_escape(world.store / world.key / hangs), "history")


def hung_for_10_s(world: World, shim: Path, pattern: str, *command: str) -> str:
    """`pkgckpt COMMAND` on the world's store and key, its first open of a path matching
    `pattern` hung by the fault shim: it gives up after 10 s, exit 1, naming the store.
    Its stderr."""
    log = world.tmp / "faults.log"
    env = {**world.env, **faults(shim, f"open:0:1:hang:{pattern}", log)}
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "pkgckpt", *command, "--store", str(world.store), "--key",
         world.key],
        capture_output=True, text=True, env=env, timeout=60,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    took = time.monotonic() - started
    assert hung_open(log), "the store really hung"
    assert done.returncode == 1, done
    assert 10 <= took < 10 + 8, f"{took:.1f} s"
    assert f"store {world.store} did not answer within 10 s" in done.stderr, done.stderr
    return done.stderr


@pytest.mark.slow
@pytest.mark.parametrize("hangs", ["manifest.json", ".manifest.json.tmp.*"])
def test_a_forget_on_a_store_that_stops_answering_ends_within_a_bounded_wait(
    world: World, shim: Path, hangs: str
) -> None:
    """With no daemon running, `forget` writes the store itself: a store that stops
    answering while it reads the manifest, or while it writes the new one, ends it after
    10 s, exit 1, naming the store and saying that the change may have reached it or not
    (which step hung is not known)."""
    store = Store(world.store, world.key)
    env = Environment(kind="python", path="/opt/venv")
    store.commit(Body(environments=(Delta(env=env, added=(Package("a", "1.0"),)),)))
    pattern = f"{glob_escape(world.store / world.key)}/{hangs}"
    said = hung_for_10_s(world, shim, pattern, "forget", "a", "--env", "/opt/venv")
    assert "the change may have reached it or not" in said, said


def test_a_revert_keeps_the_history_and_adds_to_it() -> None:
    """History is appended, never rewritten: the old generation's history does not win."""
    first = manifest.Change(action="install", name="alpha", new="1.0", time="t1")
    second = manifest.Change(action="install", name="beta", new="1.0", time="t2")
    old = Manifest(
        generation=1, body=Body(environments=(Delta(env=ENV, added=(ALPHA,), history=(first,)),))
    )
    beta = Package(name="beta", version="1.0")
    now = Body(environments=(Delta(env=ENV, added=(ALPHA, beta), history=(first, second)),))
    back = record.reverted(now, old, "t3")
    (delta,) = back.environments
    assert delta.added == (ALPHA,) and delta.history == (first, second)
    assert delta.forgotten == (beta,)
    assert [(e.action, e.generation) for e in back.events] == [("revert", 1)]


def test_a_revert_takes_the_image_the_reverted_entries_were_recorded_on() -> None:
    """Generation 1 holds beta, installed on image v2 while the record named v1 (mixed);
    generation 2, after the user forgot beta on v1, is v1's alone. Back to generation 1:
    beta is in the record again, and so is the mark that says it was made elsewhere, so
    that a restore on v1 checks it rather than putting it in `--no-deps`."""
    beta = Package(name="beta", version="1.0")
    old = Manifest(
        generation=1,
        body=Body(environments=(Delta(env=ENV, added=(ALPHA, beta), image="v1", mixed=True),)),
    )
    now = Body(environments=(Delta(env=ENV, added=(ALPHA,), image="v1"),))
    (delta,) = record.reverted(now, old, "t3").environments
    assert (delta.added, delta.image, delta.mixed) == ((ALPHA, beta), "v1", True)
    moved = Body(environments=(Delta(env=ENV, added=(ALPHA,), image="v2"),))
    plain = Manifest(generation=1, body=Body(environments=(Delta(env=ENV, image="v1"),)))
    (back,) = record.reverted(moved, plain, "t3").environments
    assert (back.added, back.image, back.mixed) == ((), "v1", False)
    new = Body(environments=(Delta(env=ENV, added=(beta,), image="v2"),))
    (kept,) = record.reverted(new, Manifest(generation=1), "t3").environments
    assert (kept.image, kept.forgotten) == ("v2", (beta,)), "no record then: this image's"


def test_a_damaged_artifact_leaves_every_entry_that_names_it() -> None:
    """Installed, and forgotten (a revert may bring it back): no entry keeps it."""
    bad = Artifact(file="alpha-1.0-py3-none-any.whl", sha256="0" * 64, size=10)
    alpha = msgspec.structs.replace(ALPHA, artifact=bad)
    beta = Package(name="beta", version="1.0", artifact=bad)
    body = Body(environments=(Delta(env=ENV, added=(alpha,), forgotten=(beta,)),))
    out = record.with_failures(body, [record.Outcome(env=ENV, damaged=(bad,))])
    (delta,) = out.environments
    assert (delta.added, delta.forgotten) == ((ALPHA,), (Package(name="beta", version="1.0"),))


def test_the_forget_offered_for_a_prefix_or_its_user_site_names_which(tmp_path: Path) -> None:
    """dep is recorded in a prefix and in its interpreter's user site, which one --env
    names together: the command offered for the one failing says which (`--no-user-site`
    for the prefix, `--user-site` for the user site), and drops it there alone."""
    prefix = Environment(kind="python", path="/opt/venv")
    site = Environment(kind="python", path="/opt/venv", user=True)
    two, one = Package(name="dep", version="2.0"), Package(name="dep", version="1.0")
    held = record.holders([(prefix, [two]), (site, [one])])
    offered = record.forget_command("dep", prefix, held)
    assert offered == "pkgckpt forget dep --env /opt/venv --no-user-site"
    offered = record.forget_command("dep", site, held)
    assert offered == "pkgckpt forget dep --env /opt/venv --user-site"
    body = Body(environments=(Delta(env=prefix, added=(two,)), Delta(env=site, added=(one,))))
    cfg = Config(store=tmp_path, key="k", env=(Path("/opt/venv"),), discover=("user-site",))
    left = record.forgotten(body, ["dep"], scope=record._named(cfg, user_site=False))
    assert [(d.env.user, d.added) for d in left.environments] == [(False, ()), (True, (one,))]
    left = record.forgotten(body, ["dep"], scope=record._named(cfg, user_site=True))
    assert [(d.env.user, d.added) for d in left.environments] == [(False, (two,)), (True, ())]
    left = record.forgotten(body, ["dep"], scope=record._named(cfg))
    assert [d.added for d in left.environments] == [(), ()]
    refused = subprocess.run(
        [sys.executable, "-m", "pkgckpt", "forget", "dep", "--user-site",
         "--store", str(tmp_path), "--key", "k"],
        capture_output=True, text=True, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert refused.returncode == 2, refused.stderr
    assert "choose among what --env names" in refused.stderr


def test_forget_matches_r_names_exactly_and_python_names_normalized() -> None:
    """Python's Foo_Bar is foo-bar; R's data.table is only data.table."""
    lib = Environment(kind="r", path="/usr/lib/R/site-library")
    body = Body(
        environments=(
            Delta(env=ENV, added=(Package(name="foo-bar", version="1.0"),)),
            Delta(env=lib, added=(Package(name="data.table", version="1.15.0"),)),
        )
    )
    after = record.forgotten(body, ["Foo_Bar", "data.table"], stamp="t")
    assert all(d.added == () for d in after.environments)
    assert [(e.action, e.name) for e in after.events] == [
        ("forget", "foo-bar"),
        ("forget", "data.table"),
    ]
    with pytest.raises(UnknownPackage, match=r"Data\.Table; it holds: data\.table, foo-bar"):
        record.forgotten(body, ["Data.Table"])
    # Recorded out of the scope: where, so that the user can name it.
    with pytest.raises(
        UnknownPackage,
        match=r"it holds: data\.table; foo-bar is recorded in /opt/venv \(name it with --env",
    ):
        record.forgotten(body, ["foo-bar"], scope=[lib])
    # A path the record does not know (a symlink to a recorded one): which ones it knows.
    elsewhere = Environment(kind="python", path="/opt/link")
    with pytest.raises(
        UnknownPackage, match=r"no such environment; it has: /opt/venv, /usr/lib/R/site-library$"
    ):
        record.forgotten(body, ["nope"], scope=[elsewhere])
    with pytest.raises(
        UnknownPackage, match=r"no such environment; foo-bar is recorded in /opt/venv \("
    ):
        record.forgotten(body, ["foo-bar"], scope=[elsewhere])
    # What the user typed is shown as typed, but never as a line or an escape of its own.
    with pytest.raises(UnknownPackage) as typed:
        record.forgotten(body, ["nope\n\x1b[2J"], scope=[Environment(kind="python", path="/a\nb")])
    assert str(typed.value).startswith("not in the record of /a?b: nope??[2J; "), typed.value
    said = record.Written(generation=3, names=("x\ny",)).render()
    assert said == "forgot x?y: pkgckpt wrote generation 3\n"


def test_store_reads_a_kept_generation(tmp_path: Path) -> None:
    """`read_generation` returns what was committed as that generation; None once pruned."""
    init_store(tmp_path / "store")
    store = Store(tmp_path / "store", "k", keep=2)
    for name in ("a", "b", "c"):
        store.commit(Body(environments=(Delta(env=ENV, added=(Package(name=name, version="1"),)),)))
    assert store.generations() == [3, 2]
    kept = store.read_generation(2)
    assert kept is not None and kept.body.environments[0].added[0].name == "b"
    assert store.read_generation(1) is None


def test_sighup_without_requests_still_means_a_rescan(
    world: World, venv: Venv, wheels: Path, daemon: Daemon
) -> None:
    """The request check leaves SIGHUP's own meaning alone: a rescan and a commit."""
    uv_install(venv.python, wheels, "beta==1.0", env=world.env)
    daemon.signal(signal.SIGHUP)
    eventually(lambda: world.generation() == 1, what="the rescan's commit")


def revert_on_a_terminal(
    world: World, venv: Venv, answer: str, generation: str = "1"
) -> subprocess.CompletedProcess[str]:
    """`pkgckpt revert GENERATION` with a terminal (a pty) as stdin, answering `answer`."""
    leader, follower = pty.openpty()
    try:
        os.write(leader, answer.encode() + b"\n")
        return subprocess.run(
            [sys.executable, "-m", "pkgckpt", "revert", generation, *flags(world, venv)],
            stdin=follower, capture_output=True, text=True, env=world.env, timeout=120,
        )  # fmt: skip
    finally:
        os.close(follower)
        os.close(leader)


def test_revert_asks_on_a_terminal_and_a_no_changes_nothing(
    world: World, venv: Venv, wheels: Path
) -> None:
    """On a terminal the plan comes with a question: "n" writes nothing (exit 1), "y" reverts."""
    two_generations(world, venv, wheels)
    before = key_files(world)
    declined = revert_on_a_terminal(world, venv, "n")
    assert declined.returncode == 1, declined.stderr
    assert "install alpha 1.0" in declined.stdout and "Revert?" in declined.stdout
    assert "revert declined: nothing was changed" in declined.stderr
    assert key_files(world) == before
    accepted = revert_on_a_terminal(world, venv, "y")
    assert accepted.returncode == 0, accepted.stderr
    assert "pkgckpt wrote generation 3" in accepted.stdout
    assert accepted.stdout.count("install alpha 1.0") == 1  # the plan is shown once


def test_an_edited_kept_generation_is_left_out_of_history_and_refused_by_revert(
    tmp_path: Path,
) -> None:
    """A kept generation that fails its checksum is no source: history skips it, revert
    refuses it with the reason."""
    init_store(tmp_path / "store")
    store = Store(tmp_path / "store", "k")
    added: tuple[Package, ...] = ()
    changes: tuple[manifest.Change, ...] = ()
    for name in ("a", "b", "c"):
        added += (Package(name=name, version="1"),)
        changes += (manifest.Change(action="install", name=name, new="1", time=f"t-{name}"),)
        store.commit(Body(environments=(Delta(env=ENV, added=added, history=changes),)))
    kept = tmp_path / "store" / "k" / "manifest.2.json"
    data = kept.read_bytes()
    kept.write_bytes(data.replace(b'"b"', b'"x"'))
    kept.chmod(0o600)
    config = Config(store=tmp_path / "store", key="k", runtime_dir=tmp_path / "run")
    found = record.history(config)
    assert found.kept == (3, 1)
    # b is first seen in generation 3 now, which is all history can say: "3 or earlier".
    assert [(e.generation, e.exact, e.name) for e in found.entries] == [
        (3, False, "c"),
        (3, False, "b"),
        (1, True, "a"),
    ]
    assert "<=3  /opt/venv  install b 1" in found.render()
    with pytest.raises(manifest.ManifestError, match="fails its checksum"):
        record.revert(config, 2, dry_run=True)


def test_status_shows_a_daemon_whose_runtime_directory_was_made_again_as_running(
    world: World, venv: Venv, wheels: Path, daemon: Daemon
) -> None:
    """No status file names the daemon, but it holds the lock: `status` says it runs, with
    its pid, and wakes nothing (the daemon writes no new status file for it)."""
    hide_runtime_dir(world)
    assert daemon.proc is not None
    pid = daemon.proc.pid
    shown = world.pkgckpt("status", *flags(world, venv))
    assert shown.returncode == 0, shown.stderr
    assert f"daemon:     running (pid {pid}), but its status file is gone" in shown.stdout
    report = json.loads(world.pkgckpt("status", "--json", *flags(world, venv)).stdout)
    assert (report["daemon_running"], report["daemon_unlisted"]) == (True, pid)
    assert not [p for p in world.runtime.iterdir() if p.name.startswith("daemon-")]
    assert daemon.stop() == 0
    stopped = world.pkgckpt("status", *flags(world, venv))
    assert "daemon:     not running" in stopped.stdout
