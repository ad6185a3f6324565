"""The idle daemon's import graph: what it would keep in memory for nothing."""

from __future__ import annotations

import subprocess
import sys

DAEMON_PROCESS = "pkgckpt.handoff, pkgckpt.daemon, pkgckpt._inotify_native, pkgckpt.scan.r"
"""What the daemon's own process imports (see handoff): its entry, the daemon and what it
runs."""


def _loaded(*modules: str) -> list[str]:
    """Which of `modules` importing the daemon's process modules loads, in a fresh
    interpreter set up as the daemon's own (`own_process`: no typing_extensions, which the
    test extras install and which imports inspect), beyond what msgspec loads by itself
    (msgspec 0.19 imports json)."""
    code = (
        "import sys, pkgckpt; pkgckpt.own_process(); "
        "import msgspec; own = set(sys.modules); "
        f"import {DAEMON_PROCESS}; "
        f"print(' '.join(m for m in {modules!r} if m in sys.modules and m not in own))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    return out.split()


def test_the_daemon_path_loads_neither_packaging_utils_nor_socket() -> None:
    """Importing the daemon with everything it runs loads neither packaging.utils (and its
    packaging.tags) nor socket: 0.6 MB of the idle daemon's RSS for a one-line name
    normalization and a host name."""
    assert _loaded("packaging.utils", "packaging.tags", "socket") == []


def test_the_daemon_process_loads_neither_click_nor_the_command_line() -> None:
    """The daemon's own process (after the hand-off) imports neither click nor the command
    line: ~1.5 MB of idle RSS that only parsing the flags needed."""
    assert _loaded("click", "pkgckpt.cli", "pkgckpt.restore") == []


def test_the_daemon_process_without_r_loads_no_subprocess() -> None:
    """subprocess (with selectors and locale, 0.6 MB) is imported where a child starts: R's
    probes, the capture worker; a daemon that has started none does without it."""
    assert _loaded("subprocess") == []


def test_the_daemon_process_loads_no_openssl() -> None:
    """Neither hashlib nor hmac (which load OpenSSL's libcrypto, 3.6 MB) on the daemon's
    import path: its names and keys are hashed with the builtin sha256 (`digest`)."""
    assert _loaded("_hashlib", "hashlib", "hmac") == []


def test_the_builtin_sha256_gives_hashlib_s_digests() -> None:
    """`digest.sha256` names files and keys exactly as OpenSSL's sha256 did: status
    files, caches and container ids of earlier versions are found again."""
    import hashlib

    from pkgckpt.digest import sha256

    for data in (b"", b"abc", bytes(range(256)) * 1000):
        assert sha256(data).hexdigest() == hashlib.sha256(data).hexdigest()


def test_the_daemon_process_loads_neither_logging_nor_what_rare_paths_need() -> None:
    """logging (with threading and traceback: its lines go through `logs.direct`),
    tempfile (a capture's), random (a retry's jitter), json and the record's commands
    are imported where they are used: ~1.5 MB of idle RSS."""
    rare = ("logging", "threading", "traceback", "tempfile", "random", "json")
    assert _loaded(*rare, "pkgckpt.record") == []


def test_the_daemon_process_loads_no_shutil() -> None:
    """Finding R (`runner.which`) needs no shutil, which imports bz2 and lzma for its
    archives: 0.6 MB of the idle daemon's RSS."""
    assert _loaded("shutil", "bz2", "lzma") == []


def test_the_daemon_process_loads_neither_dataclasses_nor_inspect() -> None:
    """No dataclass on the daemon's import path: dataclasses imports inspect (with ast,
    dis, tokenize), +1.2 MB of idle RSS measured on a plain install."""
    assert _loaded("dataclasses", "inspect", "ast") == []


def test_the_daemon_s_first_record_compiles_only_the_patterns_it_matches() -> None:
    """The checkpoint asks `validate.package_problem` before it records a package: its
    import compiles no pattern, and an index package's check compiles the name's and the
    release's alone, not the module's twenty (~1 ms of a fresh daemon's first install).
    The scanner, which the daemon has imported by then, is imported first."""
    code = (
        "import re, pkgckpt.manifest as m, pkgckpt.scan.python\n"
        "compiled = []; compile = re.compile\n"
        "re.compile = lambda p, f=0: compiled.append(p) or compile(p, f)\n"
        "from pkgckpt import validate; print(len(compiled))\n"
        "p = m.Package(name='numpy', version='2.1.0', source=m.IndexSource())\n"
        "assert validate.package_problem(p, 'python') is None; print(len(compiled))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.split() == ["0", "2"]
