"""conda packages, restored with the conda client the image has, into one conda prefix.

The client is the first of `conda_client` (default: mamba, micromamba, conda) found on
PATH (or given as an absolute path). One call installs a whole batch of exact specs,
`<channel>::<name>=<version>=<build>`, with `--override-channels` and the channels of
pkgckpt's own configuration (`conda_channels`, default conda-forge): a channel recorded in
the manifest only selects one of those, never adds one. Dependencies are not solved again
(`--no-deps`, which conda, mamba and micromamba (since 0.22) all take): the manifest holds
the whole delta. Removals use the same client
(`remove --force`: the package only, not what depends on it). Every option comes before
`--`, and after it only specs that `validate.py` checked.

Without a client, or for a package whose channel is not configured, `blocked()` says why:
those packages are reported as not restored (exit 3), and the other environments (pip's
packages in the same prefix among them) are restored as usual.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Sequence
from pathlib import Path

from ..config import Config
from ..manifest import Environment, Package
from ..runner import which
from ..scan.conda import channel_name
from .runner import Deadline, Outcome, call


def find_client(names: Sequence[str]) -> Path | None:
    """The first client of `names` that can run here: on PATH, or an absolute path."""
    for name in names:
        if name.startswith("/"):
            if os.access(name, os.X_OK):
                return Path(name)
            continue
        found = which(name)
        if found is not None:
            return Path(found)
    return None


class CondaInstaller:
    """The `runner.Installer` of one conda prefix's conda packages."""

    def __init__(self, env: Environment, config: Config) -> None:
        self.prefix = env.path
        self.names = config.conda_client
        self.client = find_client(self.names)
        # Configured channels by the name a record gives them, in the configured order.
        self.channels = {channel_name(c, None) or c: c for c in config.conda_channels}
        self._env = {"CONDA_ALWAYS_YES": "true"}

    @property
    def name(self) -> str:
        return self.client.name if self.client is not None else "conda (no client)"

    def _missing(self) -> str:
        return (
            f"no conda client: none of {', '.join(self.names)} (the conda_client setting) "
            "is installed here"
        )

    def blocked(self, package: Package) -> str | None:
        if self.client is None:
            return self._missing()
        if package.build is None:
            return "no build string recorded"
        if package.channel is None or package.channel not in self.channels:
            return (
                f"its channel {package.channel or '(unknown)'} is not among the configured "
                f"conda_channels ({', '.join(self.channels) or 'none'})"
            )
        return None

    def spec(self, package: Package) -> str:
        assert package.channel is not None
        channel = self.channels[package.channel]
        return f"{channel}::{package.name}={package.version}={package.build}"

    def install(
        self, packages: Sequence[Package], *, reinstall: Collection[str], deadline: Deadline
    ) -> Outcome:
        assert self.client is not None
        argv = [str(self.client), "install", "--prefix", self.prefix, "--yes"]
        argv.append("--override-channels")
        for channel in self.channels.values():
            argv += ["--channel", channel]
        argv.append("--no-deps")
        if reinstall:
            argv.append("--force-reinstall")
        argv += ["--", *(self.spec(p) for p in packages)]
        return call(argv, deadline=deadline, env=self._env)

    def remove(self, packages: Sequence[Package], *, deadline: Deadline) -> Outcome:
        if self.client is None:
            # Reported per package like an installer's failure; no process is started.
            return Outcome((), None, self._missing())
        argv = [str(self.client), "remove", "--prefix", self.prefix, "--yes", "--force"]
        argv += ["--", *(p.name for p in packages)]
        return call(argv, deadline=deadline, env=self._env)
