"""The Klaviyo endpoints we call, and what their answers mean.

Every answer is either returned (2xx) or raised as a typed ApiError. The API key lives only
in the Authorization header; no message, log line or repr built here contains it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

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
from ingestor.http import ConnectionFailed, Connections, Origin, Reply

JSON_API = "application/vnd.api+json"
_RECORD_POINTER = re.compile(r"/data/attributes/[a-z-]+/data/(\d+)")


class KlaviyoClient:
    """One account's client: its key, its connection (see ``ingestor.http``)."""

    def __init__(
        self,
        settings: ApiSettings,
        key: ApiKey,
        connections: Connections | None = None,
        on_status: Callable[[int], None] | None = None,
    ) -> None:
        """``connections``: the service's, whose TLS context every account shares (a client
        of its own loads one only if the URL is https). ``on_status`` hears every request's
        HTTP status (0: no answer), for metrics."""
        self._on_status = on_status
        self._connection = (connections or Connections()).connect(
            settings.base_url, settings.connect_timeout, settings.read_timeout
        )
        self._headers = {
            "Authorization": f"Klaviyo-API-Key {key.value}",
            "revision": settings.revision,
            "accept": JSON_API,
            "content-type": JSON_API,
            "user-agent": f"ingestor/{__version__}",
        }

    def __repr__(self) -> str:
        return f"KlaviyoClient(base_url={str(self._connection.origin)!r})"

    def close(self) -> None:
        self._connection.close()

    def __enter__(self) -> KlaviyoClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def post_bulk(self, endpoint: str, body: bytes) -> Reply:
        """POST a prebuilt bulk body; any 2xx is success (the spec says 204, the guide 202).
        The reply's body is the import job a profile import created (others answer empty)."""
        return self._send("POST", endpoint, body)

    def get_data_source(self, data_source_id: str) -> dict[str, Any]:
        """GET /api/data-sources/{id}; NotFound if the account has no such data source."""
        return self._get_json(f"/api/data-sources/{data_source_id}")

    def get_import_job(self, endpoint: str, job_id: str) -> dict[str, Any]:
        """GET a bulk import job (``endpoint``/{id}): its JSON:API document."""
        return self._get_json(f"{endpoint}/{job_id}")

    def get_import_errors(self, endpoint: str, job_id: str, cursor: str = "") -> dict[str, Any]:
        """One page (100) of a bulk import job's errors; ``links.next`` names the next."""
        page = f"page[size]=100&page[cursor]={cursor}" if cursor else "page[size]=100"
        return self._get_json(f"{endpoint}/{job_id}/import-errors?{page}")

    def _get_json(self, path: str) -> dict[str, Any]:
        result: dict[str, Any] = orjson.loads(self._send("GET", path).body)
        return result

    def _send(self, method: str, path: str, body: bytes | None = None) -> Reply:
        try:
            reply = self._connection.request(method, path, self._headers, body)
        except ConnectionFailed as exc:
            self._heard(0)
            raise Transient(str(exc)) from None
        self._heard(reply.status)
        if 200 <= reply.status < 300:
            return reply
        raise classify(method, path, reply, self._connection.origin)

    def _heard(self, status: int) -> None:
        if self._on_status is not None:
            self._on_status(status)


def classify(method: str, path: str, response: Reply, origin: Origin) -> ApiError:
    """Turn a non-2xx answer into the ApiError that says what to do about it."""
    status = response.status
    errors = _json_api_errors(response)  # the body, loaded once
    detail, index = _error_detail(response, errors)
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
        if errors is None:
            return ApiUnreachable(
                f"{where} without a JSON:API error body, so not from Klaviyo's API: check "
                f"api.base_url ({origin.scheme}://{origin.host}) "
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


def _json_api_errors(response: Reply) -> list[dict[str, Any]] | None:
    """The body's errors if it is a JSON:API error document, as Klaviyo's API sends."""
    try:
        errors = orjson.loads(response.body).get("errors")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    if isinstance(errors, list) and errors and isinstance(errors[0], dict):
        return errors
    return None


def _error_detail(response: Reply, errors: list[dict[str, Any]] | None) -> tuple[str, int | None]:
    """The JSON:API error's detail and, if it points at one record, that record's index."""
    if errors is None:
        return response.text[:300].strip(), None
    first = errors[0]
    try:
        detail = str(first.get("detail") or first.get("title") or "")
        pointer = str((first.get("source") or {}).get("pointer") or "")
    except AttributeError:  # a "source" that is not an object
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
