"""conda environments: conda-meta/ read from prefixes that py-rattler's real installer made
from real .conda packages; conda records in the manifest and the daemon."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import msgspec
import pytest
from conda_kit import CondaPkg, add_history, build_conda, conda_install, conda_remove, index
from daemon_kit import World, eventually, uv_install
from restore_kit import isolated  # noqa: F401 (autouse fixture)
from wheelhouse import Dist, build_wheel, make_venv

from pkgckpt import config, inventory, manifest
from pkgckpt.manifest import Body, Delta, Environment, Package
from pkgckpt.scan.conda import CondaScanner, channel_name, requested
from pkgckpt.store import Store

PACKAGES = [
    CondaPkg("tiny", "1.0"),
    CondaPkg("tiny", "2.0", build="h1_0"),
    CondaPkg("dep", "1.0"),
    CondaPkg("top", "1.0", depends=("dep",)),
]


@pytest.fixture
def private_tmp() -> Iterator[Path]:
    """A directory under /var/tmp rather than /tmp, for discovery: other suites on a shared
    test machine may leave /tmp without its sticky bit, and discovery then rightly refuses
    everything beneath it."""
    path = Path(tempfile.mkdtemp(prefix="pkgckpt-conda-", dir="/var/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def channel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A local channel of real .conda packages, indexed."""
    ch = tmp_path_factory.mktemp("channel")
    for pkg in PACKAGES:
        build_conda(pkg, ch)
    index(ch)
    return ch


def test_scanner_reads_what_a_conda_installer_wrote(tmp_path: Path, channel: Path) -> None:
    """Name, version, build, channel, subdir and digests come from conda-meta's records."""
    prefix = tmp_path / "env"
    conda_install(prefix, channel, "tiny=1.0", "top", cache=tmp_path / "cache")
    add_history(prefix, "update", "tiny=1.0", "conda-forge::top>=1")
    found = CondaScanner(prefix / "conda-meta").scan()
    assert sorted(found.packages) == ["dep", "tiny", "top"]
    tiny = found.packages["tiny"]
    archive = channel / "noarch" / "tiny-1.0-h0_0.conda"
    assert (tiny.version, tiny.build, tiny.subdir, tiny.installer) == (
        "1.0",
        "h0_0",
        "noarch",
        "conda",
    )
    assert tiny.channel == f"file://{channel}"
    assert tiny.sha256 == hashlib.sha256(archive.read_bytes()).hexdigest()
    assert tiny.md5 == hashlib.md5(archive.read_bytes()).hexdigest()
    assert {n: p.requested for n, p in found.packages.items()} == {
        "tiny": True,
        "top": True,
        "dep": False,
    }
    assert found.broken == {}


def test_renewed_names_a_record_written_again(tmp_path: Path, channel: Path) -> None:
    """`--force-reinstall` writes the record anew: renewed; the first scan is not."""
    prefix = tmp_path / "env"
    conda_install(prefix, channel, "tiny=1.0", "top", cache=tmp_path / "cache")
    scanner = CondaScanner(prefix / "conda-meta")
    scanner.scan()
    assert scanner.renewed == frozenset()
    record = prefix / "conda-meta" / "tiny-1.0-h0_0.json"
    staged = record.with_suffix(".new")
    staged.write_bytes(record.read_bytes())
    staged.replace(record)
    scanner.scan()
    assert scanner.renewed == {"tiny"}
    scanner.scan()
    assert scanner.renewed == frozenset()


def test_made_ns_is_when_the_record_was_written(tmp_path: Path, channel: Path) -> None:
    """`made_ns`: the mtime of the package's conda-meta record, which the installer writes
    (what a first scan compares with a forget's time); None for a name not installed."""
    prefix = tmp_path / "env"
    conda_install(prefix, channel, "tiny=1.0", cache=tmp_path / "cache")
    record = prefix / "conda-meta" / "tiny-1.0-h0_0.json"
    os.utime(record, ns=(1_700_000_000_000_000_000, 1_700_000_000_123_456_789))
    scanner = CondaScanner(prefix / "conda-meta")
    scanner.scan()
    assert scanner.made_ns("tiny") == 1_700_000_000_123_456_789
    assert scanner.made_ns("top") is None


def test_history_removals_take_back_what_was_asked_for() -> None:
    """`# remove specs:` undoes an earlier request; neutered specs are not requests."""
    history = (
        "==> 2026-01-01 <==\n# update specs: ['numpy>=1.2', 'conda-forge::scipy']\n"
        "# neutered specs: ['pandas']\n"
        '==> 2026-01-02 <==\n# remove specs: ["scipy"]\n'
        "# install specs: [__import__('os').system('x')]\n"
    )
    assert requested(history) == {"numpy"}


@pytest.mark.parametrize(
    ("channel", "subdir", "name"),
    [
        ("https://conda.anaconda.org/conda-forge/linux-64", "linux-64", "conda-forge"),
        ("https://conda.anaconda.org/conda-forge/", "noarch", "conda-forge"),
        ("file:///srv/chan/", "noarch", "file:///srv/chan"),
        (None, None, None),
        # What must never reach a manifest on a shared store: a password, a token.
        ("https://alice:S3cret@conda.example.org/internal/linux-64", "linux-64",
         "https://conda.example.org/internal"),
        ("https://conda.anaconda.org/t/tk-123-abc/private/noarch", "noarch", "private"),
        ("https://[x/chan", "noarch", None),
    ],
)  # fmt: skip
def test_channel_names(channel: str | None, subdir: str | None, name: str | None) -> None:
    """A record's channel URL is kept as people name the channel, without credentials."""
    assert channel_name(channel, subdir) == name


def test_a_damaged_record_is_broken_not_absent(tmp_path: Path, channel: Path) -> None:
    """A record that does not decode is reported broken (its absence proves nothing), as is
    one planted nested 100,000 deep (its RecursionError ended every scan of the prefix), and
    a history line planted 16 MB long costs no parse."""
    prefix = tmp_path / "env"
    conda_install(prefix, channel, "tiny=1.0", cache=tmp_path / "cache")
    (prefix / "conda-meta" / "dep-1.0-h0_0.json").write_text("{not json")
    # 100,000 deep: Python 3.13's C recursion limit lets msgspec through 1,000 levels.
    deep = (
        '{"name": "deep", "version": "1", "build": "0", "files": ' + "[" * 100_000 + "]" * 100_000
    )
    (prefix / "conda-meta" / "deep-1-0.json").write_text(deep + "}")
    with (prefix / "conda-meta" / "history").open("a") as history:
        history.write("# update specs: [" + "'x', " * 2_000_000 + "]\n")
    found = CondaScanner(prefix / "conda-meta").scan()
    assert list(found.packages) == ["tiny"]
    assert sorted(found.broken) == ["deep-1-0.json", "dep-1.0-h0_0.json"]
    target = inventory.Target(env=Environment(kind="conda", path=str(prefix)),
                              roots=(prefix / "conda-meta",))  # fmt: skip
    target.scan()
    assert target.uncertain() == {"deep", "dep"}


def test_a_conda_installed_distribution_is_condas_not_pips(tmp_path: Path, channel: Path) -> None:
    """In a conda prefix, a dist-info with INSTALLER conda is the conda record's; pip's own
    installs there are Python packages as usual."""
    venv = make_venv(tmp_path / "env", with_pip=False)
    site = venv.site_packages.relative_to(venv.prefix)
    dist = f"{site}/condapy-1.0.dist-info"
    ch = tmp_path / "ch"
    build_conda(CondaPkg("condapy", "1.0", files={
        f"{site}/condapy.py": b"",
        f"{dist}/METADATA": b"Metadata-Version: 2.1\nName: condapy\nVersion: 1.0\n",
        f"{dist}/INSTALLER": b"conda\n",
        f"{dist}/RECORD": b"",
    }), ch)  # fmt: skip
    index(ch)
    conda_install(venv.prefix, ch, "condapy", cache=tmp_path / "cache")
    wheels = tmp_path / "wheels"
    build_wheel(Dist("alpha", "1.0"), wheels)
    uv_install(venv.python, wheels, "alpha==1.0", env=World.make(tmp_path).env)
    cfg = config.load({"env": (str(venv.prefix),)}, environ={})
    found = {t.env.kind: t.scan() for t in inventory.targets(cfg) if not t.env.user}
    assert [p.name for p in found["python"].packages] == ["alpha"]
    assert [p.name for p in found["conda"].packages] == ["condapy"]


class OldEnvironment(msgspec.Struct, kw_only=True):
    """Environment as a reader from before conda support declares it."""

    kind: Literal["python", "r"]
    path: str


class OldDelta(msgspec.Struct, kw_only=True):
    env: OldEnvironment
    added: tuple[dict[str, object], ...] = ()


class OldBody(msgspec.Struct, kw_only=True):
    environments: tuple[OldDelta, ...] = ()


def test_a_reader_without_conda_support_still_reads_the_manifest() -> None:
    """An older reader (Python and R kinds only) decodes a body holding conda records."""
    py = Delta(env=Environment(kind="python", path="/p"), added=(Package(name="a", version="1"),))
    conda = Delta(env=Environment(kind="conda", path="/p"),
                  added=(Package(name="tiny", version="1.0", build="h0_0"),))  # fmt: skip
    data = manifest.encode_body(Body.of([py, conda]))
    old = msgspec.json.decode(data, type=OldBody)
    assert [(d.env.kind, d.env.path) for d in old.environments] == [("python", "/p")]
    assert msgspec.json.decode(data, type=Body).delta(conda.env) == conda


def test_a_new_build_of_the_same_version_is_a_change() -> None:
    """conda rebuilds keep the version: the build string tells them apart in the diff."""
    a = Package(name="tiny", version="1.0", build="h0_0")
    b = Package(name="tiny", version="1.0", build="h1_0")
    (change,) = manifest.diff({"tiny": a}, {"tiny": b}, "conda")
    assert (change.action, change.old, change.new) == ("upgrade", "1.0", "1.0")


# -- the daemon ---------------------------------------------------------------------------


def conda_recorded(world: World, prefix: Path) -> dict[str, list[str]]:
    found = Store(world.store, world.key).read()
    if found is None:
        return {}
    d = found.body.delta(Environment(kind="conda", path=str(prefix)))
    if d is None:
        return {}
    return {
        "added": sorted(f"{p.name}={p.version}={p.build}" for p in d.added),
        "changed": sorted(f"{p.name}={p.version}={p.build}" for p in d.changed),
        "removed": sorted(f"{p.name}={p.version}={p.build}" for p in d.removed),
    }


@pytest.mark.slow
def test_conda_installs_upgrades_and_removals_are_checkpointed(
    tmp_path: Path, channel: Path
) -> None:
    """The daemon records conda changes against the baseline like Python ones."""
    world = World.make(tmp_path)
    cache = tmp_path / "cache"
    prefix = tmp_path / "env"
    conda_install(prefix, channel, "tiny=1.0", "dep", cache=cache)  # the image's
    base = world.pkgckpt("baseline", "--env", str(prefix), "--output", str(tmp_path / "b.json"))
    assert base.returncode == 0, base.stderr
    then = time.time_ns() - 3600 * 10**9
    for entry in (prefix / "conda-meta").iterdir():
        os.utime(entry, ns=(then, then))
    d = world.daemon(*world.flags(prefix), "--baseline", str(tmp_path / "b.json"),
                     "--quiet-ms", "100")  # fmt: skip
    d.start()
    try:
        conda_install(prefix, channel, "tiny=2.0", "top", cache=cache)
        want = {"added": ["top=1.0=h0_0"], "changed": ["tiny=2.0=h1_0"], "removed": []}
        eventually(lambda: conda_recorded(world, prefix) == want, what="install")
        conda_remove(prefix, "top", "dep", cache=cache)
        want = {"added": [], "changed": ["tiny=2.0=h1_0"], "removed": ["dep=1.0=h0_0"]}
        eventually(lambda: conda_recorded(world, prefix) == want, what="remove")
    except AssertionError:
        print(d.output(), conda_recorded(world, prefix))
        raise
    finally:
        d.close()


@pytest.mark.slow
def test_a_discovered_conda_environment_keeps_condas_distributions_out_of_pips(
    private_tmp: Path,
) -> None:
    """A conda environment listed while the daemon runs: a conda install of a Python
    package there is recorded as the conda package, not as a pip distribution."""
    tmp_path = private_tmp
    world = World.make(tmp_path)
    home = tmp_path / "home"
    (home / ".conda").mkdir(parents=True)
    for var in ("JUPYTER_PATH", "JUPYTER_DATA_DIR", "XDG_DATA_HOME", "CONDA_ENVS_PATH"):
        world.env.pop(var, None)
    world.env.update(HOME=str(home))
    venv = make_venv(tmp_path / "env", with_pip=False)
    site = venv.site_packages.relative_to(venv.prefix)
    ch = tmp_path / "ch"
    build_conda(CondaPkg("condapy", "1.0", files={
        f"{site}/condapy.py": b"",
        f"{site}/condapy-1.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: condapy\n"
                                                  b"Version: 1.0\n",
        f"{site}/condapy-1.0.dist-info/INSTALLER": b"conda\n",
        f"{site}/condapy-1.0.dist-info/RECORD": b"",
    }), ch)  # fmt: skip
    index(ch)
    conda_install(venv.prefix, ch, cache=tmp_path / "cache")  # an empty conda environment
    d = world.daemon("--store", str(world.store), "--key", world.key, "--quiet-ms", "100")
    d.start()
    try:
        (home / ".conda" / "environments.txt").write_text(f"{venv.prefix}\n")
        eventually(lambda: f"tracking {venv.prefix}" in d.output(), what="tracking")
        conda_install(venv.prefix, ch, "condapy", cache=tmp_path / "cache")
        want = {"added": ["condapy=1.0=h0_0"], "changed": [], "removed": []}
        eventually(lambda: conda_recorded(world, venv.prefix) == want, what="condapy")
        # The daemon rescans every root and commits (one writer): pip's side has been read.
        snap = world.pkgckpt("snapshot", "--store", str(world.store), "--key", world.key)
        assert snap.returncode == 0, snap.stderr
        found = Store(world.store, world.key).read()
        assert found is not None
        python = found.body.delta(Environment(kind="python", path=str(venv.prefix)))
        assert python is None or python.is_empty()
    finally:
        d.close()


def test_forget_and_revert_keep_the_conda_records() -> None:
    """Forgetting a pip package or reverting leaves conda records where they are; a conda
    package can be forgotten by its name."""
    from pkgckpt import record
    from pkgckpt.manifest import Manifest

    py = Delta(env=Environment(kind="python", path="/p"), added=(Package(name="a", version="1"),))
    conda = Delta(env=Environment(kind="conda", path="/p"),
                  added=(Package(name="tiny", version="1.0", build="h0_0"),))  # fmt: skip
    body = Body.of([py, conda])
    after = record.forgotten(body, ["a"], stamp="t")
    assert after.conda == (conda,) and after.delta(py.env) is not None
    assert not after.delta(py.env).added  # type: ignore[union-attr]
    gone = record.forgotten(body, ["tiny"], stamp="t")
    assert gone.delta(conda.env).added == ()  # type: ignore[union-attr]
    back = record.reverted(gone, Manifest(generation=1, body=body), "t2")
    assert back.delta(conda.env).added == conda.added  # type: ignore[union-attr]
