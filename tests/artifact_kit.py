"""Shared pieces of the artifact cache tests: a wheelhouse with a console script, a C
sdist and a git repository, RECORD hashes of an installed environment, the store's
artifacts."""

from __future__ import annotations

import csv
import shutil
import subprocess
from pathlib import Path

from daemon_kit import World
from wheelhouse import Dist, Venv, add_build_backend, build_c_sdist, build_wheel, make_venv

from pkgckpt.store import Store


def cache_on(world: World) -> World:
    """`world` with the artifact cache on (the shared test settings switch it off)."""
    world.env["PKGCKPT_ARTIFACTS"] = "1"
    return world


def baselined_venv(world: World, tmp: Path) -> tuple[Venv, list[str]]:
    """A venv at `tmp/venv` whose baseline `pkgckpt baseline` took, empty, to
    `tmp/baseline.json`, and the flags that name the world's store and key, the venv and
    that baseline."""
    venv = make_venv(tmp / "venv")
    baseline = tmp / "baseline.json"
    made = world.pkgckpt("baseline", "--env", str(venv.prefix), "--output", str(baseline))
    assert made.returncode == 0, made.stderr
    return venv, [*world.flags(venv.prefix), "--baseline", str(baseline)]


def make_wheelhouse(out: Path) -> Path:
    """An app with a console script and a dependency, a C sdist, setuptools and wheel."""
    for dist in [
        Dist("app", "1.0", requires=["libdep>=1"], scripts={"app-cli": "app:main"}),
        Dist("libdep", "1.0"),
    ]:
        build_wheel(dist, out)
    build_c_sdist("fastmath", "1.0", out)
    add_build_backend(out)
    return out


def make_git_repo(root: Path) -> Path | None:
    """A git repository of a setuptools project with a console script; None without git."""
    if shutil.which("git") is None:
        return None
    root.mkdir(parents=True)
    (root / "gitpkg").mkdir()
    (root / "gitpkg" / "__init__.py").write_text("def main():\n    print('gitpkg 0.3')\n")
    (root / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools"]\nbuild-backend = "setuptools.build_meta"\n'
        '[project]\nname = "gitpkg"\nversion = "0.3"\n'
        '[project.scripts]\ngitpkg = "gitpkg:main"\n'
    )
    git = ["git", "-C", str(root), "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "gitpkg 0.3"], check=True)
    return root


def record_hashes(site: Path) -> dict[str, str]:
    """`<dist-info>/<path>` -> RECORD hash of every installed file, scripts (outside the
    site directory), bytecode and the installer's own files (INSTALLER, REQUESTED,
    RECORD, uv's cache marker) left out."""
    found: dict[str, str] = {}
    for info in sorted(site.glob("*.dist-info")):
        with (info / "RECORD").open(newline="") as f:
            for row in csv.reader(f):
                path, digest = row[0], row[1] if len(row) > 1 else ""
                name = path.rsplit("/", 1)[-1]
                if path.startswith("..") or "__pycache__" in path or path.endswith(".pyc"):
                    continue
                if name in ("INSTALLER", "REQUESTED", "RECORD", "uv_cache.json"):
                    continue
                found[f"{info.name}/{path}"] = digest
    return found


def artifacts(store: Path, key: str) -> dict[str, int]:
    """The key's artifacts on the store: name -> size."""
    return {name: st.st_size for name, st in Store(store, key).artifacts().items()}


def big_wheel(out: Path, name: str, megabytes: int) -> Path:
    """A wheel holding `megabytes` of random (incompressible) data: slow to capture."""
    import base64
    import hashlib
    import os
    import zipfile

    info = f"{name}-1.0.dist-info"
    files = {
        f"{name}/__init__.py": b"",
        f"{name}/blob.bin": os.urandom(megabytes << 20),
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n".encode(),
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: t\nRoot-Is-Purelib: true\n"
        b"Tag: py3-none-any\n",
    }

    def digest(data: bytes) -> str:
        raw = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
        return "sha256=" + raw.decode()

    rows = [f"{p},{digest(d)},{len(d)}" for p, d in files.items()] + [f"{info}/RECORD,,"]
    files[f"{info}/RECORD"] = ("\n".join(rows) + "\n").encode()
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for member, data in files.items():
            zf.writestr(member, data)
    return path
