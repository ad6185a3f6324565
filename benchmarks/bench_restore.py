"""Restore of 40 packages from a local wheelhouse, beside `pip install -r` and `uv pip install
-r` of the same pins; and the no-op restore of a 100-package manifest beside the installers'
own no-ops.

    python -m pytest benchmarks/bench_restore.py --benchmark-enable

Every figure is the wall time of a whole process, as the entrypoint would run it, into a
fresh venv (made in the untimed setup of each round: a venv without pip for uv and for
pkgckpt, a copy of a template venv with pip for pip). uv runs with a cold cache (emptied
in the setup). All installers see the same pins, `--no-index --find-links <wheelhouse>`,
and no pip.conf / uv.toml. Python bytecode is cached (see `Bench.__init__`).

  restore-40    pkgckpt restore (uv), pkgckpt restore --installer pip,
                pip install --no-deps -r, uv pip install --no-deps -r
  restore-noop  pkgckpt restore with everything in place (100 packages),
                pip install --no-deps -r and uv pip install --no-deps -r with everything
                in place, and `python -c pass` (the interpreter's own start)
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

import pkgckpt

REPO = Path(pkgckpt.__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from restore_kit import hermetic, installed, put_manifest  # noqa: E402
from wheelhouse import Dist, build_wheel, make_venv  # noqa: E402

from pkgckpt.config import Config  # noqa: E402
from pkgckpt.inventory import targets  # noqa: E402
from pkgckpt.manifest import Body, Delta, Package  # noqa: E402

ROUNDS = 7
# sys.executable, not its realpath: in a venv the realpath is the base interpreter, which
# lacks the peers' packages. (sys.executable is never a pyenv shim: the shim execs it.)
PYTHON = sys.executable
UV = shutil.which("uv") or "uv"


class Bench:
    """A wheelhouse of `count` small wheels, their pins, a store with their manifest."""

    def __init__(self, root: Path, count: int) -> None:
        self.root = root
        self.wheels = root / "wheels"
        self.pins = [Dist(f"bench-pkg-{i:03d}", f"1.{i}.0", files=5) for i in range(count)]
        for dist in self.pins:
            build_wheel(dist, self.wheels)
        self.requirements = root / "requirements.txt"
        self.requirements.write_text("".join(f"{d.name}=={d.version}\n" for d in self.pins))
        self.venv = root / "venv"
        self.store = root / "store"
        self.env = hermetic(root)
        # This machine sets PYTHONDONTWRITEBYTECODE=1, so every process would compile
        # pkgckpt from source; an installed package has its bytecode (pip and uv compile it
        # at install time). The untimed warm-up round writes it here, outside the repo.
        self.env.pop("PYTHONDONTWRITEBYTECODE", None)
        self.env["PYTHONPYCACHEPREFIX"] = str(root / "pycache")
        self.cache = Path(self.env["UV_CACHE_DIR"])
        self.template: Path | None = None

    def fresh(self, with_pip: bool = False) -> None:
        """A new, empty venv at the same path; a cold uv cache; no baseline yet."""
        shutil.rmtree(self.cache, ignore_errors=True)
        shutil.rmtree(self.root / "run", ignore_errors=True)
        if with_pip:
            if self.template is None:
                self.template = make_venv(self.root / "template").prefix
            shutil.rmtree(self.venv, ignore_errors=True)
            shutil.copytree(self.template, self.venv, symlinks=True)
            # The copy's activation scripts still name the template; pip does not use them.
            (self.venv / "pyvenv.cfg").write_text((self.template / "pyvenv.cfg").read_text())
        else:
            make_venv(self.venv, with_pip=False)

    def manifest(self) -> None:
        env = targets(Config(env=(self.venv,)))[0].env
        added = tuple(Package(name=d.name, version=d.version) for d in self.pins)
        put_manifest(self.store, "bench", Body(environments=(Delta(env=env, added=added),)))

    def run(self, *argv: str) -> None:
        proc = subprocess.run(argv, env=self.env, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout + proc.stderr

    def restore(self, *extra: str) -> Callable[[], None]:
        argv = (PYTHON, "-m", "pkgckpt", "restore", "--store", str(self.store), "--key", "bench")
        argv += ("--env", str(self.venv), "--no-index", "--find-links", str(self.wheels), *extra)
        return lambda: self.run(*argv)

    def pip(self) -> Callable[[], None]:
        python = str(self.venv / "bin" / "python")
        argv = (python, "-m", "pip", "install", "-q", "--no-deps", "--no-index")
        argv += ("--find-links", str(self.wheels), "-r", str(self.requirements))
        return lambda: self.run(*argv)

    def uv(self) -> Callable[[], None]:
        argv = (UV, "pip", "install", "-q", "--python", str(self.venv / "bin" / "python"))
        argv += ("--no-deps", "--no-index", "--find-links", str(self.wheels))
        argv += ("-r", str(self.requirements))
        return lambda: self.run(*argv)

    def complete(self) -> None:
        assert len(installed(next((self.venv / "lib").glob("python3*/site-packages")))) >= len(
            self.pins
        )


@pytest.fixture(scope="module")
def forty(tmp_path_factory: pytest.TempPathFactory) -> Bench:
    return Bench(tmp_path_factory.mktemp("restore40"), 40)


@pytest.fixture(scope="module")
def hundred(tmp_path_factory: pytest.TempPathFactory) -> Bench:
    bench = Bench(tmp_path_factory.mktemp("noop100"), 100)
    bench.fresh(with_pip=True)
    bench.manifest()
    bench.restore()()
    bench.complete()
    return bench


def _install(benchmark: BenchmarkFixture, bench: Bench, how: str) -> None:
    def setup() -> None:
        bench.fresh(with_pip=how in ("pip", "pkgckpt-pip"))
        # For every contender, so that all setups do the same (this one runs the venv's
        # interpreter once, to name the environment).
        bench.manifest()

    target = {
        "pkgckpt-uv": bench.restore("--installer", "uv"),
        "pkgckpt-pip": bench.restore("--installer", "pip"),
        "pip": bench.pip(),
        "uv": bench.uv(),
    }[how]
    benchmark.pedantic(target, setup=setup, rounds=ROUNDS, iterations=1, warmup_rounds=1)
    bench.complete()


@pytest.mark.benchmark(group="restore-40")
@pytest.mark.parametrize("how", ["pkgckpt-uv", "pkgckpt-pip", "pip", "uv"])
def test_restore_40(benchmark: BenchmarkFixture, forty: Bench, how: str) -> None:
    """Whole-process wall time of installing 40 pinned wheels into a fresh venv."""
    _install(benchmark, forty, how)


@pytest.mark.benchmark(group="restore-noop")
@pytest.mark.parametrize("how", ["pkgckpt", "pip", "uv", "python-startup"])
def test_noop_100(benchmark: BenchmarkFixture, hundred: Bench, how: str) -> None:
    """Whole-process wall time when all 100 pinned packages are already in place."""
    target = {
        "pkgckpt": hundred.restore(),
        "pip": hundred.pip(),
        "uv": hundred.uv(),
        # The floor under any Python command here: the interpreter starting, nothing else.
        "python-startup": lambda: hundred.run(PYTHON, "-c", "pass"),
    }[how]
    benchmark.pedantic(target, rounds=4 * ROUNDS, iterations=1, warmup_rounds=1)
