"""A conda prefix's `conda-meta/` -> the conda packages installed in it.

conda, mamba, micromamba and pixi write one `<name>-<version>-<build>.json` record per
linked package and append every transaction to `conda-meta/history`. A record gives the
name, version, build string, channel, subdir and the archive's sha256/md5; the history's
`# update specs:` / `# remove specs:` lines say what the user asked for by name (a record's
own `requested_spec(s)`, written by newer clients, counts too).

Records are read incrementally: one whose `(inode, size, mtime)` is unchanged since the
last scan is not decoded again (a record holds its file list and is often 100 KB).
"""

from __future__ import annotations

import ast
import os
import re
import stat
from collections.abc import Iterable
from pathlib import Path

import msgspec

from ..manifest import Package
from . import ScanResult
from .python import strip_credentials

MAX_RECORD = 64 * 1024 * 1024
"""A record larger than this is reported broken, not read (a record lists its files)."""
MAX_HISTORY = 16 * 1024 * 1024
HISTORY = "history"
_DEFAULT_HOST = "https://conda.anaconda.org/"
_SPEC_LINE = re.compile(r"^#\s*(update|install|create|remove|neutered)\s+specs:\s*(\[.*\])\s*$")
_SPEC_NAME = re.compile(r"^\s*(?:[^:\s]+::)?([A-Za-z0-9_][A-Za-z0-9_.+-]*)")
_TOKEN = re.compile(r"/t/[^/]+/")
_MAX_SPEC_LINE = 64 * 1024
"""A history spec line longer than this is not parsed: ast.literal_eval of a planted 16 MB
line took 34 s and 8 GB."""


class _Record(msgspec.Struct, kw_only=True):
    """The fields of a conda-meta record that pkgckpt keeps; the rest is skipped unread."""

    name: str
    version: str
    build: str
    build_number: int = 0
    channel: str | None = None
    subdir: str | None = None
    sha256: str | None = None
    md5: str | None = None
    requested_spec: str | None = None
    requested_specs: list[str] | None = None


_record_decoder = msgspec.json.Decoder(_Record)


def channel_name(channel: str | None, subdir: str | None) -> str | None:
    """The channel as people name it: `conda-forge` for its anaconda.org URL, a URL's own
    spelling (without a trailing subdir or slash) for any other."""
    if not channel:
        return None
    # The manifest is on a shared store: a private channel's user:password@ or anaconda.org
    # /t/<token>/ stays in conda's own record, never in pkgckpt's.
    try:
        name = _TOKEN.sub("/", strip_credentials(channel)).rstrip("/")
    except ValueError:  # no URL urlsplit can read: no channel to name
        return None
    if subdir and name.endswith("/" + subdir):
        name = name[: -len(subdir) - 1]
    return name.removeprefix(_DEFAULT_HOST)


def spec_names(specs: Iterable[str]) -> set[str]:
    """The package names of MatchSpecs (`conda-forge::numpy>=1.2` -> numpy)."""
    names = set()
    for spec in specs:
        m = _SPEC_NAME.match(spec)
        if m:
            names.add(m.group(1).lower())
    return names


def requested(history: str) -> set[str]:
    """The names the user asked for, as conda's history records them, removals applied."""
    wanted: set[str] = set()
    for line in history.splitlines():
        if len(line) > _MAX_SPEC_LINE:
            continue
        m = _SPEC_LINE.match(line.strip())
        if m is None or m.group(1) == "neutered":
            continue
        try:
            specs = ast.literal_eval(m.group(2))
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            continue
        if not isinstance(specs, list):
            continue
        names = spec_names(s for s in specs if isinstance(s, str))
        if m.group(1) == "remove":
            wanted -= names
        else:
            wanted |= names
    return wanted


class _Cached(msgspec.Struct, frozen=True):
    identity: tuple[int, int, int]
    record: _Record


class CondaScanner:
    """Scan one prefix's `conda-meta` directory; each later `scan()` decodes only records
    that changed."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.exists = False
        self.renewed: frozenset[str] = frozenset()
        """Packages whose record the last scan found made anew since the scan before it
        (`SiteScanner.renewed`)."""
        self._cache: dict[str, _Cached] = {}
        self._scanned = False

    def made_ns(self, name: str) -> int | None:
        """When the last scan's `name` was installed (its conda-meta record's mtime), or
        None."""
        found = (c.identity[2] for c in self._cache.values() if c.record.name.lower() == name)
        return max(found, default=None)

    def scan(self) -> ScanResult:
        self.renewed = frozenset()
        try:
            entries = list(os.scandir(self.path))
        except FileNotFoundError:
            self.exists = False
            self._cache.clear()
            self._scanned = False
            return ScanResult()
        except OSError as e:
            self.exists = False
            return ScanResult(broken={".": f"cannot list: {e.strerror}"})
        self.exists = True
        broken: dict[str, str] = {}
        records: list[_Record] = []
        history = ""
        cache: dict[str, _Cached] = {}
        renewed: set[str] = set()
        for entry in entries:
            name = entry.name
            if name == HISTORY:
                history = self._read(entry, MAX_HISTORY, broken) or ""
                continue
            if not name.endswith(".json") or name.startswith("."):
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError as e:
                broken[name] = f"cannot stat: {e.strerror}"
                continue
            identity = (st.st_ino, st.st_size, st.st_mtime_ns)
            kept = self._cache.get(name)
            if kept is not None and kept.identity == identity:
                cache[name] = kept
                records.append(kept.record)
                continue
            data = self._read(entry, MAX_RECORD, broken)
            if data is None:
                continue
            try:
                record = _record_decoder.decode(data)
            except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError) as e:
                broken[name] = f"not a conda record: {e}"
                continue
            except RecursionError:
                # A 2 KB record nested 1,000 deep, which a writer of a shared prefix can
                # plant: that record broken, not every scan of the prefix ended.
                broken[name] = "not a conda record: nested too deep"
                continue
            cache[name] = _Cached(identity, record)
            records.append(record)
            if self._scanned:
                renewed.add(record.name.lower())
        self._cache, self._scanned = cache, True
        self.renewed = frozenset(renewed)
        asked = requested(history)
        packages: dict[str, Package] = {}
        for r in sorted(records, key=lambda r: (r.name, r.version, r.build)):
            own = spec_names([r.requested_spec] if r.requested_spec else [])
            own |= spec_names(r.requested_specs or ())
            key = r.name.lower()
            packages[key] = Package(
                name=key,
                version=r.version,
                requested=key in asked or key in own,
                installer="conda",
                build=r.build,
                channel=channel_name(r.channel, r.subdir),
                subdir=r.subdir,
                sha256=r.sha256,
                md5=r.md5,
            )
        return ScanResult(packages, broken)

    @staticmethod
    def _read(entry: os.DirEntry[str], limit: int, broken: dict[str, str]) -> str | None:
        try:
            fd = os.open(entry.path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError as e:
            broken[entry.name] = f"cannot open: {e.strerror}"
            return None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                broken[entry.name] = "not a regular file"
                return None
            if st.st_size > limit:
                broken[entry.name] = f"{st.st_size} bytes, over the {limit} byte limit"
                return None
            chunks = []
            while chunk := os.read(fd, 1 << 20):
                chunks.append(chunk)
        except OSError as e:
            broken[entry.name] = f"cannot read: {e.strerror}"
            return None
        finally:
            os.close(fd)
        return b"".join(chunks).decode("utf-8", "replace")
