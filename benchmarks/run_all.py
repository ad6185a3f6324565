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

The table of targets (`<!-- table:targets -->`) is rendered from TARGETS below and what
each bench said of its targets (`bench_kit.verdict`), kept in targets.json beside
RESULTS.md with the commit and the date of the run that measured it: a run of some benches
(`--only`) updates their rows and leaves the others', each still naming its own run.

A bench whose source does not offer `--markdown` yet is skipped with the reason printed,
as is one that needs `--before REV` (the A/B benches) when it is not given (ab_rebase.py
runs without it, leaving out its earlier commit's row), and one whose
file does not exist. A bench that fails leaves its table as it was and makes the exit
status 1. `--quick` passes `--quick` (fewer rounds) to the benches that take it.
"""

from __future__ import annotations

import argparse
import json
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
VERDICTS = HERE / "targets.json"


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
    # The same-image row asks "no regression" (≤ 1.05x), which 10 rounds on a shared
    # machine cannot tell from noise.
    Bench("rebase-ab", "ab_rebase.py", ("--rounds", "20"), ab=True, before_optional=True),
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


@dataclass(frozen=True)
class Target:
    key: str
    """What a bench names in `bench_kit.verdict`."""
    bench: str
    issues: str
    text: str
    floor: str = ""
    """Why it is not met, where a profile showed a floor; shown only when it is not."""


_START_UP = (
    "the restore command's start-up: the interpreter with msgspec, which decodes and "
    "validates what the store holds, and the modules that start the installer clean; see "
    '"Where the time goes"'
)
TARGETS = (
    Target(
        "watch-burst",
        "watch",
        "2",
        "watcher CPU for a 20,000-file `pip install` burst ≤ 5 ms, install and RECORD seen",
    ),
    Target(
        "watch-peer",
        "watch",
        "15",
        "watcher CPU over the burst vs the design-equivalent "
        "non-recursive inotify_simple watcher ≤ 1.0x",
    ),
    Target("watch-idle", "watch", "2", "idle wake-ups over 60 s = 0"),
    Target(
        "daemon-rss",
        "metrics-rss",
        "2, 15",
        "idle RSS of the real `pkgckpt daemon` ≤ 16 MB, read as MiB (issue 2: ≤ 20 MB)",
    ),
    Target(
        "metrics-writer",
        "metrics-rss",
        "12",
        "metrics writer ≤ 1 MB RSS on the idle daemon, else not prometheus_client",
    ),
    Target(
        "daemon-latency", "daemon", "4", "installer exit → manifest on disk ≤ quiet window + 50 ms"
    ),
    Target("daemon-cpu", "daemon", "4", "daemon CPU over a 20,000-file install ≤ 60 ms"),
    Target(
        "daemon-peer",
        "daemon",
        "15",
        "`pkgckpt daemon` CPU over a 20,000-file install vs "
        "the minimal non-recursive daemon ≤ 1.5x",
        "the durable merged commit with its generation, and the scan of the metadata the "
        "manifest records (2.75x at 1f52eb6), and a fresh daemon's first install's share of "
        "the validation (its import, two patterns compiled) and six status writes; see "
        '"`pkgckpt daemon` CPU over an install"',
    ),
    Target(
        "scan-full",
        "scan",
        "3",
        "full scan of 3,000 distributions ≤ 30 ms in-process, the baseline known",
    ),
    Target("scan-rescan", "scan", "3", "rescan after one install ≤ 1 ms"),
    Target(
        "baseline-peer",
        "scan",
        "15",
        "`pkgckpt baseline` of 3,000 distributions, whole process, ≤ 1.0x `uv pip freeze`",
        "it reads three files and looks for three more per dist-info where uv reads the "
        "directory's names, and the same start-up",
    ),
    Target(
        "commit-1ms",
        "store",
        "3",
        "durable commit of a 200 KB manifest ≤ 1 ms on local disk",
        "one durable write (`atomic_write`) costs what the bare recipe does; a commit makes "
        "two (the manifest and its generation's copy, issue 9) after encoding the manifest",
    ),
    Target(
        "commit-disk",
        "commit-ab",
        "9, 15",
        "`Store.commit` of 200 KB ≤ 1.3x the bare durable recipe for the same files, on disk",
    ),
    Target(
        "commit-tmpfs",
        "commit-ab",
        "15",
        "the same on tmpfs",
        'the whole-file checksum and the merge check; see "The commit\'s floor"',
    ),
    Target("noop-150", "restore", "4", "no-op restore ≤ 150 ms, 100-package manifest"),
    Target(
        "noop-peer",
        "restore",
        "15",
        "no-op restore, 100 packages, ≤ 2.5x `python -c pass` from the same venv",
        "msgspec, which decodes and validates the manifest, is 2.5-2.8x `python -c pass` "
        'on its own; see "Where the time goes"',
    ),
    Target(
        "restore-uv",
        "restore",
        "4, 15",
        "restore overhead ≤ + 25 ms over `uv pip install` of the same 40 wheels",
        _START_UP,
    ),
    Target("restore-pip", "restore", "4, 15", "the same over `pip install`", _START_UP),
    Target(
        "restore-scipy", "restore", "15", "the same for the 35 MB scipy wheel, with uv", _START_UP
    ),
    Target(
        "restore-scipy-pip",
        "restore",
        "15",
        "the same for the 35 MB scipy wheel, with pip",
        _START_UP + "; pip's own rounds spread by a second or more here",
    ),
    Target(
        "trust-checks",
        "restore-noop-ab",
        "16",
        "the trust checks add ≤ 5 ms to the no-op restore (the sealed layout's, the costliest)",
        "loading OpenSSL for the HMAC (hashlib's `_hashlib`, ~3 ms in a fresh process) is "
        "most of it; the checks themselves take ~0.1 ms",
    ),
    Target("r-restore", "r", "5", "R restore faster than `install.packages()` of the same set"),
    Target(
        "same-image",
        "rebase-ab",
        "10",
        "same-image restore of 40 wheels: no regression against the commit before",
    ),
    Target(
        "rebase",
        "rebase-ab",
        "10",
        "rebase of 40 wheels onto a new image ≤ `uv pip install -c <image>` + 50 ms",
        _START_UP + ", and the modules that read versions, requirements and wheel tags "
        "(packaging's, with the logging that packaging.tags imports): the same-image "
        "restore's overhead and ~10 ms more",
    ),
    Target(
        "artifacts-forty",
        "artifacts",
        "11",
        "40 small wheels from artifacts ≤ 1.0x `uv pip install --no-deps` cold",
        _START_UP + ", and the verified private copy",
    ),
    Target(
        "artifacts-scipy",
        "artifacts",
        "11",
        "a 35 MB wheel (scipy) from its artifact ≤ 1.0x uv cold",
        _START_UP + ", and the 38 MiB private copy hashed before the installer reads it",
    ),
    Target(
        "artifacts-sdist",
        "artifacts",
        "11",
        "a C-extension sdist from its artifact "
        "≥ 10x faster than from the sdist (the tests' one-function sdist)",
        "it builds in about a second, and restore's fixed cost caps the ratio",
    ),
    Target(
        "artifacts-sdist-real",
        "artifacts",
        "11",
        "the same for a real C extension's sdist (msgspec 0.19.0)",
    ),
    Target(
        "capture-latency",
        "capture-latency",
        "11",
        "the daemon's install → manifest latency with capture running: unchanged",
    ),
    Target(
        "r-artifacts",
        "r-artifacts",
        "11",
        "16 R packages from artifacts ≥ 10x faster than `install.packages(Ncpus = 2)` from source",
    ),
    Target("fleet-lost", "fleet", "12", "no lost install with 200 daemons on one store"),
    Target(
        "store-ops-restore",
        "fleet",
        "12",
        "≤ 3 store operations per restore before installing (syscalls naming a store path)",
        "checking the store's root, its marker and the key directory (7 calls), then the "
        "manifest's open, stat, read and close (4)",
    ),
    Target(
        "store-ops-commit",
        "fleet",
        "12",
        "≤ 8 store operations per commit",
        "two durable files (the manifest and its generation's copy) are 11 calls by "
        "themselves, checking the store 7, the merge check 3",
    ),
    Target(
        "fleet-p99",
        "fleet",
        "12",
        "p99 commit latency ≤ 2 x injected latency x operations per commit",
    ),
)


def keep_verdicts(bench: Bench, sidecar: Path) -> None:
    """Fold what `bench` said of its targets into targets.json, with this run's stamp."""
    said = json.loads(sidecar.read_text()) if sidecar.exists() else {}
    known = {t.key for t in TARGETS if t.bench == bench.name}
    unknown = set(said) - known
    if unknown:
        print(f"run_all: {bench.name}: no such target {', '.join(sorted(unknown))}", flush=True)
    kept = json.loads(VERDICTS.read_text()) if VERDICTS.exists() else {}
    stamp = {
        "commit": bench_kit.commit(),
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    for key in sorted(known & set(said)):
        kept[key] = {**said[key], **stamp}
    tmp = VERDICTS.with_name(f".{VERDICTS.name}.{os.getpid()}")
    tmp.write_text(json.dumps(kept, indent=1, sort_keys=True) + "\n")
    tmp.replace(VERDICTS)


def targets_table() -> str:
    kept = json.loads(VERDICTS.read_text()) if VERDICTS.exists() else {}
    rows = ["| target (issue) | measured | met? |", "|---|---|---|"]
    for t in TARGETS:
        got = kept.get(t.key)
        if got is None:
            rows.append(f"| {t.text} ({t.issues}) | not measured by run_all yet | — |")
            continue
        where = f"`table:{t.bench}`, {got['commit']}, {got['when']}"
        met = "yes" if got["met"] else "**no**" + (f": {t.floor}" if t.floor else "")
        rows.append(f"| {t.text} ({t.issues}) | {got['measured']} ({where}) | {met} |")
    return "\n".join(rows)


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
    argv = [sys.executable, str(path)]
    if bench.ab and before is not None:
        argv.append(before)
    return [*argv, *extra, "--markdown", str(out)]


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
            keep_verdicts(bench, out.with_suffix(".verdicts.json"))
            text = replace_table(text, "targets", targets_table()) or text
            write_results(text)
            print(f"run_all: {bench.name} done in {took:.0f} s; RESULTS.md updated", flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        print(f"run_all: end {header()}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
