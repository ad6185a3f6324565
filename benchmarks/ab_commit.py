"""The store's steady-state commit at another commit and here, each beside the bare
durable recipe for the same files, interleaved.

    python benchmarks/ab_commit.py [BEFORE_COMMIT] [--rounds N] [--commits K]
                                   [--markdown PATH]

BEFORE_COMMIT (default a19cd21) is taken with `git archive` into a temp directory; its
`pkgckpt` is imported by its own worker processes. Per round, on the repository's disk
and on tmpfs (/dev/shm), one fresh worker per tree (the order rotated) times K commits
of a ~200 KB manifest (in its own tree's format) after 5 untimed ones, each commit
paired with the bare recipe for the same files in a sibling directory, the two
alternating which goes first: a disk whose fsync swings between 1 and 25 ms within a
minute then slows both alike, not one contender's whole round. Contenders:

  before       what checkpoint.commit asks of the store at BEFORE_COMMIT: Store.commit
               (and Store.check first, where it exists; inside Store.cycle, where that
               exists)
  bare-before  the bare recipe for the files BEFORE_COMMIT writes: before the separate
               generation files (no store.SYNCED), one temp, write, fsync, close, link,
               rename, directory fsync; after, as bare-after
  after        the same here: Store.cycle, Store.check, Store.commit (two files, one
               directory fsync, the sync marker renamed)
  bare-after   the bare recipe for those files: two temps written and fsynced, two
               renames, one directory fsync

The ratio is of the medians of each contender and its bare recipe, both over the same
minutes.

--markdown PATH writes the table printed, with the date, the commit and the load.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import bench_kit

REPO = Path(__file__).resolve().parent.parent
TARGET = 1.3  # Store.commit's median over the bare recipe's for the same files (issues 9, 15)

WORKER = r"""
import hashlib, json, os, sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from pkgckpt import manifest, store as store_module
from pkgckpt.store import Store

assert manifest.__file__.startswith(sys.argv[1]), manifest.__file__
where, commits = Path(sys.argv[2]), int(sys.argv[3])


def make(label, packages):
    env = manifest.Environment(kind="python", path="/opt/conda", interpreter="3.11.7")
    added = tuple(
        manifest.Package(
            name=f"{label}-package-{i}", version=f"1.{i}.0", installer="pip",
            tags=("py3-none-any",),
            source=manifest.UrlSource(
                url=f"https://files.example.org/{label}-package-{i}-1.{i}.0-py3-none-any.whl",
                hashes={"sha256": f"{i:064x}"},
            ),
        )
        for i in range(packages)
    )
    return manifest.Body(environments=(manifest.Delta(env=env, added=added),))


# ~200 KB manifests, as benchmarks/bench_store.py writes them
per = len(manifest.encode(manifest.Manifest(generation=1, body=make("a", 100)))) / 100
bodies = (make("a", int(200 * 1024 / per)), make("b", int(200 * 1024 / per)))
data = [manifest.encode(manifest.Manifest(generation=1, body=b)) for b in bodies]

def bare(where, n, gen):
    d = data[gen % 2]
    names = ["manifest.json"] if n == 1 else [f"manifest.{gen}.json", "manifest.json"]
    temps = []
    for i, name in enumerate(names):
        tmp = where / f".tmp{i}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, d)
        os.fsync(fd)
        os.close(fd)
        if n == 1:
            os.link(tmp, where / f"manifest.{gen}.json")
        temps.append((tmp, name))
    for tmp, name in temps:
        os.rename(tmp, where / name)
    dfd = os.open(where, os.O_RDONLY | os.O_DIRECTORY)
    os.fsync(dfd)
    os.close(dfd)
    old = where / f"manifest.{gen - 5}.json"
    if gen > 5:
        old.unlink()

if hasattr(store_module, "init_store"):
    store_module.init_store(where)
store = Store(where, "alice")
encoded = [manifest.encode_body(b) for b in bodies]
bare_dir = Path(f"{where}.bare")
bare_dir.mkdir()
# Files per commit as this tree's store writes them: one (and a hard link) before the
# separate generation files and their sync marker, two since.
files = 2 if hasattr(store_module, "SYNCED") else 1


def commit(i):
    if hasattr(store, "check"):
        store.check()
    assert store.commit(bodies[i % 2], encoded[i % 2]) is not None


def ours(i):
    if hasattr(store, "cycle"):
        with store.cycle():
            commit(i)
    else:
        commit(i)


def peer(i):
    bare(bare_dir, files, i + 1)


def check(i):
    if hasattr(store, "cycle"):
        with store.cycle():
            store.check()


# The tree's whole-file checksum over one file's bytes: sha256 up to schema 3 (also for a
# tree older than the whole-file checksum), CRC-32 since.
digest = (
    getattr(manifest, "_DIGEST", None)
    or getattr(manifest, "_seal", None)
    or (lambda parts: hashlib.sha256(b"".join(parts)).hexdigest())
)


def checksum(i):
    digest((data[i % 2],))


times = {"store": [], "bare": [], "check": [], "checksum": []}
for i in range(5 + commits):
    pair = (("store", ours), ("bare", peer))
    for name, one in (*(pair if i % 2 else pair[::-1]), ("check", check), ("checksum", checksum)):
        t = time.perf_counter()
        one(i)
        if i >= 5:
            times[name].append(time.perf_counter() - t)
print(json.dumps(times))
"""

KINDS = ("before", "bare-before", "after", "bare-after")
PARTS = {
    "store": "{}",
    "bare": "bare-{}",
    "check": "{}: Store.cycle + Store.check alone",
    "checksum": "{}: the whole-file checksum alone",
}
"""What each worker times (per tree), and the table's names for them."""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("before", nargs="?", default="a19cd21")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--commits", type=int, default=40)
    parser.add_argument("--markdown", type=Path, help="Also write the table here.")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ab-commit-"))
    try:
        tree = work / "before"
        tree.mkdir()
        archive = subprocess.run(
            ["git", "-C", str(REPO), "archive", args.before, "pkgckpt"],
            check=True, capture_output=True,
        ).stdout  # fmt: skip
        (work / "before.tar").write_bytes(archive)
        with tarfile.open(work / "before.tar") as tar:
            tar.extractall(tree, filter="data")
        before = os.getloadavg()
        roots = {"before": tree, "after": REPO}
        results: dict[tuple[str, str], list[float]] = {}
        for rnd in range(args.rounds):
            order = ("before", "after") if rnd % 2 == 0 else ("after", "before")
            for place, base in (("disk", REPO), ("tmpfs", Path("/dev/shm"))):
                for kind in order:
                    where = Path(tempfile.mkdtemp(prefix=".ab-commit-", dir=base))
                    try:
                        out = subprocess.run(
                            [sys.executable, "-I", "-c", WORKER, str(roots[kind]),
                             str(where), str(args.commits)],
                            check=True, capture_output=True, text=True,
                        ).stdout  # fmt: skip
                    finally:
                        shutil.rmtree(where)
                        shutil.rmtree(f"{where}.bare", ignore_errors=True)
                    times = json.loads(out)
                    for part, name in PARTS.items():
                        results.setdefault((place, name.format(kind)), []).extend(times[part])
        after = os.getloadavg()
        lines = table(results, args, before, after)
        print("\n".join(lines))
        if args.markdown:
            args.markdown.write_text("\n".join(lines) + "\n")
            for place in ("disk", "tmpfs"):
                verdict(args.markdown, results, place)
    finally:
        shutil.rmtree(work)


def table(
    results: dict[tuple[str, str], list[float]],
    args: argparse.Namespace,
    load_before: tuple[float, float, float],
    load_after: tuple[float, float, float],
) -> list[str]:
    here = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    lines = [
        f"{when}: before = {args.before}, after = {here}; {args.rounds} rounds x "
        f"{args.commits} commits; load average (1 min) {load_before[0]:.2f} before, "
        f"{load_after[0]:.2f} after; disk = the repository's file system, tmpfs = /dev/shm",
        "",
        "| place | contender | min ms | median ms | commits |",
        "|---|---|---|---|---|",
    ]
    for place in ("disk", "tmpfs"):
        for kind in KINDS:
            t = results[(place, kind)]
            lines.append(
                f"| {place} | {kind} | {min(t) * 1e3:.2f} | "
                f"{statistics.median(t) * 1e3:.2f} | {len(t)} |"
            )
        for kind in ("before", "after"):
            for part in ("check", "checksum"):
                t = results[(place, PARTS[part].format(kind))]
                lines.append(
                    f"| {place} | {PARTS[part].format(kind)} | {min(t) * 1e3:.3f} | "
                    f"{statistics.median(t) * 1e3:.3f} | {len(t)} |"
                )
        for kind, bare in (("after", "bare-after"), ("before", "bare-before")):
            ratio = over_bare(results, place, kind, bare)
            mark = "" if ratio <= TARGET else f" (over the {TARGET}x target)"
            lines.append(f"| {place} | {kind} / {bare} (median) | | {ratio:.2f}x{mark} | |")
    return lines


def over_bare(
    results: dict[tuple[str, str], list[float]], place: str, kind: str, bare: str
) -> float:
    """The median of `kind` over its bare recipe's, at `place`."""
    return statistics.median(results[(place, kind)]) / statistics.median(results[(place, bare)])


def verdict(markdown: Path, results: dict[tuple[str, str], list[float]], place: str) -> None:
    """This tree's Store.commit against the bare recipe at `place`, for run_all.py's
    table of targets: "commit-disk", "commit-tmpfs"."""
    ours, bare = results[(place, "after")], results[(place, "bare-after")]
    ratio = over_bare(results, place, "after", "bare-after")
    bench_kit.verdict(
        markdown,
        f"commit-{place}",
        f"{min(ours) * 1e3:.2f} / {statistics.median(ours) * 1e3:.2f} ms (min / median) vs "
        f"the bare recipe's {min(bare) * 1e3:.2f} / {statistics.median(bare) * 1e3:.2f} ms: "
        f"{ratio:.2f}x by the median",
        ratio <= TARGET,
    )


if __name__ == "__main__":
    main()
