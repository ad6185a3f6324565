"""Running the real `pkgckpt daemon` in tests: a subprocess, its systemd notify socket,
its manifest on a local store, and real installs (uv or pip) into real venvs."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from restore_kit import hermetic
from wheelhouse import Venv, make_venv

from pkgckpt.config import Config
from pkgckpt.manifest import Delta, Manifest
from pkgckpt.status import status_path
from pkgckpt.store import Store, init_store

T = TypeVar("T")


def eventually(check: Callable[[], T | None], timeout: float = 30.0, what: str = "") -> T:
    """Poll `check` until it returns something truthy (the test's own bounded wait)."""
    end = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what or check}")
        time.sleep(0.02)


def context_switches(pid: int) -> int:
    """Voluntary + involuntary context switches of every thread of `pid` so far."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        for line in (task / "status").read_text().splitlines():
            if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                total += int(line.split()[1])
    return total


def uv_install(python: Path, wheels: Path, *reqs: str, env: dict[str, str]) -> None:
    """A real install with uv into the venv of `python` (fast: the daemon tests' installer)."""
    subprocess.run(
        ["uv", "pip", "install", "--python", str(python), "--no-index", "--find-links",
         str(wheels), *reqs],
        check=True, capture_output=True, env=env,
    )  # fmt: skip


def uv_uninstall(python: Path, *names: str, env: dict[str, str]) -> None:
    subprocess.run(
        ["uv", "pip", "uninstall", "--python", str(python), *names],
        check=True, capture_output=True, env=env,
    )  # fmt: skip


@dataclass
class Daemon:
    """`python -m pkgckpt daemon ARGS` with a notify socket standing in for systemd."""

    args: Sequence[str]
    env: dict[str, str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    notify: socket.socket | None = None
    messages: list[str] = field(default_factory=list)

    def start(self, *, ready: bool = True, extra_env: dict[str, str] | None = None) -> Daemon:
        address = f"@pkgckpt-test-{os.getpid()}-{time.monotonic_ns()}"
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self.notify.bind("\0" + address[1:])
        env = {**self.env, "NOTIFY_SOCKET": address, **(extra_env or {})}
        with self.log.open("ab") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "pkgckpt", "daemon", *self.args],
                stdin=subprocess.DEVNULL, stdout=err, stderr=err, env=env,
            )  # fmt: skip
        if ready:
            self.wait_message("READY=1")
        return self

    def wait_message(self, text: str, timeout: float = 60.0) -> str:
        """The next notify datagram containing `text` (READY=1, WATCHDOG=1, STOPPING=1)."""
        assert self.notify is not None and self.proc is not None
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited {self.proc.returncode}:\n{self.output()}")
            self.notify.settimeout(0.2)
            try:
                message = self.notify.recv(4096).decode()
            except TimeoutError:
                continue
            self.messages.append(message)
            if text in message:
                return message
        raise AssertionError(f"no {text} from the daemon:\n{self.output()}")

    def drain(self) -> list[str]:
        """Every notify datagram received so far (those still queued included)."""
        assert self.notify is not None
        self.notify.setblocking(False)
        try:
            while True:
                self.messages.append(self.notify.recv(4096).decode())
        except BlockingIOError:
            pass
        return self.messages

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM; the exit code."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.notify is not None:
            self.notify.close()

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@dataclass
class World:
    """A tmp directory with a store, a key, a runtime dir and the hermetic environment."""

    tmp: Path
    env: dict[str, str]
    store: Path
    key: str = "k"

    @classmethod
    def make(cls, tmp: Path) -> World:
        env = hermetic(tmp)
        env["PIP_NO_CACHE_DIR"] = "1"
        init_store(tmp / "store")
        return cls(tmp=tmp, env=env, store=tmp / "store")

    @property
    def runtime(self) -> Path:
        return Path(self.env["XDG_RUNTIME_DIR"]) / "pkgckpt"

    @property
    def status_file(self) -> Path:
        """The daemon's status file, named by store and key."""
        return status_path(Config(store=self.store, key=self.key, runtime_dir=self.runtime))

    def image_venv(self, wheels: Path, *image: str, aged: bool = False) -> Venv:
        """A venv at tmp/venv whose image ships `image` (requirements installed from
        `wheels`), and its baseline taken to tmp/b.json. `aged` dates the image's entries
        an hour back, as in a container started from an image: the daemon's first scan then
        takes them from the baseline by their dist-info names."""
        v = make_venv(self.tmp / "venv", with_pip=False)
        if image:
            uv_install(v.python, wheels, *image, env=self.env)
        made = self.pkgckpt(
            "baseline", "--env", str(v.prefix), "--output", str(self.tmp / "b.json")
        )
        assert made.returncode == 0, made.stderr
        if aged:
            then = time.time_ns() - 3600 * 10**9
            for entry in [*v.site_packages.iterdir(), v.site_packages]:
                os.utime(entry, ns=(then, then), follow_symlinks=False)
        return v

    def image(self, prefix: Path) -> dict[str, str]:
        """An image's environment for its start-up scripts: its baseline of the venv at
        `prefix` (taken now, to tmp/baseline.json), and this pkgckpt first on PATH."""
        baseline = self.tmp / "baseline.json"
        made = self.pkgckpt("baseline", "--env", str(prefix), "--output", str(baseline))
        assert made.returncode == 0, made.stderr
        bindir = str(Path(os.path.realpath(sys.executable)).parent)
        return {
            **self.env,
            "PATH": f"{bindir}{os.pathsep}{self.env['PATH']}",
            "PKGCKPT_ENV": str(prefix),
            "PKGCKPT_STORE": str(self.store),
            "PKGCKPT_KEY": self.key,
            "PKGCKPT_BASELINE": str(baseline),
        }

    def flags(self, *prefixes: Path) -> list[str]:
        out = ["--store", str(self.store), "--key", self.key]
        for prefix in prefixes:
            out += ["--env", str(prefix)]
        return out

    def pkgckpt(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "pkgckpt", *args],
            capture_output=True, text=True, env=self.env, timeout=timeout,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip

    def daemon(self, *args: str) -> Daemon:
        return Daemon(args=list(args), env=self.env, log=self.tmp / "daemon.log")

    def manifest(self) -> Manifest | None:
        return Store(self.store, self.key).read()

    def generation(self) -> int:
        found = self.manifest()
        return found.generation if found is not None else 0

    def delta(self) -> Delta:
        found = self.manifest()
        assert found is not None and found.body.environments, "no manifest yet"
        (delta,) = [d for d in found.body.environments if not d.env.user]
        return delta


def pins(packages: Sequence[object]) -> list[str]:
    return sorted(f"{p.name}=={p.version}" for p in packages)  # type: ignore[attr-defined]
