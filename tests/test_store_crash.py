"""kill -9 of a writer at random points: every read sees a whole generation.

A child process (tests/faults/store_child.py loop) commits a new body as fast as it can;
the parent reads the store while it writes, kills it with SIGKILL after a random delay,
reads again, and starts the next writer. Bodies are numbered, so the parent checks that
what it reads is exactly one of the bodies written and that generations never go back.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import pkgckpt
from pkgckpt.errors import StoreConflict
from pkgckpt.store import SYNCED, Store, init_store

FAULTS = Path(__file__).parent / "faults"
REPO = Path(pkgckpt.__file__).resolve().parent.parent

sys.path.insert(0, str(FAULTS))
from store_child import label, make_body  # noqa: E402


@pytest.fixture
def shm() -> Iterator[Path]:
    """A directory in /dev/shm (memory: many commits per second), removed afterwards."""
    if not Path("/dev/shm").is_dir():
        pytest.skip("/dev/shm is missing")
    path = Path(tempfile.mkdtemp(prefix="pkgckpt-crash-", dir="/dev/shm"))
    try:
        yield path
    finally:
        shutil.rmtree(path)


def check_whole(store: Store, seen: int) -> int:
    """Read `store`: a whole, known body at a generation not older than `seen`."""
    reader = Store(store.root, store.key)
    found = reader.read()
    assert found is not None
    assert reader.last_read_warning is None, reader.last_read_warning
    counter = int(label(found))
    assert found.body == make_body(str(counter), counter % 40)
    assert found.generation >= seen, (found.generation, seen)
    return found.generation


def kill_writers(store: Store, generations: int, kills: int, max_delay: float) -> None:
    """Kill writers until at least `generations` commits and `kills` kills have happened."""
    rng = random.Random()
    seed = rng.randrange(2**32)
    rng.seed(seed)
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    )
    store.commit(make_body("0", 0))
    seen, done = 1, 0
    while seen < generations or done < kills:
        start = (done + 1) * 1_000_000
        proc = subprocess.Popen(
            [sys.executable, str(FAULTS / "store_child.py"), "loop", str(store.root), store.key,
             str(start)],
            env=env,
            stdout=subprocess.PIPE,
        )  # fmt: skip
        try:
            assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
            deadline = time.monotonic() + rng.uniform(0, max_delay)
            while time.monotonic() < deadline:
                seen = check_whole(store, seen)  # concurrent with the writer
        finally:
            proc.kill()  # SIGKILL
            proc.wait()
            assert proc.stdout is not None
            proc.stdout.close()
        assert proc.returncode == -signal.SIGKILL, f"writer died by itself (seed {seed})"
        seen = check_whole(store, seen)
        done += 1

    # A new writer on this host cleans the killed writers' temps and prunes the rest.
    try:
        last = store.commit(make_body("final", 3))
    except StoreConflict:
        # The last writer was killed between claiming its number and renaming
        # manifest.json: its generation is learnt first, as `checkpoint.commit` does.
        store.check()
        last = store.commit(make_body("final", 3))
    assert last is not None
    names = sorted(p.name for p in store.path.iterdir() if not p.name.startswith(SYNCED))
    expected = [f"manifest.{g}.json" for g in range(last.generation - 4, last.generation + 1)]
    assert names == sorted([*expected, "manifest.json"]), f"seed {seed}"


def test_kill9_during_commits_leaves_whole_generations_shm(shm: Path) -> None:
    """Over >= 200 commits and >= 40 SIGKILLs on tmpfs, reads only ever see whole manifests."""
    init_store(shm)
    kill_writers(Store(shm, "alice"), generations=200, kills=40, max_delay=0.02)


def test_kill9_during_commits_leaves_whole_generations_disk(tmp_path: Path) -> None:
    """The same on the real disk (ext4 here, with real fsyncs), fewer rounds."""
    init_store(tmp_path)
    kill_writers(Store(tmp_path, "alice"), generations=40, kills=12, max_delay=0.03)
