"""R libraries across an R upgrade: which recorded library a library here stands for, and
which installed packages were built for another R.

R's default user library is `~/R/%p-library/%v` (`R_LIBS_USER`): its path names the R
version, so a new image with a newer R has its user library elsewhere, and a manifest
that matched libraries by path alone would leave the user's packages behind. The rule:

1. A recorded environment whose path is a target here is that target (`same_env`), for
   every kind.
2. A recorded R library left over is matched by its role (`Environment.role`: the user
   library, RStudio's user library, a site library, `R_LIBS`, a named `--r-lib`): when
   exactly one R library here of that role is left over, it is the recorded one of that
   role, or the one recorded by the newest R when several are (4.1, then 4.2, now 4.3:
   the 4.2 record is the user's latest), and of several by that R, the one that changed
   last (its history's last time: a user library moved twice under one R). RStudio's
   (`r-libs-user=~/R/library/%v`) is a role of its own, not "user": beside R's own user
   library it moves with R too, and two of one role would match nothing. A library here
   that its own path matched is never taken again: once
   the daemon recorded the new user library, the old record no longer speaks for it.
   Several of a role left over here, or a tie for the newest R and the last change,
   match nothing.
   A record written before roles were (role None) is taken for the user library when
   its path is this R's user library with the recorded R's `major.minor` in place of
   this one's (`~/R/<platform>-library/4.3` for `.../4.4`): R's default.
3. A library here matched by its own path still carries on the installs of the record
   that rule 2 would have matched it with (`predecessors`, `carried`): the daemon
   records the new library with what a restore got in place, so after a restore that
   failed part of the old record (a repository down, the timeout) the new record lacks
   those packages. Each install of the older record that the library's own record
   neither holds (added, changed, removed, forgotten) nor saw the user uninstall
   (its history) stays planned for the library here (DESIGN: invariant 1).

An R package is compiled against one R `major.minor` (its `Built:` field, "R 4.3.2; ...");
R refuses or misbehaves with packages built for another. One whose installed copy was
built for another `major.minor` than the library's R is reinstalled even where its
version is the recorded one (`stale_build`); a patch release (4.3.1 to 4.3.2) keeps it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import msgspec

from .manifest import Delta, Environment, Package, same_env


def minor(version: str | None) -> str | None:
    """The `major.minor` of a version (R's "4.3.2" -> "4.3"; a Python interpreter's for its
    wheel tags, `wheeltags`); None when it has no two numeric parts."""
    if not version:
        return None
    parts = version.split(".")
    if len(parts) < 2 or not all(p.isdigit() for p in parts[:2]):
        return None
    return f"{parts[0]}.{parts[1]}"


def stale_build(installed: Package | None, env: Environment) -> str | None:
    """Why `installed`, in R library `env`, must be rebuilt: built for another R
    `major.minor` than the library's R. None when it needs no rebuild or either version is
    unknown."""
    if env.kind != "r" or installed is None:
        return None
    built, running = minor(installed.built), minor(env.interpreter)
    if built is None or running is None or built == running:
        return None
    return f"built under R {built}, this is R {running}"


def rebuilt(recorded: Package, found: Package) -> bool:
    """`found` is `recorded` built again for another R `major.minor`: another install, whose
    artifact (keyed by the R it was built for) is not the recorded one's."""
    was, now = minor(recorded.built), minor(found.built)
    return was is not None and now is not None and was != now


def latest(delta: Delta) -> str:
    """When the record of a library last changed (its history's last time; "" with none):
    of two records by the same R, the later is the user's latest."""
    return max((c.time or "" for c in delta.history), default="")


def _ranked(
    left: Sequence[int], recorded: Sequence[Environment], when: Sequence[str]
) -> tuple[list[int], bool]:
    """`left` (indices in `recorded`), newest R first, then latest change (`when`, by
    index, when given); and whether the first two tie on both."""

    def key(i: int) -> tuple[tuple[int, ...], str]:
        return _release(recorded[i].interpreter), when[i] if when else ""

    ranked = sorted(left, key=key, reverse=True)
    return ranked, len(ranked) > 1 and key(ranked[0]) == key(ranked[1])


def pair(
    recorded: Sequence[Environment], here: Sequence[Environment], when: Sequence[str] = ()
) -> dict[int, int]:
    """Index in `recorded` -> index in `here` of the environment it stands for (see the
    module docstring; `when`: each record's `latest`, which breaks a tie for the newest
    R); an environment matched by neither rule is left out."""
    paired: dict[int, int] = {}
    for i, env in enumerate(recorded):
        j = next((j for j, h in enumerate(here) if same_env(env, h)), None)
        if j is not None and j not in paired.values():
            paired[i] = j
    taken = set(paired.values())
    roles = {i: role(env, here) for i, env in enumerate(recorded) if i not in paired}
    for kind in sorted({r for r in roles.values() if r is not None}):
        left = [i for i, r in roles.items() if r == kind]
        free = [
            j for j, h in enumerate(here) if j not in taken and h.kind == "r" and h.role == kind
        ]
        newest, tie = _ranked(left, recorded, when)
        if len(free) == 1 and not tie:
            paired[newest[0]] = free[0]
    return paired


def predecessors(
    recorded: Sequence[Environment],
    here: Sequence[Environment],
    paired: Mapping[int, int],
    when: Sequence[str] = (),
) -> dict[int, int]:
    """Index in `recorded` of an R library matched by its own path (in `paired`, from
    `pair`) -> index of the record of its role left unpaired that rule 2 would have taken
    for it: the newest R's, the only library of that role here, no tie."""
    out: dict[int, int] = {}
    roles = {i: role(env, here) for i, env in enumerate(recorded) if i not in paired}
    for i, j in paired.items():
        h = here[j]
        if h.kind != "r" or h.role is None or not same_env(recorded[i], h):
            continue
        same = [k for k, o in enumerate(here) if o.kind == "r" and o.role == h.role]
        left, tie = _ranked([k for k, r in roles.items() if r == h.role], recorded, when)
        if same != [j] or not left:
            continue
        if not tie:
            out[i] = left[0]
    return out


def carried(old: Delta, new: Delta) -> tuple[tuple[Package, ...], tuple[Package, ...]]:
    """The installs (added, changed) of `old`, the record that spoke for a library before
    `new` did (`predecessors`), that `new` still owes the library: neither recorded in
    `new` in any form nor uninstalled by the user under `new`'s watch."""
    held = {p.name for p in (*new.added, *new.changed, *new.removed, *new.forgotten)}
    last: dict[str, str] = {}
    for c in new.history:
        last[c.name] = c.action
    owed = {
        p.name
        for p in (*old.added, *old.changed)
        if p.name not in held and last.get(p.name) != "remove"
    }
    return (
        tuple(p for p in old.added if p.name in owed),
        tuple(p for p in old.changed if p.name in owed),
    )


def carry_on(
    recorded: Sequence[Delta], here: Sequence[Environment], paired: Mapping[int, int]
) -> dict[int, tuple[int, Delta]]:
    """Index in `recorded` of an R library's own record that still owes it installs of
    the older record of its role (`predecessors`, `carried`) -> (the older record's index,
    the library's record with those installs added): what restore plans, and status shows."""
    out: dict[int, tuple[int, Delta]] = {}
    when = [latest(d) for d in recorded]
    for i, k in predecessors([d.env for d in recorded], here, paired, when).items():
        added, changed = carried(recorded[k], recorded[i])
        if added or changed:
            own = recorded[i]
            planned = msgspec.structs.replace(
                own, added=own.added + added, changed=own.changed + changed
            )
            out[i] = (k, planned)
    return out


def role(recorded: Environment, here: Sequence[Environment]) -> str | None:
    """The role of a recorded R library: as recorded, else inferred (see the module
    docstring); None for anything else."""
    if recorded.kind != "r":
        return None
    if recorded.role is not None:
        return recorded.role
    was = minor(recorded.interpreter)
    for h in here:
        now = minor(h.interpreter)
        if h.kind == "r" and h.role == "user" and was and now and was != now:
            head, sep, tail = h.path.rpartition(now)
            if sep and f"{head}{was}{tail}" == recorded.path:
                return "user"
    return None


def r_version(version: str) -> tuple[int, ...] | None:
    """An R version as R's `package_version` orders it: the integer components split on
    `.` and `-` ("1.0-3" is (1, 0, 3), below "1.0.10"); None when it is not one."""
    parts = version.replace("-", ".").split(".")
    return tuple(int(p) for p in parts) if all(p.isdigit() for p in parts) else None


def _release(version: str | None) -> tuple[int, ...]:
    return r_version(version or "") or ()


def moved(recorded: Environment, here: Environment) -> str | None:
    """How a recorded library paired by role differs from the one here, for people;
    None when it is the same path."""
    if same_env(recorded, here):
        return None
    was = f" of R {minor(recorded.interpreter)}" if minor(recorded.interpreter) else ""
    return f"recorded as the {role(recorded, [here])} library {recorded.where()}{was}"


def superseded(recorded: Environment, here: Sequence[Environment]) -> str | None:
    """Why an R library left unpaired is not restored, when a library of its role is here:
    another record (or an ambiguity) speaks for that one. None otherwise."""
    kind = role(recorded, here)
    same = [h.path for h in here if h.kind == "r" and h.role == kind]
    if kind is None or not same:
        return None
    return f"another record speaks for the {kind} library here ({', '.join(same)})"
