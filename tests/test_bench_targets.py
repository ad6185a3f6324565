"""The table of targets in benchmarks/RESULTS.md is rendered by run_all.py from what the
benches report: every target must be reported by the bench it names, or its row would
say "not measured" for good; a row shows the run that measured it and, when the target
is missed, the floor."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import run_all  # noqa: E402


def test_each_target_is_reported_by_its_bench() -> None:
    keys = [t.key for t in run_all.TARGETS]
    assert len(keys) == len(set(keys))
    files = {b.name: BENCHMARKS / b.file for b in run_all.BENCHES}
    for target in run_all.TARGETS:
        assert target.bench in files, target
        source = files[target.bench].read_text()
        # A call of bench_kit.verdict names its key as a literal (or from a table of them).
        assert re.search(rf"[\"']{re.escape(target.key)}[\"']", source), (target.key, target.bench)


def test_the_table_shows_the_run_and_the_floor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    verdicts = tmp_path / "targets.json"
    monkeypatch.setattr(run_all, "VERDICTS", verdicts)
    store = next(b for b in run_all.BENCHES if b.name == "commit-ab")
    sidecar = tmp_path / "commit-ab.verdicts.json"
    sidecar.write_text(
        json.dumps(
            {
                "commit-disk": {"measured": "1.10x", "met": True},
                "commit-tmpfs": {"measured": "1.71x", "met": False},
                "no-such-target": {"measured": "?", "met": True},
            }
        )
    )
    run_all.keep_verdicts(store, sidecar)
    kept = json.loads(verdicts.read_text())
    assert set(kept) == {"commit-disk", "commit-tmpfs"}
    assert kept["commit-disk"]["commit"] and kept["commit-disk"]["when"]

    rows = {line.split(" | ")[0]: line for line in run_all.targets_table().splitlines()}
    tmpfs = next(t for t in run_all.TARGETS if t.key == "commit-tmpfs")
    disk = next(t for t in run_all.TARGETS if t.key == "commit-disk")
    other = next(t for t in run_all.TARGETS if t.bench != "commit-ab")
    tmpfs_row = rows[f"| {tmpfs.text} ({tmpfs.issues})"]
    assert "1.71x (`table:commit-ab`, " in tmpfs_row
    assert tmpfs_row.endswith(f"| **no**: {tmpfs.floor} |")
    assert rows[f"| {disk.text} ({disk.issues})"].endswith("| yes |")
    assert "not measured by run_all yet" in rows[f"| {other.text} ({other.issues})"]
