"""Which captured wheels fit an environment (`pkgckpt.wheeltags`), and what deciding it
loads."""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig

import msgspec
import pytest
from packaging.utils import parse_wheel_filename

from pkgckpt import artifacts
from pkgckpt.manifest import Artifact, Environment, Package
from pkgckpt.wheeltags import fits, wheel_tags

HERE = sysconfig.get_platform().replace("-", "_").replace(".", "_")
PY = f"{sys.version_info[0]}.{sys.version_info[1]}.0"
CP = f"cp{sys.version_info[0]}{sys.version_info[1]}"
ENV = Environment(kind="python", path="/opt/venv", interpreter=PY, implementation="cpython")


def _artifact(file: str) -> Artifact:
    return Artifact(file=file, sha256="0" * 64, size=1)


@pytest.mark.parametrize(
    "name",
    [
        "six-1.16.0-py2.py3-none-any.whl",
        "fastmath-1.0-cp311-cp311-linux_x86_64.whl",
        "numpy-2.1.0-1build-cp312-cp312-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
        "Foo_Bar-0.1-pp310-pypy310_pp73-manylinux_2_28_aarch64.whl",
    ],
)
def test_wheel_tags_are_packagings(name: str) -> None:
    """The tags read from a name are those packaging's own wheel-name parser gives."""
    assert wheel_tags(name) == parse_wheel_filename(name)[3]


@pytest.mark.parametrize(
    "name",
    ["six-1.16.0.tar.gz", "six-py3-none-any.whl", "a-1-2-3-py3-none-any.whl", "a--py3-none-.whl"],
)
def test_anything_else_has_no_tags(name: str) -> None:
    assert wheel_tags(name) is None


def test_a_wheel_fits_by_its_tags_on_this_machine() -> None:
    """A pure wheel and one built for this interpreter and machine fit; one for another
    Python, another machine or another implementation does not, with the reason."""
    assert fits(ENV, _artifact("six-1.16.0-py2.py3-none-any.whl")) is None
    assert fits(ENV, _artifact("0123456789abcdef/six-1.16.0-py2.py3-none-any.whl")) is None
    assert fits(ENV, _artifact(f"fastmath-1.0-{CP}-{CP}-{HERE}.whl")) is None
    newer = fits(ENV, _artifact("fastmath-1.0-cp399-cp399-linux_x86_64.whl"))
    assert newer == f"its tags (cp399-cp399-linux_x86_64) do not fit cpython {PY}"
    other = "linux_s390x" if HERE != "linux_s390x" else "linux_x86_64"
    assert fits(ENV, _artifact(f"fastmath-1.0-{CP}-{CP}-{other}.whl")) is not None
    # PyPy's ABI is not recorded: never this process's ABI, whose tags look alike.
    pypy = Environment(kind="python", path="/pypy", interpreter=PY, implementation="pypy")
    assert fits(pypy, _artifact(f"fastmath-1.0-{CP}-{CP}-{HERE}.whl")) is not None
    pp = f"pp{sys.version_info[0]}{sys.version_info[1]}"
    assert fits(pypy, _artifact(f"fastmath-1.0-{pp}-pypy{pp[2:]}_pp73-{HERE}.whl")) is not None
    assert fits(pypy, _artifact("six-1.16.0-py2.py3-none-any.whl")) is None


def test_the_recorded_abi_decides_not_this_processs() -> None:
    """A free-threaded 3.13t takes cp313t wheels, not the plain ABI's nor abi3 ones, and a
    plain 3.13 not the free-threaded ones, whatever build pkgckpt itself runs on; a debug
    build takes its plain ABI's too; a PyPy whose ABI is recorded takes its binary wheels."""
    ft = Environment(
        kind="python", path="/ft", interpreter="3.13.1", implementation="cpython", abi="cp313t"
    )
    assert fits(ft, _artifact(f"x-1.0-cp313-cp313t-{HERE}.whl")) is None
    assert fits(ft, _artifact(f"x-1.0-cp313-cp313-{HERE}.whl")) == (
        f"its tags (cp313-cp313-{HERE}) do not fit cpython 3.13.1 (cp313t)"
    )
    assert fits(ft, _artifact(f"x-1.0-cp39-abi3-{HERE}.whl")) is not None
    assert fits(ft, _artifact("six-1.16.0-py3-none-any.whl")) is None
    plain = msgspec.structs.replace(ft, abi="cp313")
    assert fits(plain, _artifact(f"x-1.0-cp313-cp313-{HERE}.whl")) is None
    assert fits(plain, _artifact(f"x-1.0-cp39-abi3-{HERE}.whl")) is None
    assert fits(plain, _artifact(f"x-1.0-cp313-cp313t-{HERE}.whl")) is not None
    unrecorded = msgspec.structs.replace(ft, abi=None)
    assert fits(unrecorded, _artifact(f"x-1.0-cp313-cp313-{HERE}.whl")) is None
    assert fits(unrecorded, _artifact(f"x-1.0-cp313-cp313t-{HERE}.whl")) is not None
    debug = msgspec.structs.replace(ft, abi="cp313d")
    assert fits(debug, _artifact(f"x-1.0-cp313-cp313d-{HERE}.whl")) is None
    assert fits(debug, _artifact(f"x-1.0-cp313-cp313-{HERE}.whl")) is None
    pypy = Environment(
        kind="python", path="/pypy", interpreter="3.10.14", implementation="pypy",
        abi="pypy310_pp73",
    )  # fmt: skip
    assert fits(pypy, _artifact(f"x-1.0-pp310-pypy310_pp73-{HERE}.whl")) is None
    assert fits(pypy, _artifact(f"x-1.0-pp39-pypy39_pp73-{HERE}.whl")) is not None
    assert fits(pypy, _artifact(f"x-1.0-cp310-cp310-{HERE}.whl")) is not None


def test_an_unknown_interpreter_or_name_fits_nothing() -> None:
    unknown = Environment(kind="python", path="/opt/venv")
    assert fits(unknown, _artifact("six-1.16.0-py3-none-any.whl")) == (
        "the interpreter's version is not known"
    )
    assert fits(ENV, _artifact("six-1.16.0.tar.gz")) == "six-1.16.0.tar.gz is not a wheel's name"
    r = Environment(kind="conda", path="/opt/conda")
    package = Package(name="six", version="1.16.0", artifact=_artifact("six-1.16.0.tar.bz2"))
    assert artifacts.fits(r, package) == "conda packages are not captured"


def test_deciding_a_fit_loads_no_capturer() -> None:
    """Restore asks of every artifact whether it fits: that loads packaging.tags, not the
    wheel capturer with its zipfile and csv (nor packaging's version parser)."""
    code = (
        "import json, sys; from pkgckpt import artifacts; "
        "from pkgckpt.manifest import Artifact, Environment, Package; "
        f"env = Environment(kind='python', path='/v', interpreter={PY!r}); "
        "a = Artifact(file='m-1.0-py3-none-any.whl', sha256='0' * 64, size=1); "
        "before = set(sys.modules); "
        "assert artifacts.fits(env, Package(name='m', version='1.0', artifact=a)) is None; "
        "print(json.dumps(sorted(set(sys.modules) - before)))"
    )
    done = subprocess.run(
        [sys.executable, "-I", "-c", code], capture_output=True, text=True, check=True
    )
    loaded = set(json.loads(done.stdout))
    assert "packaging.tags" in loaded
    assert not loaded & {"pkgckpt.artifacts.wheel", "zipfile", "csv", "packaging.version"}
