"""The native backend of `pkgckpt.inotify`: the C engine of ``csrc/pkw.c`` through cffi.

The only module that touches ``ffi`` and ``lib``; nothing of cffi leaves it. Importing it
fails with ImportError when the compiled engine is missing, and `Inotify` then falls back
to the Python backend.
"""

from __future__ import annotations

import errno
import os
import sys
import time
from typing import TYPE_CHECKING

from ._inotify import ffi, lib
from .inotify import Events, Inotify, _oserror, closed_error, timeout_ms

if TYPE_CHECKING:
    from ._inotify import _Engine  # the stub's name for the engine's cdata

# os.fsdecode's codec, for the whole batch at once: a NUL never starts or ends a byte
# sequence that surrogateescape would decode otherwise than field by field.
_FS_ENCODING = sys.getfilesystemencoding()
_FS_ERRORS = sys.getfilesystemencodeerrors()
_new_tuple = tuple.__new__
# Looked up once: every wake-up goes through these.
_pkw_wait = lib.pkw_wait
_LEADING = lib.PKW_LEADING
_unpack = ffi.unpack


class Native(Inotify):
    backend = "native"

    def __init__(self, backend: str | None = None, *, max_records: int = 1024) -> None:
        engine = lib.pkw_new(max_records)
        if engine == ffi.NULL:
            raise _oserror(ffi.errno)
        self._engine: _Engine | None = engine
        self._text = ffi.new("const char **")

    @property
    def closed(self) -> bool:
        return self._engine is None

    def fileno(self) -> int:
        if self._engine is None:
            raise closed_error()
        return lib.pkw_fileno(self._engine)

    def close(self) -> None:
        engine, self._engine = self._engine, None
        if engine is not None:
            # close(2) releases the fd even when it reports an error; there is nothing a
            # caller could do about one here.
            lib.pkw_free(engine)

    def add_watch(self, path: str | os.PathLike[str], mask: int, *, markers: bool = False) -> int:
        if self._engine is None:
            raise closed_error()
        flags = lib.PKW_MARKERS if markers else 0
        wd = lib.pkw_add_watch(self._engine, os.fsencode(path), mask, flags)
        if wd < 0:
            raise _oserror(ffi.errno, path)
        return wd

    def add_marker(self, parent_wd: int, name: str) -> int:
        if self._engine is None:
            raise closed_error()
        wd = lib.pkw_add_marker(self._engine, parent_wd, os.fsencode(name))
        if wd < 0:
            raise _oserror(ffi.errno, name)
        return wd

    def drop_marker(self, parent_wd: int, name: str) -> None:
        if self._engine is None:
            raise closed_error()
        lib.pkw_drop_marker(self._engine, parent_wd, os.fsencode(name))

    def rm_watch(self, wd: int) -> None:
        if self._engine is None:
            raise closed_error()
        if lib.pkw_rm_watch(self._engine, wd) < 0:
            raise _oserror(ffi.errno)

    def read_batch(
        self,
        timeout: float | None,
        *,
        quiet_ms: int = 200,
        max_ms: int = 2000,
        wake_fd: int | None = None,
        leading: bool = False,
    ) -> Events:
        engine = self._engine
        if engine is None:
            raise closed_error()
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            n = _pkw_wait(
                engine,
                -1 if wake_fd is None else wake_fd,
                -1 if deadline is None else timeout_ms(deadline),
                quiet_ms,
                max_ms,
                _LEADING if leading else 0,
                self._text,
            )
            if n >= 0:
                break
            if ffi.errno != errno.EINTR:
                raise _oserror(ffi.errno)
            # EINTR before anything arrived. The interpreter has run the signal handlers
            # by now (and propagated any exception they raised): wait for the rest.
        # The batch in one piece (csrc/pkw.h, pkw_wait): one copy, one decode, one split,
        # rather than a foreign call per field of every record.
        fields = _unpack(self._text[0], n).decode(_FS_ENCODING, _FS_ERRORS).split("\0")
        # tuple.__new__, as NamedTuple's own _make: the generated __new__ is one more
        # Python call on the path of every wake-up.
        return _new_tuple(
            Events,
            (
                fields[0] == "1",
                fields[1] == "1",
                int(fields[2]),
                int(fields[3]) / 1000,
                tuple(map(int, fields[4:-1:3])),
                tuple(map(int, fields[5:-1:3])),
                tuple(fields[6:-1:3]),
            ),
        )
