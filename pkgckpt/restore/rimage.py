"""An R library's record read against the R packages the image ships (DESIGN: invariant
10): the rows of `rebase.py`'s table, with R's versions and R's requirements.

    rebase_r(delta, target, libraries, baseline, live, config) -> Rebase | None

R searches its libraries in order (`.libPaths()`: the user library, then the site ones),
so a package in the user's library hides the image's copy in a site library. `w`, what
the image ships as seen from a library, is the baseline's version in that library (only
when that library's image changed, `Delta.image`: on the same one the record was taken
against it, and a baseline taken where the user's library persisted lists the user's own
packages), else in the other R libraries tracked here (the first one that has the name);
without a baseline yet (a dry run in a fresh container), what the other libraries hold
now. `v` is the recorded version; both compare as R's `package_version`
(`rmatch.r_version`: integer components split on `.` and `-`; "1.0-3" < "1.0.10";
unorderable: not superseded):

    added or changed X v   in place (that version, source and R build): nothing;
                           w >= v: superseded (installing v would hide the image's
                           newer X: a silent downgrade); a recorded downgrade (v below
                           the version it replaced) is the user's on purpose: installed
    removed X              not installed here: nothing; an image package needs it:
                           held back; otherwise removed

Then the image's requirements: each image package (installed now at the version the
image ships, in any R library here, and not one the record says the user installed) is
read from its `DESCRIPTION` (`Depends`, `Imports`, `LinkingTo`, with their version
constraints). A removal that leaves one of them without a package it names, or an
install at a version outside a constraint one of them states, is held back with that
requirement as written (`ckpt.base 1.0.0 held back: ckptImports 1.2.0 (image) requires
ckpt.base (>= 1.0.0)`), unless another library still holds a version that satisfies it.
`--on-conflict user` carries them out anyway and lists what breaks.

An addition that hides a package of the image in another R library is recorded with
the version it hides as `replaced` (`checkpoint._hidden`): an older one is the user's
on purpose, a recorded downgrade. One recorded before that was (no `replaced`) and older
than the image's is superseded: the image's newer copy is what R loads anyway once the
user's is not there.

None when nothing is superseded or held back: the library is then restored exactly as on
the same image (exact versions, builds for this R), and the plan says nothing new.
A DESCRIPTION may be planted: reads are bounded, and a name, operator or version that
does not parse is skipped.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

from ..config import Config
from ..manifest import Baseline, Delta, IndexSource, Package, image_identity, same_source
from ..rmatch import r_version, stale_build
from ..scan.r import DEPENDENCY_FIELDS, DescriptionError, read_dcf
from .rebase import Action, Decision, Part, Rebase

if TYPE_CHECKING:
    from ..inventory import Target

_REQUIREMENT = re.compile(
    r"\s*([A-Za-z][A-Za-z0-9.]*[A-Za-z0-9])\s*"
    r"(?:\(\s*(>=|<=|==|!=|>|<)\s*([0-9][0-9.\-]*)\s*\))?\s*"
)
_OPS = {
    ">=": lambda a, b: a >= b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    "<": lambda a, b: a < b,
    "==": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
}


class _Need(msgspec.Struct, frozen=True):
    """One requirement an image package states: `name (op version)`."""

    owner: str
    owner_version: str
    name: str
    op: str | None
    version: str | None

    def allows(self, version: str) -> bool:
        if self.op is None or self.version is None:
            return True
        have, want = r_version(version), r_version(self.version)
        return have is not None and want is not None and _OPS[self.op](have, want)

    def __str__(self) -> str:
        spec = f" ({self.op} {self.version})" if self.op else ""
        return f"{self.owner} {self.owner_version} (image) requires {self.name}{spec}"


def _at_least(have: str | None, want: str) -> bool:
    a, b = r_version(have or ""), r_version(want)
    return a is not None and b is not None and a >= b


def _description(path: Path) -> dict[str, str] | None:
    try:
        return read_dcf(path)
    except (OSError, DescriptionError):
        return None


def requirements(lib: Path, name: str, version: str) -> list[_Need]:
    """What the installed package `lib/name` requires, if it is `name` `version`."""
    fields = _description(lib / name / "DESCRIPTION")
    if fields is None or fields.get("Package") != name or fields.get("Version") != version:
        return []
    out = []
    for field in DEPENDENCY_FIELDS:
        for item in fields.get(field, "").split(","):
            match = _REQUIREMENT.fullmatch(item)
            if match is not None and match.group(1) != "R":
                out.append(_Need(name, version, match.group(1), match.group(2), match.group(3)))
    return out


def rebase_r(
    delta: Delta,
    target: Target,
    libraries: Sequence[Target],
    baseline: Baseline | None,
    live: Mapping[str, Package],
    config: Config,
) -> Rebase | None:
    """`delta` of R library `target` read against the image (see the module); None when
    that changes nothing."""
    others = [t for t in libraries if t is not target and t.env.kind == "r"]
    # No baseline yet (a dry run in a fresh container): what the other libraries hold is
    # the image; the record's own library may hold the user's packages.
    own_listed = baseline.image(target.env) if baseline is not None else None
    own = {p.name: p for p in own_listed or ()}
    # The image's copy in the record's own library counts only when that library's image
    # changed: on the same one it is what the record was taken against, and a baseline
    # taken where the user's library persisted lists the user's own packages.
    moved = delta.image is not None and delta.image != image_identity(own.values())
    shipped: list[tuple[Target, dict[str, Package]]] = [(target, own)]
    for t in others:
        listed = baseline.image(t.env) if baseline is not None else list(t.scan().packages)
        if listed is not None:
            shipped.append((t, {p.name: p for p in listed}))
    elsewhere: dict[str, Package] = {}
    for _, packages in shipped[1:]:
        for name, p in packages.items():
            elsewhere.setdefault(name, p)

    entries: list[tuple[Part, Package]] = [
        *(("added", p) for p in delta.added),
        *(("changed", p) for p in delta.changed),
        *(("removed", p) for p in delta.removed),
    ]
    decided: dict[str, Decision] = {}
    for part, p in entries:
        mine = own.get(p.name) if moved else None
        image_p = mine or elsewhere.get(p.name)
        action, reason = _classify(part, p, image_p, live.get(p.name), target)
        decided[p.name] = Decision(
            name=p.name,
            version=p.version,
            recorded=part,
            image=image_p.version if image_p is not None else None,
            action=action,
            reason=reason,
        )
    users = {p.name for p in (*delta.added, *delta.changed)}
    shipped[0] = (target, {n: p for n, p in own.items() if n not in users})
    broken: dict[str, str] = {}
    if any(d.action in ("install", "remove") for d in decided.values()):
        broken = _hold_back(decided, target, others, shipped, live, config)
    if not broken and not any(d.action in ("superseded", "held-back") for d in decided.values()):
        return None
    return Rebase(
        image_old=delta.image,
        mixed=delta.mixed,
        image_new=image_identity(own.values()),
        decisions=tuple(decided[k] for k in sorted(decided)),
        forced=tuple(sorted(broken)),
        broken=tuple(broken[k] for k in sorted(broken)),
    )


def _classify(
    part: Part, p: Package, image: Package | None, live: Package | None, target: Target
) -> tuple[Action, str]:
    w = image.version if image is not None else None
    if part == "removed":
        if live is None:
            return "nothing", "the image ships none" if w is None else "not installed here"
        return "remove", "removed by the user"
    if (
        live is not None
        and live.version == p.version
        and same_source(p.source, live.source)
        and stale_build(live, target.env) is None
    ):
        # Before "superseded": the user's copy is already what R loads, whatever the image
        # ships, so this restore changes nothing and has nothing to report.
        return "nothing", "in place"
    caught_up = (
        w is not None
        and _at_least(w, p.version)
        and (r_version(w) != r_version(p.version) or isinstance(p.source, IndexSource))
    )
    downgrade = p.replaced is not None and not _at_least(p.version, p.replaced)
    if caught_up and not downgrade:
        return "superseded", f"the image ships {w}"
    return "install", f"{part} by the user" + (f"; the image ships {w}" if w else "")


def _hold_back(
    decided: dict[str, Decision],
    target: Target,
    others: Sequence[Target],
    shipped: Sequence[tuple[Target, Mapping[str, Package]]],
    live: Mapping[str, Package],
    config: Config,
) -> dict[str, str]:
    """Hold back the planned changes an image package's requirement forbids (see the
    module). With `--on-conflict user` they stay planned, with the requirement in their
    reason; returned: name -> the requirement each of those breaks."""
    now = {t.env.path: {p.name: p for p in t.scan().packages} for t in others}
    now[target.env.path] = dict(live)
    # A removal here is no loss where another library still holds the package.
    elsewhere: dict[str, list[str]] = {}
    for t in others:
        for p in now[t.env.path].values():
            elsewhere.setdefault(p.name, []).append(p.version)
    needs: list[_Need] = []
    for t, packages in shipped:
        for name, p in packages.items():
            have = now[t.env.path].get(name)
            if have is not None and have.version == p.version:
                for lib in t.roots:
                    needs += requirements(lib, name, p.version)
    forced: dict[str, str] = {}
    while True:
        held: dict[str, str] = {}
        gone = {k for k, d in decided.items() if d.action == "remove" and k not in forced}
        for need in needs:
            d = decided.get(need.name)
            if need.owner in gone or d is None or need.name in forced:
                continue
            if d.action == "remove":
                broken = not any(need.allows(v) for v in elsewhere.get(need.name, ()))
            elif d.action == "install":
                broken = not need.allows(d.version)
            else:
                continue
            if broken:
                held.setdefault(need.name, str(need))
        if not held:
            return forced
        for name, why in held.items():
            d = decided[name]
            if config.on_conflict == "user":
                forced[name] = why
                why = f"--on-conflict user, although {why}"
                decided[name] = msgspec.structs.replace(d, reason=why)
            else:
                decided[name] = msgspec.structs.replace(d, action="held-back", reason=why)
