"""The `pkgckpt` command: a thin click front end.

Each command parses its flags, makes one library call and renders the result. Library
code raises `PkgckptError` subclasses; only `main()` turns them into messages and exit
codes: 0 done or nothing to do, 1 error (nothing changed), 2 usage, 3 partial restore.
"""

from __future__ import annotations

import click

from . import __version__


@click.group()
@click.version_option(__version__, prog_name="pkgckpt")
def cli() -> None:
    """Checkpoint the packages users install in notebook containers; restore them at start."""


def main() -> None:
    cli()
