"""The manifest and the baseline: msgspec structs, their JSON encoding, and `diff()`.

No I/O here: `store.py` reads and writes the bytes, the scanners fill the structs.

On disk a manifest is an envelope whose `checksum` covers the exact bytes of `body`
(kept as `msgspec.Raw` when decoding, so a newer writer's extra fields still verify):

    {"schema": 1, "generation": 7, "writer": {...}, "time": "...",
     "checksum": "sha256:...", "body": {"environments": [...]}}

Compatibility: every field added after schema 1 must have a default, so an older
reader reads a newer manifest; a change that an older reader must not misread bumps
`SCHEMA` (the major version), and readers refuse a schema newer than theirs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from typing import Literal

import msgspec

from .errors import ManifestError, UnknownSchema

SCHEMA = 1
HISTORY_LIMIT = 200
"""Changes kept per environment: enough to explain the manifest, bounded on the store."""

Kind = Literal["python", "r", "conda"]
Action = Literal["install", "remove", "upgrade", "downgrade"]


class Base(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Base of every manifest type: immutable, keyword-only, defaults left out on disk.

    Leaving defaults out keeps the JSON short and lets a field be added later without
    changing the bytes (and so the checksum and generation) of existing manifests.
    Subclasses repeat `frozen=True` because type checkers do not follow msgspec's
    inheritance of struct options.
    """


# -- where a package came from: a tagged union shaped like PEP 751's pylock -----------


class IndexSource(Base, frozen=True, tag="index", tag_field="type"):
    """From a package index (Python) or a repository such as CRAN (R)."""

    repository: str | None = None
    """R's `Repository:` field (CRAN, RSPM, ...). Informational: restore never uses it."""


class UrlSource(Base, frozen=True, tag="url", tag_field="type"):
    """A direct URL to an archive (PEP 610 `archive_info`, R `RemoteType: url`)."""

    url: str
    hashes: dict[str, str] = {}
    subdirectory: str | None = None


class VcsSource(Base, frozen=True, tag="vcs", tag_field="type"):
    """A version control checkout (PEP 610 `vcs_info`, R `RemoteType: github/git`)."""

    vcs: str
    url: str
    commit: str | None = None
    requested_revision: str | None = None
    subdirectory: str | None = None


class DirectorySource(Base, frozen=True, tag="directory", tag_field="type"):
    """A local directory (PEP 610 `dir_info`), possibly installed editable."""

    path: str
    editable: bool = False
    subdirectory: str | None = None


class LocalSource(Base, frozen=True, tag="local", tag_field="type"):
    """R: installed from a local tarball or directory (`install.packages(file, repos =
    NULL)`, remotes' `install_local`): no `Repository:`, no repository to restore from."""

    path: str | None = None
    """Where it was installed from, when that is known (remotes records it; R does not)."""
    hashes: dict[str, str] = {}
    """Of the file at `path`, taken when the install was recorded."""
    installed: str | None = None
    """sha256 over the installed package's files (path and content): this very install."""


Source = IndexSource | UrlSource | VcsSource | DirectorySource | LocalSource


class Package(Base, frozen=True):
    """One installed distribution (Python, keyed by canonical name) or R package."""

    name: str
    version: str
    source: Source = IndexSource()
    requested: bool = True
    """Asked for by the user (REQUESTED, or best effort for R) vs pulled in as a dependency."""
    installer: str | None = None
    tags: tuple[str, ...] = ()
    """Python: the WHEEL `Tag:` lines. R: the `Built:` platform, when not architecture-free."""
    built: str | None = None
    """R: the R version the package was built with (from `Built:`)."""
    depends: tuple[str, ...] = ()
    """R: the packages named in Depends, Imports and LinkingTo (tells requested from
    dependency; informational for restore, which orders by the tarballs it installs)."""
    build: str | None = None
    """conda: the build string (`py311h64a7726_0`); part of what identifies the install."""
    channel: str | None = None
    """conda: the channel it came from (`conda-forge`, or a URL). Restore installs only
    from the channels of its own configuration, never from this one."""
    subdir: str | None = None
    """conda: the platform subdirectory (`linux-64`, `noarch`)."""
    sha256: str | None = None
    """conda: the archive's digests, as the channel's repodata gives them."""
    md5: str | None = None


class Change(Base, frozen=True):
    """One step of a package's history: what `diff()` returns."""

    action: Action
    name: str
    old: str | None = None
    new: str | None = None
    time: str | None = None


class Environment(Base, frozen=True):
    """Identity of a Python environment (prefix) or an R library."""

    kind: Kind
    path: str
    """Python: the prefix (`sys.prefix` of its interpreter). R: the library directory."""
    user: bool = False
    """Python: the user site of the prefix's interpreter (`pip install --user`), not the prefix."""
    interpreter: str | None = None
    """Python or R version, e.g. "3.11.7" or "4.2.2"."""
    implementation: str | None = None
    platform: str | None = None

    def where(self) -> str:
        """The path as people read it in logs and reports."""
        return f"{self.path} (user site)" if self.user else self.path


class Failing(Base, frozen=True):
    """A recorded package that the last restores in a row failed to put in place."""

    name: str
    version: str
    """The recorded version that failed (a new version starts a new count)."""
    count: int = 1
    """Consecutive restores that failed it."""
    reason: str = ""
    """The last failure's reason: at most `REASON_BYTES`, credentials stripped."""
    time: str | None = None


REASON_BYTES = 500


class Event(Base, frozen=True):
    """A change the user made to the record itself, not seen in an environment.

    `action` is a plain string, not a Literal, so that an older reader still decodes a
    manifest with an action added later.
    """

    action: str
    """"forget" (`name` in `env`) or "revert" (to `generation`)."""
    time: str | None = None
    env: Environment | None = None
    name: str | None = None
    generation: int | None = None


def same_env(a: Environment, b: Environment) -> bool:
    """Identity of an environment: versions and platform may change under the same path."""
    return (a.kind, a.path, a.user) == (b.kind, b.path, b.user)


class Inventory(Base, frozen=True):
    """An environment and everything installed in it: a scan, or one part of the baseline."""

    env: Environment
    packages: tuple[Package, ...] = ()

    def by_name(self) -> dict[str, Package]:
        return {p.name: p for p in self.packages}


class Delta(Base, frozen=True):
    """The user's changes to one environment relative to the image."""

    env: Environment
    added: tuple[Package, ...] = ()
    changed: tuple[Package, ...] = ()
    """Image packages now at another version: the user's version is recorded."""
    removed: tuple[Package, ...] = ()
    """Image packages the user was seen uninstalling: the image's version is recorded."""
    history: tuple[Change, ...] = ()
    forgotten: tuple[Package, ...] = ()
    """Installs the user dropped from the record (`pkgckpt forget`, `revert`): a scan that
    finds one of them, as it was, does not record it again (see checkpoint.Tracker)."""
    failing: tuple[Failing, ...] = ()
    """Recorded packages the last restores failed, with the last reason."""

    def is_empty(self) -> bool:
        return not (self.added or self.changed or self.removed)


class Body(Base, frozen=True):
    environments: tuple[Delta, ...] = ()
    events: tuple[Event, ...] = ()
    """Forgets and reverts, oldest first, at most `HISTORY_LIMIT`."""
    conda: tuple[Delta, ...] = ()
    """The conda environments' records (kind "conda"), kept apart from `environments` so
    that a reader that knows only Python and R skips them instead of refusing the file."""

    @classmethod
    def of(cls, deltas: Iterable[Delta], events: tuple[Event, ...] = ()) -> Body:
        """A body holding `deltas`, each in its place (`environments` or `conda`)."""
        deltas = tuple(deltas)
        return cls(
            environments=tuple(d for d in deltas if d.env.kind != "conda"),
            events=events,
            conda=tuple(d for d in deltas if d.env.kind == "conda"),
        )

    def deltas(self) -> tuple[Delta, ...]:
        """Every environment's delta, conda ones included."""
        return (*self.environments, *self.conda)

    def delta(self, env: Environment) -> Delta | None:
        return next((d for d in self.deltas() if same_env(d.env, env)), None)


class Writer(Base, frozen=True):
    host: str
    pid: int
    version: str


class Manifest(Base, frozen=True):
    """A decoded manifest: the envelope's fields and its body."""

    schema: int = SCHEMA
    generation: int = 0
    writer: Writer | None = None
    time: str | None = None
    body: Body = Body()


class Baseline(Base, frozen=True):
    """What the image shipped: written at image build time or at a container's first start."""

    schema: int = SCHEMA
    time: str | None = None
    environments: tuple[Inventory, ...] = ()
    conda: tuple[Inventory, ...] = ()
    """The conda environments, apart for older readers as in `Body.conda`."""

    @classmethod
    def of(cls, inventories: Iterable[Inventory], time: str | None = None) -> Baseline:
        inventories = tuple(inventories)
        return cls(
            time=time,
            environments=tuple(i for i in inventories if i.env.kind != "conda"),
            conda=tuple(i for i in inventories if i.env.kind == "conda"),
        )

    def inventory(self, env: Environment) -> Inventory | None:
        found = (*self.environments, *self.conda)
        return next((i for i in found if same_env(i.env, env)), None)


class _Envelope(msgspec.Struct, kw_only=True):
    schema: int
    generation: int = 0
    writer: Writer | None = None
    time: str | None = None
    checksum: str
    body: msgspec.Raw
    """Last: `encode` finds the body's bytes as what follows its key up to the end."""


class _Schema(msgspec.Struct):
    schema: int


# Built once: msgspec encoders/decoders are reusable and cheap to call.
_encoder = msgspec.json.Encoder(order="deterministic")
_envelope_decoder = msgspec.json.Decoder(_Envelope)
_body_decoder = msgspec.json.Decoder(Body)
_schema_decoder = msgspec.json.Decoder(_Schema)
_baseline_decoder = msgspec.json.Decoder(Baseline)

MAX_BYTES = 64 * 1024 * 1024
"""Refuse larger files: a manifest of every package on PyPI and CRAN is far smaller."""


def _pretty(data: bytes) -> bytes:
    # Indented so that a person can `cat` and `diff` manifests on the share.
    return msgspec.json.format(data, indent=1)


_PLACEHOLDER = "sha256:" + "0" * 64
_PLACEHOLDER_BYTES = _PLACEHOLDER.encode()
_BODY_KEY = b'\n "body": '


def checksum(body: bytes | memoryview) -> str:
    return "sha256:" + hashlib.sha256(body).hexdigest()


def encode(manifest: Manifest, body: bytes | None = None) -> bytes:
    """Deterministic bytes: the same manifest always encodes the same way.

    `body`: `encode_body(manifest.body)`, when the caller has it already.
    """
    return b"".join(encode_parts(manifest, body))


def encode_parts(manifest: Manifest, body: bytes | None = None) -> tuple[bytes | memoryview, ...]:
    """`encode(manifest, body)` as buffers to be written one after the other (writev):
    putting the checksum in place without copying a 200 KB manifest whole again."""
    if body is None:
        body = encode_body(manifest.body)
    envelope = _Envelope(
        schema=manifest.schema,
        generation=manifest.generation,
        writer=manifest.writer,
        time=manifest.time,
        checksum=_PLACEHOLDER,
        body=msgspec.Raw(body),
    )
    raw = _pretty(_encoder.encode(envelope))
    data = memoryview(raw)
    # Indenting re-lays the body too, so the checksum is taken over the body exactly as it
    # stands in the output, then put in place of a placeholder of the same length. It is
    # cut out rather than decoded: the body is the envelope's last field, so it runs from
    # its key (unique at depth one: JSON strings hold no raw newline) to the closing "\n}".
    start = raw.index(_BODY_KEY) + len(_BODY_KEY)
    digest = checksum(data[start : -len(b"\n}")]).encode()
    at = raw.index(_PLACEHOLDER_BYTES)  # in the envelope's head, before the body
    return (data[:at], digest, data[at + len(digest) :], b"\n")


def encode_body(body: Body) -> bytes:
    """Compact deterministic bytes of a body: equal bytes mean the manifest did not change."""
    return _encoder.encode(body)


_UNREADABLE = (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError)
"""What decoding untrusted bytes may raise: msgspec reports invalid UTF-8 inside a JSON
string as UnicodeDecodeError, not as a DecodeError."""


def _check_schema(data: bytes, what: str) -> None:
    if len(data) > MAX_BYTES:
        raise ManifestError(f"{what} is {len(data)} bytes, over the {MAX_BYTES} byte limit")
    try:
        schema = _schema_decoder.decode(data).schema
    except _UNREADABLE as e:
        raise ManifestError(f"{what} is not a valid pkgckpt file: {e}") from None
    if schema > SCHEMA:
        raise UnknownSchema(
            f"{what} has schema {schema}, newer than this pkgckpt understands ({SCHEMA}); "
            "upgrade pkgckpt"
        )
    if schema < 1:
        raise ManifestError(f"{what} has an invalid schema {schema}")


def decode(data: bytes, what: str = "manifest") -> Manifest:
    """Decode and verify a manifest; any defect raises `ManifestError`, never anything else."""
    _check_schema(data, what)
    try:
        envelope = _envelope_decoder.decode(data)
    except _UNREADABLE as e:
        raise ManifestError(f"{what} is malformed: {e}") from None
    raw = bytes(envelope.body)
    if checksum(raw) != envelope.checksum:
        raise ManifestError(f"{what} fails its checksum: torn or edited")
    try:
        body = _body_decoder.decode(raw)
    except _UNREADABLE as e:
        raise ManifestError(f"{what} body is malformed: {e}") from None
    return Manifest(
        schema=envelope.schema,
        generation=envelope.generation,
        writer=envelope.writer,
        time=envelope.time,
        body=body,
    )


class _BaselineFile(msgspec.Struct, kw_only=True):
    # Baseline omits defaults, and `schema` equals its default: written through this struct
    # it is always present, as `_check_schema` requires of every file.
    schema: int
    time: str | None = None
    environments: tuple[Inventory, ...] = ()
    conda: tuple[Inventory, ...] = ()


def encode_baseline(baseline: Baseline) -> bytes:
    out = _BaselineFile(
        schema=baseline.schema,
        time=baseline.time,
        environments=baseline.environments,
        conda=baseline.conda,
    )
    return _pretty(_encoder.encode(out)) + b"\n"


def decode_baseline(data: bytes, what: str = "baseline") -> Baseline:
    _check_schema(data, what)
    try:
        return _baseline_decoder.decode(data)
    except _UNREADABLE as e:
        raise ManifestError(f"{what} is malformed: {e}") from None


# -- the named diff ----------------------------------------------------------------------


def _order(version: str) -> object:
    # Imported lazily: packaging costs a few ms and most diffs compare equal versions.
    from packaging.version import InvalidVersion, Version

    try:
        return Version(version)
    except InvalidVersion:
        return None


def _direction(old: str, new: str, kind: Kind) -> Action:
    if kind == "r":
        a, b = _r_version(old), _r_version(new)
        if a is not None and b is not None:
            return "downgrade" if b < a else "upgrade"
    else:
        va, vb = _order(old), _order(new)
        if va is not None and vb is not None:
            # Equal versions spelled differently ("1.0" -> "1.0.0") are no downgrade.
            return "downgrade" if vb < va else "upgrade"  # type: ignore[operator]
    # Unorderable versions (a local build, a VCS snapshot): call it an upgrade.
    return "upgrade"


def _r_version(version: str) -> tuple[int, ...] | None:
    parts = version.replace("-", ".").split(".")
    return tuple(int(p) for p in parts) if all(p.isdigit() for p in parts) else None


def same_source(want: Source, have: Source) -> bool:
    """`have` is an install from the place `want` records (an index's name does not count).

    What restore takes for "already in place", and the daemon for "not a change": a
    restore installs a VCS package at its recorded commit (so pip records that commit as
    the requested revision, not the branch first asked for) and may spell a file URL
    `file://localhost/`; neither is a new install. A VCS record without a commit takes
    any commit.
    """
    if isinstance(want, IndexSource) or isinstance(have, IndexSource):
        return type(want) is type(have)
    if isinstance(want, UrlSource) and isinstance(have, UrlSource):
        return want.subdirectory == have.subdirectory and _same_url(want.url, have.url)
    if isinstance(want, VcsSource) and isinstance(have, VcsSource):
        return (
            (want.vcs, want.subdirectory) == (have.vcs, have.subdirectory)
            and _same_url(want.url, have.url)
            and want.commit in (None, have.commit)
        )
    if isinstance(want, DirectorySource) and isinstance(have, DirectorySource):
        return (want.path, want.editable) == (have.path, have.editable)
    if isinstance(want, LocalSource) and isinstance(have, LocalSource):
        return want.path == have.path
    return False


def _same_url(a: str, b: str) -> bool:
    # file:///x and file://localhost/x are the same place (RFC 8089); restore may use the
    # second form (see restore.python.requirement) for a manifest that recorded the first.
    return a.replace("file://localhost/", "file:///", 1) == b.replace(
        "file://localhost/", "file:///", 1
    )


def _identity(p: Package) -> tuple[str, Source, str | None]:
    return (p.version, p.source, p.build)


def diff(
    old: Mapping[str, Package],
    new: Mapping[str, Package],
    kind: Kind = "python",
    time: str | None = None,
) -> list[Change]:
    """The changes that turn `old` into `new`, sorted by name.

    A package whose version is the same but whose source changed (reinstalled from a
    VCS commit, say) counts as an upgrade with equal versions, so it is reinstalled.
    """
    changes: list[Change] = []
    for name in sorted(old.keys() | new.keys()):
        a, b = old.get(name), new.get(name)
        if a is None and b is not None:
            changes.append(Change(action="install", name=name, new=b.version, time=time))
        elif b is None and a is not None:
            changes.append(Change(action="remove", name=name, old=a.version, time=time))
        elif a is not None and b is not None and _identity(a) != _identity(b):
            action = "upgrade" if a.version == b.version else _direction(a.version, b.version, kind)
            changes.append(
                Change(action=action, name=name, old=a.version, new=b.version, time=time)
            )
    return changes


def delta(
    env: Environment,
    baseline: Mapping[str, Package],
    current: Mapping[str, Package],
    history: Iterable[Change] = (),
) -> Delta:
    """The user's delta: what `current` adds to, changes in and removes from `baseline`."""
    added: list[Package] = []
    changed: list[Package] = []
    removed: list[Package] = []
    for change in diff(baseline, current, env.kind):
        if change.action == "install":
            added.append(current[change.name])
        elif change.action == "remove":
            removed.append(baseline[change.name])
        else:
            changed.append(current[change.name])
    if env.kind == "r":
        user = (*added, *changed)
        added, changed = r_requested(added, user), r_requested(changed, user)
    return Delta(
        env=env,
        added=tuple(added),
        changed=tuple(changed),
        removed=tuple(removed),
        history=tuple(history)[-HISTORY_LIMIT:],
    )


def r_requested(packages: Iterable[Package], delta: Iterable[Package]) -> list[Package]:
    """R's best effort at REQUESTED: a package that nothing else in the user's delta needs.

    R records nothing like pip's REQUESTED. Within the delta (added and changed
    packages), whatever another of the user's packages depends on counts as pulled in;
    image packages outside the delta do not count.
    """
    needed = {d for p in delta for d in p.depends if d != p.name}
    return [msgspec.structs.replace(p, requested=p.name not in needed) for p in packages]


def apply(baseline: Mapping[str, Package], d: Delta) -> dict[str, Package]:
    """The state the user had: `baseline` with the delta applied (the inverse of `delta`)."""
    state = dict(baseline)
    for p in d.removed:
        state.pop(p.name, None)
    for p in (*d.added, *d.changed):
        state[p.name] = p
    return state
