"""What pkgckpt trusts, attacked by a second real user: a runtime directory planted in a
shared /tmp, a squashed store (all_squash NFS, simulated with bindfs), a generic login.

alice is the victim, bob the attacker. Each test checks that nothing bob planted ran (a
marker file that his code would write) and that alice's command works, or fails with the
documented message."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import textwrap
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
from wheelhouse import Dist, build_wheel

from pkgckpt import status
from pkgckpt.config import Config
from pkgckpt.store import NOBODY, init_store

from .conftest import User

PKGCKPT = [sys.executable, "-m", "pkgckpt"]
UV = shutil.which("uv") or "uv"


_ACL = "system.posix_acl_access"
_OURS = "user.pkgckpt-tests.mode"
"""Beside each ACL `reachable` adds: the directory's mode before it. A run cut short (a
killed pytest) leaves both; the next run finds the mark, and puts the directory back."""
_ANY = 0xFFFFFFFF


def _acl(mode: int, users: list[int]) -> bytes:
    """A POSIX access ACL (the kernel's xattr format): `mode`, plus search for `users`."""
    entries = [(0x01, (mode >> 6) & 7, _ANY)]  # the owner
    entries += [(0x02, 1, uid) for uid in users]  # named users: search (x) only
    entries += [(0x04, (mode >> 3) & 7, _ANY), (0x10, 1 | (mode >> 3) & 7, _ANY)]
    entries += [(0x20, mode & 7, _ANY)]
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in entries)


@pytest.fixture(scope="module", autouse=True)
def reachable(alice: User, bob: User) -> Iterator[None]:
    """alice and bob run this interpreter and this checkout: where a directory on the way
    is closed to others (pyenv under a 0700 /root), give those two users search access
    with an ACL for the module's duration, and take it back afterwards (or at the next
    run's start, after a run cut short: `_OURS`)."""
    wanted = {Path(os.path.realpath(sys.executable)), Path(__file__).resolve(), Path(UV).resolve()}
    closed: dict[Path, int] = {}
    for path in wanted:
        for directory in path.parents:
            with contextlib.suppress(OSError):
                mode = int(os.getxattr(directory, _OURS))
                os.removexattr(directory, _ACL)
                os.removexattr(directory, _OURS)
                directory.chmod(mode)
            st = directory.stat()
            if not st.st_mode & stat.S_IXOTH and directory not in closed:
                with contextlib.suppress(OSError):
                    os.getxattr(directory, _ACL)
                    continue  # an ACL of its own: not ours to touch
                closed[directory] = stat.S_IMODE(st.st_mode)
    for directory, mode in closed.items():
        os.setxattr(directory, _OURS, str(mode).encode())
        os.setxattr(directory, _ACL, _acl(mode, [alice.uid, bob.uid]))
    try:
        yield
    finally:
        for directory, mode in closed.items():
            os.removexattr(directory, _ACL)
            os.removexattr(directory, _OURS)
            directory.chmod(mode)


def _open(path: Path, mode: int = 0o755) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(mode)
    return path


def evil_wheel(outdir: Path, marker: Path) -> Path:
    """bob's wheel: its .pth runs at every start of the interpreter it is installed in."""
    files = {
        "evil/__init__.py": b"",
        "evil.pth": f"import os; open({str(marker)!r}, 'w').write('ran')\n".encode(),
        "evil-1.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: evil\nVersion: 1.0\n",
        "evil-1.0.dist-info/WHEEL": (
            b"Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        ),
    }
    record = []
    for name, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(data)}")
    files["evil-1.0.dist-info/RECORD"] = (
        "\n".join([*record, "evil-1.0.dist-info/RECORD,,"])
    ).encode()
    path = outdir / "evil-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    path.chmod(0o644)
    return path


class Session:
    """alice's container: her venv, her wheels, the shared tmp and bob's marker."""

    def __init__(self, alice: User, bob: User, shared: Path, tmp: Path) -> None:
        self.alice, self.bob, self.shared = alice, bob, shared
        self.wheels = _open(tmp / "wheels")
        build_wheel(Dist("alicepkg", "1.0"), self.wheels)
        for wheel in self.wheels.iterdir():
            wheel.chmod(0o644)
        self.marker = shared / "planted-code-ran"
        self.evil = evil_wheel(_open(shared / "bobs", 0o755), self.marker)
        self.venv = alice.home / "venv"
        self.container = 0

    def env(self, **extra: str) -> dict[str, str]:
        """alice's environment: /tmp is the shared one; settings from `extra`."""
        env = {
            "TMPDIR": str(self.shared),
            "UV_CACHE_DIR": str(self.alice.home / ".cache" / "uv"),
            "UV_NO_CONFIG": "1",
            "PIP_CONFIG_FILE": os.devnull,
            "PKGCKPT_ENV": str(self.venv),
            "PKGCKPT_NO_INDEX": "1",
            "PKGCKPT_FIND_LINKS": str(self.wheels),
            "PKGCKPT_INSTALLER": "uv",
        }
        env.update(extra)
        return env

    def pkgckpt(self, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return self.alice.run([*PKGCKPT, *args], env=self.env(**extra))

    def new_container(self) -> None:
        """A fresh venv at the same path and a fresh runtime directory: a pod restart. A new
        container has a run of its own: the private fallback runtime directory an earlier
        one used (named by the host, the boot and pid 1's start, which do not change
        between these tests) is not its own, so it goes."""
        self.container += 1
        shutil.rmtree(self.alice.home / ".cache" / "pkgckpt", ignore_errors=True)
        if self.venv.exists():
            shutil.rmtree(self.venv)
        self.alice.run([sys.executable, "-m", "venv", "--without-pip", str(self.venv)], check=True)

    def runtime(self) -> dict[str, str]:
        run = self.alice.home / f"run-{self.container}"
        if not run.exists():
            self.alice.run(["mkdir", "-m", "0700", str(run)], check=True)
        return {"XDG_RUNTIME_DIR": str(run)}

    def install_alicepkg(self) -> None:
        self.alice.run(
            [
                UV,
                "pip",
                "install",
                "--python",
                str(self.venv / "bin" / "python"),
                "--no-index",
                "--find-links",
                str(self.wheels),
                "alicepkg",
            ],
            env={"UV_CACHE_DIR": str(self.alice.home / ".cache" / "uv"), "UV_NO_CONFIG": "1"},
            check=True,
        )

    def installed(self) -> set[str]:
        """What alice's venv holds; starting its interpreter runs any planted .pth."""
        python = str(self.venv / "bin" / "python")
        out = self.alice.run(
            [
                python,
                "-c",
                "import importlib.metadata as m; print(*sorted(d.metadata['Name'] "
                "for d in m.distributions()))",
            ],
            check=True,
        )
        return set(out.stdout.split())

    def assert_clean(self) -> None:
        assert "evil" not in self.installed()
        assert not self.marker.exists(), "bob's code ran as alice"


@pytest.fixture
def shared(reachable_tmp: Path) -> Path:
    """A world-writable sticky directory like /tmp."""
    return _open(reachable_tmp / "tmp", 0o1777)


@pytest.fixture
def session(alice: User, bob: User, shared: Path, reachable_tmp: Path) -> Session:
    """alice's container with a fresh venv, and bob's wheel waiting in the shared tmp."""
    s = Session(alice, bob, shared, reachable_tmp)
    s.new_container()
    return s


# -- a runtime directory planted in the shared /tmp --------------------------------------


def _alices_sleep(alice: User, pidfile: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        ["runuser", "-u", alice.name, "--", "sh", "-c", f"echo $$ > {pidfile}; exec sleep 300"]
    )
    for _ in range(200):
        if pidfile.exists() and pidfile.read_text().strip():
            break
        time.sleep(0.02)
    return proc


def _plant(bob: User, directory: Path, name: str, state: status.DaemonState) -> None:
    """bob creates `directory` (his, open to all) with a status file in it."""
    encoded = json.dumps({**json.loads(msgspec.json.encode(state)), "generation": 7})
    bob.run(["mkdir", "-p", "-m", "0777", str(directory)], check=True)
    write = 'printf "%s" "$1" > "$2" && chmod 0666 "$2"'
    bob.run(["sh", "-c", write, "sh", encoded, str(directory / name)], check=True)
    assert (directory / name).stat().st_uid == bob.uid


def _alices_daemon(session: Session, settings: dict[str, str]) -> subprocess.Popen[str]:
    """alice's `pkgckpt daemon` in the background, its log on a pipe (`_stopped`)."""
    env = {**session.env(**settings), "HOME": str(session.alice.home), "PATH": os.environ["PATH"]}
    return subprocess.Popen(
        ["runuser", "-u", session.alice.name, "--", "env", "-i"]
        + [f"{k}={v}" for k, v in env.items()]
        + [*PKGCKPT, "daemon", "--quiet-ms", "100"],
        stderr=subprocess.PIPE,
        text=True,
    )


def _stopped(daemon: subprocess.Popen[str]) -> str:
    """SIGTERM (kill after 30 s); the daemon's log."""
    daemon.send_signal(signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        daemon.wait(timeout=30)
    if daemon.poll() is None:
        daemon.kill()
    assert daemon.stderr is not None
    return daemon.stderr.read()


@pytest.mark.parametrize("where", ["TMPDIR", "XDG_RUNTIME_DIR"])
def test_a_planted_runtime_directory_fakes_no_daemon_and_aims_no_signal(
    session: Session, alice: User, bob: User, shared: Path, reachable_tmp: Path, where: str
) -> None:
    """bob's /tmp/pkgckpt-<alice's uid>/ (or <XDG_RUNTIME_DIR>/pkgckpt/ in a shared
    directory) with a status file naming alice's own `sleep`: status reports no daemon,
    snapshot kills nothing and writes its own generation, restore and daemon work from the
    private fallback (said once), and snapshot reaches that daemon."""
    store = _open(reachable_tmp / "store", 0o755)
    init_store(store)
    key = alice.name
    config = Config(store=store / "s", key=key, runtime_dir=Path("/"))
    pidfile = shared / "sleep.pid"
    sleeper = _alices_sleep(alice, pidfile)
    pid = int(pidfile.read_text())
    planted = shared / (f"pkgckpt-{alice.uid}" if where == "TMPDIR" else "pkgckpt")
    state = status.DaemonState(
        pid=pid,
        pid_start=status.process_start(pid),
        host=socket.gethostname(),
        version="0",
        store=str(config.store),
        key=key,
        started="x",
        updated="x",
        phase="watching",
    )
    _plant(bob, planted, status.status_path(config).name, state)
    init_store(store / "s")
    os.chown(store / "s", alice.uid, alice.gid)
    settings = {"PKGCKPT_STORE": str(config.store), "PKGCKPT_KEY": key}
    if where == "XDG_RUNTIME_DIR":
        settings[where] = str(shared)
    daemon: subprocess.Popen[str] | None = None
    try:
        shown = session.pkgckpt("status", "--json", **settings)
        assert shown.returncode == 0, shown.stderr
        assert json.loads(shown.stdout)["daemon_running"] is False

        snap = session.pkgckpt("snapshot", **settings)
        assert snap.returncode == 0, snap.stderr
        assert "generation 7" not in snap.stdout
        assert sleeper.poll() is None, "snapshot signalled the pid bob named"

        session.install_alicepkg()
        restore = session.pkgckpt("restore", **settings)
        assert restore.returncode == 0, restore.stderr
        assert restore.stderr.count(f"runtime directory {planted} is not ours") == 1

        daemon = _alices_daemon(session, settings)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            report = json.loads(session.pkgckpt("status", "--json", **settings).stdout)
            if report["daemon_running"]:
                break
            assert daemon.poll() is None, "the daemon exited"
            time.sleep(0.2)
        else:
            pytest.fail("the daemon never showed in status")
        assert report["daemon"]["pid"] != pid
        asked = session.pkgckpt("snapshot", **settings)
        assert asked.returncode == 0, asked.stderr
        assert "nothing to checkpoint" in asked.stdout or "the daemon wrote" in asked.stdout
        assert sleeper.poll() is None
        assert (
            json.loads(planted.joinpath(status.status_path(config).name).read_text())["pid"] == pid
        ), "alice wrote into bob's directory"
    finally:
        if daemon is not None:
            log = _stopped(daemon)
            assert log.count("is not ours") == 1, log
        sleeper.kill()
        sleeper.wait()
    session.assert_clean()


def _shown(session: Session, settings: dict[str, str]) -> dict[str, object]:
    shown = session.pkgckpt("status", "--json", **settings)
    assert shown.returncode == 0, shown.stderr
    report: dict[str, object] = json.loads(shown.stdout)
    return report


def _recorded(session: Session, settings: dict[str, str]) -> list[str]:
    """The names alice's record holds as added, in her venv."""
    report = _shown(session, settings)
    envs = report["environments"]
    assert isinstance(envs, list)
    return sorted(p["name"] for e in envs for p in e["added"])


def _alices_store(reachable_tmp: Path, alice: User) -> dict[str, str]:
    store = _open(reachable_tmp / "store", 0o755)
    init_store(store)
    init_store(store / "s")
    os.chown(store / "s", alice.uid, alice.gid)
    return {"PKGCKPT_STORE": str(store / "s"), "PKGCKPT_KEY": alice.name}


def test_a_daemon_in_the_fallback_is_still_found_once_the_planted_directory_is_gone(
    session: Session, alice: User, bob: User, shared: Path, reachable_tmp: Path
) -> None:
    """bob's /tmp/pkgckpt-<alice's uid>/ sends alice's daemon to the private fallback; bob
    then removes it: `status` still finds the daemon, `forget` goes through it (no second
    writer: its next commit keeps the package forgotten), and a second daemon refuses to
    start (exit 4)."""
    settings = _alices_store(reachable_tmp, alice)
    planted = shared / f"pkgckpt-{alice.uid}"
    bob.run(["mkdir", "-m", "0777", str(planted)], check=True)
    first = session.pkgckpt("restore", **settings)
    assert first.returncode == 0, first.stderr
    daemon = _alices_daemon(session, settings)
    try:
        session.install_alicepkg()
        deadline = time.monotonic() + 60
        while _recorded(session, settings) != ["alicepkg"]:
            assert daemon.poll() is None, "the daemon exited"
            assert time.monotonic() < deadline, "alicepkg never recorded"
            time.sleep(0.2)
        bob.run(["rmdir", str(planted)], check=True)

        report = _shown(session, settings)
        assert report["daemon_running"] is True
        forgot = session.pkgckpt("forget", "alicepkg", **settings)
        assert forgot.returncode == 0, forgot.stderr
        assert "the daemon wrote" in forgot.stdout
        second = session.pkgckpt("daemon", **settings)
        assert second.returncode == 4, second.stderr
        assert "already runs" in second.stderr
        snap = session.pkgckpt("snapshot", **settings)  # the daemon rescans and commits
        assert snap.returncode == 0, snap.stderr
        assert "the daemon" in snap.stdout or "nothing to checkpoint" in snap.stdout
        assert _recorded(session, settings) == []
    finally:
        log = _stopped(daemon)
    assert log.count("is not ours") == 1, log
    session.assert_clean()


def test_forget_reaches_a_daemon_whose_runtime_directory_was_cleaned_and_taken(
    session: Session, alice: User, bob: User, shared: Path, reachable_tmp: Path
) -> None:
    """alice's runtime directory is removed under her running daemon (tmpfiles cleaning
    /tmp) and bob takes the name: the daemon's status moves to the private fallback, and
    so does where it takes requests: `forget` is answered at once, not after a timeout,
    and the daemon holds its lock there (a second daemon exits 4)."""
    settings = _alices_store(reachable_tmp, alice)
    first = session.pkgckpt("restore", **settings)
    assert first.returncode == 0, first.stderr
    runtime = shared / f"pkgckpt-{alice.uid}"
    assert runtime.stat().st_uid == alice.uid
    daemon = _alices_daemon(session, settings)
    try:
        deadline = time.monotonic() + 60
        while not _shown(session, settings)["daemon_running"]:
            assert daemon.poll() is None, "the daemon exited"
            assert time.monotonic() < deadline, "the daemon never showed in status"
            time.sleep(0.2)
        shutil.rmtree(runtime)
        bob.run(["mkdir", "-m", "0777", str(runtime)], check=True)
        session.install_alicepkg()  # a change: the daemon writes its status anew
        deadline = time.monotonic() + 60
        while not (
            (report := _shown(session, settings))["daemon_running"]
            and _recorded(session, settings) == ["alicepkg"]
        ):
            assert daemon.poll() is None, "the daemon exited"
            assert time.monotonic() < deadline, f"the daemon was not found again: {report}"
            time.sleep(0.2)

        started = time.monotonic()
        forgot = session.pkgckpt("forget", "alicepkg", **settings)
        assert forgot.returncode == 0, forgot.stderr
        assert "the daemon wrote" in forgot.stdout
        assert time.monotonic() - started < 8
        assert _recorded(session, settings) == []
        second = session.pkgckpt("daemon", **settings)
        assert second.returncode == 4, second.stderr
        assert sorted(p.name for p in runtime.iterdir()) == [], "alice wrote into bob's directory"
    finally:
        _stopped(daemon)
    session.assert_clean()


# -- squashed stores -------------------------------------------------------------------


@contextlib.contextmanager
def squashed(backing: Path, mountpoint: Path, user: User) -> Iterator[Path]:
    """`backing` as `user` sees it over an all_squash export: every file is theirs."""
    if shutil.which("bindfs") is None:
        pytest.skip("bindfs is missing (Debian package bindfs): cannot simulate squashing")
    _open(mountpoint)
    subprocess.run(
        [
            "bindfs",
            f"--force-user={user.uid}",
            f"--force-group={user.gid}",
            "-o",
            "allow_other,attr_timeout=0,entry_timeout=0",
            str(backing),
            str(mountpoint),
        ],
        check=True,
    )
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=False)


FORGE = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    from pkgckpt import manifest, seal
    from pkgckpt.manifest import Package, UrlSource
    path, wheel, mode = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    found = manifest.decode(seal.Seal().open(path.read_bytes(), path))
    evil = Package(name="evil", version="1.0", source=UrlSource(url="file://" + wheel))
    envs = tuple(
        manifest.msgspec.structs.replace(d, added=(*d.added, evil))
        for d in found.body.environments
    )
    body = manifest.msgspec.structs.replace(found.body, environments=envs)
    forged = manifest.msgspec.structs.replace(found, generation=found.generation + 1, body=body)
    data = manifest.encode(forged)
    if mode == "reseal":  # with bob's own secret: all he has
        data = b"".join(seal.Sealed(b"b" * 32, path.parent.name).sign((data,)))
    tmp = path.with_name(".forged")
    tmp.write_bytes(data)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
    """
)


def _forge(bob: User, manifest_path: Path, wheel: Path, mode: str = "plain") -> None:
    done = bob.run([sys.executable, "-c", FORGE, str(manifest_path), str(wheel), mode])
    assert done.returncode == 0, done.stderr


def _record_alicepkg(session: Session, settings: dict[str, str]) -> None:
    """alice's first container: a baseline, alicepkg installed by hand, a checkpoint."""
    first = session.pkgckpt("restore", **settings, **session.runtime())
    assert first.returncode == 0, first.stderr
    session.install_alicepkg()
    snap = session.pkgckpt("snapshot", **settings, **session.runtime())
    assert snap.returncode == 0, snap.stderr


def test_a_squashed_store_in_neither_layout_is_refused(
    session: Session, alice: User, bob: User, reachable_tmp: Path
) -> None:
    """Under squashing bob can rewrite alice's manifest with a file:// source: once other
    keys' directories are visible and nothing is sealed, alice's restore refuses the store
    with both layouts explained, and bob's package never runs."""
    export = _open(reachable_tmp / "export")
    init_store(export)
    with (
        squashed(export, reachable_tmp / "alice-view", alice) as mine,
        squashed(export, reachable_tmp / "bob-view", bob) as his,
    ):
        settings = {
            "PKGCKPT_STORE": str(mine),
            "PKGCKPT_KEY": alice.name,
            "PKGCKPT_STORE_UID": str(alice.uid),
        }
        _record_alicepkg(session, settings)  # only her directory exists yet: layout (a)
        bob.run(["mkdir", str(his / bob.name)], check=True)
        _forge(bob, his / alice.name / "manifest.json", session.evil)

        session.new_container()
        restore = session.pkgckpt("restore", **settings, **session.runtime())
        assert restore.returncode == 1
        assert f"shows other keys' directories ('{bob.name}')" in restore.stderr
        assert "subPath" in restore.stderr and "store_secret_file" in restore.stderr
        session.assert_clean()
        assert "alicepkg" not in session.installed()


def _secret(alice: User) -> Path:
    path = alice.home / "seal.key"
    alice.run(["sh", "-c", f"umask 077; head -c 48 /dev/urandom | base64 > {path}"], check=True)
    return path


@pytest.mark.parametrize("mode", ["plain", "reseal"])
def test_a_sealed_squashed_store_rejects_bobs_forgery(
    session: Session, alice: User, bob: User, reachable_tmp: Path, mode: str
) -> None:
    """Layout (b): alice's manifests carry an HMAC keyed by her secret file; bob's rewrite,
    unsealed or sealed with his own secret, is refused before it is decoded."""
    export = _open(reachable_tmp / "export")
    init_store(export)
    with (
        squashed(export, reachable_tmp / "alice-view", alice) as mine,
        squashed(export, reachable_tmp / "bob-view", bob) as his,
    ):
        bob.run(["mkdir", str(his / bob.name)], check=True)
        settings = {
            "PKGCKPT_STORE": str(mine),
            "PKGCKPT_KEY": alice.name,
            "PKGCKPT_STORE_UID": str(alice.uid),
            "PKGCKPT_STORE_SECRET_FILE": str(_secret(alice)),
        }
        _record_alicepkg(session, settings)
        assert (mine / alice.name / "manifest.json").read_bytes().startswith(b'{"seal": ')
        _forge(bob, his / alice.name / "manifest.json", session.evil, mode)

        session.new_container()
        restore = session.pkgckpt("restore", **settings, **session.runtime())
        assert restore.returncode == 1
        expected = "is not sealed" if mode == "plain" else "fails its seal"
        assert expected in restore.stderr
        session.assert_clean()


def test_a_secret_file_on_the_store_or_open_to_others_is_refused(
    session: Session, alice: User, reachable_tmp: Path
) -> None:
    """The secret must be alice's alone: a group-readable one, or one on the store, is a
    usage error that says why."""
    export = _open(reachable_tmp / "export")
    init_store(export)
    with squashed(export, reachable_tmp / "alice-view", alice) as mine:
        secret = _secret(alice)
        settings = {
            "PKGCKPT_STORE": str(mine),
            "PKGCKPT_KEY": alice.name,
            "PKGCKPT_STORE_UID": str(alice.uid),
        }
        alice.run(["chmod", "0640", str(secret)], check=True)
        loose = session.pkgckpt("status", PKGCKPT_STORE_SECRET_FILE=str(secret), **settings)
        assert loose.returncode == 2 and "chmod 600" in loose.stderr
        alice.run(["cp", str(secret), str(mine / "seal.key")], check=True)
        alice.run(["chmod", "0600", str(mine / "seal.key")], check=True)
        on_store = session.pkgckpt(
            "status", PKGCKPT_STORE_SECRET_FILE=str(mine / "seal.key"), **settings
        )
        assert on_store.returncode == 2 and "on the store" in on_store.stderr


def test_a_squashed_store_that_is_alices_own_mount_works(
    session: Session, alice: User, bob: User, reachable_tmp: Path
) -> None:
    """Layout (a): the export's directory for alice is her store root (a subPath); with no
    other key visible there, her checkpoint and restore work, unsealed."""
    export = _open(reachable_tmp / "export")
    init_store(_open(export / "alice-sub"))
    _open(export / "bob-sub")
    with squashed(export / "alice-sub", reachable_tmp / "alice-view", alice) as mine:
        settings = {
            "PKGCKPT_STORE": str(mine),
            "PKGCKPT_KEY": alice.name,
            "PKGCKPT_STORE_UID": str(alice.uid),
        }
        _record_alicepkg(session, settings)
        session.new_container()
        assert "alicepkg" not in session.installed()
        restore = session.pkgckpt("restore", **settings, **session.runtime())
        assert restore.returncode == 0, restore.stderr
        assert "alicepkg" in session.installed()
        session.assert_clean()


# -- the default key --------------------------------------------------------------------


def test_every_user_as_jovyan_is_refused_until_a_key_is_set(
    session: Session, alice: User, bob: User, reachable_tmp: Path
) -> None:
    """In an image where every user is `jovyan`, a shared store is refused (exit 2, how to
    set a key) before anything is written; JUPYTERHUB_USER then keys alice's own directory,
    which bob's planted `jovyan` directory does not touch."""
    store = _open(reachable_tmp / "store", 0o1777)
    init_store(store)
    bob.run(["mkdir", "-m", "0700", str(store / "jovyan")], check=True)
    shared = {"PKGCKPT_STORE": str(store), "PKGCKPT_GENERIC_USERS": f"jovyan:{alice.name}"}

    for first in ("restore", "snapshot", "status"):
        refused = session.pkgckpt(first, **shared, **session.runtime())
        assert refused.returncode == 2, refused.stderr
        assert f"login name {alice.name!r}" in refused.stderr
        assert "PKGCKPT_KEY=<user>" in refused.stderr
    hub = session.pkgckpt("restore", **shared, **session.runtime(), JUPYTERHUB_USER="jovyan")
    assert hub.returncode == 2 and "JUPYTERHUB_USER is 'jovyan'" in hub.stderr
    assert sorted(p.name for p in store.iterdir()) == [".pkgckpt-store", "jovyan"]

    _record_alicepkg(session, {**shared, "JUPYTERHUB_USER": "alice-hub"})
    assert (store / "alice-hub" / "manifest.json").stat().st_uid == alice.uid
    session.new_container()
    restore = session.pkgckpt("restore", **shared, **session.runtime(), JUPYTERHUB_USER="alice-hub")
    assert restore.returncode == 0, restore.stderr
    assert "alicepkg" in session.installed()
    session.assert_clean()


# -- the store root ---------------------------------------------------------------------


@pytest.fixture
def team(alice: User, bob: User) -> Iterator[str]:
    """A group alice and bob are both members of (a team's, a project's)."""
    name = f"pkcteam{secrets.token_hex(3)}"
    subprocess.run(["groupadd", name], check=True)
    try:
        for user in (alice, bob):
            subprocess.run(["usermod", "-a", "-G", name, user.name], check=True)
        yield name
    finally:
        subprocess.run(["groupdel", name], check=False)


def test_a_store_root_its_group_can_write_is_refused_until_it_is_sticky(
    session: Session, alice: User, bob: User, reachable_tmp: Path, team: str
) -> None:
    """A root writable by a group bob is in (0775): bob could `mv` alice's key directory
    away and her next container would start from nothing, so alice's restore refuses the
    store and says how to fix it, writing nothing. With the sticky bit (1775) her record
    works and bob's `mv` fails."""
    store = _open(reachable_tmp / "store", 0o755)
    init_store(store)
    shutil.chown(store, group=team)
    store.chmod(0o775)
    settings = {"PKGCKPT_STORE": str(store), "PKGCKPT_KEY": alice.name}

    refused = session.pkgckpt("restore", **settings, **session.runtime())
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert f"writable by its group ({team}" in refused.stderr
    assert f"chmod +t {store}" in refused.stderr
    assert not (store / alice.name).exists(), "a key directory was made in a loose root"

    store.chmod(0o1775)  # the administrator's fix
    _record_alicepkg(session, settings)
    moved = bob.run(["mv", str(store / alice.name), str(store / "stolen")])
    assert moved.returncode != 0, "bob moved alice's record away"
    session.new_container()
    restore = session.pkgckpt("restore", **settings, **session.runtime())
    assert restore.returncode == 0, restore.stderr
    assert "alicepkg" in session.installed()
    session.assert_clean()


def test_a_store_root_another_user_owns_is_refused_one_root_squash_made_is_not(
    session: Session, alice: User, bob: User, reachable_tmp: Path
) -> None:
    """bob's 1777 root: the sticky bit binds everyone but the directory's owner, so bob
    could move alice's key directory away; alice's restore refuses it, naming bob and the
    fix, and writes nothing. The same root owned by nobody, what root_squash makes of an
    administrator's `pkgckpt store init` run on an NFS client, is a store."""
    store = _open(reachable_tmp / "store", 0o755)
    init_store(store)
    os.chown(store, bob.uid, bob.gid)
    store.chmod(0o1777)
    settings = {"PKGCKPT_STORE": str(store), "PKGCKPT_KEY": alice.name}

    refused = session.pkgckpt("restore", **settings, **session.runtime())
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert f"is owned by {bob.name} (uid {bob.uid}), not by root, this user" in refused.stderr
    assert f"chown root {store}" in refused.stderr
    assert not (store / alice.name).exists(), "a key directory was made in bob's root"

    os.chown(store, NOBODY, NOBODY)
    _record_alicepkg(session, settings)
    session.new_container()
    restore = session.pkgckpt("restore", **settings, **session.runtime())
    assert restore.returncode == 0, restore.stderr
    assert "alicepkg" in session.installed()
    session.assert_clean()


def test_a_key_directory_bob_made_first_names_him_though_alice_cannot_open_it(
    session: Session, alice: User, bob: User, reachable_tmp: Path
) -> None:
    """bob made a directory of alice's key name, 0700 as key directories are, in a shared
    1777 root: alice cannot even open it, and every command says whose it is and what to
    do, not "Permission denied", which reads like an outage of the store."""
    store = _open(reachable_tmp / "store", 0o755)
    init_store(store)
    store.chmod(0o1777)
    bob.run(["mkdir", "-m", "0700", str(store / alice.name)], check=True)
    settings = {"PKGCKPT_STORE": str(store), "PKGCKPT_KEY": alice.name}
    whose = f"{store / alice.name} is owned by {bob.name} (uid {bob.uid}), not by this user"
    fix = f"ask {bob.name} (uid {bob.uid}) or an administrator to remove it, or use another key"
    for command in ("restore", "snapshot", "status"):
        done = session.pkgckpt(command, **settings, **session.runtime())
        shown = done.stdout + done.stderr
        assert whose in shown and fix in shown, f"{command}: {shown}"
        assert "Permission denied" not in shown, f"{command}: {shown}"
        assert done.returncode == (0 if command == "status" else 1), f"{command}: {shown}"


def test_bobs_marker_in_an_empty_mount_point_makes_it_no_store(
    session: Session, alice: User, bob: User, reachable_tmp: Path
) -> None:
    """The store's export is not mounted (yet, or any more) on a mount point open to all,
    sticky, as /tmp is: bob leaves a `.pkgckpt-store` there. alice's restore says the
    store is not available, for bob's marker, instead of finding no manifest and exiting
    0; her record on the real store is untouched. An administrator's `store init` there
    replaces bob's marker with one of its own."""
    settings = _alices_store(reachable_tmp, alice)
    real = Path(settings["PKGCKPT_STORE"])
    point = _open(reachable_tmp / "mnt", 0o1777)
    settings["PKGCKPT_STORE"] = str(point)
    mounted = subprocess.run(["mount", "--bind", str(real), str(point)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"mount --bind is refused here: {mounted.stderr.strip()}")
    try:
        _record_alicepkg(session, settings)
    finally:
        subprocess.run(["umount", str(point)], check=True)
    bob.run(["sh", "-c", 'echo x > "$1"', "-", str(point / ".pkgckpt-store")], check=True)
    session.new_container()
    restore = session.pkgckpt("restore", **settings, **session.runtime())
    assert restore.returncode == 1, (restore.stdout, restore.stderr)
    assert f"store {point} is not available" in restore.stderr, restore.stderr
    assert f".pkgckpt-store marker belongs to {bob.name}" in restore.stderr, restore.stderr
    assert not (point / alice.name).exists()
    assert (real / alice.name / "manifest.json").exists()
    assert init_store(point) is True
    assert (point / ".pkgckpt-store").stat().st_uid == 0
