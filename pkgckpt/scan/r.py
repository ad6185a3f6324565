"""R libraries: one library directory -> its installed packages, from each `DESCRIPTION`.

An installed package is `<lib>/<Package>/DESCRIPTION` with a `Built:` field (R adds it at
install time; a source tree has none). What interrupted or running installs leave is
skipped: `00LOCK-*` directories (reported as in progress) and directories without a
DESCRIPTION. Where a package came from is in `Repository:` (CRAN, RSPM, ...) or in the
`Remote*` fields that remotes and pak write.

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
import shutil
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ..errors import ScanError
from ..manifest import (
    DirectorySource,
    Environment,
    IndexSource,
    Package,
    Source,
    UrlSource,
    VcsSource,
)
from . import ScanResult
from .python import RACY_NS, strip_credentials

LOCK_PREFIX = "00LOCK"
"""R CMD INSTALL's lock: `00LOCK-<pkg>` per package, or `00LOCK` for the whole library."""

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


def source(fields: Mapping[str, str]) -> Source:
    """Where the package came from: the remotes/pak `Remote*` fields, else `Repository:`."""
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
        return VcsSource(
            vcs="git",
            url=strip_credentials(url),
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
        return DirectorySource(path=url, subdirectory=subdir)
    return IndexSource(repository=fields.get("Repository") or None)


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


def read_dcf(path: Path) -> dict[str, str]:
    """The fields of a DESCRIPTION file; DescriptionError or OSError when unreadable."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        # Older packages declare `Encoding: latin1`; the fields pkgckpt reads are ASCII.
        text = data.decode("latin-1")
    return parse_dcf(text)


_Found = Package | str | None
"""A package, the reason an entry is broken, or None: not an installed package."""


@dataclass(frozen=True)
class _Cached:
    identity: tuple[int, int, int]
    """(inode, mtime_ns, size) of the entry's DESCRIPTION."""
    found: _Found
    suspect: bool
    """Read again at the next scan whatever its identity: racy or broken."""


class RLibraryScanner:
    """Scan one R library directory; a rescan re-reads only changed DESCRIPTION files."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.exists = False
        """Whether the directory existed at the last scan."""
        self.reads = 0
        """DESCRIPTION files read (not reused) by the last scan: the incremental work done."""
        self._cache: dict[str, _Cached] = {}

    def scan(self) -> ScanResult:
        self.reads = 0
        now = time.time_ns()
        try:
            with os.scandir(self.path) as it:
                entries = sorted(e.name for e in it if not e.name.startswith("."))
        except (FileNotFoundError, NotADirectoryError):
            self.exists = False
            self._cache = {}
            return ScanResult()
        except OSError as e:
            raise ScanError(f"cannot list R library {self.path}: {e.strerror}") from None
        self.exists = True
        packages: dict[str, Package] = {}
        broken: dict[str, str] = {}
        in_progress: set[str] = set()
        cache: dict[str, _Cached] = {}
        for name in entries:
            if name.startswith(LOCK_PREFIX):
                in_progress.add(name)
                continue
            entry = self._entry(name, now)
            if entry is None:
                continue
            cache[name] = entry
            if isinstance(entry.found, Package):
                packages[entry.found.name] = entry.found
            elif entry.found is not None:
                broken[name] = entry.found
        self._cache = cache
        return ScanResult(packages=packages, broken=broken, in_progress=frozenset(in_progress))

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
        except OSError as e:
            found = f"cannot read DESCRIPTION: {e.strerror}"
        except DescriptionError as e:
            found = str(e)
        suspect = isinstance(found, str) or now - st.st_mtime_ns < RACY_NS
        return _Cached(identity, found, suspect)


# -- the R installation ------------------------------------------------------------------


_MARK = "pkgckpt:"


def _rscript(*args: str, vanilla: bool = True) -> list[str]:
    """Lines that an R expression printed with the `pkgckpt:` prefix (profiles may print too)."""
    rscript = shutil.which("Rscript")
    if rscript is None:
        raise ScanError("Rscript not found on PATH")
    cmd = [rscript, *(["--vanilla"] if vanilla else []), *args]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise ScanError(f"cannot run Rscript: {e}") from None
    if done.returncode != 0:
        last = done.stderr.strip().splitlines()[-1:] or ["no output"]
        raise ScanError(f"Rscript failed ({done.returncode}): {last[0]}")
    return [ln.removeprefix(_MARK) for ln in done.stdout.splitlines() if ln.startswith(_MARK)]


def r_discover() -> list[Path]:
    """The libraries R searches (`.libPaths()`), then `R_LIBS_USER` even before it exists.

    Run without --vanilla: the user's and the site's Renviron and Rprofile are what set
    these paths. R drops a missing R_LIBS_USER from `.libPaths()`, but that is where the
    first `install.packages()` creates the personal library, so it is watched too.
    """
    expr = (
        'user <- path.expand(strsplit(Sys.getenv("R_LIBS_USER"), .Platform$path.sep)[[1]]);'
        f'cat(paste0("{_MARK}", unique(c(.libPaths(), user[nzchar(user)]))), sep = "\\n")'
    )
    seen: dict[Path, None] = {}
    for line in _rscript("-e", expr, vanilla=False):
        if line:
            seen.setdefault(Path(line), None)
    return list(seen)


def _tools_built() -> tuple[str, str] | None:
    """(version, platform) from the `Built:` of R's own `tools` package, without starting R.

    `R RHOME` is a shell script that prints R's home (10 ms, where Rscript takes 200):
    the no-op restore runs this on every container start. `tools` has compiled code, so
    its `Built:` names the platform (`base`'s does not).
    """
    r = shutil.which("R")
    if r is None:
        return None
    try:
        done = subprocess.run([r, "RHOME"], capture_output=True, text=True, timeout=30)
        home = done.stdout.strip()
        built = read_dcf(Path(home, "library", "tools", "DESCRIPTION")).get("Built", "")
    except (OSError, subprocess.SubprocessError, DescriptionError):
        return None
    parts = [p.strip() for p in built.split(";")]
    if done.returncode != 0 or len(parts) < 2 or not parts[0].startswith("R ") or not parts[1]:
        return None
    return parts[0].removeprefix("R "), parts[1]


@functools.cache
def r_info() -> tuple[str, str]:
    """(R version, platform) of the R on PATH, found once per process."""
    found = _tools_built()
    if found is not None:
        return found
    info = "c(as.character(getRversion()), R.version$platform)"
    lines = _rscript("-e", f'cat(paste0("{_MARK}", {info}), sep = "\\n")')
    if len(lines) != 2:
        raise ScanError("Rscript did not report its version")
    return lines[0], lines[1]


def r_environment(lib: Path) -> Environment:
    """The manifest identity of an R library; without a usable R, version and platform are None."""
    try:
        version, platform = r_info()
    except ScanError:
        return Environment(kind="r", path=str(lib))
    return Environment(kind="r", path=str(lib), interpreter=version, platform=platform)
