"""What the metrics writer costs the idle daemon: VmRSS of the real `pkgckpt daemon`
process, watching a venv, once its metrics file is written and it has gone idle.

    python benchmarks/metrics_rss.py [--rounds 5]

  ours         pkgckpt daemon --metrics-file PATH (the writer in pkgckpt/metrics.py)
  client       the same daemon with prometheus_client's exposition loaded, as a lazy
               import would leave it after the first write (a registry, a gauge and
               generate_latest() run once in the daemon's process before it starts)
  none         the same daemon without --metrics-file

Rounds are interleaved (none, ours, client, none, ...); the figures are min and median
in kB, with the load average before and after.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pkgckpt

REPO = Path(pkgckpt.__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from daemon_kit import World, eventually  # noqa: E402
from wheelhouse import make_venv  # noqa: E402

CLIENT = (
    "import prometheus_client as p; r = p.CollectorRegistry(); "
    "p.Gauge('x', 'x', registry=r).set(1); p.generate_latest(r); "
    "import sys; from pkgckpt.cli import main; sys.argv[0] = 'pkgckpt'; main()"
)


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def one(kind: str, base: Path) -> int:
    world = World.make(base)
    venv = make_venv(base / "venv", with_pip=False)
    prom = base / "k.prom"
    args = [*world.flags(venv.prefix), "--quiet-ms", "50"]
    if kind != "none":
        args += ["--metrics-file", str(prom)]
    head = ["-c", CLIENT] if kind == "client" else ["-m", "pkgckpt"]
    proc = subprocess.Popen(
        [sys.executable, *head, "daemon", *args],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env=world.env,
    )  # fmt: skip
    try:
        status = world.status_file
        eventually(lambda: status.exists() and '"watching"' in status.read_text(), 60, "ready")
        if kind != "none":
            eventually(prom.exists, 10, "metrics file")
        time.sleep(1.0)  # idle
        return rss_kb(proc.pid)
    finally:
        proc.terminate()
        proc.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    rounds = parser.parse_args().rounds
    found: dict[str, list[int]] = {"none": [], "ours": [], "client": []}
    print(f"load average before: {os.getloadavg()}")
    with tempfile.TemporaryDirectory(dir="/dev/shm") as tmp:
        for r in range(rounds):
            for kind in found:
                found[kind].append(one(kind, Path(tmp) / f"{kind}-{r}"))
    print(f"load average after: {os.getloadavg()}")
    for kind, values in found.items():
        print(f"{kind:7} VmRSS kB  min {min(values)}  median {statistics.median(values)}  {values}")


if __name__ == "__main__":
    main()
