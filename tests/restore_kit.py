"""Shared pieces of the restore tests and benchmarks: hermetic installer settings, sdists
with a tiny in-tree build backend (slow or broken on purpose, no setuptools needed), a
manifest put on a store, and the real `pkgckpt restore` command."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
import textwrap
from collections.abc import Mapping
from pathlib import Path

import pytest

from pkgckpt import manifest
from pkgckpt.config import DISCOVER
from pkgckpt.manifest import Body, Manifest
from pkgckpt.store import init_store


def hermetic(tmp: Path) -> dict[str, str]:
    """Environment variables that keep this machine's pip/uv/R settings out of a test."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "UV_", "PKGCKPT_"))}
    env.pop("R_LIBS_USER", None)
    env.update(
        PIP_CONFIG_FILE=os.devnull,
        PIP_DISABLE_PIP_VERSION_CHECK="1",
        UV_NO_CONFIG="1",
        UV_CACHE_DIR=str(tmp / "uv-cache"),
        XDG_RUNTIME_DIR=str(tmp / "run"),
        XDG_CONFIG_HOME=str(tmp / "config"),
        # The machine's own R libraries are not the test's: R tests name theirs.
        PKGCKPT_DISCOVER=os.pathsep.join(d for d in DISCOVER if d != "r"),
        # Captures commit generations of their own, in the background: tests that count
        # generations or commits switch the cache on only where it is their subject.
        PKGCKPT_ARTIFACTS="0",
    )
    return env


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Installers inherit our environment: give them this test's settings only (autouse in
    every test module that imports it)."""
    for key in list(os.environ):
        if key.startswith(("PIP_", "UV_", "PKGCKPT_")) or key == "R_LIBS_USER":
            monkeypatch.delenv(key)
    for key, value in hermetic(tmp_path).items():
        monkeypatch.setenv(key, value)


def installed(site_packages: Path) -> dict[str, str]:
    """name -> version of the dist-infos in a site-packages, straight from the directory."""
    found = {}
    for info in site_packages.glob("*.dist-info"):
        name, version = info.name.removesuffix(".dist-info").rsplit("-", 1)
        found[name] = version
    return found


def backend_sdist(name: str, version: str, outdir: Path, build_wheel: str) -> Path:
    """An sdist whose in-tree build backend runs `build_wheel` (Python source, indented 4)."""
    module = name.replace("-", "_")
    root = f"{module}-{version}"
    files = {
        "pyproject.toml": (
            '[build-system]\nrequires = []\nbuild-backend = "backend"\nbackend-path = ["."]\n'
        ),
        "backend.py": "import os, sys, time\n\n"
        "def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):\n"
        + textwrap.indent(textwrap.dedent(build_wheel), "    "),
        "PKG-INFO": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
    }
    outdir.mkdir(parents=True, exist_ok=True)
    path = outdir / f"{root}.tar.gz"
    with tarfile.open(path, "w:gz") as tf:
        for rel, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(f"{root}/{rel}")
            info.size = len(data)
            info.mode = 0o644
            tf.addfile(info, io.BytesIO(data))
    return path


def broken_sdist(name: str, version: str, outdir: Path) -> Path:
    """An sdist whose build always fails with a recognizable message."""
    return backend_sdist(
        name,
        version,
        outdir,
        f'print("BUILD FAILED: {name} cannot be built here", file=sys.stderr)\n'
        "raise SystemExit(1)\n",
    )


def slow_sdist(name: str, version: str, outdir: Path, pidfile: Path) -> Path:
    """An sdist whose build writes its pid to `pidfile` and then hangs."""
    return backend_sdist(
        name,
        version,
        outdir,
        f"open({str(pidfile)!r}, 'w').write(str(os.getpid()))\ntime.sleep(600)\n",
    )


def put_manifest(store: Path, key: str, body: Body | bytes, generation: int = 1) -> Path:
    """Write a manifest (a body, encoded with a valid checksum, or raw bytes) as the store
    would: `<store>/<key>/manifest.json`, directories 0700, file 0600."""
    directory = store / key
    store.mkdir(parents=True, exist_ok=True, mode=0o700)
    store.chmod(0o700)
    init_store(store)
    directory.mkdir(exist_ok=True, mode=0o700)
    directory.chmod(0o700)
    data = (
        body
        if isinstance(body, bytes)
        else manifest.encode(
            Manifest(generation=generation, time="2024-01-01T00:00:00+00:00", body=body)
        )
    )
    path = directory / "manifest.json"
    path.write_bytes(data)
    path.chmod(0o600)
    return path


def pkgckpt(
    *args: str, env: Mapping[str, str], timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """The real command: `python -m pkgckpt ARGS`, output captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "pkgckpt", *args],
        capture_output=True,
        text=True,
        env=dict(env),
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


_BACKEND = """\
import base64, hashlib, os, tarfile, zipfile

NAME, VERSION, MODULE = {name!r}, {version!r}, {module!r}
HERE = os.path.dirname(os.path.abspath(__file__))


def _wheel(directory, files):
    info = f"{{MODULE}}-{{VERSION}}.dist-info"
    files = dict(files)
    metadata = f"Metadata-Version: 2.1\\nName: {{NAME}}\\nVersion: {{VERSION}}\\n"
    files[f"{{info}}/METADATA"] = metadata.encode()
    files[f"{{info}}/WHEEL"] = (
        b"Wheel-Version: 1.0\\nGenerator: t\\nRoot-Is-Purelib: true\\nTag: py3-none-any\\n"
    )
    record = []
    for path, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{{path}},sha256={{digest}},{{len(data)}}")
    files[f"{{info}}/RECORD"] = ("\\n".join(record) + f"\\n{{info}}/RECORD,,\\n").encode()
    name = f"{{MODULE}}-{{VERSION}}-py3-none-any.whl"
    with zipfile.ZipFile(os.path.join(directory, name), "w") as zf:
        for path, data in files.items():
            zf.writestr(path, data)
    return name


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    with open(os.path.join(HERE, MODULE, "__init__.py"), "rb") as f:
        return _wheel(wheel_directory, {{f"{{MODULE}}/__init__.py": f.read()}})


def build_editable(wheel_directory, config_settings=None, metadata_directory=None):
    return _wheel(wheel_directory, {{f"__editable__.{{MODULE}}.pth": (HERE + "\\n").encode()}})


def build_sdist(sdist_directory, config_settings=None):
    base = f"{{MODULE}}-{{VERSION}}"
    with tarfile.open(os.path.join(sdist_directory, base + ".tar.gz"), "w:gz") as tf:
        for entry in ("pyproject.toml", "backend.py", "PKG-INFO", MODULE):
            tf.add(os.path.join(HERE, entry), arcname=f"{{base}}/{{entry}}")
    return base + ".tar.gz"
"""


def project(name: str, version: str, root: Path) -> Path:
    """A source tree (an in-tree PEP 517/660 backend, no setuptools) that builds `name`."""
    module = name.replace("-", "_")
    (root / module).mkdir(parents=True)
    (root / module / "__init__.py").write_text(f"VERSION = {version!r}\n")
    (root / "pyproject.toml").write_text(
        '[build-system]\nrequires = []\nbuild-backend = "backend"\nbackend-path = ["."]\n'
        f'[project]\nname = "{name}"\nversion = "{version}"\n'
    )
    (root / "PKG-INFO").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (root / "backend.py").write_text(_BACKEND.format(name=name, version=version, module=module))
    return root
