"""pkgckpt as a user gets it, for the whole-process benchmarks (see README.md's rules).

`installed(into)` makes a venv at `into` with this tree installed by `pip install .` (not
editable) and the peers' packages beside it, then compiles every module to bytecode (this
machine sets PYTHONDONTWRITEBYTECODE, so nothing would be compiled otherwise). Ours and
the peers then run from one interpreter and one site-packages.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def installed(into: Path, extra: Sequence[str] = ()) -> Path:
    """The python of a fresh venv at `into` holding pkgckpt (from REPO) and `extra`."""
    # sys.executable, not its realpath: from a venv, `-m venv` then copies the right base.
    subprocess.run([sys.executable, "-m", "venv", str(into)], check=True)
    python = into / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check",
         str(REPO), *extra],
        check=True, cwd=into,
    )  # fmt: skip
    site = next((into / "lib").glob("python3*/site-packages"))
    subprocess.run([str(python), "-m", "compileall", "-q", str(site)], check=True)
    return python


def given(python: str | None, extra: Sequence[str]) -> Path | None:
    """The interpreter named by `--python`, else by PKGCKPT_BENCH_PYTHON (run_all.py's
    venv), with the peers' packages `extra` installed into it when they are missing;
    None when neither names one."""
    chosen = python or os.environ.get("PKGCKPT_BENCH_PYTHON")
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


def commit() -> str:
    """The commit measured (with "+dirty" when the tree has changes not committed)."""
    head = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO
    ).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain"], capture_output=True, cwd=REPO)
    return head + ("+dirty" if dirty.stdout.strip() else "")


def load() -> str:
    """The 1, 5 and 15-minute load averages, as RESULTS.md gives them."""
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())


def stamp() -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
