"""pkgckpt.inotify on real inotify: both backends, one behavioural suite."""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from watch_kit import backend, lowered_queue, markers_in_progress_and_done, shm, watch_count

from pkgckpt import inotify
from pkgckpt.errors import UsageError
from pkgckpt.inotify import (
    IN_CLOSE_WRITE,
    IN_CREATE,
    IN_DELETE,
    IN_DELETE_SELF,
    IN_IGNORED,
    IN_ISDIR,
    IN_MASK_ADD,
    IN_MOVED_FROM,
    IN_MOVED_TO,
    IN_ONLYDIR,
    PKW_DIRTY,
    PKW_INSIDE,
    PKW_RECORD,
    Events,
    Inotify,
)

__all__ = ["backend", "shm"]  # fixtures

MASK = IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO | IN_CLOSE_WRITE | IN_DELETE_SELF


@pytest.fixture
def ino(backend: str) -> Iterator[Inotify]:
    with Inotify(backend) as i:
        yield i


def by_name(events: Events, wd: int) -> dict[str, int]:
    return {r.name: r.mask for r in events.records if r.wd == wd}


def test_fd_is_close_on_exec_and_non_blocking(ino: Inotify) -> None:
    """The fd does not leak into installers the daemon runs, and never blocks a read."""
    fd = ino.fileno()
    assert fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
    assert fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_NONBLOCK


def test_close_closes_the_fd_exactly_once(backend: str, tmp_path: Path) -> None:
    """close() releases the fd; a second close() leaves alone whatever reuses the number."""
    ino = Inotify(backend)
    fd = ino.fileno()
    ino.close()
    with pytest.raises(OSError) as e:
        os.fstat(fd)
    assert e.value.errno == errno.EBADF
    reuse = os.open(tmp_path, os.O_RDONLY)
    try:
        assert reuse == fd  # the lowest free number: the one just released
        ino.close()
        os.fstat(reuse)  # still open
    finally:
        os.close(reuse)
    assert ino.closed
    with pytest.raises(ValueError):
        ino.fileno()


def test_context_manager_closes(backend: str) -> None:
    """Leaving the with block closes the fd even when the body raises."""
    with pytest.raises(RuntimeError), Inotify(backend) as ino:
        fd = ino.fileno()
        raise RuntimeError
    assert ino.closed
    assert not Path(f"/proc/self/fd/{fd}").exists()


def test_add_watch_failure_is_oserror_with_errno_and_path(ino: Inotify, tmp_path: Path) -> None:
    """A missing directory gives FileNotFoundError naming the path, not a cffi error."""
    missing = tmp_path / "missing"
    with pytest.raises(FileNotFoundError) as e:
        ino.add_watch(missing, MASK)
    assert e.value.errno == errno.ENOENT
    assert e.value.filename == str(missing)
    (tmp_path / "file").write_text("")
    with pytest.raises(NotADirectoryError):
        ino.add_watch(tmp_path / "file", MASK | IN_ONLYDIR)


def test_rm_watch_of_an_unknown_wd_is_einval(ino: Inotify) -> None:
    """Removing a watch that does not exist is an OSError(EINVAL)."""
    with pytest.raises(OSError) as e:
        ino.rm_watch(12345)
    assert e.value.errno == errno.EINVAL


def test_timeout_returns_an_empty_batch(ino: Inotify, tmp_path: Path) -> None:
    """Nothing happening within the timeout gives an empty batch, not a hang."""
    ino.add_watch(tmp_path, MASK)
    assert ino.read_batch(0.05) == Events(overflow=False, woken=False)


def test_events_are_coalesced_per_name(ino: Inotify, tmp_path: Path) -> None:
    """Many events on one name become one record with the union of their masks."""
    wd = ino.add_watch(tmp_path, MASK)
    for _ in range(50):
        (tmp_path / "a").write_text("x")
    (tmp_path / "b").mkdir()
    (tmp_path / "a").rename(tmp_path / "c")
    events = ino.read_batch(1, quiet_ms=50)
    assert len(events.records) == 3
    names = by_name(events, wd)
    assert names["a"] == IN_CREATE | IN_CLOSE_WRITE | IN_MOVED_FROM
    assert names["b"] == IN_CREATE | IN_ISDIR
    assert names["c"] == IN_MOVED_TO


def test_batch_waits_for_the_quiet_window(ino: Inotify, tmp_path: Path) -> None:
    """Events spaced closer than quiet_ms end up in one batch."""
    wd = ino.add_watch(tmp_path, MASK)

    def writer() -> None:
        for i in range(5):
            (tmp_path / f"f{i}").write_text("")
            time.sleep(0.05)

    t = threading.Thread(target=writer)
    t.start()
    try:
        events = ino.read_batch(5, quiet_ms=1000, max_ms=10_000)
    finally:
        t.join()
    assert set(by_name(events, wd)) == {f"f{i}" for i in range(5)}


def test_max_ms_ends_a_batch_that_never_goes_quiet(ino: Inotify, tmp_path: Path) -> None:
    """A steady trickle does not hold the batch open beyond max_ms."""
    wd = ino.add_watch(tmp_path, MASK)
    stop = threading.Event()

    def writer() -> None:
        i = 0
        while not stop.is_set():
            (tmp_path / f"f{i}").write_text("")
            i += 1
            time.sleep(0.02)

    t = threading.Thread(target=writer)
    t.start()
    try:
        events = ino.read_batch(5, quiet_ms=1000, max_ms=300)
        running = t.is_alive()
    finally:
        stop.set()
        t.join()
    assert running
    assert by_name(events, wd)


def test_leading_edge_returns_an_isolated_event_at_once(ino: Inotify, tmp_path: Path) -> None:
    """With `leading`, the first event after a quiet spell ends the batch without waiting
    out the quiet window, and the batch says when that event was read."""
    wd = ino.add_watch(tmp_path, MASK)
    (tmp_path / "a").mkdir()
    before = time.monotonic()
    events = ino.read_batch(5, quiet_ms=2000, max_ms=10_000, leading=True)
    assert time.monotonic() - before < 1.0
    assert by_name(events, wd) == {"a": IN_CREATE | IN_ISDIR}
    assert before - 0.5 < events.last <= time.monotonic()


def test_leading_edge_still_batches_a_stream(ino: Inotify, tmp_path: Path) -> None:
    """Events that follow a leading-edge batch within the quiet window are one batch."""
    wd = ino.add_watch(tmp_path, MASK)
    (tmp_path / "first").mkdir()
    assert ino.read_batch(5, quiet_ms=1000, leading=True).records

    def writer() -> None:
        for i in range(4):
            (tmp_path / f"d{i}").mkdir()
            time.sleep(0.05)

    t = threading.Thread(target=writer)
    t.start()
    try:
        events = ino.read_batch(5, quiet_ms=1000, max_ms=10_000, leading=True)
    finally:
        t.join()
    assert set(by_name(events, wd)) == {f"d{i}" for i in range(4)}


def test_leading_edge_waits_for_the_record_of_an_install_in_progress(
    ino: Inotify, shm: Path
) -> None:
    """A marker still waiting for RECORD holds the leading-edge batch; RECORD's arrival
    then ends it at once, not the quiet window."""
    wd = ino.add_watch(shm, MASK, markers=True)
    marker = shm / "demo-1.0.dist-info"

    def installer() -> None:
        marker.mkdir()
        time.sleep(0.2)
        (marker / "RECORD").write_text("")

    t = threading.Thread(target=installer)
    before = time.monotonic()
    t.start()
    try:
        events = ino.read_batch(5, quiet_ms=3000, max_ms=10_000, leading=True)
    finally:
        t.join()
    assert time.monotonic() - before < 2.0
    # RECORD's close is its arrival; its creation alone would only wake the engine.
    assert by_name(events, wd) == {marker.name: IN_CREATE | IN_ISDIR | PKW_RECORD}
    assert watch_count(ino.fileno()) == 1


def test_wake_fd_ends_the_wait_and_is_drained(ino: Inotify, tmp_path: Path) -> None:
    """A byte on the wake fd returns woken=True at once, with the pipe emptied."""
    ino.add_watch(tmp_path, MASK)
    r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        timer = threading.Timer(0.1, os.write, (w, b"xyz"))
        timer.start()
        events = ino.read_batch(10, wake_fd=r)
        timer.join()
        assert events.woken
        with pytest.raises(BlockingIOError):
            os.read(r, 1)
    finally:
        os.close(r)
        os.close(w)


def test_signal_with_wakeup_fd_interrupts_the_wait(ino: Inotify, tmp_path: Path) -> None:
    """SIGALRM during a wait with no timeout: its handler runs and the wait returns woken."""
    ino.add_watch(tmp_path, MASK)
    r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    seen: list[int] = []
    old_handler = signal.signal(signal.SIGALRM, lambda sig, frame: seen.append(sig))
    old_fd = signal.set_wakeup_fd(w)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.1)
        events = ino.read_batch(None, wake_fd=r)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.set_wakeup_fd(old_fd)
        signal.signal(signal.SIGALRM, old_handler)
        os.close(r)
        os.close(w)
    assert events.woken
    assert seen == [signal.SIGALRM]


def test_signal_without_wake_fd_does_not_end_the_wait(ino: Inotify, tmp_path: Path) -> None:
    """EINTR is retried: a signal whose handler returns does not cut the timeout short."""
    ino.add_watch(tmp_path, MASK)
    seen: list[int] = []
    old_handler = signal.signal(signal.SIGALRM, lambda sig, frame: seen.append(sig))
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.05)
        start = time.monotonic()
        events = ino.read_batch(0.3)
        waited = time.monotonic() - start
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old_handler)
    assert seen == [signal.SIGALRM]
    assert events == Events(overflow=False, woken=False)
    assert waited >= 0.29


def test_full_table_degrades_the_watch_instead_of_losing_names(
    backend: str, tmp_path: Path
) -> None:
    """Past max_records names, the watch is reported dirty as a whole: bounded, nothing lost."""
    with Inotify(backend, max_records=8) as ino:
        wd = ino.add_watch(tmp_path, MASK)
        for i in range(50):
            (tmp_path / f"f{i:02}").write_text("")
        events = ino.read_batch(1, quiet_ms=50)
    named = [r for r in events.records if r.name]
    assert len(named) == 8
    assert by_name(events, wd)[""] & PKW_DIRTY


def test_removed_watch_reports_nothing_more(ino: Inotify, tmp_path: Path) -> None:
    """After rm_watch, changes in the directory no longer produce records."""
    wd = ino.add_watch(tmp_path, MASK)
    ino.rm_watch(wd)
    (tmp_path / "a").write_text("")
    assert ino.read_batch(0.1, quiet_ms=20).records == ()


def test_deleted_directory_reports_delete_self_and_ignored(ino: Inotify, tmp_path: Path) -> None:
    """A watched directory that goes away says so on its own record (name "")."""
    d = tmp_path / "d"
    d.mkdir()
    wd = ino.add_watch(d, MASK)
    d.rmdir()
    events = ino.read_batch(1, quiet_ms=50)
    assert by_name(events, wd)[""] & (IN_DELETE_SELF | IN_IGNORED) == IN_DELETE_SELF | IN_IGNORED
    with pytest.raises(OSError):
        ino.rm_watch(wd)  # the kernel dropped it: EINVAL


def test_marker_is_followed_until_its_record_arrives(ino: Inotify, shm: Path) -> None:
    """A new dist-info is watched until RECORD arrives, reported on the root's record."""
    wd = ino.add_watch(shm, MASK, markers=True)
    marker = shm / "demo-1.0.dist-info"
    marker.mkdir()
    events = ino.read_batch(1, quiet_ms=50)
    assert by_name(events, wd) == {marker.name: IN_CREATE | IN_ISDIR}
    assert watch_count(ino.fileno()) == 2
    (marker / "METADATA").write_text("Name: demo\n")
    (marker / "RECORD").write_text("")
    events = ino.read_batch(1, quiet_ms=50)
    assert by_name(events, wd) == {marker.name: PKW_RECORD | PKW_INSIDE}
    assert watch_count(ino.fileno()) == 1


def test_record_moved_into_place_is_seen(ino: Inotify, shm: Path) -> None:
    """pip writes RECORD to a temporary name and renames it: IN_MOVED_TO counts."""
    wd = ino.add_watch(shm, MASK, markers=True)
    marker = shm / "demo-1.0.dist-info"
    marker.mkdir()
    ino.read_batch(1, quiet_ms=50)
    (marker / "RECORD.tmp").write_text("")
    (marker / "RECORD.tmp").rename(marker / "RECORD")
    events = ino.read_batch(1, quiet_ms=50)
    assert by_name(events, wd)[marker.name] & PKW_RECORD


def test_marker_arriving_complete_reports_its_record(ino: Inotify, shm: Path) -> None:
    """A dist-info renamed in with RECORD inside still reports RECORD, and keeps no watch."""
    wd = ino.add_watch(shm, MASK, markers=True)
    staging = shm.parent / f"{shm.name}-staging"
    staging.mkdir()
    try:
        (staging / "RECORD").write_text("")
        staging.rename(shm / "demo-1.0.dist-info")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    events = ino.read_batch(1, quiet_ms=50)
    assert by_name(events, wd)["demo-1.0.dist-info"] == IN_MOVED_TO | IN_ISDIR | PKW_RECORD
    assert watch_count(ino.fileno()) == 1


def test_marker_removed_or_stashed_drops_its_watch(ino: Inotify, shm: Path) -> None:
    """A marker deleted, or renamed to pip's ~stash, is no longer watched."""
    wd = ino.add_watch(shm, MASK, markers=True)
    (shm / "a-1.dist-info").mkdir()
    (shm / "b-1.dist-info").mkdir()
    ino.read_batch(1, quiet_ms=50)
    assert watch_count(ino.fileno()) == 3
    (shm / "a-1.dist-info").rmdir()
    (shm / "b-1.dist-info").rename(shm / "~-1.dist-info")
    events = ino.read_batch(1, quiet_ms=50)
    assert watch_count(ino.fileno()) == 1
    names = by_name(events, wd)
    assert names["a-1.dist-info"] & IN_DELETE
    assert names["b-1.dist-info"] & IN_MOVED_FROM
    assert names["~-1.dist-info"] == IN_MOVED_TO | IN_ISDIR


def test_only_marker_directories_are_followed(ino: Inotify, shm: Path) -> None:
    """Package dirs, marker-named files and markers under a plain watch get no watch."""
    ino.add_watch(shm, MASK, markers=True)
    plain = shm / "plain"
    plain.mkdir()
    ino.add_watch(plain, MASK)
    (shm / "pkg").mkdir()
    (shm / "x-1.dist-info").write_text("")
    (shm / ".tmp-1.dist-info").mkdir()
    (plain / "y-1.dist-info").mkdir()
    ino.read_batch(1, quiet_ms=50)
    assert watch_count(ino.fileno()) == 2


def test_add_marker_follows_an_install_already_in_progress(ino: Inotify, shm: Path) -> None:
    """A marker that existed before the root was watched can be followed explicitly."""
    marker, done = markers_in_progress_and_done(shm)
    wd = ino.add_watch(shm, MASK, markers=True)
    assert ino.add_marker(wd, marker.name) > 0
    assert ino.add_marker(wd, done.name) == 0  # nothing left to wait for
    assert watch_count(ino.fileno()) == 2
    with pytest.raises(OSError):
        ino.add_marker(wd, "not-a-marker")
    (marker / "RECORD").write_text("")
    events = ino.read_batch(1, quiet_ms=50)
    assert by_name(events, wd)[marker.name] & PKW_RECORD


def test_drop_marker_stops_following_a_leftover(ino: Inotify, shm: Path) -> None:
    """A followed marker whose RECORD will never come is dropped by name: its watch goes,
    and a leading batch no longer waits for it; an unknown name is nothing to drop."""
    wd = ino.add_watch(shm, MASK, markers=True)
    (shm / "left-1.0.dist-info").mkdir()
    ino.read_batch(1, quiet_ms=50)
    assert watch_count(ino.fileno()) == 2
    ino.drop_marker(wd, "other-1.0.dist-info")
    ino.drop_marker(wd, "left-1.0.dist-info")
    assert watch_count(ino.fileno()) == 1
    time.sleep(1.5)  # a quiet spell: the next event alone ends a leading batch
    (shm / "new").mkdir()
    started = time.monotonic()
    assert ino.read_batch(5, quiet_ms=1500, leading=True).wds == (wd,)
    assert time.monotonic() - started < 1.0, "a leading batch waited for a dropped marker"
    (shm / "left-1.0.dist-info" / "RECORD").write_text("")
    assert ino.read_batch(0.2, quiet_ms=50).wds == ()  # no longer followed


def test_mask_add_keeps_following_markers(ino: Inotify, shm: Path) -> None:
    """Re-adding a markers watch with IN_MASK_ADD and no markers keeps them, like the mask."""
    wd = ino.add_watch(shm, MASK, markers=True)
    (shm / "a-1.dist-info").mkdir()
    ino.read_batch(1, quiet_ms=50)
    assert ino.add_watch(shm, IN_CREATE | IN_MASK_ADD) == wd
    assert watch_count(ino.fileno()) == 2
    (shm / "b-1.dist-info").mkdir()
    ino.read_batch(1, quiet_ms=50)
    assert watch_count(ino.fileno()) == 3
    (shm / "a-1.dist-info" / "RECORD").write_text("")
    events = ino.read_batch(1, quiet_ms=50)
    assert by_name(events, wd)["a-1.dist-info"] & PKW_RECORD
    ino.add_watch(shm, MASK)  # without IN_MASK_ADD: replaced, markers dropped
    assert watch_count(ino.fileno()) == 1


def test_rm_watch_of_a_root_drops_its_markers(ino: Inotify, shm: Path) -> None:
    """Unwatching a root also releases the marker watches followed under it."""
    wd = ino.add_watch(shm, MASK, markers=True)
    (shm / "a-1.dist-info").mkdir()
    ino.read_batch(1, quiet_ms=50)
    assert watch_count(ino.fileno()) == 2
    ino.rm_watch(wd)
    assert watch_count(ino.fileno()) == 0


def test_queue_overflow_is_reported(backend: str, tmp_path: Path) -> None:
    """IN_Q_OVERFLOW (a tiny kernel queue, as root) comes back as overflow=True."""
    with lowered_queue(16):
        ino = Inotify(backend)
    with ino:
        ino.add_watch(tmp_path, MASK)
        for i in range(100):
            (tmp_path / f"f{i}").write_text("")
        events = ino.read_batch(1, quiet_ms=50)
    assert events.overflow


def test_backend_choice_follows_the_environment(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """PKGCKPT_WATCH_BACKEND picks the backend, and one log line names it."""
    caplog.set_level(logging.INFO, logger="pkgckpt.inotify")
    monkeypatch.setenv(inotify.ENV_BACKEND, "python")
    with Inotify() as ino:
        assert ino.backend == "python"
    monkeypatch.delenv(inotify.ENV_BACKEND)
    with Inotify() as ino:
        assert ino.backend == "native"
    assert [r.getMessage() for r in caplog.records] == [
        "inotify backend: python (inotify_simple), as configured",
        "inotify backend: native (pkgckpt._inotify)",
    ]
    monkeypatch.setenv(inotify.ENV_BACKEND, "kqueue")
    with pytest.raises(UsageError):
        Inotify()


def test_falls_back_to_python_when_the_native_module_cannot_load(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """No compiled module: python runs with a warning; asking for native is an error."""
    monkeypatch.delenv(inotify.ENV_BACKEND, raising=False)
    monkeypatch.setitem(sys.modules, "pkgckpt._inotify", None)
    with Inotify() as ino:
        assert ino.backend == "python"
    assert "native engine unavailable" in caplog.text
    with pytest.raises(UsageError):
        Inotify("native")
