"""What the script benchmarks share, so that each follows README.md's rules the same way.

- `pkgckpt_python(scratch)`: the interpreter of a venv holding pkgckpt as a user gets it
  (`pip install .`, not editable, compiled). `run_all.py` makes one and names it in
  `PKGCKPT_BENCH_PYTHON`; a bench run on its own makes its own under `scratch`.
- `interleave(contenders, rounds)`: every contender once per round, in turn (A B A B ...),
  the order rotated each round so that none always runs after the same one.
- `Run`: the date, the commit and the load average before and after; `table()` renders
  min and median per contender as markdown for RESULTS.md (`--markdown PATH`), with the
  CPU time of the contenders' processes where the bench measured it.
- `verdict(markdown, target, measured, met)`: one row of RESULTS.md's table of targets,
  beside the bench's tables (`NAME.verdicts.json` next to `NAME.md`): run_all.py renders
  it, so the summary's figures are the bench's, never copied by hand.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

REPO = Path(__file__).resolve().parent.parent
ENV_PYTHON = "PKGCKPT_BENCH_PYTHON"


def commit() -> str:
    """`git rev-parse --short HEAD`, with "+dirty" when the tree has uncommitted changes."""
    head = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--", "pkgckpt"], capture_output=True, text=True, cwd=REPO
    ).stdout.strip()
    return head + ("+dirty" if dirty else "")


def load() -> str:
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())


def stamp() -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())


def install(into: Path, extra: Sequence[str] = ()) -> Path:
    """A venv at `into` with this tree's pkgckpt installed by `pip install .`, and the
    peers' packages `extra` beside it, compiled: ours and the peers' then run from one
    interpreter and one site-packages."""
    # sys.executable, not its realpath: from a venv the realpath is the base interpreter.
    subprocess.run([sys.executable, "-m", "venv", str(into)], check=True)
    python = into / "bin" / "python"
    pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run(
        [*pip, str(REPO), *extra],
        check=True,
        cwd=into,
        env={**os.environ, "PIP_NO_INPUT": "1"},
    )
    site = next((into / "lib").glob("python3*/site-packages"))
    subprocess.run([str(python), "-m", "compileall", "-q", str(site)], check=True)
    return python


def given(python: str | None, extra: Sequence[str]) -> Path | None:
    """The interpreter named by `--python`, else by PKGCKPT_BENCH_PYTHON (run_all.py's
    venv), with the peers' packages `extra` installed into it when they are missing;
    None when neither names one."""
    chosen = python or os.environ.get(ENV_PYTHON)
    if not chosen:
        return None
    missing = [
        name
        for name in extra
        if subprocess.run([chosen, "-c", f"import {name}"], capture_output=True).returncode
    ]
    if missing:
        subprocess.run(
            [chosen, "-m", "pip", "install", "-q", "--disable-pip-version-check", *missing],
            check=True,
        )
    return Path(chosen)


@contextmanager
def python_for_run(python: str | None, peers: Sequence[str], label: str) -> Iterator[Path]:
    """`--python`, else run_all.py's venv (PKGCKPT_BENCH_PYTHON), else one made here under
    /dev/shm for the run, each with the peers' packages `peers`."""
    chosen = given(python, peers)
    if chosen is not None:
        yield chosen
        return
    with tempfile.TemporaryDirectory(prefix=f"bench-{label}-venv-", dir="/dev/shm") as tmp:
        yield install(Path(tmp) / "venv", peers)


def script(python: Path) -> str:
    """The `pkgckpt` console script beside `python`: what an entrypoint runs. Not
    `python -m pkgckpt`, which puts the working directory first on sys.path, where a
    checkout would shadow the installed package (uncompiled, on this machine)."""
    return str(python.with_name("pkgckpt"))


def baselines(
    pythons: Sequence[Path], venv: Path, into: Path, env: Mapping[str, str]
) -> dict[Path, Path]:
    """`pkgckpt baseline` of `venv` by each pkgckpt of `pythons` (this tree's, an earlier
    commit's), each file its own, as an image built with that pkgckpt would ship it: the
    interpreter's answers kept beside a baseline are keyed by the probe's text, so another
    commit's would be ignored and its restores would pay a probe the image spares them."""
    found: dict[Path, Path] = {}
    for python in pythons:
        found[python] = into / f"baseline-{len(found)}.json"
        command = [script(python), "baseline", "--env", str(venv), "--output", str(found[python])]
        subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL)
    return found


def pkgckpt_python(scratch: Path) -> Path:
    """run_all's installed pkgckpt, else one installed now under `scratch`."""
    named = os.environ.get(ENV_PYTHON)
    return Path(named) if named else install(scratch / "pkgckpt-venv")


def children_cpu() -> float:
    """User + system seconds of every child waited for so far (and theirs)."""
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used.ru_utime + used.ru_stime


def interleave(
    contenders: Mapping[str, Callable[[], object]],
    rounds: int,
    setup: Callable[[str], object] | None = None,
    cpu: dict[str, list[float]] | None = None,
) -> dict[str, list[float]]:
    """Wall seconds of each contender per round, contenders in turn within each round.

    `setup(label)` runs untimed before each timed call (a fresh venv, a cold cache).
    `cpu`, when given, receives the CPU seconds of each call's child processes (and
    theirs): on cores shared with other jobs it moves far less than the wall time.
    """
    labels = list(contenders)
    times: dict[str, list[float]] = {label: [] for label in labels}
    for r in range(rounds):
        shift = r % len(labels)
        for label in labels[shift:] + labels[:shift]:
            if setup is not None:
                setup(label)
            used = children_cpu()
            start = time.perf_counter()
            contenders[label]()
            times[label].append(time.perf_counter() - start)
            if cpu is not None:
                cpu.setdefault(label, []).append(children_cpu() - used)
    return times


@dataclass
class Run:
    """One bench run: when, on what, under which load."""

    title: str
    started: str = field(default_factory=lambda: time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    commit: str = field(default_factory=commit)
    load_before: str = field(default_factory=load)
    load_after: str = ""
    sections: list[str] = field(default_factory=list)

    def done(self) -> None:
        self.load_after = load()

    def header(self) -> str:
        return (
            f"{self.title}: {self.started}, commit `{self.commit}`, load average (1 / 5 / 15 min) "
            f"{self.load_before} before, {self.load_after or load()} after. "
            f"Python {sys.version.split()[0]}, `nproc` {os.cpu_count()}."
        )

    def add(self, text: str) -> None:
        self.sections.append(text)
        print(text, flush=True)

    def markdown(self) -> str:
        return "\n\n".join([self.header(), *self.sections]) + "\n"

    def write(self, path: Path | None) -> None:
        if path is not None:
            path.write_text(self.markdown())


_started: set[Path] = set()
"""The sidecars this process has written: `verdict` starts each afresh."""


def verdict(markdown: Path | str | None, target: str, measured: str, met: bool) -> None:
    """Record how this run did against `target` (a key of run_all.py's TARGETS) for the
    table of targets: `measured` is the figure as the summary shows it (min / median,
    the peer's, the ratio), `met` the bench's own reading of the target. Without
    `--markdown` (a bench run by hand) nothing is kept."""
    if markdown is None:
        return
    sidecar = Path(markdown).with_suffix(".verdicts.json")
    # This run's verdicts only: a file left by an earlier run at the same path would
    # otherwise lend this one the targets it did not measure.
    kept = json.loads(sidecar.read_text()) if sidecar in _started else {}
    _started.add(sidecar)
    kept[target] = {"measured": measured, "met": met}
    sidecar.write_text(json.dumps(kept, indent=1) + "\n")


class Versus(NamedTuple):
    text: str
    """"217 ms / 263 ms vs 117 ms / 129 ms (min / median): 2.03x, +134 ms by the median
    (CPU 290 ms vs 161 ms: 1.80x)": the figure a summary row shows."""
    ratio: float
    """Of the medians; the larger of the wall's and the CPU's when CPU was measured, as
    `table`'s target column reads it."""
    extra_ms: float
    """Median over the peer's, the larger of wall and CPU likewise."""


def versus(
    times: Mapping[str, Sequence[float]],
    label: str,
    peer: str,
    cpu: Mapping[str, Sequence[float]] | None = None,
) -> Versus:
    """`label` against `peer` in one run, for `verdict`."""
    mine, theirs = times[label], times[peer]
    mid, peer_mid = statistics.median(mine), statistics.median(theirs)
    ratio, extra = mid / peer_mid, mid - peer_mid
    text = (
        f"{min_median(mine)} vs {min_median(theirs)} (min / median): "
        f"{ratio:.2f}x, {extra * 1000:+,.0f} ms by the median"
    )
    if cpu:
        c_mine, c_theirs = statistics.median(cpu[label]), statistics.median(cpu[peer])
        text += f" (CPU {ms(c_mine)} vs {ms(c_theirs)}: {c_mine / c_theirs:.2f}x)"
        ratio, extra = max(ratio, c_mine / c_theirs), max(extra, c_mine - c_theirs)
    return Versus(text, ratio, extra * 1000)


def min_median(seconds: Sequence[float]) -> str:
    """ "217 ms / 263 ms": the minimum and the median, as every summary figure gives them."""
    return f"{ms(min(seconds))} / {ms(statistics.median(seconds))}"


def ms(seconds: float) -> str:
    value = seconds * 1000
    if value < 1:
        return f"{value:.3f} ms"
    return f"{value:,.1f} ms" if value < 100 else f"{value:,.0f} ms"


def table(
    times: Mapping[str, Sequence[float]],
    *,
    cpu: Mapping[str, Sequence[float]] | None = None,
    peer: str | None = None,
    target: Callable[[str, float, float], str] | None = None,
    first: str = "contender",
) -> str:
    """Wall min and median per contender (with the children's CPU median when `cpu` is
    given); beside `peer`: the differences and the ratio of wall medians;
    `target(label, ratio, extra_ms)` -> "met" / "**not met**", given the larger of the
    wall and the CPU figures: on shared cores a wall median can hide what CPU shows."""
    head = f"| {first} | min | median |" + (" CPU median |" if cpu else "") + " rounds |"
    rule = "|---|---|---|" + ("---|" if cpu else "") + "---|"
    if peer is not None:
        head += f" vs {peer}: + median (+ min) |" + (" + CPU median |" if cpu else "")
        head += " ratio of medians |"
        rule += "---|" + ("---|" if cpu else "") + "---|"
        if target is not None:
            head += " target |"
            rule += "---|"
    rows = [head, rule]
    for label, values in times.items():
        lo, mid = min(values), statistics.median(values)
        row = f"| {label} | {ms(lo)} | {ms(mid)} |"
        if cpu:
            row += f" {ms(statistics.median(cpu[label]))} |"
        row += f" {len(values)} |"
        if peer is not None:
            base = times[peer]
            b_lo, b_mid = min(base), statistics.median(base)
            if label == peer:
                row += " — |" + (" — |" if cpu else "") + " — |" + (" |" if target else "")
            else:
                extra = mid - b_mid
                row += f" {extra * 1000:+,.0f} ms ({(lo - b_lo) * 1000:+,.0f} ms) |"
                if cpu:
                    more = statistics.median(cpu[label]) - statistics.median(cpu[peer])
                    row += f" {more * 1000:+,.0f} ms |"
                row += f" {mid / b_mid:.2f}x |"
                if target is not None:
                    ratio, over = mid / b_mid, extra
                    if cpu:
                        mine, theirs = statistics.median(cpu[label]), statistics.median(cpu[peer])
                        ratio, over = max(ratio, mine / theirs), max(over, mine - theirs)
                    row += f" {target(label, ratio, over * 1000)} |"
        rows.append(row)
    return "\n".join(rows)
