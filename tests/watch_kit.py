"""Shared by the watch engine tests: both backends, kernel limits, watch counts."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

BACKENDS = ["native", "python"]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """Every behavioural test runs on the C engine and on the inotify_simple fallback."""
    return str(request.param)


@pytest.fixture
def shm(tmp_path: Path) -> Iterator[Path]:
    """A directory on tmpfs: bursts of files should measure the watcher, not the disk."""
    base = Path("/dev/shm")
    if not os.access(base, os.W_OK):
        yield tmp_path
        return
    d = Path(tempfile.mkdtemp(prefix="pkgckpt-test-", dir=base))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def watch_count(fd: int) -> int:
    """How many watches the kernel holds for this inotify fd (from /proc fdinfo)."""
    text = Path(f"/proc/self/fdinfo/{fd}").read_text()
    return sum(1 for line in text.splitlines() if line.startswith("inotify wd:"))


@contextmanager
def lowered_queue(events: int) -> Iterator[None]:
    """Instances created inside get a kernel queue of `events` events; restored on exit.

    The limit is global and read when an instance is created, so the window is kept to
    the creation alone. Skips (with the reason) where it cannot be changed.
    """
    knob = Path("/proc/sys/fs/inotify/max_queued_events")
    try:
        old = knob.read_text()
        knob.write_text(str(events))
    except OSError as e:
        pytest.skip(f"cannot lower {knob} (needs root on the host): {e}")
    try:
        yield
    finally:
        knob.write_text(old)


def unshare_available() -> str | None:
    """None when `unshare -U -r` can give a child its own inotify limits, else why not."""
    if shutil.which("unshare") is None:
        return "unshare(1) is not installed"
    probe = os.system("unshare -U -r true >/dev/null 2>&1")
    if probe != 0:
        return "user namespaces are not available here (unshare -U -r failed)"
    if not Path("/proc/sys/user/max_inotify_watches").exists():
        return "this kernel has no per-namespace inotify limits"
    return None


def markers_in_progress_and_done(site: Path) -> tuple[Path, Path]:
    """Two dist-infos already in `site`: one whose install is still running (no RECORD
    yet) and one finished (RECORD there). Returns (in progress, finished)."""
    unfinished = site / "demo-1.0.dist-info"
    unfinished.mkdir()
    finished = site / "done-1.0.dist-info"
    finished.mkdir()
    (finished / "RECORD").write_text("")
    return unfinished, finished


def pip_like_burst(
    site: Path, name: str = "bigpkg", files: int = 20_000, dirs: int = 1_500
) -> Path:
    """Write what `pip install` of a large wheel writes, in its order: the package tree
    (`files` files in `dirs` directories), then the dist-info, RECORD last through a
    temporary file renamed into place. Returns the dist-info directory."""
    pkg = site / name
    pkg.mkdir()
    subs = 30
    tree = [pkg / f"sub{i}" for i in range(subs)]
    tree += [tree[i % subs] / f"mod{i}" for i in range(dirs - subs)]
    for d in tree:
        d.mkdir()
    for i in range(files):
        (tree[i % len(tree)] / f"f{i}.py").write_bytes(b"x = 1\n")
    dist = site / f"{name}-1.0.dist-info"
    dist.mkdir()
    for meta in ("METADATA", "WHEEL", "INSTALLER", "REQUESTED"):
        (dist / meta).write_text(f"{meta}\n")
    tmp = dist / "RECORD.tmp"
    tmp.write_text("...\n")
    tmp.rename(dist / "RECORD")
    return dist
