"""Restore never trusts the store blindly (DESIGN invariant 4): check a manifest's body.

`check_body()` refuses the whole manifest, before anything is installed, when any name,
version or source in it is not what a scanner could have recorded: a name that is not a
distribution name (PEP 508) or an R package name, a version that is not a PEP 440 / R
version, a source URL or path with whitespace, control characters or an option shape.
What passes is safe to put after `--` on an installer's command line, one argv element per
requirement. The patterns are ASCII-only and matched with `fullmatch` (`$` would accept a
trailing newline; IGNORECASE alone would let `K` (Kelvin sign) stand for `k`).

An image's own Python distributions may have versions that are not PEP 440: Ubuntu's apt
installs `distro-info 1.1build1` and `python-debian 0.1.43ubuntu1` (pip says each "has a
non-standard version number"). The user may upgrade or remove one, so the image's version
an upgrade `replaced`, and the version of a removed package, may also be a
`legacy_version()`: neither reaches a command line (a removal names the package alone,
`pip uninstall -- NAME`; `replaced` is only compared and shown), so a conservative ASCII
charset is enough. What the user installed (an addition, the new version of a change) is
still PEP 440: it is pinned as `name==version`. R versions stay strict everywhere: `R CMD
INSTALL` refuses a malformed one, so no R library holds one.

Whether a well-formed source may be fetched (URL scheme allowed, local path present) is a
separate question, answered per package by the installer's `blocked()`: such a package is
reported as a failure, while the rest is restored.

R rules: `r_name()` and `r_version()` follow "Writing R Extensions" 1.1.1. R sources
(remotes) get the same checks as Python's, and a scheme from a fixed list and no path
segment shaped like an option; whether one may be fetched here is `restore/r.py`'s
`blocked()`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from urllib.parse import urlsplit

from .errors import ManifestError
from .manifest import (
    Body,
    Delta,
    DirectorySource,
    IndexSource,
    LocalSource,
    Package,
    UrlSource,
    VcsSource,
    plain_subdirectory,
)
from .scan.python import canonicalize_name

canonical = canonicalize_name
"""The key restore compares distributions by (the scanner's, so both sides agree)."""

MAX_NAME = 200
MAX_VERSION = 128
MAX_URL = 2048
MAX_PROBLEMS = 10
"""Problems listed in the error message; a hostile manifest can have thousands."""


class _Pattern:
    """A pattern compiled at its first match, ASCII-only: a daemon's first record matches
    two of this module's patterns, and compiling all of them at import cost ~1 ms of CPU.
    `source` may be a function that gives the pattern (one from a module imported then)."""

    __slots__ = ("_compiled", "_flags", "_source")

    def __init__(self, source: str | Callable[[], str], flags: int = 0) -> None:
        self._source, self._flags = source, flags | re.ASCII
        self._compiled: re.Pattern[str] | None = None

    @property
    def compiled(self) -> re.Pattern[str]:
        if self._compiled is None:
            source = self._source if isinstance(self._source, str) else self._source()
            self._compiled = re.compile(source, self._flags)
        return self._compiled

    def fullmatch(self, text: str) -> re.Match[str] | None:
        return self.compiled.fullmatch(text)


_PY_NAME = _Pattern(r"[A-Z0-9]|[A-Z0-9][A-Z0-9._-]*[A-Z0-9]", re.IGNORECASE)
_R_NAME = _Pattern(r"[A-Za-z][A-Za-z0-9.]*[A-Za-z0-9]")
_R_VERSION = _Pattern(r"[0-9]+(?:[.-][0-9]+)+")
# A release segment alone ("1.26.4"), what nearly every version is, is valid PEP 440 as it
# stands: no need to import packaging and compile its pattern (~4 ms of a no-op) for it.
_PY_RELEASE = _Pattern(r"[0-9]+(?:\.[0-9]+)*")
# No whitespace, control characters or shell or requirement syntax, and no leading "-" or
# ".": what is shown in a report or a plan stays one harmless word.
_LEGACY_VERSION = _Pattern(r"[A-Za-z0-9][A-Za-z0-9._+~-]*")
_HEX = _Pattern(r"[0-9a-f]{7,128}")
_REVISION = _Pattern(r"[A-Za-z0-9_][A-Za-z0-9._/+-]*")
_SUBDIR = _Pattern(r"[A-Za-z0-9_][A-Za-z0-9._-]*(?:/[A-Za-z0-9_][A-Za-z0-9._-]*)*")
_HASH_NAMES = frozenset({"md5", "sha1", "sha224", "sha256", "sha384", "sha512"})
# Printable ASCII except space: what a URL may contain once percent-encoded.
_URL_CHARS = _Pattern(r"[!-~]+")
# Neither the user nor the host may start with "-": ssh would take it for an option.
_HOST = _Pattern(
    r"(?:[A-Za-z0-9_][A-Za-z0-9._~%!$&'()*+,;=:-]*@)?[A-Za-z0-9_][A-Za-z0-9._-]*(?::[0-9]+)?",
)
# conda's own rules: names lowercase, versions and build strings without the characters a
# MatchSpec gives meaning to (= , | * < > ! @ [ ] and space), channels a name or a URL.
# A recorded channel never reaches a command line: it only selects one of the configured
# `conda_channels` (restore/conda.py), so any URL scheme a client may have installed from
# (an internal http mirror, s3) is well-formed here; a channel that is not configured is
# that package's own failure (`blocked()`), not the manifest's.
_CONDA_NAME = _Pattern(r"[a-z0-9_][a-z0-9_.+-]*")
_CONDA_VERSION = _Pattern(r"[A-Za-z0-9_][A-Za-z0-9_.+!]*")
_CONDA_BUILD = _Pattern(r"[A-Za-z0-9_][A-Za-z0-9_.+]*")
_CONDA_CHANNEL = _Pattern(
    r"[A-Za-z0-9_][A-Za-z0-9_.-]*(?:/[A-Za-z0-9_][A-Za-z0-9_.-]*)*"
    r"|[A-Za-z][A-Za-z0-9+.-]*://[A-Za-z0-9_.~%/:@-]+",
)
_IMAGE = _Pattern(r"sha256:[0-9a-f]{64}")
_INTERPRETER = _Pattern(r"[0-9A-Za-z][0-9A-Za-z.+_-]{0,31}")
VCS = frozenset({"git", "hg", "svn", "bzr"})


def _pep440() -> str:
    # packaging's own PEP 440 pattern, without the surrounding whitespace Version() accepts.
    from packaging.version import VERSION_PATTERN

    return VERSION_PATTERN


_PY_VERSION = _Pattern(_pep440, re.VERBOSE | re.IGNORECASE)


def python_name(name: str) -> bool:
    """A valid distribution name (PEP 508 / core metadata `Name`)."""
    return len(name) <= MAX_NAME and _PY_NAME.fullmatch(name) is not None


def python_version(version: str) -> bool:
    """A valid PEP 440 version, exactly (no surrounding whitespace)."""
    return len(version) <= MAX_VERSION and (
        _PY_RELEASE.fullmatch(version) is not None or _PY_VERSION.fullmatch(version) is not None
    )


def legacy_version(version: str) -> bool:
    """A version an image's distribution may have that is not PEP 440 (`1.1build1`,
    `0.1.43ubuntu1`): letters, digits and `._+~-`, starting with a letter or digit. Only
    for what never reaches an installer's command line (see the module)."""
    return len(version) <= MAX_VERSION and _LEGACY_VERSION.fullmatch(version) is not None


def image_version(version: str) -> bool:
    """A version of a distribution an image shipped: PEP 440, or a `legacy_version`."""
    return python_version(version) or legacy_version(version)


def r_name(name: str) -> bool:
    """A valid R package name: letters, digits and '.', starting with a letter."""
    return len(name) <= MAX_NAME and _R_NAME.fullmatch(name) is not None


def r_version(version: str) -> bool:
    """A valid R package version: two or more integers separated by '.' or '-'."""
    return len(version) <= MAX_VERSION and _R_VERSION.fullmatch(version) is not None


def _url_problem(url: str, *, relative: bool = False) -> str | None:
    if len(url) > MAX_URL:
        return "URL too long"
    if _URL_CHARS.fullmatch(url) is None:
        return "URL with whitespace, control or non-ASCII characters"
    parts = urlsplit(url)
    if (not parts.scheme and not relative) or url.startswith("-"):
        return "not an absolute URL"
    if parts.fragment or "#" in url:
        return "URL with a fragment"
    if parts.netloc and _HOST.fullmatch(parts.netloc) is None:
        return "URL with an invalid host"
    return None


def _source_problem(package: Package, *, r: bool = False) -> str | None:
    source = package.source
    if isinstance(source, IndexSource):
        return None
    if isinstance(source, UrlSource):
        problem = _url_problem(source.url)
        if problem:
            return problem
        for algo, digest in source.hashes.items():
            if algo not in _HASH_NAMES or _HEX.fullmatch(digest) is None:
                return "invalid hash"
    elif isinstance(source, VcsSource):
        if source.vcs not in VCS:
            return f"unknown VCS (known: {', '.join(sorted(VCS))})"
        # Daemons before 2026-12-02 recorded R's `install_git("../pkg")` as typed: such a
        # package fails alone (`restore/r.py`), the rest of the manifest is restored.
        problem = _url_problem(source.url, relative=r)
        if problem:
            return problem
        if source.commit is not None and _HEX.fullmatch(source.commit) is None:
            return "VCS commit is not a hexadecimal id"
        rev = source.requested_revision
        if rev is not None and (len(rev) > MAX_NAME or _REVISION.fullmatch(rev) is None):
            return "invalid VCS revision"
    elif isinstance(source, LocalSource):
        path = source.path
        if path is not None and (
            not path.startswith("/") or len(path) > 4096 or any(c in path for c in "\0\n\r")
        ):
            return "local source path is not an absolute path without control characters"
        for algo, digest in source.hashes.items():
            if algo not in _HASH_NAMES or _HEX.fullmatch(digest) is None:
                return "invalid hash"
        if source.installed is not None and _HEX.fullmatch(source.installed) is None:
            return "invalid hash"
    elif isinstance(source, DirectorySource):
        path = source.path
        if not path.startswith("/") or len(path) > 4096:
            return "directory source is not an absolute path"
        if any(c in path for c in "\0\n\r"):
            return "directory source path with control characters"
    # `./sub/` is `sub` to the installers: a manifest recorded before the checkpoint
    # wrote it plainly is not refused for it.
    subdirectory = plain_subdirectory(getattr(source, "subdirectory", None))
    if subdirectory is not None and (
        _SUBDIR.fullmatch(subdirectory) is None or ".." in subdirectory.split("/")
    ):
        return "invalid subdirectory"
    return None


R_URL_SCHEMES = frozenset({"https", "http", "file", "ssh", "git"})
"""Schemes an R source URL may have at all; `restore/r.py` narrows them per kind."""


def _r_source_problem(package: Package) -> str | None:
    """What R sources must also be: a known scheme, no path segment shaped like an option
    (remotes and git take them as arguments)."""
    source = package.source
    if isinstance(source, (UrlSource, VcsSource)):
        parts = urlsplit(source.url)
        relative = isinstance(source, VcsSource) and not parts.scheme
        if parts.scheme.lower() not in R_URL_SCHEMES and not relative:
            return f"URL scheme {parts.scheme!r} is not allowed for R sources"
        if any(segment.startswith("-") for segment in parts.path.split("/")):
            return "URL with a path segment starting with '-'"
    if isinstance(source, (DirectorySource, LocalSource)) and any(
        segment.startswith("-") for segment in (source.path or "").split("/")
    ):
        return "local source with a path segment starting with '-'"
    return None


def _show(text: str) -> str:
    # repr() shows hostile bytes (NUL, ANSI escapes, newlines) instead of emitting them.
    return repr(text if len(text) <= 80 else text[:77] + "...")


def conda_problem(package: Package) -> str | None:
    """Why a conda record cannot go into a `channel::name=version=build` spec, or None."""
    if len(package.name) > MAX_NAME or not _CONDA_NAME.fullmatch(package.name):
        return f"{_show(package.name)} is not a valid conda package name"
    if len(package.version) > MAX_VERSION or not _CONDA_VERSION.fullmatch(package.version):
        return f"{package.name}: {_show(package.version)} is not a valid conda version"
    build = package.build
    if build is not None and (len(build) > MAX_VERSION or not _CONDA_BUILD.fullmatch(build)):
        return f"{package.name}: {_show(build)} is not a valid conda build string"
    channel = package.channel
    if channel is not None and (len(channel) > MAX_URL or not _CONDA_CHANNEL.fullmatch(channel)):
        return f"{package.name}: {_show(channel)} is not a valid conda channel"
    if not isinstance(package.source, IndexSource):
        return f"{package.name}: a conda package comes from a channel, not another source"
    return None


def _conda_problems(delta: Delta, where: str) -> Iterator[str]:
    seen: set[str] = set()
    for package in (*delta.added, *delta.changed, *delta.removed):
        problem = conda_problem(package)
        if problem:
            yield f"{where}: {problem}"
            continue
        if package.name in seen:
            yield f"{where}: {package.name} is listed more than once"
        seen.add(package.name)


def delta_problems(delta: Delta) -> Iterator[str]:
    """Every reason this environment's delta cannot be trusted."""
    where = f"environment {_show(delta.env.path)}"
    if delta.env.kind == "conda":
        yield from _conda_problems(delta, where)
        return
    python = delta.env.kind == "python"
    # Shown in the rebase plan (restore/rebase.py): never control characters from the store.
    if delta.image is not None and _IMAGE.fullmatch(delta.image) is None:
        yield f"{where}: {_show(delta.image)} is not an image identity"
    if delta.env.interpreter is not None and _INTERPRETER.fullmatch(delta.env.interpreter) is None:
        yield f"{where}: {_show(delta.env.interpreter)} is not an interpreter version"
    seen: set[str] = set()
    entries = [
        *((p, False) for p in (*delta.added, *delta.changed)),
        *((p, True) for p in delta.removed),
    ]
    for package, removed in entries:
        if package.replaced is not None and not (
            image_version(package.replaced) if python else r_version(package.replaced)
        ):
            yield f"{where}: {_show(package.name)}: {_show(package.replaced)} is not a version"
            continue
        problem = package_problem(package, delta.env.kind, removed=removed)
        if problem:
            yield f"{where}: {problem}"
            continue
        key = canonical(package.name) if python else package.name
        if key in seen:
            yield f"{where}: {package.name} is listed more than once"
        seen.add(key)


def package_problem(package: Package, kind: str, *, removed: bool = False) -> str | None:
    """Why `package`, in an environment of `kind`, makes `check_body` refuse a manifest, or
    None: the checkpoint records no package restore would refuse the whole record for.
    `removed`: an image package the user removed, whose Python version may be legacy."""
    if kind == "conda":
        return conda_problem(package)
    if kind == "python":
        if not python_name(package.name):
            return f"{_show(package.name)} is not a valid distribution name"
        if removed and not image_version(package.version):
            return f"{package.name}: {_show(package.version)} is not a valid version"
        if not removed and not python_version(package.version):
            return f"{package.name}: {_show(package.version)} is not a valid PEP 440 version"
        problem = _source_problem(package)
        if isinstance(package.source, LocalSource):
            problem = "a local R source in a Python environment"
    else:
        if not r_name(package.name):
            return f"{_show(package.name)} is not a valid R package name"
        if not r_version(package.version):
            return f"{package.name}: {_show(package.version)} is not a valid R version"
        problem = _source_problem(package, r=True) or _r_source_problem(package)
    return f"{package.name}: {problem}" if problem else None


def check_body(body: Body) -> None:
    """Raise ManifestError naming the first problems when any part of `body` is untrusted."""
    problems: list[str] = []
    count = 0
    for delta in body.deltas():
        for problem in delta_problems(delta):
            count += 1
            if len(problems) < MAX_PROBLEMS:
                problems.append(problem)
    if problems:
        more = f"\n  ... and {count - len(problems)} more" if count > len(problems) else ""
        raise ManifestError(
            "refusing the manifest, nothing was installed:\n  " + "\n  ".join(problems) + more
        )
