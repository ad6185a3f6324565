"""The interpreter's answer kept in the runtime directory: used again, never stale, never
trusted when someone else could have written it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from pkgckpt.config import Config
from pkgckpt.inventory import targets
from pkgckpt.scan.env import python_env
from tests.wheelhouse import make_venv

# Audit events see every process Python starts, whatever API starts it.
_STARTED: list[str] = []


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if event == "subprocess.Popen":
        _STARTED.append(str(args[0]))


sys.addaudithook(_audit)


@pytest.fixture
def started() -> Iterator[list[str]]:
    """The executables started while the test runs."""
    _STARTED.clear()
    yield _STARTED
    _STARTED.clear()


def _other_minor() -> Path | None:
    """An interpreter of another minor version than this one (pyenv's, or the system's)."""
    here = f"{sys.version_info[0]}.{sys.version_info[1]}"
    for minor in ("3.12", "3.10", "3.13", "3.9"):
        if minor == here:
            continue
        found = shutil.which(f"python{minor}")
        candidates = [found] if found else []
        candidates += sorted(map(str, Path.home().glob(f".pyenv/versions/{minor}.*/bin/python3")))
        for candidate in candidates:
            ok = subprocess.run([candidate, "-m", "venv", "--help"], capture_output=True)
            if ok.returncode == 0:
                return Path(candidate)
    return None


def _venv(prefix: Path, python: Path | str = sys.executable, *flags: str) -> Path:
    if prefix.exists():
        shutil.rmtree(prefix)
    subprocess.run([str(python), "-m", "venv", "--without-pip", *flags, str(prefix)], check=True)
    return prefix


def _run_dir(tmp_path: Path) -> Path:
    """The runtime directory as restore or the daemon leave it (0700, ours)."""
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    return run


def _kept(run: Path) -> Path:
    (path,) = run.glob("python-env-*.json")
    return path


def test_second_lookup_uses_the_kept_answer_and_starts_no_process(
    tmp_path: Path, started: list[str]
) -> None:
    """The first lookup asks the interpreter and keeps its answer; the second starts nothing."""
    venv = make_venv(tmp_path / "venv", with_pip=False)
    run = _run_dir(tmp_path)
    started.clear()
    first = python_env(venv.prefix, cache_dir=run)
    assert started == [str(venv.prefix / "bin" / "python3")]
    assert first == python_env(venv.prefix), "the kept answer is the interpreter's own"
    assert (run.stat().st_mode & 0o777, _kept(run).stat().st_mode & 0o777) == (0o700, 0o600)
    started.clear()
    assert python_env(venv.prefix, cache_dir=run) == first
    assert started == []


def test_targets_keep_the_answer_in_the_runtime_directory(
    tmp_path: Path, started: list[str]
) -> None:
    """inventory.targets asks each interpreter once across runs (the no-op restore's path)."""
    venv = make_venv(tmp_path / "venv", with_pip=False)
    # R's libraries are not this test's (R's own probe is kept alike: test_r_discover.py).
    config = Config(env=(venv.prefix,), runtime_dir=_run_dir(tmp_path), discover=())
    started.clear()
    first = targets(config)
    assert len(started) == 1
    started.clear()
    again = targets(config)
    assert started == []
    assert [(t.env, t.roots) for t in again] == [(t.env, t.roots) for t in first]


def test_a_venv_rebuilt_with_another_python_is_asked_again(
    tmp_path: Path, started: list[str]
) -> None:
    """Same path, another interpreter version: the new layout, not the kept one."""
    other = _other_minor()
    if other is None:
        pytest.skip("no interpreter of another minor version with venv here")
    run = _run_dir(tmp_path)
    prefix = _venv(tmp_path / "venv")
    before = python_env(prefix, cache_dir=run)
    _venv(prefix, other)
    started.clear()
    after = python_env(prefix, cache_dir=run)
    assert len(started) == 1
    assert after == python_env(prefix)
    assert after.version != before.version and after.site_dirs != before.site_dirs
    assert after.site_dirs[0].parent.name != before.site_dirs[0].parent.name


def test_a_venv_rebuilt_with_system_site_packages_reports_the_user_site(
    tmp_path: Path, started: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Same interpreter, pyvenv.cfg changed: the kept answer (no user site) is not used."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("PYTHONUSERBASE", raising=False)
    monkeypatch.delenv("PYTHONNOUSERSITE", raising=False)
    run = _run_dir(tmp_path)
    prefix = _venv(tmp_path / "venv")
    assert python_env(prefix, cache_dir=run).user_site is None
    _venv(prefix, sys.executable, "--system-site-packages")
    started.clear()
    assert python_env(prefix, cache_dir=run).user_site is not None
    assert len(started) == 1


def test_a_replaced_interpreter_is_asked_again(tmp_path: Path, started: list[str]) -> None:
    """A copied interpreter replaced by an identical copy (same size and mtime): asked again."""
    run = _run_dir(tmp_path)
    prefix = _venv(tmp_path / "venv", sys.executable, "--copies")
    python = prefix / "bin" / "python3"
    first = python_env(prefix, cache_dir=run)
    replacement = tmp_path / "python3.new"
    shutil.copy2(python, replacement)
    replacement.replace(python)
    started.clear()
    assert python_env(prefix, cache_dir=run) == first
    assert started == [str(python)]


def test_a_changed_user_base_is_asked_again(
    tmp_path: Path, started: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """PYTHONUSERBASE moves the user site: the answer kept under another value is not used."""
    monkeypatch.delenv("PYTHONNOUSERSITE", raising=False)
    run = _run_dir(tmp_path)
    prefix = _venv(tmp_path / "venv", sys.executable, "--system-site-packages")
    monkeypatch.setenv("PYTHONUSERBASE", str(tmp_path / "one"))
    started.clear()
    first = python_env(prefix, cache_dir=run)
    monkeypatch.setenv("PYTHONUSERBASE", str(tmp_path / "two"))
    second = python_env(prefix, cache_dir=run)
    assert first.user_site is not None and first.user_site.is_relative_to(tmp_path / "one")
    assert second.user_site is not None and second.user_site.is_relative_to(tmp_path / "two")
    assert len(started) == 2


def _forged(path: Path) -> None:
    """Turn a kept answer into one that would mislead the scan, were it trusted."""
    data = msgspec.json.decode(path.read_bytes())
    data["site_dirs"] = ["/etc"]
    data["version"] = "0.0.1"
    path.write_bytes(msgspec.json.encode(data))


def test_a_kept_answer_writable_by_others_or_not_ours_is_ignored(
    tmp_path: Path, started: list[str]
) -> None:
    """Group-writable, someone else's or a symlink: ignored (asked again), not trusted."""
    run = _run_dir(tmp_path)
    prefix = _venv(tmp_path / "venv")
    truth = python_env(prefix)
    assert python_env(prefix, cache_dir=run) == truth
    path = _kept(run)
    _forged(path)
    path.chmod(0o620)
    started.clear()
    assert python_env(prefix, cache_dir=run) == truth
    assert len(started) == 1, "asked again"
    _forged(path)  # the ask above rewrote it, private and correct
    if os.geteuid() == 0:
        os.chown(path, 12345, 12345)
        assert python_env(prefix, cache_dir=run) == truth
    _forged(path)
    elsewhere = tmp_path / "elsewhere.json"
    path.replace(elsewhere)
    path.symlink_to(elsewhere)
    assert python_env(prefix, cache_dir=run) == truth
    assert not path.is_symlink(), "replaced by a file of our own"


def test_a_corrupt_kept_answer_is_ignored_and_replaced(tmp_path: Path, started: list[str]) -> None:
    """Garbage, a truncated file or another shape: asked again, no error, then kept anew."""
    run = _run_dir(tmp_path)
    prefix = _venv(tmp_path / "venv")
    truth = python_env(prefix, cache_dir=run)
    path = _kept(run)
    good = path.read_bytes()
    for bad in (
        b"\xff\xfe not json",
        good[: len(good) // 2],
        b'{"key": 3}',
        b'{"key": "\xff"}',
        b"",
    ):
        path.write_bytes(bad)
        path.chmod(0o600)
        started.clear()
        assert python_env(prefix, cache_dir=run) == truth
        assert len(started) == 1
    started.clear()
    assert python_env(prefix, cache_dir=run) == truth
    assert started == []


def test_an_unusable_runtime_directory_only_costs_the_cache(
    tmp_path: Path, started: list[str]
) -> None:
    """A runtime directory that cannot be created: the interpreter answers every time."""
    prefix = _venv(tmp_path / "venv")
    blocker = tmp_path / "file"
    blocker.write_text("not a directory\n")
    run = blocker / "run"
    started.clear()
    assert python_env(prefix, cache_dir=run) == python_env(prefix, cache_dir=run)
    assert len(started) == 2


def test_a_missing_runtime_directory_is_not_created_by_a_lookup(
    tmp_path: Path, started: list[str]
) -> None:
    """Read-only commands (status, restore --dry-run) leave no runtime directory behind."""
    prefix = _venv(tmp_path / "venv")
    run = tmp_path / "run"
    started.clear()
    assert python_env(prefix, cache_dir=run) == python_env(prefix, cache_dir=run)
    assert len(started) == 2
    assert not run.exists()


def test_an_interpreter_that_does_not_answer_is_not_asked_again_at_once(
    tmp_path: Path, started: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An interpreter that hangs (on a stalled mount) held each of the daemon's
    rediscoveries for the whole wait, and every other environment's checkpoints with it:
    it is asked once, then again only once it changed or ASK_AGAIN went by."""
    from pkgckpt.scan import env

    monkeypatch.setattr(env, "ASK_TIMEOUT", 0.5)
    python = tmp_path / "venv" / "bin" / "python3"
    python.parent.mkdir(parents=True)
    python.write_text("#!/bin/sh\nexec sleep 30\n")
    python.chmod(0o755)
    assert env.probe(python) is None
    assert started == [str(python)]
    assert env.probe(python) is None
    assert started == [str(python)], "asked again"
    python.write_text("#!/bin/sh\nexec sleep 31\n")  # another interpreter at that path
    assert env.probe(python) is None
    assert started == [str(python)] * 2
    monkeypatch.setattr(env, "ASK_AGAIN", 0.0)
    python.write_text("#!/bin/sh\nexec sleep 32\n")
    assert env.probe(python) is None
    assert env.probe(python) is None
    assert started == [str(python)] * 4
