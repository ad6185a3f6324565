"""16 R packages from their artifacts against install.packages(Ncpus = 2) from source.

    python benchmarks/ab_r_artifacts.py [--rounds N] [--quick] [--markdown PATH]

The set is `bench_r.py`'s: the test packages (one importing another, one with C code,
an archived version) and 12 synthetic pure-R packages in import chains of three, built
with R CMD build into a file:// CRAN-like repository on /dev/shm. They are installed once
by hand and captured (`pkgckpt.artifacts.capture`) on a store on /dev/shm.

Contenders, each into an empty library at the same path, alternating round by round:

  artifacts     a process of pkgckpt installed as a user gets it (`pip install .`, not
                editable, bytecode compiled: `bench_kit.pkgckpt_python`): every artifact fetched and
                hash-verified against the manifest, then `RInstaller.install_artifacts`
                (one R that installs the 16 binaries as R CMD INSTALL does, then loads
                each namespace)
  Ncpus=2       `install.packages(<set>, Ncpus = 2)` from the repository, and the
                archived version from its tarball: what a user types
  bare          the design-equivalent peer: `R CMD INSTALL --no-test-load` of the same 16
                binary tarballs in one call, nothing verified, nothing loaded afterwards

Min and median wall time of each (`bench_kit.interleave`, `bench_kit.table`), and the
load average before and after; every library is checked (untimed) to hold the 16 after each call.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

import bench_kit  # noqa: E402
import bench_r  # noqa: E402
import msgspec  # noqa: E402
import rpkgs  # noqa: E402

from pkgckpt import artifacts, manifest  # noqa: E402
from pkgckpt.artifacts import Job  # noqa: E402
from pkgckpt.config import Config  # noqa: E402
from pkgckpt.manifest import Body, Delta  # noqa: E402
from pkgckpt.scan.r import RLibraryScanner, r_environment  # noqa: E402
from pkgckpt.store import Store, init_store  # noqa: E402

SPEEDUP = 10.0

RESTORE = """
import sys, tempfile
from pathlib import Path
import msgspec
from pkgckpt import artifacts, manifest
from pkgckpt.config import Config
from pkgckpt.restore.r import RInstaller
from pkgckpt.restore.runner import Deadline
from pkgckpt.store import Store

store_root, lib, body = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
config = Config(store=store_root, key="k", discover=())
store = Store(store_root, "k")
delta = manifest.decode(body.read_bytes()).body.environments[0]
with tempfile.TemporaryDirectory() as into:
    files = {p.name: artifacts.fetch(store, config, p, Path(into)) for p in delta.added}
    env = msgspec.structs.replace(delta.env, path=str(lib))
    done = RInstaller(env, config).install_artifacts(
        list(delta.added), files, deadline=Deadline(600)
    )
sys.exit(0 if done.ok else done.output)
"""


def met(ratio: float) -> bool:
    """≥ 10x faster than install.packages: `ratio`, of the wall medians, ≤ 1/10."""
    return ratio * SPEEDUP <= 1


def faster(label: str, ratio: float, extra_ms: float) -> str:
    """The target column: ≥ 10x faster than install.packages, by the wall median."""
    del extra_ms
    if label != ARTIFACTS:
        return ""
    verdict = "met" if met(ratio) else f"**not met** (≥ {SPEEDUP:g}x faster)"
    return f"{1 / ratio:.1f}x faster: {verdict}"


ARTIFACTS = "from artifacts (pkgckpt: fetch, hash-check, one R installing and loading)"
NCPUS = "`install.packages(Ncpus = 2)` from source"
BARE = "bare `R CMD INSTALL --no-test-load` of the 16 binaries"


def main(rounds: int, markdown: Path | None) -> None:
    root = Path(tempfile.mkdtemp(prefix="ab-r-artifacts-", dir="/dev/shm"))
    try:
        python = bench_kit.pkgckpt_python(root)
        run = bench_kit.Run("R packages from artifacts")
        repo, names, archived = bench_r.package_set(root)
        user = root / "user"
        rpkgs.install(user, repo, names, [archived])
        expected = rpkgs.installed(user)
        assert len(expected) == 16, expected
        store_root = root / "store"
        init_store(store_root)
        store = Store(store_root, "k")
        config = Config(store=store_root, key="k")
        env = r_environment(user)
        captured = []
        started = time.perf_counter()
        for p in RLibraryScanner(user).scan().packages.values():
            art = artifacts.capture(store, config, Job(env=env, roots=(user,), package=p))
            captured.append(msgspec.structs.replace(p, artifact=art))
        capture_s = time.perf_counter() - started
        body = root / "manifest.json"
        body.write_bytes(
            manifest.encode(
                manifest.Manifest(
                    generation=1, body=Body(environments=(Delta(env=env, added=tuple(captured)),))
                )
            )
        )
        lib = root / "lib"

        def from_artifacts() -> None:
            subprocess.run(
                [str(python), "-c", RESTORE, str(store_root), str(lib), str(body)],
                check=True,
                cwd=root,
            )

        def ncpus2() -> None:
            rpkgs.rscript(
                "options(warn = 2); a <- commandArgs(TRUE); "
                "install.packages(a[-(1:3)], lib = a[1], repos = a[2], Ncpus = 2L, quiet = TRUE);"
                'install.packages(a[3], lib = a[1], repos = NULL, type = "source", quiet = TRUE)',
                str(lib),
                repo.url,
                str(archived),
                *names,
            )

        binaries = root / "binaries"
        binaries.mkdir()
        tarballs = [
            str(shutil.copy(store.path / "artifacts" / p.artifact.file, binaries))
            for p in captured
            if p.artifact is not None
        ]

        def bare() -> None:
            subprocess.run(
                ["R", "CMD", "INSTALL", "--no-test-load", f"--library={lib}", *tarballs],
                check=True,
                capture_output=True,
                cwd=root,
            )

        contenders = {ARTIFACTS: from_artifacts, NCPUS: ncpus2, BARE: bare}

        def empty(label: str) -> None:
            """Untimed: the previous call's library checked (an R start), then emptied."""
            del label
            if lib.exists():
                assert rpkgs.installed(lib) == expected
            shutil.rmtree(lib, ignore_errors=True)
            lib.mkdir()

        times = bench_kit.interleave(contenders, rounds, empty)
        empty("")
        run.done()
        version = subprocess.run(["R", "--version"], capture_output=True, text=True).stdout
        run.add(
            f"16 R packages into an empty library, {rounds} rounds; capture of the 16 (in "
            f"process, hashing and the durable write included): {capture_s:.2f} s. "
            f"{version.splitlines()[0]}.\n\n" + bench_kit.table(times, peer=NCPUS, target=faster)
        )
        ours, peer = times[ARTIFACTS], times[NCPUS]
        ratio = bench_kit.versus(times, ARTIFACTS, NCPUS).ratio
        bench_kit.verdict(
            markdown,
            "r-artifacts",
            f"{bench_kit.min_median(ours)} vs {bench_kit.min_median(peer)} (min / median): "
            f"{1 / ratio:.1f}x faster by the median",
            met(ratio),
        )
        run.write(markdown)
    finally:
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(root.with_name(root.name + "-staging"), ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="2 rounds")
    parser.add_argument("--markdown", type=Path, help="write the table here (run_all.py)")
    args = parser.parse_args()
    os.environ.pop("R_LIBS_USER", None)
    main(2 if args.quick else args.rounds, args.markdown)
