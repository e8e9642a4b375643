"""A Klaviyo API stand-in on loopback: real HTTP, the published schemas, the documented limits.

Stdlib ``ThreadingHTTPServer`` (HTTP/1.1 keep-alive): no dependency, and direct control of
the socket, which the fault injection needs (a dropped connection is a real dropped socket).
"""

from __future__ import annotations

import itertools
import json
import re
import socket
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson
from ulid import ULID

from ingestor.config import RateLimitSettings
from ingestor.kinds import CUSTOM_OBJECTS, EVENTS, MAX_EVENT_STRING_BYTES, PROFILES, BatchLimits
from ingestor.simulator.schema import first_error, request_validator
from ingestor.simulator.state import (
    DATA_SOURCE_LIMITS,
    EVENT_LIMITS,
    GUIDE_BULK_LIMITS,
    Account,
    ImportJobState,
    RequestLog,
    ServerWindows,
    SimulatorState,
)

REVISION = re.compile(r"\d{4}-\d{2}-\d{2}(\.[a-z]+)?")
JSON_TYPES = ("application/vnd.api+json",)  # the only request media type the spec lists
RECORDS_POINTER = "/data/attributes/data-source-records/data"
EVENTS_POINTER = "/data/attributes/events-bulk-create/data"
PROFILES_POINTER = "/data/attributes/profiles/data"
E164 = re.compile(r"\+[1-9]\d{1,14}")
EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
IDENTIFIER_KEYS = ("email", "phone_number", "external_id", "anonymous_id")


def _error(status: int, code: str, title: str, detail: str, pointer: str = "") -> bytes:
    error: dict[str, Any] = {
        "id": str(ULID()),
        "status": status,
        "code": code,
        "title": title,
        "detail": detail,
    }
    if pointer:
        error["source"] = {"pointer": pointer}
    return orjson.dumps({"errors": [error]})


def _serialized_size(value: Any) -> int:
    """The record's size as compact JSON. orjson refuses to write more than 254 levels of
    nesting; such a record is still valid JSON (and valid per the spec), so the stdlib,
    which goes deeper, measures it instead."""
    try:
        return len(orjson.dumps(value))
    except orjson.JSONEncodeError:
        return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())


class _Answer(Exception):
    """Raised inside a handler to end the request with this status and body."""

    def __init__(
        self,
        status: int,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
        records: int = 0,
    ):
        super().__init__(status)
        self.status = status
        self.body = body
        self.headers = headers or {}
        self.records = records  # stored by this request (for the request log)


def _invalid(detail: str, pointer: str = "") -> _Answer:
    """A 400 "Invalid input." with ``detail`` (and the JSON pointer it is about, if any), as
    the API answers a request body it refuses."""
    return _Answer(400, _error(400, "invalid", "Invalid input.", detail, pointer))


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the simulator's request log is its state, not stderr."""

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def _handle(self, method: str) -> None:
        sim = self.server.simulator
        state = sim.state
        path = self.path.split("?", 1)[0]
        arrived = time.time()
        body = self._read_body()
        account_name, records = "", 0
        try:
            if path == "/_simulator/stats":
                raise _Answer(200, orjson.dumps(sim.stats()))
            account = self._authenticate()
            account_name = account.name
            revision = self.headers.get("revision", "")
            if not REVISION.fullmatch(revision):
                raise _Answer(
                    400,
                    _error(
                        400,
                        "invalid",
                        "Invalid revision header",
                        f"revision header {revision!r} is missing or invalid",
                    ),
                )
            if method == "POST" and path == CUSTOM_OBJECTS.endpoint:
                sim.bulk_create(self, account, body)
            elif method == "POST" and path == EVENTS.endpoint:
                sim.bulk_create_events(self, account, body)
            elif method == "POST" and path == PROFILES.endpoint:
                sim.bulk_import_profiles(self, account, body)
            elif method == "GET" and path.startswith(PROFILES.endpoint + "/"):
                sim.import_job(account, path.removeprefix(PROFILES.endpoint + "/"), self.path)
            elif method == "GET" and path.startswith("/api/data-sources/"):
                sim.get_data_source(account, path.rsplit("/", 1)[1])
            elif path == "/api/data-sources" and method == "POST":
                sim.create_data_source(account, body)
            elif path == "/api/data-sources" and method == "GET":
                sim.list_data_sources(account)
            else:
                raise _Answer(404, _error(404, "not_found", "Not found", f"no route {path}"))
        except _Answer as answer:
            records = answer.records
            if answer.status < 0:  # a dropped connection: no answer at all
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                status = 0
            else:
                self._reply(answer)
                status = answer.status
            state.log(
                RequestLog(
                    arrived,
                    account_name,
                    method,
                    path,
                    status,
                    records,
                    len(body),
                    self.headers.get("revision", ""),
                )
            )
        except Exception as exc:  # answer every request: a dropped connection is a fault only
            failure = _Answer(  # when injected on purpose
                500,
                _error(500, "error", "Simulator error", f"{type(exc).__name__}: {exc}"[:300]),
            )
            self._reply(failure)
            state.log(
                RequestLog(
                    arrived, account_name, method, path, 500, 0, len(body),
                    self.headers.get("revision", ""),
                )
            )  # fmt: skip

    def _read_body(self) -> bytes:
        length = int(self.headers.get("content-length") or 0)
        return self.rfile.read(length) if length else b""

    def _authenticate(self) -> Account:
        header = self.headers.get("authorization", "")
        scheme, _, key = header.partition(" ")
        account = self.server.simulator.state.account_for_key(key.strip())
        if scheme != "Klaviyo-API-Key" or account is None:
            raise _Answer(
                401,
                _error(
                    401,
                    "not_authenticated",
                    "Authentication failed",
                    "Missing or invalid private key.",
                ),
            )
        return account

    def _reply(self, answer: _Answer) -> None:
        self.send_response(answer.status)
        for name, value in answer.headers.items():
            self.send_header(name, value)
        if answer.body:
            self.send_header("content-type", "application/vnd.api+json")
        self.send_header("content-length", str(len(answer.body)))
        self.end_headers()
        if answer.body:
            self.wfile.write(answer.body)


def _profile_problem(attributes: dict[str, Any]) -> tuple[str, str] | None:
    """(field, detail) of what Klaviyo's import would refuse in a profile, if anything."""
    if not any(attributes.get(key) for key in ("email", "phone_number", "external_id")):
        return "email", "A profile identifier (email, phone_number or external_id) is required."
    email = attributes.get("email")
    if email is not None and not EMAIL.fullmatch(str(email)):
        return "email", f"Invalid email address: {email!r}"
    phone = attributes.get("phone_number")
    if phone is not None and not E164.fullmatch(str(phone)):
        return "phone_number", f"Invalid phone number {phone!r}: E.164 expected (+15005550006)"
    return None


def _event_problem(item: dict[str, Any]) -> str | None:
    """What the API would refuse in one profile-and-events item, if anything."""
    profile = item["attributes"]["profile"]["data"]
    attributes = profile.get("attributes") or {}
    if not profile.get("id") and not any(attributes.get(key) for key in IDENTIFIER_KEYS):
        return "a profile identifier (id, email, phone_number, external_id) is required"
    for event in item["attributes"]["events"]["data"]:
        name = event["attributes"]["metric"]["data"]["attributes"]["name"]
        if not name or len(name) >= 128:
            return "the metric name must be 1 to 127 characters"
    if _longest_string(item) > MAX_EVENT_STRING_BYTES:
        return f"a string is over {MAX_EVENT_STRING_BYTES} bytes"
    return None


def _longest_string(node: Any) -> int:
    todo, longest = [node], 0
    while todo:
        value = todo.pop()
        if isinstance(value, str):
            longest = max(longest, len(value.encode("utf-8")))
        elif isinstance(value, dict):
            todo.extend(value.values())
        elif isinstance(value, list):
            todo.extend(value)
    return longest


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    simulator: Simulator

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that went away (killed, timed out) is expected here, not a traceback."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class Simulator:
    """Run with ``with Simulator(...) as sim:``; ``sim.url`` is its base URL."""

    def __init__(
        self,
        keys: dict[str, str] | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        bulk_limits: RateLimitSettings = GUIDE_BULK_LIMITS,
        read_limits: RateLimitSettings = DATA_SOURCE_LIMITS,
        event_limits: RateLimitSettings = EVENT_LIMITS,
        clock_factor: float = 1.0,
        batch_limits: BatchLimits = CUSTOM_OBJECTS.limits,
        success_status: int = 204,
        integer_retry_after: bool | None = None,
        keep_records: bool = True,
        rate_limit_headers: bool = True,
        validate_every: int = 1,
        reuse_port: bool = False,
        profile_job_seconds: float = 0.2,
    ) -> None:
        """``keep_records=False`` only counts what is stored (long benchmarks);
        ``rate_limit_headers=False`` leaves out the RateLimit-* headers Klaviyo sends (a
        server that declares nothing, whose limit a client must learn from its 429s);
        ``validate_every=N`` checks one bulk body in N against the spec (the others are
        parsed only: benchmarks that must measure the client, and say so);
        ``reuse_port`` lets several simulator processes share one port (SO_REUSEPORT);
        ``profile_job_seconds``: how long a profile import job runs before it completes."""
        self.profile_job_seconds = profile_job_seconds
        self.keep_records = keep_records
        self.validate_every = validate_every
        self._bodies = itertools.count()
        self.rate_limit_headers = rate_limit_headers
        self.state = SimulatorState(
            keys or {},
            bulk_limits.scaled(clock_factor),
            read_limits.scaled(clock_factor),
            integer_retry_after if integer_retry_after is not None else clock_factor == 1.0,
            event_limits.scaled(clock_factor),
        )
        self.batch_limits = batch_limits
        self.success_status = success_status
        self._server = _Server((host, port), _Handler, bind_and_activate=False)
        self._server.allow_reuse_port = reuse_port
        try:
            self._server.server_bind()
            self._server.server_activate()
        except OSError:
            self._server.server_close()
            raise
        self._server.simulator = self
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def faults(self) -> Any:
        return self.state.faults

    def start(self) -> Simulator:
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            name="simulator",
            kwargs={"poll_interval": 0.05},
            daemon=True,
        )
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self._server.serve_forever(poll_interval=0.2)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread:
            self._thread.join(timeout=5)

    def __enter__(self) -> Simulator:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    # --- set-up and inspection, for tests, benchmarks and the demo ---

    def add_data_source(
        self, account: str, data_source_id: str | None = None, title: str = "Simulated"
    ) -> str:
        ds_id = data_source_id or str(ULID())
        with self.state.lock:
            self.state.account(account).data_sources[ds_id] = {
                "title": title,
                "visibility": "private",
                "description": "",
                "namespace": "custom-objects",
            }
        return ds_id

    def events(self, account: str) -> list[dict[str, Any]]:
        """The events ``account`` keeps (one per profile, metric and unique_id), each as
        {"profile": attributes, "metric": name, **event attributes}."""
        with self.state.lock:
            return list(self.state.account(account).events.values())

    def records(self, account: str) -> list[dict[str, Any]]:
        with self.state.lock:
            return [record for _, record in self.state.account(account).records]

    def wait_for_records(self, account: str, count: int, timeout: float) -> bool:
        """Block until ``account`` holds at least ``count`` records (True) or time runs out."""
        with self.state.stored:
            return self.state.stored.wait_for(
                lambda: self.state.account(account).stored >= count, timeout
            )

    def wait_for_requests(self, check: Callable[[list[RequestLog]], bool], timeout: float) -> bool:
        """Block until ``check`` holds for the requests answered so far (True) or time runs
        out."""
        with self.state.stored:
            return self.state.stored.wait_for(lambda: check(self.state.requests), timeout)

    def stats(self) -> dict[str, Any]:
        with self.state.lock:
            statuses: dict[str, int] = {}
            for entry in self.state.requests:
                statuses[str(entry.status)] = statuses.get(str(entry.status), 0) + 1
            return {
                "requests": len(self.state.requests),
                "statuses": statuses,
                "records": sum(a.stored for a in self.state._accounts_by_key.values()),
                "events": sum(a.events_received for a in self.state._accounts_by_key.values()),
                "profiles": sum(
                    len(job.profiles)
                    for a in self.state._accounts_by_key.values()
                    for job in a.jobs.values()
                ),
                "schema_failures": len(self.state.schema_failures),
            }

    # --- endpoints ---

    def _admit(self, account: Account, windows: ServerWindows | None = None) -> dict[str, str]:
        """Count the request against one of the account's windows (its reads' by default):
        the RateLimit-* headers for its answer, or a 429."""
        state = self.state
        windows = windows or account.read_windows
        with state.lock:
            wait = windows.admit(state.now())
        if wait is not None:
            raise _Answer(
                429,
                _error(
                    429,
                    "throttled",
                    "Request was throttled.",
                    f"Request was throttled. Expected available in {wait:.3f} seconds.",
                ),
                {"Retry-After": state.retry_after_header(wait)},
            )
        return state.rate_limit_headers(windows) if self.rate_limit_headers else {}

    def bulk_create(self, handler: _Handler, account: Account, body: bytes) -> None:
        limits = self.batch_limits
        document, limit_headers, hang = self._bulk_document(
            handler, account, account.bulk_windows, body, limits, "bulk_create_data_source_records"
        )
        self._store_records(account, document, limits, hang, limit_headers)

    def _bulk_document(
        self,
        handler: _Handler,
        account: Account,
        windows: ServerWindows,
        body: bytes,
        limits: BatchLimits,
        operation: str,
    ) -> tuple[dict[str, Any], dict[str, str], bool]:
        """A bulk request through its faults, its admission and its body's checks: the body
        as a document, validated against ``operation``'s spec (one in ``validate_every``),
        the RateLimit-* headers for its answer, and whether to hang after storing it."""
        limit_headers, hang = self._bulk_faults(account, windows)
        self._check_body(handler, body, limits.max_body_bytes)
        validate = next(self._bodies) % self.validate_every == 0
        return self._parse_and_validate(body, operation, validate), limit_headers, hang

    def _bulk_faults(self, account: Account, windows: ServerWindows) -> tuple[dict[str, str], bool]:
        """The faults a bulk request may meet before its body is read, and its admission:
        the RateLimit-* headers for its answer, and whether to hang after storing it."""
        faults, state = self.state.faults, self.state
        with state.lock:  # at most one injected fault per request, in this order
            throttle = faults.take("throttle_next")
            fail = not throttle and faults.take("fail_next")
            drop = not (throttle or fail) and faults.take("drop_next")
            hang = not (throttle or fail or drop) and faults.take("hang_after_accept_next")
            latency, arrived = faults.latency, faults.on_bulk
        if arrived:
            arrived()
        if latency:
            time.sleep(latency)
        if throttle:
            retry_after = faults.throttle_retry_after
            headers = (
                {}
                if retry_after is None
                else {"Retry-After": state.retry_after_header(retry_after)}
            )
            raise _Answer(429, _error(429, "throttled", "Request was throttled.", "storm"), headers)
        limit_headers = self._admit(account, windows)
        if fail:
            raise _Answer(
                faults.fail_status,
                _error(faults.fail_status, "error", "Server error", "injected failure"),
            )
        if drop:
            raise _Answer(-1)
        return limit_headers, hang

    @staticmethod
    def _check_body(handler: _Handler, body: bytes, max_body_bytes: int) -> None:
        if len(body) > max_body_bytes:
            raise _Answer(
                413,
                _error(
                    413,
                    "payload_too_large",
                    "Payload too large",
                    f"payload is {len(body)} bytes; the maximum is {max_body_bytes}",
                ),
            )
        content_type = handler.headers.get("content-type", "").split(";")[0].strip()
        if content_type not in JSON_TYPES:
            raise _Answer(
                415,
                _error(
                    415,
                    "unsupported_media_type",
                    "Unsupported media type",
                    f"content-type {content_type!r}",
                ),
            )

    def _store_records(
        self,
        account: Account,
        document: dict[str, Any],
        limits: BatchLimits,
        hang: bool,
        limit_headers: dict[str, str],
    ) -> None:
        faults, state = self.state.faults, self.state
        attributes = document["data"]["attributes"]["data-source-records"] or {"data": []}
        items = attributes["data"]
        if len(items) > limits.max_records:
            raise _invalid(
                f"{len(items)} records; at most {limits.max_records} per request", RECORDS_POINTER
            )
        ds_ref = (document["data"].get("relationships") or {}).get("data-source") or {}
        ds_id = (ds_ref.get("data") or {}).get("id")
        if not ds_id:
            raise _invalid("a data source identifier was not provided")
        if ds_id not in account.data_sources:
            raise _Answer(
                404, _error(404, "not_found", "Not found", f"data source {ds_id} does not exist")
            )
        records = [item["attributes"]["record"] for item in items]
        self._refuse_any(records, RECORDS_POINTER, limits.max_record_bytes, "record")
        if faults.drop_when is not None and any(map(faults.drop_when, records)):
            raise _Answer(-1)
        with state.lock:
            account.stored += len(records)
            if self.keep_records:
                account.records.extend((ds_id, record) for record in records)
            state.stored.notify_all()
        if hang:
            time.sleep(faults.hang_seconds)
        raise _Answer(self.success_status, headers=limit_headers, records=len(records))

    def bulk_create_events(self, handler: _Handler, account: Account, body: bytes) -> None:
        """POST /api/event-bulk-create-jobs: at most 1,000 events and 5 MB, no string over
        100 KB, a profile identifier and a metric name each; an event whose profile, metric
        and unique_id were seen before is kept once (Klaviyo de-duplicates on them), the
        same one twice in a request fails the request. 202, no body."""
        faults, state, limits = self.state.faults, self.state, EVENTS.limits
        document, limit_headers, hang = self._bulk_document(
            handler, account, account.event_windows, body, limits, "bulk_create_events"
        )
        items = document["data"]["attributes"]["events-bulk-create"]["data"]
        if sum(len(item["attributes"]["events"]["data"]) for item in items) > limits.max_records:
            raise _invalid(f"at most {limits.max_records} events per request", EVENTS_POINTER)
        kept: dict[tuple[str, str, str], dict[str, Any]] = {}
        for index, item in enumerate(items):
            pointer = f"{EVENTS_POINTER}/{index}"
            detail = _event_problem(item) or (faults.refuse(item) if faults.refuse else None)
            if detail:
                raise _invalid(detail, pointer if faults.refuse_with_pointer else "")
            profile = item["attributes"]["profile"]["data"]
            who = profile.get("id") or next(
                f"{key}:{profile['attributes'][key]}"
                for key in IDENTIFIER_KEYS
                if profile["attributes"].get(key)
            )
            for event in item["attributes"]["events"]["data"]:
                attributes = event["attributes"]
                metric = attributes["metric"]["data"]["attributes"]["name"]
                key = (who, metric, str(attributes.get("unique_id") or attributes.get("time")))
                if key in kept:
                    raise _invalid(
                        f"unique_id {key[2]!r} is repeated for the same profile and metric",
                        pointer,
                    )
                kept[key] = {"profile": profile["attributes"], "metric": metric, **attributes}
        if faults.drop_when is not None and any(map(faults.drop_when, items)):
            raise _Answer(-1)
        with state.lock:
            account.events_received += len(kept)
            if self.keep_records:
                for key, event in kept.items():
                    account.events.setdefault(key, event)
            state.stored.notify_all()
        if hang:
            time.sleep(faults.hang_seconds)
        raise _Answer(202, headers=limit_headers, records=len(kept))

    def profiles(self, account: str) -> dict[str, dict[str, Any]]:
        """The profiles ``account`` holds (imported by complete jobs), by first identifier."""
        with self.state.lock:
            state = self.state.account(account)
            for job in state.jobs.values():
                self._settle(state, job)
            return dict(state.profiles)

    def bulk_import_profiles(self, handler: _Handler, account: Account, body: bytes) -> None:
        """POST /api/profile-bulk-import-jobs: at most 10,000 profiles, 5 MB, 100 KB each;
        202 with a job that completes ``profile_job_seconds`` later, importing each valid
        profile and recording an import error (with its pointer) for each invalid one."""
        faults, state, limits = self.state.faults, self.state, PROFILES.limits
        document, limit_headers, hang = self._bulk_document(
            handler, account, account.profile_windows, body, limits, "bulk_import_profiles"
        )
        items = document["data"]["attributes"]["profiles"]["data"]
        if len(items) > limits.max_records:
            raise _invalid(f"at most {limits.max_records} profiles per request", PROFILES_POINTER)
        self._refuse_any(items, PROFILES_POINTER, limits.max_record_bytes, "profile")
        if faults.drop_when is not None and any(map(faults.drop_when, items)):
            raise _Answer(-1)
        job = ImportJobState(
            str(ULID()), time.time(), time.monotonic() + self.profile_job_seconds, items
        )
        with state.lock:
            account.jobs[job.id] = job
            state.stored.notify_all()
        if hang:
            time.sleep(faults.hang_seconds)
        raise _Answer(
            202,
            orjson.dumps({"data": self._job_resource(job)}),
            limit_headers,
            records=len(items),
        )

    def import_job(self, account: Account, rest: str, raw_path: str) -> None:
        """GET a profile import job, or a page of its import errors."""
        limit_headers = self._admit(account, account.job_windows)
        job_id, _, tail = rest.partition("/")
        with self.state.lock:
            job = account.jobs.get(job_id)
            if job is not None:
                self._settle(account, job)
        if job is None or tail not in ("", "import-errors"):
            raise _Answer(404, _error(404, "not_found", "Not found", f"no import job {job_id}"))
        if not tail:
            raise _Answer(200, orjson.dumps({"data": self._job_resource(job)}), limit_headers)
        query = parse_qs(urlsplit(raw_path).query)
        size = min(100, int((query.get("page[size]") or ["20"])[0]))
        start = int((query.get("page[cursor]") or ["0"])[0] or 0)
        page = job.errors[start : start + size] if job.complete else []
        base = f"{self.url}{PROFILES.endpoint}/{job.id}/import-errors"
        links = {"self": f"{base}?page[size]={size}&page[cursor]={start}"}
        if job.complete and start + size < len(job.errors):
            links["next"] = f"{base}?page[size]={size}&page[cursor]={start + size}"
        raise _Answer(200, orjson.dumps({"data": page, "links": links}), limit_headers)

    def _job_resource(self, job: ImportJobState) -> dict[str, Any]:
        created = datetime.fromtimestamp(job.created, UTC).isoformat()
        failed = len(job.errors) if job.complete else 0
        return {
            "type": "profile-bulk-import-job",
            "id": job.id,
            "attributes": {
                "status": "complete" if job.complete else "processing",
                "created_at": created,
                "total_count": len(job.profiles),
                "completed_count": len(job.profiles) - failed if job.complete else 0,
                "failed_count": failed,
                "started_at": created,
                "completed_at": datetime.now(UTC).isoformat() if job.complete else None,
            },
            "links": {"self": f"{self.url}{PROFILES.endpoint}/{job.id}"},
        }

    def _settle(self, account: Account, job: ImportJobState) -> None:
        """Complete a job that is due (under the state's lock)."""
        if job.complete or time.monotonic() < job.due:
            return
        job.complete = True
        for index, item in enumerate(job.profiles):
            attributes = item.get("attributes") or {}
            problem = _profile_problem(attributes)
            if problem:
                field, detail = problem
                job.errors.append(
                    {
                        "type": "import-error",
                        "id": str(ULID()),
                        "attributes": {
                            "code": "invalid",
                            "title": "Invalid input",
                            "detail": detail,
                            "source": {"pointer": f"{PROFILES_POINTER}/{index}/attributes/{field}"},
                            "original_payload": attributes,
                        },
                    }
                )
                continue
            key = next(
                f"{name}:{attributes[name]}"
                for name in ("email", "phone_number", "external_id")
                if attributes.get(name)
            )
            account.profiles[key] = {**account.profiles.get(key, {}), **attributes}

    def _refuse_any(
        self, items: list[dict[str, Any]], pointer: str, max_bytes: int, what: str
    ) -> None:
        """A 400 pointing at the first item over ``max_bytes`` serialised, or refused by the
        injected ``faults.refuse``."""
        faults = self.state.faults
        for index, item in enumerate(items):
            size = _serialized_size(item)
            detail = (
                f"{what} is {size} bytes; the maximum is {max_bytes}"
                if size > max_bytes
                else faults.refuse(item)
                if faults.refuse
                else None
            )
            if detail:
                raise _invalid(detail, f"{pointer}/{index}" if faults.refuse_with_pointer else "")

    def _parse_and_validate(
        self, body: bytes, operation: str, validate: bool = True
    ) -> dict[str, Any]:
        try:
            document = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise _Answer(400, _error(400, "parse_error", "Malformed JSON", str(exc))) from None
        problem = first_error(request_validator(operation), document) if validate else None
        if problem:
            pointer, message = problem
            with self.state.lock:
                self.state.schema_failures.append(f"{operation} {pointer}: {message}")
            raise _invalid(message, pointer)
        result: dict[str, Any] = document
        return result

    def _resource(self, ds_id: str, attrs: dict[str, Any]) -> dict[str, Any]:
        return {
            "type": "data-source",
            "id": ds_id,
            "attributes": attrs,
            "links": {"self": f"{self.url}/api/data-sources/{ds_id}"},
        }

    def get_data_source(self, account: Account, ds_id: str) -> None:
        limit_headers = self._admit(account)
        attrs = account.data_sources.get(ds_id)
        if attrs is None:
            raise _Answer(
                404,
                _error(
                    404, "not_found", "Not found.", f"A data source with id {ds_id} does not exist."
                ),
            )
        raise _Answer(
            200,
            orjson.dumps(
                {
                    "data": self._resource(ds_id, attrs),
                    "links": {"self": f"{self.url}/api/data-sources/"},
                }
            ),
            limit_headers,
        )

    def list_data_sources(self, account: Account) -> None:
        self._admit(account)
        data = [self._resource(i, a) for i, a in account.data_sources.items()]
        raise _Answer(
            200, orjson.dumps({"data": data, "links": {"self": f"{self.url}/api/data-sources"}})
        )

    def create_data_source(self, account: Account, body: bytes) -> None:
        self._admit(account)
        document = self._parse_and_validate(body, "create_data_source")
        attributes = document["data"]["attributes"]
        title = attributes["title"]
        with self.state.lock:
            if any(a["title"] == title for a in account.data_sources.values()):
                raise _Answer(
                    409,
                    _error(409, "conflict", "Conflict", f"a data source titled {title!r} exists"),
                )
        ds_id = self.add_data_source(account.name, title=title)
        raise _Answer(
            201, orjson.dumps({"data": self._resource(ds_id, account.data_sources[ds_id])})
        )
