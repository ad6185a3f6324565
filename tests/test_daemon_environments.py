"""An environment is a directory, not a path: the real daemon over venvs rebuilt, moved
away, or hidden by a mount, and over a watcher whose read() fails.

In every case the manifest on the store ends holding every package installed and not
uninstalled, and `pkgckpt restore --dry-run --json` plans no removal the user did not make.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from daemon_kit import Daemon, World, eventually, pins, uv_install
from restore_kit import isolated
from wheelhouse import Dist, Venv, build_wheel, make_venv

from pkgckpt.manifest import Delta

__all__ = ["isolated"]  # fixtures

QUIET_MS = 100
WITHIN = 30.0
"""Seconds the test gives the daemon to checkpoint one install: its quiet window is 0.1 s,
the rest is room for a machine shared with other jobs (no speed is asserted here)."""

needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="mounting a tmpfs over a library needs root"
)


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("env-wheels")
    for dist in (Dist("alpha", "1.0"), Dist("delta", "1.0"), Dist("gamma", "1.0")):
        build_wheel(dist, out)
    build_wheel(Dist("image-pkg", "1.0"), out)
    return out


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World.make(tmp_path)


def baseline(world: World, *selectors: str) -> list[str]:
    """Take the image's baseline now; the flags that name it and the store."""
    out = world.tmp / "b.json"
    taken = world.pkgckpt("baseline", *selectors, "--output", str(out))
    assert taken.returncode == 0, taken.stderr
    return [*selectors, "--store", str(world.store), "--key", world.key, "--baseline", str(out)]


@contextmanager
def daemon(world: World, flags: list[str]) -> Iterator[Daemon]:
    d = world.daemon(*flags, "--quiet-ms", str(QUIET_MS)).start()
    try:
        yield d
    finally:
        d.close()


def delta(world: World, path: Path, *, user: bool = False) -> Delta | None:
    found = world.manifest()
    if found is None:
        return None
    return next(
        (d for d in found.body.environments if d.env.path == str(path) and d.env.user == user),
        None,
    )


def recorded(world: World, path: Path, want: set[str], *, user: bool = False) -> bool:
    """`want` (name==version) is recorded as added or changed, and nothing as removed."""
    d = delta(world, path, user=user)
    return d is not None and want <= set(pins([*d.added, *d.changed])) and not d.removed


def restore_removes_nothing(world: World, flags: list[str]) -> list[str]:
    """`restore --dry-run --json` plans no removal; the names it would install."""
    out = world.pkgckpt("restore", "--dry-run", "--json", *flags)
    assert out.returncode == 0, out.stderr
    plan = json.loads(out.stdout)["plan"]
    assert [e["remove"] for e in plan["environments"]] == [[] for _ in plan["environments"]]
    return sorted(s["name"] for e in plan["environments"] for s in e["install"])


def image_venv(world: World, wheels: Path) -> Venv:
    venv = make_venv(world.tmp / "env", with_pip=False)
    uv_install(venv.python, wheels, "image-pkg==1.0", env=world.env)
    return venv


def new_venv(prefix: Path, wheels: Path) -> Venv:
    """`python3 -m venv PREFIX` (with its pip), then a real pip install into it."""
    subprocess.run([sys.executable, "-m", "venv", str(prefix)], check=True, capture_output=True)
    venv = Venv(prefix)
    venv.install(wheels, "delta==1.0")
    return venv


def test_a_venv_rebuilt_in_place_records_no_removal_and_its_new_installs(
    world: World, wheels: Path
) -> None:
    """`rm -rf env && python3 -m venv env` under the daemon: nothing recorded as removed,
    the user's install in the old env stays, a pip install into the new one is recorded,
    and what making the venv seeds (pip, setuptools) is neither recorded nor in the
    history."""
    venv = image_venv(world, wheels)
    flags = baseline(world, "--env", str(venv.prefix))
    with daemon(world, flags) as d:
        uv_install(venv.python, wheels, "alpha==1.0", env=world.env)
        eventually(lambda: recorded(world, venv.prefix, {"alpha==1.0"}), WITHIN, "install")
        shutil.rmtree(venv.prefix)
        new_venv(venv.prefix, wheels)
        want = {"alpha==1.0", "delta==1.0"}
        eventually(lambda: recorded(world, venv.prefix, want), WITHIN, "install in the new env")
        assert d.stop() == 0
    assert recorded(world, venv.prefix, want)
    found = delta(world, venv.prefix)
    assert found is not None and set(pins([*found.added, *found.changed])) == want
    assert sorted(c.name for c in found.history) == ["alpha", "delta"], found.history
    assert "remove " not in d.output()
    # The user's install, not in the new env; the image's own is not the manifest's.
    assert restore_removes_nothing(world, flags) == ["alpha"]


def test_a_library_remade_on_a_reused_inode_number_records_no_removal(
    world: World, wheels: Path
) -> None:
    """`rm -rf site-packages && mkdir site-packages`: ext4 hands the freed inode number
    out again, so only the watcher's word that the directory went away tells the new one
    apart. What the new directory lacks is not recorded as removed."""
    venv = image_venv(world, wheels)
    flags = baseline(world, "--env", str(venv.prefix))
    # A quiet window longer than the rebuild: no scan sees the library missing in between.
    d = world.daemon(*flags, "--quiet-ms", "3000").start()
    try:
        uv_install(venv.python, wheels, "alpha==1.0", env=world.env)
        eventually(lambda: recorded(world, venv.prefix, {"alpha==1.0"}), WITHIN, "install")
        site = venv.site_packages
        was = site.stat()
        shutil.rmtree(site)
        site.mkdir()
        if (site.stat().st_dev, site.stat().st_ino) != (was.st_dev, was.st_ino):
            print("this file system did not reuse the inode number: a weaker test")
        uv_install(venv.python, wheels, "delta==1.0", env=world.env)
        want = {"alpha==1.0", "delta==1.0"}
        eventually(lambda: recorded(world, venv.prefix, want), WITHIN, "install in the new dir")
        assert d.stop() == 0
    finally:
        d.close()
    assert recorded(world, venv.prefix, want)
    assert "remove " not in d.output()
    assert restore_removes_nothing(world, flags) == ["alpha"]


def test_a_venv_moved_away_is_followed_by_its_path_without_sighup(
    world: World, wheels: Path
) -> None:
    """`mv env env-old && python3 -m venv env`: an install into the new env is checkpointed
    within the quiet window; one into the moved env is not attributed to the path."""
    venv = image_venv(world, wheels)
    flags = baseline(world, "--env", str(venv.prefix))
    with daemon(world, flags) as d:
        uv_install(venv.python, wheels, "alpha==1.0", env=world.env)
        eventually(lambda: recorded(world, venv.prefix, {"alpha==1.0"}), WITHIN, "install")
        old = venv.prefix.rename(venv.prefix.with_name("env-old"))
        new_venv(venv.prefix, wheels)
        want = {"alpha==1.0", "delta==1.0"}
        eventually(lambda: recorded(world, venv.prefix, want), WITHIN, "install in the new env")
        uv_install(Venv(old).python, wheels, "gamma==1.0", env=world.env)
        time.sleep(5 * QUIET_MS / 1000)
        assert d.stop() == 0
    found = delta(world, venv.prefix)
    assert found is not None and "gamma" not in {p.name for p in found.added}
    assert recorded(world, venv.prefix, want)
    restore_removes_nothing(world, flags)


def test_a_failed_inotify_read_neither_kills_the_daemon_nor_loses_the_install(
    world: World, wheels: Path
) -> None:
    """strace makes the daemon's next read() of its inotify fd fail with EIO: the daemon
    logs it, rescans, re-arms, and checkpoints that install and the next one."""
    venv = image_venv(world, wheels)
    flags = baseline(world, "--env", str(venv.prefix))
    with daemon(world, flags) as d:
        assert d.proc is not None
        strace = subprocess.Popen(
            ["strace", "-p", str(d.proc.pid), "-f", "-o", os.devnull, "-e", "trace=read",
             "-e", "inject=read:error=EIO:when=1", "-P", "anon_inode:inotify"],
            stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            assert strace.stderr is not None
            assert "attached" in strace.stderr.readline()
            uv_install(venv.python, wheels, "alpha==1.0", env=world.env)
            eventually(lambda: recorded(world, venv.prefix, {"alpha==1.0"}), WITHIN, "install")
            assert "reading inotify events failed (Input/output error)" in d.output()
        finally:
            strace.send_signal(signal.SIGTERM)  # detaches; the daemon runs on
            strace.wait()
        uv_install(venv.python, wheels, "delta==1.0", env=world.env)
        want = {"alpha==1.0", "delta==1.0"}
        eventually(lambda: recorded(world, venv.prefix, want), WITHIN, "the next install")
        assert d.stop() == 0
    restore_removes_nothing(world, flags)


def test_a_watcher_that_cannot_be_rearmed_neither_kills_the_daemon_nor_loses_installs(
    world: World, wheels: Path
) -> None:
    """strace fails the engine's poll() once (the watcher replaces its inotify instance)
    and the next two inotify_init1() calls: the first leaves every library on periodic
    rescans, the second raises out of the watcher. The daemon logs it, re-arms, and
    checkpoints the installs made meanwhile and after."""
    venv = image_venv(world, wheels)
    flags = baseline(world, "--env", str(venv.prefix))
    d = world.daemon(*flags, "--quiet-ms", str(QUIET_MS))
    d.start(extra_env={"PKGCKPT_RESCAN_INTERVAL": "1"})
    try:
        assert d.proc is not None
        strace = subprocess.Popen(
            ["strace", "-p", str(d.proc.pid), "-f", "-o", os.devnull,
             "-e", "trace=poll,ppoll,inotify_init1",
             "-e", "inject=poll:error=EIO:when=1", "-e", "inject=ppoll:error=EIO:when=1",
             "-e", "inject=inotify_init1:error=EIO:when=1..2"],
            stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            assert strace.stderr is not None
            assert "attached" in strace.stderr.readline()
            uv_install(venv.python, wheels, "alpha==1.0", env=world.env)
            eventually(lambda: "watcher error" in d.output(), WITHIN, "the watcher's error")
            eventually(lambda: recorded(world, venv.prefix, {"alpha==1.0"}), WITHIN, "install")
        finally:
            strace.send_signal(signal.SIGTERM)
            strace.wait()
        uv_install(venv.python, wheels, "delta==1.0", env=world.env)
        want = {"alpha==1.0", "delta==1.0"}
        eventually(lambda: recorded(world, venv.prefix, want), WITHIN, "the next install")
        assert d.stop() == 0
    finally:
        d.close()
    restore_removes_nothing(world, flags)


@contextmanager
def tmpfs_over(directory: Path) -> Iterator[None]:
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(directory)], check=True)
    try:
        yield
    finally:
        subprocess.run(["umount", str(directory)], check=True)


def fake_r_package(lib: Path, name: str, version: str) -> None:
    """An installed R package as the scanner reads it (its DESCRIPTION with a Built field)."""
    (lib / name).mkdir(parents=True)
    (lib / name / "DESCRIPTION").write_text(
        f"Package: {name}\nVersion: {version}\nTitle: T\n"
        "Built: R 4.2.2; ; 2024-01-01 00:00:00 UTC; unix\n"
    )


@needs_root
def test_a_tmpfs_over_a_one_package_r_library_records_no_removal(
    world: World, wheels: Path
) -> None:
    """A mount hides the library's only package: it stays recorded, before and after; once
    a scan has seen the mount, an install into it is checkpointed like any other."""
    venv = make_venv(world.tmp / "env", with_pip=False)
    lib = world.tmp / "Rlib"
    lib.mkdir()
    flags = baseline(world, "--env", str(venv.prefix), "--r-lib", str(lib))
    with daemon(world, flags) as d:
        fake_r_package(lib, "ckptGlue", "1.7.0")
        eventually(lambda: recorded(world, lib, {"ckptGlue==1.7.0"}), WITHIN, "install")
        with tmpfs_over(lib):
            snap = world.pkgckpt("snapshot", *flags)  # the daemon rescans everything now
            assert snap.returncode == 0, snap.stderr
            assert recorded(world, lib, {"ckptGlue==1.7.0"})
            restore_removes_nothing(world, flags)
            fake_r_package(lib, "ckptMore", "0.1.0")
            want = {"ckptGlue==1.7.0", "ckptMore==0.1.0"}
            eventually(lambda: recorded(world, lib, want), WITHIN, "install into the mount")
        assert d.stop() == 0
    assert recorded(world, lib, want)
    assert "remove " not in d.output()
    restore_removes_nothing(world, flags)


@needs_root
def test_a_tmpfs_over_a_one_package_user_site_records_no_removal(
    world: World, wheels: Path
) -> None:
    """The user site's only package, hidden by a mount: it stays recorded."""
    world.env["PYTHONUSERBASE"] = str(world.tmp / "userbase")
    prefix = world.tmp / "env"
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", "--system-site-packages", str(prefix)],
        check=True,
    )
    venv = Venv(prefix)
    where = "import site; print(site.getusersitepackages())"
    asked = subprocess.run(
        [venv.python, "-c", where], check=True, capture_output=True, text=True, env=world.env
    )
    user_site = Path(asked.stdout.strip())
    user_site.mkdir(parents=True)
    flags = baseline(world, "--env", str(venv.prefix))
    with daemon(world, flags) as d:
        subprocess.run(
            ["uv", "pip", "install", "--python", str(venv.python), "--target", str(user_site),
             "--no-index", "--find-links", str(wheels), "delta==1.0"],
            check=True, capture_output=True, env=world.env,
        )  # fmt: skip
        want = {"delta==1.0"}
        eventually(lambda: recorded(world, venv.prefix, want, user=True), WITHIN, "install")
        with tmpfs_over(user_site):
            snap = world.pkgckpt("snapshot", *flags)
            assert snap.returncode == 0, snap.stderr
            assert recorded(world, venv.prefix, want, user=True)
        assert d.stop() == 0
    assert recorded(world, venv.prefix, want, user=True)
    assert "remove " not in d.output()
    restore_removes_nothing(world, flags)


@needs_root
def test_an_egg_link_whose_project_mount_goes_away_stays_recorded(
    world: World, wheels: Path
) -> None:
    """`setup.py develop` links `my-pkg.egg-link` (hyphens kept) to a project on a mount;
    the mount goes away: the link cannot be read, which proves nothing, so my-pkg stays
    recorded (the link's whole name is uncertain, not `my`) and no removal is planned."""
    venv = image_venv(world, wheels)
    project = world.tmp / "proj"
    project.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "tmpfs", str(project)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        (project / "my_pkg.egg-info").mkdir()
        (project / "my_pkg.egg-info" / "PKG-INFO").write_text(
            "Metadata-Version: 2.1\nName: my-pkg\nVersion: 1.0\n\n"
        )
        flags = baseline(world, "--env", str(venv.prefix))
        with daemon(world, flags) as d:
            uv_install(venv.python, wheels, "alpha==1.0", env=world.env)
            (venv.site_packages / "my-pkg.egg-link").write_text(f"{project}\n.\n")
            want = {"alpha==1.0", "my-pkg==1.0"}
            eventually(lambda: recorded(world, venv.prefix, want), WITHIN, "the editable install")
            subprocess.run(["umount", str(project)], check=True)
            snap = world.pkgckpt("snapshot", *flags)  # the daemon rescans everything now
            assert snap.returncode == 0, snap.stderr
            assert recorded(world, venv.prefix, want)
            assert d.stop() == 0
        assert recorded(world, venv.prefix, want)
        assert "remove " not in d.output(), d.output()
        restore_removes_nothing(world, flags)
    finally:
        subprocess.run(["umount", str(project)], check=False, capture_output=True)


SLOW = [f"slow{i}" for i in range(16)]
"""Packages whose files a slowed `rm -rf` or uninstall takes seconds to delete."""


def slowed(*argv: str, delay_us: int) -> list[str]:
    """`argv` under strace, each unlinkat() delayed: a deletion on a slow NFS home."""
    if shutil.which("strace") is None:
        pytest.skip("no strace")
    return ["strace", "-f", "-qq", "-o", os.devnull, "-e", "trace=unlinkat",
            "-e", f"inject=unlinkat:delay_enter={delay_us}", *argv]  # fmt: skip


def test_an_environment_deleted_slowly_keeps_every_package_it_held(
    world: World, tmp_path: Path
) -> None:
    """`rm -rf env` that outlasts the maximum delay (a large env on a slow home): the scans
    the maximum delay forces while files are still going read a half-deleted library, and
    what it no longer holds is not recorded as uninstalled; the environment's record stays
    whole after the directory is gone."""
    wheels = tmp_path / "slow-wheels"
    for name in SLOW:
        build_wheel(Dist(name, "1.0"), wheels)
    venv = make_venv(world.tmp / "env", with_pip=False)
    flags = baseline(world, "--env", str(venv.prefix))
    want = {f"{name}==1.0" for name in SLOW}
    # Files go every 60 ms for some 6 s, well within the quiet window (2 s, room for a
    # loaded machine): only the maximum delay scans while they go.
    d = world.daemon(*flags, "--quiet-ms", "2000", "--max-delay-ms", "3000").start()
    try:
        uv_install(venv.python, wheels, *SLOW, env=world.env)
        eventually(lambda: recorded(world, venv.prefix, want), WITHIN, "the installs")
        subprocess.run(slowed("rm", "-rf", str(venv.prefix), delay_us=60_000), check=True)
        time.sleep(3)
        assert d.stop() == 0
    finally:
        d.close()
    assert "remove " not in d.output(), d.output()
    assert recorded(world, venv.prefix, want)


def test_an_uninstall_that_outlasts_the_maximum_delay_is_recorded_once_quiet(
    world: World, tmp_path: Path
) -> None:
    """An uninstall slower than the maximum delay is recorded all the same: the library is
    read again once it is quiet, and what is gone then is gone."""
    wheels = tmp_path / "slow-wheels"
    for name in SLOW:
        build_wheel(Dist(name, "1.0"), wheels)
    venv = make_venv(world.tmp / "env", with_pip=False)
    flags = baseline(world, "--env", str(venv.prefix))
    d = world.daemon(*flags, "--quiet-ms", "500", "--max-delay-ms", "1500").start()
    try:
        uv_install(venv.python, wheels, *SLOW, env=world.env)
        everything = {f"{name}==1.0" for name in SLOW}
        eventually(lambda: recorded(world, venv.prefix, everything), WITHIN, "the installs")
        uv = shutil.which("uv")
        assert uv is not None
        subprocess.run(
            slowed(uv, "pip", "uninstall", "--python", str(venv.python), *SLOW[1:],
                   delay_us=60_000),
            check=True, capture_output=True, env=world.env,
        )  # fmt: skip

        def left() -> bool:
            found = delta(world, venv.prefix)
            return found is not None and pins(found.added) == ["slow0==1.0"]

        eventually(left, WITHIN, "the uninstalls")
        assert d.stop() == 0
    finally:
        d.close()


@pytest.fixture
def ext4_world() -> Iterator[World]:
    """A world under /var/tmp, not a tmpfs /tmp: a file system that hands freed inode
    numbers out again at once, as ext4 does."""
    tmp = Path(tempfile.mkdtemp(prefix="pkgckpt-env-", dir="/var/tmp"))
    try:
        yield World.make(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def test_installs_by_uv_are_recorded_without_looking_for_environments_again(
    world: World, wheels: Path
) -> None:
    """uv opens `<prefix>/.lock` for writing at every install, and makes it in a venv
    without one through a temporary `.tmpXXXXXX` renamed into place: events in the
    prefix, which the daemon watches for a venv remade at its path. That lock alone is no
    new environment, and the installs are recorded without a discovery of every
    environment (which reads each interpreter's probe again, here from the answer kept in
    the runtime directory: the file the trace counts)."""
    if shutil.which("strace") is None:
        pytest.skip("needs strace")
    venv = image_venv(world, wheels)
    flags = baseline(world, "--env", str(venv.prefix))
    trace = world.tmp / "trace"
    argv = [sys.executable, "-m", "pkgckpt", "daemon", *flags, "--quiet-ms", str(QUIET_MS)]
    with (world.tmp / "daemon.log").open("wb") as log:
        traced = subprocess.Popen(
            ["strace", "-f", "-qq", "-e", "trace=openat", "-o", str(trace), *argv],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=world.env,
        )  # fmt: skip
    try:
        status = world.status_file
        eventually(lambda: status.exists() and '"watching"' in status.read_text(), 60, "ready")

        def probes() -> int:
            return trace.read_text().count("/python-env-")

        started = probes()
        assert started, "the start reads the interpreter's kept answer"
        # The lock made as uv makes it, slowed down so that the temporary file comes in a
        # batch of its own, as it does when the daemon is busy: then its name is seen.
        (venv.prefix / ".lock").unlink()
        made = venv.prefix / ".tmpQ3xZ9a"
        made.touch()
        time.sleep(0.5)
        made.rename(venv.prefix / ".lock")
        uv_install(venv.python, wheels, "alpha==1.0", env=world.env)
        eventually(lambda: recorded(world, venv.prefix, {"alpha==1.0"}), WITHIN, "alpha")
        uv_install(venv.python, wheels, "delta==1.0", env=world.env)
        want = {"alpha==1.0", "delta==1.0"}
        eventually(lambda: recorded(world, venv.prefix, want), WITHIN, "delta")
        assert (venv.prefix / ".lock").exists(), "uv took its lock in the prefix"
        assert probes() == started
        os.kill(json.loads(status.read_text())["pid"], signal.SIGTERM)  # the daemon
        assert traced.wait(30) == 0
    finally:
        if traced.poll() is None:
            traced.kill()  # strace, and with it the daemon it traces
            traced.wait()


def test_a_venv_rebuilt_on_another_python_records_its_new_installs(
    ext4_world: World, wheels: Path
) -> None:
    """`python3.X -m venv --clear env` with another Python minor: the same environment
    at a new site-packages (`lib/python3.X`, often on the inode numbers the old one freed).
    Installs into it are recorded without a restart, and the old one's stay."""
    from test_rebase import _other_python

    other = _other_python()
    if other is None:
        pytest.skip("needs a second CPython minor version under ~/.pyenv/versions")
    world = ext4_world
    venv = image_venv(world, wheels)
    flags = baseline(world, "--env", str(venv.prefix))
    with daemon(world, flags) as d:
        uv_install(venv.python, wheels, "alpha==1.0", env=world.env)
        eventually(lambda: recorded(world, venv.prefix, {"alpha==1.0"}), WITHIN, "install")
        remake = [other, "-m", "venv", "--clear", "--without-pip", str(venv.prefix)]
        subprocess.run(remake, check=True)
        time.sleep(1)  # found and read before anything is installed into it
        uv_install(venv.python, wheels, "delta==1.0", env=world.env)
        want = {"alpha==1.0", "delta==1.0"}
        eventually(lambda: recorded(world, venv.prefix, want), WITHIN, "install in the new env")
        assert d.stop() == 0
    assert "remove " not in d.output()
    found = delta(world, venv.prefix)
    assert found is not None and found.env.interpreter is not None
    assert Path(other).parent.parent.name.startswith(found.env.interpreter)
