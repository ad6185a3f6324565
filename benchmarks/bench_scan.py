"""Scanning a site-packages of 3,000 distributions: pkgckpt beside `uv pip freeze`,
`pip freeze`, importlib.metadata and a bare loop, then pkgckpt's rescans.

    python benchmarks/bench_scan.py [--markdown PATH] [--quick]

The tree lives on tmpfs (/dev/shm), in the site-packages of a venv made for it, written
the way pip leaves it (METADATA with long headers and a description, INSTALLER, WHEEL,
RECORD, REQUESTED for a third, direct_url.json for a few, one import package each).
Contenders alternate round by round within each group (README.md's rules):

  baseline, whole process   `pkgckpt baseline --env VENV --output FILE` from pkgckpt's own
                            venv (installed, compiled), beside `uv pip freeze --python
                            VENV/bin/python` and `uv pip freeze --path SITE` (the
                            design-equivalent peer: list what is installed) and
                            `pip freeze --path SITE`; `python -c pass` for the floor.
                            pkgckpt's kept interpreter answer and uv's cache are warm
                            after the untimed first round, for both alike.
  full scan, in process     `scan_site` (nothing known: what `pkgckpt baseline` reads),
                            `SiteScanner(site, baseline)` (the first scan of the daemon,
                            restore and status), a bare scandir + METADATA loop,
                            importlib.metadata.
  rescan, in process        after one install told the names (the daemon's case), after
                            one install by identity, nothing changed.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_kit

from pkgckpt.scan.python import SiteScanner, scan_site

COUNT = 3000
UV = shutil.which("uv") or str(Path(sys.executable).with_name("uv"))
OLD_NS = 3600 * 10**9
FULL_MS = 30.0
"""Full scan, baseline known, in process (run_all.py's "scan-full")."""
RESCAN_MS = 1.0
"""Rescan after one install, told the names ("scan-rescan")."""
BASELINE_RATIO = 1.0
"""`pkgckpt baseline` over `uv pip freeze --python VENV`, whole process ("baseline-peer")."""


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


def age(path: Path) -> None:
    """Date `path` an hour back: what a scan sees once the install is over."""
    t = path.stat().st_mtime_ns - OLD_NS
    os.utime(path, ns=(t, t))


def bare_loop(site: Path) -> dict[str, str]:
    """The floor the issue quotes: list, open each METADATA, keep Name and Version."""
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


def importlib_names(site: Path) -> dict[str, str]:
    return {
        d.metadata["Name"]: d.version for d in importlib.metadata.distributions(path=[str(site)])
    }


def process(env: dict[str, str], *argv: str) -> Callable[[], None]:
    def run() -> None:
        subprocess.run(argv, check=True, capture_output=True, env=env, cwd=env["HOME"])

    return run


def baseline_group(
    run: bench_kit.Run, root: Path, rounds: int, markdown: Path | None = None
) -> None:
    """`pkgckpt baseline` of the venv's 3,000 distributions beside the freezes."""
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = next((venv / "lib").glob("python3*/site-packages"))
    for i in range(COUNT):
        write_dist(site, i)
    age(site)
    pkgckpt = bench_kit.pkgckpt_python(root)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "UV_", "PKGCKPT_"))}
    env.update(
        PIP_CONFIG_FILE=os.devnull,
        UV_NO_CONFIG="1",
        UV_CACHE_DIR=str(root / "uv-cache"),
        XDG_RUNTIME_DIR=str(root / "run"),
        XDG_CONFIG_HOME=str(root / "config"),
        PKGCKPT_DISCOVER="",
        # A working directory of the bench's own, for every contender.
        HOME=str(root),
    )
    # pkgckpt keeps its interpreter's answer in the runtime directory as uv keeps its own
    # in its cache: both warm after the untimed round.
    (root / "run").mkdir(mode=0o700)
    (root / "run" / "pkgckpt").mkdir(mode=0o700)
    out = root / "baseline.json"
    contenders = {
        "`python -c pass` (pkgckpt's venv)": process(env, str(pkgckpt), "-c", "pass"),
        "`uv pip freeze --python VENV`": process(
            env, UV, "pip", "freeze", "--python", str(venv / "bin" / "python")
        ),
        "`pkgckpt baseline --env VENV`": process(
            env, bench_kit.script(pkgckpt), "baseline", "--env", str(venv), "-o", str(out)
        ),
        "`uv pip freeze --path SITE`": process(env, UV, "pip", "freeze", "--path", str(site)),
        "`pip freeze --path SITE`": process(
            env, sys.executable, "-m", "pip", "freeze", "--path", str(site)
        ),
    }
    bench_kit.interleave(contenders, 1)
    assert f"{COUNT} packages" in subprocess.run(
        [bench_kit.script(pkgckpt), "baseline", "--env", str(venv), "-o", str(out)],
        check=True, capture_output=True, text=True, env=env,
    ).stdout  # fmt: skip
    cpu: dict[str, list[float]] = {}
    times = bench_kit.interleave(contenders, rounds, cpu=cpu)

    def target(label: str, ratio: float, extra_ms: float) -> str:
        del extra_ms
        if not label.startswith("`pkgckpt"):
            return ""
        return "met" if ratio <= BASELINE_RATIO else f"**not met** (≤ {BASELINE_RATIO}x)"

    peer = "`uv pip freeze --python VENV`"
    run.add(
        f"**baseline, whole process**, {COUNT} distributions, {rounds} rounds\n\n"
        + bench_kit.table(times, cpu=cpu, peer=peer, target=target)
    )
    label = "`pkgckpt baseline --env VENV`"
    got = bench_kit.versus(times, label, peer, cpu)
    met = target(label, got.ratio, got.extra_ms) == "met"
    bench_kit.verdict(markdown, "baseline-peer", got.text, met)


def scan_group(run: bench_kit.Run, site: Path, rounds: int, markdown: Path | None = None) -> None:
    full = scan_site(site)
    assert len(full.packages) == COUNT
    known = "pkgckpt, baseline known (`SiteScanner(site, baseline)`)"
    contenders: dict[str, Callable[[], object]] = {
        "pkgckpt, nothing known (`scan_site`: `pkgckpt baseline`)": lambda: scan_site(site),
        known: lambda: SiteScanner(site, full.packages).scan(),
        "bare scandir + METADATA Name/Version loop": lambda: bare_loop(site),
        "importlib.metadata Name + version": lambda: importlib_names(site),
    }
    times = bench_kit.interleave(contenders, rounds)
    run.add(
        f"**full scan, in process**, {COUNT} distributions, {rounds} rounds\n\n"
        + bench_kit.table(times, first="scan")
    )
    mid = statistics.median(times[known])
    text = f"{bench_kit.min_median(times[known])} (min / median), baseline known"
    bench_kit.verdict(markdown, "scan-full", text, mid * 1000 <= FULL_MS)


def rescan_group(run: bench_kit.Run, site: Path, rounds: int, markdown: Path | None = None) -> None:
    times: dict[str, list[float]] = {}
    for told in (True, False):
        scanner = SiteScanner(site)
        scanner.scan()
        label = "after one install, told the names" if told else "after one install, by identity"
        made = []
        try:
            for n in range(rounds):
                info = write_dist(site, COUNT + n)
                made.append(info)
                names = {info.name, info.name.split("-")[0]} if told else None
                start = time.perf_counter()
                scanner.scan(names)
                times.setdefault(label, []).append(time.perf_counter() - start)
                assert scanner.reads == 1
        finally:
            for info in made:
                shutil.rmtree(info)
                shutil.rmtree(site / info.name.split("-")[0])
    age(site)
    scanner = SiteScanner(site)
    scanner.scan()
    for _ in range(rounds):
        start = time.perf_counter()
        scanner.scan()
        times.setdefault("nothing changed", []).append(time.perf_counter() - start)
    assert scanner.reads == 0
    run.add(
        f"**rescan, in process**, {COUNT} distributions, {rounds} rounds\n\n"
        + bench_kit.table(times, first="rescan")
    )
    named = times["after one install, told the names"]
    text = f"{bench_kit.min_median(named)} (min / median), told the names"
    bench_kit.verdict(markdown, "scan-rescan", text, statistics.median(named) * 1000 <= RESCAN_MS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--markdown", type=Path, help="write the tables here (run_all.py)")
    parser.add_argument("--quick", action="store_true", help="fewer rounds")
    args = parser.parse_args()
    run = bench_kit.Run("scan")
    root = Path(tempfile.mkdtemp(prefix="bench-scan-", dir="/dev/shm"))
    try:
        baseline_group(run, root, 5 if args.quick else 15, args.markdown)
        with site_tree("bench-scan-") as site:
            scan_group(run, site, 3 if args.quick else 10, args.markdown)
            rescan_group(run, site, 10 if args.quick else 30, args.markdown)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    run.done()
    uv = subprocess.run([UV, "--version"], capture_output=True, text=True).stdout.strip()
    run.add(f"Peers: {uv} (warm cache, no config); pip {importlib.metadata.version('pip')}.")
    run.write(args.markdown)


if __name__ == "__main__":
    main()
