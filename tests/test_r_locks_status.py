"""Interrupted R installs and what `status` says: a stale `00LOCK-*` is not waited for but
shown with the command that removes it; entries restore would refuse are marked, not
planned; the daemon's baseline is shown when this command has none of its own."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import restore_kit
import rpkgs

from pkgckpt.manifest import Body, Delta, Package
from pkgckpt.scan.r import RLibraryScanner, lock_active, r_environment
from pkgckpt.store import Store, init_store

needs_r = rpkgs.needs_r

HOUR = 3600.0


def installed_package(lib: Path, name: str, version: str = "1.0") -> None:
    (lib / name).mkdir(parents=True)
    (lib / name / "DESCRIPTION").write_text(
        f"Package: {name}\nVersion: {version}\nRepository: CRAN\n"
        "Built: R 4.2.2; ; 2024-01-01 00:00:00 UTC; unix\n"
    )


def old_lock(lib: Path, name: str = "00LOCK-gone") -> Path:
    lock = lib / name
    (lock / "gone").mkdir(parents=True)
    then = time.time() - 2 * HOUR
    os.utime(lock / "gone", (then, then))
    os.utime(lock, (then, then))
    return lock


def test_a_lock_is_in_progress_only_while_something_writes_under_it(tmp_path: Path) -> None:
    """Fresh lock: in progress. Old and untouched: stale. Old, but a file under it just
    written: in progress again."""
    fresh = tmp_path / "00LOCK-a"
    fresh.mkdir()
    assert lock_active(fresh, 600)
    lock = old_lock(tmp_path)
    assert not lock_active(lock, 600)
    (lock / "gone" / "R").mkdir()  # bumps the mtime of `gone`, an entry directly under it
    assert lock_active(lock, 600)
    assert not lock_active(tmp_path / "00LOCK-none", 600)


def test_a_stale_lock_is_reported_stale_and_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The scanner sets a stale lock apart from installs in progress and warns once, with
    the command that removes it."""
    lib = tmp_path / "lib"
    installed_package(lib, "kept")
    lock = old_lock(lib)
    scanner = RLibraryScanner(lib, lock_stale=600)
    with caplog.at_level(logging.WARNING):
        first = scanner.scan()
        second = scanner.scan()
    assert first.stale == second.stale == frozenset({"00LOCK-gone"})
    assert first.in_progress == frozenset()
    warnings = [r.getMessage() for r in caplog.records if "interrupted R install" in r.getMessage()]
    assert len(warnings) == 1
    assert f"rm -rf -- {lock}" in warnings[0]
    assert "kept" in first.packages


def _daemon(lib: Path, store: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    args = ["--r-lib", str(lib), "--store", str(store), "--key", "k"]
    return subprocess.Popen(
        [sys.executable, "-m", "pkgckpt", "daemon", *args, "--quiet-ms", "200"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


@needs_r
def test_a_stale_lock_does_not_hold_back_checkpoints(tmp_path: Path) -> None:
    """With a leftover 00LOCK and a 10-minute maximum delay, an install is checkpointed
    after its quiet window, not at the maximum delay; the log says so once."""
    lib = tmp_path / "lib"
    lib.mkdir()
    old_lock(lib)
    store = tmp_path / "store"
    init_store(store)
    env = restore_kit.hermetic(tmp_path)
    env["PKGCKPT_MAX_DELAY_MS"] = "600000"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify"))
    notify.settimeout(60)
    env["NOTIFY_SOCKET"] = str(tmp_path / "notify")
    daemon = _daemon(lib, store, env)
    try:
        assert notify.recv(4096).startswith(b"READY=1")
        deadline = time.monotonic() + 60
        installed_package(lib, "fresh", "2.0")
        found: set[str] = set()
        while "fresh" not in found:
            assert time.monotonic() < deadline, "the stale lock held the checkpoint back"
            time.sleep(0.2)
            recorded = Store(store, "k").read()
            if recorded is not None:
                found = {p.name for d in recorded.body.environments for p in d.added}
    finally:
        notify.close()
        daemon.send_signal(signal.SIGTERM)
        _, log = daemon.communicate(timeout=60)
    assert log.count("interrupted R install") == 1, log


def _source(root: Path, name: str, version: str, code: str) -> Path:
    src = root / f"{name}-{version}"
    (src / "R").mkdir(parents=True)
    (src / "DESCRIPTION").write_text(
        f"Package: {name}\nVersion: {version}\nTitle: T\nDescription: T.\nAuthor: a\n"
        "Maintainer: a <a@b.c>\nLicense: MIT\nRepository: CRAN\n"
    )
    (src / "NAMESPACE").write_text("export(f)\n")
    (src / "R" / "f.R").write_text(f"f <- function() 1\n{code}\n")
    return src


def _recorded(store: Path) -> dict[str, str]:
    record = Store(store, "k").read()
    if record is None:
        return {}
    return {p.name: p.version for d in record.body.environments for p in d.added}


@needs_r
def test_packages_moved_into_a_whole_library_lock_are_not_recorded_as_removed(
    tmp_path: Path,
) -> None:
    """`R CMD INSTALL a b` locks the library with a bare 00LOCK and moves the installed `a`
    into it, leaving `a/` empty, until both are done. Past the maximum delay the daemon
    checkpoints, and after the install is killed (a container stopped) too: `a` stays
    recorded."""
    lib = tmp_path / "lib"
    lib.mkdir()
    store = tmp_path / "store"
    init_store(store)
    env = restore_kit.hermetic(tmp_path)
    env["PKGCKPT_MAX_DELAY_MS"] = "1500"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify"))
    notify.settimeout(60)
    env["NOTIFY_SOCKET"] = str(tmp_path / "notify")
    src = tmp_path / "src"
    r_install = ["R", "CMD", "INSTALL", "--no-test-load", "-l", str(lib)]
    mine = {"ckptKeep": "1.0", "ckptSlow": "1.0"}

    def install(*sources: Path, **kw: object) -> subprocess.Popen[bytes]:
        args = [*r_install, *map(str, sources)]
        return subprocess.Popen(args, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, **kw)  # type: ignore[call-overload]

    daemon = _daemon(lib, store, env)
    slow = None
    try:
        assert notify.recv(4096).startswith(b"READY=1")
        # Two packages: a library found empty proves nothing anyway.
        assert install(_source(src, "ckptKeep", "1.0", "")).wait(120) == 0
        assert install(_source(src, "ckptSlow", "1.0", "")).wait(120) == 0
        deadline = time.monotonic() + 60
        while _recorded(store) != mine:
            assert time.monotonic() < deadline, _recorded(store)
            time.sleep(0.2)
        # Sourcing the new version's code at install time takes a while.
        upgrade = _source(src, "ckptSlow", "2.0", "Sys.sleep(60)")
        slow = install(upgrade, _source(src, "ckptOther", "1.0", ""), start_new_session=True)
        deadline = time.monotonic() + 60
        while not (lib / "00LOCK" / "ckptSlow" / "DESCRIPTION").exists():
            assert time.monotonic() < deadline, "R did not lock the whole library"
            assert slow.poll() is None
            time.sleep(0.1)
        assert not (lib / "ckptSlow" / "DESCRIPTION").exists()
        time.sleep(4)  # past the maximum delay: the daemon has checkpointed
        assert _recorded(store) == mine
        os.killpg(slow.pid, signal.SIGKILL)
        slow.wait(60)
        time.sleep(2)
        assert (lib / "00LOCK" / "ckptSlow").is_dir()
        assert _recorded(store) == mine
    finally:
        if slow is not None and slow.poll() is None:
            os.killpg(slow.pid, signal.SIGKILL)
            slow.wait(60)
        notify.close()
        daemon.send_signal(signal.SIGTERM)
        daemon.communicate(timeout=60)


@needs_r
def test_a_library_discovered_while_running_keeps_the_configured_lock_staleness(
    tmp_path: Path,
) -> None:
    """An R library that appears after the daemon started (an `R_LIBS` entry made later)
    is tracked from the next rediscovery with `r_lock_stale` as configured: a lock nothing
    wrote under for a minute is a leftover when it is 5 s, and said so once."""
    late = tmp_path / "late" / "lib"
    late.parent.mkdir()
    store = tmp_path / "store"
    init_store(store)
    env = restore_kit.hermetic(tmp_path)
    env.update(
        HOME=str(tmp_path / "home"),
        R_LIBS=str(late),
        R_LIBS_USER=str(tmp_path / "user"),
        R_LIBS_SITE=str(tmp_path / "site"),
        PKGCKPT_DISCOVER="r",
        PKGCKPT_R_LOCK_STALE="5",
    )
    (tmp_path / "home").mkdir()
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify"))
    notify.settimeout(60)
    env["NOTIFY_SOCKET"] = str(tmp_path / "notify")
    log = tmp_path / "daemon.log"
    with log.open("w") as err:
        daemon = subprocess.Popen(
            [sys.executable, "-m", "pkgckpt", "daemon", "--store", str(store), "--key", "k"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    try:
        assert notify.recv(4096).startswith(b"READY=1")
        lock = late / "00LOCK-gone"
        (lock / "gone").mkdir(parents=True)
        then = time.time() - 60
        os.utime(lock / "gone", (then, then))
        os.utime(lock, (then, then))
        daemon.send_signal(signal.SIGHUP)  # rediscovers: the new library is tracked
        deadline = time.monotonic() + 30
        while f"{lock} is left over" not in log.read_text():
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
    finally:
        notify.close()
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(60)
    assert log.read_text().count("interrupted R install") == 1


def test_status_shows_a_stale_lock_with_the_command_that_removes_it(tmp_path: Path) -> None:
    """`pkgckpt status` names the leftover lock and how to remove it."""
    lib = tmp_path / "lib"
    installed_package(lib, "kept")
    lock = old_lock(lib)
    env = restore_kit.hermetic(tmp_path)
    out = restore_kit.pkgckpt(
        "status", "--r-lib", str(lib), "--store", str(tmp_path / "store"), "--key", "k", env=env
    )
    assert out.returncode == 0, out.stderr
    assert f"stale lock {lock}" in out.stdout
    assert f"remove it: rm -rf -- {lock}" in out.stdout


def test_status_marks_what_restore_would_refuse_and_plans_none_of_it(tmp_path: Path) -> None:
    """An entry restore refuses (`../evil`) is not shown as `install ../evil 1.0`; status
    says that restore would refuse the manifest, and why."""
    lib = tmp_path / "lib"
    lib.mkdir()
    env = r_environment(lib)
    evil = Package(name="../evil", version="1.0")
    body = Body(environments=(Delta(env=env, added=(evil, Package(name="ok", version="1.0"))),))
    restore_kit.put_manifest(tmp_path / "store", "k", body)
    out = restore_kit.pkgckpt(
        "status",
        "--r-lib",
        str(lib),
        "--store",
        str(tmp_path / "store"),
        "--key",
        "k",
        env=restore_kit.hermetic(tmp_path),
    )
    assert out.returncode == 0, out.stderr
    assert "would refuse this manifest" in out.stdout
    assert "'../evil' is not a valid R package name" in out.stdout
    assert "install ../evil" not in out.stdout
    assert "install ok" in out.stdout


def test_status_shows_the_baseline_the_daemon_uses(tmp_path: Path) -> None:
    """No baseline here, a running daemon with one (`--baseline FILE`): status shows the
    daemon's, not "none found"."""
    env = restore_kit.hermetic(tmp_path)
    image = tmp_path / "image-baseline.json"
    made = restore_kit.pkgckpt("baseline", "--key", "k", "-o", str(image), env=env)
    assert made.returncode == 0, made.stderr
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify"))
    notify.settimeout(60)
    store = tmp_path / "store"
    init_store(store)
    baseline = ("--baseline", str(image))
    daemon = subprocess.Popen(
        [sys.executable, "-m", "pkgckpt", "daemon", "--store", str(store), "--key", "k", *baseline],
        env={**env, "NOTIFY_SOCKET": str(tmp_path / "notify")},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert notify.recv(4096).startswith(b"READY=1")
        out = restore_kit.pkgckpt("status", "--store", str(store), "--key", "k", env=env)
    finally:
        notify.close()
        daemon.send_signal(signal.SIGTERM)
        daemon.communicate(timeout=60)
    assert out.returncode == 0, out.stderr
    assert f"baseline:   {image} (the daemon's)" in out.stdout, out.stdout
