"""Two writers of one key at the same moment (a user's two notebook servers, a pod
replaced while the old one still flushes, a new pod's restore while the old daemon
commits): neither replaces the other's generation, and manifest.json never goes back to
an older one for good."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from test_store_merge import ENV, IMAGE, first_record, installs, pkgs, recorded, session

import pkgckpt
from pkgckpt import manifest, record
from pkgckpt.checkpoint import Observation, commit, confirm
from pkgckpt.errors import StoreConflict
from pkgckpt.store import Store, init_store

FAULTS = Path(__file__).parent / "faults"
REPO = Path(pkgckpt.__file__).resolve().parent.parent
sys.path.insert(0, str(FAULTS))
from store_child import label, make_body  # noqa: E402


@pytest.fixture
def store(tmp_path: Path) -> Store:
    init_store(tmp_path / "store")
    return Store(tmp_path / "store", "alice")


def before_write(
    monkeypatch: pytest.MonkeyPatch, writer: Store, other: Callable[[], None]
) -> list[int]:
    """Run `other` once, when `writer` has picked its generation number and is about to
    write it (a writer whose fsyncs are slow); the numbers `writer` wrote with."""
    real = Store._write
    numbers: list[int] = []

    def write(self: Store, dfd: int, parts: Any, generation: int, *args: Any, **kw: Any) -> None:
        if self is writer:
            if not numbers:
                other()
            numbers.append(generation)
        real(self, dfd, parts, generation, *args, **kw)

    monkeypatch.setattr(Store, "_write", write)
    return numbers


def names(m: manifest.Manifest) -> set[str]:
    delta = m.body.delta(ENV)
    assert delta is not None
    return {f"{p.name}=={p.version}" for p in (*delta.added, *delta.changed)}


def test_a_generation_number_taken_meanwhile_is_never_replaced(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Writer B picks generation 2; writer A commits generation 2 first. B does not replace
    A's files: it folds A's generation in and writes 3, which holds both installs; A's 2
    stays kept as A wrote it."""
    first_record(store, "wa==1")
    a = session(Store(store.root, store.key))
    b = session(Store(store.root, store.key))
    b.tracker.observe(ENV, Observation({**IMAGE, **pkgs("wa==1", "wb==1")}))
    numbers = before_write(monkeypatch, b.store, lambda: installs(a, "wa==1", "wx==1"))
    written = commit(b)
    assert recorded(store) == {"wa==1", "wb==1", "wx==1"}
    assert numbers == [2, 3]
    assert written is not None and written.generation == 3
    theirs = store.read_generation(2)
    assert theirs is not None and names(theirs) == {"wa==1", "wx==1"}
    assert store.generations() == [3, 2, 1]


def test_an_older_generation_landing_over_a_newer_manifest_json_is_written_over(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A restore's bookkeeping amends generation 1, read a moment ago; the daemon commits 2
    before the amend's rename lands, which puts 1 back over it. The amending writer sees
    2 after its rename and commits again above it: manifest.json holds the daemon's
    install and the restore's bookkeeping."""
    first_record(store, "wa==1")
    daemon = session(Store(store.root, store.key))
    restore = session(Store(store.root, store.key))
    restore.stored = restore.tracker.body()  # what it read: its bookkeeping may amend it
    failing = manifest.Failing(name="wa", version="1", reason="not on the index")
    restore.tracker.adopt(
        record.with_failures(restore.tracker.body(), [record.Outcome(env=ENV, failed=(failing,))])
    )
    numbers = before_write(monkeypatch, restore.store, lambda: installs(daemon, "wa==1", "wx==1"))
    written = commit(restore)
    current = Store(store.root, store.key).read()
    assert current is not None and names(current) == {"wa==1", "wx==1"}
    assert numbers == [1, 3], "an amend of 1, then a new generation above the daemon's"
    assert written is not None and written.generation == current.generation == 3
    delta = current.body.delta(ENV)
    assert delta is not None and delta.failing == (failing,)


def test_an_older_generation_left_over_manifest_json_is_not_what_the_next_commit_takes(
    store: Store,
) -> None:
    """manifest.json holds generation 1 again after 2 was written (its writer died between
    its rename and its look for a newer generation). The next writer's commit folds 2 in
    before writing 3: the install only 2 recorded stays."""
    first_record(store, "wa==1")
    installs(session(Store(store.root, store.key)), "wa==1", "wx==1")
    (store.path / "manifest.json").write_bytes((store.path / "manifest.1.json").read_bytes())
    late = session(Store(store.root, store.key))
    installs(late, "wa==1", "wb==1")
    assert recorded(store) == {"wa==1", "wb==1", "wx==1"}
    assert Store(store.root, store.key).generations()[0] == 3


def test_a_read_back_after_a_conflict_does_not_keep_the_newest_generation_from_the_fold(
    store: Store,
) -> None:
    """A commit that lost a race, then a read back (the daemon's confirm at shutdown)
    before the next commit: that commit still folds in the generation the other writer
    claimed, which manifest.json does not hold yet."""
    first_record(store, "wa==1")
    b = session(Store(store.root, store.key))
    installs(session(Store(store.root, store.key)), "wa==1", "wx==1")
    (store.path / "manifest.json").write_bytes((store.path / "manifest.1.json").read_bytes())
    b.tracker.observe(ENV, Observation({**IMAGE, **pkgs("wa==1", "wb==1")}))
    with pytest.raises(StoreConflict):
        b.store.commit(b.tracker.body())
    assert not confirm(b)
    assert commit(b) is not None
    assert recorded(store) == {"wa==1", "wb==1", "wx==1"}


def test_a_writer_whose_fsyncs_are_slow_does_not_replace_the_generation_taken_meanwhile(
    store: Store,
) -> None:
    """Process B, its fsyncs delayed 2 s each by strace, picks generation 2 and stages it;
    process A commits generation 2 meanwhile. B's files land after A's and replace none
    of them: B reports the conflict, and manifest.json and manifest.2.json are A's."""
    if shutil.which("strace") is None:
        pytest.skip("strace is not installed: the slow writer cannot be made")
    store.commit(make_body("first"))
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    )
    child = [sys.executable, str(FAULTS / "store_child.py"), "steps", str(store.root), store.key]
    slow = subprocess.Popen(
        ["strace", "-f", "-o", os.devnull, "-e", "trace=fsync",
         "-e", "inject=fsync:delay_enter=2000000", *child, "commit:B"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not any(p.name.startswith(".manifest.json.tmp.") for p in store.path.iterdir()):
            assert slow.poll() is None, slow.communicate()
            assert time.monotonic() < deadline, "the slow writer never staged its generation"
            time.sleep(0.01)
        fast = subprocess.run(
            [*child, "commit:A"], env=env, capture_output=True, text=True, timeout=60
        )
        assert fast.returncode == 0, fast.stderr
        out, err = slow.communicate(timeout=60)
    finally:
        if slow.poll() is None:
            slow.kill()
            slow.wait()
    if slow.returncode != 0 and "ptrace" in err.lower():
        pytest.skip(f"strace cannot trace here (seccomp or ptrace_scope): {err.strip()}")
    assert json.loads(fast.stdout) == {"step": "commit:A", "generation": 2}
    assert slow.returncode == 0, err
    for name in ("manifest.json", "manifest.2.json"):
        found = manifest.decode((store.path / name).read_bytes(), name)
        assert (found.generation, label(found)) == (2, "A"), name
    assert json.loads(out).get("error") == "StoreConflict", out
