"""RStudio's own user library: `r-libs-user` in the `rsession.conf` of RStudio Server or
Posit Workbench, which pkgckpt's R (started outside RStudio) never sees.

RStudio sets `R_LIBS_USER` to that value for each R session it starts, before R reads its
Renviron files: R then expands it (`%v`, `%p`, `~`, ...) as it expands an inherited
`R_LIBS_USER`, and an `Renviron.site` or `~/.Renviron` that sets `R_LIBS_USER` outright
overrides it (R's own `Renviron` keeps an inherited value). `scan.r.r_libraries` asks R
the same way, with `R_LIBS_USER` set to the value, so that the library tracked is the one
a session really gets.

The file is found as RStudio finds it (`core::system::xdg::systemConfigFile`):
`$RSTUDIO_CONFIG_DIR/rsession.conf` when that variable is set, else the first
`<dir>/rstudio/rsession.conf` that exists among `XDG_CONFIG_DIRS`, else
`/etc/rstudio/rsession.conf`. It is the administrator's: read only when root owns it, no
one else may write it or a directory above it (`trust.unsafe`), and it is at most
`MAX_BYTES`. Its lines are boost `program_options` config lines, as RStudio reads them:
`key=value`, blanks around both ignored, `#` starting a comment anywhere on a line.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from ..logs import getLogger
from ..trust import read_owned, unsafe

log = getLogger(__name__)

CONFIG = "rsession.conf"
KEY = "r-libs-user"
MAX_BYTES = 256 * 1024
"""A larger rsession.conf is not read (real ones are a few hundred bytes)."""

_BLANKS = " \t\r\n"
"""What boost's config file parser trims around keys and values."""

_warned: set[str] = set()


def config_file(environ: Mapping[str, str]) -> Path | None:
    """The rsession.conf an RStudio session started with `environ` reads; None when
    there is none."""
    configured = environ.get("RSTUDIO_CONFIG_DIR")
    if configured:
        found = Path(configured, CONFIG)
        return found if os.path.lexists(found) else None
    dirs = environ.get("XDG_CONFIG_DIRS")
    if dirs:
        candidates = [Path(d, "rstudio", CONFIG) for d in dirs.split(":") if d]
    else:
        candidates = [Path("/etc/rstudio", CONFIG)]
    return next((c for c in candidates if os.path.lexists(c)), None)


def _parse(text: str) -> list[str]:
    """Every value of `r-libs-user` in the file, in order."""
    values = []
    # boost reads lines with getline ('\n' alone) and trims only these: a carriage return
    # or a Unicode line break inside a line is part of what RStudio sets.
    for line in text.split("\n"):
        key, sep, value = line.partition("#")[0].partition("=")
        if sep and key.strip(_BLANKS) == KEY:
            values.append(value.strip(_BLANKS))
    return values


def read(environ: Mapping[str, str]) -> tuple[str | None, str | None]:
    """(`r-libs-user` as written in the rsession.conf RStudio reads, why that file is
    ignored): (None, None) when there is no such file, key or value."""
    path = config_file(environ)
    if path is None:
        return None, None
    why = unsafe(path)
    if why is None:
        try:
            # The link a ConfigMap mount makes is fine: `unsafe` checked where it leads.
            data = read_owned(os.path.realpath(path), MAX_BYTES, root_only=True)
        except PermissionError:
            why = "it is not a regular file that root owns and only root may write"
        except OSError as e:
            why = f"it cannot be read ({e.strerror})"
    if why is not None:
        return None, f"{path} is ignored: {why}"
    values = _parse(data.decode("utf-8", "replace"))
    if len(values) > 1:
        # boost's parser refuses a repeated option: RStudio does not start a session.
        return None, f"{path} is ignored: {KEY} is set {len(values)} times"
    if values and "\0" in values[0]:
        # No environment variable can hold it: handing it to R would fail the whole probe.
        return None, f"{path} is ignored: {KEY} holds a NUL byte"
    return (values[0] if values and values[0] else None), None


def libs_user(environ: Mapping[str, str]) -> str | None:
    """`read`'s value; why the file is ignored is logged once per process."""
    value, ignored = read(environ)
    if ignored is not None and ignored not in _warned:
        _warned.add(ignored)
        log.warning("%s; RStudio's user library (%s) is not tracked", ignored, KEY)
    return value
