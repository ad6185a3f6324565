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
import stat
import subprocess
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
def shared_tmp(tmp_path: Path) -> Path:
    """A world-writable sticky directory like /tmp, private to this test."""
    shared = tmp_path / "shared-tmp"
    shared.mkdir()
    shared.chmod(0o1777)
    # pytest's tmp_path is 0700 under root: open the way down for the two users.
    for parent in [tmp_path, *tmp_path.parents]:
        if parent == Path("/"):
            break
        # S_IMODE keeps the sticky bit: `& 0o777` took it off /tmp itself.
        parent.chmod(stat.S_IMODE(parent.stat().st_mode) | 0o011)
    return shared
