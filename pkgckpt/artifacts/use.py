"""Restore's side of the artifact cache: which recorded packages install from their
artifact, as verified private copies, and what happens to the others.

    stage(store, config, env, packages, into) -> Staged

For each package with an artifact: one that does not fit `env` (`artifacts.fits`: wheel
tags, R major.minor) is not used, one whose bytes do not hash to the manifest's sha256
(tampered, truncated, missing, a pooled file swapped by another user) is refused; the
others are copied into the private directory `into` (0700, restore's own) while being
hashed, so what the installer reads is exactly what was verified. A package not staged
falls back to its recorded source (the index, find-links, a URL, a repository), when
that is allowed here (`fallback`), and the report says why its artifact was not used.
An artifact whose bytes are there but wrong is in `Staged.damaged` too: the record lets
it go (`record.remember`), so that the package is captured again.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import msgspec

from ..config import Config
from ..errors import PkgckptError
from ..manifest import Artifact, Environment, IndexSource, Package
from ..store import Store
from . import ArtifactDamaged, ArtifactRefused, check, fetch, fits


class Staged(msgspec.Struct):
    files: dict[str, Path] = msgspec.field(default_factory=dict)
    """Package name -> its verified copy."""
    unused: dict[str, str] = msgspec.field(default_factory=dict)
    """Package name -> why its artifact is not used (does not fit, refused, unreadable)."""
    damaged: dict[str, Artifact] = msgspec.field(default_factory=dict)
    """Package name -> its artifact, whose bytes were not the recorded ones."""


def stage(
    store: Store, config: Config, env: Environment, packages: Sequence[Package], into: Path
) -> Staged:
    staged = Staged()
    for p in packages:
        if p.artifact is None:
            continue
        why = fits(env, p)
        if why is not None:
            staged.unused[p.name] = f"its artifact {p.artifact.file} is not used: {why}"
            continue
        try:
            staged.files[p.name] = fetch(store, config, p, into)
        except ArtifactRefused as e:
            staged.unused[p.name] = f"artifact refused: {e}"
            if isinstance(e, ArtifactDamaged):
                staged.damaged[p.name] = p.artifact
        except PkgckptError as e:  # the store refused or failed: the source may still work
            staged.unused[p.name] = f"artifact unreadable: {e}"
    return staged


def unusable(store: Store, config: Config, package: Package) -> str | None:
    """What `stage` would say of `package`'s artifact when it is missing or not its
    recorded size (`artifacts.check`, which reads no byte of it); None: it looks whole."""
    try:
        check(store, config, package)
    except ArtifactRefused as e:
        return f"artifact refused: {e}"
    except PkgckptError as e:
        return f"artifact unreadable: {e}"
    return None


def index_allowed(config: Config) -> bool:
    """Whether an index-recorded package may be installed from an index or find-links."""
    return not config.no_index or bool(config.find_links)


def fallback(config: Config, env: Environment, package: Package, blocked: str | None) -> str | None:
    """Why `package` cannot be installed into `env` from its recorded source instead of
    its artifact (`blocked`: what the installer said of that source), or None when it can.

    `--no-index` is pip's and uv's ("use --find-links only"): an R library's repository
    (`--r-repo`) stays allowed, as it is for R packages that have no artifact.
    """
    if blocked is not None:
        return f"its source cannot be used either: {blocked}"
    python = env.kind == "python"
    if python and isinstance(package.source, IndexSource) and not index_allowed(config):
        return "no index is allowed (--no-index without --find-links)"
    return None
