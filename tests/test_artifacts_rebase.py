"""The artifact cache on a new image, most with another Python at the same prefix: pure
wheels install from their artifacts, a compiled one for the old ABI is not used (the
report says so) and its package is built from its sdist, then captured again for the
new Python; a planned artifact's own METADATA is checked against the image; a daemon on
a new image captures a package once."""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from artifact_kit import artifacts, cache_on, make_wheelhouse
from daemon_kit import World, eventually
from test_rebase import Scenario, _other_python, _retag
from wheelhouse import Dist, build_wheel, make_venv

from pkgckpt.artifacts import ArtifactRefused, Job, Uncapturable, capture, missing, read
from pkgckpt.config import Config
from pkgckpt.manifest import Artifact, Body, Delta, Environment, Package
from pkgckpt.store import Store, init_store

pytestmark = pytest.mark.slow


def _captured_on_this_python(tmp_path: Path) -> tuple[str, World, Path, Scenario]:
    """An image with imgpkg 1.0 on this Python, the user's app and fastmath (a cp3X
    build) installed and snapshotted with their artifacts: another Python's path (else
    the test is skipped), the world, the wheelhouse and the scenario."""
    other = _other_python()
    if other is None:
        pytest.skip("needs a second CPython minor version under ~/.pyenv/versions")
    world = cache_on(World.make(tmp_path))
    wheels = make_wheelhouse(tmp_path / "wheels")
    build_wheel(Dist("imgpkg", "1.0"), wheels)
    s = Scenario(world, wheels, tmp_path / "venv")
    b1 = s.image(sys.executable, ["imgpkg==1.0"], "b1.json")
    s.user_changes(b1, ["app", "fastmath"], [])
    snap = world.pkgckpt("snapshot", *s.flags(b1), timeout=300)
    assert snap.returncode == 0, snap.stdout + snap.stderr
    return other, world, wheels, s


def test_on_a_new_python_fitting_artifacts_are_used_and_the_others_are_said(
    tmp_path: Path,
) -> None:
    """Captured under this Python, restored after the image moved the prefix to another
    minor: app and libdep come from their artifacts (their wheels are gone), fastmath's
    cp3X artifact does not fit, the report names its tags, and fastmath is rebuilt from
    its sdist for the new interpreter."""
    other, world, wheels, s = _captured_on_this_python(tmp_path)
    captured = artifacts(world.store, world.key)
    assert len(captured) == 3, captured
    for wheel in (*wheels.glob("app-*.whl"), *wheels.glob("libdep-*.whl")):
        wheel.unlink()
    b2 = s.image(other, ["imgpkg==1.0"], "b2.json")
    done = s.restore(b2)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "fastmath 1.0: its artifact fastmath-1.0-cp" in done.stdout, done.stdout
    assert "do not fit" in done.stdout
    want = {"app": "1.0", "libdep": "1.0", "fastmath": "1.0", "imgpkg": "1.0"}
    assert s.installed() == want
    ext = subprocess.run(
        [str(s.python), "-c", "import fastmath, sys; print(fastmath.add(40, 2))"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert ext.stdout.strip() == "42", ext.stderr
    script = subprocess.run([str(s.prefix / "bin" / "app-cli")], capture_output=True, text=True)
    assert script.stdout.strip() == "app 1.0", script.stderr
    shutil.rmtree(s.prefix, ignore_errors=True)


def test_an_artifact_whose_requirement_the_new_image_contradicts_is_held_back(
    tmp_path: Path,
) -> None:
    """userx requires imgbase<2; the new image (another Python) ships imgbase 2.0, and
    restore has the artifacts alone (`--no-index`, no find-links): the check reads
    userx's METADATA from its verified artifact and holds it back, exit 3, nothing of it
    installed, `pip check` clean. It read nothing there, installed the artifact with
    `--no-deps`, failed to resolve and left userx in place over imgbase 2.0."""
    other = _other_python()
    if other is None:
        pytest.skip("needs a second CPython minor version under ~/.pyenv/versions")
    world = cache_on(World.make(tmp_path))
    wheels = tmp_path / "wheels"
    for dist in (
        Dist("imgbase", "1.0"),
        Dist("imgbase", "2.0"),
        Dist("userx", "1.0", requires=["imgbase<2"]),
        Dist("usery", "1.0", requires=["imgbase"]),
    ):
        build_wheel(dist, wheels)
    s = Scenario(world, wheels, tmp_path / "venv")
    b1 = s.image(sys.executable, ["imgbase==1.0"], "b1.json")
    s.user_changes(b1, ["userx==1.0", "usery==1.0"], [])
    snap = world.pkgckpt("snapshot", *s.flags(b1), timeout=300)
    assert snap.returncode == 0, snap.stdout + snap.stderr
    assert len(artifacts(world.store, world.key)) == 2
    b2 = s.image(other, ["imgbase==2.0"], "b2.json")
    plan = world.pkgckpt("restore", *s.flags(b2), "--no-index", "--dry-run")
    held = "userx 1.0 held back: requires imgbase<2, and imgbase 2.0 (image) stays"
    assert held in plan.stdout, plan.stdout + plan.stderr
    done = world.pkgckpt("restore", *s.flags(b2), "--no-index", timeout=300)
    assert done.returncode == 3, done.stdout + done.stderr
    assert held in done.stdout and "failed 0" in done.stdout, done.stdout
    assert s.installed() == {"imgbase": "2.0", "usery": "1.0"}
    assert s.check().returncode == 0, s.check().stdout + s.check().stderr


def test_a_rebase_reads_an_artifact_only_whole_and_as_recorded(tmp_path: Path) -> None:
    """`artifacts.read` gives the bytes the manifest's sha256 names; a tampered or
    truncated file, or one over the bound, is refused (the rebase then reads nothing
    from it)."""
    init_store(tmp_path / "store")
    store = Store(tmp_path / "store", "k")
    config = Config(store=tmp_path / "store", key="k")
    wheel = build_wheel(Dist("userx", "1.0", requires=["imgbase<2"]), tmp_path / "w")
    data = wheel.read_bytes()
    fd = os.open(wheel, os.O_RDONLY)
    try:
        store.put_artifact(wheel.name, fd, hashlib.sha256(data).hexdigest())
    finally:
        os.close(fd)
    good = Artifact(file=wheel.name, sha256=hashlib.sha256(data).hexdigest(), size=len(data))
    package = Package(name="userx", version="1.0", artifact=good)
    assert read(store, config, package, len(data)) == data
    with pytest.raises(ArtifactRefused, match="over"):
        read(store, config, package, len(data) - 1)
    planted = Artifact(file=wheel.name, sha256="0" * 64, size=len(data))
    with pytest.raises(ArtifactRefused, match="tampered"):
        read(store, config, Package(name="userx", version="1.0", artifact=planted), len(data))
    longer = Artifact(file=wheel.name, sha256=good.sha256, size=len(data) + 1)
    with pytest.raises(ArtifactRefused, match="tampered"):
        read(store, config, Package(name="userx", version="1.0", artifact=longer), 1 << 20)


def test_what_the_new_python_rebuilt_is_captured_again_for_it(tmp_path: Path) -> None:
    """fastmath's artifact is for the old ABI; once restore rebuilt it for the new Python
    (a new image: imgpkg 2.0), the next `snapshot` captures that build, and the next pod
    on the image restores everything from artifacts alone (`--no-index`). The record
    kept the old ABI's artifact, which never fits again, so every later offline restore
    failed fastmath."""
    other, world, wheels, s = _captured_on_this_python(tmp_path)
    build_wheel(Dist("imgpkg", "2.0"), wheels)
    b2 = s.image(other, ["imgpkg==2.0"], "b2.json")
    done = s.restore(b2)
    assert done.returncode == 0, done.stdout + done.stderr
    snap = world.pkgckpt("snapshot", *s.flags(b2), timeout=300)
    assert snap.returncode == 0, snap.stdout + snap.stderr
    abi = subprocess.run(
        [other, "-c", "import sys; print(f'cp{sys.version_info[0]}{sys.version_info[1]}')"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    files = {p.name: p.artifact.file for p in world.delta().added if p.artifact}
    assert f"-{abi}-{abi}-" in files["fastmath"], files
    b2 = s.image(other, ["imgpkg==2.0"], "b2.json")
    again = world.pkgckpt("restore", *s.flags(b2), "--no-index", timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    assert s.installed() == {"app": "1.0", "libdep": "1.0", "fastmath": "1.0", "imgpkg": "2.0"}
    ext = subprocess.run(
        [str(s.python), "-c", "import fastmath; print(fastmath.add(40, 2))"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert ext.stdout.strip() == "42", ext.stderr


def test_a_daemon_on_a_new_image_captures_a_package_once(tmp_path: Path) -> None:
    """A record relative to the old image, its package not captured there (the cache was
    off): the daemon on the new image captures it once, records it, and goes idle. It
    attached the artifact where the record of another image does not read it, found the
    package uncaptured again after each commit and captured it over and over, busy."""
    world = World.make(tmp_path)
    wheels = tmp_path / "wheels"
    for dist in (Dist("imgpkg", "1.0"), Dist("imgpkg", "2.0"), Dist("userpkg", "1.0")):
        build_wheel(dist, wheels)
    s = Scenario(world, wheels, tmp_path / "venv")
    b1 = s.image(sys.executable, ["imgpkg==1.0"], "b1.json")
    s.user_changes(b1, ["userpkg==1.0"], [])
    b2 = s.image(sys.executable, ["imgpkg==2.0"], "b2.json")
    assert s.restore(b2).returncode == 0
    cache_on(world)
    daemon = world.daemon(*s.flags(b2), "--quiet-ms", "100").start()
    try:
        eventually(lambda: "captured 1 artifact" in daemon.output(), what="the capture")
        time.sleep(2)
        assert daemon.stop() == 0, daemon.output()
    finally:
        daemon.close()
    assert daemon.output().count("capturing 1 package") == 1, daemon.output()
    (userpkg,) = world.delta().added
    assert userpkg.artifact is not None and userpkg.artifact.file.startswith("userpkg-1.0-")


def test_a_build_in_place_that_does_not_fit_either_is_not_captured_again(
    tmp_path: Path,
) -> None:
    """A recorded artifact that does not fit is a capture job; when the build in place
    does not fit either (a wheel forced onto another ABI), the capture is refused with
    that reason instead of replacing one misfit with another after every commit."""
    wheels = tmp_path / "wheels"
    build_wheel(Dist("forced", "1.0"), wheels)
    venv = make_venv(tmp_path / "venv", with_pip=False)
    uv = ["uv", "pip", "install", "--python", str(venv.python), "--no-index"]
    subprocess.run([*uv, "--find-links", str(wheels), "forced"], check=True, capture_output=True)
    wheel_file = venv.site_packages / "forced-1.0.dist-info" / "WHEEL"
    tag = "cp27-cp27mu-linux_x86_64"
    wheel_file.write_text(wheel_file.read_text().replace("py3-none-any", tag))
    # As installed from such a wheel: RECORD holds the hash of that WHEEL.
    record = wheel_file.with_name("RECORD")
    digest = base64.urlsafe_b64encode(hashlib.sha256(wheel_file.read_bytes()).digest())
    row = f"forced-1.0.dist-info/WHEEL,sha256={digest.rstrip(b'=').decode()},"
    record.write_text(
        "".join(
            f"{row}{wheel_file.stat().st_size}\n" if line.startswith(row.split(",")[0]) else line
            for line in record.read_text().splitlines(keepends=True)
        )
    )
    env = Environment(kind="python", path=str(venv.prefix), interpreter="3.11.7", abi="cp311")
    old = Artifact(file=f"forced-1.0-{tag}.whl", sha256="0" * 64, size=1)
    recorded = Package(name="forced", version="1.0", artifact=old)
    body = Body(environments=(Delta(env=env, added=(recorded,)),))
    (job,) = missing(body, [(env, [venv.site_packages])])
    init_store(tmp_path / "store")
    config = Config(store=tmp_path / "store", key="k")
    with pytest.raises(Uncapturable, match="nor does the build in place"):
        capture(Store(tmp_path / "store", "k"), config, job)
    fitting = Package(name="forced", version="1.0", artifact=Artifact(
        file="forced-1.0-py3-none-any.whl", sha256="0" * 64, size=1))  # fmt: skip
    fine = Body(environments=(Delta(env=env, added=(fitting,)),))
    assert missing(fine, [(env, [venv.site_packages])]) == []


def test_a_lost_artifact_is_captured_again_where_the_interpreter_is_not_known(
    tmp_path: Path,
) -> None:
    """The recorded artifact is gone (`artifacts.session.lost`) from an environment whose
    interpreter was not recorded: the build in place is captured as at the first time,
    not refused as if the recorded artifact had not fit."""
    wheels = tmp_path / "wheels"
    build_wheel(Dist("plain", "1.0"), wheels)
    venv = make_venv(tmp_path / "venv", with_pip=False)
    uv = ["uv", "pip", "install", "--python", str(venv.python), "--no-index"]
    subprocess.run([*uv, "--find-links", str(wheels), "plain"], check=True, capture_output=True)
    env = Environment(kind="python", path=str(venv.prefix))
    gone = Artifact(file="plain-1.0-py3-none-any.whl", sha256="0" * 64, size=1)
    job = Job(env=env, roots=(venv.site_packages,), package=Package(
        name="plain", version="1.0", artifact=gone))  # fmt: skip
    init_store(tmp_path / "store")
    config = Config(store=tmp_path / "store", key="k")
    again = capture(Store(tmp_path / "store", "k"), config, job)
    assert again.file == "plain-1.0-py3-none-any.whl" and again.size > 1


def test_what_requires_a_package_held_back_for_the_new_python_is_held_back_too(
    tmp_path: Path,
) -> None:
    """abionly has a wheel for the old ABI only; needsabi (pure) requires it. Restored
    from artifacts alone on the new Python, abionly is held back, and so is needsabi,
    naming it, with `--on-conflict user` too: nothing is installed that `pip check` finds
    broken. needsabi's artifact went in with `--no-deps`, its dependency could not
    follow, and it stayed in place broken, reported failed at every restore."""
    other = _other_python()
    if other is None:
        pytest.skip("needs a second CPython minor version under ~/.pyenv/versions")
    world = cache_on(World.make(tmp_path))
    wheels = tmp_path / "wheels"
    for dist in (
        Dist("imgpkg", "1.0"),
        Dist("abionly", "1.0"),
        Dist("needsabi", "1.0", requires=["abionly>=1.0"]),
    ):
        build_wheel(dist, wheels)
    mine = f"cp{sys.version_info[0]}{sys.version_info[1]}"
    _retag(wheels / "abionly-1.0-py3-none-any.whl", f"{mine}-{mine}-linux_x86_64")
    s = Scenario(world, wheels, tmp_path / "venv")
    b1 = s.image(sys.executable, ["imgpkg==1.0"], "b1.json")
    s.user_changes(b1, ["needsabi==1.0"], [])
    snap = world.pkgckpt("snapshot", *s.flags(b1), timeout=300)
    assert snap.returncode == 0, snap.stdout + snap.stderr
    b2 = s.image(other, ["imgpkg==1.0"], "b2.json")
    done = world.pkgckpt("restore", *s.flags(b2), "--no-index", timeout=300)
    assert done.returncode == 3, done.stdout + done.stderr
    assert "abionly 1.0 held back: no distribution of abionly 1.0" in done.stdout, done.stdout
    held = "needsabi 1.0 held back: requires abionly>=1.0, and abionly 1.0 is held back"
    assert held in done.stdout and "failed to install" not in done.stdout, done.stdout
    assert s.installed() == {"imgpkg": "1.0"}
    assert s.check().returncode == 0
    forced = world.pkgckpt(
        "restore", *s.flags(b2), "--no-index", "--on-conflict", "user", timeout=300
    )
    assert forced.returncode == 3 and held in forced.stdout, forced.stdout + forced.stderr
    assert s.installed() == {"imgpkg": "1.0"}, "it could not work: not forced"
