"""The interface every installer back end offers, and the runner they start children with.

Every child of restore (pip, uv, git, Rscript) starts through `call()`, which lives in
`pkgckpt/runner.py` (shared with the daemon's interpreter probe) and is re-exported here:

    call(argv, *, deadline, env=None, cwd=None, split_stderr=False) -> Outcome

an argv list (never a shell), stdin closed, output captured (the last lines explain a
failure, credentials taken out), a new session so that on timeout the whole process group
is killed, and a clean start: a fresh private working directory removed afterwards
(unless `cwd` names the caller's own private one), and the environment pkgckpt runs with,
changed only by `env` (`name: value` sets, `name: None` removes). `Deadline(seconds)` is
the whole command's limit; `Outcome` has `ok`, `returncode` (None: killed or not
started), `output`, `tail()`, `timed_out`.

`Installer` is the protocol that `restore/python.py` and `restore/r.py` implement and
`restore/__init__.py` drives.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

from ..manifest import Package
from ..runner import TAIL_LINES, Deadline, Outcome, call

__all__ = ["TAIL_LINES", "ArtifactInstaller", "Deadline", "Installer", "Outcome", "call"]


class Installer(Protocol):
    """One environment's installer, as `restore/__init__.py` drives it.

    Packages reach an installer already validated (`validate.py`): names and
    versions are safe to pass as arguments after `--`; sources have been shape-checked,
    and `blocked()` is where an installer refuses a source it cannot or may not fetch.
    """

    @property
    def name(self) -> str:
        """Shown in the plan and the report: "uv", "pip", "Rscript", ..."""
        ...

    def blocked(self, package: Package) -> str | None:
        """Why `package` cannot be restored from its recorded source here, or None."""
        ...

    def install(
        self, packages: Sequence[Package], *, reinstall: Collection[str], deadline: Deadline
    ) -> Outcome:
        """One installer call for all `packages` at their exact versions, no dependencies.

        `reinstall`: the names of the packages installed at the wanted version but from
        another source, which the installer must replace rather than call satisfied (and
        only those: on a new image the install resolves, and what it resolves to that is
        already installed stays as it is).
        """
        ...

    def remove(self, packages: Sequence[Package], *, deadline: Deadline) -> Outcome:
        """One installer call that uninstalls `packages` from this environment only."""
        ...


@runtime_checkable
class ArtifactInstaller(Protocol):
    """An installer that also installs captured artifacts (`pkgckpt.artifacts`)."""

    def install_artifacts(
        self,
        packages: Sequence[Package],
        files: Mapping[str, Path],
        *,
        reinstall: Collection[str],
        deadline: Deadline,
    ) -> Outcome:
        """Install each of `packages` from `files[package.name]` alone: a verified
        private copy of its artifact (no index, no repository, no build). `reinstall` as
        for `Installer.install`. A back end that resolves dependencies (a new image) may
        fetch them in a call of its own, with the artifacts already in place."""
        ...
