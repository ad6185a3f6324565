"""The shared artifact pool between two real users: bob can delete and replace the pool
entries he created, and can plant a file under the name alice's capture will have; alice
never installs bytes whose sha256 is not the one in her own manifest."""

from __future__ import annotations

import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from pkgckpt.manifest import Package
from pkgckpt.store import Store
from tests.security.conftest import User
from tests.security.test_children import chown_tree, evil_wheel
from tests.wheelhouse import Dist, build_wheel

pytestmark = pytest.mark.slow


@pytest.fixture
def pool() -> Iterator[Path]:
    """The pool an administrator makes: `DIR/sha256` mode 1777, like /tmp."""
    root = Path(tempfile.mkdtemp(prefix="pkgckpt-pool-", dir="/var/tmp"))
    root.chmod(0o755)
    (root / "sha256").mkdir()
    (root / "sha256").chmod(0o1777)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


class Person:
    """A user's own wheels, venv, store and runtime directory, all in their home."""

    def __init__(self, user: User, tool: Path, pool: Path, dists: list[Dist]) -> None:
        self.user = user
        self.tool = tool
        self.pool = pool
        self.home = user.home / f"pool-{secrets.token_hex(3)}"
        self.home.mkdir(mode=0o700)
        self.wheels = self.home / "wheels"
        for dist in dists:
            build_wheel(dist, self.wheels)
        self.store = self.home / "store"
        self.prefix = self.home / "env"
        (self.home / "tmp").mkdir()
        (self.home / "run").mkdir(mode=0o700)
        chown_tree(self.home, user)
        self.run([str(tool / "bin" / "pkgckpt"), "store", "init", str(self.store)])
        self.new_venv()
        self.baseline = self.home / "baseline.json"
        pkgckpt = str(tool / "bin" / "pkgckpt")
        self.run([pkgckpt, "baseline", "--env", str(self.prefix), "--output", str(self.baseline)])

    def env(self) -> dict[str, str]:
        return {
            "PATH": f"{self.tool / 'bin'}:/usr/bin:/bin",
            "XDG_RUNTIME_DIR": str(self.home / "run"),
            "TMPDIR": str(self.home / "tmp"),
            "UV_CACHE_DIR": str(self.home / "uv-cache"),
            "PKGCKPT_ARTIFACT_POOL": str(self.pool),
            "PKGCKPT_DISCOVER": "",
        }

    def run(self, argv: list[str], check: bool = True) -> subprocess.CompletedProcess[str]:
        out = self.user.run(argv, env=self.env(), timeout=300)
        if check:
            assert out.returncode == 0, (argv, out.stdout, out.stderr)
        return out

    def new_venv(self) -> None:
        if self.prefix.exists():
            shutil.rmtree(self.prefix)
        self.run(
            [str(self.tool / "bin" / "python"), "-m", "venv", "--without-pip", str(self.prefix)]
        )

    def install(self, *reqs: str) -> None:
        python = str(self.prefix / "bin" / "python")
        uv = [str(self.tool / "bin" / "uv"), "pip", "install", "--python", python]
        self.run([*uv, "--no-index", "--find-links", str(self.wheels), *reqs])

    def pkgckpt(self, *args: str) -> subprocess.CompletedProcess[str]:
        common = ["--store", str(self.store), "--key", self.user.name, "--env", str(self.prefix)]
        common += ["--baseline", str(self.baseline)]
        return self.run([str(self.tool / "bin" / "pkgckpt"), *args, *common], check=False)

    def recorded(self) -> dict[str, Package]:
        found = Store(self.store, self.user.name, owner=self.user.uid).read()
        assert found is not None
        return {p.name: p for d in found.body.deltas() for p in d.added}

    def installed(self) -> set[str]:
        site = next(self.prefix.glob("lib/python3*/site-packages"))
        return {p.name.split("-")[0] for p in site.glob("*.dist-info")}


DISTS = [Dist("app", "1.0", requires=["libdep"]), Dist("libdep", "1.0")]


def test_bobs_swapped_pool_entry_is_refused_by_alices_restore(
    alice: User, bob: User, tool: Path, pool: Path
) -> None:
    """bob captures app first (the pool keeps his entry), alice's identical capture points
    to it; bob then replaces his entry with a wheel that runs code at interpreter start.
    Alice's restore from artifacts alone refuses it naming the hash (exit 3), installs
    libdep from the pool, never runs bob's code, and drops the entry from her record;
    with her wheels app installs from its source, her snapshot captures it again under
    her key, and her restores need no index again."""
    b = Person(bob, tool, pool, DISTS)
    a = Person(alice, tool, pool, DISTS)
    try:
        b.install("app")
        assert b.pkgckpt("snapshot").returncode == 0
        a.install("app")
        snap = a.pkgckpt("snapshot")
        assert snap.returncode == 0, snap.stdout + snap.stderr
        mine = a.recorded()
        assert all(p.artifact is not None and p.artifact.pooled for p in mine.values()), mine
        assert not list((a.store / alice.name / "artifacts").glob("*.whl"))
        app = mine["app"].artifact
        assert app is not None
        entry = pool / "sha256" / app.sha256
        assert entry.stat().st_uid == bob.uid, "bob's capture made the entry"

        marker = pool / f"ran-{secrets.token_hex(3)}"
        evil = evil_wheel("app", "1.0", b.home / "evil", marker)
        chown_tree(b.home, bob)
        b.run(["rm", "-f", str(entry)])
        b.run(["cp", str(evil), str(entry)])

        a.new_venv()
        alone = a.pkgckpt("restore", "--installer", "uv", "--no-index")
        assert alone.returncode == 3, alone.stdout + alone.stderr
        assert app.sha256 in alone.stdout, alone.stdout
        assert a.installed() == {"libdep"}
        a.run([str(a.prefix / "bin" / "python"), "-c", "pass"])
        assert not marker.exists(), "bob's bytes ran in alice's venv"
        # The record lets bob's entry go: no restore reads it again.
        assert a.recorded()["app"].artifact is None

        back = a.pkgckpt(
            "restore", "--installer", "uv", "--no-index", "--find-links", str(a.wheels)
        )
        assert back.returncode == 0, back.stdout + back.stderr
        assert a.installed() == {"app", "libdep"}
        a.run([str(a.prefix / "bin" / "python"), "-c", "pass"])
        assert not marker.exists()

        # Alice's next snapshot captures app again, under her key as the pool holds other
        # bytes under that hash, and a restore from artifacts alone is whole again.
        again = a.pkgckpt("snapshot")
        assert again.returncode == 0, again.stdout + again.stderr
        mine = a.recorded()["app"].artifact
        assert mine is not None and not mine.pooled and mine.sha256 == app.sha256, mine
        a.new_venv()
        whole = a.pkgckpt("restore", "--installer", "uv", "--no-index")
        assert whole.returncode == 0, whole.stdout + whole.stderr
        assert a.installed() == {"app", "libdep"}
        a.run([str(a.prefix / "bin" / "python"), "-c", "pass"])
        assert not marker.exists()
    finally:
        shutil.rmtree(a.home, ignore_errors=True)
        shutil.rmtree(b.home, ignore_errors=True)


def test_a_pool_entry_planted_before_alices_capture_is_not_used(
    alice: User, bob: User, tool: Path, pool: Path
) -> None:
    """bob plants other bytes under the name alice's capture will have (captures are
    reproducible, so he can know it): the pool cannot be replaced, alice keeps her
    artifact under her own key instead, and it restores."""
    a = Person(alice, tool, pool, DISTS)
    try:
        a.install("libdep")
        # The name alice's capture will have, found by capturing the same install once.
        probe = Person(bob, tool, pool.parent / f"nopool-{secrets.token_hex(3)}", DISTS)
        probe.install("libdep")
        assert probe.pkgckpt("snapshot").returncode == 0
        want = probe.recorded()["libdep"].artifact
        assert want is not None and not want.pooled
        shutil.rmtree(probe.home, ignore_errors=True)
        planted = pool / "sha256" / want.sha256
        bob.run(["sh", "-c", f"echo not-a-wheel > {planted}"], check=True)

        snap = a.pkgckpt("snapshot")
        assert snap.returncode == 0, snap.stdout + snap.stderr
        assert f"{planted} holds other bytes than this capture's" in snap.stderr, snap.stderr
        got = a.recorded()["libdep"].artifact
        assert got is not None and got.sha256 == want.sha256 and not got.pooled
        assert (a.store / alice.name / "artifacts" / got.file).stat().st_uid == alice.uid
        a.new_venv()
        done = a.pkgckpt("restore", "--installer", "uv", "--no-index")
        assert done.returncode == 0, done.stdout + done.stderr
        assert a.installed() == {"libdep"}
    finally:
        shutil.rmtree(a.home, ignore_errors=True)


def test_bob_cannot_prune_alices_pool_entries(
    alice: User, bob: User, tool: Path, pool: Path
) -> None:
    """`store prune-pool` run by an ordinary user removes no entry another user added
    (the sticky bit): alice's old entries stay and bob's run exits 1 naming them."""
    import os
    import time

    a = Person(alice, tool, pool, DISTS)
    a.install("app")
    snap = a.pkgckpt("snapshot")
    assert snap.returncode == 0, snap.stdout + snap.stderr
    entries = sorted((pool / "sha256").iterdir())
    assert len(entries) == 2, entries
    old = time.time() - 40 * 86400
    for entry in entries:
        os.utime(entry, (old, old))
    argv = [str(tool / "bin" / "pkgckpt"), "store", "prune-pool", str(pool), "--older-than", "30"]
    out = bob.run(argv, env={"PATH": f"{tool / 'bin'}:/usr/bin:/bin"})
    assert out.returncode == 1, out.stdout + out.stderr
    assert all(f"cannot remove {e}" in out.stderr for e in entries), out.stderr
    assert all(e.exists() for e in entries)


def test_a_sha256_dir_made_by_bob_is_not_used_by_alice(alice: User, bob: User, tool: Path) -> None:
    """An administrator made the pool's root (1777) but not `sha256/`: bob makes it, and
    as its owner the sticky bit would not stop him removing or replacing alice's entries.
    Alice's capture refuses that directory and keeps her artifacts under her key; her
    own capture never makes `sha256/` under a root she does not own."""
    root = Path(tempfile.mkdtemp(prefix="pkgckpt-pool-", dir="/var/tmp"))
    try:
        root.chmod(0o1777)
        a = Person(alice, tool, root, DISTS)
        try:
            a.install("libdep")
            snap = a.pkgckpt("snapshot")
            assert snap.returncode == 0, snap.stdout + snap.stderr
            assert not (root / "sha256").exists(), "alice made sha256/ under root's pool"
            missing = f"artifact pool {root / 'sha256'} does not exist: an administrator makes it"
            assert missing in snap.stderr, snap.stderr
            assert not a.recorded()["libdep"].artifact.pooled  # type: ignore[union-attr]

            bob.run(["mkdir", "-m", "1777", str(root / "sha256")], check=True)
            a.install("app")
            snap = a.pkgckpt("snapshot")
            assert snap.returncode == 0, snap.stdout + snap.stderr
            assert f"owned by uid {bob.uid}" in snap.stderr, snap.stderr
            mine = a.recorded()
            assert all(p.artifact is not None and not p.artifact.pooled for p in mine.values())
            assert list((root / "sha256").iterdir()) == []
            a.new_venv()
            done = a.pkgckpt("restore", "--installer", "uv", "--no-index")
            assert done.returncode == 0, done.stdout + done.stderr
            assert a.installed() == {"app", "libdep"}
        finally:
            shutil.rmtree(a.home, ignore_errors=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
