"""One site-packages directory -> its distributions, re-reading only what changed.

What is read, per directory entry (and nothing else):

* `NAME-VER.dist-info/`: the `METADATA` headers up to the first blank line (Name,
  Version), `INSTALLER`, `REQUESTED` (present: the user asked for it; absent: pulled in as
  a dependency), `direct_url.json` (PEP 610) as the source, the `Tag:` lines of `WHEEL`,
  and whether `RECORD` exists (installers write it last: without it an install is still
  running).
* `NAME-VER.egg-info/` (`PKG-INFO`) and `NAME-VER.egg-info` files (distutils): metadata
  only; these formats cannot say who asked for them, so they count as requested.
* `NAME.egg-link` (`setup.py develop`): an editable install of the directory it names.
* `__editable__.NAME-VER.pth` and its `__editable___*_finder.py` (setuptools' PEP 660
  editables): the project directory, used when a dist-info lacks `direct_url.json`.

`~name.dist-info` and the like are what an interrupted pip leaves (its stash of an
uninstall): skipped. An entry that cannot be read is reported in `broken` and the scan
goes on. When two entries give the same canonical name the first wins, in this order:
dist-info, egg-info, egg-link, each sorted by entry name (so the result never depends on
directory order).

Why it is written the way it is: a syscall costs 1.5-3 us on the machines this runs on,
and a site-packages can hold thousands of distributions. So the directory is listed and
each entry lstat'ed in C (`listing`), and a rescan re-reads only entries whose identity
`(inode, mtime_ns)` changed. An entry that must be read costs ~10 syscalls (METADATA up
to its headers, INSTALLER, WHEEL, the presence of RECORD, REQUESTED, `direct_url.json`),
made cheap in Python: files opened relative to a directory descriptor with `os.open` /
`os.read` (no buffered file objects, no `email.parser`), METADATA read 512 bytes first,
one `close_range` for a dist-info's files, presence as one `faccessat`. The first scan of
a daemon, a restore or a status knows the baseline: a settled dist-info whose name is a
known package's name and version and which has no `direct_url.json` is that package
(`SiteScanner._known_dist`), two syscalls in all.
"""

from __future__ import annotations

import functools
import os
import re
import stat
import time
from collections.abc import Collection, Iterable, Mapping
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

import msgspec

from ..errors import ScanError
from ..manifest import (
    DirectorySource,
    IndexSource,
    Package,
    Source,
    UrlSource,
    VcsSource,
    file_url,
    plain_subdirectory,
)
from . import ScanResult, listing

RACY_NS = 2_000_000_000
"""An entry modified this close to a scan may change again within the same timestamp
tick (file times come from a coarse clock), so its identity proves nothing: it is
re-read at the next scan too (git's "racily clean" problem)."""

INSTALL_WINDOW_NS = 300 * 1_000_000_000
"""A dist-info without RECORD counts as an install still running only while it is this
recent. Older ones are not installs in flight: Debian's packages strip RECORD, and a
killed pip leaves its dist-info behind."""

_CHUNK = 4096
_HEAD = 512
MAX_HEADERS = 1 << 20
"""Bytes of METADATA / PKG-INFO read at most for Name and Version: a file planted as a
link to /dev/zero, or sparse and huge, is broken, not read for ever."""
# O_NONBLOCK: a FIFO planted under a library's name opens and reads as empty instead of
# waiting for a writer; it does nothing to a regular file's reads.
_O_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY
_DIST_INFO, _EGG_INFO, _EGG_LINK, _EDITABLE = range(4)
_EDITABLE_PTH = re.compile(r"__editable__\.(.+)-[^-]+\.pth")
_FINDER_MAPPING = re.compile(r"^MAPPING\s*(?::[^=\n]*)?=\s*(\{.*?\})\s*$", re.M | re.S)
_ENV_PLACEHOLDER = re.compile(r"\$\{[A-Za-z0-9_-]+\}(?::\$\{[A-Za-z0-9_-]+\})?")
_PROJECT_FILES = ("pyproject.toml", "setup.py", "setup.cfg")
_INDEX = IndexSource()


def canonicalize_name(name: str) -> str:
    """The PEP 503 normalized name, as `packaging.utils.canonicalize_name` gives it.

    Not imported from packaging: packaging.utils pulls in packaging.tags (subprocess,
    sysconfig, platform), ~8 ms of every restore's start-up on a slow core.
    """
    # As packaging does it: 0.4 us a name here, against 1.5 us for the regex of PEP 503.
    value = name.lower().replace("_", "-").replace(".", "-")
    while "--" in value:
        value = value.replace("--", "-")
    return value


_EGG_PYVER = re.compile(r"-py[0-9][^-]*(?:-.+)?")
"""The `-pyX.Y[-platform]` tail of an egg-info's name."""


def entry_name(entry: str) -> str:
    """The canonical name of the distribution a site-packages entry stands for, read from
    the entry's name alone (for entries that cannot be read, whose absence proves nothing).

    * `NAME-VER.dist-info`: installers escape both parts (`-` becomes `_`), so the version
      follows the last `-`; a name with a `-` in it (an unescaped spelling) stays whole.
    * `NAME[-VER[-pyX.Y[-PLAT]]].egg-info`: the same, and the version is optional (the
      one `setup.py develop` writes in the project has none): what follows the last `-`
      is a version only when it starts with a digit, so `my-pkg.egg-info` is `my-pkg`.
    * `NAME.egg-link`: setuptools names it after the project, hyphens kept: the whole stem.
    * `__editable__.NAME-VER.pth`: as the scanner reads it.
    """
    if entry.endswith(".egg-link"):
        return canonicalize_name(entry[: -len(".egg-link")])
    if entry.endswith(".dist-info"):
        name, dash, _ = entry[: -len(".dist-info")].rpartition("-")
        return canonicalize_name(name if dash else entry[: -len(".dist-info")])
    if entry.endswith(".egg-info"):
        stem = entry[: -len(".egg-info")]
        m = _EGG_PYVER.search(stem)
        if m is not None and m.start() > 0:
            stem = stem[: m.start()]
        name, dash, version = stem.rpartition("-")
        return canonicalize_name(name if dash and version[:1].isdigit() else stem)
    m = _EDITABLE_PTH.fullmatch(entry)
    if m is not None:
        return canonicalize_name(m.group(1))
    return canonicalize_name(entry.removeprefix("__editable__.").removesuffix(".pth"))


class _Broken(Exception):
    """An entry that cannot be read; the message is the reason reported in `broken`."""


# -- PEP 610 direct_url.json ------------------------------------------------------------


class _ArchiveInfo(msgspec.Struct):
    hash: str | None = None
    hashes: dict[str, str] | None = None


class _VcsInfo(msgspec.Struct):
    vcs: str
    commit_id: str | None = None
    requested_revision: str | None = None


class _DirInfo(msgspec.Struct):
    editable: bool = False


class _DirectUrl(msgspec.Struct):
    url: str
    archive_info: _ArchiveInfo | None = None
    vcs_info: _VcsInfo | None = None
    dir_info: _DirInfo | None = None
    subdirectory: str | None = None


@functools.cache
def _direct_url_decoder() -> msgspec.json.Decoder[_DirectUrl]:
    # Built at the first direct_url.json, not at import: most sites hold few or none, and
    # building it is ~1 % of a no-op restore.
    return msgspec.json.Decoder(_DirectUrl)


def strip_credentials(url: str) -> str:
    """`url` without user:password, which must never reach the store (PEP 610 rules).

    Kept, as PEP 610 allows: the `git` user of ssh URLs and `${VAR}` placeholders, which
    name a secret without holding it.
    """
    parts = urlsplit(url)
    userinfo, at, host = parts.netloc.rpartition("@")
    if not at or userinfo == "git" or _ENV_PLACEHOLDER.fullmatch(userinfo):
        return url
    return urlunsplit(parts._replace(netloc=host))


_HASH_ALGORITHMS = frozenset({"md5", "sha1", "sha224", "sha256", "sha384", "sha512"})


def _hash_fragment(url: str) -> tuple[str, dict[str, str]]:
    """`url` without the `#sha256=...` that uv leaves in direct_url.json, and that hash.

    PEP 610 keeps hashes in `archive_info`; uv writes the URL it was given, fragment and
    all. A record keeps the URL bare (restore refuses URLs with a fragment and adds the
    recorded hash itself).
    """
    base, sep, fragment = url.partition("#")
    if not sep:
        return url, {}
    hashes: dict[str, str] = {}
    rest: list[str] = []
    for part in fragment.split("&"):
        algo, eq, digest = part.partition("=")
        if eq and algo.lower() in _HASH_ALGORITHMS:
            hashes[algo.lower()] = digest.lower()
        else:
            rest.append(part)
    return (base + "#" + "&".join(rest) if rest else base), hashes


def _file_url_path(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme != "file":
        raise _Broken(f"direct_url.json: dir_info with a non-file URL {strip_credentials(url)!r}")
    return unquote(parts.path)


def _source(data: bytes) -> Source:
    try:
        d = _direct_url_decoder().decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        raise _Broken(f"direct_url.json is malformed: {e}") from None
    if d.vcs_info is not None:
        v = d.vcs_info
        return VcsSource(
            vcs=v.vcs,
            url=strip_credentials(d.url),
            commit=v.commit_id,
            requested_revision=v.requested_revision,
            subdirectory=plain_subdirectory(d.subdirectory),
        )
    if d.archive_info is not None:
        hashes = dict(d.archive_info.hashes or {})
        if not hashes and d.archive_info.hash and "=" in d.archive_info.hash:
            algo, _, digest = d.archive_info.hash.partition("=")
            hashes[algo] = digest
        url, fragment_hashes = _hash_fragment(d.url)
        hashes = {**fragment_hashes, **hashes}
        if "sha256" not in hashes and url[:5].lower() == "file:":
            from ..localsource import file_url_sha256

            hashes.update(file_url_sha256(url))
        return UrlSource(
            url=file_url(strip_credentials(url)),
            hashes=hashes,
            subdirectory=plain_subdirectory(d.subdirectory),
        )
    if d.dir_info is not None:
        return DirectorySource(
            path=_file_url_path(d.url),
            editable=d.dir_info.editable,
            subdirectory=plain_subdirectory(d.subdirectory),
        )
    raise _Broken("direct_url.json has none of archive_info, vcs_info, dir_info")


# -- reading files ----------------------------------------------------------------------


def _read(name: str, dir_fd: int, limit: int = _CHUNK) -> bytes:
    """The first `limit` bytes of a small file, in three syscalls."""
    fd = os.open(name, _O_FLAGS, dir_fd=dir_fd)
    try:
        return os.read(fd, limit)
    finally:
        os.close(fd)


def _metadata(name: str, dir_fd: int) -> tuple[str, str]:
    """(Name, Version) from a METADATA / PKG-INFO file, reading only its headers."""
    try:
        fd = os.open(name, _O_FLAGS, dir_fd=dir_fd)
    except OSError as e:
        raise _Broken(f"{name.rpartition('/')[2]}: {e.strerror}") from None
    try:
        return _metadata_of(fd, name)
    finally:
        os.close(fd)


def _metadata_of(fd: int, name: str) -> tuple[str, str]:
    """(Name, Version) from the open METADATA / PKG-INFO `fd` (its path is `name`)."""
    try:
        # Name and Version are nearly always in the first three lines; the copy out of the
        # page cache is what costs here (4 KB: ~5 us a read, 512 B: ~2 us on this VM).
        data = os.read(fd, _HEAD)
        while True:
            found = _headers(data)
            if found is not None:
                return found
            if len(data) > MAX_HEADERS:
                raise _Broken(f"{name.rpartition('/')[2]}: no Name and Version in its first MiB")
            # Doubling the read keeps the copies linear in what is read.
            more = os.read(fd, max(_CHUNK, len(data)))
            if not more:
                break
            data += more
    except OSError as e:
        raise _Broken(f"{name.rpartition('/')[2]}: {e.strerror}") from None
    raise _Broken(f"{name.rpartition('/')[2]} has no Name or no Version")


def _headers(data: bytes) -> tuple[str, str] | None:
    """(Name, Version) if the headers in `data` are complete; None to read further.

    Raises `_Broken` when the headers end without both.
    """
    # pip, uv, setuptools and hatchling all start with these three lines: three `find`s
    # instead of a loop over every header line (the general loop gives the same answer).
    e0 = data.find(b"\n")
    e1 = data.find(b"\n", e0 + 1)
    e2 = data.find(b"\n", e1 + 1)
    if (
        0 <= e0 < e1 < e2
        and data.startswith(b"Metadata-Version:")
        and data.startswith(b"Name:", e0 + 1)
        and data.startswith(b"Version:", e1 + 1)
    ):
        first = data[e0 + 6 : e1].strip()
        second = data[e1 + 9 : e2].strip()
        if first and second:
            try:
                return first.decode(), second.decode()
            except UnicodeDecodeError:
                raise _Broken("metadata Name or Version is not UTF-8") from None
    name = version = None
    pos = 0
    size = len(data)
    while pos < size:
        end = data.find(b"\n", pos)
        if end < 0:
            return None  # a partial line: read more
        line = data[pos:end]
        pos = end + 1
        if not line.strip():
            break
        key = line[:8].lower()
        if key.startswith(b"name:"):
            name = line[5:].strip()
        elif key == b"version:":
            version = line[8:].strip()
        else:
            continue
        if name and version:
            break
    else:
        return None
    if not name or not version:
        raise _Broken("metadata has no Name or no Version")
    try:
        return name.decode(), version.decode()
    except UnicodeDecodeError:
        raise _Broken("metadata Name or Version is not UTF-8") from None


_MEMO_SIZE = 256
_tags_memo: dict[bytes, tuple[str, ...]] = {}
_installer_memo: dict[bytes, str | None] = {}


def _tags(data: bytes) -> tuple[str, ...]:
    # A site holds a handful of distinct WHEEL files (one per generator and tag set):
    # parsing each once instead of once per distribution saves ~2 us a distribution.
    tags = _tags_memo.get(data)
    if tags is None:
        if len(_tags_memo) >= _MEMO_SIZE:
            _tags_memo.clear()
        tags = _tags_memo[data] = tuple(
            line[4:].strip().decode("utf-8", "replace")
            for line in data.splitlines()
            if line[:4].lower() == b"tag:"
        )
    return tags


def _installer(data: bytes) -> str | None:
    try:
        return _installer_memo[data]
    except KeyError:
        if len(_installer_memo) >= _MEMO_SIZE:
            _installer_memo.clear()
        value = _installer_memo[data] = data.strip().decode("utf-8", "replace") or None
        return value


# -- what each entry holds (msgspec structs: built per entry, ~4x cheaper than NamedTuples;
# gc=False as they hold no cycles) ---------------------------------------------------------


class _Dist(msgspec.Struct, frozen=True, gc=False):
    """A distribution read from an entry."""

    package: Package | None
    """None: an install so early that it has no METADATA yet."""
    in_progress: bool


class _Editable(msgspec.Struct, frozen=True, gc=False):
    """A setuptools `__editable__.*.pth`: the canonical name and the project directory."""

    key: str
    path: str | None


class _Cached(msgspec.Struct, frozen=True, gc=False):
    ino: int
    mtime_ns: int
    suspect: bool
    """Re-read at the next scan whatever its identity: racy, broken or an install running."""
    order: tuple[int, str]
    """Precedence among entries giving the same name: kind, then entry name."""
    value: _Dist | _Editable | str
    """A `str` is the reason the entry is broken."""


_SUFFIXES = (".dist-info", ".egg-info", ".egg-link", ".pth")
_DIRECT_URL = "direct_url.json"


def _kind(name: str) -> int | None:
    """Which kind of entry pkgckpt reads (its precedence), or None to ignore it."""
    if name[0] in "~.":
        return None
    if name.endswith(".dist-info"):
        return _DIST_INFO
    if name.endswith(".egg-info"):
        return _EGG_INFO
    if name.endswith(".egg-link"):
        return _EGG_LINK
    if name.startswith("__editable__.") and name.endswith(".pth"):
        return _EDITABLE
    return None


class SiteScanner:
    """Scan one site-packages directory; each later `scan()` re-reads only what changed.

    An entry whose `(inode, mtime_ns)` is what it was at the last scan is not read again.
    When the directory itself is unchanged (no entry was added, removed or renamed: pip
    and uv replace a dist-info rather than edit it), only suspect entries are looked at.
    """

    def __init__(self, path: Path, known: Mapping[str, Package] | None = None) -> None:
        self.path = path
        self._known = {n: p for n, p in (known or {}).items() if p.source == _INDEX}
        """Packages expected here from the index (the image's): see `_known_dist`."""
        self._known_entries = {
            f"{p.name.replace('-', '_')}-{p.version}.dist-info": p for p in self._known.values()
        }
        """The same, by the dist-info name that current installers give them."""
        self.exists = False
        """Whether the directory existed at the last scan."""
        self.reads = 0
        """Entries read (not reused) by the last scan: the incremental work done."""
        self.renewed: frozenset[str] = frozenset()
        """Names whose entry the last scan found made anew (installed again, even as it
        was) since the scan before it; empty after a first scan, which has no before."""
        self._root: tuple[int, int] | None = None
        self._root_suspect = True
        self._cache: dict[str, _Cached] = {}
        self._suspects: set[str] = set()
        """The entries of `_cache` that are suspect (looked at by every scan)."""
        self._givers: dict[str, set[str]] | None = {}
        """Canonical name -> the entries of `_cache` that give it (dists and editables): what
        a partial scan assembles again. None: to be built from `_cache` when needed (a full
        scan does not pay for it: restore and status never scan twice)."""
        self._last = ScanResult()

    def scan(self, changed: Collection[str] | None = None) -> ScanResult:
        """What the directory holds now.

        `changed`: the names of the entries that may have changed since the last scan,
        when the caller knows them (the watcher's events, `watcher.Batch.changed`): then
        only those and the suspect entries are looked at, so a rescan after an install
        costs the install's entries, not the site's size. None: the directory's identity
        decides (unchanged: suspect entries only; changed: every entry's identity).
        """
        self.reads = 0
        self.renewed = frozenset()
        now = time.time_ns()
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError):
            self.exists = False
            self._root, self._cache, self._last = None, {}, ScanResult()
            self._suspects, self._givers = set(), {}
            return self._last
        except OSError as e:
            self._root = None  # see below
            raise ScanError(f"cannot read {self.path}: {e.strerror}") from None
        try:
            st = os.fstat(fd)
            root = (st.st_ino, st.st_mtime_ns)
            look: set[str] | None = None
            if changed is not None and self._root is not None and root[0] == self._root[0]:
                look = {n for n in changed if n and _kind(n) is not None}
            elif root == self._root and not self._root_suspect:
                look = set()  # no entry added, removed or renamed
            if look is not None:
                look.update(self._suspects)
                found = listing.lstat_each(fd, look)
                gone = look.difference(e[0] for e in found)
                cache = self._refresh(fd, found, now, partial=True, gone=gone)
            else:
                # A first scan against known packages: `direct_url.json` is what tells a
                # known one from a reinstall of the same version, so look for it at once.
                probe = _DIRECT_URL if self._known and not self._cache else None
                found = listing.entries(fd, _SUFFIXES, ".dist-info", probe)
                cache = self._refresh(fd, found, now, partial=False)
        except OSError as e:
            # Whatever the caller said changed was not looked at: the next scan reads all.
            self._root = None
            raise ScanError(f"cannot read {self.path}: {e.strerror}") from None
        finally:
            os.close(fd)
        self.exists = True
        self._root = root
        self._root_suspect = now - root[1] < RACY_NS
        if cache is not None and look is not None:
            self._last = self._reassemble(cache, look)
            self._cache = cache
        elif cache is not None:
            self._cache = cache
            self._last = _assemble(cache)
            self._suspects = {n for n, c in cache.items() if c.suspect}
            self._givers = None
        return self._last

    def _reassemble(self, cache: dict[str, _Cached], looked: set[str]) -> ScanResult:
        """`_assemble(cache)`, from the last result and the entries `looked` at only: a
        rescan after an install costs the install, not the site."""
        old, last = self._cache, self._last
        if self._givers is None:
            self._givers = {}
            for name, held in old.items():
                key = _gives(held.value)
                if key is not None:
                    self._givers.setdefault(key, set()).add(name)
        givers_of = self._givers
        broken, in_progress = dict(last.broken), set(last.in_progress)
        names: set[str] = set()
        for entry in looked:
            before, after = old.get(entry), cache.get(entry)
            if before is after:
                continue
            for cached, adds in ((before, False), (after, True)):
                key = _gives(cached.value) if cached is not None else None
                if key is not None:
                    names.add(key)
                    givers = givers_of.setdefault(key, set())
                    (givers.add if adds else givers.discard)(entry)
            broken.pop(entry, None)
            in_progress.discard(entry)
            self._suspects.discard(entry)
            if after is not None:
                if isinstance(after.value, str):
                    broken[entry] = after.value
                elif type(after.value) is _Dist and after.value.in_progress:
                    in_progress.add(entry)
                if after.suspect:
                    self._suspects.add(entry)
        packages = dict(last.packages)
        for key in names:
            packages.pop(key, None)
            entries = givers_of.get(key)
            if not entries:
                givers_of.pop(key, None)
                continue
            # The rules of the whole, applied to the entries that give this one name.
            package = _assemble({e: cache[e] for e in entries}).packages.get(key)
            if package is not None:
                packages[key] = package
        return ScanResult(packages=packages, broken=broken, in_progress=frozenset(in_progress))

    def _refresh(
        self,
        fd: int,
        found: list[listing.Entry],
        now: int,
        *,
        partial: bool,
        gone: Iterable[str] = (),
    ) -> dict[str, _Cached] | None:
        """The cache after looking at `found` (every entry; or when `partial`, the ones
        looked at that are still there, `gone` being those that are not): entries whose
        identity holds are kept, others read. None: no change."""
        old = self._cache
        cache = dict(old) if partial else {}
        for name in gone:
            cache.pop(name, None)  # or never seen: created and removed since the last scan
        reads = 0
        made: list[str] | None = [] if self._root is not None else None
        # The loop runs once per distribution: names bound once, the known case first.
        previous, known, settled = old.get, self._known_dist, now - INSTALL_WINDOW_NS
        for name, ino, mtime_ns, mode, has_direct_url in found:
            was = previous(name)
            if was is None:
                kind = _kind(name)
                if kind is None:
                    continue
            elif not was.suspect and was.ino == ino and was.mtime_ns == mtime_ns:
                cache[name] = was
                continue
            else:
                kind = was.order[0]
            reads += 1
            if made is not None and (was is None or (was.ino, was.mtime_ns) != (ino, mtime_ns)):
                made.append(name)
            if kind == _DIST_INFO and mtime_ns < settled and self._known:
                package = known(fd, name, mode, has_direct_url)
                if package is not None:
                    cache[name] = _Cached(ino, mtime_ns, False, (kind, name), _Dist(package, False))
                    continue
            value: _Dist | _Editable | str
            try:
                value = _read_entry(fd, name, kind, mode, mtime_ns, now)
            except _Broken as e:
                value = str(e)
            except OSError as e:
                value = e.strerror or str(e)
            except Exception as e:
                # Whoever may write the library writes what is read here: an entry that
                # makes a parser raise (a URL urlsplit refuses, a NUL in a path) is that
                # entry broken, never a scan, a daemon or a restore ended.
                value = f"unreadable: {type(e).__name__}: {e}"
            suspect = (
                isinstance(value, str)
                or (isinstance(value, _Dist) and value.in_progress)
                or now - mtime_ns < RACY_NS
            )
            cache[name] = _Cached(ino, mtime_ns, suspect, (kind, name), value)
        self.reads = reads
        if made:
            gives = (_gives(cache[name].value) for name in made)
            self.renewed = frozenset(name for name in gives if name is not None)
        if not reads and len(cache) == len(old):
            return None  # nothing read, nothing gone: the last result stands
        return cache

    def made_ns(self, name: str) -> int | None:
        """When the entry giving the canonical `name` at the last scan was last written
        (its mtime: an installer makes a dist-info anew), or None."""
        return max(
            (c.mtime_ns for c in self._cache.values() if _gives(c.value) == name), default=None
        )

    def _known_dist(
        self, fd: int, name: str, mode: int, has_direct_url: bool | None
    ) -> Package | None:
        """The known package a settled dist-info holds, when its name proves it; None: read it.

        The name of a dist-info is the distribution's name and version (the packaging
        spec requires it; uv reads nothing else). A settled one (not recent: no install in
        flight) named for a known package's version, with no `direct_url.json` (so from an
        index, as the known one), holds that package: INSTALLER, REQUESTED, WHEEL and
        METADATA are not read. A scan of a site whose packages the baseline knows costs
        the listing, then an lstat and a probe for `direct_url.json` per entry.
        """
        if not stat.S_ISDIR(mode):
            return None
        package = self._known_entries.get(name)
        if package is None:
            # Older installers kept the project's own spelling (PyYAML-6.0.1.dist-info).
            dist, dash, version = name[: -len(".dist-info")].partition("-")
            package = self._known.get(canonicalize_name(dist)) if dash else None
            if package is None or package.version != version:
                return None
        if has_direct_url is None:
            has_direct_url = _exists(f"{name}/{_DIRECT_URL}", fd)
        return None if has_direct_url else package


def _read_entry(
    fd: int, name: str, kind: int, mode: int, mtime_ns: int, now: int
) -> _Dist | _Editable:
    if kind == _DIST_INFO:
        if not stat.S_ISDIR(mode):
            raise _Broken("not a directory")
        return _read_dist_info(fd, name, mtime_ns, now)
    if kind == _EGG_INFO:
        meta = f"{name}/PKG-INFO" if stat.S_ISDIR(mode) else name
        dist_name, version = _metadata(meta, fd)
        return _Dist(Package(name=canonicalize_name(dist_name), version=version), False)
    if kind == _EGG_LINK:
        return _read_egg_link(fd, name)
    return _read_editable_pth(fd, name)


def _exists(path: str, dir_fd: int | None) -> bool:
    # faccessat: one syscall, no stat_result, no exception when absent. Cheaper than
    # listing the dist-info (opendir + getdents + close), which was ~25% of a full scan.
    return os.access(path, os.F_OK, dir_fd=dir_fd)


def _open_optional(path: str, dir_fd: int) -> int:
    """A descriptor for `path`, or -1 when it does not exist."""
    try:
        return os.open(path, _O_FLAGS, dir_fd=dir_fd)
    except FileNotFoundError:
        return -1


def _close_all(fds: list[int]) -> None:
    # The kernel hands out the lowest free descriptors, so the few opened per dist-info
    # are nearly always consecutive: then one close_range instead of a close each. A
    # range made only of descriptors held here cannot close anyone else's.
    if fds and fds[-1] - fds[0] == len(fds) - 1 and fds == sorted(fds):
        os.closerange(fds[0], fds[-1] + 1)
    else:
        for f in fds:
            os.close(f)


def install_running(path: str, mtime_ns: int, now: int, dir_fd: int | None = None) -> bool:
    """Whether the dist-info directory at `path` (relative to `dir_fd`), last modified at
    `mtime_ns`, is an install still running at `now`: no RECORD yet, and recent (see
    `INSTALL_WINDOW_NS`). The scanner's rule, and the watcher's (`Watcher.busy`)."""
    return now - mtime_ns < INSTALL_WINDOW_NS and not _exists(f"{path}/RECORD", dir_fd)


def _read_dist_info(fd: int, name: str, mtime_ns: int, now: int) -> _Dist:
    in_progress = install_running(name, mtime_ns, now, fd)
    meta = f"{name}/METADATA"
    fds: list[int] = []
    try:
        # All three opened before any is read, so that one close_range can close them.
        try:
            meta_fd = os.open(meta, _O_FLAGS, dir_fd=fd)
        except OSError as e:
            if in_progress:
                return _Dist(None, True)  # METADATA not written yet
            raise _Broken(f"METADATA: {e.strerror}") from None
        fds.append(meta_fd)
        installer_fd = _open_optional(f"{name}/INSTALLER", fd)
        if installer_fd >= 0:
            fds.append(installer_fd)
        wheel_fd = _open_optional(f"{name}/WHEEL", fd)
        if wheel_fd >= 0:
            fds.append(wheel_fd)
        try:
            dist_name, version = _metadata_of(meta_fd, meta)
        except _Broken:
            if in_progress:
                return _Dist(None, True)  # METADATA not fully written yet
            raise
        installer = os.read(installer_fd, 256) if installer_fd >= 0 else None
        wheel = os.read(wheel_fd, _CHUNK) if wheel_fd >= 0 else None
    finally:
        _close_all(fds)
    source: Source = _INDEX
    if _exists(f"{name}/{_DIRECT_URL}", fd):
        source = _source(_read(f"{name}/{_DIRECT_URL}", fd, 1 << 16))
    package = Package(
        name=canonicalize_name(dist_name),
        version=version,
        source=source,
        requested=_exists(f"{name}/REQUESTED", fd),
        installer=_installer(installer) if installer else None,
        tags=_tags(wheel) if wheel else (),
    )
    return _Dist(package, in_progress)


def _read_egg_link(fd: int, name: str) -> _Dist:
    lines = _read(name, fd).decode("utf-8", "surrogateescape").splitlines()
    target = Path(lines[0].strip()) if lines else Path()
    if not target.is_absolute():
        raise _Broken("egg-link names no absolute directory")
    want = canonicalize_name(name[: -len(".egg-link")])
    try:
        infos = sorted(p for p in target.iterdir() if p.name.endswith(".egg-info"))
    except OSError as e:
        raise _Broken(f"egg-link target {target}: {e.strerror}") from None
    matching = [p for p in infos if entry_name(p.name) == want]
    if not matching:
        raise _Broken(f"no {want} egg-info in {target}")
    info = matching[0]
    meta = info / "PKG-INFO" if info.is_dir() else info
    dist_name, version = _metadata(str(meta), fd)  # absolute: dir_fd is ignored
    # The second line leads from the egg-info's directory back to the project (src layouts).
    project = target
    if len(lines) > 1 and lines[1].strip():
        project = Path(os.path.normpath(target / lines[1].strip()))
    source = DirectorySource(path=str(project), editable=True)
    package = Package(name=canonicalize_name(dist_name), version=version, source=source)
    return _Dist(package, False)


def _read_editable_pth(fd: int, name: str) -> _Editable:
    m = _EDITABLE_PTH.fullmatch(name)
    if m is None:
        raise _Broken("not an __editable__.NAME-VERSION.pth")
    key = canonicalize_name(m.group(1))
    for line in _read(name, fd).decode("utf-8", "surrogateescape").splitlines():
        line = line.strip()
        if line.startswith("/"):
            return _Editable(key, str(_project_of(Path(line))))
        if line.startswith("import __editable___"):
            finder = line.split()[1].rstrip(";") + ".py"
            return _Editable(key, _finder_project(fd, finder))
    return _Editable(key, None)


def _finder_project(fd: int, finder: str) -> str | None:
    """The project directory behind a setuptools editable finder's MAPPING."""
    try:
        text = _read(finder, fd, 1 << 16).decode("utf-8", "surrogateescape")
    except OSError:
        return None
    m = _FINDER_MAPPING.search(text)
    if m is None:
        return None
    import ast  # only for an editable install's finder: rare, and 0.3 MB

    try:
        mapping = ast.literal_eval(m.group(1))
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None
    if not isinstance(mapping, dict):
        return None
    paths = [v for v in mapping.values() if isinstance(v, str) and v.startswith("/")]
    if not paths:
        return None
    # MAPPING names the import packages (<project>/src/pkg): their parent leads up to it.
    return str(_project_of(Path(os.path.commonpath(paths)).parent))


def _project_of(path: Path) -> Path:
    """The nearest directory at or above `path` holding a project file, else `path`."""
    for here in (path, *path.parents[:3]):
        # os.path's: a project beneath a directory this user may not enter is not found,
        # where pathlib's exists would raise.
        if any(os.path.exists(here / f) for f in _PROJECT_FILES):  # noqa: PTH110
            return here
    return path


def _gives(value: _Dist | _Editable | str) -> str | None:
    """The canonical name an entry's value bears on in `_assemble`, if any."""
    if type(value) is _Dist:
        return value.package.name if value.package is not None else None
    if type(value) is _Editable:
        return value.key
    return None


def _assemble(cache: dict[str, _Cached]) -> ScanResult:
    packages: dict[str, Package] = {}
    broken: dict[str, str] = {}
    in_progress: list[str] = []
    editables: dict[str, str] = {}
    for cached in sorted(cache.values(), key=_precedence):
        value = cached.value
        if type(value) is _Dist:
            if value.in_progress:
                in_progress.append(cached.order[1])
            package = value.package
            if package is not None and package.name not in packages:
                packages[package.name] = package
        elif type(value) is _Editable:
            if value.path is not None:
                editables.setdefault(value.key, value.path)
        else:
            broken[cached.order[1]] = str(value)
    # Editables last (their kind sorts after the dists): fill in dists with no direct_url.
    for key, path in editables.items():
        if key in packages and packages[key].source == _INDEX:
            source = DirectorySource(path=path, editable=True)
            packages[key] = msgspec.structs.replace(packages[key], source=source)
    return ScanResult(packages=packages, broken=broken, in_progress=frozenset(in_progress))


def _precedence(cached: _Cached) -> tuple[int, str]:
    return cached.order


def scan_site(path: Path) -> ScanResult:
    """One full scan of `path` (a missing directory scans empty)."""
    return SiteScanner(path).scan()
