"""Restore: put back what the manifest records, in this container's environments.

The API `cli.py` calls (`pkgckpt restore [--dry-run] [--json] ...`):

    run(config: Config, *, dry_run: bool = False,
        progress: Callable[[str], None] | None = None, bounded: bool = False,
        changed: bool = False) -> Report
        The whole command (`bounded`: as the command runs it, see there). Not a dry
        run: take the baseline if this container has none (inventory.ensure_baseline,
        before installing anything), then plan, then apply.
        A dry run only plans: it changes nothing, not even the baseline.
    plan(config: Config) -> Plan
        Read and validate the manifest (open_store(config).read(), then
        validate.check_body) and compare it with a live scan of each environment.
    plan_of(config: Config, manifest: Manifest) -> Plan
        The same for a manifest not on the store (`pkgckpt revert` shows it).
    apply(plan: Plan, config: Config, *,
          progress: Callable[[str], None] | None = None) -> Report
        Take the baseline if needed, then carry the plan out within `config.timeout`.
        Returns the Report whatever happened (see its exit_code); only run() raises.

    Plan.render() -> str, Report.render() -> str: text for a person;
    Plan.to_json() -> bytes, Report.to_json() -> bytes: for `--json` (msgspec).
    Report.exit_code: 0 (done, or nothing to do), 1 (nothing installed or removed
    anywhere, for a cause every failure shares: no R, say) or 3 (some packages failed, or
    the timeout ran out).

Errors (pkgckpt.errors): ManifestError (corrupt, hostile: refused, nothing installed),
StoreError / StoreUnavailable (the store refused or is unreachable), RestoreError (cannot
run at all: no interpreter, `--installer uv` without uv), UsageError (bad `installer`):
nothing changed, exit 1 or 2. `run()` raises PartialRestore (below; exit 3) when any package
failed or the timeout ran out; its `.report` is the Report, to be rendered like any other.
After a restore, `record.remember` counts in the manifest the restores in a row that
failed each package (and forgets the count of those that now succeed).

Credentials (`user:secret@` in a URL) never leave restore: the plan keeps the sources
as recorded, to install from them, but `render()` and `to_json()` of a Plan or a Report
take them out of every URL, and failure messages are cleaned when they are made.

`progress` receives one line per environment step (counts only); by default lines go to
stderr when stderr is a terminal, and nowhere otherwise.

Back ends: `python.PythonInstaller(env, config)` and `r.RInstaller(env, config)`, both
`runner.Installer` (name, blocked(), install(), remove()); every process goes through
`runner.call()`. Which URL schemes a Python source may use: see `python.py`.

The plan (DESIGN: invariants 4 and 6): per environment the manifest records, install
its added and changed packages at their exact versions and uninstall the image packages
the user removed (unless `keep_removed`), minus what a live scan finds already in place
(for R, at that version and built for this R's `major.minor`: `rmatch.stale_build`),
so a second run has nothing to do and says so without starting any installer. Nothing
else is touched; environments of the manifest that are not targets here are left alone
and listed. Manifest paths are only compared with the local targets (`same_env`, and an
R library's role after an R upgrade moved it: `pkgckpt.rmatch.pair`, with what the older
record of that role still owes a library matched by its own path: `rmatch.carried`), never
used to find an interpreter or a directory.

Order per environment: removals first, then one install call. Removing after installing
could delete files that a replacement package now owns (`opencv-python` replaced by
`opencv-python-headless`: both ship `cv2/`).

A new image or interpreter (`rebase.needed`): a Python environment's record is read
against this container's image instead (`rebase.py`): each entry is installed, removed,
superseded (the image caught up) or held back (it would break an image package), and the
installs resolve their dependencies within the untouched installed versions (`-c`).
An R library's record is read against the R packages the image ships in every R library
here (`rimage.py`); only when that supersedes or holds back something is it a rebase.
A conda environment's record holds back what the new image moved under
(`_conda_rebase`), and only then is it a rebase. Held-back entries, of every kind, are
reported as held back (not as failures) and make the exit code 3; they stay recorded
(with their state and reason, through `record.remember`) and come back at a later
restore onto an image that no longer conflicts.

Failures: when a batch fails, the environment is rescanned (pip may have installed part
of it) and what is still missing is split in halves, each installed again, down to single
packages: every package that fails is tried once on its own, the others still install,
and a failing package in 40 costs about 2·log2(40) ≈ 11 calls rather than 40. The report
names each failure with the last lines of its own installer call.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import msgspec

from ..config import Config
from ..errors import PkgckptError, UsageError
from ..jitter import REPORT_SECONDS
from ..manifest import (
    Artifact,
    Baseline,
    Body,
    Delta,
    DirectorySource,
    Environment,
    IndexSource,
    Kind,
    LocalSource,
    Manifest,
    Package,
    Source,
    UrlSource,
    VcsSource,
    image_identity,
    recorded_image,
    same_source,
    visible,
)
from ..rmatch import carry_on, latest, moved, pair, stale_build, superseded
from ..runner import Watchdog, redact_text, stop_on_signals
from ..scan.python import strip_credentials
from ..validate import canonical, check_body
from .rebase import Action, Decision, Part, Rebase
from .runner import ArtifactInstaller, Deadline, Installer, Outcome
from .venv import Remade, kernel_prefix, remake, stranded

if TYPE_CHECKING:
    from ..discovery import Discovered
    from ..inventory import Target
    from ..store import Store

__all__ = [
    "EnvPlan",
    "EnvReport",
    "Failure",
    "Plan",
    "Report",
    "Skipped",
    "Step",
    "apply",
    "plan",
    "plan_of",
    "run",
]

Progress = Callable[[str], None]


class _Out(msgspec.Struct, frozen=True, kw_only=True):
    """Base of the plan and report types: every field present in the JSON output.

    Subclasses repeat the options because type checkers do not follow msgspec's
    inheritance of them.
    """


class Step(_Out, frozen=True, kw_only=True):
    """One package to install or uninstall."""

    name: str
    version: str
    """install: the version to install. remove: the version installed now."""
    source: Source = IndexSource()
    installed: str | None = None
    """install: the version installed now (None: not installed)."""
    reason: Literal["added", "changed", "removed"]
    build: str | None = None
    """conda: the build string to install."""
    channel: str | None = None
    """conda: the recorded channel, which selects one of the configured ones."""
    artifact: Artifact | None = None
    """install: the package as captured on the store (`pkgckpt.artifacts`), tried first."""
    unfit: str | None = None
    """install: why `artifact` is not used here (a wheel for another interpreter)."""
    rebuild: str | None = None
    """R: why a package installed at the recorded version is installed again (built for
    another R `major.minor`; see `pkgckpt.rmatch.stale_build`)."""

    def package(self) -> Package:
        return Package(
            name=self.name,
            version=self.version,
            source=self.source,
            build=self.build,
            channel=self.channel,
            artifact=self.artifact,
        )

    def failure(self, action: Literal["install", "remove"], message: str) -> Failure:
        return Failure(
            name=self.name, version=self.version, action=action, message=redact_text(message)
        )


class Failure(_Out, frozen=True, kw_only=True):
    """A package that was not restored, and why (the installer's last lines)."""

    name: str
    version: str
    action: Literal["install", "remove"]
    message: str
    forget: str = ""
    """The command that stops its retries: `pkgckpt forget NAME`, naming the environment
    when another one records NAME too (a bare forget would drop it there as well); empty
    where no record was read."""


class EnvPlan(_Out, frozen=True, kw_only=True):
    env: Environment
    installer: str
    install: tuple[Step, ...] = ()
    remove: tuple[Step, ...] = ()
    kept: tuple[Step, ...] = ()
    """Image packages the user removed, installed now and left (`keep_removed`); listed
    when the environment has something else to do."""
    blocked: tuple[Failure, ...] = ()
    """Packages whose recorded source cannot be used here: reported, not attempted."""
    unavailable: str | None = None
    """Nothing of this environment can be restored here, for this one reason (R is not
    installed): said once instead of once per package."""
    rebase: Rebase | None = None
    """The record read against a new image or interpreter (None: the same ones)."""
    recorded: Environment | None = None
    """The manifest's environment, when it is another path: an R library matched by its
    role after an R upgrade moved it (see `pkgckpt.rmatch`)."""
    carried: Environment | None = None
    """The older record of this R library's role whose installs the library's own record
    lacks (`pkgckpt.rmatch.carried`): planned here too, their failures counted there."""

    def is_empty(self) -> bool:
        return not (self.install or self.remove or self.blocked)

    def held_back(self) -> tuple[Decision, ...]:
        return self.rebase.held_back() if self.rebase is not None else ()


class Skipped(_Out, frozen=True, kw_only=True):
    """An environment of the manifest that is not restored here, and why."""

    env: Environment
    packages: int
    """The recorded packages (added, changed, removed) left as they are."""
    reason: str


NOT_TRACKED = "not tracked here (use --env PATH or discovery)"
NOT_TRACKED_R = "not tracked here (use --r-lib DIR or discovery)"
MISSING = "missing"


def unpaired(env: Environment, here: Sequence[Environment]) -> str:
    """Why the record of `env` is not restored, no environment tracked here being it.
    `env` comes from the store: its path is only looked at, never used."""
    reason = superseded(env, here)
    if reason is not None:
        return reason
    if os.path.lexists(env.path):
        return NOT_TRACKED_R if env.kind == "r" else NOT_TRACKED
    import shlex  # only for a missing environment: a restore imports no more than it needs

    flag = "--r-lib" if env.kind == "r" else "--env"
    return (
        f"{MISSING}: the record keeps its packages; make it again at this path, or drop them with "
        f"pkgckpt forget {flag} {shlex.quote(visible(env.path))} NAME..."
    )


class Plan(_Out, frozen=True, kw_only=True):
    key: str
    store: str
    generation: int | None = None
    """The manifest's generation; None when the store holds no manifest for this key."""
    packages: int = 0
    """Packages the manifest tracks in the environments found here."""
    environments: tuple[EnvPlan, ...] = ()
    """Environments with something to do."""
    elsewhere: tuple[Environment, ...] = ()
    """Environments of the manifest that are not targets here: left alone."""
    skipped: tuple[Skipped, ...] = ()
    """The same environments, each with its recorded package count and the reason."""

    def is_empty(self) -> bool:
        return all(e.is_empty() for e in self.environments)

    def held_back(self) -> tuple[Decision, ...]:
        return tuple(d for e in self.environments for d in e.held_back())

    def held_by(self) -> str:
        """What held back the packages `held_back` gives, as the summaries name it."""
        by = [e.rebase for e in self.environments if e.rebase is not None and e.held_back()]
        return "the image" if by and all(r.on_its_image() for r in by) else "the new image"

    def to_json(self) -> bytes:
        return _encoder.encode(_without_credentials(self))

    def render(self) -> str:
        lines: list[str] = []
        if self.generation is None:
            lines.append(f"No manifest for key {self.key!r} in {self.store}: nothing to restore.")
        elif self.is_empty():
            here = " in the environments tracked here" if self.skipped else ""
            rebased = any(e.rebase is not None for e in self.environments)
            where = "in place, superseded or held back" if rebased else "in place"
            lines.append(
                f"Nothing to restore{here}: the {self.packages} package(s) of generation "
                f"{self.generation} (key {self.key!r}) are {where}."
            )
            lines += _kept_lines(self.environments)
            for e in self.environments:
                if e.rebase is not None:
                    lines.append(f"{e.env.where()}: {e.rebase.heading()}")
                    lines += e.rebase.render()
        else:
            lines.append(f"Restore plan for key {self.key!r}, generation {self.generation}:")
            for e in self.environments:
                lines.append(f"{e.env.where()} ({e.installer}): {_counts(e)}")
                if e.rebase is not None:
                    lines += e.rebase.render()
                if e.recorded is not None:
                    lines.append(f"  ({moved(e.recorded, e.env)})")
                if e.carried is not None:
                    lines.append(
                        f"  (and what the record of {e.carried.where()} holds that its own lacks)"
                    )
                lines += [f"  install {_describe(s)}" for s in e.install]
                lines += [f"  remove  {s.name} {s.version} (removed by the user)" for s in e.remove]
                lines += [f"  keep    {s.name} {s.version} (--keep-removed)" for s in e.kept]
                if e.unavailable:
                    lines.append(f"  cannot restore any of them: {e.unavailable}")
                else:
                    lines += [f"  cannot  {f.name} {f.version}: {f.message}" for f in e.blocked]
        lines += _skipped_lines(self.skipped)
        return "\n".join(lines)


class EnvReport(_Out, frozen=True, kw_only=True):
    env: Environment
    installer: str
    installed: tuple[str, ...] = ()
    """`name==version` of each package now installed as the manifest records."""
    removed: tuple[str, ...] = ()
    kept: tuple[str, ...] = ()
    failed: tuple[Failure, ...] = ()
    seconds: float = 0.0
    unavailable: str | None = None
    """Nothing could be installed here, for this one reason (no R, no readable R
    repository)."""
    notes: tuple[str, ...] = ()
    """Packages whose artifact was not used, why, and whether their source installed them."""
    from_artifacts: int = 0
    """Packages installed from their artifacts."""
    damaged: tuple[Artifact, ...] = ()
    """Recorded artifacts whose bytes were not the recorded ones: the record lets them go
    (`record.remember`), so that the daemon captures those packages again."""


class Report(_Out, frozen=True, kw_only=True):
    plan: Plan
    dry_run: bool = False
    environments: tuple[EnvReport, ...] = ()
    timed_out: bool = False
    seconds: float = 0.0
    remade: tuple[Remade, ...] = ()
    """Venvs whose interpreter the image took away, made again before planning (`venv`)."""

    @property
    def failures(self) -> tuple[Failure, ...]:
        return tuple(f for e in self.environments for f in e.failed)

    @property
    def exit_code(self) -> int:
        """0: done; 1: nothing installed or removed anywhere, for a cause shared by every
        failure; 3: some failed (beside what another environment installed, too), or a
        change was held back on a new image."""
        failing = [e for e in self.environments if e.failed]
        changed = any(e.installed or e.removed for e in self.environments)
        if failing and not changed and not self.timed_out and all(e.unavailable for e in failing):
            return 1
        held = self.plan.held_back() and not self.dry_run
        unmade = any(r.error for r in self.remade) and not self.dry_run
        return 3 if self.failures or self.timed_out or held or unmade else 0

    def to_json(self) -> bytes:
        return _encoder.encode(msgspec.structs.replace(self, plan=_without_credentials(self.plan)))

    def render(self) -> str:
        lines = [r.render(self.dry_run) for r in self.remade]
        if self.dry_run or self.plan.is_empty():
            return "\n".join([*lines, self.plan.render()])
        for e in self.environments:
            counts = f"installed {len(e.installed)}"
            if e.from_artifacts:
                counts += f" ({e.from_artifacts} from artifacts)"
            counts += f", removed {len(e.removed)}"
            if e.kept:
                counts += f", kept {len(e.kept)}"
            counts += f", failed {len(e.failed)}"
            lines.append(f"{e.env.where()} ({e.installer}): {counts} in {e.seconds:.1f} s")
            if e.unavailable:
                lines.append(f"  not restored: {e.unavailable}")
                continue
            lines += [f"  {note}" for note in e.notes]
            for f in e.failed:
                lines.append(f"  failed to {f.action} {f.name} {f.version}:")
                lines += [f"    | {line}" for line in f.message.splitlines()]
                stop = f.forget or f"pkgckpt forget {f.name}"
                lines.append(f"    (retried at every restore: `{stop}` stops it)")
        for ep in self.plan.environments:
            if ep.rebase is not None:
                lines.append(f"{ep.env.where()}: {ep.rebase.heading()}")
                lines += ep.rebase.render()
        lines += _skipped_lines(self.plan.skipped)
        failed = len(self.failures)
        held = len(self.plan.held_back())
        if self.timed_out:
            lines.append(f"Restore stopped: the timeout ran out after {self.seconds:.1f} s.")
        elif self.exit_code == 1:
            lines.append(f"Restore failed: {failed} package(s) could not be installed here.")
        elif failed:
            also = f", {held} held back by {self.plan.held_by()}" if held else ""
            lines.append(f"Restore incomplete: {failed} package(s) failed{also}.")
        elif held:
            by = self.plan.held_by()
            lines.append(f"Restore incomplete: {held} package(s) held back by {by}.")
        else:
            lines.append(f"Restored generation {self.plan.generation} in {self.seconds:.1f} s.")
        return "\n".join(lines)


_encoder = msgspec.json.Encoder(order="deterministic")


class PartialRestore(PkgckptError):
    """Some packages failed to install; the rest were installed. Here, not in
    pkgckpt.errors with the rest of the hierarchy, because it carries this module's Report."""

    exit_code = 3

    def __init__(self, message: str, report: Report | None = None) -> None:
        super().__init__(message)
        self.report = report
        """What was done and what failed: render it like a complete restore's report."""


class RestoreUnavailable(PartialRestore):
    """Nothing could be installed, for one cause shared by every package that failed (no
    R, no readable repository): one message, exit 1."""

    exit_code = 1


def _skipped_lines(skipped: Sequence[Skipped]) -> list[str]:
    return [
        f"Skipped {s.env.kind} {s.env.where()}: {s.packages} recorded package(s), {s.reason}"
        for s in skipped
    ]


def _kept_lines(environments: Sequence[EnvPlan]) -> list[str]:
    """What --keep-removed left installed although the user had removed it."""
    return [
        f"Kept (--keep-removed): {s.name} {s.version} in {e.env.where()}, removed by the user"
        for e in environments
        for s in e.kept
    ]


def _unavailable(installer: Installer) -> str | None:
    """The installer's reason why nothing of its environment can be restored, if it has one
    (`RInstaller.unavailable`)."""
    why = getattr(installer, "unavailable", None)
    return why if isinstance(why, str) else None


def _dependency_order(plans: list[EnvPlan], needs: Mapping[int, set[str]]) -> list[EnvPlan]:
    """Environments ordered so that one whose packages others need (an R user library's
    package importing a site library's) is restored first; ties and cycles keep the
    manifest's order."""
    provides = [{s.name for s in p.install} for p in plans]
    after = {
        i: {j for j in range(len(plans)) if j != i and needs.get(i, set()) & provides[j]}
        for i in range(len(plans))
    }
    order: list[int] = []
    while len(order) < len(plans):
        ready = [i for i in range(len(plans)) if i not in order and after[i] <= set(order)]
        order.append(ready[0] if ready else next(i for i in range(len(plans)) if i not in order))
    return [plans[i] for i in order]


def _counts(e: EnvPlan) -> str:
    parts = [f"install {len(e.install)}", f"remove {len(e.remove)}"]
    if e.kept:
        parts.append(f"keep {len(e.kept)}")
    if e.blocked:
        parts.append(f"cannot restore {len(e.blocked)}")
    return ", ".join(parts)


def _describe(step: Step) -> str:
    source = step.source
    text = f"{step.name} {step.version}"
    if isinstance(source, UrlSource):
        text += f" from {strip_credentials(source.url)}"
    elif isinstance(source, VcsSource):
        text += f" from {source.vcs}+{strip_credentials(source.url)}"
    elif isinstance(source, DirectorySource):
        text += f" from {source.path}" + (" (editable)" if source.editable else "")
    elif isinstance(source, LocalSource):
        text += f" from {source.path}" if source.path else " (a local install)"
    if step.artifact is not None and step.unfit is not None:
        text += f", not its artifact {step.artifact.file} ({step.unfit})"
    elif step.artifact is not None:
        text += f", its artifact {step.artifact.file} first"
    now = f"installed {step.installed}" if step.installed else "not installed"
    if step.rebuild:
        now += f", {step.rebuild}"
    return f"{text} ({step.reason}; {now})"


def _clean(source: Source) -> Source:
    if isinstance(source, (UrlSource, VcsSource)):
        return msgspec.structs.replace(source, url=strip_credentials(source.url))
    return source


def _without_credentials(plan: Plan) -> Plan:
    """`plan` as it may be shown: the same, with no credentials in any source URL."""
    environments = tuple(
        msgspec.structs.replace(
            e,
            install=tuple(msgspec.structs.replace(s, source=_clean(s.source)) for s in e.install),
        )
        for e in plan.environments
    )
    return msgspec.structs.replace(plan, environments=environments)


# -- comparing the manifest with what is installed ---------------------------------------


def _key(kind: Kind, name: str) -> str:
    # Python names compare normalized (PEP 503); R names are case-sensitive as they are.
    return canonical(name) if kind == "python" else name


def _same_version(kind: Kind, a: str, b: str) -> bool:
    if a == b or kind != "python":
        return a == b
    from packaging.version import InvalidVersion, Version

    try:
        return Version(a) == Version(b)
    except InvalidVersion:
        return False


def _in_place(kind: Kind, want: Package | Step, have: Package | None) -> bool:
    return (
        have is not None
        and _same_version(kind, want.version, have.version)
        and same_source(want.source, have.source)
        and (kind != "conda" or want.build == have.build)
    )


def _installed(target: Target) -> dict[str, Package]:
    kind = target.env.kind
    return {_key(kind, p.name): p for p in target.scan().packages}


def _installer(env: Environment, config: Config, rebase: Rebase | None = None) -> Installer:
    if env.kind == "python":
        from .python import PythonInstaller

        if rebase is not None:
            return PythonInstaller(env, config, constraints=rebase.constraints)
        return PythonInstaller(env, config)
    if env.kind == "conda":
        from .conda import CondaInstaller

        return CondaInstaller(env, config)
    from .r import RInstaller

    return RInstaller(env, config)


# -- plan ------------------------------------------------------------------------------


def _read(config: Config) -> Manifest | None:
    from ..store import open_store

    manifest = open_store(config).read()
    if manifest is not None:
        check_body(manifest.body)
    return manifest


def _image(
    baseline: Baseline | None, target: Target, now: Mapping[str, Package]
) -> list[Package] | None:
    """What the image ships in `target`: the baseline's record, else (no baseline yet, a
    dry run in a fresh container) what is installed now; None: not known (an
    environment the baseline does not list)."""
    if baseline is None:
        return list(now.values())
    return baseline.image(target.env)


def taken_here(baseline: Baseline | None) -> bool:
    """Whether `_image` is this container's own view of the image, which may hold the
    user's packages in place (`manifest.recorded_image`): no image-build baseline."""
    return baseline is None or baseline.container


def _conda_rebase(
    delta: Delta,
    image: Sequence[Package] | None,
    now: Mapping[str, Package],
    *,
    taken_here: bool = False,
) -> Rebase | None:
    """A conda environment's record read against a new image: every entry classified as
    `rebase.py` and `rimage.py` classify theirs, so that what is held back is reported,
    counted and recorded as theirs is; None when nothing is held back.

    Python and R are checked against their requirements; conda is not: its records keep
    no dependencies, and `--no-deps` or `remove --force` over an image that changed could
    break it unseen. So a change the new image moved under (it ships another version than
    the one the user changed, or ships what the user added) and a removal of what it
    still ships are held back (exit 3). On the recorded image (when every entry was
    recorded there: not `Delta.mixed`), or where the image is not known, the record is
    applied as it stands."""
    if image is None or (delta.image in (None, image_identity(image)) and not delta.mixed):
        return None
    if recorded_image(image, delta, taken_here=taken_here) is not None:
        return None  # the recorded image, seen through an environment that outlived it
    shipped = {p.name: p for p in image}
    decisions: list[Decision] = []
    parts: tuple[tuple[Part, tuple[Package, ...]], ...] = (
        ("added", delta.added),
        ("changed", delta.changed),
    )
    for part, packages in parts:
        for p in packages:
            has, here = shipped.get(p.name), now.get(p.name)
            action: Action = "install"
            reason = f"{part} by the user" + (f"; the image ships {has.version}" if has else "")
            if _in_place("conda", p, here):
                action, reason = "nothing", "in place"  # installed by hand on this image
            elif (
                has is not None
                and has.version != p.replaced  # else the image did not move under it
                and (has.version, has.build) != (p.version, p.build)
            ):
                action = "held-back"
                reason = (
                    f"the new image ships {p.name} {has.version}; conda's dependencies are "
                    "not checked, so the recorded version is not put over it (install it by "
                    "hand to keep it recorded)"
                )
            decisions.append(
                Decision(
                    name=p.name,
                    version=p.version,
                    recorded=part,
                    image=has.version if has else None,
                    action=action,
                    reason=reason,
                )
            )
    for p in delta.removed:
        has = shipped.get(p.name)
        action, reason = "remove", "removed by the user"
        if p.name not in now:
            action = "nothing"
            reason = "the image ships none" if has is None else "not installed here"
        elif has is not None:
            action = "held-back"
            reason = (
                "the new image ships it, and may need it; conda's dependencies are not "
                "checked, so it is not removed (remove it by hand to keep the removal recorded)"
            )
        decisions.append(
            Decision(
                name=p.name,
                version=p.version,
                recorded="removed",
                image=has.version if has else None,
                action=action,
                reason=reason,
            )
        )
    if not any(d.action == "held-back" for d in decisions):
        return None
    return Rebase(
        image_old=delta.image,
        mixed=delta.mixed,
        image_new=image_identity(image),
        decisions=tuple(sorted(decisions, key=lambda d: d.name)),
    )


def _beneath(target: Target, targets: Sequence[Target]) -> Target | None:
    """The prefix under a user site: its packages are the image a user site is read
    against (`Baseline.image`)."""
    if not target.env.user:
        return None
    prefix = msgspec.structs.replace(target.env, user=False)
    from ..manifest import same_env

    return next((t for t in targets if same_env(t.env, prefix)), None)


def _rebased(
    delta: Delta, target: Target, rebase: Rebase, now: Mapping[str, Package]
) -> tuple[list[Step], list[Step]]:
    """The install and remove steps of a rebase's decisions."""
    kind = target.env.kind
    recorded = {_key(kind, p.name): p for p in (*delta.added, *delta.changed)}
    install: list[Step] = []
    gone: list[Step] = []
    for d in rebase.decisions:
        have = now.get(_key(kind, d.name))
        if d.action == "install":
            p = recorded[_key(kind, d.name)]
            placed = have is not None and _same_version(kind, have.version, p.version)
            install.append(
                Step(
                    name=p.name,
                    version=p.version,
                    source=p.source,
                    installed=None if have is None else have.version,
                    reason="added" if d.recorded == "added" else "changed",
                    build=p.build,
                    channel=p.channel,
                    artifact=p.artifact,
                    rebuild=stale_build(have, target.env) if placed else None,
                )
            )
        elif d.action == "remove" and have is not None:
            gone.append(
                Step(name=have.name, version=have.version, installed=have.version, reason="removed")
            )
    return install, gone


def _plan(
    config: Config,
    manifest: Manifest | None,
    targets: Sequence[Target],
    baseline: Baseline | None = None,
    *,
    preview: bool = False,
    deadline: Deadline | None = None,
) -> Plan:
    """`preview`: the plan is shown, not applied (a dry run, `revert`'s question): a step
    only its artifact can install is checked on the store (`_artifact_gone`), which a
    restore does as it stages the artifacts, a store call each. `deadline`: the restore's,
    which the rebase's index reads do not outlast."""
    if manifest is None:
        return Plan(key=config.key, store=str(config.store))
    import functools

    @functools.cache
    def store() -> Store:  # a preview's: opened once, and only when an artifact is looked at
        from ..store import open_store

        return open_store(config)

    environments: list[EnvPlan] = []
    needs: dict[int, set[str]] = {}
    """Per planned environment: the packages its installs depend on (R's Depends, Imports,
    LinkingTo, as recorded)."""
    elsewhere: list[Environment] = []
    skipped: list[Skipped] = []
    tracked = 0
    index_until: float | None = None
    """When the index reads of every environment's rebase end: one budget for the plan."""
    # conda's packages first: pip's in the same prefix may need them.
    deltas = (*manifest.body.conda, *manifest.body.environments)
    here = [t.env for t in targets]
    paired = pair([d.env for d in deltas], here, [latest(d) for d in deltas])
    # An R library's own record may still owe it installs of the record it took over.
    carry = carry_on(deltas, here, paired)
    owed = {
        k: len(d.added) + len(d.changed) - len(deltas[i].added) - len(deltas[i].changed)
        for i, (k, d) in carry.items()
    }
    """Index of the older record -> how many of its installs are planned elsewhere."""
    carries = {i: deltas[k].env for i, (k, _) in carry.items()}
    """Index of the library's own record -> the older record it carries on."""
    deltas = tuple(carry[i][1] if i in carry else d for i, d in enumerate(deltas))
    for i, delta in enumerate(deltas):
        if delta.is_empty():
            continue
        target = targets[paired[i]] if i in paired else None
        if target is None:
            elsewhere.append(delta.env)
            count = len(delta.added) + len(delta.changed) + len(delta.removed)
            reason = unpaired(delta.env, here)
            if i in owed:
                reason += f"; {owed[i]} of them, missing from that record, are planned for it"
            skipped.append(Skipped(env=delta.env, packages=count, reason=reason))
            continue
        tracked += len(delta.added) + len(delta.changed) + len(delta.removed)
        kind = target.env.kind
        now = _installed(target)
        install: list[Step] = []
        gone: list[Step] = []
        rebase: Rebase | None = None
        if kind == "python":
            from .rebase import needed

            image = _image(baseline, target, now)
            own_view = taken_here(baseline)
            if image is not None and needed(delta, target.env, image, now, taken_here=own_view):
                from .rebase import budget
                from .rebase import rebase as read_against

                beneath = _beneath(target, targets)
                live = {**(_installed(beneath) if beneath else {}), **now}
                if index_until is None:
                    index_until = budget(deadline)
                rebase = read_against(
                    delta,
                    target,
                    image,
                    live,
                    config,
                    beneath,
                    taken_here=own_view,
                    index_until=index_until,
                )
                install, gone = _rebased(delta, target, rebase, now)
        elif kind == "r":
            from .rimage import rebase_r

            rebase = rebase_r(delta, target, targets, baseline, now, config)
            if rebase is not None:
                install, gone = _rebased(delta, target, rebase, now)
        elif kind == "conda":
            rebase = _conda_rebase(
                delta, _image(baseline, target, now), now, taken_here=taken_here(baseline)
            )
            if rebase is not None:
                install, gone = _rebased(delta, target, rebase, now)
        wanted: tuple[tuple[Literal["added", "changed"], tuple[Package, ...]], ...] = (
            ("added", delta.added),
            ("changed", delta.changed),
        )
        for reason, packages in wanted if rebase is None else ():
            for p in packages:
                have = now.get(_key(kind, p.name))
                placed = _in_place(kind, p, have)
                rebuild = stale_build(have, target.env) if placed else None
                if not placed or rebuild is not None:
                    install.append(
                        Step(
                            name=p.name,
                            version=p.version,
                            source=p.source,
                            installed=None if have is None else have.version,
                            reason=reason,
                            build=p.build,
                            channel=p.channel,
                            artifact=p.artifact,
                            rebuild=rebuild,
                        )
                    )
        for p in delta.removed if rebase is None else ():
            # Whatever version the image has now: the user removed the package, not a version.
            have = now.get(_key(kind, p.name))
            if have is not None:
                gone.append(
                    Step(
                        name=have.name,
                        version=have.version,
                        installed=have.version,
                        reason="removed",
                    )
                )
        if not install and not gone and rebase is None:
            continue
        # The target's env (this container's interpreter and platform), not the manifest's.
        installer = _installer(target.env, config, rebase)
        blocked: list[Failure] = []
        ready: list[Step] = []
        for step in sorted(install, key=lambda s: _key(kind, s.name)):
            # An artifact that fits needs no source: an R library restored from its
            # artifacts alone needs no repository (asking for one is a usage error).
            unfit = _artifact_unfit(target.env, step)
            if unfit is not None:
                step = msgspec.structs.replace(step, unfit=unfit)
            elif step.artifact is not None:
                lost = (
                    _artifact_gone(config, target.env, installer, step, store) if preview else None
                )
                if lost is None:
                    ready.append(step)
                else:
                    blocked.append(step.failure("install", lost))
                continue
            why = installer.blocked(step.package())
            if why is None:
                ready.append(step)
            else:
                blocked.append(step.failure("install", why))
        gone.sort(key=lambda s: _key(kind, s.name))
        wanted_now = {s.name for s in install}
        needs[len(environments)] = {
            d for p in (*delta.added, *delta.changed) if p.name in wanted_now for d in p.depends
        }
        environments.append(
            EnvPlan(
                env=target.env,
                installer=installer.name,
                install=tuple(ready),
                remove=() if config.keep_removed else tuple(gone),
                kept=tuple(gone) if config.keep_removed else (),
                blocked=tuple(blocked),
                unavailable=_unavailable(installer) if blocked and not ready else None,
                rebase=rebase,
                recorded=None if target.env.path == delta.env.path else delta.env,
                carried=carries.get(i),
            )
        )
    return Plan(
        key=config.key,
        store=str(config.store),
        generation=manifest.generation,
        packages=tracked,
        environments=tuple(_dependency_order(environments, needs)),
        elsewhere=tuple(elsewhere),
        skipped=tuple(skipped),
    )


def _artifact_gone(
    config: Config,
    env: Environment,
    installer: Installer,
    step: Step,
    store: Callable[[], Store],
) -> str | None:
    """Why the restore would fail `step`, which fits its artifact, when that artifact is
    missing from the store and the recorded source cannot stand in (`_no_fallback`);
    None when it would install."""
    from ..artifacts import use

    package = step.package()
    cannot = _no_fallback(config, env, installer, package)
    if cannot is None:
        return None
    why = use.unusable(store(), config, package)
    return None if why is None else f"{why}; {cannot}"


def _no_fallback(
    config: Config, env: Environment, installer: Installer, package: Package
) -> str | None:
    """Why `package` cannot be installed from its recorded source instead of its artifact
    (`use.fallback`, told what the installer says of that source), or None."""
    from ..artifacts import use

    try:
        source = installer.blocked(package)
    except UsageError as e:  # no R repository: this package fails, the rest goes on
        source = str(e)
    return use.fallback(config, env, package, source)


def _artifact_unfit(env: Environment, step: Step) -> str | None:
    """Why `step`'s artifact cannot be installed here (`artifacts.fits`); None when it
    has none or it fits. A step whose source cannot be used here may still install from
    an artifact that fits."""
    if step.artifact is None:
        return None
    from ..artifacts import fits

    return fits(env, step.package())


def plan(config: Config) -> Plan:
    """What a restore would do now; changes nothing."""
    from ..inventory import load_baseline, targets

    manifest = _read(config)
    if manifest is None:
        return _plan(config, manifest, [])
    return _plan(config, manifest, targets(config), load_baseline(config), preview=True)


def plan_of(config: Config, manifest: Manifest) -> Plan:
    """What a restore of `manifest` (not the store's: `pkgckpt revert`) would do now."""
    from ..inventory import load_baseline, targets

    check_body(manifest.body)
    return _plan(config, manifest, targets(config), load_baseline(config), preview=True)


# -- apply -----------------------------------------------------------------------------


def _terminal_progress() -> Progress | None:
    if not sys.stderr.isatty():
        return None

    def say(message: str) -> None:
        print(f"pkgckpt restore: {message}", file=sys.stderr, flush=True)

    return say


class _Env:
    """Carrying out one environment's plan: batches, rescans and bisection."""

    def __init__(
        self,
        target: Target,
        installer: Installer,
        deadline: Deadline,
        rebase: Rebase | None = None,
        beneath: Target | None = None,
    ) -> None:
        self.target = target
        self.kind = target.env.kind
        self.installer = installer
        self.deadline = deadline
        self.failed: dict[str, Failure] = {}
        self.fallbacks: dict[str, str] = {}
        """Step name -> why its artifact was not used, for the steps left to their source:
        whether the source did install them is known only after the whole plan."""
        self.damaged: dict[str, Artifact] = {}
        self.from_artifacts = 0
        self._rebase = rebase
        """A new image: the installs resolve their dependencies, read in the environment
        with the prefix `beneath` a user site."""
        self._beneath = beneath
        self.unmet: dict[str, str] = {}
        """canonical name -> a requirement of an install step not satisfied, as of the
        last `rescan`."""

    def rescan(self, steps: Sequence[Step]) -> dict[str, Package]:
        """What is installed now, and on a new image which of `steps` lack dependencies.
        `--on-conflict user`'s forced steps are installed without theirs, over what the
        image requires: the requirements they leave broken are the plan's `broken`."""
        now = _installed(self.target)
        if self._rebase is not None:
            from .rebase import unmet

            forced = {canonical(n) for n in self._rebase.forced}
            mine = {canonical(s.name) for s in steps} - forced
            self.unmet = unmet(self.target, self._beneath, mine, forced)
        return now

    def placed(self, step: Step, now: Mapping[str, Package]) -> bool:
        """An install step is done: the version and source the manifest records, built
        for this R when it is an R package, and on a new image its dependencies installed
        (pip puts a package in place in one call and resolves them in the next)."""
        have = now.get(_key(self.kind, step.name))
        return (
            _in_place(self.kind, step, have)
            and stale_build(have, self.target.env) is None
            and _key(self.kind, step.name) not in self.unmet
        )

    def gone(self, step: Step, now: Mapping[str, Package]) -> bool:
        """A remove step is done: no version of the package is left."""
        return _key(self.kind, step.name) not in now

    def _settle(
        self,
        steps: Sequence[Step],
        action: Literal["install", "remove"],
        attempt: Callable[[Sequence[Step]], Outcome],
        done: Callable[[Step, Mapping[str, Package]], bool],
    ) -> None:
        outcome = attempt(steps)
        if outcome.ok:
            return
        now = self.rescan(steps)
        left = [s for s in steps if not done(s, now)]
        if not left:
            return
        if len(steps) == 1 or outcome.timed_out:
            message = outcome.tail()
            for s in left:
                self.failed[s.name] = s.failure(action, message + self._locked(s.name, message))
            return
        middle = (len(left) + 1) // 2
        for part in (left[:middle], left[middle:]) if len(left) > 1 else (left,):
            self._settle(part, action, attempt, done)

    def _locked(self, name: str, message: str) -> str:
        """What to do of the lock R names in `message` (its failure to install `name`),
        which fails every install of `name` until it is removed: a lock an interrupted
        install left is removed, not a package to forget."""
        if self.kind != "r":
            return ""
        import re

        from ..scan.r import LOCK_PREFIX, lock_active, remove_lock_command

        for lock in (f"{LOCK_PREFIX}-{name}", LOCK_PREFIX):
            path = Path(self.target.env.path, lock)
            # R says "Try removing '<lib>/00LOCK-<name>'" of the lock it could not take
            # (the library as R spells it: the name alone is compared).
            said = re.search(rf"/{re.escape(lock)}(?![\w.-])", message)
            if said is None or not os.path.lexists(path):
                continue
            remove = remove_lock_command(path)
            if lock_active(path, self.target.r_lock_stale):
                return (
                    f"\n{path} is written under lately: an install may still run (another "
                    f"container's, on a shared library); once none does, remove it ({remove}) "
                    "and restore again"
                )
            return (
                f"\n{path} is left over from an interrupted install: remove it ({remove}) "
                "and restore again"
            )
        return ""

    def reinstall(self, batch: Sequence[Step]) -> frozenset[str]:
        """The names of the steps of `batch` whose version is installed, from another
        source: the installer must replace those, not call them satisfied."""
        return frozenset(
            s.name
            for s in batch
            if s.installed is not None and _same_version(self.kind, s.installed, s.version)
        )

    def install(self, steps: Sequence[Step]) -> None:
        def attempt(batch: Sequence[Step]) -> Outcome:
            return self.installer.install(
                [s.package() for s in batch],
                reinstall=self.reinstall(batch),
                deadline=self.deadline,
            )

        self._settle(steps, "install", attempt, self.placed)

    def install_artifacts(self, steps: Sequence[Step], config: Config) -> list[Step]:
        """Install the steps that have a usable artifact from it; the steps left for their
        recorded source (the others, and those whose artifact was not used)."""
        installer = self.installer
        if not isinstance(installer, ArtifactInstaller) or not any(s.artifact for s in steps):
            return list(steps)
        import tempfile

        from ..artifacts import use
        from ..store import open_store

        with tempfile.TemporaryDirectory(prefix="pkgckpt-artifacts-") as into:
            staged = use.stage(
                open_store(config),
                config,
                self.target.env,
                [s.package() for s in steps],
                Path(into),
            )
            self.damaged.update(staged.damaged)
            ready = [s for s in steps if s.name in staged.files]

            def attempt(batch: Sequence[Step]) -> Outcome:
                return installer.install_artifacts(
                    [s.package() for s in batch],
                    staged.files,
                    reinstall=self.reinstall(batch),
                    deadline=self.deadline,
                )

            if ready:
                self._settle(ready, "install", attempt, self.placed)
        # What `_settle` did not mark failed is in place as far as the installer knows;
        # the environment itself is checked once, after the whole plan (`_apply`).
        done = {s.name for s in ready if s.name not in self.failed}
        self.from_artifacts = len(done)
        left: list[Step] = []
        for s in steps:
            if s.name in done:
                continue
            failure = self.failed.pop(s.name, None)
            why = staged.unused.get(s.name) or (
                f"installing its artifact failed: {failure.message}" if failure else None
            )
            if why is None:  # no artifact
                left.append(s)
                continue
            cannot = _no_fallback(config, self.target.env, installer, s.package())
            if cannot is None:
                self.fallbacks[s.name] = f"{s.name} {s.version}: {why}"
                left.append(s)
            else:
                self.failed[s.name] = s.failure("install", f"{why}; {cannot}")
        return left

    def remove(self, steps: Sequence[Step]) -> None:
        def attempt(batch: Sequence[Step]) -> Outcome:
            return self.installer.remove([s.package() for s in batch], deadline=self.deadline)

        self._settle(steps, "remove", attempt, self.gone)


def _apply(
    plan: Plan, config: Config, targets: Sequence[Target], deadline: Deadline, say: Progress | None
) -> Report:
    from ..manifest import same_env

    started = time.monotonic()
    reports: list[EnvReport] = []
    for ep in plan.environments:
        began = time.monotonic()
        target = next((t for t in targets if same_env(t.env, ep.env)), None)
        failed: list[Failure] = list(ep.blocked)
        if target is None:
            # Planned elsewhere (plan() then apply() with other settings): nothing done here.
            reason = "environment not found here"
            failed += [s.failure("install", reason) for s in ep.install]
            failed += [s.failure("remove", reason) for s in ep.remove]
            reports.append(EnvReport(env=ep.env, installer=ep.installer, failed=tuple(failed)))
            continue
        rebase = ep.rebase if target.env.kind == "python" else None
        installer = _installer(target.env, config, ep.rebase)
        work = _Env(target, installer, deadline, rebase, _beneath(target, targets))
        if say is not None:
            say(f"{ep.env.where()}: {_counts(ep)} ({ep.installer})")
        forced = set(ep.rebase.forced) if ep.rebase is not None else set()
        first = [s for s in ep.remove if s.name not in forced]
        if first:
            work.remove(first)
        resolved = [s for s in ep.install if s.name not in forced]
        if resolved:
            rest = work.install_artifacts(resolved, config)
            if rest:
                work.install(rest)
        if len(resolved) < len(ep.install):
            # --on-conflict user: the user's versions last, exactly, over what the image needs.
            work.installer = _installer(target.env, config)
            rest = work.install_artifacts([s for s in ep.install if s.name in forced], config)
            if rest:
                work.install(rest)
        if len(first) < len(ep.remove):
            # After the installs, whose resolver would fetch back what a restored package
            # requires.
            work.remove([s for s in ep.remove if s.name in forced])
        # The truth is the environment afterwards, not the installers' exit codes.
        now = work.rescan(ep.install)
        installed: list[str] = []
        removed: list[str] = []
        notes: list[str] = []
        for s in ep.install:
            fallback = work.fallbacks.get(s.name)
            if work.placed(s, now):
                installed.append(f"{s.name}=={s.version}")
                if fallback is not None:
                    notes.append(f"{fallback}; installed from its source")
                continue
            if fallback is not None:
                tried = "the timeout ran out before its source could be installed"
                if not deadline.expired():
                    tried = "its source was tried and failed too"
                notes.append(f"{fallback}; {tried}")
            missing = work.unmet.get(canonical(s.name))
            why = "not installed after the installer reported success"
            if missing is not None and _in_place(work.kind, s, now.get(_key(work.kind, s.name))):
                why = f"installed, but its requirement {missing} is not satisfied"
            failed.append(work.failed.get(s.name) or s.failure("install", why))
        for s in ep.remove:
            if work.gone(s, now):
                removed.append(f"{s.name}=={s.version}")
            else:
                failed.append(
                    work.failed.get(s.name)
                    or s.failure("remove", "still installed after the installer reported success")
                )
        report = EnvReport(
            env=ep.env,
            installer=ep.installer,
            installed=tuple(installed),
            removed=tuple(removed),
            kept=tuple(f"{s.name}=={s.version}" for s in ep.kept),
            failed=tuple(failed),
            seconds=round(time.monotonic() - began, 3),
            unavailable=None if installed or removed else _unavailable(work.installer),
            notes=tuple(notes),
            from_artifacts=work.from_artifacts,
            damaged=tuple(work.damaged[n] for n in sorted(work.damaged)),
        )
        if say is not None:
            say(
                f"{ep.env.where()}: installed {len(installed)}, removed {len(removed)}, "
                f"failed {len(failed)}"
            )
        reports.append(report)
    return Report(
        plan=plan,
        environments=tuple(reports),
        timed_out=deadline.expired(),
        seconds=round(time.monotonic() - started, 3),
    )


def apply(plan: Plan, config: Config, *, progress: Progress | None = None) -> Report:
    """Carry out `plan`: baseline first, then removals and installs within the timeout."""
    from ..inventory import ensure_baseline, targets

    deadline = Deadline(config.timeout)
    found = targets(config)
    ensure_baseline(config, found)
    return _apply(plan, config, found, deadline, progress or _terminal_progress())


def _record(config: Config, report: Report, seconds: float) -> None:
    """The last run's figures in the runtime directory, for the daemon's metrics."""
    from ..metrics import record_restore

    outcomes = {"installed": 0, "removed": 0, "kept": 0, "failed": 0}
    for e in report.environments:
        outcomes["installed"] += len(e.installed)
        outcomes["removed"] += len(e.removed)
        outcomes["kept"] += len(e.kept)
        outcomes["failed"] += len(e.failed)
    # Beside `failed`, not in it: an alert on failures should not fire for every user whose
    # change a new image holds back, yet a fleet should see how many are.
    outcomes["held_back"] = len(report.plan.held_back())
    record_restore(config, seconds, outcomes)


def _forget_commands(report: Report, body: Body) -> Report:
    """`report` with each failure's `forget` command, from the record `body`."""
    from ..manifest import same_env
    from ..record import forget_command, holders

    held = holders((d.env, (*d.added, *d.changed, *d.removed)) for d in body.deltas())
    envs = []
    for e in report.environments:
        planned = next((p for p in report.plan.environments if same_env(p.env, e.env)), None)
        # The record's path: an R library matched by its role is recorded under another.
        env = (planned.recorded if planned is not None else None) or e.env
        failed = tuple(
            msgspec.structs.replace(f, forget=forget_command(f.name, env, held)) for f in e.failed
        )
        envs.append(msgspec.structs.replace(e, failed=failed))
    return msgspec.structs.replace(report, environments=tuple(envs))


def run(
    config: Config,
    *,
    dry_run: bool = False,
    progress: Progress | None = None,
    bounded: bool = False,
    changed: bool = False,
) -> Report:
    """`pkgckpt restore`: raises PartialRestore (with the Report) when anything failed.
    `bounded`: the process ends `REPORT_SECONDS` after the timeout whatever blocks it (a
    store that stopped answering), exit 1 before anything was installed, 3 after (at
    once when the caller `changed` something before: `revert --restore` wrote the
    record); for the command, never for a caller whose process must go on."""
    if not dry_run:
        from ..jitter import wait

        wait(config)
    deadline = Deadline(config.timeout)
    # Unbounded, it watches nothing: no thread, only the steps' names.
    watched = deadline if bounded else Deadline(None)
    watchdog = Watchdog(
        watched, REPORT_SECONDS, "restore", "finding the environments", 3 if changed else 1
    )
    try:
        return _run(config, dry_run, progress, deadline, watchdog)
    finally:
        watchdog.stop()


def _run(
    config: Config,
    dry_run: bool,
    progress: Progress | None,
    deadline: Deadline,
    watchdog: Watchdog,
) -> Report:
    from ..inventory import discover, ensure_baseline, targets

    discovered = None if config.env else discover(config)
    remade = _remake_stranded(config, discovered, deadline, dry_run, watchdog)
    if discovered is not None and any(r.python for r in remade) and not dry_run:
        discovered = discover(config)  # the kernels of the venvs made again
    found = targets(config, discovered)
    # A venv still without its interpreter (not made again, or not yet in a dry run) takes
    # no installer: --env tracks it from its files all the same.
    stranded = {r.path for r in remade if dry_run or r.error}
    found = [t for t in found if t.env.kind != "python" or t.env.path not in stranded]
    if dry_run:
        from ..inventory import load_baseline

        watchdog.doing = f"reading the store at {config.store}"
        manifest = _read(config)
        baseline = load_baseline(config) if manifest is not None else None
        watchdog.doing = "planning (the index, the artifact cache)"
        plan = _plan(config, manifest, found, baseline, preview=True, deadline=deadline)
        return Report(plan=_after_remade(plan, remade, dry_run), dry_run=True, remade=remade)
    # From where the timeout counts: a restore that used it up took at least that long.
    started = deadline.started
    # Before anything is installed: afterwards the image's packages could not be told apart.
    baseline = ensure_baseline(config, found)
    watchdog.doing = f"reading the store at {config.store}"
    manifest = _read(config)
    watchdog.doing = "planning (the index, the artifact cache)"
    the_plan = _plan(config, manifest, found, baseline, deadline=deadline)
    the_plan = _after_remade(the_plan, remade, dry_run)
    if the_plan.is_empty():
        report = Report(plan=the_plan)
    else:
        # Not before: `signal` costs the no-op ~1 ms, where `subprocess` has not loaded it.
        stop_on_signals()
        watchdog.doing, watchdog.code = "installing and removing packages", 3
        report = _apply(the_plan, config, found, deadline, progress or _terminal_progress())
    # The whole restore's time: the baseline, the store and the plan's index reads count
    # against the timeout as the installs do ("the timeout ran out after 5.0 s").
    report = msgspec.structs.replace(report, seconds=round(time.monotonic() - started, 3))
    if remade:
        report = msgspec.structs.replace(report, remade=remade)
    marks = any(
        d.action in ("superseded", "held-back")
        for e in the_plan.environments
        if e.rebase is not None
        for d in e.rebase.decisions
    )
    if manifest is not None and report.failures:
        report = _forget_commands(report, manifest.body)
    damaged = any(e.damaged for e in report.environments)
    if manifest is not None and (
        report.failures
        or marks
        or damaged
        or any(d.failing or d.rebased for d in manifest.body.deltas())
    ):
        from ..record import remember

        watchdog.doing = f"recording the outcome on the store at {config.store}"
        # Nothing installed (an empty plan still clears the marks of earlier failures):
        # still nothing changed, unless a venv was made again.
        watchdog.code = report.exit_code or watchdog.code
        remember(config, manifest, report)
    _record(config, report, time.monotonic() - started)
    if the_plan.is_empty() and not the_plan.held_back() and not report.exit_code:
        return report
    unmade = [r for r in report.remade if r.error]
    if unmade and not report.failures and not report.timed_out and not the_plan.held_back():
        raise PartialRestore(
            f"restore incomplete: {len(unmade)} venv(s) whose interpreter is gone, or runs "
            "another Python, could not be made again ("
            + "; ".join(r.render() for r in unmade)
            + ")",
            report=report,
        )
    if report.exit_code == 1:
        why = next(e.unavailable for e in report.environments if e.unavailable)
        raise RestoreUnavailable(f"restore failed: {why}", report=report)
    if report.exit_code and not report.failures and not report.timed_out:
        held = the_plan.held_back()
        raise PartialRestore(
            f"restore incomplete: {len(held)} package(s) held back by {the_plan.held_by()} ("
            + "; ".join(d.render() for d in held)
            + ")",
            report=report,
        )
    if report.exit_code:
        failed = report.failures
        names = ", ".join(f.name for f in failed[:5]) + (", ..." if len(failed) > 5 else "")
        what = "the timeout ran out" if report.timed_out else f"{len(failed)} package(s) failed"
        if held := the_plan.held_back():
            what += f", {len(held)} held back by {the_plan.held_by()}"
        stop = (failed[0].forget or f"pkgckpt forget {failed[0].name}") if failed else ""
        hint = f"; `{stop}` stops retrying it" if failed else ""
        raise PartialRestore(
            f"restore incomplete: {what}" + (f" ({names})" if names else "") + hint,
            report=report,
        )
    return report


def _after_remade(plan: Plan, remade: Sequence[Remade], dry_run: bool) -> Plan:
    """`plan` with why the venvs whose interpreter is gone (or moved) are skipped (`venv`)."""
    if not remade:
        return plan
    why = {
        r.path: "its venv was not made again (above)"
        if r.error
        else "planned once restore has made its venv again"
        for r in remade
        if r.error or dry_run
    }
    skipped = tuple(
        msgspec.structs.replace(s, reason=why[s.env.path])
        if s.env.kind == "python" and s.env.path in why
        else s
        for s in plan.skipped
    )
    return msgspec.structs.replace(plan, skipped=skipped)


def _remake_stranded(
    config: Config,
    discovered: Discovered | None,
    deadline: Deadline,
    dry_run: bool,
    watchdog: Watchdog,
) -> tuple[Remade, ...]:
    """Make again each venv of the record, tracked here, whose interpreter is gone or runs
    another minor version (`venv`)."""
    prefixes = list(config.env)
    if discovered is not None:
        # A kernelspec's interpreter that is missing: perhaps its venv's link to the old one.
        prefixes += [p for u in discovered.unreadable if (p := kernel_prefix(Path(u.path)))]
        # One whose link runs the image's new Python, which sees none of the old packages.
        prefixes += [f.prefix for f in discovered.found]
    # A stat() and a realpath() a prefix, and its pyvenv.cfg read where there is one.
    found = [v for p in dict.fromkeys(prefixes) if (v := stranded(p)) is not None]
    if not found:
        return ()
    if not dry_run:
        stop_on_signals()  # `python -m venv` with ensurepip takes seconds: as for installs
    watchdog.doing = f"reading the store at {config.store}"
    manifest = _read(config)
    recorded = {
        d.env.path
        for d in (manifest.body.environments if manifest is not None else ())
        if d.env.kind == "python" and not d.env.user and not d.is_empty()
    }
    watchdog.doing = "making again the venvs whose interpreter is gone or moved"
    if not dry_run and any(str(v.prefix) in recorded for v in found):
        watchdog.code = 3  # a venv made again is a change
    remade = tuple(remake(v, deadline, dry_run=dry_run) for v in found if str(v.prefix) in recorded)
    watchdog.doing = "finding the environments"
    return remade


def command(config: Config, *, dry_run: bool, as_json: bool) -> int:
    """The `restore` command: run, print the report (also when incomplete), its exit code."""
    from ..logs import emit

    try:
        report = run(config, dry_run=dry_run, bounded=True)
    except PartialRestore as e:
        if e.report is not None:
            emit(e.report.to_json() if as_json else e.report.render())
        raise
    emit(report.to_json() if as_json else report.render())
    return report.exit_code
