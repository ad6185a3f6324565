"""Python: an installed distribution repacked into a wheel from the files its RECORD lists.

The wheel holds exactly what the user had, whatever it was installed from (an index, a
URL, a VCS checkout, a built sdist), and installs without a network or a compiler:

- files under the site directory go to the wheel's root; files elsewhere in the
  environment go back to `<name>-<version>.data/`: `scripts/` (the prefix's `bin/`),
  `headers/` (where pip and uv put headers: `include/site/pythonX.Y/<name>/` in a venv,
  `include/pythonX.Y/<name>/` elsewhere), `data/` (anything else under the prefix);
- `__pycache__` and `.pyc` files, `INSTALLER`, `REQUESTED`, the RECORD signatures and
  uv's `uv_cache.json` (a timestamp) are left out: the installer writes its own; console
  and GUI scripts that `entry_points.txt` names are left out too: the installer
  generates them for the new interpreter. A script whose `#!` line the installer wrote
  (an interpreter's path, no arguments) gets its `#!python` line back, for the same
  reason; any other first line (`#!/usr/bin/env python3 -u`) is kept as installed;
- `WHEEL` (tags, build number, Root-Is-Purelib), `METADATA`, `entry_points.txt` and
  `direct_url.json` are kept byte for byte, so the restored install records the source
  the user's had;
- a new RECORD with the sha256 of each file as packed.

Members are sorted, dated 1980-01-01 and compressed at one fixed level: the same install
always packs to the same bytes.
Editable and directory installs are never captured (`artifacts.uncapturable`); neither
is a `.egg-info` install (it has no RECORD).

Built with the standard library's zipfile and packaging's name and version functions
(already a dependency): `wheel`'s WheelFile is not a public API of that project, and
`installer` installs wheels rather than packing them.
"""

from __future__ import annotations

import base64
import contextlib
import csv
import functools
import hashlib
import io
import os
import posixpath
import re
import stat
import zipfile
from collections.abc import Callable
from pathlib import Path

from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from .. import fstree
from ..errors import NotInstalled, Uncapturable
from . import Job

_DATE = (1980, 1, 1, 0, 0, 0)
_LEFT_OUT = frozenset(
    {"INSTALLER", "REQUESTED", "RECORD", "RECORD.jws", "RECORD.p7s", "uv_cache.json"}
)
_MAX_META = 16 << 20
"""RECORD, WHEEL and entry_points.txt larger than this are not a distribution's."""
COMPRESSLEVEL = 1
"""zlib level 1: the installed scipy 1.17.1 (83 MB) packs in 1.7 s of CPU to 38.1 MiB, where
level 6 takes 4.8 s for 33.7 MiB; capture runs after every install on every node, the
13 % more bytes sit once on the store."""
_CHUNK = 1 << 20
"""Bytes of an installed file read, hashed and compressed at a time."""


def capture(job: Job, out: Path) -> Path:
    """Repack `job.package` into `out/<wheel name>` (see the module docstring)."""
    site, info = _find(job)
    prefix = _data_root(job, site)
    beneath: dict[Path, int] = {}
    try:
        for directory in (site, prefix):
            try:
                beneath[directory] = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            except OSError as e:
                raise Uncapturable(f"cannot open {directory}: {e.strerror}") from None
        return _capture(job, out, site, info, prefix, beneath)
    finally:
        for fd in beneath.values():
            os.close(fd)


def _capture(
    job: Job, out: Path, site: Path, info: str, prefix: Path, beneath: dict[Path, int]
) -> Path:
    """`capture`, every file read through the directory open in `beneath` that holds it:
    a group-writable environment may hold a link another user planted (`evil/ ->
    ~/.ssh`), which RECORD's paths must never be read through."""
    dist_dir = site / info
    record = _read(beneath[site], f"{info}/RECORD", site)
    wheel = _read(beneath[site], f"{info}/WHEEL", site)
    tags, build = _wheel_fields(wheel)
    if not tags:
        raise Uncapturable(f"{dist_dir / 'WHEEL'} names no tags")
    odd = next((t for t in tags if not _TAG.fullmatch(t)), None)
    if odd is not None:
        raise Uncapturable(f"{dist_dir / 'WHEEL'}: tag {odd!r} is not python-abi-platform")
    generated = _entry_point_scripts(beneath[site], f"{info}/entry_points.txt", site)
    stem = info[: -len(".dist-info")]
    venv = not job.env.user and (prefix / "pyvenv.cfg").is_file()
    name = _wheel_name(job.package.name, job.package.version, build, tags)
    members: list[tuple[str, Path, bool, str]] = []
    """(name in the wheel, file, is a script whose #! line is restored, RECORD's hash)."""
    for path, recorded in _record_rows(record):
        parts = path.split("/")
        if "__pycache__" in parts or path.endswith((".pyc", ".pyo")):
            continue
        if parts[0] == info and len(parts) == 2 and parts[1] in _LEFT_OUT:
            continue
        # Lexical, as installers write RECORD: scripts and .data files are `../../../bin/x`.
        where = Path(os.path.normpath(site / path))
        member = _member(where, site, prefix, stem, job.package.name, venv=venv)
        if member is None:
            raise Uncapturable(f"{where} (in RECORD) lies outside the environment {prefix}")
        if member.startswith(f"{stem}.data/scripts/"):
            if where.name in generated:
                continue
            members.append((member, where, True, recorded))
        else:
            members.append((member, where, False, recorded))
    # The dist-info directory last, as the wheel specification recommends.
    members.sort(key=lambda m: (m[0].startswith(f"{info}/"), m[0]))
    target = out / name
    rows: list[tuple[str, str, str]] = []
    with zipfile.ZipFile(
        target, "x", compression=zipfile.ZIP_DEFLATED, compresslevel=COMPRESSLEVEL
    ) as zf:
        unfix = functools.partial(_unfix_shebang, prefix=None if job.env.user else prefix)
        for member, source, script, recorded in members:
            top = site if source.is_relative_to(site) else prefix
            rows.append(
                _pack(zf, member, beneath[top], source, top, recorded, unfix if script else None)
            )
        rows.append((f"{info}/RECORD", "", ""))
        text = io.StringIO()
        csv.writer(text, lineterminator="\n").writerows(rows)
        zf.writestr(_info(f"{info}/RECORD", 0o644), text.getvalue().encode())
    return target


# -- finding the installed files ---------------------------------------------------------


def _find(job: Job) -> tuple[Path, str]:
    """The site directory and the `.dist-info` name of the recorded install."""
    want = canonicalize_name(job.package.name)
    try:
        version = Version(job.package.version)
    except InvalidVersion:
        version = None
    egg = False
    for root in job.roots:
        try:
            names = sorted(os.listdir(root))  # noqa: PTH208 - names, not paths
        except OSError:
            continue
        for entry in names:
            stem, dot, suffix = entry.rpartition(".")
            if not dot or suffix not in ("dist-info", "egg-info"):
                continue
            if suffix == "egg-info":
                # `name-version(-pyX.Y(-platform))`: the name is the first field (an
                # egg's name has its dashes escaped), the tail is not the version.
                egg = egg or canonicalize_name(stem.split("-", 1)[0]) == want
                continue
            dist, _, found = stem.rpartition("-")
            if canonicalize_name(dist) != want:
                continue
            try:
                same = Version(found) == version
            except InvalidVersion:
                same = found == job.package.version
            if same:
                return root, entry
    if egg:
        raise Uncapturable("installed as .egg-info, which lists no files (RECORD)")
    # Not "no longer": a restore may have held it back, and it never was, in this container.
    raise NotInstalled(f"{job.package.name} {job.package.version} is not installed here")


def _read(directory: int, path: str, top: Path) -> bytes:
    """A dist-info file, `path` beneath `top` (open as `directory`), through no link."""
    try:
        fd = fstree.open_beneath(directory, path)
    except FileNotFoundError:
        raise Uncapturable(f"no {(top / path).name} in {(top / path).parent}") from None
    except OSError as e:
        raise Uncapturable(f"cannot read {top}/{e.strerror}") from None
    try:
        data = os.read(fd, _MAX_META + 1)
    finally:
        os.close(fd)
    if len(data) > _MAX_META:
        raise Uncapturable(f"{top / path} is larger than {_MAX_META} bytes")
    return data


_TAG = re.compile(r"[A-Za-z0-9_.]+-[A-Za-z0-9_.]+-[A-Za-z0-9_.]+")


def _wheel_fields(data: bytes) -> tuple[list[str], str | None]:
    tags: list[str] = []
    build = None
    for line in data.decode("utf-8", "replace").splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() == "tag":
            tags.append(value.strip())
        elif key.strip().lower() == "build":
            build = value.strip() or None
    return tags, build


def _entry_point_scripts(directory: int, path: str, top: Path) -> frozenset[str]:
    """The names of the scripts the installer generates from `entry_points.txt`."""
    import configparser

    try:
        data = _read(directory, path, top)
    except Uncapturable:
        return frozenset()
    parser = configparser.ConfigParser(delimiters=("=",), interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    try:
        parser.read_string(data.decode("utf-8", "replace"))
    except configparser.Error as e:
        raise Uncapturable(f"{top / path}: {e}") from None
    names: set[str] = set()
    for section in ("console_scripts", "gui_scripts"):
        if parser.has_section(section):
            for name in parser.options(section):
                # pip also writes Windows launchers and versioned names; harmless here.
                names.update((name, f"{name}.exe", f"{name}-script.py"))
    return frozenset(names)


def _record_rows(data: bytes) -> list[tuple[str, str]]:
    """RECORD's (path, hash) rows; the hash `algo=urlsafe-b64`, or empty."""
    rows = csv.reader(io.StringIO(data.decode("utf-8", "replace")))
    return [
        (row[0].replace("\\", "/"), row[1] if len(row) > 1 else "")
        for row in rows
        if row and row[0]
    ]


def _b64(digest: bytes) -> str:
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def _pack(
    zf: zipfile.ZipFile,
    member: str,
    directory: int,
    source: Path,
    top: Path,
    recorded: str,
    first: Callable[[bytes], bytes] | None,
) -> tuple[str, str, str]:
    """Copy `source` (beneath `top`, open as `directory`) into `zf` as `member`, a chunk at
    a time: a 1.5 GB shared library (torch, CUDA) must not take its size, twice, of the
    memory of the notebook's container. `first`, where given, rewrites the first chunk (a
    script's `#!` line, `_unfix_shebang`). Returns its RECORD row as packed.

    The file must be what the installer wrote there by RECORD's hash. Else it changed
    since the install: an upgrade replacing the package while it is packed, or an edit;
    packed anyway, the artifact would mix two installs under one name and version. A row
    without a hash, or in another algorithm than the wheel specification's (sha256 or
    stronger), is not checked. A path through a link is not read: the package is not
    captured.
    """
    path = source.relative_to(top).as_posix()
    try:
        fd = fstree.open_beneath(directory, path)
    except OSError as e:
        raise Uncapturable(f"{top / path} (in RECORD) cannot be read: {top}/{e.strerror}") from None
    algo, sep, want = recorded.partition("=")
    checked = hashlib.new(algo) if sep and algo in ("sha256", "sha384", "sha512") else None
    packed = hashlib.sha256()
    try:
        st = os.fstat(fd)
        info = _info(member, stat.S_IMODE(st.st_mode))
        # zipfile chooses zip64 by the size it is told: the file is read up to that size.
        info.file_size = st.st_size
        read = size = 0
        with zf.open(info, "w") as dst:
            while read <= st.st_size:
                try:
                    chunk = os.read(fd, min(_CHUNK, st.st_size + 1 - read))
                except OSError as e:
                    raise Uncapturable(
                        f"{top / path} (in RECORD) cannot be read: {e.strerror}"
                    ) from None
                if not chunk:
                    break
                read += len(chunk)
                if checked is not None:
                    checked.update(chunk)
                if size == 0 and first is not None:
                    chunk = first(chunk)
                size += len(chunk)
                packed.update(chunk)
                dst.write(chunk)
    finally:
        os.close(fd)
    if read > st.st_size:
        raise Uncapturable(f"{source} grew while it was read: a reinstall under way, or an edit")
    if checked is not None and _b64(checked.digest()) != want.rstrip("="):
        raise Uncapturable(
            f"{source} is not the file that was installed (its {algo} is not RECORD's): "
            "changed since, by a reinstall under way or an edit"
        )
    return member, f"sha256={_b64(packed.digest())}", str(size)


def _data_root(job: Job, site: Path) -> Path:
    """The directory the wheel's `.data/data` maps to: the prefix, or the user base."""
    if job.env.user:
        # <userbase>/lib/pythonX.Y/site-packages
        return site.parents[2]
    return Path(job.env.path)


_PYTHON_DIR = re.compile(r"python\d+\.\d+[a-z]*")
"""`include/`'s version directory: `python3.11`, `python3.13t` (abiflags)."""


def _member(
    where: Path, site: Path, prefix: Path, stem: str, name: str, *, venv: bool
) -> str | None:
    """The name in the wheel of the installed file `where`; None when it lies outside."""
    if where.is_relative_to(site):
        return where.relative_to(site).as_posix()
    if not where.is_relative_to(prefix):
        return None
    inside = where.relative_to(prefix)
    if inside.parts[:1] == ("bin",) and len(inside.parts) == 2:
        return f"{stem}.data/scripts/{inside.parts[1]}"
    # Only the directory pip and uv install `.data/headers/` into: the same path under
    # `include/` may be another wheel's `.data/data/include/...`, which goes back there.
    layout = ("include", "site") if venv else ("include",)
    tail = inside.parts[len(layout) :]  # pythonX.Y, <name>, the header's own path
    if (
        inside.parts[: len(layout)] == layout
        and len(tail) > 2
        and _PYTHON_DIR.fullmatch(tail[0])
        and canonicalize_name(tail[1]) == canonicalize_name(name)
    ):
        return f"{stem}.data/headers/{posixpath.join(*tail[2:])}"
    return f"{stem}.data/data/{inside.as_posix()}"


_SHEBANG = re.compile(rb"#!(/\S*)/python[0-9.]*\r?")
"""The line pip and uv write for a script's `#!python`: the interpreter's path alone."""


def _unfix_shebang(data: bytes, prefix: Path | None) -> bytes:
    """`data` with its `#!` line back to `#!python` where the installer wrote it: an
    interpreter of the environment (under `prefix`; None, a user site: any interpreter),
    without arguments. A line the wheel shipped as it is stays as it is."""
    line, nl, rest = data.partition(b"\n")
    found = _SHEBANG.fullmatch(line)
    if found is None:
        return data
    if prefix is not None and not Path(os.fsdecode(found[1])).is_relative_to(prefix):
        return data
    return b"#!python" + nl + rest


def _info(member: str, mode: int) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(member, _DATE)
    info.external_attr = (stat.S_IFREG | (0o755 if mode & 0o111 else 0o644)) << 16
    info.compress_type = zipfile.ZIP_DEFLATED
    # What ZipFile.writestr sets for its compresslevel, and ZipFile.open reads of a
    # ZipInfo it is given (`compress_level` since Python 3.13, which keeps this name).
    info._compresslevel = COMPRESSLEVEL  # type: ignore[attr-defined]
    return info


def _wheel_name(name: str, version: str, build: str | None, tags: list[str]) -> str:
    pys, abis, plats = (sorted({t.split("-")[i] for t in tags}) for i in range(3))
    with contextlib.suppress(InvalidVersion):
        version = str(Version(version))
    parts = [canonicalize_name(name).replace("-", "_"), version.replace("-", "_")]
    if build:
        parts.append(build)
    parts += [".".join(pys), ".".join(abis), ".".join(plats)]
    return "-".join(parts) + ".whl"
