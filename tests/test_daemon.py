"""The daemon as a process: real inotify, real installs (uv) into real venvs, a local store."""

from __future__ import annotations

import _thread
import errno
import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import fault_kit
import pytest
from daemon_kit import (
    Daemon,
    World,
    context_switches,
    eventually,
    pins,
    uv_install,
    uv_uninstall,
)
from fault_kit import faults, glob_escape, hung_open
from wheelhouse import Dist, Venv, build_wheel, make_venv

from pkgckpt import daemon as daemon_mod
from pkgckpt import manifest, status
from pkgckpt.config import Config
from pkgckpt.manifest import Body, Delta, Environment, Package
from pkgckpt.store import Store, init_store

WHEELS = [
    Dist("alpha", "1.0"),
    Dist("alpha", "2.0"),
    Dist("beta", "1.0", requires=["gamma"]),
    Dist("gamma", "1.0"),
    Dist("delta", "1.0"),
    Dist("image-pkg", "1.0"),
]


@pytest.fixture(scope="session")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("daemon-wheels")
    for dist in WHEELS:
        build_wheel(dist, out)
    return out


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World.make(tmp_path)


@pytest.fixture
def venv(world: World, wheels: Path) -> Venv:
    """A venv whose image ships image-pkg, and the baseline taken of it.

    The image's entries are dated an hour back, as in a container started from an image:
    the daemon's first scan then takes image-pkg from the baseline by its dist-info's name.
    """
    return world.image_venv(wheels, "image-pkg==1.0", aged=True)


@pytest.fixture
def running(world: World, venv: Venv) -> Iterator[Daemon]:
    """The daemon watching `venv` with a short quiet window."""
    d = world.daemon(
        *world.flags(venv.prefix), "--baseline", str(world.tmp / "b.json"), "--quiet-ms", "100"
    )
    yield d.start()
    d.close()


def install(world: World, venv: Venv, wheels: Path, *reqs: str) -> None:
    uv_install(venv.python, wheels, *reqs, env=world.env)


def committed(world: World, want: list[str], removed: list[str] | None = None) -> bool:
    try:
        delta = world.delta()
    except AssertionError:
        return False
    got = pins([*delta.added, *delta.changed])
    return got == sorted(want) and (removed is None or pins(delta.removed) == sorted(removed))


# -- sd_notify and friends (no daemon process) -------------------------------------------


@pytest.mark.parametrize("abstract", [False, True])
def test_sd_notify_sends_one_datagram(tmp_path: Path, abstract: bool) -> None:
    """READY=1 arrives as one datagram, on a path socket or an abstract one ('@name')."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        if abstract:
            name = f"@pkgckpt-notify-{os.getpid()}"
            sock.bind("\0" + name[1:])
        else:
            name = str(tmp_path / "notify")
            sock.bind(name)
        assert daemon_mod.sd_notify("READY=1\nSTATUS=x", {"NOTIFY_SOCKET": name})
        sock.settimeout(5)
        assert sock.recv(100) == b"READY=1\nSTATUS=x"


def test_sd_notify_never_blocks_on_a_socket_nobody_reads(tmp_path: Path) -> None:
    """A full notify queue drops the message (False) instead of stalling the daemon."""

    def stuck(signum: int, frame: object) -> None:
        raise AssertionError("sd_notify blocked")

    previous = signal.signal(signal.SIGALRM, stuck)
    signal.setitimer(signal.ITIMER_REAL, 10)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.bind(str(tmp_path / "notify"))
            sent = [
                daemon_mod.sd_notify("STATUS=x", {"NOTIFY_SOCKET": str(tmp_path / "notify")})
                for _ in range(200)
            ]
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert sent[0] and not sent[-1]


def test_sd_notify_without_a_socket_is_a_no_op(tmp_path: Path) -> None:
    """No $NOTIFY_SOCKET (or a dead one): False, and no exception."""
    assert not daemon_mod.sd_notify("READY=1", {})
    assert not daemon_mod.sd_notify("READY=1", {"NOTIFY_SOCKET": str(tmp_path / "gone")})


def test_watchdog_interval_is_half_of_what_systemd_asks_for_this_pid() -> None:
    """WATCHDOG_USEC=4s -> ping every 2 s; another WATCHDOG_PID or none set -> no pings."""
    assert daemon_mod.watchdog_interval({"WATCHDOG_USEC": "4000000"}) == 2.0
    mine = {"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": str(os.getpid())}
    assert daemon_mod.watchdog_interval(mine) == 2.0
    assert daemon_mod.watchdog_interval({**mine, "WATCHDOG_PID": "1"}) is None
    assert daemon_mod.watchdog_interval({}) is None


def test_backoff_doubles_up_to_its_cap_with_jitter() -> None:
    """Retry delays grow exponentially, stay under the cap, and are not all equal."""
    b = daemon_mod.Backoff(first=1.0, cap=8.0)
    delays = [b.next() for _ in range(8)]
    for i, d in enumerate(delays):
        assert 0.5 * min(8.0, 2.0**i) <= d <= min(8.0, 2.0**i)
    b.reset()
    assert b.next() <= 1.0


def test_signals_during_a_store_call_arm_the_bound_at_once_and_are_handled_after_it(
    tmp_path: Path,
) -> None:
    """Within its loop the daemon's thread has SIGTERM, SIGINT and SIGHUP blocked, and a
    thread of their own takes them: a call that a hung NFS server holds for good (the
    store's, a library's) never has one pending where no handler runs. A SIGTERM arms the
    shutdown's bound at once, even after a SIGHUP; both reach their handlers when the call
    returns, in their order, each once, and the loop's wake-up pipe was written. Outside a
    call, a signal waits for the loop's next turn (`handle`). The thread ends with the
    loop, and the mask is as it was."""
    d = daemon_mod.Daemon.__new__(daemon_mod.Daemon)  # only what the store call uses
    d.config = Config(store=tmp_path / "store", key="k", shutdown_timeout=60)
    d.stop_by, d.bound, d.doing, d.taker = None, None, "watching the libraries", None
    seen: list[int] = []
    d._on_stop = d._on_rescan = lambda signum, _: seen.append(signum)  # type: ignore[method-assign]
    read_fd, write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    threads = _thread._count()
    try:
        with d._taking(write_fd):
            assert signal.pthread_sigmask(signal.SIG_BLOCK, []) >= daemon_mod.HANDLED
            with d._doing("writing the manifest to the store"):
                os.kill(os.getpid(), signal.SIGHUP)
                os.kill(os.getpid(), signal.SIGTERM)
                eventually(lambda: d.bound is not None, 5, "the bound armed by SIGTERM")
                assert seen == []
                assert d.bound is not None
                assert d.bound.doing == "writing the manifest to the store"
            assert seen == [signal.SIGHUP, signal.SIGTERM]
            assert d.bound.doing == "watching the libraries"
            assert os.read(read_fd, 16) == bytes((signal.SIGHUP, signal.SIGTERM))
            os.kill(os.getpid(), signal.SIGHUP)  # outside a call: at the loop's next turn
            eventually(lambda: select.select([read_fd], [], [], 0)[0], 5, "a wake-up")
            assert os.read(read_fd, 16) == bytes((signal.SIGHUP,))
            assert seen == [signal.SIGHUP, signal.SIGTERM]
            assert d.taker is not None
            d.taker.handle()
            assert seen == [signal.SIGHUP, signal.SIGTERM, signal.SIGHUP]
        assert signal.pthread_sigmask(signal.SIG_BLOCK, []).isdisjoint(daemon_mod.HANDLED)
    finally:
        if d.bound is not None:
            d.bound.stop()
        eventually(lambda: _thread._count() == threads, 5, "the taker's end (and the bound's)")
        os.close(read_fd)
        os.close(write_fd)


# -- the running daemon ----------------------------------------------------------------


@pytest.mark.slow
def test_installs_upgrades_and_uninstalls_are_checkpointed(
    world: World, venv: Venv, wheels: Path, running: Daemon
) -> None:
    """Installs, upgrades and seen uninstalls all land in the manifest.

    An image package seen uninstalled is recorded as removed; a user package seen
    uninstalled leaves the record."""
    install(world, venv, wheels, "alpha==1.0", "beta")
    eventually(lambda: committed(world, ["alpha==1.0", "beta==1.0", "gamma==1.0"]), what="install")
    install(world, venv, wheels, "alpha==2.0")
    eventually(lambda: committed(world, ["alpha==2.0", "beta==1.0", "gamma==1.0"]), what="upgrade")
    uv_uninstall(venv.python, "beta", "image-pkg", env=world.env)
    eventually(
        lambda: committed(world, ["alpha==2.0", "gamma==1.0"], removed=["image-pkg==1.0"]),
        what="uninstall",
    )
    history = [(c.action, c.name) for c in world.delta().history]
    assert ("upgrade", "alpha") in history and ("remove", "beta") in history
    assert running.stop() == 0
    log = running.output()
    assert "install alpha 1.0 in" in log and "checkpoint: generation" in log


@pytest.mark.slow
def test_a_leftover_dist_info_without_record_does_not_hold_changes_back(
    world: World, venv: Venv, wheels: Path
) -> None:
    """An hour-old dist-info without RECORD (a killed pip, a Debian package) is no install
    in progress: the library settles after each change, so an install lands within the
    quiet window and an uninstall is recorded, not held to the (here 10 min) maximum delay
    and read unsettled, its absence proving nothing."""
    leftover = venv.site_packages / "leftover-1.0.dist-info"
    leftover.mkdir()
    (leftover / "METADATA").write_text("Metadata-Version: 2.1\nName: leftover\nVersion: 1.0\n")
    then = time.time_ns() - 3600 * 10**9
    os.utime(leftover, ns=(then, then))
    d = world.daemon(
        *world.flags(venv.prefix), "--baseline", str(world.tmp / "b.json"),
        "--quiet-ms", "100", "--max-delay-ms", "600000",
    ).start()  # fmt: skip
    try:
        install(world, venv, wheels, "alpha==1.0")
        eventually(lambda: committed(world, ["alpha==1.0", "leftover==1.0"]), 10, "install")
        uv_uninstall(venv.python, "image-pkg", env=world.env)
        eventually(
            lambda: committed(world, ["alpha==1.0", "leftover==1.0"], removed=["image-pkg==1.0"]),
            10,
            "uninstall",
        )
        assert d.stop() == 0
    finally:
        d.close()


@pytest.mark.slow
def test_sigterm_right_after_an_install_flushes_it(world: World, venv: Venv, wheels: Path) -> None:
    """An install that ended just before SIGTERM is in the manifest when the daemon exits 0.

    The quiet window is 60 s: only the shutdown flush can have committed it."""
    d = world.daemon(
        *world.flags(venv.prefix), "--baseline", str(world.tmp / "b.json"), "--quiet-ms", "60000"
    ).start()
    try:
        install(world, venv, wheels, "delta==1.0")
        assert world.generation() == 0
        assert d.stop() == 0
        assert committed(world, ["delta==1.0"])
        assert any("STOPPING=1" in m for m in d.drain())
    finally:
        d.close()


def caught(pid: int, signum: int) -> bool:
    """Whether `pid` has a handler for `signum` (/proc's SigCgt)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    mask = next(line for line in text.splitlines() if line.startswith("SigCgt:"))
    return bool(int(mask.split()[1], 16) >> (signum - 1) & 1)


def handed_off(pid: int) -> bool:
    """Whether `pid` runs the daemon's own interpreter (`handoff.command`)."""
    try:
        return b"from pkgckpt.handoff import main" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.parametrize("when", ["the command line", "the daemon's own interpreter"])
def test_sigterm_while_the_daemon_starts_is_a_stop_not_a_death(
    world: World, venv: Venv, wheels: Path, when: str
) -> None:
    """SIGTERM before the daemon's handlers are in place: while the command line reads its
    settings, or just after the exec into the daemon's own interpreter, which then imports
    for ~0.1 s. The daemon still starts, commits what it finds (an install made before it
    started) and exits 0. It died of it (exit 143), and the entrypoint said changes may be lost."""
    install(world, venv, wheels, "delta==1.0")
    d = world.daemon(*world.flags(venv.prefix), "--baseline", str(world.tmp / "b.json"))
    d.start(ready=False)
    assert d.proc is not None
    try:
        if when == "the command line":
            eventually(lambda: caught(d.proc.pid, signal.SIGTERM), 30, "a SIGTERM handler")  # type: ignore[union-attr]
            assert not handed_off(d.proc.pid)
        else:
            eventually(lambda: handed_off(d.proc.pid), 30, "the exec")  # type: ignore[union-attr]
        assert d.stop() == 0, d.output()
        assert committed(world, ["delta==1.0"])
        assert "stopped: every change is on the store" in d.output()
    finally:
        d.close()


SLOW_PYTHON = """\
#!/bin/sh
touch "{marker}"
sleep 60
exec "{python}" "$@"
"""


@pytest.mark.slow
def test_a_stop_while_a_probe_hangs_at_the_start_ends_within_the_shutdown_bound(
    world: World, venv: Venv, tmp_path: Path
) -> None:
    """SIGTERM while the daemon starts and an environment's interpreter does not answer
    its probe (60 s here; up to 30 s a probe before it is cut): the daemon ends within
    --shutdown-timeout and 2 s, saying it was still starting, as it does once running.
    Held for its handlers, the stop waited for every probe (the command line's, then the
    daemon's own again), past any grace period a supervisor gives."""
    slow = make_venv(tmp_path / "slow", with_pip=False)
    marker = tmp_path / "probed"
    real = os.path.realpath(slow.python)
    for name in ("python", "python3"):
        (slow.prefix / "bin" / name).unlink()
    (slow.prefix / "bin" / "python").write_text(SLOW_PYTHON.format(marker=marker, python=real))
    (slow.prefix / "bin" / "python").chmod(0o755)
    (slow.prefix / "bin" / "python3").symlink_to("python")
    d = world.daemon(
        *world.flags(venv.prefix, slow.prefix),
        "--baseline", str(world.tmp / "b.json"), "--shutdown-timeout", "1",
    )  # fmt: skip
    d.start(ready=False)
    try:
        eventually(marker.exists, 60, "the slow probe")
        started = time.monotonic()
        assert d.stop(timeout=30) == 1, d.output()
        assert time.monotonic() - started < 1 + 2 + 2, d.output()
        assert "shutdown_timeout (1 s) ran out and 2 s later it was still starting" in d.output()
    finally:
        d.close()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_to_a_daemon_command_that_does_not_start_ends_it(
    world: World, sig: signal.Signals
) -> None:
    """`pkgckpt daemon --help` stopped once it takes the signal: the signal ends it, as it
    would any command. It noted the signal for a daemon that never started and exited 0."""
    for _ in range(3):
        proc = subprocess.Popen(
            [sys.executable, "-m", "pkgckpt", "daemon", "--help"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=world.env,
        )  # fmt: skip
        try:
            eventually(lambda p=proc: caught(p.pid, signal.SIGTERM) or p.poll() is not None)
            if proc.poll() is not None:
                continue  # done before the test could look: try again
            proc.send_signal(sig)
            proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == -sig
        return
    pytest.skip("`daemon --help` ended each time before its handler could be seen")


@pytest.mark.slow
def test_snapshot_asks_the_running_daemon_so_the_manifest_keeps_one_writer(
    world: World, venv: Venv, wheels: Path
) -> None:
    """`pkgckpt snapshot` beside a daemon: SIGHUP, full rescan, the daemon's commit."""
    d = world.daemon(
        *world.flags(venv.prefix), "--baseline", str(world.tmp / "b.json"), "--quiet-ms", "60000"
    ).start()
    try:
        install(world, venv, wheels, "delta==1.0")
        snap = world.pkgckpt("snapshot", *world.flags(venv.prefix))
        assert snap.returncode == 0, snap.stderr
        assert snap.stdout.startswith("the daemon wrote generation 1")
        assert committed(world, ["delta==1.0"])
        assert Store(world.store, world.key).read().writer.pid == d.proc.pid  # type: ignore[union-attr]
    finally:
        d.close()


def untracked_snapshot(
    world: World, venv: Venv, wheels: Path, mine: str
) -> tuple[Daemon, Venv, subprocess.CompletedProcess[str]]:
    """A daemon that watches only the venv, where `mine` is installed and on the store
    (generation 1); then delta installed into OTHER, a venv it does not track, and
    `snapshot --env OTHER`: the daemon, OTHER and that snapshot's outcome."""
    other = make_venv(world.tmp / "other", with_pip=False)
    d = world.daemon(
        *world.flags(venv.prefix), "--baseline", str(world.tmp / "b.json"), "--quiet-ms", "60000"
    ).start()
    try:
        install(world, venv, wheels, mine)
        assert world.pkgckpt("snapshot", *world.flags(venv.prefix)).returncode == 0
        install(world, other, wheels, "delta==1.0")
        return d, other, world.pkgckpt("snapshot", *world.flags(other.prefix))
    except BaseException:
        d.close()
        raise


@pytest.mark.slow
def test_snapshot_of_an_environment_the_daemon_does_not_track_checkpoints_it_itself(
    world: World, venv: Venv, wheels: Path
) -> None:
    """`snapshot --env OTHER` beside a daemon that watches only the venv: the daemon
    checkpoints what it tracks, and the snapshot checkpoints OTHER itself and says the
    daemon does not track it. It said "not checkpointed" and exited 0, and OTHER's install
    never reached the store. The daemon's next commit keeps OTHER's record (a link to the
    venv is the venv)."""
    d, other, snap = untracked_snapshot(world, venv, wheels, "delta==1.0")
    try:
        assert snap.returncode == 0, snap.stderr
        assert snap.stdout.startswith(
            f"the running daemon (pid {d.proc.pid}) does not track {other.prefix} "  # type: ignore[union-attr]
        ), snap.stdout
        assert "snapshot wrote generation 2" in snap.stdout, snap.stdout

        def added() -> dict[str, list[str]]:
            found = world.manifest()
            assert found is not None
            return {d.env.path: pins(d.added) for d in found.body.environments}

        both = {str(venv.prefix): ["delta==1.0"], str(other.prefix): ["delta==1.0"]}
        assert added() == both
        install(world, venv, wheels, "alpha==1.0")
        # Both named: the daemon writes, and the snapshot finds OTHER on the store as it is.
        again = world.pkgckpt("snapshot", *world.flags(venv.prefix, other.prefix))
        assert "no uninstall there is recorded\nthe daemon wrote generation 3\n" in again.stdout
        assert added() == {**both, str(venv.prefix): ["alpha==1.0", "delta==1.0"]}
        link = world.tmp / "link"
        link.symlink_to(venv.prefix)
        same = world.pkgckpt("snapshot", *world.flags(link))
        assert same.returncode == 0 and "does not track" not in same.stdout, same.stdout
    finally:
        d.close()


@pytest.mark.slow
def test_status_of_an_environment_the_daemon_does_not_track_says_how_to_record_it(
    world: World, venv: Venv, wheels: Path
) -> None:
    """An environment with no baseline that the running daemon does not track: status
    names the snapshot that records it. It said a running daemon records the changes it
    sees, which this one never does there."""
    other = make_venv(world.tmp / "other", with_pip=False)
    install(world, other, wheels, "delta==1.0")
    d = world.daemon(
        *world.flags(venv.prefix), "--baseline", str(world.tmp / "b.json"), "--quiet-ms", "60000"
    ).start()
    try:
        shown = world.pkgckpt("status", *world.flags(other.prefix))
        assert shown.returncode == 0, shown.stderr
        assert (
            "the running daemon does not track it: "
            f"`pkgckpt snapshot --env {other.prefix}` records what is installed there"
        ) in " ".join(shown.stdout.split()), shown.stdout
    finally:
        d.close()


@pytest.mark.slow
@pytest.mark.parametrize("request_", ["revert", "forget"])
def test_a_request_to_the_daemon_after_a_snapshot_wrote_what_it_does_not_track_holds(
    world: World, venv: Venv, wheels: Path, request_: str
) -> None:
    """`snapshot --env OTHER` writes OTHER beside the daemon; at once, before the daemon
    commits again, `revert 1` or `forget delta --env OTHER` goes through the daemon. The
    record then holds OTHER as the request made it. The daemon made the change to its own
    record, which did not hold OTHER yet: its commit took OTHER back from the store, and
    the revert was undone, the forget refused ("the record has no such environment")."""
    d, other, snap = untracked_snapshot(world, venv, wheels, "alpha==1.0")
    try:
        assert "snapshot wrote generation 2" in snap.stdout, snap.stdout + snap.stderr
        if request_ == "revert":
            asked = world.pkgckpt("revert", "1", "--yes", *world.flags(venv.prefix))
        else:
            asked = world.pkgckpt("forget", "delta", *world.flags(other.prefix))
        assert asked.returncode == 0, asked.stdout + asked.stderr
        found = world.manifest()
        assert found is not None
        added = {d.env.path: pins(d.added) for d in found.body.environments if d.added}
        assert added == {str(venv.prefix): ["alpha==1.0"]}, asked.stdout
    finally:
        d.close()


@pytest.mark.slow
def test_a_snapshot_whose_own_part_fails_says_what_the_daemon_wrote(
    world: World, venv: Venv, wheels: Path
) -> None:
    """`snapshot --env OTHER` beside the daemon, with the baseline file broken since the
    daemon read it: the daemon checkpoints what it tracks, and the snapshot cannot read
    the baseline for OTHER. Exit 1, and the message says which generation the daemon wrote
    and that OTHER was not checkpointed: it gave the baseline's error alone, as if nothing
    had been written."""
    other = make_venv(world.tmp / "other", with_pip=False)
    d = world.daemon(
        *world.flags(venv.prefix), "--baseline", str(world.tmp / "b.json"), "--quiet-ms", "60000"
    ).start()
    try:
        install(world, venv, wheels, "alpha==1.0")
        install(world, other, wheels, "delta==1.0")
        (world.tmp / "b.json").write_text("{")
        snap = world.pkgckpt(
            "snapshot", *world.flags(other.prefix), "--baseline", str(world.tmp / "b.json")
        )
        assert snap.returncode == 1, snap.stdout + snap.stderr
        assert committed(world, ["alpha==1.0"])
        assert snap.stderr.startswith(
            f"pkgckpt: the daemon (pid {d.proc.pid}) wrote generation 1; "  # type: ignore[union-attr]
            f"{other.prefix}, which it does not track, was not checkpointed: "
        ), snap.stderr
    finally:
        d.close()


@pytest.mark.slow
def test_a_forget_the_daemon_cannot_find_while_the_store_is_away_says_so(
    world: World, venv: Venv, wheels: Path
) -> None:
    """`snapshot --env OTHER` writes OTHER beside the daemon; then the store goes away
    (its root moved aside), and `forget delta --env OTHER` goes through the daemon, whose
    record does not hold OTHER yet. Nothing is changed (exit 1), and the message says the
    store could not be read, whose record may hold it: it said only "the record has no
    such environment", as if the user had named the wrong one."""
    d, other, snap = untracked_snapshot(world, venv, wheels, "alpha==1.0")
    try:
        assert snap.returncode == 0, snap.stdout + snap.stderr
        world.store.rename(world.tmp / "away")
        asked = world.pkgckpt("forget", "delta", *world.flags(other.prefix))
        assert asked.returncode == 1, asked.stdout + asked.stderr
        assert "the store could not be read" in asked.stderr, asked.stderr
        assert "try again" in asked.stderr, asked.stderr
        (world.tmp / "away").rename(world.store)
        asked = world.pkgckpt("forget", "delta", *world.flags(other.prefix))
        assert asked.returncode == 0, asked.stdout + asked.stderr
    finally:
        d.close()


@pytest.mark.slow
def test_the_daemons_no_baseline_warning_names_the_image_baseline_file(
    world: World, venv: Venv, wheels: Path
) -> None:
    """A venv the image's baseline file does not cover (one on the user's volume): the
    daemon's warning says so, and does not advise `pkgckpt baseline` or `restore`, which
    the entrypoint runs anyway and which could not help: the file names the image."""
    other = make_venv(world.tmp / "other", with_pip=False)
    install(world, other, wheels, "delta==1.0")
    baseline = world.tmp / "b.json"
    flags = [*world.flags(venv.prefix, other.prefix), "--baseline", str(baseline)]
    d = world.daemon(*flags).start()
    try:
        warned = f"no baseline for {other.prefix}: every recorded package is kept"
        line = next(x for x in d.output().splitlines() if warned in x)
        assert line.endswith(f"(it is not in {baseline})"), line
        assert d.stop() == 0
    finally:
        d.close()


@pytest.mark.slow
def test_snapshot_and_status_say_what_an_environment_without_a_baseline_leaves_unrecorded(
    world: World, venv: Venv, wheels: Path
) -> None:
    """A venv made after the baseline, with an install in it: with no daemon to see the
    install, snapshot takes what it holds for its starting point. It says so (not a bare
    "nothing to checkpoint"), and status marks that environment; the venv the baseline
    covers is recorded as usual and not marked."""
    other = make_venv(world.tmp / "other", with_pip=False)
    install(world, other, wheels, "delta==1.0")
    install(world, venv, wheels, "delta==1.0")
    flags = [*world.flags(venv.prefix, other.prefix), "--baseline", str(world.tmp / "b.json")]
    snap = world.pkgckpt("snapshot", *flags)
    assert snap.returncode == 0 and "snapshot wrote generation 1" in snap.stdout, snap.stderr
    assert f"no baseline for {other.prefix}: what it holds now is taken for" in snap.stderr
    assert f"no baseline for {venv.prefix}" not in snap.stderr
    assert [d.env.path for d in world.manifest().body.deltas()] == [str(venv.prefix)]  # type: ignore[union-attr]
    shown = world.pkgckpt("status", *flags)
    assert shown.returncode == 0, shown.stderr
    text = shown.stdout.split(f"python {other.prefix}:\n", 1)[1]
    assert text.startswith("    no baseline: what it held when first scanned counts as the")
    assert "no baseline" not in shown.stdout.split(f"python {other.prefix}:")[0]
    report = json.loads(world.pkgckpt("status", "--json", *flags).stdout)
    assert [e["no_baseline"] for e in report["environments"]] == [False, True]


@pytest.mark.slow
def test_snapshot_without_a_daemon_commits_itself(world: World, venv: Venv, wheels: Path) -> None:
    """No daemon: snapshot scans and commits; a second snapshot finds nothing new."""
    install(world, venv, wheels, "delta==1.0")
    flags = [*world.flags(venv.prefix), "--baseline", str(world.tmp / "b.json")]
    first = world.pkgckpt("snapshot", *flags)
    assert first.returncode == 0 and "snapshot wrote generation 1" in first.stdout, first.stderr
    again = world.pkgckpt("snapshot", *flags)
    assert again.returncode == 0 and "generation 1 is current" in again.stdout


@pytest.mark.slow
def test_status_reports_the_daemon_pending_changes_and_the_checkpoint(
    world: World, venv: Venv, wheels: Path
) -> None:
    """status --json: daemon running (pid), a change not checkpointed yet, then checkpointed."""
    flags = [*world.flags(venv.prefix), "--baseline", str(world.tmp / "b.json")]
    d = world.daemon(*flags, "--quiet-ms", "60000").start()
    try:
        install(world, venv, wheels, "delta==1.0")
        out = world.pkgckpt("status", "--json", *flags)
        assert out.returncode == 0, out.stderr
        report = json.loads(out.stdout)
        assert report["daemon_running"] and report["daemon"]["pid"] == d.proc.pid  # type: ignore[union-attr]
        (env,) = [e for e in report["environments"] if not e["env"].get("user")]
        assert [(c["action"], c["name"]) for c in env["pending"]] == [("install", "delta")]

        # The daemon's line says a change is under way, as the pending line shows.
        def daemon_line() -> str | None:
            text = world.pkgckpt("status", *flags).stdout
            (line,) = [x for x in text.splitlines() if x.startswith("daemon:")]
            return line if "under way" in line else None

        line = eventually(daemon_line, what="the daemon naming the change under way")
        assert line.endswith(", a change under way: read once its library is quiet)"), line
        assert d.stop() == 0
        report = json.loads(world.pkgckpt("status", "--json", *flags).stdout)
        assert not report["daemon_running"] and report["daemon"]["phase"] == "stopped"
        (env,) = [e for e in report["environments"] if not e["env"].get("user")]
        assert env["pending"] == [] and [p["name"] for p in env["added"]] == ["delta"]
        assert report["checkpoint"]["generation"] == 1
        text = world.pkgckpt("status", *flags).stdout
        assert "checkpoint: generation 1" in text and "daemon:     not running" in text
    finally:
        d.close()


@pytest.mark.slow
def test_status_shows_what_restore_would_do_and_what_is_not_checkpointed(
    world: World, venv: Venv, wheels: Path
) -> None:
    """status shows the recorded delta, what restore would do and what is not checkpointed.

    Recorded alpha 2.0 and image-pkg removed, live alpha 1.0 + image-pkg + delta:
    `restore` = upgrade alpha + remove image-pkg, `pending` = what a snapshot would record
    (alpha at the version found, delta). It writes nothing."""
    install(world, venv, wheels, "alpha==1.0", "delta==1.0")
    recorded = Delta(
        env=Environment(kind="python", path=str(venv.prefix)),
        added=(Package(name="alpha", version="2.0"),),
        removed=(Package(name="image-pkg", version="1.0"),),
    )
    Store(world.store, world.key).commit(Body(environments=(recorded,)))
    flags = [*world.flags(venv.prefix), "--baseline", str(world.tmp / "b.json")]
    out = world.pkgckpt("status", "--json", *flags)
    assert out.returncode == 0, out.stderr
    (env,) = [e for e in json.loads(out.stdout)["environments"] if not e["env"].get("user")]
    assert [p["name"] for p in env["added"]] == ["alpha"]
    assert [p["name"] for p in env["removed"]] == ["image-pkg"]
    actions = [(c["action"], c["name"]) for c in env["unrestored"]]
    assert actions == [("upgrade", "alpha"), ("remove", "image-pkg")]
    pending = [(c["action"], c["name"]) for c in env["pending"]]
    assert pending == [("downgrade", "alpha"), ("install", "delta")]
    assert world.generation() == 1 and not world.runtime.exists()


def _fill(mount: Path) -> Path:
    """Fill a file system until ENOSPC; the file to delete to make room again."""
    filler = mount / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while os.write(fd, b"\0" * 65536):
            pass
    except OSError as e:
        assert e.errno == errno.ENOSPC
    finally:
        os.close(fd)
    return filler


@pytest.mark.slow
@pytest.mark.parametrize("outage", ["enospc", "not-a-directory"])
def test_store_outage_does_not_stop_the_daemon_and_the_commit_lands_later(
    world: World, venv: Venv, wheels: Path, outage: str
) -> None:
    """A store outage never stops the daemon; the change is committed once the store is back.

    Outages: a full store (tmpfs, ENOSPC) or a store path that became a file. Meanwhile
    status shows the error."""
    if outage == "enospc":
        mounted = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=256k,mode=0700", "tmpfs", str(world.store)],
            capture_output=True, text=True,
        )  # fmt: skip
        if mounted.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
        init_store(world.store)
    flags = [*world.flags(venv.prefix), "--baseline", str(world.tmp / "b.json")]
    d = world.daemon(*flags, "--quiet-ms", "50").start()
    try:
        install(world, venv, wheels, "alpha==1.0")
        eventually(lambda: committed(world, ["alpha==1.0"]), what="first commit")
        if outage == "enospc":
            filler = _fill(world.store)
        else:
            world.store.rename(world.tmp / "store.away")
            world.store.write_text("not a directory")
        install(world, venv, wheels, "delta==1.0")

        def error_shown() -> bool:
            out = world.pkgckpt("status", "--json", *flags)
            report = json.loads(out.stdout)
            return bool(report["daemon_running"] and report["daemon"].get("last_error"))

        eventually(error_shown, what="the store error in status")
        assert d.proc is not None and d.proc.poll() is None
        if outage == "enospc":
            filler.unlink()
        else:
            world.store.unlink()
            (world.tmp / "store.away").rename(world.store)
        eventually(lambda: committed(world, ["alpha==1.0", "delta==1.0"]), 120, "retried commit")
        assert d.stop() == 0
        assert "commit failed" in d.output()
    finally:
        d.close()
        if outage == "enospc":
            subprocess.run(["umount", "-l", str(world.store)], check=False)


@pytest.mark.slow
def test_the_sigterm_flush_does_not_wait_out_the_backoff_of_a_long_outage(
    world: World, venv: Venv, wheels: Path
) -> None:
    """A store back 1 s after SIGTERM, after an outage that grew the retry delay to
    many seconds: the flush retries at short intervals and exits 0 soon after, not at
    the end of shutdown_timeout (a pod's grace period), nor past it."""
    flags = [*world.flags(venv.prefix), "--baseline", str(world.tmp / "b.json")]
    d = world.daemon(*flags, "--quiet-ms", "50", "--shutdown-timeout", "25").start()
    try:
        world.store.rename(world.tmp / "store.away")
        world.store.write_text("not a directory")
        install(world, venv, wheels, "delta==1.0")
        # 0.5 + 1 + 2 + 4 s (with jitter) of backoff: the next delay is 8 s or more.
        eventually(lambda: d.output().count("commit failed") >= 5, 60, "the backoff to grow")
        assert d.proc is not None
        d.signal(signal.SIGTERM)
        d.wait_message("STOPPING=1")
        stopping = time.monotonic()
        time.sleep(1)
        world.store.unlink()
        (world.tmp / "store.away").rename(world.store)
        assert d.proc.wait(25) == 0
        assert time.monotonic() - stopping < 6, d.output()
        assert committed(world, ["delta==1.0"])
    finally:
        d.close()


@pytest.mark.slow
def test_a_store_unreachable_at_start_is_read_and_committed_when_it_returns(
    world: World, venv: Venv, wheels: Path
) -> None:
    """A store unreadable at start: READY anyway, and read, scan, commit once it is back.

    Nothing is recorded over the manifest that could not be read."""
    recorded = Delta(
        env=Environment(kind="python", path=str(venv.prefix)),
        added=(Package(name="kept", version="1.0"),),
    )
    Store(world.store, world.key).commit(Body(environments=(recorded,)))
    world.store.rename(world.tmp / "store.away")
    world.store.write_text("not a directory")
    flags = [*world.flags(venv.prefix), "--baseline", str(world.tmp / "b.json")]
    d = world.daemon(*flags, "--quiet-ms", "50").start()
    try:
        install(world, venv, wheels, "delta==1.0")
        eventually(lambda: "cannot read the store" in d.output(), what="the read error")
        world.store.unlink()
        (world.tmp / "store.away").rename(world.store)
        eventually(lambda: committed(world, ["delta==1.0", "kept==1.0"]), 120, "the commit")
        assert d.stop() == 0
    finally:
        d.close()


@pytest.mark.slow
def test_a_store_never_opened_says_the_shutdown_s_short_retry_at_sigterm(
    world: World, venv: Venv, wheels: Path
) -> None:
    """A store unreachable since the start, after an outage long enough to grow the retry
    delay: what SIGTERM's flush logs of its first failure names the retry it makes (2 s
    at most), not the outage's grown delay, which it no longer waits."""
    world.store.rename(world.tmp / "store.away")
    world.store.write_text("not a directory")
    flags = [*world.flags(venv.prefix), "--baseline", str(world.tmp / "b.json")]
    d = world.daemon(*flags, "--quiet-ms", "50", "--shutdown-timeout", "4").start()
    try:
        # 0.5 + 1 + 2 + 4 s (with jitter) of backoff: the next delay is 8 s or more.
        eventually(
            lambda: d.output().count("cannot read the store") >= 5, 60, "the backoff to grow"
        )
        assert d.proc is not None
        # The retries come 8 s or more apart by now: none falls between these two lines.
        before = len(d.output())
        d.signal(signal.SIGTERM)
        d.wait_message("STOPPING=1")
        assert d.proc.wait(15) == 1
        said = d.output()[before:]
        delays = [float(x) for x in re.findall(r"retrying in ([0-9.]+) s", said)]
        assert delays and max(delays) <= 2.0, said
    finally:
        d.close()


shim = fault_kit.shim


def hang_opens(world: World, shim: Path, pattern: str) -> dict[str, str]:
    """The daemon's environment with its first open of a path matching `pattern` (an
    fnmatch pattern, escaped) hung by the fault shim: a hard NFS mount whose server stopped
    answering, where only SIGKILL ends the wait."""
    return faults(shim, f"open:0:1:hang:{pattern}", world.tmp / "faults.log")


def stopped_by_its_bound(d: Daemon) -> str:
    """SIGTERM to a daemon with `--shutdown-timeout 3` whose thread is hung: it ends 3 s
    and 2 s to report later, exit 1. Its output."""
    assert d.proc is not None
    d.signal(signal.SIGTERM)
    signalled = time.monotonic()
    code = d.proc.wait(60)
    took = time.monotonic() - signalled
    assert code == 1, d.output()
    assert 3 + 2 <= took < 3 + 2 + 3, f"{took:.1f} s: the bound is 5 s"
    return d.output()


def hung(world: World) -> bool:
    return hung_open(world.tmp / "faults.log")


@pytest.mark.slow
def test_status_finds_a_daemon_whose_first_read_of_the_store_hangs(
    world: World, venv: Venv, shim: Path
) -> None:
    """The store stops answering before the daemon's first read of it (a hard NFS mount):
    `status` says the daemon is running, starting, not that none runs while it holds the
    lock and a second daemon exits 4."""
    flags = [*world.flags(venv.prefix), "--baseline", str(world.tmp / "b.json")]
    d = world.daemon(*flags, "--quiet-ms", "50")
    d.start(
        ready=False, extra_env=hang_opens(world, shim, f"{glob_escape(world.store / world.key)}*")
    )
    try:
        eventually(lambda: hung(world), 30, "the daemon's first read of the store to hang")
        shown = json.loads(world.pkgckpt("status", "--json", *flags).stdout)
        assert shown["daemon_running"] is True, shown
        text = world.pkgckpt("status", *flags).stdout
        assert "daemon:     running (pid " in text and ", starting since " in text, text
    finally:
        d.close()


@pytest.mark.slow
@pytest.mark.parametrize("when", ["while running", "in the shutdown flush"])
def test_a_store_that_stops_answering_ends_the_daemon_within_its_shutdown_timeout(
    world: World, venv: Venv, wheels: Path, shim: Path, when: str
) -> None:
    """A commit blocked in the store for good holds the daemon's only thread, where no
    handler runs: SIGTERM alone would never end it, and the pod's grace period would end
    only with SIGKILL. Whether the commit hung before the signal (an install's) or in the
    flush the signal starts, the daemon ends shutdown_timeout after SIGTERM and 2 s to
    report, exit 1 (changes not on the store), and says what it was waiting for."""
    flags = [*world.flags(venv.prefix), "--baseline", str(world.tmp / "b.json")]
    # In the flush: the quiet window outlasts the test, and SIGTERM's rescan finds delta.
    quiet = "50" if when == "while running" else "600000"
    d = world.daemon(*flags, "--quiet-ms", quiet, "--shutdown-timeout", "3")
    d.start(extra_env=hang_opens(world, shim, f"{glob_escape(world.store / world.key)}/.manifest*"))
    try:
        assert not hung(world), "the start wrote no manifest"
        install(world, venv, wheels, "delta==1.0")
        if when == "while running":
            eventually(lambda: hung(world), 30, "the install's commit to hang")
        said = stopped_by_its_bound(d)
        assert hung(world), "the store really hung"
        assert (
            "pkgckpt: error: the daemon stopped: shutdown_timeout (3 s) ran out and 2 s later "
            f"it was still writing the manifest to the store at {world.store}"
        ) in said, said
    finally:
        d.close()


@pytest.mark.slow
def test_a_library_that_stops_answering_ends_the_daemon_within_its_shutdown_timeout(
    world: World, venv: Venv, wheels: Path, shim: Path
) -> None:
    """A library in an NFS home whose server went away holds the scan that reads it, as a
    store holds a commit: the daemon's thread waits where no handler runs. SIGTERM still
    ends the daemon shutdown_timeout after it and 2 s to report, exit 1 (the change it was
    reading is not on the store), saying which libraries it was reading."""
    flags = [*world.flags(venv.prefix), "--baseline", str(world.tmp / "b.json")]
    d = world.daemon(*flags, "--quiet-ms", "50", "--shutdown-timeout", "3")
    metadata = glob_escape(venv.site_packages / "delta-1.0.dist-info") + "/METADATA"
    d.start(extra_env=hang_opens(world, shim, metadata))
    try:
        install(world, venv, wheels, "delta==1.0")
        eventually(lambda: hung(world), 30, "the scan of the new package to hang")
        said = stopped_by_its_bound(d)
        bound = (
            "pkgckpt: error: the daemon stopped: shutdown_timeout (3 s) ran out and 2 s later "
            "it was still reading the libraries at "
        )
        line = next((x for x in said.splitlines() if x.startswith(bound)), "")
        assert str(venv.site_packages) in line, said
    finally:
        d.close()


@pytest.mark.slow
def test_kill_9_and_restart_converges_without_losing_anything(
    world: World, venv: Venv, wheels: Path
) -> None:
    """kill -9 and restart: every install is recorded, nothing unseen is dropped.

    Killed before a commit, installs while down, restart. An uninstall nobody saw (while
    down) does not shrink the manifest (invariant 1); one seen afterwards does."""
    flags = [*world.flags(venv.prefix), "--baseline", str(world.tmp / "b.json")]
    d = world.daemon(*flags, "--quiet-ms", "50").start()
    install(world, venv, wheels, "gamma==1.0")
    eventually(lambda: committed(world, ["gamma==1.0"]), what="gamma")
    d.close()
    d = world.daemon(*flags, "--quiet-ms", "60000").start()
    install(world, venv, wheels, "alpha==1.0")
    d.kill()
    assert committed(world, ["gamma==1.0"])
    install(world, venv, wheels, "delta==1.0")
    uv_uninstall(venv.python, "gamma", env=world.env)
    d = world.daemon(*flags, "--quiet-ms", "50").start()
    try:
        eventually(lambda: committed(world, ["alpha==1.0", "delta==1.0", "gamma==1.0"]))
        install(world, venv, wheels, "gamma==1.0")
        # snapshot returns once the daemon has rescanned: it has seen gamma installed.
        assert world.pkgckpt("snapshot", *flags).returncode == 0
        uv_uninstall(venv.python, "gamma", env=world.env)  # seen by this daemon: recorded
        eventually(lambda: committed(world, ["alpha==1.0", "delta==1.0"]), what="removal")
        assert d.stop() == 0
    finally:
        d.close()


def test_the_daemon_lock_is_per_store_and_key_and_goes_with_its_daemon(
    world: World, venv: Venv, running: Daemon
) -> None:
    """A daemon for another key of the same store runs beside the first; once the first
    stops (or is killed: the kernel drops its lock), a new daemon for its key starts."""
    args = [*world.flags(venv.prefix), "--baseline", str(world.tmp / "b.json")]
    other = Daemon(
        args=[*args, "--key", "other"], env=world.env, log=world.tmp / "other.log"
    ).start()
    try:
        assert running.stop() == 0
        again = Daemon(args=args, env=world.env, log=world.tmp / "again.log").start()
        again.kill()
        last = Daemon(args=args, env=world.env, log=world.tmp / "last.log").start()
        assert last.stop() == 0
        assert other.stop() == 0
    finally:
        other.close()


@pytest.mark.slow
def test_an_empty_environment_without_a_baseline_is_not_marked(world: World, venv: Venv) -> None:
    """An environment the baseline does not cover but that holds nothing (a venv made
    empty, a user library not made yet) leaves nothing unrecorded: neither status nor
    snapshot warns of it."""
    empty = make_venv(world.tmp / "empty", with_pip=False)
    flags = [*world.flags(venv.prefix, empty.prefix), "--baseline", str(world.tmp / "b.json")]
    shown = world.pkgckpt("status", *flags)
    assert shown.returncode == 0, shown.stderr
    assert f"python {empty.prefix}:" in shown.stdout
    assert "no baseline" not in shown.stdout, shown.stdout
    snap = world.pkgckpt("snapshot", *flags)
    assert snap.returncode == 0, snap.stderr
    assert "no baseline" not in snap.stderr, snap.stderr


@pytest.mark.slow
def test_without_a_baseline_an_existing_manifest_only_grows(world: World, wheels: Path) -> None:
    """Without a baseline, a manifest already on the store only grows.

    No baseline file and none in the runtime dir: the daemon takes none, keeps every
    recorded entry, and adds what it sees."""
    v = make_venv(world.tmp / "venv", with_pip=False)
    install(world, v, wheels, "image-pkg==1.0", "alpha==1.0")  # alpha: restored already
    env = Environment(kind="python", path=str(v.prefix))
    recorded = Delta(
        env=env,
        added=(Package(name="alpha", version="1.0"), Package(name="gamma", version="1.0")),
        removed=(Package(name="zeta", version="3.0"),),
    )
    Store(world.store, world.key).commit(Body(environments=(recorded,)))
    d = world.daemon(*world.flags(v.prefix), "--quiet-ms", "50").start()
    try:
        assert "no baseline for" in d.output()
        assert not (world.runtime / "baseline.json").exists()
        install(world, v, wheels, "delta==1.0")
        eventually(lambda: committed(world, ["alpha==1.0", "delta==1.0", "gamma==1.0"]))
        assert pins(world.delta().removed) == ["zeta==3.0"]
        assert d.stop() == 0
    finally:
        d.close()


@pytest.mark.slow
def test_a_baseline_taken_over_a_library_that_kept_the_users_packages_drops_none(
    world: World, wheels: Path
) -> None:
    """A library that outlived its container (a home volume) still holds the user's
    packages when restore takes the baseline: the record keeps them all the same.

    The record, written before images were recorded, names no image; restore finds
    alpha installed and takes it into the baseline with image-pkg; the daemon's commits
    (after a later install) keep alpha as the user's addition."""
    v = make_venv(world.tmp / "venv", with_pip=False)
    install(world, v, wheels, "image-pkg==1.0", "alpha==1.0")
    env = Environment(kind="python", path=str(v.prefix))
    recorded = Delta(env=env, added=(Package(name="alpha", version="1.0"),))
    Store(world.store, world.key).commit(Body(environments=(recorded,)))
    restored = world.pkgckpt("restore", *world.flags(v.prefix), "--no-index")
    assert restored.returncode == 0, restored.stderr
    baseline = manifest.decode_baseline((world.runtime / "baseline.json").read_bytes())
    assert sorted(p.name for p in baseline.environments[0].packages) == ["alpha", "image-pkg"]
    d = world.daemon(*world.flags(v.prefix), "--quiet-ms", "50").start()
    try:
        install(world, v, wheels, "delta==1.0")
        eventually(lambda: committed(world, ["alpha==1.0", "delta==1.0"]), what="both kept")
        assert d.stop() == 0
        assert pins(world.delta().added) == ["alpha==1.0", "delta==1.0"]
    finally:
        d.close()


@pytest.mark.slow
def test_no_baseline_and_no_manifest_takes_the_baseline_now(world: World, wheels: Path) -> None:
    """A fresh container without restore: the daemon's first act is to take the baseline."""
    v = make_venv(world.tmp / "venv", with_pip=False)
    install(world, v, wheels, "image-pkg==1.0")
    d = world.daemon(*world.flags(v.prefix), "--quiet-ms", "50").start()
    try:
        baseline = manifest.decode_baseline((world.runtime / "baseline.json").read_bytes())
        assert [p.name for p in baseline.environments[0].packages] == ["image-pkg"]
        install(world, v, wheels, "delta==1.0")
        eventually(lambda: committed(world, ["delta==1.0"]))
        assert d.stop() == 0
    finally:
        d.close()


@pytest.mark.slow
def test_status_file_is_private_and_names_this_process(running: Daemon, world: World) -> None:
    """The runtime dir is 0700, the status file 0600 with our pid and phase watching."""
    config = Config(store=world.store, key=world.key, runtime_dir=world.runtime)
    path = status.status_path(config)
    state = json.loads(eventually(lambda: path.exists() and path.read_text(), what="status"))
    assert state["pid"] == running.proc.pid and state["phase"] == "watching"  # type: ignore[union-attr]
    assert world.runtime.stat().st_mode & 0o777 == 0o700
    assert path.stat().st_mode & 0o777 == 0o600


@pytest.mark.slow
def test_an_idle_daemon_does_not_wake_up(running: Daemon) -> None:
    """Invariant 5: after READY, nothing changing means no context switch at all."""
    assert running.proc is not None
    time.sleep(0.5)  # let the start-up writes settle
    before = context_switches(running.proc.pid)
    time.sleep(3)
    assert context_switches(running.proc.pid) == before


@pytest.mark.slow
def test_sighup_rescans_everything(world: World, venv: Venv, wheels: Path) -> None:
    """SIGHUP commits a change still inside its quiet window."""
    d = world.daemon(
        *world.flags(venv.prefix), "--baseline", str(world.tmp / "b.json"), "--quiet-ms", "60000"
    ).start()
    try:
        install(world, venv, wheels, "delta==1.0")
        d.signal(signal.SIGHUP)
        eventually(lambda: committed(world, ["delta==1.0"]), what="commit after SIGHUP")
        assert d.stop() == 0
    finally:
        d.close()


@pytest.mark.slow
def test_installs_in_separate_batches_of_one_quiet_window_are_all_seen(
    world: World, venv: Venv, wheels: Path
) -> None:
    """Two installs a second apart, inside one 8 s quiet window: the watcher names their
    entries in separate batches, and the one rescan looks at the entries of both."""
    d = world.daemon(
        *world.flags(venv.prefix), "--baseline", str(world.tmp / "b.json"), "--quiet-ms", "8000"
    ).start()
    try:
        install(world, venv, wheels, "alpha==1.0")
        time.sleep(1.0)  # many times the watcher's 50 ms batch: a batch of its own
        install(world, venv, wheels, "delta==1.0")
        eventually(lambda: committed(world, ["alpha==1.0", "delta==1.0"]), what="both installs")
        assert world.generation() == 1  # one scan and one commit for the two
        assert d.stop() == 0
    finally:
        d.close()


@pytest.mark.slow
def test_watchdog_keepalives_are_sent_when_systemd_asks(world: World, venv: Venv) -> None:
    """WATCHDOG_USEC set for our pid: WATCHDOG=1 datagrams arrive while idle."""
    d = world.daemon(*world.flags(venv.prefix), "--baseline", str(world.tmp / "b.json"))
    # WATCHDOG_PID cannot be known before the start: systemd omits it for the main process.
    d.start(extra_env={"WATCHDOG_USEC": "400000"})
    try:
        d.wait_message("WATCHDOG=1", timeout=10)
        d.wait_message("WATCHDOG=1", timeout=10)
        assert d.stop() == 0
    finally:
        d.close()
