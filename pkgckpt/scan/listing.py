"""A library directory's entries with their identity: listed and lstat'ed in one call.

`entries()` is what a scan starts with. The native helper (csrc/pks.c, built as
`pkgckpt._scan`) does the listing and an lstat per entry in C: from Python, a
site-packages of 3,000 distributions costs ~10 ms of `os.stat` alone, most of it
building `stat_result` objects. Without the compiled module the same is done with
`os.listdir` and `os.stat`; both give the same answer (a test holds them to it).
"""

from __future__ import annotations

import errno
import os
import stat
import struct
import sys
from collections.abc import Iterable, Sequence

Entry = tuple[str, int, int, int, bool | None]
"""(name, inode, mtime_ns, st_mode, probed): `probed` is whether the probe file exists
inside the entry; None when it was not looked for."""

_RECORD = struct.Struct("=QqIIII")
_NS_MIN, _NS_MAX = -(2**63), 2**63 - 1

_FS_ENCODING, _FS_ERRORS = sys.getfilesystemencoding(), sys.getfilesystemencodeerrors()

try:
    from .._scan import ffi, lib
except ImportError:  # not compiled (a source tree used in place): the Python listing
    NATIVE = False
else:
    NATIVE = True


def entries(
    fd: int, suffixes: Sequence[str], probe_in: str = "", probe: str | None = None
) -> list[Entry]:
    """The entries of the directory open at `fd` whose names end with one of `suffixes`
    (never those starting with "." or "~"), with their lstat identity. With `probe`, the
    directories among them whose names end with `probe_in` are checked for a file named
    `probe` inside. Raises OSError when the directory cannot be listed."""
    if not NATIVE:
        return _python(fd, tuple(suffixes), probe_in, probe)
    return _native(fd, suffixes, probe_in, probe)


def lstat_each(
    fd: int, names: Iterable[str], probe_in: str = "", probe: str | None = None
) -> list[Entry]:
    """`names` in the directory open at `fd`, as `entries` gives them; the ones that do not
    exist are left out. For a rescan, which knows the few names to look at."""
    found: list[Entry] = []
    for name in names:
        try:
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            continue  # removed since the listing, or since the caller heard of it
        probed = None
        if probe is not None and stat.S_ISDIR(st.st_mode) and name.endswith(probe_in):
            probed = os.access(f"{name}/{probe}", os.F_OK, dir_fd=fd)
        mtime_ns = min(max(st.st_mtime_ns, _NS_MIN), _NS_MAX)  # as pks.c saturates it
        found.append((name, st.st_ino, mtime_ns, st.st_mode, probed))
    return found


def _python(fd: int, suffixes: tuple[str, ...], probe_in: str, probe: str | None) -> list[Entry]:
    os.lseek(fd, 0, os.SEEK_SET)  # listdir reads on from the shared offset
    names = [n for n in os.listdir(fd) if n[0] not in ".~" and n.endswith(suffixes)]
    return lstat_each(fd, names, probe_in, probe)


_cap = 4096


def _native(fd: int, suffixes: Sequence[str], probe_in: str, probe: str | None) -> list[Entry]:
    global _cap  # the size that fitted last time: a site only grows so fast
    packed = b"".join(os.fsencode(s) + b"\0" for s in suffixes) + b"\0"
    c_probe = ffi.NULL if probe is None else os.fsencode(probe)
    while True:
        out = ffi.new("struct pks_entry[]", _cap)
        names = ffi.new("char[]", _cap * 64)
        n = lib.pks_list(fd, packed, os.fsencode(probe_in), c_probe, out, _cap, names, _cap * 64)
        if n >= 0:
            break
        err = ffi.errno
        if err != errno.ERANGE:
            raise OSError(err, os.strerror(err))
        _cap *= 2
    if n == 0:
        return []
    last = out[n - 1]
    # One decode and one split for all names: NUL never occurs in a name.
    blob = ffi.buffer(names, last.name_off + last.name_len)[:]
    listed = blob.decode(_FS_ENCODING, _FS_ERRORS).split("\0")
    probed, looked = lib.PKS_PROBED, lib.PKS_LOOKED
    return [
        (name, ino, mtime_ns, mode, bool(flags & probed) if flags & looked else None)
        for name, (ino, mtime_ns, mode, flags, _, _) in zip(
            listed, _RECORD.iter_unpack(ffi.buffer(out, n * _RECORD.size)), strict=True
        )
    ]
