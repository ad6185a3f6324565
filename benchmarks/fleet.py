"""Many sessions on one store: N real `pkgckpt daemon` processes, one key each, installs on
a schedule, then a restore storm. Everything lives on /dev/shm.

    python benchmarks/fleet.py [--n 200] [--duration 60] [--runs tmpfs,latency,storm]
                               [--json PATH] [--markdown PATH]

Runs:
  tmpfs    the store on tmpfs.
  latency  the store behind benchmarks/latencyshim.c (LD_PRELOAD in every daemon): each
           open, fsync and rename on the store first sleeps a uniform 2-20 ms, a stand-in
           for an NFS round trip.
  storm    after the tmpfs run: every session's venv goes back to the image and its
           runtime directory is emptied (a new container), then N `pkgckpt restore` start
           at once, and again all at once with `pkgckpt restore --jitter J` (--jitter):
           each restore then waits a uniform 0-J s of its own before it reads the store.

Sessions (seeded, --seed): 70 % idle for the whole run, 25 % make 1-3 installs at
uniform times, 5 % make one burst of 8-15 installs 50-300 ms apart. An install writes a
tiny wheel into the session's venv with the `installer` library: the files, the
dist-info and RECORD last, as pip writes them. Each session runs as its own uid
(40000 + its number, through setpriv) with its key directory made for it, as on a store
whose users are told apart: the kernel allows 128 inotify instances per uid by default
(fs.inotify.max_user_instances). --one-uid runs every session as this user instead, as
notebook pods that all run as uid 1000 on one node do.

Measured:
  commit latency  per commit: from the end of the newest install it holds to the
                  daemon's metrics file renamed after that commit (seen by inotify in
                  this driver), minus the quiet window (--quiet-ms): scan, commit and
                  the wait for a CPU. Per install, the raw install -> on-store time (a
                  burst's first install waits for the burst to end).
  arrivals        (storms) when each restore first reaches the store: inotify IN_OPEN on
                  the key directories; the peak count in one second is the storm's load.
  store ops       `strace -f -y -ttt` on --sample active sessions (excluded from the
                  other figures): syscalls naming a path on the store, per commit between
                  the start and SIGTERM, at the start, at the shutdown (a last check and
                  the read-back), and per restore.
  CPU, RSS        utime + stime and VmRSS of every daemon from /proc before SIGTERM.
  lost            after SIGTERM: every install of every session must be in its manifest.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import inotify_simple  # type: ignore[import-untyped]
from installer import install
from installer.destinations import SchemeDictionaryDestination
from installer.sources import WheelFile

import pkgckpt
from pkgckpt.manifest import Manifest
from pkgckpt.store import Store

REPO = Path(pkgckpt.__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_kit import verdict  # noqa: E402
from restore_kit import hermetic  # noqa: E402
from wheelhouse import Dist, build_wheel  # noqa: E402

POOL = 40
# The calls latencyshim.c delays, as strace names them: what the p99 target counts as
# "operations per commit" (issue 12: p99 commit latency <= 2 x the injected latency x
# the operations per commit), with the shim's mean delay as the injected latency.
DELAYED = ("open", "openat", "fsync", "fdatasync", "rename", "renameat", "renameat2")
P99_FACTOR = 2
# Issue 12's budgets of store calls: per commit, and per restore before it installs.
OPS_PER_COMMIT, OPS_PER_RESTORE = 8, 3
UID_BASE = 40000
TICK = os.sysconf("SC_CLK_TCK")


@dataclass
class Session:
    index: int
    kind: str
    schedule: list[tuple[float, str]]
    """(seconds after the start, package name)."""
    dir: Path
    sampled: bool = False
    proc: subprocess.Popen[bytes] | None = None
    pid: int = 0
    uid: int = 0
    """The session's user: its own uid, or this process's with --one-uid."""
    installed_at: dict[str, float] = field(default_factory=dict)
    committed_at: dict[str, float] = field(default_factory=dict)
    commit_ms: list[float] = field(default_factory=list)
    """Per commit seen: from the newest install it holds to the commit, minus the quiet
    window (the part that is scan, commit and waiting for a CPU)."""

    @property
    def key(self) -> str:
        return f"s{self.index:04d}"

    @property
    def venv(self) -> Path:
        return self.dir / "venv"

    @property
    def runtime(self) -> Path:
        return self.dir / "run"


def plan(n: int, duration: float, rng: random.Random, base: Path) -> list[Session]:
    names = [f"fleet-pkg-{i:02d}" for i in range(POOL)]
    sessions = []
    for i in range(n):
        roll = rng.random()
        schedule: list[tuple[float, str]] = []
        picks = rng.sample(names, len(names))
        if roll < 0.05:
            kind, t = "burst", rng.uniform(0, duration * 0.8)
            for name in picks[: rng.randint(8, 15)]:
                schedule.append((t, name))
                t += rng.uniform(0.05, 0.3)
        elif roll < 0.30:
            kind = "light"
            schedule = sorted(
                (rng.uniform(0, duration), name) for name in picks[: rng.randint(1, 3)]
            )
        else:
            kind = "idle"
        sessions.append(Session(i, kind, schedule, base / f"s{i:04d}"))
    return sessions


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def proc_cpu_rss(pid: int) -> tuple[float, int, int]:
    """CPU seconds (user + system), VmRSS and VmHWM in kB."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    cpu = (int(fields[11]) + int(fields[12])) / TICK
    rss = hwm = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
        elif line.startswith("VmHWM:"):
            hwm = int(line.split()[1])
    return cpu, rss, hwm


STRACE_LINE = re.compile(r"^\d+\s+([\d.]+)\s+(\w+)\(")


def store_ops(trace: Path, store: Path, *cuts: float) -> list[Counter[str]]:
    """Syscalls naming a path under `store`, by name: one Counter before the first of the
    (ascending) wall-clock `cuts`, one between each two, one after the last."""
    parts: list[Counter[str]] = [Counter() for _ in range(len(cuts) + 1)]
    needle = str(store)
    for line in trace.read_text(errors="replace").splitlines():
        m = STRACE_LINE.match(line)
        if m is None or needle not in line or "resumed>" in line:
            continue
        parts[sum(float(m.group(1)) >= cut for cut in cuts)][m.group(2)] += 1
    return parts


def build_shim(base: Path) -> Path:
    out = base / "latencyshim.so"
    subprocess.run(
        ["gcc", "-O2", "-Wall", "-Wextra", "-shared", "-fPIC", "-o", str(out),
         str(REPO / "benchmarks" / "latencyshim.c"), "-ldl"],
        check=True,
    )  # fmt: skip
    return out


def fresh_session(s: Session, template: Path) -> None:
    """The session's venv as the image ships it, an empty runtime directory, all its own."""
    if s.venv.exists():
        shutil.rmtree(s.venv)
    shutil.copytree(template, s.venv, symlinks=True)
    if s.runtime.exists():
        shutil.rmtree(s.runtime)
    for path in [s.dir, *s.dir.rglob("*")]:
        os.chown(path, s.uid, s.uid, follow_symlinks=False)


def as_user(s: Session, cmd: list[str]) -> list[str]:
    if s.uid == os.getuid():
        return cmd
    return ["setpriv", f"--reuid={s.uid}", f"--regid={s.uid}", "--clear-groups", "--", *cmd]


def key_dir(store: Path, s: Session) -> None:
    """The session's directory on the store, made by the operator as it is on NFS."""
    (store / s.key).mkdir(mode=0o700)
    os.chown(store / s.key, s.uid, s.uid)


def read(store: Path, s: Session) -> Manifest | None:
    return Store(store, s.key, owner=s.uid).read()


def init_store(store: Path, env: dict[str, str]) -> None:
    """Mark the store where this pkgckpt has `store init` (an unmarked store is refused)."""
    store.mkdir(parents=True)
    subprocess.run(
        [sys.executable, "-m", "pkgckpt", "store", "init", str(store)],
        capture_output=True, env=env, check=False,
    )  # fmt: skip


def install_wheel(venv: Path, wheel: Path) -> None:
    site = next((venv / "lib").glob("python3*/site-packages"))
    scheme = {k: str(site) for k in ("purelib", "platlib")}
    scheme |= {"headers": str(venv / "include"), "scripts": str(venv / "bin"),
               "data": str(venv)}  # fmt: skip
    destination = SchemeDictionaryDestination(
        scheme, interpreter=str(venv / "bin" / "python"), script_kind="posix"
    )
    with WheelFile.open(wheel) as source:
        install(source, destination, {"INSTALLER": b"fleet\n"})


def fleet_run(
    label: str,
    sessions: list[Session],
    args: argparse.Namespace,
    base: Path,
    template: Path,
    wheels: dict[str, Path],
    preload: dict[str, str],
) -> tuple[dict[str, object], Path]:
    store = base / f"store-{label}"
    metrics_dir = base / f"metrics-{label}"
    metrics_dir.mkdir()
    metrics_dir.chmod(0o1777)
    common = hermetic(base / "home")
    init_store(store, common)
    for s in sessions:
        key_dir(store, s)
    if preload:
        preload = {**preload, "PKGCKPT_LATENCY_PATH": str(store)}
    for s in sessions:
        fresh_session(s, template)
        s.installed_at.clear()
        s.committed_at.clear()
        s.commit_ms.clear()
    notify = inotify_simple.INotify()
    notify.add_watch(metrics_dir, inotify_simple.flags.MOVED_TO)
    active = [s for s in sessions if s.schedule]
    for s in sessions:
        s.sampled = s in active[: args.sample]
    print(f"[{label}] starting {len(sessions)} daemons", flush=True)
    started = time.monotonic()
    for s in sessions:
        env = {**common, **preload, "XDG_RUNTIME_DIR": str(s.runtime)}
        cmd = [sys.executable, "-m", "pkgckpt", "daemon", "--store", str(store), "--key", s.key,
               "--env", str(s.venv), "--quiet-ms", str(args.quiet_ms),
               "--metrics-file", str(metrics_dir / f"{s.key}.prom")]  # fmt: skip
        cmd = as_user(s, cmd)
        if s.sampled:
            trace = base / f"strace-{label}-{s.key}.txt"
            cmd = ["strace", "-f", "-y", "-ttt", "-e", "trace=%file,%desc", "-o", str(trace),
                   *cmd]  # fmt: skip
        s.proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=(s.dir / f"daemon-{label}.log").open("wb"), env=env,
        )  # fmt: skip
    waiting = {f"{s.key}.prom" for s in sessions}
    while waiting:
        for event in notify.read(timeout=1000):
            waiting.discard(event.name)
        dead = [s for s in sessions if s.proc is not None and s.proc.poll() is not None]
        if dead:
            log = (dead[0].dir / f"daemon-{label}.log").read_text()
            raise SystemExit(f"[{label}] daemon {dead[0].key} exited:\n{log}")
    startup = time.monotonic() - started
    for s in sessions:
        assert s.proc is not None
        s.pid = s.proc.pid
        if s.sampled:
            kids = Path(f"/proc/{s.pid}/task/{s.pid}/children").read_text().split()
            s.pid = int(kids[0])
    cpu_ready = {s.key: proc_cpu_rss(s.pid)[0] for s in sessions}
    generation_ready = {s.key: _generation(store, s) for s in sessions}
    ready_wall = time.time()
    print(f"[{label}] all ready in {startup:.1f} s; installing for {args.duration} s", flush=True)

    by_key = {f"{s.key}.prom": s for s in sessions}
    events = sorted((t, s.index, name) for s in sessions for t, name in s.schedule)
    t0 = time.monotonic()
    end = t0 + args.duration + args.quiet_ms / 1000 + 5
    pending = list(events)
    while True:
        now = time.monotonic()
        while pending and now - t0 >= pending[0][0]:
            _, index, name = pending.pop(0)
            s = sessions[index]
            install_wheel(s.venv, wheels[name])
            s.installed_at[name] = time.monotonic()
            now = time.monotonic()
        if now >= end and all(len(s.committed_at) == len(s.installed_at) for s in sessions):
            break
        if now >= end + 60:
            break
        wait = (pending[0][0] - (now - t0)) if pending else 0.2
        for event in notify.read(timeout=max(1, int(min(wait, 0.2) * 1000))):
            s = by_key.get(event.name)
            if s is None or not s.installed_at:
                continue
            seen = time.monotonic()
            found = read(store, s)
            names = {p.name for d in found.body.environments for p in d.added} if found else set()
            newly = [n for n in s.installed_at.keys() - s.committed_at.keys() if n in names]
            for name in newly:
                s.committed_at[name] = seen
            if newly:
                newest = max(s.installed_at[n] for n in newly)
                s.commit_ms.append((seen - newest) * 1000 - args.quiet_ms)
    figures = {s.key: proc_cpu_rss(s.pid) for s in sessions}
    generation_end = {s.key: _generation(store, s) for s in sessions}
    print(f"[{label}] stopping", flush=True)
    stop_wall = time.time()
    for s in sessions:
        os.kill(s.pid, signal.SIGTERM)  # the daemon itself, not strace around it
    codes = {s.key: s.proc.wait(60) for s in sessions if s.proc is not None}
    notify.close()

    lost = []
    for s in sessions:
        found = read(store, s)
        names = {p.name for d in found.body.environments for p in d.added} if found else set()
        lost += [f"{s.key}:{n}" for n in s.installed_at if n not in names]
    sizes = [
        (store / s.key / "manifest.json").stat().st_size
        for s in sessions
        if (store / s.key / "manifest.json").exists()
    ]
    measured = [s for s in sessions if not s.sampled]
    e2e = [
        (s.committed_at[n] - s.installed_at[n]) * 1000
        for s in measured for n in s.committed_at
    ]  # fmt: skip
    latency = [v for s in measured for v in s.commit_ms]
    commits = sum(generation_end[s.key] - generation_ready[s.key] for s in measured)
    ops_commit: Counter[str] = Counter()
    ops_start: Counter[str] = Counter()
    ops_stop: Counter[str] = Counter()
    sampled_commits = 0
    for s in sessions:
        if s.sampled:
            trace = base / f"strace-{label}-{s.key}.txt"
            early, late, stop = store_ops(trace, store, ready_wall, stop_wall)
            ops_start += early
            ops_commit += late
            ops_stop += stop
            sampled_commits += generation_end[s.key] - generation_ready[s.key]
    sampled = sum(1 for s in sessions if s.sampled)
    cpu_total = sum(figures[s.key][0] for s in measured)
    cpu_steady = sum(figures[s.key][0] - cpu_ready[s.key] for s in measured)
    rss = [figures[s.key][1] for s in measured]
    result: dict[str, object] = {
        "run": label,
        "daemons": len(sessions),
        "sampled_under_strace": sampled,
        "startup_seconds": round(startup, 1),
        "installs": sum(len(s.installed_at) for s in sessions),
        "committed_installs_measured": len(e2e),
        "commits_measured": commits,
        "commit_latency_ms": _dist(latency),
        "install_to_store_ms": _dist(e2e),
        "install_to_store_ms_by_kind": {
            kind: _dist(
                [
                    (s.committed_at[n] - s.installed_at[n]) * 1000
                    for s in measured
                    if s.kind == kind
                    for n in s.committed_at
                ]
            )
            for kind in ("light", "burst")
        },
        "store_ops_per_commit": round(sum(ops_commit.values()) / max(1, sampled_commits), 2),
        "store_ops_per_commit_by_call": {
            k: round(v / max(1, sampled_commits), 2) for k, v in ops_commit.most_common()
        },
        "sampled_commits": sampled_commits,
        "store_ops_at_shutdown_per_daemon": round(sum(ops_stop.values()) / max(1, sampled), 1),
        "store_ops_at_shutdown_by_call": {
            k: round(v / max(1, sampled), 1) for k, v in ops_stop.most_common()
        },
        "store_ops_at_start_per_daemon": round(sum(ops_start.values()) / max(1, sampled), 1),
        "store_ops_at_start_by_call": {
            k: round(v / max(1, sampled), 1) for k, v in ops_start.most_common()
        },
        "manifest_bytes": {
            "n": len(sizes),
            "median": statistics.median(sizes) if sizes else 0,
            "max": max(sizes, default=0),
        },
        "cpu_seconds_total": round(cpu_total, 2),
        "cpu_seconds_after_ready": round(cpu_steady, 3),
        "cpu_ms_after_ready_by_kind": {
            kind: round(
                1000
                * statistics.mean(
                    figures[s.key][0] - cpu_ready[s.key] for s in measured if s.kind == kind
                ),
                2,
            )
            for kind in ("idle", "light", "burst")
            if any(s.kind == kind for s in measured)
        },
        "rss_kb": {
            "total": sum(rss),
            "min": min(rss),
            "median": statistics.median(rss),
            "max": max(rss),
        },
        "exit_codes": dict(Counter(codes.values())),
        "lost": lost,
        "daemons_without_inotify": sum(
            "cannot create an inotify instance" in (s.dir / f"daemon-{label}.log").read_text()
            for s in sessions
        ),
        "load_average": os.getloadavg(),
    }
    return result, store


def _generation(store: Path, s: Session) -> int:
    found = read(store, s)
    return found.generation if found is not None else 0


def _dist(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    return {
        "n": len(values),
        "p50": round(pct(values, 0.5), 1),
        "p99": round(pct(values, 0.99), 1),
        "max": round(max(values), 1),
    }


def _seconds(values: list[float]) -> dict[str, float]:
    found = _dist([v * 1000 for v in values])
    return {k: (v if k == "n" else round(v / 1000, 2)) for k, v in found.items()}


def storm(
    label: str,
    sessions: list[Session],
    args: argparse.Namespace,
    base: Path,
    template: Path,
    store: Path,
    wheels_dir: Path,
    jitter: float,
) -> dict[str, object]:
    """N restores at once, each `restore --jitter JITTER`, of the manifests the run left."""
    common = hermetic(base / "home")
    rng = random.Random(args.seed + 1)
    for s in sessions:
        fresh_session(s, template)
    recorded = {s.key: len(s.installed_at) for s in sessions}
    sample = [s for s in sessions if recorded[s.key]][: args.sample]
    print(f"[{label}] {len(sessions)} restores, restore --jitter {jitter:g}", flush=True)
    procs: dict[int, subprocess.Popen[bytes]] = {}
    done: dict[int, float] = {}
    # A restore's first store call on its key opens the key directory: when restores
    # reach the store, whatever they did before (start-up, the jitter's wait).
    notify = inotify_simple.INotify()
    for s in sessions:
        notify.add_watch(store / s.key, inotify_simple.flags.OPEN | inotify_simple.flags.ONLYDIR)
    arrivals: list[float] = []
    t0 = time.monotonic()
    try:
        # Every restore starts at once, in a random order; `--jitter` spreads them itself.
        for index in rng.sample(range(len(sessions)), len(sessions)):
            s = sessions[index]
            env = {**common, "XDG_RUNTIME_DIR": str(s.runtime),
                   "UV_CACHE_DIR": str(s.dir / "uv-cache")}  # fmt: skip
            cmd = [sys.executable, "-m", "pkgckpt", "restore", "--store", str(store),
                   "--key", s.key, "--env", str(s.venv), "--installer", "uv", "--no-index",
                   "--find-links", str(wheels_dir), "--timeout", "300",
                   *(["--jitter", str(jitter)] if jitter else [])]  # fmt: skip
            cmd = as_user(s, cmd)
            if s in sample:
                trace = base / f"strace-{label}-{s.key}.txt"
                cmd = ["strace", "-f", "-y", "-ttt", "-e", "trace=%file,%desc", "-o",
                       str(trace), *cmd]  # fmt: skip
            procs[index] = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=(s.dir / f"restore-{label}.log").open("wb"), env=env,
            )  # fmt: skip
        while len(done) < len(sessions):
            now = time.monotonic() - t0
            arrivals += [now for event in notify.read(timeout=5) if not event.name]
            for index, p in procs.items():
                if index not in done and p.poll() is not None:
                    done[index] = time.monotonic() - t0
    finally:
        notify.close()
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()
    per_second = Counter(int(t) for t in arrivals)
    codes = Counter(p.returncode for p in procs.values())
    failed = [sessions[i] for i, p in procs.items() if p.returncode != 0]
    if failed:
        log = (failed[0].dir / f"restore-{label}.log").read_text(errors="replace")
        print(f"[{label}] {failed[0].key} exited non-zero:\n{log[-2000:]}", flush=True)
    missing = []
    for s in sessions:
        site = next((s.venv / "lib").glob("python3*/site-packages"))
        have = {i.name.split("-")[0].replace("_", "-") for i in site.glob("*.dist-info")}
        missing += [f"{s.key}:{n}" for n in s.installed_at if n not in have]
    ops: Counter[str] = Counter()
    for s in sample:
        ops += store_ops(base / f"strace-{label}-{s.key}.txt", store)[0]
    measured = [done[s.index] for s in sessions if s not in sample]
    with_installs = [done[s.index] for s in sessions if s not in sample and recorded[s.key]]
    return {
        "run": label,
        "restores": len(sessions),
        "with_packages": sum(1 for v in recorded.values() if v),
        "jitter_seconds": jitter,
        "completion_s": _seconds(measured),
        "completion_with_packages_s": _seconds(with_installs),
        "restores_reaching_the_store": {
            "n": len(arrivals),
            "first_s": round(min(arrivals, default=0), 2),
            "last_s": round(max(arrivals, default=0), 2),
            "peak_per_second": max(per_second.values(), default=0),
        },
        "store_ops_per_restore": round(sum(ops.values()) / max(1, len(sample)), 2),
        "store_ops_per_restore_by_call": {
            k: round(v / max(1, len(sample)), 2) for k, v in ops.most_common()
        },
        "exit_codes": dict(codes),
        "not_restored": missing,
        "load_average": os.getloadavg(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--quiet-ms", type=int, default=500)
    parser.add_argument("--latency-ms", default="2:20")
    parser.add_argument("--jitter", type=float, default=10.0)
    parser.add_argument("--sample", type=int, default=3)
    parser.add_argument("--seed", type=int, default=12)
    parser.add_argument("--runs", default="tmpfs,latency,storm")
    parser.add_argument("--json", type=Path, help="Also write the results here.")
    parser.add_argument("--markdown", type=Path, help="Also write the tables here.")
    parser.add_argument(
        "--venv-python",
        default="/usr/bin/python3" if Path("/usr/bin/python3").exists() else sys.executable,
        help="The interpreter of the sessions' venvs (default: /usr/bin/python3).",
    )
    parser.add_argument(
        "--one-uid",
        action="store_true",
        help="Run every session as this user (as pods all running as uid 1000 on one node "
        "do), not each as its own uid: they then share fs.inotify.max_user_instances.",
    )
    args = parser.parse_args()
    runs = args.runs.split(",")
    started = time.monotonic()
    results: list[dict[str, object]] = []
    base = Path(tempfile.mkdtemp(prefix="pkgckpt-fleet-", dir="/dev/shm"))
    base.chmod(0o755)  # the sessions' own uids reach their directories through it
    sessions: list[Session] = []
    try:
        wheels_dir = base / "wheels"
        wheels = {}
        for i in range(POOL):
            name = f"fleet-pkg-{i:02d}"
            wheels[name] = build_wheel(Dist(name, "1.0", files=5), wheels_dir)
        # The sessions' venvs need an interpreter every uid can reach (this one may sit
        # in a private home directory).
        template = base / "template"
        subprocess.run([args.venv_python, "-m", "venv", "--without-pip", str(template)],
                       check=True)  # fmt: skip
        sessions = plan(args.n, args.duration, random.Random(args.seed), base)
        for s in sessions:
            s.dir.mkdir()
            s.uid = os.getuid() if args.one_uid else UID_BASE + s.index
        print(
            f"{args.n} sessions: "
            + ", ".join(f"{k} {v}" for k, v in Counter(s.kind for s in sessions).items())
            + f"; {sum(len(s.schedule) for s in sessions)} installs; load {os.getloadavg()}",
            flush=True,
        )
        tmpfs_store = None
        for run in runs:
            if run == "tmpfs":
                result, tmpfs_store = fleet_run(run, sessions, args, base, template, wheels, {})
            elif run == "latency":
                shim = build_shim(base)
                preload = {"LD_PRELOAD": str(shim), "PKGCKPT_LATENCY_MS": args.latency_ms}
                result, _ = fleet_run(run, sessions, args, base, template, wheels, preload)
            elif run == "storm":
                if tmpfs_store is None:
                    raise SystemExit("the storm restores what the tmpfs run recorded: run it first")
                result = storm(
                    "storm", sessions, args, base, template, tmpfs_store, wheels_dir, 0.0
                )
                results.append(result)
                print(json.dumps(result, indent=1), flush=True)
                result = storm(
                    "storm-jitter", sessions, args, base, template, tmpfs_store, wheels_dir,
                    args.jitter,
                )  # fmt: skip
            else:
                raise SystemExit(f"unknown run {run!r}")
            results.append(result)
            print(json.dumps(result, indent=1), flush=True)
    finally:
        for s in sessions:
            if s.proc is not None and s.proc.poll() is None:
                s.proc.kill()
                s.proc.wait()
        shutil.rmtree(base, ignore_errors=True)
    print(f"total {time.monotonic() - started:.0f} s", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    lines = markdown(results, args)
    print("\n".join(lines))
    if args.markdown:
        args.markdown.write_text("\n".join(lines) + "\n")
        verdicts(args.markdown, results, args.latency_ms)


def injected_ms(spec: str) -> tuple[int, int]:
    """--latency-ms MIN:MAX as latencyshim.c reads it (2:20 when it cannot)."""
    try:
        low, high = (int(v) for v in spec.split(":"))
    except ValueError:
        return 2, 20
    return (low, high) if 0 <= low <= high else (2, 20)


def verdicts(markdown: Path, results: list[dict[str, object]], latency_ms: str) -> None:
    """The fleet's targets in run_all.py's table, from the figures its table shows: the
    store calls per restore (the storm) and per commit (tmpfs) against issue 12's budgets,
    no install lost in the tmpfs and the latency runs, and the latency run's p99 commit
    latency against 2 x the shim's mean delay x the delayed store calls per commit."""
    runs = {str(r["run"]): r for r in results}
    tmpfs, slow = runs.get("tmpfs"), runs.get("latency")
    low, high = injected_ms(latency_ms)
    budgets = (
        ("store-ops-restore", runs.get("storm"), "restore", OPS_PER_RESTORE),
        ("store-ops-commit", tmpfs, "commit", OPS_PER_COMMIT),
    )
    for key, run, per, budget in budgets:
        # Nothing counted (no call under strace) is no figure, not zero calls.
        if run is None or not run[f"store_ops_per_{per}_by_call"]:
            continue
        calls = run[f"store_ops_per_{per}"]
        assert isinstance(calls, float)
        verdict(
            markdown,
            key,
            f"{calls:g} store calls per {per} (strace sample, run {run['run']}; "
            f"{_cell(run[f'store_ops_per_{per}_by_call'])})",
            calls <= budget,
        )
    if tmpfs is not None and slow is not None:
        lost, lost_slow = tmpfs["lost"], slow["lost"]
        assert isinstance(lost, list) and isinstance(lost_slow, list)
        verdict(
            markdown,
            "fleet-lost",
            f"{len(lost)} of {tmpfs['installs']} installs lost on tmpfs, {len(lost_slow)} of "
            f"{slow['installs']} with {low}-{high} ms injected; {tmpfs['daemons']} daemons",
            not lost and not lost_slow,
        )
    if slow is None:
        return
    p99 = slow["commit_latency_ms"]
    by_call = slow["store_ops_per_commit_by_call"]
    assert isinstance(p99, dict) and isinstance(by_call, dict)
    if "p99" not in p99 or not slow["sampled_commits"]:
        return  # no commit measured, or none under strace to count its calls
    delayed = {name: n for name, n in by_call.items() if name in DELAYED}
    ops = sum(delayed.values())
    mean = (low + high) / 2
    bound = P99_FACTOR * mean * ops
    verdict(
        markdown,
        "fleet-p99",
        f"p99 {p99['p99']} ms (n {p99['n']}), {low}-{high} ms injected; bound "
        f"{P99_FACTOR} x {mean:g} ms x {ops:.1f} delayed calls per commit "
        f"({', '.join(f'{k} {v}' for k, v in delayed.items())}; of "
        f"{slow['store_ops_per_commit']} store calls) = {bound:.0f} ms",
        p99["p99"] <= bound,
    )


def _cell(value: object) -> str:
    if isinstance(value, dict) and "p50" in value:
        return f"{value['p50']} / {value['p99']} / {value['max']} (n {value['n']})"
    if isinstance(value, dict):
        return ", ".join(f"{k} {v}" for k, v in value.items()) or "-"
    if isinstance(value, list):
        return f"{len(value)}" + (f": {', '.join(map(str, value[:5]))}" if value else "")
    if isinstance(value, tuple):
        return " / ".join(f"{v:.2f}" for v in value)
    return str(value)


FLEET_ROWS = (
    ("commits (sessions not under strace)", "commits_measured"),
    ("commit latency ms, p50 / p99 / max", "commit_latency_ms"),
    ("install -> on the store ms, p50 / p99 / max", "install_to_store_ms"),
    ("installs lost", "lost"),
    ("store syscalls per commit (strace sample)", "store_ops_per_commit"),
    ("... by call", "store_ops_per_commit_by_call"),
    ("store syscalls at a daemon's start", "store_ops_at_start_per_daemon"),
    (
        "store syscalls at a daemon's shutdown (check, read back)",
        "store_ops_at_shutdown_per_daemon",
    ),
    ("daemon CPU s, all, start to SIGTERM", "cpu_seconds_total"),
    ("daemon CPU ms after start, per daemon by kind", "cpu_ms_after_ready_by_kind"),
    ("RSS kB", "rss_kb"),
    ("exit codes", "exit_codes"),
    ("load average at the end (1 / 5 / 15 min)", "load_average"),
)
STORM_ROWS = (
    ("restores", "restores"),
    ("... with packages to restore", "with_packages"),
    ("restore --jitter s", "jitter_seconds"),
    ("restores reaching the store: first, last s; peak per second", "restores_reaching_the_store"),
    ("completion from the storm's start s, p50 / p99 / max", "completion_s"),
    ("... of restores with packages", "completion_with_packages_s"),
    ("store syscalls per restore (strace sample)", "store_ops_per_restore"),
    ("... by call", "store_ops_per_restore_by_call"),
    ("exit codes", "exit_codes"),
    ("packages not back", "not_restored"),
    ("load average at the end (1 / 5 / 15 min)", "load_average"),
)


def markdown(results: list[dict[str, object]], args: argparse.Namespace) -> list[str]:
    """The runs side by side, one table for the daemons and one for the storms."""
    here = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
        check=False, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    lines = [
        f"{when}, commit {here}: --n {args.n} --duration {args.duration:g} --quiet-ms "
        f"{args.quiet_ms} --latency-ms {args.latency_ms} --jitter {args.jitter:g} --seed "
        f"{args.seed}; store on /dev/shm"
    ]
    for rows, kind in ((FLEET_ROWS, "tmpfs latency"), (STORM_ROWS, "storm storm-jitter")):
        runs = [r for r in results if r["run"] in kind.split()]
        if not runs:
            continue
        lines += ["", "| | " + " | ".join(str(r["run"]) for r in runs) + " |"]
        lines.append("|---" * (len(runs) + 1) + "|")
        lines += [
            f"| {title} | " + " | ".join(_cell(r.get(key)) for r in runs) + " |"
            for title, key in rows
        ]
    return lines


if __name__ == "__main__":
    main()
