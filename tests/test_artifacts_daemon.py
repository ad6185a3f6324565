"""The daemon's background capture: after the commit, at idle priority, one worker, and
SIGTERM in the middle of a capture leaves no partial artifact and no temp file."""

from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import fault_kit
import pytest
from artifact_kit import artifacts, big_wheel, cache_on, make_wheelhouse
from daemon_kit import World, context_switches, eventually, uv_install
from fault_kit import glob_escape
from prometheus_client.parser import text_string_to_metric_families
from restore_kit import hermetic

from pkgckpt.artifacts import Job
from pkgckpt.manifest import Manifest, Package
from pkgckpt.store import Store

pytestmark = pytest.mark.slow


def _packages(found: Manifest | None) -> dict[str, Package]:
    if found is None:
        return {}
    return {p.name: p for d in found.body.deltas() for p in (*d.added, *d.changed)}


def _world(tmp_path: Path) -> tuple[World, Path, list[str]]:
    world = cache_on(World.make(tmp_path))
    # The worker's private directories go here, where the test can see they are gone.
    (tmp_path / "tmpdir").mkdir()
    world.env["TMPDIR"] = str(tmp_path / "tmpdir")
    venv = world.image_venv(tmp_path)
    flags = [*world.flags(venv.prefix), "--baseline", str(tmp_path / "b.json")]
    return world, venv.prefix, flags


def test_the_daemon_captures_after_its_commit_in_the_background(tmp_path: Path) -> None:
    """The install is committed without artifacts first; the artifacts then amend that
    same generation (no kept generation spent on them); the metric and `status` count
    them; SIGTERM exits 0."""
    world, prefix, flags = _world(tmp_path)
    wheels = make_wheelhouse(tmp_path / "wheels")
    metrics = tmp_path / "k.prom"
    daemon = world.daemon(*flags, "--quiet-ms", "100", "--metrics-file", str(metrics)).start()
    try:
        seen: list[tuple[int, dict[str, Package]]] = []

        def captured() -> bool:
            found = world.manifest()
            if found is not None:
                seen.append((found.generation, _packages(found)))
            have = _packages(found)
            return bool(have) and all(p.artifact is not None for p in have.values())

        uv_install(prefix / "bin" / "python", wheels, "app", env=world.env)
        eventually(captured, what="artifacts in the manifest")
        final = world.manifest()
        first, before = next((g, p) for g, p in seen if "app" in p)
        assert before["app"].artifact is None, "the commit waited for the capture"
        assert final is not None and final.generation == first, "the capture took a generation"
        kept = Store(world.store, world.key).read_generation(first)
        assert kept is not None and all(p.artifact for p in _packages(kept).values())
        names = artifacts(world.store, world.key)
        assert set(names) == {"app-1.0-py3-none-any.whl", "libdep-1.0-py3-none-any.whl"}

        def gauge() -> float | None:
            text = metrics.read_text() if metrics.exists() else ""
            for family in text_string_to_metric_families(text):
                if family.name == "pkgckpt_artifact_bytes":
                    return family.samples[0].value
            return None

        assert eventually(gauge, what="the artifact metric") == sum(names.values())
        status = world.pkgckpt("status", *flags)
        assert "artifacts:  2 (" in status.stdout, status.stdout
        assert daemon.stop() == 0, daemon.output()
        # No worker runs at the stop: nothing to say of captures then.
        assert "captured 0 artifact(s), 0 not captured" not in daemon.output()
    finally:
        daemon.close()
    assert not list((tmp_path / "tmpdir").iterdir())


def test_snapshot_with_a_daemon_returns_once_the_artifacts_are_on_the_store(
    tmp_path: Path,
) -> None:
    """`pkgckpt snapshot` asks the running daemon and returns only when every recorded
    package has its artifact in the manifest."""
    world, prefix, flags = _world(tmp_path)
    wheels = make_wheelhouse(tmp_path / "wheels")
    # A quiet window the test never reaches: only the snapshot's SIGHUP scans.
    daemon = world.daemon(*flags, "--quiet-ms", "600000").start()
    try:
        uv_install(prefix / "bin" / "python", wheels, "app", env=world.env)
        snap = world.pkgckpt("snapshot", *flags, timeout=300)
        assert snap.returncode == 0, snap.stdout + snap.stderr
        assert snap.stdout.startswith("the daemon wrote generation"), snap.stdout
        have = _packages(world.manifest())
        assert set(have) == {"app", "libdep"}
        assert all(p.artifact is not None for p in have.values()), have
        assert daemon.stop() == 0, daemon.output()
    finally:
        daemon.close()


def _worker_of(pid: int) -> int | None:
    """The pid of the capture worker `pid` runs, if any."""
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == pid and b"pkgckpt.artifacts.background" in argv:
            return int(proc.name)
    return None


def test_snapshot_through_the_daemon_waits_for_captures_no_longer_than_the_shutdown_timeout(
    tmp_path: Path,
) -> None:
    """A preStop `pkgckpt snapshot` has `shutdown_timeout` (the grace period's share of it)
    in all: a capture still running then (a large wheel onto a slow store, here a stopped
    worker) is reported as still running, exit 0, with the install in the manifest; the
    daemon finishes it in the background."""
    world, prefix, flags = _world(tmp_path)
    wheels = tmp_path / "wheels"
    big_wheel(wheels, "bigpkg", 64)
    uv_install(prefix / "bin" / "python", wheels, "bigpkg", env=world.env)
    # The daemon's start commit records bigpkg and starts its capture before READY.
    daemon = world.daemon(*flags, "--quiet-ms", "600000").start()
    try:
        assert daemon.proc is not None
        worker = eventually(lambda: _worker_of(daemon.proc.pid), what="the capture worker")
        os.kill(worker, signal.SIGSTOP)
        try:
            world.env["PKGCKPT_SHUTDOWN_TIMEOUT"] = "2"
            started = time.monotonic()
            snap = world.pkgckpt("snapshot", *flags, timeout=60)
            took = time.monotonic() - started
        finally:
            os.kill(worker, signal.SIGCONT)
        assert snap.returncode == 0, snap.stdout + snap.stderr
        assert took < 10, took
        assert "still capturing 1 package(s)" in snap.stdout, snap.stdout
        assert "bigpkg" in _packages(world.manifest())
        eventually(
            lambda: _packages(world.manifest())["bigpkg"].artifact is not None,
            timeout=60,
            what="the capture finished in the background",
        )
        again = world.pkgckpt("snapshot", *flags, timeout=60)
        assert again.returncode == 0 and "still capturing" not in again.stdout, again.stdout
        assert daemon.stop() == 0, daemon.output()
    finally:
        daemon.close()


def test_snapshot_without_a_daemon_captures_no_longer_than_the_shutdown_timeout(
    tmp_path: Path,
) -> None:
    """Without a daemon, the preStop `pkgckpt snapshot` captures in the foreground within
    `shutdown_timeout` too: a capture still running then (a read of the package that the
    file system stalls, as a hung NFS home would: strace delays each read 8 s) is stopped
    and listed as not captured, with why; the manifest holds the install, exit 0, and no
    temp file is left. The next snapshot captures it."""
    if subprocess.run(["strace", "-V"], capture_output=True, check=False).returncode != 0:
        pytest.skip("no strace")
    world, prefix, flags = _world(tmp_path)
    wheels = tmp_path / "wheels"
    big_wheel(wheels, "bigpkg", 1)
    uv_install(prefix / "bin" / "python", wheels, "bigpkg", env=world.env)
    (blob,) = prefix.glob("lib/python*/site-packages/bigpkg/blob.bin")
    stall = ["strace", "-f", "-o", os.devnull, "-P", str(blob), "-e", "trace=read",
             "-e", "inject=read:delay_enter=8000000"]  # fmt: skip
    out, err = tmp_path / "out", tmp_path / "err"
    started = time.monotonic()
    with out.open("w") as stdout, err.open("w") as stderr:
        # The time is snapshot's own, up to its last line: strace, its parent, ends only
        # once the stalled read it holds is over.
        snap = subprocess.Popen(
            [*stall, sys.executable, "-m", "pkgckpt", "snapshot", *flags],
            stdout=stdout, stderr=stderr, stdin=subprocess.DEVNULL,
            env={**world.env, "PKGCKPT_SHUTDOWN_TIMEOUT": "2"},
        )  # fmt: skip
        try:
            eventually(lambda: "bigpkg" in out.read_text(), 60, "snapshot's report")
            took = time.monotonic() - started
            assert snap.wait(60) == 0, out.read_text() + err.read_text()
        finally:
            if snap.poll() is None:
                snap.kill()
    report = out.read_text()
    # 2 s and the interpreter's start: stopping the worker is inside the bound, not after.
    assert took < 3.5, (took, report, err.read_text())
    assert "snapshot wrote generation 1" in report, report
    (line,) = [line for line in report.splitlines() if "bigpkg==1.0" in line]
    assert "not captured within shutdown_timeout (2 s)" in line, report
    assert _packages(world.manifest())["bigpkg"].artifact is None
    assert not list((tmp_path / "tmpdir").iterdir())
    again = world.pkgckpt("snapshot", *flags, timeout=120)
    assert again.returncode == 0 and "not captured" not in again.stdout, again.stdout
    assert _packages(world.manifest())["bigpkg"].artifact is not None


def test_sigterm_mid_capture_references_no_partial_artifact_and_leaves_no_temp_file(
    tmp_path: Path,
) -> None:
    """SIGTERM while the worker packs a large wheel: the daemon exits 0 with the install
    committed, every artifact the manifest names is whole (its sha256 matches), and no
    temp file is left on the store or in the worker's private directory."""
    world, prefix, flags = _world(tmp_path)
    wheels = tmp_path / "wheels"
    big_wheel(wheels, "bigpkg", 64)
    daemon = world.daemon(*flags, "--quiet-ms", "100").start()
    try:
        uv_install(prefix / "bin" / "python", wheels, "bigpkg", env=world.env)
        eventually(lambda: "bigpkg" in _packages(world.manifest()), what="the commit")
        eventually(
            lambda: any((tmp_path / "tmpdir").glob("pkgckpt-capture-*/pkgckpt-capture-*/*.whl")),
            what="a capture in progress",
        )
        daemon.signal(signal.SIGTERM)
        assert daemon.proc is not None
        assert daemon.proc.wait(60) == 0, daemon.output()
    finally:
        daemon.close()
    found = world.manifest()
    assert "bigpkg" in _packages(found)
    store = Store(world.store, world.key)
    for p in _packages(found).values():
        if p.artifact is not None:
            path = world.store / world.key / "artifacts" / p.artifact.file
            assert hashlib.sha256(path.read_bytes()).hexdigest() == p.artifact.sha256
    directory = world.store / world.key / "artifacts"
    left = (
        [n.name for n in directory.iterdir() if n.name.startswith(".")]
        if directory.exists()
        else []
    )
    assert left == []
    assert set(store.artifacts()) <= {
        p.artifact.file for p in _packages(found).values() if p.artifact
    }
    assert not list((tmp_path / "tmpdir").iterdir())


@pytest.mark.skipif(platform.machine() != "x86_64", reason="ioprio_get's number is x86_64's")
def test_the_capture_worker_runs_at_idle_cpu_and_io_priority() -> None:
    """`idle_priority()` leaves the process at nice 19 and in the idle I/O class."""
    code = (
        "import ctypes, os\n"
        "from pkgckpt.artifacts.background import idle_priority\n"
        "idle_priority()\n"
        "libc = ctypes.CDLL(None)\n"
        "print(os.nice(0), libc.syscall(252, 1, 0) >> 13)\n"  # ioprio_get(WHO_PROCESS, self)
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["19", "3"]


def _bigpkg_job(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Store, Job, Path]:
    """A store, the job of capturing a 64 MB package installed in a venv (seconds of
    work), and the TMPDIR its workers' private directories go to."""
    from wheelhouse import make_venv

    from pkgckpt.artifacts import Job
    from pkgckpt.manifest import Environment
    from pkgckpt.store import init_store

    wheels = tmp_path / "wheels"
    big_wheel(wheels, "bigpkg", 64)
    venv = make_venv(tmp_path / "venv", with_pip=False)
    uv_install(venv.python, wheels, "bigpkg", env=hermetic(tmp_path))
    init_store(tmp_path / "store")
    env = Environment(
        kind="python",
        path=str(venv.prefix),
        interpreter=f"{sys.version_info[0]}.{sys.version_info[1]}",
    )
    job = Job(env=env, roots=(venv.site_packages,), package=Package(name="bigpkg", version="1.0"))
    private = tmp_path / "tmpdir"
    private.mkdir()
    monkeypatch.setenv("TMPDIR", str(private))
    monkeypatch.setattr(tempfile, "tempdir", None)  # read TMPDIR again
    return Store(tmp_path / "store", "k"), job, private


def test_the_worker_exits_at_sigterm_without_reporting_the_capture_it_was_doing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed mid-capture, the worker reports nothing for that package and leaves no file
    on the store: the daemon never references a partial artifact."""
    from pkgckpt.artifacts.background import Background
    from pkgckpt.config import Config

    store, job, private = _bigpkg_job(tmp_path, monkeypatch)
    worker = Background(Config(store=tmp_path / "store", key="k"), store)
    assert worker.start([job], 0, set())
    under_way = "pkgckpt-capture-*/pkgckpt-capture-*/*.whl"
    eventually(lambda: any(private.glob(under_way)), what="capture under way")
    assert worker.collect() is None, "the capture ended before the test could stop it"
    assert worker.stop() == []
    assert not list(private.iterdir())
    assert store.artifacts() == {}
    directory = tmp_path / "store" / "k" / "artifacts"
    assert not directory.exists() or not list(directory.iterdir())


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make another user's directory")
def test_a_worker_s_start_removes_only_the_private_directories_no_live_daemon_holds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A daemon killed after its worker ended leaves the worker's private directory to no
    one. The next start of a worker removes it, and leaves alone the directory of a daemon
    still capturing, another user's, and a symbolic link (not followed)."""
    from pkgckpt.artifacts.background import Background
    from pkgckpt.config import Config

    store, job, private = _bigpkg_job(tmp_path, monkeypatch)
    config = Config(store=tmp_path / "store", key="k")
    dead = private / "pkgckpt-capture-dead"
    dead.mkdir(mode=0o700)
    (dead / "results.jsonl").write_text("")
    other = private / "pkgckpt-capture-other"
    other.mkdir(mode=0o700)
    os.chown(other, 65534, 65534)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "kept").write_text("")
    (private / "pkgckpt-capture-link").symlink_to(outside)
    left_alone = {other.name, "pkgckpt-capture-link"}
    live, later = Background(config, store), Background(config, store)
    try:
        assert live.start([job], 0, set())
        assert not dead.exists(), "the dead daemon's directory, removed at a worker's start"
        (held,) = {p.name for p in private.iterdir()} - left_alone
        assert live.collect() is None, "the live daemon's capture ended before the test"
        assert later.start([job], 0, set())
        names = {p.name for p in private.iterdir()}
        assert names > {held, *left_alone} and len(names) == 4, "the live one's is kept"
        assert (outside / "kept").exists()
    finally:
        later.stop()
        live.stop()
    assert {p.name for p in private.iterdir()} == left_alone


def _children(module: str) -> list[int]:
    """The pids of this process's children running `python -m module`."""
    import os

    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == os.getpid() and module.encode() in argv:
            found.append(int(proc.name))
    return found


def _private_artifacts(world: World) -> Path:
    """The key's artifacts directory made before the daemon starts, open to others: every
    capture fails on it (refused, a person must look) until it is made private again."""
    key = world.store / world.key
    key.mkdir(mode=0o700)
    (key / "artifacts").mkdir()
    (key / "artifacts").chmod(0o755)
    return key / "artifacts"


def _reasons(world: World, flags: list[str]) -> str:
    return world.pkgckpt("status", *flags).stdout


def _status_saying(world: World, flags: list[str], words: str) -> str | None:
    """`pkgckpt status` when it says `words`; None before."""
    text = _reasons(world, flags)
    return text if words in text else None


def test_a_failed_capture_is_retried_while_the_daemon_runs(tmp_path: Path) -> None:
    """A capture that failed on the store is retried after a backoff, with no other event:
    once the store is fixed the artifacts reach the manifest without a restart, and
    `status` said meanwhile why and that a retry is due."""
    world, prefix, flags = _world(tmp_path)
    wheels = make_wheelhouse(tmp_path / "wheels")
    directory = _private_artifacts(world)
    daemon = world.daemon(*flags, "--quiet-ms", "100").start()
    try:
        uv_install(prefix / "bin" / "python", wheels, "libdep", env=world.env)
        eventually(lambda: "libdep" in _packages(world.manifest()), what="the commit")
        said = eventually(
            lambda: _status_saying(world, flags, "retry 1 of 6 is due"), what="the retry"
        )
        assert "open to group or others" in said, said
        directory.chmod(0o700)
        eventually(
            lambda: _packages(world.manifest())["libdep"].artifact is not None,
            timeout=60,
            what="the retried capture",
        )
        assert "without an artifact" not in _reasons(world, flags)
        assert daemon.stop() == 0, daemon.output()
    finally:
        daemon.close()


def test_a_capture_that_keeps_failing_is_given_up_and_the_daemon_goes_idle(
    tmp_path: Path,
) -> None:
    """After `artifact_retries` failed retries the daemon stops trying, says so in
    `status` with the reason, and wakes no more (invariant 5)."""
    world, prefix, flags = _world(tmp_path)
    world.env["PKGCKPT_ARTIFACT_RETRIES"] = "1"
    wheels = make_wheelhouse(tmp_path / "wheels")
    _private_artifacts(world)
    daemon = world.daemon(*flags, "--quiet-ms", "100").start()
    try:
        uv_install(prefix / "bin" / "python", wheels, "libdep", env=world.env)
        said = eventually(
            lambda: _status_saying(world, flags, "gave up after 1 retries"),
            timeout=60,
            what="the give-up in status",
        )
        assert "libdep==1.0" in said and "open to group or others" in said, said
        assert daemon.proc is not None
        time.sleep(0.5)
        before = context_switches(daemon.proc.pid)
        time.sleep(3)
        assert context_switches(daemon.proc.pid) == before
        assert daemon.stop() == 0, daemon.output()
    finally:
        daemon.close()


def test_a_daemon_killed_between_capture_and_commit_references_nothing_partial(
    tmp_path: Path,
) -> None:
    """kill -9 of the daemon mid-capture: its worker stops with it and removes its private
    directory; the store keeps no temp file; the next daemon captures again and the
    manifest names only whole artifacts, in the same generation as the install. The test
    runs the worker in slices (SIGSTOP, SIGCONT) until its wheel is being written, and
    kills the daemon while it is held there: a worker that finished first would leave its
    results for a daemon that is gone, which is not this case."""
    world, prefix, flags = _world(tmp_path)
    wheels = tmp_path / "wheels"
    big_wheel(wheels, "bigpkg", 64)
    daemon = world.daemon(*flags, "--quiet-ms", "100").start()
    try:
        uv_install(prefix / "bin" / "python", wheels, "bigpkg", env=world.env)
        eventually(lambda: "bigpkg" in _packages(world.manifest()), what="the commit")
        found = eventually(
            lambda: re.search(r"in the background \(pid ([0-9]+)\)", daemon.output()),
            what="the capture worker",
        )
        worker = int(found.group(1))
        os.kill(worker, signal.SIGSTOP)
        wheel = "pkgckpt-capture-*/pkgckpt-capture-*/*.whl"
        for _ in range(3000):
            if any((tmp_path / "tmpdir").glob(wheel)):
                break
            os.kill(worker, signal.SIGCONT)
            time.sleep(0.005)
            os.kill(worker, signal.SIGSTOP)
        assert any((tmp_path / "tmpdir").glob(wheel))
        state = Path(f"/proc/{worker}/stat")
        eventually(lambda: state.read_text().rsplit(")", 1)[1].split()[0] == "T", 5, "held")
        daemon.kill()
        os.kill(worker, signal.SIGCONT)
    finally:
        daemon.close()
    eventually(lambda: not list((tmp_path / "tmpdir").iterdir()), what="the worker's cleanup")
    generation = world.generation()
    directory = world.store / world.key / "artifacts"
    assert not directory.exists() or not [n for n in directory.iterdir() if n.name[0] == "."]
    again = world.daemon(*flags, "--quiet-ms", "100").start()
    try:
        eventually(
            lambda: _packages(world.manifest())["bigpkg"].artifact is not None,
            timeout=120,
            what="the capture by the next daemon",
        )
        assert again.stop() == 0, again.output()
    finally:
        again.close()
    found = world.manifest()
    assert found is not None and found.generation == generation
    artifact = _packages(found)["bigpkg"].artifact
    assert artifact is not None
    data = (directory / artifact.file).read_bytes()
    assert hashlib.sha256(data).hexdigest() == artifact.sha256 and len(data) == artifact.size
    assert [n.name for n in directory.iterdir()] == [artifact.file]


def test_snapshot_through_the_daemon_exits_1_while_captures_fail_on_the_store(
    tmp_path: Path,
) -> None:
    """`snapshot` asks the daemon to capture the failed packages again at once: while the
    store refuses them it exits 1 naming the package and the reason; once fixed, the next
    snapshot exits 0 with the artifact in the manifest."""
    world, prefix, flags = _world(tmp_path)
    wheels = make_wheelhouse(tmp_path / "wheels")
    directory = _private_artifacts(world)
    daemon = world.daemon(*flags, "--quiet-ms", "600000").start()
    try:
        uv_install(prefix / "bin" / "python", wheels, "libdep", env=world.env)
        failed = world.pkgckpt("snapshot", *flags, timeout=300)
        assert failed.returncode == 1, failed.stdout + failed.stderr
        assert "could not capture 1 package(s): libdep==1.0" in failed.stderr, failed.stderr
        assert "open to group or others" in failed.stderr
        assert "libdep" in _packages(world.manifest()), "the manifest waited for the capture"
        directory.chmod(0o700)
        snap = world.pkgckpt("snapshot", *flags, timeout=300)
        assert snap.returncode == 0, snap.stdout + snap.stderr
        assert _packages(world.manifest())["libdep"].artifact is not None
        assert daemon.stop() == 0, daemon.output()
    finally:
        daemon.close()


def test_snapshot_of_what_the_daemon_does_not_track_says_its_captures_failed_after_it(
    tmp_path: Path,
) -> None:
    """`snapshot --env OTHER` beside a daemon that does not track OTHER, the store refusing
    captures: exit 1, and the message says OTHER was checkpointed (it is on the store) and
    which captures failed, after what the daemon did. It said OTHER "was not
    checkpointed"."""
    from wheelhouse import make_venv

    world, _, flags = _world(tmp_path)
    wheels = make_wheelhouse(tmp_path / "wheels")
    _private_artifacts(world)
    other = make_venv(tmp_path / "other", with_pip=False)
    daemon = world.daemon(*flags, "--quiet-ms", "600000").start()
    try:
        uv_install(other.python, wheels, "libdep", env=world.env)
        failed = world.pkgckpt("snapshot", *world.flags(other.prefix), *flags[-2:], timeout=300)
        assert failed.returncode == 1, failed.stdout + failed.stderr
        said = f"{other.prefix}, which it does not track, was checkpointed, but the captures"
        assert said in failed.stderr, failed.stderr
        assert "artifacts is open to group or others" in failed.stderr, failed.stderr
        assert "libdep" in _packages(world.manifest())
        assert daemon.stop() == 0, daemon.output()
    finally:
        daemon.close()


def test_snapshot_without_a_daemon_exits_1_when_the_store_refuses_a_capture(
    tmp_path: Path,
) -> None:
    """Without a daemon too, artifacts the store refuses exit 1 saying why, with the
    install in the manifest first; once fixed, the next snapshot captures."""
    world, prefix, flags = _world(tmp_path)
    wheels = make_wheelhouse(tmp_path / "wheels")
    directory = _private_artifacts(world)
    uv_install(prefix / "bin" / "python", wheels, "libdep", env=world.env)
    failed = world.pkgckpt("snapshot", *flags, timeout=300)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert f"{directory} is open to group or others" in failed.stderr, failed.stderr
    assert "libdep" in _packages(world.manifest())
    directory.chmod(0o700)
    snap = world.pkgckpt("snapshot", *flags, timeout=300)
    assert snap.returncode == 0, snap.stdout + snap.stderr
    assert _packages(world.manifest())["libdep"].artifact is not None


def test_a_worker_that_dies_on_its_own_reports_its_jobs_as_failures_to_retry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker killed by someone else than the daemon (the OOM killer) reports each job
    it had not finished as a failure that may pass, so the daemon retries it after a
    backoff instead of never (or at once, in a loop)."""
    import os

    from wheelhouse import make_venv

    from pkgckpt.artifacts import Job
    from pkgckpt.artifacts.background import Background
    from pkgckpt.config import Config
    from pkgckpt.manifest import Environment, UrlSource
    from pkgckpt.store import init_store

    wheels = tmp_path / "wheels"
    big_wheel(wheels, "bigpkg", 64)
    venv = make_venv(tmp_path / "venv", with_pip=False)
    uv_install(venv.python, wheels, "bigpkg", env=hermetic(tmp_path))
    init_store(tmp_path / "store")
    store = Store(tmp_path / "store", "k")
    env = Environment(
        kind="python",
        path=str(venv.prefix),
        interpreter=f"{sys.version_info[0]}.{sys.version_info[1]}",
    )
    # From a file, as `pip install ./bigpkg.whl` records it: a source holding a dict.
    source = UrlSource(url=f"file://{wheels}/bigpkg.whl", hashes={"sha256": "0" * 64})
    package = Package(name="bigpkg", version="1.0", source=source)
    job = Job(env=env, roots=(venv.site_packages,), package=package)
    private = tmp_path / "tmpdir"
    private.mkdir()
    monkeypatch.setenv("TMPDIR", str(private))
    monkeypatch.setattr(tempfile, "tempdir", None)  # read TMPDIR again
    worker = Background(Config(store=tmp_path / "store", key="k"), store)
    assert worker.start([job], 0, set())
    eventually(
        lambda: any(private.glob("pkgckpt-capture-*/pkgckpt-capture-*/*.whl")),
        what="capture under way",
    )
    (pid,) = _children("pkgckpt.artifacts.background")
    os.kill(pid, signal.SIGKILL)
    results = eventually(worker.collect, what="the dead worker collected")
    assert [(r.package.name, r.artifact, r.retry) for r in results] == [("bigpkg", None, True)]
    assert results[0].reason == f"the capture worker exited with {-signal.SIGKILL}"
    assert not list(private.iterdir())


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to mount a tmpfs")
def test_sigterm_exits_1_while_the_store_refuses_the_artifacts_of_a_commit(
    tmp_path: Path,
) -> None:
    """The store takes the install, then fills up (ENOSPC) before the capture's artifact
    is recorded: the manifest on the store, read back, is still the daemon's last one, but
    the capture attached since is not in it. SIGTERM exits 1, never 0 ("every change is
    on the store"), and the install stays recorded."""
    world, prefix, flags = _world(tmp_path)
    mount = ["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(world.store)]
    subprocess.run(mount, check=True)
    try:
        from pkgckpt.store import init_store

        init_store(world.store)
        wheels = tmp_path / "wheels"
        big_wheel(wheels, "bigpkg", 8)
        daemon = world.daemon(*flags, "--quiet-ms", "100", "--shutdown-timeout", "2").start()
        assert daemon.proc is not None
        try:
            uv_install(prefix / "bin" / "python", wheels, "bigpkg", env=world.env)

            def worker() -> bool:
                for stat in Path("/proc").glob("[0-9]*/stat"):
                    with contextlib.suppress(OSError):
                        if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == daemon.proc.pid:
                            return True
                return False

            eventually(worker, what="the capture worker")
            # Stopped before it records the capture: the worker writes it meanwhile.
            daemon.signal(signal.SIGSTOP)
            try:
                eventually(lambda: len(artifacts(world.store, world.key)) == 1, 60, "artifact")
                with (world.store / "filler").open("wb") as f, contextlib.suppress(OSError):
                    while f.write(b"\0" * 65536):
                        pass
            finally:
                daemon.signal(signal.SIGCONT)
            eventually(lambda: "commit failed" in daemon.output(), what="the failed commit")
            assert _packages(world.manifest())["bigpkg"].artifact is None
            assert daemon.stop() == 1, daemon.output()
        finally:
            daemon.close()
        assert "bigpkg" in _packages(world.manifest())
    finally:
        subprocess.run(["umount", "-l", str(world.store)], check=False)


def test_sigterm_flushes_within_the_shutdown_timeout_while_a_capture_is_stalled(
    tmp_path: Path,
) -> None:
    """SIGTERM while the worker's read of a package is stalled (strace delays each read
    8 s, as a hung NFS home would): stopping the worker takes a share of
    `shutdown_timeout`, not 5 s plus 5 s of its own, so that the manifest is flushed and
    the daemon done within the bound, before the grace period's SIGKILL."""
    if subprocess.run(["strace", "-V"], capture_output=True, check=False).returncode != 0:
        pytest.skip("no strace")
    world, prefix, flags = _world(tmp_path)
    wheels = tmp_path / "wheels"
    big_wheel(wheels, "bigpkg", 1)
    log = tmp_path / "daemon.log"
    uv_install(prefix / "bin" / "python", wheels, "bigpkg", env=world.env)
    (blob,) = prefix.glob("lib/python*/site-packages/bigpkg/blob.bin")
    stall = ["strace", "-f", "-o", os.devnull, "-P", str(blob), "-e", "trace=read",
             "-e", "inject=read:delay_enter=8000000"]  # fmt: skip
    with log.open("w") as err:
        traced = subprocess.Popen(
            [*stall, sys.executable, "-m", "pkgckpt", "daemon", *flags, "--quiet-ms", "100"],
            stdout=err, stderr=err, stdin=subprocess.DEVNULL,
            env={**world.env, "PKGCKPT_SHUTDOWN_TIMEOUT": "4"},
        )  # fmt: skip
    try:
        eventually(lambda: "capturing 1 package" in log.read_text(), 60, "the capture")
        (pid,) = [
            int(p.name)
            for p in Path("/proc").glob("[0-9]*")
            if (p / "stat").exists()
            and int((p / "stat").read_text().rsplit(")", 1)[1].split()[1]) == traced.pid
        ]
        time.sleep(0.5)  # the worker in its stalled read
        started = time.monotonic()
        os.kill(pid, signal.SIGTERM)
        eventually(lambda: "stopped:" in log.read_text(), 60, "the daemon's last line")
        took = time.monotonic() - started
    finally:
        traced.kill()
        traced.wait()
    assert took < 4, (took, log.read_text())
    assert "bigpkg" in _packages(world.manifest())


shim = fault_kit.shim


def test_a_daemon_ended_on_a_hung_store_takes_its_capture_worker_down(
    tmp_path: Path, shim: Path
) -> None:
    """The daemon's thread blocked in a commit on a store that stopped answering, and its
    capture worker blocked in a read of a package (a hung NFS home), both for good (the
    fault shim). At SIGTERM the daemon ends itself within shutdown_timeout and 2 s, and
    takes down the worker, which runs in a session of its own that no signal to the
    daemon reaches: left alone, it would write on to the store after the daemon ended."""
    world, prefix, flags = _world(tmp_path)
    wheels = make_wheelhouse(tmp_path / "wheels")
    big_wheel(wheels, "bigpkg", 1)
    (site,) = prefix.glob("lib/python*/site-packages")
    faults = tmp_path / "faults.log"
    # The worker's first read of the package; the daemon's second commit (a commit writes
    # two files: the manifest and its generation's copy).
    rules = (
        f"read:0:1:hang:{glob_escape(site)}/bigpkg/blob.bin;"
        f"open:0:3:hang:{glob_escape(world.store / world.key)}/.manifest*"
    )
    world.env |= fault_kit.faults(shim, rules, faults)
    daemon = world.daemon(*flags, "--quiet-ms", "100", "--shutdown-timeout", "3").start()
    try:
        uv_install(prefix / "bin" / "python", wheels, "bigpkg", env=hermetic(tmp_path))
        said = eventually(
            lambda: re.search(r"capturing 1 package\(s\) in the background \(pid (\d+)\)",
                              daemon.output()),
            60, "the capture",
        )  # fmt: skip
        worker = Path(f"/proc/{said[1]}")
        uv_install(prefix / "bin" / "python", wheels, "libdep", env=hermetic(tmp_path))
        eventually(lambda: faults.exists() and len(faults.read_text().splitlines()) == 2,
                   60, "the worker's read and the daemon's commit to hang")  # fmt: skip
        assert worker.exists()
        assert daemon.proc is not None
        daemon.signal(signal.SIGTERM)
        started = time.monotonic()
        assert daemon.proc.wait(30) == 1, daemon.output()
        assert time.monotonic() - started < 3 + 2 + 3
        assert "2 s later it was still writing the manifest" in daemon.output()

        def gone() -> bool:
            try:
                return (worker / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
            except OSError:
                return True

        eventually(gone, 5, "the capture worker taken down")
    finally:
        daemon.close()
        with contextlib.suppress(ProcessLookupError, NameError, ValueError):
            os.killpg(int(said[1]), signal.SIGKILL)


def test_an_artifact_deleted_from_the_key_is_missing_then_captured_again_by_the_next_commit(
    tmp_path: Path,
) -> None:
    """A recorded artifact removed from `<key>/artifacts/` while the daemon runs is named
    missing by `status`; the next commit (another install) captures it again from the
    package installed at that version, the same bytes under the same name."""
    world, prefix, flags = _world(tmp_path)
    wheels = make_wheelhouse(tmp_path / "wheels")
    daemon = world.daemon(*flags, "--quiet-ms", "100").start()
    try:
        uv_install(prefix / "bin" / "python", wheels, "libdep", env=world.env)
        name = "libdep-1.0-py3-none-any.whl"
        eventually(lambda: "libdep" in _packages(world.manifest()), what="libdep recorded")
        # Returns once the daemon captured it and went idle: no commit follows the unlink.
        snap = world.pkgckpt("snapshot", *flags, timeout=300)
        assert snap.returncode == 0, snap.stdout + snap.stderr
        path = world.store / world.key / "artifacts" / name
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        path.unlink()
        said = _reasons(world, flags)
        assert "missing (1)" in said and "libdep==1.0" in said, said
        uv_install(prefix / "bin" / "python", wheels, "app", env=world.env)
        eventually(path.exists, timeout=60, what="the deleted artifact captured again")
        assert hashlib.sha256(path.read_bytes()).hexdigest() == digest
        eventually(lambda: _status_saying(world, flags, "artifacts:  2"), what="app captured")
        assert "missing" not in _reasons(world, flags)
        assert daemon.stop() == 0, daemon.output()
    finally:
        daemon.close()
    recorded = _packages(world.manifest())["libdep"].artifact
    assert recorded is not None and (recorded.file, recorded.sha256) == (name, digest)


def test_a_package_restored_after_its_capture_found_it_missing_is_captured(
    tmp_path: Path,
) -> None:
    """libdep's artifact is damaged (other bytes, the same size). In a new container, with
    the daemon running, a restore with no index refuses it: libdep fails, and the record
    lets the artifact go. The daemon's capture then finds libdep not installed. A second
    restore installs it from the find-links: the daemon's scan finds that install and
    captures it, though nothing in the record changed to commit."""
    world, prefix, flags = _world(tmp_path)
    wheels = make_wheelhouse(tmp_path / "wheels")
    daemon = world.daemon(*flags, "--quiet-ms", "100").start()
    try:
        uv_install(prefix / "bin" / "python", wheels, "libdep", env=world.env)
        eventually(lambda: "libdep" in _packages(world.manifest()), what="libdep recorded")
        snap = world.pkgckpt("snapshot", *flags, timeout=300)
        assert snap.returncode == 0, snap.stdout + snap.stderr
        assert daemon.stop() == 0, daemon.output()
    finally:
        daemon.close()
    path = world.store / world.key / "artifacts" / "libdep-1.0-py3-none-any.whl"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))

    world.image_venv(tmp_path)  # the new container
    shutil.rmtree(world.runtime)
    restore = ["restore", *flags, "--installer", "uv", "--no-index"]
    daemon = world.daemon(*flags, "--quiet-ms", "100").start()
    try:
        refused = world.pkgckpt(*restore, timeout=300)
        assert refused.returncode == 3, refused.stdout + refused.stderr
        assert _packages(world.manifest())["libdep"].artifact is None
        eventually(
            lambda: _status_saying(world, flags, "libdep 1.0 is not installed here"),
            what="the daemon's capture finding libdep not installed",
        )
        back = world.pkgckpt(*restore, "--find-links", str(wheels), timeout=300)
        assert back.returncode == 0, back.stdout + back.stderr
        eventually(
            lambda: _packages(world.manifest())["libdep"].artifact is not None,
            timeout=60,
            what="libdep captured again",
        )
        assert "not installed here" not in _reasons(world, flags)
        assert daemon.stop() == 0, daemon.output()
    finally:
        daemon.close()


def test_a_capture_that_disagrees_with_the_scan_is_not_tried_after_every_commit(
    tmp_path: Path,
) -> None:
    """libdep's dist-info keeps the name of 1.0 while its METADATA says 1.1 (an install
    edited by hand): the scan records 1.1, and the capture finds no 1.1 installed. The
    daemon says so, and tries again after a change in that environment only: not after
    each commit, which each of its attempts is followed by."""
    world, prefix, flags = _world(tmp_path)
    wheels = make_wheelhouse(tmp_path / "wheels")
    uv_install(prefix / "bin" / "python", wheels, "libdep", env=world.env)
    (meta,) = prefix.glob("lib/python3*/site-packages/libdep-1.0.dist-info/METADATA")
    meta.write_text(meta.read_text().replace("Version: 1.0", "Version: 1.1"))
    daemon = world.daemon(*flags, "--quiet-ms", "100").start()
    try:
        eventually(
            lambda: "captured 0 artifact(s), 1 not captured" in daemon.output(),
            what="the capture finding no libdep 1.1",
        )
        time.sleep(3)
        rounds = daemon.output().count("capturing 1 package(s)")
        assert rounds == 1, daemon.output()
        assert "libdep 1.1 is not installed here" in _reasons(world, flags)
        assert daemon.stop() == 0, daemon.output()
    finally:
        daemon.close()
