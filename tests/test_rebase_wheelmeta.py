"""A hostile wheel in the find-links or from an index is "unreadable", never a crash
(restore/wheelmeta.py, used by restore/rebase.py and restore/indexmeta.py)."""

from __future__ import annotations

import io
import os
import signal
import struct
import zipfile
from pathlib import Path

from wheelhouse import Dist, build_wheel

from pkgckpt.restore.rebase import wheel_requires
from pkgckpt.restore.wheelmeta import metadata


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


def test_a_symlink_to_a_device_is_not_read(tmp_path: Path) -> None:
    """A find-links "wheel" that is a symlink to /dev/zero is refused before zipfile
    reads it, which would read until memory runs out."""
    planted = tmp_path / "planted-1.0-py3-none-any.whl"
    planted.symlink_to("/dev/zero")
    assert wheel_requires(planted) is None


def test_a_zip64_offset_past_any_seek_is_unreadable(tmp_path: Path) -> None:
    """A wheel whose METADATA entry's zip64 extra field puts its local header at offset
    2**64 - 1: zipfile's seek raised OverflowError on the wheel read into memory (an
    index's), which stopped the restore. Unreadable, from memory and from a file."""
    wheel = build_wheel(Dist("planted", "1.0", requires=["dep>=1"]), tmp_path / "links")
    data = bytearray(wheel.read_bytes())
    (entry,) = struct.unpack_from("<I", data, data.rfind(b"PK\x05\x06") + 16)
    while True:  # the central directory's entry for METADATA
        (name_len, extra_len, comment_len) = struct.unpack_from("<HHH", data, entry + 28)
        if data[entry + 46 : entry + 46 + name_len].endswith(b".dist-info/METADATA"):
            break
        entry += 46 + name_len + extra_len + comment_len
    zip64 = struct.pack("<HHQ", 1, 8, 2**64 - 1)  # the zip64 extra: the header offset only
    end = entry + 46 + name_len
    data[end : end + extra_len] = zip64
    struct.pack_into("<H", data, entry + 30, len(zip64))
    struct.pack_into("<I", data, entry + 42, 0xFFFFFFFF)  # "in the zip64 extra field"
    directory_end = data.rfind(b"PK\x05\x06")
    (size,) = struct.unpack_from("<I", data, directory_end + 12)
    struct.pack_into("<I", data, directory_end + 12, size + len(zip64) - extra_len)
    assert metadata(bytes(data)) is None
    wheel.write_bytes(data)
    assert wheel_requires(wheel) is None
