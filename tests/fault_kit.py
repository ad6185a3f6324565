"""The fault shim (tests/faults/faultshim.c) for the tests that give a real process the
errors and hangs of NFS and full disks: built once per session with gcc, LD_PRELOADed."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

FAULTS = Path(__file__).parent / "faults"


@pytest.fixture(scope="session")
def shim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("gcc") is None:
        pytest.skip("gcc is needed to build the fault shim")
    out = tmp_path_factory.mktemp("faultshim") / "faultshim.so"
    subprocess.run(
        ["gcc", "-shared", "-fPIC", "-O2", "-Wall", "-Wextra", "-Werror", "-o", str(out),
         str(FAULTS / "faultshim.c"), "-ldl"],
        check=True,
    )  # fmt: skip
    return out


def glob_escape(path: Path) -> str:
    # pytest names directories after parametrized tests: "[...]" must not be a glob class.
    return re.sub(r"([*?\[\\])", r"\\\1", str(path.resolve()))


def faults(shim: Path, rules: str, log: Path) -> dict[str, str]:
    """The environment variables that load the shim with `rules` (see faultshim.c) and
    have it log each fault it gives to `log`."""
    return {"LD_PRELOAD": str(shim), "PKGCKPT_FAULTS": rules, "PKGCKPT_FAULTS_LOG": str(log)}


def hung_open(log: Path) -> bool:
    """Whether the shim's first fault, by its `log`, was an open() it hung."""
    return log.exists() and log.read_text().split()[:3] == ["open", "0", "hang"]
