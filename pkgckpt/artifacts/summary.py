"""What `pkgckpt status` says of the artifact cache: count, bytes, quota, every recorded
package without an artifact, with the reason, and every recorded artifact the store no
longer holds."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import msgspec

from ..config import Config, ensure_runtime_dir, read_private
from ..errors import PkgckptError
from ..logs import getLogger
from ..manifest import Artifact, Body
from ..store import Store
from . import CAPTURERS, quota, uncapturable

log = getLogger(__name__)
_reasons = msgspec.json.Decoder(dict[str, str])


def _reasons_path(config: Config) -> Path:
    return config.runtime_dir / f"uncaptured-{config.key}.json"


def remember(config: Config, reasons: Mapping[str, str]) -> None:
    """Leave `snapshot`'s reasons for `status` (the daemon keeps its own in its status
    file); a failure here only warns."""
    from ..durable import atomic_write

    try:
        run = ensure_runtime_dir(config.runtime_dir)
        atomic_write(run / _reasons_path(config).name, msgspec.json.encode(dict(reasons)))
    except PkgckptError as e:
        log.warning("cannot record the packages not captured: %s", e)


def recall(config: Config) -> dict[str, str]:
    data = read_private(_reasons_path(config))
    if data is None:
        return {}
    try:
        return _reasons.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return {}


class Summary(msgspec.Struct, frozen=True, kw_only=True):
    count: int = 0
    """Artifacts under the key."""
    bytes: int = 0
    quota: int
    pooled: int = 0
    """Recorded packages whose artifact is in the shared pool (of all recorded in it,
    when the store could not be listed)."""
    without: dict[str, str] = {}
    """`name==version (env)` -> why it has no artifact."""
    missing: dict[str, str] = {}
    """`name==version (env)` -> its recorded artifact, which the store no longer holds
    (deleted from the key, pruned from the pool), and why it is not captured again yet
    when the daemon said."""
    error: str | None = None
    """The store could not be listed."""


def summarize(
    store: Store, config: Config, body: Body, reasons: Mapping[str, str] | None = None
) -> Summary:
    """`reasons`: why the daemon could not capture a package (its status file)."""
    from . import pool
    from .session import gone, key

    without: dict[str, str] = {}
    recorded: dict[str, Artifact] = {}
    for delta in body.deltas():
        for p in (*delta.added, *delta.changed):
            if p.artifact is not None:
                recorded[key(delta.env, p)] = p.artifact
                continue
            name = key(delta.env, p)
            why = (reasons or {}).get(name) or uncapturable(p)
            if why is None and delta.env.kind not in CAPTURERS:
                why = f"{delta.env.kind} packages are not captured"
            without[name] = why or "not captured yet"
    try:
        files = store.artifacts()
    except PkgckptError as e:
        pooled = sum(a.pooled for a in recorded.values())
        return Summary(quota=config.artifact_quota, pooled=pooled, without=without, error=str(e))
    lost = gone(config, recorded.values(), files)
    pooled = sum(a.pooled and a not in lost for a in recorded.values())
    # Not "gone" when the pool cannot be read here at all: the entries may well be there.
    unusable = pool.unusable(config.artifact_pool) if any(a.pooled for a in lost) else None
    missing: dict[str, str] = {}
    for name, artifact in recorded.items():
        if artifact in lost:
            if artifact.pooled and unusable is not None:
                missing[name] = f"{artifact.file} is in the shared pool, not used here: {unusable}"
            else:
                where = "the shared pool" if artifact.pooled else "the store"
                missing[name] = f"{artifact.file} is gone from {where}"
            why = (reasons or {}).get(name)
            if why:
                missing[name] += f"; not captured again: {why}"
    return Summary(
        count=len(files),
        bytes=quota.bytes_of(files),
        quota=config.artifact_quota,
        pooled=pooled,
        without=without,
        missing=missing,
    )


def lines(summary: Summary) -> list[str]:
    from . import _bytes

    text = (
        f"artifacts:  {summary.count} ({_bytes(summary.bytes)} of a {_bytes(summary.quota)} quota)"
    )
    if summary.pooled:
        text += f", {summary.pooled} in the shared pool"
    out = [text]
    if summary.error:
        out.append(f"    error: {summary.error}")
    if summary.without:
        out.append(f"    without an artifact ({len(summary.without)}):")
        out += [f"      {name}: {why}" for name, why in sorted(summary.without.items())]
    if summary.missing:
        out.append(
            f"    missing ({len(summary.missing)}), captured again while installed at "
            "that version, by the daemon's next commit or the next snapshot:"
        )
        out += [f"      {name}: {why}" for name, why in sorted(summary.missing.items())]
    return out
