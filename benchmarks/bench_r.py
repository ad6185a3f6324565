"""R restore beside install.packages() of the same set by hand, from a local repository.

    python benchmarks/bench_r.py [--markdown PATH] [--quick]

The set: the test packages (one importing another, one with C code, an archived version)
and synthetic pure-R packages in import chains of three: 4 + SYNTHETIC packages, built
with R CMD build into a file:// CRAN-like repository on tmpfs. Every timed call starts
from an empty library at the same path (emptied untimed); the contenders alternate round
by round:

  pkgckpt restore             the real command, from pkgckpt's own venv (installed,
                              compiled): baseline, manifest read and validated,
                              Rscript --vanilla fetch, R CMD INSTALL in dependency order
  install.packages            what a user types: install.packages(<set>, repos = ...)
                              plus the archived version from its tarball (Ncpus = 1,
                              R's default)
  install.packages Ncpus=2    the same with R's own parallel installs

then the no-op: `pkgckpt restore` with everything in place, beside `Rscript -e 0` (R's
own start, which restore does not need when nothing is missing).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

import bench_kit  # noqa: E402
import restore_kit  # noqa: E402
import rpkgs  # noqa: E402

from pkgckpt.manifest import Body, Delta  # noqa: E402
from pkgckpt.scan.r import RLibraryScanner, r_environment  # noqa: E402

TEST_SET = ("ckpt.base", "ckptImports", "ckptC", "ckptOld")
SYNTHETIC = 12
CHAIN = 3
PEER = "`install.packages()` (Ncpus = 2)"
SERIAL = "`install.packages()` (R's default, Ncpus = 1)"


def package_set(root: Path) -> tuple[rpkgs.Repo, list[str], Path]:
    """The benches' 16 R packages in a CRAN-like repository under `root`: the repository,
    the names installed from it, and the archived ckptOld tarball installed beside them."""
    made = rpkgs.synthetic(root / "syn", SYNTHETIC, CHAIN)
    tests = [(n, v) for n, v in rpkgs.CURRENT if n in TEST_SET]
    current = [*tests, *((n, v) for n, v, _ in made)]
    repo = rpkgs.build_repo(
        root / "cran", current, rpkgs.ARCHIVED, sources={n: s for n, _, s in made}
    )
    names = [n for n, _ in current if n != "ckptOld"]
    return repo, names, repo.tarball("ckptOld", "0.9-1")


class Setup:
    def __init__(self, root: Path, pkgckpt: Path) -> None:
        self.pkgckpt = pkgckpt
        self.repo, self.names, self.archived = package_set(root)
        self.lib = root / "lib"
        self.store = root / "store"
        self.env = restore_kit.hermetic(root / "run")
        # The manifest a daemon would have written: the by-hand install, scanned.
        rpkgs.install(self.lib, self.repo, self.names, [self.archived])
        self.expected = rpkgs.installed(self.lib)
        found = RLibraryScanner(self.lib).scan().packages
        delta = Delta(env=r_environment(self.lib), added=tuple(found.values()))
        restore_kit.put_manifest(self.store, "k", Body(environments=(delta,)))

    def empty(self) -> None:
        shutil.rmtree(self.lib, ignore_errors=True)
        self.lib.mkdir()

    def restore(self) -> None:
        argv = [bench_kit.script(self.pkgckpt), "restore", "--r-lib", str(self.lib)]
        argv += ["--store", str(self.store), "--key", "k", "--r-repo", self.repo.url]
        done = subprocess.run(
            argv, capture_output=True, text=True, env=self.env, cwd=self.lib.parent
        )
        assert done.returncode == 0, done.stdout + done.stderr

    def by_hand(self, ncpus: int) -> Callable[[], None]:
        def install() -> None:
            rpkgs.rscript(
                "options(warn = 2); a <- commandArgs(TRUE); "
                "install.packages(a[-(1:4)], lib = a[1], repos = a[2], Ncpus = as.integer(a[4]));"
                'install.packages(a[3], lib = a[1], repos = NULL, type = "source")',
                str(self.lib),
                self.repo.url,
                str(self.archived),
                str(ncpus),
                *self.names,
            )

        return install


def verdict(markdown: Path | None, times: dict[str, list[float]]) -> None:
    """r-restore: `pkgckpt restore`'s wall median below install.packages(Ncpus = 2)'s."""
    got = bench_kit.versus(times, "`pkgckpt restore`", PEER)
    text = f"`pkgckpt restore` vs Ncpus = 2: {got.text}"
    if SERIAL in times:
        lo, mid = min(times[SERIAL]), statistics.median(times[SERIAL])
        text += f"; Ncpus = 1: {bench_kit.ms(lo)} / {bench_kit.ms(mid)}"
    bench_kit.verdict(markdown, "r-restore", text, got.ratio < 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--markdown", type=Path, help="write the tables here (run_all.py)")
    parser.add_argument("--quick", action="store_true", help="fewer rounds")
    args = parser.parse_args()
    if not rpkgs.have_r():
        sys.exit(f"skipped: {rpkgs.NO_R}")
    run = bench_kit.Run("R restore")
    root = Path(tempfile.mkdtemp(prefix="bench-r-", dir="/dev/shm"))
    try:
        setup = Setup(root, bench_kit.pkgckpt_python(root))
        contenders = {
            PEER: setup.by_hand(2),
            "`pkgckpt restore`": setup.restore,
            SERIAL: setup.by_hand(1),
        }
        cpu: dict[str, list[float]] = {}
        times = bench_kit.interleave(
            contenders, 2 if args.quick else 3, setup=lambda _: setup.empty(), cpu=cpu
        )
        assert rpkgs.installed(setup.lib) == setup.expected
        run.add(
            f"**r-restore**, {len(setup.expected)} packages into an empty library\n\n"
            + bench_kit.table(times, cpu=cpu, peer=PEER)
        )
        verdict(args.markdown, times)
        setup.empty()
        setup.restore()
        noop = {
            "`Rscript -e 0`": lambda: rpkgs.rscript("0"),
            "`pkgckpt restore`, all in place": setup.restore,
        }
        cpu = {}
        times = bench_kit.interleave(noop, 5 if args.quick else 10, cpu=cpu)
        run.add("**r-noop**\n\n" + bench_kit.table(times, cpu=cpu, peer="`Rscript -e 0`"))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    run.done()
    run.write(args.markdown)


if __name__ == "__main__":
    main()
