"""Packages that did not come from an index, and the user site: restored from where they were
recorded, as the real scanner then sees them, so a second run has nothing to do."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from restore_kit import (
    installed,
    isolated,  # noqa: F401 (an autouse fixture)
    project,
    put_manifest,
)
from wheelhouse import Dist, Venv, build_wheel, make_venv

from pkgckpt import restore
from pkgckpt.config import Config
from pkgckpt.errors import PartialRestore
from pkgckpt.inventory import targets
from pkgckpt.manifest import Body, Delta, DirectorySource, Environment, Package, VcsSource

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
    """A user-site delta is installed with `pip --user` into the user site, not the prefix."""
    monkeypatch.setenv("PYTHONUSERBASE", str(tmp_path / "userbase"))
    prefix = Path(sys.prefix)
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
