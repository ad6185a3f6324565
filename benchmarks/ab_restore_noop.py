"""The no-op restore of an earlier commit against this tree's, with the trust checks on.

    python benchmarks/ab_restore_noop.py REV [ROUNDS] [--markdown PATH]

Each side is installed as a user gets it (`pip install .` of a `git archive`, not
editable, bytecode compiled) into its own venv on /dev/shm. One 100-package manifest,
every package in place, each commit with its own runtime directory (the interpreter's
answer kept there by its own first run, as in a container where it restored before);
contenders alternate round by round: REV; this tree; this tree
with `store_uid` (layout (a): the store root is listed); this tree with a sealed manifest
(layout (b): the secret is read and the HMAC verified); `python -c pass`. Prints min and
median wall time of the whole process and the load average before and after; then each
check alone, in this process (best of 5 x 2000 calls), which the whole-process figures,
±10 ms from round to round on a shared machine, cannot show; and, for the summary's
target, the first sealed check in fresh processes, with the modules it imports on first
use (hashlib and hmac, which load OpenSSL), which a process that has them cannot show.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import timeit
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

import bench_kit  # noqa: E402
from bench_restore import Bench, small_wheels  # noqa: E402

from pkgckpt import config, seal, status  # noqa: E402

TRUST_MS = 5.0
"""What the trust checks may add to the no-op restore (run_all.py's "trust-checks")."""
FIRST_ROUNDS = 15
# The sealed layout's checks as a no-op restore first makes them: after its own imports
# (pkgckpt.restore), the secret read and checked, the manifest's HMAC verified. Prints
# the seconds they took.
FIRST_CHECK = r"""
import os, sys, time
from pathlib import Path
import pkgckpt.restore
from pkgckpt import config, seal
store, secret = Path(sys.argv[1]), Path(sys.argv[2])
keyed = config.Config(store=store, key="bench", store_uid=os.getuid(), store_secret_file=secret)
data = (store / "bench" / "manifest.json").read_bytes()
start = time.perf_counter()
seal.guard(keyed).open(data, store)
print(time.perf_counter() - start)
"""


def checks(bench: Bench, sealed: Path, secret: Path) -> tuple[str, dict[str, float]]:
    """Microseconds per call of each check a start makes (this tree), as a table, and
    those of the worst layout's start (sealed: the runtime directory resolved, the secret
    read and checked, the HMAC verified), by what the summary calls them."""
    run = bench.root / "run" / "pkgckpt"
    plain = config.Config(store=bench.store, key="bench", runtime_dir=run)
    squashed = config.Config(store=bench.store, key="bench", store_uid=os.getuid())
    keyed = config.Config(
        store=sealed, key="bench", store_uid=os.getuid(), store_secret_file=secret
    )
    data = (sealed / "bench" / "manifest.json").read_bytes()
    opener = seal.guard(keyed)

    def best(call: Callable[[], object]) -> float:
        return min(timeit.repeat(call, number=2000, repeat=5)) / 2000 * 1e6

    worst = {
        "`find_runtime_dir`": best(lambda: config.find_runtime_dir(run)),
        "`seal.guard` sealed": best(lambda: seal.guard(keyed)),
        f"HMAC of {len(data):,} B": best(lambda: opener.open(data, sealed)),
    }
    resolve, guard, hmac = (f"{us:.1f} us" for us in worst.values())
    rows = [
        "| each check alone, in process (best of 5 x 2000 calls) | per call |",
        "|---|---|",
        f"| runtime directory resolved (`find_runtime_dir`) | {resolve} |",
        f"| `seal.guard`, plain store | {best(lambda: seal.guard(plain)):.1f} us |",
        f"| `seal.guard`, store_uid (store root listed) "
        f"| {best(lambda: seal.guard(squashed)):.1f} us |",
        f"| `seal.guard`, sealed (secret read, checked) | {guard} |",
        f"| HMAC verified, {len(data)}-byte manifest | {hmac} |",
        f"| status file looked for (status, snapshot) "
        f"| {best(lambda: status.read_state(plain)):.1f} us |",
    ]
    return "\n".join(rows), worst


def install(rev: str, into: Path) -> Path:
    """A venv at `into` with pkgckpt of `rev` (HEAD for this tree) installed, compiled."""
    source = into.with_name(into.name + "-src")
    source.mkdir()
    archive = subprocess.run(
        ["git", "archive", rev], check=True, capture_output=True, cwd=HERE.parent
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(source)], input=archive, check=True)
    subprocess.run([sys.executable, "-m", "venv", str(into)], check=True)
    python = into / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(source)],
        check=True,
    )
    site = next((into / "lib").glob("python3*/site-packages"))
    subprocess.run([str(python), "-m", "compileall", "-q", str(site)], check=True)
    return python


def main(rev: str, rounds: int, markdown: Path | None) -> None:
    root = Path(tempfile.mkdtemp(prefix="ab-restore-noop-", dir="/dev/shm"))
    try:
        before, after = install(rev, root / "before"), install("HEAD", root / "after")
        bench = Bench(root / "noop", root / "wheels", small_wheels(root / "wheels", 100), after)
        bench.fresh(with_pip=False)
        bench.manifest()
        argv = ["restore", "--key", "bench", "--env", str(bench.venv), "--no-index"]
        argv += ["--find-links", str(bench.wheels)]
        first = subprocess.run(
            [bench_kit.script(after), *argv, "--store", str(bench.store)], env=bench.env
        )
        assert first.returncode == 0
        secret = root / "secret"
        secret.write_bytes(os.urandom(48).hex().encode())
        secret.chmod(0o600)
        sealed = root / "sealed"
        seal_it = (
            "import sys; from pathlib import Path; from pkgckpt.store import Store, init_store; "
            "from pkgckpt.seal import Sealed, read_secret; "
            "m = Store(Path(sys.argv[1]), 'bench').read(); init_store(Path(sys.argv[2])); "
            "Store(Path(sys.argv[2]), 'bench', "
            "seal=Sealed(read_secret(Path(sys.argv[3]), Path(sys.argv[2])), 'bench'))"
            ".commit(m.body)"
        )
        subprocess.run(
            [str(after), "-c", seal_it, str(bench.store), str(sealed), str(secret)],
            check=True,
            cwd=root,
        )
        squash = {"PKGCKPT_STORE_UID": str(os.getuid())}
        # A runtime directory of its own for the earlier commit, as a container that ran
        # that commit's restore before would have: the interpreter's answer is kept there
        # under a key that includes the probe's text, one entry per interpreter, so with
        # a shared one, two commits whose probes differ would evict each other's answer
        # and each pay the probe (~30 ms) in turn. The warm-up below fills it.
        own_run = root / "run-before"
        own_run.mkdir(mode=0o700)
        contenders = {
            "`python -c pass`": ([str(after), "-c", "pass"], {}),
            f"before ({rev})": (
                [bench_kit.script(before), *argv, "--store", str(bench.store)],
                {"XDG_RUNTIME_DIR": str(own_run)},
            ),
            "after": ([bench_kit.script(after), *argv, "--store", str(bench.store)], {}),
            "after, store_uid, layout (a)": (
                [bench_kit.script(after), *argv, "--store", str(bench.store)],
                squash,
            ),
            "after, sealed, layout (b)": (
                [bench_kit.script(after), *argv, "--store", str(sealed)],
                {**squash, "PKGCKPT_STORE_SECRET_FILE": str(secret)},
            ),
        }
        for label, (command, extra) in contenders.items():  # warm-up, and each is a no-op
            done = subprocess.run(
                command, env={**bench.env, **extra}, capture_output=True, text=True
            )
            assert done.returncode == 0, (label, done.stderr)
            assert label.startswith("`python") or "in place" in done.stdout, (label, done.stdout)
        run = bench_kit.Run("restore no-op, before and after")

        def call(command: list[str], extra: dict[str, str]) -> Callable[[], object]:
            return lambda: subprocess.run(command, env={**bench.env, **extra}, capture_output=True)

        cpu: dict[str, list[float]] = {}
        times = bench_kit.interleave(
            {label: call(*contender) for label, contender in contenders.items()}, rounds, cpu=cpu
        )
        run.done()
        run.add(
            f"No-op restore, 100 packages in place, {rounds} rounds\n\n"
            + bench_kit.table(times, cpu=cpu, peer="`python -c pass`")
        )
        table, worst = checks(bench, sealed, secret)
        run.add(table)
        run.write(markdown)
        # The whole process also pays what the checks import on first use (hashlib and
        # hmac: OpenSSL), which timeit, in a process that has them, cannot see; and the
        # whole-process medians move by ±10 ms from round to round. So the target is read
        # from the first sealed check in fresh processes, after the imports a no-op
        # restore has made by then.
        first = [
            float(
                subprocess.run(
                    [str(after), "-c", FIRST_CHECK, str(sealed), str(secret)],
                    check=True, capture_output=True, text=True, cwd=root,
                ).stdout
            )
            for _ in range(FIRST_ROUNDS)
        ]  # fmt: skip
        whole = bench_kit.versus(times, "after, sealed, layout (b)", "after", cpu)
        bench_kit.verdict(
            markdown,
            "trust-checks",
            f"the first sealed check of a process, its imports included: "
            f"{bench_kit.min_median(first)} (min / median, {FIRST_ROUNDS} processes); "
            "in a process that has them, "
            + " + ".join(f"{what} {us:.1f} us" for what, us in worst.items())
            + f"; whole process, sealed vs plain: {whole.extra_ms:+.1f} ms by the larger of "
            f"the wall and CPU medians ({rounds} rounds, ±10 ms round to round)",
            statistics.median(first) <= TRUST_MS / 1000,
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rev", help="the commit to compare this tree with")
    parser.add_argument("rounds", type=int, nargs="?", default=30)
    parser.add_argument("--markdown", type=Path, help="write the tables here (run_all.py)")
    parser.add_argument("--quick", action="store_true", help="10 rounds")
    args = parser.parse_args()
    main(args.rev, 10 if args.quick else args.rounds, args.markdown)
