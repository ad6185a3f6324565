"""sha256 of pkgckpt's own small inputs (file names, cache keys, identities), without
OpenSSL.

`import hashlib` loads OpenSSL's libcrypto: 3.6 MB of the idle daemon's resident memory
for digests of a few dozen bytes. CPython's builtin sha256 gives the same digests, about
six times slower per byte, which only counts for large inputs: files, tarballs, a
sealed manifest's HMAC and manifests of an older schema go through `hashlib`, imported
where they are hashed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hashlib import sha256  # the builtin's type: the same interface
else:
    try:
        from _sha256 import sha256  # CPython 3.9 to 3.11
    except ImportError:  # pragma: no cover - the interpreter decides
        try:
            from _sha2 import sha256  # CPython 3.12+
        except ImportError:
            from hashlib import sha256  # another implementation

__all__ = ["sha256"]
