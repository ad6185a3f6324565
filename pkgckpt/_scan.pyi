# The compiled cffi module (csrc/pks.c via _scan_build.py): what scan/listing.py uses.
from typing import Literal, final

@final
class _Null: ...

@final
class _Entry:
    ino: int
    mtime_ns: int
    mode: int
    flags: int
    name_off: int
    name_len: int

@final
class _Entries:
    def __getitem__(self, i: int) -> _Entry: ...

@final
class _Buffer:
    def __getitem__(self, s: slice) -> bytes: ...
    def __buffer__(self, flags: int) -> memoryview: ...

@final
class _FFI:
    NULL: _Null
    errno: int
    def new(self, cdecl: Literal["struct pks_entry[]", "char[]"], n: int) -> _Entries: ...
    def buffer(self, cdata: _Entries, size: int) -> _Buffer: ...
    def sizeof(self, cdecl: str) -> int: ...

@final
class _Lib:
    PKS_PROBED: int
    PKS_LOOKED: int
    def pks_list(
        self,
        dfd: int,
        suffixes: bytes,
        probe_in: bytes,
        probe: bytes | _Null,
        out: _Entries,
        cap: int,
        names: _Entries,
        names_cap: int,
    ) -> int: ...

ffi: _FFI
lib: _Lib
