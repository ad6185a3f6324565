"""The Python scanner against an earlier commit's, alternating round by round in one process.

Single runs of bench_scan.py swing by ~30% from run to run on a shared 2-core VM, more
than a change to the scanner; alternating the two on one tree shows the change itself.

    python benchmarks/ab_scan.py REV [ROUNDS]

REV's `pkgckpt/scan/python.py` is taken with `git show` (its relative imports made
absolute, so it runs against this tree's manifest and errors). Prints min and median
wall time and median CPU time of a full scan and of a rescan whose directory changed
but holds nothing new (the listing plus one stat per entry), after checking that both
scanners return the same result.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

# This working tree's pkgckpt (not an installed one) and bench_scan's tree writer.
sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent))

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


def main(rev: str, rounds: int) -> None:
    with site_tree("ab-scan-") as site:
        old = earlier(rev, site.parent)
        assert old.scan_site(site) == current.scan_site(site), "the scanners disagree"
        scanners = {"before": old.SiteScanner(site), "after": current.SiteScanner(site)}
        for scanner in scanners.values():
            scanner.scan()
        modules = {"before": old, "after": current}
        times: dict[str, list[tuple[float, float]]] = {}
        stamp = site.stat().st_mtime_ns

        def timed(label: str, run: Callable[[], object]) -> None:
            wall, used = time.perf_counter(), cpu()
            run()
            times.setdefault(label, []).append((time.perf_counter() - wall, cpu() - used))

        for _ in range(rounds):
            for name, module in modules.items():
                timed(f"{name} full scan", functools.partial(module.scan_site, site))
            for name, scanner in scanners.items():
                stamp += 1  # the directory "changed": listed, every entry stat'ed
                os.utime(site, ns=(stamp, stamp))
                timed(f"{name} rescan", scanner.scan)
    print(f"{rev} (before) against {current.__file__} (after), {rounds} rounds, {COUNT} dists")
    for label in sorted(times, key=lambda k: (k.split()[1], k.split()[0] == "after")):
        walls = [w for w, _ in times[label]]
        cpus = [c for _, c in times[label]]
        print(
            f"{label:18s} wall min {1000 * min(walls):6.1f}  median "
            f"{1000 * statistics.median(walls):6.1f}  cpu median "
            f"{1000 * statistics.median(cpus):6.1f} ms"
        )


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 20)
