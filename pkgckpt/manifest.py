"""The manifest and the baseline: msgspec structs, their JSON encoding, and `diff()`.

No I/O here: `store.py` reads and writes the bytes, the scanners fill the structs.

On disk a manifest (schema 4) is compact JSON: an envelope whose `checksum` covers the
whole file but its own 8 hex digits and trailing white space: the envelope, the
generation and the body, byte for byte. The checksum sits at a fixed place, right after
the schema, so a reader finds it without parsing anything:

    {"schema":4,"checksum":"crc32:...","generation":7,"writer":{...},"time":"...",
     "body":{"environments":[...]}}

(one line; `python -m json.tool manifest.json` shows it indented). Compact, so that a
commit checksums and writes the body bytes it already has, as they are: no second pass
to indent 200 KB, no copy.

The checksum finds a torn or damaged file; it cannot stop a forger, who would recompute
any unkeyed digest (that is `seal.py`'s HMAC). So it is CRC-32 (zlib: every burst error
up to 32 bits found, other damage missed once in 2^32), which takes 0.06 ms over a
200 KB manifest here against sha256's 0.16 ms, as much as the durable write itself on
tmpfs (benchmarks/RESULTS.md, issue 9).

A reader refuses, as `ManifestError`: invalid UTF-8 anywhere, nesting deeper than
`MAX_DEPTH`, a key twice in the envelope, a generation outside 1..`MAX_GENERATION`, an
environment twice in the body, and any byte that does not match the checksum.

Older layouts are still read, and the next commit rewrites them as schema 4: schema 3
(compact, the same whole-file checksum as sha256), schema 2 (sha256, in an envelope
indented by one space) and schema 1 (before the whole-file checksum: its checksum covers
the body only, so its envelope is taken as it stands). A pkgckpt that knows an older
schema only refuses a newer one ("has schema 4, newer than this pkgckpt understands
(3); upgrade pkgckpt") rather than misread it, and never overwrites it.

Compatibility: every field added after schema 4 must have a default, so an older
reader reads a newer manifest; a change that an older reader must not misread bumps
`SCHEMA` (the major version), and readers refuse a schema newer than theirs.
"""

from __future__ import annotations

import re
import sys
import zlib
from collections.abc import Callable, Iterable, Mapping
from pathlib import PurePosixPath
from typing import Literal, NamedTuple

import msgspec

from .digest import sha256
from .errors import ManifestError, UnknownSchema

SCHEMA = 4
"""Of manifests; 1 to 3 are still read (see the module docstring)."""
BASELINE_SCHEMA = 1
"""Of baselines: their layout did not change with the manifest's checksum."""
MAX_GENERATION = 2**53
"""Generations above it are refused: every JSON reader holds them exactly."""
MAX_DEPTH = 32
"""Nesting refused beyond this: a manifest is 8 deep, a deeper one was not written by us."""
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

    if sys.version_info < (3, 11):

        def __post_init__(self) -> None:
            # omit_defaults knows a default by identity, and Python 3.10 can make an empty
            # tuple that is not `()` (tuple() of an empty generator): such a field would
            # be written as [] where the same record read back leaves it out, and bytes
            # that should say "unchanged" (a commit's, a confirm's) would differ. From
            # 3.11 on there is one empty tuple.
            for name in self.__struct_fields__:
                value = getattr(self, name)
                if type(value) is tuple and not value and value is not _EMPTY:
                    msgspec.structs.force_setattr(self, name, _EMPTY)


_EMPTY: tuple[()] = ()


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


class Artifact(Base, frozen=True):
    """The installed package captured as a file on the store (`pkgckpt.artifacts`).

    Restore installs it only after the bytes it read hash to `sha256`: this record is the
    user's own, the file may sit where others can write (`pooled`).
    """

    file: str
    """Its name under `<key>/artifacts/`: `{name}-{version}(-{build})?-{tags}.whl`, or
    `R-{major.minor}/{pkg}_{version}_R_{platform}.tar.gz`. Also the name it is installed
    under when it lives in the pool."""
    sha256: str
    """64 lowercase hex digits."""
    size: int
    pooled: bool = False
    """In the shared pool (`artifact_pool`, as `sha256/<hex>`), not under the key."""


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
    replaced: str | None = None
    """In a delta's `changed`: the image's version this change replaced (None in `removed`,
    in `added` but for a user site's copy shadowing its prefix's, and in manifests
    written before it was recorded). With it a change is
    read against any later image: an upgrade `replaced -> version`, or a downgrade."""
    artifact: Artifact | None = None
    """This very install captured on the store; None until captured (or uncapturable)."""


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
    abi: str | None = None
    """Python: the interpreter's ABI tag as wheel names spell it (`cp311`, `cp313t` for a
    free-threaded build, `pypy310_pp73`); None: not recorded (older manifests, R), taken
    as CPython's plain ABI, and as no binary ABI at all for another implementation."""
    role: str | None = None
    """R: which library this is to R: "user" (`R_LIBS_USER`, whose default path names the
    R version), "rstudio" (the user library of RStudio's sessions, `r-libs-user` in
    `rsession.conf`, when it is another), "site" (`R_LIBS_SITE`), "libs" (`R_LIBS`) or
    "named" (`--r-lib`). Restore
    matches a library by it when its path is not here (see `pkgckpt.rmatch`); None: not
    known (older manifests), matched by path only. A string, not a Literal: an older
    reader still decodes a role added later."""

    def where(self) -> str:
        """The path as people read it in logs and reports. A path from the store may hold
        a newline (a forged line of the report) or an escape sequence: what is not
        printable is shown as `?`, as `status` shows the rest of what it read."""
        path = self.path if self.path.isprintable() else visible(self.path)
        return f"{path} (user site)" if self.user else path


def visible(text: str) -> str:
    """`text` with every character that is not printable shown as `?`: for what a store
    or a planted file holds (a newline would forge a line of a report, an escape sequence
    drive the terminal)."""
    return "".join(c if c.isprintable() else "?" for c in text)


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
    image: tuple[Package, ...] | None = None
    """A container's own baseline's (`Baseline.container`): the image's part of
    `packages`, once a process of this container has told it from the user's packages a
    library that outlived the last container held (`recorded_image`). Kept, because the
    record it was told by changes: with an install of those uninstalled, the library's
    listing is no longer the recorded image with the record in place. None: `packages`."""

    def by_name(self) -> dict[str, Package]:
        return {p.name: p for p in self.packages}

    def shipped(self) -> tuple[Package, ...]:
        """What the image ships here, as far as this inventory tells."""
        return self.packages if self.image is None else self.image


class Rebased(Base, frozen=True):
    """A recorded change that a restore onto another image did not carry out: still the
    user's, kept in the record, retried at every restore (`restore/rebase.py`)."""

    name: str
    version: str
    """The recorded version (of a removal: the image's version then)."""
    state: str
    """"superseded" (the image caught up) or "held-back" (it would break the image);
    a plain string so that an older reader decodes a state added later."""
    reason: str = ""
    image: str | None = None
    """The identity of the image the restore found (`image_identity`)."""


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
    image: str | None = None
    """The identity of the image (`image_identity` of the baseline) every entry is relative
    to; None: not known (written before it was recorded, or without a baseline)."""
    rebased: tuple[Rebased, ...] = ()
    """Entries the last restore, on another image, superseded or held back."""
    mixed: bool = False
    """Some entries were recorded on another image than `image`: changes made there while
    the entries carried from `image` did not fit it (`checkpoint._carried`). No one image
    is what every entry is relative to, so restore reads the record against the image it
    finds, the one it is labelled with too."""

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

    schema: int = BASELINE_SCHEMA
    time: str | None = None
    environments: tuple[Inventory, ...] = ()
    conda: tuple[Inventory, ...] = ()
    """The conda environments, apart for older readers as in `Body.conda`."""
    container: bool = False
    """Taken by a container's first command (`inventory.ensure_baseline`), not by
    `pkgckpt baseline` at image build: a library that outlived the last container is in
    it with the user's packages in place (`recorded_image`)."""

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

    def told(self, env: Environment, image: tuple[Package, ...]) -> Baseline:
        """This baseline with `image` as the image's part of `env`'s listing, where none
        was told yet (`Inventory.image`)."""

        def one(i: Inventory) -> Inventory:
            if i.image is not None or not same_env(i.env, env):
                return i
            return msgspec.structs.replace(i, image=image)

        return msgspec.structs.replace(
            self,
            environments=tuple(map(one, self.environments)),
            conda=tuple(map(one, self.conda)),
        )

    def image(self, env: Environment) -> list[Package] | None:
        """What the image ships as seen from `env` (None: the baseline does not list it).

        A user site sees its prefix's packages too (the user site's own win): a user's
        copy shadows the image's, so both are the image it was taken against.
        """
        inventory = self.inventory(env)
        if inventory is None:
            return None
        packages = {p.name: p for p in inventory.shipped()}
        if env.user:
            beneath = self.inventory(msgspec.structs.replace(env, user=False))
            for p in beneath.shipped() if beneath is not None else ():
                packages.setdefault(p.name, p)
        return [packages[n] for n in sorted(packages)]


class _Envelope(msgspec.Struct, kw_only=True):
    schema: int
    checksum: str
    """Second, so that it has a fixed place in the file (`_HEAD`)."""
    generation: int = 0
    writer: Writer | None = None
    time: str | None = None
    body: msgspec.Raw
    """Last: the envelope's keys are all in the bytes before it (`_envelope_keys`)."""


class _Schema(msgspec.Struct):
    schema: int


# Built once: msgspec encoders/decoders are reusable and cheap to call.
_encoder = msgspec.json.Encoder(order="deterministic")
_envelope_decoder = msgspec.json.Decoder(_Envelope)
_body_decoder = msgspec.json.Decoder(Body)
_schema_decoder = msgspec.json.Decoder(_Schema)
_baseline_decoder = msgspec.json.Decoder(Baseline)
_string_decoder = msgspec.json.Decoder(str)

MAX_BYTES = 64 * 1024 * 1024
"""Refuse larger files: a manifest of every package on PyPI and CRAN is far smaller."""


def _pretty(data: bytes) -> bytes:
    # Indented so that a person can `cat` and `diff` baselines (written once per image).
    return msgspec.json.format(data, indent=1)


def _sha256(parts: Iterable[bytes | memoryview]) -> bytes:
    # OpenSSL's: a whole manifest of schema 2 or 3 (see digest).
    import hashlib

    digest = hashlib.sha256()
    for part in parts:
        digest.update(part)
    return digest.hexdigest().encode()


def _crc32(parts: Iterable[bytes | memoryview]) -> bytes:
    crc = 0
    for part in parts:
        crc = zlib.crc32(part, crc)
    return b"%08x" % crc


class _WholeFile(NamedTuple):
    """A schema's whole-file checksum: the digits follow `head`, how every manifest of
    that schema starts; the envelope's `checksum` is `algorithm:digits`."""

    head: bytes
    algorithm: str
    digits: int
    digest: Callable[[Iterable[bytes | memoryview]], bytes]


_WHOLE_FILE = {
    2: _WholeFile(b'{\n "schema": 2,\n "checksum": "sha256:', "sha256", 64, _sha256),
    3: _WholeFile(b'{"schema":3,"checksum":"sha256:', "sha256", 64, _sha256),
    4: _WholeFile(b'{"schema":4,"checksum":"crc32:', "crc32", 8, _crc32),
}
_HEAD, _ALGORITHM, _DIGITS, _DIGEST = _WHOLE_FILE[SCHEMA]
_PLACEHOLDER = f"{_ALGORITHM}:" + "0" * _DIGITS


def checksum(body: bytes | memoryview) -> str:
    """Schema 1's checksum, of the body only."""
    import hashlib  # OpenSSL's, for a whole manifest (see digest)

    return "sha256:" + hashlib.sha256(body).hexdigest()


def encode(manifest: Manifest, body: bytes | None = None) -> bytes:
    """Deterministic bytes: the same manifest always encodes the same way.

    `body`: `encode_body(manifest.body)`, when the caller has it already.
    """
    return b"".join(encode_parts(manifest, body))


def encode_parts(manifest: Manifest, body: bytes | None = None) -> tuple[bytes | memoryview, ...]:
    """`encode(manifest, body)` as buffers to be written one after the other (writev):
    the ~200 KB body is checksummed once and written as the caller's bytes, never copied."""
    if body is None:
        body = encode_body(manifest.body)
    envelope = _Envelope(
        schema=SCHEMA,
        checksum=_PLACEHOLDER,
        generation=manifest.generation,
        writer=manifest.writer,
        time=manifest.time,
        body=msgspec.Raw(b"0"),  # a stand-in, cut off below: `body` itself follows
    )
    data = _encoder.encode(envelope)
    # The checksum covers every byte of the file but its own digits, which stand at a
    # fixed offset, and the trailing newline: the placeholder's digits are cut out rather
    # than hashed, then the digest is put in their place.
    at = len(_HEAD)
    head, tail = data[:at], data[at + _DIGITS : -len(b"0}")]
    return (head, _DIGEST((head, tail, body, b"}")), tail, body, b"}\n")


def encode_body(body: Body) -> bytes:
    """Compact deterministic bytes of a body: equal bytes mean the manifest did not change."""
    return _encoder.encode(body)


_UNREADABLE = (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError, RecursionError)
"""What decoding untrusted bytes may raise: msgspec reports invalid UTF-8 inside a JSON
string as UnicodeDecodeError, and nesting deeper than the interpreter's limit as
RecursionError (`_check_depth` refuses far less first; this is the backstop)."""

_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_TOKEN = re.compile(rb'("[^"\\]*(?:\\.[^"\\]*)*")(\s*:)?|[\[\]{}]', re.DOTALL)
_NOT_BRACKETS = bytes(range(256)).translate(None, b"[]{}")


def _deeper(brackets: bytes, limit: int) -> bool:
    """Whether a sequence of brackets nests deeper than `limit` (an unbalanced one is left
    to the parser to name)."""
    for _ in range(limit):
        inner = brackets.replace(b"[]", b"").replace(b"{}", b"")
        if inner == brackets:
            return False
        brackets = inner
    return brackets.replace(b"[]", b"").replace(b"{}", b"") != brackets


def _check_text(data: bytes, what: str) -> None:
    """UTF-8 everywhere, nesting at most MAX_DEPTH: before a parser sees the bytes."""
    if len(data) > MAX_BYTES:
        raise ManifestError(f"{what} is {len(data)} bytes, over the {MAX_BYTES} byte limit")
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ManifestError(f"{what} is not valid UTF-8 (at byte {e.start})") from None
    # Brackets inside strings count too at first: cheap, and exact for every manifest
    # pkgckpt writes. Only when that says "too deep" are strings cut out to be sure.
    if _deeper(data.translate(None, _NOT_BRACKETS), MAX_DEPTH):
        exact = _STRING.sub(b"", data).translate(None, _NOT_BRACKETS)
        if _deeper(exact, MAX_DEPTH):
            raise ManifestError(f"{what} is nested deeper than {MAX_DEPTH} levels")


def _check_schema(data: bytes, what: str, newest: int) -> int:
    _check_text(data, what)
    try:
        schema = _schema_decoder.decode(data).schema
    except _UNREADABLE as e:
        raise ManifestError(f"{what} is not a valid pkgckpt file: {_reason(e)}") from None
    if schema > newest:
        raise UnknownSchema(
            f"{what} has schema {schema}, newer than this pkgckpt understands ({newest}); "
            "upgrade pkgckpt"
        )
    if schema < 1:
        raise ManifestError(f"{what} has an invalid schema {schema}")
    return schema


def _reason(e: Exception) -> str:
    # msgspec's wording changes between versions: kept as detail, after our own words.
    if isinstance(e, RecursionError):
        return "nested too deeply"
    return str(e)


def _envelope_keys(data: bytes, body: bytes, what: str) -> list[str]:
    """The envelope's keys in file order, the body (its last value) cut off first."""
    end = len(data.rstrip())
    if not data[:end].endswith(b"}"):
        raise ManifestError(f"{what} does not end its envelope with '}}'")
    end = len(data[: end - 1].rstrip())
    start = end - len(body)
    if start < 0 or data[start:end] != body:
        raise ManifestError(f"{what} has a field after its body")
    keys: list[str] = []
    depth = 0
    for token in _TOKEN.finditer(data, 0, start):
        text = token.group()
        if text in (b"{", b"["):
            depth += 1
        elif text in (b"}", b"]"):
            depth -= 1
        elif depth == 1 and token.group(2):
            keys.append(_string_decoder.decode(token.group(1)))
    return keys


def decode(data: bytes, what: str = "manifest") -> Manifest:
    """Decode and verify a manifest; any defect raises `ManifestError`, never anything else."""
    schema = _check_schema(data, what, SCHEMA)
    if schema >= 2:
        whole = _WHOLE_FILE[schema]
        head, digits = whole.head, whole.digits
        if not data.startswith(head):
            raise ManifestError(f"{what} does not start as a schema {schema} manifest does")
        at = len(head)
        sealed = data[at : at + digits]
        # Trailing white space is left out: a sealing envelope (seal.py) keeps the
        # manifest's bytes without it, and it changes no meaning.
        kept = memoryview(data)[: len(data.rstrip())]
        if whole.digest((kept[:at], kept[at + digits :])) != sealed:
            raise ManifestError(f"{what} fails its checksum: torn or edited")
    try:
        envelope = _envelope_decoder.decode(data)
    except _UNREADABLE as e:
        raise ManifestError(f"{what} is malformed: {_reason(e)}") from None
    raw = bytes(envelope.body)
    keys = _envelope_keys(data, raw, what)
    twice = sorted({k for k in keys if keys.count(k) > 1})
    if twice:
        raise ManifestError(f"{what} has {', '.join(map(repr, twice))} twice in its envelope")
    if schema >= 2:
        # The digits were checked above, but a second "checksum" key could have said
        # otherwise to another parser: the one decoded must be the one checked.
        if envelope.checksum != f"{whole.algorithm}:{sealed.decode()}":
            raise ManifestError(f"{what} fails its checksum: torn or edited")
    elif checksum(raw) != envelope.checksum:
        raise ManifestError(f"{what} fails its checksum: torn or edited")
    if not 1 <= envelope.generation <= MAX_GENERATION:
        raise ManifestError(
            f"{what} has generation {envelope.generation}, outside 1..{MAX_GENERATION}"
        )
    try:
        body = _body_decoder.decode(raw)
    except _UNREADABLE as e:
        raise ManifestError(f"{what} body is malformed: {_reason(e)}") from None
    _check_environments(body, what)
    return Manifest(
        schema=envelope.schema,
        generation=envelope.generation,
        writer=envelope.writer,
        time=envelope.time,
        body=body,
    )


def _check_environments(body: Body, what: str) -> None:
    seen: set[tuple[str, str, bool]] = set()
    for d in body.environments:
        key = (d.env.kind, d.env.path, d.env.user)
        if key in seen:
            raise ManifestError(f"{what} records the environment {d.env.where()} twice")
        seen.add(key)


class _BaselineFile(msgspec.Struct, kw_only=True):
    # Baseline omits defaults, and `schema` equals its default: written through this struct
    # it is always present, as `_check_schema` requires of every file.
    schema: int
    time: str | None = None
    environments: tuple[Inventory, ...] = ()
    conda: tuple[Inventory, ...] = ()


class _ContainersBaselineFile(_BaselineFile, kw_only=True):
    # Only a container's own baseline says so: an image's file keeps its bytes.
    container: bool = True


def encode_baseline(baseline: Baseline) -> bytes:
    kind = _ContainersBaselineFile if baseline.container else _BaselineFile
    out = kind(
        schema=baseline.schema,
        time=baseline.time,
        environments=baseline.environments,
        conda=baseline.conda,
    )
    return _pretty(_encoder.encode(out)) + b"\n"


def decode_baseline(data: bytes, what: str = "baseline") -> Baseline:
    _check_schema(data, what, BASELINE_SCHEMA)
    try:
        return _baseline_decoder.decode(data)
    except _UNREADABLE as e:
        raise ManifestError(f"{what} is malformed: {_reason(e)}") from None


def image_identity(packages: Iterable[Package]) -> str:
    """What identifies an image's environment: a digest over its sorted (name, version)
    pairs, not over file bytes, so that two builds shipping the same versions are the
    same image."""
    digest = sha256()
    for name, version in sorted((p.name, p.version) for p in packages):
        digest.update(f"{name}\0{version}\n".encode())
    return "sha256:" + digest.hexdigest()


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
    any commit. A directory is the one the installer is given (`path` joined with
    `subdirectory`), however it was written down: pip records
    `pip install 'file:///p#subdirectory=sub'` as /p with subdirectory sub, and the
    reinstall restore makes from /p/sub (`restore.python.requirement`) as /p/sub.
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
        return want.editable == have.editable and _directory(want) == _directory(have)
    if isinstance(want, LocalSource) and isinstance(have, LocalSource):
        return want.path == have.path
    return False


def plain_subdirectory(subdirectory: str | None) -> str | None:
    """`subdirectory` without `.` parts and empty ones (`./sub/` is `sub`), as the
    installers read it; pip records it as the user typed it. None for the directory
    itself. An absolute one, or one with `..`, is left as it is (validation refuses it)."""
    if subdirectory is None or subdirectory.startswith("/"):
        return subdirectory
    return "/".join(p for p in subdirectory.split("/") if p not in ("", ".")) or None


def _directory(source: DirectorySource) -> PurePosixPath:
    # Lexical, as the installers write it: they keep symbolic links as given (a link
    # retargeted elsewhere is another source) and drop `.` parts and trailing slashes.
    return PurePosixPath(source.path, source.subdirectory or "")


def _same_url(a: str, b: str) -> bool:
    return file_url(a) == file_url(b)


def file_url(url: str) -> str:
    """A `file:` URL as pip writes it (`file:///`, the path percent-encoded once); any
    other URL as it is.

    file:///x and file://localhost/x are the same place (RFC 8089); restore may use the
    second form (see restore.python.requirement) for a manifest that recorded the first.
    pip writes `torch-2.1%2Bcpu-...whl` where uv writes the URL it was given,
    `torch-2.1+cpu-...whl`: one file, which read as two sources made every restore with
    the other installer report its install as not taken, and the daemon a change.
    """
    if url[:5].lower() != "file:":
        return url
    from urllib.parse import quote, unquote, urlsplit, urlunsplit

    parts = urlsplit(url)
    host = "" if parts.netloc.lower() == "localhost" else parts.netloc
    return urlunsplit(("file", host, quote(unquote(parts.path)), parts.query, parts.fragment))


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
            was = baseline[change.name].version
            changed.append(msgspec.structs.replace(current[change.name], replaced=was))
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


def unapply(packages: Iterable[Package], d: Delta, *, own: bool = False) -> dict[str, Package]:
    """`packages`, a listing that may hold the user's state of `d`'s environment, with `d`
    taken back where it is in place (the inverse of `apply` there): a recorded install
    found at its version goes back to the version it replaced, or out where it replaced
    none; a recorded removal found absent comes back. `own`: `packages` lists the
    environment's own library alone, so an addition that shadowed a copy beneath it (a
    user site's over its prefix's) goes out too. What is not in place stays as listed.

    A forgotten install (`pkgckpt forget` keeps it installed) is the user's too: it is
    taken back as a recorded one is. Which list it was in is not kept: in a user site's
    own listing, where an image rarely ships anything, one that replaced a version is
    taken for an addition that shadowed the prefix's copy."""
    out = {p.name: p for p in packages}
    shadowing = own and d.env.user  # a forgotten entry that replaced a version
    for part, entries in (("added", d.added), ("changed", d.changed), ("forgotten", d.forgotten)):
        for p in entries:
            here = out.get(p.name)
            if here is None or here.version != p.version:
                continue
            if (
                p.replaced is None
                or (own and part == "added")
                or (shadowing and part == "forgotten")
            ):
                del out[p.name]
            else:
                out[p.name] = Package(name=p.name, version=p.replaced)
    for p in d.removed:
        out.setdefault(p.name, p)
    return out


def recorded_image(
    shipped: Iterable[Package], d: Delta, *, taken_here: bool
) -> list[Package] | None:
    """The image `d` is relative to, by name, when `shipped` (a baseline's image of `d`'s
    environment) is that image with the user's packages in place; None when `d` names no
    image or `shipped` is another one. A baseline taken by a container's first command
    (`taken_here`: `Baseline.container`, or no baseline at all) from a library that
    outlived the container (a venv, user site or R library in a persistent home) holds
    what the user installed there: read as the image, it would make every restore a
    rebase and every uninstall the removal of an image package.

    An image-build baseline is the image, never: the next image may ship exactly what the
    user installed (an upgrade the image caught up with), and read as the recorded image
    the user's later change there back to the old version would match it and leave the
    record."""
    if d.image is None or not taken_here:
        return None
    image = unapply(shipped, d)
    if image_identity(image.values()) != d.image:
        return None
    return [image[n] for n in sorted(image)]
