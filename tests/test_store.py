"""The store on a local directory: layout, generations, checked reads and fallback."""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import stat
import subprocess
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from pkgckpt import manifest
from pkgckpt.durable import atomic_write
from pkgckpt.errors import (
    ManifestError,
    StoreConflict,
    StoreError,
    StoreUnavailable,
    UnknownSchema,
    UsageError,
)
from pkgckpt.store import MARKER, NOBODY, SYNCED, Store, init_store

sys.path.insert(0, str(Path(__file__).parent / "faults"))
from store_child import label, make_body

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to chown")
FOREIGN_UID = 12345


@pytest.fixture
def store(tmp_path: Path) -> Store:
    init_store(tmp_path / "store")
    return Store(tmp_path / "store", "alice")


def names(store: Store) -> list[str]:
    return sorted(p.name for p in store.path.iterdir() if not p.name.startswith(SYNCED))


def commit_labels(store: Store, *labels: str) -> None:
    for each in labels:
        assert store.commit(make_body(each)) is not None


# -- layout and generations ----------------------------------------------------------------


def test_missing_key_directory_reads_as_no_manifest(store: Store) -> None:
    """read() is None when the key directory does not exist (and creates nothing)."""
    assert store.read() is None
    assert not store.path.exists()


# -- the store root ----------------------------------------------------------------------------


def test_a_missing_store_root_is_unavailable_not_empty(tmp_path: Path) -> None:
    """No root (a mount not there yet): read and commit raise StoreUnavailable, create nothing."""
    store = Store(tmp_path / "store", "alice")
    for call in (store.read, lambda: store.commit(make_body("a"))):
        with pytest.raises(StoreUnavailable, match=r"is not available \(not mounted\?\)"):
            call()
    assert not store.root.exists()


def test_an_unmarked_store_root_is_unavailable_and_never_written(tmp_path: Path) -> None:
    """A directory without the marker (the mount point under a missing mount) is not a store."""
    root = tmp_path / "store"
    root.mkdir(0o700)
    store = Store(root, "alice")
    with pytest.raises(StoreUnavailable, match=r"no \.pkgckpt-store marker"):
        store.read()
    with pytest.raises(StoreUnavailable, match="not available"):
        store.commit(make_body("a"))
    assert list(root.iterdir()) == []


def test_store_init_creates_the_root_and_is_idempotent(tmp_path: Path) -> None:
    """init_store makes a missing root 0700 with its marker; a second call changes nothing."""
    root = tmp_path / "store"
    assert init_store(root) is True
    marker = root / MARKER
    before = marker.stat()
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    assert init_store(root) is False
    assert marker.stat().st_ino == before.st_ino
    assert Store(root, "alice").read() is None


def test_pkgckpt_store_init_makes_a_store_the_restore_can_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`pkgckpt store init DIR` creates and marks DIR, says so, and says so again idempotently."""
    from pkgckpt import cli

    root = tmp_path / "nfs" / "pkgckpt"
    (tmp_path / "nfs").mkdir()
    assert cli.run(["store", "init", str(root)]) == 0
    assert (root / MARKER).is_file()
    assert cli.run(["store", "init", str(root)]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"store {root} is ready",
        f"store {root} was already a store",
    ]
    assert Store(root, "alice").read() is None


def test_the_default_local_store_is_initialised_on_first_use(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """open_store on the default store (under XDG_STATE_HOME) makes it a store by itself."""
    from pkgckpt.config import Config, default_store
    from pkgckpt.store import open_store

    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    store = open_store(Config(store=default_store(), key="alice"))
    assert (store.root / MARKER).is_file()
    assert store.commit(make_body("a")) is not None


def test_a_symlinked_store_root_is_refused(tmp_path: Path) -> None:
    """A store root that is a symlink is refused with the reason, even to a real store."""
    init_store(tmp_path / "real")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(StoreError, match="symbolic link"):
        Store(tmp_path / "link", "alice").read()
    with pytest.raises(StoreError, match="symbolic link"):
        init_store(tmp_path / "link")


@pytest.mark.parametrize(
    ("mode", "who", "bits"),
    [
        (0o777, "its group (.*) and others", "go-w"),
        (0o757, "others", "o-w"),
        (0o775, "its group (.*)", "g-w"),
        (0o770, "its group (.*)", "g-w"),
        (0o1777, None, None),
        (0o1775, None, None),
        (0o755, None, None),
    ],
)
def test_a_root_group_or_others_can_write_needs_the_sticky_bit(
    tmp_path: Path, mode: int, who: str | None, bits: str | None
) -> None:
    """0777 or 0775 lets others, or the group's members, move a key directory away:
    refused, saying how to fix it; 1777 (sticky) is the shared layout."""
    root = tmp_path / "store"
    init_store(root)
    root.chmod(mode)
    store = Store(root, "alice")
    if who is not None:
        where = re.escape(str(root))
        message = (
            f"store {where} is writable by {who} without the sticky bit .* refused "
            f"\\(fix: chmod \\+t {where}, or chmod {bits} {where}\\)"
        )
        with pytest.raises(StoreError, match=message):
            store.read()
        with pytest.raises(StoreError, match=message):
            init_store(root)
    else:
        assert store.commit(make_body("a")) is not None


@needs_root
@pytest.mark.parametrize(
    ("uid", "store_uid", "refused"),
    [
        (4242, None, True),  # an ordinary other user's: it could move any key away
        (4242, 4242, False),  # store_uid: the squashed export's one uid
        (NOBODY, None, False),  # root_squash made it of an administrator's init
        (0, None, False),
    ],
)
def test_a_root_owned_by_another_user_is_refused(
    tmp_path: Path, uid: int, store_uid: int | None, refused: bool
) -> None:
    """The sticky bit binds everyone but a directory's owner: a root owned by someone not
    trusted is refused, sticky or not, with how to fix it (the tests run as root, so any
    uid but 0 stands for another user)."""
    root = tmp_path / "store"
    init_store(root)
    root.chmod(0o1777)
    os.chown(root, uid, -1)
    assert init_store(root) is False, "init leaves the owner to each user's Store"
    store = Store(root, "alice", owner=store_uid)
    if refused:
        where = re.escape(str(root))
        message = f"store {where} is owned by .*uid {uid}.*, not by root, this user or nobody"
        with pytest.raises(StoreError, match=f"{message}: .* `chown root {where}`.*store_uid"):
            store.read()
    else:
        assert store.read() is None


def test_commit_creates_private_layout(store: Store) -> None:
    """The first commit creates <store>/<key> 0700 with manifest.json 0600 and generation 1."""
    done = store.commit(make_body("a"))
    assert done is not None and done.generation == 1
    assert stat.S_IMODE(store.root.stat().st_mode) == 0o700
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o700
    current = store.path / "manifest.json"
    assert stat.S_IMODE(current.stat().st_mode) == 0o600
    assert names(store) == ["manifest.1.json", "manifest.json"]
    assert (store.path / "manifest.1.json").read_bytes() == current.read_bytes()
    assert (store.path / "manifest.1.json").stat().st_ino != current.stat().st_ino


def test_commit_records_generation_writer_and_time(store: Store) -> None:
    """A commit's manifest carries generation last+1, this host and pid, a UTC time."""
    commit_labels(store, "a")
    done = store.commit(make_body("b"))
    assert done is not None
    assert done.generation == 2
    assert done.writer is not None
    assert (done.writer.host, done.writer.pid) == (socket.gethostname(), os.getpid())
    assert done.time is not None and done.time.endswith("+00:00")
    again = Store(store.root, store.key).read()
    assert again == done


def test_unchanged_body_is_not_rewritten(store: Store) -> None:
    """Committing the same body again returns None and leaves the file untouched."""
    commit_labels(store, "a")
    before = (store.path / "manifest.json").stat()
    assert store.commit(make_body("a")) is None
    assert Store(store.root, store.key).commit(make_body("a")) is None
    after = (store.path / "manifest.json").stat()
    assert (before.st_ino, before.st_mtime_ns) == (after.st_ino, after.st_mtime_ns)


def test_generations_are_pruned_to_keep(tmp_path: Path) -> None:
    """Only the newest `keep` generations stay as manifest.<gen>.json."""
    init_store(tmp_path)
    store = Store(tmp_path, "alice", keep=3)
    commit_labels(store, *"abcdefg")
    assert names(store) == [
        "manifest.5.json",
        "manifest.6.json",
        "manifest.7.json",
        "manifest.json",
    ]
    files = [store.path / name for name in names(store)]
    assert [label(manifest.decode(p.read_bytes())) for p in files].count("g") == 2


def test_a_file_far_above_the_generations_pushes_none_out(tmp_path: Path) -> None:
    """An empty manifest.1000.json (planted, or damaged) beside generations 1 and 2: the
    next commit goes above it, and 1 and 2 stay, for revert. One that takes the last number
    a manifest may have makes the commit fail, writing nothing: a generation past it could
    not be read, and the record would be gone."""
    init_store(tmp_path)
    store = Store(tmp_path, "alice", keep=3)
    commit_labels(store, "a", "b")
    (store.path / "manifest.1000.json").write_bytes(b"")
    other = Store(tmp_path, "alice", keep=5)
    with pytest.raises(StoreConflict):  # a newer number than manifest.json: folded in
        other.commit(make_body("c"))
    other.check()  # what a writer does then (checkpoint.commit): reads the newest valid
    done = other.commit(make_body("c"))
    assert done is not None and done.generation == 1001
    assert [m.generation for m in map(other.read_generation, (1, 2))] == [1, 2]
    last = manifest.MAX_GENERATION
    (store.path / f"manifest.{last}.json").write_bytes(b"")
    before = sorted(names(store))
    third = Store(tmp_path, "alice", keep=3)
    with pytest.raises(StoreConflict):
        third.commit(make_body("d"))
    third.check()
    with pytest.raises(StoreError, match=f"manifest.{last}.json takes the last generation"):
        third.commit(make_body("d"))
    assert sorted(names(store)) == before
    current = Store(tmp_path, "alice").read()
    assert current is not None and (current.generation, label(current)) == (1001, "c")


def test_a_new_writer_continues_the_generations(store: Store) -> None:
    """A writer that starts later (a new container) continues after the last generation."""
    commit_labels(store, "a", "b")
    done = Store(store.root, store.key).commit(make_body("c"))
    assert done is not None and done.generation == 3


def test_writer_notices_a_commit_it_did_not_make(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    """Two writers on one key (against the rules) never rewind a generation; it is logged."""
    other = Store(store.root, store.key)
    commit_labels(store, "a")
    commit_labels(other, "b")
    with caplog.at_level(logging.WARNING, logger="pkgckpt.store"):
        done = store.commit(make_body("c"))
    assert done is not None and done.generation == 3
    assert "another writer" in caplog.text
    assert store.commit(make_body("b")) is not None  # "b" is no longer what is on the store


@pytest.mark.parametrize("key", ["", ".", "..", "../bob", "a/b", ".hidden", "nul\0", "x" * 201])
def test_bad_keys_are_refused(tmp_path: Path, key: str) -> None:
    """A key that is not one plain directory name is a usage error, before any I/O."""
    with pytest.raises(UsageError, match="invalid store key"):
        Store(tmp_path, key)


def test_keep_must_be_positive(tmp_path: Path) -> None:
    """keep=0 would delete the current generation's link: refused."""
    with pytest.raises(UsageError, match="keep"):
        Store(tmp_path, "alice", keep=0)


# -- damaged manifests fall back -------------------------------------------------------------


def test_truncated_current_falls_back_loudly(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    """A torn manifest.json gives the newest valid kept generation, with a warning."""
    commit_labels(store, "a", "b", "c")
    current = store.path / "manifest.json"
    data = current.read_bytes()
    with current.open("r+b") as f:
        f.truncate(len(data) // 2)
    (store.path / "manifest.3.json").unlink()
    reader = Store(store.root, store.key)
    with caplog.at_level(logging.WARNING, logger="pkgckpt.store"):
        found = reader.read()
    assert found is not None and found.generation == 2 and label(found) == "b"
    assert reader.last_read_warning is not None
    assert "using generation 2 from manifest.2.json" in reader.last_read_warning
    assert reader.last_read_warning in caplog.text


def test_edited_current_fails_checksum_and_falls_back(store: Store) -> None:
    """A hand-edited body (still valid JSON) fails the checksum and is not trusted."""
    commit_labels(store, "a", "b")
    current = store.path / "manifest.json"
    edited = current.read_bytes().replace(b'"1.3.0"', b'"9.9.9"')
    current.unlink()
    current.write_bytes(edited)
    current.chmod(0o600)
    reader = Store(store.root, store.key)
    found = reader.read()
    assert found is not None and found.generation == 2  # manifest.2.json is still whole
    assert reader.last_read_warning is not None and "checksum" in reader.last_read_warning


def test_an_edit_in_place_of_manifest_json_leaves_its_generation_whole(store: Store) -> None:
    """Generations are separate files: a byte edited in manifest.json falls back to the same
    generation, not to the one before it."""
    commit_labels(store, "a", "b")
    current = store.path / "manifest.json"
    with current.open("r+b") as f:
        f.seek(40)
        f.write(b"X")
    found = Store(store.root, store.key).read()
    assert found is not None and found.generation == 2
    assert found.body == make_body("b")


@pytest.mark.parametrize(
    "damage",
    [
        (b'"generation":2,', b'"generation":2,"generation":9,'),
        (b'"environments":[', b'"x":' + b"[" * 5000 + b"]" * 5000 + b',"environments":['),
        (b'"generation":2', b'"generation":18446744073709551615'),
    ],
    ids=["duplicate key", "deep nesting", "huge generation"],
)
def test_a_sealed_but_malformed_current_falls_back_to_its_kept_generation(
    store: Store, damage: tuple[bytes, bytes]
) -> None:
    """Defects a valid checksum does not excuse are a fallback, never a crash or a reading."""
    commit_labels(store, "a", "b")
    current = store.path / "manifest.json"
    before = current.read_bytes()
    data = before.replace(*damage, 1)
    assert data != before
    at = len(b'{"schema":4,"checksum":"crc32:')
    kept = data.rstrip()
    digest = b"%08x" % zlib.crc32(kept[:at] + kept[at + 8 :])
    current.write_bytes(data[:at] + digest + data[at + 8 :])
    reader = Store(store.root, store.key)
    found = reader.read()
    assert found is not None and found.generation == 2 and label(found) == "b"
    assert reader.last_read_warning is not None
    assert "using generation 2 from manifest.2.json" in reader.last_read_warning


def test_good_read_has_no_warning(store: Store) -> None:
    """last_read_warning is None after a normal read."""
    commit_labels(store, "a")
    reader = Store(store.root, store.key)
    reader.last_read_warning = "stale"
    assert reader.read() is not None
    assert reader.last_read_warning is None


def test_everything_corrupt_is_a_manifest_error(store: Store) -> None:
    """With no valid generation left, read() raises ManifestError naming the problem."""
    commit_labels(store, "a", "b")
    for p in store.path.iterdir():
        p.write_bytes(b"\0" * 100)
    with pytest.raises(ManifestError, match=r"no earlier generation .* is valid"):
        Store(store.root, store.key).read()


def test_commit_after_fallback_replaces_the_damaged_manifest(store: Store) -> None:
    """After a fallback, committing the same body writes a new, valid manifest.json."""
    commit_labels(store, "a", "b")
    (store.path / "manifest.json").write_bytes(b"{")
    writer = Store(store.root, store.key)
    found = writer.read()
    assert found is not None and found.generation == 2
    done = writer.commit(found.body)
    assert done is not None and done.generation == 3
    again = Store(store.root, store.key)
    assert again.read() == done and again.last_read_warning is None


def test_missing_current_with_kept_generation_falls_back(store: Store) -> None:
    """A writer killed between its two renames of its first commit leaves a readable gen."""
    commit_labels(store, "a")
    (store.path / "manifest.json").unlink()
    reader = Store(store.root, store.key)
    found = reader.read()
    assert found is not None and found.generation == 1
    assert reader.last_read_warning is not None and "missing" in reader.last_read_warning


def test_empty_key_directory_reads_as_no_manifest(store: Store) -> None:
    """A key directory without any manifest (a first commit that failed) reads as None."""
    store.path.mkdir(mode=0o700, parents=True)
    assert store.read() is None


def test_oversized_manifest_is_not_read_into_memory_whole(store: Store) -> None:
    """A manifest over the size limit counts as damaged: fall back, never load it all."""
    commit_labels(store, "a", "b")
    current = store.path / "manifest.json"
    current.unlink()
    with current.open("wb") as f:
        f.truncate(manifest.MAX_BYTES + 10)  # sparse: costs no disk
    current.chmod(0o600)
    reader = Store(store.root, store.key)
    found = reader.read()
    assert found is not None and found.generation == 2
    assert reader.last_read_warning is not None and "limit" in reader.last_read_warning


def _newer_schema(store: Store) -> None:
    current = store.path / "manifest.json"
    data = json.loads(current.read_bytes())
    data["schema"] = manifest.SCHEMA + 1
    current.unlink()
    current.write_text(json.dumps(data))
    current.chmod(0o600)


def test_newer_schema_is_refused_without_fallback(store: Store) -> None:
    """A manifest from a newer pkgckpt is UnknownSchema: never an older generation instead."""
    commit_labels(store, "a", "b")
    _newer_schema(store)
    with pytest.raises(UnknownSchema, match="upgrade pkgckpt"):
        Store(store.root, store.key).read()


def test_newer_schema_is_never_overwritten(store: Store) -> None:
    """An older writer refuses to replace a newer writer's manifest."""
    commit_labels(store, "a")
    _newer_schema(store)
    before = (store.path / "manifest.json").read_bytes()
    with pytest.raises(UnknownSchema):
        Store(store.root, store.key).commit(make_body("b"))
    assert (store.path / "manifest.json").read_bytes() == before


SCHEMA_3 = "86b2d18"
"""The last commit that wrote schema 3 (sha256): what a fleet's older images still run."""

OLDER = r"""
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from pkgckpt import manifest
from pkgckpt.errors import UnknownSchema
from pkgckpt.store import Store

assert manifest.__file__.startswith(sys.argv[1]) and manifest.SCHEMA == 3
root = Path(sys.argv[2])
for call in (lambda: Store(root, "alice").read(),
             lambda: Store(root, "alice").commit(manifest.Body())):
    try:
        call()
    except UnknownSchema as e:
        print(e)
    else:
        sys.exit("accepted")
"""


def test_a_pkgckpt_before_schema_4_refuses_it_clearly_and_never_overwrites_it(
    store: Store, tmp_path: Path
) -> None:
    """The code of the last schema 3 pkgckpt, given a schema 4 manifest, says "upgrade
    pkgckpt" at read and at commit, and leaves the file as it was."""
    repo = Path(__file__).resolve().parent.parent
    archive = subprocess.run(
        ["git", "-C", str(repo), "archive", SCHEMA_3, "pkgckpt"], capture_output=True, check=False
    )
    if archive.returncode != 0:
        pytest.skip(f"commit {SCHEMA_3} is not in this clone: {archive.stderr.decode().strip()}")
    older = tmp_path / "older"
    older.mkdir()
    subprocess.run(["tar", "-x", "-C", str(older)], input=archive.stdout, check=True)
    commit_labels(store, "a")
    before = (store.path / "manifest.json").read_bytes()
    assert before.startswith(b'{"schema":4,')
    done = subprocess.run(
        [sys.executable, "-I", "-c", OLDER, str(older), str(store.root)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    said = done.stdout.splitlines()
    assert len(said) == 2 and all("has schema 4" in s and "upgrade pkgckpt" in s for s in said)
    assert (store.path / "manifest.json").read_bytes() == before


# -- hostile files are refused ---------------------------------------------------------------


@needs_root
def test_foreign_owned_manifest_is_refused(store: Store) -> None:
    """A manifest.json owned by another uid is refused, not fallen back from."""
    commit_labels(store, "a", "b")
    os.chown(store.path / "manifest.json", FOREIGN_UID, FOREIGN_UID)
    with pytest.raises(StoreError, match=f"owned by uid {FOREIGN_UID}"):
        Store(store.root, store.key).read()


@needs_root
def test_foreign_owned_key_directory_is_refused(store: Store) -> None:
    """A key directory owned by another uid is refused for reads and commits."""
    commit_labels(store, "a")
    os.chown(store.path, FOREIGN_UID, FOREIGN_UID)
    with pytest.raises(StoreError, match=f"owned by uid {FOREIGN_UID}"):
        Store(store.root, store.key).read()
    with pytest.raises(StoreError, match=f"owned by uid {FOREIGN_UID}"):
        Store(store.root, store.key).commit(make_body("b"))


@needs_root
def test_a_key_directory_of_another_user_names_the_owner_and_the_fix(store: Store) -> None:
    """Someone else's key directory (made first, to lock this user out) is refused with
    who owns it and what to do."""
    import pwd

    nobody = pwd.getpwnam("nobody")
    commit_labels(store, "a")
    os.chown(store.path, nobody.pw_uid, nobody.pw_gid)
    with pytest.raises(StoreError) as refused:
        Store(store.root, store.key).commit(make_body("b"))
    message = str(refused.value)
    assert f"nobody (uid {nobody.pw_uid})" in message
    assert "--key" in message and "remove it" in message


@pytest.fixture
def world_tmp() -> Iterator[Path]:
    """A directory another uid can reach (pytest's tmp_path is root's, 0700)."""
    import shutil
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="pkgckpt-store-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path)


def _read_as(uid: int, store: Store) -> str:
    """Read `store` in a forked process running as `uid`; the outcome as text."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        try:
            os.close(r)
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
            try:
                found = Store(store.root, store.key).read()
                text = f"ok {found.generation if found else None}"
            except Exception as e:
                text = f"{type(e).__name__}: {e}"
            os.write(w, text.encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        text = f.read().decode()
    os.waitpid(pid, 0)
    return text


@needs_root
def test_ownership_is_checked_against_the_reading_user(world_tmp: Path) -> None:
    """A process running as uid X reads X's store, and refuses a file in it owned by root."""
    init_store(world_tmp)
    store = Store(world_tmp, "bob")
    commit_labels(store, "a", "b")
    for p in [store.path, *store.path.iterdir()]:
        os.chown(p, FOREIGN_UID, FOREIGN_UID, follow_symlinks=False)
    assert _read_as(FOREIGN_UID, store) == "ok 2"
    os.chown(store.path / "manifest.json", 0, 0)
    (store.path / "manifest.json").chmod(0o644)
    assert _read_as(FOREIGN_UID, store) == (
        f"StoreError: {store.path / 'manifest.json'} is owned by root (uid 0), "
        f"not by this user (uid {FOREIGN_UID}): refused (if the NFS server maps this "
        "user's files to one uid, set store_uid to it)"
    )


@pytest.mark.parametrize("mode", [0o620, 0o602, 0o666])
def test_group_or_other_writable_manifest_is_refused(store: Store, mode: int) -> None:
    """A manifest.json others could have written is refused."""
    commit_labels(store, "a")
    (store.path / "manifest.json").chmod(mode)
    with pytest.raises(StoreError, match="writable by group or others"):
        Store(store.root, store.key).read()


def test_group_writable_key_directory_is_refused(store: Store) -> None:
    """A key directory others can write (and so swap files in) is refused."""
    commit_labels(store, "a")
    store.path.chmod(0o770)
    with pytest.raises(StoreError, match="writable by group or others"):
        Store(store.root, store.key).read()


def test_symlinked_manifest_is_refused(store: Store, tmp_path: Path) -> None:
    """manifest.json as a symlink (even to a valid manifest) is refused."""
    commit_labels(store, "a")
    elsewhere = tmp_path / "elsewhere.json"
    (store.path / "manifest.json").rename(elsewhere)
    (store.path / "manifest.json").symlink_to(elsewhere)
    with pytest.raises(StoreError, match="symbolic link"):
        Store(store.root, store.key).read()


def test_symlinked_key_directory_is_refused(tmp_path: Path) -> None:
    """A key directory that is a symlink is refused, for reads and commits."""
    init_store(tmp_path)
    real = Store(tmp_path, "real")
    commit_labels(real, "a")
    (tmp_path / "alice").symlink_to(real.path)
    with pytest.raises(StoreError, match="not a directory"):
        Store(tmp_path, "alice").read()
    with pytest.raises(StoreError, match="not a directory"):
        Store(tmp_path, "alice").commit(make_body("b"))


def test_fifo_manifest_is_refused_without_blocking(store: Store) -> None:
    """A FIFO named manifest.json is refused at once (opened non-blocking, then fstat)."""
    store.path.mkdir(mode=0o700, parents=True)
    os.mkfifo(store.path / "manifest.json", 0o600)
    with pytest.raises(StoreError, match="not a regular file"):
        store.read()


# -- leftovers ---------------------------------------------------------------------------------


def _dead_pid() -> int:
    proc = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    return int(proc.stdout)


def test_leftovers_are_ignored_and_only_own_stale_temps_removed(store: Store) -> None:
    """Readers ignore temp and .nfs files; a writer removes only its host's dead-pid temps."""
    commit_labels(store, "a")
    host = socket.gethostname()
    dead = f".manifest.json.tmp.{host}.{_dead_pid()}.0badf00d"
    live = f".manifest.json.tmp.{host}.{os.getppid()}.0badf00d"
    other_host = f".manifest.json.tmp.elsewhere.{_dead_pid()}.0badf00d"
    silly = ".nfs0000000000123abc00000001"
    for name in (dead, live, other_host, silly):
        (store.path / name).write_bytes(b'{"schema": 1, "truncat')
    found = Store(store.root, store.key).read()
    assert found is not None and label(found) == "a"
    assert Store(store.root, store.key).commit(make_body("b")) is not None
    assert names(store) == sorted(
        [live, other_host, silly, "manifest.1.json", "manifest.2.json", "manifest.json"]
    )


# -- atomic_write ----------------------------------------------------------------------------


def test_atomic_write_removes_what_dead_writers_of_the_same_file_left(tmp_path: Path) -> None:
    """A baseline or status writer killed mid-write leaves its temp file: the next write
    of that file on this host removes it, and only it."""
    host = socket.gethostname()
    dead = f".baseline.json.tmp.{host}.{_dead_pid()}.0badf00d"
    live = f".baseline.json.tmp.{host}.{os.getppid()}.0badf00d"
    other_file = f".daemon-k.json.tmp.{host}.{_dead_pid()}.0badf00d"
    for name in (dead, live, other_file):
        (tmp_path / name).write_bytes(b"{")
    atomic_write(tmp_path / "baseline.json", b"{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live, other_file, "baseline.json"])


def test_atomic_write_replaces_whole_with_mode(tmp_path: Path) -> None:
    """atomic_write replaces the file with the new bytes and mode and leaves no temp."""
    target = tmp_path / "status.json"
    target.write_bytes(b"old")
    atomic_write(target, b"new contents", mode=0o644)
    assert target.read_bytes() == b"new contents"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["status.json"]


def test_atomic_write_into_missing_directory_is_a_store_error(tmp_path: Path) -> None:
    """A missing directory is a clear StoreError naming it (not retryable by waiting)."""
    with pytest.raises(StoreError, match="cannot open the directory") as info:
        atomic_write(tmp_path / "nope" / "baseline.json", b"{}")
    assert type(info.value) is StoreError


def test_atomic_write_does_not_follow_a_symlinked_target(tmp_path: Path) -> None:
    """A symlink at the target is replaced, its destination left alone."""
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep me")
    (tmp_path / "status.json").symlink_to(victim)
    atomic_write(tmp_path / "status.json", b"new")
    assert victim.read_bytes() == b"keep me"
    assert not (tmp_path / "status.json").is_symlink()
    assert (tmp_path / "status.json").read_bytes() == b"new"


def test_short_writes_are_carried_on_until_the_whole_manifest_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A writev that writes less than asked (a signal, NFS) is continued from where it
    stopped, across the buffers of the manifest (injected: at most 997 bytes a call)."""
    real = os.writev
    calls = 0

    def short(fd: int, buffers: list[memoryview]) -> int:
        nonlocal calls
        calls += 1
        budget, chunk = 997, []
        for b in buffers:
            chunk.append(b[:budget])
            budget -= len(chunk[-1])
            if not budget:
                break
        return real(fd, chunk)

    monkeypatch.setattr(os, "writev", short)
    init_store(tmp_path / "store")
    store = Store(tmp_path / "store", "k")
    body = make_body("short", 40)
    written = store.commit(body)
    assert written is not None and calls > 5
    assert (store.path / "manifest.json").read_bytes() == manifest.encode(written)
    assert Store(tmp_path / "store", "k").read() == written


@needs_root
def test_a_store_whose_server_maps_uids_is_read_with_store_uid(world_tmp: Path) -> None:
    """NFS with all_squash gives this user's files the server's one uid: refused by
    default, with the setting named; read with store_uid set to that uid."""
    from pkgckpt.config import load
    from pkgckpt.store import open_store

    init_store(world_tmp)
    store = Store(world_tmp, "k")
    commit_labels(store, "a", "squashed")
    for p in [store.path, *store.path.iterdir()]:
        os.chown(p, FOREIGN_UID, FOREIGN_UID, follow_symlinks=False)  # as the server shows them
    with pytest.raises(StoreError, match="set store_uid to it"):
        Store(world_tmp, "k").read()
    environ = {"PKGCKPT_STORE_UID": str(FOREIGN_UID)}
    found = open_store(load({"store": world_tmp, "key": "k"}, None, environ=environ)).read()
    assert found is not None and label(found) == "squashed"


def _failing(count: int) -> manifest.Body:
    """One recorded package, failed by `count` restores: an annotation of its record."""
    env = manifest.Environment(kind="python", path="/venv")
    failing = (
        (manifest.Failing(name="a", version="1", reason="gone", count=count),) if count else ()
    )
    added = (manifest.Package(name="a", version="1"),)
    return manifest.Body(environments=(manifest.Delta(env=env, added=added, failing=failing),))


def test_an_amend_of_a_generation_another_writer_rewrote_since_is_a_new_generation(
    store: Store,
) -> None:
    """The newest generation, amended by another writer after this one last read or wrote
    it, is not this writer's to amend: its annotation would replace the other's, whose
    only copy is that generation. The amend becomes a new generation; theirs stays kept."""
    assert store.commit(_failing(0)) is not None
    other = Store(store.root, store.key)
    found = other.read()
    assert found is not None
    theirs = other.commit(_failing(1), amend=found.generation)
    assert theirs is not None and theirs.generation == 1
    written = store.commit(_failing(2), amend=1)
    assert written is not None and written.generation == 2
    assert store.generations() == [2, 1]
    kept = store.read_generation(1)
    assert kept is not None and kept.body == _failing(1)


def test_an_amend_of_the_generation_a_writer_just_read_keeps_its_number(store: Store) -> None:
    """A writer that read the newest generation (a restore recording its failures) amends
    it under its own number: no kept generation is spent."""
    assert store.commit(_failing(0)) is not None
    fresh = Store(store.root, store.key)
    found = fresh.read()
    assert found is not None
    written = fresh.commit(_failing(1), amend=found.generation)
    assert written is not None and written.generation == 1
    assert store.generations() == [1]
    again = Store(store.root, store.key).read()
    assert again is not None and again.body == _failing(1)
