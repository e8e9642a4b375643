"""The simulator's memory: accounts, what they received, their rate windows, and faults."""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ingestor.config import RateLimitSettings

# The guide's SMALL tier for the bulk endpoint; the published spec's steady rate is 15/min.
GUIDE_BULK_LIMITS = RateLimitSettings(burst=3, burst_window=1.0, steady=60, steady_window=60.0)
SPEC_BULK_LIMITS = RateLimitSettings(burst=3, burst_window=1.0, steady=15, steady_window=60.0)
DATA_SOURCE_LIMITS = RateLimitSettings(burst=3, burst_window=1.0, steady=60, steady_window=60.0)
# The bulk events endpoint's published limits.
EVENT_LIMITS = RateLimitSettings(burst=10, burst_window=1.0, steady=150, steady_window=60.0)

RecordRefusal = Callable[[dict[str, Any]], str | None]


class ServerWindows:
    """Server-side sliding windows: at most N accepted requests in any W seconds."""

    def __init__(self, limits: RateLimitSettings) -> None:
        self._limits = limits
        self._burst: deque[float] = deque()
        self._steady: deque[float] = deque()

    def admit(self, now: float) -> float | None:
        """Count the request and return None, or return seconds until it would be allowed."""
        limits = self._limits
        if not limits.enabled:
            return None
        waits = []
        for stamps, limit, window in (
            (self._burst, limits.burst, limits.burst_window),
            (self._steady, limits.steady, limits.steady_window),
        ):
            while stamps and stamps[0] <= now - window:
                stamps.popleft()
            if len(stamps) >= limit:
                waits.append(stamps[0] + window - now)
        if waits:
            return max(waits)
        self._burst.append(now)
        self._steady.append(now)
        return None

    def steady_state(self, now: float) -> tuple[int, int, float] | None:
        """The steady window as Klaviyo's RateLimit-* headers describe it: the limit, the
        requests remaining, and seconds until the oldest counted request leaves it (None
        when no limit is enforced: there is nothing to declare)."""
        limits = self._limits
        if not limits.enabled:
            return None
        remaining = max(0, limits.steady - len(self._steady))
        reset = (self._steady[0] + limits.steady_window - now) if self._steady else 0.0
        return limits.steady, remaining, max(0.0, reset)


@dataclass
class Account:
    """One Klaviyo account, reached with one API key."""

    name: str
    bulk_windows: ServerWindows
    read_windows: ServerWindows
    event_windows: ServerWindows
    profile_windows: ServerWindows  # POST profile-bulk-import-jobs
    job_windows: ServerWindows  # GET a profile import job, or its errors
    data_sources: dict[str, dict[str, Any]] = field(default_factory=dict)
    records: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    stored: int = 0  # records accepted (kept in ``records`` unless the simulator discards them)
    # Events kept, one per (profile, metric, unique_id): Klaviyo keeps one of each.
    events: dict[tuple[str, str, str], dict[str, Any]] = field(default_factory=dict)
    events_received: int = 0  # events accepted, duplicates included
    # Profiles imported, by their first identifier; and the import jobs, by id.
    profiles: dict[str, dict[str, Any]] = field(default_factory=dict)
    jobs: dict[str, ImportJobState] = field(default_factory=dict)


@dataclass
class ImportJobState:
    """A profile import job: its profiles are imported once it is due, each one valid."""

    id: str
    created: float  # wall clock
    due: float  # monotonic: when it completes
    profiles: list[dict[str, Any]]
    errors: list[dict[str, Any]] = field(default_factory=list)
    complete: bool = False


@dataclass
class Faults:
    """Failures to inject into the bulk endpoint, consumed one request at a time."""

    fail_next: int = 0
    fail_status: int = 503
    drop_next: int = 0  # close the connection without an answer
    throttle_next: int = 0  # answer 429
    throttle_retry_after: float | None = 1.0
    hang_after_accept_next: int = 0  # store the records, then stall past the client's timeout
    hang_seconds: float = 5.0
    latency: float = 0.0
    refuse: RecordRefusal | None = None  # a record → error detail, or None to accept it
    refuse_with_pointer: bool = True
    # Drop the connection, unanswered, on any request holding a record this matches.
    drop_when: Callable[[dict[str, Any]], bool] | None = None
    on_bulk: Callable[[], None] | None = None  # called as each bulk request arrives

    def take(self, name: str) -> bool:
        left: int = getattr(self, name)
        if left > 0:
            setattr(self, name, left - 1)
            return True
        return False


@dataclass(frozen=True, slots=True)
class RequestLog:
    at: float  # wall-clock time the request arrived
    account: str
    method: str
    path: str
    status: int
    records: int
    body_bytes: int
    revision: str


class SimulatorState:
    """Shared by the server's threads; every access goes through the lock."""

    def __init__(
        self,
        keys: dict[str, str],
        bulk_limits: RateLimitSettings,
        read_limits: RateLimitSettings,
        integer_retry_after: bool,
        event_limits: RateLimitSettings = EVENT_LIMITS,
    ) -> None:
        self.lock = threading.Lock()
        # Notified whenever records are stored or a request is logged.
        self.stored = threading.Condition(self.lock)
        self.integer_retry_after = integer_retry_after
        self.faults = Faults()
        self.requests: list[RequestLog] = []
        self.schema_failures: list[str] = []
        self._bulk_limits = bulk_limits
        self._read_limits = read_limits
        self._event_limits = event_limits
        self._accounts_by_key: dict[str, Account] = {}
        for key, name in keys.items():
            self.add_account(key, name)

    def add_account(self, key: str, name: str) -> Account:
        with self.lock:
            account = Account(
                name,
                ServerWindows(self._bulk_limits),
                ServerWindows(self._read_limits),
                ServerWindows(self._event_limits),
                ServerWindows(self._event_limits),  # the profile endpoints publish the same
                ServerWindows(self._event_limits),
            )
            self._accounts_by_key[key] = account
            return account

    def account_for_key(self, key: str) -> Account | None:
        return self._accounts_by_key.get(key)

    def account(self, name: str) -> Account:
        for account in self._accounts_by_key.values():
            if account.name == name:
                return account
        raise KeyError(name)

    def retry_after_header(self, seconds: float) -> str:
        if self.integer_retry_after:
            return str(max(1, math.ceil(seconds)))
        return f"{max(0.001, seconds):.3f}"

    def rate_limit_headers(self, windows: ServerWindows) -> dict[str, str]:
        """What Klaviyo sends on every answer that is not a 429 (its steady window)."""
        with self.lock:
            state = windows.steady_state(self.now())
        if state is None:
            return {}
        limit, remaining, reset = state
        shown = str(math.ceil(reset)) if self.integer_retry_after else f"{reset:.3f}"
        return {
            "RateLimit-Limit": str(limit),
            "RateLimit-Remaining": str(remaining),
            "RateLimit-Reset": shown,
        }

    def log(self, entry: RequestLog) -> None:
        with self.stored:
            self.requests.append(entry)
            self.stored.notify_all()

    @staticmethod
    def now() -> float:
        return time.monotonic()
