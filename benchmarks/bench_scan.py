"""Scanning a site-packages of 3,000 distributions: pkgckpt beside importlib.metadata,
`pip freeze --path` and `uv pip freeze --path`, plus pkgckpt's rescan after one install.

Run (see benchmarks/RESULTS.md for figures):

    python -m pytest benchmarks/bench_scan.py --benchmark-enable \\
        --benchmark-columns=min,median,mean,max,rounds --benchmark-sort=name

The tree lives on tmpfs (/dev/shm) so that disk caches do not decide the result; it is
written the way pip leaves it (METADATA with long headers and a description, INSTALLER,
WHEEL, RECORD, REQUESTED for a third, direct_url.json for a few, one import package
each). The peers that run as processes are timed by wall clock, and their CPU time
(user + system, from RUSAGE_CHILDREN) is put in `extra_info["cpu_ms"]`.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from pkgckpt.scan import ScanResult
from pkgckpt.scan.python import SiteScanner, scan_site

COUNT = 3000
OLD_NS = 3600 * 10**9


def write_dist(site: Path, i: int) -> Path:
    name, version = f"pkg-{i:05d}", f"1.{i % 7}.{i % 13}"
    info = site / f"pkg_{i:05d}-{version}.dist-info"
    info.mkdir()
    headers = [
        "Metadata-Version: 2.1",
        f"Name: {name}",
        f"Version: {version}",
        "Summary: a package of the benchmark",
        *(f"Classifier: Programming Language :: Python :: 3.{j}" for j in range(15)),
        *(f"Requires-Dist: pkg-{(i + j) % COUNT:05d}" for j in range(1, 6)),
    ]
    body = "A long description.\n" * 150
    (info / "METADATA").write_text("\n".join(headers) + "\n\n" + body)
    (info / "INSTALLER").write_text("pip\n")
    (info / "WHEEL").write_text(
        "Wheel-Version: 1.0\nGenerator: bench\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    )
    (info / "RECORD").write_text(f"pkg_{i:05d}/__init__.py,,\n{info.name}/RECORD,,\n")
    if i % 3 == 0:
        (info / "REQUESTED").write_text("")
    if i % 100 == 0:
        url = {"url": f"https://example.org/{name}.whl", "archive_info": {"hash": "sha256=00"}}
        (info / "direct_url.json").write_text(json.dumps(url))
    module = site / f"pkg_{i:05d}"
    module.mkdir()
    (module / "__init__.py").write_text("")
    age(info)
    return info


@contextlib.contextmanager
def site_tree(prefix: str) -> Iterator[Path]:
    """A site-packages of COUNT dists, aged, on tmpfs when there is one; removed after."""
    base = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
    with tempfile.TemporaryDirectory(dir=base, prefix=prefix) as tmp:
        root = Path(tmp) / "site-packages"
        root.mkdir()
        for i in range(COUNT):
            write_dist(root, i)
        age(root)
        yield root


@pytest.fixture(scope="module")
def site() -> Iterator[Path]:
    with site_tree("bench-scan-") as root:
        yield root


def age(path: Path) -> None:
    """Date `path` an hour back: what a scan sees once the install is over."""
    t = path.stat().st_mtime_ns - OLD_NS
    os.utime(path, ns=(t, t))


def with_cpu(benchmark: BenchmarkFixture, run: Callable[..., object]) -> Callable[..., object]:
    """`run`, with the CPU time it costs (this process and its children: user + system)
    averaged into `extra_info["cpu_ms"]`: wall time on a shared machine includes waiting."""
    totals = {"cpu": 0.0, "calls": 0}

    def cpu() -> float:
        me = resource.getrusage(resource.RUSAGE_SELF)
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime

    def timed(*args: object) -> object:
        before = cpu()
        result = run(*args)
        totals["cpu"] += cpu() - before
        totals["calls"] += 1
        benchmark.extra_info["cpu_ms"] = round(1000 * totals["cpu"] / totals["calls"], 2)
        return result

    return timed


def process(*cmd: str) -> Callable[[], object]:
    def run() -> object:
        return subprocess.run(cmd, check=True, capture_output=True)

    return run


# -- full scan: ours and the peers on the same tree ------------------------------------


@pytest.mark.benchmark(group="full scan, 3000 dists")
def test_pkgckpt_in_process(benchmark: BenchmarkFixture, site: Path) -> None:
    """No baseline to go by (`pkgckpt baseline` itself): every file of every entry read."""
    result = benchmark(with_cpu(benchmark, lambda: scan_site(site)))
    assert len(result.packages) == COUNT


@pytest.mark.benchmark(group="full scan, 3000 dists")
def test_pkgckpt_baseline_known_in_process(benchmark: BenchmarkFixture, site: Path) -> None:
    """The daemon's, restore's and status's first scan: the baseline lists these packages
    (a fresh scanner each round, as each of those processes starts with)."""
    full = scan_site(site)

    def scan() -> ScanResult:
        return SiteScanner(site, full.packages).scan()

    result = benchmark(with_cpu(benchmark, scan))
    assert result == full


@pytest.mark.benchmark(group="full scan, 3000 dists")
def test_importlib_metadata_in_process(benchmark: BenchmarkFixture, site: Path) -> None:
    def names() -> dict[str, str]:
        return {
            d.metadata["Name"]: d.version
            for d in importlib.metadata.distributions(path=[str(site)])
        }

    assert len(benchmark(with_cpu(benchmark, names))) == COUNT


@pytest.mark.benchmark(group="full scan, 3000 dists")
def test_bare_metadata_loop_in_process(benchmark: BenchmarkFixture, site: Path) -> None:
    """The floor the issue quotes: list, open each METADATA, keep Name and Version."""

    def loop() -> dict[str, str]:
        found = {}
        with os.scandir(site) as it:
            for entry in it:
                if entry.name.endswith(".dist-info"):
                    with open(f"{entry.path}/METADATA", "rb") as f:
                        head = f.read(4096).split(b"\n\n", 1)[0].split(b"\n")
                    name = next(h[6:] for h in head if h.startswith(b"Name: "))
                    version = next(h[9:] for h in head if h.startswith(b"Version: "))
                    found[name.decode()] = version.decode()
        return found

    assert len(benchmark(with_cpu(benchmark, loop))) == COUNT


@pytest.mark.benchmark(group="full scan, 3000 dists")
def test_pkgckpt_process(benchmark: BenchmarkFixture, site: Path) -> None:
    code = "import sys; from pathlib import Path; from pkgckpt.scan.python import scan_site; "
    code += "sys.exit(len(scan_site(Path(sys.argv[1])).packages) != 3000)"
    benchmark.pedantic(
        with_cpu(benchmark, process(sys.executable, "-c", code, str(site))), rounds=5
    )


@pytest.mark.benchmark(group="full scan, 3000 dists")
def test_pip_freeze_path_process(benchmark: BenchmarkFixture, site: Path) -> None:
    run = process(
        sys.executable, "-m", "pip", "freeze", "--disable-pip-version-check", "--path", str(site)
    )
    benchmark.pedantic(with_cpu(benchmark, run), rounds=3)


@pytest.mark.benchmark(group="full scan, 3000 dists")
def test_uv_pip_freeze_path_process(benchmark: BenchmarkFixture, site: Path) -> None:
    uv = shutil.which("uv")
    if uv is None:
        pytest.skip("uv is not installed")
    run = process(uv, "pip", "freeze", "--no-config", "--path", str(site))
    benchmark.pedantic(with_cpu(benchmark, run), rounds=5)


# -- incremental: what the daemon pays after an install --------------------------------


@pytest.mark.benchmark(group="rescan, 3000 dists")
@pytest.mark.parametrize("told", [True, False], ids=["names from events", "by identity"])
def test_rescan_after_one_install(benchmark: BenchmarkFixture, site: Path, told: bool) -> None:
    """One new dist-info (and its import package) per round, only the new one read. Told
    the names, as the daemon is by its watcher, the scan looks at those two entries; by
    identity (after an overflow, say), the directory changed, so every entry is stat'ed."""
    scanner = SiteScanner(site)
    scanner.scan()
    made: list[Path] = []
    counter = iter(range(COUNT, COUNT + 10_000))
    reads: list[int] = []

    def install() -> tuple[tuple[set[str] | None], dict[str, object]]:
        info = write_dist(site, next(counter))
        made.append(info)
        return ({info.name, info.name.split("-")[0]} if told else None,), {}

    def rescan(changed: set[str] | None) -> object:
        result = scanner.scan(changed)
        reads.append(scanner.reads)
        return result

    try:
        result = benchmark.pedantic(with_cpu(benchmark, rescan), setup=install, rounds=30)
        assert len(result.packages) == COUNT + len(made)
        assert set(reads) == {1}
    finally:
        for info in made:
            shutil.rmtree(info)
            shutil.rmtree(site / info.name.split("-")[0])


@pytest.mark.benchmark(group="rescan, 3000 dists")
def test_rescan_nothing_changed(benchmark: BenchmarkFixture, site: Path) -> None:
    """No entry added or removed (the directory's identity holds): nothing is listed or read."""
    age(site)
    scanner = SiteScanner(site)
    scanner.scan()
    benchmark(with_cpu(benchmark, scanner.scan))
    assert scanner.reads == 0
