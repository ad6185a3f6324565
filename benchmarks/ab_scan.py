"""The Python scanner against an earlier commit's, alternating round by round in one process.

Single runs of bench_scan.py swing by ~30% from run to run on a shared 2-core VM, more
than a change to the scanner; alternating the two on one tree shows the change itself.

    python benchmarks/ab_scan.py REV [ROUNDS] [--markdown PATH] [--quick]

REV's `pkgckpt/scan/python.py` is taken with `git show` (its relative imports made
absolute, so it runs against this tree's manifest and errors). Prints min and median
wall time and median CPU time of a full scan and of a rescan whose directory changed
but holds nothing new (the listing plus one stat per entry), after checking that both
scanners return the same result.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

# This working tree's pkgckpt (not an installed one) and bench_scan's tree writer.
sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent))

import bench_kit
from bench_scan import COUNT, site_tree

from pkgckpt.scan import python as current


def earlier(rev: str, into: Path) -> ModuleType:
    source = subprocess.run(
        ["git", "show", f"{rev}:pkgckpt/scan/python.py"],
        check=True,
        capture_output=True,
        text=True,
        cwd=Path(__file__).parent,
    ).stdout
    source = source.replace("from ..", "from pkgckpt.").replace(
        "from . import", "from pkgckpt.scan import"
    )
    path = into / "earlier_scan.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("earlier_scan", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # msgspec resolves annotations through it
    spec.loader.exec_module(module)
    return module


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main(rev: str, rounds: int, markdown: Path | None) -> None:
    run = bench_kit.Run("scanner A/B")
    with site_tree("ab-scan-") as site:
        old = earlier(rev, site.parent)
        assert old.scan_site(site) == current.scan_site(site), "the scanners disagree"
        scanners = {"before": old.SiteScanner(site), "after": current.SiteScanner(site)}
        for scanner in scanners.values():
            scanner.scan()
        modules = {"before": old, "after": current}
        walls: dict[str, list[float]] = {}
        cpus: dict[str, list[float]] = {}
        stamp = site.stat().st_mtime_ns

        def timed(label: str, call: Callable[[], object]) -> None:
            wall, used = time.perf_counter(), cpu()
            call()
            walls.setdefault(label, []).append(time.perf_counter() - wall)
            cpus.setdefault(label, []).append(cpu() - used)

        for _ in range(rounds):
            for name, module in modules.items():
                timed(f"{name} ({rev if name == 'before' else 'this tree'}), full scan",
                      functools.partial(module.scan_site, site))  # fmt: skip
            for name, scanner in scanners.items():
                stamp += 1  # the directory "changed": listed, every entry stat'ed
                os.utime(site, ns=(stamp, stamp))
                timed(f"{name} ({rev if name == 'before' else 'this tree'}), rescan", scanner.scan)
    run.done()
    order = sorted(walls, key=lambda k: (k.endswith("rescan"), not k.startswith("before")))
    run.add(
        f"Scanner {rev} (before) against this tree (after), {COUNT} distributions, "
        f"{rounds} rounds, wall time\n\n" + bench_kit.table({k: walls[k] for k in order})
    )
    run.add("CPU time\n\n" + bench_kit.table({k: cpus[k] for k in order}))
    run.write(markdown)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rev", help="the commit whose scanner is compared with this tree's")
    parser.add_argument("rounds", type=int, nargs="?", default=20)
    parser.add_argument("--markdown", type=Path, help="write the tables here (run_all.py)")
    parser.add_argument("--quick", action="store_true", help="5 rounds")
    args = parser.parse_args()
    main(args.rev, 5 if args.quick else args.rounds, args.markdown)
