"""Durable commit of a ~200 KB manifest, beside the bare recipe, on disk and on tmpfs.

    python -m pytest benchmarks/bench_store.py --benchmark-enable --benchmark-min-rounds=300
    python benchmarks/bench_store.py [--rounds N] [--quick] [--markdown PATH]

Per location (the repository's file system, and /dev/shm):
  bare recipe     plain Python: temp (O_EXCL) + write + fsync + close + rename + dir fsync
  atomic_write    ours, the same bytes: the recipe plus checked errors and unique names
  Store.commit    the whole commit: encode (with checksum) + the generation's file and
                  manifest.json (two fsynced files, one directory fsync) + the sync
                  marker + pruning; alternating bodies so that every call writes
  encode          manifest.encode alone, to show where the commit's time goes

Run as a script (what `run_all.py --only store` does), the four are timed in process,
interleaved round by round (bench_kit.interleave) after 5 untimed rounds, and the table
(min and median, and each median over the bare recipe's) goes to --markdown PATH."""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import bench_kit
import pytest
from pytest_benchmark.fixture import BenchmarkFixture

import pkgckpt
from pkgckpt import manifest
from pkgckpt.durable import atomic_write
from pkgckpt.store import Store, init_store

REPO = Path(pkgckpt.__file__).resolve().parent.parent
TARGET_BYTES = 200 * 1024
COMMIT_TARGET = 0.001  # seconds: Store.commit on the repository's disk, by the median (issue 3)


def body(label: str, packages: int) -> manifest.Body:
    env = manifest.Environment(kind="python", path="/opt/conda", interpreter="3.11.7")
    added = tuple(
        manifest.Package(
            name=f"{label}-package-{i}",
            version=f"1.{i}.0",
            installer="pip",
            tags=("py3-none-any",),
            source=manifest.UrlSource(
                url=f"https://files.example.org/{label}-package-{i}-1.{i}.0-py3-none-any.whl",
                hashes={"sha256": f"{i:064x}"},
            ),
        )
        for i in range(packages)
    )
    return manifest.Body(environments=(manifest.Delta(env=env, added=added),))


def sized_bodies() -> tuple[manifest.Body, manifest.Body]:
    """Two different bodies whose manifests are about TARGET_BYTES."""
    per_package = len(manifest.encode(manifest.Manifest(body=body("a", 100)))) / 100
    count = int(TARGET_BYTES / per_package)
    return body("a", count), body("b", count)


@pytest.fixture(scope="module")
def bodies() -> tuple[manifest.Body, manifest.Body]:
    return sized_bodies()


@pytest.fixture(scope="module")
def data(bodies: tuple[manifest.Body, manifest.Body]) -> bytes:
    encoded = manifest.encode(manifest.Manifest(generation=1, body=bodies[0]))
    assert abs(len(encoded) - TARGET_BYTES) < TARGET_BYTES * 0.05, len(encoded)
    return encoded


@pytest.fixture(params=["disk", "shm"])
def where(request: pytest.FixtureRequest) -> Iterator[Path]:
    """A fresh directory on the repository's file system, or on /dev/shm."""
    base = str(REPO) if request.param == "disk" else "/dev/shm"
    path = Path(tempfile.mkdtemp(prefix=".bench-store-", dir=base))
    try:
        yield path
    finally:
        shutil.rmtree(path)


def group(where: Path) -> str:
    return "commit-200KB-shm" if str(where).startswith("/dev/shm") else "commit-200KB-disk"


def bare_recipe(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, data)
    os.fsync(fd)
    os.close(fd)
    tmp.rename(path)
    dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    os.fsync(dfd)
    os.close(dfd)


def run(benchmark: BenchmarkFixture, where: Path, fn: Callable[[], object]) -> None:
    benchmark.group = group(where)
    benchmark(fn)


def test_bare_recipe(benchmark: BenchmarkFixture, where: Path, data: bytes) -> None:
    """The peer: the durable recipe in a few lines of plain Python."""
    run(benchmark, where, lambda: bare_recipe(where / "manifest.json", data))


def test_atomic_write(benchmark: BenchmarkFixture, where: Path, data: bytes) -> None:
    """Ours on the same bytes."""
    run(benchmark, where, lambda: atomic_write(where / "manifest.json", data))


def test_store_commit(
    benchmark: BenchmarkFixture, where: Path, bodies: tuple[manifest.Body, manifest.Body]
) -> None:
    """A whole Store.commit of a changed ~200 KB manifest."""
    init_store(where)
    store = Store(where, "alice")
    turn = iter(range(10**9))

    def commit() -> None:
        assert store.commit(bodies[next(turn) % 2]) is not None

    run(benchmark, where, commit)


def test_encode(
    benchmark: BenchmarkFixture, where: Path, bodies: tuple[manifest.Body, manifest.Body]
) -> None:
    """Encoding alone (no I/O), for the split of a commit's time."""
    m = manifest.Manifest(generation=1, body=bodies[0])
    run(benchmark, where, lambda: manifest.encode(m))


def time_place(
    base: Path, rounds: int, bodies: tuple[manifest.Body, manifest.Body]
) -> dict[str, list[float]]:
    """The four contenders, interleaved, each in a directory of its own under `base`."""
    m = manifest.Manifest(generation=1, body=bodies[0])
    data = manifest.encode(m)
    where = Path(tempfile.mkdtemp(prefix=".bench-store-", dir=base))
    try:
        for sub in ("bare", "atomic", "store"):
            (where / sub).mkdir()
        init_store(where / "store")
        store = Store(where / "store", "alice")
        turn = iter(range(10**9))
        contenders: dict[str, Callable[[], object]] = {
            "bare recipe": lambda: bare_recipe(where / "bare" / "manifest.json", data),
            "atomic_write": lambda: atomic_write(where / "atomic" / "manifest.json", data),
            "Store.commit": lambda: store.commit(bodies[next(turn) % 2]),
            "manifest.encode alone": lambda: manifest.encode(m),
        }
        bench_kit.interleave(contenders, 5)
        return bench_kit.interleave(contenders, rounds)
    finally:
        shutil.rmtree(where)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--quick", action="store_true", help="60 rounds")
    parser.add_argument("--markdown", type=Path, help="Also write the table here.")
    args = parser.parse_args()
    rounds = 60 if args.quick else args.rounds
    bodies = sized_bodies()
    size = len(manifest.encode(manifest.Manifest(generation=1, body=bodies[0])))
    run = bench_kit.Run(f"Durable commit of a {size / 1024:.0f} KB manifest")
    rows = [
        "| place | contender | min ms | median ms | rounds | median ÷ bare recipe's |",
        "|---|---|---|---|---|---|",
    ]
    measured: dict[str, dict[str, list[float]]] = {}
    for place, base in (("disk", str(REPO)), ("tmpfs", "/dev/shm")):
        times = time_place(Path(base), rounds, bodies)
        bare = statistics.median(times["bare recipe"])
        for label, values in times.items():
            mid = statistics.median(values)
            rows.append(
                f"| {place} | {label} | {min(values) * 1e3:.3f} | {mid * 1e3:.3f} | "
                f"{len(values)} | {mid / bare:.2f}x |"
            )
        measured[place] = times
    run.done()
    run.add("\n".join(rows))
    run.write(args.markdown)
    commit_verdict(args.markdown, measured["disk"])


def commit_verdict(markdown: Path | None, times: dict[str, list[float]]) -> None:
    """Store.commit on disk against its 1 ms, as the table shows it, the bare recipe beside."""
    commit, bare = times["Store.commit"], times["bare recipe"]
    mid, bare_mid = statistics.median(commit), statistics.median(bare)
    bench_kit.verdict(
        markdown,
        "commit-1ms",
        f"{min(commit) * 1e3:.3f} / {mid * 1e3:.3f} ms (min / median) vs the bare recipe's "
        f"{min(bare) * 1e3:.3f} / {bare_mid * 1e3:.3f} ms: {mid / bare_mid:.2f}x by the median",
        mid <= COMMIT_TARGET,
    )


if __name__ == "__main__":
    main()
