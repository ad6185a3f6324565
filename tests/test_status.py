"""`pkgckpt status` as a library call: what it reports when a library cannot be read."""

from __future__ import annotations

from pathlib import Path

import pytest
from wheelhouse import make_venv

from pkgckpt import status
from pkgckpt.config import Config
from pkgckpt.inventory import targets
from pkgckpt.manifest import Body, Delta, Environment, Package
from pkgckpt.store import Store


def test_an_unreadable_library_is_reported_once_with_what_it_records(tmp_path: Path) -> None:
    """A scan error shows beside the environment's recorded packages, not as a second entry."""
    venv = make_venv(tmp_path / "venv", with_pip=False)
    config = Config(
        store=tmp_path / "store", key="alice", env=(venv.prefix,), runtime_dir=tmp_path / "run"
    )
    (target,) = (t for t in targets(config) if not t.env.user)
    recorded = Delta(env=target.env, added=(Package(name="alpha", version="1.0"),))
    Store(config.store, config.key).commit(Body(environments=(recorded,)))
    site = venv.site_packages
    site.rmdir()
    site.symlink_to(site.name)  # a loop: opening it fails with ELOOP, even for root

    reports = [e for e in status.collect(config).environments if not e.env.user]

    assert len(reports) == 1
    (report,) = reports
    assert report.error is not None and "cannot read" in report.error
    assert [p.name for p in report.added] == ["alpha"]


def test_long_package_lists_wrap_at_the_terminal_width(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """61 added packages take several lines within the width, each one whole, in order."""
    monkeypatch.setenv("COLUMNS", "80")
    packages = tuple(Package(name=f"package-{i:02d}", version="1.0.0") for i in range(61))
    env = Environment(kind="python", path="/opt/env")
    report = status.Report(
        store="/s", key="k", environments=(status.EnvReport(env=env, added=packages),)
    )
    lines = status.to_text(report).splitlines()
    added = lines[lines.index("python /opt/env:") + 1 :]
    assert len(added) > 1 and all(len(line) <= 80 for line in added)
    assert added[0].startswith("    added    package-00 1.0.0, ")
    assert all(line.startswith(" " * 13) for line in added[1:])
    listed = ", ".join(f"{p.name} {p.version}" for p in packages)
    assert " ".join(line.strip() for line in added) == f"added    {listed}"
