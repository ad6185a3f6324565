"""Captures at the edges: a quota that fits one of two fresh artifacts, a version with an
epoch, an installed WHEEL with a malformed tag, and a pool whose entries are not what
their names say. Real installs by uv, real snapshots, restores and daemons."""

from __future__ import annotations

import hashlib
import subprocess
import time
from pathlib import Path

from artifact_kit import artifacts, cache_on
from daemon_kit import World, eventually
from wheelhouse import Dist, Venv, build_wheel, make_venv

from pkgckpt.manifest import Artifact, Package


class Case:
    """A venv with `dists` installed by uv, its baseline taken before, the cache on."""

    def __init__(self, root: Path, dists: list[Dist]) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.world = cache_on(World.make(root))
        self.wheels = root / "wheels"
        for dist in dists:
            build_wheel(dist, self.wheels)
        self.venv = make_venv(root / "venv", with_pip=False)
        self.baseline = root / "baseline.json"
        taken = self.world.pkgckpt(
            "baseline", "--env", str(self.venv.prefix), "--output", str(self.baseline)
        )
        assert taken.returncode == 0, taken.stderr
        if dists:
            self.install(self.venv, *(d.name for d in dists))
        self.flags = [*self.world.flags(self.venv.prefix), "--baseline", str(self.baseline)]

    def install(self, venv: Venv, *names: str) -> None:
        subprocess.run(
            ["uv", "pip", "install", "--python", str(venv.python), "--no-index",
             "--find-links", str(self.wheels), *names],
            check=True, capture_output=True, env=self.world.env,
        )  # fmt: skip

    def recorded(self) -> dict[str, Package]:
        found = self.world.manifest()
        assert found is not None
        return {p.name: p for d in found.body.deltas() for p in (*d.added, *d.changed)}


def _captured(root: Path, dists: list[Dist]) -> dict[str, Artifact]:
    """The artifacts a snapshot captures for `dists`, on a store of their own (a
    capture is deterministic: the same files give the same bytes)."""
    probe = Case(root, dists)
    done = probe.world.pkgckpt("snapshot", *probe.flags)
    assert done.returncode == 0, done.stderr
    return {p.name: p.artifact for p in probe.recorded().values() if p.artifact}


TWO = [Dist("alpha", "1.0", files=30), Dist("beta", "1.0", files=30)]


def test_a_quota_for_one_keeps_the_first_capture_and_skips_the_second(tmp_path: Path) -> None:
    """The second capture of one snapshot does not fit: it is skipped and reported, and
    the GC it runs first spares the first capture, which nothing references until the
    snapshot attaches it. Every artifact the record names is on the store."""
    sizes = [a.size for a in _captured(tmp_path / "probe", TWO).values()]
    case = Case(tmp_path / "real", TWO)
    case.world.env["PKGCKPT_ARTIFACT_QUOTA"] = str(max(sizes) + 10)
    done = case.world.pkgckpt("snapshot", *case.flags)
    assert done.returncode == 0, done.stderr
    assert "not captured (1)" in done.stdout and "over the artifact quota" in done.stdout
    recorded = {n: p.artifact.file for n, p in case.recorded().items() if p.artifact}
    assert len(recorded) == 1, recorded
    assert set(recorded.values()) == set(artifacts(case.world.store, case.world.key))


def test_the_daemons_worker_spares_what_it_captured_this_round(tmp_path: Path) -> None:
    """The same through the daemon's background worker: one artifact recorded and on the
    store, the other package named in status as over the quota."""
    sizes = [a.size for a in _captured(tmp_path / "probe", TWO).values()]
    root = tmp_path / "real"
    case = Case(root, [])
    for dist in TWO:
        build_wheel(dist, case.wheels)
    case.world.env["PKGCKPT_ARTIFACT_QUOTA"] = str(max(sizes) + 10)
    daemon = case.world.daemon(*case.flags, "--quiet-ms", "100").start()
    try:
        case.install(case.venv, "alpha", "beta")

        def settled() -> str | None:
            status = case.world.pkgckpt("status", *case.flags).stdout
            return status if "over the artifact quota" in status else None

        status = eventually(settled, 60, "a capture skipped over the quota")
    finally:
        assert daemon.stop() == 0
        daemon.close()
    assert "artifacts:  1 " in status, status
    recorded = {n: p.artifact.file for n, p in case.recorded().items() if p.artifact}
    assert len(recorded) == 1, recorded
    assert set(recorded.values()) == set(artifacts(case.world.store, case.world.key))


def test_a_version_with_an_epoch_is_captured_and_restored(tmp_path: Path) -> None:
    """`1!2.0` keeps its `!` in the wheel's name; the artifact is stored, and a restore
    with no index installs it from there."""
    case = Case(tmp_path, [Dist("epo", "1!2.0"), Dist("plain", "1.0")])
    done = case.world.pkgckpt("snapshot", *case.flags)
    assert done.returncode == 0, done.stderr
    assert "not captured" not in done.stdout, done.stdout
    assert set(artifacts(case.world.store, case.world.key)) == {
        "epo-1!2.0-py3-none-any.whl",
        "plain-1.0-py3-none-any.whl",
    }
    fresh = make_venv(tmp_path / "venv", with_pip=False)
    restored = case.world.pkgckpt("restore", *case.flags, "--no-index")
    assert restored.returncode == 0, restored.stdout + restored.stderr
    assert "2 from artifacts" in restored.stdout, restored.stdout
    assert (fresh.site_packages / "epo-1!2.0.dist-info").is_dir()


def test_a_malformed_wheel_tag_leaves_that_package_uncaptured_only(tmp_path: Path) -> None:
    """An installed WHEEL whose tag is not python-abi-platform: that package is listed
    as not captured, with the reason; the others are captured and snapshot exits 0."""
    case = Case(tmp_path, [Dist("oddtag", "1.0"), Dist("plain", "1.0")])
    wheel = case.venv.site_packages / "oddtag-1.0.dist-info" / "WHEEL"
    wheel.write_text(wheel.read_text().replace("Tag: py3-none-any", "Tag: py3-none"))
    done = case.world.pkgckpt("snapshot", *case.flags)
    assert done.returncode == 0, done.stderr
    assert "tag 'py3-none' is not python-abi-platform" in done.stdout, done.stdout
    assert set(artifacts(case.world.store, case.world.key)) == {"plain-1.0-py3-none-any.whl"}


def _pool(root: Path) -> Path:
    (root / "sha256").mkdir(parents=True)
    (root / "sha256").chmod(0o1777)
    return root


def test_a_sparse_file_under_the_entrys_name_is_not_hashed_whole(tmp_path: Path) -> None:
    """A pool entry of the wrong size (here a sparse 64 GiB file planted under the name
    the capture will have) is passed over at once: the capture keeps its artifact under
    the key instead of hashing the whole file."""
    want = _captured(tmp_path / "probe", [Dist("solo", "1.0")])["solo"]
    pool = _pool(tmp_path / "pool")
    with (pool / "sha256" / want.sha256).open("wb") as planted:
        planted.truncate(64 << 30)
    case = Case(tmp_path / "real", [Dist("solo", "1.0")])
    case.world.env["PKGCKPT_ARTIFACT_POOL"] = str(pool)
    start = time.monotonic()
    done = case.world.pkgckpt("snapshot", *case.flags, timeout=60)
    assert done.returncode == 0, done.stderr
    assert time.monotonic() - start < 30
    solo = case.recorded()["solo"].artifact
    assert solo is not None and not solo.pooled and solo.sha256 == want.sha256
    assert artifacts(case.world.store, case.world.key) == {solo.file: want.size}


def test_an_entry_swapped_for_other_bytes_is_captured_again_under_the_key(
    tmp_path: Path,
) -> None:
    """A pooled artifact whose entry now holds bytes of another size (its owner replaced
    it) is captured again by the next snapshot: kept under the key this time, since the
    pool's name is taken by other bytes."""
    pool = _pool(tmp_path / "pool")
    case = Case(tmp_path, [Dist("solo", "1.0")])
    case.world.env["PKGCKPT_ARTIFACT_POOL"] = str(pool)
    assert case.world.pkgckpt("snapshot", *case.flags).returncode == 0
    first = case.recorded()["solo"].artifact
    assert first is not None and first.pooled
    entry = pool / "sha256" / first.sha256
    entry.unlink()
    entry.write_bytes(b"garbage")
    again = case.world.pkgckpt("snapshot", *case.flags)
    assert again.returncode == 0, again.stderr
    second = case.recorded()["solo"].artifact
    assert second is not None and not second.pooled and second.sha256 == first.sha256
    kept = artifacts(case.world.store, case.world.key)
    assert kept == {second.file: second.size}
    stored = case.world.store / case.world.key / "artifacts" / second.file
    assert hashlib.sha256(stored.read_bytes()).hexdigest() == first.sha256
    assert entry.stat().st_size == len(b"garbage")  # the pool's name is not ours to fix


def test_a_pool_its_group_can_write_without_the_sticky_bit_is_not_used(tmp_path: Path) -> None:
    """`sha256/` at 0775: any member of its group could remove or replace entries, so
    the capture keeps its artifact under the key, and says why."""
    pool = _pool(tmp_path / "pool")
    (pool / "sha256").chmod(0o775)
    case = Case(tmp_path, [Dist("solo", "1.0")])
    case.world.env["PKGCKPT_ARTIFACT_POOL"] = str(pool)
    done = case.world.pkgckpt("snapshot", *case.flags)
    assert done.returncode == 0, done.stderr
    assert "writable by its group or others without the sticky bit" in done.stderr
    solo = case.recorded()["solo"].artifact
    assert solo is not None and not solo.pooled
    assert list((pool / "sha256").iterdir()) == []
