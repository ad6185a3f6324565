"""A Python prefix (a venv, a conda prefix, /usr) -> its site directories and identity.

The prefix's own interpreter is asked once, because only it knows its `sysconfig`
scheme (Debian's dist-packages, conda, a framework build) and whether it enables the
user site. When it cannot run (a foreign architecture, a broken venv), the layout is
guessed from `lib/python3*/site-packages`.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from ..errors import ScanError
from ..manifest import Environment

log = logging.getLogger(__name__)

ASK_TIMEOUT = 30.0
"""Seconds the interpreter gets to answer; a first start on a cold NFS home can be slow."""

# Runs inside the prefix's interpreter, which may be any Python 3: keep it plain.
_PROBE = """\
import json, site, sys, sysconfig
paths = sysconfig.get_paths()
user = site.getusersitepackages() if site.ENABLE_USER_SITE is True else None
print(json.dumps({
    "prefix": sys.prefix,
    "purelib": paths["purelib"],
    "platlib": paths["platlib"],
    "version": "%d.%d.%d" % sys.version_info[:3],
    "implementation": sys.implementation.name,
    "platform": sysconfig.get_platform().replace("-", "_").replace(".", "_"),
    "user_site": user,
}))
"""


@dataclass(frozen=True)
class PythonEnv:
    """Where a prefix's distributions live and what interpreter they are for."""

    prefix: Path
    python: Path | None
    """The interpreter that answered; None when the layout was guessed."""
    version: str | None
    implementation: str | None
    platform: str | None
    """The platform tag, e.g. "linux_x86_64"."""
    site_dirs: tuple[Path, ...]
    user_site: Path | None
    """The user site (`pip install --user`) when the interpreter enables it, whether or
    not it exists yet; None in a venv without system site packages."""

    def environment(self, user: bool = False) -> Environment:
        return Environment(
            kind="python",
            path=str(self.prefix),
            user=user,
            interpreter=self.version,
            implementation=self.implementation,
            platform=self.platform,
        )


def interpreter(prefix: Path) -> Path | None:
    for name in ("python3", "python"):
        candidate = prefix / "bin" / name
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def python_env(prefix: Path) -> PythonEnv:
    """The environment at `prefix`, asking its interpreter once (else guessing)."""
    if not prefix.is_dir():
        raise ScanError(f"no Python environment at {prefix}: not a directory")
    python = interpreter(prefix)
    if python is not None:
        found = _ask(python)
        if found is not None:
            return found
    return _guess(prefix)


def _ask(python: Path) -> PythonEnv | None:
    # PYTHONPATH and friends would make the probe report another environment's layout.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    try:
        proc = subprocess.run(
            [str(python), "-c", _PROBE],
            capture_output=True,
            text=True,
            timeout=ASK_TIMEOUT,
            env=env,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        log.warning("%s did not answer (%s); guessing its layout", python, e)
        return None
    try:
        # The last line: a .pth file of the environment may print before the probe does.
        answer = json.loads(proc.stdout.strip().splitlines()[-1])
        purelib, platlib = Path(answer["purelib"]), Path(answer["platlib"])
        user = answer["user_site"]
        return PythonEnv(
            prefix=Path(answer["prefix"]),
            python=python,
            version=str(answer["version"]),
            implementation=str(answer["implementation"]),
            platform=str(answer["platform"]),
            site_dirs=(purelib,) if purelib == platlib else (purelib, platlib),
            user_site=Path(user) if user else None,
        )
    except (ValueError, IndexError, KeyError, TypeError):
        log.warning(
            "%s failed to describe itself (exit %s): %s; guessing its layout",
            python,
            proc.returncode,
            proc.stderr.strip()[-500:],
        )
        return None


def _guess(prefix: Path) -> PythonEnv:
    sites = [*prefix.glob("lib/python3*/site-packages"), *prefix.glob("lib/pypy3*/site-packages")]
    if not sites:
        raise ScanError(f"no Python environment at {prefix}: no interpreter, no site-packages")
    # Several: a leftover of an upgraded interpreter beside the live one; take the newest.
    site = max(sites, key=_version_key)
    lib = site.parent.name  # "python3.11" or "pypy3.10"
    implementation = "pypy" if lib.startswith("pypy") else "cpython"
    version = lib.removeprefix("pypy").removeprefix("python")
    return PythonEnv(
        prefix=prefix,
        python=None,
        version=version,
        implementation=implementation,
        platform=None,
        site_dirs=(site,),
        user_site=None,
    )


def _version_key(site: Path) -> tuple[int, ...]:
    digits = site.parent.name.removeprefix("pypy").removeprefix("python").split(".")
    return tuple(int(d) for d in digits if d.isdigit())
