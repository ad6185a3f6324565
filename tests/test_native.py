"""The compiled engine: it imports, its cdef matches csrc/, and the C builds cleanly."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from pkgckpt import inotify

CSRC = Path(__file__).resolve().parent.parent / "csrc"


def test_compiled_module_imports_and_agrees_with_the_c() -> None:
    """cffi's struct layout is pkw.h's, and inotify.py's PKW_* bits are the C's."""
    from pkgckpt._inotify import ffi, lib

    assert ffi.sizeof("struct pkw_record") == lib.pkw_record_size()
    assert (lib.PKW_RECORD, lib.PKW_INSIDE, lib.PKW_DIRTY) == (
        inotify.PKW_RECORD,
        inotify.PKW_INSIDE,
        inotify.PKW_DIRTY,
    )
    assert ffi.sizeof(ffi.typeof("struct pkw_record").fields[2][1].type) == lib.PKW_NAME_MAX + 1


def test_engine_opens_and_frees_an_inotify_fd() -> None:
    """One real call through the cdef: pkw_new gives an fd, pkw_free closes it."""
    from pkgckpt._inotify import ffi, lib

    engine = lib.pkw_new(16)
    assert engine != ffi.NULL
    fd = lib.pkw_fileno(engine)
    assert Path(f"/proc/self/fd/{fd}").readlink() == Path("anon_inode:inotify")
    assert lib.pkw_free(engine) == 0
    assert not Path(f"/proc/self/fd/{fd}").exists()


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
