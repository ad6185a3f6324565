"""Packages that are never captured are said, each with its reason, by `snapshot` and
`status`, with the daemon and without: an egg-info install (no RECORD), a conda package
(no capturer), an editable and a directory install (their files live in the user's
directory). They stay recorded; everything else is captured."""

from __future__ import annotations

from pathlib import Path

import pytest
from artifact_kit import artifacts, cache_on, make_wheelhouse
from daemon_kit import World, eventually, uv_install
from wheelhouse import make_venv

conda_kit = pytest.importorskip("conda_kit")

pytestmark = pytest.mark.slow

REASONS = {
    "eggy==1.0": "installed as .egg-info, which lists no files (RECORD)",
    "top==1.0": "conda packages are not captured",
    "edited==0.1": "an editable install",
    "copied==0.1": "installed from a directory",
}


def _project(root: Path, name: str) -> Path:
    (root / name / name).mkdir(parents=True)
    (root / name / name / "__init__.py").write_text("")
    (root / name / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools"]\nbuild-backend = "setuptools.build_meta"\n'
        f'[project]\nname = "{name}"\nversion = "0.1"\n'
    )
    return root / name


def _setup(tmp_path: Path) -> tuple[World, list[str], Path, Path]:
    """A conda prefix with a venv in it (the image: tiny, dep), its baseline taken; the
    world's flags; the venv's python; the wheelhouse."""
    world = cache_on(World.make(tmp_path))
    channel = tmp_path / "channel"
    for pkg in (conda_kit.CondaPkg("tiny", "1.0"), conda_kit.CondaPkg("top", "1.0")):
        conda_kit.build_conda(pkg, channel)
    conda_kit.index(channel)
    prefix = tmp_path / "env"
    venv = make_venv(prefix)
    conda_kit.conda_install(prefix, channel, "tiny=1.0", cache=tmp_path / "cache")
    baseline = tmp_path / "baseline.json"
    made = world.pkgckpt("baseline", "--env", str(prefix), "--output", str(baseline))
    assert made.returncode == 0, made.stderr
    wheels = make_wheelhouse(tmp_path / "wheels")
    conda_kit.conda_install(prefix, channel, "tiny=1.0", "top=1.0", cache=tmp_path / "cache")
    # What `setup.py install` of a distutils project leaves: metadata without RECORD.
    (venv.site_packages / "eggy").mkdir()
    (venv.site_packages / "eggy" / "__init__.py").write_text("")
    info = venv.site_packages / "eggy-1.0-py3.11.egg-info"
    info.mkdir()
    (info / "PKG-INFO").write_text("Metadata-Version: 1.0\nName: eggy\nVersion: 1.0\n")
    venv.install(wheels, "-e", str(_project(tmp_path, "edited")))
    venv.install(wheels, str(_project(tmp_path, "copied")))
    flags = [*world.flags(prefix), "--baseline", str(baseline)]
    return world, flags, venv.python, wheels


def _said(text: str) -> None:
    for name, why in REASONS.items():
        line = next((line for line in text.splitlines() if name in line), None)
        assert line is not None and why in line, (name, text)


def test_snapshot_and_status_say_why_each_package_has_no_artifact(tmp_path: Path) -> None:
    """Without a daemon: snapshot lists the four with their reasons and exits 0, and
    captures libdep; `status` then lists the same four, same reasons."""
    world, flags, python, wheels = _setup(tmp_path)
    uv_install(python, wheels, "libdep", env=world.env)
    snap = world.pkgckpt("snapshot", *flags, timeout=300)
    assert snap.returncode == 0, snap.stdout + snap.stderr
    assert "not captured (4)" in snap.stdout, snap.stdout
    _said(snap.stdout)
    assert set(artifacts(world.store, world.key)) == {"libdep-1.0-py3-none-any.whl"}
    status = world.pkgckpt("status", *flags)
    assert "without an artifact (4)" in status.stdout, status.stdout
    _said(status.stdout)


def test_with_a_daemon_status_and_snapshot_say_why(tmp_path: Path) -> None:
    """With the daemon: once it has captured, `status` lists the four with their reasons;
    `snapshot` asked of the daemon lists them too."""
    world, flags, python, wheels = _setup(tmp_path)
    daemon = world.daemon(*flags, "--quiet-ms", "100").start()
    try:
        uv_install(python, wheels, "libdep", env=world.env)
        eventually(
            lambda: "libdep-1.0-py3-none-any.whl" in artifacts(world.store, world.key),
            timeout=60,
            what="libdep captured",
        )

        def status_with_four() -> str | None:
            out = world.pkgckpt("status", *flags).stdout
            return out if "without an artifact (4)" in out else None

        status = eventually(status_with_four, what="the four in status")
        _said(status)
        snap = world.pkgckpt("snapshot", *flags, timeout=300)
        assert snap.returncode == 0, snap.stdout + snap.stderr
        assert "not captured (4)" in snap.stdout, snap.stdout
        _said(snap.stdout)
        assert daemon.stop() == 0, daemon.output()
    finally:
        daemon.close()
