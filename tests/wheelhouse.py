"""Real wheels, sdists and venvs for the tests, built here with no network.

A wheel is a zip with a `.dist-info` (PEP 427); writing it directly takes a millisecond
and needs no build backend. Installs then go through the real pip (or uv) into a real
venv, with `--no-index --find-links <wheelhouse>` so nothing is fetched.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import os
import shutil
import subprocess
import sys
import tarfile
import textwrap
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from packaging.utils import canonicalize_name
from packaging.version import Version

PIP_REFUSES_INVALID = Version(importlib.metadata.version("pip")) >= Version("24.1")
"""The pip running the tests (the one restore takes beside pkgckpt) is 24.1 or later: it
installs nothing over an installed non-PEP 440 version ("To proceed this package must be
uninstalled"), and fails printing its summary where one is installed beside."""


def _record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
    return "sha256=" + digest.decode()


@dataclass(frozen=True)
class Dist:
    """A tiny distribution: one import package, optional dependencies and console script."""

    name: str
    version: str
    requires: Sequence[str] = ()
    scripts: Mapping[str, str] = field(default_factory=dict)
    """console script name -> "module:function"."""
    files: int = 1
    """Extra modules, to make a wheel as large as a test needs."""

    @property
    def module(self) -> str:
        return canonicalize_name(self.name).replace("-", "_")

    @property
    def wheel_name(self) -> str:
        return f"{self.module}-{self.version}-py3-none-any.whl"


def build_wheel(dist: Dist, outdir: Path) -> Path:
    """Write `dist` as a wheel into `outdir`; return its path."""
    outdir.mkdir(parents=True, exist_ok=True)
    info = f"{dist.module}-{dist.version}.dist-info"
    body = f"__version__ = {dist.version!r}\n\ndef main():\n    print({dist.name!r}, __version__)\n"
    contents: dict[str, bytes] = {f"{dist.module}/__init__.py": body.encode()}
    for i in range(1, dist.files):
        contents[f"{dist.module}/m{i}.py"] = f"X = {i}\n".encode()
    metadata = [
        "Metadata-Version: 2.1",
        f"Name: {dist.name}",
        f"Version: {dist.version}",
        *(f"Requires-Dist: {r}" for r in dist.requires),
    ]
    contents[f"{info}/METADATA"] = ("\n".join(metadata) + "\n").encode()
    contents[f"{info}/WHEEL"] = (
        b"Wheel-Version: 1.0\nGenerator: pkgckpt-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    )
    if dist.scripts:
        lines = ["[console_scripts]", *(f"{k} = {v}" for k, v in dist.scripts.items())]
        contents[f"{info}/entry_points.txt"] = ("\n".join(lines) + "\n").encode()
    record = [f"{path},{_record_hash(data)},{len(data)}" for path, data in contents.items()]
    record.append(f"{info}/RECORD,,")
    contents[f"{info}/RECORD"] = ("\n".join(record) + "\n").encode()
    path = outdir / dist.wheel_name
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in contents.items():
            zf.writestr(name, data)
    return path


def build_c_sdist(name: str, version: str, outdir: Path) -> Path:
    """An sdist whose C extension must compile at install time (setuptools, no network)."""
    module = canonicalize_name(name).replace("-", "_")
    src = outdir / f".src-{module}-{version}"
    if src.exists():
        shutil.rmtree(src)
    (src / module).mkdir(parents=True)
    (src / module / "__init__.py").write_text("from ._speed import add\n")
    (src / module / "_speed.c").write_text(
        textwrap.dedent(
            """\
            #define PY_SSIZE_T_CLEAN
            #include <Python.h>
            static PyObject *add(PyObject *self, PyObject *args) {
                long a, b;
                if (!PyArg_ParseTuple(args, "ll", &a, &b)) return NULL;
                return PyLong_FromLong(a + b);
            }
            static PyMethodDef methods[] = {{"add", add, METH_VARARGS, NULL}, {NULL}};
            static struct PyModuleDef mod = {PyModuleDef_HEAD_INIT, "_speed", NULL, -1, methods};
            PyMODINIT_FUNC PyInit__speed(void) { return PyModule_Create(&mod); }
            """
        )
    )
    (src / "setup.py").write_text(
        textwrap.dedent(
            f"""\
            from setuptools import Extension, setup
            setup(name={name!r}, version={version!r}, packages=[{module!r}],
                  ext_modules=[Extension("{module}._speed", ["{module}/_speed.c"])])
            """
        )
    )
    (src / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools"]\nbuild-backend = "setuptools.build_meta"\n'
    )
    (src / "PKG-INFO").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    outdir.mkdir(parents=True, exist_ok=True)
    path = outdir / f"{module}-{version}.tar.gz"
    with tarfile.open(path, "w:gz") as tf:
        tf.add(src, arcname=f"{module}-{version}")
    shutil.rmtree(src)
    return path


def add_build_backend(wheelhouse: Path) -> None:
    """Put setuptools (and wheel) wheels in the wheelhouse so sdists build with --no-index."""
    have = {p.name.split("-")[0].lower() for p in wheelhouse.glob("*.whl")}
    need = [n for n in ("setuptools", "wheel") if n not in have]
    if need:
        pip(sys.executable, "download", "-q", "--only-binary=:all:", "-d", str(wheelhouse), *need)


def pip(python: str | Path, *args: str, env: Mapping[str, str] | None = None) -> str:
    """Run the real pip of `python`; return its output, raise with it on failure."""
    run_env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", **(env or {})}
    proc = subprocess.run(
        [str(python), "-m", "pip", *args], capture_output=True, text=True, env=run_env
    )
    if proc.returncode != 0:
        raise AssertionError(f"pip {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout


@dataclass(frozen=True)
class Venv:
    prefix: Path

    @property
    def python(self) -> Path:
        return self.prefix / "bin" / "python"

    @property
    def site_packages(self) -> Path:
        return next((self.prefix / "lib").glob("python3*/site-packages"))

    def install(self, wheelhouse: Path, *reqs: str, extra: Iterable[str] = ()) -> str:
        """`pip install --no-index --find-links wheelhouse REQS` with this venv's own pip."""
        return pip(
            self.python, "install", "--no-index", "--find-links", str(wheelhouse), *extra, *reqs
        )

    def uninstall(self, *names: str) -> str:
        return pip(self.python, "uninstall", "--yes", *names)

    def freeze(self) -> list[str]:
        out = pip(self.python, "freeze", "--all", "--exclude-editable")
        return sorted(line for line in out.splitlines() if line)


def make_venv(prefix: Path, *, with_pip: bool = True) -> Venv:
    """A real venv (with its own pip unless `with_pip` is false: then ~50 ms instead of ~3 s)."""
    if prefix.exists():
        shutil.rmtree(prefix)
    args = [sys.executable, "-m", "venv"]
    if not with_pip:
        args.append("--without-pip")
    subprocess.run([*args, str(prefix)], check=True, capture_output=True)
    return Venv(prefix)
