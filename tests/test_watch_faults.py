"""A failed read() of the inotify fd, injected with strace into a real process: the events
already taken are kept, every root is rescanned, and the watches are armed anew."""

from __future__ import annotations

import errno
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from watch_kit import backend, shm

__all__ = ["backend", "shm"]  # fixtures

if shutil.which("strace") is None:
    pytest.skip("strace is not installed: no way to inject a read() error", allow_module_level=True)


def failing(call: str, nth: int) -> list[str]:
    """strace: the `nth` `call` (read, poll) on an inotify fd fails with EIO; other calls
    are left be."""
    return [
        "strace", "-f", "--seccomp-bpf", "-qq", "-o", "/dev/null", "-e", f"trace={call}",
        "-e", f"inject={call}:error=EIO:when={nth}", "-P", "anon_inode:inotify",
    ]  # fmt: skip


@contextmanager
def child(script: str, *args: str, nth: int, call: str = "read") -> Iterator[subprocess.Popen[str]]:
    """`script` in a Python process of its own whose `nth` `call` on inotify fails."""
    proc = subprocess.Popen(
        [*failing(call, nth), sys.executable, "-c", script, *args],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def line(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    got = proc.stdout.readline()
    assert got, f"the child exited ({proc.wait()})"
    return got.strip()


def tell(proc: subprocess.Popen[str]) -> None:
    assert proc.stdin is not None
    proc.stdin.write("\n")
    proc.stdin.flush()


ENGINE = """
import json, sys, threading
from pathlib import Path
from pkgckpt.inotify import IN_CREATE, Inotify
with Inotify(sys.argv[2]) as ino:
    ino.add_watch(sys.argv[1], IN_CREATE)
    print("ready", flush=True)
    sys.stdin.readline()
    # An event in the quiet window: a back end reads once per wake-up, so this is what
    # makes it wake and read a second time.
    later = threading.Timer(0.3, Path(sys.argv[1], "later.py").write_text, ("",))
    later.start()
    events = ino.read_batch(10, quiet_ms=3000, max_ms=5000)
    later.join()
    print(json.dumps({"names": [r.name for r in events.records], "error": events.error}))
"""


@pytest.mark.parametrize(("call", "nth"), [("read", 2), ("poll", 2)])
def test_a_failed_read_or_poll_keeps_the_events_already_taken(
    backend: str, shm: Path, call: str, nth: int
) -> None:
    """The event is taken, then the next read() (or the poll() of the quiet window) fails
    with EIO: the batch holds the event and reports the errno instead of losing it."""
    with child(ENGINE, str(shm), backend, nth=nth, call=call) as proc:
        assert line(proc) == "ready"
        (shm / "taken.py").write_text("")
        tell(proc)
        assert json.loads(line(proc)) == {"names": ["taken.py"], "error": errno.EIO}


WATCHER = """
import json, sys
from pathlib import Path
from pkgckpt.watcher import Root, Watcher
roots = [Root(Path(p), "python") for p in sys.argv[2:]]
with Watcher(roots, quiet_ms=50, backend=sys.argv[1]) as w:
    for _ in range(2):
        print("ready", flush=True)
        sys.stdin.readline()
        batch = w.wait(10)
        print(json.dumps({
            "dirty": sorted(map(str, batch.dirty)),
            "changed": {str(k): sorted(v) for k, v in batch.changed.items()},
        }), flush=True)
"""


def test_a_failed_read_marks_every_root_dirty_and_rearms(backend: str, shm: Path) -> None:
    """After the error every root is rescanned whole (no names: events may be lost), and
    the new inotify instance reports the next change by name."""
    one, two = shm / "one", shm / "two"
    one.mkdir()
    two.mkdir()
    with child(WATCHER, backend, str(one), str(two), nth=1) as proc:
        assert line(proc) == "ready"
        (one / "a.py").write_text("")
        tell(proc)
        assert json.loads(line(proc)) == {"dirty": [str(one), str(two)], "changed": {}}
        assert line(proc) == "ready"
        (two / "b.py").write_text("")
        tell(proc)
        assert json.loads(line(proc)) == {"dirty": [str(two)], "changed": {str(two): ["b.py"]}}
