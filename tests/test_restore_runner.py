"""The one place pkgckpt starts processes: argv only, output kept, process group killed,
a clean start (private working directory, the environment with only our overrides)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pkgckpt.restore.runner import Deadline, call


def test_argv_is_not_interpreted_by_a_shell(tmp_path: Path) -> None:
    """Shell syntax in an argument reaches the program verbatim and runs nothing."""
    marker = tmp_path / "ran"
    hostile = f"; touch {marker}; $(touch {marker}) `touch {marker}`"
    out = call(
        [sys.executable, "-c", "import sys; print(sys.argv[1])", hostile], deadline=Deadline(None)
    )
    assert out.ok and out.output.strip() == hostile
    assert not marker.exists()


def _blocked_in(status: str) -> set[int]:
    """The signals a process's /proc/PID/status says it has blocked."""
    mask = int(
        next(line for line in status.splitlines() if line.startswith("SigBlk:")).split()[1], 16
    )
    return {n for n in range(1, 65) if mask >> (n - 1) & 1}


def test_a_child_starts_with_the_stop_signals_unblocked(tmp_path: Path) -> None:
    """The daemon's thread keeps SIGTERM, SIGINT and SIGHUP blocked (a thread of their own
    takes them), and a child inherits its starter's mask across exec: every child pkgckpt
    starts (`call`, `spawn`) gets them unblocked, or it would not end at its own SIGTERM.
    The starter's mask is as it was afterwards."""
    from pkgckpt.runner import release, spawn

    stops = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}
    read = ["cat", "/proc/self/status"]
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, [*stops, signal.SIGUSR1])
    try:
        out = call(read, deadline=Deadline(None))
        with open(tmp_path / "status", "wb") as f:
            proc = spawn(read, cwd=str(tmp_path), stdin=subprocess.DEVNULL, stdout=f.fileno())
        assert proc.wait(10) == 0
        release(proc)
        assert signal.pthread_sigmask(signal.SIG_BLOCK, []) >= {*stops, signal.SIGUSR1}
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
    for status in (out.output, (tmp_path / "status").read_text()):
        assert stops.isdisjoint(_blocked_in(status))
        assert signal.SIGUSR1 in _blocked_in(status)  # the rest of the mask as it was


def test_failure_keeps_the_last_lines_of_stdout_and_stderr() -> None:
    """A failing call reports its exit status and the tail of both output streams."""
    script = (
        "import sys\n"
        "for i in range(100): print('line', i)\n"
        "print('ERROR: no such version', file=sys.stderr); sys.exit(1)"
    )
    out = call([sys.executable, "-c", script], deadline=Deadline(None))
    assert out.returncode == 1 and not out.ok and not out.timed_out
    tail = out.tail().splitlines()
    assert tail[-1] == "ERROR: no such version" and tail[0] == "line 89"


def test_an_error_line_above_the_tail_leads_it() -> None:
    """pip's PEP 668 refusal: `error: externally-managed-environment`, then more lines of
    explanation than the tail holds. The error line leads the tail, then `...`, then the
    last lines; the tail keeps its length."""
    script = (
        "print('Collecting x'); print('error: externally-managed-environment')\n"
        "for i in range(20): print('explained', i)\n"
        "raise SystemExit(1)"
    )
    tail = call([sys.executable, "-c", script], deadline=Deadline(None)).tail().splitlines()
    assert tail[:3] == ["error: externally-managed-environment", "...", "explained 10"]
    assert tail[-1] == "explained 19" and len(tail) == 12


def test_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    """At the deadline the installer and the children it started are killed, and we return."""
    pidfile = tmp_path / "child"
    script = (
        "import subprocess, sys, time\n"
        f"p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        f"open({str(pidfile)!r}, 'w').write(str(p.pid))\n"
        "print('started', flush=True); time.sleep(60)"
    )
    began = time.monotonic()
    out = call([sys.executable, "-c", script], deadline=Deadline(2.0))
    assert time.monotonic() - began < 30
    assert out.timed_out and out.returncode is None and "started" in out.output
    child = int(pidfile.read_text())
    for _ in range(100):
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        # It may linger as a zombie until init reaps it; a zombie is dead.
        stat = Path(f"/proc/{child}/stat")
        if stat.exists() and stat.read_text().split(") ")[1].startswith("Z"):
            break
        time.sleep(0.05)
    else:
        raise AssertionError("the installer's child survived the timeout")


def test_sigterm_takes_down_the_children_of_every_thread_then_exits_143(tmp_path: Path) -> None:
    """R's installs run in a pool's threads: SIGTERM to the main thread kills every child,
    one a thread starts afterwards included, and the process exits 128 + 15."""
    pids = tmp_path / "pids"
    script = f"""
import os, sys
from concurrent.futures import ThreadPoolExecutor
from pkgckpt.runner import Deadline, call, stop_on_signals

stop_on_signals()
child = [sys.executable, "-c",
         "import os, time; open({str(pids)!r}, 'a').write(str(os.getpid()) + ' '); time.sleep(600)"]
with ThreadPoolExecutor(1) as pool:
    jobs = [pool.submit(call, child, deadline=Deadline(None)) for _ in range(3)]
    print("waiting", flush=True)
    jobs[-1].result()
"""
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        began = time.monotonic()
        while not pids.exists() and time.monotonic() - began < 30:
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 128 + signal.SIGTERM
    finally:
        proc.kill()
        proc.communicate()
    started = [int(line) for line in pids.read_text().split()]
    assert len(started) <= 3
    for pid in started:
        stat = Path(f"/proc/{pid}/stat")
        assert not stat.exists() or stat.read_text().split(") ")[1].startswith("Z"), pid


def test_expired_deadline_starts_nothing(tmp_path: Path) -> None:
    """Once the timeout has run out no further installer is started."""
    marker = tmp_path / "ran"
    deadline = Deadline(0.001)
    time.sleep(0.01)
    out = call([sys.executable, "-c", f"open({str(marker)!r}, 'w')"], deadline=deadline)
    assert out.timed_out and not out.ok and not marker.exists()


def test_missing_program_is_an_outcome_not_an_exception(tmp_path: Path) -> None:
    """An installer that cannot be started is reported like a failed one."""
    out = call([str(tmp_path / "no-such-pip")], deadline=Deadline(None))
    assert not out.ok and "cannot run" in out.output


def test_zero_timeout_means_no_limit() -> None:
    """`--timeout 0` disables the bound rather than failing everything at once."""
    deadline = Deadline(0)
    assert deadline.remaining() is None and not deadline.expired()


def test_child_starts_in_a_private_empty_directory_removed_afterwards(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A child never runs where the caller stands: a fresh empty directory, gone after."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "json.py").write_text("raise SystemExit('planted')\n")
    script = (
        "import os, stat; print(os.getcwd()); print(os.listdir('.'), oct(os.stat('.').st_mode))"
    )
    out = call([sys.executable, "-c", script], deadline=Deadline(30), split_stderr=True)
    assert out.ok, out.errors
    where, listing = out.output.splitlines()
    assert Path(where) != tmp_path and listing == "[] 0o40700"
    assert not Path(where).exists()


def test_python_m_pip_does_not_import_pip_from_where_the_caller_stands(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A `pip/__main__.py` in the caller's directory is not what `python -m pip` runs."""
    marker = tmp_path / "planted-ran"
    (tmp_path / "pip").mkdir()
    (tmp_path / "pip" / "__init__.py").write_text("")
    (tmp_path / "pip" / "__main__.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    monkeypatch.chdir(tmp_path)
    out = call([sys.executable, "-m", "pip", "--version"], deadline=Deadline(60))
    assert out.ok and out.output.startswith("pip "), out.output
    assert not marker.exists()


def test_env_overrides_set_and_remove_and_keep_the_rest(monkeypatch: pytest.MonkeyPatch) -> None:
    """`env` changes only the names it gives; the image's variables (PIP_*, ...) pass on."""
    monkeypatch.setenv("PIP_INDEX_URL", "https://mirror.example/simple")
    monkeypatch.setenv("PKGCKPT_TEST_GONE", "1")
    script = (
        "import os; print(os.environ.get('PIP_INDEX_URL'), os.environ.get('PKGCKPT_TEST_SET'),"
        " os.environ.get('PKGCKPT_TEST_GONE'))"
    )
    out = call(
        [sys.executable, "-c", script],
        deadline=Deadline(30),
        env={"PKGCKPT_TEST_SET": "yes", "PKGCKPT_TEST_GONE": None},
    )
    assert out.output.split() == ["https://mirror.example/simple", "yes", "None"]


def test_given_working_directory_is_used_and_kept(tmp_path: Path) -> None:
    """A caller's own private directory is the child's working directory and stays."""
    out = call(
        [sys.executable, "-c", "import os; print(os.getcwd())"], deadline=Deadline(30), cwd=tmp_path
    )
    assert out.output.strip() == str(tmp_path) and tmp_path.is_dir()


def test_credentials_are_taken_out_of_the_reported_tail() -> None:
    """A URL with `user:secret@` in a child's output reaches reports without the secret."""
    script = "print('ERROR: 404 for https://alice:s3cret@pypi.example/simple/x/ and ssh://git@h/r')"
    out = call([sys.executable, "-c", script], deadline=Deadline(30))
    assert "s3cret" not in out.tail() and "alice" not in out.tail()
    assert "https://pypi.example/simple/x/" in out.tail() and "ssh://git@h/r" in out.tail()


def test_no_place_for_a_private_directory_is_an_outcome(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When TMPDIR cannot hold a private directory, nothing starts and the reason is told."""
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    monkeypatch.setattr("tempfile.tempdir", str(locked / "missing"))
    out = call([sys.executable, "-c", "pass"], deadline=Deadline(30))
    assert out.returncode is None and "no private directory" in out.output


# The watchdog in a process of its own (it ends the process): it fires 0.2 s in, where
# the pipe stderr is, already full, holds its message; it exits a second later without
# it. The main thread's work ends meanwhile, at 1 s, and it reports.
_FIRED_FIRST = """
import fcntl, os, sys, time
from pkgckpt.runner import Deadline, Watchdog
os.write(2, b"x" * fcntl.fcntl(2, fcntl.F_GETPIPE_SZ))
watchdog = Watchdog(Deadline(0.1), 0.1, "restore", "testing", 3)
time.sleep(1.0)
watchdog.stop()
print("reported as done", flush=True)
"""


def test_a_watchdog_that_fired_is_not_outrun_by_the_work_it_stops() -> None:
    """Once the watchdog fired, the work that ends just then does not report itself done
    and exit 0: `stop()` waits for the watchdog's exit, with its code. A stderr that
    does not take the message (full, or a file on the hung mount) does not hold it."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _FIRED_FIRST],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        proc.wait(timeout=30)  # without reading: stderr stays full
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 3, (out, err[-300:])
    assert b"reported as done" not in out
    assert set(err) == {ord("x")}, err[-300:]


def test_a_watchdog_that_fires_takes_down_r_s_probe(tmp_path: Path) -> None:
    """R's probe (`run_rscript`: the libraries, the repositories) runs outside `call()`, and
    a restore can be blocked in it: a watchdog that fires kills it with the installers,
    its children too, and leaves no R behind the restore."""
    mark = f"{37 + os.getpid() % 1000 / 1000:.3f}"
    fake = tmp_path / "Rscript"
    fake.write_text(f"#!/bin/sh\nsleep {mark} &\nwait\n")
    fake.chmod(0o755)
    script = (
        "from pkgckpt.runner import Deadline, Watchdog\n"
        "from pkgckpt.scan.r import run_rscript\n"
        "Watchdog(Deadline(0.5), 0.5, 'restore', 'asking R', 1)\n"
        f"run_rscript({str(fake)!r}, '1')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30
    )  # fmt: skip

    def left() -> bool:
        return subprocess.run(["pgrep", "-f", f"sleep {mark}"], capture_output=True).returncode == 0

    try:
        assert done.returncode == 1, done
        assert "still asking R" in done.stderr, done.stderr
        deadline = time.monotonic() + 5
        while left() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not left(), "R's probe outlived the restore"
    finally:
        subprocess.run(["pkill", "-f", f"sleep {mark}"], check=False)
