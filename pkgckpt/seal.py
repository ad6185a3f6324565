"""What keeps one user's manifests from another's where file ownership cannot.

On an NFS export with all_squash (`store_uid` set), every file on the store has the one
uid the server gives everybody: the store's owner check passes for every user, so bob
could rewrite alice's manifest with a source of his and her restore would install it.
pkgckpt then accepts a manifest only when one of these holds, checked at every start
(`guard`, called by `store.open_store`):

(a) the store is the user's own mount: no directory of another key is visible in the store
    root (Kubernetes: a volume `subPath` per user, so no other user's directory is
    mounted at all);
(b) manifests are sealed: an HMAC-SHA256 keyed by a per-user secret file
    (`store_secret_file`: the user's, mode 0600, not on the store). The seal is written
    at commit and verified at read before anything else looks at the bytes.

Otherwise the store is refused with a message that explains both. A secret file seals
manifests on any store, squashed or not.

A sealed manifest is a JSON envelope around the manifest's own bytes, untouched::

    {"seal": "hmac-sha256:<hex>", "manifest": <the manifest, as store.py wrote it>}

The HMAC covers a version tag, the key and those bytes: a manifest sealed for one key is
not valid for another, and one written without the secret is refused. It does not stop a
writer with access to the store from putting back an older sealed generation of the same
key (the user's own packages, from before).

`store.py` makes two calls: `Seal.sign` on the encoded buffers at commit, `Seal.open` on
the raw bytes of a file at read, before decoding.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Sequence
from pathlib import Path

import msgspec

from .config import Config, check_key
from .errors import StoreError, UsageError

_TAG = b"pkgckpt-seal-1\0"
_HEAD = b'{"seal": "hmac-sha256:'
_MIDDLE = b'", "manifest": '
MIN_SECRET = 32
"""Bytes of secret at least: 256 bits, the HMAC-SHA256 key size."""
MAX_SECRET = 4096

LAYOUTS = (
    "on a squashed store (store_uid) every file has one owner, so ownership cannot keep "
    "users apart; use one of two layouts: (a) mount each user's own directory of the "
    "export as the store (Kubernetes: a volume subPath per user), so that no other key's "
    "directory is visible in the store root; or (b) give each user a secret file, 0600, "
    "owned by the user and not on the store, and set store_secret_file to it: manifests "
    "are then sealed with it (see README, Security model)"
)


class _Envelope(msgspec.Struct, frozen=True):
    seal: str
    manifest: msgspec.Raw


_envelope = msgspec.json.Decoder(_Envelope)


def _unwrap(data: bytes, where: Path) -> tuple[str, bytes] | None:
    """The seal and the manifest's bytes of a sealed file; None when it is not one."""
    if not data.startswith(_HEAD):
        return None
    try:
        envelope = _envelope.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError):
        # msgspec reports invalid UTF-8 in a string as UnicodeDecodeError.
        raise StoreError(f"{where}: a damaged seal envelope: refused") from None
    return envelope.seal, bytes(envelope.manifest)


class Seal:
    """No secret: what is sealed is read without checking (the owner check, or layout
    (a), is what this store relies on) and what is written is not sealed."""

    def sign(self, parts: Sequence[bytes | memoryview]) -> Sequence[bytes | memoryview]:
        return parts

    def open(self, data: bytes, where: Path) -> bytes:
        found = _unwrap(data, where)
        return data if found is None else found[1]


class Sealed(Seal):
    """Manifests sealed with the user's secret for one key: signed at commit, and at
    read refused unless the seal is this secret's."""

    def __init__(self, secret: bytes, key: str) -> None:
        self._secret = secret
        self._key = key.encode()

    def _mac(self, body: bytes) -> str:
        # Here, not at the top: they load OpenSSL (3.6 MB), which an unsealed store's
        # daemon does without (see digest).
        import hashlib
        import hmac

        mac = hmac.new(self._secret, _TAG + self._key + b"\0", hashlib.sha256)
        mac.update(body)
        return "hmac-sha256:" + mac.hexdigest()

    def sign(self, parts: Sequence[bytes | memoryview]) -> Sequence[bytes | memoryview]:
        # The envelope's reader gets the manifest value without trailing white space: the
        # seal covers exactly those bytes.
        body = b"".join(parts).rstrip()
        digest = self._mac(body).removeprefix("hmac-sha256:").encode()
        return (_HEAD, digest, _MIDDLE, body, b"}\n")

    def open(self, data: bytes, where: Path) -> bytes:
        found = _unwrap(data, where)
        if found is None:
            raise StoreError(
                f"{where} is not sealed, and store_secret_file is set: written without "
                "the secret, so maybe by someone else: refused (move it away to start anew)"
            )
        seal, body = found
        import hmac

        if not hmac.compare_digest(seal.encode(), self._mac(body).encode()):
            raise StoreError(
                f"{where} fails its seal: not written with this user's store_secret_file "
                "for this key (forged, or sealed with another secret): refused"
            )
        return body


def read_secret(path: Path, store: Path) -> bytes:
    """The secret in `path`, refused unless it is the user's alone and not on the store."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as e:
        why = "a symbolic link" if e.errno == errno.ELOOP else e.strerror
        raise UsageError(f"store_secret_file {path}: {why}") from None
    try:
        st = os.fstat(fd)
        problem = None
        if not stat.S_ISREG(st.st_mode):
            problem = "not a regular file"
        elif st.st_uid != os.geteuid():
            problem = f"owned by uid {st.st_uid}, not by this user (uid {os.geteuid()})"
        elif stat.S_IMODE(st.st_mode) & 0o077:
            problem = f"mode {stat.S_IMODE(st.st_mode):04o}: others may read it; chmod 600"
        elif _on_store(path, st, store):
            problem = f"on the store {store}, where others could read it"
        if problem is not None:
            raise UsageError(f"store_secret_file {path}: {problem}")
        with os.fdopen(fd, "rb", closefd=False) as f:
            secret = f.read(MAX_SECRET + 1).strip()
    except OSError as e:
        raise UsageError(f"store_secret_file {path}: {e.strerror}") from None
    finally:
        os.close(fd)
    if not MIN_SECRET <= len(secret) <= MAX_SECRET:
        raise UsageError(
            f"store_secret_file {path}: {len(secret)} bytes; it needs {MIN_SECRET} to "
            f"{MAX_SECRET} (e.g. `head -c 48 /dev/urandom | base64 > {path}`)"
        )
    return secret


def _on_store(path: Path, st: os.stat_result, store: Path) -> bool:
    root = os.path.realpath(store)
    if os.path.commonpath([root, os.path.realpath(path)]) == root:
        return True
    try:
        return Path(root).stat().st_dev == st.st_dev and os.path.ismount(root)
    except OSError:
        return False


def foreign_keys(store: Path, key: str) -> list[str]:
    """Directories (or symlinks) of other keys visible in the store root, a few at most."""
    found: list[str] = []
    try:
        with os.scandir(store) as entries:
            for entry in entries:
                # A key never starts with "." (store._check_key): dot entries are not keys.
                if entry.name == key or entry.name.startswith("."):
                    continue
                if entry.is_symlink() or entry.is_dir(follow_symlinks=False):
                    found.append(entry.name)
                    if len(found) == 3:
                        break
    except FileNotFoundError:
        return []
    except OSError as e:
        raise StoreError(f"cannot list the store root {store}: {e.strerror}") from None
    return found


def guard(config: Config, *, layout: bool = True) -> Seal:
    """The checks before a store is used, and the seal its manifests get.

    A key that every user of the image would share is refused (`config.check_key`); a
    squashed store is refused unless it is the user's own mount or sealed (see above).
    `layout`: check the mount now; False leaves `check_layout` to the caller, for each
    time it reads the store (the daemon, whose store may be mounted after it starts).
    """
    check_key(config)
    if config.store_secret_file is not None:
        return Sealed(read_secret(config.store_secret_file, config.store), config.key)
    if layout:
        check_layout(config)
    return Seal()


def check_layout(config: Config) -> None:
    """Refuse a squashed, unsealed store whose root shows other keys' directories: layout
    (a) is what keeps its users apart. It can only judge what is mounted now."""
    if config.store_uid is None or config.store_secret_file is not None:
        return
    others = foreign_keys(config.store, config.key)
    if others:
        shown = ", ".join(repr(o) for o in others)
        raise StoreError(
            f"store {config.store} shows other keys' directories ({shown}) and "
            f"store_uid is set: refused. {LAYOUTS[0].upper()}{LAYOUTS[1:]}"
        )
