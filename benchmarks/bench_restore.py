"""`pkgckpt restore` beside the bare installers doing the same installs, whole processes.

    python benchmarks/bench_restore.py [--markdown PATH] [--quick] [--only restore-40 ...]

Three groups, each with its contenders interleaved round by round (README.md's rules),
every tree on tmpfs (/dev/shm):

  restore-40     40 small wheels (5 modules each) pinned `name==version`, into a fresh
                 venv: `pkgckpt restore` with uv and with pip, beside their
                 design-equivalent peers `uv pip install --no-deps -r` and
                 `pip install --no-deps -r` of the same pins from the same wheelhouse.
  restore-scipy  the scipy wheel (~35 MB) and numpy, pinned, the same four contenders.
                 The wheels come from PyPI once (`pip download scipy`) into a cache
                 outside the repository (--wheels-cache), then are copied to tmpfs.
  noop-100       a 100-package manifest, every package in place: `pkgckpt restore`,
                 uv's and pip's own no-op (`install -r` of the same pins, all satisfied),
                 and `python -c pass` from pkgckpt's own venv (the interpreter's start).
  restore-40-r   the 40 wheels again, in a new container of an image with R: R
                 discovery on (`discover`'s default), an empty runtime directory, the
                 venv a copy of the image's (`cp -a`: new inodes, the image's mtimes).
                 `pkgckpt restore --installer uv` without the image's baseline, with it
                 but without the answers kept beside it (`baseline.probes.json`), and with
                 both, beside `uv pip install --no-deps -r`. Skipped without Rscript.

pkgckpt runs from a venv where it is installed as a user gets it (`pip install .`,
compiled: `bench_kit.pkgckpt_python`). Untimed before every timed call, for every
contender alike: a fresh venv at the same path (a copy of a template with pip for the pip
contenders), an empty uv cache, an empty runtime directory (a new container: no baseline,
no kept interpreter answer). All installers see `--no-index --find-links <wheelhouse>`
and no pip.conf / uv.toml.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

import bench_kit  # noqa: E402
from packaging.utils import parse_wheel_filename  # noqa: E402
from restore_kit import hermetic, installed, put_manifest  # noqa: E402
from wheelhouse import Dist, build_wheel, make_venv  # noqa: E402

from pkgckpt.config import Config  # noqa: E402
from pkgckpt.inventory import targets  # noqa: E402
from pkgckpt.manifest import Body, Delta, Package  # noqa: E402
from pkgckpt.scan.python import canonicalize_name  # noqa: E402

UV = shutil.which("uv") or str(Path(sys.executable).with_name("uv"))
OVERHEAD_MS = 25.0
NOOP_RATIO = 2.5
NOOP_MS = 150.0
WHEELS_CACHE = Path.home() / ".cache" / "pkgckpt-bench" / "scipy"


class Bench:
    """A wheelhouse, its pins, a store holding their manifest, and a venv to fill."""

    def __init__(self, root: Path, wheels: Path, pins: list[tuple[str, str]], pkgckpt: Path):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.wheels = wheels
        self.pins = pins
        self.pkgckpt = pkgckpt
        self.requirements = root / "requirements.txt"
        self.requirements.write_text("".join(f"{n}=={v}\n" for n, v in pins))
        self.venv = root / "venv"
        self.store = root / "store"
        self.env = hermetic(root)
        # uv on PATH: `pkgckpt restore` (auto, or --installer uv) looks for it there.
        self.env["PATH"] = f"{Path(UV).parent}:{self.env.get('PATH', '')}"
        self.cache = Path(self.env["UV_CACHE_DIR"])
        self.template: Path | None = None

    def fresh(self, with_pip: bool) -> None:
        """A new venv at the same path, a cold uv cache, a new container's runtime dir."""
        shutil.rmtree(self.cache, ignore_errors=True)
        shutil.rmtree(self.root / "run", ignore_errors=True)
        shutil.rmtree(self.venv, ignore_errors=True)
        if with_pip:
            if self.template is None:
                self.template = make_venv(self.root / "template").prefix
            shutil.copytree(self.template, self.venv, symlinks=True)
            # The copy's scripts name the template in their #! line; pip runs as -m pip.
        else:
            make_venv(self.venv, with_pip=False)

    def manifest(self) -> None:
        """The manifest a daemon would have written for these pins in this venv."""
        env = targets(Config(env=(self.venv,)))[0].env
        added = tuple(Package(name=n, version=v) for n, v in self.pins)
        put_manifest(self.store, "bench", Body(environments=(Delta(env=env, added=added),)))

    def run(self, *argv: str, env: dict[str, str] | None = None) -> Callable[[], None]:
        def call() -> None:
            proc = subprocess.run(
                argv, env=env or self.env, capture_output=True, text=True, cwd=self.root
            )
            assert proc.returncode == 0, proc.stdout + proc.stderr

        return call

    def restore(self, *extra: str, env: dict[str, str] | None = None) -> Callable[[], None]:
        argv = (bench_kit.script(self.pkgckpt), "restore", "--store", str(self.store))
        argv += ("--key", "bench", "--env", str(self.venv), "--no-index")
        return self.run(*argv, "--find-links", str(self.wheels), *extra, env=env)

    def pip(self) -> Callable[[], None]:
        argv = (str(self.venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps")
        argv += ("--no-index", "--find-links", str(self.wheels), "-r", str(self.requirements))
        return self.run(*argv)

    def uv(self) -> Callable[[], None]:
        argv = (UV, "pip", "install", "-q", "--python", str(self.venv / "bin" / "python"))
        argv += ("--no-deps", "--no-index", "--find-links", str(self.wheels))
        return self.run(*argv, "-r", str(self.requirements))

    def complete(self) -> None:
        site = next((self.venv / "lib").glob("python3*/site-packages"))
        have = {canonicalize_name(n): v for n, v in installed(site).items()}
        missing = [n for n, v in self.pins if have.get(canonicalize_name(n)) != v]
        assert not missing, f"not installed: {missing}"


def small_wheels(root: Path, count: int) -> list[tuple[str, str]]:
    pins = [Dist(f"bench-pkg-{i:03d}", f"1.{i}.0", files=5) for i in range(count)]
    for dist in pins:
        build_wheel(dist, root)
    return [(d.name, d.version) for d in pins]


def scipy_wheels(cache: Path, into: Path) -> list[tuple[str, str]]:
    """scipy and its dependencies as wheels for this interpreter, from `cache` (filled
    from PyPI with `pip download` when empty), copied to `into` on tmpfs."""
    if not any(cache.glob("scipy-*.whl")):
        cache.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", "pip", "download", "-q", "--only-binary", ":all:"]
        subprocess.run([*argv, "--dest", str(cache), "scipy"], check=True)
    into.mkdir(parents=True, exist_ok=True)
    pins = []
    for wheel in sorted(cache.glob("*.whl")):
        shutil.copy2(wheel, into / wheel.name)
        name, version, _, _ = parse_wheel_filename(wheel.name)
        pins.append((str(name), str(version)))
    return pins


def overhead(label: str, ratio: float, extra_ms: float) -> str:
    del label, ratio
    return "met" if extra_ms <= OVERHEAD_MS else f"**not met** (≤ +{OVERHEAD_MS:.0f} ms)"


def install_group(
    run: bench_kit.Run,
    name: str,
    bench: Bench,
    rounds: int,
    markdown: Path | None = None,
    keys: Mapping[str, str] | None = None,
) -> None:
    """`keys`: the target (run_all.py's TARGETS) each installer's pair answers, by
    installer ("uv", "pip"), told to `bench_kit.verdict` with the table's own reading."""
    bench.fresh(with_pip=False)
    bench.manifest()
    contenders = {
        "`uv pip install --no-deps -r`": bench.uv(),
        "`pkgckpt restore --installer uv`": bench.restore("--installer", "uv"),
        "`pip install --no-deps -r`": bench.pip(),
        "`pkgckpt restore --installer pip`": bench.restore("--installer", "pip"),
    }

    def setup(label: str) -> None:
        bench.fresh(with_pip="pip" in label and "uv" not in label)

    # One untimed round: the page cache holds the wheels and the interpreters for all.
    bench_kit.interleave(contenders, 1, setup)
    cpu: dict[str, list[float]] = {}
    times = bench_kit.interleave(contenders, rounds, setup, cpu)
    bench.complete()
    uv_side = {k: v for k, v in times.items() if "uv" in k}
    pip_side = {k: v for k, v in times.items() if "uv" not in k}
    run.add(
        f"**{name}**, {len(bench.pins)} pinned distributions into a fresh venv\n\n"
        + bench_kit.table(uv_side, cpu=cpu, peer="`uv pip install --no-deps -r`", target=overhead)
        + "\n\n"
        + bench_kit.table(pip_side, cpu=cpu, peer="`pip install --no-deps -r`", target=overhead)
    )
    pairs = {
        "uv": ("`pkgckpt restore --installer uv`", "`uv pip install --no-deps -r`"),
        "pip": ("`pkgckpt restore --installer pip`", "`pip install --no-deps -r`"),
    }
    for installer, key in (keys or {}).items():
        label, peer = pairs[installer]
        got = bench_kit.versus(times, label, peer, cpu)
        met = overhead(label, got.ratio, got.extra_ms) == "met"
        bench_kit.verdict(markdown, key, got.text, met)


def noop_group(run: bench_kit.Run, bench: Bench, rounds: int, markdown: Path | None = None) -> None:
    bench.fresh(with_pip=True)
    bench.manifest()
    bench.restore()()
    bench.complete()
    contenders = {
        "`python -c pass` (pkgckpt's venv)": bench.run(str(bench.pkgckpt), "-c", "pass"),
        "`pkgckpt restore`, all in place": bench.restore(),
        "`uv pip install --no-deps -r`, all in place": bench.uv(),
        "`pip install --no-deps -r`, all in place": bench.pip(),
    }
    bench_kit.interleave(contenders, 2)

    def target(label: str, ratio: float, extra_ms: float) -> str:
        del extra_ms
        if not label.startswith("`pkgckpt"):
            return ""
        return "met" if ratio <= NOOP_RATIO else f"**not met** (≤ {NOOP_RATIO}x)"

    cpu: dict[str, list[float]] = {}
    times = bench_kit.interleave(contenders, rounds, cpu=cpu)
    run.add(
        f"**noop-100**, {len(bench.pins)} recorded packages, all in place\n\n"
        + bench_kit.table(times, cpu=cpu, peer="`python -c pass` (pkgckpt's venv)", target=target)
    )
    label, peer = "`pkgckpt restore`, all in place", "`python -c pass` (pkgckpt's venv)"
    mine, mid = times[label], statistics.median(times[label])
    bench_kit.verdict(
        markdown,
        "noop-150",
        f"{bench_kit.min_median(mine)} (min / median; "
        f"CPU median {bench_kit.ms(statistics.median(cpu[label]))})",
        mid * 1000 <= NOOP_MS,
    )
    got = bench_kit.versus(times, label, peer, cpu)
    met = target(label, got.ratio, got.extra_ms) == "met"
    bench_kit.verdict(markdown, "noop-peer", got.text, met)


def r_group(run: bench_kit.Run, bench: Bench, rounds: int) -> None:
    """restore-40-r: what a new container of an image with R pays before installing."""
    if shutil.which("Rscript") is None:
        run.add("**restore-40-r** skipped: Rscript is not on PATH.")
        return
    home = bench.root / "home"
    home.mkdir()
    bench.env["HOME"] = str(home)
    bench.env.pop("PKGCKPT_DISCOVER")  # the default: R's libraries are discovered
    image = bench.root / "image"
    make_venv(image, with_pip=False)
    baseline = bench.root / "etc" / "baseline.json"
    baseline.parent.mkdir()
    answers = baseline.with_name("baseline.probes.json")
    hidden = baseline.with_name("hidden.json")

    def container() -> None:
        """A new container: the image's venv as the layers give it, no runtime dir."""
        shutil.rmtree(bench.cache, ignore_errors=True)
        shutil.rmtree(bench.root / "run", ignore_errors=True)
        shutil.rmtree(bench.venv, ignore_errors=True)
        subprocess.run(["cp", "-a", str(image), str(bench.venv)], check=True)

    container()
    # The image build step, on the image's venv as a new container sees it.
    bench.run(bench_kit.script(bench.pkgckpt), "baseline", "--output", str(baseline),
              "--env", str(bench.venv))()  # fmt: skip
    assert answers.is_file()
    bench.manifest()
    with_image = {**bench.env, "PKGCKPT_BASELINE": str(baseline)}
    contenders = {
        "`uv pip install --no-deps -r`": bench.uv(),
        "`pkgckpt restore`, no image baseline": bench.restore("--installer", "uv"),
        "`pkgckpt restore`, image baseline without its answers": bench.restore(
            "--installer", "uv", env=with_image
        ),
        "`pkgckpt restore`, image baseline and its answers": bench.restore(
            "--installer", "uv", env=with_image
        ),
    }

    def setup(label: str) -> None:
        container()
        if "without its answers" in label:
            answers.rename(hidden)
        elif hidden.exists():
            hidden.rename(answers)

    bench_kit.interleave(contenders, 1, setup)
    cpu: dict[str, list[float]] = {}
    times = bench_kit.interleave(contenders, rounds, setup, cpu)
    if hidden.exists():
        hidden.rename(answers)
    bench.complete()
    run.add(
        f"**restore-40-r**, {len(bench.pins)} pinned distributions, a new container of an "
        "image with R (R discovery on, empty runtime directory)\n\n"
        + bench_kit.table(times, cpu=cpu, peer="`uv pip install --no-deps -r`", target=overhead)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--markdown", type=Path, help="write the tables here (run_all.py)")
    parser.add_argument("--quick", action="store_true", help="fewer rounds")
    parser.add_argument(
        "--only", action="append", choices=["restore-40", "scipy", "noop-100", "restore-40-r"]
    )
    parser.add_argument("--wheels-cache", type=Path, default=WHEELS_CACHE)
    args = parser.parse_args()
    only = set(args.only or ["restore-40", "scipy", "noop-100", "restore-40-r"])
    rounds = {"restore-40": 3, "scipy": 2, "noop-100": 10, "restore-40-r": 3}
    rounds = rounds if args.quick else {}
    root = Path(tempfile.mkdtemp(prefix="bench-restore-", dir="/dev/shm"))
    try:
        pkgckpt = bench_kit.pkgckpt_python(root)
        run = bench_kit.Run("restore")
        if "restore-40" in only:
            pins = small_wheels(root / "w40", 40)
            bench = Bench(root / "r40", root / "w40", pins, pkgckpt)
            keys = {"uv": "restore-uv", "pip": "restore-pip"}
            install_group(
                run, "restore-40", bench, rounds.get("restore-40", 7), args.markdown, keys
            )
        if "scipy" in only:
            pins = scipy_wheels(args.wheels_cache, root / "wsci")
            bench = Bench(root / "sci", root / "wsci", pins, pkgckpt)
            keys = {"uv": "restore-scipy", "pip": "restore-scipy-pip"}
            install_group(run, "restore-scipy", bench, rounds.get("scipy", 5), args.markdown, keys)
        if "noop-100" in only:
            pins = small_wheels(root / "w100", 100)
            bench = Bench(root / "n100", root / "w100", pins, pkgckpt)
            noop_group(run, bench, rounds.get("noop-100", 30), args.markdown)
        if "restore-40-r" in only:
            pins = small_wheels(root / "w40r", 40)
            bench = Bench(root / "r40r", root / "w40r", pins, pkgckpt)
            r_group(run, bench, rounds.get("restore-40-r", 7))
        run.done()
        uv = subprocess.run([UV, "--version"], capture_output=True, text=True).stdout.strip()
        run.add(
            f"Peers: {uv} (cache emptied before each round, no config); the pip of each "
            "fresh venv (`python -m venv`), no pip.conf. `pkgckpt restore` picks the "
            "installer named; the target column asks ≤ +25 ms over the bare installer's "
            "median, and ≤ 2.5x `python -c pass` for the no-op."
        )
        run.write(args.markdown)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
