"""A new image that moves its Python to another minor version strands every venv made from
the old one (`bin/python3.X` leads to a Python that is gone): restore makes such a venv
again with the image's new Python, then brings its recorded packages back for it.

Real venvs of two real CPython minor versions (pyenv's), a real daemon, a real kernelspec.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from daemon_kit import World, eventually, uv_install
from restore_kit import isolated
from test_discovery import kernelspec, recorded, tmp_path, user_data, watching, world
from test_rebase import _other_python
from wheelhouse import Dist, build_wheel

from pkgckpt.restore.venv import remake, stranded
from pkgckpt.runner import Deadline

# test_discovery's: a World with a home of its own, under /var/tmp (every directory above
# an interpreter that restore starts must pass the trust check).
__all__ = ["isolated", "tmp_path", "world"]  # fixtures


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("stranded-wheels")
    build_wheel(Dist("alpha", "1.0"), out)
    return out


def _pythons() -> tuple[Path, Path]:
    """The old image's Python and the new one's: two CPython minor versions."""
    other = _other_python()
    if other is None:
        pytest.skip("needs a second CPython minor version under ~/.pyenv/versions")
    mine = Path(sys.base_prefix) / "bin" / f"python{sys.version_info[0]}.{sys.version_info[1]}"
    return Path(os.path.realpath(other)), Path(os.path.realpath(mine))


def image_bin(world: World, python: Path | None) -> Path:
    """The image's Python directory (/opt/conda/bin): `python3.X` and `python3` lead to
    `python`; None: an image with no Python there."""
    bin_dir = world.tmp / "image" / "bin"
    shutil.rmtree(bin_dir, ignore_errors=True)
    bin_dir.mkdir(parents=True)
    if python is not None:
        (bin_dir / python.name).symlink_to(python)
        (bin_dir / "python3").symlink_to(python.name)
    return bin_dir


def flags(world: World, wheels: Path) -> list[str]:
    return ["--store", str(world.store), "--key", world.key, "--no-index",
            "--find-links", str(wheels)]  # fmt: skip


def recorded_kernel_venv(
    world: World, wheels: Path, old: Path, via: str = "", kernel: str = "python"
) -> Path:
    """A kernel's venv made from the old image's Python (`via`: by that name in the
    image's directory; by default `python3.X`), its kernelspec starting its `bin/kernel`,
    alpha installed into it under a daemon and recorded; then the container's runtime
    directory is new."""
    bin_dir = image_bin(world, old)
    prefix = world.tmp / "home" / "envs" / "analysis"
    made = [str(bin_dir / (via or old.name)), "-m", "venv", "--without-pip", str(prefix)]
    subprocess.run(made, check=True, capture_output=True)
    (prefix / "notes.txt").write_text("the user's own file\n")
    kernelspec(user_data(world.tmp / "home"), "analysis", str(prefix / "bin" / kernel))
    with watching(world) as d:
        eventually(lambda: "watching" in d.output(), what="the daemon to start")
        uv_install(prefix / "bin" / "python", wheels, "alpha==1.0", env=world.env)
        eventually(lambda: recorded(world, prefix) == ["alpha==1.0"], what="alpha")
        assert d.stop() == 0
    shutil.rmtree(world.runtime)
    return prefix


def links(prefix: Path) -> list[tuple[str, str]]:
    return sorted((p.name, str(p.readlink())) for p in (prefix / "bin").iterdir() if p.is_symlink())


@pytest.mark.slow
@pytest.mark.parametrize("route", ["kernelspec", "--env"])
def test_a_kernel_venv_whose_python_the_new_image_moved_is_made_again_and_restored(
    world: World, wheels: Path, route: str
) -> None:
    """Its interpreter link leads nowhere on the new image: `status` says restore makes it
    again, a dry run changes nothing, restore makes it with the image's new python3 and
    installs alpha for it; the user's own files stay, and a second restore does nothing.
    The venv is restore's by its kernelspec, or named with --env."""
    old, new = _pythons()
    prefix = recorded_kernel_venv(world, wheels, old)
    bin_dir = image_bin(world, new)
    python = prefix / "bin" / "python"
    assert python.is_symlink() and not python.exists()
    named = ["--env", str(prefix)] if route == "--env" else []

    shown = world.pkgckpt("status", "--store", str(world.store), "--key", world.key, *named)
    assert shown.returncode == 0, shown.stderr
    assert f"pkgckpt restore makes the venv again with {bin_dir / 'python3'}" in shown.stdout

    dry = world.pkgckpt("restore", "--dry-run", *flags(world, wheels), *named)
    assert dry.returncode == 0, dry.stderr
    assert f"Would make the venv {prefix} again" in dry.stdout, dry.stdout
    assert "planned once restore has made its venv again" in dry.stdout, dry.stdout
    assert python.is_symlink() and not python.exists()

    done = world.pkgckpt("restore", *flags(world, wheels), *named)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"Made the venv {prefix} again with {bin_dir / 'python3'}" in done.stdout
    assert "installed 1" in done.stdout, done.stdout
    ran = subprocess.run(
        [str(python), "-c", "import alpha, sys; print(sys.version_info[:2])"],
        capture_output=True, text=True, check=True, cwd=world.tmp,
    )  # fmt: skip
    assert ran.stdout.strip() == str(tuple(int(x) for x in new.name[6:].split(".")))
    assert (prefix / "notes.txt").read_text() == "the user's own file\n"
    assert (prefix / "lib" / old.name).is_dir()  # the old Python's files are left alone

    again = world.pkgckpt("restore", *flags(world, wheels), *named)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "Made the venv" not in again.stdout
    assert "Nothing to restore" in again.stdout, again.stdout


@pytest.mark.slow
@pytest.mark.parametrize("route", ["kernelspec", "kernelspec of python3.X", "--env"])
def test_a_venv_made_with_python3_runs_the_new_images_python_and_is_made_again(
    world: World, wheels: Path, route: str
) -> None:
    """`python3 -m venv`, the usual way: the venv's `bin/python` leads to the image's
    `python3`, which the new image points at another minor version. It runs, but sees
    none of the old `lib/python3.X` (the user's packages, its pip): `status` says restore
    makes it again, and restore does, with that python3, then installs alpha for it. The
    kernel starts by `bin/python`, or by `bin/python3.X` of the old version (what
    ipykernel writes), which stays and runs the new one; a second restore does nothing."""
    old, new = _pythons()
    kernel = old.name if route == "kernelspec of python3.X" else "python"
    prefix = recorded_kernel_venv(world, wheels, old, via="python3", kernel=kernel)
    bin_dir = image_bin(world, new)
    python = prefix / "bin" / kernel
    assert os.path.realpath(python) == str(new)
    named = ["--env", str(prefix)] if route == "--env" else []
    moved = f"is Python {new.name[6:]}, and the venv was made for {old.name[6:]}"

    shown = world.pkgckpt("status", "--store", str(world.store), "--key", world.key, *named)
    assert shown.returncode == 0, shown.stderr
    assert moved in shown.stdout, shown.stdout
    assert f"pkgckpt restore makes the venv again with {bin_dir / 'python3'}" in shown.stdout

    done = world.pkgckpt("restore", *flags(world, wheels), *named)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"Made the venv {prefix} again with {bin_dir / 'python3'}" in done.stdout
    assert moved in done.stdout and "installed 1" in done.stdout, done.stdout
    ran = subprocess.run(
        [str(python), "-c", "import alpha, sys; print(sys.version_info[:2])"],
        capture_output=True, text=True, check=True, cwd=world.tmp,
    )  # fmt: skip
    assert ran.stdout.strip() == str(tuple(int(x) for x in new.name[6:].split(".")))
    assert (prefix / "bin" / new.name).exists()

    again = world.pkgckpt("restore", *flags(world, wheels), *named)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "Made the venv" not in again.stdout
    assert "Nothing to restore" in again.stdout, again.stdout


@pytest.mark.slow
@pytest.mark.parametrize("route", ["kernelspec", "--env"])
def test_a_stranded_venv_without_the_images_new_python_is_left_and_reported(
    world: World, wheels: Path, route: str
) -> None:
    """The new image has no python3 where the old one had its Python: restore touches
    nothing in the venv, says how to make it again, and exits 3 (its packages are not
    back); `status` says the same."""
    old, _ = _pythons()
    prefix = recorded_kernel_venv(world, wheels, old)
    image_bin(world, None)
    before = links(prefix)
    named = ["--env", str(prefix)] if route == "--env" else []

    done = world.pkgckpt("restore", *flags(world, wheels), *named)
    assert done.returncode == 3, done.stdout + done.stderr
    assert f"python3 -m venv --clear {prefix}" in done.stdout, done.stdout
    assert "its venv was not made again" in done.stdout, done.stdout
    assert links(prefix) == before

    shown = world.pkgckpt("status", "--store", str(world.store), "--key", world.key, *named)
    assert "restore cannot make it again" in shown.stdout, shown.stdout


def test_a_home_others_may_write_is_not_trusted_to_make_a_venv_again(tmp_path: Path) -> None:
    """pyvenv.cfg's home is the user's word only: a python3 in a directory that others may
    write is not started, and no link of the venv is taken away."""
    old, new = _pythons()
    image = tmp_path / "image"
    image.mkdir()
    (image / old.name).symlink_to(old)
    made = [str(image / old.name), "-m", "venv", "--without-pip", str(tmp_path / "v")]
    subprocess.run(made, check=True, capture_output=True)
    (image / old.name).unlink()
    (image / "python3").symlink_to(new)
    image.chmod(0o777)
    venv = stranded(tmp_path / "v")
    assert venv is not None and venv.home == image
    before = sorted(p.name for p in (tmp_path / "v" / "bin").iterdir())
    done = remake(venv, Deadline(60))
    assert done.python is None
    assert done.error is not None and "writable by group or others" in done.error
    assert sorted(p.name for p in (tmp_path / "v" / "bin").iterdir()) == before
    (tmp_path / "v").chmod(0o777)  # a venv others may write is no one's to make again
    assert stranded(tmp_path / "v") is None


def test_a_venv_whose_python_is_there_is_not_stranded(tmp_path: Path) -> None:
    """Nor is one whose Python says no version in its name (taken to be the one pyvenv.cfg
    names), or says pyvenv.cfg's, or whose pyvenv.cfg names none; one whose Python says
    another minor version is."""
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "v")],
        check=True, capture_output=True,
    )  # fmt: skip
    assert stranded(tmp_path / "v") is None
    assert stranded(tmp_path / "nothing") is None
    for name, version in (("snake", "3.0.0"), ("python3.99", "3.99.1"), ("python3.99", "")):
        venv = tmp_path / f"{name}-{version}"
        (venv / "bin").mkdir(parents=True)
        (venv / "bin" / name).write_text("")
        (venv / "bin" / "python").symlink_to(name)
        (venv / "pyvenv.cfg").write_text(f"home = /usr/bin\nversion = {version}\n")
        assert stranded(venv) is None, (name, version)
    moved = tmp_path / "moved"
    (moved / "bin").mkdir(parents=True)
    (moved / "bin" / "python3.99").write_text("")
    (moved / "bin" / "python").symlink_to("python3.99")
    (moved / "pyvenv.cfg").write_text("home = /usr/bin\nversion_info = 3.98.0.final.0\n")
    found = stranded(moved)
    assert found is not None and (found.runs, found.made) == ("3.99", "3.98")


def test_a_venv_made_again_keeps_its_system_site_packages_and_prompt(tmp_path: Path) -> None:
    """What `python -m venv` was told when the venv was made, pyvenv.cfg keeps, and the
    venv made again is told again: the image's own packages stay visible to it
    (`--system-site-packages`, a venv over a conda base's numpy), its prompt stays."""
    old, new = _pythons()
    image = tmp_path / "image"
    image.mkdir()
    (image / old.name).symlink_to(old)
    prefix = tmp_path / "v"
    made = [str(image / old.name), "-m", "venv", "--without-pip", "--system-site-packages",
            "--prompt", "my env", str(prefix)]  # fmt: skip
    subprocess.run(made, check=True, capture_output=True)
    (image / old.name).unlink()
    (image / "python3").symlink_to(new)
    venv = stranded(prefix)
    assert venv is not None and (venv.system_site, venv.prompt) == (True, "my env"), venv
    done = remake(venv, Deadline(60))
    assert (done.error, done.python) == (None, str(image / "python3")), done
    cfg = (prefix / "pyvenv.cfg").read_text()
    assert "include-system-site-packages = true" in cfg and "my env" in cfg, cfg
    ran = subprocess.run(
        [str(prefix / "bin" / "python"), "-c",
         "import site, sys; print(sys.version_info[:2], site.getsitepackages())"],
        capture_output=True, text=True, check=True, cwd=tmp_path,
    )  # fmt: skip
    assert ran.stdout.startswith(str(tuple(int(x) for x in new.name[6:].split(".")))), ran.stdout
    assert str(Path(os.path.realpath(new)).parent.parent) in ran.stdout, ran.stdout
