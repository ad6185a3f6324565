"""The package indexes the installer that restore runs reads, found the way that installer
finds them: what the rebase's consistency check (`indexmeta.py`) may ask for metadata.

    indexes(config, env, environ=os.environ) -> Indexes

The rule: the check reads what the installer will read, no more and no less. The
installer is the one `restore/python.py` chooses (`installer_for`), run as
`restore/runner.py` runs it: pkgckpt's environment, in an empty private working
directory. So a relative path (`PIP_CONFIG_FILE=pip.conf`, a relative `XDG_CONFIG_HOME`
or `HOME`) names nothing, here as there, and nothing is read from where pkgckpt was
started. Command-line settings are pkgckpt's own (`index_url`, `no_index`), which
restore passes as flags: they beat any file and any variable.

pip (`pip._internal.configuration`, `cli/parser.py`): files in this order, a later
file's value of a key replacing an earlier one's:
- global: `<dir>/pip/pip.conf` for each directory of `XDG_CONFIG_DIRS` (else
  `/etc/xdg`), then `/etc/pip.conf`;
- user: `~/.pip/pip.conf`, then `$XDG_CONFIG_HOME/pip/pip.conf` (else
  `~/.config/pip/pip.conf`); skipped when `PIP_CONFIG_FILE` names a file that exists;
- site: `pip.conf` in the `sys.prefix` of the interpreter pip runs in, which is the
  target environment's prefix (restore runs its pip, or pip `--python` it);
- `PIP_CONFIG_FILE`; set to `os.devnull`, no file at all is read.
Then sections, across all files: `[global]`, overridden by `[install]`, overridden by
`PIP_*` variables. Keys are normalized (`index_url` is `index-url`; `pypi-url` is
`index-url` too); an empty value counts as not set. No index named: pip's default.

uv: restore runs `uv pip install --no-config` (uv would otherwise walk up from the working
directory, a private directory under a shared `/tmp`, for a `uv.toml` anyone may plant),
so uv reads no `uv.toml`, neither `/etc/uv/uv.toml` nor `~/.config/uv/uv.toml`, except
the one `UV_CONFIG_FILE` names, which `--no-config` does not stop (`UV_NO_CONFIG` is then
moot as well). In that file `[pip]`'s keys beat the top level's. The default index is
the first of `UV_DEFAULT_INDEX`, `UV_INDEX_URL` (or pkgckpt's `index_url`, for which
restore unsets `UV_DEFAULT_INDEX`), the file's `[[index]]` with `default = true`, the
file's `index-url`. Extra indexes: `UV_INDEX` (`name=url` or `url`, space separated),
`UV_EXTRA_INDEX_URL`, the file's other `[[index]]` entries (not `explicit`), its
`extra-index-url`. `UV_NO_INDEX` or the file's `no-index` turn every index off.

A configuration file that the installer would refuse (not valid INI or TOML) is
`Indexes.problem`: nothing is asked, the installer reports it.
"""

from __future__ import annotations

import configparser
import os
import pwd
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec

from ..config import Config
from ..manifest import Environment

TRUE = ("y", "yes", "t", "true", "on", "1")
"""What pip's `strtobool` and clap's boolish values (uv) call true."""
FALSE = ("n", "no", "f", "false", "off", "0")
PIP_DEST = {
    "index-url": "index-url",
    "pypi-url": "index-url",
    "extra-index-url": "extra",
    "no-index": "no-index",
}
"""pip's configuration keys (long option names) of the settings read here -> the setting."""


class Indexes(msgspec.Struct, frozen=True):
    """The indexes one installer reads."""

    tool: str
    """"pip" or "uv"."""
    default: str | None = None
    """The index named as the default; None: the installer's own (PyPI)."""
    extra: tuple[str, ...] = ()
    no_index: bool = False
    problem: str | None = None
    """A configuration file the installer would refuse; nothing else here is known."""


def indexes(config: Config, env: Environment, environ: Mapping[str, str] = os.environ) -> Indexes:
    """The indexes of the installer restore runs for `env` (see the module)."""
    from .python import installer_for

    if installer_for(config, env) == "uv":
        return uv_indexes(config, environ)
    return pip_indexes(config, Path(env.path), environ)


def _home(environ: Mapping[str, str]) -> str | None:
    home = environ.get("HOME")
    if home is None:
        try:
            home = pwd.getpwuid(os.getuid()).pw_dir
        except KeyError:
            return None
    return home if Path(home).is_absolute() else None


def _absolute(path: str | None) -> Path | None:
    """A path the installer in its empty working directory can find: absolute only."""
    return Path(path) if path and Path(path).is_absolute() else None


def pip_files(prefix: Path, environ: Mapping[str, str]) -> list[Path]:
    """pip's configuration files, lowest precedence first (see the module)."""
    named = environ.get("PIP_CONFIG_FILE")
    if named == os.devnull:
        return []
    dirs = [d for d in environ.get("XDG_CONFIG_DIRS", "").split(os.pathsep) if d.strip()]
    files = [Path(d, "pip", "pip.conf") for d in dirs or ["/etc/xdg"]]
    files.append(Path("/etc/pip.conf"))
    env_file = _absolute(named)
    # os.path's, as pip's own: False, not an error, beneath a closed directory.
    if env_file is None or not os.path.exists(env_file):  # noqa: PTH110
        home = _home(environ)
        xdg = environ.get("XDG_CONFIG_HOME", "").strip()
        if home is not None:
            files.append(Path(home, ".pip", "pip.conf"))
            xdg = xdg or str(Path(home, ".config"))
        if xdg:
            files.append(Path(xdg, "pip", "pip.conf"))
    files.append(prefix / "pip.conf")
    if env_file is not None:
        files.append(env_file)
    return [f for f in files if f.is_absolute()]


def pip_indexes(config: Config, prefix: Path, environ: Mapping[str, str]) -> Indexes:
    """pip's indexes for an interpreter at `prefix` (see the module)."""
    # section -> key -> value; a later file replaces a key's value.
    sections: dict[str, dict[str, str]] = {"global": {}, "install": {}, ":env:": {}}
    for path in pip_files(prefix, environ):
        parser = configparser.RawConfigParser()
        try:
            parser.read(path, encoding="utf-8")
        except (configparser.Error, UnicodeDecodeError) as e:
            why = f"pip's configuration {path} cannot be read ({type(e).__name__})"
            return Indexes("pip", problem=why)
        for section in ("global", "install"):
            if parser.has_section(section):
                for key, value in parser.items(section):
                    sections[section][_pip_key(key)] = value
    for name, value in environ.items():
        if name.startswith("PIP_") and name[4:].lower() not in ("version", "help"):
            sections[":env:"][_pip_key(name[4:])] = value
    found: dict[str, str] = {}
    for keys in sections.values():
        for key, value in keys.items():
            if key in PIP_DEST and value:
                found[PIP_DEST[key]] = value
    no_index = found.get("no-index", "0").lower()
    if no_index not in TRUE + FALSE:
        return Indexes("pip", problem=f"pip's no-index is {no_index!r}, not a boolean")
    return Indexes(
        "pip",
        default=config.index_url or found.get("index-url"),
        extra=tuple(found.get("extra", "").split()),
        no_index=config.no_index or no_index in TRUE,
    )


def _pip_key(name: str) -> str:
    return name.lower().replace("_", "-").removeprefix("--")


def _toml(path: Path) -> dict[str, Any]:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    with path.open("rb") as f:
        return tomllib.load(f)


def uv_indexes(config: Config, environ: Mapping[str, str]) -> Indexes:
    """uv's indexes as restore runs it: `--no-config`, so `UV_CONFIG_FILE` alone."""
    named = environ.get("UV_CONFIG_FILE")
    file: dict[str, Any] = {}
    if named:
        path = _absolute(named)
        if path is None:
            return Indexes("uv", problem=f"UV_CONFIG_FILE={named} is relative: uv runs elsewhere")
        try:
            top = _toml(path)
        except (OSError, ValueError) as e:
            why = f"uv's configuration {path} cannot be read ({type(e).__name__})"
            return Indexes("uv", problem=why)
        pip = top["pip"] if isinstance(top.get("pip"), dict) else {}
        file = {k: pip.get(k, top.get(k)) for k in ("index-url", "extra-index-url", "no-index")}
        file["index"] = [*_entries(pip.get("index")), *_entries(top.get("index"))]
    # uv's order (restore unsets UV_DEFAULT_INDEX when pkgckpt names an index).
    candidates: list[str | None] = [
        config.index_url,
        None if config.index_url else environ.get("UV_DEFAULT_INDEX"),
        environ.get("UV_INDEX_URL"),
    ]
    extra = [_uv_index(entry) for entry in environ.get("UV_INDEX", "").split()]
    extra += environ.get("UV_EXTRA_INDEX_URL", "").split()
    for entry in file.get("index", ()):
        url = entry.get("url")
        if not isinstance(url, str) or entry.get("explicit") is True:
            continue
        if entry.get("default") is True:
            candidates.append(url)
        else:
            extra.append(url)
    url = file.get("index-url")
    candidates.append(url if isinstance(url, str) else None)
    more = file.get("extra-index-url")
    extra += [u for u in more if isinstance(u, str)] if isinstance(more, list) else []
    default = next((u for u in candidates if u), None)
    no_index = (
        config.no_index
        or environ.get("UV_NO_INDEX", "").lower() in TRUE
        or file.get("no-index") is True
    )
    return Indexes("uv", default=default, extra=tuple(extra), no_index=no_index)


def _uv_index(entry: str) -> str:
    """The URL of a `UV_INDEX` entry: `url` or `name=url`."""
    name, sep, url = entry.partition("=")
    return url if sep and "://" not in name else entry


def _entries(value: object) -> list[dict[str, Any]]:
    return [e for e in value if isinstance(e, dict)] if isinstance(value, list) else []
