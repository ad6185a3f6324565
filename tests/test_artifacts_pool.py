"""`pkgckpt store prune-pool`: the administrator's way to bound the shared pool. Only
old regular files named by their sha256 (and dead captures' temp files) go; nothing is
followed; a pruned entry costs a new capture at the next snapshot, never a wrong one.
And a pool that cannot be used, as a user sees it."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

from artifact_kit import baselined_venv, cache_on
from daemon_kit import World
from wheelhouse import Dist, build_wheel

OLD = time.time() - 40 * 86400


def _pool(tmp_path: Path) -> Path:
    root = tmp_path / "pool"
    (root / "sha256").mkdir(parents=True)
    (root / "sha256").chmod(0o1777)
    return root


def _entry(pool: Path, data: bytes, *, read: float = OLD, written: float = OLD) -> Path:
    path = pool / "sha256" / hashlib.sha256(data).hexdigest()
    path.write_bytes(data)
    os.utime(path, (read, written))
    return path


def test_prune_pool_removes_only_old_regular_files_named_by_their_hash(tmp_path: Path) -> None:
    """An entry unread for 40 days and a dead capture's temp file go; an old entry read
    yesterday, a fresh one, a symlink and a directory named by a hash (their targets
    untouched), and a file with another name stay; --dry-run removes nothing."""
    world = World.make(tmp_path)
    pool = _pool(tmp_path)
    old = _entry(pool, b"old")
    read = _entry(pool, b"read", read=time.time() - 86400)
    fresh = _entry(pool, b"fresh", read=time.time(), written=time.time())
    temp = pool / "sha256" / f".{'1' * 64}.tmp.host.1.abcd"
    temp.write_bytes(b"half")
    os.utime(temp, (OLD, OLD))
    outside = tmp_path / "precious"
    outside.write_bytes(b"precious")
    os.utime(outside, (OLD, OLD))
    link = pool / "sha256" / ("2" * 64)
    link.symlink_to(outside)
    os.utime(link, (OLD, OLD), follow_symlinks=False)
    (pool / "sha256" / ("3" * 64)).mkdir()
    other = pool / "sha256" / "README"
    other.write_bytes(b"x")
    os.utime(other, (OLD, OLD))

    dry = world.pkgckpt("store", "prune-pool", str(pool), "--older-than", "30", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "would remove 2 entries" in dry.stdout, dry.stdout
    assert old.exists() and temp.exists()

    done = world.pkgckpt("store", "prune-pool", str(pool), "--older-than", "30")
    assert done.returncode == 0, done.stderr
    assert f"removed {old.name}" in done.stdout, done.stdout
    assert "removed 2 entries" in done.stdout, done.stdout
    assert not old.exists() and not temp.exists()
    assert read.exists() and fresh.exists() and other.exists()
    assert link.is_symlink() and outside.read_bytes() == b"precious"
    assert (pool / "sha256" / ("3" * 64)).is_dir()


def test_prune_pool_refuses_a_bound_under_a_day_and_a_missing_pool(tmp_path: Path) -> None:
    """--older-than 0 is a usage error (atime moves once a day at most); a directory
    without `sha256/` is not a pool: exit 1, nothing touched."""
    world = World.make(tmp_path)
    pool = _pool(tmp_path)
    keep = _entry(pool, b"keep")
    zero = world.pkgckpt("store", "prune-pool", str(pool), "--older-than", "0")
    assert zero.returncode == 2, zero.stdout + zero.stderr
    assert keep.exists()
    (tmp_path / "empty").mkdir()
    missing = world.pkgckpt("store", "prune-pool", str(tmp_path / "empty"), "--older-than", "1")
    assert missing.returncode == 1, missing.stdout + missing.stderr
    assert "not an artifact pool" in missing.stderr


def test_a_pruned_entry_is_captured_again_by_the_next_snapshot(tmp_path: Path) -> None:
    """A snapshot puts the artifact in the pool; pruned, the manifest still names its
    hash, and the next snapshot captures it again into the pool (same bytes, same
    generation); the per-key directory never took a copy. `status` counts it in the pool
    only while it is there."""
    world = cache_on(World.make(tmp_path))
    pool = _pool(tmp_path)
    world.env["PKGCKPT_ARTIFACT_POOL"] = str(pool)
    wheels = tmp_path / "wheels"
    build_wheel(Dist("solo", "1.0"), wheels)
    venv, flags = baselined_venv(world, tmp_path)
    venv.install(wheels, "solo")
    assert world.pkgckpt("snapshot", *flags, timeout=300).returncode == 0
    found = world.manifest()
    assert found is not None
    (solo,) = [p for d in found.body.deltas() for p in d.added]
    assert solo.artifact is not None and solo.artifact.pooled
    entry = pool / "sha256" / solo.artifact.sha256
    os.utime(entry, (OLD, OLD))
    assert ", 1 in the shared pool" in world.pkgckpt("status", *flags).stdout
    pruned = world.pkgckpt("store", "prune-pool", str(pool), "--older-than", "30")
    assert pruned.returncode == 0 and not entry.exists(), pruned.stdout
    status = world.pkgckpt("status", *flags).stdout
    assert "missing (1)" in status and "in the shared pool" not in status, status

    again = world.pkgckpt("snapshot", *flags, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "not captured" not in again.stdout, again.stdout
    assert ", 1 in the shared pool" in world.pkgckpt("status", *flags).stdout
    assert hashlib.sha256(entry.read_bytes()).hexdigest() == solo.artifact.sha256
    after = world.manifest()
    assert after is not None and after.generation == found.generation
    assert not (world.store / world.key / "artifacts").exists() or not list(
        (world.store / world.key / "artifacts").iterdir()
    )


def test_a_pool_that_cannot_be_used_is_said_once_and_not_taken_for_gone(tmp_path: Path) -> None:
    """An `artifact_pool` that does not exist (not mounted yet, a typo) is named by one
    warning however many packages a snapshot captures, and their artifacts go under the
    key. Pooled artifacts that a container cannot read (no pool named, or not mounted)
    are said to be in the pool, not used there, not gone from it."""
    world = cache_on(World.make(tmp_path))
    pool = tmp_path / "pool"
    world.env["PKGCKPT_ARTIFACT_POOL"] = str(pool)
    wheels = tmp_path / "wheels"
    for name in ("solo", "duo", "trio"):
        build_wheel(Dist(name, "1.0"), wheels)
    venv, flags = baselined_venv(world, tmp_path)
    venv.install(wheels, "solo", "duo")
    snap = world.pkgckpt("snapshot", *flags, timeout=300)
    assert snap.returncode == 0, snap.stdout + snap.stderr
    warning = f"artifact pool {pool} does not exist (not mounted?)"
    assert snap.stderr.count(warning) == 1, snap.stderr
    found = world.manifest()
    assert found is not None
    artifacts = [p.artifact for d in found.body.deltas() for p in d.added]
    assert len(artifacts) == 2 and all(a is not None and not a.pooled for a in artifacts)
    assert len(list((world.store / world.key / "artifacts").iterdir())) == 2

    _pool(tmp_path)
    venv.install(wheels, "trio")
    snap = world.pkgckpt("snapshot", *flags, timeout=300)
    assert snap.returncode == 0 and "artifact pool" not in snap.stderr, snap.stderr
    pooled = "trio-1.0-py3-none-any.whl is in the shared pool, not used here"
    assert pooled not in world.pkgckpt("status", *flags).stdout
    pool.rename(tmp_path / "unmounted")
    status = world.pkgckpt("status", *flags).stdout
    assert f"{pooled}: {warning}" in status and "gone" not in status, status
    del world.env["PKGCKPT_ARTIFACT_POOL"]
    status = world.pkgckpt("status", *flags).stdout
    assert f"{pooled}: this container names no artifact_pool" in status, status


def test_a_starting_daemon_captures_a_pruned_entry_again(tmp_path: Path) -> None:
    """The daemon looks for its record's pooled artifacts once at start: one pruned
    since is captured into the pool again, with no install and no new generation."""
    from daemon_kit import eventually

    world = cache_on(World.make(tmp_path))
    pool = _pool(tmp_path)
    world.env["PKGCKPT_ARTIFACT_POOL"] = str(pool)
    wheels = tmp_path / "wheels"
    build_wheel(Dist("solo", "1.0"), wheels)
    venv, flags = baselined_venv(world, tmp_path)
    venv.install(wheels, "solo")
    assert world.pkgckpt("snapshot", *flags, timeout=300).returncode == 0
    found = world.manifest()
    assert found is not None
    (solo,) = [p for d in found.body.deltas() for p in d.added]
    assert solo.artifact is not None and solo.artifact.pooled
    entry = pool / "sha256" / solo.artifact.sha256
    entry.unlink()
    daemon = world.daemon(*flags, "--quiet-ms", "100").start()
    try:
        eventually(entry.exists, timeout=60, what="the entry captured again")
        assert daemon.stop() == 0, daemon.output()
    finally:
        daemon.close()
    assert hashlib.sha256(entry.read_bytes()).hexdigest() == solo.artifact.sha256
    assert world.generation() == found.generation


def test_a_running_daemon_captures_again_an_entry_pruned_after_its_start(tmp_path: Path) -> None:
    """The pool is pruned while the daemon runs: its next commit (another install) finds
    the recorded entry gone and captures it into the pool again, the same bytes."""
    from daemon_kit import eventually

    world = cache_on(World.make(tmp_path))
    pool = _pool(tmp_path)
    world.env["PKGCKPT_ARTIFACT_POOL"] = str(pool)
    wheels = tmp_path / "wheels"
    build_wheel(Dist("solo", "1.0"), wheels)
    build_wheel(Dist("other", "1.0"), wheels)
    venv, flags = baselined_venv(world, tmp_path)

    def pooled(name: str) -> Path | None:
        found = world.manifest()
        for p in (p for d in (found.body.deltas() if found else ()) for p in d.added):
            if p.name == name and p.artifact is not None and p.artifact.pooled:
                return pool / "sha256" / p.artifact.sha256
        return None

    daemon = world.daemon(*flags, "--quiet-ms", "100").start()
    try:
        venv.install(wheels, "solo")
        entry = eventually(lambda: pooled("solo"), timeout=60, what="solo captured")
        eventually(entry.exists, what="solo in the pool")
        digest = entry.name
        entry.unlink()
        venv.install(wheels, "other")
        eventually(lambda: pooled("other"), timeout=60, what="other captured")
        eventually(entry.exists, timeout=60, what="the pruned entry captured again")
        assert daemon.stop() == 0, daemon.output()
    finally:
        daemon.close()
    assert hashlib.sha256(entry.read_bytes()).hexdigest() == digest
    assert pooled("solo") == entry
