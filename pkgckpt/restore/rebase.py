"""Restore onto another image: the recorded delta of one Python environment read against
the image this container runs (DESIGN: invariant 10).

The API `restore/__init__.py` calls:

    needed(delta, env, image, live) -> bool
        Whether the record must be rebased: it is relative to another image (`Delta.image`
        differs from `image_identity` of this container's baseline, and that baseline is
        not the record's image with the user's packages in place, as one taken from a
        library that outlived its container is: `manifest.recorded_image`), holds
        entries recorded on other images too (`Delta.mixed`), or is relative to another
        interpreter (Python major.minor, implementation, ABI or platform tag; or the WHEEL
        tags of a recorded install not in place here that do not fit this one). Otherwise
        restore stays as it always was: exact pins, `--no-deps`, nothing read but the scan.
    rebase(delta, target, image, live, config) -> Rebase
        Every recorded entry classified (`Decision`), the consistency check done, and the
        pins the installer must keep (`Rebase.constraints`).
    unmet(target, beneath, names, ignore) -> dict[str, str]
        After the installs: the packages of `names` whose requirements what is installed
        does not satisfy, each with one of them.
    budget(within: Deadline | None) -> float
        When a plan's index reads end (a `time.monotonic()` time): `BUDGET` from now, or
        the end of `within` (the restore's own `--timeout`) if that comes first. It lives
        here, not in `indexmeta.py`, so that a plan that reads no index does not import
        the HTTP client.

Each entry, with `w` the version the image ships now (None: it ships none):

    added X v               w is None: install v;  w >= v: superseded;  w < v: install v
    changed a -> v, v >= a  w >= v: superseded;  otherwise install v
    changed a -> v, v < a   install v (the user chose the older version on purpose)
    changed a -> v, a not PEP 440 (an image's `1.1build1`): as v >= a
    removed X               w is None: nothing;  a package that stays or is restored
                            requires X: held back;  otherwise remove X
A `w` that is not PEP 440 is not >= v: the user's version is installed over it. A `v`
with a local label (`2.1.0+cpu`, a build the user picked) is superseded only by a `w`
with the same label.
An install already in place (the version and source recorded) is "nothing", unless a
requirement of it is not satisfied (`unmet`): then it is installed again. A superseded
entry that a planned install requires at the user's version (`pinned` requires
`upg==1.1`, the image caught up to 1.2) is installed after all, unless that breaks the
image (below).

Consistent means that after the plan every installed distribution's `Requires-Dist`
(markers evaluated for the target interpreter, with the extras other requirements ask
for) is satisfied. The check reads, without installing: the image's installed metadata
(`*.dist-info/METADATA` in the environment's library roots) and each planned package's
METADATA from its artifact when restore installs it from one (a captured wheel that fits,
at most `MAX_WHEEL` bytes, hash-checked: the installer puts that file in place first,
`--no-deps`, so its requirements are the ones that count), else from its wheel in a
`--find-links` directory whose tags fit the target interpreter, else, for a package from
an index, its METADATA from the indexes the
installer reads (`indexconf.py`: pkgckpt's settings, then pip's or uv's own configuration
files and variables; `indexmeta.py`: the PEP 658 metadata file, or a small wheel), used
only when every index offering it agrees (with extra indexes the installer may take the
file from any of them). Requirements, markers and versions are `packaging`'s; there is
no resolver here. Only what can hold something back is parsed: a requirement of a
distribution outside the plan when it names a package the plan installs or removes, one
of a planned package when it names a package that stays installed, and any asking for
extras (which decide what other requirements apply); a plain `NAME SPECIFIERS`
line is read by `SpecifierSet` alone (`_Simple`); markers are evaluated only where a
parsed requirement has one. A planned package whose metadata cannot be read (no index named, an
index down or not http(s), indexes that disagree, no fitting wheel, a hash mismatch) has
its own requirements unchecked, and its decision's reason says why: the installer,
which resolves with every untouched installed distribution pinned as a constraint (`-c`),
refuses a conflict there and the failure is reported per package. Then, with
`--on-conflict image` (the default):

- a planned install or removal that breaks an image package's requirement is held back,
  with the requirement that blocked it (`evaldep 1.0 held back: evalimg 2.0 (image)
  requires evaldep>=2.0`), and so is one that breaks a package installed outside the
  image that stays (`(installed)`), or a removal of what a planned install requires
  (`libold 1.0 held back: userapp 1.0 (restored) requires libold>=1.0`: the installer
  would fetch it back for that install, or the install in place would break);
- a planned install whose own requirement the image contradicts (the image ships the
  dependency at a version outside it) is held back too: installing it would break it.
- a planned install that requires a recorded install held back for want of a
  distribution for this interpreter (see below) is held back too, whatever
  `--on-conflict` says: the installer could not fetch that dependency either, and an
  artifact put in place first would stay with its requirement broken.
`--on-conflict user` holds nothing back: what would have been held back is carried out
anyway (`Rebase.forced`: installed with `--no-deps` after the other installs, so that the
user's version is the one left), and the requirements left broken are reported.

A dependency the image no longer ships (nothing installed under that name) is not a
conflict: the installer's resolver installs it, within the constraints.

On another interpreter, every recorded install is installed for it from the index or the
find-links (the old environment's files are not used; the installer picks a wheel whose
tags fit, or builds the sdist). With `--no-index`, an exact version for which the
find-links hold no fitting wheel and no sdist is held back with that reason; with an
index, the installer reports it. A recorded URL to a wheel whose tags do not fit the new
interpreter is held back. An install whose recorded build (its WHEEL tags) does not fit
this interpreter is read the same way, whatever the record's interpreter says: a daemon on
the new one records the environment's interpreter and keeps what restore could not
install there.

Files read here (METADATA in a site directory, a wheel in the find-links) may be
planted: reads are bounded, a name or version that is not valid is skipped, and nothing
read becomes an installer option (constraints are validated `name==version` lines).
"""

from __future__ import annotations

import functools
import os
import re
import time
from collections.abc import Collection, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal, TypeAlias

import msgspec

from ..config import Config
from ..manifest import (
    Delta,
    Environment,
    IndexSource,
    Package,
    UrlSource,
    image_identity,
    recorded_image,
    same_source,
    visible,
)
from ..validate import canonical, python_name, python_version
from ..wheeltags import TargetTags, wheel_tags
from .wheelmeta import MAX_METADATA, MAX_WHEEL

if TYPE_CHECKING:
    from packaging.requirements import Requirement
    from packaging.specifiers import SpecifierSet
    from packaging.version import Version

    from ..inventory import Target
    from ..runner import Deadline
    from .indexmeta import Found

ON_CONFLICT = ("image", "user")
BUDGET = 20.0
"""Seconds all of one plan's reads from the indexes may take together (`budget`)."""
_HEADER_CHUNK = 8192
"""An installed METADATA is read this much at a time, up to the end of its header."""

Action = Literal["install", "remove", "superseded", "held-back", "nothing"]
Part = Literal["added", "changed", "removed"]


class _Out(msgspec.Struct, frozen=True, kw_only=True):
    """Every field present in the JSON output (as the other plan types)."""


class Decision(_Out, frozen=True, kw_only=True):
    """What a rebase does with one recorded entry, and why."""

    name: str
    version: str
    """The recorded version (a removal: the image's version when it was removed)."""
    recorded: Part
    image: str | None = None
    """The version this image ships; None: none."""
    action: Action
    reason: str

    def render(self) -> str:
        if self.action == "held-back":
            return f"{self.name} {self.version} held back: {self.reason}"
        return f"{self.action:<10} {self.name} {self.version}: {self.reason}"


class Rebase(_Out, frozen=True, kw_only=True):
    """One environment's record read against this image."""

    image_old: str | None = None
    image_new: str
    mixed: bool = False
    """The record holds changes made on other images than `image_old` (`Delta.mixed`)."""
    python_old: str | None = None
    python_new: str | None = None
    abi_old: str | None = None
    """The interpreters' ABI tags (`Environment.abi`): a free-threaded build of the same
    version is another interpreter too."""
    abi_new: str | None = None
    decisions: tuple[Decision, ...] = ()
    constraints: tuple[str, ...] = ()
    """`name==version` of every installed distribution the plan leaves alone: the
    installer resolves dependencies within them."""
    forced: tuple[str, ...] = ()
    """`--on-conflict user`: the changes carried out although they break the image."""
    broken: tuple[str, ...] = ()
    """`--on-conflict user`: the requirements the user's versions leave unsatisfied."""

    def held_back(self) -> tuple[Decision, ...]:
        return tuple(d for d in self.decisions if d.action == "held-back")

    def on_its_image(self) -> bool:
        """Read against the image and interpreter the record names (a mixed record; an R
        library whose image needs what the user removed, `rimage`)."""
        same = self.image_old == self.image_new and self.abi_old == self.abi_new
        return same and _minor(self.python_old) == _minor(self.python_new)

    def heading(self) -> str:
        """What happened to the environment's record, said before `render`'s lines."""
        if not self.on_its_image():
            return "rebased onto a new image"
        if self.mixed:
            return "read against its image, as some changes were recorded on another"
        return "read against its image"

    def render(self) -> list[str]:
        image = _short(self.image_new)
        if self.image_old != self.image_new:
            image = f"{_short(self.image_old)} -> {image}"
        if self.mixed:
            image += " (some changes were recorded on another image)"
        lines = [f"  image {image}"]
        if _minor(self.python_old) != _minor(self.python_new):
            lines.append(f"  python {self.python_old} -> {self.python_new}")
        elif self.abi_old and self.abi_new and self.abi_old != self.abi_new:
            old, new = f"{self.python_old} ({self.abi_old})", f"{self.python_new} ({self.abi_new})"
            lines.append(f"  python {old} -> {new}")
        lines += [f"  {d.render()}" for d in self.decisions if d.action != "nothing"]
        lines += [f"  broken: {b} (--on-conflict user)" for b in self.broken]
        return lines


def _short(identity: str | None) -> str:
    return "unknown" if identity is None else identity.removeprefix("sha256:")[:12]


def _minor(version: str | None) -> str | None:
    return ".".join(version.split(".")[:2]) if version else None


def needed(
    delta: Delta,
    env: Environment,
    image: Sequence[Package],
    live: Mapping[str, Package],
    *,
    taken_here: bool = False,
) -> bool:
    """Whether `delta` must be rebased onto this image and interpreter (see the module);
    `live`: the packages installed here, by canonical name; `taken_here`: `image` is from
    this container's own baseline (`recorded_image`)."""
    if delta.mixed or new_interpreter(delta.env, env):
        return True
    if (
        delta.image is not None
        and delta.image != image_identity(image)
        and recorded_image(image, delta, taken_here=taken_here) is None
    ):
        return True
    tags: TargetTags | None = None
    for p in (*delta.added, *delta.changed):
        here = live.get(canonical(p.name))
        # Installed here at its version: built for this interpreter, whatever its record
        # says. So a no-op restore reads no tags (packaging.tags: ~10 ms of imports).
        if here is not None and here.version == p.version:
            continue
        tags = tags or TargetTags(env)
        if built_elsewhere(p, tags):
            return True
    return False


_PURE = frozenset({"py3-none-any", "py2.py3-none-any"})
"""WHEEL tags of a build that installs on any Python 3."""


def built_elsewhere(p: Package, tags: TargetTags) -> bool:
    """The recorded build of `p` (its WHEEL tags) does not install on this interpreter: it
    was recorded on another one. The record's own interpreter may not say so any more: a
    daemon on the new one records the environment as it finds it, and keeps an entry
    restore could not install there (held back) as it was recorded."""
    # A pure wheel installs on every Python 3, and most of what users install is one: it
    # is known without packaging.tags (~10 ms of imports on every new container's restore).
    if not p.tags or not _PURE.isdisjoint(p.tags):
        return False
    from packaging.tags import Tag, parse_tag

    found: list[Tag] = []
    for line in p.tags:
        try:
            found += parse_tag(line)
        except ValueError:
            continue
    return bool(found) and tags.rank(found) is None


def new_interpreter(old: Environment, new: Environment) -> bool:
    """Another Python minor version, implementation, ABI (a free-threaded build of the
    same version) or platform (a field not known on either side is taken as the same)."""
    for a, b in (
        (old.implementation, new.implementation),
        (old.abi, new.abi),
        (old.platform, new.platform),
    ):
        if a and b and a != b:
            return True
    if old.interpreter is None or new.interpreter is None:
        return False
    return _minor(old.interpreter) != _minor(new.interpreter)


# -- versions, metadata and markers ------------------------------------------------------


def _version(text: str | None) -> Version | None:
    from packaging.version import InvalidVersion, Version

    if text is None:
        return None
    try:
        return Version(text)
    except InvalidVersion:
        return None


def _at_least(have: str | None, want: str) -> bool:
    """`have` >= `want`; unorderable versions are not (the user's choice wins)."""
    a, b = _version(have), _version(want)
    return a is not None and b is not None and a >= b


def _same_local(have: str, want: str) -> bool:
    """`have` is a build of `want`'s local label, or `want` has none."""
    a, b = _version(have), _version(want)
    return b is None or b.local is None or (a is not None and a.local == b.local)


class _Dist:
    """One distribution of the state after the plan, as the check needs it."""

    def __init__(self, name: str, version: str, origin: str, requires: list[str] | None) -> None:
        self.name = name
        self.version = version
        self.origin = origin
        """"image", "user" (installed, outside the plan) or "planned"."""
        self.requires = requires
        """Its Requires-Dist lines; None: not known (no metadata read)."""


def _requires(text: str) -> tuple[str | None, str | None, list[str]]:
    """Name, Version and every Requires-Dist of a METADATA file's header (RFC 822 style:
    it ends at the first empty line; an indented line continues the one before). The
    email package reads it too, at ~10 ms of imports that a restore would pay for three
    fields."""
    fields: list[list[str]] = []
    for line in text.splitlines():
        if not line.strip():
            break
        if line[0] in " \t" and fields:
            fields[-1][1] += " " + line.strip()
            continue
        key, sep, value = line.partition(":")
        if sep:
            fields.append([key.strip().lower(), value.strip()])
    found = {k: v for k, v in reversed(fields)}
    requires = [v for k, v in fields if k == "requires-dist"]
    return found.get("name"), found.get("version"), requires


def _read_header(name: str, dir_fd: int) -> str | None:
    """The header of the METADATA file `name` (under `dir_fd`): read in chunks up to its
    first empty line, so that a long description (often most of the file) is not read.
    None: unreadable, a symlink, or no header end within `MAX_METADATA` bytes."""
    try:
        flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK
        fd = os.open(name, flags, dir_fd=dir_fd)
    except OSError:
        return None
    data = bytearray()
    try:
        while len(data) <= MAX_METADATA:
            chunk = os.read(fd, _HEADER_CHUNK)
            if not chunk:
                break
            # Searched from just before the chunk: an end split across two reads counts.
            start = max(0, len(data) - 2)
            data += chunk
            end = _header_end(data, start)
            if end is not None:
                return None if end > MAX_METADATA else data[:end].decode("utf-8", "replace")
    except OSError:
        return None
    finally:
        os.close(fd)
    if len(data) > MAX_METADATA:
        return None
    return data.decode("utf-8", "replace")


def _header_end(data: bytearray, start: int) -> int | None:
    """The end of the first line, at or after `start`, that an empty line follows (where
    `_requires` stops reading); None: none yet."""
    ends = [i for i in (data.find(b"\n\n", start), data.find(b"\n\r\n", start)) if i >= 0]
    return min(ends) + 1 if ends else None


def installed_metadata(roots: Iterable[Path]) -> dict[str, tuple[str, list[str]]]:
    """canonical name -> (version, Requires-Dist) of the `.dist-info`s in `roots`, first
    root first (an `.egg-info`'s requirements are not read: its name still counts)."""
    found: dict[str, tuple[str, list[str]]] = {}
    for root in roots:
        try:
            dir_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            # By name: a root's METADATA files are opened relative to the one descriptor.
            names = os.listdir(dir_fd)  # noqa: PTH208
            entries = sorted(e for e in names if e.endswith(".dist-info"))
            for entry in entries:
                text = _read_header(f"{entry}/METADATA", dir_fd)
                if text is None:
                    continue
                name, version, requires = _requires(text)
                if not name or not version or not python_name(name):
                    continue
                found.setdefault(canonical(name), (version, requires))
        except OSError:
            continue
        finally:
            os.close(dir_fd)
    return found


def markers_for(env: Environment) -> dict[str, str]:
    """PEP 508 marker values of the target interpreter: what `env` says, the rest of this
    machine (the same container)."""
    from packaging.markers import default_environment

    values: dict[str, str] = {k: str(v) for k, v in default_environment().items()}
    if env.interpreter:
        values["python_full_version"] = env.interpreter
        values["python_version"] = _minor(env.interpreter) or values["python_version"]
        values["implementation_version"] = env.interpreter
    if env.implementation:
        values["implementation_name"] = env.implementation
        values["platform_python_implementation"] = {
            "cpython": "CPython",
            "pypy": "PyPy",
        }.get(env.implementation, env.implementation)
    return values


class _Wheels:
    """The find-links directories' distributions: wheel METADATA without installing.

    Listed once and grouped by the name a file name starts with, so that a plan of n
    packages parses only each package's own files, not n times the whole directory.
    """

    def __init__(self, links: Sequence[str], tags: TargetTags) -> None:
        local = (_local(link) for link in links)
        self.dirs = [Path(path) for path in local if path is not None]
        self.tags = tags
        self._wheels: dict[str, list[Path]] | None = None
        self._sdists: dict[str, list[str]] = {}
        self._best: dict[tuple[str, str], Path | None] = {}
        self._requires: dict[tuple[str, str], list[str] | None] = {}

    def _index(self) -> dict[str, list[Path]]:
        if self._wheels is None:
            self._wheels = {}
            for d in self.dirs:
                try:
                    entries = sorted(e.name for e in os.scandir(d))
                except OSError:
                    continue
                for name in entries:
                    if name.endswith(".whl"):
                        self._wheels.setdefault(canonical(name.split("-")[0]), []).append(d / name)
                    for suffix in (".tar.gz", ".zip"):
                        if name.endswith(suffix):
                            stem, _, v = name.removesuffix(suffix).rpartition("-")
                            self._sdists.setdefault(canonical(stem), []).append(v)
        return self._wheels

    def best(self, name: str, version: str) -> Path | None:
        """The best fitting wheel of `name==version` in the find-links; None: none."""
        key = (canonical(name), version)
        if key not in self._best:
            self._best[key] = self._find(*key)
        return self._best[key]

    def _find(self, name: str, version: str) -> Path | None:
        candidates = self._index().get(name, ())
        if not candidates:
            return None
        from packaging.utils import InvalidWheelFilename, parse_wheel_filename

        want = _version(version)
        best: tuple[int, Path] | None = None
        for path in candidates:
            try:
                wname, wversion, _, wtags = parse_wheel_filename(path.name)
            except InvalidWheelFilename:
                continue
            if wname != name or wversion != want:
                continue
            rank = self.tags.rank(wtags)
            if rank is not None and (best is None or rank < best[0]):
                best = (rank, path)
        return best[1] if best else None

    def sdist(self, name: str, version: str) -> bool:
        self._index()
        want = _version(version)
        return any(_version(v) == want for v in self._sdists.get(canonical(name), ()))

    def learn(self, name: str, version: str, requires: list[str]) -> None:
        """`name==version`'s requirements, read elsewhere (its artifact, the index)."""
        self._requires[(canonical(name), version)] = requires

    def known(self, name: str, version: str) -> bool:
        """Whether `learn` was told `name==version`'s requirements."""
        return self._requires.get((canonical(name), version)) is not None

    def requires(self, name: str, version: str) -> list[str] | None:
        key = (canonical(name), version)
        if key not in self._requires:
            wheel = self.best(name, version)
            self._requires[key] = None if wheel is None else wheel_requires(wheel)
        return self._requires[key]


def _local(link: str) -> str | None:
    if link.startswith("file://"):
        from .python import local_path

        path = local_path(link)
        return str(path) if path is not None else None
    return None if "://" in link else link


def wheel_requires(wheel: Path) -> list[str] | None:
    """The Requires-Dist of a wheel, read from its `.dist-info/METADATA` (None: unreadable)."""
    from .wheelmeta import metadata

    text = metadata(wheel)
    return None if text is None else _requires(text)[2]


def url_tags_fit(url: str, tags: TargetTags) -> bool:
    """A recorded wheel URL installs on this interpreter (any non-wheel URL may: it builds)."""
    wtags = wheel_tags(url.rsplit("/", 1)[-1].split("#", 1)[0])
    return wtags is None or tags.rank(wtags) is not None


# -- the consistency check ---------------------------------------------------------------


class _Simple:
    """A requirement `NAME SPECIFIERS` (no extras, URL or marker), read by packaging's
    `SpecifierSet` without its requirement grammar. `packaging.requirements` imports the
    marker parser, whose tokenizer compiles ~20 regular expressions at import (about a
    fifth of what a rebase adds to a restore: benchmarks/RESULTS.md, issue 10), and most
    requirement lines have no marker.
    `_parse` takes a line this way only when every character of its specifiers is one
    the grammar's specifier list accepts; a test holds the result to
    `Requirement(line)`'s (name, specifiers, text)."""

    __slots__ = ("name", "specifier")
    extras: frozenset[str] = frozenset()
    marker: None = None

    def __init__(self, name: str, specifier: SpecifierSet) -> None:
        self.name = name
        self.specifier = specifier

    def __str__(self) -> str:
        return f"{self.name}{self.specifier}"


class _Through:
    """A requirement of a distribution's extra (`x==2.0; extra == "fast"` of `lib`), which
    a planned package asking for `lib[fast]` brings in: that package's requirement too."""

    __slots__ = ("_text", "name", "specifier")
    extras: frozenset[str] = frozenset()
    marker: None = None

    def __init__(self, req: Requirement | _Simple | _Through, through: str) -> None:
        self.name: str = req.name
        self.specifier: SpecifierSet = req.specifier
        self._text = f"{req.name}{req.specifier} (through {through})"

    def __str__(self) -> str:
        return self._text


_Req: TypeAlias = "Requirement | _Simple | _Through"


@functools.cache
def _simple_line() -> re.Pattern[str]:
    # A name, then what a specifier list may hold less `;()[]@`: a line with a marker,
    # extras, a URL or parentheses is the grammar's.
    return re.compile(
        r"[ \t]*([A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?)[ \t]*"
        r"([\t\x20-\x27\x2a-\x3a\x3c-\x3f\x41-\x5a\x5c\x5e-\x7e]*)",
        re.ASCII,
    )


@functools.cache
def _leading_name() -> re.Pattern[str]:
    return re.compile(r"[ \t]*([A-Za-z0-9._-]*)", re.ASCII)


def _named(line: str) -> str:
    """The canonical name a requirement line starts with, read without parsing it: when
    `Requirement(line)` parses, its name (a test holds the two together)."""
    match = _leading_name().match(line)
    return canonical(match.group(1)) if match else ""


def _parse(line: str) -> _Req | None:
    """`line` as packaging reads it (None: not a valid requirement)."""
    simple = _simple_line().fullmatch(line)
    if simple is not None:
        name, specifiers = simple.groups()
        # An empty item between commas is left to the grammar: SpecifierSet skips it, the
        # grammar refuses it (or, in newer packaging, accepts one at the end).
        if not specifiers.strip(" \t") or all(i.strip(" \t") for i in specifiers.split(",")):
            from packaging.specifiers import InvalidSpecifier, SpecifierSet

            try:
                return _Simple(name, SpecifierSet(specifiers))
            except InvalidSpecifier:
                pass
    from packaging.requirements import InvalidRequirement, Requirement

    try:
        return Requirement(line)
    except InvalidRequirement:
        return None


class _Check:
    """The consistency check of one plan: each Requires-Dist line parsed once (the check
    runs again after each round of holding back), only where its answer can count, and
    the target's marker values computed at the first marker."""

    def __init__(self, env: Environment) -> None:
        self._env = env
        self._markers: dict[str, str] | None = None
        self._parsed: dict[str, _Req | None] = {}

    def _requirements(self, lines: list[str], names: Collection[str] | None) -> list[_Req]:
        """The lines that name one of `names` (None: any) or ask for extras (which decide
        what other lines apply), parsed."""
        out = []
        for line in lines:
            if names is not None and "[" not in line and _named(line) not in names:
                continue
            if line not in self._parsed:
                self._parsed[line] = _parse(line)
            found = self._parsed[line]
            if found is not None:
                out.append(found)
        return out

    def _applies(self, r: _Req, extra: str) -> bool:
        if r.marker is None:
            return True
        if self._markers is None:
            self._markers = markers_for(self._env)
        return r.marker.evaluate({**self._markers, "extra": extra})

    def violations(
        self,
        state: Mapping[str, _Dist],
        touched: Collection[str] | None = None,
        kept: Collection[str] | None = None,
    ) -> list[tuple[_Dist, _Req]]:
        """Every (distribution, requirement) of `state` whose requirement is not
        satisfied, of those read. With `touched` (what the plan installs or removes), a
        distribution outside the plan has only its requirements on those read: what its
        others say blames nothing the plan does, and an image has thousands. With `kept`
        (what stays installed outside the plan), a planned distribution has only its
        requirements on those read: a dependency missing altogether, or planned too, is
        the installer's to resolve. Lines asking for extras are always read."""
        reqs = {
            n: self._requirements(d.requires, kept if d.origin == "planned" else touched)
            for n, d in state.items()
            if d.requires is not None
        }
        extras: dict[str, set[str]] = {}
        for rs in reqs.values():
            for r in rs:
                if r.extras and self._applies(r, ""):
                    extras.setdefault(canonical(r.name), set()).update(r.extras)
        out = []
        for name, rs in reqs.items():
            asked = ["", *sorted(extras.get(name, ()))]
            for r in rs:
                if r.marker is not None and not any(self._applies(r, e) for e in asked):
                    continue
                if not _satisfied(r, state):
                    out.append((state[name], r))
        if touched is not None:
            out += self._through(state, reqs)
        return out

    def _through(
        self, state: Mapping[str, _Dist], reqs: Mapping[str, list[_Req]]
    ) -> list[tuple[_Dist, _Req]]:
        """What a planned package needs through the extras it asks (`lib[fast]` of the
        image's `lib`, whose requirements were read only on what the plan touches) and
        the extras those ask in turn (of a planned distribution too): each requirement
        that only such an extra brings in, unsatisfied, blamed on the planned package."""
        out: list[tuple[_Dist, _Req]] = []
        for name, rs in reqs.items():
            if state[name].origin != "planned":
                continue
            # (distribution, extra, how the planned package reaches it), depth first: an
            # extra's requirement may ask for another distribution's extra in turn.
            todo = [
                (canonical(r.name), e, "")
                for r in rs
                if r.extras and self._applies(r, "")
                for e in sorted(r.extras, reverse=True)
            ]
            seen: set[tuple[str, str]] = set()
            while todo:
                key, e, way = todo.pop()
                other = state.get(key)
                if (key, e) in seen or other is None or other.requires is None:
                    continue
                seen.add((key, e))
                # A planned one too: the plan reads its lines of the extras asked plainly,
                # not of one asked only inside another extra.
                way += f"{' -> ' if way else ''}{other.name}[{e}]"
                for q in self._requirements(other.requires, None):
                    if q.marker is None or self._applies(q, "") or not self._applies(q, e):
                        continue
                    if not _satisfied(q, state):
                        out.append((state[name], _Through(q, way)))
                    todo += [(canonical(q.name), x, way) for x in sorted(q.extras, reverse=True)]
        return out


def _satisfied(r: _Req, state: Mapping[str, _Dist]) -> bool:
    have = state.get(canonical(r.name))
    version = _version(have.version) if have is not None else None
    return version is not None and r.specifier.contains(version, True)


def _roots(target: Target, beneath: Target | None) -> tuple[Path, ...]:
    """Where the environment's installed metadata is read: its own library roots first,
    then those of the prefix `beneath` a user site."""
    return (*target.roots, *(beneath.roots if beneath else ()))


def unmet(
    target: Target,
    beneath: Target | None,
    names: Collection[str],
    ignore: Collection[str] = (),
) -> dict[str, str]:
    """canonical name -> a Requires-Dist naming a distribution that is not installed in
    `target` (read as `rebase` reads it, with the prefix `beneath` it), for each installed
    distribution of `names` (canonical) that has one; requirements naming a package of
    `ignore` (canonical) are not read. After a restore onto a new image, a package in
    place whose dependencies are not is not restored: the installer may have put it there
    in an earlier call than the one that failed to fetch them. A dependency installed at
    a version the requirement excludes is not missing: the image put it there, or the
    user's `--on-conflict user`, and installing the package again changes neither."""
    return _unmet(target.env, installed_metadata(_roots(target, beneath)), names, ignore)


def _unmet(
    env: Environment,
    meta: Mapping[str, tuple[str, list[str]]],
    names: Collection[str],
    ignore: Collection[str] = (),
) -> dict[str, str]:
    """`unmet` on the metadata `installed_metadata` read."""
    state = {
        key: _Dist(key, version, "planned", requires if key in names else None)
        for key, (version, requires) in meta.items()
    }
    out: dict[str, str] = {}
    for d, r in _Check(env).violations(state):
        if canonical(r.name) not in ignore and canonical(r.name) not in state:
            out.setdefault(d.name, visible(str(r)))
    return out


def budget(within: Deadline | None = None) -> float:
    """See the module."""
    left = None if within is None else within.remaining()
    return time.monotonic() + (BUDGET if left is None else min(BUDGET, left))


# -- the plan ------------------------------------------------------------------------------


def _classify(
    part: Part, p: Package, image: Package | None, live: Package | None
) -> tuple[Action, str]:
    w = image.version if image is not None else None
    if part == "removed":
        if live is None:
            return "nothing", "the image ships none" if w is None else "not installed here"
        return "remove", "removed by the user"
    # The image ships the user's version or a newer one: it caught up. The same version
    # from another source (a VCS checkout) is still the user's to reinstall, and so is a
    # build the user picked by its local label (`2.1.0+cpu`): `2.1.0+cu118`, or `2.2.0`,
    # is another build, not the user's caught up (as `==2.1.0+cpu` would say).
    caught_up = (
        w is not None
        and _at_least(w, p.version)
        and (_version(w) != _version(p.version) or isinstance(p.source, IndexSource))
        and _same_local(w, p.version)
    )
    old = p.replaced
    # `added` with `replaced`: a user site's copy over its prefix's (checkpoint._shadowing).
    # An image's version packaging cannot read (`1.1build1`) was left for an upgrade, as the
    # checkpoint's history calls it (`manifest._direction`) and packaging's LegacyVersion
    # sorted it, before every PEP 440 version: a newer image's release supersedes it.
    downgrade = old is not None and _version(old) is not None and not _at_least(p.version, old)
    in_place = (
        live is not None
        and _version(live.version) == _version(p.version)
        and same_source(p.source, live.source)
    )
    # In place over the image's own version: an earlier restore brought it back for a
    # package that requires it (`_revive`), and it is not superseded here.
    over_image = in_place and live is not None and _version(live.version) != _version(w)
    if caught_up and not downgrade and not over_image:
        return "superseded", f"the image ships {w}"
    if in_place:
        return "nothing", "in place"
    if part == "added":
        return "install", "added by the user" + (f"; the image ships {w}" if w else "")
    if w is None:
        return "install", "changed by the user; the image ships none now"
    return "install", f"changed by the user ({p.replaced} -> {p.version}); the image ships {w}"


def rebase(
    delta: Delta,
    target: Target,
    image: Sequence[Package],
    live: Mapping[str, Package],
    config: Config,
    beneath: Target | None = None,
    *,
    taken_here: bool = False,
    ask_index: bool = True,
    index_until: float | None = None,
) -> Rebase:
    """`delta` read against `image` (this container's baseline of the environment;
    `taken_here`: taken by this container, `needed`) and `live` (installed now, by
    canonical name): see the module docstring. A user site is
    read with the prefix `beneath` it: its installed packages are in `live` and in
    `image`, its metadata is read after the user site's own. Without `ask_index` no
    index and no artifact is read (status answers at once, whatever the index or the
    store does). `index_until`: when its index reads end (`budget`; by default
    its budget from when they start): a plan of several environments passes one for all."""
    env = target.env
    image = recorded_image(image, delta, taken_here=taken_here) or image
    images = {canonical(p.name): p for p in image}
    moved = new_interpreter(delta.env, env)
    tags = TargetTags(env)
    wheels = _Wheels(config.find_links, tags)
    entries: list[tuple[Part, Package]] = [
        *(("added", p) for p in delta.added),
        *(("changed", p) for p in delta.changed),
        *(("removed", p) for p in delta.removed),
    ]
    meta = installed_metadata(_roots(target, beneath))
    # In place is not restored while a requirement is missing: an earlier restore put it
    # there and failed to fetch its dependencies (see `unmet`); it is installed again.
    # Not for a requirement on what the user removed: the install would fetch it back.
    lacking = _unmet(
        env,
        meta,
        {canonical(p.name) for part, p in entries if part != "removed"},
        {canonical(p.name) for p in delta.removed},
    )
    decided: dict[str, Decision] = {}
    # Held back for want of a distribution for this interpreter.
    unavailable: set[str] = set()
    for part, p in entries:
        key = canonical(p.name)
        image_p = images.get(key)
        action, reason = _classify(part, p, image_p, live.get(key))
        if action == "nothing" and part != "removed" and key in lacking:
            action = "install"
            reason = f"in place, but its requirement {lacking[key]} is not satisfied"
        if action == "install" and (moved or built_elsewhere(p, tags)):
            why = _unavailable(p, tags, wheels, config)
            if why is not None:
                action, reason = "held-back", why
                unavailable.add(key)
        decided[key] = Decision(
            name=p.name,
            version=p.version,
            recorded=part,
            image=image_p.version if image_p is not None else None,
            action=action,
            reason=reason,
        )
    recorded_by_key = {canonical(p.name): p for _, p in entries}
    if ask_index:
        _from_artifacts(decided, recorded_by_key, wheels, config, env)
    _from_index(decided, recorded_by_key, wheels, config, env, tags, ask_index, index_until)
    for key, d in decided.items():
        wheel = wheels.best(d.name, d.version) if d.action == "install" else None
        if wheel is not None and wheels.requires(d.name, d.version) is None:
            # As for an index's wheel: the plan stands, and says what it could not check.
            reason = f"{d.reason}; its requirements are left to the installer: "
            reason += f"{wheel.name} in the find-links holds no readable METADATA"
            decided[key] = msgspec.structs.replace(d, reason=visible(reason))
    user = config.on_conflict == "user"
    check = _Check(env)

    def state() -> dict[str, _Dist]:
        out: dict[str, _Dist] = {}
        for key, p in live.items():
            have = meta.get(key)
            requires = have[1] if have is not None and have[0] == p.version else None
            origin = "image" if key in images and images[key].version == p.version else "user"
            out[key] = _Dist(p.name, p.version, origin, requires)
        for key, d in decided.items():
            if d.action == "remove":
                out.pop(key, None)
            elif d.action == "install":
                p = recorded_by_key[key]
                out[key] = _Dist(p.name, p.version, "planned", wheels.requires(p.name, p.version))
        return out

    def touched() -> set[str]:
        return {k for k, d in decided.items() if d.action in ("install", "remove")}

    planned = dict(decided)
    # Held back with a dependency that has no distribution here: not the image's doing,
    # so `--on-conflict user` does not force them (they could not work).
    cascaded: set[str] = set()
    while True:
        now = state()
        kept = {k for k, d in now.items() if d.origin != "planned"}
        # A recorded install with no distribution for this interpreter is no dependency
        # the installer can fetch either: what requires it is held back with it.
        absent = {k for k in unavailable if k not in now}
        # A recorded install held back for a conflict, not installed here: what requires
        # it is held back with it, as the installer would resolve it against the image
        # and fail; but forced with it by `--on-conflict user` (not `cascaded`).
        withheld = {
            k for k, d in decided.items() if d.action == "held-back" and k not in now
        } - absent
        # A planned install needing what the plan removes: the installer would fetch it
        # back, and the removal would fail (or, once the install is in place, break it).
        removing = {k for k, d in decided.items() if d.action == "remove"}
        found = check.violations(now, touched(), kept | absent | withheld | removing)
        revived = _revive(found, decided)
        if revived:
            decided.update(revived)
            planned.update(revived)  # what `--on-conflict user` forces back
            continue
        cascade = _lacking(found, decided, absent)
        cascaded |= cascade.keys()
        held = {**_lacking(found, decided, withheld), **cascade, **_hold_back(found, decided, now)}
        if not held:
            break
        decided.update(held)
    forced: list[str] = []
    broken: list[str] = []
    if user:
        for key, d in decided.items():
            if (
                d.action == "held-back"
                and planned[key].action != "held-back"
                and key not in cascaded
            ):
                forced.append(d.name)
                decided[key] = msgspec.structs.replace(
                    planned[key], reason=f"--on-conflict user, although {d.reason}"
                )
        mine = {canonical(n) for n in forced}
        broken = [
            visible(f"{d.name} {d.version} requires {r}")
            for d, r in check.violations(state(), touched())
            if canonical(r.name) in mine or canonical(d.name) in mine
        ]
    keep = {k for k, d in decided.items() if d.action in ("install", "remove")}
    constraints = tuple(
        sorted(
            f"{p.name}=={p.version}"
            for k, p in live.items()
            if k not in keep and python_name(p.name) and python_version(p.version)
        )
    )
    return Rebase(
        image_old=delta.image,
        mixed=delta.mixed,
        image_new=image_identity(image),
        python_old=delta.env.interpreter,
        python_new=env.interpreter,
        abi_old=delta.env.abi,
        abi_new=env.abi,
        decisions=tuple(decided[k] for k in sorted(decided)),
        constraints=constraints,
        forced=tuple(forced),
        broken=tuple(broken),
    )


def _from_artifacts(
    decided: Mapping[str, Decision],
    recorded: Mapping[str, Package],
    wheels: _Wheels,
    config: Config,
    env: Environment,
) -> None:
    """Teach `wheels` the requirements of each planned install that restore puts in place
    from its artifact, read from that file: the installer installs it first (`--no-deps`),
    whatever the find-links or an index offer of the same version, so its METADATA is the
    one that counts. Only an artifact that fits the interpreter and is at most `MAX_WHEEL`
    bytes is read, whole, and only when it hashes to the manifest's sha256; any other is
    left as restore leaves it (it falls back to its source, which the find-links or the
    index describe)."""
    planned = [
        recorded[key]
        for key, d in decided.items()
        if d.action == "install" and recorded[key].artifact is not None
    ]
    if not planned:
        return
    from ..artifacts import fits, read
    from ..errors import PkgckptError
    from ..store import open_store
    from .wheelmeta import metadata

    try:
        store = open_store(config)
    except PkgckptError:
        return
    for p in planned:
        if fits(env, p) is not None:
            continue
        try:
            text = metadata(read(store, config, p, MAX_WHEEL))
        except PkgckptError:
            continue
        name, version, requires = _requires(text or "")
        same = name is not None and canonical(name) == canonical(p.name)
        if same and _version(version) == _version(p.version):
            wheels.learn(p.name, p.version, requires)


def _from_index(
    decided: dict[str, Decision],
    recorded: Mapping[str, Package],
    wheels: _Wheels,
    config: Config,
    env: Environment,
    tags: TargetTags,
    ask_index: bool,
    until: float | None,
) -> None:
    """Teach `wheels` the requirements of each planned install from an index that the
    find-links do not hold, read from the indexes its installer reads; where they cannot
    be read, or the indexes disagree, say so in the decision's reason (the installer then
    decides)."""
    wanted = {
        key: recorded[key]
        for key, d in decided.items()
        if d.action == "install"
        and isinstance(recorded[key].source, IndexSource)
        and wheels.best(d.name, d.version) is None
        and not wheels.known(d.name, d.version)
    }
    if not wanted:
        return
    urls: tuple[str, ...] = ()
    none: str | None
    if not ask_index:
        none = "status reads no index (restore --dry-run does)"
    elif config.no_index:
        none = "no wheel of it in the find-links"
    else:
        from .indexconf import indexes
        from .indexmeta import readable

        urls, none = readable(indexes(config, env))
    answers: list[tuple[str, dict[tuple[str, str], Found]]] = []
    if urls:
        from .indexmeta import IndexMetadata

        until = budget() if until is None else until
        asked = [(p.name, p.version) for p in wanted.values()]
        answers = [(url, IndexMetadata(url, tags, until).fetch(asked)) for url in urls]
    for key, p in wanted.items():
        found: dict[tuple[str, ...], str] = {}
        whys: list[str] = [none] if none else []
        for url, answer in answers:
            text, why = answer.get((key, p.version), (None, "not a valid name or version"))
            if text is not None:
                name, version, requires = _requires(text)
                if (
                    name is not None
                    and canonical(name) == key
                    and _version(version) == _version(p.version)
                ):
                    found.setdefault(tuple(sorted(requires)), url)
                    continue
                why = "its metadata on the index names another distribution"
            if why is not None and why not in whys:
                whys.append(why)
        if len(found) == 1:
            wheels.learn(p.name, p.version, list(next(iter(found))))
            continue
        if found:
            # Dependency confusion: the installer takes either file, so neither says what
            # gets installed.
            from .indexmeta import shown

            where = ", ".join(shown(url) for url in found.values())
            whys = [f"the indexes offer it with different requirements ({where})"]
        reason = f"{decided[key].reason}; its requirements are left to the installer: "
        reason += "; ".join(whys)
        decided[key] = msgspec.structs.replace(decided[key], reason=visible(reason))


_OWNER = {"image": "image", "user": "installed", "planned": "restored"}
"""How a held-back reason names the distribution whose requirement blocked it."""


def _hold_back(
    found: list[tuple[_Dist, _Req]],
    decided: Mapping[str, Decision],
    state: Mapping[str, _Dist],
) -> dict[str, Decision]:
    """The planned changes that `found` (unsatisfied requirements) blame, held back."""
    held: dict[str, Decision] = {}
    for dist, req in found:
        needed_key = canonical(req.name)
        planned = decided.get(needed_key)
        there = state.get(needed_key)
        action = planned.action if planned else None
        if action == "remove" or (action == "install" and dist.origin != "planned"):
            # What stays installed, or is restored, keeps what it requires.
            owner = _OWNER[dist.origin]
            blame, why = needed_key, f"{dist.name} {dist.version} ({owner}) requires {req}"
        elif dist.origin == "planned" and there is not None and there.origin != "planned":
            # The plan's own package, contradicted by what stays installed (a dependency
            # missing altogether is the installer's to fetch, not a conflict).
            blame = canonical(dist.name)
            why = f"requires {req}, and {there.name} {there.version} ({there.origin}) stays"
        else:
            continue
        if blame not in held:
            reason = visible(why)
            held[blame] = msgspec.structs.replace(decided[blame], action="held-back", reason=reason)
    return held


def _revive(
    found: list[tuple[_Dist, _Req]], decided: Mapping[str, Decision]
) -> dict[str, Decision]:
    """The superseded entries that a planned install requires at the user's version,
    installed after all: the image caught up with the version, not with what the user's
    own package pins. The next round holds one back if the image needs its version."""
    revived: dict[str, Decision] = {}
    for dist, req in found:
        key = canonical(req.name)
        d = decided.get(key)
        if dist.origin != "planned" or d is None or d.action != "superseded" or key in revived:
            continue
        version = _version(d.version)
        if version is not None and req.specifier.contains(version, True):
            why = f"{dist.name} {dist.version} requires {req}; the image ships {d.image}"
            revived[key] = msgspec.structs.replace(d, action="install", reason=visible(why))
    return revived


def _lacking(
    found: list[tuple[_Dist, _Req]], decided: Mapping[str, Decision], absent: Collection[str]
) -> dict[str, Decision]:
    """The planned installs of `found` that require a package of `absent` (recorded, held
    back, not installed here: for want of a distribution for this interpreter, or for a
    conflict), held back: the installer could not fetch that either, and an artifact put
    in place first would stay with its requirement broken."""
    held: dict[str, Decision] = {}
    for dist, req in found:
        needed_key, blame = canonical(req.name), canonical(dist.name)
        if dist.origin != "planned" or needed_key not in absent or blame in held:
            continue
        d = decided[needed_key]
        why = visible(f"requires {req}, and {d.name} {d.version} is held back")
        held[blame] = msgspec.structs.replace(decided[blame], action="held-back", reason=why)
    return held


def _unavailable(p: Package, tags: TargetTags, wheels: _Wheels, config: Config) -> str | None:
    """Why `p` cannot be installed for the new interpreter, when that is known here."""
    fits = p.artifact is not None and url_tags_fit(p.artifact.file, tags)
    if fits and p.artifact is not None and p.artifact.file.endswith(".whl"):
        return None  # its captured wheel fits: restore installs from it (artifacts)
    if isinstance(p.source, UrlSource) and not url_tags_fit(p.source.url, tags):
        return "its recorded wheel does not fit this interpreter (no sdist recorded)"
    if (
        config.no_index
        and isinstance(p.source, IndexSource)
        and wheels.best(p.name, p.version) is None
        and not wheels.sdist(p.name, p.version)
    ):
        return (
            f"no distribution of {p.name} {p.version} for this interpreter "
            f"({tags.full()[0]}): no fitting wheel and no sdist in the find-links"
        )
    return None
