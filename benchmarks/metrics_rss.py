"""Idle RSS of the real `pkgckpt daemon` process, beside a bare Python and the minimal
daemon of bench_daemon.py, and what the metrics writer adds:

    python benchmarks/metrics_rss.py [--rounds 5] [--python PY] [--markdown PATH]

  bare         `python -c` sleeping: the interpreter alone, from the same venv
  minimal      the design-equivalent daemon of bench_daemon.py (inotify_simple, durable
               JSON) watching the same kind of venv
  none         `pkgckpt daemon` watching a venv on /dev/shm, no metrics file
  ours         the same with --metrics-file PATH (the writer in pkgckpt/metrics.py)
  client       the same daemon with prometheus_client's exposition loaded, as a lazy
               import would leave it after the first write (a registry, a gauge and
               generate_latest() run once by a `sitecustomize` on PYTHONPATH, so in the
               daemon's own process too)

Every process runs from one venv where pkgckpt is installed by `pip install .` (not
editable) with bytecode compiled (`--python` names one, else one is built for the run),
with its own directory as the working directory. Rounds are interleaved (bare, minimal,
none, ours, client, bare, ...); VmRSS (/proc/PID/status) one second after the daemon said
it is watching (and wrote its metrics file); min and median in kB, with the load average
before and after. Then where the daemon's resident memory is, by mapping (smaps), against
the bare interpreter's.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

from bench_daemon import MINIMAL  # noqa: E402
from bench_kit import commit, load, python_for_run, stamp, verdict  # noqa: E402
from daemon_kit import World, eventually  # noqa: E402
from wheelhouse import make_venv  # noqa: E402

# Run by the `sitecustomize` of the client kind: at the start of every interpreter, so in
# the daemon's own process too (`pkgckpt daemon` execs a fresh one, see pkgckpt/handoff.py).
CLIENT = (
    "import prometheus_client as p; r = p.CollectorRegistry(); "
    "p.Gauge('x', 'x', registry=r).set(1); p.generate_latest(r)\n"
)
KINDS = ("bare", "minimal", "none", "ours", "client")
# Targets (issues 2, 12 and 15), by the medians: the idle daemon's RSS, and what the
# metrics writer adds to it. VmRSS counts KiB ("kB"); a memory "MB" is read as MiB, as
# free(1) and top(1) print it, and the figure in SI megabytes is shown beside it for a
# reader who takes the stricter reading.
KIB_PER_MIB = 1024
DAEMON_TARGET_KIB = 16 * KIB_PER_MIB
WRITER_TARGET_KIB = 1 * KIB_PER_MIB


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def by_mapping(pid: int) -> dict[str, int]:
    """Resident kB per mapped file ("[anon]", "[heap]", ... for the rest), from smaps."""
    found: dict[str, int] = {}
    name = "[anon]"
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        fields = line.split()
        if fields and not fields[0].endswith(":"):  # a mapping's header line
            name = fields[5] if len(fields) > 5 else "[anon]"
        elif fields and fields[0] == "Rss:":
            found[name] = found.get(name, 0) + int(fields[1])
    return found


def one(python: Path, kind: str, base: Path) -> tuple[int, dict[str, int]]:
    base.mkdir()
    world = World.make(base)
    venv = make_venv(base / "venv", with_pip=False)
    prom = base / "k.prom"
    if kind == "bare":
        cmd = [str(python), "-c", "import time; time.sleep(3600)"]
    elif kind == "minimal":
        cmd = [str(python), "-c", MINIMAL, str(venv.site_packages), str(base / "out.json"), "300"]
    else:
        args = [*world.flags(venv.prefix), "--quiet-ms", "50"]
        if kind != "none":
            args += ["--metrics-file", str(prom)]
        cmd = [str(python), "-m", "pkgckpt", "daemon", *args]
    env = world.env
    if kind == "client":
        (base / "hooks").mkdir()
        (base / "hooks" / "sitecustomize.py").write_text(CLIENT)
        env = {**env, "PYTHONPATH": str(base / "hooks")}
    proc = subprocess.Popen(
        cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env=env, cwd=base,
    )  # fmt: skip
    try:
        if kind in ("none", "ours", "client"):
            status = world.status_file
            eventually(lambda: status.exists() and '"watching"' in status.read_text(), 60, "ready")
            if kind != "none":
                eventually(prom.exists, 10, "metrics file")
        time.sleep(1.0)  # idle
        return rss_kb(proc.pid), by_mapping(proc.pid)
    finally:
        proc.terminate()
        proc.wait(30)


def where(daemon: dict[str, int], bare: dict[str, int]) -> list[str]:
    """The daemon's resident kB above the bare interpreter's, by mapping, largest first."""
    groups: dict[str, int] = {}
    for name in daemon.keys() | bare.keys():
        extra = daemon.get(name, 0) - bare.get(name, 0)
        if name in ("[anon]", "[heap]"):
            label = "Python objects (anonymous memory and heap)"
        elif "libcrypto" in name:
            label = "OpenSSL's libcrypto (hashlib's sha256, loaded by `import hashlib`)"
        elif "libpython" in name:
            label = "libpython (pages of the interpreter touched)"
        elif name.endswith(".so") or ".so." in name:
            where_ = Path(name)
            owner = f"{where_.parent.name}/" if "site-packages" in name else ""
            label = f"extension `{owner}{where_.name.split('.')[0]}`"
        else:
            label = "other"
        groups[label] = groups.get(label, 0) + extra
    small = sum(v for k, v in groups.items() if k.startswith("extension") and v < 100)
    rows = [(k, v) for k, v in groups.items() if not (k.startswith("extension") and v < 100)]
    rows.append(("other extension modules (< 100 kB each)", small))
    rows.sort(key=lambda kv: -kv[1])
    return [f"| {label} | {kb:+,} kB |" for label, kb in rows if kb]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--python", help="a venv's python with pkgckpt installed (not editable)")
    parser.add_argument("--markdown", help="write the tables to this file")
    args = parser.parse_args()
    found: dict[str, list[int]] = {kind: [] for kind in KINDS}
    maps: dict[str, dict[str, int]] = {}
    load_before = load()
    with (
        python_for_run(args.python, ["prometheus_client"], "rss") as python,
        tempfile.TemporaryDirectory(dir="/dev/shm") as tmp,
    ):
        for r in range(args.rounds):
            for kind in KINDS:
                kb, maps[kind] = one(python, kind, Path(tmp) / f"{kind}-{r}")
                found[kind].append(kb)
    load_after = load()
    labels = {
        "bare": "bare `python -c` (the same venv)",
        "minimal": "minimal non-recursive daemon (design-equivalent, bench_daemon.py)",
        "none": "**`pkgckpt daemon`**, no metrics file",
        "ours": "`pkgckpt daemon --metrics-file` (pkgckpt's writer)",
        "client": "the same with prometheus_client's exposition loaded",
    }
    lines = [
        f"{stamp()}, commit {commit()}, {args.rounds} rounds interleaved, on /dev/shm; "
        f"load average {load_before} before, {load_after} after.",
        "",
        "| idle process, VmRSS | min | median |",
        "|---|---|---|",
    ]
    for kind in KINDS:
        values = found[kind]
        lines.append(
            f"| {labels[kind]} | {min(values):,} kB | {statistics.median(values):,.0f} kB |"
        )
    lines += [
        "",
        "| where `pkgckpt daemon`'s RSS above the bare interpreter is (smaps, last round) | kB |",
        "|---|---|",
        *where(maps["none"], maps["bare"]),
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text)
        verdicts(args.markdown, found)


def verdicts(markdown: str, found: dict[str, list[int]]) -> None:
    """The targets of run_all.py's table, from the medians the table shows."""
    daemon, ours, client = (statistics.median(found[kind]) for kind in ("none", "ours", "client"))
    verdict(
        markdown,
        "daemon-rss",
        f"{min(found['none']):,} / {daemon:,.0f} KiB (min / median): "
        f"{daemon / KIB_PER_MIB:.2f} MiB, {daemon * 1024 / 1e6:.2f} MB in SI units",
        daemon <= DAEMON_TARGET_KIB,
    )
    verdict(
        markdown,
        "metrics-writer",
        f"{ours - daemon:+,.0f} KiB by the median ({ours:,.0f} vs {daemon:,.0f} KiB without a "
        f"metrics file); prometheus_client's exposition {client - daemon:+,.0f} KiB",
        ours - daemon <= WRITER_TARGET_KIB,
    )


if __name__ == "__main__":
    main()
