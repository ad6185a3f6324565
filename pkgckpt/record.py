"""The user's control over the record: history, forget, revert, and the failure memory.

The API `cli.py` calls, one call per command:

    history(config, limit=None) -> History           `pkgckpt history` (reads only)
    forget(config, names) -> Written                  `pkgckpt forget NAME...`
    revert(config, generation, *, dry_run=False, confirm=None, restore=False) -> Reverted
                                                      `pkgckpt revert GENERATION`
and the one restore calls after it installed: `remember(config, recorded, report)`, which
keeps, per recorded package, how many restores in a row failed it and why (`reason`:
credentials stripped, at most 500 bytes).

Each change to the record is a pure function of the current body (`forgotten`,
`reverted`, `with_failures`), applied by the one writer of the manifest (DESIGN
invariant 3): the running daemon when there is one, asked through a request file in the
runtime directory (`ask_daemon`, served by `serve`, or answered by `refuse` while the
daemon has not read the store); else the command itself, through the store. History is
only ever appended: a forget or a revert is a new generation whose body carries it as an
`Event`. A restore's bookkeeping (failure counts, a rebase's marks) is no change of the
record: it amends the current generation, as captured artifacts do (`checkpoint.commit`),
so a package failing at every start costs no kept generation.

What a forget leaves behind (the delta's `forgotten`, the installs the record ignores) is
what stops the next scan from recording the package again; `checkpoint.Tracker` says
when it ends. A revert forgets the same way every install it takes out of the record,
so the packages still installed in this container are not recorded again either.

Errors: `UnknownPackage` (a name the record does not hold: exit 1, the message lists the
names it holds), `NotKept` (a generation the store no longer keeps), `Declined` (the
question was answered no), `HeldByDaemon` (the daemon made the change, the store did not
take it yet: exit 5), StoreError / ManifestError as the store raises them.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, TypeAlias

import msgspec

from . import checkpoint, manifest, status
from .checkpoint import CONFLICT_ATTEMPTS, EnvKey, annotates, env_key, now_iso, same_install
from .config import Config, ensure_runtime_dir
from .durable import atomic_write
from .errors import (
    Declined,
    HeldByDaemon,
    ManifestError,
    NotKept,
    PkgckptError,
    StoreConflict,
    StoreError,
    UnknownPackage,
)
from .logs import getLogger, printable
from .manifest import (
    Artifact,
    Body,
    Change,
    Delta,
    Environment,
    Event,
    Failing,
    Manifest,
    Package,
    visible,
)
from .scan.python import canonicalize_name
from .store import Store, answered, open_store
from .trust import read_owned

log = getLogger("pkgckpt.record")

if TYPE_CHECKING:
    from pathlib import Path

    from .checkpoint import Session
    from .restore import Plan, Report

__all__ = [
    "Entry",
    "History",
    "Outcome",
    "Reverted",
    "Written",
    "answer",
    "ask_daemon",
    "forget",
    "forget_command",
    "forgotten",
    "history",
    "holders",
    "printable",
    "reason",
    "refuse",
    "remember",
    "revert",
    "reverted",
    "serve",
    "with_failures",
]


def _key(kind: str, name: str) -> str:
    # Python names compare normalized (PEP 503); R package names are case-sensitive.
    return canonicalize_name(name) if kind == "python" else name


# -- history -----------------------------------------------------------------------------


class _Out(msgspec.Struct, frozen=True, kw_only=True):
    """Output structs: every field in the JSON, defaults included, for scripts to rely on."""


class Entry(_Out, frozen=True, kw_only=True):
    """One recorded change, as `pkgckpt history` shows it."""

    time: str | None
    generation: int | None
    """The first kept generation that holds this change."""
    exact: bool
    """False: the change may be older than `generation`, because the generation before it
    is not kept (or not readable)."""
    env: Environment | None
    action: str
    name: str | None = None
    old: str | None = None
    new: str | None = None
    reverted_to: int | None = None

    def describe(self) -> str:
        if self.action == "revert":
            return f"revert to generation {self.reverted_to}"
        versions = " -> ".join(v for v in (self.old, self.new) if v)
        # The store's words, none of them validated: a newline would forge a row.
        return visible(" ".join(w for w in (self.action, self.name, versions) if w))


class History(_Out, frozen=True, kw_only=True):
    key: str
    store: str
    generation: int | None
    """The current generation (None: no manifest for this key)."""
    kept: tuple[int, ...] = ()
    """Generations `revert` can go back to, newest first."""
    entries: tuple[Entry, ...] = ()
    """Newest first."""

    def to_json(self) -> bytes:
        return msgspec.json.format(_encoder.encode(self), indent=2) + b"\n"

    def render(self) -> str:
        if self.generation is None:
            return f"No manifest for key {self.key!r} in {self.store}: no history.\n"
        if not self.entries:
            return f"Generation {self.generation}: nothing recorded yet.\n"
        lines = []
        for e in self.entries:
            when = visible((e.time or "-")[:19]).replace("T", " ")
            gen = f"{'' if e.exact else '<='}{e.generation}"
            where = printable(e.env.where()) if e.env is not None else "-"
            lines.append(f"{when:<19}  {gen:>6}  {where}  {e.describe()}")
        return "\n".join(lines) + "\n"


_encoder = msgspec.json.Encoder(order="deterministic")


def _entries(body: Body) -> Iterable[tuple[object, Entry]]:
    """Every change and event of `body`, keyed by its identity across generations."""
    for d in body.deltas():
        for c in d.history:
            yield (env_key(d.env), c), _entry(c, d.env)
    for e in body.events:
        yield (
            e,
            Entry(
                time=e.time,
                generation=None,
                exact=True,
                env=e.env,
                action=e.action,
                name=e.name,
                reverted_to=e.generation,
            ),
        )


def _entry(c: Change, env: Environment) -> Entry:
    return Entry(
        time=c.time,
        generation=None,
        exact=True,
        env=env,
        action=c.action,
        name=c.name,
        old=c.old,
        new=c.new,
    )


def _kept(store: Store, current: Manifest) -> dict[int, Manifest]:
    """The current manifest and every kept generation that can be read, by generation."""
    found = {current.generation: current}
    for generation in store.generations():
        if generation in found:
            continue
        with contextlib.suppress(ManifestError):
            kept = store.read_generation(generation)
            if kept is not None:
                found[generation] = kept
    return found


def history(config: Config, limit: int | None = None) -> History:
    """`pkgckpt history`: the recorded changes, newest first; reads only. Each call on the
    store waits `status.STORE_SECONDS` at most (StoreUnavailable): on a hard NFS mount
    whose server stopped answering, not even Ctrl-C would end it."""
    root = config.store
    store = answered(status.STORE_SECONDS, lambda: open_store(config), root)
    current = answered(status.STORE_SECONDS, store.read, root)
    if current is None:
        return History(key=config.key, store=str(store.path), generation=None)
    kept = answered(status.STORE_SECONDS, lambda: _kept(store, current), root)
    first: dict[object, Entry] = {}
    for generation in sorted(kept):
        for ident, entry in _entries(kept[generation].body):
            if ident not in first:
                first[ident] = msgspec.structs.replace(
                    entry, generation=generation, exact=generation == 1 or generation - 1 in kept
                )
    entries = sorted(first.values(), key=lambda e: (e.time or "", e.generation or 0), reverse=True)
    return History(
        key=config.key,
        store=str(store.path),
        generation=current.generation,
        kept=tuple(sorted(kept, reverse=True)),
        entries=tuple(entries[:limit] if limit is not None else entries),
    )


# -- the changes, as pure functions of the body ------------------------------------------


def _recorded(d: Delta) -> tuple[Package, ...]:
    return (*d.added, *d.changed, *d.removed)


Holders: TypeAlias = "dict[str, set[EnvKey]]"


def holders(recorded: Iterable[tuple[Environment, Iterable[Package]]]) -> Holders:
    """Who records what, for `forget_command`: the identities (`env_key`) of the
    environments of `recorded` (each with its recorded packages), by the key `forgotten`
    matches names on. Made once for a report: asked of every
    environment for each failing package, it grew with their product."""
    out: Holders = {}
    for env, packages in recorded:
        for p in packages:
            out.setdefault(_key(env.kind, p.name), set()).add(env_key(env))
    return out


def forget_command(name: str, env: Environment, held: Holders) -> str:
    """The command that stops retrying `name` of `env` (the environment the record keeps
    it under): `pkgckpt forget NAME`, naming `env` when another environment (`held`, from
    `holders`) holds the name too, as `forgotten` matches it: a bare forget would drop it
    there as well."""
    import shlex

    command = f"pkgckpt forget {shlex.quote(visible(name))}"
    found = [held[key] for key in {name, _key("python", name)} if key in held]
    me = env_key(env)
    if any(len(ids) > (me in ids) for ids in found):  # another than `env` holds it
        flag = "--r-lib" if env.kind == "r" else "--env"
        command += f" {flag} {shlex.quote(visible(env.path))}"
        # A prefix and its interpreter's user site are one --env: say which one.
        twin = env_key(msgspec.structs.replace(env, user=not env.user))
        if env.kind == "python" and any(twin in ids for ids in found):
            command += " --user-site" if env.user else " --no-user-site"
    return command


def forgotten(
    body: Body, names: Sequence[str], scope: Sequence[Environment] = (), stamp: str | None = None
) -> Body:
    """`body` without `names` in the environments of `scope` (every one when empty).

    Each package leaves added, changed or removed; an install the record held is kept in
    `forgotten`, so that no scan records it again while it stays as it is. Raises
    UnknownPackage when a name is recorded in none of those environments.
    """
    stamp = stamp or now_iso()
    chosen = [
        d for d in body.deltas() if not scope or any(manifest.same_env(d.env, s) for s in scope)
    ]
    wanted = {n: {_key("python", n), n} for n in names}
    hit: set[str] = set()
    events: list[Event] = []
    new: dict[tuple[str, str, bool], Delta] = {}
    for d in chosen:
        drop = {}
        for p in _recorded(d):
            key = _key(d.env.kind, p.name)
            for asked, keys in wanted.items():
                if key in keys:
                    drop[p.name] = p
                    hit.add(asked)
        if not drop:
            continue
        # A forgotten entry is what is installed here: after a revert the record may name
        # another version of it (the reverted one), which is not the install to ignore.
        remembered = {p.name: p for p in (*d.added, *d.changed) if p.name in drop}
        remembered.update({p.name: p for p in d.forgotten})
        new[env_key(d.env)] = msgspec.structs.replace(
            d,
            added=tuple(p for p in d.added if p.name not in drop),
            changed=tuple(p for p in d.changed if p.name not in drop),
            removed=tuple(p for p in d.removed if p.name not in drop),
            forgotten=tuple(remembered[n] for n in sorted(remembered)),
            failing=tuple(f for f in d.failing if f.name not in drop),
        )
        events += [Event(action="forget", time=stamp, env=d.env, name=n) for n in sorted(drop)]
    missing = [n for n in names if n not in hit]
    if missing:
        held = sorted({printable(p.name) for d in chosen for p in _recorded(d)})
        where = (
            "" if not scope else " of " + ", ".join(dict.fromkeys(visible(s.path) for s in scope))
        )
        # Recorded out of the scope (`--env`, or an `env` setting the user may not think of).
        inside = {env_key(d.env) for d in chosen}
        elsewhere: dict[str, dict[str, None]] = {}
        for d in body.deltas() if scope else ():
            if env_key(d.env) in inside:
                continue
            for p in _recorded(d):
                for n in missing:
                    if _key(d.env.kind, p.name) in wanted[n]:
                        elsewhere.setdefault(n, {})[printable(d.env.where())] = None
        hint = "".join(
            f"; {visible(n)} is recorded in {', '.join(envs)} (name it with --env / --r-lib)"
            for n, envs in elsewhere.items()
        )
        if held:
            holds = f"it holds: {', '.join(held)}{hint}"
        elif scope and not chosen:
            # Another spelling of the path (a symlink), or an environment never recorded.
            known = sorted({printable(d.env.where()) for d in body.deltas()})
            holds = "the record has no such environment" + (
                hint or (f"; it has: {', '.join(known)}" if known else "")
            )
        else:
            holds = f"it holds no package{hint}"
        asked = ", ".join(map(visible, missing))
        raise UnknownPackage(f"not in the record{where}: {asked}; {holds}")
    return Body.of(
        (new.get(env_key(d.env), d) for d in body.deltas()),
        events=(*body.events, *events)[-manifest.HISTORY_LIMIT :],
    )


def reverted(body: Body, old: Manifest, stamp: str | None = None) -> Body:
    """`body` whose record (added, changed, removed) is `old`'s, history kept and appended.

    Every install the current record holds and `old` does not (or holds at another
    version or source) is forgotten: still installed here, it is not recorded again.
    """
    stamp = stamp or now_iso()
    now = {env_key(d.env): d for d in body.deltas()}
    then = {env_key(d.env): d for d in old.body.deltas()}
    out: list[Delta] = []
    for key in sorted(now.keys() | then.keys()):
        cur, was = now.get(key), then.get(key)
        if was is None:
            assert cur is not None
            was = Delta(env=cur.env, image=cur.image)
        base = cur if cur is not None else msgspec.structs.replace(was, forgotten=(), failing=())
        keeps = {p.name: p for p in (*was.added, *was.changed)}
        drop = {p.name: p for p in (*base.added, *base.changed)} if cur is not None else {}
        drop.update({p.name: p for p in base.forgotten})  # what is installed (`forgotten`)
        # An install the reverted record holds as it is is followed again, not ignored.
        remembered = {
            n: p for n, p in drop.items() if n not in keeps or not same_install(keeps[n], p)
        }
        out.append(
            msgspec.structs.replace(
                base,
                added=was.added,
                changed=was.changed,
                removed=was.removed,
                # The entries are `old`'s: relative to its image, made where it says.
                image=was.image,
                mixed=was.mixed,
                forgotten=tuple(remembered[n] for n in sorted(remembered)),
                failing=tuple(
                    f
                    for f in base.failing
                    if f.name in keeps and keeps[f.name].version == f.version
                ),
            )
        )
    event = Event(action="revert", time=stamp, generation=old.generation)
    return Body.of(out, events=(*body.events, event)[-manifest.HISTORY_LIMIT :])


class Outcome(msgspec.Struct, frozen=True, kw_only=True):
    """What one restore did to one environment: the packages it failed, with reasons."""

    env: Environment
    failed: tuple[Failing, ...] = ()
    rebased: tuple[manifest.Rebased, ...] | None = None
    """Entries a rebase superseded or held back (None: the restore did not rebase, the
    recorded marks stand)."""
    damaged: tuple[Artifact, ...] = ()
    """Recorded artifacts whose bytes were not the recorded ones: their entries let them
    go, and the package is captured again where it is installed."""


_URL_CREDENTIALS = re.compile(r"(?<=://)[^/@\s]+@")
_SECRETS = re.compile(
    r"(?i)\b(password|passwd|pwd|token|secret|api[_-]?key|access[_-]?key|authorization)"
    r"(\s*[=:]\s*|\s+)(?:bearer\s+|basic\s+)?\S+"
)


_CUT = "… ".encode()


def reason(message: str) -> str:
    """A failure's reason as the manifest keeps it: credentials stripped, printable, and
    at most `REASON_BYTES` bytes: its last whole lines (the installer's last lines say
    why), after "… " when some were left out."""
    text = _URL_CREDENTIALS.sub("***@", message)
    text = _SECRETS.sub(lambda m: f"{m.group(1)}{m.group(2)}***", text)
    data = printable(text.strip()).encode()
    if len(data) > manifest.REASON_BYTES:
        data = data[len(data) - manifest.REASON_BYTES + len(_CUT) :]
        # From the first whole line on, unless the last line alone is longer: then on a
        # character boundary (no continuation byte at the new start).
        line = data.find(b"\n")
        if line != -1 and line + 1 < len(data):
            data = data[line + 1 :]
        while data and data[0] & 0xC0 == 0x80:
            data = data[1:]
        data = _CUT + data
    return data.decode()


def with_failures(body: Body, outcomes: Sequence[Outcome]) -> Body:
    """`body` with the failure counts a restore of `outcomes`' environments leaves: one
    more for each package it failed at the recorded version, none for the others."""
    by_env = {env_key(o.env): o for o in outcomes}
    out = []
    for d in body.deltas():
        outcome = by_env.get(env_key(d.env))
        if outcome is None:
            out.append(d)
            continue
        recorded = {p.name: p.version for p in _recorded(d)}
        before = {f.name: f for f in d.failing}
        now = []
        for f in outcome.failed:
            if recorded.get(f.name) != f.version:
                continue  # recorded anew since: a new version starts a new count
            last = before.get(f.name)
            count = last.count + 1 if last is not None and last.version == f.version else 1
            now.append(msgspec.structs.replace(f, count=count))
        d = msgspec.structs.replace(d, failing=tuple(sorted(now, key=lambda f: f.name)))
        if outcome.rebased is not None:
            marks = [r for r in outcome.rebased if recorded.get(r.name) == r.version]
            d = msgspec.structs.replace(d, rebased=tuple(sorted(marks, key=lambda r: r.name)))
        if outcome.damaged:
            d = _without(d, set(outcome.damaged))
        out.append(d)
    return Body.of(out, events=body.events)


def _without(d: Delta, damaged: set[Artifact]) -> Delta:
    """`d` with no entry naming an artifact of `damaged`."""

    def bare(packages: tuple[Package, ...]) -> tuple[Package, ...]:
        return tuple(
            msgspec.structs.replace(p, artifact=None) if p.artifact in damaged else p
            for p in packages
        )

    return msgspec.structs.replace(
        d, added=bare(d.added), changed=bare(d.changed), forgotten=bare(d.forgotten)
    )


# -- writing: through the daemon when one runs, else through the store -------------------


class _Forget(msgspec.Struct, frozen=True, kw_only=True, tag="forget"):
    names: tuple[str, ...]
    scope: tuple[Environment, ...] = ()


class _Revert(msgspec.Struct, frozen=True, kw_only=True, tag="revert"):
    generation: int


class _Failures(msgspec.Struct, frozen=True, kw_only=True, tag="failures"):
    outcomes: tuple[Outcome, ...]


Request = _Forget | _Revert | _Failures


class _Reply(msgspec.Struct, frozen=True, kw_only=True):
    generation: int | None = None
    error: str | None = None
    unknown: bool = False
    """The error is an UnknownPackage (exit 1 like any error, but said so)."""
    held: bool = False
    """The change is in the daemon's record, and the error says why the store does not
    hold it yet (HeldByDaemon); else the error says why nothing was changed."""


_request_decoder = msgspec.json.Decoder(Request)
_reply_decoder = msgspec.json.Decoder(_Reply)
_MAX_REQUEST = 1024 * 1024


def _change(store: Store, body: Body, request: Request) -> Body:
    """The body after `request`: the one function both writers use."""
    if isinstance(request, _Forget):
        return forgotten(body, request.names, request.scope)
    if isinstance(request, _Revert):
        return reverted(body, _generation(store, request.generation))
    return with_failures(body, request.outcomes)


def _generation(store: Store, generation: int, current: int | None = None) -> Manifest:
    found = store.read_generation(generation)
    if found is None:
        # The current generation is kept too, but is nowhere to go back to.
        kept = [k for k in store.generations() if k != current]
        if kept:
            back = f"it can go back to generation {min(kept)}"
        elif current is not None:
            back = f"no generation before the current one ({current}) is kept"
        else:
            back = "no generation is kept"
        raise NotKept(f"generation {generation} is not kept on the store: {back}")
    return found


class Written(_Out, frozen=True, kw_only=True):
    """A change to the record, on the store."""

    generation: int | None
    by_daemon: bool = False
    names: tuple[str, ...] = ()

    def render(self) -> str:
        who = "the daemon" if self.by_daemon else "pkgckpt"
        what = f"forgot {', '.join(map(visible, self.names))}: " if self.names else ""
        return f"{what}{who} wrote generation {self.generation}\n"


def _write(config: Config, request: Request, *, bounded: bool = True) -> Written:
    """Make the change: the running daemon does, or this process through the store, which
    has `status.STORE_SECONDS` to take it. A hard NFS mount whose server went away holds
    a read or a write for as long as it is gone, where Ctrl-C does not reach: `forget`
    and `revert` would never end. The change is then left to a thread that the process's
    exit ends, and the message says it may still have been written. Not `bounded`: a
    restore's bookkeeping, which its own watchdog bounds and names (`restore.run`)."""
    found = status.find_daemon(config)
    if found is not None:
        return Written(generation=ask_daemon(config, found, request), by_daemon=True)
    if not bounded:
        return _write_here(config, request)
    return answered(
        status.STORE_SECONDS,
        lambda: _write_here(config, request),
        config.store,
        unsure="; the change may have reached it or not (`pkgckpt history` says which)",
    )


def _write_here(config: Config, request: Request) -> Written:
    store = open_store(config)
    attempt = 1
    while True:
        # After a StoreConflict, `read` returns the newest generation: the change is made
        # again on it, so that what the other writer recorded stays.
        current = store.read()
        if current is None:
            raise PkgckptError(
                f"no manifest for key {config.key!r} in {store.path}: nothing recorded"
            )
        body = _change(store, current.body, request)
        # A restore's bookkeeping only annotates the record (`checkpoint.commit`): it
        # amends the generation just read, when the store still holds it as read
        # (`Store.commit`).
        amend = (
            current.generation
            if store.last_read_warning is None and annotates(body, current.body)
            else None
        )
        try:
            written = store.commit(body, amend=amend)
        except StoreConflict:
            if attempt == CONFLICT_ATTEMPTS:
                raise
            attempt += 1
            continue
        return Written(generation=written.generation if written else current.generation)


def _names(config: Config, prefix: str) -> tuple[str, re.Pattern[str]]:
    stem = f"{prefix}-{config.key}.{os.getpid()}.{os.urandom(8).hex()}.json"
    pattern = re.compile(re.escape(f"{prefix}-{config.key}.") + r"[0-9]+\.[0-9a-f]{16}\.json")
    return stem, pattern


def _read_private(directory_fd: int, name: str) -> bytes:
    """A file of the runtime directory that only this user could have written."""
    return read_owned(name, _MAX_REQUEST, forbid=0o077, dir_fd=directory_fd)


def ask_daemon(config: Config, found: status.Found, request: Request) -> int | None:
    """Hand `request` to the running daemon (a private file, in the runtime directory its
    status file is in, and SIGHUP) and wait for the generation it wrote; raise what it
    reports."""
    state = found.state
    runtime = ensure_runtime_dir(found.directory)
    name, _ = _names(config, "request")
    atomic_write(runtime / name, _encoder.encode(request), 0o600)
    answer = "reply" + name.removeprefix("request")
    os.kill(state.pid, signal.SIGHUP)
    wait = max(config.shutdown_timeout, 5.0)
    deadline = time.monotonic() + wait
    dfd = os.open(runtime, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    stopped = False
    try:
        while time.monotonic() < deadline:
            time.sleep(0.02)
            try:
                data = _read_private(dfd, answer)
            except FileNotFoundError:
                now = status.read_state(config)
                if now is None or not status.running(now, config):
                    stopped = True
                    break
                continue
            except OSError as e:
                raise StoreError(f"the daemon's answer {runtime / answer} is refused: {e}") from e
            with contextlib.suppress(OSError):
                os.unlink(answer, dir_fd=dfd)
            try:
                reply = _reply_decoder.decode(data)
            except (msgspec.DecodeError, msgspec.ValidationError) as e:
                raise PkgckptError(f"the daemon's answer is malformed: {e}") from None
            if reply.unknown:
                raise UnknownPackage(reply.error or "unknown package")
            if reply.held:
                raise HeldByDaemon(f"the daemon (pid {state.pid}): {reply.error}")
            if reply.error is not None:
                raise PkgckptError(f"the daemon (pid {state.pid}): {reply.error}")
            return reply.generation
        try:
            os.unlink(name, dir_fd=dfd)
            taken = "nothing was changed"
        except FileNotFoundError:
            taken = (
                "it took the request and may have made the change (`pkgckpt history` says)"
                if stopped
                else "it took the request and may still make the change"
            )
        why = "stopped before it answered" if stopped else f"did not answer within {wait:.0f} s"
        raise PkgckptError(f"the daemon (pid {state.pid}) {why}: {taken}")
    finally:
        os.close(dfd)


def serve(
    config: Config, session: Session, runtime: Path, rescan: Callable[[], None]
) -> list[tuple[str, _Reply | None]]:
    """The daemon's side: apply every pending request in `runtime` (the directory its
    status file is in) to the session's record, in order, reverts first; `rescan` (the
    daemon's scan of every library) runs between.

    A revert's plan was read from the store, which lacks what the daemon has seen
    installed and not committed yet (an install in its quiet window): applied after the
    scan, the revert would take that install out of the record without naming it; before
    it, the scan records it on top of the reverted record, as a daemon started after a
    revert does. A forget may name a package installed a moment ago: after the scan.

    Returns the replies to send once the record is committed (`answer`): None where the
    request was applied and the reply is the generation written. A request file that this
    user did not write privately is refused and removed.
    """
    taken: list[tuple[str, _Reply | None]] = []
    read = _read_requests(config, runtime, taken)
    unread = None
    if read:
        # A `snapshot` of what the daemon does not track writes beside it: a request is
        # made to the record as the store has it, or the commit's fold would take that
        # environment back whole from the store, undoing a revert or a forget of it. With
        # a store that cannot be read, the request is made to the record as this daemon
        # holds it, as before: one it can make waits for the store (exit 5).
        try:
            checkpoint.refresh(session)
        except PkgckptError as e:
            unread = e
    for reverts in (True, False):
        if not reverts:
            rescan()
        for reply, request in read:
            if isinstance(request, _Revert) != reverts:
                continue
            try:
                body = _change(session.store, session.tracker.body(), request)
            except UnknownPackage as e:
                error = str(e)
                if unread is not None:
                    # What another writer recorded since this daemon last read the store
                    # is not in its record: the name may well be there.
                    error += (
                        f"; the store could not be read ({unread}), and what it records"
                        " may hold it: try again once the store answers"
                    )
                taken.append((reply, _Reply(error=error, unknown=True)))
            except PkgckptError as e:
                taken.append((reply, _Reply(error=str(e))))
            else:
                session.tracker.adopt(body)
                log.info("%s", _describe(request))
                taken.append((reply, None))
    return taken


def _read_requests(
    config: Config, runtime: Path, refused: list[tuple[str, _Reply | None]]
) -> list[tuple[str, Request]]:
    """The pending requests in `runtime`, each with its reply's name, in order, every file
    removed; a malformed one goes to `refused` with its reply."""
    _, pattern = _names(config, "request")
    try:
        dfd = os.open(runtime, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return []
    read: list[tuple[str, Request]] = []
    try:
        for name in sorted(os.listdir(dfd)):  # noqa: PTH208
            if not pattern.fullmatch(name):
                continue
            reply = "reply" + name.removeprefix("request")
            try:
                data = _read_private(dfd, name)
            except OSError as e:
                log.warning("request %s refused: %s", runtime / name, e)
                continue
            finally:
                with contextlib.suppress(OSError):
                    os.unlink(name, dir_fd=dfd)
            try:
                read.append((reply, _request_decoder.decode(data)))
            except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError) as e:
                refused.append((reply, _Reply(error=f"malformed request: {e}")))
    finally:
        os.close(dfd)
    return read


def refuse(config: Config, runtime: Path, why: str) -> None:
    """The daemon's side while it has not read the store's manifest: it cannot apply a
    request to a record it does not know, so every pending one is answered at once with
    `why` (nothing changed), not left to time out."""
    _, pattern = _names(config, "request")
    with contextlib.suppress(OSError):
        names = sorted(n for n in os.listdir(runtime) if pattern.fullmatch(n))  # noqa: PTH208
        for name in names:
            with contextlib.suppress(OSError):
                (runtime / name).unlink()
        error = f"{why}: nothing was changed"
        answer(
            runtime,
            (("reply" + n.removeprefix("request"), _Reply(error=error)) for n in names),
            None,
            None,
        )


def _describe(request: Request) -> str:
    if isinstance(request, _Forget):
        return f"forget {', '.join(request.names)} (asked by pkgckpt forget)"
    if isinstance(request, _Revert):
        return f"revert to generation {request.generation} (asked by pkgckpt revert)"
    return "restore failures recorded"


def answer(
    runtime: Path,
    taken: Iterable[tuple[str, _Reply | None]],
    generation: int | None,
    error: str | None,
) -> None:
    """The daemon's replies, after its commit: the generation, or why it is not on the store."""
    if error is not None:
        error = f"the change is not on the store yet (the daemon keeps it and retries): {error}"
    for name, reply in taken:
        if reply is None:
            reply = _Reply(generation=generation, error=error, held=error is not None)
        try:
            atomic_write(runtime / name, _encoder.encode(reply), 0o600)
        except PkgckptError as e:
            log.warning("cannot answer %s: %s", name, e)


# -- the commands ------------------------------------------------------------------------


def forget(config: Config, names: Sequence[str], *, user_site: bool | None = None) -> Written:
    """`pkgckpt forget NAME...`: drop `names` from the record, in the selected environments
    (--env / --r-lib given: those; else every one). `user_site`: of what --env names, only
    the interpreters' user sites (True) or only the prefixes (False)."""
    scope = _named(config, user_site)
    written = _write(config, _Forget(names=tuple(dict.fromkeys(names)), scope=scope))
    return msgspec.structs.replace(written, names=tuple(dict.fromkeys(names)))


def _named(config: Config, user_site: bool | None = None) -> tuple[Environment, ...]:
    """The environments --env and --r-lib name, by the identity the record keeps (none
    named: every one). Read from the settings, not the file system: a venv removed since
    is still in the record, and `--r-lib` alone names no Python environment. A prefix is
    its Python environment, its conda environment and its interpreter's user site
    (`user_site` True: only that; False: not that)."""
    named: list[Environment] = []
    for prefix in config.env:
        path = str(prefix)
        if user_site is not True:
            named += [Environment(kind="python", path=path), Environment(kind="conda", path=path)]
        if user_site is True or (user_site is None and "user-site" in config.discover):
            named.append(Environment(kind="python", path=path, user=True))
    named += [Environment(kind="r", path=str(lib)) for lib in config.r_lib]
    return tuple(named)


class Reverted(msgspec.Struct, frozen=True):
    """What `pkgckpt revert` did (or, on a dry run, would do)."""

    to: int
    current: int
    plan: Plan
    """What restore would do in this container to match the reverted record."""
    written: Written | None = None
    """None: a dry run, nothing written."""
    restored: Report | None = None
    """`--restore`: the restore's report."""
    leaving: tuple[str, ...] = ()
    """Entries of the current record that the reverted one does not name at all
    (`name version in env`): no restore plan shows them, since nothing here changes."""

    @property
    def exit_code(self) -> int:
        return self.restored.exit_code if self.restored is not None else 0

    def preview(self) -> str:
        """What is asked before anything is written: the revert and its restore plan."""
        head = f"Revert generation {self.current} to the record of generation {self.to}."
        if self.leaving:
            head += (
                "\nLeaves the record (stays as it is here; a new container has what the image "
                f"ships): {', '.join(self.leaving)}"
            )
        return f"{head}\n{self.plan.render()}"

    def render(self, *, preview: bool = True) -> str:
        if self.to == self.current:
            lines = [f"Generation {self.to} is the current one: nothing to revert."]
            if self.restored is not None:
                lines.append(self.restored.render())
            elif not self.plan.is_empty():
                # The record is that generation already: what this container lacks of it.
                # Shown on a terminal too, where no question (which shows it) is asked.
                lines += [
                    self.plan.render(),
                    "Nothing was installed: the next `pkgckpt restore` applies it.",
                ]
            return "\n".join(lines) + "\n"
        lines = [self.preview()] if preview else []
        if self.written is None:
            lines.append("Dry run: nothing was changed.")
            return "\n".join(lines) + "\n"
        who = "the daemon" if self.written.by_daemon else "pkgckpt"
        lines.append(
            f"Reverted: {who} wrote generation {self.written.generation} "
            f"with the record of generation {self.to}."
        )
        if self.restored is not None:
            lines.append(self.restored.render())
        elif not self.plan.is_empty():
            lines.append("Nothing was installed: the next `pkgckpt restore` applies it.")
        return "\n".join(lines) + "\n"


def _leaving(now: Body, then: Body) -> tuple[str, ...]:
    """What `now` records under a name that `then` does not record at all, as
    `name version in env`: a revert to `then` drops it from the record only."""
    was = {env_key(d.env): {p.name for p in _recorded(d)} for d in then.deltas()}
    return tuple(
        f"{printable(p.name)} {printable(p.version)} in {printable(d.env.where())}"
        for d in now.deltas()
        for p in _recorded(d)
        if p.name not in was.get(env_key(d.env), set())
    )


def revert(
    config: Config,
    generation: int,
    *,
    dry_run: bool = False,
    confirm: Callable[[str], bool] | None = None,
    restore: bool = False,
    bounded: bool = False,
) -> Reverted:
    """`pkgckpt revert GENERATION`: make a kept generation's record current again, as a new
    generation. `confirm` is asked with the plan before anything is written; `restore`
    then applies it in this container (`bounded`: as `restore.run`'s, for the command)."""
    from . import restore as restore_

    store = open_store(config)
    current = store.read()
    if current is None:
        raise PkgckptError(f"no manifest for key {config.key!r} in {store.path}: nothing to revert")
    if generation == current.generation:
        # Nothing to do (exit 0), as for any command; `--restore` still applies the record.
        result = Reverted(to=generation, current=generation, plan=restore_.plan_of(config, current))
        if restore and not dry_run:
            result = msgspec.structs.replace(result, restored=_restore(config, bounded))
        return result
    old = _generation(store, generation, current.generation)
    body = reverted(current.body, old)
    plan = restore_.plan_of(config, Manifest(generation=generation, body=body))
    result = Reverted(
        to=generation,
        current=current.generation,
        plan=plan,
        leaving=_leaving(current.body, old.body),
    )
    if dry_run:
        return result
    if confirm is not None and not confirm(result.preview()):
        raise Declined("revert declined: nothing was changed")
    result = msgspec.structs.replace(result, written=_write(config, _Revert(generation=generation)))
    if restore:
        result = msgspec.structs.replace(result, restored=_restore(config, bounded))
    return result


def _restore(config: Config, bounded: bool) -> Report:
    """`revert --restore`'s restore of the record now current; a partial one's report too."""
    from . import restore as restore_

    try:
        return restore_.run(config, bounded=bounded, changed=True)
    except restore_.PartialRestore as e:
        if e.report is None:
            raise
        return e.report


def remember(config: Config, recorded: Manifest, report: Report) -> None:
    """After a restore of `recorded`: count its failures per package, clear the others,
    and let go of the artifacts whose bytes were not the recorded ones.

    Never fails the restore: a store that cannot take it now is logged, and the next
    restore counts again.
    """
    elsewhere = [env_key(e) for e in report.plan.elsewhere]
    # An R library matched by its role was planned under its path here, recorded under
    # the old one: its failures count against the record's, its rebase's marks land there.
    recorded_as = {
        env_key(e.env): env_key(e.recorded) for e in report.plan.environments if e.recorded
    }
    rebases = {env_key(e.recorded or e.env): e.rebase for e in report.plan.environments if e.rebase}
    # Of an older record carried on (below): the names the library's own record holds,
    # whose marks are that record's, not the older one's.
    theirs_only: dict[EnvKey, set[str]] = {}
    failures = {
        recorded_as.get(env_key(e.env), env_key(e.env)): e.failed for e in report.environments
    }
    # Installs an R library's own record lacks were planned from the older record of its
    # role (`rmatch.carried`): their failures count there, so that the next restore, which
    # plans them again, and `status` say how often they failed; their marks land there.
    for e in report.plan.environments:
        if e.carried is None:
            continue
        own = recorded.body.delta(e.recorded or e.env)
        mine = {p.name for p in _recorded(own)} if own is not None else set()
        there = next((r.failed for r in report.environments if manifest.same_env(r.env, e.env)), ())
        failures[env_key(e.carried)] = tuple(f for f in there if f.name not in mine)
        if e.rebase is not None:
            rebases[env_key(e.carried)] = e.rebase
            theirs_only[env_key(e.carried)] = mine
    stamp = now_iso()
    # By the artifact itself: one file, damaged for every entry that names it.
    damaged = {a for e in report.environments for a in e.damaged}
    outcomes = []
    for d in recorded.body.deltas():
        key = env_key(d.env)
        if key in elsewhere and key not in failures:
            continue
        versions = {p.name: p.version for p in _recorded(d)}
        failed = tuple(
            Failing(name=f.name, version=versions[f.name], reason=reason(f.message), time=stamp)
            for f in failures.get(key, ())
            if f.name in versions
        )
        rebase = rebases.get(key)
        marks = None
        if rebase is not None:
            not_ours = theirs_only.get(key, set())
            marks = tuple(
                manifest.Rebased(
                    name=c.name,
                    version=c.version,
                    state=c.action,
                    reason=reason(c.reason),
                    image=rebase.image_new,
                )
                for c in rebase.decisions
                if c.action in ("superseded", "held-back")
                and c.name in versions
                and c.name not in not_ours
            )
        named = {a for p in _recorded(d) if (a := p.artifact) is not None and a in damaged}
        gone = tuple(sorted(named, key=lambda a: a.file))
        if failed or d.failing or marks or d.rebased or gone:
            outcomes.append(Outcome(env=d.env, failed=failed, rebased=marks, damaged=gone))
    if not outcomes:
        return
    try:
        _write(config, _Failures(outcomes=tuple(outcomes)), bounded=False)
    except PkgckptError as e:
        log.warning("cannot record the failed packages on the store: %s", e)
