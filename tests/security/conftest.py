"""Two real throwaway users, alice (the victim) and bob (the attacker), for cross-user
attacks: created with useradd for the test session and removed afterwards.

Every test here runs as root so that it can make them; without root the whole suite is
skipped with that reason."""

from __future__ import annotations

import dataclasses
import os
import pwd
import secrets
import shutil
import site
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import pytest

if os.geteuid() != 0:
    pytest.skip("the security suite needs root to create its two users", allow_module_level=True)
if shutil.which("useradd") is None or shutil.which("runuser") is None:
    pytest.skip("the security suite needs useradd and runuser", allow_module_level=True)


@dataclasses.dataclass(frozen=True)
class User:
    """A real login on this machine, with a home directory of its own."""

    name: str
    uid: int
    gid: int
    home: Path

    def run(
        self,
        argv: Sequence[str],
        *,
        cwd: Path | str = "/",
        env: Mapping[str, str] | None = None,
        timeout: float = 120,
        check: bool = False,
    ) -> subprocess.CompletedProcess[str]:
        """Run `argv` as this user (runuser, a login-less switch), with `env` as its whole
        environment (HOME, USER and LOGNAME are this user's unless `env` sets them)."""
        base = {
            "HOME": str(self.home),
            "USER": self.name,
            "LOGNAME": self.name,
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LANG": "C.UTF-8",
        }
        base.update(env or {})
        return subprocess.run(
            [
                "runuser",
                "-u",
                self.name,
                "--",
                "env",
                "-i",
                *(f"{k}={v}" for k, v in base.items()),
                *argv,
            ],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=check,
        )


def _make_user(role: str) -> User:
    name = f"pkc{role}{secrets.token_hex(3)}"
    subprocess.run(["useradd", "--create-home", "--shell", "/bin/sh", name], check=True)
    entry = pwd.getpwnam(name)
    return User(name, entry.pw_uid, entry.pw_gid, Path(entry.pw_dir))


def _remove_user(user: User) -> None:
    subprocess.run(["pkill", "-KILL", "-u", user.name], check=False)
    subprocess.run(["userdel", "--remove", user.name], check=False, capture_output=True)


@pytest.fixture(scope="session")
def alice() -> Iterator[User]:
    """The victim: runs pkgckpt over her own environment and store."""
    user = _make_user("alice")
    try:
        yield user
    finally:
        _remove_user(user)


@pytest.fixture(scope="session")
def bob() -> Iterator[User]:
    """The attacker: an ordinary user on the same machine and the same store."""
    user = _make_user("bob")
    try:
        yield user
    finally:
        _remove_user(user)


@pytest.fixture
def reachable_tmp() -> Iterator[Path]:
    """A root-owned directory (0755) that the test's other users can reach. Not under
    pytest's tmp_path: every pytest process that starts makes /tmp/pytest-of-root 0700
    again, which would close the way in the middle of a test running beside it."""
    path = Path(tempfile.mkdtemp(prefix="pkgckpt-test-", dir="/var/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def shared_tmp(reachable_tmp: Path) -> Path:
    """A world-writable sticky directory like /tmp, private to this test."""
    shared = reachable_tmp / "shared-tmp"
    shared.mkdir()
    shared.chmod(0o1777)
    return shared


REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tool(alice: User) -> Iterator[Path]:
    """A Python alice can run with this checkout of pkgckpt and its dependencies importable:
    a root-owned venv (0755) whose .pth names the checkout and this venv's site-packages.

    The interpreter running the tests may live where alice cannot go (/root/.pyenv), so the
    venv is made from the first of it and the system python3 that alice can execute and
    that has the same version (the dependencies are compiled for it)."""
    want = f"{sys.version_info[0]}.{sys.version_info[1]}"
    bases = [getattr(sys, "_base_executable", sys.executable), "/usr/bin/python3"]
    base = next(
        (
            b
            for b in bases
            if b
            and alice.run(
                [b, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"]
            ).stdout.strip()
            == want
        ),
        None,
    )
    if base is None:
        pytest.skip(f"no Python {want} that {alice.name} can run")
    root = Path(tempfile.mkdtemp(prefix="pkgckpt-sec-", dir="/var/tmp"))
    root.chmod(0o755)
    try:
        venv = root / "tool"
        subprocess.run([base, "-m", "venv", "--without-pip", str(venv)], check=True)
        sites = list(venv.glob("lib/python3*/site-packages"))
        paths = [str(REPO), *site.getsitepackages()]
        (sites[0] / "pkgckpt_checkout.pth").write_text("\n".join(paths) + "\n")
        (venv / "bin" / "uv").symlink_to(shutil.which("uv") or "/nonexistent")
        # The console script as pip writes it: run from a shared /tmp, `python -m pkgckpt`
        # would itself import from there (sys.path[0] is the working directory).
        script = venv / "bin" / "pkgckpt"
        script.write_text(
            f"#!{venv / 'bin' / 'python'}\nimport sys\nfrom pkgckpt.entry import main\n"
            "sys.exit(main())\n"
        )
        script.chmod(0o755)
        python = str(venv / "bin" / "python")
        probe = alice.run([python, "-c", "import pkgckpt.entry, pkgckpt.cli, pip, msgspec"])
        if probe.returncode != 0:
            pytest.skip(f"{alice.name} cannot import this checkout: {probe.stderr.strip()}")
        yield venv
    finally:
        shutil.rmtree(root, ignore_errors=True)
