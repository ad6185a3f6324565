"""pip and uv as restore runs them: real venvs, real installers, wheels built here."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from restore_kit import (
    installed,
    isolated,  # noqa: F401 (an autouse fixture)
)
from wheelhouse import PIP_REFUSES_INVALID, Dist, Venv, build_wheel, make_venv

from pkgckpt.config import Config
from pkgckpt.errors import RestoreError
from pkgckpt.manifest import DirectorySource, Environment, Package, UrlSource, VcsSource
from pkgckpt.restore.python import PythonInstaller, requirement
from pkgckpt.restore.runner import Deadline

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheels")
    for dist in (
        Dist("alpha", "1.0"),
        Dist("alpha", "2.0"),
        Dist("beta", "1.0", requires=["gamma"]),
        Dist("gamma", "1.0"),
    ):
        build_wheel(dist, out)
    return out


@pytest.fixture
def bare(tmp_path: Path) -> Iterator[Venv]:
    """A venv without pip: what uv creates, and the fast kind to make."""
    yield make_venv(tmp_path / "bare", with_pip=False)


def config(wheels: Path, installer: str) -> Config:
    return Config(installer=installer, no_index=True, find_links=(str(wheels),))


def env(venv: Venv) -> Environment:
    return Environment(kind="python", path=str(venv.prefix))


@pytest.mark.parametrize("tool", ["uv", "pip"])
def test_exact_pins_without_dependencies(tool: str, wheels: Path, bare: Venv) -> None:
    """One call installs exactly the pinned versions and none of their dependencies."""
    installer = PythonInstaller(env(bare), config(wheels, tool))
    assert installer.name == tool
    pins = [Package(name="alpha", version="1.0"), Package(name="beta", version="1.0")]
    out = installer.install(pins, reinstall=(), deadline=Deadline(120))
    assert out.ok, out.output
    assert "--" in out.argv and out.argv.index("--") == len(out.argv) - 3
    assert installed(bare.site_packages) == {"alpha": "1.0", "beta": "1.0"}  # no gamma: --no-deps


@pytest.mark.parametrize("tool", ["uv", "pip"])
def test_pin_replaces_another_version(tool: str, wheels: Path, bare: Venv) -> None:
    """A changed package is installed at the recorded version over the current one."""
    installer = PythonInstaller(env(bare), config(wheels, tool))
    deadline = Deadline(120)
    assert installer.install(
        [Package(name="alpha", version="2.0")], reinstall=(), deadline=deadline
    ).ok
    out = installer.install([Package(name="alpha", version="1.0")], reinstall=(), deadline=deadline)
    assert out.ok, out.output
    assert installed(bare.site_packages) == {"alpha": "1.0"}


@pytest.mark.parametrize("tool", ["uv", "pip"])
def test_remove_touches_only_the_named_packages(tool: str, wheels: Path, bare: Venv) -> None:
    """Uninstall removes the packages named and leaves the rest of the environment."""
    installer = PythonInstaller(env(bare), config(wheels, tool))
    deadline = Deadline(120)
    both = [Package(name="alpha", version="1.0"), Package(name="gamma", version="1.0")]
    assert installer.install(both, reinstall=(), deadline=deadline).ok
    out = installer.remove([Package(name="gamma", version="1.0")], deadline=deadline)
    assert out.ok, out.output
    assert installed(bare.site_packages) == {"alpha": "1.0"}


def test_a_version_missing_from_the_index_fails_with_the_reason(wheels: Path, bare: Venv) -> None:
    """A pin the index cannot satisfy fails, and the output says which one."""
    installer = PythonInstaller(env(bare), config(wheels, "uv"))
    out = installer.install(
        [Package(name="alpha", version="9.9")], reinstall=(), deadline=Deadline(60)
    )
    assert not out.ok and "alpha" in out.tail()
    assert installed(bare.site_packages) == {}


def test_pip_of_the_environment_is_preferred(wheels: Path, tmp_path: Path) -> None:
    """With pip chosen, a venv's own pip installs into it (its own interpreter)."""
    venv = make_venv(tmp_path / "withpip")
    installer = PythonInstaller(env(venv), config(wheels, "pip"))
    out = installer.install(
        [Package(name="gamma", version="1.0")], reinstall=(), deadline=Deadline(120)
    )
    assert out.ok, out.output
    assert out.argv[:3] == (str(venv.prefix / "bin" / "python3"), "-m", "pip")
    assert installed(venv.site_packages)["gamma"] == "1.0"


def test_auto_prefers_uv_when_installed(wheels: Path, bare: Venv) -> None:
    """`--installer auto` picks uv when it is on PATH."""
    assert shutil.which("uv")
    assert PythonInstaller(env(bare), config(wheels, "auto")).name == "uv"


def test_uv_requested_but_missing_is_an_error(
    wheels: Path, bare: Venv, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`--installer uv` without uv stops before anything runs, with a clear reason."""
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setattr(sys, "executable", str(tmp_path / "bin" / "python"))
    with pytest.raises(RestoreError, match=r"uv is not installed \(not on PATH, nor in "):
        PythonInstaller(env(bare), config(wheels, "uv"))


def test_uv_beside_pkgckpts_interpreter_is_found_off_path(
    wheels: Path, bare: Venv, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An image that installs pkgckpt and uv into one venv and links only `pkgckpt` onto
    PATH: `auto` finds uv beside the interpreter running pkgckpt, and installs with it."""
    beside = Path(sys.executable).parent / "uv"
    if not beside.is_file():
        pytest.skip(f"no uv beside {sys.executable} (the test extra installs it there)")
    monkeypatch.setenv("PATH", "/nonexistent")
    installer = PythonInstaller(env(bare), config(wheels, "auto"))
    assert installer.name == "uv"
    out = installer.install(
        [Package(name="gamma", version="1.0")], reinstall=(), deadline=Deadline(60)
    )
    assert out.ok, out.output
    assert out.argv[0] == str(beside)
    assert installed(bare.site_packages)["gamma"] == "1.0"


def test_user_site_is_restored_with_pip_user(wheels: Path, bare: Venv) -> None:
    """uv has no user-site installs: a user-site environment uses `pip install --user`."""
    installer = PythonInstaller(
        Environment(kind="python", path=str(bare.prefix), user=True), config(wheels, "uv")
    )
    assert installer.name == "pip"
    assert "--user" in installer._target


def test_file_url_source_is_reinstalled_from_that_file(
    wheels: Path, bare: Venv, tmp_path: Path
) -> None:
    """A package installed from a local wheel file comes back from that file."""
    other = tmp_path / "elsewhere"
    wheel = build_wheel(Dist("delta", "3.0"), other)
    installer = PythonInstaller(env(bare), config(wheels, "uv"))
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    source = UrlSource(url=wheel.as_uri(), hashes={"sha256": digest})
    package = Package(name="delta", version="3.0", source=source)
    assert installer.blocked(package) is None
    out = installer.install([package], reinstall=(), deadline=Deadline(60))
    assert out.ok, out.output
    assert installed(bare.site_packages) == {"delta": "3.0"}
    direct = next(bare.site_packages.glob("delta-3.0.dist-info")) / "direct_url.json"
    assert wheel.as_uri() in direct.read_text()


@pytest.mark.parametrize(
    ("source", "why"),
    [
        (UrlSource(url="http://plain.example/x-1.0.whl"), "scheme 'http' is not allowed"),
        (UrlSource(url="ftp://ftp.example/x-1.0.whl"), "scheme 'ftp' is not allowed"),
        (UrlSource(url="file:///nonexistent/x-1.0.whl"), "does not exist here"),
        (VcsSource(vcs="git", url="git://plain.example/x"), "scheme 'git' is not allowed"),
        (VcsSource(vcs="git", url="file:///nonexistent/repo"), "does not exist here"),
        (DirectorySource(path="/nonexistent/src", editable=True), "does not exist here"),
    ],
)
def test_unreachable_or_unsafe_sources_are_blocked(
    source: UrlSource | VcsSource | DirectorySource, why: str, wheels: Path, bare: Venv
) -> None:
    """Sources that may not or cannot be fetched are reported, not attempted."""
    installer = PythonInstaller(env(bare), config(wheels, "uv"))
    reason = installer.blocked(Package(name="x", version="1.0", source=source))
    assert reason is not None and why in reason


def test_requirements_keep_the_recorded_source() -> None:
    """Each source kind becomes the PEP 508 requirement that points at it."""
    commit = "a" * 40
    assert requirement(Package(name="x", version="1.0")) == "x==1.0"
    assert (
        requirement(
            Package(
                name="x",
                version="1",
                source=VcsSource(vcs="git", url="https://h/r", commit=commit, subdirectory="p"),
            )
        )
        == f"x @ git+https://h/r@{commit}#subdirectory=p"
    )
    assert (
        requirement(Package(name="x", version="1", source=DirectorySource(path="/src/x")))
        == "x @ file:///src/x"
    )
    assert (
        requirement(
            Package(name="x", version="1", source=DirectorySource(path="/src/x", editable=True))
        )
        == "/src/x"
    )


@pytest.mark.parametrize("tool", ["uv", "pip"])
def test_index_settings_come_from_the_config_only(tool: str, wheels: Path, bare: Venv) -> None:
    """--index-url/--find-links/--no-index are the config's; requirements follow `--`."""
    settings = Config(
        installer=tool,
        index_url="https://mirror.example/simple",
        find_links=("/srv/wheels", "/srv/more"),
        no_index=True,
    )
    installer = PythonInstaller(env(bare), settings)
    expired = Deadline(1e-9)
    argv = installer.install(
        [Package(name="alpha", version="1.0")], reinstall=(), deadline=expired
    ).argv
    options = argv[: argv.index("--")]
    assert options[-8:] == (
        "--no-deps",
        "--index-url",
        "https://mirror.example/simple",
        "--find-links",
        "/srv/wheels",
        "--find-links",
        "/srv/more",
        "--no-index",
    )
    assert argv[argv.index("--") :] == ("--", "alpha==1.0")


def test_uv_reads_no_uv_toml_from_above_its_working_directory(
    tmp_path: Path, wheels: Path, bare: Venv, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A planted `uv.toml` (no-index, find-links to a look-alike wheel) in a directory above
    the child's working directory, or in the caller's, is not read: uv runs --no-config,
    with the index from pkgckpt's config."""
    index = tmp_path / "index" / "simple" / "alpha"
    index.mkdir(parents=True)
    wheel = next(wheels.glob("alpha-1.0-*.whl"))
    (index / "index.html").write_text(f'<a href="{wheel.as_uri()}">{wheel.name}</a>\n')
    planted = tmp_path / "shared"
    evil = build_wheel(Dist("alpha", "1.0", files=3), planted / "evil")
    (planted / "uv.toml").write_text(f'no-index = true\nfind-links = ["{evil.parent}"]\n')
    monkeypatch.setattr(tempfile, "tempdir", str(planted))
    monkeypatch.chdir(planted)
    # The test kit turns uv's configuration off for every test; the image would not.
    monkeypatch.delenv("UV_NO_CONFIG")
    settings = Config(installer="uv", index_url=index.parent.as_uri())
    installer = PythonInstaller(env(bare), settings)
    out = installer.install(
        [Package(name="alpha", version="1.0")], reinstall=(), deadline=Deadline(60)
    )
    assert out.ok, out.output
    assert installed(bare.site_packages) == {"alpha": "1.0"}
    assert not (bare.site_packages / "alpha" / "m2.py").exists(), "the planted wheel was used"


@pytest.mark.parametrize("tool", ["uv", "pip"])
def test_recorded_hash_is_checked_by_the_installer(tool: str, wheels: Path, bare: Venv) -> None:
    """A URL source whose bytes differ from the recorded hash is refused by the installer
    itself, even when it gets past restore's own check (the window after the check)."""
    if tool == "pip":
        bare = make_venv(bare.prefix.parent / "withpip", with_pip=True)
    wheel = next(wheels.glob("alpha-1.0-*.whl"))
    wrong = UrlSource(url=wheel.as_uri(), hashes={"sha256": "0" * 64})
    installer = PythonInstaller(env(bare), config(wheels, tool))
    out = installer.install(
        [Package(name="alpha", version="1.0", source=wrong)], reinstall=(), deadline=Deadline(60)
    )
    assert not out.ok and "0" * 64 in out.output
    assert "alpha" not in installed(bare.site_packages)


def test_requirement_carries_the_recorded_hash() -> None:
    """A URL source's recorded sha256 goes on the requirement, beside a subdirectory."""
    digest = "ab" * 32
    source = UrlSource(url="https://h/x-1.tar.gz", hashes={"md5": "cd" * 16, "sha256": digest})
    assert requirement(Package(name="x", version="1", source=source)) == (
        f"x @ https://h/x-1.tar.gz#sha256={digest}"
    )
    sub = UrlSource(url="https://h/x-1.tar.gz", hashes={"sha256": digest}, subdirectory="py")
    assert requirement(Package(name="x", version="1", source=sub)) == (
        f"x @ https://h/x-1.tar.gz#sha256={digest}&subdirectory=py"
    )


def test_pip_runs_with_safe_path_and_uv_without_config(wheels: Path, bare: Venv) -> None:
    """pip is `python -P -m pip` where the interpreter has -P; uv gets --no-config."""
    venv = make_venv(bare.prefix.parent / "withpip", with_pip=True)
    pip = PythonInstaller(
        Environment(kind="python", path=str(venv.prefix), interpreter="3.11.7"),
        config(wheels, "pip"),
    )
    assert pip._command[1:4] == ["-P", "-m", "pip"]
    old = PythonInstaller(
        Environment(kind="python", path=str(venv.prefix), interpreter="3.10.2"),
        config(wheels, "pip"),
    )
    assert old._command[1:3] == ["-m", "pip"]
    uv = PythonInstaller(env(bare), config(wheels, "uv"))
    assert "--no-config" in uv._target


@pytest.mark.parametrize("tool", ["uv", "pip"])
def test_on_a_new_image_artifacts_replace_only_the_same_version_packages(
    tool: str, tmp_path: Path, bare: Venv
) -> None:
    """Under the image's constraints (a new image: the install resolves), the package the
    image ships at the recorded version is replaced from its artifact, beside a new one,
    and nothing else moves: not the image's dependency of it, of which the configured
    find-links hold another build."""
    shipped = tmp_path / "image-wheels"
    build_wheel(Dist("dep", "1.0"), shipped)
    build_wheel(Dist("solo", "1.0", requires=["dep"]), shipped)
    image = [Package(name="dep", version="1.0"), Package(name="solo", version="1.0")]
    made = PythonInstaller(env(bare), config(shipped, "uv"))
    assert made.install(image, reinstall=(), deadline=Deadline(120)).ok
    sources = tmp_path / "sources"
    build_wheel(Dist("dep", "1.0", files=3), sources)
    files = {
        "solo": build_wheel(Dist("solo", "1.0", requires=["dep"], files=2), tmp_path / "a" / "1"),
        "alpha": build_wheel(Dist("alpha", "1.0"), tmp_path / "a" / "2"),
    }
    installer = PythonInstaller(env(bare), config(sources, tool), constraints=["dep==1.0"])
    out = installer.install_artifacts(
        [Package(name="solo", version="1.0"), Package(name="alpha", version="1.0")],
        files,
        reinstall={"solo"},
        deadline=Deadline(120),
    )
    assert out.ok, out.output
    assert (bare.site_packages / "solo" / "m1.py").exists(), "solo from its artifact"
    assert not (bare.site_packages / "dep" / "m2.py").exists(), "the image's dep moved"
    assert installed(bare.site_packages) == {"alpha": "1.0", "dep": "1.0", "solo": "1.0"}


def _look_alike(out: Path) -> Path:
    """Another build of alpha 1.0 (with `m2.py`, which the tests' artifacts lack) under a
    tag pip and uv both rank above the artifact's `py3-none-any`: offered beside the
    artifact, it is the file either installer would take."""
    wheel = build_wheel(Dist("alpha", "1.0", files=3), out)
    major, minor = sys.version_info[:2]
    return wheel.rename(wheel.with_name(f"alpha-1.0-py{major}{minor}-none-any.whl"))


def _installers_config(
    tool: str, tmp_path: Path, links: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The installer's own configuration file naming `links` as find-links: pip.conf by
    PIP_CONFIG_FILE, uv.toml by UV_CONFIG_FILE (what uv reads under --no-config)."""
    if tool == "pip":
        conf = tmp_path / "pip.conf"
        conf.write_text(f"[global]\nfind-links = {links}\n")
        monkeypatch.setenv("PIP_CONFIG_FILE", str(conf))
    else:
        conf = tmp_path / "uv.toml"
        conf.write_text(f'find-links = ["{links}"]\n')
        monkeypatch.setenv("UV_CONFIG_FILE", str(conf))


def _the_artifact_is_installed(installer: PythonInstaller, artifact: Path, bare: Venv) -> None:
    """alpha 1.0 installed from `artifact`, not from a look-alike (`_look_alike`: m2.py)."""
    out = installer.install_artifacts(
        [Package(name="alpha", version="1.0")],
        {"alpha": artifact},
        reinstall=(),
        deadline=Deadline(120),
    )
    assert out.ok, out.output
    assert (bare.site_packages / "alpha" / "m1.py").exists()
    assert not (bare.site_packages / "alpha" / "m2.py").exists(), "the look-alike was installed"


@pytest.mark.parametrize("tool", ["uv", "pip"])
def test_an_artifact_wins_over_the_same_version_in_the_installers_config(
    tool: str, tmp_path: Path, bare: Venv, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A wheel of the artifact's name and version in find-links that pip.conf or
    UV_CONFIG_FILE names is never installed in its place: the verified artifact is."""
    evil = _look_alike(tmp_path / "evil")
    _installers_config(tool, tmp_path, evil.parent, monkeypatch)
    artifact = build_wheel(Dist("alpha", "1.0", files=2), tmp_path / "artifacts")
    installer = PythonInstaller(env(bare), Config(installer=tool, no_index=True))
    _the_artifact_is_installed(installer, artifact, bare)


@pytest.mark.parametrize("tool", ["uv", "pip"])
def test_on_a_new_image_an_artifact_wins_over_the_same_version_in_the_sources(
    tool: str, tmp_path: Path, bare: Venv, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a new image the artifacts' dependencies come from the configured sources, and
    those sources (pkgckpt's find-links, the installer's own configuration) may hold
    another build of the artifact's version: the artifact is still the one installed,
    and its dependency is fetched."""
    sources = tmp_path / "sources"
    build_wheel(Dist("dep", "1.0"), sources)
    _look_alike(sources)
    _installers_config(tool, tmp_path, _look_alike(tmp_path / "evil").parent, monkeypatch)
    artifact = build_wheel(Dist("alpha", "1.0", requires=["dep"], files=2), tmp_path / "a")
    installer = PythonInstaller(env(bare), config(sources, tool), constraints=[])
    _the_artifact_is_installed(installer, artifact, bare)
    assert installed(bare.site_packages) == {"alpha": "1.0", "dep": "1.0"}


def test_auto_takes_pip_where_a_version_is_not_pep440(wheels: Path, bare: Venv) -> None:
    """An environment holding what Ubuntu's apt installs (`distro_info-1.1build1.egg-info`)
    is one uv installs nothing into: `auto` takes pip there, and pip installs beside it;
    `--installer uv` stays uv."""
    info = bare.site_packages / "distro_info-1.1build1.egg-info"
    info.mkdir()
    (info / "PKG-INFO").write_text("Metadata-Version: 1.1\nName: distro-info\nVersion: 1.1build1\n")
    assert PythonInstaller(env(bare), config(wheels, "uv")).name == "uv"
    installer = PythonInstaller(env(bare), config(wheels, "auto"))
    assert installer.name == "pip"
    out = installer.install(
        [Package(name="gamma", version="1.0")], reinstall=(), deadline=Deadline(60)
    )
    # pip 26.3 installs, then fails on the invalid version while printing its summary;
    # restore rescans after a failed batch (restore/__init__.py) and finds gamma in place.
    assert out.ok or (PIP_REFUSES_INVALID and "InvalidVersion" in out.output), out.output
    assert installed(bare.site_packages)["gamma"] == "1.0"


def test_a_non_pep440_entry_of_another_user_does_not_choose_the_installer(
    wheels: Path, bare: Venv
) -> None:
    """Another user who may write a shared environment plants `x-1build1.dist-info`: it
    does not turn `auto` from uv (run with --no-config) to pip, which reads the
    configuration files that user may plant in the prefix."""
    if os.geteuid() != 0:
        pytest.skip("needs root to make an entry another user owns")
    planted = bare.site_packages / "x-1build1.dist-info"
    planted.mkdir()
    os.lchown(planted, 65534, 65534)
    assert PythonInstaller(env(bare), config(wheels, "auto")).name == "uv"


SYSTEM_PYTHON = Path("/usr/bin/python3")


def _externally_managed_python() -> str | None:
    """Why the distribution's Python cannot show PEP 668's refusal here, or None."""
    if not SYSTEM_PYTHON.exists():
        return f"no {SYSTEM_PYTHON}"
    asked = subprocess.run(
        [SYSTEM_PYTHON, "-I", "-c", "import sys, pip; print('%d.%d' % sys.version_info[:2])"],
        capture_output=True, text=True,
    )  # fmt: skip
    if asked.returncode != 0:
        return f"{SYSTEM_PYTHON} has no pip"
    marker = Path(f"/usr/lib/python{asked.stdout.strip()}/EXTERNALLY-MANAGED")
    return None if marker.exists() else f"{marker} does not exist: not externally managed"


def test_a_user_site_of_an_externally_managed_python_is_restored(tmp_path: Path) -> None:
    """On Debian's Python (PEP 668's EXTERNALLY-MANAGED), the user installs into the user
    site with `pip install --user --break-system-packages`. In a new container restore
    installs it back with the same pip, which without the override refuses every package
    ("error: externally-managed-environment")."""
    why = _externally_managed_python()
    if why is not None:
        pytest.skip(why)
    wheels = tmp_path / "wheels"
    build_wheel(Dist("pepalpha", "1.0"), wheels)
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    env = {
        **os.environ,
        "HOME": str(tmp_path / "home"),
        "XDG_RUNTIME_DIR": str(run),
        "PIP_ROOT_USER_ACTION": "ignore",
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "PIP_CONFIG_FILE": os.devnull,
        "PKGCKPT_ARTIFACTS": "0",  # so that pip installs it from the find-links
    }
    env.pop("VIRTUAL_ENV", None)
    pip = [str(SYSTEM_PYTHON), "-m", "pip"]
    flags = ["--store", str(tmp_path / "store"), "--key", "k", "--env", "/usr"]
    flags += ["--baseline", str(tmp_path / "b.json")]

    def pkgckpt(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "pkgckpt", *args], env=env,
                              capture_output=True, text=True, timeout=300)  # fmt: skip

    assert pkgckpt("store", "init", str(tmp_path / "store")).returncode == 0
    made = pkgckpt("baseline", "--env", "/usr", "--output", str(tmp_path / "b.json"))
    assert made.returncode == 0, made.stderr
    put = [*pip, "install", "--user", "--break-system-packages", "--no-index"]
    subprocess.run([*put, "--find-links", str(wheels), "pepalpha"], env=env, check=True)
    snap = pkgckpt("snapshot", *flags)
    assert snap.returncode == 0, snap.stderr
    gone = [*pip, "uninstall", "-y", "--break-system-packages", "pepalpha"]
    subprocess.run(gone, env=env, check=True, capture_output=True)
    restore = pkgckpt("restore", *flags, "--installer", "pip", "--no-index", "--find-links",
                      str(wheels))  # fmt: skip
    assert restore.returncode == 0, restore.stdout + restore.stderr
    assert list(
        (tmp_path / "home").glob(".local/lib/python3*/site-packages/pepalpha-1.0.dist-info")
    )
