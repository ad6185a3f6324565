"""The manifest seal (HMAC-SHA256 keyed by the user's secret file) and the checks a store
passes before use: a squashed store is the user's own mount or sealed, the secret is the
user's alone. Cross-user attacks on a squashed store are in tests/security/test_trust.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pkgckpt import seal
from pkgckpt.config import Config
from pkgckpt.errors import StoreError, UsageError
from pkgckpt.manifest import Body, Delta, Environment, Package
from pkgckpt.store import Store, init_store, open_store

BODY = Body(
    environments=(
        Delta(env=Environment(kind="python", path="/env"), added=(Package(name="a", version="1"),)),
    )
)
SECRET = b"s" * 32


@pytest.fixture(autouse=True)
def store_root(tmp_path: Path) -> None:
    """tmp_path is the store root of these tests: marked as one."""
    init_store(tmp_path)


def test_a_sealed_manifest_reads_back_and_is_json(tmp_path: Path) -> None:
    """Commit seals the file (a JSON envelope around the manifest); read verifies and
    returns the same manifest; a reader without the secret still reads it."""
    store = Store(tmp_path, "k", seal=seal.Sealed(SECRET, "k"))
    written = store.commit(BODY)
    assert written is not None
    data = (tmp_path / "k" / "manifest.json").read_bytes()
    assert data.startswith(b'{"seal": "hmac-sha256:')
    found = store.read()
    assert found is not None and found.body == BODY and found.generation == 1
    plain = Store(tmp_path, "k").read()
    assert plain is not None and plain.body == BODY
    assert store.commit(BODY) is None  # unchanged: not written again


@pytest.mark.parametrize(
    ("reader", "message"),
    [
        (seal.Sealed(b"t" * 32, "k"), "fails its seal"),
        (seal.Sealed(SECRET, "other"), "fails its seal"),
    ],
    ids=["another secret", "another key"],
)
def test_a_seal_of_another_secret_or_key_is_refused(
    tmp_path: Path, reader: seal.Sealed, message: str
) -> None:
    """A manifest sealed with another secret, or for another key, is refused."""
    Store(tmp_path, "k", seal=seal.Sealed(SECRET, "k")).commit(BODY)
    with pytest.raises(StoreError, match=message):
        Store(tmp_path, "k", seal=reader).read()


def test_an_unsealed_or_edited_manifest_is_refused_when_a_secret_is_set(tmp_path: Path) -> None:
    """With a secret, an unsealed manifest (written by anyone) and a sealed one whose
    bytes were edited are both refused, and no older generation is fallen back to."""
    Store(tmp_path, "k").commit(BODY)
    sealed = Store(tmp_path, "k", seal=seal.Sealed(SECRET, "k"))
    with pytest.raises(StoreError, match="is not sealed"):
        sealed.read()
    path = tmp_path / "k" / "manifest.json"
    path.unlink()
    (tmp_path / "k" / "manifest.1.json").unlink()
    sealed.commit(BODY)
    data = path.read_bytes()
    path.write_bytes(data.replace(b'"1"', b'"2"'))
    with pytest.raises(StoreError, match="fails its seal"):
        sealed.read()
    path.write_bytes(data[:40] + b"\xff" + data[41:])
    with pytest.raises(StoreError, match="damaged seal envelope"):
        sealed.read()


def _secret(path: Path, data: bytes = SECRET, mode: int = 0o600) -> Path:
    path.write_bytes(data)
    path.chmod(mode)
    return path


def test_a_squashed_store_showing_other_keys_is_refused_with_both_layouts(tmp_path: Path) -> None:
    """store_uid with another key's directory visible and no secret: refused, and the
    message explains the subPath layout and the secret file; dot entries are no keys."""
    store = tmp_path / "store"
    (store / "mine").mkdir(parents=True)
    (store / ".marker").mkdir()
    squashed = Config(store=store, key="mine", store_uid=os.geteuid())
    open_store(squashed)  # layout (a): only this key is visible
    (store / "bob").mkdir()
    with pytest.raises(StoreError) as refused:
        open_store(squashed)
    message = str(refused.value)
    assert "'bob'" in message and "subPath" in message and "store_secret_file" in message
    open_store(Config(store=store, key="mine"))  # not squashed: ownership is the check
    secret = _secret(tmp_path / "secret")
    sealed = open_store(Config(store=store, key="mine", store_uid=0, store_secret_file=secret))
    assert isinstance(sealed.seal, seal.Sealed)


def test_a_secret_file_must_be_the_users_alone_and_off_the_store(tmp_path: Path) -> None:
    """Group/other access, a symlink, too few bytes or a place on the store: a usage
    error naming the problem."""
    store = tmp_path / "store"
    store.mkdir()

    def check(path: Path) -> None:
        seal.read_secret(path, store)

    check(_secret(tmp_path / "good"))
    with pytest.raises(UsageError, match="chmod 600"):
        check(_secret(tmp_path / "loose", mode=0o640))
    (tmp_path / "link").symlink_to(tmp_path / "good")
    with pytest.raises(UsageError, match="symbolic link"):
        check(tmp_path / "link")
    with pytest.raises(UsageError, match="it needs 32"):
        check(_secret(tmp_path / "short", b"x" * 8))
    with pytest.raises(UsageError, match="on the store"):
        check(_secret(store / "secret"))
    if os.geteuid() == 0:
        os.chown(tmp_path / "good", 4242, 4242)
        with pytest.raises(UsageError, match="owned by uid 4242"):
            check(tmp_path / "good")
