"""The store under injected I/O errors: a real writer process whose calls fail.

tests/faults/faultshim.c, built here with gcc and LD_PRELOADed into a child that runs
tests/faults/store_child.py, makes one chosen call fail (EIO, ENOSPC, EDQUOT, ESTALE, ...)
before or after doing it, as NFS and full disks do. Every test also checks from the shim's
log that the fault really fired.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fault_kit
import pytest
from fault_kit import FAULTS, glob_escape

import pkgckpt
from pkgckpt.store import SYNCED, Store, init_store

shim = fault_kit.shim
CHILD = FAULTS / "store_child.py"
REPO = Path(pkgckpt.__file__).resolve().parent.parent

sys.path.insert(0, str(FAULTS))
from store_child import make_body  # noqa: E402

# The steps every commit test runs in the faulty child, and what each reports.
STEPS = ["commit:B", "read", "ls", "commit:B", "read", "ls"]
FAILED, STATE, NAMES, RETRY, STATE2, NAMES2 = range(6)


@dataclass
class Child:
    store: Store
    shim: Path
    log: Path

    @property
    def temp(self) -> str:
        return glob_escape(self.store.path) + "/.manifest.json.tmp.*"

    @property
    def current(self) -> str:
        return glob_escape(self.store.path / "manifest.json")

    @property
    def directory(self) -> str:
        return glob_escape(self.store.path)

    def run(self, rules: list[str], steps: list[str]) -> tuple[list[dict[str, Any]], str]:
        """Run `steps` in a child with `rules`; their reports and the child's stderr."""
        env = dict(
            os.environ,
            LD_PRELOAD=str(self.shim),
            PKGCKPT_FAULTS=";".join(rules),
            PKGCKPT_FAULTS_LOG=str(self.log),
            PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        )
        proc = subprocess.run(
            [sys.executable, str(CHILD), "steps", str(self.store.root), self.store.key, *steps],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr
        fired = self.log.read_text().splitlines() if self.log.exists() else []
        assert len(fired) == len(rules), f"faults fired: {fired}, wanted: {rules}"
        return [json.loads(line) for line in proc.stdout.splitlines()], proc.stderr


@pytest.fixture
def child(tmp_path: Path, shim: Path) -> Child:
    """A store holding generation 1 (body "A"), and a way to run a faulty writer on it."""
    init_store(tmp_path / "store")
    store = Store(tmp_path / "store", "alice")
    store.commit(make_body("A"))
    return Child(store=store, shim=shim, log=tmp_path / "faults.log")


def rule(call: str, error: int, when: str, pattern: str) -> str:
    return f"{call}:{error}:1:{when}:{pattern}"


def temps(names: list[str]) -> list[str]:
    return [n for n in names if n.startswith(".manifest.json.tmp.")]


FAILING = [
    ("open", errno.ENOSPC, "before"),
    ("open", errno.EDQUOT, "before"),
    ("write", errno.EIO, "before"),
    ("write", errno.ENOSPC, "before"),
    ("fsync", errno.EIO, "before"),
    ("fsync", errno.ENOSPC, "before"),
    ("close", errno.EIO, "after"),
    ("close", errno.ENOSPC, "after"),
    ("close", errno.EDQUOT, "after"),
    ("rename", errno.EIO, "before"),
    ("rename", errno.ENOSPC, "before"),
    ("rename", errno.ESTALE, "before"),
]


@pytest.mark.parametrize(
    ("call", "error", "when"),
    FAILING,
    ids=[f"{c}-{errno.errorcode[e]}" for c, e, _ in FAILING],
)
def test_failed_commit_keeps_previous_generation(
    child: Child, call: str, error: int, when: str
) -> None:
    """An I/O error on the temp file fails the commit; gen 1 stays, no temp; a retry works."""
    reports, _ = child.run([rule(call, error, when, child.temp)], STEPS)
    assert reports[FAILED]["error"] == "StoreUnavailable"
    assert os.strerror(error) in reports[FAILED]["message"]
    assert reports[STATE] == {"step": "read", "generation": 1, "label": "A", "warning": None}
    assert reports[NAMES]["names"] == ["manifest.1.json", "manifest.json"]
    assert reports[RETRY]["generation"] == 2
    assert reports[STATE2] == {"step": "read", "generation": 2, "label": "B", "warning": None}
    assert reports[NAMES2]["names"] == ["manifest.1.json", "manifest.2.json", "manifest.json"]


@pytest.mark.parametrize("error", [errno.ESTALE, errno.EIO, errno.ENOENT], ids=errno.errorcode.get)
def test_rename_that_happened_but_failed_is_settled_by_reading_back(
    child: Child, error: int
) -> None:
    """A rename done by the server whose reply was an error counts as done once read back."""
    reports, _ = child.run([rule("rename", error, "after", child.temp)], STEPS)
    assert reports[FAILED] == {"step": "commit:B", "generation": 2}
    assert reports[STATE] == {"step": "read", "generation": 2, "label": "B", "warning": None}
    assert reports[NAMES]["names"] == ["manifest.1.json", "manifest.2.json", "manifest.json"]
    assert reports[RETRY] == {"step": "commit:B", "generation": None}  # unchanged


@pytest.mark.parametrize("error", [errno.EEXIST, errno.ESTALE, errno.EIO], ids=errno.errorcode.get)
def test_a_link_that_happened_but_failed_is_settled_by_its_inode(child: Child, error: int) -> None:
    """A generation's link done by the server whose reply was an error (EEXIST to the
    retransmission of a link that was made) is this writer's claim, not another's."""
    reports, _ = child.run([rule("link", error, "after", child.temp)], STEPS)
    assert reports[FAILED] == {"step": "commit:B", "generation": 2}
    assert reports[STATE] == {"step": "read", "generation": 2, "label": "B", "warning": None}
    assert reports[NAMES]["names"] == ["manifest.1.json", "manifest.2.json", "manifest.json"]
    assert reports[RETRY] == {"step": "commit:B", "generation": None}  # unchanged


def test_directory_fsync_failure_is_reported_and_rewritten(child: Child) -> None:
    """EIO on the directory fsync fails the commit; the next commit writes again, unchanged."""
    reports, _ = child.run([rule("fsync", errno.EIO, "before", child.directory)], STEPS)
    assert reports[FAILED]["error"] == "StoreUnavailable"
    assert "fsync" in reports[FAILED]["message"]
    # Visible but maybe not durable: whole either way, and rewritten by the retry.
    assert reports[STATE]["generation"] == 2 and reports[STATE]["warning"] is None
    assert reports[RETRY]["generation"] == 3
    assert not temps(reports[NAMES2]["names"])


def test_directory_fsync_not_supported_is_not_an_error(child: Child) -> None:
    """EINVAL from fsync on a directory (some FUSE/network file systems) is tolerated."""
    reports, _ = child.run(
        [rule("fsync", errno.EINVAL, "before", child.directory)], ["commit:B", "read"]
    )
    assert reports[0]["generation"] == 2
    assert reports[1]["label"] == "B"


def test_a_generation_with_no_sync_marker_is_fsynced_before_it_is_current(child: Child) -> None:
    """A writer that died before its directory fsync left no marker: the next process
    fsyncs the directory before it calls that generation current (EIO there: no answer)."""
    for marker in child.store.path.glob(f"{SYNCED}*"):
        marker.unlink()
    reports, _ = child.run(
        [rule("fsync", errno.EIO, "before", child.directory)], ["commit:A", "commit:A"]
    )
    assert reports[0]["error"] == "StoreUnavailable"
    # The failed attempt may have made generation 1 visible but not durable: rewritten.
    assert reports[1] == {"step": "commit:A", "generation": 2}
    assert [m.name for m in child.store.path.glob(f"{SYNCED}*")] == [f"{SYNCED}2"]


def test_temp_that_cannot_be_removed_is_removed_by_the_next_commit(child: Child) -> None:
    """When even the cleanup fails, the writer removes its temp file on its next commit."""
    reports, _ = child.run(
        [
            rule("write", errno.EIO, "before", child.temp),
            rule("unlink", errno.EIO, "before", child.temp),
        ],
        STEPS,
    )
    assert reports[FAILED]["error"] == "StoreUnavailable"
    assert len(temps(reports[NAMES]["names"])) == 1
    assert reports[RETRY]["generation"] == 2
    assert not temps(reports[NAMES2]["names"])


@pytest.mark.parametrize(
    ("call", "error"),
    [("open", errno.EIO), ("open", errno.ESTALE), ("read", errno.EIO)],
    ids=["open-EIO", "open-ESTALE", "read-EIO"],
)
def test_unreadable_store_is_unavailable_not_a_fallback(
    child: Child, call: str, error: int
) -> None:
    """An I/O error reading manifest.json is StoreUnavailable, never an older generation."""
    child.store.commit(make_body("B"))
    reports, _ = child.run([rule(call, error, "before", child.current)], ["read", "read"])
    assert reports[0]["error"] == "StoreUnavailable"
    assert os.strerror(error) in reports[0]["message"]
    assert reports[1] == {"step": "read", "generation": 2, "label": "B", "warning": None}


def test_unreachable_key_directory_is_unavailable(child: Child) -> None:
    """ESTALE opening the key directory (NFS handle gone) is StoreUnavailable for both calls."""
    pattern = child.directory
    reports, _ = child.run(
        [rule("open", errno.ESTALE, "before", pattern), f"open:{errno.ESTALE}:2:before:{pattern}"],
        ["read", "commit:B", "read"],
    )
    assert reports[0]["error"] == "StoreUnavailable"
    assert reports[1]["error"] == "StoreUnavailable"
    assert reports[2]["generation"] == 1
