"""`pkgckpt status` as a library call: what it reports when a library cannot be read; the
status file, read only when it is private, and the daemon it names, believed only when
that pid is a `pkgckpt daemon` of this store and key."""

from __future__ import annotations

import os
import shlex
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import fault_kit
import msgspec
import pytest
from fault_kit import faults, glob_escape, hung_open
from wheelhouse import Venv, make_venv

from pkgckpt import record, status
from pkgckpt.config import Config
from pkgckpt.errors import AlreadyRunning
from pkgckpt.inventory import targets
from pkgckpt.manifest import Body, Delta, Environment, Failing, Package
from pkgckpt.store import Store, init_store

shim = fault_kit.shim


def _tracking_a_venv(tmp_path: Path) -> tuple[Venv, Config]:
    """A venv without pip, the only environment tracked, with its store and runtime dir."""
    venv = make_venv(tmp_path / "venv", with_pip=False)
    config = Config(
        store=tmp_path / "store",
        key="alice",
        env=(venv.prefix,),
        runtime_dir=tmp_path / "run",
        discover=(),
    )
    return venv, config


def test_an_unreadable_library_is_reported_once_with_what_it_records(tmp_path: Path) -> None:
    """A scan error shows beside the environment's recorded packages, not as a second entry."""
    venv, config = _tracking_a_venv(tmp_path)
    (target,) = (t for t in targets(config) if not t.env.user)
    recorded = Delta(env=target.env, added=(Package(name="alpha", version="1.0"),))
    init_store(config.store)
    Store(config.store, config.key).commit(Body(environments=(recorded,)))
    site = venv.site_packages
    site.rmdir()
    site.symlink_to(site.name)  # a loop: opening it fails with ELOOP, even for root

    reports = [e for e in status.collect(config).environments if not e.env.user]

    assert len(reports) == 1
    (report,) = reports
    assert report.error is not None and "cannot read" in report.error
    assert [p.name for p in report.added] == ["alpha"]


def test_a_store_that_stops_answering_is_reported_after_a_bounded_wait(
    tmp_path: Path, shim: Path
) -> None:
    """A hard NFS mount whose server went away blocks the manifest's `open()` for as long
    as it is gone. `status` waits `STORE_SECONDS` for it, then shows what is local and
    says the store did not answer; `--prometheus` answers in the same bound."""
    venv, config = _tracking_a_venv(tmp_path)
    init_store(config.store)
    Store(config.store, config.key).commit(Body(environments=()))
    log = tmp_path / "faults.log"
    manifest = glob_escape(config.store / config.key / "manifest.json")
    env = {
        **os.environ,
        **faults(shim, f"open:0:1:hang:{manifest}", log),
        "XDG_RUNTIME_DIR": str(config.runtime_dir),
        "PKGCKPT_DISCOVER": "",
    }
    flags = ["--store", str(config.store), "--key", config.key, "--env", str(venv.prefix)]
    unknown = f"checkpoint: unknown, the store cannot be read now: store {config.store} did "
    for extra, said in (([], unknown + "not answer within 10 s"), (["--prometheus"], "pkgckpt_")):
        log.unlink(missing_ok=True)
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", "pkgckpt", "status", *flags, *extra],
            capture_output=True, text=True, env=env, timeout=60, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        took = time.monotonic() - started
        assert hung_open(log), "the store really hung"
        assert done.returncode == 0, done
        assert 10 <= took < 10 + 8, f"{took:.1f} s"
        assert said in done.stdout, done.stdout


@pytest.mark.parametrize("hangs", ["open_store", "summarize"])
def test_every_store_call_of_status_is_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hangs: str
) -> None:
    """Opening the store (which lists its root when `store_uid` is set) and summing up its
    artifacts (which lists the key's and the shared pool's) are waited for as long as the
    manifest's read: what does not answer is reported, and the rest is shown."""
    venv, config = _tracking_a_venv(tmp_path)
    init_store(config.store)
    Store(config.store, config.key).commit(Body(environments=()))
    released = threading.Event()
    real = getattr(status, hangs)

    def hung(*args: object, **kwargs: object) -> object:
        released.wait(60)
        return real(*args, **kwargs)

    monkeypatch.setattr(status, hangs, hung)
    monkeypatch.setattr(status, "STORE_SECONDS", 0.5)
    try:
        started = time.monotonic()
        report = status.collect(config)
        assert time.monotonic() - started < 10
    finally:
        released.set()
    said = f"store {config.store} did not answer within 0.5 s"
    if hangs == "open_store":
        assert report.store_unread is not None and said in report.store_unread
        assert report.checkpoint is None
    else:
        assert report.checkpoint is not None and report.checkpoint.generation == 1
        assert report.artifacts is not None and report.artifacts.error is not None
        assert said in report.artifacts.error
    assert any(e.env.path == str(venv.prefix) for e in report.environments), "what is local"


def test_a_recorded_environment_not_tracked_here_says_why_restore_skips_it(
    tmp_path: Path,
) -> None:
    """A recorded venv that is gone shows its packages with the reason restore gives
    and the forget command that drops them; one that exists but is not tracked says so.
    The named command drops the missing one's record."""
    venv, config = _tracking_a_venv(tmp_path)
    gone = Environment(kind="python", path=str(tmp_path / "gone env"))
    (tmp_path / "other").mkdir()
    other = Environment(kind="python", path=str(tmp_path / "other"))
    alpha = (Package(name="alpha", version="1.0"),)
    init_store(config.store)
    Store(config.store, config.key).commit(
        Body(environments=(Delta(env=gone, added=alpha), Delta(env=other, added=alpha)))
    )

    report = status.collect(config)
    why = {e.env.path: e.untracked for e in report.environments}
    forget = f"pkgckpt forget --env '{gone.path}' NAME..."
    assert why[gone.path] == (
        "missing: the record keeps its packages; make it again at this path, or drop them "
        f"with {forget}"
    )
    assert why[other.path] == "not tracked here (use --env PATH or discovery)"
    assert why[str(venv.prefix)] is None
    text = status.to_text(report)
    assert f"python {gone.path}:\n    restore skips it: missing: " in text
    assert "    restore skips it: not tracked here" in text

    done = subprocess.run(
        [sys.executable, "-m", "pkgckpt", *shlex.split(forget.replace("NAME...", "alpha"))[1:],
         "--store", str(config.store), "--key", config.key],
        capture_output=True, text=True, env={**os.environ, "XDG_RUNTIME_DIR": str(tmp_path)},
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    after = Store(config.store, config.key).read()
    assert after is not None
    assert [d.env.path for d in after.body.environments if not d.is_empty()] == [other.path]


def test_long_package_lists_wrap_at_the_terminal_width(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """61 added packages take several lines within the width, each one whole, in order."""
    monkeypatch.setenv("COLUMNS", "80")
    packages = tuple(Package(name=f"package-{i:02d}", version="1.0.0") for i in range(61))
    env = Environment(kind="python", path="/opt/env")
    report = status.Report(
        store="/s", key="k", environments=(status.EnvReport(env=env, added=packages),)
    )
    lines = status.to_text(report).splitlines()
    added = lines[lines.index("python /opt/env:") + 1 :]
    assert len(added) > 1 and all(len(line) <= 80 for line in added)
    assert added[0].startswith("    added    package-00 1.0.0, ")
    assert all(line.startswith(" " * 13) for line in added[1:])
    listed = ", ".join(f"{p.name} {p.version}" for p in packages)
    assert " ".join(line.strip() for line in added) == f"added    {listed}"


def test_the_text_has_no_control_characters_from_what_it_shows() -> None:
    """A path from environments.txt or the store, and an error about it, reach the
    terminal with escape sequences and bidi overrides shown as `?`, lines kept."""
    env = Environment(kind="python", path="/opt/\x1b[2Jenv\u202e")
    report = status.Report(
        store="/s\x1b]0;title\x07",
        key="k",
        environments=(status.EnvReport(env=env, error="cannot read\x1b[31m it"),),
    )
    text = status.to_text(report)
    assert "\x1b" not in text and "\x07" not in text and "\u202e" not in text
    assert "python /opt/?[2Jenv?:" in text.splitlines()
    assert "    error: cannot read?[31m it" in text.splitlines()


def test_what_the_store_says_forges_no_line_of_status_or_history() -> None:
    """The manifest's time, a failing entry's name and version and a history entry's
    words are the store's, unvalidated: a newline in them is shown as `?`, not a line."""
    env = Environment(kind="python", path="/opt/env")
    failing = Failing(name="a\nFORGED", version="1\nFORGED", reason="no such version")
    report = status.Report(
        store="/s",
        key="k",
        checkpoint=status.Checkpoint(generation=1, time="2026\nFORGED"),
        environments=(status.EnvReport(env=env, failing=(failing,)),),
    )
    entry = record.Entry(
        time="2026-12\nFORGED", generation=1, exact=True, env=env, action="install\nFORGED",
        name="x\nFORGED", new="1\nFORGED",
    )  # fmt: skip
    history = record.History(key="k", store="/s", generation=1, entries=(entry,))
    for text in (status.to_text(report), history.render()):
        assert not any(line.startswith("FORGED") for line in text.splitlines()), text


def _state(config: Config, pid: int) -> status.DaemonState:
    return status.DaemonState(
        pid=pid,
        pid_start=status.process_start(pid),
        host=socket.gethostname(),
        version="0",
        store=str(config.store),
        key=config.key,
        started="x",
        updated="x",
        phase="watching",
    )


def test_the_status_file_is_named_by_store_and_key(tmp_path: Path) -> None:
    """One key on two stores has two status files: snapshot asks the daemon of its store."""
    one = Config(store=tmp_path / "a", key="k", runtime_dir=tmp_path / "run")
    other = Config(store=tmp_path / "b", key="k", runtime_dir=tmp_path / "run")
    assert status.status_path(one) != status.status_path(other)
    assert status.status_path(one) == status.status_path(Config(**msgspec.structs.asdict(one)))
    assert "k" not in status.status_path(one).name.removeprefix("daemon-")


def test_a_status_file_that_is_not_private_or_not_this_stores_is_not_read(tmp_path: Path) -> None:
    """Only a 0600 file of ours, in a 0700 directory of ours, naming this store and key, is
    read; anything else is as if there were none."""
    config = Config(store=tmp_path / "store", key="k", runtime_dir=tmp_path / "run")
    writer = status.StatusFile(config)
    writer.write(_state(config, os.getpid()))
    writer.close()
    assert status.read_state(config) is not None
    path = status.status_path(config)
    path.chmod(0o644)
    assert status.read_state(config) is None
    path.chmod(0o600)
    config.runtime_dir.chmod(0o755)
    assert status.read_state(config) is None
    config.runtime_dir.chmod(0o700)
    elsewhere = Config(store=tmp_path / "other", key="k", runtime_dir=tmp_path / "run")
    status.status_path(elsewhere).write_bytes(path.read_bytes())  # names the first store
    status.status_path(elsewhere).chmod(0o600)
    assert status.read_state(elsewhere) is None
    link = tmp_path / "run" / "target.json"
    path.rename(link)
    path.symlink_to(link)
    assert status.read_state(config) is None


def test_a_restarted_daemon_keeps_the_first_start_of_its_container_only(tmp_path: Path) -> None:
    """The start a daemon counts installs from is the first of this container's daemons of
    this store and key, as the last one's status file says, while none of them read the
    store; a file another container's daemon left (a runtime directory kept on a volume)
    gives none."""
    config = Config(store=tmp_path / "store", key="k", runtime_dir=tmp_path / "run")
    assert status.first_start(config) is None
    writer = status.StatusFile(config)
    try:
        writer.write(status.new_state(config, 1000.5))
        assert status.first_start(config) == 1000.5
        other = msgspec.structs.replace(status.new_state(config, 1000.5), container="0" * 16)
        writer.write(other)
        assert status.first_start(config) is None
        read = msgspec.structs.replace(status.new_state(config, 1000.5), baseline="b.json")
        writer.write(read)
        assert status.first_start(config) is None  # it read the store: counts from its start
    finally:
        writer.close()


def test_the_status_file_is_made_again_when_its_directory_was_removed(tmp_path: Path) -> None:
    """The writer holds its checked directory open; one removed under it (tmpfiles cleaning
    /tmp) is made and checked again, so the next write is seen, not lost in a deleted one."""
    config = Config(store=tmp_path / "store", key="k", runtime_dir=tmp_path / "run")
    writer = status.StatusFile(config)
    try:
        writer.write(_state(config, os.getpid()))
        shutil.rmtree(config.runtime_dir)
        writer.write(msgspec.structs.replace(_state(config, os.getpid()), generation=7))
    finally:
        writer.close()
    state = status.read_state(config)
    assert state is not None and state.generation == 7
    made = sorted([status.status_path(config).name, status.lock_name(config)])
    assert sorted(p.name for p in config.runtime_dir.iterdir()) == made


def test_the_daemon_lock_is_one_per_store_and_key_and_follows_a_removed_directory(
    tmp_path: Path,
) -> None:
    """A second claim of one store and key is refused (AlreadyRunning, exit 4) while the
    first holds it, another key's is not; when the directory is removed under the holder,
    its next write takes the lock in the new one, so a claim there is refused too."""
    config = Config(store=tmp_path / "store", key="k", runtime_dir=tmp_path / "run")
    first = status.StatusFile(config)
    other = status.StatusFile(msgspec.structs.replace(config, key="other"))
    second = status.StatusFile(config)
    try:
        assert first.claim() == config.runtime_dir
        other.claim()
        with pytest.raises(AlreadyRunning) as refused:
            second.claim()
        assert refused.value.exit_code == 4
        first.write(_state(config, os.getpid()))
        with pytest.raises(AlreadyRunning, match=f"daemon \\(pid {os.getpid()}\\) already runs"):
            second.claim()

        shutil.rmtree(config.runtime_dir)
        first.write(_state(config, os.getpid()))
        with pytest.raises(AlreadyRunning):
            second.claim()
    finally:
        first.close()
        other.close()
    second.claim()  # the first let it go
    second.close()


@pytest.fixture
def fake_daemon(tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Processes of ours whose command line reads `pkgckpt daemon ARGS` (a shell script)."""
    script = tmp_path / "bin" / "pkgckpt"
    script.parent.mkdir()
    script.write_text("#!/bin/sh\nsleep 60\n")
    script.chmod(0o755)
    started: list[subprocess.Popen[bytes]] = []

    def start(*args: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen([str(script), *args])
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.kill()
        proc.wait()


def test_only_a_pkgckpt_daemon_of_this_store_and_key_counts_as_running(
    tmp_path: Path, fake_daemon: Callable[..., subprocess.Popen[bytes]]
) -> None:
    """`running` (what snapshot signals) needs the pid to be a `pkgckpt daemon` whose
    command line names no other store or key, started when the status file says."""
    config = Config(store=tmp_path / "store", key="k", runtime_dir=tmp_path / "run")
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        assert not status.running(_state(config, sleeper.pid), config)
    finally:
        sleeper.kill()
        sleeper.wait()
    plain = fake_daemon("daemon")
    same = fake_daemon("daemon", "--store", str(config.store), "--key=k")
    other_store = fake_daemon("daemon", "--store", str(tmp_path / "other"))
    other_key = fake_daemon("daemon", "--key", "j")
    not_daemon = fake_daemon("status")
    time.sleep(0.2)  # each has exec'd its shell by now
    assert status.running(_state(config, plain.pid), config)
    assert status.running(_state(config, same.pid), config)
    for proc in (other_store, other_key, not_daemon):
        assert not status.running(_state(config, proc.pid), config)
    restarted = msgspec.structs.replace(_state(config, plain.pid), pid_start=1)
    assert not status.running(restarted, config)


def test_a_store_that_cannot_be_read_is_no_empty_checkpoint(tmp_path: Path) -> None:
    """The store root renamed away with no daemon status to go by: the checkpoint is
    unknown (not "none yet"), the recorded lists and pending are said to be unknown, and
    what the venv holds is not listed as pending, as if the store lacked it."""
    venv, config = _tracking_a_venv(tmp_path)
    (target,) = (t for t in targets(config) if not t.env.user)
    init_store(config.store)
    Store(config.store, config.key).commit(
        Body(environments=(Delta(env=target.env, added=(Package(name="alpha", version="1.0"),)),))
    )
    dist = venv.site_packages / "alpha-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: alpha\nVersion: 1.0\n")
    config.store.rename(tmp_path / "elsewhere")

    report = status.collect(config)

    assert report.checkpoint is None and report.last_commit is None
    assert report.store_unread is not None and "not available" in report.store_unread
    assert not report.pending_from_daemon
    (env,) = (e for e in report.environments if e.env.path == str(venv.prefix))
    assert env.pending == () and not env.pending_known
    text = status.to_text(report)
    assert "none yet" not in text and "nothing recorded" not in text
    assert f"checkpoint: unknown, the store cannot be read now: {report.store_unread}\n" in text
    assert "last error:" not in text, "said once, on the checkpoint line"
    assert "    recorded unknown: the store cannot be read\n" in text
    assert "    pending  unknown: the store cannot be read\n" in text
