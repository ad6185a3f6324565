"""pkgckpt: keep the packages users install in notebook containers across restarts."""

import sys

__version__ = "0.1.0"


def own_process() -> None:
    """Called first in a process that runs pkgckpt alone (the `pkgckpt` command, the
    daemon's own interpreter), before msgspec is imported.

    msgspec imports typing_extensions wherever it is installed (most images have it) to
    read that module's types in annotations; pkgckpt's annotations use none of them, and
    typing_extensions imports inspect (with ast, dis, tokenize): 1.4 MB of the idle
    daemon's RSS and over 10 ms of every command's start. Without it msgspec uses typing's own.
    A program that imports pkgckpt as a library keeps its typing_extensions.
    """
    sys.modules.setdefault("typing_extensions", None)  # type: ignore[arg-type]
