"""The Klaviyo endpoints we call, and what their answers mean.

Every answer is either returned (2xx) or raised as a typed ApiError. The API key lives only
in the Authorization header; no message, log line or repr built here contains it.
"""

from __future__ import annotations

import re
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
import orjson

from ingestor import __version__
from ingestor.config import ApiKey, ApiSettings
from ingestor.errors import (
    ApiError,
    ApiUnreachable,
    AuthError,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    Rejected,
    Transient,
)

JSON_API = "application/vnd.api+json"
_RECORD_POINTER = re.compile(r"/data/attributes/[a-z-]+/data/(\d+)")


class SharedTransport:
    """The HTTP connections of every account of a service: one TLS context loaded once,
    and a small connection pool per account.

    A transport of its own (with its own TLS context) costs an account ~25 ms of CPU and
    ~1 MB to load the CA bundle; 500 accounts paid that at start and again at each key
    rotation. One pool shared by all accounts cost more: httpcore's pool walks every
    connection it holds, checking each idle socket, on each request and each response,
    so at 500 accounts a request's pool bookkeeping grew 500-fold and the whole worker
    queued on the pool's lock. So each account gets its own pool (each sends one request
    at a time), built on the one TLS context. ``shutdown()`` closes them all."""

    def __init__(self, transport: httpx.BaseTransport | None = None) -> None:
        """``transport``: one to use for every account instead (tests, the simulator)."""
        self._given = transport
        self._tls: ssl.SSLContext | None = None
        self._pools: dict[str, httpx.HTTPTransport] = {}
        self._lock = threading.Lock()

    def for_account(self, account: str) -> httpx.BaseTransport:
        """The account's transport (made on first use); closing it leaves it open."""
        with self._lock:
            if self._given is not None:
                return _Borrowed(self._given)
            pool = self._pools.get(account)
            if pool is None:
                if self._tls is None:
                    self._tls = httpx.create_ssl_context()
                pool = self._pools[account] = httpx.HTTPTransport(
                    verify=self._tls,
                    # One request at a time per account; a spare for a retry racing a
                    # connection the server is closing.
                    limits=httpx.Limits(max_connections=None, max_keepalive_connections=2),
                )
            return _Borrowed(pool)

    def shutdown(self) -> None:
        with self._lock:
            pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            pool.close()
        if self._given is not None:
            self._given.close()


class _Borrowed(httpx.BaseTransport):
    """A client's view of a pool it does not own: its close() leaves the pool open."""

    def __init__(self, transport: httpx.BaseTransport) -> None:
        self._transport = transport

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        return self._transport.handle_request(request)

    def close(self) -> None:
        """A client is done with it; the service is not."""


class _NoCookies(httpx.Cookies):
    """A jar that takes nothing: see ``_Stateless``."""

    def extract_cookies(self, response: httpx.Response) -> None:
        """Ignored."""


class _Stateless(httpx.Client):
    """A client that keeps no cookies. The API is stateless; a cookie a load balancer sets
    would tie an account's requests to one backend, and reading one built a urllib
    request per response (7-13% of the worker's CPU at 500 companies)."""

    def __init__(self, **options: Any) -> None:
        self._no_cookies = _NoCookies()
        super().__init__(**options)

    @property
    def cookies(self) -> httpx.Cookies:
        return self._no_cookies

    @cookies.setter
    def cookies(self, cookies: object) -> None:
        """Ignored."""


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes = b""  # e.g. the job a profile import created


class KlaviyoClient:
    """A connection-reusing client for one account."""

    def __init__(
        self,
        settings: ApiSettings,
        key: ApiKey,
        transport: httpx.BaseTransport | None = None,
        on_status: Callable[[int], None] | None = None,
    ) -> None:
        """``on_status`` hears every request's HTTP status (0: no answer), for metrics."""
        self._on_status = on_status
        self._http = _Stateless(
            base_url=settings.base_url,
            headers={
                "Authorization": f"Klaviyo-API-Key {key.value}",
                "revision": settings.revision,
                "accept": JSON_API,
                "content-type": JSON_API,
                "user-agent": f"ingestor/{__version__}",
            },
            timeout=httpx.Timeout(settings.read_timeout, connect=settings.connect_timeout),
            transport=transport,
            follow_redirects=False,
        )

    def __repr__(self) -> str:
        return f"KlaviyoClient(base_url={str(self._http.base_url)!r})"

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> KlaviyoClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def post_bulk(self, endpoint: str, body: bytes) -> Answer:
        """POST a prebuilt bulk body; any 2xx is success (the spec says 204, the guide 202)."""
        return self._request("POST", endpoint, content=body)

    def get_data_source(self, data_source_id: str) -> dict[str, Any]:
        """GET /api/data-sources/{id}; NotFound if the account has no such data source."""
        response = self._send("GET", f"/api/data-sources/{data_source_id}")
        result: dict[str, Any] = orjson.loads(response.content)
        return result

    def get_import_job(self, endpoint: str, job_id: str) -> dict[str, Any]:
        """GET a bulk import job (``endpoint``/{id}): its JSON:API document."""
        return self._get_json(f"{endpoint}/{job_id}")

    def get_import_errors(self, endpoint: str, job_id: str, cursor: str = "") -> dict[str, Any]:
        """One page (100) of a bulk import job's errors; ``links.next`` names the next."""
        page = f"page[size]=100&page[cursor]={cursor}" if cursor else "page[size]=100"
        return self._get_json(f"{endpoint}/{job_id}/import-errors?{page}")

    def _get_json(self, path: str) -> dict[str, Any]:
        result: dict[str, Any] = orjson.loads(self._send("GET", path).content)
        return result

    def _request(self, method: str, path: str, content: bytes | None = None) -> Answer:
        response = self._send(method, path, content)
        headers = {k.lower(): v for k, v in response.headers.items()}
        return Answer(response.status_code, headers, response.content)

    def _send(self, method: str, path: str, content: bytes | None = None) -> httpx.Response:
        try:
            response = self._http.request(method, path, content=content)
        except httpx.TimeoutException as exc:
            self._heard(0)
            raise Transient(f"{method} {path}: timed out ({type(exc).__name__})") from None
        except httpx.TransportError as exc:
            self._heard(0)
            raise Transient(f"{method} {path}: connection failed ({type(exc).__name__})") from None
        self._heard(response.status_code)
        if 200 <= response.status_code < 300:
            return response
        raise classify(method, path, response)

    def _heard(self, status: int) -> None:
        if self._on_status is not None:
            self._on_status(status)


def classify(method: str, path: str, response: httpx.Response) -> ApiError:
    """Turn a non-2xx answer into the ApiError that says what to do about it."""
    status = response.status_code
    detail, index = _error_detail(response)
    where = f"{method} {path} -> {status}"
    headers = response.headers
    if status == 429:
        return RateLimited(f"{where}: rate limited", retry_after(headers.get("retry-after")))
    if status in (401, 403):
        return AuthError(
            f"Klaviyo refused the API key ({status}: {detail or 'no detail'}); the operator "
            "must check the key and that it has the custom-objects:write scope",
            status,
            detail,
        )
    if status == 404:
        if not _is_json_api_error(response):
            return ApiUnreachable(
                f"{where} without a JSON:API error body, so not from Klaviyo's API: check "
                f"api.base_url ({response.request.url.scheme}://{response.request.url.host}) "
                "and any proxy in between",
                status,
                detail[:200],
            )
        return NotFound(f"{where}: not found ({detail or 'no detail'})", status, detail)
    if status == 413:
        return PayloadTooLarge(f"{where}: payload too large", status, detail)
    if status >= 500 or status in (408, 409, 425):
        return Transient(f"{where}: {detail or 'server error'}", status, detail)
    return Rejected(f"{where}: {detail or 'request refused'}", status, detail, index)


def _is_json_api_error(response: httpx.Response) -> bool:
    """Whether the body is a JSON:API error document, as Klaviyo's API sends."""
    try:
        errors = orjson.loads(response.content).get("errors")
    except (orjson.JSONDecodeError, AttributeError):
        return False
    return isinstance(errors, list) and bool(errors) and isinstance(errors[0], dict)


def _error_detail(response: httpx.Response) -> tuple[str, int | None]:
    """The JSON:API error's detail and, if it points at one record, that record's index."""
    try:
        errors = orjson.loads(response.content).get("errors") or []
        first = errors[0]
        detail = str(first.get("detail") or first.get("title") or "")
        pointer = str((first.get("source") or {}).get("pointer") or "")
    except (orjson.JSONDecodeError, AttributeError, IndexError, TypeError):
        return response.text[:300].strip(), None
    match = _RECORD_POINTER.match(pointer)
    return detail[:1000], int(match.group(1)) if match else None


def retry_after(value: str | None) -> float | None:
    """Retry-After as seconds: delta-seconds (fractions tolerated) or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - datetime.now(UTC)).total_seconds())
