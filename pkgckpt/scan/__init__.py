"""Scanners: one library directory -> what is installed in it. They read, never write.

`python.py` reads site-packages, `r.py` reads R libraries, `conda.py` a conda prefix's
`conda-meta/`, `env.py` finds the site directories of a Python prefix. Each returns a
`ScanResult`.
"""

from __future__ import annotations

import msgspec

from ..manifest import Package


class ScanResult(msgspec.Struct, frozen=True):
    """What one scan of one library directory found."""

    packages: dict[str, Package] = msgspec.field(default_factory=dict)
    """Key: canonical name (Python) or the package name (R). Includes what can be read of
    installs still running (see `in_progress`)."""
    broken: dict[str, str] = msgspec.field(default_factory=dict)
    """Directory entry -> reason it could not be read. The package it holds, if any, is
    unknown: absent from `packages`, which is not proof that it was removed."""
    in_progress: frozenset[str] = frozenset()
    """Entries of installs still running: a caller should wait and scan again."""
    stale: frozenset[str] = frozenset()
    """Leftovers of installs that were interrupted (R's old `00LOCK-*` directories): not
    waited for, but what they hide is still uncertain."""
    hidden: frozenset[str] = frozenset()
    """Package names whose absence a lock explains (R): what R moved into a whole-library
    `00LOCK`, and package directories without a DESCRIPTION while a lock exists."""
