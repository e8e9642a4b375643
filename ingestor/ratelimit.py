"""Per-account rate limiting that keeps an account at its limit without provoking 429s.

Each window ("at most N requests in any W seconds") is a sliding log of the last N request
*completion* times. A server stamps a request somewhere between our send and our receipt of
its answer, so spacing sends ≥ W after the N-th previous completion can never exceed the
server's window, whatever the latency.

The configured limits are an upper bound; the server's own are learned:

- Klaviyo sends ``RateLimit-Limit`` / ``-Remaining`` / ``-Reset`` on every answer that is not
  a 429. A limit lower than the configured steady one is adopted at once (the server said
  so: no probing above it), and ``Remaining: 0`` waits for ``Reset``.
- Without those headers, a 429 teaches the limit by counting: the requests this account
  completed in the last steady window are what the server allowed, so that count becomes
  the steady limit (never below a fifth of the configured one, so an injected storm cannot
  starve an account). After two clean windows it probes upward by a tenth.

A 429 also pauses the account for ``Retry-After`` (capped by ``max_retry_after``), or backs
off when the server gives none.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from ingestor.config import RateLimitSettings

MIN_FACTOR = 0.2  # a limit learned from counting never goes below this share of the setting
CLEAN_WINDOWS_BEFORE_PROBE = 2
PROBE_STEP = 0.1
DEFAULT_429_BACKOFF = 1.0


class SlidingWindow:
    """At most ``limit`` events in any ``window`` seconds."""

    def __init__(self, limit: int, window: float) -> None:
        self.limit = limit
        self.window = window
        self._times: deque[float] = deque(maxlen=limit)

    def next_allowed(self, now: float) -> float:
        if len(self._times) < self.limit:
            return now
        return max(now, self._times[0] + self.window)

    def record(self, at: float) -> None:
        self._times.append(at)

    def count_since(self, since: float) -> int:
        return sum(1 for at in self._times if at > since)

    def resized(self, limit: int, window: float) -> SlidingWindow:
        """A window with other limits that remembers the same recent requests."""
        copy = SlidingWindow(limit, window)
        for at in self._times:
            copy.record(at)
        return copy


@dataclass(frozen=True, slots=True)
class LimiterState:
    """A snapshot for logs, status and tests."""

    steady_limit: int  # the steady limit in force: configured, declared or learned
    learned_from: str  # "settings", "server" (RateLimit-Limit) or "429s" (counted)
    blocked_for: float
    throttles: int


class AccountLimiter:
    """The limiter of one account; thread-safe, shared by everything sending for it."""

    def __init__(
        self, settings: RateLimitSettings, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._settings = settings
        self._burst = SlidingWindow(settings.burst, settings.burst_window)
        # Every completion of the last steady window, whatever the limit in force: what a
        # 429 teaches is counted here.
        self._log = SlidingWindow(max(settings.steady, 1), settings.steady_window)
        self._steady = SlidingWindow(settings.steady, settings.steady_window)
        self._declared: int | None = None  # the server's RateLimit-Limit, if lower
        self._learned: int | None = None  # counted at a 429, when nothing is declared
        self._clean_since = clock()
        self._blocked_until = 0.0
        self._throttles = 0

    def reconfigure(self, settings: RateLimitSettings) -> None:
        """New limits (a settings reload), keeping the requests already counted; what was
        learned from the server is kept too, below the new setting."""
        with self._lock:
            if settings == self._settings:
                return
            self._settings = settings
            self._burst = self._burst.resized(settings.burst, settings.burst_window)
            self._log = self._log.resized(max(settings.steady, 1), settings.steady_window)
            self._apply_limit()

    def delay(self) -> float:
        """Seconds to wait before the next request may be sent."""
        if not self._settings.enabled:
            return 0.0
        with self._lock:
            now = self._clock()
            ready = max(
                self._burst.next_allowed(now),
                self._steady.next_allowed(now),
                self._blocked_until,
            )
            return ready - now

    def acquire(self, stop: threading.Event) -> float:
        """Block until a request may be sent (or ``stop`` is set); return seconds waited."""
        waited = 0.0
        while (pause := self.delay()) > 0:
            if stop.wait(pause):
                break
            waited += pause
        return waited

    def completed(self, headers: Mapping[str, str] | None = None, bulk: bool = True) -> None:
        """A request finished (any status but 429): it counts against the windows. Only
        requests to the endpoint whose limit this is (``bulk``) count as what the server
        allowed, when a 429 is there to learn from."""
        with self._lock:
            now = self._clock()
            self._record(now, bulk)
            if headers:
                self._apply_headers(now, headers)
            self._maybe_probe(now)

    def throttled(
        self, retry_after: float | None, headers: Mapping[str, str] | None = None
    ) -> float:
        """The server said 429: learn its limit if it declares none, wait as told (capped);
        return the pause imposed."""
        with self._lock:
            now = self._clock()
            self._throttles += 1
            if self._declared is None:
                allowed = self._log.count_since(now - self._settings.steady_window)
                floor = max(1, math.ceil(self._settings.steady * MIN_FACTOR))
                current = self._steady.limit
                self._learned = max(floor, min(current, allowed))
                self._apply_limit()
            self._clean_since = now
            self._record(now, counted=False)  # the server did not allow it
            pause = retry_after if retry_after is not None else DEFAULT_429_BACKOFF
            pause = min(pause, self._settings.max_retry_after)
            self._blocked_until = max(self._blocked_until, now + pause)
            if headers:
                self._apply_headers(now, headers)
            return self._blocked_until - now

    def state(self) -> LimiterState:
        with self._lock:
            source = (
                "server"
                if self._declared is not None and self._declared == self._steady.limit
                else "429s"
                if self._learned is not None and self._learned == self._steady.limit
                else "settings"
            )
            return LimiterState(
                self._steady.limit,
                source,
                max(0.0, self._blocked_until - self._clock()),
                self._throttles,
            )

    # -- under the lock ----------------------------------------------------------------------

    def _record(self, now: float, counted: bool = True) -> None:
        self._burst.record(now)
        self._steady.record(now)
        if counted:
            self._log.record(now)

    def _apply_limit(self) -> None:
        limit = min(
            x for x in (self._settings.steady, self._declared, self._learned) if x is not None
        )
        if limit != self._steady.limit or self._steady.window != self._settings.steady_window:
            self._steady = self._steady.resized(limit, self._settings.steady_window)

    def _maybe_probe(self, now: float) -> None:
        """After clean windows at a limit learned by counting, try a little more."""
        if self._learned is None or self._declared is not None:
            return
        if now - self._clean_since < CLEAN_WINDOWS_BEFORE_PROBE * self._settings.steady_window:
            return
        self._clean_since = now
        raised = self._learned + max(1, math.ceil(self._learned * PROBE_STEP))
        self._learned = None if raised >= self._settings.steady else raised
        self._apply_limit()

    def _apply_headers(self, now: float, headers: Mapping[str, str]) -> None:
        limit = _number(headers.get("ratelimit-limit"))
        if limit is not None and limit >= 1:
            declared = int(limit)
            if declared < self._settings.steady and declared != self._declared:
                self._declared = declared
                self._apply_limit()
        remaining = _number(headers.get("ratelimit-remaining"))
        reset = _number(headers.get("ratelimit-reset"))
        if remaining is not None and remaining <= 0 and reset is not None:
            pause = min(reset, self._settings.max_retry_after)
            self._blocked_until = max(self._blocked_until, now + pause)


def _number(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        return float(text.split(",")[0].strip())
    except ValueError:
        return None
