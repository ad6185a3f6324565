"""pip and uv, run for one Python environment (a prefix, or its user site).

One call installs a whole batch: exact pins `name==version`, `--no-deps` (the manifest
holds the whole delta, so the result is exactly what the user had), then `--` and one argv
element per requirement. pip (optparse) and uv (clap) both end option parsing at `--`, so
even a name that slipped past validation could not become an option. Names and versions
have been validated before they get here (`validate.py`); sources are shape-checked there
and policy-checked in `PythonInstaller.blocked()`.

Installer choice: `--installer uv`, or `auto` when uv is installed (on PATH, else beside
the interpreter running pkgckpt: an image that installs pkgckpt and uv into one venv and
links only `pkgckpt` onto PATH), runs `uv pip install --python <env's interpreter>`;
otherwise pip: the environment's own `<prefix>/bin/python -m pip`, or, when the
environment has no pip, the pip running pkgckpt with `--python <interpreter>` (pip >=
22.3). The user site (`env.user`) is always restored with pip `--user`: uv has no
user-site installs. `auto` takes pip, where there is one, for an environment holding a
distribution whose version is not PEP 440 (Ubuntu's apt installs `distro-info
1.1build1`): uv refuses to install or uninstall anything at all there.

On a new image (`rebase.py`) the installs resolve their dependencies instead: no
`--no-deps`, and a constraints file (`-c`, in a private temporary directory) pins every
installed distribution the plan leaves alone, so the installer fetches what the image no
longer ships without moving anything the image does ship. Its lines are validated
`name==version` pins, never options (a requirements file could carry `--index-url`).
A package installed at the recorded version from another source must be replaced, not
called satisfied; `--reinstall` / `--force-reinstall` would replace everything the install
resolves, the image's packages too, so on a new image uv gets `--reinstall-package` for
each such package, and pip replaces them first in a call of their own (exact pins,
`--no-deps`, `--force-reinstall`) before the batch resolves with them in place.

Index settings come only from pkgckpt's flags/config (`--index-url`, `--find-links`,
`--no-index`) and the installer's own configuration: never from the manifest, and never
from where the user happened to stand. Every call goes through `runner.call()`, so it
starts in a private, empty working directory. pip reads pip.conf and PIP_* variables
(none from the working directory) and runs as `python -P -m pip` where the interpreter
has `-P` (3.11+), so a `pip/` package in the working directory could not shadow it even
if the directory were not private. `-I` is not used: it would drop PYTHONUSERBASE and
disable the user site, and `pip install --user` must go where the image says. uv runs
with `--no-config`: it would otherwise read `uv.toml`/`pyproject.toml` from the working
directory and every directory above it (a private directory under a shared /tmp has
`/tmp` above it); the image's uv settings reach it from pkgckpt's config as flags, and as
UV_* variables (UV_CONFIG_FILE among them), which are kept, except UV_DEFAULT_INDEX
when pkgckpt names an index: uv would prefer it to `--index-url`.

Sources other than an index are reinstalled from where they were recorded, when allowed
and reachable:
- archive URLs: `https://` and `file://`. Plain `http://`, `ftp://` and everything else
  are refused: a manifest on shared storage must not be able to point the install at an
  unauthenticated download. A recorded hash is always passed on (`#sha256=` on the URL,
  which pip and uv both verify on the bytes they install). A `file://` archive must also
  pass `localsource.file_problem`: it and every directory above it owned by the user or
  root and not writable by others (unless sticky), and its sha256 recorded at checkpoint
  and matching.
- VCS (git, hg, svn, bzr): over `https://`, `ssh://` or `file://` (the repository must
  pass `localsource.path_problem`), with the recorded commit (else the requested
  revision); the VCS tool must be installed.
- local directories: when the directory, and a recorded subdirectory of it, pass
  `localsource.directory_problem` (`path_problem` from the recorded path down to the
  directory the installer is given); editable ones
  as `--editable=<path>` (a single argv element before `--`: the path is an option's
  value, never an option, and validation made sure it is absolute).
Anything else is reported as a failure of that package; the rest is restored.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import tempfile
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from urllib.parse import urlsplit

from ..config import Config
from ..errors import RestoreError, UsageError
from ..localsource import directory_problem, file_problem, path_problem
from ..manifest import (
    DirectorySource,
    Environment,
    IndexSource,
    LocalSource,
    Package,
    UrlSource,
    VcsSource,
)
from ..runner import redact_text, which
from .runner import Deadline, Outcome, call

URL_SCHEMES = ("https", "file")
VCS_SCHEMES = ("https", "ssh", "file")
INSTALLERS = ("auto", "pip", "uv")


def interpreter(prefix: Path) -> Path | None:
    """The interpreter of the environment at `prefix` (without asking it anything)."""
    if prefix == Path(sys.prefix):
        return Path(sys.executable)
    for name in ("python3", "python"):
        candidate = prefix / "bin" / name
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def _safe_path(version: str | None) -> list[str]:
    """`-P` (do not put the working directory on sys.path) where the interpreter has it."""
    try:
        major, minor = (int(part) for part in (version or "").split(".")[:2])
    except ValueError:
        return []
    return ["-P"] if (major, minor) >= (3, 11) else []


def _has_pip(prefix: Path) -> bool:
    # The prefix's own site directories (venv, conda, Debian's dist-packages): a glob instead
    # of `python -m pip --version`, which costs 300 ms.
    return any(prefix.glob("lib/python3*/*-packages/pip/__init__.py"))


def local_path(url: str) -> Path | None:
    """The path a `file:` URL names on this machine (None: it names another host)."""
    # Imported here: urllib.request brings http.client, email and ssl (~10 ms of every
    # restore that installs anything), and most manifests hold no file: URL.
    from urllib.request import url2pathname

    parts = urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        return None
    return Path(url2pathname(parts.path))


def url_blocked(
    url: str, schemes: Sequence[str], hashes: Mapping[str, str] | None = None
) -> str | None:
    """Why `url` may not (scheme) or cannot (missing file) be fetched here, or None.

    `hashes`: an archive's, recorded at checkpoint: a `file:` archive must then also pass
    `file_problem` (its sha256 recorded and matching); None for a repository, which a
    commit pins instead. Shared with `restore/r.py`: R sources follow the same rules, and
    R CMD INSTALL runs an archive's code as surely as a build backend does.
    """
    scheme = urlsplit(url).scheme.lower()
    if scheme not in schemes:
        return f"URL scheme {scheme!r} is not allowed (allowed: {', '.join(schemes)})"
    if scheme == "file":
        path = local_path(url)
        if path is None:
            return f"{redact_text(url)} names another host"
        # file_problem begins with path_problem.
        return path_problem(str(path)) if hashes is None else file_problem(str(path), hashes)
    return None


def _fragment(subdirectory: str | None, hashes: dict[str, str] | None = None) -> str:
    parts = [f"{algo}={digest}" for algo, digest in sorted((hashes or {}).items())]
    if subdirectory:
        parts.append(f"subdirectory={subdirectory}")
    return "#" + "&".join(parts) if parts else ""


def _strongest(hashes: dict[str, str]) -> dict[str, str]:
    # One hash on the URL: pip and uv read a single `algo=digest` from the fragment.
    for algo in ("sha256", "sha512", "sha384", "sha224", "sha1", "md5"):
        if algo in hashes:
            return {algo: hashes[algo]}
    return {}


def requirement(package: Package) -> str:
    """The PEP 508 requirement (or `--editable=` value) that reinstalls `package`."""
    source = package.source
    if isinstance(source, UrlSource):
        hashes = _strongest(dict(source.hashes))
        return f"{package.name} @ {source.url}{_fragment(source.subdirectory, hashes)}"
    if isinstance(source, VcsSource):
        rev = source.commit or source.requested_revision
        at = f"@{rev}" if rev else ""
        url = source.url
        if url.startswith("file:///"):
            # pip (its vendored packaging < 22) refuses `name @ git+file:///path` as a URL
            # without a host; `file://localhost/path` names the same place (RFC 8089).
            url = "file://localhost/" + url.removeprefix("file:///")
        return f"{package.name} @ {source.vcs}+{url}{at}{_fragment(source.subdirectory)}"
    if isinstance(source, DirectorySource):
        path = Path(source.path, source.subdirectory or "")
        return str(path) if source.editable else f"{package.name} @ {path.as_uri()}"
    return f"{package.name}=={package.version}"


def _pin(line: str) -> bool:
    """A `name==version` line with a valid name and version: nothing else is written."""
    from ..validate import python_name, python_version

    name, sep, version = line.partition("==")
    return bool(sep) and python_name(name) and python_version(version)


def _requirements(packages: Sequence[Package]) -> tuple[list[str], list[str]]:
    """The `--editable=` options and the requirements (after `--`) that install `packages`."""
    editables: list[str] = []
    requirements: list[str] = []
    for package in packages:
        if isinstance(package.source, DirectorySource) and package.source.editable:
            editables.append(f"--editable={requirement(package)}")
        else:
            requirements.append(requirement(package))
    return editables, requirements


def _links(packages: Sequence[Package], files: Mapping[str, Path]) -> list[str]:
    """`--find-links` for the directories of the artifacts of `packages`."""
    return [f"--find-links={d}" for d in sorted({str(files[p.name].parent) for p in packages})]


def _reinstall_packages(packages: Sequence[Package]) -> list[str]:
    """uv's options that replace exactly `packages`, whatever else the install resolves."""
    return [option for p in packages for option in ("--reinstall-package", p.name)]


def uv_program() -> str | None:
    """uv on PATH, else the uv installed beside pkgckpt's own interpreter (the image's,
    like pkgckpt itself; `sys.executable`, not its realpath, which is the base
    interpreter's); None: not installed."""
    found = which("uv")
    if found is None:
        beside = Path(sys.executable).parent / "uv"
        if os.access(beside, os.X_OK) and os.path.isfile(beside):  # noqa: PTH113
            found = str(beside)
    return found


def installer_for(config: Config, env: Environment) -> str:
    """Which installer restore runs for `env`, "uv" or "pip" (see the module): the
    consistency check (`indexconf.py`) reads the indexes of this one."""
    if env.user or config.installer == "pip" or uv_program() is None:
        return "pip"
    prefix = Path(env.path)
    if config.installer == "auto" and _nonstandard(prefix) and _pip_for(prefix):
        return "pip"
    return "uv"


def _nonstandard(prefix: Path) -> bool:
    """Whether the prefix's site directories hold a distribution named with a version that
    is not PEP 440, as Ubuntu's apt installs them (`distro_info-1.1build1.egg-info`): uv
    installs and uninstalls nothing at all in such an environment ("Failed to read
    metadata"), where pip warns and goes on.

    Only an entry owned by the site directory's owner counts: another user who may write a
    shared environment could otherwise turn every restore from uv, run with --no-config,
    to pip, which reads the configuration files they may plant in the prefix."""
    from ..validate import python_version

    for site in prefix.glob("lib/python3*/*-packages"):
        try:
            entries = os.listdir(site)  # noqa: PTH208
            owner = site.stat().st_uid
        except OSError:
            continue
        for entry in entries:
            stem, _, suffix = entry.rpartition(".")
            # `name-version.dist-info`, `name-version[-pyX.Y].egg-info`: installers write
            # a name without "-".
            parts = stem.split("-")
            if (
                suffix in ("dist-info", "egg-info")
                and len(parts) > 1
                and not python_version(parts[1])
                and _owned_by(site / entry, owner)
            ):
                return True
    return False


def _owned_by(path: Path, uid: int) -> bool:
    try:
        return path.lstat().st_uid == uid
    except OSError:
        return False


def _externally_managed(prefix: Path, interpreter: str | None) -> bool:
    """The environment's standard library carries PEP 668's EXTERNALLY-MANAGED marker (a
    venv's prefix has none: its lib/pythonX.Y is not the standard library)."""
    minor = ".".join((interpreter or "").split(".")[:2])
    return bool(minor) and (prefix / "lib" / f"python{minor}" / "EXTERNALLY-MANAGED").is_file()


def _pip_for(prefix: Path) -> bool:
    """A pip that can install into `prefix`: its own, or the one beside pkgckpt."""
    return _has_pip(prefix) or importlib.util.find_spec("pip") is not None


class PythonInstaller:
    """The `runner.Installer` of one Python environment."""

    def __init__(
        self, env: Environment, config: Config, constraints: Sequence[str] | None = None
    ) -> None:
        if config.installer not in INSTALLERS:
            raise UsageError(
                f"--installer must be one of {', '.join(INSTALLERS)}, not {config.installer!r}"
            )
        self.config = config
        self._constraints = constraints
        """None: exact pins, --no-deps. Else resolve within these `name==version` pins."""
        prefix = Path(env.path)
        python = interpreter(prefix)
        if python is None:
            raise RestoreError(f"{prefix}: no Python interpreter in {prefix / 'bin'}")
        uv = uv_program()
        if config.installer == "uv" and uv is None:
            beside = Path(sys.executable).parent
            raise RestoreError(
                f"--installer uv: uv is not installed (not on PATH, nor in {beside})"
            )
        # Only what pkgckpt itself sets: the rest of the environment is the image's.
        self._env: dict[str, str | None] = {
            "PIP_DISABLE_PIP_VERSION_CHECK": "1",
            "PIP_NO_INPUT": "1",
        }
        if _externally_managed(prefix, env.interpreter):
            # What is recorded here the user installed past the distribution's PEP 668
            # marker (--break-system-packages, or --user on a Debian Python): restore puts
            # it back the same way. Variables, not flags: a pip older than the flag (and
            # the marker) ignores them.
            self._env |= {"PIP_BREAK_SYSTEM_PACKAGES": "1", "UV_BREAK_SYSTEM_PACKAGES": "1"}
        if uv is not None and installer_for(config, env) == "uv":
            self._tool = "uv"
            self._command = [uv, "pip"]
            self._target = ["--no-config", "--python", str(python)]
            if config.index_url:
                # uv's default index is UV_DEFAULT_INDEX before `--index-url`: pkgckpt's
                # own setting must win, as it does for pip.
                self._env["UV_DEFAULT_INDEX"] = None
            return
        self._tool = "pip"
        self._target = ["--user"] if env.user else []
        if not env.user:
            # Else pip would call a same-version copy in the user site "already satisfied"
            # and uninstall from the user site instead of this prefix.
            self._env["PYTHONNOUSERSITE"] = "1"
        if _has_pip(prefix):
            self._command = [str(python), *_safe_path(env.interpreter), "-m", "pip"]
        elif importlib.util.find_spec("pip") is not None:
            own = f"{sys.version_info[0]}.{sys.version_info[1]}"
            self._command = [sys.executable, *_safe_path(own), "-m", "pip", "--python", str(python)]
        else:
            raise RestoreError(f"{prefix}: no pip in this environment nor beside pkgckpt, no uv")

    @property
    def name(self) -> str:
        return self._tool

    def blocked(self, package: Package) -> str | None:
        source = package.source
        if isinstance(source, IndexSource):
            return None
        if isinstance(source, UrlSource):
            return url_blocked(source.url, URL_SCHEMES, source.hashes)
        if isinstance(source, VcsSource):
            if which(source.vcs) is None:
                return f"{source.vcs} is not installed"
            return url_blocked(source.url, VCS_SCHEMES)
        if isinstance(source, LocalSource):  # validate.py refuses it in a Python environment
            return "a local R source is not a Python source"
        # What the installer is given (`requirement`): the subdirectory, when one was
        # recorded, is checked with every directory between it and the recorded path.
        used = Path(source.path, source.subdirectory or "")
        # os.path's: a path named by the store may lie beneath a directory this user may
        # not enter, where pathlib's is_dir raises.
        if not os.path.isdir(used):  # noqa: PTH112
            return f"directory {used} does not exist here"
        return directory_problem(source.path, source.subdirectory)

    def _index_options(self) -> list[str]:
        options: list[str] = []
        if self.config.index_url:
            options += ["--index-url", self.config.index_url]
        for link in self.config.find_links:
            options += ["--find-links", link]
        if self.config.no_index:
            options.append("--no-index")
        return options

    def _reinstall_all(self) -> str:
        return "--reinstall" if self._tool == "uv" else "--force-reinstall"

    def install(
        self, packages: Sequence[Package], *, reinstall: Collection[str], deadline: Deadline
    ) -> Outcome:
        if self._constraints is None:
            return self._exact(packages, reinstall=bool(reinstall), deadline=deadline)
        # A new image: the install resolves, and `--reinstall` / `--force-reinstall` would
        # reinstall everything it resolves, the image's packages among them. Only the
        # same-version packages are replaced: uv names them; pip, which cannot, replaces
        # them first on their own (exact, `--no-deps`), then resolves the batch, where
        # they are now in place as recorded and their dependencies are checked.
        again = [p for p in packages if p.name in reinstall]
        extra: list[str] = []
        if again and self._tool == "uv":
            extra = _reinstall_packages(again)
        elif again:
            first = self._exact(again, reinstall=True, deadline=deadline)
            if not first.ok:
                return first
            packages = [
                Package(name=p.name, version=p.version) if p.name in reinstall else p
                for p in packages
            ]
        editables, requirements = _requirements(packages)
        argv = [*self._command, "install", *self._target, *self._index_options(), *extra]
        return self._constrained(argv, [*editables, "--", *requirements], deadline)

    def _constrained(self, argv: list[str], tail: list[str], deadline: Deadline) -> Outcome:
        """`argv` with the image's versions as constraints (a private file), then `tail`."""
        assert self._constraints is not None
        with tempfile.TemporaryDirectory(prefix="pkgckpt-constraints-") as private:
            pins = Path(private, "constraints.txt")
            pins.write_text("".join(f"{line}\n" for line in self._constraints if _pin(line)))
            argv = [*argv, "--constraint", str(pins), *tail]
            return call(argv, deadline=deadline, env=self._env)

    def _exact(
        self, packages: Sequence[Package], *, reinstall: bool, deadline: Deadline
    ) -> Outcome:
        """One call installing `packages` at their exact pins, `--no-deps`."""
        editables, requirements = _requirements(packages)
        argv = [*self._command, "install", *self._target, "--no-deps", *self._index_options()]
        if reinstall:
            argv.append(self._reinstall_all())
        return call([*argv, *editables, "--", *requirements], deadline=deadline, env=self._env)

    def install_artifacts(
        self,
        packages: Sequence[Package],
        files: Mapping[str, Path],
        *,
        reinstall: Collection[str],
        deadline: Deadline,
    ) -> Outcome:
        """Install `packages` from their verified wheels in `files` alone: exact pins,
        `--no-deps`, `--no-index`, the wheels' directories the only find-links. On a new
        image a second call then resolves their dependencies from the configured sources
        under the image's constraints; the artifacts, installed at the pinned versions,
        satisfy their pins there, so no other file of the same version replaces them.
        Installing by name rather than by file path keeps the `direct_url.json` the wheel
        carries (the source the user had), where a path would make the installer record
        the path."""
        first = self._exact_artifacts(packages, files, bool(reinstall), deadline)
        if self._constraints is None or not first.ok:
            return first
        pins = [f"{p.name}=={p.version}" for p in packages]
        argv = [*self._command, "install", *self._target, *self._index_options()]
        return self._constrained(argv, ["--", *pins], deadline)

    def _exact_artifacts(
        self,
        packages: Sequence[Package],
        files: Mapping[str, Path],
        reinstall: bool,
        deadline: Deadline,
    ) -> Outcome:
        """One call installing `packages` from their artifacts alone, `--no-deps`."""
        argv = [*self._command, "install", *self._target, "--no-deps", "--no-index"]
        argv += _links(packages, files)
        if reinstall:
            argv.append(self._reinstall_all())
        # Any other find-links, the image's or the user's, could offer another file of the
        # same name and version, and the installer would take it if its tags ranked higher.
        # pip's variable replaces what its configuration files say (a file: URL per
        # directory, since pip splits the value at spaces); uv adds its configuration
        # file's to its flags, so here it reads none (it has no index to read either).
        directories = sorted({files[p.name].parent for p in packages})
        env = {
            **self._env,
            "PIP_FIND_LINKS": " ".join(d.as_uri() for d in directories),
            "UV_FIND_LINKS": None,
            "UV_CONFIG_FILE": None,
        }
        pins = [f"{p.name}=={p.version}" for p in packages]
        return call([*argv, "--", *pins], deadline=deadline, env=env)

    def remove(self, packages: Sequence[Package], *, deadline: Deadline) -> Outcome:
        if self._tool == "uv":
            argv = [*self._command, "uninstall", *self._target]
        else:
            argv = [*self._command, "uninstall", "--yes"]
        argv += ["--", *(p.name for p in packages)]
        return call(argv, deadline=deadline, env=self._env)
