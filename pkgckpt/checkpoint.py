"""What a scan may change in the manifest: invariant 1, shared by the daemon and `snapshot`.

The manifest records, per environment, the user's state: the baseline (what the image
shipped) with the recorded delta applied. A `Tracker` folds scans into that state, but
only in ways that cannot lose a package:

- a package a scan finds is recorded at the version (and source) found;
- a package leaves the record only through an uninstall *observed by this process*: an
  earlier scan of this process found it in the same directory, and a later trusted scan
  (every root of the environment exists and was read, nothing broken or half-installed
  under that name, the library not empty, and quiet: not read at the maximum delay while
  files were still going, as they do while `rm -rf` deletes the environment) does not;
- the first scan of a process never takes anything away. A recorded package missing from
  it, or found at the image's version where the record holds the user's, keeps its
  record: a restore that failed or has not run yet looks exactly like that;
- an install the user dropped from the record (`pkgckpt forget`, `revert`: the delta's
  `forgotten`) is not recorded again while it stays as it was: found so by the first
  scan, or unchanged since this process last saw it. Installed, upgraded or removed
  again under this process's eyes, the forget ends and the change is recorded; so it
  does for a reinstall of the very same install (the scanner finds its entry made anew),
  and, for a first scan, for one whose entry was made after the forget (a reinstall no
  process saw: `snapshot` without a daemon).

An environment is a directory, not a path. Its identity is the (st_dev, st_ino) of each
library root and of the prefix's ``pyvenv.cfg`` or ``conda-meta/``, and how often the
watcher saw a root or an ancestor deleted or moved away (`inventory.Identity`: a new
directory may reuse a freed inode number).
When it differs from the previous scan's (``rm -rf env && python3 -m venv env``, ``mv env
env-old`` and a new one, a mount over the library), the scan is taken as the first of a
new environment at the same path: nothing seen in the old directory can be missing from
the new one, the user's records for that path stay, and what the new directory holds is
compared with the baseline afresh. A library found empty where the previous scan of the
same directory found anything, even one package, proves nothing either (a mount over it,
a wipe in progress): its packages stay recorded until a scan that finds something there
confirms their absence.

On another image (the baseline's `image_identity` differs from the one the recorded
delta is relative to), a recorded entry keeps the form it was recorded with, `replaced`
version and all, until this process sees the user change that package: an addition that
the new image now ships (superseded), a downgrade held back because the image needs the
newer version, a removal of a package the new image no longer ships are all still the
user's choices, and a later restore reads each against the image it then finds
(`restore/rebase.py`). The delta records the new image's identity only once every entry
is relative to it; until then it keeps the old one, so that restore rebases. On the same
image, a recorded entry this process did not change stays even where the baseline holds
that very install: a baseline taken by the first command of a container whose library
outlives it (a user site or R user library in a persistent home) includes the user's
packages, and equal to the baseline is not evidence that the image ships them.

Without a baseline for an environment whose manifest already records a delta (the
container's baseline was lost), the image's state is inferred from the first scan and
the recorded delta (`_inferred_baseline`); every recorded entry is kept and only changes
seen afterwards are added, so the manifest can only grow until a baseline is found again.

A venv made while the daemon runs (`made_here`: its pyvenv.cfg is newer than the daemon)
is no image's: its baseline is what making a venv puts there (`SEEDED`), so what the user
installed before the daemon found it (`pip install` before `ipykernel install --user`)
is recorded too. Found while it is still being made (a kernelspec names it before
`python3 -m venv` is done), the SEEDED packages it gains until `bin/activate` is there
(venv and virtualenv write it after seeding; at most `MAKING_S`) are its making's too.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from time import time as now
from typing import TYPE_CHECKING, TypeAlias

import msgspec

from . import inventory, manifest
from .config import Config
from .errors import PkgckptError, ScanError, StoreConflict, UsageError
from .inventory import Identity, Target
from .logs import getLogger
from .manifest import Artifact, Baseline, Body, Change, Delta, Environment, Manifest, Package
from .rmatch import rebuilt

log = getLogger(__name__)

if TYPE_CHECKING:
    # Types only: `pkgckpt baseline` needs neither, and they cost its start ~4 ms.
    from .discovery import Discovered, Unreadable
    from .store import Store

EnvKey: TypeAlias = tuple[str, str, bool]


def env_key(env: Environment) -> EnvKey:
    """The identity `manifest.same_env` compares, usable as a dict key."""
    return (env.kind, env.path, env.user)


SEEDED = frozenset({"pip", "setuptools", "wheel"})
"""What `python -m venv` (ensurepip), `virtualenv` or `uv venv --seed` put in a new venv."""


def made_here(env: Environment, since: float) -> bool:
    """Whether `env` is a venv made at `since` (a time.time()) or after: its pyvenv.cfg,
    which making the venv writes and nothing else changes, is no older."""
    if env.kind != "python" or env.user:
        return False
    try:
        return Path(env.path, "pyvenv.cfg").stat().st_ctime >= since
    except OSError:
        return False


MAKING_S = 300.0
"""How long a venv may take to be made (ensurepip on a slow home) before what it gains
counts as the user's, `bin/activate` or not."""


def _making(env: Environment) -> float | None:
    """Until when the venv `env` (made here) may still be seeded; None: it is made."""
    try:
        made = Path(env.path, "pyvenv.cfg").stat().st_ctime
    except OSError:
        return None
    return None if Path(env.path, "bin", "activate").exists() else made + MAKING_S


def _seeded_by(env: Environment, obs: Observation, making: float | None) -> Callable[[str], bool]:
    """Whether a SEEDED name found in the venv `env`, made while this process ran, is its
    making's: while it is still being made, yes; once made, only an entry written no later
    than `bin/activate`, which venv and virtualenv write after seeding. So a setuptools
    the user installed right after (Python 3.12 seeds pip alone) is the user's."""
    if making is not None:
        return lambda name: True
    try:
        activated = Path(env.path, "bin", "activate").stat().st_mtime_ns
    except OSError:
        return lambda name: False
    made = obs.made

    def seeded(name: str) -> bool:
        at = made(name) if made is not None else None
        return at is not None and at <= activated

    return seeded


def same_install(recorded: Package, found: Package) -> bool:
    """`found` is the install `recorded` describes: the same version from the same source
    (`manifest.same_source`); the rest (REQUESTED, INSTALLER) is bookkeeping.

    A restore installs every package as requested, by its own installer, and a VCS one at
    its recorded commit; counting those differences would rewrite the manifest after a
    container start for nothing. An R package rebuilt for another R `major.minor` is
    another install (`rmatch.rebuilt`): the record then takes the new build, whose
    artifact is yet to be captured.
    """
    return (
        recorded.version == found.version
        and recorded.build == found.build
        and manifest.same_source(recorded.source, found.source)
        and not rebuilt(recorded, found)
    )


class Observation(msgspec.Struct, frozen=True):
    """One scan of one environment, as the tracker needs it."""

    packages: Mapping[str, Package]
    trusted: bool = True
    """May a package missing from this scan count as uninstalled? False when a root is
    missing or could not be read."""
    uncertain: frozenset[str] = frozenset()
    """Names whose absence proves nothing: broken or still being installed."""
    identity: Identity | None = None
    """Which directories were read (see the module docstring); None: not known."""
    renewed: frozenset[str] = frozenset()
    """Names installed anew since the scan before, even as they were (`Target.renewed`)."""
    made: Callable[[str], int | None] | None = None
    """When a name found was installed (`Target.made_ns`); None: not known."""


class _Track(msgspec.Struct):
    env: Environment
    baseline: dict[str, Package]
    pinned: frozenset[str]
    """Names kept in `changed` although equal to the (inferred) baseline entry."""
    state: dict[str, Package]
    last: dict[str, Package]
    """What this process last saw installed, absences not yet confirmed included."""
    history: list[Change]
    forgotten: dict[str, Package] = msgspec.field(default_factory=dict)
    failing: dict[str, manifest.Failing] = msgspec.field(default_factory=dict)
    identity: Identity | None = None
    gone: set[str] = msgspec.field(default_factory=set)
    """Names whose uninstall this process observed (and not seen again since)."""
    image: str | None = None
    """`image_identity` of the baseline; None when the baseline was inferred."""
    shipped: dict[str, Package] = msgspec.field(default_factory=dict)
    """What the image ships as this environment sees it (`Baseline.image`): for a user
    site, its prefix's packages too."""
    beneath: dict[str, Package] = msgspec.field(default_factory=dict)
    """For an R library searched before the site libraries (the user's, R_LIBS'): what
    the image ships in those, which its own copies hide (`_hidden`)."""
    recorded: Delta | None = None
    """The delta as recorded when tracking began (or adopted): what untouched names keep."""
    touched: set[str] = msgspec.field(default_factory=set)
    """Names whose record this process changed: they are relative to this image now."""
    rebased: dict[str, manifest.Rebased] = msgspec.field(default_factory=dict)
    making: float | None = None
    """A venv found while it is being made (`made_here`, no `bin/activate` yet): until
    this time.time(), a SEEDED package it gains is its making's (ensurepip still at
    work), baseline. None: made."""
    activated: bool = False
    """`bin/activate`, which venv and virtualenv write after seeding, was there at the last
    scan: the next scan, begun after that, sees the venv made."""
    dropped: set[str] = msgspec.field(default_factory=set)
    """Names a forget or a revert took out of the record, removals included (`forgotten`
    holds installs only), until a later one records them again: what the store still
    records of them is not taken back in."""
    seen_at: dict[str, float] = msgspec.field(default_factory=dict)
    """When (time.time()) a scan after this process's first found each name installed
    anew, changed or uninstalled, or in another directory at the path: a forget another
    process made before that is not of what is there now (`_forgets`)."""


def _inferred_baseline(
    first: Mapping[str, Package], recorded: Delta | None
) -> tuple[dict[str, Package], frozenset[str]]:
    """The image's state guessed from a first scan, with every recorded entry kept.

    Recorded additions are not the image's; recorded removals carry the image's version.
    A recorded change whose image version cannot be told (the scan finds the user's
    version, or nothing) is pinned so that it stays recorded as a change.
    """
    base = dict(first)
    pinned: set[str] = set()
    if recorded is not None:
        for p in recorded.added:
            base.pop(p.name, None)
        for p in recorded.removed:
            base[p.name] = p
        for p in recorded.changed:
            live = first.get(p.name)
            if live is not None and not same_install(p, live):
                base[p.name] = live
            else:
                base[p.name] = p
                pinned.add(p.name)
    return base, frozenset(pinned)


class Tracker:
    """Folds scans into the recorded state of each environment, never losing a package."""

    def __init__(
        self,
        baseline: Baseline | None,
        recorded: Manifest | None,
        made_since: float | None = None,
    ) -> None:
        """`made_since`: when the daemon started (time.time()), for `made_here`; None: no
        environment is taken for one made while it ran."""
        self._baseline = baseline
        self._made_since = made_since
        self._recorded = recorded.body if recorded is not None else Body()
        self._events = list(self._recorded.events)
        self._tracks: dict[EnvKey, _Track] = {}
        self.inferred: list[Environment] = []
        """Environments tracked without a baseline (their image state was inferred)."""
        self.told: dict[EnvKey, tuple[Environment, tuple[Package, ...]]] = {}
        """The image's part of a container baseline's listing, where this process told it
        from the user's packages by the record (`Inventory.image`), by the baseline's
        environment, until `inventory.keep_images` has kept it (`scan`)."""
        self._edited: set[EnvKey] = set()
        """Environments not tracked whose record this process changed (`adopt`) and has
        not written yet: their delta is this process's, not only the store's."""

    def observe(self, env: Environment, obs: Observation, time: str | None = None) -> list[Change]:
        """Fold one scan of `env` in; return the changes it made to the record."""
        track = self._tracks.get(env_key(env))
        first = started = track is None
        if track is None:
            track = self._tracks[env_key(env)] = self._start(env, obs)
        elif obs.identity != track.identity:
            # Another directory at the same path: what the old one held says nothing here.
            first = True
            track.last = {}
            if self._made_since is not None and made_here(env, self._made_since):
                # A venv made again at a tracked path while this process ran: what making
                # it seeds is its making's, as for one new here (`_start`), not two installs
                # in the history, each written as a generation of its own.
                track.making, track.activated = _making(env), False
                seeded = _seeded_by(env, obs, track.making)
                for name, found in obs.packages.items():
                    if name.lower() in SEEDED and name not in track.state and seeded(name):
                        track.baseline[name] = track.state[name] = found
        track.env = env
        track.identity = obs.identity
        if track.making is not None and (track.activated or now() >= track.making):
            track.making = None
        before = dict(track.state)
        moment = now()
        # A library that turns empty at once is more likely unmounted than emptied by hand.
        vanished = not obs.packages and bool(track.last)
        absences_count = obs.trusted and not vanished
        for name, found in sorted(obs.packages.items()):
            seen = track.last.get(name)
            # A forgotten install made again as it was (`--force-reinstall`) is the user
            # wanting it after all: it goes on, and the forget ends below.
            again = name in obs.renewed and name in track.forgotten
            if seen is not None and same_install(seen, found) and not again:
                if name in obs.renewed:
                    track.seen_at[name] = moment
                continue  # unchanged since this process last looked: the record stands
            if not started:  # a directory found anew holds what is there now
                track.seen_at[name] = moment
            recorded = track.state.get(name)
            if recorded is not None and same_install(recorded, found):
                if seen is None:
                    continue
                # Seen otherwise before: the recorded install was made here again (one a
                # rebase superseded, installed by hand), a change of its own on this image.
                before[name] = seen
            image = track.baseline.get(name)
            if first and image is not None and same_install(image, found):
                continue  # the image's own where the record says otherwise: not restored yet
            if track.making is not None and recorded is None and name.lower() in SEEDED:
                # Its making's, as if there from the start: no change to the record, nor to
                # its history (an entry there is written as a generation of its own).
                track.baseline[name] = track.state[name] = before[name] = found
                continue
            if _refused(found, env.kind):
                # Planted by another writer of a shared library, or a tool's oddity: restore
                # would refuse the whole manifest for it, so it is not recorded; like a
                # broken entry, it does not count as the recorded install uninstalled.
                continue
            ignored = track.forgotten.get(name)
            if ignored is not None:
                if (
                    first
                    and same_install(ignored, found)
                    and not self._installed_since_forgotten(env, name, obs)
                ):
                    continue  # still the install the user told the record to forget
                del track.forgotten[name]  # installed or upgraded again: recorded again
            track.state[name] = found
            # Even where `diff` sees no change (a rebuild for another R minor): the record
            # now holds what this process found, relative to this image.
            track.touched.add(name)
        track.gone.difference_update(obs.packages)
        unconfirmed = {}
        for name, seen in track.last.items():
            if name in obs.packages:
                continue
            if absences_count and name not in obs.uncertain:
                if name in before:
                    before[name] = seen  # what was uninstalled, not what the record says
                track.state.pop(name, None)  # an uninstall this process saw happen
                track.forgotten.pop(name, None)
                track.gone.add(name)
                track.touched.add(name)
                track.seen_at[name] = moment
            else:
                unconfirmed[name] = seen
        track.last = {**unconfirmed, **obs.packages}
        if track.making is not None:
            track.activated = Path(env.path, "bin", "activate").exists()
        changes = manifest.diff(before, track.state, env.kind, time)
        for change in changes:
            track.failing.pop(change.name, None)  # another install: its failures are past
            track.rebased.pop(change.name, None)
        track.history.extend(changes)
        del track.history[: -manifest.HISTORY_LIMIT]
        return changes

    def _installed_since_forgotten(self, env: Environment, name: str, obs: Observation) -> bool:
        """Whether a first scan finds the forgotten `name` installed after it was forgotten:
        a reinstall as it was (`--force-reinstall`) that no scan of this process saw, as
        under `snapshot` without a daemon. The time is the latest forget of that name in
        `env`, or revert, the record holds; when its entry was written (`Target.made_ns`)
        must be later by more than the millisecond the record's times are cut to.
        Unknown either way: not since."""
        made = obs.made(name) if obs.made is not None else None
        if made is None:
            return False
        when = _time(_last_drop(self._events, env, name))
        return when is not None and made > when * 1e9 + 1e6

    def _start(self, env: Environment, obs: Observation) -> _Track:
        recorded = self._recorded.delta(env)
        inventory = self._baseline.inventory(env) if self._baseline is not None else None
        image, shipped = None, []
        making = None
        started: dict[str, Package] = {}
        if inventory is not None and self._baseline is not None:
            base = {p.name: p for p in inventory.shipped()}
            pinned = frozenset[str]()
            if self._baseline.container:
                # What this container started with, the user's included.
                started = inventory.by_name()
            shipped = inventory_image(self._baseline, env)
            image = manifest.image_identity(shipped)
            if recorded is not None and recorded.image not in (None, image):
                found = manifest.recorded_image(
                    shipped, recorded, taken_here=self._baseline.container
                )
                if found is not None:
                    # A baseline this container's first command took from a library that
                    # outlived the last one: the user's packages in it are not the image's.
                    base = manifest.unapply(base.values(), recorded, own=True)
                    shipped, image = found, recorded.image
                    told = tuple(base[n] for n in sorted(base))
                    self.told[env_key(env)] = (inventory.env, told)
                    # The user site tracked after its prefix sees the prefix's image.
                    self._baseline = self._baseline.told(inventory.env, told)
        elif self._made_since is not None and made_here(env, self._made_since):
            making = _making(env)
            seeded = _seeded_by(env, obs, making)
            base = {n: p for n, p in obs.packages.items() if n.lower() in SEEDED and seeded(n)}
            pinned = frozenset()
        else:
            first = self._before_start(env, obs)
            base, pinned = _inferred_baseline(first, recorded)
            # Said only where the scan found what the record does not name: an empty or
            # missing library (a user library R makes at its first install) leaves
            # nothing unrecorded.
            if not first.keys() <= _names(recorded):
                self.inferred.append(env)
        state = manifest.apply(base, recorded) if recorded is not None else dict(base)
        history = list(recorded.history) if recorded is not None else []
        track = _Track(
            env, base, pinned, state, {}, history, identity=obs.identity, image=image, making=making
        )
        track.shipped = {p.name: p for p in shipped}
        if env.kind == "r" and self._baseline is not None:
            track.beneath = _hidden(self._baseline, env)
        # A recorded install this container started with (a library that outlived the
        # last one) counts as seen: one found gone is an uninstall made here, before this
        # process could watch (a store that arrived late), not one a restore has to make.
        track.last = {n: p for n, p in started.items() if n in state and same_install(state[n], p)}
        if recorded is not None:
            _remember(track, recorded)
        return track

    def _before_start(self, env: Environment, obs: Observation) -> Mapping[str, Package]:
        """What an environment without a baseline held before this process started: the
        image's as far as anyone can tell. An install made since (into an R library that a
        new `~/.Renviron` names, found at the next discovery) is the user's. Not in a conda
        environment: one made since (`conda create`) holds nothing older, and all of it,
        dependencies and all, is what making it put there."""
        if self._made_since is None or obs.made is None or env.kind == "conda":
            return obs.packages
        since = int(self._made_since * 1e9)
        made = obs.made
        return {n: p for n, p in obs.packages.items() if (made(n) or 0) < since}

    def adopt(self, body: Body) -> None:
        """Make `body` the record (after a forget or a revert), keeping what this process
        saw installed: an install it saw before stays unrecorded until it changes, and
        what the store still records of a name `body` dropped is not folded back in."""
        was = {env_key(d.env): d for d in self._recorded.deltas()}
        before = self.body()
        self._edited.update(
            key
            for key, d in ((env_key(d.env), d) for d in body.deltas())
            if key not in self._tracks and was.get(key) != d
        )
        self._recorded = body
        self._events = list(body.events)
        for track in self._tracks.values():
            recorded = body.delta(track.env)
            held = _names(recorded)
            track.dropped = (track.dropped | (_names(before.delta(track.env)) - held)) - held
            track.state = (
                manifest.apply(track.baseline, recorded)
                if recorded is not None
                else dict(track.baseline)
            )
            kept = {p.name for p in recorded.changed} if recorded is not None else set()
            track.pinned = frozenset(track.pinned & kept)
            track.history = list(recorded.history) if recorded is not None else []
            track.forgotten, track.failing, track.rebased = {}, {}, {}
            track.recorded, track.touched = None, set()
            if recorded is not None:
                _remember(track, recorded)

    def fold(self, stored: Body, newer: bool = True, known: Body | None = None) -> None:
        """Fold what the store holds into the record, never the other way round.

        The store may hold what this process does not (another generation, a directory
        restored from a snapshot) or lack what it holds (deleted, rolled back). `newer`:
        the store holds a generation above the one this process last read or wrote
        (another writer of the key), not an older or equal one (a rolled-back copy).

        In an environment this process tracks, a package the store records as added,
        changed or removed joins the record unless this process observed that name
        itself (`_observed`: it changed its record, saw it uninstalled, was told to
        forget it, or sees another install of it than the store's where that is not the
        image's) — and, from a copy that is not newer, unless the record holds an entry
        of its own for it; a removal, unless the record holds an install or an upgrade of
        it (only an uninstall seen here takes that out). Whatever the image ships is in
        the state too; that is no
        reason to leave out another writer's upgrade of it, nor its removal: found here
        at the image's version, the package is one whose removal a restore has not made
        here yet. An environment this process does not track is taken as the newer store
        records it: its writer observed what changed there. From an older copy, or where
        this process changed that environment's record itself (a forget or a revert not
        written yet), its entries only join. Nothing the record holds leaves; a package
        the user told the record to forget (an install or a removal) is not brought back.

        The store's forgets and reverts (its `events`) join the record's history. Those of
        a newer store that this process had not read are the user's word on the record of
        a tracked environment too, where they dropped what this process records and has
        not seen change since (`_forgets`); `known`, the body this process last read or
        wrote, tells which removals a revert took out (None: not known, none is).
        """
        news = self._merge_events(stored.events)
        for theirs in stored.deltas():
            key = env_key(theirs.env)
            track = self._tracks.get(key)
            if track is None:
                whole = newer and key not in self._edited
                self._recorded = _with(self._recorded, theirs, whole=whole)
                continue
            ours = _entries(track.recorded) if track.recorded is not None else {}
            for part, p in (
                *(("added", p) for p in theirs.added),
                *(("changed", p) for p in theirs.changed),
                *(("removed", p) for p in theirs.removed),
            ):
                held = ours.get(p.name)
                removal = part == "removed"
                if (
                    _observed(track, p, removed=removal)
                    or (
                        held is not None
                        and (held[0] == "removed") == removal
                        and same_install(held[1], p)
                    )
                    or (held is not None and not newer)
                    # An install the record holds leaves only through an uninstall
                    # seen here (invariant 1): another writer's removal does not take it.
                    or (held is not None and removal and held[0] != "removed")
                ):
                    if p.artifact is not None and not removal:  # captured by another process
                        bare = msgspec.structs.replace(p, artifact=None)
                        self.attach(theirs.env, bare, p.artifact)
                    continue
                _take(track, theirs, part, p)
            if news and newer:
                mine = known.delta(theirs.env) if known is not None else None
                _forgets(track, theirs, news, self._events, mine)

    def _merge_events(self, stored: tuple[manifest.Event, ...]) -> list[manifest.Event]:
        """Make the record's history the store's (`stored`), followed by what this process
        added after the last event of its own the store holds (a change not written yet);
        return the events of `stored` after the last one this process holds, and not held
        by it (an older one it lacks was cut from its history by `HISTORY_LIMIT`)."""
        on, known = set(stored), set(self._events)
        last = max((i for i, e in enumerate(self._events) if e in on), default=-1)
        seen = max((i for i, e in enumerate(stored) if e in known), default=-1)
        self._events = [*stored, *self._events[last + 1 :]][-manifest.HISTORY_LIMIT :]
        return [e for e in stored[seen + 1 :] if e not in known]

    def written(self) -> None:
        """The record was written to the store whole: what this process changed in the
        environments it does not track is on the store from now on."""
        self._edited.clear()

    def attach(self, env: Environment, package: Package, artifact: Artifact) -> bool:
        """Record `artifact` as the capture of `package` in `env` when the record still
        holds that very install, with the artifact `package` had when its capture began
        (none, or one the store lost); whether it was recorded."""
        track = self._tracks.get(env_key(env))
        recorded = track.state.get(package.name) if track is not None else None
        if track is None or recorded is None or recorded.artifact != package.artifact:
            return False
        if not same_install(recorded, package):
            return False  # upgraded since the capture began: that artifact is not this install
        track.state[package.name] = msgspec.structs.replace(recorded, artifact=artifact)
        if track.recorded is not None and package.name not in track.touched:
            # On another image an untouched entry is carried in its recorded form
            # (`_carried`): the artifact goes there too, or the record would never show it
            # and the package would be captured again after every commit.
            track.recorded = _attached(track.recorded, package, artifact)
        return True

    def installed(self, env: Environment, package: Package) -> bool:
        """Whether the last scan of `env` found the very install `package` there."""
        track = self._tracks.get(env_key(env))
        return track is not None and _in_place(track, "added", package)

    def state(self, env: Environment) -> dict[str, Package] | None:
        """The recorded state of `env` as this tracker holds it (None: not scanned yet)."""
        track = self._tracks.get(env_key(env))
        return dict(track.state) if track is not None else None

    def unwritten(self, stored: Body) -> list[tuple[Environment, list[Change], list[str]]]:
        """What the record of each tracked environment holds that `stored` (the body on
        the store) lacks, what the next commit writes: the changes, and the names whose
        forget it does not have yet. `stored` is read against the baseline the record was
        applied to, so what this process left as it found it is no change, whatever image
        the entry was recorded on."""
        found = []
        for track in self._tracks.values():
            recorded = stored.delta(track.env)
            before = (
                manifest.apply(track.baseline, recorded)
                if recorded is not None
                else dict(track.baseline)
            )
            # A forget takes the entry out of the record, which a diff reads as an
            # uninstall (or, for a removal forgotten, an install): it is neither.
            held = {p.name for p in recorded.forgotten} if recorded is not None else set()
            forgets = sorted(n for n in track.forgotten if n not in held)
            changes = manifest.diff(before, track.state, track.env.kind)
            changes = [c for c in changes if c.name not in track.forgotten]
            if changes or forgets:
                found.append((track.env, changes, forgets))
        return found

    def body(self) -> Body:
        """The manifest body: every tracked environment's delta, untracked ones as recorded."""
        deltas: dict[EnvKey, Delta] = {env_key(d.env): d for d in self._recorded.deltas()}
        for key, track in self._tracks.items():
            d = manifest.delta(track.env, track.baseline, track.state, track.history)
            if track.env.user:
                d = _shadowing(d, track.shipped)
            elif track.beneath:
                d = _shadowing(d, track.beneath)
            kept = [
                track.state[n]
                for n in track.pinned
                if n in track.state and same_install(track.baseline[n], track.state[n])
            ]
            if kept:
                changed = sorted((*d.changed, *kept), key=lambda p: p.name)
                d = msgspec.structs.replace(d, changed=tuple(changed))
            recorded = {p.name for p in (*d.added, *d.changed, *d.removed)}
            d = msgspec.structs.replace(
                d,
                forgotten=tuple(track.forgotten[n] for n in sorted(track.forgotten)),
                failing=tuple(track.failing[n] for n in sorted(track.failing) if n in recorded),
            )
            d = _carried(track, d)
            kept_marks = {p.name for p in (*d.added, *d.changed, *d.removed)}
            d = msgspec.structs.replace(
                d, rebased=tuple(track.rebased[n] for n in sorted(track.rebased) if n in kept_marks)
            )
            if key in deltas or not d.is_empty() or d.history or d.forgotten:
                deltas[key] = d
        return Body.of(
            (deltas[k] for k in sorted(deltas)),
            events=tuple(self._events[-manifest.HISTORY_LIMIT :]),
        )


_BEFORE_SITE = frozenset({"user", "libs", "rstudio"})
"""The roles of the R libraries that `.libPaths()` puts before the site libraries."""


def _hidden(baseline: Baseline, env: Environment) -> dict[str, Package]:
    """What the image ships in the R libraries that R library `env`'s copies hide, the
    first of each name: the site libraries for the user's (and R_LIBS', RStudio's); for
    one named by `--r-lib`, whose place in the search the settings do not say, the other
    libraries, as a restore reads it (`restore.rimage`)."""
    if env.role not in _BEFORE_SITE and env.role != "named":
        return {}
    out: dict[str, Package] = {}
    for listed in baseline.environments:
        other = listed.env
        if other.kind != "r" or other.path == env.path:
            continue
        if env.role in _BEFORE_SITE and other.role != "site":
            continue
        for p in listed.shipped():
            out.setdefault(p.name, p)
    return out


def _shadowing(d: Delta, shipped: Mapping[str, Package]) -> Delta:
    """A user site's additions that shadow a package of the prefix's image record the
    version they shadow as `replaced`: `pip install --user idna==3.8` over the image's
    3.10 is a downgrade, and a rebase must read it as one. So do an R user library's
    over the site libraries' (`install.packages()` of an older version than the image's
    into the user's library)."""
    added = tuple(
        msgspec.structs.replace(p, replaced=shipped[p.name].version)
        if p.replaced is None and p.name in shipped
        else p
        for p in d.added
    )
    return msgspec.structs.replace(d, added=added)


def _refused(found: Package, kind: str) -> bool:
    """Would restore refuse a manifest holding `found` (`validate.package_problem`)? Only
    what is about to be recorded is asked: the image's packages never are."""
    from .validate import package_problem

    problem = package_problem(found, kind)
    if problem is not None:
        log.warning("not recorded, restore would refuse it: %s", problem)
    return problem is not None


def inventory_image(baseline: Baseline | None, env: Environment) -> list[Package]:
    """`baseline.image(env)`, empty when there is none."""
    return (baseline.image(env) if baseline is not None else None) or []


def _remember(track: _Track, recorded: Delta) -> None:
    track.forgotten = {p.name: p for p in recorded.forgotten}
    track.failing = {f.name: f for f in recorded.failing}
    track.rebased = {r.name: r for r in recorded.rebased}
    track.recorded = recorded


def _names(d: Delta | None) -> set[str]:
    return set(_entries(d)) if d is not None else set()


def _attached(d: Delta, package: Package, artifact: Artifact) -> Delta:
    """`d` with `artifact` recorded for its entry of the very install `package`."""

    def one(p: Package) -> Package:
        same = p.name == package.name and p.artifact == package.artifact
        if same and same_install(p, package):
            return msgspec.structs.replace(p, artifact=artifact)
        return p

    return msgspec.structs.replace(
        d, added=tuple(map(one, d.added)), changed=tuple(map(one, d.changed))
    )


def _entries(d: Delta) -> dict[str, tuple[str, Package]]:
    return {
        p.name: (part, p)
        for part, packages in (("added", d.added), ("changed", d.changed), ("removed", d.removed))
        for p in packages
    }


def fits(part: str, p: Package, baseline: Mapping[str, Package]) -> bool:
    """Whether a recorded entry is relative to `baseline`: what the same image would have
    recorded, so that restoring it as it stands is right (see `restore/rebase.py`)."""
    image = baseline.get(p.name)
    if part == "added":
        return image is None or image.version == p.replaced
    if part == "changed":
        return image is not None and p.replaced in (None, image.version)
    return image is None or image.version == p.version


def _carried(track: _Track, d: Delta) -> Delta:
    """`d` (computed against this baseline) with the recorded form of every entry this
    process did not change: each one when the record is relative to another image (or
    to an unknown one), the ones `d` lacks when it is relative to this image."""
    recorded = track.recorded
    if track.image is None:
        # An inferred baseline: the entries are as recorded already (`_inferred_baseline`).
        if recorded is None:
            return d
        return msgspec.structs.replace(d, image=recorded.image, mixed=recorded.mixed)
    if recorded is None:
        return msgspec.structs.replace(d, image=track.image)
    same = recorded.image == track.image
    entries = _entries(d)
    was = _entries(recorded)
    carried: set[str] = set()
    for name, entry in was.items():
        # On the same image an untouched entry missing from `d` equals the baseline: one
        # taken from a library that already held the user's packages (a home that
        # outlives the container), which proves nothing about the image. A record with
        # no image (written before images were recorded) is read as another image's.
        if name not in track.touched and not (same and name in entries):
            entries[name] = entry
            carried.add(name)
    parts: dict[str, list[Package]] = {"added": [], "changed": [], "removed": []}
    for name in sorted(entries):
        part, p = entries[name]
        parts[part].append(p)
    # A held-back or superseded entry is not relative to this image, even where the image
    # ships the version it replaced: what held it back is the image's requirements. A
    # conda record is never taken as relative to another image: restore holds back what
    # the image moved under (`restore._conda_rebase`), by the record's own image, for as
    # long as the user leaves it so; its dependencies, which no record keeps, may differ.
    whole = same or (
        track.env.kind != "conda"
        and not (track.rebased.keys() & entries.keys())
        and all(fits(part, p, track.shipped) for part, p in entries.values())
    )
    # Kept relative to the recorded image, the record holds what was recorded here too: an
    # install whose requirements this image met, which the recorded one may not (rolled
    # back to it, restore must check them). Relative to this image, a mixed record, or
    # one taken on from another image (an entry fits it, unchecked: no restore ran here
    # yet, or another writer's), is so until every entry is in place here: one a restore
    # held back, untouched, is what it was recorded as, on whichever image that was.
    if whole:
        taken = recorded.mixed or not same
        mixed = taken and not all(_in_place(track, *e) for e in entries.values())
    else:
        mixed = recorded.mixed or any(entries[n] != was.get(n) for n in entries.keys() - carried)
    return msgspec.structs.replace(
        d,
        added=tuple(parts["added"]),
        changed=tuple(parts["changed"]),
        removed=tuple(parts["removed"]),
        image=track.image if whole else recorded.image,
        mixed=mixed,
    )


def _in_place(track: _Track, part: str, p: Package) -> bool:
    """Whether the last scan found entry `p` (of `part`) made: that install there, or a
    removal's package gone."""
    seen = track.last.get(p.name)
    if part == "removed":
        return seen is None
    return seen is not None and same_install(seen, p)


def _observed(track: _Track, p: Package, *, removed: bool = False) -> bool:
    """Whether this process saw for itself what became of `p.name`, so that the store's
    entry `p` (another writer's, or an older copy's) must not replace its record of it:
    it changed that record (an install, an upgrade, an uninstall it saw), was told to
    forget the name (`forgotten`, `dropped`), or finds another install of it than `p`
    where that is not simply the image's (a restore that did not run yet, or failed,
    looks like the image's). `removed`: `p` is a removal, the install that should be
    gone, so any install of it found here other than the image's counts, `p`'s own
    version too (another image shipped it; here it is the user's).
    """
    name = p.name
    if (
        name in track.touched
        or name in track.gone
        or name in track.forgotten
        or name in track.dropped
    ):
        return True
    seen = track.last.get(name)
    if seen is None or (not removed and same_install(seen, p)):
        return False
    image = track.baseline.get(name)
    return image is None or not same_install(image, seen)


def _last_drop(
    events: Iterable[manifest.Event], env: Environment, name: str
) -> manifest.Event | None:
    """The last of `events` with a time that could have taken `name` of `env` out of the
    record: a forget of it, or a revert."""
    for event in reversed(list(events)):
        relevant = event.action == "revert" or (
            event.action == "forget"
            and event.name == name
            and event.env is not None
            and manifest.same_env(event.env, env)
        )
        if relevant and event.time is not None:
            return event
    return None


def _time(event: manifest.Event | None) -> float | None:
    """When (time.time()) `event` was made; None: no event, or a time that does not read."""
    try:
        return datetime.fromisoformat(event.time).timestamp() if event and event.time else None
    except ValueError:
        return None


def _forgets(
    track: _Track,
    theirs: Delta,
    news: list[manifest.Event],
    history: list[manifest.Event],
    known: Delta | None,
) -> None:
    """Take in what the forgets and reverts among `news` (events new to this process)
    dropped from the store's record of `track`'s environment (`theirs`): an install the
    store now keeps in `forgotten`, a removal a forget named, or one a revert took out
    of the record as this process last read or wrote it (`known`). Only where this process
    records just what was dropped and has not seen that name change since (`seen_at`,
    against the other process's clock): that is the user's word on the record, and this
    process's next commit must not undo it. What this process saw installed anew since
    keeps its record, as an install does after a forget made here (`observe`). A revert's
    entry for a name this process leaves out of its record for a forget is taken in the
    same way, the forget ended. Each only where it is the last word on the name in the
    record's `history`: not where this process made a forget or a revert after it (one
    the store does not hold yet)."""
    fresh = set(news)

    def settled(name: str) -> bool:
        event = _last_drop(history, theirs.env, name)
        when = _time(event) if event in fresh else None
        # The event's time is cut to the millisecond: a scan within it came before it, as
        # far as the record can tell, and the user's word on the record holds.
        return when is not None and track.seen_at.get(name, 0.0) < when + 1e-3

    forgot = {p.name: p for p in theirs.forgotten}
    entries = _entries(theirs)
    reverted = any(e.action == "revert" for e in news)
    if reverted:
        # A revert records again what a forget took out (this process's record of it
        # included): the store's entry is the user's word for it now.
        for name, (part, p) in entries.items():
            ignored = name in track.forgotten or name in track.dropped
            if not ignored or not settled(name):
                continue
            track.forgotten.pop(name, None)
            if name in forgot:
                track.forgotten[name] = forgot[name]
            track.dropped.discard(name)
            track.touched.discard(name)
            _take(track, theirs, part, p)
    named = {
        e.name
        for e in news
        if e.action == "forget" and e.name and e.env and manifest.same_env(e.env, theirs.env)
    }
    if known is not None and reverted:
        named |= {p.name for p in known.removed}
    for name in sorted(forgot.keys() | named):
        if not settled(name):
            continue
        held = track.state.get(name)
        dropped = forgot.get(name)
        if dropped is not None:
            if held is None or not same_install(held, dropped):
                continue
            track.forgotten[name] = dropped
        elif held is not None or name not in track.baseline or name in entries:
            continue  # not a removal this process records, or one the store keeps
        track.failing.pop(name, None)
        track.rebased.pop(name, None)
        track.pinned = track.pinned - {name}
        track.touched.discard(name)
        if name in entries:
            _take(track, theirs, *entries[name])  # a revert's own entry for it
            continue
        image = track.baseline.get(name)
        if image is None:
            track.state.pop(name, None)
        else:
            track.state[name] = image
        track.touched.add(name)  # so that no recorded form of it is carried (`_carried`)
        track.dropped.add(name)


def _take(track: _Track, theirs: Delta, part: str, p: Package) -> None:
    """Record the store's entry `p` (in `theirs`'s list `part`: added, changed or
    removed) as if it had been recorded when tracking began: untouched, it keeps the
    form it has on the store (`_carried`), relative to the image `theirs` is relative
    to. A removal leaves the state; this process's next scans, finding the package as
    they found it before, leave the record as it is (`observe`)."""
    name = p.name
    if part == "removed":
        track.state.pop(name, None)
    else:
        track.state[name] = p
    if track.image is None:
        # An inferred baseline holds the form of each entry (`_inferred_baseline`).
        if part == "added":
            track.baseline.pop(name, None)
        elif part == "removed":
            track.baseline[name] = p  # recorded removals carry the image's version
            track.pinned = track.pinned - {name}
        elif name not in track.baseline or same_install(track.baseline[name], p):
            track.baseline[name] = p
            track.pinned = track.pinned | {name}
    else:
        recorded = track.recorded
        if recorded is None:
            image, mixed, entries = theirs.image, theirs.mixed, {}
        else:
            # Relative to this image only while both records are.
            image = recorded.image if recorded.image != track.image else theirs.image
            mixed = recorded.mixed or theirs.mixed or recorded.image != theirs.image
            entries = _entries(recorded)
        entries[name] = (part, p)
        parts: dict[str, list[Package]] = {"added": [], "changed": [], "removed": []}
        for n in sorted(entries):
            parts[entries[n][0]].append(entries[n][1])
        track.recorded = Delta(
            env=track.env,
            added=tuple(parts["added"]),
            changed=tuple(parts["changed"]),
            removed=tuple(parts["removed"]),
            image=image,
            mixed=mixed,
        )
    # What a restore said of that install (held back, failing) comes with it.
    track.rebased.pop(name, None)
    track.rebased.update((r.name, r) for r in theirs.rebased if r.name == name)
    track.failing.pop(name, None)
    track.failing.update((f.name, f) for f in theirs.failing if f.name == name)


def _with(body: Body, theirs: Delta, *, whole: bool) -> Body:
    """`body` with the store's delta `theirs` for an environment no scan of this process
    reads. `whole`: `theirs` replaces `body`'s; else entries `body` lacks (and did not
    forget) join its delta, the ones it has stay as they are."""
    mine = body.delta(theirs.env)
    if mine is None or whole:
        merged = theirs
    else:
        names = {p.name for p in (*mine.added, *mine.changed, *mine.removed, *mine.forgotten)}
        added = tuple(p for p in theirs.added if p.name not in names)
        changed = tuple(p for p in theirs.changed if p.name not in names)
        removed = tuple(p for p in theirs.removed if p.name not in names)
        joined = bool(added or changed or removed)
        merged = msgspec.structs.replace(
            mine,
            added=(*mine.added, *added),
            changed=(*mine.changed, *changed),
            removed=(*mine.removed, *removed),
            mixed=mine.mixed or (joined and (theirs.mixed or theirs.image != mine.image)),
        )
    others = (d for d in body.deltas() if not manifest.same_env(d.env, theirs.env))
    return Body.of((*others, merged), events=body.events)


# -- a session: the manifest, the baseline and the scans of one process ----------------


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


NOTHING = "no Python environment or R library is configured"


def targets(config: Config, discovered: Discovered | None = None) -> list[Target]:
    found = inventory.targets(config, discovered)
    if not found:
        raise nothing(config)
    return found


def nothing(config: Config) -> UsageError:
    """What a command says that finds nothing to track."""
    why = (
        "no environment that --env names can be tracked (the warnings above say why)"
        if config.env
        else NOTHING
    )
    return UsageError(f"nothing to watch: {why}")


def observe(
    target: Target,
    changed: Mapping[Path, Collection[str]] | None = None,
    unsettled: Collection[Path] = (),
) -> Observation:
    """Scan one target (incrementally; `changed` as `Target.scan` takes it); raises
    ScanError when it cannot be read at all. `unsettled`: roots read while they were still
    changing (`Debouncer.unsettled`), whose absences prove nothing yet."""
    found = target.scan(changed)
    return Observation(
        found.by_name(),
        trusted=target.trusted and not any(root in unsettled for root in target.roots),
        uncertain=target.uncertain(),
        identity=target.identity,
        renewed=target.renewed,
        made=target.made_ns,
    )


def write_baseline(config: Config, output: Path) -> Baseline:
    """`pkgckpt baseline`: scan every target now and write the result to `output`."""
    problems: list[Unreadable] = []
    found = inventory.targets(config, unreadable=problems)
    named = [p for p in problems if p.origin == "--env"]
    if named:
        # The image names what it ships: one that cannot be read is a mistake of its
        # build, not a venv the user makes again later, as in a container.
        raise ScanError("; ".join(f"{p.path} (--env): {p.reason}" for p in named))
    inventory.warn(problems)
    if not found:
        raise UsageError(f"nothing to watch: {NOTHING}")
    baseline = inventory.take_baseline(found)
    inventory.save_baseline(baseline, output, answers=True)
    return baseline


class Session(msgspec.Struct):
    """What one process (daemon or snapshot) holds between scans and commits."""

    store: Store
    tracker: Tracker
    baseline_origin: str
    generation: int | None
    """Of the manifest on the store, as last read or written."""
    on_store: bytes | None
    """`manifest.encode_body` of the body on the store (an empty body when none yet);
    None when the current generation is damaged and must be rewritten."""
    scan_errors: list[str] = msgspec.field(default_factory=list)
    stored: Body | None = None
    """The body last read from the store or written to it (None: not known); where
    `on_store` is not None, the body it encodes: what a commit may only annotate."""
    keeps: Config | None = None
    """The settings that name the container's own baseline, where what the tracker tells
    of the image is kept (`inventory.keep_images`); None: the baseline is no container's."""


def open_session(
    config: Config,
    targets: Iterable[Target],
    store: Store,
    made_since: float | None = None,
    start: Mapping[EnvKey, Observation] | None = None,
) -> tuple[Session, list[tuple[Environment, Change]]]:
    """Read the manifest and the baseline, then scan every target: after what `start`
    holds, when given (what a daemon found at its start, while it could not read the store
    yet), so that what left since counts as uninstalled, as it would have with the store.

    The baseline is taken now only when there is none and the store holds no manifest
    for this key: with a manifest, today's installed packages may include restored ones,
    and taking them for the image's would drop them from the record. Without a baseline
    the tracker infers one (see the module docstring), but for a venv made since
    `made_since` (the daemon's start). Raises StoreError or ManifestError when the store
    cannot be read: nothing may be recorded before it is.
    """
    targets = list(targets)
    recorded = store.read()
    baseline = inventory.load_baseline(config)
    inventory.expect(targets, baseline)
    origin = str(inventory.baseline_path(config)) if baseline is not None else "inferred"
    if baseline is None and recorded is None:
        baseline = inventory.ensure_baseline(config, targets)
        origin = f"{inventory.baseline_path(config)} (taken now)"
    session = Session(
        store=store,
        tracker=Tracker(baseline, recorded, made_since),
        baseline_origin=origin,
        generation=recorded.generation if recorded is not None else None,
        on_store=None
        if store.last_read_warning is not None
        else manifest.encode_body(recorded.body if recorded is not None else Body()),
        stored=recorded.body if recorded is not None else None,
        keeps=config if baseline is not None and baseline.container else None,
    )
    found: list[tuple[Environment, Change]] = []
    if start:
        stamp = now_iso()
        for target in targets:
            obs = start.get(env_key(target.env))
            if obs is not None:
                found.extend(
                    (target.env, c) for c in session.tracker.observe(target.env, obs, stamp)
                )
    return session, found + scan(session, targets)


def scan(
    session: Session,
    targets: Iterable[Target],
    changed: Mapping[Path, Collection[str]] | None = None,
    unsettled: Collection[Path] = (),
) -> list[tuple[Environment, Change]]:
    """Rescan `targets` into the session's record (`changed` as `Target.scan` takes it,
    `unsettled` as `observe`); the changes made, in order."""
    stamp = now_iso()
    changes: list[tuple[Environment, Change]] = []
    session.scan_errors = []
    for target in targets:
        try:
            obs = observe(target, changed, unsettled)
        except PkgckptError as e:
            session.scan_errors.append(f"cannot scan {target.env.path}: {e}")
            continue
        changes.extend((target.env, c) for c in session.tracker.observe(target.env, obs, stamp))
    told = session.tracker.told
    # Not kept (a full runtime directory): tried again after the next scan.
    if told and session.keeps is not None and inventory.keep_images(session.keeps, told.values()):
        told.clear()
    return changes


CONFLICT_ATTEMPTS = 3
"""Commits in a row that another writer may overtake before the caller is told to retry
later (two writers of one key are rare; three collisions in a row are a busy key)."""


def commit(session: Session) -> Manifest | None:
    """Write the record when it differs from the store's; None when there was nothing new.

    A record that differs from the generation on the store only by annotations amends
    that generation under its own number (`Store.commit`'s `amend`): artifacts a capture
    attached, what the record did not know of an environment's interpreter (the ABI
    tag, which a pkgckpt before it did not record), and a restore's bookkeeping (how
    often it failed each package, what its rebase superseded or held back). None costs
    the user a kept generation, so `revert` and `history` reach as far back with the
    artifact cache, after an upgrade of pkgckpt, and with a package that fails at every
    container start, as without. Anything else (an install, a forget, another writer's
    generation folded in, another interpreter) is a new generation, which carries the
    annotations made since.

    Another writer of the key that takes the generation number picked, or passes it, while
    this one writes (`StoreConflict`) has its generation folded in like any other, and the
    commit is made again, up to `CONFLICT_ATTEMPTS` times.

    Raises StoreError (StoreUnavailable: retry later) or ManifestError; the record stays
    in the session either way, so a later call commits it.
    """
    attempt = 1
    while True:
        try:
            return _commit_once(session)
        except StoreConflict as e:
            if attempt == CONFLICT_ATTEMPTS:
                raise
            attempt += 1
            log.info("%s: folding it in and committing again", e)


def refresh(session: Session) -> None:
    """Fold into the record what the store holds that this process has not read or
    written (another writer of the key, a deleted directory, an older copy): before a
    change is made to the record, so that it is made to what the store holds. Raises as
    `Store.check`."""
    changed, stored = session.store.check()
    if changed:
        # The record is written whatever the store had, at the next commit.
        newer = stored is not None and (
            session.generation is None or stored.generation > session.generation
        )
        body = stored.body if stored is not None else Body()
        session.tracker.fold(body, newer, session.stored)
        if stored is not None:
            # Read now: what `confirm` expects when the record folds into this very body.
            session.generation = stored.generation
        session.on_store = None
        session.stored = stored.body if stored is not None else None


def _commit_once(session: Session) -> Manifest | None:
    with session.store.cycle():  # the store's root and key directory checked once for both
        refresh(session)
        body = session.tracker.body()
        encoded = manifest.encode_body(body)
        if encoded == session.on_store:
            session.tracker.written()  # the store holds it already
            return None
        amend = None
        if (
            session.stored is not None
            and session.on_store is not None
            and annotates(body, session.stored)
        ):
            amend = session.generation
        written = session.store.commit(body, encoded, amend=amend)
    session.tracker.written()
    session.on_store = encoded
    session.stored = body
    if written is not None:
        session.generation = written.generation
    return written


def annotates(body: Body, stored: Body) -> bool:
    """Whether `body` records what `stored` records, annotations aside (see `commit`).
    Cheap on the daemon's path: an install changes a delta's lengths, which is looked at
    first; equal packages compare in C, only the ones that differ are compared bare."""
    if msgspec.structs.replace(body, environments=(), conda=()) != msgspec.structs.replace(
        stored, environments=(), conda=()
    ):
        return False
    mine, theirs = body.deltas(), stored.deltas()
    return len(mine) == len(theirs) and all(
        _same_but_annotations(a, b) for a, b in zip(mine, theirs, strict=True)
    )


_LISTS = ("added", "changed", "removed", "forgotten")
"""A delta's lists of packages, whose artifacts an amend may add."""

_BOOKKEEPING = ("failing", "rebased")
"""What a restore says of a delta's packages (`record.with_failures`), which an amend may
change whole: it records no package, and the next restore rewrites it anyway."""


def _same_but_annotations(a: Delta, b: Delta) -> bool:
    lists = [(getattr(a, f), getattr(b, f)) for f in _LISTS]
    if any(len(x) != len(y) for x, y in lists) or not _filled_in(a.env, b.env):
        return False
    empty = dict.fromkeys((*_LISTS, *_BOOKKEEPING), ())
    if msgspec.structs.replace(a, env=b.env, **empty) != msgspec.structs.replace(b, **empty):
        return False
    return all(
        p == q or _bare(p) == _bare(q, p) for x, y in lists for p, q in zip(x, y, strict=True)
    )


def _filled_in(new: Environment, old: Environment) -> bool:
    """`new` says what `old` says, and perhaps more: a field `old` left unknown (None) may
    be known now, no known one has changed (another interpreter version is not more)."""
    return new == old or all(
        getattr(old, f) is None or getattr(old, f) == getattr(new, f)
        for f in Environment.__struct_fields__
    )


def _bare(p: Package, new: Package | None = None) -> Package:
    """`p` without its artifact; with `new`'s `replaced` where `p` has none: the version an
    addition hides, which a pkgckpt before it did not record for R (`_hidden`)."""
    replaced = new.replaced if new is not None and p.replaced is None else p.replaced
    if p.artifact is None and replaced == p.replaced:
        return p
    return msgspec.structs.replace(p, artifact=None, replaced=replaced)


def confirm(session: Session) -> bool:
    """Whether the store, read back now, holds the session's last generation and record.

    When it does not (deleted, rolled back, replaced), the next `commit` writes again.
    Raises StoreError or ManifestError when the store cannot be read.
    """
    found = session.store.read()
    if found is None and session.generation is None:
        return session.on_store == manifest.encode_body(Body())  # nothing to record
    if (
        found is not None
        and found.generation == session.generation
        and session.on_store is not None
        and manifest.encode_body(found.body) == session.on_store
    ):
        return True
    session.on_store = None
    return False
