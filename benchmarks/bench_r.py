"""R restore beside install.packages() of the same set by hand, from a local repository.

    python -m pytest benchmarks/bench_r.py --benchmark-enable --benchmark-min-rounds=3 \\
        --benchmark-columns=min,median,mean,max,rounds --benchmark-sort=name

The set: the test packages (one importing another, one with C code, an archived version)
and synthetic pure-R packages in import chains of three: 4 + SYNTHETIC packages, built
with R CMD build into a file:// CRAN-like repository. Every round starts from an empty
library at the same path.

  r-restore group
    pkgckpt restore             the real command: baseline, manifest read and validated,
                                Rscript --vanilla fetch, R CMD INSTALL in dependency order
    install.packages            what a user types: install.packages(<set>, repos = ...)
                                plus the archived version from its tarball (Ncpus = 1,
                                R's default)
    install.packages Ncpus=2    the same with R's own parallel installs
  r-noop group
    pkgckpt restore (no-op)     everything in place: the second run of the entrypoint
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

import pkgckpt
from pkgckpt.manifest import Body, Delta
from pkgckpt.scan.r import RLibraryScanner, r_environment

TESTS = Path(pkgckpt.__file__).resolve().parent.parent / "tests"
sys.path.insert(0, str(TESTS))

import restore_kit  # noqa: E402
import rpkgs  # noqa: E402

TEST_SET = ("ckpt.base", "ckptImports", "ckptC", "ckptOld")
SYNTHETIC = 12
CHAIN = 3
ROUNDS = 3

pytestmark = pytest.mark.skipif(not rpkgs.have_r(), reason=rpkgs.NO_R)


class Setup:
    def __init__(self, root: Path) -> None:
        made = rpkgs.synthetic(root / "syn", SYNTHETIC, CHAIN)
        tests = [(n, v) for n, v in rpkgs.CURRENT if n in TEST_SET]
        current = [*tests, *((n, v) for n, v, _ in made)]
        self.repo = rpkgs.build_repo(
            root / "cran", current, rpkgs.ARCHIVED, sources={n: s for n, _, s in made}
        )
        self.names = [n for n, _ in current if n != "ckptOld"]
        self.archived = self.repo.tarball("ckptOld", "0.9-1")
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
        done = restore_kit.pkgckpt(
            "restore",
            "--r-lib",
            str(self.lib),
            "--store",
            str(self.store),
            "--key",
            "k",
            "--r-repo",
            self.repo.url,
            env=self.env,
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


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Setup:
    return Setup(tmp_path_factory.mktemp("bench-r"))


def _run(benchmark: BenchmarkFixture, setup: Setup, target: Callable[[], None]) -> None:
    benchmark.pedantic(target, setup=setup.empty, rounds=ROUNDS, iterations=1)
    assert rpkgs.installed(setup.lib) == setup.expected


@pytest.mark.benchmark(group="r-restore")
def test_pkgckpt_restore(benchmark: BenchmarkFixture, setup: Setup) -> None:
    """pkgckpt restore of the whole set into an empty library."""
    _run(benchmark, setup, setup.restore)


@pytest.mark.benchmark(group="r-restore")
def test_install_packages(benchmark: BenchmarkFixture, setup: Setup) -> None:
    """install.packages() of the same set by hand, R's defaults (Ncpus = 1)."""
    _run(benchmark, setup, setup.by_hand(1))


@pytest.mark.benchmark(group="r-restore")
def test_install_packages_ncpus2(benchmark: BenchmarkFixture, setup: Setup) -> None:
    """install.packages(Ncpus = 2) of the same set by hand."""
    _run(benchmark, setup, setup.by_hand(2))


@pytest.mark.benchmark(group="r-noop")
def test_pkgckpt_restore_noop(benchmark: BenchmarkFixture, setup: Setup) -> None:
    """pkgckpt restore when every package is already in place."""
    setup.empty()
    setup.restore()
    benchmark.pedantic(setup.restore, rounds=10, iterations=1)
