"""The running daemon beside its peers: CPU over real installs, latency, idle wake-ups.

    python benchmarks/bench_daemon.py [--rounds 5] [--idle 60] [--python PY] [--markdown PATH]

Each contender watches a venv of its own on /dev/shm and writes its record durably (temp
file, fsync, rename, directory fsync) a quiet window after the install's last event;
the quiet window is the same for all (QUIET_MS). Per round, for each contender in turn
(interleaved: A B C, A B C, ...), a fresh venv, store and process:

  cpu-big    CPU of the watching process (all threads, ns from /proc/<pid>/task/*/schedstat)
             from just before `uv pip install` of one 20,000-file wheel until its output
             file is renamed into place (seen through inotify by this process);
  cpu-40     the same for one `uv pip install` of 40 small wheels (many top-level events:
             what the engine's batching is for);
  latency    wall time from the installer's exit (one small wheel) to that rename.

Contenders, all run from one venv where pkgckpt is installed by `pip install .` (not
editable) with bytecode compiled (`--python` names one, else one is built for the run):

  pkgckpt          `pkgckpt daemon --quiet-ms QUIET_MS` (native engine).
  minimal          the design-equivalent peer: the simplest correct daemon doing the same
                   job the same way. inotify_simple on site-packages alone (and on each new
                   *.dist-info until its RECORD), a quiet window, then the dist-info names
                   as JSON, written durably.
  watchfiles       the popular way: `watchfiles.watch` (recursive, step = the quiet
                   window) and `importlib.metadata` over the site, the same durable write.

`--compare PY` adds `pkgckpt daemon` from another venv (another commit, installed the same
way) as one more contender, interleaved with the others: a before/after in one run.
`--idle N` leaves pkgckpt and the minimal daemon idle side by side for N seconds and
counts their context switches. `--markdown PATH` writes the tables for RESULTS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import inotify_simple  # type: ignore[import-untyped]

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

from bench_kit import commit, load, python_for_run, stamp, verdict  # noqa: E402
from daemon_kit import World, context_switches, eventually, uv_install  # noqa: E402
from wheelhouse import Dist, build_wheel, make_venv  # noqa: E402

QUIET_MS = 300
# Targets (issues 4 and 15), pkgckpt's medians: installer exit -> manifest on disk within
# the quiet window and this much; CPU over the 20,000-file install; that CPU over the
# design peer's.
LATENCY_SLACK_MS = 50
CPU_TARGET_MS = 60
PEER_TARGET = 1.5
SMALL = [f"lat-{i:02d}" for i in range(40)]

DURABLE = """\
def durable(out, data):
    tmp = out + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.write(fd, data)
    os.fsync(fd)
    os.close(fd)
    os.rename(tmp, out)
    dfd = os.open(os.path.dirname(out), os.O_RDONLY)
    os.fsync(dfd)
    os.close(dfd)
"""

# The design-equivalent peer: pkgckpt's design (non-recursive, markers until RECORD, a
# quiet window, a durable write), without what pkgckpt adds (baseline, store checks,
# generations, status file).
MINIMAL = (
    textwrap.dedent(
        """\
        import json, os, sys
        from inotify_simple import INotify, flags as F
        site, out, quiet = sys.argv[1], sys.argv[2], int(sys.argv[3])
        """
    )
    + DURABLE
    + textwrap.dedent(
        """
    def snapshot():
        dists = sorted(n for n in os.listdir(site) if n.endswith(".dist-info"))
        durable(out, json.dumps(dists).encode())
    ino = INotify()
    top = ino.add_watch(site, F.CREATE | F.DELETE | F.MOVED_FROM | F.MOVED_TO | F.ONLYDIR)
    markers = {}  # wd of a *.dist-info whose RECORD has not arrived: an install in progress
    dirty = False
    print("READY", flush=True)
    while True:
        events = ino.read(timeout=quiet if dirty else None)
        if not events and not markers:
            snapshot()
            dirty = False
        for ev in events:
            if ev.wd == top:
                dirty = True
                new = ev.mask & F.ISDIR and ev.mask & (F.CREATE | F.MOVED_TO)
                if new and ev.name.endswith(".dist-info"):
                    path = os.path.join(site, ev.name)
                    wd = ino.add_watch(path, F.CLOSE_WRITE | F.MOVED_TO | F.ONLYDIR)
                    markers[wd] = ev.name
                    if os.path.exists(os.path.join(path, "RECORD")):
                        del markers[wd]
                        ino.rm_watch(wd)
            elif ev.wd in markers and ev.name == "RECORD":
                del markers[ev.wd]
                ino.rm_watch(ev.wd)
    """
    )
)

WATCHFILES = (
    textwrap.dedent(
        """\
        import importlib.metadata, json, os, sys
        import watchfiles
        site, out, quiet = sys.argv[1], sys.argv[2], int(sys.argv[3])
        """
    )
    + DURABLE
    + textwrap.dedent(
        """
    def snapshot():
        dists = sorted(
            (d.metadata["Name"], d.version)
            for d in importlib.metadata.distributions(path=[site])
        )
        durable(out, json.dumps(dists).encode())
    print("READY", flush=True)
    # step: yield once nothing changed for this long (the quiet window); debounce: at most
    # this long after the first change (the maximum delay).
    for _ in watchfiles.watch(site, step=quiet, debounce=30000):
        snapshot()
    """
    )
)


@dataclass(frozen=True)
class Contender:
    name: str
    setup: str
    script: str | None  # None: pkgckpt daemon
    python: Path | None = None  # another venv's interpreter (--compare); None: the run's


CONTENDERS = [
    Contender("pkgckpt", f"`pkgckpt daemon --quiet-ms {QUIET_MS}`, native engine", None),
    Contender(
        "minimal non-recursive",
        "design-equivalent: inotify_simple on the root and new dist-infos, durable JSON",
        MINIMAL,
    ),
    Contender(
        "watchfiles + importlib.metadata",
        "`watchfiles.watch` (recursive), `importlib.metadata`, durable JSON",
        WATCHFILES,
    ),
]
DESIGN_PEER = "minimal non-recursive"
OURS = "pkgckpt"


def cpu_ns(pid: int) -> int:
    """CPU time of every thread of `pid` so far, in ns (schedstat: exact, not in ticks)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, IndexError, ValueError):
            continue  # a thread that just exited
    return total


class Watched:
    """One contender's process over a fresh venv, and the inotify watch this process uses
    to see the contender's output renamed into place. Stopped by `close`."""

    def __init__(self, python: Path, contender: Contender, root: Path) -> None:
        self.contender = contender
        root.mkdir(exist_ok=True)
        self.world = World.make(root)
        self.venv = make_venv(root / "venv", with_pip=False)
        self.ino = inotify_simple.INotify()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = root / "contender.log"
        if contender.script is None:
            self.out_dir = self.world.store / self.world.key
            self.out_name = "manifest.json"
            args = [*self.world.flags(self.venv.prefix), "--quiet-ms", str(QUIET_MS)]
            cmd = [str(python), "-m", "pkgckpt", "daemon", *args]
        else:
            self.out_dir = root / "peer"
            self.out_name = "state.json"
            site = str(self.venv.site_packages)
            out = str(self.out_dir / self.out_name)
            cmd = [str(python), "-c", contender.script, site, out, str(QUIET_MS)]
        self.out_dir.mkdir(parents=True, mode=0o700, exist_ok=True)
        with self.log.open("wb") as log:
            # cwd: the contender's own directory, never this repository (`-m` would put a
            # source tree first on sys.path).
            self.proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log,
                env=self.world.env, cwd=root,
            )  # fmt: skip
        try:
            if contender.script is None:
                status = self.world.status_file
                eventually(
                    lambda: status.exists() and '"watching"' in status.read_text(), 60, "ready"
                )
            else:
                assert self.proc.stdout is not None
                assert self.proc.stdout.readline().strip() == b"READY", self.log.read_text()
            self.ino.add_watch(str(self.out_dir), inotify_simple.flags.MOVED_TO)
        except BaseException:
            # The caller never gets this object to close: a contender that did not start
            # must not be left running.
            self.close()
            raise
        self.pid = self.proc.pid

    def install(self, wheels: Path, *reqs: str) -> None:
        self.ino.read(timeout=0)
        uv_install(self.venv.python, wheels, *reqs, env=self.world.env)

    def wait_output(self, *names: str, timeout: float = 60.0) -> None:
        """Until the output is renamed into place naming every one of `names`: a commit
        made while the install is still running (a pause longer than the quiet window)
        does not end the measure."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for event in self.ino.read(timeout=1000):
                if event.name != self.out_name:
                    continue
                with contextlib.suppress(OSError):
                    text = (self.out_dir / self.out_name).read_text().lower().replace("_", "-")
                    if all(name in text for name in names):
                        return
        raise AssertionError(
            f"{self.contender.name}: no output within {timeout} s\n{self.log.read_text()}"
        )

    def close(self) -> None:
        self.ino.close()
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait()
            self.proc = None


def build_wheels(into: Path) -> None:
    for name in SMALL:
        build_wheel(Dist(name, "1.0"), into)
    build_wheel(Dist("bigpkg", "1.0", files=20_000), into)


def measure(
    python: Path, c: Contender, tmp: Path, wheels: Path, run: Callable[[Watched], None]
) -> float:
    """One round: a fresh contender, settled, then `run` timed by the contender's CPU (ms)."""
    root = Path(tempfile.mkdtemp(dir=tmp))
    try:
        with ExitStack() as stack:
            w = Watched(python, c, root)
            stack.callback(w.close)
            time.sleep(0.5)  # start-up done: only the install is measured
            before = cpu_ns(w.pid)
            run(w)
            return (cpu_ns(w.pid) - before) / 1e6
    finally:
        shutil.rmtree(root, ignore_errors=True)


def latency(python: Path, c: Contender, tmp: Path, wheels: Path) -> float:
    """Installer exit -> output renamed, ms (one small wheel, after a first install)."""
    root = Path(tempfile.mkdtemp(dir=tmp))
    try:
        with ExitStack() as stack:
            w = Watched(python, c, root)
            stack.callback(w.close)
            w.install(wheels, SMALL[0])
            w.wait_output(SMALL[0])
            w.install(wheels, SMALL[1])
            done = time.perf_counter()
            w.wait_output(SMALL[1])
            return (time.perf_counter() - done) * 1000
    finally:
        shutil.rmtree(root, ignore_errors=True)


def idle(python: Path, tmp: Path, seconds: float) -> dict[str, int]:
    chosen = [c for c in CONTENDERS if c.name in ("pkgckpt", DESIGN_PEER)]
    root = Path(tempfile.mkdtemp(dir=tmp))
    try:
        with ExitStack() as stack:
            # Each is registered for closing as soon as it exists: a peer that fails to
            # start must not leave ours running.
            watched = []
            for i, c in enumerate(chosen):
                w = Watched(python, c, root / str(i))
                stack.callback(w.close)
                watched.append(w)
            time.sleep(1)
            before = [context_switches(w.pid) for w in watched]
            time.sleep(seconds)
            return {
                w.contender.name: context_switches(w.pid) - b
                for w, b in zip(watched, before, strict=True)
            }
    finally:
        shutil.rmtree(root, ignore_errors=True)


def vs_peer(values: list[float], peer: list[float]) -> float:
    """The table's "median vs design peer"."""
    return statistics.median(values) / statistics.median(peer)


def row(name: str, setup: str, values: list[float], peer: list[float] | None) -> str:
    median = statistics.median(values)
    ratio = f"{vs_peer(values, peer):.2f}x" if peer else "-"
    return (
        f"| {name} | {setup} | {min(values):.2f} ms | {median:.2f} ms | {max(values):.2f} ms "
        f"| {ratio} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--idle", type=float, default=0.0, help="idle seconds (0: skip)")
    parser.add_argument("--python", help="a venv's python with pkgckpt installed (not editable)")
    parser.add_argument("--markdown", help="write the tables to this file")
    parser.add_argument("--compare", help="another venv's python: its pkgckpt runs too")
    args = parser.parse_args()
    contenders = list(CONTENDERS)
    if args.compare:
        setup = f"`pkgckpt daemon` installed in {Path(args.compare).parent.parent}"
        contenders.insert(1, Contender("pkgckpt (compared)", setup, None, Path(args.compare)))
    groups = {
        "cpu-big": "CPU over `uv pip install` of one 20,000-file wheel, until the output",
        "cpu-40": "CPU over one `uv pip install` of 40 small wheels, until the output",
        "latency": "installer exit -> output renamed into place (wall)",
    }
    found = {g: {c.name: list[float]() for c in contenders} for g in groups}
    with (
        python_for_run(args.python, ["watchfiles"], "daemon") as python,
        tempfile.TemporaryDirectory(prefix="bench-daemon-", dir="/dev/shm") as tmp_name,
    ):
        tmp = Path(tmp_name)
        wheels = tmp / "wheels"
        build_wheels(wheels)

        def big(w: Watched) -> None:
            w.install(wheels, "bigpkg")
            w.wait_output("bigpkg", timeout=120)

        def many(w: Watched) -> None:
            w.install(wheels, *SMALL)
            w.wait_output(*SMALL, timeout=120)

        load_before = load()
        for r in range(args.rounds):
            for c in contenders:
                py = c.python or python
                found["cpu-big"][c.name].append(measure(py, c, tmp, wheels, big))
                found["cpu-40"][c.name].append(measure(py, c, tmp, wheels, many))
                found["latency"][c.name].append(latency(py, c, tmp, wheels))
            print(f"round {r + 1}/{args.rounds} done, load {load()}", file=sys.stderr)
        load_after = load()
        idled = idle(python, tmp, args.idle) if args.idle > 0 else {}
    lines = [
        f"{stamp()}, commit {commit()}, {args.rounds} rounds interleaved, quiet window "
        f"{QUIET_MS} ms for all, venvs and stores on /dev/shm, installs by uv; load average "
        f"{load_before} before, {load_after} after.",
    ]
    for group, title in groups.items():
        peer = found[group][DESIGN_PEER]
        lines += ["", f"| {title} | set up | min | median | max | median vs design peer |"]
        lines.append("|---|---|---|---|---|---|")
        lines += [row(c.name, c.setup, found[group][c.name], peer) for c in contenders]
    if idled:
        lines += ["", f"| idle {args.idle:g} s | context switches |", "|---|---|"]
        lines += [f"| {name} | {n} |" for name, n in idled.items()]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text)
        verdicts(args.markdown, found)


def verdicts(markdown: str, found: dict[str, dict[str, list[float]]]) -> None:
    """pkgckpt's medians against the targets of run_all.py's table, as the tables show them."""

    def figure(values: list[float]) -> str:
        return f"{min(values):.2f} / {statistics.median(values):.2f} ms"

    latency, big = found["latency"][OURS], found["cpu-big"][OURS]
    if latency:
        verdict(
            markdown,
            "daemon-latency",
            f"{figure(latency)} (min / median), quiet window {QUIET_MS} ms",
            statistics.median(latency) <= QUIET_MS + LATENCY_SLACK_MS,
        )
    if big:
        verdict(
            markdown,
            "daemon-cpu",
            f"{figure(big)} (min / median)",
            statistics.median(big) <= CPU_TARGET_MS,
        )
    peer = found["cpu-big"][DESIGN_PEER]
    if big and peer:
        ratio = vs_peer(big, peer)
        verdict(
            markdown,
            "daemon-peer",
            f"{figure(big)} (min / median) vs {figure(peer)}: {ratio:.2f}x by the median",
            ratio <= PEER_TARGET,
        )


if __name__ == "__main__":
    main()
