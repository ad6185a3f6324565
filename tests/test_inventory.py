"""Targets from the config, merged scans over several roots, and the baseline's life cycle."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from wheelhouse import make_venv

from pkgckpt import manifest
from pkgckpt.config import Config
from pkgckpt.errors import ManifestError
from pkgckpt.inventory import (
    Target,
    baseline_path,
    ensure_baseline,
    entry_name,
    load_baseline,
    save_baseline,
    take_baseline,
    targets,
)
from pkgckpt.manifest import Baseline, Environment


def dist_info(site: Path, name: str, version: str) -> None:
    d = site / f"{name}-{version}.dist-info"
    d.mkdir(parents=True)
    (d / "METADATA").write_text(f"Name: {name}\nVersion: {version}\n\n")
    (d / "RECORD").write_text("")
    old = time.time_ns() - 3600 * 10**9
    os.utime(d, ns=(old, old))


ENV = Environment(kind="python", path="/p")


def test_targets_are_the_prefix_sites_and_the_user_site(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A venv hiding the user site is one target; one that sees it adds a user target."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("PYTHONUSERBASE", raising=False)
    plain = make_venv(tmp_path / "plain", with_pip=False)
    shared = tmp_path / "shared"
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", "--system-site-packages", str(shared)],
        check=True,
    )
    config = Config(
        env=(plain.prefix, shared), runtime_dir=tmp_path / "run", discover=("user-site",)
    )
    found = targets(config)
    assert [(t.env.path, t.env.user) for t in found] == [
        (str(plain.prefix), False),
        (str(shared), False),
        (str(shared), True),
    ]
    assert found[0].roots == (plain.site_packages,)
    assert found[2].roots[0].is_relative_to(tmp_path / "home")


def test_r_library_is_a_target_of_kind_r(tmp_path: Path) -> None:
    """A configured R library becomes an R target scanned by the R scanner."""
    lib = tmp_path / "rlib"
    (lib / "foo").mkdir(parents=True)
    (lib / "foo" / "DESCRIPTION").write_text(
        "Package: foo\nVersion: 1.2.3\nBuilt: R 4.2.2; ; 2024-01-01 00:00:00 UTC; unix\n"
    )
    venv = make_venv(tmp_path / "venv", with_pip=False)
    found = targets(Config(env=(venv.prefix,), r_lib=(lib,), runtime_dir=tmp_path / "run"))
    r = [t for t in found if t.env.kind == "r"]
    assert [t.roots for t in r] == [(lib,)]
    assert [p.name for p in r[0].scan().packages] == ["foo"]


def test_first_root_wins_and_missing_roots_make_a_scan_untrusted(tmp_path: Path) -> None:
    """Merged roots: a name in the first hides the second; a missing root is untrusted."""
    a, b = tmp_path / "a", tmp_path / "b"
    dist_info(a, "same", "1.0")
    dist_info(b, "same", "2.0")
    dist_info(b, "other", "1.0")
    target = Target(env=ENV, roots=(a, b))
    inv = target.scan()
    assert [(p.name, p.version) for p in inv.packages] == [("other", "1.0"), ("same", "1.0")]
    assert target.trusted is True
    gone = Target(env=ENV, roots=(a, tmp_path / "missing"))
    gone.scan()
    assert gone.trusted is False


def test_targets_compare_by_environment_and_roots_alone(tmp_path: Path) -> None:
    """Two targets of one environment and roots are equal whatever their scans left, and
    a target, being mutable, is unhashable; its repr names what it compares by."""
    dist_info(tmp_path, "one", "1.0")
    scanned = Target(ENV, (tmp_path,), True, 60.0)
    scanned.scan()
    assert scanned == Target(env=ENV, roots=(tmp_path,))
    assert scanned != Target(env=ENV, roots=(tmp_path / "other",))
    assert scanned.conda_owned is True and scanned.r_lock_stale == 60.0
    with pytest.raises(TypeError):
        hash(scanned)
    assert repr(scanned) == f"Target(env={ENV!r}, roots={(tmp_path,)!r})"


def test_broken_and_half_installed_entries_make_their_names_uncertain(tmp_path: Path) -> None:
    """Entries that could not be read name the packages whose absence proves nothing."""
    site = tmp_path / "site"
    dist_info(site, "fine", "1.0")
    (site / "Bad_Name-1.0.dist-info").mkdir()  # no METADATA, no RECORD: an install starting
    (site / "old_broken-2.0.dist-info").mkdir()
    old = time.time_ns() - 3600 * 10**9
    os.utime(site / "old_broken-2.0.dist-info", ns=(old, old))
    target = Target(env=ENV, roots=(site,))
    target.scan()
    assert target.uncertain() == {"bad-name", "old-broken"}
    assert set(target.last.in_progress) == {f"{site}/Bad_Name-1.0.dist-info"}
    assert set(target.last.broken) == {f"{site}/old_broken-2.0.dist-info"}


def test_entry_names_map_to_canonical_package_names() -> None:
    """Each kind of entry maps to the name its package is keyed by."""
    assert entry_name("python", "Foo.Bar-1.0.dist-info") == "foo-bar"
    assert entry_name("python", "foo-1.0-py3.11.egg-info") == "foo"
    assert entry_name("python", "Foo_Bar.egg-link") == "foo-bar"
    assert entry_name("python", "__editable__.foo_bar-1.0.pth") == "foo-bar"
    assert entry_name("r", "data.table") == "data.table"


@pytest.mark.parametrize(
    ("entry", "name"),
    [
        # setup.py develop names the link after the project, hyphens kept
        ("my-pkg.egg-link", "my-pkg"),
        ("My.Pkg.egg-link", "my-pkg"),
        ("my_pkg.egg-link", "my-pkg"),
        ("a-b-c.egg-link", "a-b-c"),
        # escaped names (PEP 427, setuptools' to_filename): `_` stands for `-`
        ("my_pkg-1.0.dist-info", "my-pkg"),
        ("PyYAML-6.0.1.dist-info", "pyyaml"),
        ("zope.interface-6.0.dist-info", "zope-interface"),
        ("foo-1.0+local.1.dist-info", "foo"),
        ("foo-1!2.0.dist-info", "foo"),
        # an unescaped name keeps its hyphens: the version follows the last `-`
        ("my-pkg-1.0.dist-info", "my-pkg"),
        ("my_pkg-1.0-py3.11.egg-info", "my-pkg"),
        ("Foo_Bar-2.0.1-py3.11-linux-x86_64.egg-info", "foo-bar"),
        ("my-pkg-1.0.egg-info", "my-pkg"),
        ("my-pkg-1.0-py3.11.egg-info", "my-pkg"),
        # versionless egg-info (setup.py develop's, in the project): the whole stem
        ("my_pkg.egg-info", "my-pkg"),
        ("my-pkg.egg-info", "my-pkg"),
        ("__editable__.my_pkg-1.0.pth", "my-pkg"),
        ("__editable__.my-pkg-1.0.pth", "my-pkg"),
    ],
)
def test_python_entry_names_keep_the_whole_project_name(entry: str, name: str) -> None:
    """The name an entry that cannot be read makes uncertain is its package's, never a
    prefix of it: a prefix would leave the real package's absence counted as an uninstall."""
    assert entry_name("python", entry) == name


def test_an_egg_link_whose_project_is_gone_makes_its_whole_name_uncertain(
    tmp_path: Path,
) -> None:
    """`my-pkg.egg-link` pointing at a directory that is not there: `my-pkg` is uncertain."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "my-pkg.egg-link").write_text(f"{tmp_path / 'gone'}\n.\n")
    target = Target(env=ENV, roots=(site,))
    target.scan()
    assert set(target.last.broken) == {f"{site}/my-pkg.egg-link"}
    assert target.uncertain() == {"my-pkg"}


def test_an_egg_link_finds_an_egg_info_spelled_with_hyphens(tmp_path: Path) -> None:
    """The project's egg-info is matched by its whole name (`my-pkg.egg-info` is my-pkg)."""
    site, project = tmp_path / "site", tmp_path / "proj"
    site.mkdir()
    (project / "my-pkg.egg-info").mkdir(parents=True)
    (project / "my-pkg.egg-info" / "PKG-INFO").write_text("Name: my-pkg\nVersion: 1.0\n\n")
    (site / "my-pkg.egg-link").write_text(f"{project}\n.\n")
    target = Target(env=ENV, roots=(site,))
    found = target.scan()
    assert [(p.name, p.version) for p in found.packages] == [("my-pkg", "1.0")]
    assert not target.last.broken


def test_baseline_is_taken_once_then_loaded(tmp_path: Path) -> None:
    """ensure_baseline takes and keeps a baseline; later installs do not change it."""
    site = tmp_path / "site"
    dist_info(site, "image-pkg", "1.0")
    config = Config(runtime_dir=tmp_path / "run")
    assert load_baseline(config) is None
    first = ensure_baseline(config, [Target(env=ENV, roots=(site,))])
    dist_info(site, "user-pkg", "1.0")
    again = ensure_baseline(config, [Target(env=ENV, roots=(site,))])
    assert again == first
    inv = again.inventory(ENV)
    assert inv is not None and [p.name for p in inv.packages] == ["image-pkg"]
    assert (tmp_path / "run" / "baseline.json").stat().st_mode & 0o777 == 0o644


def test_configured_baseline_file_is_used_and_if_missing_stood_in_for(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A baseline written at image build is loaded as is. One the image left out is not
    the end of restoring and recording: this container's own baseline stands in, taken
    before anything is installed, with a warning that names the missing file."""
    site = tmp_path / "site"
    dist_info(site, "image-pkg", "1.0")
    path = tmp_path / "image-baseline.json"
    save_baseline(take_baseline([Target(env=ENV, roots=(site,))]), path)
    config = Config(baseline=path, runtime_dir=tmp_path / "run")
    loaded = load_baseline(config)
    assert loaded is not None and loaded.inventory(ENV) is not None
    missing = Config(baseline=tmp_path / "nope.json", runtime_dir=tmp_path / "run")
    assert load_baseline(missing) is None
    assert f"baseline file {tmp_path / 'nope.json'} does not exist" in caplog.text
    taken = ensure_baseline(missing, [Target(env=ENV, roots=(site,))])
    dist_info(site, "user-pkg", "1.0")
    assert load_baseline(missing) == taken
    assert baseline_path(missing) == tmp_path / "run" / "baseline.json"
    inv = taken.inventory(ENV)
    assert inv is not None and [p.name for p in inv.packages] == ["image-pkg"]
    assert not (tmp_path / "nope.json").exists()


def test_foreign_writable_or_corrupt_runtime_baseline_is_refused(tmp_path: Path) -> None:
    """A runtime baseline writable by others, or not a baseline at all, raises ManifestError."""
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    path = run / "baseline.json"
    path.write_bytes(manifest.encode_baseline(Baseline()))
    config = Config(runtime_dir=run)
    path.chmod(0o664)
    with pytest.raises(ManifestError, match="not private"):
        load_baseline(config)
    path.chmod(0o600)
    assert load_baseline(config) == Baseline()
    path.write_bytes(b'{"schema": 1, "environments": [{"env": 3}]}')
    with pytest.raises(ManifestError):
        load_baseline(config)
    path.unlink()
    path.symlink_to(tmp_path / "elsewhere.json")
    (tmp_path / "elsewhere.json").write_bytes(manifest.encode_baseline(Baseline()))
    with pytest.raises(ManifestError):
        load_baseline(config)


def test_the_images_baseline_is_read_through_a_link_as_a_configmap_mounts_it(
    tmp_path: Path,
) -> None:
    """The baseline the settings name may be a link (a ConfigMap's `baseline.json ->
    ..data/baseline.json`): it is read, where the one in the runtime directory (above)
    never is through a link."""
    data = tmp_path / "etc" / "..data"
    data.mkdir(parents=True)
    (data / "baseline.json").write_bytes(manifest.encode_baseline(Baseline(time="the image")))
    (tmp_path / "etc" / "baseline.json").symlink_to("..data/baseline.json")
    config = Config(baseline=tmp_path / "etc" / "baseline.json", runtime_dir=tmp_path / "run")
    found = load_baseline(config)
    assert found is not None and found.time == "the image"
    # Through the link or not, a FIFO is refused at once, not waited on for a writer.
    (data / "baseline.json").unlink()
    os.mkfifo(data / "baseline.json")
    with pytest.raises(ManifestError, match="not a regular file"):
        load_baseline(config)


def test_baseline_is_not_written_into_a_runtime_directory_of_someone_else(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A runtime directory planted in a shared /tmp (another owner) is passed over: the
    baseline, what counts as the image's, goes to the user's private fallback."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    site = tmp_path / "site"
    dist_info(site, "image-pkg", "1.0")
    run = tmp_path / "run"
    run.mkdir(mode=0o777)
    if os.geteuid() != 0:
        pytest.skip("giving the directory to another uid needs root")
    os.chown(run, 4242, 4242)
    ensure_baseline(Config(runtime_dir=run), [Target(env=ENV, roots=(site,))])
    assert not (run / "baseline.json").exists()
    assert len(list((tmp_path / "cache" / "pkgckpt").glob("run-*/baseline.json"))) == 1


def test_a_runtime_directory_made_a_link_since_is_not_read_for_the_baseline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The runtime directory is chosen when the settings are read. Made since a link to an
    old directory of the user's (or another user's directory in a shared /tmp), the
    baseline it holds, perhaps of another image, is not read: the private fallback is,
    where the baseline's writer puts it."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    old = tmp_path / "old"
    old.mkdir(mode=0o700)
    (old / "baseline.json").write_bytes(manifest.encode_baseline(Baseline(time="another image")))
    (old / "baseline.json").chmod(0o600)
    run = tmp_path / "run"
    config = Config(runtime_dir=run)  # chosen while it was missing
    run.symlink_to(old)
    assert load_baseline(config) is None
    site = tmp_path / "site"
    dist_info(site, "image-pkg", "1.0")
    taken = ensure_baseline(config, [Target(env=ENV, roots=(site,))])
    assert taken.time != "another image"
    assert load_baseline(config) == taken
