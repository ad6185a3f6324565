"""The native backend of `pkgckpt.inotify`: the C engine of ``csrc/pkw.c`` through cffi.

The only module that touches ``ffi`` and ``lib``; nothing of cffi leaves it.
"""

from __future__ import annotations

import errno
import os
from typing import TYPE_CHECKING

from .inotify import Events, Record, _oserror

if TYPE_CHECKING:
    from ._inotify import _Engine  # the stub's name for the engine's cdata


class Native:
    def __init__(self, max_records: int) -> None:
        # Imported here, where an ImportError (no compiled engine) makes `Inotify` fall
        # back to the Python backend, however this module was imported before.
        from ._inotify import ffi, lib

        self._ffi = ffi
        self._lib = lib
        engine = lib.pkw_new(max_records)
        if engine == ffi.NULL:
            raise _oserror(ffi.errno)
        self._engine: _Engine = engine
        self._out = ffi.new("struct pkw_batch *")

    def fileno(self) -> int:
        return self._lib.pkw_fileno(self._engine)

    def close(self) -> None:
        # Called once (Inotify.close). close(2) releases the fd even when it reports an
        # error; there is nothing a caller could do about one here.
        self._lib.pkw_free(self._engine)

    def add_watch(self, path: str | os.PathLike[str], mask: int, markers: bool) -> int:
        flags = self._lib.PKW_MARKERS if markers else 0
        wd = self._lib.pkw_add_watch(self._engine, os.fsencode(path), mask, flags)
        if wd < 0:
            raise _oserror(self._ffi.errno, path)
        return wd

    def add_marker(self, parent_wd: int, name: str) -> int:
        wd = self._lib.pkw_add_marker(self._engine, parent_wd, os.fsencode(name))
        if wd < 0:
            raise _oserror(self._ffi.errno, name)
        return wd

    def rm_watch(self, wd: int) -> None:
        if self._lib.pkw_rm_watch(self._engine, wd) < 0:
            raise _oserror(self._ffi.errno)

    def wait(
        self, wake_fd: int | None, timeout_ms: int, quiet_ms: int, max_ms: int, leading: bool
    ) -> Events | None:
        out = self._out
        n = self._lib.pkw_wait(
            self._engine,
            -1 if wake_fd is None else wake_fd,
            timeout_ms,
            quiet_ms,
            max_ms,
            self._lib.PKW_LEADING if leading else 0,
            out,
        )
        if n < 0:
            err = self._ffi.errno
            if err == errno.EINTR:
                return None
            raise _oserror(err)
        string = self._ffi.string
        recs = out.records
        fsdecode = os.fsdecode
        return Events(
            tuple(
                [
                    Record(r.wd, r.mask, fsdecode(string(r.name)))
                    for r in map(recs.__getitem__, range(n))
                ]
            ),
            bool(out.overflow),
            bool(out.woken),
            int(out.error),
            out.last_ms / 1000,
        )
