"""A wheel's METADATA read without installing it: what the rebase's consistency check
knows of a planned package (`rebase.py`: a wheel in the find-links; `indexmeta.py`: a
small wheel from an index that offers no metadata file).

    metadata(wheel: Path | bytes) -> str | None
        The text of the wheel's top-level `<name>.dist-info/METADATA` (the first such
        member in its central directory); None: none, or not readable.

The rule: the answer is the standard library's zipfile's (`by_zipfile`), for a central
directory of at most `MAX_DIRECTORY` bytes, and nothing raises. zipfile builds an object
per member (wheels have thousands) and its import costs ~3 ms of a rebase, so this
module reads only the end record, the central directory and the one member, checking
what zipfile checks when it opens the archive (every entry's signature, bounds, version
needed, extra fields and name encoding) and when it reads the member (local header,
name, flags, sizes, CRC-32). Where an archive takes a form this reader does not follow
(zip64, data before the archive, a comment not ending the file, a member compressed
otherwise than stored or deflated, members that overlap, sizes that disagree), zipfile
reads it instead, its exceptions taken for "unreadable"; a hypothesis test holds the two
to the same answer on mutated wheels.

A wheel is hostile until read (a find-links directory or an index is not pkgckpt's):
only a regular file is read (a FIFO or a device under a wheel's name would block or
never end), zipfile gets the file already open, reads are bounded (`MAX_DIRECTORY`,
`rebase.MAX_METADATA`) and within the file, every offset and length is checked before it
is used, and the member must match its CRC-32.
"""

from __future__ import annotations

import io
import os
import stat
import struct
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from .rebase import MAX_METADATA

MAX_DIRECTORY = 64 << 20
"""Bytes of a central directory read at most (a wheel of 100,000 files has ~10 MB)."""

_END = struct.Struct("<4s4H2LH")
_ENTRY = struct.Struct("<4s4B4H3L5H2L")
_LOCAL = struct.Struct("<4s2B4H3L2H")
_END_SIGNATURE = b"PK\x05\x06"
_ENTRY_SIGNATURE = b"PK\x01\x02"
_LOCAL_SIGNATURE = b"PK\x03\x04"
_ZIP64_LOCATOR = b"PK\x06\x07"
_ZIP64_LOCATOR_SIZE = 20
_COMMENT_REACH = 1 << 16
"""How far before the end zipfile looks for the end record (a comment's length)."""
_MAX_EXTRACT_VERSION = 63
_ZIP64 = 0xFFFFFFFF
_ENCRYPTED, _PATCHED, _STRONG, _UTF8 = 0x1, 0x20, 0x40, 0x800
_STORED, _DEFLATED = 0, 8
_PACKED_REACH = 2 * MAX_METADATA + 1024
"""A deflated METADATA of at most `MAX_METADATA` bytes is never larger than this."""

Read = Callable[[int, int], bytes]
"""(offset, length) -> the bytes there, fewer at the end of the file."""


class _Other(Exception):
    """An archive in a form left to zipfile."""


def metadata(wheel: Path | bytes) -> str | None:
    """See the module."""
    if isinstance(wheel, bytes):
        view = memoryview(wheel)
        try:
            return _metadata(len(wheel), lambda at, n: bytes(view[at : at + n]))
        except _Other:
            return by_zipfile(io.BytesIO(wheel))
    try:
        fd = os.open(wheel, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        # A FIFO or a device planted under a wheel's name would block or never end.
        if not stat.S_ISREG(info.st_mode):
            return None
        return _metadata(info.st_size, lambda at, n: os.pread(fd, n, at))
    except _Other:
        # The same open file: the name may point elsewhere by now.
        with os.fdopen(os.dup(fd), "rb") as f:
            return by_zipfile(f)
    except OSError:
        return None
    finally:
        os.close(fd)


def by_zipfile(wheel: BinaryIO) -> str | None:
    """`metadata()` of the wheel in `wheel` as zipfile reads it."""
    import zipfile

    try:
        with zipfile.ZipFile(wheel) as zf:
            for info in zf.infolist():
                parts = info.filename.split("/")
                if len(parts) == 2 and parts[0].endswith(".dist-info") and parts[1] == "METADATA":
                    if info.file_size > MAX_METADATA:
                        return None
                    return zf.read(info).decode("utf-8", "replace")
    # A bad version field, an encrypted member, a corrupt deflate stream, a name that is
    # not UTF-8: zipfile raises more than BadZipFile on a hostile archive.
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, RuntimeError, zlib.error):
        return None
    return None


def _metadata(size: int, read: Read) -> str | None:
    directory_at, directory_size = _end(size, read)
    if directory_size > MAX_DIRECTORY:
        return None
    directory = read(directory_at, directory_size)
    if len(directory) != directory_size:
        raise _Other
    member, offsets = _walk(directory)
    if member is None:
        return None
    flags, method, crc, packed, unpacked, local_at, name = member
    if unpacked > MAX_METADATA:
        return None
    header = read(local_at, _LOCAL.size)
    if len(header) != _LOCAL.size:
        return None
    signature, _, _, local_flags, *_, name_len, extra_len = _LOCAL.unpack(header)
    if signature != _LOCAL_SIGNATURE or flags & (_PATCHED | _STRONG):
        return None
    local_name = _decoded(read(local_at + _LOCAL.size, name_len), local_flags)
    if local_name is None or local_name != _decoded(name, flags):
        return None
    data_at = local_at + _LOCAL.size + name_len + extra_len
    following = [o for o in offsets if o > local_at]
    if offsets.count(local_at) > 1 or data_at + packed > min(following, default=directory_at):
        raise _Other  # overlapping members: newer zipfiles refuse them, older read on
    if flags & _ENCRYPTED:
        return None
    if method not in (_STORED, _DEFLATED) or packed > _PACKED_REACH:
        raise _Other
    data = read(data_at, packed)
    if len(data) != packed:
        raise _Other
    if method == _DEFLATED:
        try:
            data = zlib.decompressobj(-15).decompress(data, unpacked + 1)
        except zlib.error:
            raise _Other from None
    if len(data) != unpacked:
        raise _Other
    if zlib.crc32(data) != crc:
        return None
    return data.decode("utf-8", "replace")


def _end(size: int, read: Read) -> tuple[int, int]:
    """(where the central directory starts, its size), from the end record zipfile finds:
    the last 22 bytes with no comment, else the last end signature within a comment's
    reach. Anything but one archive with no zip64 record raises `_Other`."""
    reach = min(size, _END.size + _COMMENT_REACH)
    tail = read(size - reach, reach)
    if len(tail) != reach or reach < _END.size:
        raise _Other
    at = reach - _END.size
    if not (tail.startswith(_END_SIGNATURE, at) and tail.endswith(b"\0\0")):
        at = tail.rfind(_END_SIGNATURE)
        if at < 0 or at + _END.size > reach:
            raise _Other
    _, _, _, _, _, directory_size, directory_at, comment = _END.unpack_from(tail, at)
    end_at = size - reach + at
    if at + _END.size + comment != reach or directory_at + directory_size != end_at:
        raise _Other  # a comment not ending the file, or data before the archive
    locator_at = end_at - _ZIP64_LOCATOR_SIZE
    if locator_at >= 0 and read(locator_at, 4) == _ZIP64_LOCATOR:
        raise _Other
    return directory_at, directory_size


_Member = tuple[int, int, int, int, int, int, bytes]
"""(flags, method, CRC-32, packed size, size, local header offset, name)."""


def _walk(directory: bytes) -> tuple[_Member | None, list[int]]:
    """The first `<name>.dist-info/METADATA` entry (None: none) and every entry's local
    header offset, each entry checked as zipfile checks it on opening the archive."""
    found: _Member | None = None
    offsets: list[int] = []
    at = 0
    while at < len(directory):
        if at + _ENTRY.size > len(directory):
            raise _Other
        fields = _ENTRY.unpack_from(directory, at)
        signature, _, _, version, _, flags, method, _, _, crc, packed, unpacked = fields[:12]
        name_len, extra_len, comment_len, _, _, _, local_at = fields[12:]
        name_at = at + _ENTRY.size
        at = name_at + name_len + extra_len + comment_len
        if signature != _ENTRY_SIGNATURE or at > len(directory):
            raise _Other
        if version > _MAX_EXTRACT_VERSION or _ZIP64 in (packed, unpacked, local_at):
            raise _Other
        name = directory[name_at : name_at + name_len]
        _check_extra(directory[name_at + name_len : name_at + name_len + extra_len])
        if b"\0" in name or (flags & _UTF8 and _decoded(name, flags) is None):
            raise _Other
        offsets.append(local_at)
        if found is None and name.count(b"/") == 1:
            head, _, tail = name.partition(b"/")
            if tail == b"METADATA" and head.endswith(b".dist-info"):
                found = (flags, method, crc, packed, unpacked, local_at, name)
    return found, offsets


def _check_extra(extra: bytes) -> None:
    """zipfile refuses an extra field whose records overrun it, and reads sizes from a
    zip64 record: both are left to it."""
    at = 0
    while len(extra) - at >= 4:
        kind, length = struct.unpack_from("<HH", extra, at)
        if at + 4 + length > len(extra) or kind == 0x0001:
            raise _Other
        at += 4 + length


def _decoded(name: bytes, flags: int) -> str | None:
    """A member name as zipfile decodes it (None: not UTF-8 where the flag says so)."""
    if not flags & _UTF8:
        return name.decode("cp437")
    try:
        return name.decode("utf-8")
    except UnicodeDecodeError:
        return None
