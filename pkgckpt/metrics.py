"""Prometheus metrics: `pkgckpt daemon --metrics-file PATH` and `pkgckpt status --prometheus`.

The text exposition format (version 0.0.4), written for node_exporter's textfile
collector: the daemon replaces its file atomically after each commit and each error,
never on a timer (idle costs nothing). `status --prometheus` prints the same text from
the daemon's status file, so the two never disagree.

    pkgckpt_manifest_generation               gauge    the store's generation
    pkgckpt_last_commit_timestamp_seconds     gauge    Unix time of the last commit
    pkgckpt_pending_changes                   gauge    changes seen, not on the store yet
    pkgckpt_commit_failures_total{reason}     counter  unavailable, refused, manifest,
                                                       unknown_schema
    pkgckpt_tracked_packages{kind}            gauge    the manifest's entries: python, r
    pkgckpt_watch_overflows_total             counter  inotify queue overflows
    pkgckpt_scan_seconds                      summary  the daemon's scans (_count, _sum)
    pkgckpt_restore_seconds                   gauge    the last restore's duration
    pkgckpt_restore_packages{outcome}         gauge    the last restore: installed,
                                                       removed, kept, failed,
                                                       held_back (by a new image)
    pkgckpt_artifact_bytes                    gauge    bytes of the key's artifacts on
                                                       the store (when the cache exists)

Every series also carries `key`: a textfile collector merges the files of every session
on a node, and refuses the same series from two files.

The writer is these few lines rather than prometheus_client's exposition: loading that
library adds ~4.9 MB to the idle daemon's RSS, this writer nothing measurable
(`benchmarks/metrics_rss.py`, figures in benchmarks/RESULTS.md).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from pathlib import Path

import msgspec

from .config import Config, ensure_runtime_dir, read_private
from .durable import atomic_write
from .errors import ManifestError, PkgckptError, StoreError, StoreUnavailable, UnknownSchema
from .logs import getLogger
from .manifest import Body

log = getLogger(__name__)


class Counters(msgspec.Struct, kw_only=True, omit_defaults=True):
    """What the daemon counts for its metrics; kept in its status file."""

    commit_failures: dict[str, int] = msgspec.field(default_factory=dict)
    watch_overflows: int = 0
    scans: int = 0
    scan_seconds: float = 0.0
    tracked: dict[str, int] = msgspec.field(default_factory=dict)
    """Packages the manifest records (added, changed, removed) by environment kind."""
    committed_at: float | None = None
    """Unix time of the last commit (written, or found already on the store)."""
    artifact_bytes: int | None = None
    """Bytes of the key's artifacts, as last measured (None: no artifact cache)."""


class RestoreRecord(msgspec.Struct, frozen=True, kw_only=True):
    """The last `pkgckpt restore` of this container: `<runtime dir>/restore-<key>.json`."""

    finished: float
    seconds: float
    packages: dict[str, int]
    """installed, removed, kept, failed: how many packages ended so."""


_record_decoder = msgspec.json.Decoder(RestoreRecord)


def failure_reason(error: PkgckptError) -> str:
    """A commit failure's label: few values, each asking for a different remedy."""
    if isinstance(error, StoreUnavailable):
        return "unavailable"  # EIO, ENOSPC, ESTALE, a missing or unmarked root: retried
    if isinstance(error, UnknownSchema):
        return "unknown_schema"  # a newer pkgckpt wrote the manifest
    if isinstance(error, ManifestError):
        return "manifest"
    if isinstance(error, StoreError):
        return "refused"  # ownership, permissions, read-only
    return "other"


def tracked(body: Body) -> dict[str, int]:
    counts: dict[str, int] = {}
    for d in body.environments:
        size = len(d.added) + len(d.changed) + len(d.removed)
        counts[d.env.kind] = counts.get(d.env.kind, 0) + size
    return counts


def restore_path(config: Config) -> Path:
    return config.runtime_dir / f"restore-{config.key}.json"


def record_restore(config: Config, seconds: float, packages: Mapping[str, int]) -> None:
    """Leave the last restore's figures for the metrics; a failure here only warns."""
    record = RestoreRecord(finished=time.time(), seconds=round(seconds, 3), packages=dict(packages))
    try:
        run = ensure_runtime_dir(config.runtime_dir)
        atomic_write(run / restore_path(config).name, msgspec.json.encode(record) + b"\n", 0o600)
    except PkgckptError as e:
        log.warning("cannot record the restore for the metrics: %s", e)


def read_restore(config: Config) -> RestoreRecord | None:
    data = read_private(restore_path(config))
    if data is None:
        return None
    try:
        return _record_decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    return repr(float(value)) if isinstance(value, float) else str(value)


def render(
    key: str,
    generation: int | None,
    pending: int | None,
    counters: Counters,
    restore: RestoreRecord | None,
) -> str:
    """The text exposition of every metric above; a value that is None (not known) has
    its family without a sample."""
    lines: list[str] = []

    def family(
        name: str, kind: str, text: str, samples: Iterable[tuple[str, dict[str, str], float]]
    ) -> None:
        lines.append(f"# HELP {name} {text}")
        lines.append(f"# TYPE {name} {kind}")
        for suffix, labels, value in samples:
            pairs = ",".join(f'{k}="{_escape(v)}"' for k, v in {"key": key, **labels}.items())
            lines.append(f"{name}{suffix}{{{pairs}}} {_number(value)}")

    def one(value: float | None) -> list[tuple[str, dict[str, str], float]]:
        return [] if value is None else [("", {}, value)]

    def by(label: str, values: Mapping[str, float]) -> list[tuple[str, dict[str, str], float]]:
        return [("", {label: k}, v) for k, v in sorted(values.items())]

    c = counters
    family(
        "pkgckpt_manifest_generation",
        "gauge",
        "Generation of the manifest on the store.",
        one(generation),
    )
    family(
        "pkgckpt_last_commit_timestamp_seconds",
        "gauge",
        "Unix time of the daemon's last commit.",
        one(c.committed_at),
    )
    family(
        "pkgckpt_pending_changes", "gauge", "Changes seen but not on the store yet.", one(pending)
    )
    family(
        "pkgckpt_commit_failures_total",
        "counter",
        "Failed commits, by reason.",
        by("reason", c.commit_failures),
    )
    family(
        "pkgckpt_tracked_packages",
        "gauge",
        "Packages the manifest records, by environment kind.",
        by("kind", c.tracked),
    )
    family(
        "pkgckpt_watch_overflows_total",
        "counter",
        "inotify queue overflows.",
        one(c.watch_overflows),
    )
    family(
        "pkgckpt_scan_seconds",
        "summary",
        "Time the daemon spent scanning libraries.",
        [("_count", {}, c.scans), ("_sum", {}, c.scan_seconds)],
    )
    if c.artifact_bytes is not None:
        family(
            "pkgckpt_artifact_bytes",
            "gauge",
            "Bytes of the key's artifacts on the store.",
            one(c.artifact_bytes),
        )
    if restore is not None:
        family(
            "pkgckpt_restore_seconds",
            "gauge",
            "Duration of the last restore.",
            one(restore.seconds),
        )
        family(
            "pkgckpt_restore_packages",
            "gauge",
            "Packages of the last restore, by outcome.",
            by("outcome", restore.packages),
        )
    return "\n".join(lines) + "\n"


def write(path: Path, text: str) -> None:
    """Replace the metrics file atomically (readable by the collector: 0644)."""
    atomic_write(path, text.encode(), 0o644)
