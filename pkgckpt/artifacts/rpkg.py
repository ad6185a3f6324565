"""R: an installed package directory captured as a binary package tarball.

An installed package holds `DESCRIPTION` with `Built:` (R writes it at install time);
a tarball of that directory is what R calls a binary package, and `R CMD INSTALL`
unpacks it without building or compiling anything. The tarball is named as binary
repositories name theirs, `{pkg}_{version}_R_{platform}.tar.gz`, under `R-{major.minor}/`:
the R it was built for, from its own `Built:` field, not the R running now. A pure-R
package's `Built:` names no platform; the library's R platform names it then.

The tarball holds exactly the installed tree, one top directory named after the
package, in name order, every member dated 1980-01-01, owned by 0:0, mode 0644 (0755
for directories and executables), gzip without a name or time: the same install always
packs to the same bytes. Links inside stay links; one that leaves the package, a device
or a FIFO makes the package uncapturable, so that restore never meets one. The package
is captured only when it is the very install the manifest records (name, version, the
`Built:` R version) and nothing replaced it meanwhile (R installs by renaming a staged
directory into place: the directory's and its DESCRIPTION's identity are compared before
and after).

A library others can write may change under the capture: the tree is read through open
directories (`pkgckpt.fstree`), so a subdirectory swapped for a link to the user's own
files (`a/ -> ~/.ssh`) is never followed, and a file or directory that is no longer the
one listed makes the package uncapturable. A package directory that is itself a link is
not captured: its files are wherever the link's maker pointed it.

`check_binary` is the restore side: before `R CMD INSTALL` sees a verified copy, the
tarball must hold only `<pkg>/...` members (no absolute path, no `..`, none twice, none
beneath a link, no link out even through other links: `_link_out`), and its DESCRIPTION
that package at that version, built for the running R's major.minor.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import re
import stat
import tarfile
from collections.abc import Mapping
from pathlib import Path
from typing import IO

from .. import fstree
from ..errors import NotInstalled, Uncapturable
from ..manifest import Artifact, Environment
from ..rmatch import minor
from ..scan.r import MAX_DESCRIPTION, DescriptionError, dependencies, parse_dcf
from . import Job

EPOCH = 315532800
"""1980-01-01 UTC, every member's time (as wheels use): a date outside the tree's history
keeps the bytes equal for equal trees."""
COMPRESSLEVEL = 6
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9.]*[A-Za-z0-9]")
_VERSION = re.compile(r"[0-9]+(?:[.-][0-9]+)+")
_PLATFORM = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")
_FILE = re.compile(
    r"R-(?P<r>[0-9]{1,3}\.[0-9]{1,3})/(?:[0-9a-f]{16}/)?(?P<name>[A-Za-z][A-Za-z0-9.]*[A-Za-z0-9])_"
    r"(?P<version>[0-9]+(?:[.-][0-9]+)+)_R_(?P<platform>[A-Za-z0-9][A-Za-z0-9._+-]*)\.tar\.gz"
)


def artifact_file(name: str, version: str, r: str, platform: str) -> str:
    """The artifact's name under `<key>/artifacts/`."""
    return f"R-{r}/{name}_{version}_R_{platform}.tar.gz"


def parse_file(file: str) -> tuple[str, str, str, str] | None:
    """(R major.minor, package, version, platform) of an artifact name; None when it is
    not an R binary's."""
    match = _FILE.fullmatch(file)
    if match is None:
        return None
    return match["r"], match["name"], match["version"], match["platform"]


def _built(fields: dict[str, str]) -> tuple[str | None, str]:
    """(R major.minor, platform) from a DESCRIPTION's `Built:`; platform "" for pure R."""
    parts = [p.strip() for p in fields.get("Built", "").split(";")]
    r = minor(parts[0].removeprefix("R ").strip()) if parts[0].startswith("R ") else None
    return r, parts[1] if len(parts) > 1 else ""


def _find(job: Job) -> tuple[Path, str]:
    """The library holding the recorded package, and the package's name in it."""
    name = job.package.name
    if not _NAME.fullmatch(name) or not _VERSION.fullmatch(job.package.version):
        raise Uncapturable(f"{name!r} {job.package.version!r} is not an R package and version")
    for root in job.roots:
        try:
            found = (root / name).lstat()
        except OSError:
            continue
        if stat.S_ISLNK(found.st_mode):
            # Its files live elsewhere, where whoever could write the library pointed it.
            raise Uncapturable(f"{root / name} is a link, not a directory: not captured")
        if stat.S_ISDIR(found.st_mode) and (root / name / "DESCRIPTION").is_file():
            return root, name
    # Not "no longer": a restore may have held it back, and it never was, in this container.
    raise NotInstalled(f"{name} {job.package.version} is not installed here")


def capture(job: Job, out: Path) -> Path:
    """`job.package`'s installed directory as a binary package tarball in `out`."""
    root, name = _find(job)
    try:
        library = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        raise Uncapturable(f"cannot open its library: {e.strerror}") from None
    try:
        return _capture(job, library, name, out)
    finally:
        os.close(library)


def _capture(job: Job, library: int, name: str, out: Path) -> Path:
    # Everything is read through this descriptor: the package directory that was checked
    # is the one packed, whatever its name points to meanwhile.
    try:
        directory = os.open(name, fstree.DIR_FLAGS, dir_fd=library)
    except OSError as e:
        raise Uncapturable(f"cannot open the installed package: {e.strerror}") from None
    try:
        try:
            before = _identity(library, name, directory)
            opened = os.fstat(directory)
            if (opened.st_dev, opened.st_ino) != before[:2]:
                raise Uncapturable(
                    "reinstalled while it was captured (captured at a later checkpoint)"
                )
            fields = parse_dcf(_read_description(directory))
        except (OSError, DescriptionError) as e:
            raise Uncapturable(f"cannot read its DESCRIPTION: {e}") from None
        p = job.package
        found = (fields.get("Package"), fields.get("Version"))
        if found != (p.name, p.version):
            raise Uncapturable(f"the installed one is {found[0]} {found[1]}, not the recorded one")
        r, platform = _built(fields)
        if r is None:
            raise Uncapturable("its DESCRIPTION has no Built: field (not an installed package)")
        if p.built is not None and minor(p.built) != r:
            raise Uncapturable(f"the installed one was built for R {r}, the recorded for {p.built}")
        platform = platform or job.env.platform or ""
        if not _PLATFORM.fullmatch(platform):
            raise Uncapturable(f"unknown R platform {platform!r}")
        target = out / artifact_file(p.name, p.version, r, platform)
        target.parent.mkdir(mode=0o700)
        try:
            with open(target, "xb") as raw:
                _pack(directory, p.name, raw)
            if _identity(library, name, directory) != before:
                raise Uncapturable(
                    "reinstalled while it was captured (captured at a later checkpoint)"
                )
        except fstree.Changed as e:
            raise Uncapturable(f"{p.name}/{e.path} changed while it was captured") from None
        except OSError as e:
            raise Uncapturable(f"cannot read the installed package: {e}") from None
        return target
    finally:
        os.close(directory)


def _identity(library: int, name: str, directory: int) -> tuple[int, int, int, int, int]:
    """What the library names `name` and the DESCRIPTION in the open `directory`: (device,
    inode, mtime) and (inode, mtime). A reinstall changes both; the name now pointing
    anywhere but `directory` changes the first."""
    d = os.stat(name, dir_fd=library, follow_symlinks=False)
    f = os.stat("DESCRIPTION", dir_fd=directory, follow_symlinks=False)
    return d.st_dev, d.st_ino, d.st_mtime_ns, f.st_ino, f.st_mtime_ns


def _read_description(directory: int) -> str:
    fd = os.open("DESCRIPTION", fstree.FILE_FLAGS, dir_fd=directory)
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise DescriptionError("DESCRIPTION is not a regular file")
        return f.read(MAX_DESCRIPTION).decode("utf-8", "replace")


def _pack(directory: int, name: str, raw: IO[bytes]) -> None:
    # GNU format, as R's own tar() writes: R's internal untar reads its long names.
    gz = gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=COMPRESSLEVEL)
    links: dict[str, str] = {}
    with gz, tarfile.open(fileobj=gz, mode="w", format=tarfile.GNU_FORMAT) as tar:
        tar.addfile(_info(name, tarfile.DIRTYPE, 0o755))
        # Through descriptors (see fstree): a linked directory is packed as the link it
        # is, and one swapped for a link while it is packed is never followed.
        with contextlib.closing(fstree.walk(directory)) as tree:
            for _, fd, entries in tree:
                for entry in entries:
                    _add(tar, fd, entry, f"{name}/{entry.path}", links)
    out = _link_out(links, name)
    if out is not None:
        raise Uncapturable(f"{out} links out of the package ({links[out]})")


def _info(member: str, kind: bytes, mode: int, size: int = 0, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(member)
    info.type, info.mode, info.size, info.linkname = kind, mode, size, link
    info.mtime, info.uid, info.gid, info.uname, info.gname = EPOCH, 0, 0, "", ""
    return info


def _add(
    tar: tarfile.TarFile, directory: int, entry: fstree.Entry, member: str, links: dict[str, str]
) -> None:
    st = entry.st
    if stat.S_ISDIR(st.st_mode):
        tar.addfile(_info(member, tarfile.DIRTYPE, 0o755))
    elif stat.S_ISLNK(st.st_mode):
        # Spelled as Path.readlink spells it (`./a//b` as `a/b`): a capture of the same
        # install keeps its bytes.
        links[member] = str(Path(os.readlink(entry.name, dir_fd=directory)))
        tar.addfile(_info(member, tarfile.SYMTYPE, 0o777, link=links[member]))
    elif stat.S_ISREG(st.st_mode):
        mode = 0o755 if st.st_mode & 0o111 else 0o644
        with os.fdopen(fstree.open_file(directory, entry), "rb") as f:
            # addfile copies exactly `size` bytes and raises if the file shrank under it.
            tar.addfile(_info(member, tarfile.REGTYPE, mode, st.st_size), f)
    else:
        raise Uncapturable(f"{member} is not a file, a directory or a link")


MAX_HOPS = 40
"""Links followed in resolving one, as the kernel's ELOOP limit: a cycle is refused."""


def _link_out(links: Mapping[str, str], name: str) -> str | None:
    """The first link (member -> target) of a package tree that resolves outside its top
    directory `name`, else None.

    Resolved as the kernel would once the tree is unpacked, each link within another's
    path followed: `d/b -> ..` and `a -> d/b/../..` are each inside on paper, yet `a` is
    two levels above the package (`posixpath.normpath` would say inside).
    """
    for member, link in sorted(links.items()):
        parts = member.split("/")[:-1]
        pending = list(reversed(link.split("/")))
        hops = 0
        if link.startswith("/"):
            return member
        while pending:
            part = pending.pop()
            if part in ("", "."):
                continue
            if part == "..":
                if len(parts) <= 1:
                    return member
                parts.pop()
                continue
            parts.append(part)
            target = links.get("/".join(parts))
            if target is not None:
                hops += 1
                if hops > MAX_HOPS or target.startswith("/"):
                    return member
                parts.pop()
                pending.extend(reversed(target.split("/")))
    return None


def fits(env: Environment, artifact: Artifact) -> str | None:
    """Why `artifact` cannot be installed in R library `env`: not an R binary's name,
    another R major.minor or another platform; None when it can."""
    parsed = parse_file(artifact.file)
    if parsed is None:
        return f"{artifact.file} is not an R binary package"
    r, _, _, platform = parsed
    running = minor(env.interpreter)
    if env.kind != "r" or running is None:
        return "not an R library with a known R version"
    if r != running:
        return f"built for R {r}, this is R {running}: another R major.minor is never used"
    if env.platform and platform != env.platform:
        return f"built for {platform}, this R is {env.platform}"
    return None


def check_binary(path: Path, name: str, version: str, r: str | None) -> frozenset[str]:
    """The dependencies of a binary package tarball that holds only `name` `version`,
    built for R `r` (major.minor); else DescriptionError."""
    description = None
    # What unpacking it writes is the tree `capture` packs: one member per path (a second
    # one could swap a link between two writes), none beneath a link (written through it).
    seen: set[str] = set()
    links: dict[str, str] = {}
    try:
        with tarfile.open(path, "r:gz") as tar:
            for m in tar:
                # tarfile writes a directory as "d/" and strips that slash when reading only
                # in some versions: a long (GNU) name may keep it.
                entry = m.name.rstrip("/") if m.isdir() else m.name
                parts = entry.split("/")
                if entry.startswith("/") or {"..", ".", ""} & set(parts) or parts[0] != name:
                    raise DescriptionError(f"member {m.name!r} is outside {name}/")
                if entry in seen:
                    raise DescriptionError(f"{entry} is in the tarball more than once")
                seen.add(entry)
                if not (m.isfile() or m.isdir() or m.issym()):
                    raise DescriptionError(f"{m.name} is not a file, a directory or a link")
                if m.issym():
                    links[entry] = m.linkname
                if m.name == f"{name}/DESCRIPTION" and m.isfile():
                    member = tar.extractfile(m)
                    if member is not None:
                        description = member.read(MAX_DESCRIPTION)
    except (OSError, EOFError, tarfile.TarError) as e:
        raise DescriptionError(f"not a binary package tarball: {e}") from None
    out = _link_out(links, name)
    if out is not None:
        raise DescriptionError(f"{out} links out of the package ({links[out]})")
    for inside in sorted(seen):
        parts = inside.split("/")
        for i in range(1, len(parts)):
            if "/".join(parts[:i]) in links:
                raise DescriptionError(f"{inside} is beneath the link {'/'.join(parts[:i])}")
    if description is None:
        raise DescriptionError("no DESCRIPTION in the tarball")
    fields = parse_dcf(description.decode("utf-8", "replace"))
    found = (fields.get("Package"), fields.get("Version"))
    if found != (name, version):
        raise DescriptionError(f"the tarball holds {found[0]} {found[1]}")
    built, _ = _built(fields)
    if built is None:
        raise DescriptionError("a source package (no Built: field), not a binary one")
    if r is not None and built != r:
        raise DescriptionError(f"built for R {built}, this is R {r}")
    return frozenset(dependencies(fields))
