# The compiled cffi module (csrc/ via _inotify_build.py): what inotify.py uses, plus what
# the smoke test (tests/test_native.py) reads (the PKW_* constants, sizes).
from typing import Literal, final

@final
class _Engine: ...

@final
class _CharArray: ...

@final
class _Record:
    wd: int
    mask: int
    name: _CharArray

@final
class _Records:
    def __getitem__(self, i: int) -> _Record: ...

@final
class _Batch:
    records: _Records
    n_records: int
    overflow: int
    woken: int
    error: int
    last_ms: int

@final
class _FFI:
    NULL: _Engine
    errno: int
    def new(self, cdecl: Literal["struct pkw_batch *"]) -> _Batch: ...
    def string(self, cdata: _CharArray) -> bytes: ...
    def sizeof(self, cdecl: str) -> int: ...

@final
class _Lib:
    PKW_RECORD: int
    PKW_INSIDE: int
    PKW_DIRTY: int
    PKW_MARKERS: int
    PKW_LEADING: int
    PKW_NAME_MAX: int
    def pkw_new(self, max_records: int) -> _Engine: ...
    def pkw_fileno(self, e: _Engine) -> int: ...
    def pkw_free(self, e: _Engine) -> int: ...
    def pkw_add_watch(self, e: _Engine, path: bytes, mask: int, flags: int) -> int: ...
    def pkw_add_marker(self, e: _Engine, parent_wd: int, name: bytes) -> int: ...
    def pkw_rm_watch(self, e: _Engine, wd: int) -> int: ...
    def pkw_wait(
        self,
        e: _Engine,
        wake_fd: int,
        timeout_ms: int,
        quiet_ms: int,
        max_ms: int,
        flags: int,
        out: _Batch,
    ) -> int: ...
    def pkw_record_size(self) -> int: ...

ffi: _FFI
lib: _Lib
