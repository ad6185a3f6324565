"""R packages, restored into one R library at their exact versions.

Three steps, none through a shell, every R started by pkgckpt's rule (`scan.r.R_FLAGS`:
the image's `Rprofile.site` and `Renviron.site` and the user's `~/.Renviron` apply, no
profile code from the home or the working directory runs; a private working directory;
`R_PROFILE_USER=/dev/null` for the R processes R CMD INSTALL starts itself; every tracked
R library on `R_LIBS`, so that a dependency in another library is found):

1. fetch: one `Rscript` reads the repositories'
   `PACKAGES` (`available.packages`) and downloads each package's source tarball: from
   the repository when it serves that exact version, else from its archive
   (`src/contrib/Archive/<pkg>/<pkg>_<ver>.tar.gz`, as CRAN keeps it). The requests go
   to R in a file, one tab-separated record a line, never as R code.
2. install: `R CMD INSTALL --no-test-load --library=<lib> <source>` per
   package, in dependency order (Depends, Imports and LinkingTo read from each source's
   DESCRIPTION), independent packages side by side (`jobs`). A package whose dependency
   failed is not attempted; every failure is reported with R's last lines.
3. load: one `Rscript` loads every installed namespace (R's own per-package
   test load would start two R processes each); one that does not load is reported and
   removed with `remove.packages()`, as R's test load would have left it uninstalled.

Repositories come only from `--r-repo` / `r_repo` in the config, never from the
manifest (its `Repository:` field is informational). Names and versions are validated
before they get here (`validate.r_name`, `validate.r_version`); the tarball R fetched is
checked to hold that package at that version before it is installed.

Packages recorded from git, a URL or a local directory (what remotes and pak write) are
reinstalled from there when allowed and reachable, with the rules of `restore/python.py`
(archive URLs over https or file, a file only against the sha256 the checkpoint
recorded; git over https, ssh or file, at the recorded commit;
directories that exist and pass `localsource.directory_problem`, down to a recorded
subdirectory): the source is cloned, downloaded or copied into a temporary directory (of
a directory, only the package's own: the recorded subdirectory, never the whole recorded
tree), checked to be that package at that version, given the `Remote*` fields remotes would
write (so that a rescan records the same source), and installed with R CMD INSTALL like
the rest.

Packages captured as artifacts (`pkgckpt.artifacts.rpkg`: the installed directory as a
binary package tarball) install from the verified copy restore hands over
(`install_artifacts`): checked to hold that package at that version built for this R's
major.minor, then one R that installs them all as `R CMD INSTALL` does (its own
`tools:::.install_packages`, the same arguments; a binary is only unpacked: no
repository, no compiler) and then runs the same load check: one R start in all.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
import tarfile
import tempfile
import urllib.request
from collections.abc import Collection, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from http.client import HTTPMessage
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit

import msgspec

from ..config import Config
from ..errors import RestoreError, ScanError, UsageError
from ..localsource import directory_problem, file_problem, not_here
from ..logs import getLogger
from ..manifest import (
    DirectorySource,
    Environment,
    IndexSource,
    LocalSource,
    Package,
    UrlSource,
    VcsSource,
)
from ..runner import which
from ..scan.r import (
    R_FLAGS,
    DescriptionError,
    child_environ,
    dependencies,
    parse_dcf,
    r_programs,
    run_rscript,
)
from ..validate import r_name, r_version
from .python import URL_SCHEMES, VCS_SCHEMES, local_path, url_blocked
from .runner import Deadline, Outcome, call

log = getLogger(__name__)

FETCH_R = r"""
args <- commandArgs(trailingOnly = TRUE)
request <- strsplit(readLines(args[[1L]], encoding = "UTF-8"), "\t", fixed = TRUE)
dest <- args[[3L]]
field <- function(kind) Filter(function(r) r[[1L]] == kind, request)
repos <- vapply(field("repo"), `[[`, "", 2L)
contrib <- contrib.url(repos, type = "source")
# Each repository's index on its own: one that cannot be read is reported with R's reason.
unread <- character()
available <- NULL
for (i in seq_along(contrib)) {
    why <- NULL
    # No filters: an exact version is wanted even when R would prefer a newer one.
    a <- withCallingHandlers(
        tryCatch(available.packages(contriburl = contrib[[i]], type = "source",
                                    filters = list()),
                 error = function(e) { why <<- c(why, conditionMessage(e)); NULL }),
        warning = function(w) {
            why <<- c(why, conditionMessage(w))
            invokeRestart("muffleWarning")
        })
    if (is.null(a) || (!is.null(why) && nrow(a) == 0L)) {
        if (is.null(why)) why <- "no PACKAGES index"
        why <- gsub("[\t\r\n]+", " ", paste(unique(why), collapse = "; "))
        unread <- c(unread, paste("!unreadable", repos[[i]], why, sep = "\t"))
    } else {
        available <- rbind(available, a)
    }
}
readable <- !(repos %in% vapply(strsplit(unread, "\t", fixed = TRUE), `[[`, "", 2L))
repos <- repos[readable]
contrib <- contrib[readable]
if (is.null(available)) available <- matrix(character(), 0L, 3L,
    dimnames = list(NULL, c("Package", "Version", "Repository")))
fetch <- function(url, file) {
    ok <- tryCatch(download.file(url, file, quiet = TRUE, mode = "wb") == 0L,
                   error = function(e) FALSE, warning = function(w) FALSE)
    if (!ok) unlink(file)
    ok
}
found <- character()
for (r in field("pkg")) {
    name <- r[[2L]]; version <- r[[3L]]
    file <- ""; from <- ""
    hit <- available[available[, "Package"] == name & available[, "Version"] == version, ,
                     drop = FALSE]
    if (nrow(hit) > 0L) {
        # For a file:// repository this is the tarball's own path: nothing is copied.
        got <- tryCatch(download.packages(name, dest, available = hit[1L, , drop = FALSE],
                                          repos = repos, type = "source", quiet = TRUE),
                        error = function(e) NULL, warning = function(w) NULL)
        if (length(got) && file.exists(got[1L, 2L])) {
            file <- got[1L, 2L]; from <- hit[1L, "Repository"]
        }
    }
    if (!nzchar(file)) {
        for (c in contrib) {
            tarball <- paste0(name, "_", version, ".tar.gz")
            url <- paste(c, "Archive", name, tarball, sep = "/")
            if (fetch(url, file.path(dest, tarball))) {
                file <- file.path(dest, tarball); from <- url
                break
            }
        }
    }
    found <- c(found, paste(name, version, file, from, sep = "\t"))
}
writeLines(c(unread, found), args[[2L]], useBytes = TRUE)
"""


LOAD_R = r"""
args <- commandArgs(trailingOnly = TRUE)
.libPaths(c(args[[1L]], .libPaths()))
out <- file(args[[3L]], open = "w")
for (name in readLines(args[[2L]], encoding = "UTF-8")) {
    error <- tryCatch({ loadNamespace(name); "" },
                      error = function(e) gsub("[\t\r\n]+", " ", conditionMessage(e)))
    # Written and flushed one by one: if R dies on the next package, these still count.
    writeLines(paste(name, error, sep = "\t"), out, useBytes = TRUE)
    flush(out)
}
close(out)
"""


INSTALL_LOAD_R = (
    r"""
args <- commandArgs(trailingOnly = TRUE)
# R's own tar (TAR, from R's etc/Renviron) unpacks, where R CMD INSTALL's default is
# R-level untar code that takes as long as the rest of the install; the tarballs were
# checked member by member before (`artifacts.rpkg.check_binary`).
if (!nzchar(Sys.getenv("R_INSTALL_TAR")) && nzchar(Sys.getenv("TAR")))
    Sys.setenv(R_INSTALL_TAR = Sys.getenv("TAR"))
tarballs <- readLines(args[[4L]], encoding = "UTF-8")
# What R CMD INSTALL runs, here without quitting R, so that this R loads them afterwards.
tools:::.install_packages(c("--no-test-load", paste0("--library=", args[[1L]]), tarballs),
                          no.q = TRUE)
"""
    + LOAD_R
)
"""One R that installs binary packages as R CMD INSTALL does and then runs LOAD_R: its
answer file exists only once every package is installed."""


class Prepared(msgspec.Struct, frozen=True):
    """A source package (tarball or directory), checked to be the package and version
    asked for, ready for R CMD INSTALL."""

    package: Package
    path: Path
    depends: frozenset[str]


def _checked(data: bytes, name: str, version: str) -> frozenset[str]:
    fields = parse_dcf(data.decode("utf-8", "replace"))
    found = (fields.get("Package"), fields.get("Version"))
    if found != (name, version):
        raise DescriptionError(f"the source holds {found[0]} {found[1]}")
    return frozenset(dependencies(fields))


def read_tarball(path: Path, name: str, version: str) -> frozenset[str]:
    """The dependencies of a source tarball that holds `name` `version`, else DescriptionError."""
    try:
        with tarfile.open(path, "r:gz") as tar:
            member = tar.extractfile(f"{name}/DESCRIPTION")
            if member is None:
                raise DescriptionError("no DESCRIPTION in the tarball")
            data = member.read(1 << 20)
    except (OSError, KeyError, tarfile.TarError) as e:
        raise DescriptionError(f"not a source package tarball: {e}") from None
    return _checked(data, name, version)


_REMOTE_LINE = re.compile(rb"^Remote[A-Za-z]*:.*\n(?:[ \t].*\n)*", re.M)


def remote_fields(
    source: UrlSource | VcsSource | DirectorySource | LocalSource, commit: str | None
) -> str:
    """The `Remote*` fields remotes writes for `source`: the scanner reads them back as it."""
    if isinstance(source, LocalSource):
        return f"RemoteType: local\nRemoteUrl: {source.path}\n"
    if isinstance(source, VcsSource):
        fields = {"RemoteType": "git", "RemoteUrl": source.url, "RemoteSha": commit}
        fields["RemoteRef"] = source.requested_revision
    elif isinstance(source, UrlSource):
        fields = {"RemoteType": "url", "RemoteUrl": source.url}
    else:
        fields = {"RemoteType": "local", "RemoteUrl": source.path}
    fields["RemoteSubdir"] = source.subdirectory
    return "".join(f"{k}: {v}\n" for k, v in fields.items() if v)


def mark_source(
    directory: Path, name: str, version: str, fields: str, root: Path | None = None
) -> frozenset[str]:
    """Check a package source directory and record where it came from in its DESCRIPTION.

    `root`: the tree `directory` must stay in; a clone can hold symlinks, and the
    DESCRIPTION rewritten here must be the copy's, never a file they lead to.
    """
    if root is not None and not directory.resolve().is_relative_to(root.resolve()):
        raise DescriptionError("the subdirectory leads out of the source tree")
    description = directory / "DESCRIPTION"
    try:
        fd = os.open(description, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        raise DescriptionError(f"no DESCRIPTION (or a link): {e.strerror}") from None
    with os.fdopen(fd, "r+b") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise DescriptionError("DESCRIPTION is not a regular file")
        data = f.read(1 << 20)
        depends = _checked(data, name, version)
        data = _REMOTE_LINE.sub(b"", data.rstrip(b"\n") + b"\n")
        f.seek(0)
        f.write(data + fields.encode())
        f.truncate()
    return depends


def _where(source: UrlSource | VcsSource | DirectorySource) -> str:
    return source.path if isinstance(source, DirectorySource) else source.url


_GIT_ENV = {"GIT_TERMINAL_PROMPT": "0", "GIT_CONFIG_NOSYSTEM": "1"}
"""No credential prompt that would hang a container start; no system-wide git hooks."""


def _git_checkout(
    source: VcsSource, dest: Path, deadline: Deadline, cwd: Path
) -> tuple[Outcome, str | None]:
    """Clone `source` at its commit (else its requested revision); the commit checked out."""
    env = {**os.environ, **_GIT_ENV}
    outcome = call(
        ["git", "clone", "--quiet", "--", source.url, str(dest)],
        deadline=deadline,
        env=env,
        cwd=cwd,
    )
    revision = source.commit or source.requested_revision
    if outcome.ok and revision:
        if revision.startswith("-"):  # validate.py refuses these; never an option to git
            return Outcome(("git", "checkout"), 1, f"invalid revision {revision!r}"), None
        # The revision must come before "--" (after it, git reads paths).
        argv = ["git", "-C", str(dest), "checkout", "--quiet", "--detach", revision, "--"]
        outcome = call(argv, deadline=deadline, env=env, cwd=cwd)
    if not outcome.ok:
        return outcome, None
    argv = ["git", "-C", str(dest), "rev-parse", "--verify", "HEAD"]
    head = call(argv, deadline=deadline, env=env, cwd=cwd)
    return head, head.output.strip() if head.ok else None


class _SameScheme(urllib.request.HTTPRedirectHandler):
    """Follow a redirect only to the scheme asked for: never https -> http (or file)."""

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: IO[bytes],
        code: int,
        msg: str,
        headers: HTTPMessage,
        newurl: str,
    ) -> urllib.request.Request | None:
        before, after = urlsplit(req.full_url).scheme.lower(), urlsplit(newurl).scheme.lower()
        if before != after:
            raise ValueError(f"refusing a redirect from {before} to {after}")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _copy_capped(reader: IO[bytes], out: IO[bytes], limit: int, deadline: Deadline) -> None:
    total = 0
    while chunk := reader.read(1 << 20):
        total += len(chunk)
        if total > limit:
            raise ValueError(f"larger than the {limit} byte limit (max_download_bytes)")
        if deadline.expired():
            raise ValueError("the restore timeout ran out during the download")
        out.write(chunk)


def fetch_archive(url: str, archive: Path, deadline: Deadline, limit: int) -> None:
    """Download (https) or copy (a regular local file) `url` to `archive`, at most `limit`
    bytes, within the deadline, following redirects only within the scheme."""
    with archive.open("wb") as out:
        if urlsplit(url).scheme.lower() == "file":
            local = local_path(url)
            if local is None:
                raise ValueError("not a local file URL")
            fd = os.open(local, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
            with os.fdopen(fd, "rb") as f:
                # /dev/zero, a FIFO: not an archive, and endless.
                if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                    raise ValueError("not a regular file")
                _copy_capped(f, out, limit, deadline)
            return
        opener = urllib.request.build_opener(_SameScheme)
        with opener.open(url, timeout=deadline.remaining() or 300) as r:
            _copy_capped(r, out, limit, deadline)


def _download_source(source: UrlSource, work: Path, deadline: Deadline, limit: int) -> Path:
    """Download (https) or copy (file) a source tarball, check its hashes, unpack it safely;
    the unpacked package directory (the tarball's single top directory)."""
    archive = work / "source.tar.gz"
    fetch_archive(source.url, archive, deadline, limit)
    data = archive.read_bytes()
    for algorithm, digest in source.hashes.items():
        if hashlib.new(algorithm, data).hexdigest() != digest:
            raise ValueError(f"{algorithm} hash mismatch")
    if not hasattr(tarfile, "data_filter"):
        raise ValueError("this Python cannot unpack archives safely (needs 3.10.12 or later)")
    unpacked = work / "unpacked"
    with tarfile.open(archive, "r:*") as tar:
        # The "data" filter refuses absolute paths, "..", links out of the tree and devices.
        tar.extractall(unpacked, filter="data")
    tops = [p for p in unpacked.iterdir() if p.is_dir()]
    if len(tops) != 1:
        raise ValueError("the archive does not hold one package directory")
    return tops[0]


def failed(package: Package, output: str) -> Outcome:
    """An Outcome for a package that never reached R CMD INSTALL."""
    return Outcome(("R", "CMD", "INSTALL", package.name), 1, output)


NO_R = "R is not installed here (no Rscript and R on PATH, nor in the configured r_home)"

_warned: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        log.warning("%s", message)


NO_REPO = (
    "no R repository to restore from: {what}. Set one with --r-repo URL, "
    'r_repo = ["URL"] in /etc/pkgckpt/config.toml, or options(repos = c(CRAN = "URL")) '
    "in R's Rprofile.site"
)

_image_repos: dict[tuple[str, str], tuple[str, ...]] = {}


def image_repos(rscript: str, environ: Mapping[str, str]) -> tuple[str, ...]:
    """The repositories the image configures (`getOption("repos")` under pkgckpt's rule
    for starting R), asked once per process; UsageError when there are none."""
    key = (rscript, environ.get("R_PROFILE", "") + "\0" + environ.get("HOME", ""))
    if key not in _image_repos:
        expr = 'cat(paste0("pkgckpt:", getOption("repos")), sep = "\\n")'
        try:
            found = run_rscript(rscript, expr)
        except ScanError as e:
            raise RestoreError(f"cannot read R's repositories: {e}") from None
        repos = tuple(r for r in found if r and r != "@CRAN@")
        if not repos:
            what = "R's repos option is only @CRAN@ (unset)" if found else "R sets none"
            raise UsageError(NO_REPO.format(what=what))
        _image_repos[key] = repos
    return _image_repos[key]


class RInstaller:
    """The `runner.Installer` of one R library."""

    def __init__(self, env: Environment, config: Config, jobs: int | None = None) -> None:
        self.env = env
        self.lib = Path(env.path)
        self.config = config
        self.jobs = max(1, jobs or os.cpu_count() or 1)
        # Without R, each package is reported (blocked) while other environments restore.
        self.rscript, self.r = r_programs(config.r_home) or ("", "")
        self._environ: dict[str, str] | None = None
        self._repos: tuple[str, ...] | None = config.r_repo or None
        self.unavailable: str | None = None if self.rscript else NO_R
        """Why nothing of this library can be restored (no R, no readable repository)."""

    def repositories(self) -> tuple[str, ...]:
        """`--r-repo` / `r_repo`, else the image's `getOption("repos")`; UsageError when
        there is none (or only CRAN's `@CRAN@` placeholder)."""
        if self._repos is None:
            self._repos = image_repos(self.rscript, self.environ())
        return self._repos

    def environ(self) -> dict[str, str]:
        """The environment of every R child (see the module docstring)."""
        if self._environ is None:
            from ..inventory import r_libraries

            libs = r_libraries(self.config).libs
            self._environ = child_environ([self.lib, *(lib for lib in libs if lib != self.lib)])
        return self._environ

    def _call(self, argv: Sequence[str], deadline: Deadline, cwd: Path) -> Outcome:
        return call(argv, deadline=deadline, env=self.environ(), cwd=cwd)

    @property
    def name(self) -> str:
        return "Rscript"

    def blocked(self, package: Package) -> str | None:
        if not (self.rscript and self.r):
            return NO_R
        source = package.source
        if isinstance(source, IndexSource):
            self.repositories()  # raises UsageError when there is none at all
            return None
        if isinstance(source, UrlSource):
            # https only, unless the admin's own repository is plain http.
            http = any(urlsplit(r).scheme.lower() == "http" for r in self.config.r_repo)
            schemes = (*URL_SCHEMES, *(("http",) if http else ()))
            return url_blocked(source.url, schemes, source.hashes)
        if isinstance(source, VcsSource):
            if source.vcs != "git":
                return f"R packages are restored from git, not {source.vcs}"
            if not urlsplit(source.url).scheme:
                return (
                    f"installed with git from a relative path ({source.url}); where it was "
                    "relative to is not recorded"
                )
            if which("git") is None:
                return "git is not installed"
            return url_blocked(source.url, VCS_SCHEMES)
        if isinstance(source, LocalSource):
            gone = not_here(source.path)
            if gone is not None or source.path is None:  # no path is gone too
                return gone
            # The rules of Python's file:// sources, in the plan as theirs are, so that a
            # dry run shows the refusal; the hash is checked again on the bytes copied
            # (`_prepare_local`), which closes the window after this check.
            problem = file_problem(source.path, source.hashes)
            if problem is not None:
                return f"installed from a local file that is not usable: {problem}"
            return None
        used = Path(source.path, source.subdirectory or "")
        if not os.path.isdir(used):  # noqa: PTH112
            return f"directory {used} does not exist here"
        # The rules of Python's directory sources: R CMD INSTALL runs the package's code
        # (configure, its R files) as this user, so nobody else may have put it there.
        return directory_problem(source.path, source.subdirectory)

    def install(
        self, packages: Sequence[Package], *, reinstall: Collection[str], deadline: Deadline
    ) -> Outcome:
        """Install all `packages`; one Outcome that names every failure (R always replaces,
        so `reinstall` needs nothing more)."""
        return self._summary(packages, self.install_each(packages, deadline=deadline))

    def _summary(self, packages: Sequence[Package], results: Mapping[str, Outcome]) -> Outcome:
        bad = [(p, results[p.name]) for p in packages if not results[p.name].ok]
        argv = (self.r, "CMD", "INSTALL", f"--library={self.lib}", *(p.name for p in packages))
        if not bad:
            # Packages installed by one call share its Outcome: its output is said once.
            return Outcome(argv, 0, "".join(dict.fromkeys(o.output for o in results.values())))
        report = "\n".join(f"{p.name} {p.version}: failed\n{o.tail()}" for p, o in bad)
        return Outcome(argv, 1, report, timed_out=any(o.timed_out for _, o in bad))

    def install_artifacts(
        self,
        packages: Sequence[Package],
        files: Mapping[str, Path],
        *,
        reinstall: Collection[str] = (),
        deadline: Deadline,
    ) -> Outcome:
        """Install each package from its binary package `files[name]` (a verified private
        copy of its artifact): no repository, no build; one Outcome naming every failure
        (R always replaces, so `reinstall` needs nothing more)."""
        return self._summary(packages, self.install_binaries(packages, files, deadline=deadline))

    def install_binaries(
        self, packages: Sequence[Package], files: Mapping[str, Path], *, deadline: Deadline
    ) -> dict[str, Outcome]:
        """`install_artifacts`, the Outcome of each package by name.

        Each tarball is checked first (`artifacts.rpkg.check_binary`: only that package at
        that version, built for this R's major.minor). One R takes them all
        (`_install_and_load`): a binary package is only unpacked, so one R start serves
        every package and then loads every namespace once. R unpacks every argument
        before it installs any, so a failed install installed nothing: each is then tried
        alone with R CMD INSTALL, in dependency order, to name the failing ones, and the
        installed ones are loaded as after a source install.
        """
        from ..artifacts.rpkg import check_binary
        from ..rmatch import minor

        for p in packages:
            if not (r_name(p.name) and r_version(p.version)):
                raise RestoreError(f"invalid R package {p.name!r} {p.version!r}")
        if not (self.rscript and self.r):
            return {p.name: failed(p, NO_R) for p in packages}
        self.lib.mkdir(parents=True, exist_ok=True)
        running = minor(self.env.interpreter)
        results: dict[str, Outcome] = {}
        ready: dict[str, Prepared] = {}
        for p in packages:
            path = files.get(p.name)
            if path is None:
                results[p.name] = failed(p, "no artifact file was handed to the installer")
                continue
            try:
                depends = check_binary(path, p.name, p.version, running)
            except DescriptionError as e:
                results[p.name] = failed(p, f"{path.name}: {e}")
                continue
            ready[p.name] = Prepared(p, path, depends)
        with tempfile.TemporaryDirectory(prefix="pkgckpt-r-") as tmp:
            first = None
            if ready:
                outcome, finished = self._install_and_load(ready, deadline, Path(tmp))
                if finished:
                    first = outcome
                    results.update(dict.fromkeys(ready, Outcome(outcome.argv, 0, outcome.output)))
                elif not deadline.expired():
                    results.update(self._install(ready, deadline, Path(tmp)))
                else:
                    results.update(dict.fromkeys(ready, outcome))
            installed = [p for p in packages if p.name in ready and results[p.name].ok]
            results.update(self._check_loads(installed, Path(tmp), deadline, first))
        return results

    def _install_and_load(
        self, ready: Mapping[str, Prepared], deadline: Deadline, tmp: Path
    ) -> tuple[Outcome, bool]:
        """Install every binary and load every namespace in one R (INSTALL_LOAD_R), where
        R CMD INSTALL and then a load check would start R twice; its Outcome (the load
        answers in `_check_loads`' files) and whether the install finished.

        `tools:::.install_packages` is the function R CMD INSTALL calls, with the same
        arguments; started like every R here, plus the `LC_COLLATE=C` R CMD INSTALL sets.
        """
        names, answer, tarballs = tmp / "load.txt", tmp / "loaded.tsv", tmp / "tarballs.txt"
        script = tmp / "install-load.R"
        script.write_text(INSTALL_LOAD_R, encoding="utf-8")
        names.write_text("\n".join(ready) + "\n", encoding="utf-8")
        tarballs.write_text("".join(f"{b.path}\n" for b in ready.values()), encoding="utf-8")
        answer.unlink(missing_ok=True)
        argv = [
            self.rscript,
            *R_FLAGS,
            str(script),
            str(self.lib),
            str(names),
            str(answer),
            str(tarballs),
        ]
        env = {**self.environ(), "LC_COLLATE": "C"}
        outcome = call(argv, deadline=deadline, env=env, cwd=tmp)
        return outcome, answer.exists()

    def install_each(
        self, packages: Sequence[Package], *, deadline: Deadline
    ) -> dict[str, Outcome]:
        """Fetch and install `packages`; the Outcome of each, by name."""
        for p in packages:
            if not (r_name(p.name) and r_version(p.version)):
                raise RestoreError(f"invalid R package {p.name!r} {p.version!r}")
        self.lib.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="pkgckpt-r-") as tmp:
            results: dict[str, Outcome] = {}
            indexed = [p for p in packages if isinstance(p.source, IndexSource)]
            ready = self._fetch(indexed, Path(tmp), deadline, results) if indexed else {}
            for p in packages:
                if not isinstance(p.source, IndexSource):
                    prepared = self._prepare(p, p.source, Path(tmp) / "remote", deadline)
                    if isinstance(prepared, Prepared):
                        ready[p.name] = prepared
                    else:
                        results[p.name] = prepared
            results.update(self._install(ready, deadline, Path(tmp)))
            installed = [p for p in packages if p.name in ready and results[p.name].ok]
            results.update(self._check_loads(installed, Path(tmp), deadline))
        return results

    def _prepare(
        self,
        package: Package,
        source: UrlSource | VcsSource | DirectorySource | LocalSource,
        tmp: Path,
        deadline: Deadline,
    ) -> Prepared | Outcome:
        """Clone, download or copy a remote source into `tmp`, checked and marked."""
        why = self.blocked(package)
        if why is not None:
            return failed(package, why)
        work = tmp / package.name
        work.mkdir(parents=True)
        commit = None
        if isinstance(source, LocalSource):
            return self._prepare_local(package, source, work, deadline)
        if isinstance(source, VcsSource):
            outcome, commit = _git_checkout(source, work / "checkout", deadline, tmp)
            if not outcome.ok:
                return outcome
            root = work / "checkout"
            directory = root / (source.subdirectory or "")
        elif isinstance(source, UrlSource):
            try:
                root = _download_source(source, work, deadline, self.config.max_download_bytes)
            except (OSError, ValueError, tarfile.TarError) as e:
                return failed(package, f"cannot fetch {source.url}: {e}")
            directory = root / (source.subdirectory or "")
        else:
            # The package's directory alone: the recorded one may be the home directory or
            # /tmp, whose other files are no part of the package. As when the whole tree was
            # copied with its links kept, a subdirectory that leads out of it is refused.
            used = Path(source.path, source.subdirectory or "")
            if source.subdirectory and not Path(os.path.realpath(used)).is_relative_to(
                os.path.realpath(source.path)
            ):
                return failed(package, f"{source.path}: the subdirectory leads out of it")
            root = directory = work / "copy"
            try:
                # symlinks=True: a link is copied as a link, never followed out of the tree.
                shutil.copytree(used, root, symlinks=True, ignore=shutil.ignore_patterns(".git"))
            except OSError as e:
                return failed(package, f"cannot copy {used}: {e}")
        try:
            fields = remote_fields(source, commit)
            depends = mark_source(directory, package.name, package.version, fields, root)
        except DescriptionError as e:
            return failed(package, f"{_where(source)}: {e}")
        return Prepared(package, directory, depends)

    def _prepare_local(
        self, package: Package, source: LocalSource, work: Path, deadline: Deadline
    ) -> Prepared | Outcome:
        """The tarball a local install came from, which `blocked()` found there, the user's
        or root's and with the sha256 recorded at checkpoint: unpacked from the bytes
        copied, which must have that sha256 too."""
        path = Path(source.path or "")
        as_url = UrlSource(url=path.as_uri(), hashes=source.hashes)
        try:
            root = _download_source(as_url, work, deadline, self.config.max_download_bytes)
            fields = remote_fields(source, None)
            depends = mark_source(root, package.name, package.version, fields, root)
        except (OSError, ValueError, tarfile.TarError, DescriptionError) as e:
            return failed(package, f"{path}: {e}")
        return Prepared(package, root, depends)

    def _fetch(
        self,
        packages: Sequence[Package],
        tmp: Path,
        deadline: Deadline,
        results: dict[str, Outcome],
    ) -> dict[str, Prepared]:
        """Download every package's tarball; what cannot be had goes to `results`."""
        request, answer, script = tmp / "request.tsv", tmp / "found.tsv", tmp / "fetch.R"
        downloads = tmp / "tarballs"
        downloads.mkdir()
        repos = self.repositories()
        lines = [f"repo\t{repo}" for repo in repos]
        lines += [f"pkg\t{p.name}\t{p.version}" for p in packages]
        request.write_text("\n".join(lines) + "\n", encoding="utf-8")
        script.write_text(FETCH_R, encoding="utf-8")
        argv = [self.rscript, *R_FLAGS, str(script), str(request), str(answer), str(downloads)]
        outcome = self._call(argv, deadline, tmp)
        if not outcome.ok:
            results.update((p.name, outcome) for p in packages)
            return {}
        found: dict[tuple[str, str], tuple[str, str]] = {}
        unreadable: dict[str, str] = {}
        for line in answer.read_text(encoding="utf-8", errors="replace").splitlines():
            name, version, file, origin = [*line.split("\t"), "", "", ""][:4]
            if name == "!unreadable":
                unreadable[version] = file
            else:
                found[(name, version)] = (file, origin)
        for repo, why in unreadable.items():
            _warn_once(f"R repository {repo} cannot be read: {why}")
        read = [r for r in repos if r not in unreadable]
        if not read:
            self.unavailable = "no R repository could be read: " + "; ".join(
                f"{repo}: {why}" for repo, why in unreadable.items()
            )
        tarballs: dict[str, Prepared] = {}
        for p in packages:
            file, origin = found.get((p.name, p.version), ("", ""))
            path = Path(file)
            if not file or not path.is_absolute():
                why = self.unavailable or (
                    f"{p.name} {p.version} is not in {', '.join(read)} nor in their archives"
                    + (f" ({', '.join(unreadable)} could not be read)" if unreadable else "")
                )
                results[p.name] = failed(p, why)
                continue
            try:
                depends = read_tarball(path, p.name, p.version)
            except DescriptionError as e:
                results[p.name] = failed(p, f"{origin}: {e}")
                continue
            tarballs[p.name] = Prepared(p, path, depends)
        return tarballs

    def _command(self, tarball: Prepared) -> list[str]:
        # Not --use-vanilla: it would skip Renviron.site, where R_LIBS_SITE (the site library
        # a dependency may be in) is set; R_PROFILE_USER keeps the user's profile out.
        # --no-test-load: R's test loads start two R processes per package (0.5 s of the
        # 1.3 s a small package takes); `_check_loads` loads them all in one R afterwards.
        return [
            self.r,
            "CMD",
            "INSTALL",
            "--no-test-load",
            f"--library={self.lib}",
            str(tarball.path),
        ]

    def _check_loads(
        self,
        packages: Sequence[Package],
        tmp: Path,
        deadline: Deadline,
        first: Outcome | None = None,
    ) -> dict[str, Outcome]:
        """Load every installed package's namespace in one R; remove those that fail.

        A package that does not load is reported and removed, as R's own test load would
        have left it uninstalled: the next restore tries it again. `first`: an R that
        already ran the first round (`_install_and_load`), its answers in the files here.
        """
        if not packages:
            return {}
        names, answer = tmp / "load.txt", tmp / "loaded.tsv"
        script = tmp / "load.R"
        script.write_text(LOAD_R, encoding="utf-8")
        errors: dict[str, str] = {}
        pending = [p.name for p in packages]
        while pending:
            if first is not None:
                outcome, first = first, None
            else:
                names.write_text("\n".join(pending) + "\n", encoding="utf-8")
                answer.unlink(missing_ok=True)
                argv = [self.rscript, *R_FLAGS, str(script), str(self.lib), str(names)]
                outcome = self._call([*argv, str(answer)], deadline, tmp)
            checked = dict.fromkeys(pending, "")
            if answer.exists():
                for line in answer.read_text(encoding="utf-8", errors="replace").splitlines():
                    name, _, error = line.partition("\t")
                    if name in checked:
                        checked[name] = error or "ok"
            done = [n for n in pending if checked[n]]
            errors.update((n, checked[n]) for n in done if checked[n] != "ok")
            pending = [n for n in pending if not checked[n]]
            if pending and (outcome.timed_out or not done):
                # R died loading the first unchecked one (a crash in its .onLoad).
                errors[pending[0]] = outcome.tail() or "R failed while loading it"
                pending = pending[1:]
        if errors:
            self._remove(list(errors), deadline, tmp)
        by_name = {p.name: p for p in packages}
        return {
            n: failed(by_name[n], f"installed but does not load: {e}") for n, e in errors.items()
        }

    def _install(
        self, tarballs: Mapping[str, Prepared], deadline: Deadline, cwd: Path
    ) -> dict[str, Outcome]:
        """R CMD INSTALL each tarball once its dependencies in the set are installed."""
        results: dict[str, Outcome] = {}
        waiting = dict(tarballs)
        running: dict[Future[Outcome], str] = {}
        with ThreadPoolExecutor(self.jobs) as pool:

            def start(name: str) -> None:
                command = self._command(waiting.pop(name))
                running[pool.submit(self._call, command, deadline, cwd)] = name

            while waiting or running:
                settled = False
                while not settled:  # a failure fails its dependents, and theirs in turn
                    settled = True
                    for name in sorted(waiting):
                        deps = waiting[name].depends & tarballs.keys()
                        broken = sorted(d for d in deps if d in results and not results[d].ok)
                        if broken:
                            del waiting[name]
                            why = f"not installed: its dependency {broken[0]} failed"
                            results[name] = failed(tarballs[name].package, why)
                            settled = False
                        elif len(running) < self.jobs and all(d in results for d in deps):
                            start(name)
                if not running and waiting:
                    # A dependency cycle (R refuses them, but a repository could serve one):
                    # start one and let R report what it misses.
                    start(min(waiting))
                if not running:
                    continue
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    results[running.pop(future)] = future.result()
        return results

    def remove(self, packages: Sequence[Package], *, deadline: Deadline) -> Outcome:
        """remove.packages() of `packages` from this library only."""
        names = [p.name for p in packages]
        if not all(r_name(n) for n in names):
            raise RestoreError("invalid R package name in a removal")
        if not self.rscript:
            return Outcome(("Rscript",), None, NO_R)
        with tempfile.TemporaryDirectory(prefix="pkgckpt-r-") as tmp:
            return self._remove(names, deadline, Path(tmp))

    def _remove(self, names: Sequence[str], deadline: Deadline, cwd: Path) -> Outcome:
        # Not R CMD REMOVE: it has no --no-init-file.
        # The values follow the expression as arguments, which Rscript passes to R as data.
        expr = "a <- commandArgs(TRUE); remove.packages(a[-1L], lib = a[1L])"
        argv = [self.rscript, *R_FLAGS, "-e", expr, str(self.lib), *names]
        return self._call(argv, deadline, cwd)
