"""The artifact cache (issue 11): restore from artifacts beside the installers, and the
cost of capture.

    python benchmarks/ab_artifacts.py [REV] [--rounds N] [--quick] [--markdown PATH]
        [--only forty|sdist|real|wheel ...] [--wheels-cache DIR]

pkgckpt runs from a venv where it is installed as a user gets it (`pip install .`, not
editable, bytecode compiled: `bench_kit.pkgckpt_python`, run_all.py's); every tree is on
/dev/shm. The target venv is an image's: made once, then each round's setup (untimed, for
every contender alike) puts a copy of it at the recorded path (`cp -a`: new inodes, the
image's mtimes, as a new container sees its image), empties uv's cache and the runtime
directory. The baseline is the image's, taken by `pkgckpt baseline --output`, which keeps
the interpreter's probe answers beside it (`baseline.probes.json`): restore starts no
interpreter probe, the configuration of a new container of an image built with pkgckpt.
Contenders are interleaved round by round (`bench_kit.interleave`); min and median of the
whole process's wall time, the median CPU of its processes, the load before and after.
Given REV, an earlier commit installed the same way (`ab_restore_noop.install`) restores
from the same artifacts in the same rounds, in `forty` and `sdist` (uv).

  forty    40 small wheels: `pkgckpt restore --no-index` from the artifacts alone;
           `uv pip install --no-deps --no-index --find-links <wheels> -r` (cold), the
           target's peer; `pkgckpt restore` from the wheelhouse with a manifest without
           artifacts (restore as it was before the cache). Then the capture:
           `pkgckpt snapshot` of the 40 into an empty store, the cache on and off.
  sdist    one C-extension sdist: `pkgckpt restore --no-index` from its artifact, and
           from the sdist (built by uv, cold; by pip, --no-cache-dir via PIP_NO_CACHE_DIR),
           each with uv and with pip (pip beside pkgckpt, `--python` the venv).
  real     a real C extension's sdist, msgspec 0.19.0's (one 22,000-line C file, no library
           beside it; from `sdists/` beside --wheels-cache, filled once by `pip download
           --no-binary :all:`): `pkgckpt restore --no-index` from its artifact and from the
           sdist (built by uv, cold), at most 3 rounds: the build takes ~15 s here.
           In both sdist cases, with uv, the design-equivalent peer: `uv pip install
           --no-deps` (cold) of the captured wheel itself, no store and no checks.
  wheel    the scipy wheel (from --wheels-cache, filled once by `pip download` from the
           configured index, as bench_restore.py does; copied to /dev/shm):
           `pkgckpt restore --no-index` from its artifact against `uv pip install
           --no-deps` (cold) of the same file; then its capture, the cache on and off.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import msgspec

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

import bench_kit  # noqa: E402
from ab_restore_noop import install  # noqa: E402
from bench_restore import WHEELS_CACHE  # noqa: E402
from restore_kit import hermetic  # noqa: E402
from wheelhouse import Dist, add_build_backend, build_c_sdist, build_wheel, make_venv  # noqa: E402

from pkgckpt.manifest import Body  # noqa: E402
from pkgckpt.store import Store, init_store  # noqa: E402

UV = shutil.which("uv") or str(Path(sys.executable).with_name("uv"))
FORTY_RATIO = 1.0
WHEEL_RATIO = 1.0
SDIST_SPEEDUP = 10.0
REAL_SDIST = ("msgspec", "0.19.0")

Contender = tuple[Callable[[], None], Callable[[], object]]
"""The untimed setup of a round, and the timed call."""


class Case:
    """An image's venv (a template copied into place), a wheelhouse, the image's baseline
    with its probe answers (one per pkgckpt: `python`'s, and an earlier commit's in
    `others`, `bench_kit.baselines`), and the stores."""

    def __init__(
        self, root: Path, python: Path, env: dict[str, str], others: Sequence[Path] = ()
    ) -> None:
        self.root = root
        self.python = python
        self.env = env
        self.venv = root / "venv"
        self.image = root / "image"
        self.wheels = root / "wheels"
        root.mkdir(parents=True)
        make_venv(self.image, with_pip=False)
        self.fresh()
        self.baselines = bench_kit.baselines([python, *others], self.venv, root, env)

    def pkgckpt(self, *args: str, store: Path, python: Path | None = None) -> list[str]:
        python = python or self.python
        argv = [bench_kit.script(python), *args, "--store", str(store), "--key", "b"]
        return [*argv, "--env", str(self.venv), "--baseline", str(self.baselines[python])]

    def fresh(self) -> None:
        """A new container: the image's venv as its layers give it, cold caches."""
        shutil.rmtree(self.env["UV_CACHE_DIR"], ignore_errors=True)
        shutil.rmtree(Path(self.env["XDG_RUNTIME_DIR"]), ignore_errors=True)
        shutil.rmtree(self.venv, ignore_errors=True)
        subprocess.run(["cp", "-a", str(self.image), str(self.venv)], check=True)

    def run(self, argv: list[str], extra: Mapping[str, str] | None = None) -> str:
        done = subprocess.run(
            argv, env={**self.env, **(extra or {})}, capture_output=True, text=True
        )
        assert done.returncode == 0, (argv, done.stdout, done.stderr)
        return done.stdout

    def call(self, argv: list[str], extra: Mapping[str, str] | None = None) -> Callable[[], str]:
        return lambda: self.run(argv, extra)

    def install_all(self, *reqs: str) -> None:
        uv = [UV, "pip", "install", "-q", "--python", str(self.venv / "bin" / "python")]
        self.run([*uv, "--no-deps", "--no-index", "--find-links", str(self.wheels), *reqs])

    def snapshot(self, name: str) -> Path:
        """A store holding a snapshot (with artifacts) of what the venv holds now."""
        store = self.root / name
        init_store(store)
        self.run(self.pkgckpt("snapshot", store=store))
        return store

    def empty_store(self) -> Callable[[], None]:
        empty = self.root / "empty"

        def setup() -> None:
            shutil.rmtree(empty, ignore_errors=True)
            init_store(empty)
            shutil.rmtree(Path(self.env["XDG_RUNTIME_DIR"]), ignore_errors=True)

        return setup

    def capture(self, what: str, rounds: int) -> str:
        """`pkgckpt snapshot` into an empty store, the cache on and off, as a table."""
        setup, empty = self.empty_store(), self.root / "empty"
        off = "snapshot, `PKGCKPT_ARTIFACTS=0` (the manifest only)"
        contenders = {
            f"snapshot, {what} captured (repacked, hashed, written durably)": (
                setup, self.call(self.pkgckpt("snapshot", store=empty))
            ),
            off: (setup, self.call(self.pkgckpt("snapshot", store=empty),
                                   {"PKGCKPT_ARTIFACTS": "0"})),
        }  # fmt: skip
        times, cpu = measure(contenders, rounds)
        return bench_kit.table(times, cpu=cpu, peer=off)


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


def measure(
    contenders: Mapping[str, Contender], rounds: int
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Wall and CPU seconds per contender, after one untimed round (page cache, bytecode)."""
    calls = {label: call for label, (_, call) in contenders.items()}

    def setup(label: str) -> None:
        contenders[label][0]()

    bench_kit.interleave(calls, 1, setup)
    cpu: dict[str, list[float]] = {}
    return bench_kit.interleave(calls, rounds, setup, cpu), cpu


def at_most(limit: float) -> Callable[[str, float, float], str]:
    """The target column: wall and CPU ratios ≤ `limit` to the peer."""

    def target(label: str, ratio: float, extra_ms: float) -> str:
        del label, extra_ms
        return "met" if ratio <= limit else f"**not met** (≤ {limit:g}x)"

    return target


def speedup(times: Mapping[str, list[float]], cpu: Mapping[str, list[float]], ours: str,
            theirs: str) -> tuple[str, bool]:  # fmt: skip
    """How many times faster `ours` is than `theirs`, by the wall and the CPU median, and
    whether the smaller of the two meets the target."""
    wall = statistics.median(times[theirs]) / statistics.median(times[ours])
    used = statistics.median(cpu[theirs]) / statistics.median(cpu[ours])
    text = f"{wall:.1f}x faster by the wall median, {used:.1f}x by CPU"
    return text, min(wall, used) >= SDIST_SPEEDUP


def faster(times: Mapping[str, list[float]], cpu: Mapping[str, list[float]], ours: str,
           theirs: str) -> str:  # fmt: skip
    """How many times faster `ours` is than `theirs`, by the median, against the target."""
    text, met = speedup(times, cpu, ours, theirs)
    return f"{text}: " + ("met" if met else f"**not met** (≥ {SDIST_SPEEDUP:g}x)")


def sdist_verdict(markdown: Path | None, key: str, times: Mapping[str, list[float]],
                  cpu: Mapping[str, list[float]], ours: str, theirs: str) -> None:  # fmt: skip
    """`key`'s row in the table of targets: the artifact's restore against the sdist's."""
    text, met = speedup(times, cpu, ours, theirs)
    mine, peer = times[ours], times[theirs]
    figures = (
        f"{bench_kit.min_median(mine)} from the artifact vs {bench_kit.min_median(peer)} "
        f"from the sdist (min / median), CPU {bench_kit.ms(statistics.median(cpu[ours]))} vs "
        f"{bench_kit.ms(statistics.median(cpu[theirs]))}: {text}"
    )
    bench_kit.verdict(markdown, key, figures, met)


def forty(run: bench_kit.Run, root: Path, python: Path, env: dict[str, str],
          rounds: int, before: tuple[str, Path] | None, markdown: Path | None) -> None:  # fmt: skip
    case = Case(root, python, env, [before[1]] if before else [])
    pins = [Dist(f"bench-pkg-{i:03d}", f"1.{i}.0", files=5) for i in range(40)]
    for dist in pins:
        build_wheel(dist, case.wheels)
    requirements = root / "requirements.txt"
    requirements.write_text("".join(f"{d.name}=={d.version}\n" for d in pins))
    case.install_all("-r", str(requirements))
    store = case.snapshot("store")
    plain = without_artifacts(store, root / "plain")
    uv = [UV, "pip", "install", "-q", "--python", str(case.venv / "bin" / "python")]
    uv += ["--no-deps", "--no-index", "--find-links", str(case.wheels), "-r", str(requirements)]
    restore = ["restore", "--installer", "uv", "--no-index"]
    peer = "`uv pip install --no-deps` (cold), from the wheels"
    ours = "`pkgckpt restore --no-index`, from the artifacts alone"
    contenders = {
        ours: (case.fresh, case.call(case.pkgckpt(*restore, store=store))),
        peer: (case.fresh, case.call(uv)),
        **earlier(case, before, restore, store, "the artifacts alone"),
        "`pkgckpt restore --find-links <wheels>`, no artifacts (restore before the cache)": (
            case.fresh,
            case.call(case.pkgckpt(*restore, "--find-links", str(case.wheels), store=plain)),
        ),
    }  # fmt: skip
    times, cpu = measure(contenders, rounds)
    run.add(
        "**40 small wheels** (5 modules each), restore into a new container's venv; "
        f"target ≤ {FORTY_RATIO:g}x uv cold\n\n"
        + bench_kit.table(times, cpu=cpu, peer=peer, target=at_most(FORTY_RATIO))
    )
    got = bench_kit.versus(times, ours, peer, cpu)
    bench_kit.verdict(markdown, "artifacts-forty", got.text, got.ratio <= FORTY_RATIO)
    case.fresh()
    case.install_all("-r", str(requirements))
    run.add(
        "**40 small wheels, capture**: `pkgckpt snapshot` into an empty store (reported)\n\n"
        + case.capture("40 artifacts", rounds)
    )


def sdist(run: bench_kit.Run, root: Path, python: Path, env: dict[str, str],
          rounds: int, before: tuple[str, Path] | None, markdown: Path | None) -> None:  # fmt: skip
    case = Case(root, python, env, [before[1]] if before else [])
    build_c_sdist("fastmath", "1.0", case.wheels)
    add_build_backend(case.wheels)
    case.install_all("fastmath")
    store = case.snapshot("store")
    plain = without_artifacts(store, root / "plain")
    links = ("--find-links", str(case.wheels))
    for installer, how in (("uv", "uv builds it, cold"), ("pip", "pip builds it")):
        restore = ["restore", "--installer", installer, "--no-index"]
        ours = f"`pkgckpt restore --installer {installer} --no-index`, from its artifact"
        peer = f"`pkgckpt restore --installer {installer}`, from the sdist ({how})"
        contenders = {
            ours: (case.fresh, case.call(case.pkgckpt(*restore, store=store))),
            peer: (case.fresh, case.call(case.pkgckpt(*restore, *links, store=plain))),
            **(earlier(case, before, restore, store, "its artifact") if installer == "uv" else {}),
            **(captured_by_uv(case, store, "fastmath") if installer == "uv" else {}),
        }
        times, cpu = measure(contenders, rounds)
        run.add(
            f"**A C-extension sdist** (one 10-line function, setuptools), {installer}; "
            f"target ≥ {SDIST_SPEEDUP:g}x faster from the artifact: "
            + faster(times, cpu, ours, peer)
            + "\n\n"
            + bench_kit.table(times, cpu=cpu, peer=peer)
        )
        if installer == "uv":
            sdist_verdict(markdown, "artifacts-sdist", times, cpu, ours, peer)


def captured_by_uv(case: Case, store: Path, requirement: str) -> dict[str, Contender]:
    """The design-equivalent peer of a restore from an artifact: uv (cold) installing the
    captured wheel itself, from a directory of its own, with no store and no checks."""
    captured = case.root / "captured"
    if not captured.exists():
        captured.mkdir()
        for wheel in (store / "b" / "artifacts").glob("*.whl"):
            shutil.copy2(wheel, captured / wheel.name)
    uv = [UV, "pip", "install", "-q", "--python", str(case.venv / "bin" / "python")]
    uv += ["--no-deps", "--no-index", "--find-links", str(captured), requirement]
    label = "`uv pip install --no-deps` (cold), the captured wheel itself (design-equivalent)"
    return {label: (case.fresh, case.call(uv))}


def earlier(case: Case, before: tuple[str, Path] | None, restore: list[str], store: Path,
            what: str) -> dict[str, Contender]:  # fmt: skip
    """The same restore by an earlier commit's pkgckpt, when one is given."""
    if before is None:
        return {}
    rev, python = before
    label = f"`pkgckpt restore --no-index`, from {what}, at {rev}"
    return {label: (case.fresh, case.call(case.pkgckpt(*restore, store=store, python=python)))}


def real_sdist(cache: Path, into: Path) -> str:
    """REAL_SDIST's sdist from `cache` (filled with `pip download` from the configured index
    when it holds none), copied to `into`; its requirement."""
    name, version = REAL_SDIST
    found = cache / f"{name}-{version}.tar.gz"
    if not found.exists():
        cache.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", "pip", "download", "-q", "--no-binary", ":all:"]
        subprocess.run([*argv, "--no-deps", "--dest", str(cache), f"{name}=={version}"], check=True)
    into.mkdir(parents=True, exist_ok=True)
    shutil.copy2(found, into / found.name)
    return f"{name}=={version}"


def real(run: bench_kit.Run, root: Path, python: Path, env: dict[str, str], rounds: int,
         cache: Path, markdown: Path | None) -> None:  # fmt: skip
    case = Case(root, python, env)
    requirement = real_sdist(cache / "sdists", case.wheels)
    add_build_backend(case.wheels)
    case.install_all(requirement)
    store = case.snapshot("store")
    plain = without_artifacts(store, root / "plain")
    restore = ["restore", "--installer", "uv", "--no-index"]
    ours = "`pkgckpt restore --installer uv --no-index`, from its artifact"
    peer = "`pkgckpt restore --installer uv`, from the sdist (uv builds it, cold)"
    contenders = {
        ours: (case.fresh, case.call(case.pkgckpt(*restore, store=store))),
        peer: (case.fresh, case.call(
            case.pkgckpt(*restore, "--find-links", str(case.wheels), store=plain))),
        **captured_by_uv(case, store, requirement),
    }  # fmt: skip
    times, cpu = measure(contenders, rounds)
    run.add(
        f"**A real C extension**, {requirement.replace('==', ' ')} from its sdist (one "
        "22,000-line C file), uv; the target's ratio (≥ "
        f"{SDIST_SPEEDUP:g}x) on a build of the size users wait for: "
        + faster(times, cpu, ours, peer)
        + "\n\n"
        + bench_kit.table(times, cpu=cpu, peer=peer)
    )
    sdist_verdict(markdown, "artifacts-sdist-real", times, cpu, ours, peer)


def scipy_wheel(cache: Path, into: Path) -> Path:
    """The scipy wheel for this interpreter, from `cache` (filled with `pip download
    --no-deps` from the configured index when it holds none), copied to `into`."""
    if not any(cache.glob("scipy-*.whl")):
        cache.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", "pip", "download", "-q", "--only-binary", ":all:"]
        subprocess.run([*argv, "--no-deps", "--dest", str(cache), "scipy"], check=True)
    found = sorted(cache.glob("scipy-*.whl"))[-1]
    into.mkdir(parents=True)
    return Path(shutil.copy2(found, into / found.name))


def wheel(run: bench_kit.Run, root: Path, python: Path, env: dict[str, str], rounds: int,
          cache: Path, markdown: Path | None) -> None:  # fmt: skip
    case = Case(root, python, env)
    found = scipy_wheel(cache, case.wheels)
    name = found.name.split("-")[0]
    case.install_all(name)
    store = case.snapshot("store")
    uv = [UV, "pip", "install", "-q", "--python", str(case.venv / "bin" / "python")]
    uv += ["--no-deps", "--no-index", "--find-links", str(case.wheels), name]
    restore = ["restore", "--installer", "uv", "--no-index"]
    peer = "`uv pip install --no-deps` (cold), from the wheel"
    ours = "`pkgckpt restore --no-index`, from its artifact"
    contenders = {
        ours: (case.fresh, case.call(case.pkgckpt(*restore, store=store))),
        peer: (case.fresh, case.call(uv)),
    }  # fmt: skip
    times, cpu = measure(contenders, rounds)
    artifact = next((store / "b" / "artifacts").glob("*.whl")).stat().st_size / 2**20
    size = found.stat().st_size / 2**20
    run.add(
        f"**{found.name}** ({size:.1f} MiB; its artifact {artifact:.1f} MiB), restore into a "
        f"new container's venv; target ≤ {WHEEL_RATIO:g}x uv cold\n\n"
        + bench_kit.table(times, cpu=cpu, peer=peer, target=at_most(WHEEL_RATIO))
    )
    got = bench_kit.versus(times, ours, peer, cpu)
    bench_kit.verdict(markdown, "artifacts-scipy", got.text, got.ratio <= WHEEL_RATIO)
    case.fresh()
    case.install_all(name)
    run.add(
        f"**{name}, capture**: `pkgckpt snapshot` into an empty store (reported)\n\n"
        + case.capture("the artifact", rounds)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rev", nargs="?", help="an earlier commit restoring in the same rounds")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="3 rounds")
    parser.add_argument("--markdown", type=Path, help="write the tables here (run_all.py)")
    parser.add_argument("--only", action="append", choices=["forty", "sdist", "real", "wheel"])
    parser.add_argument("--wheels-cache", type=Path, default=WHEELS_CACHE)
    args = parser.parse_args()
    only = set(args.only or ["forty", "sdist", "real", "wheel"])
    rounds = 3 if args.quick else args.rounds
    root = Path(tempfile.mkdtemp(prefix="ab-artifacts-", dir="/dev/shm"))
    try:
        python = bench_kit.pkgckpt_python(root)
        before = (args.rev, install(args.rev, root / "before")) if args.rev else None
        env = hermetic(root)
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PKGCKPT_ARTIFACTS"] = "1"  # hermetic() switches it off for the tests
        env["PIP_NO_CACHE_DIR"] = "1"
        run = bench_kit.Run("artifacts")
        if "forty" in only:
            forty(run, root / "forty", python, env, rounds, before, args.markdown)
        if "sdist" in only:
            sdist(run, root / "sdist", python, env, rounds, before, args.markdown)
        if "real" in only:
            real(run, root / "real", python, env, min(rounds, 3), args.wheels_cache.parent,
                 args.markdown)  # fmt: skip
        if "wheel" in only:
            wheel(run, root / "wheel", python, env, rounds, args.wheels_cache, args.markdown)
        run.done()
        versions = [
            subprocess.run(argv, capture_output=True, text=True).stdout.strip()
            for argv in ([UV, "--version"], [str(python), "-m", "pip", "--version"])
        ]
        run.add(
            f"{rounds} rounds. Peers: {versions[0]} (cache emptied before each round, no "
            f"config); {' '.join(versions[1].split()[:2])} beside pkgckpt, `--python` the "
            "target venv, `PIP_NO_CACHE_DIR=1`, no pip.conf. Ratios are of medians; the "
            "target column takes the larger of the wall and the CPU ratio."
        )
        run.write(args.markdown)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
