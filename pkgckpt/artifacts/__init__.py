"""Artifacts: each recorded package captured as a file on the store, so that a restore
is exact, offline and fast (no index, no compiler, no VCS host needed).

The API the daemon, `snapshot`, `status` and restore call:

    missing(body, targets) -> list[Job]
        Recorded packages (added or changed, in an environment scanned here) that have
        no artifact yet, each with the target it is installed in.
    capture(store, config, job) -> Artifact
        Build the artifact of one installed package in a private directory, hash it and
        write it through the store (`Store.put_artifact`, the durable recipe) or into the
        shared pool; raises `Uncapturable` (with the reason a person reads in `status`)
        or StoreError / StoreUnavailable.
    fits(env, package) -> str | None
        Why the package's artifact cannot be used in `env` (restore's target: tags that do
        not fit its interpreter, another R major.minor), or None.
    fetch(store, config, package, into) -> Path
        A private copy of the package's artifact in the directory `into`, hashed while it
        is copied and checked against the user's own manifest; raises `ArtifactRefused`
        (missing, hostile name; `ArtifactDamaged`: tampered, truncated), never returns
        unverified bytes.
    read(store, config, package, limit) -> bytes
        The artifact's bytes, checked as `fetch` checks its copy, when it is at most
        `limit` bytes: what a rebase reads a captured wheel's METADATA from.

Capturers, one module per environment kind, looked up by `capturer(kind)`; each has

    capture(job: Job, out: Path) -> Path
        Build the artifact of `job.package`, installed under `job.roots`, as a file in
        the private directory `out` (nothing else writes there), and return its path.
        Its name, relative to `out`, is the artifact's name under `<key>/artifacts/`
        (`store.artifact_name` says which names are allowed). Raise `Uncapturable`.

`wheel.py` captures Python distributions; `rpkg.py` R packages. A kind without a module
(conda) is `Uncapturable`. Whether an artifact fits an environment is one module's
`fits(env: Environment, artifact: Artifact) -> str | None` per kind (`FITS`): for a
wheel, its tags (`pkgckpt.wheeltags`), not the capturer, whose zipfile, csv and version
parsing a restore does without; for R, `rpkg.py`.

Nothing here trusts a file it did not hash: names from a manifest are checked by
`store.artifact_name`, the bytes against the manifest's sha256.
"""

from __future__ import annotations

import importlib
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Protocol, cast

import msgspec

from ..config import Config
from ..durable import sha256_of
from ..errors import PkgckptError, StoreError, Uncapturable
from ..logs import getLogger
from ..manifest import Artifact, Body, DirectorySource, Environment, Kind, Package, same_env
from ..scan.python import canonicalize_name
from ..store import Store, artifact_name
from . import pool, quota

__all__ = [
    "ArtifactDamaged",
    "ArtifactRefused",
    "Capturer",
    "Job",
    "Result",
    "Uncapturable",
    "capture",
    "capturer",
    "fetch",
    "fits",
    "missing",
    "read",
]

CAPTURERS: dict[str, str] = {"python": "wheel", "r": "rpkg"}
FITS: dict[str, str] = {"python": "pkgckpt.wheeltags", "r": "pkgckpt.artifacts.rpkg"}
"""The module whose `fits` says whether an artifact of each kind installs somewhere."""
log = getLogger(__name__)
_warned: set[str] = set()
"""Warnings said in this process: a pool that is not mounted would be named once per
package a daemon captures."""


class ArtifactRefused(PkgckptError):
    """An artifact that must not be installed: its bytes, name or presence do not match
    the manifest. Restore falls back to the package's source, or fails naming the hash."""


class ArtifactDamaged(ArtifactRefused):
    """An artifact whose bytes are there but are not the recorded ones (another sha256 or
    size): no later read makes them right, so restore lets the record drop it
    (`EnvReport.damaged`) and the package is captured again where it is installed."""


class Job(msgspec.Struct, frozen=True):
    """One package to capture, in the environment (and library roots) it is installed in."""

    env: Environment
    roots: tuple[Path, ...]
    package: Package


class Result(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One capture: the artifact written, or why there is none."""

    env: Environment
    package: Package
    artifact: Artifact | None = None
    reason: str | None = None
    retry: bool = False
    """The failure may pass (the store, the worker): the daemon tries again later."""
    absent: bool = False
    """Not installed where the capture looked (`NotInstalled`): the daemon tries again
    once a scan finds it installed."""


class Capturer(Protocol):
    def capture(self, job: Job, out: Path) -> Path: ...


class _Fits(Protocol):
    def fits(self, env: Environment, artifact: Artifact) -> str | None: ...


def capturer(kind: Kind) -> Capturer:
    """The module that captures packages of `kind`; Uncapturable when there is none."""
    name = CAPTURERS.get(kind)
    module: ModuleType | None = None
    if name is not None:
        try:
            module = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"{__name__}.{name}":
                raise
    if module is None:
        raise Uncapturable(f"{kind} packages are not captured")
    return cast(Capturer, module)


def uncapturable(package: Package) -> str | None:
    """Why `package` is never captured, known from its record alone; None otherwise."""
    if isinstance(package.source, DirectorySource):
        if package.source.editable:
            return "an editable install: its files live in the user's directory"
        return "installed from a directory: its files live in the user's directory"
    return None


def missing(body: Body, targets: Iterable[tuple[Environment, Sequence[Path]]]) -> list[Job]:
    """Recorded packages of the environments in `targets` that have no artifact yet and
    may have one (see `uncapturable`), in manifest order; and the Python packages whose
    artifact does not fit the environment as it is now (`fits`: a new image moved the
    prefix to another Python, and restore installed the package again for it): that
    artifact is never used here, the build in place is captured instead."""
    jobs: list[Job] = []
    targets = list(targets)
    for delta in body.deltas():
        where = next((t for t in targets if same_env(t[0], delta.env)), None)
        if where is None or delta.env.kind not in CAPTURERS:
            continue
        for p in (*delta.added, *delta.changed):
            if uncapturable(p) is not None:
                continue
            # Python only: an R package rebuilt for another R is another install already,
            # recorded without an artifact (`checkpoint.same_install`), and one not rebuilt
            # would only be captured again as the same misfit; nor does any build fit an
            # interpreter whose version is not known.
            moved = where[0].kind == "python" and where[0].interpreter is not None
            if p.artifact is None or (moved and fits(where[0], p) is not None):
                jobs.append(Job(env=where[0], roots=tuple(where[1]), package=p))
    return jobs


def capture(
    store: Store, config: Config, job: Job, *, used: int = 0, keep: set[str] | None = None
) -> Artifact:
    """Capture `job` on the store (see the module docstring). `used`: bytes the key's
    artifacts hold now. A capture that would take them past `artifact_quota` first
    removes artifacts outside `keep` (`quota.collect`; None: removes none), and is
    skipped when that is not enough."""
    why = uncapturable(job.package)
    if why is not None:
        raise Uncapturable(why)
    import tempfile  # with shutil, bz2, lzma, random: ~0.8 MB an idle daemon does without

    module = capturer(job.env.kind)
    with tempfile.TemporaryDirectory(prefix="pkgckpt-capture-") as out:
        built = module.capture(job, Path(out))
        try:
            name = artifact_name(built.relative_to(out).as_posix())
        except StoreError as e:  # this package's odd name, not a store that failed
            raise Uncapturable(str(e)) from None
        if job.package.artifact is not None and job.env.interpreter is not None:
            # Captured again because the recorded artifact does not fit (or is gone): a
            # build in place that fits no better (a wheel forced onto another ABI) is not
            # captured over and over. Where the interpreter is not known, nothing fits
            # and nothing misfits (`missing` makes no such job): the recorded artifact is
            # gone (`session.lost`), and the build in place is captured as the first time.
            found = Artifact(file=name, sha256="", size=0)
            why = fits(job.env, msgspec.structs.replace(job.package, artifact=found))
            if why is not None:
                raise Uncapturable(f"its artifact does not fit, nor does the build in place: {why}")
        fd = os.open(built, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            size = os.fstat(fd).st_size
            digest = sha256_of(fd)
            if config.artifact_pool is not None:
                try:
                    pool.put(config.artifact_pool, fd, digest)
                    return Artifact(file=name, sha256=digest, size=size, pooled=True)
                except PkgckptError as e:  # the key's own directory still takes it
                    _warn_once(f"artifact pool not used, artifacts go under the key: {e}")
            if used + size > config.artifact_quota and keep is not None:
                quota.collect(store, config.artifact_quota, keep, need=size)
                used = quota.used(store)
            if used + size > config.artifact_quota:
                raise Uncapturable(
                    f"over the artifact quota ({_bytes(used)} used + {_bytes(size)} > "
                    f"{_bytes(config.artifact_quota)})"
                )
            os.lseek(fd, 0, os.SEEK_SET)
            name = store.put_artifact(name, fd, digest)
        finally:
            os.close(fd)
    return Artifact(file=name, sha256=digest, size=size)


def fits(env: Environment, package: Package) -> str | None:
    """Why `package`'s artifact cannot be installed in `env`; None when it can."""
    if package.artifact is None:
        return "no artifact"
    name = FITS.get(env.kind)
    if name is None:
        return f"{env.kind} packages are not captured"
    if _named_for(env.kind, package.artifact.file) != _compared(env.kind, package.name):
        # Another package's bytes, hash and size right (a writer of the key): not this
        # one, and a second artifact of the restore by its file name.
        return f"{package.artifact.file} is not named for {package.name}"
    return cast(_Fits, importlib.import_module(name)).fits(env, package.artifact)


def _named_for(kind: str, file: str) -> str:
    """The package an artifact's file name is named for: a wheel's `{name}-...` (its name
    with `-` and `.` written `_`), R's `{name}_...`; in the form names compare in."""
    base = file.rsplit("/", 1)[-1]
    if kind == "r":
        return base.split("_", 1)[0]
    return _compared(kind, base.split("-", 1)[0])


def _compared(kind: str, name: str) -> str:
    return name if kind == "r" else canonicalize_name(name)


def fetch(store: Store, config: Config, package: Package, into: Path) -> Path:
    """A verified private copy of `package`'s artifact in `into` (see the module docstring)."""
    artifact, name, source = _open(store, config, package)
    target = into / name.rsplit("/", 1)[-1]
    try:
        try:
            fd = os.open(target, _CREATE, 0o600)
        except FileExistsError:
            # A name the record holds twice, in a manifest no writer of pkgckpt makes.
            raise ArtifactRefused(
                f"{name}: another artifact of this restore has its name"
            ) from None
        try:
            digest, size = _copy_hashing(source, fd, artifact.size)
        finally:
            os.close(fd)
    finally:
        os.close(source)
    if (digest, size) != (artifact.sha256, artifact.size):
        target.unlink()
        raise _mismatch(artifact, digest, size)
    return target


def check(store: Store, config: Config, package: Package) -> None:
    """Raise `ArtifactRefused` as `fetch` would when `package`'s artifact is missing or
    not its recorded size, without reading it: what a preview of a restore can tell at
    the cost of an open (bytes of the right size and another hash show at the restore)."""
    artifact, _, source = _open(store, config, package)
    try:
        size = os.fstat(source).st_size
    finally:
        os.close(source)
    if size != artifact.size:
        raise ArtifactDamaged(
            f"{artifact.file}: {size} bytes, not the recorded {artifact.size} (sha256 "
            f"{artifact.sha256}): tampered or truncated, refused"
        )


def read(store: Store, config: Config, package: Package, limit: int) -> bytes:
    """The bytes of `package`'s artifact, hashed and checked as `fetch` checks its copy;
    raises `ArtifactRefused` as `fetch` does, and when it records more than `limit`
    bytes (nothing is read then)."""
    artifact = package.artifact
    if artifact is not None and artifact.size > limit:
        raise ArtifactRefused(f"{artifact.file} is over {_bytes(limit)}")
    artifact, _, source = _open(store, config, package)
    import hashlib

    try:
        data = bytearray()
        while len(data) <= artifact.size:
            chunk = os.read(source, min(1 << 20, artifact.size + 1 - len(data)))
            if not chunk:
                break
            data += chunk
    finally:
        os.close(source)
    digest = hashlib.sha256(data).hexdigest()
    if (digest, len(data)) != (artifact.sha256, artifact.size):
        raise _mismatch(artifact, digest, len(data))
    return bytes(data)


def _open(store: Store, config: Config, package: Package) -> tuple[Artifact, str, int]:
    """`package`'s artifact, its checked name, and its file open for reading (unverified:
    the caller hashes what it reads)."""
    artifact = package.artifact
    if artifact is None:
        raise ArtifactRefused(f"{package.name} {package.version} has no artifact")
    try:
        name = artifact_name(artifact.file)
    except StoreError as e:
        raise ArtifactRefused(str(e)) from None
    if not _HEX.fullmatch(artifact.sha256):
        raise ArtifactRefused(f"{artifact.file}: invalid sha256 {artifact.sha256!r} recorded")
    if artifact.pooled:
        source = pool.read(config.artifact_pool, artifact.sha256)
    else:
        source = store.open_artifact(name)
    if source is None:
        raise ArtifactRefused(f"{artifact.file} (sha256 {artifact.sha256}) is missing")
    return artifact, name, source


def _mismatch(artifact: Artifact, digest: str, size: int) -> ArtifactDamaged:
    if size > artifact.size:
        # Read one byte past the recorded size, no further: a hash of that prefix would
        # name no file anyone has.
        return ArtifactDamaged(
            f"{artifact.file}: more than its recorded {artifact.size} bytes (sha256 "
            f"{artifact.sha256}): tampered, refused"
        )
    return ArtifactDamaged(
        f"{artifact.file}: sha256 {digest} ({size} bytes) is not the recorded "
        f"sha256 {artifact.sha256} ({artifact.size} bytes): tampered or truncated, refused"
    )


_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_HEX = re.compile(r"[0-9a-f]{64}")


def _copy_hashing(source: int, fd: int, expected: int) -> tuple[str, int]:
    """Copy `source` into `fd`, hashing what is read; stops one byte past `expected` so a
    file grown huge under us is not copied whole."""
    import hashlib  # OpenSSL's, for the files a capture copies (see digest)

    digest = hashlib.sha256()
    size = 0
    while size <= expected:
        chunk = os.read(source, min(1 << 20, expected + 1 - size))
        if not chunk:
            break
        digest.update(chunk)
        size += len(chunk)
        view = memoryview(chunk)
        while view:
            view = view[os.write(fd, view) :]
    return digest.hexdigest(), size


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        log.warning("%s", message)


def _bytes(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    size = float(n)
    for unit in ("KiB", "MiB", "GiB"):
        size /= 1024
        if size < 1024 or unit == "GiB":
            break
    return f"{size:.1f} {unit}"
