"""pkgckpt.watcher on real inotify, both backends: roots, markers, overflow, limits."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from user_kit import as_nobody
from watch_kit import (
    backend,
    lowered_queue,
    markers_in_progress_and_done,
    pip_like_burst,
    shm,
    unshare_available,
    watch_count,
)

from pkgckpt.debounce import Debouncer
from pkgckpt.watcher import Batch, Root, Watcher

__all__ = ["backend", "shm"]  # fixtures

QUIET_MS = 50


@pytest.fixture
def site(shm: Path) -> Path:
    d = shm / "venv" / "lib" / "python3.11" / "site-packages"
    d.mkdir(parents=True)
    return d


def watcher(backend: str, *roots: Root, **kw: float) -> Watcher:
    return Watcher(roots, quiet_ms=QUIET_MS, backend=backend, **kw)  # type: ignore[arg-type]


def fd_of(w: Watcher) -> int:
    assert w._ino is not None
    return w._ino.fileno()


def guards(root: Path) -> int:
    """The watches that guard a root's ancestors ("/" aside) against a move or deletion."""
    return len(root.parents) - 1


def wait_for(w: Watcher, root: Path, timeout: float = 2.0) -> Batch:
    """The next batch naming `root` dirty (fails the test when none comes)."""
    end = time.monotonic() + timeout
    while (left := end - time.monotonic()) > 0:
        batch = w.wait(left)
        if root in batch.dirty:
            return batch
    raise AssertionError(f"{root} was not reported dirty within {timeout} s")


def test_install_burst_gives_one_ready_batch_naming_the_dist_info(backend: str, site: Path) -> None:
    """A 20,000-file pip-like burst: the root is ready once, naming the dist-info, after RECORD."""
    root = Root(site, "python")
    dist = site / "bigpkg-1.0.dist-info"
    debounce = Debouncer(quiet=1.0, max_delay=60.0)
    ready: list[tuple[frozenset[str], bool]] = []
    named: set[str] = set()
    done = threading.Event()
    with Watcher([root], quiet_ms=200, backend=backend) as w:

        def install() -> None:
            try:
                pip_like_burst(site)
            finally:
                done.set()

        writer = threading.Thread(target=install)
        writer.start()
        try:
            while True:
                now = time.monotonic()
                deadline = debounce.next_deadline(now)
                if done.is_set() and deadline is None:
                    break
                batch = w.wait(0.5 if deadline is None else deadline)
                now = time.monotonic()
                for r in batch.dirty:
                    debounce.touch(r, now)
                named |= batch.markers.get(site, frozenset())
                for _ in debounce.ready(now, w.busy):
                    in_progress = dist.is_dir() and not (dist / "RECORD").exists()
                    ready.append((frozenset(named), in_progress))
                    named = set()
        finally:
            writer.join()
    naming = [names for names, _ in ready if dist.name in names]
    assert naming == [frozenset({dist.name})]
    assert not any(in_progress for _, in_progress in ready)
    assert ready[-1][0] == frozenset({dist.name})


def test_root_created_after_start_is_armed(backend: str, shm: Path) -> None:
    """A missing root is watched via its nearest ancestor, reported and armed when created."""
    site = shm / "home" / ".local" / "lib" / "python3.11" / "site-packages"
    (shm / "home").mkdir()
    with watcher(backend, Root(site, "python")) as w:
        assert w.wait(0.1).dirty == frozenset()
        (shm / "home" / "notebook.ipynb").write_text("{}")  # not on the way: no report
        assert w.wait(0.2).dirty == frozenset()
        site.mkdir(parents=True)
        wait_for(w, site)
        (site / "demo-1.0.dist-info").mkdir()
        assert wait_for(w, site).markers == {site: frozenset({"demo-1.0.dist-info"})}


def test_root_deleted_and_recreated_is_rearmed(backend: str, site: Path) -> None:
    """A venv rebuilt in place: the deletion is reported, and so are changes in the new one."""
    venv = site.parents[2]
    with watcher(backend, Root(site, "python")) as w:
        shutil.rmtree(venv)
        wait_for(w, site)
        site.mkdir(parents=True)
        assert site not in wait_for(w, site).changed  # a new directory: read all of it
        (site / "six.py").write_text("")
        assert wait_for(w, site).changed == {site: frozenset({"six.py"})}
        assert watch_count(fd_of(w)) == 1 + guards(site)


def test_root_moved_away_and_recreated_is_rearmed(backend: str, site: Path) -> None:
    """A root renamed away no longer counts; the directory that takes its place does."""
    with watcher(backend, Root(site, "python")) as w:
        site.rename(site.with_name("old"))
        wait_for(w, site)
        (site.with_name("old") / "ignored.py").write_text("")
        site.mkdir()
        wait_for(w, site)
        (site / "six.py").write_text("")
        wait_for(w, site)


@pytest.mark.parametrize("how", ["moved", "deleted"])
def test_a_root_follows_its_path_when_an_ancestor_is_moved_or_deleted(
    backend: str, site: Path, how: str
) -> None:
    """`mv venv venv-old` (or `rm -rf venv`) and a new venv at the path: the root is
    reported replaced, the new one watched; what happens in the moved directory is not
    reported for it."""
    venv = site.parents[2]
    old = venv.with_name("venv-old")
    with watcher(backend, Root(site, "python")) as w:
        if how == "moved":
            venv.rename(old)
        else:
            shutil.rmtree(venv)
        assert wait_for(w, site).replaced == {site}
        site.mkdir(parents=True)
        assert site not in wait_for(w, site).changed  # a new directory: read all of it
        (site / "six.py").write_text("")
        batch = wait_for(w, site)
        assert batch.changed == {site: frozenset({"six.py"})}
        assert batch.replaced == frozenset()
        if how == "moved":
            (old / site.relative_to(venv) / "stale.py").write_text("")
            assert w.wait(0.3).dirty == frozenset()
        assert watch_count(fd_of(w)) == 1 + guards(site)


def test_marker_created_and_removed_are_reported(backend: str, site: Path) -> None:
    """Both the arrival and the removal of a dist-info name it in the batch's markers."""
    marker = site / "demo-1.0.dist-info"
    with watcher(backend, Root(site, "python")) as w:
        marker.mkdir()
        assert wait_for(w, site).markers == {site: frozenset({marker.name})}
        marker.rmdir()
        assert wait_for(w, site).markers == {site: frozenset({marker.name})}
        assert watch_count(fd_of(w)) == 1 + guards(site)


def test_changed_names_each_entry_an_install_touched(backend: str, site: Path) -> None:
    """Batches name every entry added, replaced or removed in a root (events that cannot
    name one, such as an overflow or a root made anew, leave the root out: see those tests)."""
    (site / "old-1.0.dist-info").mkdir()
    with watcher(backend, Root(site, "python")) as w:
        shutil.rmtree(site / "old-1.0.dist-info")
        dist = site / "new-2.0.dist-info"
        dist.mkdir()
        (site / "new").mkdir()
        (site / "new" / "__init__.py").write_text("")
        (dist / "METADATA").write_text("Name: new\nVersion: 2.0\n")
        (dist / "RECORD").write_text("")
        (site / "new.pth").write_text("")
        named: set[str] = set()
        end = time.monotonic() + 5
        while not {"old-1.0.dist-info", dist.name, "new", "new.pth"} <= named:
            assert time.monotonic() < end, named
            batch = w.wait(0.5)
            if site in batch.dirty:
                assert site in batch.changed
                named |= batch.changed[site]
        assert named == {"old-1.0.dist-info", dist.name, "new", "new.pth"}


def test_record_arrival_ends_busy(backend: str, site: Path) -> None:
    """A dist-info without RECORD is busy; RECORD's arrival is reported and ends busy."""
    marker = site / "demo-1.0.dist-info"
    with watcher(backend, Root(site, "python")) as w:
        assert not w.busy(site)
        marker.mkdir()
        wait_for(w, site)
        assert w.busy(site)
        (marker / "RECORD").write_text("")
        assert wait_for(w, site).markers == {site: frozenset({marker.name})}
        assert not w.busy(site)


def test_a_reinstall_begun_in_the_batch_that_saw_a_record_is_still_busy(
    backend: str, site: Path
) -> None:
    """A RECORD seen in a batch ends busy only if its dist-info did not go away after it:
    installed, removed and begun again within one batch, the new install is in progress."""
    marker = site / "demo-1.0.dist-info"

    def installer() -> None:
        # Each step once the watcher, waiting meanwhile, has followed the last: the
        # marker watched, then its RECORD seen; all within one quiet window.
        marker.mkdir()
        time.sleep(0.3)
        (marker / "RECORD").write_text("")
        time.sleep(0.3)
        shutil.rmtree(marker)
        marker.mkdir()

    with Watcher([Root(site, "python")], quiet_ms=1500, max_ms=5000, backend=backend) as w:
        t = threading.Thread(target=installer)
        t.start()
        try:
            batch = wait_for(w, site, timeout=10)
        finally:
            t.join()
        assert batch.markers == {site: frozenset({marker.name})}
        assert w.busy(site)
        (marker / "RECORD").write_text("")
        wait_for(w, site, timeout=10)
        assert not w.busy(site)


def test_install_in_progress_at_start_is_busy_and_its_record_seen(backend: str, site: Path) -> None:
    """An install already in progress at start is busy, and its RECORD's arrival is seen."""
    marker, _ = markers_in_progress_and_done(site)
    with watcher(backend, Root(site, "python")) as w:
        assert w.busy(site)
        # The root, the unfinished marker and the guards only.
        assert watch_count(fd_of(w)) == 2 + guards(site)
        (marker / "RECORD").write_text("")
        assert wait_for(w, site).markers == {site: frozenset({marker.name})}
        assert not w.busy(site)


def test_only_a_recent_searchable_dist_info_without_record_is_busy(
    backend: str, site: Path
) -> None:
    """As for the scanner, a dist-info without RECORD is an install in progress only while
    recent: an hour-old leftover (a killed pip, a Debian package) or a symlink does not
    keep the library busy, at start or once an event names it, nor holds a marker watch;
    a fresh one still does."""
    then = time.time_ns() - 3600 * 10**9
    for name in ("leftover-1.0.dist-info", "moved-1.0.dist-info"):
        old = site.parent / name
        old.mkdir()
        (old / "METADATA").write_text("Name: old\nVersion: 1.0\n")
        os.utime(old, ns=(then, then))
    (site.parent / "leftover-1.0.dist-info").rename(site / "leftover-1.0.dist-info")
    (site / "link-1.0.dist-info").symlink_to(site.parent)
    with watcher(backend, Root(site, "python")) as w:
        assert not w.busy(site)
        assert watch_count(fd_of(w)) == 1 + guards(site)
        (site.parent / "moved-1.0.dist-info").rename(site / "moved-1.0.dist-info")
        assert wait_for(w, site).markers == {site: frozenset({"moved-1.0.dist-info"})}
        assert not w.busy(site)
        assert watch_count(fd_of(w)) == 1 + guards(site), "its marker watch dropped"
        fresh = site / "fresh-1.0.dist-info"
        fresh.mkdir()
        wait_for(w, site)
        assert w.busy(site)
        (fresh / "RECORD").write_text("")
        wait_for(w, site)
        assert not w.busy(site)


def test_a_dist_info_that_cannot_be_looked_into_is_not_busy(backend: str, shm: Path) -> None:
    """A mode-000 dist-info (another user's, in a shared library) is no install in progress:
    neither arming nor busy() raise on its EACCES, and the library is not busy."""
    shm.chmod(0o755)  # for the child, once it is nobody
    site = shm / "site"
    site.mkdir(mode=0o755)
    (site / "locked-1.0.dist-info").mkdir(mode=0)

    def not_busy() -> bool:
        with watcher(backend, Root(site, "python")) as w:
            return not w.busy(site)

    assert as_nobody(not_busy)


def test_r_lock_directory_makes_the_library_busy(backend: str, shm: Path) -> None:
    """R's 00LOCK-pkg directory means an install is running in that library."""
    lib = shm / "R" / "library"
    lib.mkdir(parents=True)
    with watcher(backend, Root(lib, "r")) as w:
        (lib / "00LOCK-jsonlite").mkdir()
        batch = wait_for(w, lib)
        assert batch.markers == {}
        assert w.busy(lib)
        (lib / "jsonlite").mkdir()
        (lib / "00LOCK-jsonlite").rmdir()
        wait_for(w, lib)
        assert not w.busy(lib)


def test_directory_that_is_a_root_and_an_ancestor_keeps_both_roles(
    backend: str, site: Path
) -> None:
    """A Python root that is also a missing root's ancestor serves both roles."""
    nested = site / "nested" / "lib"
    marker = site / "demo-1.0.dist-info"
    with watcher(backend, Root(site, "python"), Root(nested, "r")) as w:
        marker.mkdir()
        assert wait_for(w, site).markers == {site: frozenset({marker.name})}
        assert w.busy(site)
        (marker / "RECORD").write_text("")  # seen only while the marker is followed
        assert wait_for(w, site).markers == {site: frozenset({marker.name})}
        assert not w.busy(site)
        nested.mkdir(parents=True)
        wait_for(w, nested)
        (nested / "jsonlite").mkdir()
        wait_for(w, nested)


def test_wake_fd_returns_a_woken_batch(backend: str, site: Path) -> None:
    """The daemon's signal pipe ends a wait with no timeout at once."""
    r, wfd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        with Watcher([Root(site, "python")], wake_fd=r, backend=backend) as w:
            threading.Timer(0.1, os.write, (wfd, b"\x0f")).start()
            batch = w.wait(None)
        assert batch == Batch(frozenset(), {}, {}, overflow=False, woken=True)
    finally:
        os.close(r)
        os.close(wfd)


def test_close_is_idempotent(backend: str, site: Path) -> None:
    """Closing the watcher twice is harmless and releases the inotify fd."""
    w = watcher(backend, Root(site, "python"))
    fd = fd_of(w)
    w.close()
    w.close()
    assert not Path(f"/proc/self/fd/{fd}").exists()


def test_overflow_marks_every_root_dirty(backend: str, shm: Path) -> None:
    """IN_Q_OVERFLOW (queue lowered to 16, as root) reports every root dirty, still watched."""
    a, b = shm / "a", shm / "b"
    a.mkdir()
    b.mkdir()
    with lowered_queue(16):
        w = watcher(backend, Root(a, "python"), Root(b, "r"))
    with w:
        for i in range(100):
            (a / f"f{i}.py").write_text("")
        batch = w.wait(2)
        assert batch.overflow
        assert batch.dirty == {a, b}
        assert batch.changed == {}  # events were lost: no root can say what changed
        (b / "jsonlite").mkdir()
        wait_for(w, b)


# The watch-limit tests run in a child with its own user namespace, whose inotify limits
# (/proc/sys/user/max_inotify_*) bind only that child: lowering the node-wide
# fs.inotify.max_user_watches would break every other inotify user on the machine.
LIMITED_CHILD = r"""
import json, logging, os, sys, time
from pathlib import Path
from pkgckpt.watcher import Root, Watcher

knob, limit, backend = sys.argv[1], int(sys.argv[2]), sys.argv[3]
a, b = Path(sys.argv[4]), Path(sys.argv[5])
logs = []
handler = logging.Handler()
handler.emit = lambda record: logs.append(record.getMessage())
logging.getLogger("pkgckpt").addHandler(handler)
logging.getLogger("pkgckpt").setLevel(logging.INFO)
Path(f"/proc/sys/user/{knob}").write_text(str(limit))
out = {"rescans": []}
with Watcher([Root(a, "python"), Root(b, "r")], quiet_ms=20, rescan_interval=0.3,
             backend=backend) as w:
    out["backend"] = w.backend
    start = time.monotonic()
    while time.monotonic() - start < 1.0:
        batch = w.wait(1.0 - (time.monotonic() - start))
        if batch.dirty:
            out["rescans"].append(sorted(str(p) for p in batch.dirty))
    # Room again: the next due rescan watches the root again.
    Path(f"/proc/sys/user/{knob}").write_text("1000")
    w.wait(1.0)
    (b / "jsonlite").mkdir()
    out["after"] = sorted(str(p) for p in w.wait(1.0).dirty)
out["logs"] = logs
print(json.dumps(out))
"""


def run_limited(knob: str, limit: int, backend: str, a: Path, b: Path) -> dict[str, object]:
    why = unshare_available()
    if why:
        pytest.skip(why)
    a.mkdir(exist_ok=True)
    b.mkdir(exist_ok=True)
    args = [knob, str(limit), backend, str(a), str(b)]
    proc = subprocess.run(
        ["unshare", "-U", "-r", sys.executable, "-c", LIMITED_CHILD, *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    result: dict[str, object] = json.loads(proc.stdout)
    return result


def test_watch_limit_exhausted_degrades_to_periodic_rescans(backend: str, shm: Path) -> None:
    """ENOSPC from add_watch: one warning, periodic rescans, watched again once there is room."""
    a, b = shm / "a", shm / "b"
    out = run_limited("max_inotify_watches", 1, backend, a, b)
    assert out["backend"] == backend
    warnings = [m for m in out["logs"] if "watch limit" in m]  # type: ignore[attr-defined]
    assert len(warnings) == 1 and str(b) in warnings[0]
    assert out["rescans"] and all(r == [str(b)] for r in out["rescans"])  # type: ignore[attr-defined]
    assert f"{b} is watched again" in out["logs"]  # type: ignore[operator]
    assert out["after"] == [str(b)]


def test_no_inotify_instance_degrades_every_root(backend: str, shm: Path) -> None:
    """EMFILE from inotify_init: one warning, every root rescanned, watched once possible."""
    a, b = shm / "a", shm / "b"
    out = run_limited("max_inotify_instances", 0, backend, a, b)
    assert out["backend"] is None
    assert len([m for m in out["logs"] if "inotify instance" in m]) == 1  # type: ignore[attr-defined]
    assert out["rescans"] and all(r == sorted([str(a), str(b)]) for r in out["rescans"])  # type: ignore[attr-defined]
    # Instances free again: the next rescan creates one and watches every root.
    assert out["after"] == [str(b)]
