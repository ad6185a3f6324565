"""A wheel's METADATA is read as zipfile reads it, without zipfile for ordinary wheels, and
a hostile wheel in the find-links or from an index is "unreadable", never a crash
(restore/wheelmeta.py, used by restore/rebase.py and restore/indexmeta.py)."""

from __future__ import annotations

import io
import os
import signal
import struct
import zipfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from wheelhouse import Dist, build_wheel

from pkgckpt.restore import wheelmeta
from pkgckpt.restore.rebase import MAX_METADATA, wheel_requires

META = "Metadata-Version: 2.1\nName: demo\nVersion: 1.0\nRequires-Dist: dep>=1\n"
INFO = "demo-1.0.dist-info"
_TIMESTAMP = struct.pack("<HHB4s", 0x5455, 5, 1, b"\0\0\0\0")
"""An extra field record (extended timestamp), as some wheel builders write."""


def _zip(
    members: list[tuple[str, bytes]],
    *,
    method: int = zipfile.ZIP_DEFLATED,
    comment: bytes = b"",
    streamed: bool = False,
    zip64: bool = False,
    extra: bytes = b"",
) -> bytes:
    """A zip of `members`, in the shape asked: stored or deflated, with a comment, written
    to a stream that cannot seek (data descriptors), with zip64 local records, or with
    an extra field on every member."""
    out = io.BytesIO()

    class Unseekable(io.RawIOBase):
        def writable(self) -> bool:
            return True

        def write(self, b: bytes) -> int:  # type: ignore[override]
            return out.write(b)

    with zipfile.ZipFile(Unseekable() if streamed else out, "w", method) as zf:
        for name, data in members:
            info = zipfile.ZipInfo(name, (2020, 1, 1, 0, 0, 0))
            info.compress_type = method
            info.extra = extra
            with zf.open(info, "w", force_zip64=zip64) as f:
                f.write(data)
        zf.comment = comment
    return out.getvalue()


def _wheel(**shape: object) -> bytes:
    return _zip(
        [
            ("demo/__init__.py", b"x = 1\n" * 50),
            (f"{INFO}/WHEEL", b"Wheel-Version: 1.0\n"),
            (f"{INFO}/METADATA", META.encode()),
            (f"{INFO}/RECORD", b""),
        ],
        **shape,  # type: ignore[arg-type]
    )


def _zip64_end() -> bytes:
    """A wheel with zipfile's zip64 end record and locator, which it writes past 65,535
    members (the limit lowered while writing, rather than writing that many)."""
    limit = zipfile.ZIP_FILECOUNT_LIMIT
    zipfile.ZIP_FILECOUNT_LIMIT = 1  # type: ignore[misc]
    try:
        data = _wheel()
    finally:
        zipfile.ZIP_FILECOUNT_LIMIT = limit  # type: ignore[misc]
    assert b"PK\x06\x07" in data[-60:]
    return data


def _entry_field(data: bytes, fmt: str, offset: int, value: int, member: str) -> bytes:
    """`data` with one field of `member`'s central directory entry set to `value`."""
    out = bytearray(data)
    at = out.find(b"PK\x01\x02")
    while out[at + 46 : at + 46 + len(member)] != member.encode():
        at = out.find(b"PK\x01\x02", at + 1)
    struct.pack_into(fmt, out, at + offset, value)
    return bytes(out)


def _fast(data: bytes) -> str | None:
    """The reader without its zipfile fallback (raises `_Other` where it would use it)."""
    return wheelmeta._metadata(len(data), lambda at, n: data[at : at + n])


SHAPES = {
    "deflated": (_wheel(), META, True),
    "stored": (_wheel(method=zipfile.ZIP_STORED), META, True),
    # zipfile takes the signature in the comment for the end record: so does this reader.
    "end in the comment": (_wheel(comment=b"it says PK\x05\x06 in it"), None, False),
    "plain comment": (_wheel(comment=b"built by hand"), META, True),
    "data descriptors": (_wheel(streamed=True), META, True),
    "extra fields": (_wheel(extra=_TIMESTAMP), META, True),
    "zip64 local records": (_wheel(zip64=True), META, True),
    "zip64 end record": (_zip64_end(), META, False),
    "data before the archive": (b"#!/bin/sh\nexit 0\n" + _wheel(), META, False),
    "first of two": (
        _zip([(f"{INFO}/METADATA", META.encode()), ("x.dist-info/METADATA", b"Name: x\n")]),
        META,
        True,
    ),
    "nested only": (_zip([(f"a/{INFO}/METADATA", META.encode())]), None, True),
    "none": (_zip([("demo/__init__.py", b"")]), None, True),
    "empty archive": (_zip([]), None, True),
    "utf-8 name": (_zip([("démo-1.0.dist-info/METADATA", META.encode())]), META, True),
    "too large": (_zip([(f"{INFO}/METADATA", b"x" * (MAX_METADATA + 1))]), None, True),
    "encrypted": (_entry_field(_wheel(), "<H", 8, 1, f"{INFO}/METADATA"), None, True),
    "patched": (_entry_field(_wheel(), "<H", 8, 0x20, f"{INFO}/METADATA"), None, True),
    # zipfile cuts a name at a NUL: "…/METADATA\0x" is the METADATA to it.
    "NUL in the name": (
        _zip([(f"{INFO}/METADATA~x", META.encode())]).replace(b"METADATA~x", b"METADATA\0x"),
        META,
        False,
    ),
    "overlapping members": (
        _entry_field(_wheel(method=zipfile.ZIP_STORED), "<L", 20, 200, f"{INFO}/METADATA"),
        META,
        False,
    ),
    "bzip2": (_zip([(f"{INFO}/METADATA", META.encode())], method=zipfile.ZIP_BZIP2), META, False),
    "not a zip": (b"PK\x03\x04 not really", None, False),
}


@pytest.mark.parametrize("shape", SHAPES)
def test_every_shape_of_wheel_reads_as_zipfile_reads_it(shape: str, tmp_path: Path) -> None:
    """From bytes and from a file, the answer is zipfile's (and the expected text); the
    ordinary shapes are read without zipfile."""
    data, want, fast = SHAPES[shape]
    path = tmp_path / "demo-1.0-py3-none-any.whl"
    path.write_bytes(data)
    assert wheelmeta.by_zipfile(io.BytesIO(data)) == want
    assert wheelmeta.metadata(data) == want
    assert wheelmeta.metadata(path) == want
    if fast:
        assert _fast(data) == want
    else:
        with pytest.raises(wheelmeta._Other):
            _fast(data)


_BASES = [
    _wheel(),
    _wheel(method=zipfile.ZIP_STORED),
    _wheel(streamed=True),
    _wheel(extra=_TIMESTAMP),
]


def _headers(data: bytes) -> list[tuple[int, int]]:
    """(offset, size) of every header: central directory entries (with their extra
    fields), local headers, the end record."""
    found = []
    for signature, size in ((b"PK\x01\x02", 46 + 40), (b"PK\x03\x04", 30), (b"PK\x05\x06", 22)):
        at = data.find(signature)
        while at >= 0:
            found.append((at, size))
            at = data.find(signature, at + 1)
    return found


@st.composite
def _mutated(draw: st.DrawFn) -> bytes:
    """A wheel with a few bytes overwritten, mostly within one of its headers (the
    central directory, a local header, the end record), sometimes cut short or grown."""
    data = bytearray(draw(st.sampled_from(_BASES)))
    for _ in range(draw(st.integers(1, 3))):
        if draw(st.booleans()):
            start, size = draw(st.sampled_from(_headers(bytes(data))))
            at = min(len(data) - 1, start + draw(st.integers(0, size - 1)))
        else:
            at = draw(st.integers(0, len(data) - 1))
        if draw(st.booleans()):
            data[at] ^= 1 << draw(st.integers(0, 7))
        else:
            value = draw(st.binary(min_size=1, max_size=4))
            data[at : at + len(value)] = value
    cut = draw(st.sampled_from([None, None, None, "cut", "grow"]))
    if cut == "cut":
        del data[draw(st.integers(0, len(data) - 1)) :]
    elif cut == "grow":
        data += draw(st.binary(min_size=1, max_size=30))
    return bytes(data)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_mutated())
def test_a_mutated_wheel_reads_as_zipfile_reads_it(data: bytes) -> None:
    """Whatever bytes a hostile wheel has, the answer is zipfile's (a text or None), and
    reading it raises nothing."""
    assert wheelmeta.metadata(data) == wheelmeta.by_zipfile(io.BytesIO(data))


def test_a_planted_wheel_is_unreadable_not_a_crash(tmp_path: Path) -> None:
    """A find-links wheel whose METADATA entry claims a zip version from the future, or
    whose deflate stream is corrupt, has unknown requirements: zipfile raised
    NotImplementedError and zlib.error there, which stopped the restore."""
    links = tmp_path / "links"
    good = build_wheel(Dist("planted", "1.0", requires=["dep>=1"]), links)
    assert wheel_requires(good) == ["dep>=1"]
    data = bytearray(good.read_bytes())
    directory = data.rfind(b"PK\x01\x02")
    data[directory + 6] = 99  # version needed to extract
    good.write_bytes(data)
    assert wheel_requires(good) is None

    build_wheel(Dist("planted", "1.0", requires=["dep>=1"]), links)
    data = bytearray(good.read_bytes())
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as zf:
        (info,) = [i for i in zf.infolist() if i.filename.endswith("/METADATA")]
    (name_len, extra_len) = struct.unpack_from("<HH", data, info.header_offset + 26)
    start = info.header_offset + 30 + name_len + extra_len
    data[start : start + 4] = b"\xff\xff\xff\xff"
    good.write_bytes(data)
    assert wheel_requires(good) is None


def test_a_fifo_under_a_wheels_name_is_not_waited_on(tmp_path: Path) -> None:
    """A FIFO planted in the find-links under a wheel's name is unreadable at once: opening
    it for zipfile would wait for a writer forever (an alarm turns a wait into a failure).
    Only a regular file is read."""
    fifo = tmp_path / "planted-1.0-py3-none-any.whl"
    os.mkfifo(fifo)

    class Waited(Exception):
        """Not an OSError: nothing on the way may take it for an unreadable file."""

    def waited(signum: int, frame: object) -> None:
        raise Waited

    before = signal.signal(signal.SIGALRM, waited)
    signal.alarm(5)
    try:
        assert wheel_requires(fifo) is None
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, before)
