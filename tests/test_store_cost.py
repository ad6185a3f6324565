"""What a commit and a read cost the store, counted in system calls (not timed), and the
compact format's compatibility with the manifests earlier versions wrote."""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import msgspec
import pytest

from pkgckpt import manifest
from pkgckpt.store import Store, init_store

FAULTS = Path(__file__).parent / "faults"
sys.path.insert(0, str(FAULTS))
from store_child import make_body  # noqa: E402

CHILD = r"""
import os, sys
from pathlib import Path
sys.path.insert(0, sys.argv[2])
from store_child import make_body  # noqa: E402
from pkgckpt.store import Store, init_store

root = Path(sys.argv[1])
init_store(root)
store = Store(root, "alice")
bodies = [make_body("a"), make_body("b")]


def cycle(i):
    with store.cycle():  # as checkpoint.commit does
        store.check()
        assert store.commit(bodies[i % 2]) is not None


for i in range(6):  # past keep=5: every later commit prunes one generation
    cycle(i)
os.write(1, b"MARK commits\n")
for i in range(6, 16):
    cycle(i)
os.write(1, b"MARK checks\n")
for _ in range(10):
    with store.cycle():
        store.check()
os.write(1, b"MARK reads\n")
for _ in range(10):
    assert Store(root, "alice").read() is not None  # what a restore does, in a new Store
os.write(1, b"MARK first\n")
for i in range(10):  # a daemon's start (its read), then its first commit
    daemon = Store(root, "alice")
    daemon.read()
    os.write(1, b"MARK firstcommit\n")
    with daemon.cycle():
        daemon.check()
        assert daemon.commit(bodies[i % 2]) is not None
    os.write(1, b"MARK first\n")
os.write(1, b"MARK end\n")
"""

LINE = re.compile(r"^\d+\s+(\w+)\(")
MARK = re.compile(r'write\(1<[^>]*>, "MARK (\w+)')


def store_calls(tmp_path: Path) -> dict[str, Counter[str]]:
    """System calls naming a path under the store, per section of CHILD."""
    if shutil.which("strace") is None:
        pytest.skip("strace is not installed: store calls cannot be counted")
    root = tmp_path / "store"
    trace = tmp_path / "trace.txt"
    done = subprocess.run(
        ["strace", "-f", "-y", "-e", "trace=%file,%desc", "-o", str(trace),
         sys.executable, "-c", CHILD, str(root), str(FAULTS)],
        check=False, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    if done.returncode != 0 and "ptrace" in done.stderr.lower():
        pytest.skip(f"strace cannot trace here (seccomp or ptrace_scope): {done.stderr.strip()}")
    assert done.returncode == 0, done.stderr
    sections: dict[str, Counter[str]] = {}
    section = "setup"
    for line in trace.read_text(errors="replace").splitlines():
        mark = MARK.search(line)
        if mark:
            section = mark.group(1)
            continue
        m = LINE.match(line)
        if m is not None and str(root) in line and "resumed>" not in line:
            sections.setdefault(section, Counter())[m.group(1)] += 1
    return sections


def test_store_calls_per_commit_check_and_read_stay_at_their_floor(tmp_path: Path) -> None:
    """A steady commit makes 26 store calls: the checked directory (7), the check (3), two
    durable files with one directory fsync (13: the kept one is linked to claim its number,
    then its temp name removed), a stat, a look for a newer generation, the sync marker
    and one prune; a check alone 10; a read 11. More is a regression."""
    calls = store_calls(tmp_path)
    per_commit = sum(calls["commits"].values()) / 10
    per_check = sum(calls["checks"].values()) / 10
    per_read = sum(calls["reads"].values()) / 10
    assert per_commit <= 26, calls["commits"]
    assert calls["commits"]["fsync"] == 30, "each file and the directory, once per commit"
    assert calls["commits"]["renameat"] + calls["commits"].get("renameat2", 0) == 20
    assert calls["commits"]["linkat"] == 10, "a new generation never replaces a file"
    assert per_check <= 10, calls["checks"]
    assert "read" not in calls["checks"], "an unchanged manifest is not read"
    assert per_read <= 11, calls["reads"]
    assert calls["reads"]["read"] == 10, "one read per manifest: its size is known"


def test_a_daemons_first_commit_lists_its_directory_once_and_reads_nothing_again(
    tmp_path: Path,
) -> None:
    """The first commit after the start's read learns the directory (stale temps, kept
    generations, the sync marker) with one listing, 8 calls as Python lists a directory
    descriptor: 34 in all. The manifest the start read, unchanged since, is not read
    again."""
    first = store_calls(tmp_path)["firstcommit"]
    assert "read" not in first, first
    assert first["getdents64"] <= 20, "one listing (two getdents64 calls) per first commit"
    assert sum(first.values()) / 10 <= 34, first


def schema_3(m: manifest.Manifest) -> bytes:
    """`m` as pkgckpt wrote it in schema 3: compact, the whole-file checksum a sha256."""
    head, ours = b'{"schema":3,"checksum":"sha256:', b'{"schema":4,"checksum":"crc32:'
    data = head + b"0" * 64 + manifest.encode(m)[len(ours) + 8 :]
    at = len(head)
    kept = data.rstrip()
    digest = hashlib.sha256(kept[:at] + kept[at + 64 :]).hexdigest().encode()
    return data[:at] + digest + data[at + 64 :]


def schema_2(m: manifest.Manifest) -> bytes:
    """`m` as pkgckpt wrote it in schema 2: indented by one space, whole-file checksum."""
    compact = schema_3(m).replace(b'"schema":3', b'"schema":2', 1)
    data = msgspec.json.format(compact, indent=1) + b"\n"
    at = len(b'{\n "schema": 2,\n "checksum": "sha256:')
    kept = data.rstrip()
    digest = hashlib.sha256(kept[:at] + kept[at + 64 :]).hexdigest().encode()
    return data[:at] + digest + data[at + 64 :]


@pytest.mark.parametrize("schema", [2, 3])
def test_a_store_written_in_an_older_schema_is_read_and_its_next_commit_is_schema_4(
    tmp_path: Path, schema: int
) -> None:
    """Indented schema 2 and compact sha256 schema 3 files (earlier pkgckpts') are read,
    checked and fallen back to like any; the next commit writes generation 2 as one
    compact schema 4 line and keeps 1 as it was."""
    root = tmp_path / "store"
    init_store(root)
    (root / "alice").mkdir(0o700)
    old = manifest.Manifest(generation=1, time="2026-01-01T00:00:00+00:00", body=make_body("a"))
    for name in ("manifest.json", "manifest.1.json"):
        (root / "alice" / name).write_bytes({2: schema_2, 3: schema_3}[schema](old))
        (root / "alice" / name).chmod(0o600)
    store = Store(root, "alice")
    found = store.read()
    assert found is not None and (found.schema, found.generation) == (schema, 1)
    assert found.body == old.body and store.last_read_warning is None
    with store.cycle():
        assert store.check() == (False, None)
        written = store.commit(make_body("b"))
    assert written is not None and written.generation == 2
    data = (root / "alice" / "manifest.json").read_bytes()
    assert data.startswith(b'{"schema":4,"checksum":"crc32:') and data.count(b"\n") == 1
    again = Store(root, "alice").read_generation(1)
    assert again is not None and again.schema == schema and again.body == old.body
    (root / "alice" / "manifest.json").write_bytes(b"{")
    fallback = Store(root, "alice")
    kept = fallback.read()
    assert kept is not None and kept.generation == 2 and fallback.last_read_warning is not None


def test_pkgckpt_restore_makes_eleven_store_calls(tmp_path: Path) -> None:
    """The whole `pkgckpt restore` command touches the store 11 times: the checked directory
    and the manifest, nothing from the command line's parsing of --store."""
    if shutil.which("strace") is None:
        pytest.skip("strace is not installed: store calls cannot be counted")
    from restore_kit import hermetic
    from wheelhouse import make_venv

    root = tmp_path / "store"
    init_store(root)
    assert Store(root, "alice").commit(make_body("a")) is not None
    venv = make_venv(tmp_path / "venv", with_pip=False)
    trace = tmp_path / "trace.txt"
    done = subprocess.run(
        ["strace", "-f", "-y", "-e", "trace=%file,%desc", "-o", str(trace),
         sys.executable, "-m", "pkgckpt", "restore", "--store", str(root), "--key", "alice",
         "--env", str(venv.prefix)],
        check=False, capture_output=True, text=True, env=hermetic(tmp_path), timeout=120,
    )  # fmt: skip
    if done.returncode != 0 and "ptrace" in done.stderr.lower():
        pytest.skip(f"strace cannot trace here (seccomp or ptrace_scope): {done.stderr.strip()}")
    assert done.returncode == 0, done.stderr
    calls: Counter[str] = Counter()
    for line in trace.read_text(errors="replace").splitlines():
        m = LINE.match(line)
        if m and str(root) in line and "resumed>" not in line and m.group(1) != "execve":
            calls[m.group(1)] += 1
    assert sum(calls.values()) <= 11, calls
    assert "access" not in calls, "click does not check --store: the store does"
