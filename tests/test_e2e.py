"""End to end: an image venv, the daemon, a user with real pip, SIGTERM, a fresh venv,
`pkgckpt restore` -> the same `pip freeze`, working console script and C extension."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest
from daemon_kit import World, eventually, pins
from wheelhouse import Dist, Venv, add_build_backend, build_c_sdist, build_wheel, make_venv

pytestmark = pytest.mark.slow

IMAGE = ["imgbase==1.0", "imgold==2.0", "imgdrop==1.0"]


@pytest.fixture(scope="session")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Image packages at two versions, an app with a dependency and a console script, a C
    sdist, and setuptools/wheel so that the sdist builds with --no-index."""
    out = tmp_path_factory.mktemp("e2e-wheels")
    for dist in [
        Dist("imgbase", "1.0"),
        Dist("imgbase", "1.1"),
        Dist("imgold", "1.0"),
        Dist("imgold", "2.0"),
        Dist("imgdrop", "1.0"),
        Dist("app", "1.0", requires=["libdep>=1"], scripts={"app-cli": "app:main"}),
        Dist("libdep", "1.0"),
    ]:
        build_wheel(dist, out)
    build_c_sdist("fastmath", "1.0", out)
    add_build_backend(out)
    return out


def image(world: World, wheelhouse: Path) -> Path:
    """A fresh venv at the same path with the image's packages: a new container."""
    venv = make_venv(world.tmp / "venv")
    venv.install(wheelhouse, *IMAGE)
    return venv.prefix


@pytest.mark.parametrize("installer", ["pip", "uv"])
def test_user_packages_survive_a_container_restart(
    tmp_path: Path, wheelhouse: Path, installer: str
) -> None:
    """After a restart and `pkgckpt restore`, `pip freeze` is identical and everything works.

    Installs (with a dependency, a console script, a compiled sdist), an upgrade, a
    downgrade and an image package's uninstall, then SIGTERM at once. After the restore
    the script and the extension work, and a second restore does nothing."""
    world = World.make(tmp_path)
    prefix = image(world, wheelhouse)
    user = Venv(prefix)
    baseline = tmp_path / "baseline.json"
    flags = [*world.flags(prefix), "--baseline", str(baseline)]
    made = world.pkgckpt("baseline", "--env", str(prefix), "--output", str(baseline))
    assert made.returncode == 0, made.stderr

    daemon = world.daemon(*flags, "--quiet-ms", "200").start()
    try:
        user.install(wheelhouse, "app")
        user.install(wheelhouse, "fastmath", extra=["--no-cache-dir"])
        user.install(wheelhouse, "imgbase==1.1")
        user.uninstall("imgdrop")
        user.install(wheelhouse, "imgold==1.0")
        assert daemon.stop() == 0, daemon.output()  # right after the last install
    finally:
        daemon.close()
    before = user.freeze()
    assert "imgold==1.0" in before and "fastmath==1.0" in before and "imgdrop==1.0" not in before

    # A new container: fresh venv, empty runtime directory, same store.
    shutil.rmtree(world.runtime, ignore_errors=True)
    image(world, wheelhouse)
    assert user.freeze() != before
    restore = [
        "restore", *flags, "--installer", installer, "--no-index", "--find-links", str(wheelhouse)
    ]  # fmt: skip
    first = world.pkgckpt(*restore, timeout=600)
    assert first.returncode == 0, first.stdout + first.stderr
    assert user.freeze() == before
    script = subprocess.run([str(prefix / "bin" / "app-cli")], capture_output=True, text=True)
    assert script.stdout.strip() == "app 1.0", script.stderr
    ext = subprocess.run(
        [str(user.python), "-c", "import fastmath; print(fastmath.add(40, 2))"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert ext.stdout.strip() == "42", ext.stderr

    start = time.monotonic()
    second = world.pkgckpt(*restore)
    assert second.returncode == 0, second.stderr
    assert second.stdout.startswith("Nothing to restore"), second.stdout
    assert user.freeze() == before
    print(f"no-op restore: {time.monotonic() - start:.2f} s")


def test_a_venv_that_outlives_its_container_keeps_its_image_without_a_baseline_file(
    tmp_path: Path, wheelhouse: Path
) -> None:
    """README's first command over a venv that persists (a home volume), no baseline file:
    each container's restore takes its baseline with the user's packages in it. That is
    still the recorded image: no restore says "rebased onto a new image", and an
    uninstall of the user's package takes it out of the record instead of recording the
    removal of an image package the image never shipped."""
    world = World.make(tmp_path)
    prefix = image(world, wheelhouse)
    user = Venv(prefix)
    flags = world.flags(prefix)

    def container() -> None:
        """A new container over the same venv: the runtime directory starts empty, and
        restore takes the baseline."""
        shutil.rmtree(world.runtime, ignore_errors=True)
        done = world.pkgckpt("restore", *flags, "--no-index", "--find-links", str(wheelhouse))
        assert done.returncode == 0, done.stdout + done.stderr
        assert "nothing to restore" in done.stdout.lower(), done.stdout
        assert "image" not in done.stdout, done.stdout
        status = world.pkgckpt("status", *flags)
        assert "image" not in status.stdout, status.stdout

    def watched(*steps: tuple[str, str]) -> None:
        daemon = world.daemon(*flags, "--quiet-ms", "200").start()
        try:
            for verb, what in steps:
                user.install(wheelhouse, what) if verb == "install" else user.uninstall(what)
            assert daemon.stop() == 0, daemon.output()
        finally:
            daemon.close()

    container()
    watched(("install", "app"), ("install", "imgbase==1.1"), ("uninstall", "imgdrop"))
    recorded = world.delta()
    assert pins(recorded.added) == ["app==1.0", "libdep==1.0"]
    container()
    watched(("uninstall", "app"))
    after = world.delta()
    assert pins(after.added) == ["libdep==1.0"], after
    assert pins(after.changed) == ["imgbase==1.1"] and after.changed[0].replaced == "1.0"
    assert pins(after.removed) == ["imgdrop==1.0"]
    assert after.image == recorded.image
    container()
    # `forget` leaves libdep installed: the next container's baseline lists it, and that
    # is still the recorded image. Read as a new one, app was "superseded" by an image
    # that ships it, and went unrestored once uninstalled where no daemon saw it.
    watched(("install", "app"))
    forgot = world.pkgckpt("forget", "libdep", *flags)
    assert forgot.returncode == 0, forgot.stdout + forgot.stderr
    container()
    user.uninstall("app")
    shutil.rmtree(world.runtime, ignore_errors=True)
    done = world.pkgckpt("restore", *flags, "--no-index", "--find-links", str(wheelhouse))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "image" not in done.stdout, done.stdout
    assert "app==1.0" in user.freeze()


def outlived(tmp_path: Path, wheelhouse: Path) -> tuple[World, Venv, list[str]]:
    """A venv on a home volume, no baseline file, where the daemon recorded app (and its
    libdep); then a new container over it, whose restore takes the baseline with both."""
    world = World.make(tmp_path)
    user = Venv(image(world, wheelhouse))
    flags = world.flags(user.prefix)
    daemon = world.daemon(*flags, "--quiet-ms", "200").start()
    try:
        user.install(wheelhouse, "app")
        assert daemon.stop() == 0, daemon.output()
    finally:
        daemon.close()
    shutil.rmtree(world.runtime)  # a new container over the same venv
    done = world.pkgckpt("restore", *flags, "--no-index", "--find-links", str(wheelhouse))
    assert done.returncode == 0, done.stdout + done.stderr
    return world, user, flags


def test_an_uninstall_in_a_venv_that_outlived_its_container_is_no_image_change_after_it(
    tmp_path: Path, wheelhouse: Path
) -> None:
    """A venv on a home volume, no baseline file: this container's restore takes the
    baseline with the user's app and libdep in it, then the daemon records the uninstall
    of app. In the same container, `status` shows no new image and `snapshot` without a
    daemon records nothing. Both read that baseline against the record that no longer
    names app: app was the image's, the image a new one, app's absence the removal of an
    image package, which snapshot recorded (a restore onto an image shipping app would
    remove it)."""
    world, user, flags = outlived(tmp_path, wheelhouse)
    daemon = world.daemon(*flags, "--quiet-ms", "200").start()
    try:
        user.uninstall("app")
        assert daemon.stop() == 0, daemon.output()
    finally:
        daemon.close()
    recorded = world.manifest()
    assert recorded is not None and pins(recorded.body.environments[0].added) == ["libdep==1.0"]
    status = world.pkgckpt("status", *flags)
    assert status.returncode == 0, status.stdout + status.stderr
    assert "image" not in status.stdout and "pending" not in status.stdout, status.stdout
    snap = world.pkgckpt("snapshot", *flags)
    assert snap.returncode == 0, snap.stdout + snap.stderr
    after = world.manifest()
    assert after is not None and after.body == recorded.body, snap.stdout


def test_an_image_the_baseline_could_not_keep_is_kept_after_a_later_scan(
    tmp_path: Path, wheelhouse: Path
) -> None:
    """As above, the venv outlived its container; its baseline file cannot be replaced when
    the daemon tells the image apart (made immutable here, as a full runtime directory
    would refuse the write). The daemon says so, and keeps the image at its next scan once
    the file can be written. It tried once only, and `status` and `snapshot` misread the
    record for the rest of the container's life."""
    if shutil.which("chattr") is None:
        pytest.skip("chattr(1) is not installed (e2fsprogs)")
    world, user, flags = outlived(tmp_path, wheelhouse)
    file = world.runtime / "baseline.json"
    if subprocess.run(["chattr", "+i", str(file)], capture_output=True).returncode != 0:
        pytest.skip(f"no immutable files on the file system of {file}")
    daemon = world.daemon(*flags, "--quiet-ms", "200").start()
    try:
        eventually(lambda: "cannot keep what the image ships" in daemon.output(), 30)
        assert '"image"' not in file.read_text()
        subprocess.run(["chattr", "-i", str(file)], check=True)
        user.install(wheelhouse, "imgbase==1.1")
        eventually(lambda: '"image"' in file.read_text(), 30, "the image kept")
        assert daemon.stop() == 0, daemon.output()
    finally:
        subprocess.run(["chattr", "-i", str(file)], capture_output=True)
        daemon.close()
