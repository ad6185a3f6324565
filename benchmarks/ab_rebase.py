"""Restore of 40 packages onto a new image (a rebase) beside the installer doing the same
work, and the same-image restore of an earlier commit beside this tree's.

    python benchmarks/ab_rebase.py REV [ROUNDS]

Each pkgckpt is installed as a user gets it (`pip install .` of a `git archive`, not
editable, bytecode compiled) into its own venv on /dev/shm. The image ships 20 packages
`bench-img-NNN` (v1 at 1.0, v2 at 2.0); the manifest records 40 added packages
`bench-pkg-NNN`, each requiring one image package (`>=1.0`). Every contender gets the
same untimed setup per round: the venv rebuilt at the same path with image v2 (uv, from
the wheelhouse), a cold uv cache, an empty runtime directory, `--no-index --find-links
<wheelhouse>`, no pip.conf / uv.toml. Contenders alternate round by round:

  rebase            this tree, the manifest taken on image v1: classify, read the image's
                    and the wheels' metadata, check, then `uv pip install -c` (resolving)
  uv -c             `uv pip install -c <image pins> -r <the 40 pins>`: the installer's
                    own time for the same resolution, the rebase's target peer
  same image        this tree, the manifest taken on image v2: exact pins, --no-deps
  same image (REV)  the earlier commit on the same manifest
  uv --no-deps      `uv pip install --no-deps -r <the 40 pins>`: the same-image peer

Prints min and median wall time of the whole process and the load average around it;
then the plan alone (`restore._plan`: read the image's and the wheels' metadata,
classify, check) in a fresh process of this tree, first call (imports included) and best
of 20 after it, for the rebase and for the same image: what the rebase adds to a restore
beyond the installer's own work.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

from ab_restore_noop import install  # noqa: E402
from restore_kit import hermetic, put_manifest  # noqa: E402
from wheelhouse import Dist, build_wheel, make_venv  # noqa: E402

from pkgckpt.config import Config  # noqa: E402
from pkgckpt.inventory import targets  # noqa: E402
from pkgckpt.manifest import Body, Delta, Package, image_identity  # noqa: E402

UV = shutil.which("uv") or "uv"
PLAN = """
import sys, time
from pathlib import Path
from pkgckpt.config import Config
from pkgckpt.inventory import load_baseline, targets
from pkgckpt.restore import _plan
from pkgckpt.store import Store

store, venv, baseline, wheels, run = sys.argv[1:6]
config = Config(store=Path(store), key="bench", env=(Path(venv),), baseline=Path(baseline),
                find_links=(wheels,), no_index=True, runtime_dir=Path(run))
found, image, manifest = targets(config), load_baseline(config), Store(Path(store), "bench").read()
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


def main(rev: str, rounds: int) -> None:
    root = Path(tempfile.mkdtemp(prefix="ab-rebase-", dir="/dev/shm"))
    try:
        before, after = install(rev, root / "before"), install("HEAD", root / "after")
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
        venv, env = root / "venv", hermetic(root)
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        python = str(venv / "bin" / "python")

        def fresh() -> None:
            shutil.rmtree(env["UV_CACHE_DIR"], ignore_errors=True)
            shutil.rmtree(root / "run", ignore_errors=True)
            make_venv(venv, with_pip=False)
            subprocess.run(
                [UV, "pip", "install", "-q", "--python", python, "--no-index",
                 "--find-links", str(wheels), *(f"{d.name}=={d.version}" for d in v2)],
                check=True, env=env,
            )  # fmt: skip
            shutil.rmtree(env["UV_CACHE_DIR"], ignore_errors=True)

        fresh()
        baseline = root / "b2.json"
        subprocess.run(
            [str(after), "-m", "pkgckpt", "baseline", "--env", str(venv), "--output",
             str(baseline)],
            check=True, env=env,
        )  # fmt: skip
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
            return [str(python), "-m", "pkgckpt", "restore", "--store", str(stores[store]),
                    "--key", "bench", "--env", str(venv), "--baseline", str(baseline),
                    "--no-index", "--find-links", str(wheels)]  # fmt: skip

        uv = [UV, "pip", "install", "-q", "--python", python, "--no-index", "--find-links",
              str(wheels), "-r", str(requirements)]  # fmt: skip
        contenders = {
            "rebase (this tree)": restore(after, "v1"),
            "uv pip install -c <image> -r": [*uv, "-c", str(constraints)],
            "same image (this tree)": restore(after, "v2"),
            f"same image ({rev})": restore(before, "v2"),
            "uv pip install --no-deps -r": [*uv, "--no-deps"],
        }
        for label, command in contenders.items():  # warm-up: bytecode, and a check
            fresh()
            done = subprocess.run(command, env=env, capture_output=True, text=True)
            assert done.returncode == 0, (label, done.stdout, done.stderr)
            if label.startswith("rebase"):
                assert "rebased onto a new image" in done.stdout, done.stdout
        times: dict[str, list[float]] = {label: [] for label in contenders}
        load = os.getloadavg()
        for _ in range(rounds):
            for label, command in contenders.items():
                fresh()
                start = time.perf_counter()
                done = subprocess.run(command, env=env, capture_output=True)
                times[label].append((time.perf_counter() - start) * 1000)
                assert done.returncode == 0, label
        after_load = os.getloadavg()
        print(f"load (1 min) {load[0]:.2f} -> {after_load[0]:.2f}; {rounds} rounds")
        print("| contender | min | median |\n|---|---|---|")
        for label, values in times.items():
            print(f"| {label} | {min(values):.0f} ms | {statistics.median(values):.0f} ms |")
        fresh()
        print("| plan alone (this tree, fresh process) | first call | best of 20 after |")
        print("|---|---|---|")
        for label, store in (("rebase", "v1"), ("same image", "v2")):
            firsts, bests = [], []
            for _ in range(5):
                out = subprocess.run(
                    [str(after), "-c", PLAN, str(stores[store]), str(venv), str(baseline),
                     str(wheels), str(root / "run")],
                    check=True, env=env, capture_output=True, text=True,
                ).stdout.split()  # fmt: skip
                firsts.append(float(out[0]))
                bests.append(float(out[1]))
            print(f"| {label} | {min(firsts):.1f} ms | {min(bests):.1f} ms |")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 10)
