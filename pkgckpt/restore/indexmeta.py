"""A planned package's METADATA read from the configured package index, without
installing it: what the rebase's consistency check (`rebase.py`) knows of a package the
find-links do not hold.

The API `rebase.py` calls:

    readable(found: indexconf.Indexes) -> (urls, None) | ((), why)
        The indexes to read, the default first: every index the installer reads
        (`indexconf.py`: pkgckpt's settings, then the installer's own configuration files
        and variables, with its precedence), when each of them can be read here; else
        none, and why. The installer's built-in default index is not asked (no index
        named: the image named none, and package names are not sent where it did not
        say). An index that is not http(s) (a file:// tree) is not read, and then no
        other is either: the installer may take the package from that one.
    IndexMetadata(url, tags, until).fetch([(name, version), ...])
            -> {(canonical, version): Found}
        Each package's METADATA text, or why it was not read, read before `until`.

Per package, one request for the project page, negotiated (PEP 691): the JSON simple API
(`application/vnd.pypi.simple.v1+json`) where the index speaks it, else PEP 503 HTML.
Among the files of that exact version, the wheel whose tags fit the target interpreter
best is chosen (`packaging.tags`, the order of `wheeltags.target_tags`). Its PEP 658/714
metadata file (`data-core-metadata`, `data-dist-info-metadata`, JSON `core-metadata`) is
read and checked against its hash when the index gives one; without a metadata file the
wheel itself is read when it is at most `wheelmeta.MAX_WHEEL` bytes, checked against its hash when
given. Anything else (no fitting wheel, a bigger wheel, a hash mismatch, an index that is
down) leaves that package's requirements to the installer, with the reason.

The index is the admin's, never the store's; its answers are still hostile:
- a file name must be a valid wheel name of the package and version asked for and the
  last path component of its URL (PEP 503); URLs may be relative or absolute http(s)
  (another host is fine: PyPI serves files from one), never file:// or any other scheme,
  never carrying credentials, never http:// under an https:// index;
- redirects only to http(s), never from https to http; credentials in the index URL are
  sent (HTTP Basic) to the index's own origin only, never along a redirect, and never
  appear in a reason;
- a project page its parser fails on (JSON nested too deep, markup html.parser trips
  over) is unreadable: that package is left to the installer;
- every read is bounded (`MAX_PAGE`, `MAX_HTML`, `wheelmeta.MAX_METADATA`,
  `wheelmeta.MAX_WHEEL`) and times out after `TIMEOUT` seconds; the first connection failure
  marks the index down for the rest of the run, so an index that is down costs one
  timeout, not one per package; and every request of a plan, to all its indexes and for
  all its environments, ends by one deadline (`rebase.budget`): connecting and each read
  of the status line, the headers and the body wait only for what is left of it, so an
  index that answers a byte at a time delays the restore by `rebase.BUDGET` at most, and
  never past its `--timeout`. An HTML page is parsed by the same deadline. What is not
  read by then is treated as from an index that is down.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import html.parser
import http.client
import io
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urljoin, urlsplit, urlunsplit

from ..validate import canonical, python_name, python_version
from ..wheeltags import TargetTags
from .wheelmeta import MAX_METADATA, MAX_WHEEL, metadata

if TYPE_CHECKING:
    import socket

    from _typeshed import WriteableBuffer

    from .indexconf import Indexes

TIMEOUT = 5.0
"""Seconds a connection or a read may take."""
CHUNK = 1 << 16
MAX_PAGE = 16 << 20
"""Bytes of a project page read at most (PyPI's largest are a few MB)."""
MAX_HTML = 2 << 20
"""Bytes of a PEP 503 HTML page parsed at most: far less than `MAX_PAGE`, because
html.parser's cost grows faster than the page on hostile markup (`<a b="` repeated, fed in
chunks: 20 s for 2 MB) where json's stays linear. PyPI answers in JSON; an index that
speaks only HTML lists some 8,000 files in 2 MB (~250 bytes a link)."""
WORKERS = 8
ACCEPT = (
    "application/vnd.pypi.simple.v1+json, "
    "application/vnd.pypi.simple.v1+html;q=0.2, text/html;q=0.01"
)
Found = tuple[str | None, str | None]
"""(METADATA text, None) or (None, why it was not read)."""


def readable(found: Indexes) -> tuple[tuple[str, ...], str | None]:
    """The index URLs to read metadata from, or () and why none (see the module)."""
    if found.problem is not None:
        return (), found.problem
    if found.no_index:
        return (), "no wheel of it in the find-links (no index)"
    if found.default is None:
        return (), (
            f"no index named to {found.tool} (pkgckpt's index_url, {found.tool}'s "
            "configuration or environment): its built-in default is not asked"
        )
    urls = (found.default, *found.extra)
    for url in urls:
        if urlsplit(url).scheme.lower() not in ("http", "https"):
            return (), f"{found.tool} also reads {shown(url)}, which is not http(s)"
    return tuple(dict.fromkeys(urls)), None


def shown(url: str) -> str:
    """`url` without credentials, query or fragment: what a reason may say of it."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port else ""
    return urlunsplit((parts.scheme, host + port, parts.path, "", ""))


class _Refused(Exception):
    """A response that is not followed or not read; the message is the reason."""


class _Down(Exception):
    """The index could not be reached."""


class _Paced(io.RawIOBase):
    """A response's reads from its socket, each waiting only for what is left before
    `until`: a per-read timeout alone lets a server that sends its status line, headers or
    body a byte at a time hold the request for ever."""

    def __init__(
        self, fp: io.BufferedReader, sock: socket.socket, until: float, timeout: float
    ) -> None:
        super().__init__()
        self._fp, self._sock, self._until, self._timeout = fp, sock, until, timeout

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        left = self._until - time.monotonic()
        if left <= 0:
            raise TimeoutError
        self._sock.settimeout(min(self._timeout, left))
        return self._fp.readinto1(buffer)

    def close(self) -> None:
        self._fp.close()
        super().close()


def _paced(
    sock: socket.socket, *args: Any, until: float, timeout: float, **kwargs: Any
) -> http.client.HTTPResponse:
    response = http.client.HTTPResponse(sock, *args, **kwargs)
    response.fp = io.BufferedReader(_Paced(response.fp, sock, until, timeout))
    return response


class _Pacing(urllib.request.AbstractHTTPHandler):
    """Opens connections (a redirect's too) that end by `until`: their responses (a
    proxy's to CONNECT too) read through `_Paced`."""

    def __init__(self, until: float, timeout: float) -> None:
        super().__init__()
        self._until, self._timeout = until, timeout
        self.response_class = functools.partial(_paced, until=until, timeout=timeout)

    def do_open(
        self, http_class: Any, req: urllib.request.Request, **kwargs: Any
    ) -> http.client.HTTPResponse:
        def connection(*args: Any, **kw: Any) -> http.client.HTTPConnection:
            # Connecting and the TLS handshake each wait up to the connection's timeout:
            # half of what is left, so that both together end by the deadline.
            left = max(0.0, self._until - time.monotonic())
            kw["timeout"] = min(self._timeout, left / 2)
            made: http.client.HTTPConnection = http_class(*args, **kw)
            # A class in typeshed; http.client only calls it, as it does this partial.
            made.response_class = self.response_class  # type: ignore[assignment]
            return made

        return super().do_open(connection, req, **kwargs)


class _HTTP(_Pacing, urllib.request.HTTPHandler):
    pass


class _HTTPS(_Pacing, urllib.request.HTTPSHandler):
    pass


class _Redirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: Any,
        code: int,
        msg: str,
        headers: Any,
        newurl: str,
    ) -> urllib.request.Request | None:
        old, new = urlsplit(req.full_url).scheme.lower(), urlsplit(newurl).scheme.lower()
        if new not in ("http", "https") or (old == "https" and new == "http"):
            raise _Refused(f"a redirect to {new}:// is not followed")
        if urlsplit(newurl).username is not None:
            raise _Refused("a redirect carrying credentials is not followed")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _opener(until: float, timeout: float) -> urllib.request.OpenerDirector:
    """HTTP(S) only: no file://, ftp:// or data: handler is there to be reached."""
    opener = urllib.request.OpenerDirector()
    for handler in (
        urllib.request.ProxyHandler(),
        _HTTP(until, timeout),
        _HTTPS(until, timeout),
        urllib.request.HTTPDefaultErrorHandler(),
        _Redirects(),
        urllib.request.HTTPErrorProcessor(),
    ):
        opener.add_handler(handler)
    return opener


class _Link:
    """One distribution file a project page lists."""

    def __init__(self, filename: str, url: str, sha256: str | None, size: int | None) -> None:
        self.filename = filename
        self.url = url
        self.hashes: dict[str, str] = {"sha256": sha256} if sha256 else {}
        self.size = size
        self.metadata: dict[str, str] | None = None
        """The metadata file's hashes ({} offered without one); None: not offered."""


def _hashes(value: object) -> dict[str, str]:
    """The hashes a page gives (JSON object or `alg=hex`), only those hashlib knows."""
    if isinstance(value, str):
        alg, sep, digest = value.partition("=")
        value = {alg: digest} if sep else {}
    if not isinstance(value, dict):
        return {}
    return {
        alg.lower(): digest.lower()
        for alg, digest in value.items()
        if isinstance(alg, str)
        and isinstance(digest, str)
        and alg.lower() in hashlib.algorithms_guaranteed
        and digest.isascii()
        and digest.isalnum()
    }


def _offered(value: object) -> dict[str, str] | None:
    """PEP 658/714: `true`, a hash (`sha256=...` or a JSON object), or not offered."""
    if value is None or value is False or value == "false":
        return None
    if value is True or value == "true":
        return {}
    return _hashes(value)


def _verified(data: bytes, hashes: Mapping[str, str]) -> bool:
    return all(hashlib.new(alg, data).hexdigest() == digest for alg, digest in hashes.items())


class _Anchors(html.parser.HTMLParser):
    """The `<a>` elements of a PEP 503 page: attributes and text."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.found: list[tuple[dict[str, str | None], list[str]]] = []
        self._open: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self._open = []
            self.found.append((dict(attrs), self._open))

    def handle_endtag(self, tag: str) -> None:
        if tag == "a":
            self._open = None

    def handle_data(self, data: str) -> None:
        if self._open is not None:
            self._open.append(data)


def _html_links(text: str, base: str, until: float) -> list[_Link]:
    parser = _Anchors()
    for start in range(0, len(text), CHUNK):
        if time.monotonic() >= until:
            raise _Down("out of time")
        parser.feed(text[start : start + CHUNK])
    # No close(): all it adds is an unterminated tag at the page's end, which lists no
    # file, and on `<a` repeated it is quadratic in one call that no deadline stops.
    out = []
    for attrs, words in parser.found:
        href = attrs.get("href")
        if not href:
            continue
        url = urljoin(base, href)
        link = _Link(
            "".join(words).strip(), url, _hashes(urlsplit(url).fragment).get("sha256"), None
        )
        link.metadata = _offered(
            attrs.get("data-core-metadata", attrs.get("data-dist-info-metadata"))
        )
        out.append(link)
    return out


def _json_links(data: bytes, base: str) -> list[_Link]:
    page = json.loads(data)
    files = page.get("files") if isinstance(page, dict) else None
    if not isinstance(files, list):
        raise _Refused("the index's JSON page has no file list")
    out = []
    for f in files:
        if not isinstance(f, dict):
            continue
        filename, url, size = f.get("filename"), f.get("url"), f.get("size")
        if not isinstance(filename, str) or not isinstance(url, str):
            continue
        sha256 = _hashes(f.get("hashes")).get("sha256")
        link = _Link(filename, urljoin(base, url), sha256, size if type(size) is int else None)
        link.metadata = _offered(f.get("core-metadata", f.get("dist-info-metadata")))
        out.append(link)
    return out


class IndexMetadata:
    """METADATA of exact versions from one index, for one target interpreter."""

    def __init__(
        self, url: str, tags: TargetTags, until: float, *, timeout: float = TIMEOUT
    ) -> None:
        parts = urlsplit(url)
        self._root = urlunsplit(
            (parts.scheme.lower(), parts.netloc.rpartition("@")[2], parts.path, "", "")
        )
        self._origin = urlsplit(self._root)[:2]
        self._auth: str | None = None
        if parts.username is not None:
            secret = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            self._auth = "Basic " + base64.b64encode(secret.encode()).decode()
        self._tags = tags
        self._timeout = timeout
        self._until = until
        self._opener = _opener(until, timeout)
        self._down = threading.Event()
        self.shown = shown(url)

    def fetch(self, wanted: Iterable[tuple[str, str]]) -> dict[tuple[str, str], Found]:
        """Each (name, version)'s METADATA or why not, keyed by (canonical name, version)."""
        todo = sorted(
            {(canonical(n), v) for n, v in wanted if python_name(n) and python_version(v)}
        )
        if not todo:
            return {}
        with ThreadPoolExecutor(min(WORKERS, len(todo))) as pool:
            found = pool.map(lambda key: self._one(*key), todo)
            return dict(zip(todo, found, strict=True))

    def _one(self, name: str, version: str) -> Found:
        if self._down.is_set():
            return None, f"the index {self.shown} is unreachable"
        if time.monotonic() >= self._until:
            return None, f"the index {self.shown} is unreachable (out of time)"
        try:
            return self._metadata(name, version), None
        except _Down as e:
            self._down.set()
            return None, f"the index {self.shown} is unreachable ({e})"
        except _Refused as e:
            return None, str(e)

    def _get(self, url: str, limit: int, accept: str = "*/*") -> tuple[bytes, str, str]:
        """Body (at most `limit` bytes), content type and final URL of a GET of `url`."""
        request = urllib.request.Request(url, headers={"Accept": accept})
        if self._auth is not None and urlsplit(url)[:2] == self._origin:
            # Unredirected: urllib copies ordinary headers onto a redirect to any host.
            request.add_unredirected_header("Authorization", self._auth)
        if time.monotonic() >= self._until:
            raise _Down("out of time")
        try:
            with self._opener.open(request, timeout=self._timeout) as response:
                length = response.headers.get("Content-Length")
                if length and length.isdigit() and int(length) > limit:
                    raise _Refused(f"{shown(url)} is over {limit} bytes")
                data = self._read(response, limit)
                final = response.geturl()
                kind = response.headers.get_content_type()
        except urllib.error.HTTPError as e:
            e.close()
            raise _Refused(f"{shown(url)}: HTTP {e.code}") from None
        except urllib.error.URLError as e:
            why = e.reason
            raise self._down_by(why if isinstance(why, BaseException) else e) from None
        except (TimeoutError, ConnectionError, http.client.HTTPException) as e:
            raise self._down_by(e) from None
        except (OSError, ValueError) as e:
            raise _Refused(f"{shown(url)}: {type(e).__name__}") from None
        if len(data) > limit:
            raise _Refused(f"{shown(url)} is over {limit} bytes")
        return data, kind, final

    def _down_by(self, error: BaseException) -> _Down:
        """The index is down: out of time once the deadline has passed (a read that timed
        out waiting for what was left), else named by `error`."""
        late = time.monotonic() >= self._until
        return _Down("out of time" if late else type(error).__name__)

    def _read(self, response: http.client.HTTPResponse, limit: int) -> bytes:
        """At most `limit` + 1 bytes of the body."""
        chunks: list[bytes] = []
        size = 0
        while size <= limit:
            chunk = response.read1(min(CHUNK, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)

    def _links(self, name: str) -> list[_Link]:
        data, kind, final = self._get(f"{self._root.rstrip('/')}/{name}/", MAX_PAGE, ACCEPT)
        if urlsplit(final).scheme.lower() not in ("http", "https"):
            raise _Refused("the project page moved off http(s)")
        try:
            if kind == "application/vnd.pypi.simple.v1+json":
                return _json_links(data, final)
            if len(data) > MAX_HTML:
                raise _Refused(f"the index's HTML page of {name} is over {MAX_HTML} bytes")
            return _html_links(data.decode("utf-8", "replace"), final, self._until)
        except (_Refused, _Down):
            raise
        except Exception as e:
            # The parsers are not hardened against hostile pages (json: RecursionError on
            # deep nesting; html.parser: AssertionError on `<![`): whatever they raise
            # makes this page unreadable, never the restore fail.
            raise _Refused(
                f"the index's page of {name} cannot be read ({type(e).__name__})"
            ) from None

    def _acceptable(self, link: _Link) -> bool:
        """PEP 503's rules for a file's URL and name (see the module)."""
        parts = urlsplit(link.url)
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https") or (self._origin[0] == "https" and scheme == "http"):
            return False
        if parts.username is not None or not parts.hostname:
            return False
        return unquote(parts.path.rsplit("/", 1)[-1]) == link.filename

    def _best(self, name: str, version: str, links: list[_Link]) -> _Link | None:
        from packaging.utils import InvalidWheelFilename, parse_wheel_filename
        from packaging.version import Version

        want = Version(version)
        best: tuple[int, _Link] | None = None
        for link in links:
            if not link.filename.endswith(".whl") or not self._acceptable(link):
                continue
            try:
                wname, wversion, _, wtags = parse_wheel_filename(link.filename)
            except InvalidWheelFilename:
                continue
            if wname != name or wversion != want:
                continue
            rank = self._tags.rank(wtags)
            if rank is not None and (best is None or rank < best[0]):
                best = (rank, link)
        return best[1] if best else None

    def _metadata(self, name: str, version: str) -> str:
        link = self._best(name, version, self._links(name))
        if link is None:
            raise _Refused(f"no wheel of {name} {version} for this interpreter on {self.shown}")
        url = urlunsplit(urlsplit(link.url)._replace(fragment=""))
        if link.metadata is not None:
            data = self._get(url + ".metadata", MAX_METADATA)[0]
            if not _verified(data, link.metadata):
                raise _Refused(f"the metadata file of {link.filename} does not match its hash")
            return data.decode("utf-8", "replace")
        if link.size is not None and link.size > MAX_WHEEL:
            raise _Refused(f"{link.filename} has no metadata file and is over {MAX_WHEEL} bytes")
        data = self._get(url, MAX_WHEEL)[0]
        if not _verified(data, link.hashes):
            raise _Refused(f"{link.filename} does not match its hash")
        return _wheel_metadata(data, link.filename)


def _wheel_metadata(data: bytes, filename: str) -> str:
    """The top-level `.dist-info/METADATA` of a wheel held in memory."""
    text = metadata(data)
    if text is None:
        raise _Refused(f"{filename} holds no readable METADATA")
    return text
