"""What the commands share: the environments to watch (targets) and the image's baseline.

A `Target` is one manifest environment and the library roots it is read from: a Python
prefix's site directories, the user site of its interpreter (its own target, with
`env.user`), or one R library. The baseline is the first scan of every target, taken
before anything is installed; `pkgckpt baseline` writes it at image build time.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Collection, Iterable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, Protocol

import msgspec

from . import manifest
from .config import Config, ensure_runtime_dir, find_runtime_dir
from .errors import ManifestError, PkgckptError, ScanError, UsageError
from .logs import getLogger
from .manifest import Baseline, Environment, Inventory, Package
from .scan import ScanResult
from .scan.env import absence, python_env
from .scan.python import SiteScanner
from .scan.python import entry_name as python_entry_name

if TYPE_CHECKING:
    from .discovery import Discovered, Own, Unreadable
    from .scan.r import RLibs

log = getLogger(__name__)

BASELINE = "baseline.json"


class Scanner(Protocol):
    exists: bool
    renewed: frozenset[str]

    def scan(self) -> ScanResult: ...

    def made_ns(self, name: str) -> int | None: ...


class Identity(NamedTuple):
    """Which directories a scan of a target read."""

    epoch: int
    """`Target.renew` calls so far."""
    stats: tuple[tuple[int, int] | None, ...]
    """(st_dev, st_ino) of each root, then of the prefix's marker; None: missing."""


class Target:
    """One environment and its library roots; `scan()` is incremental across calls.

    A plain class, not a Struct: only `env` and `roots` are compared, and what the scans
    leave behind is not passed in."""

    __slots__ = (
        "_scanners",
        "conda_owned",
        "env",
        "epoch",
        "identity",
        "known",
        "last",
        "r_lock_stale",
        "renewed",
        "roots",
        "trusted",
    )

    env: Environment
    roots: tuple[Path, ...]
    last: ScanResult
    """The merged result of the last `scan()`: broken entries and installs in progress
    (keyed `<root>/<entry>`), for callers deciding whether an absence means anything."""
    trusted: bool
    """Every root existed at the last scan: only then can a missing package mean removal."""
    identity: Identity | None
    """The directories the last scan read, not the paths (see `pkgckpt.checkpoint`)."""
    renewed: frozenset[str]
    """Names the last scan found installed anew, as `SiteScanner.renewed` says."""
    epoch: int
    known: dict[str, Package]
    """The baseline's packages of this environment: what a first scan may expect to find
    (see `SiteScanner`); set by `expect()`."""
    conda_owned: bool
    """A Python target in a conda prefix: a distribution conda installed (INSTALLER
    `conda`) is the conda record's, tracked by the prefix's conda target, not pip's."""
    r_lock_stale: float
    """Seconds after which an R `00LOCK-*` nothing writes under is a leftover."""
    _scanners: list[Scanner]

    def __init__(
        self,
        env: Environment,
        roots: tuple[Path, ...],
        conda_owned: bool = False,
        r_lock_stale: float = 600.0,
    ) -> None:
        self.env = env
        self.roots = roots
        self.last = ScanResult()
        self.trusted = False
        self.identity = None
        self.renewed = frozenset()
        self.epoch = 0
        self.known = {}
        self.conda_owned = conda_owned
        self.r_lock_stale = r_lock_stale
        self._scanners = []

    def __eq__(self, other: object) -> bool:
        # Defining __eq__ leaves the class unhashable, as a target is mutable.
        if not isinstance(other, Target) or other.__class__ is not self.__class__:
            return NotImplemented
        return (self.env, self.roots) == (other.env, other.roots)

    def __repr__(self) -> str:
        # What the dataclass printed, in assertion messages and logs.
        return f"Target(env={self.env!r}, roots={self.roots!r})"

    def scan(self, changed: Mapping[Path, Collection[str]] | None = None) -> Inventory:
        """Every root scanned, merged: a name found in an earlier root hides later ones.

        `changed`: root -> the entries that changed in it since the last scan, where the
        caller knows them (see `SiteScanner.scan`); other roots are scanned by identity.
        """
        if not self._scanners:
            self._scanners = [self._scanner(root) for root in self.roots]
        packages: dict[str, Package] = {}
        broken: dict[str, str] = {}
        in_progress: set[str] = set()
        stale: set[str] = set()
        hidden: set[str] = set()
        renewed: set[str] = set()
        trusted = True
        # Taken before reading: a directory replaced meanwhile shows at the next scan.
        stats = tuple(_identity(p) for p in (*self.roots, self._prefix_marker()))
        self.identity = Identity(self.epoch, stats)
        for root, scanner in zip(self.roots, self._scanners, strict=True):
            names = changed.get(root) if changed else None
            # R libraries hold hundreds of entries, not thousands: listed whole each time.
            if names is not None and isinstance(scanner, SiteScanner):
                result = scanner.scan(names)
            else:
                result = scanner.scan()
            trusted = trusted and scanner.exists
            for name, package in result.packages.items():
                if self.conda_owned and package.installer == "conda":
                    continue
                packages.setdefault(name, package)
            # Only where this root's package is the one found: a later root's is hidden.
            renewed.update(
                n for n in scanner.renewed if packages.get(n, result) is result.packages.get(n)
            )
            broken.update((f"{root}/{entry}", why) for entry, why in result.broken.items())
            in_progress.update(f"{root}/{entry}" for entry in result.in_progress)
            stale.update(f"{root}/{entry}" for entry in result.stale)
            hidden.update(result.hidden)
        self.last = ScanResult(
            packages, broken, frozenset(in_progress), frozenset(stale), frozenset(hidden)
        )
        self.trusted = trusted
        self.renewed = frozenset(renewed)
        ordered = tuple(packages[name] for name in sorted(packages))
        return Inventory(env=self.env, packages=ordered)

    def made_ns(self, name: str) -> int | None:
        """When the last scan's `name` was installed, as each root's scanner tells it
        (`made_ns`): the latest over the roots; None when no root has it."""
        return max(
            (t for t in (s.made_ns(name) for s in self._scanners) if t is not None), default=None
        )

    def renew(self) -> None:
        """A root or one of its ancestors was seen deleted or moved away: what the next scan
        reads is another directory, even where it reuses the old inode number (ext4 hands
        a freed one out again at once)."""
        self.epoch += 1

    def _prefix_marker(self) -> Path | None:
        """What makes a Python prefix an environment: ``pyvenv.cfg`` (a venv) or
        ``conda-meta/``; rebuilding the prefix replaces it even where a root survives."""
        if self.env.kind != "python" or self.env.user:
            return None
        prefix = Path(self.env.path)
        for name in ("pyvenv.cfg", "conda-meta"):
            if os.path.lexists(prefix / name):
                return prefix / name
        return None

    def uncertain(self) -> frozenset[str]:
        """Names whose absence from the last scan proves nothing: broken or half-installed."""
        # A stale lock still hides what an interrupted install left half done.
        entries = [*self.last.broken, *self.last.in_progress, *self.last.stale]
        names = {entry_name(self.env.kind, Path(e).name) for e in entries}
        return frozenset(names | self.last.hidden)

    def _scanner(self, root: Path) -> Scanner:
        if self.env.kind == "python":
            return SiteScanner(root, self.known)
        if self.env.kind == "conda":
            from .scan.conda import CondaScanner

            return CondaScanner(root)
        from .scan.r import RLibraryScanner

        return RLibraryScanner(root, self.r_lock_stale)


def _identity(path: Path | None) -> tuple[int, int] | None:
    if path is None:
        return None
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def entry_name(kind: str, entry: str) -> str:
    """The package name a library entry stands for (`Foo_Bar-1.0.dist-info` -> foo-bar)."""
    if kind == "conda":
        return entry.removesuffix(".json").rsplit("-", 2)[0].lower()
    if kind == "r":
        # R CMD INSTALL moves the package it replaces into 00LOCK-<pkg> while it runs.
        return entry.removeprefix("00LOCK-")
    return python_entry_name(entry)


def discover(config: Config, own: Own | None = None) -> Discovered:
    """The environments found beyond pkgckpt's own: none when `--env` names them.

    `own`: `own_env(config)` when the caller has it already (the daemon, once)."""
    from . import discovery

    if config.env:
        return discovery.Discovered()
    return discovery.discover(
        config.discover,
        cache_dir=config.runtime_dir,
        image=config.baseline,
        own=own or own_env(config),
    )


def own_env(config: Config) -> Own | None:
    """The environment the `own_env` setting names, as its own interpreter describes it
    (`scan.env.probe`: asked once and kept; nothing of it is imported here); None when the
    setting is not given, or `--env` names the environments (nothing is discovered then).

    Named by the image or the user, it is trusted as an `--env` prefix is: the notebook
    server runs from it, so whoever may write it runs code as the user already. What
    discovery reads because of it (kernelspecs, `.condarc` files) is checked as usual.
    Raises UsageError when it is no Python environment: a slip in the setting would
    otherwise leave the environment users install into untracked, silently.
    """
    prefix = config.own_env
    if prefix is None or config.env:
        return None
    from .discovery import Own
    from .scan.env import interpreter, probe

    def refuse(why: str) -> UsageError:
        return UsageError(
            f"own_env: {prefix} is not a Python environment ({why}); name the prefix of the "
            "environment the notebook server runs from (the directory holding bin/python), "
            "or leave own_env out for the one running pkgckpt"
        )

    if not os.path.isdir(prefix):  # noqa: PTH112 (pathlib's raises on EACCES)
        raise refuse(absence(prefix))
    python = interpreter(prefix)
    if python is None:
        raise refuse("no bin/python3 or bin/python to run")
    answer = probe(python, cache_dir=config.runtime_dir, image=config.baseline)
    if answer is None or answer.base_prefix is None:
        raise refuse(f"{python} did not say what its environment is")
    if os.path.realpath(answer.prefix) != os.path.realpath(prefix):
        raise refuse(f"{python} belongs to {answer.prefix}")
    return Own(
        prefix=answer.prefix,
        base_prefix=answer.base_prefix,
        user_site=answer.user_site is not None,
    )


def warn(problems: Iterable[Unreadable]) -> None:
    for p in problems:
        log.warning("%s (%s) is not tracked: %s", p.path, p.origin, p.reason)


def targets(
    config: Config,
    found: Discovered | None = None,
    unreadable: list[Unreadable] | None = None,
    r: RTracking | None = None,
) -> list[Target]:
    """The Python prefixes (and their user sites) and the R libraries that `config` names,
    with the environments `found` by discovery (`discover(config)` when None).

    `unreadable`: where an environment that cannot be read is reported; None: logged.
    Never fatal, one named by `--env` included (a venv that was not on the persistent
    volume, made again later): the rest is tracked all the same. `r`: the R libraries,
    when the caller has found them already (`r_libraries`).
    """
    result: list[Target] = []
    seen: set[Path] = set()
    # With `--env` nothing is discovered: `targets` then does not even import discovery
    # (~3 ms of a no-op restore's start).
    if found is None and not config.env:
        found = discover(config)
    discovered = found.found if found is not None else ()
    problems: list[Unreadable] = list(found.unreadable) if found is not None else []

    def add(env: Environment, roots: tuple[Path, ...], conda_owned: bool = False) -> None:
        # One directory is read for one environment only: two prefixes of one interpreter
        # version share a user site, and a library may be configured twice. By the path:
        # a venv two kernelspecs name, one through a link, is tracked under both names,
        # as the record and restore match environments by path (which name came first
        # would change with the kernelspecs, and restore skip the other name's record).
        fresh = tuple(r for r in roots if r not in seen)
        if fresh:
            seen.update(fresh)
            result.append(
                Target(
                    env=env,
                    roots=fresh,
                    conda_owned=conda_owned,
                    r_lock_stale=config.r_lock_stale,
                )
            )

    own = "--env" if config.env else "own_env" if config.own_env else "pkgckpt's own"
    named = [(prefix, own) for prefix in config.python_envs()]
    for prefix, origin in [*named, *((f.prefix, f.origin) for f in discovered)]:
        meta = prefix / "conda-meta"
        # os.path's: False, not an error, beneath a directory this user may not enter.
        conda = os.path.isdir(meta)  # noqa: PTH112
        if conda:
            add(Environment(kind="conda", path=str(prefix)), (meta,))
        try:
            pe = python_env(prefix, cache_dir=config.runtime_dir, image=config.baseline)
        except ScanError as e:
            if conda:
                continue  # a conda environment without Python (R, tools): its records only
            reason = str(e) if os.path.lexists(prefix) else absence(prefix)
            from .discovery import Unreadable

            problems.append(Unreadable(str(prefix), origin, reason))
            continue
        add(pe.environment(), pe.site_dirs, conda_owned=conda)
        if pe.user_site is not None and "user-site" in config.discover:
            add(pe.environment(user=True), (pe.user_site,))
    if unreadable is None:
        warn(problems)
    else:
        unreadable.extend(problems)
    if r is None and not _discovers_r(config):
        # Only the libraries named: whether R is installed at all matters to `status`,
        # not here, and finding out costs a no-op restore ~3 ms of imports.
        r = RTracking(libs=tuple(dict.fromkeys(config.r_libs())))
    r = r or r_libraries(config)
    if r.libs:
        from .scan.r import r_environment

        for lib in r.libs:
            if lib in config.r_lib or r.info is None:
                env = r_environment(
                    lib, role="named", cache_dir=config.runtime_dir, image=config.baseline
                )
                add(env, (lib,))
            else:
                add(r_environment(lib, r.info, r.info.role(lib)), (lib,))
    return result


class RTracking(msgspec.Struct, frozen=True):
    """The R libraries a command works on, and why there are none when R is installed."""

    libs: tuple[Path, ...] = ()
    info: RLibs | None = None
    """What R said of itself and its libraries, when it was asked."""
    installed: bool = False
    """Whether an R (Rscript and R) was found."""
    untracked: str | None = None
    """Why no R library is tracked although R is installed; None when some are."""


def _discovers_r(config: Config) -> bool:
    """Whether R is asked for its libraries: `--r-discover`, or `r` discovered and no
    library named."""
    return config.r_discover or (not config.r_libs() and "r" in config.discover)


def r_libraries(config: Config) -> RTracking:
    """`--r-lib` exactly when given; else (or with `--r-discover` too) the libraries R uses.

    R is asked through `scan.r.r_libraries` (kept in the runtime directory, or beside the
    image's baseline: `scan.kept`). An R that
    cannot answer leaves its libraries untracked, with the reason, rather than stopping
    the command: the Python environments still count.
    """
    from .scan.r import r_libraries as ask
    from .scan.r import r_programs

    named = tuple(dict.fromkeys(config.r_libs()))
    programs = r_programs(config.r_home)
    installed = programs is not None
    if not _discovers_r(config) or programs is None:
        why = None
        if installed and not named:
            why = "`discover` does not include `r` and no --r-lib / r_lib is given"
        return RTracking(libs=named, installed=installed, untracked=why)
    try:
        info = ask(programs[0], cache_dir=config.runtime_dir, image=config.baseline)
    except PkgckptError as e:
        why = f"R could not report its libraries: {e}"
        log.warning("%s", why)
        return RTracking(libs=named, installed=True, untracked=None if named else why)
    libs = tuple(dict.fromkeys((*named, *info.tracked())))
    why = None if libs else "R reports no library besides its own base library"
    return RTracking(libs=libs, info=info, installed=True, untracked=why)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def take_baseline(found: list[Target]) -> Baseline:
    """The state of every target now: what the image shipped, if nothing was installed yet."""
    inventories = []
    for target in found:
        try:
            inventories.append(target.scan())
        except ScanError as e:
            # A library this user cannot read (beneath a closed HOME): left out, so that
            # what it holds counts as the user's should it become readable. Kept, not lost.
            log.warning("baseline: %s left out: %s", target.env.where(), e)
            continue
        for entry, why in sorted(target.last.broken.items()):
            log.warning("baseline: %s is unreadable (%s); left out", entry, why)
    return Baseline.of(inventories, time=_now())


def expect(found: list[Target], baseline: Baseline | None) -> None:
    """Every target's first scan may take `baseline`'s packages as known (it is faster)."""
    for target in found:
        inventory = baseline.inventory(target.env) if baseline is not None else None
        target.known = inventory.by_name() if inventory is not None else {}


def baseline_path(config: Config) -> Path:
    return _without_missing(config).baseline or config.runtime_dir / BASELINE


_warned_missing: set[Path] = set()


def _without_missing(config: Config) -> Config:
    """`config`, or, when its baseline file does not exist (an image that moved or dropped
    it), `config` without one: this container's own baseline (taken by restore before it
    installs anything, kept in the runtime directory), else one inferred from the
    manifest. Refusing instead would restore nothing and record nothing all session."""
    path = config.baseline
    if path is None or os.path.lexists(path):
        return config
    if path not in _warned_missing:
        _warned_missing.add(path)
        log.warning(
            "baseline file %s does not exist (left out of this image?): using this "
            "container's own baseline instead; fix the image's PKGCKPT_BASELINE or file",
            path,
        )
    return msgspec.structs.replace(config, baseline=None)


def _file(config: Config) -> Path:
    """The baseline file to read (`config` as `_without_missing` gives it)."""
    # The runtime directory was chosen when the settings were read; someone else may
    # have made it since, in a shared /tmp, or made it a link to an old directory of the
    # user's holding a baseline of another image (its file's owner and mode would pass).
    # Looked at again, as the baseline's writer does (`ensure_runtime_dir`).
    return config.baseline or find_runtime_dir(config.runtime_dir) / BASELINE


def keep_images(config: Config, told: Iterable[tuple[Environment, tuple[Package, ...]]]) -> bool:
    """Keep in this container's own baseline the image's part of each environment's
    listing, as a process told it from the user's packages by the record
    (`checkpoint.Tracker.told`, `Inventory.image`): the commands after it read the
    baseline against a record that has moved on since. One that cannot be kept is said,
    and tracking goes on (only those later commands would take the user's packages there
    for a new image's): False then."""
    config = _without_missing(config)
    try:
        # Read again: another command of this container may have kept some since.
        baseline = load_baseline(config)
        if baseline is None or not baseline.container:
            return True  # none, or none of this container's, since: nothing to keep
        now = baseline
        for env, image in told:
            now = now.told(env, image)
        if now != baseline:
            save_baseline(now, _file(config))
    except (PkgckptError, OSError) as e:
        log.warning("cannot keep what the image ships in this container's baseline: %s", e)
        return False
    return True


def load_baseline(config: Config) -> Baseline | None:
    """The configured baseline file, else the one this container took; None if neither."""
    config = _without_missing(config)
    path = _file(config)
    # The one this container took is in its runtime directory, where nothing else may
    # stand in for it; the image's is named by its settings, a link as a ConfigMap mounts
    # one (`baseline.json -> ..data/baseline.json`) included.
    nofollow = os.O_NOFOLLOW if config.baseline is None else 0
    try:
        # O_NONBLOCK: a FIFO in its place would hold the open until a writer came.
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | nofollow)
    except FileNotFoundError:
        if config.baseline is not None:  # removed since `_without_missing` looked
            raise ManifestError(f"baseline file {path} does not exist") from None
        return None
    except OSError as e:
        raise ManifestError(f"cannot read baseline {path}: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ManifestError(f"baseline {path} is not a regular file")
        if config.baseline is None:
            _check_private(path, st)
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(manifest.MAX_BYTES + 1)
    except OSError as e:
        raise ManifestError(f"cannot read baseline {path}: {e.strerror}") from None
    finally:
        os.close(fd)
    return manifest.decode_baseline(data, f"baseline {path}")


def _check_private(path: Path, st: os.stat_result) -> None:
    # The runtime directory may be a shared /tmp: a baseline planted there by someone else
    # could hide the user's packages from the manifest.
    if st.st_uid != os.geteuid() or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise ManifestError(f"baseline {path} is not private to this user; remove it")


def save_baseline(baseline: Baseline, path: Path, answers: bool = False) -> None:
    """Write `baseline` durably (the store's atomic recipe), readable by all.

    `answers`: also write, beside it, the interpreters' and R's answers this process got
    (`scan.kept`), so that a new container of the image need not ask them again: for
    `pkgckpt baseline` at image build time, not for a container's own baseline (its
    runtime directory keeps the answers already).
    """
    from .durable import atomic_write

    atomic_write(path, manifest.encode_baseline(baseline), mode=0o644)
    if answers:
        from .scan import kept

        try:
            kept.save(path)
        except PkgckptError as e:
            # Only a cache: the baseline stands, and new containers ask as before.
            log.warning("cannot keep the probes' answers beside %s: %s", path, e)


def ensure_baseline(config: Config, found: list[Target]) -> Baseline:
    """The baseline; taken now (before anything is installed) and kept when there is none.

    Called by the commands that change state, first: the probes' answers found for
    `found`, held until a runtime directory exists, are written now (`scan.kept.settle`).
    """
    from .scan import kept

    kept.settle(config.runtime_dir)
    config = _without_missing(config)
    baseline = load_baseline(config)
    if baseline is not None:
        expect(found, baseline)
        return baseline
    path = baseline_path(config)
    if config.baseline is None:
        # The runtime directory may sit in a shared /tmp: one planted by someone else is
        # passed over for the private fallback before the baseline is written.
        path = ensure_runtime_dir(config.runtime_dir) / BASELINE
    else:
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as e:
            raise ManifestError(f"cannot create {path.parent}: {e.strerror}") from None
    baseline = msgspec.structs.replace(take_baseline(found), container=True)
    save_baseline(baseline, path)
    return baseline
