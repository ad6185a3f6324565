"""Restore's start delay (`--jitter`): bounded, applied before the store is read, and
only by a container's first restore."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from restore_kit import hermetic
from wheelhouse import make_venv

from pkgckpt import jitter, restore
from pkgckpt.config import Config
from pkgckpt.errors import UsageError
from pkgckpt.metrics import record_restore
from pkgckpt.store import init_store


def test_the_delay_stays_within_zero_and_the_jitter() -> None:
    """Whatever the random source draws, the delay lies in [0, jitter]; 0 means no delay."""
    assert jitter.start_delay(0) == 0.0
    for drawn in (-1.0, 0.0, 2.5, 5.0, 7.0):
        assert 0.0 <= jitter.start_delay(5.0, lambda a, b, d=drawn: d) <= 5.0
    delays = [jitter.start_delay(5.0) for _ in range(2000)]
    assert all(0.0 <= d <= 5.0 for d in delays)
    assert min(delays) < 0.5 and max(delays) > 4.5, "spread over the whole window"


@pytest.mark.parametrize("value", [-0.1, jitter.MAX_JITTER + 1])
def test_a_jitter_out_of_bounds_is_a_usage_error(value: float) -> None:
    """Negative, or more than MAX_JITTER seconds, is refused before anything waits."""
    with pytest.raises(UsageError, match="jitter must be 0 to 600 seconds"):
        jitter.start_delay(value)


def test_a_jitter_out_of_bounds_from_the_environment_exits_2(tmp_path: Path) -> None:
    """PKGCKPT_JITTER=700 makes `pkgckpt restore` exit 2 with the reason, having waited not."""
    env = {**hermetic(tmp_path), "PKGCKPT_JITTER": "700"}
    out = subprocess.run(
        [sys.executable, "-m", "pkgckpt", "restore", "--store", str(tmp_path / "store"),
         "--key", "alice", "--env", str(tmp_path / "nowhere")],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )  # fmt: skip
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert "jitter must be 0 to 600 seconds" in out.stderr


def test_the_first_restore_waits_before_it_reads_the_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The delay is slept before the store is touched: a store that only appears during the
    wait is read; a second restore of the container (its restore recorded) does not wait."""
    venv = make_venv(tmp_path / "venv", with_pip=False)
    store = tmp_path / "store"
    config = Config(
        store=store, key="alice", env=(venv.prefix,), runtime_dir=tmp_path / "run", jitter=30.0
    )
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        init_store(store)  # the store arrives while restore waits

    monkeypatch.setattr(jitter, "sleep", sleep)
    report = restore.run(config)
    assert len(slept) == 1 and 0.0 <= slept[0] <= 30.0
    assert not report.plan.environments and report.exit_code == 0  # read, not unavailable
    record_restore(config, 0.1, {})
    restore.run(config)
    assert len(slept) == 1, "a restore run again in the same container does not wait"


def test_a_dry_run_and_a_zero_jitter_never_wait(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--dry-run` (a person at a terminal) and jitter 0 (the default) start at once."""
    venv = make_venv(tmp_path / "venv", with_pip=False)
    init_store(tmp_path / "store")
    base = {"store": tmp_path / "store", "key": "alice", "env": (venv.prefix,)}
    monkeypatch.setattr(jitter, "sleep", lambda s: pytest.fail(f"slept {s}"))
    restore.run(Config(**base, runtime_dir=tmp_path / "a", jitter=30.0), dry_run=True)
    restore.run(Config(**base, runtime_dir=tmp_path / "b"))


def test_the_bound_is_the_timeout_and_the_longest_wait_wherever_they_are_set(
    tmp_path: Path,
) -> None:
    """`restore --print-bound` (fast path, no click) prints the timeout, the 10 s a restore
    has to report after it and the jitter, rounded up, with the jitter from a config file
    too; 0 when the timeout is 0 (no bound); a jitter restore refuses is refused here
    alike (exit 2)."""
    (tmp_path / "c.toml").write_text("jitter = 600\ntimeout = 20.25\n")
    env = hermetic(tmp_path)

    def bound(*args: str, **variables: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "pkgckpt", "restore", "--print-bound", *args],
            capture_output=True, text=True, env={**env, **variables}, timeout=60,
        )  # fmt: skip

    assert bound().stdout == "910\n"
    assert bound("--config", str(tmp_path / "c.toml")).stdout == "631\n"
    assert bound("--timeout", "5", PKGCKPT_CONFIG=str(tmp_path / "c.toml")).stdout == "615\n"
    assert bound("--jitter", "0", "--config", str(tmp_path / "c.toml")).stdout == "31\n"
    assert bound("--timeout", "0", "--jitter", "600").stdout == "0\n"
    (tmp_path / "c.toml").write_text("jitter = 601\n")
    refused = bound("--config", str(tmp_path / "c.toml"))
    assert refused.returncode == 2 and refused.stdout == ""
    assert "jitter must be 0 to 600 seconds" in refused.stderr
    assert not (tmp_path / "run").exists(), "it touches nothing"


def test_the_bound_is_printed_without_restore_s_modules(tmp_path: Path) -> None:
    """Each container start asks `--print-bound` before its restore: it reads the
    settings and imports neither restore's modules nor click, whose imports are most of
    its cost."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "pkgckpt", "restore", "--print-bound"],
        capture_output=True, text=True, env=hermetic(tmp_path), timeout=60, check=True,
    )  # fmt: skip
    assert done.stdout == "910\n"
    imported = {line.rpartition("|")[2].strip() for line in done.stderr.splitlines()}
    assert "pkgckpt.config" in imported, done.stderr
    assert not imported & {"pkgckpt.restore", "pkgckpt.cli", "click"}, sorted(imported)
