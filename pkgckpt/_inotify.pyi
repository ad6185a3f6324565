# The compiled cffi module (csrc/ via _inotify_build.py): what inotify.py uses, plus what
# the smoke test (tests/test_native.py) reads (the PKW_* constants).
from typing import Literal, final

@final
class _Engine: ...

@final
class _Text: ...

@final
class _TextOut:
    def __getitem__(self, i: Literal[0]) -> _Text: ...

@final
class _FFI:
    NULL: _Engine
    errno: int
    def new(self, cdecl: Literal["const char **"]) -> _TextOut: ...
    def unpack(self, cdata: _Text, length: int) -> bytes: ...

@final
class _Lib:
    PKW_RECORD: int
    PKW_INSIDE: int
    PKW_DIRTY: int
    PKW_MARKERS: int
    PKW_LEADING: int
    def pkw_new(self, max_records: int) -> _Engine: ...
    def pkw_fileno(self, e: _Engine) -> int: ...
    def pkw_free(self, e: _Engine) -> int: ...
    def pkw_add_watch(self, e: _Engine, path: bytes, mask: int, flags: int) -> int: ...
    def pkw_add_marker(self, e: _Engine, parent_wd: int, name: bytes) -> int: ...
    def pkw_drop_marker(self, e: _Engine, parent_wd: int, name: bytes) -> None: ...
    def pkw_rm_watch(self, e: _Engine, wd: int) -> int: ...
    def pkw_wait(
        self,
        e: _Engine,
        wake_fd: int,
        timeout_ms: int,
        quiet_ms: int,
        max_ms: int,
        flags: int,
        text: _TextOut,
    ) -> int: ...

ffi: _FFI
lib: _Lib
