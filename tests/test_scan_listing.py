"""The native listing (csrc/pks.c) and its Python fallback give the same entries."""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pkgckpt.scan import listing

SUFFIXES = (".dist-info", ".egg-info", ".egg-link", ".pth")


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """Every shape an entry can take: dirs with and without the probe, files, a symlink,
    names to skip, a non-UTF-8 name."""
    site = tmp_path / "site"
    site.mkdir()
    for i in range(40):
        d = site / f"p{i}-1.0.dist-info"
        d.mkdir()
        if i % 3 == 0:
            (d / "direct_url.json").write_text("{}")
    (site / "file-1.0.dist-info").write_text("a file where a directory belongs")
    (site / "old-1.0.egg-info").write_text("Metadata-Version: 1.0\n")
    (site / "tree-1.0.egg-info").mkdir()
    (site / "dev.egg-link").write_text("/src\n")
    (site / "__editable__.e-1.0.pth").write_text("/src\n")
    (site / "linked-1.0.dist-info").symlink_to(site / "p0-1.0.dist-info")
    (site / "~ip-1.0.dist-info").mkdir()
    (site / ".hidden.pth").write_text("")
    (site / "module").mkdir()
    (site / "module.py").write_text("")
    os.mkdir(os.fsencode(site) + b"/caf\xe9-1.0.dist-info")  # noqa: PTH102 (bytes: not UTF-8)
    # Planted times past int64 nanoseconds either way: both listings saturate alike.
    for name, seconds in (("future-1.0.dist-info", 10**10), ("past-1.0.dist-info", -(10**10))):
        (site / name).mkdir()
        os.utime(site / name, ns=(0, seconds * 10**9 + 7))
    return site


@pytest.fixture
def fd(site: Path) -> Iterator[int]:
    fd = os.open(site, os.O_RDONLY | os.O_DIRECTORY)
    yield fd
    os.close(fd)


needs_native = pytest.mark.skipif(not listing.NATIVE, reason="pkgckpt._scan is not compiled")


@needs_native
@pytest.mark.parametrize("probe", [None, "direct_url.json"])
def test_native_and_python_listings_agree(fd: int, probe: str | None) -> None:
    native = listing._native(fd, SUFFIXES, ".dist-info", probe)
    python = listing._python(fd, SUFFIXES, ".dist-info", probe)
    assert sorted(native) == sorted(python)
    names = {e[0] for e in native}
    assert "module" not in names and "~ip-1.0.dist-info" not in names
    assert ".hidden.pth" not in names and "caf\udce9-1.0.dist-info" in names
    probed = {e[0] for e in native if e[4]}
    if probe is None:
        assert all(e[4] is None for e in native)
    else:
        assert probed == {f"p{i}-1.0.dist-info" for i in range(0, 40, 3)}
        assert dict((e[0], e[4]) for e in native)["linked-1.0.dist-info"] is None  # lstat


@needs_native
def test_native_listing_grows_its_buffers(fd: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(listing, "_cap", 2)
    assert sorted(listing._native(fd, SUFFIXES, "", None)) == sorted(
        listing._python(fd, SUFFIXES, "", None)
    )
    assert listing._cap >= 47


@pytest.mark.parametrize("impl", ["native", "python"])
def test_listing_what_is_not_a_directory_is_an_oserror(tmp_path: Path, impl: str) -> None:
    if impl == "native" and not listing.NATIVE:
        pytest.skip("pkgckpt._scan is not compiled")
    f = tmp_path / "file"
    f.write_text("")
    fd = os.open(f, os.O_RDONLY)
    try:
        with pytest.raises(OSError) as e:
            getattr(listing, f"_{impl}")(fd, SUFFIXES, "", None)
        assert e.value.errno == errno.ENOTDIR
    finally:
        os.close(fd)


@needs_native
def test_record_layout_is_the_c_one() -> None:
    """listing.py unpacks pks_entry with a struct format: it must be the compiled layout."""
    from pkgckpt._scan import ffi

    assert ffi.sizeof("struct pks_entry") == listing._RECORD.size


def test_a_scan_without_the_compiled_helper_gives_the_same_result(
    site: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SiteScanner on the Python listing (no pkgckpt._scan): the same packages, broken
    entries and installs in progress, first scan (against known packages) and rescan."""
    from pkgckpt.scan.python import SiteScanner

    hour_ago = time.time_ns() - 3600 * 10**9
    for i in range(0, 40, 2):  # half of them real distributions, settled an hour ago
        info = site / f"p{i}-1.0.dist-info"
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: p{i}\nVersion: 1.0\n")
        (info / "RECORD").write_text("")
        os.utime(info, ns=(hour_ago, hour_ago))
    native = SiteScanner(site).scan()
    assert len(native.packages) == 13 and native.broken  # 7 have an empty direct_url.json
    monkeypatch.setattr(listing, "NATIVE", False)
    scanner = SiteScanner(site, known=native.packages)
    assert scanner.scan() == native
    (site / "p2-1.0.dist-info" / "REQUESTED").write_text("")
    (site / "late-1.0.dist-info").mkdir()
    os.utime(site, ns=(0, 0))  # the directory changed: every entry's identity is checked
    assert scanner.scan() == SiteScanner(site).scan()
