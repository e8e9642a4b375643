"""What the API's answers mean, and how the client's connection behaves, against a real HTTP
server on loopback (a small one of the test's own, answering what each test needs)."""

from __future__ import annotations

import base64
import http.server
import itertools
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import pytest

from ingestor.config import ApiKey, ApiSettings
from ingestor.errors import ApiUnreachable, NotFound, Rejected, Transient
from ingestor.klaviyo import KlaviyoClient

DS = "01KTMWCZ8ZMNZS0HG5HQNX0H6E"
KEY = ApiKey("pk_test_0123456789")
BULK = "/api/data-source-record-bulk-create-jobs"


@dataclass
class Seen:
    """What the server saw: each request's line and headers, and the connection it came on."""

    lines: list[str] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    connections: list[int] = field(default_factory=list)
    closed: threading.Event = field(default_factory=threading.Event)  # a connection ended


# (status, body, headers, close the connection after answering)
Answer = tuple[int, bytes, dict[str, str], bool]


@contextmanager
def server(answer: Callable[[str], Answer]) -> Iterator[tuple[int, Seen]]:
    seen = Seen()
    serials = itertools.count(1)

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the API

        def setup(self) -> None:
            super().setup()
            # One handler a connection. Not id(self.connection): a closed socket's id is
            # soon another's, which made two of three connections look like one.
            self.serial = next(serials)

        def log_message(self, *_: object) -> None:
            pass

        def _answer(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            self.rfile.read(length)
            seen.lines.append(self.requestline)
            seen.headers.append({k.lower(): v for k, v in self.headers.items()})
            seen.connections.append(self.serial)
            status, body, headers, close = answer(self.path)
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            self.wfile.flush()
            if close:  # as a server whose keep-alive timeout ran out: no "Connection: close"
                self.close_connection = True

        do_GET = do_POST = do_CONNECT = _answer  # noqa: N815 (http.server names them)

    class Server(http.server.ThreadingHTTPServer):
        def shutdown_request(self, request: object) -> None:
            super().shutdown_request(request)  # type: ignore[arg-type]
            seen.closed.set()

    httpd = Server(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield httpd.server_address[1], seen
    finally:
        httpd.shutdown()
        httpd.server_close()


def fixed(status: int, body: bytes = b"", content_type: str = "application/json") -> Answer:
    return status, body, {"content-type": content_type}, False


def client(port: int, **timeouts: float) -> KlaviyoClient:
    return KlaviyoClient(ApiSettings(base_url=f"http://127.0.0.1:{port}", **timeouts), KEY)


def test_a_json_api_404_means_the_data_source_does_not_exist() -> None:
    body = b'{"errors": [{"status": 404, "code": "not_found", "detail": "no such data source"}]}'
    answer = fixed(404, body, "application/vnd.api+json")
    with server(lambda _: answer) as (port, _), client(port) as api, pytest.raises(NotFound):
        api.get_data_source(DS)


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"<html><body><h1>404 Not Found</h1>nginx</body></html>", "text/html"),
        (b"", "text/plain"),
        (b'{"message": "route not found"}', "application/json"),
    ],
)
def test_a_404_that_is_not_from_the_api_is_the_operators_problem(
    body: bytes, content_type: str
) -> None:
    """Before: a wrong base_url or a proxy's 404 was reported to the company as 'data source
    … does not exist; correct data_source_id'."""
    with (
        server(lambda _: fixed(404, body, content_type)) as (port, _),
        client(port) as api,
        pytest.raises(ApiUnreachable) as caught,
    ):
        api.get_data_source(DS)
    assert "check api.base_url (http://127.0.0.1)" in str(caught.value)


@pytest.mark.parametrize(
    "body",
    [b'{"errors": {"detail": "bad"}}', b'{"errors": ["bad"]}', b'{"errors": []}', b"[1]"],
)
def test_a_400_with_an_error_body_of_another_shape_is_refused_with_its_text(body: bytes) -> None:
    """Before: an ``errors`` object (a proxy's, not the API's) raised KeyError out of the
    client instead of an ApiError."""
    with (
        server(lambda _: fixed(400, body)) as (port, _),
        client(port) as api,
        pytest.raises(Rejected) as caught,
    ):
        api.post_bulk(BULK, b"{}")
    assert caught.value.detail == body.decode()


def test_a_cookie_the_api_sets_is_neither_kept_nor_sent_back() -> None:
    """The API is stateless. A cookie a load balancer sets would tie the account's requests
    to one backend, and reading it built a urllib request per response (7-13% of the
    worker's CPU at 500 companies, issue #14)."""
    cookie = {"set-cookie": "AWSALB=sticky; Path=/; Domain=127.0.0.1"}
    with server(lambda _: (204, b"", cookie, False)) as (port, seen), client(port) as api:
        api.post_bulk(BULK, b"{}")
        api.post_bulk(BULK, b"{}")
    assert [h.get("cookie") for h in seen.headers] == [None, None]


def test_an_accounts_requests_share_one_connection_and_carry_its_headers() -> None:
    with server(lambda _: fixed(204)) as (port, seen), client(port) as api:
        for _ in range(5):
            api.post_bulk(BULK, b'{"data": []}')
    assert len(set(seen.connections)) == 1
    assert seen.lines == [f"POST {BULK} HTTP/1.1"] * 5
    first = seen.headers[0]
    assert first["authorization"] == f"Klaviyo-API-Key {KEY.value}"
    assert first["content-type"] == first["accept"] == "application/vnd.api+json"
    assert first["revision"] and first["user-agent"].startswith("ingestor/")


def test_a_connection_the_server_closed_while_idle_is_not_used_again() -> None:
    """A server ends an idle keep-alive connection without warning (its timeout ran out).
    Sending the next request on it would lose the request (the answer never comes, and the
    batch would be retried after a back-off, counted as maybe sent twice). The client
    notices the close before it sends."""
    with server(lambda _: (204, b"", {}, True)) as (port, seen), client(port) as api:
        for _ in range(3):
            seen.closed.clear()
            api.post_bulk(BULK, b"{}")  # raised Transient on the closed connection
            assert seen.closed.wait(5)  # idle, and closed by the server
    assert len(set(seen.connections)) == 3


def test_a_server_that_never_answers_is_a_transient_timeout() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        with client(port, read_timeout=0.3) as api, pytest.raises(Transient) as caught:
            api.post_bulk(BULK, b"{}")
    assert "timed out" in str(caught.value) and KEY.value not in str(caught.value)


def test_nothing_listening_is_a_transient_connection_failure() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # bound, never listening: refused
        with client(port) as api, pytest.raises(Transient) as caught:
            api.post_bulk(BULK, b"{}")
    assert "failed (ConnectionRefusedError)" in str(caught.value)


def test_an_http_proxy_from_the_environment_is_used_with_its_credentials(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """httpx honoured HTTP(S)_PROXY and NO_PROXY; an operator behind a proxy must not lose
    that when the connection moved to the standard library."""
    with server(lambda _: fixed(204)) as (proxy_port, seen):
        monkeypatch.setenv("HTTP_PROXY", f"http://ops:s%40cret@127.0.0.1:{proxy_port}")
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        api = KlaviyoClient(ApiSettings(base_url="http://127.0.0.1:9"), KEY)  # nothing at :9
        with api:
            api.post_bulk(BULK, b"{}")
    assert seen.lines == [f"POST http://127.0.0.1:9{BULK} HTTP/1.1"]
    expected = base64.b64encode(b"ops:s@cret").decode()
    assert seen.headers[0]["proxy-authorization"] == f"Basic {expected}"


def test_no_proxy_bypasses_the_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    with server(lambda _: fixed(204)) as (port, seen):
        monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # would be refused
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        with client(port) as api:
            api.post_bulk(BULK, b"{}")
    assert seen.lines == [f"POST {BULK} HTTP/1.1"]


def test_https_goes_through_the_proxy_as_a_tunnel(monkeypatch: pytest.MonkeyPatch) -> None:
    """For https the proxy is asked to CONNECT; a proxy that refuses is a connection
    failure (retried), and its credentials go in the CONNECT, never to the API."""
    with server(lambda _: fixed(407)) as (proxy_port, seen):
        monkeypatch.setenv("HTTPS_PROXY", f"http://ops:pw@127.0.0.1:{proxy_port}")
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        api = KlaviyoClient(ApiSettings(base_url="https://a.klaviyo.com"), KEY)
        with api, pytest.raises(Transient) as caught:
            api.post_bulk(BULK, b"{}")
    assert seen.lines == ["CONNECT a.klaviyo.com:443 HTTP/1.0"]
    assert seen.headers[0]["proxy-authorization"].startswith("Basic ")
    assert "authorization" not in seen.headers[0]
    assert "pw" not in str(caught.value) and KEY.value not in str(caught.value)
