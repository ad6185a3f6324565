"""Packages that did not come from an index, and the user site: restored from where they were
recorded, as the real scanner then sees them, so a second run has nothing to do."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import msgspec
import pytest
from restore_kit import (
    hermetic,
    installed,
    isolated,  # noqa: F401 (an autouse fixture)
    pkgckpt,
    project,
    put_manifest,
)
from wheelhouse import Dist, Venv, build_wheel, make_venv

from pkgckpt import restore
from pkgckpt.config import Config
from pkgckpt.inventory import targets
from pkgckpt.localsource import directory_problem
from pkgckpt.manifest import (
    Body,
    Delta,
    DirectorySource,
    Environment,
    Package,
    UrlSource,
    VcsSource,
    decode,
)
from pkgckpt.restore import PartialRestore
from pkgckpt.restore.python import PythonInstaller
from pkgckpt.store import init_store

pytestmark = pytest.mark.slow


@pytest.fixture
def wheels(tmp_path: Path) -> Path:
    out = tmp_path / "wheels"
    build_wheel(Dist("alpha", "1.0"), out)
    return out


def configure(tmp_path: Path, prefix: Path, wheels: Path, installer: str = "uv") -> Config:
    return Config(
        store=tmp_path / "store",
        key="alice",
        env=(prefix,),
        runtime_dir=tmp_path / "run",
        installer=installer,
        no_index=True,
        find_links=(str(wheels),),
    )


def only(env: Environment, *added: Package) -> Body:
    return Body(environments=(Delta(env=env, added=added),))


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.org", *args],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


@pytest.mark.parametrize("tool", ["uv", "pip"])
def test_git_source_comes_back_at_its_commit(tool: str, tmp_path: Path, wheels: Path) -> None:
    """A package from a git commit is reinstalled from that commit, not from the index."""
    repo = project("fromgit", "0.1", tmp_path / "repo")
    git(repo, "init", "-q")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "one")
    first = git(repo, "rev-parse", "HEAD")
    (repo / "fromgit" / "__init__.py").write_text("VERSION = 'later'\n")
    git(repo, "commit", "-q", "-am", "two")
    venv = make_venv(tmp_path / "venv", with_pip=False)
    config = configure(tmp_path, venv.prefix, wheels, tool)
    env = targets(config)[0].env
    source = VcsSource(vcs="git", url=repo.as_uri(), commit=first)
    put_manifest(
        config.store, config.key, only(env, Package(name="fromgit", version="0.1", source=source))
    )
    report = restore.run(config)
    assert report.environments[0].installed == ("fromgit==0.1",), report.render()
    assert (venv.site_packages / "fromgit" / "__init__.py").read_text() == "VERSION = '0.1'\n"
    assert restore.plan(config).is_empty(), "the scanner must see the same commit"


@pytest.mark.parametrize("tool", ["uv", "pip"])
def test_editable_directory_comes_back_editable(tool: str, tmp_path: Path, wheels: Path) -> None:
    """An editable install of a local project is reinstalled editable from that directory."""
    src = project("mine", "0.3", tmp_path / "src" / "mine")
    venv = make_venv(tmp_path / "venv", with_pip=False)
    config = configure(tmp_path, venv.prefix, wheels, tool)
    env = targets(config)[0].env
    source = DirectorySource(path=str(src), editable=True)
    put_manifest(
        config.store, config.key, only(env, Package(name="mine", version="0.3", source=source))
    )
    restore.run(config)
    out = subprocess.run(
        [str(venv.python), "-c", "import mine; print(mine.__file__)"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == str(src / "mine" / "__init__.py")
    assert restore.plan(config).is_empty(), "the scanner must see the same editable directory"


@pytest.mark.parametrize("tool", ["uv", "pip"])
def test_directory_with_a_subdirectory_comes_back_and_stays_recorded_as_it_was(
    tool: str, tmp_path: Path, wheels: Path
) -> None:
    """pip records `pip install 'file:///p#subdirectory=sub'` as the directory /p and its
    subdirectory sub; restore gives the installer /p/sub, which it records as that
    directory with no subdirectory. Both name the same directory: the restore succeeds,
    a second one has nothing to do, status has nothing left to restore, and a checkpoint
    afterwards sees no change."""
    outer = tmp_path / "src"
    project("mine", "0.3", outer / "sub")
    venv = make_venv(tmp_path / "venv")
    env = hermetic(tmp_path)
    store = tmp_path / "store"
    common = ["--env", str(venv.prefix), "--store", str(store), "--key", "alice"]
    baseline = tmp_path / "baseline.json"
    done = pkgckpt("baseline", "--env", str(venv.prefix), "--output", str(baseline), env=env)
    assert done.returncode == 0, done.stderr
    subprocess.run(
        [str(venv.python), "-m", "pip", "install", "-q", f"{outer.as_uri()}#subdirectory=sub"],
        check=True,
        env=env,
    )
    store.mkdir(mode=0o700)
    init_store(store)
    done = pkgckpt("snapshot", *common, "--baseline", str(baseline), env=env)
    assert done.returncode == 0, done.stderr
    recorded = decode((store / "alice" / "manifest.json").read_bytes())
    (delta,) = recorded.body.environments
    assert [(p.name, p.source) for p in delta.added] == [
        ("mine", DirectorySource(path=str(outer), subdirectory="sub"))
    ]

    make_venv(venv.prefix, with_pip=False)  # the next container: a fresh venv, same prefix
    config = configure(tmp_path, venv.prefix, wheels, tool)
    config = msgspec.structs.replace(config, baseline=baseline)
    report = restore.run(config)
    assert report.environments[0].installed == ("mine==0.3",), report.render()
    (found,) = [p for p in targets(config)[0].scan().packages if p.name == "mine"]
    assert found.source == DirectorySource(path=str(outer / "sub")), "how installers record it"
    assert restore.plan(config).is_empty(), "the directory restored is the one recorded"
    again = ["--installer", tool, "--no-index", "--find-links", str(wheels)]
    done = pkgckpt("restore", *common, *again, "--baseline", str(baseline), env=env)
    assert done.returncode == 0 and "Nothing to restore" in done.stdout, done.stdout + done.stderr
    done = pkgckpt("status", "--json", *common, "--baseline", str(baseline), env=env)
    assert done.returncode == 0, done.stderr
    (shown,) = json.loads(done.stdout)["environments"]
    assert shown["unrestored"] == [] and shown["pending"] == [], "status agrees with restore"

    done = pkgckpt("snapshot", *common, "--baseline", str(baseline), env=env)
    assert done.returncode == 0, done.stderr
    assert decode((store / "alice" / "manifest.json").read_bytes()) == recorded, done.stdout


def test_missing_directory_is_reported_and_the_rest_restored(tmp_path: Path, wheels: Path) -> None:
    """A recorded directory that is gone is a named failure (exit 3); other packages install."""
    venv: Venv = make_venv(tmp_path / "venv", with_pip=False)
    config = configure(tmp_path, venv.prefix, wheels)
    env = targets(config)[0].env
    gone = Package(name="mine", version="0.3", source=DirectorySource(path=str(tmp_path / "gone")))
    put_manifest(config.store, config.key, only(env, Package(name="alpha", version="1.0"), gone))
    dry = restore.run(config, dry_run=True)
    assert "cannot  mine 0.3: directory" in dry.render()
    with pytest.raises(PartialRestore) as info:
        restore.run(config)
    assert info.value.report is not None
    (failure,) = info.value.report.failures
    assert failure.name == "mine" and "does not exist here" in failure.message
    assert installed(venv.site_packages) == {"alpha": "1.0"}


def test_user_site_packages_go_to_the_user_site(
    tmp_path: Path, wheels: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A user-site delta is installed with `pip --user` into the user site, not the prefix.
    The prefix is this venv's base interpreter's: a venv has no user site."""
    monkeypatch.setenv("PYTHONUSERBASE", str(tmp_path / "userbase"))
    prefix = Path(sys.base_prefix)
    config = configure(tmp_path, prefix, wheels)
    user = next((t for t in targets(config) if t.env.user), None)
    if user is None:
        pytest.skip("this interpreter does not enable the user site")
    put_manifest(config.store, config.key, only(user.env, Package(name="alpha", version="1.0")))
    report = restore.run(config)
    (done,) = report.environments
    assert done.env.user and done.installer == "pip" and done.installed == ("alpha==1.0",)
    assert list((tmp_path / "userbase").glob("lib/python3*/site-packages/alpha-1.0.dist-info"))
    assert not list(prefix.glob("lib/python3*/site-packages/alpha-1.0.dist-info"))
    assert restore.plan(config).is_empty()


def _hash(path: Path) -> dict[str, str]:
    return {"sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


def test_file_wheel_is_checkpointed_with_its_sha256_and_restored_against_it(
    tmp_path: Path, wheels: Path
) -> None:
    """uv records no hash of a local wheel: the scan takes it; restore installs against it."""
    local = build_wheel(Dist("solo", "2.0"), tmp_path / "mywheels")
    venv = make_venv(tmp_path / "venv", with_pip=False)
    subprocess.run(
        ["uv", "pip", "install", "-q", "--python", str(venv.python), f"solo @ {local.as_uri()}"],
        check=True,
    )
    config = configure(tmp_path, venv.prefix, wheels)
    (recorded,) = [p for p in targets(config)[0].scan().packages if p.name == "solo"]
    assert recorded.source == UrlSource(url=local.as_uri(), hashes=_hash(local))
    fresh = make_venv(tmp_path / "fresh", with_pip=False)
    config = configure(tmp_path, fresh.prefix, wheels)
    put_manifest(config.store, config.key, only(targets(config)[0].env, recorded))
    report = restore.run(config)
    assert report.environments[0].installed == ("solo==2.0",), report.render()
    assert restore.plan(config).is_empty(), "the scan of the restored wheel is the record"


@pytest.mark.parametrize(("recorder", "restorer"), [("pip", "uv"), ("uv", "pip")])
def test_a_file_wheel_with_a_local_version_is_one_source_to_pip_and_uv(
    recorder: str, restorer: str, tmp_path: Path, wheels: Path
) -> None:
    """`torchy-1.0+cpu-...whl` installed from its file: pip writes the URL's `+` as `%2B`,
    uv as given. Restored by the other installer, the package is in place (not "not
    installed after the installer reported success"), and the scan of it is the record,
    so the daemon sees no change."""
    local = build_wheel(Dist("torchy", "1.0+cpu"), tmp_path / "my wheels")
    venv = make_venv(tmp_path / "venv", with_pip=recorder == "pip")
    if recorder == "pip":
        venv.install(wheels, str(local))
    else:
        subprocess.run(
            ["uv", "pip", "install", "-q", "--python", str(venv.python), str(local)], check=True
        )
    config = configure(tmp_path, venv.prefix, wheels)
    (recorded,) = [p for p in targets(config)[0].scan().packages if p.name == "torchy"]
    assert isinstance(recorded.source, UrlSource)
    assert recorded.source.url == local.as_uri(), "pip's spelling, whichever wrote it"
    fresh = make_venv(tmp_path / "fresh", with_pip=restorer == "pip")
    config = configure(tmp_path, fresh.prefix, wheels, installer=restorer)
    put_manifest(config.store, config.key, only(targets(config)[0].env, recorded))
    report = restore.run(config)
    assert report.environments[0].installed == ("torchy==1.0+cpu",), report.render()
    (scanned,) = [p for p in targets(config)[0].scan().packages if p.name == "torchy"]
    assert (scanned.version, scanned.source) == (recorded.version, recorded.source)
    assert restore.plan(config).is_empty()


def test_changed_file_wheel_is_refused_and_the_rest_restored(tmp_path: Path, wheels: Path) -> None:
    """A wheel whose bytes are not the ones hashed at checkpoint fails with the reason (exit 3)."""
    local = build_wheel(Dist("solo", "2.0"), tmp_path / "mywheels")
    recorded = UrlSource(url=local.as_uri(), hashes=_hash(local))
    build_wheel(Dist("solo", "2.0", files=3), tmp_path / "mywheels")
    venv = make_venv(tmp_path / "venv", with_pip=False)
    config = configure(tmp_path, venv.prefix, wheels)
    solo = Package(name="solo", version="2.0", source=recorded)
    put_manifest(
        config.store,
        config.key,
        only(targets(config)[0].env, Package(name="alpha", version="1.0"), solo),
    )
    with pytest.raises(PartialRestore) as info:
        restore.run(config)
    assert info.value.report is not None
    (failure,) = info.value.report.failures
    assert failure.name == "solo"
    assert failure.message == (
        f"{local} has changed since checkpoint: its sha256 is not the one recorded"
    )
    assert installed(venv.site_packages) == {"alpha": "1.0"}


def test_file_wheel_without_a_recorded_hash_is_refused(tmp_path: Path, wheels: Path) -> None:
    """A local archive with no sha256 in the record cannot be verified, so it is not used."""
    local = build_wheel(Dist("solo", "2.0"), tmp_path / "mywheels")
    venv = make_venv(tmp_path / "venv", with_pip=False)
    config = configure(tmp_path, venv.prefix, wheels)
    solo = Package(name="solo", version="2.0", source=UrlSource(url=local.as_uri()))
    put_manifest(config.store, config.key, only(targets(config)[0].env, solo))
    plan = restore.plan(config)
    (blocked,) = plan.environments[0].blocked
    assert blocked.message == (
        f"no sha256 of {local} was recorded at checkpoint, so it cannot be verified"
    )


@pytest.mark.parametrize("attack", ["owner", "writable", "symlink", "subdirectory"])
def test_local_sources_others_could_change_are_refused(
    attack: str, tmp_path: Path, wheels: Path
) -> None:
    """A file or directory source that another user owns, that others can write, or that
    is reached through another user's symlink is refused with the reason; the rest install.
    A directory recorded with a subdirectory is checked down to the subdirectory, which is
    what the installer is given: a root-owned recorded path does not vouch for it."""
    shared = tmp_path / "shared"
    local = build_wheel(Dist("solo", "2.0"), shared / "inner")
    src = project("mine", "0.3", shared / "inner" / "mine")
    file_source = UrlSource(url=local.as_uri(), hashes=_hash(local))
    dir_source = DirectorySource(path=str(src), editable=True)
    # Run as root, every directory of the test is root's and ends the walk up at once: the
    # attacks are on the sources themselves (the security suite walks a real user's tree).
    if attack == "owner":
        for path in (shared / "inner", local, src, *src.rglob("*")):
            os.lchown(path, 65534, 65534)
        culprit = "is owned by nobody (uid 65534), not by you or root"
    elif attack == "writable":
        local.chmod(0o666)
        src.chmod(0o777)
        culprit = "is writable by others"
    elif attack == "symlink":
        # Everything is root's, but the way to it goes through another user's symlink.
        link = tmp_path / "link"
        link.symlink_to(shared / "inner")
        os.lchown(link, 65534, 65534)
        file_source = UrlSource(url=(link / local.name).as_uri(), hashes=_hash(local))
        dir_source = DirectorySource(path=str(link / "mine"), editable=True)
        culprit = f"{link} is owned by"
    else:
        # The recorded directory is root's; another user's directory is below it, on the
        # way to the subdirectory the installer is given (and to the wheel).
        os.lchown(shared / "inner", 65534, 65534)
        dir_source = DirectorySource(path=str(shared), subdirectory="inner/mine")
        culprit = f"{shared / 'inner'} is owned by nobody (uid 65534), not by you or root"
    venv = make_venv(tmp_path / "venv", with_pip=False)
    config = configure(tmp_path, venv.prefix, wheels)
    packages = (
        Package(name="solo", version="2.0", source=file_source),
        Package(name="mine", version="0.3", source=dir_source),
        Package(name="alpha", version="1.0"),
    )
    put_manifest(config.store, config.key, only(targets(config)[0].env, *packages))
    with pytest.raises(PartialRestore) as info:
        restore.run(config)
    assert info.value.report is not None
    failures = {f.name: f.message for f in info.value.report.failures}
    assert set(failures) == {"solo", "mine"}
    assert all(culprit in message for message in failures.values()), failures
    assert installed(venv.site_packages) == {"alpha": "1.0"}


@pytest.mark.parametrize("subdirectory", ["../elsewhere", "/etc", "mine/../.."])
def test_a_subdirectory_that_leaves_the_recorded_directory_is_refused(
    subdirectory: str, tmp_path: Path
) -> None:
    """Validation refuses these in a manifest; the check refuses them on its own too."""
    (tmp_path / "mine").mkdir()
    assert directory_problem(str(tmp_path), subdirectory) == (
        f"subdirectory {subdirectory} of {tmp_path} leads out of it"
    )
    assert directory_problem(str(tmp_path), "mine") is None


def test_user_site_install_works_with_the_safe_path_flag(
    tmp_path: Path, wheels: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`python -P -m pip install --user` still installs into PYTHONUSERBASE's user site
    (-I would not: it ignores PYTHONUSERBASE and turns the user site off)."""
    prefix = tmp_path / "sysvenv"
    subprocess.run(
        [sys.executable, "-m", "venv", "--system-site-packages", str(prefix)],
        check=True,
        capture_output=True,
    )
    monkeypatch.setenv("PYTHONUSERBASE", str(tmp_path / "userbase"))
    monkeypatch.delenv("PYTHONNOUSERSITE", raising=False)
    config = configure(tmp_path, prefix, wheels, "pip")
    user = next(t for t in targets(config) if t.env.user)
    put_manifest(config.store, config.key, only(user.env, Package(name="alpha", version="1.0")))
    report = restore.run(config)
    (done,) = report.environments
    assert done.installer == "pip" and done.installed == ("alpha==1.0",), report.render()
    assert list((tmp_path / "userbase").glob("lib/python3*/site-packages/alpha-1.0.dist-info"))
    assert not list(prefix.glob("lib/python3*/site-packages/alpha-1.0.dist-info"))
    if sys.version_info >= (3, 11):
        assert "-P" in PythonInstaller(user.env, config)._command
    assert restore.plan(config).is_empty()


def test_credentials_never_reach_plans_reports_or_messages(tmp_path: Path, wheels: Path) -> None:
    """`user:secret@` in recorded URLs appears in no plan, dry-run JSON, report or message,
    while the install is still attempted from the URL with its credentials."""
    venv = make_venv(tmp_path / "venv", with_pip=False)
    config = configure(tmp_path, venv.prefix, wheels)
    # Nothing listens on port 9 (discard): the downloads fail at once, with the URL quoted.
    secret = Package(
        name="secret",
        version="1.0",
        source=UrlSource(
            url="https://alice:s3cret-pw@127.0.0.1:9/secret-1.0-py3-none-any.whl",
            hashes={"sha256": "ab" * 32},
        ),
    )
    token = Package(
        name="tokened",
        version="1.0",
        source=VcsSource(vcs="git", url="https://ghp_t0ken@127.0.0.1:9/r.git", commit="a" * 40),
    )
    put_manifest(config.store, config.key, only(targets(config)[0].env, secret, token))
    common = ["--store", str(config.store), "--key", config.key, "--env", str(venv.prefix)]
    common += ["--installer", "uv", "--no-index", "--find-links", str(wheels)]
    env = {**hermetic(tmp_path), "GIT_TERMINAL_PROMPT": "0", "UV_HTTP_RETRIES": "0"}
    outputs = [
        pkgckpt("restore", "--dry-run", *common, env=env),
        pkgckpt("restore", "--dry-run", "--json", *common, env=env),
        pkgckpt("restore", "--json", *common, env=env),
        pkgckpt("restore", *common, env=env),
    ]
    assert [o.returncode for o in outputs] == [0, 0, 3, 3], [o.stderr for o in outputs]
    for out in outputs:
        text = out.stdout + out.stderr
        assert "s3cret" not in text and "ghp_t0ken" not in text and "alice:" not in text, text
    assert "https://127.0.0.1:9/secret-1.0-py3-none-any.whl" in outputs[0].stdout
    report = json.loads(outputs[2].stdout)
    failed = {f["name"] for e in report["environments"] for f in e["failed"]}
    assert failed == {"secret", "tokened"}


def test_checkpoint_does_not_vouch_for_a_wheel_others_could_have_changed(
    tmp_path: Path, wheels: Path
) -> None:
    """A local wheel owned by another user is not hashed at checkpoint: its hash would vouch
    for that user's bytes, so the record has none and restore will refuse it."""
    local = build_wheel(Dist("solo", "2.0"), tmp_path / "theirs")
    venv = make_venv(tmp_path / "venv", with_pip=False)
    subprocess.run(
        ["uv", "pip", "install", "-q", "--python", str(venv.python), f"solo @ {local.as_uri()}"],
        check=True,
    )
    os.chown(local, 65534, 65534)
    config = configure(tmp_path, venv.prefix, wheels)
    (recorded,) = [p for p in targets(config)[0].scan().packages if p.name == "solo"]
    assert recorded.source == UrlSource(url=local.as_uri())


def test_a_local_archive_is_read_once_while_it_stays_the_same_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Metadata in a library others write can name a large file of the user's and bump its
    version again and again: the checkpoint reads that file once, not at every bump, and
    a file written since (its ctime moves) is read again."""
    from pkgckpt import localsource

    archive = tmp_path / "pkg-1.0.tar.gz"
    archive.write_bytes(b"one")
    reads: list[bytes] = []
    sha256 = hashlib.sha256

    def counted(*data: bytes) -> hashlib._Hash:
        reads.append(b"")
        return sha256(*data)

    monkeypatch.setattr(hashlib, "sha256", counted)
    url = archive.as_uri()
    # Just written: its times may tick no further at a write right after, so its digest
    # is not kept.
    assert localsource.file_url_sha256(url) == localsource.file_url_sha256(url)
    assert len(reads) == 2
    reads.clear()
    # Settled at once here; a file time ticks in 10 ms at most, so a write 0.1 s later is
    # another identity (the default 2 s window makes that so for a file just written).
    monkeypatch.setattr(localsource, "_SETTLED_NS", 0)
    first = localsource.file_url_sha256(url)
    assert first == {"sha256": sha256(b"one").hexdigest()}
    assert localsource.file_url_sha256(url) == first
    assert len(reads) == 1
    time.sleep(0.1)
    archive.write_bytes(b"two")
    assert localsource.file_url_sha256(url) == {"sha256": sha256(b"two").hexdigest()}
    assert len(reads) == 2
