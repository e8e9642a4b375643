"""HTTP/1.1 to the API: one keep-alive connection per account, on the standard library.

Why not httpx's client on this path: an account sends one request at a time, so it needs no
pool, and a pool is what most of httpx's cost per request is. One thread posting a 500-record
body to the simulator costs 610-700 µs of CPU a request through ``httpx.Client``, 400-430 µs
through httpcore's pool, 240-310 µs through ``http.client`` (bench/RESULTS.md, session 7); at
500 accounts the client was two thirds of the worker's GIL time (py-spy ``--gil``), and the
worker could not keep every account at its limit. httpx still builds the TLS context (its
CA handling: certifi, ``SSL_CERT_FILE``, ``SSL_CERT_DIR``).

What httpx did for us here is done here too: proxies from the environment (``HTTPS_PROXY``,
``HTTP_PROXY``, ``ALL_PROXY``, ``NO_PROXY``, credentials in the proxy's URL), separate connect
and read timeouts, no redirects followed, no cookies kept. A connection the server closed
while idle is noticed before it is used (a poll with no wait), so the next request is not
lost on it.
"""

from __future__ import annotations

import base64
import http.client
import select
import socket
import ssl
import threading
import urllib.request
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

_MAX_BODY = 64 << 20  # an answer larger than this is not the API's
_DEFAULT_PORT = {"http": 80, "https": 443}


class ConnectionFailed(Exception):
    """No answer: the connection could not be made, broke, or timed out. The message names
    the cause, never a header."""


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    headers: dict[str, str]  # names in lower case; a repeated header's last value
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


@dataclass(frozen=True, slots=True)
class Origin:
    """Where requests go: ``scheme://host:port`` and a path prefix (from ``api.base_url``)."""

    scheme: str
    host: str
    port: int
    prefix: str

    @classmethod
    def parse(cls, url: str) -> Origin:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        port = parts.port or _DEFAULT_PORT[parts.scheme]
        return cls(parts.scheme, parts.hostname, port, parts.path.rstrip("/"))

    @property
    def authority(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == _DEFAULT_PORT[self.scheme] else f"{host}:{self.port}"

    def __str__(self) -> str:
        return f"{self.scheme}://{self.authority}"


@dataclass(frozen=True, slots=True)
class _Proxy:
    host: str
    port: int
    authorization: str | None  # a Proxy-Authorization value, from the proxy URL's userinfo


def _proxy_for(origin: Origin) -> _Proxy | None:
    """The proxy the environment names for ``origin``, as httpx and curl read it."""
    proxies = urllib.request.getproxies_environment()
    url = proxies.get(origin.scheme) or proxies.get("all")
    if not url or urllib.request.proxy_bypass(origin.host):
        return None
    if "://" not in url:
        url = f"http://{url}"
    parts = urlsplit(url)
    if not parts.hostname:
        return None
    authorization = None
    if parts.username is not None:
        pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
        authorization = "Basic " + base64.b64encode(pair).decode("ascii")
    return _Proxy(parts.hostname, parts.port or 80, authorization)


class Connections:
    """What every account's connection shares: the TLS context, loaded once (~25 ms of CPU
    and ~1 MB each: 500 accounts paid it at start and at each key rotation)."""

    def __init__(self) -> None:
        self._tls: ssl.SSLContext | None = None
        self._lock = threading.Lock()

    def tls(self) -> ssl.SSLContext:
        with self._lock:
            if self._tls is None:
                import httpx  # its CA handling; loaded only where TLS is used

                self._tls = httpx.create_ssl_context()
            return self._tls

    def connect(self, base_url: str, connect_timeout: float, read_timeout: float) -> Connection:
        origin = Origin.parse(base_url)
        tls = self.tls() if origin.scheme == "https" else None
        return Connection(origin, tls, connect_timeout, read_timeout)


class Connection:
    """One keep-alive connection to ``origin``; reopened when it breaks or the server ends
    it. Thread-safe, one request at a time."""

    def __init__(
        self,
        origin: Origin,
        tls: ssl.SSLContext | None,
        connect_timeout: float,
        read_timeout: float,
    ) -> None:
        self.origin = origin
        self._tls = tls
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._proxy = _proxy_for(origin)
        # A plain-HTTP proxy takes the absolute URL and its credentials on every request; a
        # tunnel (https) takes them once, in its CONNECT.
        self._target = origin.prefix
        self._proxy_headers: dict[str, str] = {}
        if self._proxy is not None and origin.scheme == "http":
            self._target = f"{origin}{origin.prefix}"
            if self._proxy.authorization:
                self._proxy_headers = {"Proxy-Authorization": self._proxy.authorization}
        self._conn: http.client.HTTPConnection | None = None
        self._lock = threading.Lock()
        self.opened = 0  # connections made, for tests and benchmarks

    def request(self, method: str, path: str, headers: dict[str, str], body: bytes | None) -> Reply:
        if self._proxy_headers:
            headers = {**headers, **self._proxy_headers}
        with self._lock:
            conn = self._ready()
            try:
                conn.request(method, self._target + path, body, headers)
                response = conn.getresponse()
                data = response.read(_MAX_BODY + 1)
                if len(data) > _MAX_BODY:
                    raise ConnectionFailed(f"{method} {path}: an answer over {_MAX_BODY} bytes")
                reply = Reply(
                    response.status, {k.lower(): v for k, v in response.getheaders()}, data
                )
                if response.will_close:
                    self._drop()
                return reply
            except (OSError, http.client.HTTPException) as exc:
                self._drop()
                raise _failed(f"{method} {path}", "connection failed", exc) from None

    def close(self) -> None:
        with self._lock:
            self._drop()

    def _ready(self) -> http.client.HTTPConnection:
        """The open connection, if the server has not ended it while it was idle; else a new
        one (a request sent on a closed connection would fail, or be lost)."""
        conn = self._conn
        if conn is not None and conn.sock is not None and not _ended(conn.sock):
            return conn
        return self._open()  # closing the old one first

    def _open(self) -> http.client.HTTPConnection:
        self._drop()
        origin, proxy = self.origin, self._proxy
        host, port = (proxy.host, proxy.port) if proxy else (origin.host, origin.port)
        conn: http.client.HTTPConnection
        if origin.scheme == "https":
            conn = http.client.HTTPSConnection(
                host, port, timeout=self._connect_timeout, context=self._tls
            )
            if proxy is not None:
                tunnel = {"Proxy-Authorization": proxy.authorization} if proxy.authorization else {}
                conn.set_tunnel(origin.host, origin.port, tunnel)
        else:
            conn = http.client.HTTPConnection(host, port, timeout=self._connect_timeout)
        try:
            conn.connect()
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise _failed(f"connecting to {origin}", "failed", exc) from None
        assert conn.sock is not None
        conn.sock.settimeout(self._read_timeout)  # http.client set TCP_NODELAY
        self._conn = conn
        self.opened += 1
        return conn

    def _drop(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def _failed(what: str, failed: str, exc: Exception) -> ConnectionFailed:
    """What a failed connection or request raises: timed out, or ``failed`` and the cause's
    type (never its text, which could quote a header)."""
    if isinstance(exc, TimeoutError):
        return ConnectionFailed(f"{what}: timed out")
    return ConnectionFailed(f"{what}: {failed} ({type(exc).__name__})")


def _ended(sock: socket.socket) -> bool:
    """Whether an idle connection has anything to read: the server's close (or bytes it
    should not have sent). Either way it cannot carry the next request."""
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))
