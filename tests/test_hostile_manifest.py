"""Hostile manifests through the real `pkgckpt restore`: refused, nothing installed, no traceback.

Crafted manifests are encoded by `manifest.encode`, so their checksum is valid and only
restore's own validation stands between them and an installer; corrupt ones are raw bytes.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from restore_kit import hermetic, installed, pkgckpt, put_manifest
from wheelhouse import Dist, Venv, build_wheel, make_venv

from pkgckpt import manifest
from pkgckpt.config import Config
from pkgckpt.inventory import targets
from pkgckpt.manifest import Body, Delta, Environment, Package, Source, UrlSource, VcsSource

pytestmark = pytest.mark.slow

MARKER = "/tmp/pkgckpt-hostile-ran"


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> tuple[Venv, Path]:
    """One venv for the module: every case must leave it exactly as it is."""
    root = tmp_path_factory.mktemp("hostile")
    wheels = root / "wheels"
    for name in ("alpha", "evil", "passwd"):
        build_wheel(Dist(name, "1.0"), wheels)
    return make_venv(root / "venv", with_pip=False), wheels


def env_of(venv: Venv) -> Environment:
    return targets(Config(env=(venv.prefix,)))[0].env


def crafted(
    *packages: Package, removed: tuple[Package, ...] = ()
) -> Callable[[Environment], bytes]:
    def build(env: Environment) -> bytes:
        good = Package(name="alpha", version="1.0")
        body = Body(environments=(Delta(env=env, added=(good, *packages), removed=removed),))
        return manifest.encode(manifest.Manifest(generation=3, body=body))

    return build


def pkg(name: str = "evil", version: str = "1.0", source: Source | None = None) -> Package:
    return (
        Package(name=name, version=version)
        if source is None
        else Package(name=name, version=version, source=source)
    )


CRAFTED = {
    "option-shaped name": (
        crafted(pkg("--index-url=https://evil.example/simple")),
        "not a valid distribution name",
    ),
    "find-links name": (crafted(pkg("--find-links=/tmp")), "not a valid distribution name"),
    "URL as name": (
        crafted(pkg("https://evil.example/evil-1.0-py3-none-any.whl")),
        "not a valid distribution name",
    ),
    "requirement as name": (
        crafted(pkg("evil @ file:///tmp/evil.whl")),
        "not a valid distribution name",
    ),
    "path traversal name": (crafted(pkg("../../../etc/passwd")), "not a valid distribution name"),
    "shell in name": (crafted(pkg(f"evil;touch {MARKER}")), "not a valid distribution name"),
    "whitespace in name": (crafted(pkg("evil --pre")), "not a valid distribution name"),
    "NUL in name": (crafted(pkg("evil\x00")), "not a valid distribution name"),
    "newline in name": (
        crafted(pkg("evil\n--index-url=https://x")),
        "not a valid distribution name",
    ),
    "shell in version": (
        crafted(pkg(version=f"1.0; touch {MARKER}")),
        "not a valid PEP 440 version",
    ),
    "substitution in version": (
        crafted(pkg(version=f"$(touch {MARKER})")),
        "not a valid PEP 440 version",
    ),
    "specifier as version": (crafted(pkg(version=">=0")), "not a valid PEP 440 version"),
    "whitespace around version": (crafted(pkg(version=" 1.0")), "not a valid PEP 440 version"),
    "option as URL": (
        crafted(pkg(source=UrlSource(url="--index-url=https://evil.example"))),
        "not an absolute URL",
    ),
    "newline in URL": (
        crafted(pkg(source=UrlSource(url="https://x.example/e.whl\n--pre"))),
        "whitespace",
    ),
    "ssh option host": (
        crafted(pkg(source=VcsSource(vcs="git", url=f"ssh://-oProxyCommand=touch {MARKER}/x"))),
        "URL with whitespace",
    ),
    "ssh option host no space": (
        crafted(pkg(source=VcsSource(vcs="git", url="ssh://-oProxyCommand=id/x"))),
        "invalid host",
    ),
    "hostile removal": (crafted(removed=(pkg("-r/etc/passwd"),)), "not a valid distribution name"),
}


def restore(tmp_path: Path, venv: Venv, *options: str) -> subprocess.CompletedProcess[str]:
    """The real `pkgckpt restore` of key alice from `tmp_path/store` into `venv`."""
    store = str(tmp_path / "store")
    args = ("--store", store, "--key", "alice", "--env", str(venv.prefix), *options)
    return pkgckpt("restore", *args, env=hermetic(tmp_path))


def check_refused(out: subprocess.CompletedProcess[str], venv: Venv, expect: str) -> None:
    assert out.returncode == 1, (out.stdout, out.stderr)
    assert "Traceback" not in out.stdout + out.stderr
    assert expect in out.stderr, out.stderr
    assert installed(venv.site_packages) == {}, "something was installed from a refused manifest"
    assert not Path(MARKER).exists()


@pytest.mark.parametrize("case", sorted(CRAFTED))
def test_crafted_manifest_is_refused_and_nothing_installed(
    case: str, image: tuple[Venv, Path], tmp_path: Path
) -> None:
    """A checksummed manifest with one hostile entry is refused whole: not even `alpha` installs."""
    venv, wheels = image
    build, expect = CRAFTED[case]
    put_manifest(tmp_path / "store", "alice", build(env_of(venv)))
    out = restore(tmp_path, venv, "--no-index", "--find-links", str(wheels))
    check_refused(out, venv, expect)
    assert "refusing the manifest" in out.stderr


def _manifest_bytes(schema: int = manifest.SCHEMA) -> bytes:
    body = Body(
        environments=(Delta(env=Environment(kind="python", path="/x"), added=(pkg("alpha"),)),)
    )
    data = manifest.encode(manifest.Manifest(generation=1, body=body))
    edited = data.replace(b'"schema":%d' % manifest.SCHEMA, b'"schema":%d' % schema, 1)
    assert edited != data or schema == manifest.SCHEMA
    return edited


def _bad_utf8_body() -> bytes:
    body = (
        b'{"environments":[{"env":{"kind":"python","path":"/x"},'
        b'"added":[{"name":"al\xffpha","version":"1.0"}]}]}'
    )
    sha = manifest.checksum(body).encode()
    return b'{"schema":1,"generation":1,"checksum":"' + sha + b'","body":' + body + b"}"


RAW: dict[str, tuple[Callable[[], bytes], str]] = {
    "invalid UTF-8": (
        lambda: b'{"schema": 1, "checksum": "\xff\xfe", "body": {}}',
        "not valid UTF-8",
    ),
    "invalid UTF-8 in a checksummed body": (_bad_utf8_body, "not valid UTF-8"),
    "binary garbage": (lambda: bytes(range(256)) * 64, "not valid UTF-8"),
    "empty file": (lambda: b"", "not a valid pkgckpt file"),
    "a JSON array": (lambda: b"[1, 2, 3]", "not a valid pkgckpt file"),
    "truncated": (lambda: _manifest_bytes()[:100], "not a valid pkgckpt file"),
    "edited body": (lambda: _manifest_bytes().replace(b'"alpha"', b'"evil"'), "fails its checksum"),
    "unknown schema": (lambda: _manifest_bytes(schema=99), "newer than this pkgckpt understands"),
    "schema zero": (lambda: _manifest_bytes(schema=0), "invalid schema"),
    "huge file": (
        lambda: b'{"schema": 1, "pad": "' + b"x" * (65 * 1024 * 1024) + b'"}',
        "byte limit",
    ),
}


@pytest.mark.parametrize("case", sorted(RAW))
def test_corrupt_manifest_is_refused_with_a_message(
    case: str, image: tuple[Venv, Path], tmp_path: Path
) -> None:
    """Bytes that are not a whole, known manifest give a one-line reason and exit 1."""
    venv, wheels = image
    make, expect = RAW[case]
    put_manifest(tmp_path / "store", "alice", make())
    out = restore(tmp_path, venv, "--no-index", "--find-links", str(wheels))
    check_refused(out, venv, expect)


def test_manifest_writable_by_others_is_refused(image: tuple[Venv, Path], tmp_path: Path) -> None:
    """A manifest someone else could have written is not trusted, however valid it looks."""
    venv, wheels = image
    path = put_manifest(tmp_path / "store", "alice", crafted()(env_of(venv)))
    path.chmod(0o666)
    out = restore(tmp_path, venv, "--no-index", "--find-links", str(wheels))
    check_refused(out, venv, "writable by group or others")


def test_refusal_in_json_mode_is_still_an_error_not_a_plan(
    image: tuple[Venv, Path], tmp_path: Path
) -> None:
    """With --json a refused manifest still exits 1 with the reason, and prints no plan."""
    venv, _ = image
    put_manifest(tmp_path / "store", "alice", crafted(pkg("--pre"))(env_of(venv)))
    out = restore(tmp_path, venv, "--json", "--dry-run")
    check_refused(out, venv, "refusing the manifest")
    if out.stdout.strip():
        assert "error" in json.loads(out.stdout)


FORGED = "Restored generation 9 in 0.1 s."


@pytest.mark.parametrize("kind", ["python", "conda", "r"])
def test_an_environment_path_from_the_store_cannot_write_lines_or_escapes(
    kind: str, image: tuple[Venv, Path], tmp_path: Path
) -> None:
    """An environment of the manifest that is not here is named with `?` for what in its
    path is not printable, in restore's plan and report and in `status`: a newline or a
    terminal escape in it cannot forge a line of the report nor drive the terminal."""
    venv, _ = image
    path = f"/nonexistent/env\n{FORGED}\n\x1b[2J\u202e"
    put_manifest(tmp_path / "store", "alice", Body.of([
        Delta(env=Environment(kind=kind, path=path), added=(pkg("alpha"),)),
    ]))  # fmt: skip
    store = ("--store", str(tmp_path / "store"), "--key", "alice", "--env", str(venv.prefix))
    for command in (("restore", "--dry-run"), ("restore",), ("status",)):
        out = pkgckpt(*command, *store, env=hermetic(tmp_path))
        assert out.returncode == 0, (command, out.stdout, out.stderr)
        shown = out.stdout + out.stderr
        assert FORGED not in shown.splitlines(), (command, shown)
        assert "\x1b" not in shown and "\u202e" not in shown, (command, shown)
        assert f"/nonexistent/env?{FORGED}??[2J?" in shown, (command, shown)
    assert installed(venv.site_packages) == {}
