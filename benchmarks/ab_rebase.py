"""Restore of 40 packages onto a new image (a rebase) beside the installer doing the same
work, and an earlier commit's rebase and same-image restore beside this tree's.

    python benchmarks/ab_rebase.py [REV] [--rounds N] [--quick] [--markdown PATH]

Each pkgckpt is installed as a user gets it (`pip install .`, not editable, bytecode
compiled) into its own venv on /dev/shm: this tree's is run_all.py's
(`bench_kit.pkgckpt_python`), REV's from a `git archive`; without REV the earlier
commit's rows (its rebase, its same-image restore, its plan alone) are left out. The
image's baseline is taken by `pkgckpt baseline --output`, with the interpreter's probe
answers beside it (`baseline.probes.json`), and each round's venv keeps the image's
files (`cp -a` of the image, as a new container sees it), so restore starts no
interpreter probe. The image ships 20 packages
`bench-img-NNN` (v1 at 1.0, v2 at 2.0); the manifest records 40 added packages
`bench-pkg-NNN`, each requiring one image package (`>=1.0`). Every contender gets the
same untimed setup per round: the venv put back at the same path as image v2 left it,
a cold uv cache, an empty runtime directory, `--no-index --find-links <wheelhouse>`, no
pip.conf / uv.toml. Contenders alternate round by round:

  rebase            this tree, the manifest taken on image v1: classify, read the image's
                    and the wheels' metadata, check, then `uv pip install -c` (resolving)
  uv -c             `uv pip install -c <image pins> -r <the 40 pins>`: the installer's
                    own time for the same resolution, the rebase's target peer
  rebase (REV)      the earlier commit on the same manifest
  same image        this tree, the manifest taken on image v2: exact pins, --no-deps
  same image (REV)  the earlier commit on the same manifest
  uv --no-deps      `uv pip install --no-deps -r <the 40 pins>`: the same-image peer

Min and median wall time of the whole process, the median CPU of its processes, and the
load average around it (`bench_kit.interleave`, `bench_kit.table`); then the plan alone
(`restore._plan`: read the image's and the wheels' metadata, classify, check) of this
tree (and of REV), first call (imports included) and best of 20 after it, for the
rebase and for the same image, in a fresh process that has done what a restore does
before it (the manifest read and validated, `subprocess` imported: every install runs
through it): what the rebase adds to a restore beyond the installer's own work.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

import bench_kit  # noqa: E402
from ab_restore_noop import install  # noqa: E402
from restore_kit import hermetic, put_manifest  # noqa: E402
from wheelhouse import Dist, build_wheel, make_venv  # noqa: E402

from pkgckpt.config import Config  # noqa: E402
from pkgckpt.inventory import targets  # noqa: E402
from pkgckpt.manifest import Body, Delta, Package, image_identity  # noqa: E402

UV = shutil.which("uv") or str(Path(sys.executable).with_name("uv"))
PLAN = """
import subprocess, sys, time
from pathlib import Path
from pkgckpt.config import Config
from pkgckpt.inventory import load_baseline, targets
from pkgckpt.restore import _plan, _read

store, venv, baseline, wheels, run = sys.argv[1:6]
config = Config(store=Path(store), key="bench", env=(Path(venv),), baseline=Path(baseline),
                find_links=(wheels,), no_index=True, runtime_dir=Path(run))
found, image, manifest = targets(config), load_baseline(config), _read(config)
times = []
for _ in range(21):
    start = time.perf_counter()
    plan = _plan(config, manifest, found, image)
    times.append((time.perf_counter() - start) * 1000)
assert len(plan.environments[0].install) == 40
print(f"{times[0]:.1f} {min(times[1:]):.1f}")
"""
IMAGE = 20
USER = 40
REBASE_MS = 50.0
# "No regression" of the same-image restore against REV: this tree's median (wall and
# CPU, the larger ratio) at most this much over REV's, the two measured in the same rounds.
SAME_IMAGE_RATIO = 1.05


def within(extra_ms: float) -> bool:
    """The rebase's target: ≤ the installer's own time + REBASE_MS."""
    return extra_ms <= REBASE_MS


def overhead(label: str, ratio: float, extra_ms: float) -> str:
    del label, ratio
    return "met" if within(extra_ms) else f"**not met** (≤ +{REBASE_MS:.0f} ms)"


def main(rev: str | None, rounds: int, markdown: Path | None) -> None:
    root = Path(tempfile.mkdtemp(prefix="ab-rebase-", dir="/dev/shm"))
    try:
        after = bench_kit.pkgckpt_python(root)
        before = install(rev, root / "before") if rev is not None else None
        run = bench_kit.Run("rebase")
        wheels = root / "wheels"
        v1 = [Dist(f"bench-img-{i:03d}", "1.0", files=5) for i in range(IMAGE)]
        v2 = [Dist(f"bench-img-{i:03d}", "2.0", files=5) for i in range(IMAGE)]
        pins = [
            Dist(
                f"bench-pkg-{i:03d}",
                f"1.{i}.0",
                files=5,
                requires=[f"bench-img-{i % IMAGE:03d}>=1.0"],
            )
            for i in range(USER)
        ]
        for dist in (*v1, *v2, *pins):
            build_wheel(dist, wheels)
        requirements = root / "requirements.txt"
        requirements.write_text("".join(f"{d.name}=={d.version}\n" for d in pins))
        constraints = root / "constraints.txt"
        constraints.write_text("".join(f"{d.name}=={d.version}\n" for d in v2))
        venv, image, env = root / "venv", root / "image", hermetic(root)
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        python = str(venv / "bin" / "python")
        make_venv(image, with_pip=False)
        subprocess.run(
            [UV, "pip", "install", "-q", "--python", str(image / "bin" / "python"),
             "--no-index", "--find-links", str(wheels),
             *(f"{d.name}=={d.version}" for d in v2)],
            check=True, env=env,
        )  # fmt: skip

        def fresh(label: str = "") -> None:
            """A new container of image v2: its venv as the layers give it, cold caches."""
            del label
            shutil.rmtree(env["UV_CACHE_DIR"], ignore_errors=True)
            shutil.rmtree(root / "run", ignore_errors=True)
            shutil.rmtree(venv, ignore_errors=True)
            subprocess.run(["cp", "-a", str(image), str(venv)], check=True)

        fresh()
        (root / "etc").mkdir()
        commits = [after, *([before] if before is not None else [])]
        baselines = bench_kit.baselines(commits, venv, root / "etc", env)
        target = targets(Config(env=(venv,), runtime_dir=root / "cfg"))[0].env
        added = tuple(Package(name=d.name, version=d.version) for d in pins)
        old = image_identity(Package(name=d.name, version=d.version) for d in v1)
        new = image_identity(Package(name=d.name, version=d.version) for d in v2)
        stores = {}
        for label, identity in (("v1", old), ("v2", new)):
            stores[label] = root / f"store-{label}"
            delta = Delta(env=target, added=added, image=identity)
            put_manifest(stores[label], "bench", Body(environments=(delta,)))

        def restore(python: Path, store: str) -> list[str]:
            return [bench_kit.script(python), "restore", "--store", str(stores[store]),
                    "--key", "bench", "--env", str(venv), "--baseline", str(baselines[python]),
                    "--no-index", "--find-links", str(wheels)]  # fmt: skip

        uv = [UV, "pip", "install", "-q", "--python", python, "--no-index", "--find-links",
              str(wheels), "-r", str(requirements)]  # fmt: skip
        rebase, uv_c = "`pkgckpt restore`, rebase onto v2", "`uv pip install -c <image> -r`"
        same, uv_nodeps = "`pkgckpt restore`, same image", "`uv pip install --no-deps -r`"
        rebase_before = f"`pkgckpt restore`, rebase onto v2 ({rev})"
        commands = {rebase: restore(after, "v1"), uv_c: [*uv, "-c", str(constraints)]}
        if before is not None:
            commands[rebase_before] = restore(before, "v1")
        commands |= {same: restore(after, "v2"), uv_nodeps: [*uv, "--no-deps"]}
        same_before = f"`pkgckpt restore`, same image ({rev})"
        if before is not None:
            commands[same_before] = restore(before, "v2")
        for label, command in commands.items():  # warm-up: page cache, and a check
            fresh()
            done = subprocess.run(command, env=env, capture_output=True, text=True)
            assert done.returncode == 0, (label, done.stdout, done.stderr)
            if label in (rebase, rebase_before):
                assert "rebased onto a new image" in done.stdout, done.stdout

        def call(command: list[str]) -> Callable[[], None]:
            return lambda: subprocess.run(command, env=env, capture_output=True, check=True)

        contenders = {label: call(command) for label, command in commands.items()}
        cpu: dict[str, list[float]] = {}
        times = bench_kit.interleave(contenders, rounds, fresh, cpu)
        fresh()
        rows = [
            "| plan alone (fresh process, min of 5, interleaved) | first call | best of 20 after |",
            "|---|---|---|",
        ]
        trees = [("this tree", after)] + ([(rev, before)] if before is not None else [])
        for label, store in (("rebase", "v1"), ("same image", "v2")):
            firsts: dict[str, list[float]] = {}
            bests: dict[str, list[float]] = {}
            for _ in range(5):
                for tree, ours in trees:
                    out = subprocess.run(
                        [str(ours), "-c", PLAN, str(stores[store]), str(venv),
                         str(baselines[ours]), str(wheels), str(root / "run")],
                        check=True, env=env, capture_output=True, text=True, cwd=root,
                    ).stdout.split()  # fmt: skip
                    firsts.setdefault(tree, []).append(float(out[0]))
                    bests.setdefault(tree, []).append(float(out[1]))
            for tree, _ in trees:
                rows.append(
                    f"| {label}, {tree} | {min(firsts[tree]):.1f} ms | {min(bests[tree]):.1f} ms |"
                )
        run.done()
        rebase_side = {k: times[k] for k in (rebase, uv_c, rebase_before) if k in times}
        same_side = {k: v for k, v in times.items() if k not in rebase_side}
        version = subprocess.run([UV, "--version"], capture_output=True, text=True).stdout
        run.add(
            f"**Rebase** of {USER} packages onto image v2 ({IMAGE} image packages), "
            f"{rounds} rounds; target ≤ the installer's own time + {REBASE_MS:.0f} ms\n\n"
            + bench_kit.table(rebase_side, cpu=cpu, peer=uv_c, target=overhead)
        )
        run.add(
            "**Same image**: exact pins, `--no-deps` (no regression)\n\n"
            + bench_kit.table(same_side, cpu=cpu, peer=uv_nodeps)
        )
        got = bench_kit.versus(times, rebase, uv_c, cpu)
        bench_kit.verdict(
            markdown,
            "rebase",
            f"{got.text}, against `uv pip install -c`: {got.extra_ms:+,.0f} ms by the larger "
            "of wall and CPU",
            within(got.extra_ms),
        )
        if before is not None:
            got = bench_kit.versus(times, same, same_before, cpu)
            bench_kit.verdict(
                markdown,
                "same-image",
                f"{got.text}, against {rev}; no regression: ≤ {SAME_IMAGE_RATIO:.2f}x by the "
                "larger of wall and CPU",
                got.ratio <= SAME_IMAGE_RATIO,
            )
        run.add(
            "\n".join(rows)
            + f"\n\nPeer: {version.strip()}, cache emptied before each round, no config. "
            "The target column takes the larger of the wall and the CPU difference."
        )
        run.write(markdown)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rev", nargs="?", help="an earlier commit for the same-image row")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="4 rounds")
    parser.add_argument("--markdown", type=Path, help="write the tables here (run_all.py)")
    args = parser.parse_args()
    main(args.rev, 4 if args.quick else args.rounds, args.markdown)
