"""The rebase's consistency check reading a planned package's METADATA from a real package
index: an HTTP server on 127.0.0.1 serving a PEP 503/691 tree (with PEP 658 metadata
files, or without) built from wheels the tests make (restore/indexmeta.py, rebase.py)."""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import json
import socket
import sys
import threading
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from restore_kit import isolated  # noqa: F401  (autouse: this machine's pip.conf kept out)
from wheelhouse import Dist, build_wheel

from pkgckpt.config import Config
from pkgckpt.inventory import Target
from pkgckpt.manifest import Delta, Environment, Package
from pkgckpt.restore import indexmeta
from pkgckpt.restore.rebase import Rebase, rebase

PY = Environment(
    kind="python", path="/opt/venv", interpreter=".".join(map(str, sys.version_info[:3]))
)
OLDUSER_HELD = "requires evaldep<2, and evaldep 2.0 (image) stays"


@dataclass
class Index:
    """A simple index under `root`, served at `url`; `seen` is every path requested, with
    the Authorization header it came with."""

    root: Path
    url: str = ""
    seen: list[tuple[str, str | None]] = field(default_factory=list)

    def files(self) -> Path:
        return self.root / "files"

    def publish(
        self,
        wheel: Path,
        *,
        metadata: bool = True,
        json_api: bool = True,
        metadata_hash: str | None = None,
        extra: tuple[tuple[str, str], ...] = (),
    ) -> None:
        """`wheel` listed on its project's page, with a `.metadata` file (its hash given as
        `metadata_hash`, else the real one) unless `metadata` is False; `extra` adds
        (href, text) anchors to the HTML page and files to the JSON one."""
        self.files().mkdir(parents=True, exist_ok=True)
        target = self.files() / wheel.name
        target.write_bytes(wheel.read_bytes())
        project = self.root / "simple" / wheel.name.split("-")[0].replace("_", "-")
        project.mkdir(parents=True, exist_ok=True)
        wheel_sha = hashlib.sha256(target.read_bytes()).hexdigest()
        entry: dict[str, object] = {
            "filename": wheel.name,
            "url": f"../../files/{wheel.name}",
            "hashes": {"sha256": wheel_sha},
            "size": target.stat().st_size,
        }
        attrs = ""
        if metadata:
            with zipfile.ZipFile(wheel) as zf:
                (name,) = [n for n in zf.namelist() if n.endswith(".dist-info/METADATA")]
                text = zf.read(name)
            Path(f"{target}.metadata").write_bytes(text)
            digest = metadata_hash or hashlib.sha256(text).hexdigest()
            entry["core-metadata"] = {"sha256": digest}
            attrs = f' data-core-metadata="sha256={digest}"'
        anchors = [f'<a href="../../files/{wheel.name}#sha256={wheel_sha}"{attrs}>{wheel.name}</a>']
        anchors += [f'<a href="{href}">{text}</a>' for href, text in extra]
        (project / "index.html").write_text(
            "<!DOCTYPE html><html><body>\n" + "\n".join(anchors) + "\n</body></html>\n"
        )
        if json_api:
            files = [
                entry,
                *({"filename": text, "url": href, "hashes": {}} for href, text in extra),
            ]
            page = {"meta": {"api-version": "1.1"}, "name": project.name, "files": files}
            (project / "index.json").write_text(json.dumps(page))
        else:
            (project / "index.json").unlink(missing_ok=True)

    def wheel_fetched(self, wheel: str) -> bool:
        return any(path == f"/files/{wheel}" for path, _ in self.seen)


def _handler(index: Index) -> type[http.server.SimpleHTTPRequestHandler]:
    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, directory=str(index.root), **kwargs)  # type: ignore[misc]

        def do_GET(self) -> None:
            index.seen.append((self.path, self.headers.get("Authorization")))
            moved = Path(index.root, self.path.lstrip("/"), "moved")
            if self.path.endswith("/") and moved.is_file():
                self.send_response(302)
                self.send_header("Location", moved.read_text())
                self.end_headers()
                return
            if (
                self.path.endswith("/")
                and Path(index.root, self.path.lstrip("/"), "slow").is_file()
            ):
                self.wfile.write(b"HTTP/1.1 200 OK\r\n")
                self.trickle(b"X")  # the headers that never end
                return
            if (
                self.path.endswith("/")
                and Path(index.root, self.path.lstrip("/"), "drip").is_file()
            ):
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.end_headers()
                self.trickle(b" ")
                return
            page = Path(index.root, self.path.lstrip("/"), "index.json")
            wants_json = "application/vnd.pypi.simple.v1+json" in self.headers.get("Accept", "")
            if self.path.endswith("/") and wants_json and page.is_file():
                body = page.read_bytes()
                self.send_response(200)
                self.send_header("Content-Type", "application/vnd.pypi.simple.v1+json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            super().do_GET()

        def trickle(self, byte: bytes) -> None:
            """`byte` each 0.1 s for 5 s (each read within any timeout), until the client
            hangs up."""
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                for _ in range(50):
                    self.wfile.write(byte)
                    self.wfile.flush()
                    time.sleep(0.1)

        def log_message(self, format: str, *args: object) -> None:
            """Quiet: the test reads `index.seen`."""

    return Handler


class _Server(http.server.ThreadingHTTPServer):
    request_queue_size = 64
    """The default 5 drops the connections of concurrent fetches (a 1 s retry each)."""


@contextlib.contextmanager
def serve(root: Path) -> Iterator[Index]:
    """A live index of `root` on 127.0.0.1, stopped on leaving."""
    served = Index(root)
    served.root.mkdir()
    server = _Server(("127.0.0.1", 0), _handler(served))
    served.url = f"http://127.0.0.1:{server.server_address[1]}/simple/"
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield served
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture
def index(tmp_path: Path) -> Iterator[Index]:
    """A live index on 127.0.0.1 (stopped at the end of the test)."""
    with serve(tmp_path / "index") as served:
        yield served


def plan_on_v2(
    tmp_path: Path,
    url: str,
    *added: str,
    ask_index: bool = True,
    index_until: float | None = None,
) -> Rebase:
    """The rebase of `added` (each `name==version`, from an index) onto an image that ships
    evaldep 2.0, with `url` as the index and no find-links; its index reads end by
    `index_until` (`time.monotonic()`)."""
    site = tmp_path / "site"
    info = site / "evaldep-2.0.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: evaldep\nVersion: 2.0\n")
    image = [Package(name="evaldep", version="2.0")]
    packages = tuple(Package(name=s.split("==")[0], version=s.split("==")[1]) for s in added)
    delta = Delta(env=PY, added=packages, image="sha256:v1")
    config = Config(store=tmp_path / "s", key="k", index_url=url)
    return rebase(
        delta,
        Target(env=PY, roots=(site,)),
        image,
        {"evaldep": image[0]},
        config,
        ask_index=ask_index,
        index_until=index_until,
    )


def decisions(planned: Rebase) -> dict[str, tuple[str, str]]:
    return {d.name: (d.action, d.reason) for d in planned.decisions}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """olduser 1.0 (requires evaldep<2), newpkg 1.0, evaldep 1.0 and 2.0, as wheels."""
    out = tmp_path_factory.mktemp("index-wheels")
    for dist in (
        Dist("olduser", "1.0", requires=["evaldep<2"]),
        Dist("newpkg", "1.0"),
        Dist("evaldep", "1.0"),
        Dist("evaldep", "2.0"),
    ):
        build_wheel(dist, out)
    return out


@pytest.mark.parametrize("json_api", [True, False], ids=["pep691-json", "pep503-html"])
def test_a_package_only_on_the_index_is_held_back_from_its_metadata_file(
    tmp_path: Path, index: Index, built: Path, json_api: bool
) -> None:
    """The PEP 658 metadata file, read from the index's JSON or HTML page, shows that
    olduser needs evaldep<2 against the image's 2.0: held back, and no wheel downloaded."""
    for wheel in ("olduser-1.0-py3-none-any.whl", "newpkg-1.0-py3-none-any.whl"):
        index.publish(built / wheel, json_api=json_api)
    planned = plan_on_v2(tmp_path, index.url, "olduser==1.0", "newpkg==1.0")
    assert decisions(planned) == {
        "olduser": ("held-back", OLDUSER_HELD),
        "newpkg": ("install", "added by the user"),
    }
    assert ("/files/olduser-1.0-py3-none-any.whl.metadata", None) in index.seen
    assert not index.wheel_fetched("olduser-1.0-py3-none-any.whl")


def test_status_plans_without_asking_the_index(tmp_path: Path, index: Index, built: Path) -> None:
    """The plan `status` shows (ask_index=False) sends no request, so a slow or blackholed
    index never holds up a person reading status; its reason says restore's dry run asks."""
    index.publish(built / "olduser-1.0-py3-none-any.whl")
    planned = plan_on_v2(tmp_path, index.url, "olduser==1.0", ask_index=False)
    action, reason = decisions(planned)["olduser"]
    assert action == "install"
    assert "status reads no index" in reason
    assert index.seen == []


def test_without_metadata_files_a_small_wheel_is_read(
    tmp_path: Path, index: Index, built: Path
) -> None:
    """An index offering no metadata file: the wheel (small) is downloaded, checked against
    its sha256 and read without installing; the conflict is found the same."""
    index.publish(built / "olduser-1.0-py3-none-any.whl", metadata=False)
    planned = plan_on_v2(tmp_path, index.url, "olduser==1.0")
    assert decisions(planned) == {"olduser": ("held-back", OLDUSER_HELD)}
    assert index.wheel_fetched("olduser-1.0-py3-none-any.whl")


def test_a_corrupt_wheel_from_the_index_is_left_to_the_installer(
    tmp_path: Path, index: Index, built: Path
) -> None:
    """A wheel whose METADATA does not inflate (its hash matching, as an index's own bad
    upload would): the plan is made, the reason names the unreadable wheel. zipfile's
    zlib.error stopped the restore before."""
    data = bytearray((built / "olduser-1.0-py3-none-any.whl").read_bytes())
    with zipfile.ZipFile(built / "olduser-1.0-py3-none-any.whl") as zf:
        (info,) = [i for i in zf.infolist() if i.filename.endswith(".dist-info/METADATA")]
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    data[start : start + 4] = b"\xff\xff\xff\xff"
    corrupt = tmp_path / "corrupt" / "olduser-1.0-py3-none-any.whl"
    corrupt.parent.mkdir()
    corrupt.write_bytes(data)
    index.publish(corrupt, metadata=False)
    (action, reason) = decisions(plan_on_v2(tmp_path, index.url, "olduser==1.0"))["olduser"]
    assert action == "install"
    assert reason.endswith("olduser-1.0-py3-none-any.whl holds no readable METADATA"), reason


def test_a_large_wheel_without_metadata_file_is_left_to_the_installer(
    tmp_path: Path, index: Index, built: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Over the size limit and with no metadata file, the wheel is not read: the JSON page's
    size stops it before any request, the HTML page's at the response's Content-Length;
    the package is planned as before, the reason says its requirements are the
    installer's."""
    monkeypatch.setattr(indexmeta, "MAX_WHEEL", 100)
    for json_api in (True, False):
        index.publish(built / "olduser-1.0-py3-none-any.whl", metadata=False, json_api=json_api)
        (action, reason) = decisions(plan_on_v2(tmp_path, index.url, "olduser==1.0"))["olduser"]
        assert action == "install"
        assert reason.startswith("added by the user; its requirements are left to the installer")
        assert "over 100 bytes" in reason, reason
        assert index.wheel_fetched("olduser-1.0-py3-none-any.whl") is not json_api


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_an_index_that_is_down_leaves_the_check_to_the_installer(tmp_path: Path) -> None:
    """Nothing listens at the index: the plan is made anyway, each package to install with
    the reason, and the index is tried once, not once per package."""
    url = f"http://127.0.0.1:{_closed_port()}/simple/"
    started = time.monotonic()
    planned = plan_on_v2(tmp_path, url, "olduser==1.0", "newpkg==1.0")
    assert time.monotonic() - started < indexmeta.TIMEOUT
    for action, reason in decisions(planned).values():
        assert action == "install"
        assert f"the index {url} is unreachable" in reason, reason


@pytest.mark.parametrize("where", ["drip", "slow"], ids=["body", "headers"])
def test_an_index_answering_a_byte_at_a_time_costs_the_budget_only(
    tmp_path: Path, index: Index, where: str
) -> None:
    """A page whose body, or status line and headers, come a byte at a time (each read
    within any timeout): the request stops at the plan's deadline and the package is
    left to the installer, the index named as unreachable. Headers were read with the
    per-read timeout alone: the plan took as long as the index went on."""
    (project := index.root / "simple" / "olduser").mkdir(parents=True)
    (project / where).touch()
    started = time.monotonic()
    planned = plan_on_v2(tmp_path, index.url, "olduser==1.0", index_until=started + 0.5)
    assert time.monotonic() - started < 1.5
    (action, reason) = decisions(planned)["olduser"]
    assert action == "install"
    assert reason.endswith(f"the index {index.url} is unreachable (out of time)"), reason


def test_an_https_index_that_never_finishes_its_handshake_costs_the_deadline(
    tmp_path: Path,
) -> None:
    """An https:// index that takes the connection and never answers the TLS handshake:
    connecting and the handshake end by the plan's deadline (the handshake timed out on
    half of what was left), the index unreachable."""
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        url = f"https://127.0.0.1:{listening.getsockname()[1]}/simple/"
        started = time.monotonic()
        planned = plan_on_v2(tmp_path, url, "olduser==1.0", index_until=started + 0.5)
        assert time.monotonic() - started < 1.5
    (action, reason) = decisions(planned)["olduser"]
    assert action == "install"
    assert reason.endswith(f"the index {url} is unreachable (TimeoutError)"), reason


def test_a_plans_environments_share_the_restores_deadline(tmp_path: Path, index: Index) -> None:
    """Two environments rebased onto the same slow index, planned with a restore deadline
    of 0.5 s: their index reads end by it together, each package left to the installer.
    Each environment's rebase took a budget of its own (20 s), whatever --timeout said."""
    import msgspec

    from pkgckpt.manifest import Body, Manifest
    from pkgckpt.restore import _plan
    from pkgckpt.restore.runner import Deadline

    (project := index.root / "simple" / "olduser").mkdir(parents=True)
    (project / "drip").touch()
    targets, deltas = [], []
    for name in ("a", "b"):
        env = msgspec.structs.replace(PY, path=str(tmp_path / name))
        (tmp_path / name / "bin").mkdir(parents=True)
        (tmp_path / name / "bin" / "python").symlink_to(sys.executable)
        info = tmp_path / name / "site" / "evaldep-2.0.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text("Metadata-Version: 2.1\nName: evaldep\nVersion: 2.0\n")
        targets.append(Target(env=env, roots=(info.parent,)))
        olduser = Package(name="olduser", version="1.0")
        deltas.append(Delta(env=env, added=(olduser,), image="sha256:v1"))
    config = Config(store=tmp_path / "s", key="k", index_url=index.url)
    started = time.monotonic()
    plan = _plan(config, Manifest(body=Body.of(deltas)), targets, deadline=Deadline(0.5))
    assert time.monotonic() - started < 1.5
    reasons = [d.reason for e in plan.environments if e.rebase for d in e.rebase.decisions]
    assert len(reasons) == 2
    for reason in reasons:
        assert reason.endswith(f"the index {index.url} is unreachable (out of time)"), reason


def test_the_budget_ends_within_the_restores_deadline() -> None:
    """A plan's index reads end `BUDGET` from now, or when the restore's `--timeout` does
    if that is sooner (already passed: now)."""
    from pkgckpt.restore.rebase import BUDGET, budget
    from pkgckpt.restore.runner import Deadline

    now = time.monotonic()
    assert now + BUDGET <= budget() < now + BUDGET + 1
    assert now + BUDGET <= budget(Deadline(None)) < now + BUDGET + 1
    assert now + BUDGET <= budget(Deadline(600)) < now + BUDGET + 1
    assert now + 2 <= budget(Deadline(2)) < now + 3
    gone = Deadline(0.01)
    time.sleep(0.02)
    assert budget(gone) <= time.monotonic()


@pytest.mark.parametrize(
    ("page", "raised"),
    [("index.json", "RecursionError"), ("index.html", "AssertionError")],
)
def test_a_page_the_parser_fails_on_is_unreadable_not_a_crash(
    tmp_path: Path, index: Index, page: str, raised: str
) -> None:
    """A JSON page nested 100,000 deep (json: RecursionError), an HTML page of `<![`
    (html.parser: AssertionError): that page is unreadable, the package left to the
    installer with the reason. Either stopped the restore with an internal error."""
    (project := index.root / "simple" / "olduser").mkdir(parents=True)
    (project / page).write_text("[" * 100_000 if page == "index.json" else "<![" * 1000)
    (action, reason) = decisions(plan_on_v2(tmp_path, index.url, "olduser==1.0"))["olduser"]
    assert action == "install"
    assert reason.endswith(f"the index's page of olduser cannot be read ({raised})"), reason


def test_a_hostile_html_page_costs_the_deadline_at_most(tmp_path: Path, index: Index) -> None:
    """html.parser on hostile markup: `<a` repeated (quadratic in close(), 16 s for this
    page) is read at once, and finds no file; `<a b='x ` repeated, under `MAX_HTML`
    (seconds to parse), stops at the plan's deadline, the index unreachable; a page over
    `MAX_HTML` is not parsed."""
    (project := index.root / "simple" / "olduser").mkdir(parents=True)
    for page, index_until, why in (
        ("<a" * 50_000, 2.0, "no wheel of olduser 1.0 for this interpreter"),
        ("<a b='x " * 200_000, 0.5, f"the index {index.url} is unreachable (out of time)"),
        ("<a>" * 700_000, 2.0, f"HTML page of olduser is over {indexmeta.MAX_HTML} bytes"),
    ):
        (project / "index.html").write_text(page)
        started = time.monotonic()
        planned = plan_on_v2(tmp_path, index.url, "olduser==1.0", index_until=started + index_until)
        assert time.monotonic() - started < index_until + 1.0
        (action, reason) = decisions(planned)["olduser"]
        assert action == "install"
        assert why in reason, reason


def test_a_metadata_file_that_does_not_match_its_hash_is_ignored(
    tmp_path: Path, index: Index, built: Path
) -> None:
    """The metadata file's bytes differ from the hash the page gives: it is not used (the
    package is not held back on its word) and the reason says so."""
    index.publish(built / "olduser-1.0-py3-none-any.whl", metadata_hash="0" * 64)
    (action, reason) = decisions(plan_on_v2(tmp_path, index.url, "olduser==1.0"))["olduser"]
    assert action == "install"
    assert reason.endswith(
        "the metadata file of olduser-1.0-py3-none-any.whl does not match its hash"
    )


def test_a_metadata_file_naming_another_distribution_is_ignored(
    tmp_path: Path, index: Index, built: Path
) -> None:
    """A metadata file (hash and all) whose Name or Version is not the wheel's: its
    requirements are not used, the reason says so."""
    planted = "Metadata-Version: 2.1\nName: olduser\nVersion: 9.0\nRequires-Dist: evaldep<2\n"
    for text in (planted, planted.replace("Name: olduser", "Name: other").replace("9.0", "1.0")):
        sha = hashlib.sha256(text.encode()).hexdigest()
        index.publish(built / "olduser-1.0-py3-none-any.whl", metadata_hash=sha)
        Path(index.files(), "olduser-1.0-py3-none-any.whl.metadata").write_text(text)
        (action, reason) = decisions(plan_on_v2(tmp_path, index.url, "olduser==1.0"))["olduser"]
        assert action == "install"
        assert reason.endswith("its metadata on the index names another distribution"), reason


def test_hostile_links_on_the_index_are_not_followed(
    tmp_path: Path, index: Index, built: Path
) -> None:
    """A page whose only olduser 1.0 links are hostile (file://, a path out of the tree, a
    name that is not the URL's file, another project's wheel, credentials, another
    scheme) yields no metadata: nothing but the page is requested, and the planted
    evaldep<2 is never read."""
    planted = tmp_path / "planted"
    build_wheel(Dist("olduser", "1.0", requires=["evaldep<2"]), planted)
    wheel = "olduser-1.0-py3-none-any.whl"
    hostile = (
        (f"file://{planted / wheel}", wheel),
        (f"../../files/{wheel}", "olduser-1.0-py3-none-any.whl/../../etc"),
        ("../../files/evaldep-1.0-py3-none-any.whl", wheel),
        (f"http://user:secret@127.0.0.1:1/{wheel}", wheel),
        (f"ftp://127.0.0.1/{wheel}", wheel),
        (f"../../files/..%2F..%2F{wheel}", f"../../{wheel}"),
        ("../../files/--index-url=x-1.0-py3-none-any.whl", "--index-url=x-1.0-py3-none-any.whl"),
    )
    index.publish(built / "evaldep-1.0-py3-none-any.whl")
    (project := index.root / "simple" / "olduser").mkdir(parents=True)
    anchors = "\n".join(f'<a href="{h}" data-core-metadata="true">{t}</a>' for h, t in hostile)
    (project / "index.html").write_text(f"<html><body>{anchors}</body></html>")
    (action, reason) = decisions(plan_on_v2(tmp_path, index.url, "olduser==1.0"))["olduser"]
    assert action == "install"
    assert reason.endswith(f"no wheel of olduser 1.0 for this interpreter on {index.url}")
    assert [path for path, _ in index.seen] == ["/simple/olduser/"]

    files = [{"filename": t, "url": h, "core-metadata": True} for h, t in hostile]
    (project / "index.json").write_text(json.dumps({"meta": {}, "name": "x", "files": files}))
    index.seen.clear()
    (action, reason) = decisions(plan_on_v2(tmp_path, index.url, "olduser==1.0"))["olduser"]
    assert action == "install" and "no wheel of olduser 1.0" in reason
    assert [path for path, _ in index.seen] == ["/simple/olduser/"]


@pytest.mark.parametrize(
    ("scheme", "refused"),
    [("file", "HTTP 302"), ("ftp", "a redirect to ftp:// is not followed")],
)
def test_a_redirect_off_http_is_not_followed(
    tmp_path: Path, index: Index, scheme: str, refused: str
) -> None:
    """A project page that redirects off http(s) (file:// to a wheel planted on this
    machine, ftp://) is not followed: the planted METADATA is never read, the reason says
    the page was refused."""
    planted = tmp_path / "planted"
    build_wheel(Dist("olduser", "1.0", requires=["evaldep<2"]), planted)
    (project := index.root / "simple" / "olduser").mkdir(parents=True)
    (project / "moved").write_text(
        f"{scheme}://{'' if scheme == 'file' else '127.0.0.1'}{planted}/"
    )
    (action, reason) = decisions(plan_on_v2(tmp_path, index.url, "olduser==1.0"))["olduser"]
    assert action == "install"
    assert reason.endswith(refused), reason


def test_index_credentials_go_to_the_index_only_and_are_never_shown(
    tmp_path: Path, index: Index, built: Path
) -> None:
    """Credentials in the index URL are sent as HTTP Basic to the index, not along a
    redirect to another host, and appear in no reason, even when the index refuses."""
    index.publish(built / "olduser-1.0-py3-none-any.whl")
    (moved := index.root / "simple" / "moved").mkdir()
    other = index.url.replace("127.0.0.1", "localhost")
    (moved / "moved").write_text(f"{other}olduser/")
    secret = index.url.replace("http://", "http://alice:s3cret@")
    planned = plan_on_v2(tmp_path, secret, "olduser==1.0", "nothere==1.0", "moved==1.0")
    assert decisions(planned)["olduser"] == ("held-back", OLDUSER_HELD)
    redirected = ("/simple/olduser/", None)  # moved's page, fetched again from localhost
    assert index.seen.count(redirected) == 1, index.seen
    assert {auth for seen, auth in index.seen if (seen, auth) != redirected} == {
        "Basic YWxpY2U6czNjcmV0"
    }
    nothere = decisions(planned)["nothere"][1]
    assert "HTTP 404" in nothere and "s3cret" not in nothere and "alice" not in nothere


def test_the_indexes_read_are_named_http_ones_only(tmp_path: Path) -> None:
    """pkgckpt's index_url and the installer's extra indexes are read, the default first;
    nothing with --no-index, with no index named (the built-in default is not asked), or
    when one of them is a file:// tree the installer may take the package from."""
    from pkgckpt.restore.indexconf import Indexes

    named = Indexes("pip", default="https://a.example/simple/", extra=("https://b.example/",))
    assert indexmeta.readable(named) == (("https://a.example/simple/", "https://b.example/"), None)
    for found, why in (
        (Indexes("uv", default="https://a.example/", no_index=True), "no wheel of it"),
        (Indexes("uv", extra=("https://b.example/",)), "built-in default is not asked"),
        (Indexes("pip", default="file:///opt/simple"), "file:///opt/simple, which is not http"),
        (Indexes("pip", problem="pip's configuration x cannot be read"), "cannot be read"),
    ):
        urls, reason = indexmeta.readable(found)
        assert urls == () and reason is not None and why in reason, reason


@pytest.mark.slow
def test_restore_holds_back_a_package_known_only_from_the_index(
    tmp_path: Path, index: Index, built: Path
) -> None:
    """Real venvs: recorded on image v1 (evaldep 1.0), restored on v2 (evaldep 2.0) from the
    index alone. olduser, whose wheel needs evaldep<2, is held back before any installer
    runs (exit 3, named with its requirement); newpkg is installed from the index; `pip
    check` is clean. With the index down, the dry run still plans, saying why."""
    from daemon_kit import World
    from test_rebase import Scenario

    for wheel in sorted(built.glob("*.whl")):
        index.publish(wheel)
    (tmp_path / "w").mkdir()
    s = Scenario(World.make(tmp_path / "w"), built, tmp_path / "venv")
    b1 = s.image(sys.executable, ["evaldep==1.0"], "b1.json")
    s.user_changes(b1, ["olduser==1.0", "newpkg==1.0"], [])
    b2 = s.image(sys.executable, ["evaldep==2.0"], "b2.json")

    down = f"http://127.0.0.1:{_closed_port()}/simple/"
    dry = s.world.pkgckpt("restore", *s.flags(b2), "--index-url", down, "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    (env_plan,) = json.loads(dry.stdout)["plan"]["environments"]
    reasons = {d["name"]: (d["action"], d["reason"]) for d in env_plan["rebase"]["decisions"]}
    assert reasons["olduser"][0] == "install"
    assert f"the index {down} is unreachable" in reasons["olduser"][1]

    done = s.world.pkgckpt("restore", *s.flags(b2), "--index-url", index.url, timeout=600)
    assert done.returncode == 3, done.stdout + done.stderr
    assert f"olduser 1.0 held back: {OLDUSER_HELD}" in done.stdout, done.stdout
    assert "failed to install" not in done.stdout, done.stdout
    have = s.installed()
    assert (have["newpkg"], have["evaldep"], "olduser" in have) == ("1.0", "2.0", False)
    assert index.wheel_fetched("newpkg-1.0-py3-none-any.whl"), "installed from the index"
    assert not index.wheel_fetched("olduser-1.0-py3-none-any.whl")
    check = s.check()
    assert check.returncode == 0, check.stdout + check.stderr


@pytest.mark.slow
def test_a_plan_that_uses_up_the_timeout_says_how_long_the_restore_took(
    tmp_path: Path, index: Index, built: Path
) -> None:
    """On a new image, an index that answers a byte at a time holds the plan's reads until
    `--timeout` (2 s) runs out; nothing is installed then. The report says the timeout ran
    out after the 2 s and more the restore took, not after the time its installs took."""
    from daemon_kit import World
    from test_rebase import Scenario

    (project := index.root / "simple" / "olduser").mkdir(parents=True)
    (project / "drip").touch()
    (tmp_path / "w").mkdir()
    s = Scenario(World.make(tmp_path / "w"), built, tmp_path / "venv")
    b1 = s.image(sys.executable, ["evaldep==1.0"], "b1.json")
    s.user_changes(b1, ["olduser==1.0"], [])
    b2 = s.image(sys.executable, ["evaldep==2.0"], "b2.json")
    args = ["restore", *s.flags(b2), "--index-url", index.url, "--timeout", "2", "--json"]
    done = s.world.pkgckpt(*args, timeout=120)
    report = json.loads(done.stdout)
    assert report["timed_out"] is True, done.stdout + done.stderr
    assert report["seconds"] >= 2.0, report["seconds"]


def test_a_corrupt_wheel_in_the_find_links_is_named_in_the_reason(
    tmp_path: Path, built: Path
) -> None:
    """The same corrupt wheel in a find-links directory: planned, and its reason says that
    its requirements went unchecked and which file could not be read."""
    data = bytearray((built / "olduser-1.0-py3-none-any.whl").read_bytes())
    with zipfile.ZipFile(built / "olduser-1.0-py3-none-any.whl") as zf:
        (info,) = [i for i in zf.infolist() if i.filename.endswith(".dist-info/METADATA")]
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    data[start : start + 4] = b"\xff\xff\xff\xff"
    links = tmp_path / "links"
    links.mkdir()
    (links / "olduser-1.0-py3-none-any.whl").write_bytes(data)
    site = tmp_path / "site"
    info_dir = site / "evaldep-2.0.dist-info"
    info_dir.mkdir(parents=True)
    (info_dir / "METADATA").write_text("Metadata-Version: 2.1\nName: evaldep\nVersion: 2.0\n")
    image = [Package(name="evaldep", version="2.0")]
    delta = Delta(env=PY, added=(Package(name="olduser", version="1.0"),), image="sha256:v1")
    config = Config(store=tmp_path / "s", key="k", no_index=True, find_links=(str(links),))
    planned = rebase(delta, Target(env=PY, roots=(site,)), image, {"evaldep": image[0]}, config)
    (action, reason) = decisions(planned)["olduser"]
    assert action == "install"
    assert reason.endswith(
        "left to the installer: olduser-1.0-py3-none-any.whl in the find-links holds no "
        "readable METADATA"
    ), reason
