"""The artifact cache (issue 11): restore from artifacts beside the installers, and the
cost of capture.

    python benchmarks/ab_artifacts.py [ROUNDS [forty|sdist|wheel DIR]]

pkgckpt is installed as a user gets it (`pip install .` of `git archive HEAD`, not
editable, bytecode compiled) into a venv of its own on /dev/shm; every tree is on
/dev/shm. Each round's setup (untimed) makes a fresh venv without pip at the recorded
path, empties uv's cache (every uv is cold) and the runtime directory. Contenders run
interleaved round by round; min and median of the whole process's wall time, with the
load average before and after.

  forty    40 small wheels: `pkgckpt restore --no-index` from the artifacts alone;
           `uv pip install --no-deps --no-index --find-links <wheels> -r` (cold), the
           target's peer; `pkgckpt restore` from the wheelhouse with a manifest without
           artifacts (restore as it was before the cache).
  sdist    one C-extension sdist: `pkgckpt restore --no-index` from its artifact, and
           from the sdist (built by uv, cold; by pip, --no-cache-dir via PIP_NO_CACHE_DIR),
           each with uv and with pip (pip beside pkgckpt, `--python` the venv).
  wheel    the one wheel in DIR (a large compiled one: scipy, `pip download --no-deps`):
           `pkgckpt restore --no-index` from its artifact against `uv pip install
           --no-deps` (cold) of the downloaded file; then its capture (`pkgckpt
           snapshot` into an empty store) with the cache on and off.
  capture  `pkgckpt snapshot` of the 40 wheels into an empty store, with the cache on
           (captures all 40) and off (`PKGCKPT_ARTIFACTS=0`): wall and CPU time (user +
           system of the process and its children, from wait4).
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import msgspec

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

from ab_restore_noop import install  # noqa: E402
from restore_kit import hermetic  # noqa: E402
from wheelhouse import Dist, add_build_backend, build_c_sdist, build_wheel, make_venv  # noqa: E402

from pkgckpt.manifest import Body  # noqa: E402
from pkgckpt.store import Store, init_store  # noqa: E402

UV = shutil.which("uv") or "uv"


class Case:
    """A venv path, a wheelhouse, a baseline of the empty venv, and the stores."""

    def __init__(self, root: Path, python: Path, env: dict[str, str]) -> None:
        self.root = root
        self.python = python
        self.env = env
        self.venv = root / "venv"
        self.wheels = root / "wheels"
        self.baseline = root / "baseline.json"
        root.mkdir(parents=True)

    def pkgckpt(self, *args: str, store: Path) -> list[str]:
        argv = [str(self.python), "-m", "pkgckpt", *args, "--store", str(store), "--key", "b"]
        return [*argv, "--env", str(self.venv), "--baseline", str(self.baseline)]

    def fresh(self) -> None:
        shutil.rmtree(self.env["UV_CACHE_DIR"], ignore_errors=True)
        shutil.rmtree(Path(self.env["XDG_RUNTIME_DIR"]), ignore_errors=True)
        make_venv(self.venv, with_pip=False)

    def run(self, argv: list[str], extra: Mapping[str, str] | None = None) -> str:
        done = subprocess.run(
            argv, env={**self.env, **(extra or {})}, capture_output=True, text=True
        )
        assert done.returncode == 0, (argv, done.stdout, done.stderr)
        return done.stdout

    def install_all(self, *reqs: str) -> None:
        uv = [UV, "pip", "install", "-q", "--python", str(self.venv / "bin" / "python")]
        self.run([*uv, "--no-deps", "--no-index", "--find-links", str(self.wheels), *reqs])

    def captured_store(self, name: str) -> Path:
        """Install the wheelhouse's packages, snapshot them (with artifacts) to a store."""
        store = self.root / name
        init_store(store)
        self.fresh()
        baseline = ["baseline", "--env", str(self.venv), "--output", str(self.baseline)]
        self.run([str(self.python), "-m", "pkgckpt", *baseline])
        return store


def without_artifacts(store: Path, into: Path) -> Path:
    """A copy of `store` whose manifest records no artifact (restore before the cache)."""
    shutil.copytree(store, into, symlinks=True)
    s = Store(into, "b")
    found = s.read()
    assert found is not None
    deltas = []
    for d in found.body.deltas():
        added = tuple(msgspec.structs.replace(p, artifact=None) for p in d.added)
        deltas.append(msgspec.structs.replace(d, added=added))
    s.commit(Body.of(deltas))
    shutil.rmtree(into / "b" / "artifacts")
    return into


def timed(argv: list[str], env: Mapping[str, str]) -> tuple[float, float]:
    """Wall seconds and CPU seconds (user + system, children included) of one process."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, env=dict(env), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    assert proc.returncode == 0, (argv, proc.stderr.read() if proc.stderr else b"")
    return wall, usage.ru_utime + usage.ru_stime


def interleave(
    contenders: Mapping[str, tuple[Callable[[], None], list[str], Mapping[str, str]]],
    rounds: int,
    env: Mapping[str, str],
) -> None:
    walls: dict[str, list[float]] = {k: [] for k in contenders}
    cpus: dict[str, list[float]] = {k: [] for k in contenders}
    load = os.getloadavg()
    for _ in range(rounds):
        for label, (setup, argv, extra) in contenders.items():
            setup()
            wall, cpu = timed(argv, {**env, **extra})
            walls[label].append(wall * 1000)
            cpus[label].append(cpu * 1000)
    after = os.getloadavg()
    print(f"load (1 min) {load[0]:.2f} -> {after[0]:.2f}; {rounds} rounds")
    print("| contender | wall min | wall median | CPU min | CPU median |\n|---|---|---|---|---|")
    for label in contenders:
        w, c = walls[label], cpus[label]
        print(
            f"| {label} | {min(w):.0f} ms | {statistics.median(w):.0f} ms "
            f"| {min(c):.0f} ms | {statistics.median(c):.0f} ms |"
        )


def forty(root: Path, python: Path, env: dict[str, str], rounds: int) -> None:
    case = Case(root, python, env)
    pins = [Dist(f"bench-pkg-{i:03d}", f"1.{i}.0", files=5) for i in range(40)]
    for dist in pins:
        build_wheel(dist, case.wheels)
    requirements = root / "requirements.txt"
    requirements.write_text("".join(f"{d.name}=={d.version}\n" for d in pins))
    store = case.captured_store("store")
    case.install_all("-r", str(requirements))
    case.run(case.pkgckpt("snapshot", store=store))
    plain = without_artifacts(store, root / "plain")
    empty = root / "empty"

    def empty_store() -> None:
        shutil.rmtree(empty, ignore_errors=True)
        init_store(empty)
        shutil.rmtree(Path(env["XDG_RUNTIME_DIR"]), ignore_errors=True)

    uv = [UV, "pip", "install", "-q", "--python", str(case.venv / "bin" / "python")]
    uv += ["--no-deps", "--no-index", "--find-links", str(case.wheels), "-r", str(requirements)]
    restore = ["restore", "--installer", "uv", "--no-index"]
    print("\n### 40 small wheels: restore\n")
    interleave(
        {
            "`pkgckpt restore --no-index`, from artifacts": (
                case.fresh,
                case.pkgckpt(*restore, store=store),
                {},
            ),
            "`uv pip install --no-deps` (cold), from the wheels": (case.fresh, uv, {}),
            "`pkgckpt restore`, from the wheels (no artifacts)": (
                case.fresh,
                case.pkgckpt(*restore, "--find-links", str(case.wheels), store=plain),
                {},
            ),
        },
        rounds,
        env,
    )
    # The venv holds the 40 packages again for the capture rounds.
    case.fresh()
    case.install_all("-r", str(requirements))
    print("\n### 40 small wheels: capture (`pkgckpt snapshot` into an empty store)\n")
    interleave(
        {
            "snapshot, artifacts captured": (
                empty_store,
                case.pkgckpt("snapshot", store=empty),
                {},
            ),
            "snapshot, `PKGCKPT_ARTIFACTS=0`": (
                empty_store,
                case.pkgckpt("snapshot", store=empty),
                {"PKGCKPT_ARTIFACTS": "0"},
            ),
        },
        rounds,
        env,
    )


def sdist(root: Path, python: Path, env: dict[str, str], rounds: int) -> None:
    case = Case(root, python, env)
    build_c_sdist("fastmath", "1.0", case.wheels)
    add_build_backend(case.wheels)
    store = case.captured_store("store")
    case.install_all("fastmath")
    case.run(case.pkgckpt("snapshot", store=store))
    plain = without_artifacts(store, root / "plain")
    restore = ["restore", "--installer", "uv", "--no-index"]
    pip = ["restore", "--installer", "pip", "--no-index"]
    print("\n### A C-extension sdist: restore\n")
    interleave(
        {
            "`pkgckpt restore --no-index`, from its artifact": (
                case.fresh,
                case.pkgckpt(*restore, store=store),
                {},
            ),
            "`pkgckpt restore`, from the sdist (uv builds it, cold)": (
                case.fresh,
                case.pkgckpt(*restore, "--find-links", str(case.wheels), store=plain),
                {},
            ),
            "`pkgckpt restore --installer pip --no-index`, from its artifact": (
                case.fresh,
                case.pkgckpt(*pip, store=store),
                {},
            ),
            "`pkgckpt restore --installer pip`, from the sdist (pip builds it)": (
                case.fresh,
                case.pkgckpt(*pip, "--find-links", str(case.wheels), store=plain),
                {},
            ),
        },
        rounds,
        env,
    )


def wheel(root: Path, python: Path, env: dict[str, str], rounds: int, source: Path) -> None:
    case = Case(root, python, env)
    shutil.copytree(source, case.wheels)
    found = sorted(case.wheels.glob("*.whl"))
    assert len(found) == 1, found
    name = found[0].name.split("-")[0]
    store = case.captured_store("store")
    case.install_all(name)
    case.run(case.pkgckpt("snapshot", store=store))
    uv = [UV, "pip", "install", "-q", "--python", str(case.venv / "bin" / "python")]
    uv += ["--no-deps", "--no-index", "--find-links", str(case.wheels), name]
    size = found[0].stat().st_size / 2**20
    print(f"\n### {found[0].name} ({size:.1f} MiB): restore\n")
    interleave(
        {
            "`pkgckpt restore --no-index`, from its artifact": (
                case.fresh,
                case.pkgckpt("restore", "--installer", "uv", "--no-index", store=store),
                {},
            ),
            "`uv pip install --no-deps` (cold), from the wheel": (case.fresh, uv, {}),
        },
        rounds,
        env,
    )
    case.fresh()
    case.install_all(name)
    empty = root / "empty"

    def empty_store() -> None:
        shutil.rmtree(empty, ignore_errors=True)
        init_store(empty)
        shutil.rmtree(Path(env["XDG_RUNTIME_DIR"]), ignore_errors=True)

    print(f"\n### {name}: capture (`pkgckpt snapshot` into an empty store)\n")
    interleave(
        {
            "snapshot, artifact captured": (empty_store, case.pkgckpt("snapshot", store=empty), {}),
            "snapshot, `PKGCKPT_ARTIFACTS=0`": (
                empty_store,
                case.pkgckpt("snapshot", store=empty),
                {"PKGCKPT_ARTIFACTS": "0"},
            ),
        },
        rounds,
        env,
    )
    kept = (store / "b" / "artifacts").iterdir()
    sizes = {p.name: f"{p.stat().st_size / 2**20:.1f}" for p in kept}
    print(f"\nartifact sizes (MiB): {sizes}")


def main(rounds: int, only: str | None, source: Path | None) -> None:
    root = Path(tempfile.mkdtemp(prefix="ab-artifacts-", dir="/dev/shm"))
    try:
        python = install("HEAD", root / "tool")
        env = hermetic(root)
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PKGCKPT_ARTIFACTS"] = "1"  # the tests' settings switch it off
        env["PIP_NO_CACHE_DIR"] = "1"
        if only in (None, "forty"):
            forty(root / "forty", python, env, rounds)
        if only in (None, "sdist"):
            sdist(root / "sdist", python, env, rounds)
        if only == "wheel":
            assert source is not None, "wheel DIR"
            wheel(root / "wheel", python, env, rounds, source)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    args = sys.argv[1:]
    main(
        int(args[0]) if args else 10,
        args[1] if len(args) > 1 else None,
        Path(args[2]) if len(args) > 2 else None,
    )
