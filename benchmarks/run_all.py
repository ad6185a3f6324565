"""Regenerate every figure of RESULTS.md, under README.md's rules, with one command.

    python benchmarks/run_all.py [--only NAME ...] [--quick] [--before REV] [--list]

Prints the date, the commit (`git rev-parse --short HEAD`) and the load average; for each
bench, installs pkgckpt as a user gets it (`pip install .`, not editable, bytecode
compiled) into a fresh venv under /dev/shm, so that no bench's peers (installed into it
beside pkgckpt) reach another's figures, and names its interpreter to the bench in
PKGCKPT_BENCH_PYTHON (the whole-process figures run it); runs the bench as a subprocess with
`--markdown PATH` and puts what it wrote into RESULTS.md between
`<!-- table:NAME -->` and `<!-- /table:NAME -->`. No figure is copied by hand; a result
that misses its target stays in its table, marked by the bench.

A bench whose source does not offer `--markdown` yet is skipped with the reason printed,
as is one that needs `--before REV` (the A/B benches) when it is not given (ab_rebase.py
runs without it, leaving out its earlier commit's row), and one whose
file does not exist. A bench that fails leaves its table as it was and makes the exit
status 1. `--quick` passes `--quick` (fewer rounds) to the benches that take it.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_kit  # noqa: E402

RESULTS = HERE / "RESULTS.md"


@dataclass(frozen=True)
class Bench:
    name: str
    """The table's name in RESULTS.md's markers."""
    file: str
    args: tuple[str, ...] = ()
    ab: bool = False
    """Takes the commit to compare with as its first argument (`--before`)."""
    before_optional: bool = False
    """Runs without `--before`; given it, takes it as its first argument too."""


BENCHES = (
    # restore, no-op, scan and R (issue 15: restore, no-op and baseline targets)
    Bench("restore", "bench_restore.py"),
    Bench("restore-noop-ab", "ab_restore_noop.py", ab=True),
    Bench("scan", "bench_scan.py"),
    Bench("scan-ab", "ab_scan.py", ab=True),
    Bench("r", "bench_r.py"),
    # restore onto a new image (issue 10)
    Bench("rebase-ab", "ab_rebase.py", ab=True, before_optional=True),
    # the artifact cache (issue 11)
    Bench("artifacts", "ab_artifacts.py", ab=True, before_optional=True),
    Bench("r-artifacts", "ab_r_artifacts.py"),
    Bench("capture-latency", "ab_capture_latency.py"),
    # watcher, daemon, idle RSS (issue 15: watcher, daemon and RSS targets)
    # The ratio to the design peer sits near 1.0 on a shared machine: more rounds than the
    # default; the idle minute keeps "0 wake-ups when nothing changes" in the table.
    Bench("watch", "bench_watch.py", ("--rounds", "15", "--idle", "60")),
    Bench("daemon", "bench_daemon.py"),
    Bench("metrics-rss", "metrics_rss.py"),
    # the store (issues 3, 9, 12)
    Bench("store", "bench_store.py"),
    Bench("commit-ab", "ab_commit.py", ab=True),
    Bench("fleet", "fleet.py"),
)


def header() -> str:
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    return f"{when}, commit {bench_kit.commit()}, load average {bench_kit.load()}"


def command(bench: Bench, out: Path, quick: bool, before: str | None) -> list[str] | str:
    """The argv that runs `bench`, or why it cannot run."""
    path = HERE / bench.file
    if not path.exists():
        return f"{bench.file} does not exist"
    source = path.read_text()
    if "--markdown" not in source:
        return f"{bench.file} has no --markdown option yet"
    if bench.ab and before is None and not bench.before_optional:
        return "an A/B bench: give --before REV"
    extra = (*bench.args, *(("--quick",) if quick and "--quick" in source else ()))
    if 'if __name__ == "__main__":' in source:
        argv = [sys.executable, str(path)]
        if bench.ab and before is not None:
            argv.append(before)
        return [*argv, *extra, "--markdown", str(out)]
    # A pytest-benchmark file: its --markdown comes from benchmarks' conftest.py.
    pytest = [sys.executable, "-m", "pytest", str(path), "--benchmark-enable", "-q", "-s"]
    return [*pytest, "-p", "no:cacheprovider", *extra, "--markdown", str(out)]


def replace_table(text: str, name: str, table: str) -> str | None:
    """`text` with the block between NAME's markers replaced; None without the markers."""
    start, end = f"<!-- table:{name} -->", f"<!-- /table:{name} -->"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    if pattern.search(text) is None:
        return None
    return pattern.sub(lambda _: f"{start}\n{table.strip()}\n{end}", text, count=1)


def write_results(text: str) -> None:
    tmp = RESULTS.with_name(f".{RESULTS.name}.{os.getpid()}")
    tmp.write_text(text)
    tmp.replace(RESULTS)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", metavar="NAME", help="this bench; repeatable")
    parser.add_argument("--quick", action="store_true", help="fewer rounds, where supported")
    parser.add_argument("--before", metavar="REV", help="the commit the A/B benches compare")
    parser.add_argument("--list", action="store_true", help="list the benches and exit")
    args = parser.parse_args()
    names = [b.name for b in BENCHES]
    if args.list:
        for b in BENCHES:
            print(f"{b.name:16s} benchmarks/{b.file}")
        return 0
    unknown = set(args.only or ()) - set(names)
    if unknown:
        parser.error(f"unknown bench {', '.join(sorted(unknown))}; known: {', '.join(names)}")
    chosen = [b for b in BENCHES if not args.only or b.name in args.only]
    print(f"run_all: {header()}", flush=True)
    scratch = Path(tempfile.mkdtemp(prefix="pkgckpt-run-all-", dir="/dev/shm"))
    failed = False
    try:
        # As an activated venv would: the uv installed beside this interpreter is the one
        # `pkgckpt restore --installer uv` finds on PATH. Not the realpath's directory,
        # which is the base interpreter's.
        bindir = str(Path(sys.executable).parent)
        path = os.pathsep.join([bindir, os.environ.get("PATH", "")])
        for bench in chosen:
            out = scratch / f"{bench.name}.md"
            argv = command(bench, out, args.quick, args.before)
            if isinstance(argv, str):
                print(f"run_all: skip {bench.name}: {argv}", flush=True)
                continue
            # A venv of its own for each bench: the peers one bench installs beside
            # pkgckpt must not reach another's figures (msgspec, for one, imports
            # typing_extensions when it is there: +0.4 MB on the idle daemon).
            python = bench_kit.install(scratch / f"venv-{bench.name}")
            print(f"run_all: pkgckpt installed (pip install ., compiled) in {python}", flush=True)
            env = {**os.environ, bench_kit.ENV_PYTHON: str(python), "PATH": path}
            print(f"run_all: {bench.name}: {' '.join(argv)}", flush=True)
            began = time.monotonic()
            # Not the checkout: there `python -m pkgckpt` would import its source.
            done = subprocess.run(argv, env=env, cwd=scratch)
            took = time.monotonic() - began
            if done.returncode != 0 or not out.exists():
                print(
                    f"run_all: {bench.name} FAILED (exit {done.returncode}, {took:.0f} s); "
                    "its table is left as it was",
                    flush=True,
                )
                failed = True
                continue
            text = replace_table(RESULTS.read_text(), bench.name, out.read_text())
            if text is None:
                print(
                    f"run_all: {bench.name}: RESULTS.md has no <!-- table:{bench.name} --> "
                    f"markers; what it wrote:\n{out.read_text()}",
                    flush=True,
                )
                continue
            write_results(text)
            print(f"run_all: {bench.name} done in {took:.0f} s; RESULTS.md updated", flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        print(f"run_all: end {header()}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
