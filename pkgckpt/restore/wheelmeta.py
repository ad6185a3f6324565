"""A wheel's METADATA read without installing it: what the rebase's consistency check
knows of a planned package (`rebase.py`: a wheel in the find-links; `indexmeta.py`: a
small wheel from an index that offers no metadata file).

    metadata(wheel: Path | bytes) -> str | None
        The text of the wheel's top-level `<name>.dist-info/METADATA` (the first such
        member in its central directory); None: none, or not readable.

A wheel is hostile until read (a find-links directory or an index is not pkgckpt's), and
nothing raises: only a regular file is read (a FIFO or a device under a wheel's name
would block or never end; a symlink to /dev/zero would be read until memory runs out),
the standard library's zipfile gets the file already open (the name may point elsewhere
by then), METADATA is read only up to `MAX_METADATA` bytes, and whatever zipfile
raises on a hostile archive (a bad version field, an encrypted member, a corrupt deflate
stream, a name that is not UTF-8, a zip64 offset past what a seek takes) reads as
"unreadable".
"""

from __future__ import annotations

import io
import os
import stat
import zlib
from pathlib import Path
from typing import BinaryIO

MAX_METADATA = 1 << 20
"""Bytes of a METADATA file (or of an installed one's header) read at most: a real one is
a few KB."""
MAX_WHEEL = 5 << 20
"""Bytes of a whole wheel read at most for its METADATA: an index's wheel that has no
metadata file (`indexmeta.py`), a captured one (an artifact)."""


def metadata(wheel: Path | bytes) -> str | None:
    """See the module."""
    if isinstance(wheel, bytes):
        return _read(io.BytesIO(wheel))
    try:
        fd = os.open(wheel, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return None
        except OSError:
            return None
        return _read(f)


def _read(wheel: BinaryIO) -> str | None:
    # Imported here: most restores plan no rebase and read no wheel.
    import zipfile

    try:
        with zipfile.ZipFile(wheel) as zf:
            for info in zf.infolist():
                parts = info.filename.split("/")
                if len(parts) == 2 and parts[0].endswith(".dist-info") and parts[1] == "METADATA":
                    if info.file_size > MAX_METADATA:
                        return None
                    return zf.read(info).decode("utf-8", "replace")
    except (
        zipfile.BadZipFile,
        OSError,
        ValueError,
        OverflowError,  # a zip64 offset of 2**64 - 1, sought in memory
        EOFError,
        RuntimeError,
        NotImplementedError,
        zlib.error,
    ):
        return None
    return None
