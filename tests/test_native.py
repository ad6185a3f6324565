"""The compiled engine: it imports, its cdef matches csrc/, and the C builds cleanly."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest

from pkgckpt import inotify

CSRC = Path(__file__).resolve().parent.parent / "csrc"


def test_compiled_module_imports_and_agrees_with_the_c() -> None:
    """The compiled module loads, and inotify.py's PKW_* bits are the C's."""
    from pkgckpt._inotify import lib

    assert (lib.PKW_RECORD, lib.PKW_INSIDE, lib.PKW_DIRTY) == (
        inotify.PKW_RECORD,
        inotify.PKW_INSIDE,
        inotify.PKW_DIRTY,
    )


def test_engine_opens_and_frees_an_inotify_fd() -> None:
    """One real call through the cdef: pkw_new gives an fd, pkw_free closes it."""
    from pkgckpt._inotify import ffi, lib

    engine = lib.pkw_new(16)
    assert engine != ffi.NULL
    fd = lib.pkw_fileno(engine)
    assert Path(f"/proc/self/fd/{fd}").readlink() == Path("anon_inode:inotify")
    assert lib.pkw_free(engine) == 0
    assert not Path(f"/proc/self/fd/{fd}").exists()


def test_batch_text_is_the_layout_the_native_backend_reads(tmp_path: Path) -> None:
    """pkw_wait's text is pkw.h's: the four batch fields, then wd, mask, name per record."""
    from pkgckpt._inotify import ffi, lib

    engine = lib.pkw_new(16)
    try:
        text = ffi.new("const char **")
        n = lib.pkw_wait(engine, -1, 0, 0, 0, 0, text)
        assert ffi.unpack(text[0], n) == b"0\x000\x000\x000\x00"
        wd = lib.pkw_add_watch(engine, bytes(tmp_path), inotify.IN_CREATE, 0)
        (tmp_path / "a").write_text("")
        n = lib.pkw_wait(engine, -1, 5000, 0, 0, 0, text)
        overflow, woken, error, last_ms, *record, end = ffi.unpack(text[0], n).split(b"\0")
        assert (overflow, woken, error, end) == (b"0", b"0", b"0", b"")
        assert abs(int(last_ms) / 1000 - time.monotonic()) < 5
        assert record == [str(wd).encode(), str(inotify.IN_CREATE).encode(), b"a"]
    finally:
        lib.pkw_free(engine)


@pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc is not installed")
def test_c_sources_compile_without_warnings(tmp_path: Path) -> None:
    """csrc/ is clean under -Wall -Wextra (and then some): warnings are errors here."""
    flags = ["-std=c99", "-O2", "-Wall", "-Wextra", "-Wshadow", "-Wconversion", "-Werror"]
    for source in CSRC.glob("*.c"):
        subprocess.run(
            ["gcc", *flags, "-c", str(source), "-o", str(tmp_path / f"{source.stem}.o")],
            check=True,
        )


def test_inotify_constants_are_the_kernel_abi() -> None:
    """inotify.py's literal IN_* values are the ones inotify_simple takes from the ABI."""
    import inotify_simple

    for name in dir(inotify):
        if name.startswith("IN_"):
            assert getattr(inotify, name) == inotify_simple.flags[name[3:]], name
