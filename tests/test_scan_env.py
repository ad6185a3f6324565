"""Finding a prefix's site directories by asking its interpreter, or guessing without it."""

from __future__ import annotations

import platform
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from pkgckpt.errors import ScanError
from pkgckpt.scan.env import python_env
from tests.wheelhouse import make_venv


def test_venv_is_described_by_its_own_interpreter(tmp_path: Path) -> None:
    """A real venv: its site-packages, version, implementation and platform tag."""
    venv = make_venv(tmp_path / "venv", with_pip=False)
    env = python_env(venv.prefix)
    assert env.python == venv.prefix / "bin" / "python3"
    assert env.site_dirs == (venv.site_packages,)
    assert env.version == platform.python_version()
    assert env.implementation == sys.implementation.name
    assert env.platform == sysconfig.get_platform().replace("-", "_").replace(".", "_")
    assert env.user_site is None, "a venv without system site packages hides the user site"
    e = env.environment()
    assert (e.kind, e.path, e.user, e.interpreter) == (
        "python",
        str(venv.prefix),
        False,
        env.version,
    )


def _packagings_abi(python: str) -> str | None:
    """The ABI tag packaging, run by `python` itself, gives its first tag; None: this
    packaging does not run there."""
    import packaging

    where = str(Path(packaging.__file__).parent.parent)
    code = "from packaging.tags import sys_tags; print(next(iter(sys_tags())).abi)"
    done = subprocess.run(
        [python, "-I", "-c", f"import sys; sys.path.insert(0, {where!r}); {code}"],
        capture_output=True,
        text=True,
    )
    return done.stdout.strip() if done.returncode == 0 else None


def test_the_abi_is_the_interpreters_own_as_packaging_reads_it() -> None:
    """The ABI tag recorded is what packaging, inside that interpreter, calls its ABI: for
    this Python and every other CPython pyenv has here. Where this packaging does not run
    (3.7 to 3.9), the interpreter's own `sys.abiflags` says (3.7's carries its `m`)."""
    pyenv = sorted(map(str, Path.home().glob(".pyenv/versions/3.*/bin/python3")))
    checked = []
    for python in [sys.executable, *pyenv]:
        prefix, abiflags = subprocess.check_output(
            [python, "-I", "-c", "import sys; print(sys.prefix); print('cp%d%d%s' % ("
             "sys.version_info[0], sys.version_info[1], sys.abiflags))"],
            text=True,
        ).splitlines()  # fmt: skip
        found = python_env(Path(prefix))
        assert found.abi == (_packagings_abi(python) or abiflags), python
        assert found.environment().abi == found.abi
        checked.append(f"{python}: {found.abi}")
    print(f"ABI tags checked for {len(checked)} interpreters: {checked}")


def test_user_site_is_reported_when_the_interpreter_enables_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A venv with system site packages sees the user site, existing or not yet."""
    prefix = tmp_path / "venv"
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", "--system-site-packages", str(prefix)],
        check=True,
    )
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("PYTHONUSERBASE", raising=False)
    monkeypatch.delenv("PYTHONNOUSERSITE", raising=False)
    env = python_env(prefix)
    assert env.user_site is not None
    assert env.user_site.is_relative_to(home)
    assert not env.user_site.exists()
    assert env.environment(user=True).user is True


def test_noise_printed_by_a_pth_file_does_not_confuse_the_probe(tmp_path: Path) -> None:
    """A .pth that prints at startup (it happens) still leaves a correct answer."""
    venv = make_venv(tmp_path / "venv", with_pip=False)
    (venv.site_packages / "noisy.pth").write_text('import sys; print("hello from a pth")\n')
    assert python_env(venv.prefix).site_dirs == (venv.site_packages,)


def test_layout_is_guessed_when_the_interpreter_cannot_run(tmp_path: Path) -> None:
    """A venv whose python is broken: site-packages found by glob, version from its name."""
    venv = make_venv(tmp_path / "venv", with_pip=False)
    site = venv.site_packages
    for name in ("python", "python3"):
        link = venv.prefix / "bin" / name
        link.unlink()
        link.write_text("#!/bin/sh\nexit 1\n")
        link.chmod(0o755)
    (venv.prefix / "lib" / "python3.7" / "site-packages").mkdir(parents=True)  # a leftover
    env = python_env(venv.prefix)
    assert env.python is None
    assert env.site_dirs == (site,)
    assert env.version == f"{sys.version_info[0]}.{sys.version_info[1]}"
    assert env.user_site is None


def _answers(prefix: Path, text: str) -> None:
    """The venv's interpreter replaced by a script that prints `text`, whatever it is asked."""
    for name in ("python", "python3"):
        link = prefix / "bin" / name
        link.unlink()
        link.write_text(f"#!/bin/sh\ncat <<'EOF'\n{text}\nEOF\n")
        link.chmod(0o755)


@pytest.mark.parametrize(
    "answer",
    [
        "__import__('pathlib').Path({marker!r}).touch()",
        "{{'prefix': (lambda: 1)}}",
        "(" * 500 + ")" * 500,
        "{{'prefix': '/x'}}" + " " * 70000,
        "{{'prefix': b'/x', 'purelib': 1}}",
    ],
)
def test_an_answer_is_read_as_literals_only(tmp_path: Path, answer: str) -> None:
    """An interpreter that answers with code, a nest, a flood or the wrong types has its
    layout guessed; nothing it printed runs."""
    venv = make_venv(tmp_path / "venv", with_pip=False)
    marker = tmp_path / "ran"
    _answers(venv.prefix, answer.format(marker=str(marker)))
    env = python_env(venv.prefix)
    assert env.python is None and env.site_dirs == (venv.site_packages,)
    assert not marker.exists()


@pytest.mark.parametrize("abi", ["cp311/../x", "CP311", "cp311 -x", 311, "c" * 65, ""])
def test_an_abi_that_is_not_a_tag_is_not_recorded(tmp_path: Path, abi: object) -> None:
    """The interpreter's answer is data: an ABI that does not read as a tag is left out
    (no binary wheel fits then), the rest of the answer kept."""
    venv = make_venv(tmp_path / "venv", with_pip=False)
    site = str(venv.site_packages)
    answer = {
        "prefix": str(venv.prefix), "purelib": site, "platlib": site, "version": "3.11.7",
        "implementation": "cpython", "platform": "linux_x86_64", "user_site": None,
        "abi": abi, "base_prefix": sys.base_prefix,
    }  # fmt: skip
    _answers(venv.prefix, repr(answer))
    env = python_env(venv.prefix)
    assert env.python is not None and env.version == "3.11.7"
    assert env.abi is None


def test_prefix_without_python_is_an_error(tmp_path: Path) -> None:
    """Neither interpreter nor site-packages (or no directory at all): ScanError."""
    with pytest.raises(ScanError):
        python_env(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ScanError):
        python_env(tmp_path / "empty")


def test_probe_runs_nothing_from_the_working_directory_or_pythonpath(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A `json.py` where the user stands, or on PYTHONPATH, is not imported by the probe."""
    planted = tmp_path / "planted"
    planted.mkdir()
    marker = tmp_path / "planted-ran"
    (planted / "json.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    (planted / "sysconfig.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    venv = make_venv(tmp_path / "venv", with_pip=False)
    monkeypatch.chdir(planted)
    monkeypatch.setenv("PYTHONPATH", str(planted))
    env = python_env(venv.prefix)
    assert env.python is not None and env.site_dirs == (venv.site_packages,)
    assert not marker.exists()
