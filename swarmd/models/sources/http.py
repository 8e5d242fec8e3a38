"""HTTP(S) with Range requests: the byte pipe under the URL, Hub and Ollama sources.

Theory of operation
-------------------
:class:`HttpRangeSource` keeps one persistent connection (``http.client``,
stdlib: no per-request overhead, large reads) and serves ``read_range`` with
``Range: bytes=a-b``.  Redirects (the Hub and Ollama's registry send blobs to
a CDN) are followed up to 5 times; the ``Authorization`` header is dropped
when a redirect leaves the original host, as ``huggingface_hub`` does.  A
server that ignores Range (200 instead of 206) is still usable from offset
0; asked for a later offset it is an error, since skipping would re-download.
:func:`probe` is a HEAD (following redirects) for size, ETag and whether
ranges are accepted.
"""

from __future__ import annotations

import hashlib
import http.client
import ssl
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

from swarmd.models.fetch import SourceError
from swarmd.models.sources.base import PIECE, Plan, RemoteFile

MAX_REDIRECTS = 5


def _connection(url: str, timeout: float) -> http.client.HTTPConnection:
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.scheme == "https":
        return http.client.HTTPSConnection(host, parts.port, timeout=timeout,
                                           context=ssl.create_default_context())
    if parts.scheme == "http":
        return http.client.HTTPConnection(host, parts.port, timeout=timeout)
    raise SourceError(f"{url}: not an http(s) URL")


def _target(url: str) -> str:
    parts = urlsplit(url)
    return (parts.path or "/") + (f"?{parts.query}" if parts.query else "")


def request(method: str, url: str, headers: Mapping[str, str], timeout: float,
            conn: http.client.HTTPConnection | None = None
            ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse, str]:
    """One request following redirects; returns (connection, response, final URL)."""
    hdrs = dict(headers)
    origin = urlsplit(url).netloc
    for _ in range(MAX_REDIRECTS + 1):
        if conn is None:
            conn = _connection(url, timeout)
        try:
            conn.request(method, _target(url), headers=hdrs)
            resp = conn.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise SourceError(f"{method} {url}: {exc}") from None
        if resp.status in (301, 302, 303, 307, 308) and resp.getheader("Location"):
            resp.read()
            new = urljoin(url, resp.getheader("Location") or "")
            if urlsplit(new).netloc != origin:
                hdrs = {k: v for k, v in hdrs.items() if k.lower() != "authorization"}
            if urlsplit(new).netloc != urlsplit(url).netloc:
                conn.close()
                conn = None
            url = new
            continue
        return conn, resp, url
    raise SourceError(f"{method} {url}: more than {MAX_REDIRECTS} redirects")


@dataclass(frozen=True)
class ProbeResult:
    size: int
    etag: str
    ranges: bool
    url: str


def probe(url: str, headers: Mapping[str, str] | None = None, timeout: float = 30.0) -> ProbeResult:
    conn, resp, final = request("HEAD", url, {"Accept-Encoding": "identity", **(headers or {})},
                                timeout)
    resp.read()
    conn.close()
    if resp.status != 200:
        raise SourceError(f"HEAD {url}: HTTP {resp.status} {resp.reason}")
    length = resp.getheader("Content-Length")
    if length is None or not length.isdigit():
        raise SourceError(f"HEAD {url}: no Content-Length, so the size is unknown")
    return ProbeResult(size=int(length), etag=(resp.getheader("ETag") or "").strip('"'),
                       ranges="bytes" in (resp.getheader("Accept-Ranges") or ""), url=final)


class HttpRangeSource:
    def __init__(self, url: str, headers: Mapping[str, str] | None = None,
                 timeout: float = 30.0) -> None:
        self.url = url
        self.headers = {"Accept-Encoding": "identity", **(headers or {})}
        self.timeout = timeout
        self.label = urlsplit(url).netloc
        self._conn: http.client.HTTPConnection | None = None

    def read_range(self, offset: int, length: int) -> Iterator[memoryview]:
        if length == 0:
            return
        hdrs = {**self.headers, "Range": f"bytes={offset}-{offset + length - 1}"}
        conn, resp, _ = request("GET", self.url, hdrs, self.timeout, self._conn)
        self._conn = conn
        try:
            if resp.status == 200 and offset != 0:
                raise SourceError(f"{self.url}: server ignores Range requests; cannot resume")
            if resp.status not in (200, 206):
                raise SourceError(f"GET {self.url}: HTTP {resp.status} {resp.reason}")
            if resp.status == 206:
                cr = resp.getheader("Content-Range") or ""
                if not cr.startswith(f"bytes {offset}-"):
                    raise SourceError(f"{self.url}: Content-Range {cr!r} does not start at {offset}")
            left = length
            buf = memoryview(bytearray(PIECE))  # reused: a piece is consumed before the next
            while left:
                n = resp.readinto(buf[:min(PIECE, left)])
                if not n:
                    raise SourceError(f"{self.url}: connection closed {length - left} bytes into "
                                      f"{length}")
                left -= n
                yield buf[:n]
            if resp.status == 200 and resp.read(1):
                raise SourceError(f"{self.url}: more bytes than the expected {length}")
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            self._conn = None
            raise SourceError(f"GET {self.url}: {exc}") from None
        except BaseException:
            conn.close()
            self._conn = None
            raise


def url_plan(url: str, timeout: float, sha256: str | None = None) -> Plan:
    """A plain URL: one file, named after the URL's last path component."""
    info = probe(url, timeout=timeout)
    name = urlsplit(url).path.rsplit("/", 1)[-1]
    ident = hashlib.sha256(f"{url}\n{info.size}\n{info.etag}".encode()).hexdigest()
    model = name.rsplit(".", 1)[0] if name.lower().endswith((".gguf", ".safetensors")) else name
    rf = RemoteFile(path=name, size=info.size, sha256=sha256, identity=ident,
                    open=lambda: HttpRangeSource(info.url, timeout=timeout))
    return Plan(name=model, source=url, files=[rf])
