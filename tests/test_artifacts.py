"""The artifact cache with real pip and uv: what a capture packs, what restore refuses
(tampered, truncated, missing, unfit, hostile), the quota and its GC."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import msgspec
import pytest
from artifact_kit import artifacts, baselined_venv, cache_on, make_wheelhouse
from daemon_kit import World
from wheelhouse import Venv, make_venv

from pkgckpt.artifacts import ArtifactRefused, Job, capturer, fetch, fits
from pkgckpt.artifacts.quota import collect, protected
from pkgckpt.config import Config
from pkgckpt.errors import StoreError, Uncapturable
from pkgckpt.manifest import Artifact, Body, Delta, Environment, Package, UrlSource
from pkgckpt.store import Store, artifact_name

pytestmark = pytest.mark.slow

PY = f"{sys.version_info[0]}.{sys.version_info[1]}"


def _hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def _data_wheel(out: Path) -> Path:
    """A wheel with a console script, a `#!python` script, data and a header: every
    place RECORD can point outside the site directory."""
    info = "datapkg-2.0.dist-info"
    files = {
        "datapkg/__init__.py": b"def main():\n    print('datapkg')\n",
        "datapkg-2.0.data/scripts/tool": b"#!python\nimport datapkg\ndatapkg.main()\n",
        "datapkg-2.0.data/data/share/datapkg/notes.txt": b"notes\n",
        "datapkg-2.0.data/headers/datapkg.h": b"int datapkg(void);\n",
        f"{info}/METADATA": b"Metadata-Version: 2.1\nName: datapkg\nVersion: 2.0\n",
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: t\nRoot-Is-Purelib: true\nBuild: 7\n"
        b"Tag: py3-none-any\n",
        f"{info}/entry_points.txt": b"[console_scripts]\ndatapkg-cli = datapkg:main\n",
    }
    return _pack(out / "datapkg-2.0-7-py3-none-any.whl", info, files)


def _pack(path: Path, info: str, files: dict[str, bytes]) -> Path:
    """`files` zipped to `path` with their RECORD, scripts executable."""
    rows = [f"{p},{_hash(d)},{len(d)}" for p, d in files.items()] + [f"{info}/RECORD,,"]
    files = {**files, f"{info}/RECORD": ("\n".join(rows) + "\n").encode()}
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            info_ = zipfile.ZipInfo(name)
            info_.external_attr = (0o100755 if "scripts" in name else 0o100644) << 16
            zf.writestr(info_, data)
    return path


def test_a_capture_puts_every_file_back_where_the_wheel_had_it(tmp_path: Path) -> None:
    """Scripts, data and headers return to `.data/`; the generated console script, the
    bytecode and the installer's files stay out; WHEEL (build number) and METADATA are
    the installed bytes; the RECORD hashes are those of the packed files."""
    wheel = _data_wheel(tmp_path / "wheels")
    venv = make_venv(tmp_path / "venv")
    venv.install(wheel.parent, "datapkg")
    site = venv.site_packages
    assert (venv.prefix / "bin" / "datapkg-cli").exists()
    assert not (venv.prefix / "bin" / "tool").read_bytes().startswith(b"#!python")
    env = Environment(kind="python", path=str(venv.prefix), interpreter=PY)
    job = Job(env=env, roots=(site,), package=Package(name="datapkg", version="2.0"))
    out = tmp_path / "out"
    out.mkdir()
    built = capturer("python").capture(job, out)
    assert built.name == "datapkg-2.0-7-py3-none-any.whl"
    with zipfile.ZipFile(built) as zf:
        names = set(zf.namelist())
        assert zf.read("datapkg-2.0.data/scripts/tool").startswith(b"#!python\n")
        info = "datapkg-2.0.dist-info"
        assert zf.read(f"{info}/WHEEL") == (site / info / "WHEEL").read_bytes()
        assert zf.read(f"{info}/METADATA") == (site / info / "METADATA").read_bytes()
        record = zf.read(f"{info}/RECORD").decode().splitlines()
        for row in record:
            path, digest, _ = row.split(",")
            if digest:
                assert _hash(zf.read(path)) == digest, path
    assert names == {
        "datapkg/__init__.py",
        "datapkg-2.0.data/scripts/tool",
        "datapkg-2.0.data/data/share/datapkg/notes.txt",
        "datapkg-2.0.data/headers/datapkg.h",
        f"{info}/METADATA",
        f"{info}/WHEEL",
        f"{info}/entry_points.txt",
        f"{info}/RECORD",
    }
    again = tmp_path / "again"
    again.mkdir()
    assert capturer("python").capture(job, again).read_bytes() == built.read_bytes()


def test_headers_data_under_include_and_scripts_come_back_where_they_were(
    tmp_path: Path,
) -> None:
    """Installed by pip, captured, installed again from the capture: every file under
    `include/` at its path, whether the wheel shipped it as a header in a directory named
    like the package (`headers/hdrpkg/inner.h`) or as data under `include/hdrpkg/`; a
    script's `#!/usr/bin/env python3 -u` as shipped, and only the `#!` line pip wrote
    for `#!python` back to `#!python`."""
    info = "hdrpkg-1.0.dist-info"
    files = {
        "hdrpkg/__init__.py": b"",
        "hdrpkg-1.0.data/headers/hdrpkg/inner.h": b"int inner(void);\n",
        "hdrpkg-1.0.data/data/include/hdrpkg/api.h": b"int api(void);\n",
        "hdrpkg-1.0.data/scripts/envscript": b"#!/usr/bin/env python3 -u\nprint('env')\n",
        "hdrpkg-1.0.data/scripts/fixed": b"#!python\nprint('fixed')\n",
        f"{info}/METADATA": b"Metadata-Version: 2.1\nName: hdrpkg\nVersion: 1.0\n",
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: t\nRoot-Is-Purelib: true\n"
        b"Tag: py3-none-any\n",
    }
    first, job = _installed(tmp_path, tmp_path / "first", "hdrpkg", files)
    out = tmp_path / "out"
    out.mkdir()
    built = capturer("python").capture(job, out)
    with zipfile.ZipFile(built) as zf:
        assert zf.read("hdrpkg-1.0.data/scripts/fixed").startswith(b"#!python\n")
        assert (
            zf.read("hdrpkg-1.0.data/scripts/envscript")
            == files["hdrpkg-1.0.data/scripts/envscript"]
        )
    again = make_venv(tmp_path / "again")
    again.install(out, "hdrpkg")

    def include(venv: Venv) -> dict[str, bytes]:
        top = venv.prefix / "include"
        return {p.relative_to(top).as_posix(): p.read_bytes() for p in top.rglob("*.h")}

    assert include(again) == include(first)
    assert f"site/python{PY}/hdrpkg/hdrpkg/inner.h" in include(again)
    assert "hdrpkg/api.h" in include(again)
    bins = (again.prefix / "bin", first.prefix / "bin")
    assert (bins[0] / "envscript").read_bytes() == (bins[1] / "envscript").read_bytes()
    assert (bins[0] / "fixed").read_bytes().startswith(f"#!{again.python}".encode())


def test_a_file_changed_since_its_install_is_not_packed(tmp_path: Path) -> None:
    """A file whose bytes are not RECORD's (an upgrade replacing the package while it is
    packed, an edit) makes the package uncapturable, with the file named: packed, the
    artifact would mix two installs under one version. RECORD's own rows without a hash
    are not checked. A version not installed is "not installed here", not "no longer":
    a restore may have held it back in this container."""
    wheel = _data_wheel(tmp_path / "wheels")
    venv = make_venv(tmp_path / "venv")
    venv.install(wheel.parent, "datapkg")
    env = Environment(kind="python", path=str(venv.prefix), interpreter=PY)
    job = Job(env=env, roots=(venv.site_packages,), package=Package(name="datapkg", version="2.0"))
    out = tmp_path / "out"
    out.mkdir()
    capturer("python").capture(job, out)
    changed = venv.site_packages / "datapkg" / "__init__.py"
    changed.write_bytes(changed.read_bytes() + b"# 2.1\n")
    again = tmp_path / "again"
    again.mkdir()
    with pytest.raises(Uncapturable, match=f"{changed} is not the file that was installed"):
        capturer("python").capture(job, again)
    other = Job(env=env, roots=job.roots, package=Package(name="datapkg", version="2.1"))
    with pytest.raises(Uncapturable, match=r"datapkg 2\.1 is not installed here"):
        capturer("python").capture(other, again)


def _big_venv(tmp_path: Path, size: int) -> tuple[Venv, Job, dict[str, bytes]]:
    """A venv holding `bigpkg`: a `size`-byte data file and a script longer than a read
    (`wheel._CHUNK`), with `#!python` as shipped."""
    info = "bigpkg-1.0.dist-info"
    files = {
        "bigpkg/__init__.py": b"",
        "bigpkg/blob.bin": bytes(size),
        "bigpkg-1.0.data/scripts/long": b"#!python\n" + b"# padding\n" * (300 << 10),
        f"{info}/METADATA": b"Metadata-Version: 2.1\nName: bigpkg\nVersion: 1.0\n",
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: t\nRoot-Is-Purelib: true\n"
        b"Tag: py3-none-any\n",
    }
    venv, job = _installed(tmp_path, tmp_path / "venv", "bigpkg", files)
    return venv, job, files


def _installed(
    tmp_path: Path, prefix: Path, name: str, files: dict[str, bytes]
) -> tuple[Venv, Job]:
    """A venv at `prefix` into which pip installed the wheel of `files` (`name` 1.0, any
    Python), and the job that captures it."""
    wheel = _pack(
        tmp_path / "wheels" / f"{name}-1.0-py3-none-any.whl", f"{name}-1.0.dist-info", files
    )
    venv = make_venv(prefix)
    venv.install(wheel.parent, name)
    env = Environment(kind="python", path=str(venv.prefix), interpreter=PY)
    return venv, Job(
        env=env, roots=(venv.site_packages,), package=Package(name=name, version="1.0")
    )


_PEAK = """
import resource, sys
from pathlib import Path
from pkgckpt.artifacts import Job, capturer
from pkgckpt.manifest import Environment, Package
out, prefix, site, py = sys.argv[1:]
env = Environment(kind="python", path=prefix, interpreter=py)
job = Job(env=env, roots=(Path(site),), package=Package(name="bigpkg", version="1.0"))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
built = capturer("python").capture(job, Path(out))
print(built, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
"""


def test_a_large_file_is_packed_a_chunk_at_a_time(tmp_path: Path) -> None:
    """A capture's memory does not grow with the size of a file it packs: a 1.5 GB shared
    library (torch, CUDA) read whole would take its size, twice, in the notebook's
    container. Packed in chunks, the wheel is what one whole read packed: the data file's
    bytes, and the script's `#!python` line restored across reads."""
    size = 96 << 20
    venv, _job, files = _big_venv(tmp_path, size)
    out = tmp_path / "out"
    out.mkdir()
    where = [str(out), str(venv.prefix), str(venv.site_packages), PY]
    done = subprocess.run(
        [sys.executable, "-c", _PEAK, *where], capture_output=True, check=True, text=True
    )
    built, grown = done.stdout.split()
    # KiB: the whole file would be 98,304 more.
    assert int(grown) < 16 << 10, f"peak RSS grew by {grown} KiB packing a {size >> 20} MiB file"
    with zipfile.ZipFile(built) as zf:
        with zf.open("bigpkg/blob.bin") as blob:
            assert hashlib.sha256(blob.read()).digest() == hashlib.sha256(bytes(size)).digest()
        script = zf.read("bigpkg-1.0.data/scripts/long")
        assert script == files["bigpkg-1.0.data/scripts/long"]
        for row in zf.read("bigpkg-1.0.dist-info/RECORD").decode().splitlines():
            path, digest, length = row.split(",")
            if digest:
                data = zf.read(path)
                assert (_hash(data), int(length)) == (digest, len(data)), path


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to bind-mount a file")
def test_a_file_that_reads_longer_than_its_size_is_not_packed(tmp_path: Path) -> None:
    """A file that yields more bytes than its size said (one growing while it is packed;
    here /proc/version bind-mounted over it: a regular file of size 0) is not packed: the
    wheel would hold bytes its size did not count."""
    _venv, job, _files = _big_venv(tmp_path, 1 << 10)
    blob = job.roots[0] / "bigpkg" / "blob.bin"
    subprocess.run(["mount", "--bind", "/proc/version", str(blob)], check=True)
    try:
        out = tmp_path / "out"
        out.mkdir()
        with pytest.raises(Uncapturable, match=f"{blob} grew while it was read"):
            capturer("python").capture(job, out)
    finally:
        subprocess.run(["umount", str(blob)], check=True)


def test_an_editable_install_is_not_captured_and_says_why(tmp_path: Path) -> None:
    """Editable and directory installs live in the user's directory: never captured."""
    from pkgckpt.artifacts import uncapturable
    from pkgckpt.manifest import DirectorySource

    editable = Package(name="x", version="1", source=DirectorySource(path="/p", editable=True))
    assert "editable" in (uncapturable(editable) or "")
    plain = Package(name="x", version="1", source=DirectorySource(path="/p"))
    assert "directory" in (uncapturable(plain) or "")


# -- restore: a snapshot taken once, copied for each test ----------------------------------


@dataclass
class Captured:
    world: World
    wheels: Path
    prefix: Path
    flags: list[str]
    freeze: list[str]


@pytest.fixture(scope="module")
def captured(tmp_path_factory: pytest.TempPathFactory) -> Captured:
    """app (console script) and libdep installed from wheels, then `pkgckpt snapshot`."""
    tmp = tmp_path_factory.mktemp("captured")
    world = cache_on(World.make(tmp))
    wheels = make_wheelhouse(tmp / "wheels")
    venv = make_venv(tmp / "venv")
    baseline = tmp / "baseline.json"
    made = world.pkgckpt("baseline", "--env", str(venv.prefix), "--output", str(baseline))
    assert made.returncode == 0, made.stderr
    venv.install(wheels, "app")
    flags = [*world.flags(venv.prefix), "--baseline", str(baseline)]
    snap = world.pkgckpt("snapshot", *flags)
    assert snap.returncode == 0, snap.stderr
    assert set(artifacts(world.store, world.key)) == {
        "app-1.0-py3-none-any.whl",
        "libdep-1.0-py3-none-any.whl",
    }
    return Captured(world, wheels, venv.prefix, flags, venv.freeze())


@pytest.fixture
def fresh(captured: Captured, tmp_path: Path) -> Captured:
    """A copy of the captured store and a fresh venv at the recorded path."""
    store = tmp_path / "store"
    shutil.copytree(captured.world.store, store, symlinks=True)
    world = World(tmp=captured.world.tmp, env=dict(captured.world.env), store=store)
    shutil.rmtree(world.runtime, ignore_errors=True)
    make_venv(captured.prefix, with_pip=False)
    flags = [a if a != str(captured.world.store) else str(store) for a in captured.flags]
    return Captured(world, captured.wheels, captured.prefix, flags, captured.freeze)


def _artifact(c: Captured, name: str) -> Path:
    return c.world.store / c.world.key / "artifacts" / name


def _restore(c: Captured, *extra: str) -> subprocess.CompletedProcess[str]:
    return c.world.pkgckpt("restore", *c.flags, "--installer", "uv", *extra, timeout=300)


def _freeze(prefix: Path) -> list[str]:
    out = subprocess.run(
        ["uv", "pip", "freeze", "--python", str(prefix / "bin" / "python")],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return sorted(line for line in out.stdout.splitlines() if line and not line.startswith("pip"))


def _pip_free(freeze: list[str]) -> list[str]:
    return [line for line in freeze if not line.startswith(("pip=", "setuptools="))]


def test_restore_from_artifacts_needs_no_index(fresh: Captured) -> None:
    """`--no-index` without find-links: every package comes from its artifact."""
    done = _restore(fresh, "--no-index")
    assert done.returncode == 0, done.stdout + done.stderr
    assert _freeze(fresh.prefix) == _pip_free(fresh.freeze)
    script = subprocess.run([str(fresh.prefix / "bin" / "app-cli")], capture_output=True, text=True)
    assert script.stdout.strip() == "app 1.0"


def _tamper(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:100])


def _delete(path: Path) -> None:
    path.unlink()


def _grow(path: Path) -> None:
    with path.open("ab") as f:
        f.write(b"\0" * 4096)


DAMAGE = {"tampered": _tamper, "truncated": _truncate, "missing": _delete, "grown": _grow}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_artifact_is_never_installed_and_fails_naming_its_hash(
    fresh: Captured, damage: str
) -> None:
    """With no index allowed, a damaged artifact fails its package (exit 3, the recorded
    sha256 in the message); the intact one still installs from its artifact."""
    path = _artifact(fresh, "app-1.0-py3-none-any.whl")
    recorded = _recorded(fresh, "app")
    DAMAGE[damage](path)
    # The preview says so too, where a size tells: what it can see without reading.
    preview = _restore(fresh, "--no-index", "--dry-run")
    assert preview.returncode == 0, preview.stdout + preview.stderr
    if damage == "tampered":
        assert "install app 1.0, its artifact" in preview.stdout, preview.stdout
    else:
        assert "cannot  app 1.0: artifact refused: app-1.0-py3-none-any.whl" in preview.stdout
        assert "its source cannot be used either" not in preview.stdout
        assert "no index is allowed" in preview.stdout, preview.stdout
    done = _restore(fresh, "--no-index")
    assert done.returncode == 3, done.stdout + done.stderr
    assert recorded.sha256 in done.stdout, done.stdout
    if damage == "grown":
        assert f"more than its recorded {recorded.size} bytes" in done.stdout, done.stdout
    freeze = _freeze(fresh.prefix)
    assert "libdep==1.0" in freeze and not any(line.startswith("app==") for line in freeze)


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_artifact_falls_back_to_the_index_and_says_so(
    fresh: Captured, damage: str
) -> None:
    """With find-links allowed, the package installs from its source and the report
    says why its artifact was not used. Bytes that are there and wrong leave the record
    (a missing file stays recorded: it may come back, and a snapshot finds it gone), so
    that the next snapshot captures the package again, under another name as the old one
    holds other bytes; then a restore needs no index again."""
    recorded = _recorded(fresh, "app")
    DAMAGE[damage](_artifact(fresh, "app-1.0-py3-none-any.whl"))
    done = _restore(fresh, "--no-index", "--find-links", str(fresh.wheels), "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    (report,) = json.loads(done.stdout)["environments"]
    assert any("app 1.0: artifact refused" in n for n in report["notes"]), report
    assert _freeze(fresh.prefix) == _pip_free(fresh.freeze)
    dropped = [] if damage == "missing" else [msgspec.to_builtins(recorded)]
    assert report["damaged"] == dropped, report
    after = _recorded_or_none(fresh, "app")
    assert after == (recorded if damage == "missing" else None)

    snap = fresh.world.pkgckpt("snapshot", *fresh.flags, timeout=300)
    assert snap.returncode == 0 and "not captured" not in snap.stdout, snap.stdout + snap.stderr
    again = _recorded(fresh, "app")
    assert again.sha256 == recorded.sha256, "the same install, packed the same way"
    make_venv(fresh.prefix, with_pip=False)
    alone = _restore(fresh, "--no-index")
    assert alone.returncode == 0, alone.stdout + alone.stderr
    assert _freeze(fresh.prefix) == _pip_free(fresh.freeze)


def _recorded_or_none(c: Captured, name: str) -> Artifact | None:
    found = Store(c.world.store, c.world.key).read()
    assert found is not None
    (p,) = (p for d in found.body.deltas() for p in d.added if p.name == name)
    return p.artifact


def _recorded(c: Captured, name: str) -> Artifact:
    found = Store(c.world.store, c.world.key).read()
    assert found is not None
    artifact = next(
        p.artifact for d in found.body.deltas() for p in d.added if p.name == name and p.artifact
    )
    return artifact


def _rewrite(c: Captured, name: str, artifact: Artifact) -> None:
    """Commit the manifest with `name`'s artifact replaced (as a writer of the key)."""
    store = Store(c.world.store, c.world.key)
    found = store.read()
    assert found is not None
    deltas = []
    for d in found.body.deltas():
        added = tuple(
            msgspec.structs.replace(p, artifact=artifact) if p.name == name else p for p in d.added
        )
        deltas.append(msgspec.structs.replace(d, added=added))
    store.commit(Body.of(deltas, found.body.events))


def test_a_wheel_whose_tags_do_not_fit_is_never_used_and_restore_says_so(
    fresh: Captured,
) -> None:
    """An artifact for another interpreter is not installed: the index is used instead,
    and the report says why, the dry run too; with no index the package fails with that
    reason."""
    good = _recorded(fresh, "app")
    other = "app-1.0-cp27-cp27mu-linux_x86_64.whl"
    shutil.copy(_artifact(fresh, good.file), _artifact(fresh, other))
    _rewrite(fresh, "app", msgspec.structs.replace(good, file=other))
    alone = _restore(fresh, "--no-index")
    assert alone.returncode == 3, alone.stdout
    assert "do not fit" in alone.stdout, alone.stdout
    plan = _restore(fresh, "--no-index", "--find-links", str(fresh.wheels), "--dry-run")
    assert f"install app 1.0, not its artifact {other} (" in plan.stdout, plan.stdout
    assert "do not fit" in plan.stdout and "first" not in plan.stdout, plan.stdout
    done = _restore(fresh, "--no-index", "--find-links", str(fresh.wheels))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "do not fit" in done.stdout, done.stdout
    assert _freeze(fresh.prefix) == _pip_free(fresh.freeze)


@pytest.mark.parametrize(
    "name",
    [
        "../../../etc/x.whl",
        "R-4.4/../../x.whl",
        "/abs.whl",
        ".hidden.whl",
        "a/b/c.whl",
        "0123456789abcdef/0123456789abcdef/x.whl",
        "0123456789abcdef/R-4.4/x.tar.gz",
        "0123456789ABCDEF/x.whl",
        "0123456789abcde/x.whl",
    ],
)
def test_an_artifact_name_that_climbs_out_is_refused(tmp_path: Path, name: str) -> None:
    """Names from a manifest never leave `<key>/artifacts/`: refused before any open."""
    with pytest.raises(StoreError):
        artifact_name(name)
    package = Package(name="x", version="1", artifact=Artifact(file=name, sha256="0" * 64, size=1))
    store = Store(tmp_path, "k")
    with pytest.raises(ArtifactRefused):
        fetch(store, Config(store=tmp_path, key="k"), package, tmp_path)


def test_an_artifact_named_for_another_package_is_refused(fresh: Captured) -> None:
    """A writer of the key gives app the bytes of libdep's artifact, a copy under its
    hash's directory, hash and size right: two artifacts of one restore by one file name,
    and neither named for app. It is not app's: app comes from its source, libdep from
    its own artifact, and the restore says why."""
    libdep = _recorded(fresh, "libdep")
    copy = f"{libdep.sha256[:16]}/{libdep.file}"
    _artifact(fresh, copy).parent.mkdir(mode=0o700)
    shutil.copyfile(_artifact(fresh, libdep.file), _artifact(fresh, copy))
    _artifact(fresh, copy).chmod(0o600)
    _rewrite(fresh, "app", msgspec.structs.replace(libdep, file=copy))
    done = _restore(fresh, "--no-index", "--find-links", str(fresh.wheels))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{copy} is not named for app" in done.stdout, done.stdout
    assert _freeze(fresh.prefix) == _pip_free(fresh.freeze)


@pytest.mark.parametrize(
    ("name", "file", "ours"),
    [
        ("my-pkg", "my_pkg-1.0-py3-none-any.whl", True),
        ("Zope.Interface", "zope_interface-1.0-py3-none-any.whl", True),
        ("typing_extensions", "0123456789abcdef/typing_extensions-1.0-py3-none-any.whl", True),
        ("my-pkg", "my-1.0-py3-none-any.whl", False),
        ("my", "my_pkg-1.0-py3-none-any.whl", False),
    ],
)
def test_a_wheel_is_named_for_its_package_as_wheels_write_names(
    name: str, file: str, ours: bool
) -> None:
    """A wheel's file name writes its project's `-` and `.` as `_` and keeps its case: a
    name with several parts is its own, another project's is not."""
    env = Environment(
        kind="python", path="/v", interpreter=f"{sys.version_info[0]}.{sys.version_info[1]}.0"
    )
    artifact = Artifact(file=file, sha256="0" * 64, size=1)
    why = fits(env, Package(name=name, version="1.0", artifact=artifact))
    assert (why is None) is ours, why


def test_an_artifact_staged_twice_is_refused_the_second_time(
    fresh: Captured, tmp_path: Path
) -> None:
    """A record that names one package twice in an environment (no pkgckpt writes one)
    stages its artifact once: the second copy is refused, not an internal error."""
    package = Package(name="libdep", version="1.0", artifact=_recorded(fresh, "libdep"))
    store = Store(fresh.world.store, fresh.world.key)
    config = Config(store=fresh.world.store, key=fresh.world.key)
    fetch(store, config, package, tmp_path)
    with pytest.raises(ArtifactRefused, match="another artifact of this restore"):
        fetch(store, config, package, tmp_path)


def test_a_symlinked_artifact_is_refused(fresh: Captured, tmp_path: Path) -> None:
    """An artifact that is a symbolic link is not followed (the store refuses it)."""
    path = _artifact(fresh, "app-1.0-py3-none-any.whl")
    real = tmp_path / "elsewhere.whl"
    shutil.move(path, real)
    path.symlink_to(real)
    done = _restore(fresh, "--no-index")
    assert done.returncode == 3, done.stdout
    assert "symbolic link" in done.stdout, done.stdout


# -- quota and GC ----------------------------------------------------------------------


def test_a_capture_over_the_quota_is_skipped_and_reported(tmp_path: Path) -> None:
    """With a quota smaller than a wheel, snapshot still commits, exits 0, and names each
    package it could not capture and why; status says the same."""
    world = cache_on(World.make(tmp_path))
    wheels = make_wheelhouse(tmp_path / "wheels")
    venv = make_venv(tmp_path / "venv", with_pip=False)
    baseline = tmp_path / "baseline.json"
    world.pkgckpt("baseline", "--env", str(venv.prefix), "--output", str(baseline))
    subprocess.run(
        ["uv", "pip", "install", "--python", str(venv.python), "--no-index",
         "--find-links", str(wheels), "app"],
        check=True, capture_output=True, env=world.env,
    )  # fmt: skip
    world.env["PKGCKPT_ARTIFACT_QUOTA"] = "200"
    flags = [*world.flags(venv.prefix), "--baseline", str(baseline)]
    snap = world.pkgckpt("snapshot", *flags)
    assert snap.returncode == 0, snap.stderr
    assert "not captured (2)" in snap.stdout, snap.stdout
    assert "over the artifact quota" in snap.stdout
    assert artifacts(world.store, world.key) == {}
    assert world.generation() == 1
    status = world.pkgckpt("status", *flags)
    assert "artifacts:  0 (0 B of a 200 B quota)" in status.stdout, status.stdout
    assert "app==1.0" in status.stdout and "over the artifact quota" in status.stdout


def _put(store: Store, name: str, size: int, age: int) -> None:
    src = store.root / f"src-{name.replace('/', '-')}"
    src.write_bytes(b"x" * size)
    fd = os.open(src, os.O_RDONLY)
    try:
        store.put_artifact(name, fd, hashlib.sha256(b"x" * size).hexdigest())
    finally:
        os.close(fd)
    path = store.path / "artifacts" / name
    os.utime(path, (1_000_000 + age, 1_000_000 + age))


def test_a_key_holding_r_and_python_artifacts_lists_them_all(tmp_path: Path) -> None:
    """Listing `R-x.y/` closed the descriptor of `artifacts/` it went on listing: a wheel
    after it in the directory failed with EBADF, and the quota, GC and status with it.
    The directory's order is the file system's: wheels are added until one is listed
    after `R-4.4`."""
    from pkgckpt.store import init_store

    init_store(tmp_path)
    store = Store(tmp_path, "k")
    r = "R-4.4/b_1.0_R_x86_64-pc-linux-gnu.tar.gz"
    _put(store, r, 20, 0)
    wheels: list[str] = []
    listed: list[str] = ["R-4.4"]
    while listed[-1] == "R-4.4" and len(wheels) < 256:
        wheels.append(f"a{len(wheels)}-1-py3-none-any.whl")
        _put(store, wheels[-1], 10, 0)
        listed = [p.name for p in (store.path / "artifacts").iterdir()]
    assert listed[-1] != "R-4.4"
    assert {n: st.st_size for n, st in store.artifacts().items()} == {
        r: 20,
        **dict.fromkeys(wheels, 10),
    }


_TWO_BUILDS = """
import hashlib, json, os, sys
from pathlib import Path
from pkgckpt.store import Store, init_store

root, name = Path(sys.argv[1]), sys.argv[2]
root.mkdir()
init_store(root)
store = Store(root, "k")
put = []
for data in (b"one", b"one", b"two", b"two"):
    (root / "src").write_bytes(data)
    fd = os.open(root / "src", os.O_RDONLY)
    put.append(store.put_artifact(name, fd, hashlib.sha256(data).hexdigest()))
    os.close(fd)
listed = sorted(store.artifacts())
store.remove_artifact(put[2])
print(json.dumps({"put": put, "listed": listed, "left": sorted(store.artifacts())}))
"""


@pytest.mark.parametrize("links", [True, False], ids=["hard-links", "no-hard-links"])
@pytest.mark.parametrize(
    "name", ["a-1.0-py3-none-any.whl", "R-4.4/a_1.0_R_x86_64-pc-linux-gnu.tar.gz"]
)
def test_a_name_holding_other_bytes_keeps_them_and_the_new_goes_under_its_hash(
    tmp_path: Path, name: str, links: bool
) -> None:
    """The bytes a manifest may still record stay where they are; the same bytes again are
    not stored twice; the other build goes to `<sha256[:16]>/` beside the name, is listed
    (for the quota and GC), and its directory goes with it. On a file system without hard
    links (strace makes `linkat` fail with EPERM) the same."""
    inject: list[str] = []
    if not links:
        if subprocess.run(["strace", "-V"], capture_output=True, check=False).returncode != 0:
            pytest.skip("no strace")
        inject = ["strace", "-f", "-o", os.devnull, "-e", "inject=linkat:error=EPERM"]
    done = subprocess.run(
        [*inject, sys.executable, "-c", _TWO_BUILDS, str(tmp_path / "store"), name],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    got = msgspec.json.decode(done.stdout)
    parent, _, base = name.rpartition("/")
    other = "/".join(filter(None, (parent, hashlib.sha256(b"two").hexdigest()[:16], base)))
    assert got == {
        "put": [name, name, other, other],
        "listed": sorted([name, other]),
        "left": [name],
    }
    key = tmp_path / "store" / "k" / "artifacts"
    assert (key / name).read_bytes() == b"one"
    assert not (key / other).parent.exists()


def _body(*names: str) -> Body:
    env = Environment(kind="python", path="/venv")
    packages = tuple(
        Package(
            name=n.split("-")[0], version="1", artifact=Artifact(file=n, sha256="0" * 64, size=1)
        )
        for n in names
    )
    return Body.of([Delta(env=env, added=packages)])


def test_gc_removes_the_least_recently_referenced_and_never_a_kept_generations(
    tmp_path: Path,
) -> None:
    """Over the quota, unreferenced artifacts go oldest first; one referenced by any kept
    generation (not only the current one) stays even when the quota is still exceeded."""
    from pkgckpt.store import init_store

    init_store(tmp_path)
    store = Store(tmp_path, "k", keep=3)
    store.commit(_body("old-1-py3-none-any.whl"))
    store.commit(_body("cur-1-py3-none-any.whl"))
    for name, age in [
        ("old-1-py3-none-any.whl", 0),
        ("cur-1-py3-none-any.whl", 1),
        ("gone-1-py3-none-any.whl", 5),
        ("gonetoo-1-py3-none-any.whl", 9),
    ]:
        _put(store, name, 100, age)
    keep = protected(store, _body("cur-1-py3-none-any.whl"))
    assert keep == {"old-1-py3-none-any.whl", "cur-1-py3-none-any.whl"}
    assert collect(store, 400, keep) == []
    assert collect(store, 300, keep) == ["gone-1-py3-none-any.whl"]
    assert collect(store, 50, keep) == ["gonetoo-1-py3-none-any.whl"]
    assert set(store.artifacts()) == keep


def test_snapshot_lists_editable_and_directory_installs_as_not_captured(tmp_path: Path) -> None:
    """An editable install and a directory install stay recorded, get no artifact, and
    snapshot and status name each with its reason; the wheel install is captured."""
    world = cache_on(World.make(tmp_path))
    wheels = make_wheelhouse(tmp_path / "wheels")
    venv = make_venv(tmp_path / "venv")
    baseline = tmp_path / "baseline.json"
    world.pkgckpt("baseline", "--env", str(venv.prefix), "--output", str(baseline))
    for name in ("edited", "copied"):
        project = tmp_path / name
        (project / name).mkdir(parents=True)
        (project / name / "__init__.py").write_text("")
        (project / "pyproject.toml").write_text(
            '[build-system]\nrequires = ["setuptools"]\nbuild-backend = "setuptools.build_meta"\n'
            f'[project]\nname = "{name}"\nversion = "0.1"\n'
        )
    venv.install(wheels, "libdep")
    venv.install(wheels, "-e", str(tmp_path / "edited"))
    venv.install(wheels, str(tmp_path / "copied"))
    flags = [*world.flags(venv.prefix), "--baseline", str(baseline)]
    snap = world.pkgckpt("snapshot", *flags, timeout=300)
    assert snap.returncode == 0, snap.stderr
    assert "not captured (2)" in snap.stdout, snap.stdout
    assert "edited==0.1" in snap.stdout and "an editable install" in snap.stdout
    assert "copied==0.1" in snap.stdout and "installed from a directory" in snap.stdout
    assert set(artifacts(world.store, world.key)) == {"libdep-1.0-py3-none-any.whl"}
    status = world.pkgckpt("status", *flags)
    assert "without an artifact (2)" in status.stdout, status.stdout
    assert "an editable install" in status.stdout


def test_snapshot_captures_again_an_artifact_deleted_from_the_key(tmp_path: Path) -> None:
    """A recorded artifact removed from `<key>/artifacts/` is named missing by `status`;
    the next snapshot captures it again from the package still installed at that
    version (same bytes, same name, same generation), and `status` no longer names it."""
    world = cache_on(World.make(tmp_path))
    wheels = make_wheelhouse(tmp_path / "wheels")
    venv, flags = baselined_venv(world, tmp_path)
    venv.install(wheels, "libdep")
    assert world.pkgckpt("snapshot", *flags, timeout=300).returncode == 0
    generation = world.generation()
    path = world.store / world.key / "artifacts" / "libdep-1.0-py3-none-any.whl"
    data = path.read_bytes()
    path.unlink()
    status = world.pkgckpt("status", *flags)
    assert "missing (1)" in status.stdout and "libdep==1.0" in status.stdout, status.stdout

    again = world.pkgckpt("snapshot", *flags, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    assert path.read_bytes() == data
    assert world.generation() == generation
    assert "missing" not in world.pkgckpt("status", *flags).stdout


def test_an_artifact_that_leaves_the_record_is_dated_then(tmp_path: Path) -> None:
    """GC's order is "least recently referenced": the artifact an upgrade dropped from the
    record is dated at that commit, the one still referenced keeps its date."""
    import time

    from pkgckpt.artifacts.quota import note_dropped
    from pkgckpt.store import init_store

    init_store(tmp_path)
    store = Store(tmp_path, "k")
    store.commit(_body("a-1-py3-none-any.whl", "b-1-py3-none-any.whl"))
    _put(store, "a-1-py3-none-any.whl", 10, 0)
    _put(store, "b-1-py3-none-any.whl", 10, 0)
    before = _body("a-1-py3-none-any.whl", "b-1-py3-none-any.whl")
    note_dropped(store, before, _body("b-1-py3-none-any.whl"))
    dated = store.artifacts()
    assert dated["a-1-py3-none-any.whl"].st_mtime > time.time() - 60
    assert dated["b-1-py3-none-any.whl"].st_mtime == 1_000_000


class _Stop(Exception):
    """What the test's signal handler raises, as the worker's SIGTERM handler does."""


def test_a_signal_mid_write_leaves_no_temp_file_and_no_artifact(tmp_path: Path) -> None:
    """A signal whose handler raises while `put_artifact` copies a large file: the
    exception comes through, and neither the temp file nor the artifact is left."""
    import signal

    from pkgckpt.store import init_store

    init_store(tmp_path / "store")
    store = Store(tmp_path / "store", "k")
    source = tmp_path / "big.whl"
    with source.open("wb") as f:
        f.truncate(256 << 20)  # sparse: quick to make, 16 copy rounds of 16 MiB to write

    def stop(signum: int, frame: object) -> None:
        raise _Stop

    old = signal.signal(signal.SIGALRM, stop)
    fd = os.open(source, os.O_RDONLY)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.005)
        with pytest.raises(_Stop):
            store.put_artifact("big-1-py3-none-any.whl", fd, "0" * 64)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        os.close(fd)
    assert list((tmp_path / "store" / "k" / "artifacts").iterdir()) == []


def test_a_fallback_that_fails_too_is_not_said_to_be_installed_from_its_source(
    fresh: Captured, tmp_path: Path
) -> None:
    """A tampered artifact whose source the find-links do not hold either: the report
    says the source was tried and fails the package (exit 3). It said "installed from
    its source" beside the failure, of a package that was not installed."""
    _tamper(_artifact(fresh, "app-1.0-py3-none-any.whl"))
    empty = tmp_path / "empty"
    empty.mkdir()
    done = _restore(fresh, "--no-index", "--find-links", str(empty))
    assert done.returncode == 3, done.stdout + done.stderr
    assert "failed to install app 1.0" in done.stdout, done.stdout
    assert "app 1.0: artifact refused" in done.stdout, done.stdout
    assert "installed from its source" not in done.stdout, done.stdout
    assert "its source was tried and failed too" in done.stdout, done.stdout


def test_snapshot_captures_a_wheel_installed_from_its_file(tmp_path: Path) -> None:
    """`pip install ./x.whl` records a URL source with hashes (a dict): snapshot with no
    daemon captured it, then crashed joining the results, and the artifact it wrote was
    never referenced."""
    world = cache_on(World.make(tmp_path))
    wheels = make_wheelhouse(tmp_path / "wheels")
    venv, flags = baselined_venv(world, tmp_path)
    venv.install(wheels, str(wheels / "libdep-1.0-py3-none-any.whl"))
    snap = world.pkgckpt("snapshot", *flags, timeout=300)
    assert snap.returncode == 0, snap.stderr
    (libdep,) = world.delta().added
    assert isinstance(libdep.source, UrlSource) and libdep.source.hashes, libdep.source
    assert libdep.artifact is not None
    assert set(artifacts(world.store, world.key)) == {libdep.artifact.file}


def test_two_builds_under_one_wheel_name_each_keep_their_artifact(tmp_path: Path) -> None:
    """libdep 1.0 from the wheelhouse in one venv and from its file in another pack to
    different bytes (`direct_url.json`) under one wheel name. The second capture wrote
    over the first, whose record then named a hash the store no longer held: restore
    refused it as tampered. Each keeps its own now, and restores from it, offline."""
    world = cache_on(World.make(tmp_path))
    wheels = make_wheelhouse(tmp_path / "wheels")
    one, two = make_venv(tmp_path / "one"), make_venv(tmp_path / "two")
    baseline = tmp_path / "baseline.json"
    envs = [str(a) for v in (one, two) for a in ("--env", v.prefix)]
    world.pkgckpt("baseline", *envs, "--output", str(baseline))
    one.install(wheels, "libdep")
    two.install(wheels, str(wheels / "libdep-1.0-py3-none-any.whl"))
    flags = [*world.flags(one.prefix, two.prefix), "--baseline", str(baseline)]
    snap = world.pkgckpt("snapshot", *flags, timeout=300)
    assert snap.returncode == 0, snap.stderr
    manifest = world.manifest()
    assert manifest is not None
    recorded = [p.artifact for d in manifest.body.environments for p in d.added]
    assert len(recorded) == 2 and all(a is not None for a in recorded), recorded
    assert len({a.sha256 for a in recorded if a is not None}) == 2, "the same bytes twice"
    for a in recorded:
        assert a is not None
        assert hashlib.sha256(_artifact_bytes(world, a.file)).hexdigest() == a.sha256, a
    for venv in (one, two):
        make_venv(venv.prefix, with_pip=False)
    restore = world.pkgckpt("restore", *flags, "--installer", "uv", "--no-index", timeout=300)
    assert restore.returncode == 0, restore.stdout + restore.stderr
    assert "refused" not in restore.stdout + restore.stderr
    assert _freeze(one.prefix) == ["libdep==1.0"]
    (from_file,) = _freeze(two.prefix)
    assert from_file.startswith("libdep @ file://"), from_file


def _artifact_bytes(world: World, name: str) -> bytes:
    return (world.store / world.key / "artifacts" / name).read_bytes()
