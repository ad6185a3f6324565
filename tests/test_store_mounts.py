"""The store's truth with real mounts, a real daemon and real installs (root only).

A store that arrives late (an NFS mount, an autofs or bind mount not there yet), and a
key directory deleted or rolled back to an older copy while the daemon runs: in each,
the manifest ends holding every package ever installed and not uninstalled, and records
no removal the user did not make (restore removes only what is recorded as removed).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from daemon_kit import Daemon, World, eventually, pins, uv_install
from wheelhouse import Dist, Venv, build_wheel, make_venv

from pkgckpt.config import Config
from pkgckpt.inventory import targets
from pkgckpt.manifest import Body, Delta, Package
from pkgckpt.store import Store

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for mount --bind"),
]

WHEELS = [Dist("alpha", "1.0"), Dist("beta", "1.0"), Dist("gamma", "1.0"), Dist("image-pkg", "1.0")]


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("mount-wheels")
    for dist in WHEELS:
        build_wheel(dist, out)
    return out


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World.make(tmp_path)


@pytest.fixture
def venv(world: World, wheels: Path) -> Venv:
    """A venv whose image ships image-pkg, and the baseline taken of it."""
    return world.image_venv(wheels, "image-pkg==1.0")


@pytest.fixture
def late(world: World) -> Iterator[Path]:
    """The real store, away from the configured path: `world.store` is an empty mount point
    until the test mounts the real store on it."""
    real = world.tmp / "real-store"
    world.store.rename(real)
    world.store.mkdir(0o700)
    yield real
    subprocess.run(["umount", "-l", str(world.store)], check=False, capture_output=True)


def mount_bind(source: Path, target: Path) -> None:
    subprocess.run(["mount", "--bind", str(source), str(target)], check=True)


def record(world: World, venv: Venv, store: Path, *specs: str) -> None:
    """Put a manifest recording `specs` for `venv` on `store` (an earlier container's)."""
    env = next(t.env for t in targets(Config(env=(venv.prefix,))) if not t.env.user)
    added = tuple(Package(name=n, version=v) for n, v in (s.split("==") for s in specs))
    assert Store(store, world.key).commit(Body(environments=(Delta(env=env, added=added),)))


def recorded(world: World) -> tuple[list[str], list[str]] | None:
    """(added or changed, removed) of the venv on the store, or None before a manifest."""
    found = Store(world.store, world.key).read()
    if found is None:
        return None
    (delta,) = [d for d in found.body.environments if not d.env.user]
    return pins([*delta.added, *delta.changed]), pins(delta.removed)


def added(world: World, prefix: Path) -> list[list[str]]:
    """What the store records as added in the environment at `prefix` (one list per delta
    of it: none before it has one)."""
    found = Store(world.store, world.key).read()
    deltas = found.body.environments if found is not None else ()
    return [pins(d.added) for d in deltas if d.env.path == str(prefix)]


def holds(world: World, *want: str) -> bool:
    return recorded(world) == (sorted(want), [])


def installed(venv: Venv) -> set[str]:
    return {p.name.split("-")[0] for p in venv.site_packages.glob("*.dist-info")}


def daemon(world: World, venv: Venv) -> Daemon:
    flags = [*world.flags(venv.prefix), "--baseline", str(world.tmp / "b.json")]
    return world.daemon(*flags, "--quiet-ms", "100").start()


def test_restore_before_the_store_is_mounted_fails_then_restores_after(
    world: World, venv: Venv, wheels: Path, late: Path
) -> None:
    """Before the mount: exit 1 'not available (not mounted?)', nothing installed; after
    it: the recorded packages are installed and no image package is removed."""
    record(world, venv, late, "alpha==1.0", "beta==1.0")
    args = [
        "restore", *world.flags(venv.prefix), "--installer", "uv",
        "--no-index", "--find-links", str(wheels),
    ]  # fmt: skip
    early = world.pkgckpt(*args)
    assert early.returncode == 1, early.stdout + early.stderr
    assert f"store {world.store} is not available (not mounted?)" in early.stderr
    assert installed(venv) == {"image_pkg"}
    assert list(world.store.iterdir()) == [], "something was written into the mount point"
    mount_bind(late, world.store)
    done = world.pkgckpt(*args, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert installed(venv) == {"alpha", "beta", "image_pkg"}
    assert holds(world, "alpha==1.0", "beta==1.0")


def test_daemon_started_before_the_store_is_mounted_merges_it_when_it_arrives(
    world: World, venv: Venv, wheels: Path, late: Path
) -> None:
    """The daemon waits for the store (status says why), keeps the install made meanwhile,
    and its first commit holds both that and what the store recorded before."""
    record(world, venv, late, "alpha==1.0")
    d = daemon(world, venv)
    try:
        uv_install(venv.python, wheels, "beta==1.0", env=world.env)

        def waiting() -> bool:
            out = world.pkgckpt("status", "--json", *world.flags(venv.prefix))
            error = json.loads(out.stdout)["daemon"].get("last_error") or ""
            return "not available (not mounted?)" in error

        eventually(waiting, what="status saying the store is not available")
        assert list(world.store.iterdir()) == [], "something was written into the mount point"
        mount_bind(late, world.store)
        eventually(lambda: holds(world, "alpha==1.0", "beta==1.0"), 120, "the merged commit")
        assert d.stop() == 0, d.output()
    finally:
        d.close()
    assert holds(world, "alpha==1.0", "beta==1.0")


def unread(world: World) -> str:
    """Why the daemon has not read the store, from its status file ("" once it has)."""
    try:
        state = json.loads(world.status_file.read_bytes())
    except FileNotFoundError:
        return ""
    return state.get("unread") or ""


@pytest.mark.parametrize("mounted", ["at start", "late"])
def test_a_squashed_store_showing_another_key_keeps_the_daemon_from_reading_it(
    world: World, venv: Venv, wheels: Path, late: Path, mounted: str
) -> None:
    """store_uid set and another key's directory in the store root (the whole export
    mounted, not the user's own directory): the daemon neither exits nor reads nor writes
    the manifest, whether that store was there at its start or mounted after it, and its
    status says why. With that directory gone, it reads the store and commits."""
    record(world, venv, late, "alpha==1.0")
    (late / "bob").mkdir(0o700)
    if mounted == "at start":
        mount_bind(late, world.store)
    flags = [*world.flags(venv.prefix), "--baseline", str(world.tmp / "b.json")]
    squashed = {"PKGCKPT_STORE_UID": str(os.geteuid())}
    d = world.daemon(*flags, "--quiet-ms", "100").start(extra_env=squashed)
    try:
        if mounted == "late":
            eventually(lambda: "not mounted?" in unread(world), what="the store not mounted")
            mount_bind(late, world.store)
        uv_install(venv.python, wheels, "beta==1.0", env=world.env)
        d.signal(signal.SIGHUP)  # try the store now, not at the end of the backoff
        refusal = "shows other keys' directories ('bob') and store_uid is set: refused"
        eventually(lambda: refusal in unread(world), what="the layout refusal")
        assert d.proc is not None and d.proc.poll() is None, d.output()
        assert holds(world, "alpha==1.0"), "the refused store was written"
        (late / "bob").rmdir()
        d.signal(signal.SIGHUP)
        eventually(lambda: holds(world, "alpha==1.0", "beta==1.0"), 60, "the commit")
        assert d.stop() == 0, d.output()
    finally:
        d.close()


def delete(key: Path) -> None:
    """Remove `key` at once (renamed away first: the daemon may be tidying up in it)."""
    gone = key.with_name(f".gone-{os.urandom(4).hex()}")
    key.rename(gone)
    shutil.rmtree(gone, ignore_errors=True)  # out of the store already


def test_a_key_directory_deleted_under_the_daemon_is_written_again(
    world: World, venv: Venv, wheels: Path
) -> None:
    """Deleted after a commit: the next commit and the shutdown's read-back rewrite it whole."""
    d = daemon(world, venv)
    key = world.store / world.key
    try:
        uv_install(venv.python, wheels, "alpha==1.0", env=world.env)
        eventually(lambda: holds(world, "alpha==1.0"), 60, "alpha committed")
        delete(key)
        uv_install(venv.python, wheels, "beta==1.0", env=world.env)
        eventually(lambda: holds(world, "alpha==1.0", "beta==1.0"), 60, "the whole record")
        delete(key)  # nothing installed after this: only the shutdown notices
        assert d.stop() == 0, d.output()
    finally:
        d.close()
    assert holds(world, "alpha==1.0", "beta==1.0")
    found = Store(world.store, world.key).read()
    assert found is not None and found.generation == 3, "generations never run backwards"


def test_a_key_directory_rolled_back_under_the_daemon_loses_nothing(
    world: World, venv: Venv, wheels: Path
) -> None:
    """An older copy of the key directory mounted over it (a snapshot restore, a lagging
    replica): the daemon's next commit folds it in and writes every install again."""
    d = daemon(world, venv)
    key = world.store / world.key
    old = world.tmp / "old-copy"
    try:
        uv_install(venv.python, wheels, "alpha==1.0", env=world.env)
        eventually(lambda: holds(world, "alpha==1.0"), 60, "alpha committed")
        shutil.copytree(key, old, symlinks=True)
        uv_install(venv.python, wheels, "beta==1.0", env=world.env)
        eventually(lambda: holds(world, "alpha==1.0", "beta==1.0"), 60, "beta committed")
        mount_bind(old, key)
        assert holds(world, "alpha==1.0"), "the rollback is in place"
        uv_install(venv.python, wheels, "gamma==1.0", env=world.env)
        want = ("alpha==1.0", "beta==1.0", "gamma==1.0")
        eventually(lambda: holds(world, *want), 60, "the merged commit")
        assert d.stop() == 0, d.output()
        assert holds(world, *want)
    finally:
        d.close()
        subprocess.run(["umount", "-l", str(key)], check=False, capture_output=True)


def venv_report(report: Any, venv: Venv) -> Any:
    """The venv's entry in a `status --json` report."""
    (env,) = [e for e in report["environments"] if e["env"]["path"] == str(venv.prefix)]
    return env


def pending_names(report: Any, venv: Venv) -> list[str]:
    return sorted(c["name"] for c in venv_report(report, venv)["pending"])


def mounted_daemon(world: World, venv: Venv) -> tuple[Daemon, list[str]]:
    """The real store bind-mounted at the configured path (to be unmounted or remounted
    under the daemon), the daemon started, and the `status` command line for the venv."""
    real = world.tmp / "real-store"
    world.store.rename(real)
    world.store.mkdir(0o700)
    mount_bind(real, world.store)
    args = ["status", *world.flags(venv.prefix), "--baseline", str(world.tmp / "b.json")]
    return daemon(world, venv), args


def test_status_during_an_outage_shows_the_last_commit_and_only_what_the_store_lacks(
    world: World, venv: Venv, wheels: Path
) -> None:
    """The store unmounted after a commit: status says it cannot read the store and why,
    shows the daemon's last generation instead of "none yet", and lists as pending only
    the install made since, not the one already on the store; with the daemon gone, it
    says the checkpoint is unknown and lists nothing as pending."""
    d, args = mounted_daemon(world, venv)
    try:
        uv_install(venv.python, wheels, "alpha==1.0", env=world.env)
        eventually(lambda: holds(world, "alpha==1.0"), 60, "alpha committed")
        # The manifest is in place before the commit is over: the daemon may still hold the
        # key's directory to fsync it, and umount says "target is busy" until it lets go.
        umount = ["umount", str(world.store)]
        eventually(lambda: subprocess.run(umount, capture_output=True).returncode == 0, 30)
        uv_install(venv.python, wheels, "beta==1.0", env=world.env)

        def failing() -> Any:
            out = json.loads(world.pkgckpt(*args, "--json").stdout)
            state = out["daemon"] or {}
            return out if state.get("pending") and state.get("last_error") else None

        report = eventually(failing, 60, "the daemon holding beta, the store gone")
        assert report["checkpoint"] is None, "this command read no manifest"
        assert "not available (not mounted?)" in str(report["store_unread"])
        assert report["last_commit"]["generation"] == 1
        assert report["last_commit"]["time"] is not None
        assert report["pending_from_daemon"] is True
        assert pending_names(report, venv) == ["beta"]
        text = world.pkgckpt(*args).stdout
        assert "none yet" not in text and "nothing recorded" not in text, text
        assert "checkpoint: unknown, the store cannot be read now: store " in text, text
        assert "the daemon's last commit: generation 1 (" in text, text
        assert "    pending  install beta 1.0\n" in text, text
        assert "alpha" not in text, text

        # A forget the store cannot take yet: pending as a forget, not as an uninstall.
        forgot = world.pkgckpt("forget", "alpha", *world.flags(venv.prefix))
        assert forgot.returncode == 5, forgot.stdout + forgot.stderr

        def forgetting() -> Any:
            out = json.loads(world.pkgckpt(*args, "--json").stdout)
            return out if venv_report(out, venv).get("pending_forgets") else None

        held = eventually(forgetting, 30, "the forget shown as pending")
        assert venv_report(held, venv)["pending_forgets"] == ["alpha"]
        assert pending_names(held, venv) == ["beta"]
        text = world.pkgckpt(*args).stdout
        assert "    pending  install beta 1.0, forget alpha\n" in text, text

        d.kill()  # no flush: beta never reaches the store
        gone = json.loads(world.pkgckpt(*args, "--json").stdout)
        assert gone["daemon_running"] is False and gone["checkpoint"] is None
        assert "not available (not mounted?)" in str(gone["store_unread"])
        assert gone["last_commit"]["generation"] == 1, "the status file it left says so"
        assert pending_names(gone, venv) == []
        assert venv_report(gone, venv)["pending_known"] is False
        text = world.pkgckpt(*args).stdout
        assert "none yet" not in text and "nothing recorded" not in text, text
        assert "checkpoint: unknown, the store cannot be read now: store " in text, text
        assert "the daemon's last commit (not running): generation 1 (" in text, text
        assert "    pending  unknown: the store cannot be read" in text, text
    finally:
        d.close()
        subprocess.run(["umount", "-l", str(world.store)], check=False, capture_output=True)
    mount_bind(world.tmp / "real-store", world.store)
    try:
        assert holds(world, "alpha==1.0"), "what was committed before the outage stays"
    finally:
        subprocess.run(["umount", "-l", str(world.store)], check=False, capture_output=True)


def test_an_uninstall_made_before_a_late_store_arrives_is_recorded(
    world: World, venv: Venv, wheels: Path, late: Path
) -> None:
    """A venv that outlives its container holds alpha and beta, recorded. The new
    container's restore fails (the store is not mounted yet) after taking this container's
    baseline; the daemon starts without a store, the user uninstalls beta, then the store
    arrives: beta leaves the record's installs, which keep alpha, and the next restore
    does not bring it back."""
    uv_install(venv.python, wheels, "alpha==1.0", "beta==1.0", env=world.env)
    record(world, venv, late, "alpha==1.0", "beta==1.0")
    early = world.pkgckpt("restore", *world.flags(venv.prefix), "--no-index")
    assert early.returncode == 1, early.stdout + early.stderr
    d = world.daemon(*world.flags(venv.prefix), "--quiet-ms", "100").start()
    try:
        subprocess.run(
            ["uv", "pip", "uninstall", "--python", str(venv.python), "beta"],
            check=True, capture_output=True, env=world.env,
        )  # fmt: skip
        mount_bind(late, world.store)
        # The record names no image, so this container's baseline, which holds beta, is
        # the image: its uninstall may be recorded as a removal. Either way not an install.
        eventually(lambda: (recorded(world) or ([],))[0] == ["alpha==1.0"], 120, "beta gone")
        assert d.stop() == 0, d.output()
    finally:
        d.close()
    again = world.pkgckpt(
        "restore", *world.flags(venv.prefix), "--no-index", "--find-links", str(wheels)
    )
    assert again.returncode == 0, again.stdout + again.stderr
    assert installed(venv) == {"alpha", "image_pkg"}


def test_an_uninstall_seen_before_a_late_store_arrives_is_recorded_with_the_images_baseline(
    world: World, venv: Venv, wheels: Path, late: Path
) -> None:
    """The image's baseline file is there; restore has put alpha and beta back. The daemon
    starts without a store and sees them; the user uninstalls beta and the image's
    image-pkg, then the store arrives. Both uninstalls were seen in this container: beta
    leaves the record, image-pkg's removal joins it, and no restore brings them back."""
    record(world, venv, late, "alpha==1.0", "beta==1.0")
    uv_install(venv.python, wheels, "alpha==1.0", "beta==1.0", env=world.env)
    d = daemon(world, venv)
    try:
        eventually(lambda: "cannot read the store" in d.output(), 60, "the store refused")
        subprocess.run(
            ["uv", "pip", "uninstall", "--python", str(venv.python), "beta", "image-pkg"],
            check=True, capture_output=True, env=world.env,
        )  # fmt: skip
        time.sleep(0.5)  # past the quiet window: seen while the store is away
        mount_bind(late, world.store)
        want = (["alpha==1.0"], ["image-pkg==1.0"])
        eventually(lambda: recorded(world) == want, 60, "both uninstalls recorded")
        assert d.stop() == 0, d.output()
    finally:
        d.close()


def test_status_shows_an_uninstall_a_read_only_store_did_not_take_as_pending(
    world: World, venv: Venv, wheels: Path
) -> None:
    """The store, readable, stops taking writes (remounted read-only) after alpha and beta
    are committed; the user uninstalls beta and installs gamma. status lists both as
    pending, the uninstall from the daemon (one scan of its own would take beta for a
    package a restore has not made yet), and not beta as one restore would install."""
    d, args = mounted_daemon(world, venv)
    try:
        uv_install(venv.python, wheels, "alpha==1.0", "beta==1.0", env=world.env)
        eventually(lambda: holds(world, "alpha==1.0", "beta==1.0"), 60, "both committed")
        remount = ["mount", "-o", "remount,bind,ro", str(world.store)]
        subprocess.run(remount, check=True, capture_output=True)
        subprocess.run(
            ["uv", "pip", "uninstall", "--python", str(venv.python), "beta"],
            check=True, capture_output=True, env=world.env,
        )  # fmt: skip
        uv_install(venv.python, wheels, "gamma==1.0", env=world.env)

        def refused() -> Any:
            out = json.loads(world.pkgckpt(*args, "--json").stdout)
            state = out["daemon"] or {}
            return out if state.get("pending") == 2 and state.get("last_error") else None

        report = eventually(refused, 60, "the daemon holding both, the store refusing them")
        assert pending_names(report, venv) == ["beta", "gamma"]
        assert venv_report(report, venv)["unrestored"] == []
        text = world.pkgckpt(*args).stdout
        assert "    pending  install gamma 1.0, remove beta 1.0\n" in text, text
        assert "restore" not in text.split("python ")[-1], text
    finally:
        d.kill()
        d.close()
        subprocess.run(["umount", "-l", str(world.store)], check=False, capture_output=True)


@pytest.mark.parametrize("manifest", [False, True])
def test_an_install_made_before_a_late_store_arrives_is_recorded_with_no_baseline_at_all(
    world: World, venv: Venv, wheels: Path, late: Path, manifest: bool
) -> None:
    """No baseline anywhere (no image file, no restore ran) and no store at the daemon's
    start: the user installs alpha, then the store arrives, empty or with a record of
    beta. alpha is recorded, beside beta. The daemon took the baseline when the store
    answered, alpha in it as the image's (or, with a record, counted only the changes after
    it), and alpha was never recorded."""
    if manifest:
        record(world, venv, late, "beta==1.0")
    d = world.daemon(*world.flags(venv.prefix), "--quiet-ms", "100").start()
    try:
        eventually(lambda: "cannot read the store" in d.output(), 60, "the store's absence")
        uv_install(venv.python, wheels, "alpha==1.0", env=world.env)
        mount_bind(late, world.store)
        want = ["alpha==1.0", "beta==1.0"] if manifest else ["alpha==1.0"]
        eventually(lambda: holds(world, *want), 30, f"{want} on the store")
        assert d.stop() == 0, d.output()
    finally:
        d.close()


@pytest.mark.parametrize("end", ["stopped", "killed"])
def test_an_install_made_before_a_daemon_restart_and_the_store_is_recorded(
    world: World, venv: Venv, wheels: Path, late: Path, end: str
) -> None:
    """An environment with no baseline (a venv on the user's volume, beside the image's)
    and no store at the start: the user installs alpha there, the daemon is restarted
    (its supervisor, after a stop or a crash), then the store arrives. alpha is recorded.
    The second daemon counted from its own start: alpha, made before it, was taken for
    the image's and never recorded."""
    other = make_venv(world.tmp / "other", with_pip=False)
    flags = [*world.flags(venv.prefix, other.prefix), "--baseline", str(world.tmp / "b.json")]
    flags += ["--quiet-ms", "100"]
    first = Daemon(flags, world.env, world.tmp / "first.log").start()
    try:
        eventually(lambda: "cannot read the store" in first.output(), 60, "the store's absence")
        uv_install(other.python, wheels, "alpha==1.0", env=world.env)
        if end == "stopped":
            first.stop()
        else:
            first.kill()
    finally:
        first.close()
    second = Daemon(flags, world.env, world.tmp / "second.log").start()
    try:
        eventually(lambda: "cannot read the store" in second.output(), 60, "the store's absence")
        mount_bind(late, world.store)
        # An install the store surely gets: the commit that holds it has read `other`.
        uv_install(venv.python, wheels, "beta==1.0", env=world.env)
        beta = [["beta==1.0"]]
        eventually(lambda: added(world, venv.prefix) == beta, 60, "beta on the store")
        assert second.stop() == 0, second.output()
        assert added(world, other.prefix) == [["alpha==1.0"]], second.output()
    finally:
        second.close()


def test_a_daemon_started_again_after_one_that_read_the_store_counts_from_its_own_start(
    world: World, venv: Venv, wheels: Path
) -> None:
    """The same venv with no baseline, its package gamma older than the container. A
    first daemon reads the store and records alpha; then `chmod -R` dates every entry in
    the venv anew (a fix-permissions step), and the daemon is started again. Nothing more
    is recorded: the first daemon took gamma for the image's, and the second counts from
    its own start. Counting from the first's, it recorded gamma as the user's."""
    other = make_venv(world.tmp / "other", with_pip=False)
    uv_install(other.python, wheels, "gamma==1.0", env=world.env)
    then = time.time_ns() - 3600 * 10**9
    for entry in other.site_packages.iterdir():
        os.utime(entry, ns=(then, then), follow_symlinks=False)
    time.sleep(0.05)  # the entries' change times, set just now, are before the start
    flags = [*world.flags(venv.prefix, other.prefix), "--baseline", str(world.tmp / "b.json")]
    flags += ["--quiet-ms", "100"]

    first = Daemon(flags, world.env, world.tmp / "first.log").start()
    try:
        uv_install(other.python, wheels, "alpha==1.0", env=world.env)
        eventually(lambda: added(world, other.prefix) == [["alpha==1.0"]], 60, "alpha stored")
        assert first.stop() == 0, first.output()
    finally:
        first.close()
    subprocess.run(["chmod", "-R", "g+w", str(other.prefix)], check=True)
    second = Daemon(flags, world.env, world.tmp / "second.log").start()
    try:
        assert second.stop() == 0, second.output()
    finally:
        second.close()
    assert added(world, other.prefix) == [["alpha==1.0"]], second.output()
