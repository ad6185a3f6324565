"""R libraries: one library directory -> its installed packages, from each `DESCRIPTION`.

An installed package is `<lib>/<Package>/DESCRIPTION` with a `Built:` field (R adds it at
install time; a source tree has none). What interrupted or running installs leave is
skipped: `00LOCK-*` directories (reported as in progress while something writes under
them, else as stale leftovers) and directories without a DESCRIPTION. Where a package
came from is in `Repository:` (CRAN, RSPM, ...) or in the `Remote*` fields that remotes
and pak write; with neither, it was installed from a local file.

Incremental: a rescan re-reads only the DESCRIPTION files whose identity (inode, mtime,
size) changed. R installs a package by renaming a staged directory into place, so a
reinstall always gives DESCRIPTION a new inode. As in `python.py`, an entry modified
within `RACY_NS` of a scan, or broken, is read again at the next scan whatever its
identity. DESCRIPTION is stat'ed rather than the package directory: an edit in place
changes the file's mtime, not the directory's.
"""

from __future__ import annotations

import functools
import os
import re
import stat
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import msgspec

from .. import fstree
from ..digest import sha256
from ..errors import ScanError
from ..logs import getLogger
from ..manifest import (
    DirectorySource,
    Environment,
    IndexSource,
    LocalSource,
    Package,
    Source,
    UrlSource,
    VcsSource,
)
from ..runner import owned, popen, which
from . import ScanResult
from . import kept as image_kept
from .env import _identity, _Stamp, recall
from .kept import Stable, stable
from .python import RACY_NS, strip_credentials

log = getLogger(__name__)

LOCK_PREFIX = "00LOCK"
"""R CMD INSTALL's lock: `00LOCK-<pkg>` per package, or `00LOCK` for the whole library."""

LOCK_STALE = 600.0
"""Seconds without a write under a lock after which it is a leftover (`r_lock_stale`)."""

_LOCK_ENTRIES_READ = 256


def lock_active(lock: Path, stale_after: float = LOCK_STALE, now: float | None = None) -> bool:
    """An install still holds `lock`: it exists, and it or an entry directly under it was
    written within `stale_after` seconds. An interrupted install leaves its lock behind
    for good; waiting for it would delay every checkpoint of the library."""
    try:
        newest = lock.lstat().st_mtime
        with os.scandir(lock) as it:
            for count, entry in enumerate(it):
                if count >= _LOCK_ENTRIES_READ:
                    break
                newest = max(newest, entry.stat(follow_symlinks=False).st_mtime)
    except OSError:
        return lock.is_dir()
    return (time.time() if now is None else now) - newest < stale_after


def _locked_away(lock: Path) -> set[str]:
    """The packages a whole-library `00LOCK` holds: `R CMD INSTALL a b` (several packages
    in one call) locks the library with it, not `00LOCK-<pkg>`, and moves each installed
    package it replaces into it until it is done. `00new` is its staging area of the new
    installs."""
    try:
        with os.scandir(lock) as it:
            return {e.name for e in it if e.name != "00new" and not e.name.startswith(".")}
    except OSError:
        return set()


_stale_logged: set[tuple[str, int]] = set()


def _log_stale(lock: Path) -> None:
    """Say once per lock (by inode) that it is a leftover, and how to remove it."""
    try:
        key = (str(lock), lock.lstat().st_ino)
    except OSError:
        return
    if key not in _stale_logged:
        _stale_logged.add(key)
        log.warning(
            "%s is left over from an interrupted R install (nothing written under it "
            "lately); not waited for. Remove it: %s",
            lock,
            remove_lock_command(lock),
        )


def remove_lock_command(lock: Path) -> str:
    """The shell command that removes a stale lock, quoted."""
    import shlex

    return f"rm -rf -- {shlex.quote(str(lock))}"


DEPENDENCY_FIELDS = ("Depends", "Imports", "LinkingTo")
"""The fields that make a package need another at install and load time (not Suggests)."""

_DEPENDENCY = re.compile(r"\s*([A-Za-z][A-Za-z0-9.]*[A-Za-z0-9])\s*(?:\(.*\))?\s*$", re.S)
_FIELD = re.compile(r"([^\s:]+):[ \t]*(.*)")

# remotes/pak RemoteType -> the web host of the forge, for the clone URL.
_FORGES = {"github": "github.com", "gitlab": "gitlab.com", "bitbucket": "bitbucket.org"}
_GIT_TYPES = frozenset({"git", "git2r", "xgit", "bioc_git2r", "bioc_xgit"})


class DescriptionError(ValueError):
    """A DESCRIPTION file that is not valid DCF or lacks what an installed package has."""


def parse_dcf(text: str) -> dict[str, str]:
    """The first record of a Debian Control File, as R writes DESCRIPTION files.

    Continuation lines (starting with a space or tab) are joined to their field with a
    single space; a repeated field keeps its first value, as `read.dcf` does.
    """
    fields: dict[str, str] = {}
    name: str | None = None
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break  # the end of the first record
            continue
        if line[0] in " \t":
            if name is None:
                raise DescriptionError("continuation line before any field")
            if name in fields:
                fields[name] = f"{fields[name]} {line.strip()}".strip()
            continue
        match = _FIELD.fullmatch(line.rstrip())
        if match is None:
            raise DescriptionError(f"malformed line {line[:60]!r}")
        name = match.group(1)
        fields.setdefault(name, match.group(2))
    return fields


def dependencies(fields: Mapping[str, str]) -> tuple[str, ...]:
    """Package names from Depends, Imports and LinkingTo, sorted, without R itself."""
    names: set[str] = set()
    for field in DEPENDENCY_FIELDS:
        for item in fields.get(field, "").split(","):
            match = _DEPENDENCY.fullmatch(item)
            if match is not None and match.group(1) != "R":
                names.add(match.group(1))
    return tuple(sorted(names))


def _forge_url(kind: str, fields: Mapping[str, str]) -> str | None:
    user, repo = fields.get("RemoteUsername"), fields.get("RemoteRepo")
    if not user or not repo:
        return None
    host = fields.get("RemoteHost", "")
    # remotes records the API host (api.github.com, github.example.com/api/v3).
    host = host.removeprefix("https://").removeprefix("api.").split("/api/", 1)[0].rstrip("/")
    return f"https://{host or _FORGES[kind]}/{user}/{repo}"


_SCP = re.compile(r"([A-Za-z0-9_][A-Za-z0-9._-]*@)?([A-Za-z0-9_][A-Za-z0-9._-]*):(?!//)(.+)")


def _git_url(url: str) -> str | None:
    """A git remote as the URL it means (restore takes URLs): scp-like `git@host:user/repo`
    as ssh, a repository on this machine (`install_git("~/src/pkg")`, which remotes records
    as written) as file. None for a relative path: where it was relative to is lost."""
    # os.path's: without a home it leaves "~" as it is, where pathlib's raises.
    local = os.path.expanduser(url) if url.startswith("~") else url  # noqa: PTH111
    if local.startswith("/"):
        return Path(local).as_uri()
    if "://" in url:
        return url
    match = _SCP.fullmatch(url)
    if match is None:
        return None
    user, host, path = match.groups()
    return f"ssh://{user or ''}{host}/{path.lstrip('/')}"


def source(fields: Mapping[str, str]) -> Source:
    """Where the package came from: the remotes/pak `Remote*` fields, else `Repository:`
    (which CRAN, Bioconductor, RSPM and r-universe write into what they serve), else a
    local file."""
    kind = fields.get("RemoteType", "").lower()
    url = fields.get("RemoteUrl")
    commit = fields.get("RemoteSha") or None
    ref = fields.get("RemoteRef") or None
    subdir = fields.get("RemoteSubdir") or None
    if kind in _FORGES:
        forge = _forge_url(kind, fields)
        if forge is not None:
            return VcsSource(
                vcs="git", url=forge, commit=commit, requested_revision=ref, subdirectory=subdir
            )
    elif kind in _GIT_TYPES and url:
        git = _git_url(url)
        if git is None:  # a checkout at a relative path: installed from here, from where?
            return LocalSource()
        return VcsSource(
            vcs="git",
            url=strip_credentials(git),
            commit=commit,
            requested_revision=ref,
            subdirectory=subdir,
        )
    elif kind == "svn" and url:
        revision = fields.get("RemoteRevision") or commit
        return VcsSource(
            vcs="svn", url=strip_credentials(url), commit=revision, subdirectory=subdir
        )
    elif kind == "url" and url:
        return UrlSource(url=strip_credentials(url), subdirectory=subdir)
    elif kind == "local" and url:
        if not url.startswith("/"):  # as typed, relative to a directory that is not recorded
            return LocalSource()
        if url.endswith((".tar.gz", ".tgz", ".tar", ".zip")):
            return LocalSource(path=url)  # remotes::install_local() of a tarball
        return DirectorySource(path=url, subdirectory=subdir)
    repository = fields.get("Repository")
    published = repository or fields.get("Date/Publication") or fields.get("git_url")
    if not published and not kind:
        # Built here (R CMD build), installed from a file: repositories add `Repository:`
        # (CRAN also `Date/Publication`, Bioconductor `git_url`).
        return LocalSource()
    return IndexSource(repository=repository or None)


def package(fields: Mapping[str, str], entry: str | None = None) -> Package:
    """The manifest entry of an installed package's DESCRIPTION fields.

    `entry` is the library directory entry it was read from; R loads a package by its
    directory name, so a DESCRIPTION naming another package is broken.
    """
    name, version, built = fields.get("Package"), fields.get("Version"), fields.get("Built")
    if not name or not version:
        raise DescriptionError("no Package or Version field")
    if entry is not None and name != entry:
        raise DescriptionError(f"DESCRIPTION names package {name!r}")
    if not built:
        raise DescriptionError("no Built field")
    # "R 4.2.2; x86_64-pc-linux-gnu; 2024-01-01 00:00:00 UTC; unix"; the platform is
    # empty for a package without compiled code.
    parts = [p.strip() for p in built.split(";")]
    r_version = parts[0].removeprefix("R ").strip() or None
    platform = parts[1] if len(parts) > 1 else ""
    return Package(
        name=name,
        version=version,
        source=source(fields),
        requested=True,
        tags=(platform,) if platform else (),
        built=r_version,
        depends=dependencies(fields),
    )


MAX_DESCRIPTION = 1 << 20
"""R's own DESCRIPTION files are a few KiB; anything larger is not one to read."""


def read_dcf(path: Path) -> dict[str, str]:
    """The fields of a DESCRIPTION file; DescriptionError or OSError when unreadable.

    A library others can write may hold a FIFO under that name (an open would wait for a
    writer forever, and the daemon with it) or a file of gigabytes: only a regular file is
    read, and no more than `MAX_DESCRIPTION` bytes of it.
    """
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise DescriptionError("DESCRIPTION is not a regular file")
        data = f.read(MAX_DESCRIPTION + 1)
    if len(data) > MAX_DESCRIPTION:
        raise DescriptionError(f"DESCRIPTION is larger than {MAX_DESCRIPTION >> 20} MiB")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        # Older packages declare `Encoding: latin1`; the fields pkgckpt reads are ASCII.
        text = data.decode("latin-1")
    return parse_dcf(text)


def _file_sha256(directory: int, entry: fstree.Entry) -> str | None:
    """sha256 of a regular file listed in the open `directory`; None when it cannot be
    opened. `fstree.Changed` when it is no longer the file listed."""
    import hashlib  # OpenSSL's, for files (see digest)

    try:
        fd = fstree.open_file(directory, entry)
    except fstree.Changed:
        raise
    except OSError:
        return None
    digest = hashlib.sha256()
    left = entry.st.st_size
    with os.fdopen(fd, "rb") as f:
        # No further than the size listed, which the tree's byte cap counted: a file grown
        # after its open (`truncate -s 20G` on seeing it) is a changed tree, not 20 GiB read.
        while left > 0 and (chunk := f.read(min(1 << 20, left))):
            digest.update(chunk)
            left -= len(chunk)
        if f.read(1):
            raise fstree.Changed(entry.path)
    return digest.hexdigest()


def _local(source: LocalSource, directory: Path) -> LocalSource:
    """A local install's hashes: of the file it came from, when that is known and still
    there (restore checks it against this), and of the installed build."""
    from ..localsource import sha256_file

    hashes = {}
    # Only a file no one else could have put there is hashed: restore trusts this hash.
    digest = sha256_file(source.path) if source.path is not None else None
    if digest is not None:
        hashes["sha256"] = digest
    return LocalSource(path=source.path, hashes=hashes, installed=_tree_sha256(directory))


def _url(source: UrlSource) -> UrlSource:
    """A URL install's source, with the sha256 of the archive when it is a local file:
    remotes::install_url() records none, and restore installs a `file:` archive only
    against one (`localsource.file_url_sha256`)."""
    if "sha256" in source.hashes or source.url[:5].lower() != "file:":
        return source
    from ..localsource import file_url_sha256

    hashes = file_url_sha256(source.url)
    return msgspec.structs.replace(source, hashes=hashes) if hashes else source


_TREE_MAX_FILES = 20_000
_TREE_MAX_BYTES = 256 << 20
"""The daemon hashes a local install in its main loop, at every reinstall, and a file's size
costs nothing to fake in a library others write: at 32e952f (2026-12-03) a sparse 20 GiB
file held `snapshot` for 38 s, and a daemon given SIGTERM meanwhile exited 40 s later,
past a pod's 30 s grace period. At that rate (540 MB/s) 256 MiB takes half a second.
Packages users build and install from a file weigh far less; the largest ones (BH's Boost
headers, compiled rstan or duckdb, 100+ MB) come from a repository, whose installs are
never hashed here. Over it, no hash (see `_tree_sha256`): the package is recorded all the
same."""


def _tree_sha256(directory: Path) -> str | None:
    """sha256 over an installed package's files (relative path and content, in name
    order; a link by its target): which build this is. None for a tree too large to read
    at every reinstall (files or bytes), unreadable, or changed while it is read: the
    package is recorded all the same, only a rebuild of the same version is not told
    apart. Read through directory descriptors, never through a link (see fstree)."""
    import contextlib
    import hashlib  # OpenSSL's, for files (see digest)

    digest = hashlib.sha256()
    count = size = 0
    try:
        # The package directory itself may be a link (renv-style libraries link packages
        # in from a cache): followed, as the scanner followed it to DESCRIPTION and as
        # os.walk did, so that such a tree keeps its hash; nothing below it is followed.
        top = os.open(directory, fstree.DIR_FLAGS & ~os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        with contextlib.closing(fstree.walk(top)) as tree:
            for _, fd, entries in tree:
                for entry in entries:
                    mode = entry.st.st_mode
                    if stat.S_ISDIR(mode) or (stat.S_ISLNK(mode) and _to_directory(fd, entry)):
                        continue
                    count += 1
                    size += entry.st.st_size if stat.S_ISREG(mode) else 0
                    if count > _TREE_MAX_FILES or size > _TREE_MAX_BYTES:
                        return None
                    digest.update(os.fsencode(entry.path) + b"\0")
                    if stat.S_ISLNK(mode):
                        # Spelled as Path.readlink spells it: hashes recorded stay the same.
                        target = Path(os.readlink(entry.name, dir_fd=fd))
                        digest.update(b"->" + os.fsencode(target))
                    elif stat.S_ISREG(mode):
                        digest.update((_file_sha256(fd, entry) or "").encode())
                    digest.update(b"\0")
    except OSError:
        return None
    finally:
        os.close(top)
    return digest.hexdigest()


def _to_directory(directory: int, link: fstree.Entry) -> bool:
    """Whether `link` leads to a directory: such a link was never hashed (os.walk listed it
    with the directories, and did not descend), which hashes recorded keep."""
    try:
        return stat.S_ISDIR(os.stat(link.name, dir_fd=directory).st_mode)
    except OSError:
        return False


_Found = Package | str | None
"""A package, the reason an entry is broken, or None: not an installed package."""


class _Cached(msgspec.Struct, frozen=True):
    identity: tuple[int, int, int]
    """(inode, mtime_ns, size) of the entry's DESCRIPTION."""
    found: _Found
    suspect: bool
    """Read again at the next scan whatever its identity: racy or broken."""
    made_ns: int = 0
    """The DESCRIPTION's ctime: when it was written. Not its mtime, which a binary
    package's tarball carries from where it was built (R unpacks it as it is)."""


class RLibraryScanner:
    """Scan one R library directory; a rescan re-reads only changed DESCRIPTION files."""

    def __init__(self, path: Path, lock_stale: float = LOCK_STALE) -> None:
        self.path = path
        self.lock_stale = lock_stale
        self.exists = False
        """Whether the directory existed at the last scan."""
        self.reads = 0
        """DESCRIPTION files read (not reused) by the last scan: the incremental work done."""
        self.renewed: frozenset[str] = frozenset()
        """Packages whose DESCRIPTION the last scan found made anew since the scan before
        it (`SiteScanner.renewed`)."""
        self._cache: dict[str, _Cached] = {}
        self._scanned = False

    def scan(self) -> ScanResult:
        self.reads = 0
        self.renewed = frozenset()
        now = time.time_ns()
        try:
            with os.scandir(self.path) as it:
                entries = sorted(e.name for e in it if not e.name.startswith("."))
        except (FileNotFoundError, NotADirectoryError):
            self.exists = False
            self._cache, self._scanned = {}, False
            return ScanResult()
        except OSError as e:
            raise ScanError(f"cannot list R library {self.path}: {e.strerror}") from None
        self.exists = True
        packages: dict[str, Package] = {}
        broken: dict[str, str] = {}
        in_progress: set[str] = set()
        stale: set[str] = set()
        hidden: set[str] = set()
        cache: dict[str, _Cached] = {}
        renewed: set[str] = set()
        locked = any(name.startswith(LOCK_PREFIX) for name in entries)
        for name in entries:
            if name.startswith(LOCK_PREFIX):
                if lock_active(self.path / name, self.lock_stale):
                    in_progress.add(name)
                else:
                    stale.add(name)
                    _log_stale(self.path / name)
                if name == LOCK_PREFIX:
                    hidden |= _locked_away(self.path / name)
                continue
            entry = self._entry(name, now)
            if entry is None:
                # `R CMD INSTALL a b` moves `a` away and leaves `a/` empty until it is done.
                if locked:
                    hidden.add(name)
                continue
            cache[name] = entry
            if isinstance(entry.found, Package):
                packages[entry.found.name] = entry.found
                was = self._cache.get(name)
                if self._scanned and (was is None or was.identity != entry.identity):
                    renewed.add(entry.found.name)
            elif entry.found is not None:
                broken[name] = entry.found
        self._cache, self._scanned = cache, True
        self.renewed = frozenset(renewed)
        return ScanResult(
            packages=packages,
            broken=broken,
            in_progress=frozenset(in_progress),
            stale=frozenset(stale),
            hidden=frozenset(hidden),
        )

    def made_ns(self, name: str) -> int | None:
        """When the last scan's `name` was installed (its DESCRIPTION's ctime, see
        `_Cached.made_ns`), or None."""
        cached = self._cache.get(name)
        if cached is None or not isinstance(cached.found, Package) or cached.found.name != name:
            return None
        return cached.made_ns

    def _entry(self, name: str, now: int) -> _Cached | None:
        """The cached or freshly read package of one entry; None when it has no DESCRIPTION."""
        description = self.path / name / "DESCRIPTION"
        try:
            st = description.stat()
        except (FileNotFoundError, NotADirectoryError):
            return None  # a plain file, or a directory R did not finish (or never made)
        except OSError as e:
            return _Cached((0, 0, 0), f"cannot stat DESCRIPTION: {e.strerror}", True)
        identity = (st.st_ino, st.st_mtime_ns, st.st_size)
        cached = self._cache.get(name)
        if cached is not None and not cached.suspect and cached.identity == identity:
            return cached
        self.reads += 1
        found: _Found
        try:
            fields = read_dcf(description)
            # R writes Built: at install time; without it, this is a source tree or R's own
            # `translations` directory, which installed.packages() does not list either.
            found = package(fields, name) if "Built" in fields else None
            if found is not None and isinstance(found.source, LocalSource):
                found = msgspec.structs.replace(
                    found, source=_local(found.source, self.path / name)
                )
            elif found is not None and isinstance(found.source, UrlSource):
                found = msgspec.structs.replace(found, source=_url(found.source))
        except OSError as e:
            found = f"cannot read DESCRIPTION: {e.strerror}"
        except DescriptionError as e:
            found = str(e)
        except Exception as e:
            # As in scan/python.py: what a hostile DESCRIPTION makes a parser raise (a URL
            # urlsplit refuses, a NUL in a path) breaks that entry, not the scan.
            found = f"unreadable DESCRIPTION: {type(e).__name__}: {e}"
        suspect = isinstance(found, str) or now - st.st_mtime_ns < RACY_NS
        return _Cached(identity, found, suspect, st.st_ctime_ns)


# -- the R installation ------------------------------------------------------------------


_MARK = "pkgckpt:"

R_FLAGS = ("--no-init-file", "--no-save", "--no-restore")
"""How pkgckpt starts R: the image's site files (`Rprofile.site`, `Renviron.site`) and the
user's `~/.Renviron` apply, no profile code from the home or the working directory runs.
Not `--vanilla`: it would skip the site files, where images set `repos` and `R_LIBS_SITE`."""

ASK_TIMEOUT = 60.0
"""Seconds R gets to describe its libraries; a first start on a cold NFS home can be slow."""


def r_programs(r_home: Path | None = None) -> tuple[str, str] | None:
    """(Rscript, R) of the configured R home, else the ones on PATH; None without R."""
    if r_home is not None:
        found = [str(r_home / "bin" / name) for name in ("Rscript", "R")]
        return (found[0], found[1]) if all(os.access(f, os.X_OK) for f in found) else None
    rscript, r = which("Rscript"), which("R")
    return (rscript, r) if rscript and r else None


def child_environ(extra_libs: Sequence[Path] = ()) -> dict[str, str]:
    """The environment of an R child: the image's, with no user profile for the R processes
    that R CMD INSTALL starts itself (it has no --no-init-file), and `extra_libs` searched
    first (R_LIBS) so that a dependency in another tracked library is found."""
    env = dict(os.environ)
    # R reads R_PROFILE_USER instead of ~/.Rprofile and ./.Rprofile; /dev/null runs nothing.
    env["R_PROFILE_USER"] = os.devnull
    if extra_libs:
        libs = [str(p) for p in extra_libs]
        env["R_LIBS"] = os.pathsep.join(
            [*libs, *filter(None, env.get("R_LIBS", "").split(os.pathsep))]
        )
    return env


def site_files(home: str, environ: Mapping[str, str]) -> tuple[Path, ...]:
    """The startup files R reads under `R_FLAGS`: the installation's Renviron, the site's
    Renviron and Rprofile, the user's Renviron (never the working directory's: R runs in a
    private one)."""
    etc = Path(home, "etc")
    user = environ.get("R_ENVIRON_USER") or str(Path(environ.get("HOME", "~"), ".Renviron"))
    return (
        etc / "Renviron",
        Path(environ.get("R_ENVIRON") or etc / "Renviron.site"),
        Path(environ.get("R_PROFILE") or etc / "Rprofile.site"),
        Path(user).expanduser(),
    )


def _startup_failure(rscript: str, stderr: str) -> str:
    """What went wrong before pkgckpt's own R code started, naming the file R ran."""
    lines = [ln.strip() for ln in stderr.strip().splitlines() if ln.strip()]
    said = " ".join(ln for ln in lines if ln != "Execution halted")[-400:] or "no output"
    profile = os.environ.get("R_PROFILE") or "the site profile (R_HOME/etc/Rprofile.site)"
    return f"{rscript} failed while starting, in {profile} or the Renviron files it reads: {said}"


def run_rscript(
    rscript: str,
    expr: str,
    *args: str,
    timeout: float = ASK_TIMEOUT,
    environ: Mapping[str, str] | None = None,
) -> list[str]:
    """Lines that an R expression printed with the `pkgckpt:` prefix (site profiles may
    print too), run under `R_FLAGS` in a private working directory; `environ`: variables
    set for R on top of `child_environ()`'s."""
    import subprocess
    import tempfile

    # A first mark tells a failure of the site files apart from one of `expr`.
    script = f'cat("{_MARK}\\n"); {expr}'
    with tempfile.TemporaryDirectory(prefix="pkgckpt-r-") as cwd:
        try:
            # A session of its own, taken down with pkgckpt (`owned`): a restore that its
            # watchdog ends leaves no R behind.
            proc = popen(
                [rscript, *R_FLAGS, "-e", script, *args],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=cwd,
                env={**child_environ(), **(environ or {})},
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        except OSError as e:
            raise ScanError(f"cannot run {rscript}: {e}") from None
        with owned(proc):
            try:
                out, err = proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired as e:
                raise ScanError(f"cannot run {rscript}: {e}") from None
    # Paths, decoded as paths and split at newlines alone: text mode would turn a carriage
    # return inside a library's name (rsession.conf can give one) into a line break.
    lines = os.fsdecode(out).split("\n")
    stderr = err.decode(errors="replace")
    if _MARK not in lines:
        raise ScanError(_startup_failure(rscript, stderr))
    if proc.returncode != 0:
        last = stderr.strip().splitlines()[-3:] or ["no output"]
        raise ScanError(f"{rscript} failed ({proc.returncode}): {' '.join(last)}")
    return [ln.removeprefix(_MARK) for ln in lines if ln.startswith(_MARK) and ln != _MARK]


# -- the libraries R uses ------------------------------------------------------------------

# Run by the R being asked: tab-separated `kind<TAB>value` records.
_PROBE = r"""local({
    m <- function(kind, x) if (length(x)) cat(paste0("pkgckpt:", kind, "\t", x), sep = "\n")
    split <- function(var) {
        x <- strsplit(Sys.getenv(var), .Platform$path.sep, fixed = TRUE)[[1L]]
        path.expand(x[nzchar(x)])
    }
    m("home", R.home())
    m("version", as.character(getRversion()))
    m("platform", R.version$platform)
    m("base", normalizePath(.Library, mustWork = FALSE))
    m("lib", normalizePath(.libPaths(), mustWork = FALSE))
    # R has expanded %v, %p, ... in R_LIBS_USER at startup; a missing one is not in
    # .libPaths() yet, but install.packages() creates it on first use.
    m("user", split("R_LIBS_USER"))
    m("candidate", c(split("R_LIBS"), split("R_LIBS_SITE")))
    m("rlibs", split("R_LIBS"))
})"""


class RLibs(msgspec.Struct, frozen=True, kw_only=True):
    """What an R installation says of its libraries."""

    home: str
    version: str
    platform: str
    base: tuple[str, ...] = ()
    """`.Library`: R's own packages, never tracked."""
    libs: tuple[str, ...] = ()
    """`.libPaths()` as R reports it (existing directories only)."""
    user: tuple[str, ...] = ()
    """`R_LIBS_USER`, expanded as R does, whether or not it exists."""
    candidates: tuple[str, ...] = ()
    """`R_LIBS` and `R_LIBS_SITE` entries: R drops missing ones from `.libPaths()`, so
    their creation changes the answer."""
    r_libs: tuple[str, ...] = ()
    """`R_LIBS` entries: libraries the environment names, told apart from site ones."""
    rstudio: tuple[str, ...] = ()
    """The user library of RStudio's R sessions (`r-libs-user` in `rsession.conf`, see
    `scan.rstudio`): `R_LIBS_USER` as such a session's R expands it, whether or not it
    exists; empty when RStudio's configuration sets none."""

    def role(self, lib: Path) -> str:
        """What `lib` is to this R: "user", "libs" (`R_LIBS`), "rstudio" (the user library
        of RStudio's sessions, when it is not this R's own) or "site" (the rest of
        `.libPaths()`, which R fills from `R_LIBS_SITE`). Compared resolved: R reports
        `.libPaths()` normalized, the variables as written."""
        here = os.path.realpath(lib)
        roles = (("user", self.user), ("libs", self.r_libs), ("rstudio", self.rstudio))
        for role, paths in roles:
            if any(os.path.realpath(p) == here for p in paths):
                return role
        return "site"

    def tracked(self) -> tuple[Path, ...]:
        """The libraries to track: `.libPaths()`, the user library and RStudio's, without
        `.Library`; each directory once, by the name the variables give it (R reports
        `.libPaths()` resolved): a link the user made (`~/Rlib` to the volume) keeps its
        name when it is pointed elsewhere."""
        base = {os.path.realpath(b) for b in self.base}
        named = {os.path.realpath(p): p for p in (*self.rstudio, *self.user)}
        found: dict[str, Path] = {}
        for lib in (*self.libs, *self.user, *self.rstudio):
            real = os.path.realpath(lib)
            if real not in base:
                found.setdefault(real, Path(named.get(real, lib)))
        return tuple(found.values())


def _parse_probe(lines: Sequence[str]) -> RLibs:
    values: dict[str, list[str]] = {}
    for line in lines:
        kind, _, value = line.partition("\t")
        values.setdefault(kind, []).append(value)
    paths = {
        kind: tuple(v for v in values.get(kind, []) if v.startswith("/"))
        for kind in ("base", "lib", "user", "candidate", "rlibs")
    }
    one = {k: (values.get(k) or [""])[0] for k in ("home", "version", "platform")}
    if not all(one.values()):
        raise ScanError("R did not describe its installation")
    return RLibs(
        home=one["home"],
        version=one["version"],
        platform=one["platform"],
        base=paths["base"],
        libs=paths["lib"],
        user=paths["user"],
        candidates=paths["candidate"],
        r_libs=paths["rlibs"],
    )


class _KeptR(msgspec.Struct, frozen=True, kw_only=True):
    key: str
    stamps: tuple[_Stamp, ...]
    stable: tuple[Stable, ...]
    """The same files' identities as a new container of the image sees them (`kept`)."""
    found: RLibs


class _Home(msgspec.Struct, frozen=True, kw_only=True):
    """What `R RHOME` and R's own `tools` package say of the R on PATH."""

    home: str
    version: str
    platform: str


class _KeptHome(msgspec.Struct, frozen=True, kw_only=True):
    key: str
    stamps: tuple[_Stamp, ...]
    stable: tuple[Stable, ...]
    found: _Home


_kept_decoder = msgspec.json.Decoder(_KeptR)
_rlibs_decoder = msgspec.json.Decoder(RLibs)
_CACHE_FORMAT = 2


def _probe_key(program: str, probe: str = _PROBE, session: str | None = None) -> str:
    # Every R_* variable steers R (R_HOME, R_LIBS*, R_ENVIRON*, R_PROFILE), and HOME the
    # user's Renviron and `~`. `session`: RStudio's r-libs-user, read at each call; left
    # out when unset, so that answers kept before it was asked for still hold.
    steering = sorted((k, v) for k, v in os.environ.items() if k == "HOME" or k.startswith("R_"))
    ids = (os.getuid(), os.geteuid(), os.getgid(), os.getegid())
    rstudio = [] if session is None else [session]
    text = msgspec.json.encode(
        [_CACHE_FORMAT, probe, program, os.path.realpath(program), steering, ids, *rstudio]
    )
    return sha256(text).hexdigest()


def _answer_stamps(found: RLibs) -> tuple[_Stamp, ...]:
    # The startup files, and the parents of every library R named or could name: a library
    # appearing or vanishing changes its parent, an install inside it does not.
    files = [str(f) for f in site_files(found.home, os.environ)]
    parents = {str(Path(p).parent) for p in (*found.libs, *found.user, *found.candidates)}
    return tuple(_identity(p, True) for p in [*files, *sorted(parents)])


def _stable_stamps(found: RLibs) -> tuple[Stable, ...]:
    # As `_answer_stamps`, for another container of the image. What R reads that a user
    # controls: the variables of the key, ~/.Renviron (or R_ENVIRON_USER), by content, and
    # whether a library exists (R drops missing ones from .libPaths()), by the mtime of its
    # parent: a persistent home's ~/R/... library created since shows there. R's own
    # version is in base's DESCRIPTION (`Built:`), read by content.
    files = [str(f) for f in site_files(found.home, os.environ)]
    files.append(str(Path(found.home, "library", "base", "DESCRIPTION")))
    parents = {str(Path(p).parent) for p in (*found.libs, *found.user, *found.candidates)}
    return (
        *(stable(f, content=True) for f in files),
        *(stable(p) for p in sorted(parents)),
    )


def _cache_file(cache_dir: Path, program: str, what: str = "r-libs") -> Path:
    return cache_dir / f"{what}-{sha256(program.encode()).hexdigest()[:32]}.json"


def _from_image(image: Path | None, key: str) -> tuple[RLibs, tuple[Stable, ...]] | None:
    entry = image_kept.lookup(image, "r", key)
    if entry is None:
        return None
    try:
        return _rlibs_decoder.decode(entry.answer), entry.stable
    except (msgspec.DecodeError, UnicodeDecodeError):
        return None


_CACHE_MAX = 64 * 1024


def r_libraries(rscript: str, *, cache_dir: Path | None = None, image: Path | None = None) -> RLibs:
    """What `rscript`'s R says of its libraries, asked once and kept in `cache_dir` (the
    runtime directory) until R, its startup files, its environment or its libraries'
    parents change; ScanError when R cannot answer. `image`: the image's baseline file,
    beside which `pkgckpt baseline` kept the answer it got (`kept`), used when the
    runtime directory has none.

    When RStudio's `rsession.conf` names a user library for its sessions (`scan.rstudio`),
    R is asked a second time as such a session starts, with `R_LIBS_USER` set to it: its
    answer is `RLibs.rstudio`. The file is read at every call, and its value is part of
    the key: an edit of it is a new question."""
    from .rstudio import libs_user

    session = libs_user(os.environ)
    key = _probe_key(rscript, session=session)
    path = _cache_file(cache_dir, rscript) if cache_dir is not None else None
    if path is not None:
        kept = recall(path, key, _kept_decoder)
        if kept is not None:
            image_kept.note("r", key, kept.stable, msgspec.json.encode(kept.found))
            return kept.found
    resolved = os.path.realpath(rscript)
    before = (_identity(resolved, True),)
    from_image = _from_image(image, key)
    if from_image is not None:
        found, stamps = from_image
    else:
        program = stable(resolved)
        found = _parse_probe(run_rscript(rscript, _PROBE))
        if session is not None:
            # R reads its Renviron files after RStudio set the variable: one that sets
            # R_LIBS_USER outright wins, as it does in the session.
            as_session = _parse_probe(
                run_rscript(rscript, _PROBE, environ={"R_LIBS_USER": session})
            )
            found = msgspec.structs.replace(found, rstudio=as_session.user)
        stamps = (program, *_stable_stamps(found))
    if path is not None:
        kept = _KeptR(key=key, stamps=before + _answer_stamps(found), stable=stamps, found=found)
        image_kept.keep(path, msgspec.json.encode(kept))
    image_kept.note("r", key, stamps, msgspec.json.encode(found))
    return found


def r_discover() -> list[Path]:
    """The libraries the R on PATH uses (see `RLibs.tracked`), asked now."""
    programs = r_programs()
    if programs is None:
        raise ScanError("Rscript not found on PATH")
    return list(r_libraries(programs[0]).tracked())


# -- the R on PATH, without starting R ----------------------------------------------------


_kept_home_decoder = msgspec.json.Decoder(_KeptHome)
_home_decoder = msgspec.json.Decoder(_Home)
_RHOME = "RHOME"
"""The probe of the R home in its key: `R RHOME`, then `tools`' DESCRIPTION."""


def _tools(home: str) -> str:
    return str(Path(home, "library", "tools", "DESCRIPTION"))


def _ask_home(r: str) -> tuple[_Home, _Stamp, Stable] | None:
    """`R RHOME`, then (version, platform) from the `Built:` of R's own `tools` package,
    with that DESCRIPTION's identities taken before it is read.

    `R RHOME` is a shell script that prints R's home (10 ms, where Rscript takes 200).
    `tools` has compiled code, so its `Built:` names the platform (`base`'s does not).
    """
    from ..runner import Deadline, call

    done = call([r, _RHOME], deadline=Deadline(30), split_stderr=True)
    home = done.output.strip()
    if done.returncode != 0 or not home.startswith("/") or "\n" in home:
        return None
    tools = _tools(home)
    stamp, kept = _identity(tools, True), stable(tools, content=True)
    try:
        built = read_dcf(Path(tools)).get("Built", "")
    except (OSError, DescriptionError):
        return None
    parts = [p.strip() for p in built.split(";")]
    if len(parts) < 2 or not parts[0].startswith("R ") or not parts[1]:
        return None
    return _Home(home=home, version=parts[0].removeprefix("R "), platform=parts[1]), stamp, kept


def _r_home(cache_dir: Path | None, image: Path | None) -> _Home | None:
    """What `_ask_home` says of the R on PATH, kept as `r_libraries` keeps R's answer: in
    `cache_dir` under the same key rules (the R program's path and resolved path, the
    R_* variables and HOME, the ids) until the program or `tools`' DESCRIPTION changes,
    and beside the image's baseline (`kept`, by the program's size and mtime and the
    DESCRIPTION's content). Derived from nothing else: `r_libraries`' answer is Rscript's,
    which need not be the R on PATH, and with named libraries R is never asked for it."""
    r = which("R")
    if r is None:
        return None
    key = _probe_key(r, _RHOME)
    path = _cache_file(cache_dir, r, "r-home") if cache_dir is not None else None
    if path is not None:
        kept = recall(path, key, _kept_home_decoder)
        if kept is not None:
            image_kept.note("r-home", key, kept.stable, msgspec.json.encode(kept.found))
            return kept.found
    resolved = os.path.realpath(r)
    before = (_identity(r, False), _identity(resolved, True))
    from_image = _home_from_image(image, key)
    if from_image is not None:
        found, stamps = from_image
        tools = _identity(_tools(found.home), True)
    else:
        program = (stable(r, False), stable(resolved))
        asked = _ask_home(r)
        if asked is None:
            return None
        found, tools, described = asked
        stamps = (*program, described)
    if path is not None:
        kept = _KeptHome(key=key, stamps=(*before, tools), stable=stamps, found=found)
        image_kept.keep(path, msgspec.json.encode(kept))
    image_kept.note("r-home", key, stamps, msgspec.json.encode(found))
    return found


def _home_from_image(image: Path | None, key: str) -> tuple[_Home, tuple[Stable, ...]] | None:
    entry = image_kept.lookup(image, "r-home", key)
    if entry is None:
        return None
    try:
        return _home_decoder.decode(entry.answer), entry.stable
    except (msgspec.DecodeError, UnicodeDecodeError):
        return None


@functools.cache
def r_info(cache_dir: Path | None = None, image: Path | None = None) -> tuple[str, str]:
    """(R version, platform) of the R on PATH, found once per process; `cache_dir` and
    `image` as for `r_libraries`. Without `R RHOME`'s answer, Rscript is asked (not kept:
    an R whose front end cannot name its home is not worth a cache)."""
    found = _r_home(cache_dir, image)
    if found is not None:
        return found.version, found.platform
    programs = r_programs()
    if programs is None:
        raise ScanError("Rscript not found on PATH")
    info = "c(as.character(getRversion()), R.version$platform)"
    lines = run_rscript(programs[0], f'cat(paste0("{_MARK}", {info}), sep = "\\n")')
    if len(lines) != 2:
        raise ScanError("Rscript did not report its version")
    return lines[0], lines[1]


def r_environment(
    lib: Path,
    info: RLibs | None = None,
    role: str | None = None,
    *,
    cache_dir: Path | None = None,
    image: Path | None = None,
) -> Environment:
    """The manifest identity of an R library; without a usable R, version and platform are None.

    `info`: what the R that uses the library said of itself, when it was asked. `role`:
    what the library is to R (see `Environment.role`). `cache_dir`, `image`: where the
    R on PATH's answer is kept, when `info` is None (`r_info`).
    """
    if info is not None:
        return Environment(
            kind="r", path=str(lib), interpreter=info.version, platform=info.platform, role=role
        )
    try:
        version, platform = r_info(cache_dir, image)
    except ScanError:
        return Environment(kind="r", path=str(lib), role=role)
    return Environment(kind="r", path=str(lib), interpreter=version, platform=platform, role=role)
