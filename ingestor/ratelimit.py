"""Per-account rate limiting that keeps an account at its limit without provoking 429s.

Each window ("at most N requests in any W seconds") is a sliding log of the last N request
*completion* times. A server stamps a request somewhere between our send and our receipt of
its answer, so spacing sends ≥ W after the N-th previous completion can never exceed the
server's window, whatever the latency. On a 429 the limiter waits Retry-After (or backs off)
and lowers its steady rate (multiplicative decrease); after a run of successes it probes back
up (additive increase). RateLimit-Remaining/Reset headers, when sent, are honoured too.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from ingestor.config import RateLimitSettings

# A 429 cuts the steady rate by a quarter, never below a fifth of the configured rate (the
# server's Retry-After does the real pausing); every 10 successes win back a tenth. From the
# floor, full speed is back after 80 requests: minutes, not the hours a 5% floor meant.
DECREASE_FACTOR = 0.75
MIN_FACTOR = 0.2
INCREASE_STEP = 0.1
SUCCESSES_BEFORE_PROBE = 10
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

    def resized(self, limit: int, window: float) -> SlidingWindow:
        """A window with other limits that remembers the same recent requests."""
        copy = SlidingWindow(limit, window)
        for at in self._times:
            copy.record(at)
        return copy


@dataclass(frozen=True, slots=True)
class LimiterState:
    """A snapshot for logs, status and tests."""

    steady_factor: float
    blocked_for: float
    throttles: int


class AccountLimiter:
    """The limiter of one account; thread-safe, shared by everything sending for it."""

    def __init__(
        self, settings: RateLimitSettings, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._settings = settings
        self._clock = clock
        self._lock = threading.Lock()
        self._windows = [
            SlidingWindow(settings.burst, settings.burst_window),
            SlidingWindow(settings.steady, settings.steady_window),
        ]
        self._steady_interval = settings.steady_window / settings.steady
        self._factor = 1.0
        self._successes = 0
        self._blocked_until = 0.0
        self._last_completion = float("-inf")
        self._throttles = 0

    def reconfigure(self, settings: RateLimitSettings) -> None:
        """New limits (a settings reload), keeping the requests already counted."""
        with self._lock:
            if settings == self._settings:
                return
            burst, steady = self._windows
            self._windows = [
                burst.resized(settings.burst, settings.burst_window),
                steady.resized(settings.steady, settings.steady_window),
            ]
            self._settings = settings
            self._steady_interval = settings.steady_window / settings.steady

    def delay(self) -> float:
        """Seconds to wait before the next request may be sent."""
        if not self._settings.enabled:
            return 0.0
        with self._lock:
            now = self._clock()
            ready = max(w.next_allowed(now) for w in self._windows)
            ready = max(ready, self._blocked_until)
            if self._factor < 1.0:
                ready = max(ready, self._last_completion + self._steady_interval / self._factor)
            return ready - now

    def acquire(self, stop: threading.Event) -> float:
        """Block until a request may be sent (or ``stop`` is set); return seconds waited."""
        waited = 0.0
        while (pause := self.delay()) > 0:
            if stop.wait(pause):
                break
            waited += pause
        return waited

    def completed(self, headers: Mapping[str, str] | None = None) -> None:
        """A request finished (any status but 429): it counts against the windows."""
        with self._lock:
            now = self._clock()
            self._record(now)
            self._successes += 1
            if self._factor < 1.0 and self._successes >= SUCCESSES_BEFORE_PROBE:
                self._factor = min(1.0, self._factor + INCREASE_STEP)
                self._successes = 0
            if headers:
                self._apply_headers(now, headers)

    def throttled(
        self, retry_after: float | None, headers: Mapping[str, str] | None = None
    ) -> float:
        """The server said 429: wait as told, slow down; return the pause imposed."""
        with self._lock:
            now = self._clock()
            self._record(now)
            self._throttles += 1
            self._successes = 0
            self._factor = max(MIN_FACTOR, self._factor * DECREASE_FACTOR)
            pause = retry_after if retry_after is not None else DEFAULT_429_BACKOFF
            self._blocked_until = max(self._blocked_until, now + pause)
            if headers:
                self._apply_headers(now, headers)
            return self._blocked_until - now

    def state(self) -> LimiterState:
        with self._lock:
            return LimiterState(
                self._factor, max(0.0, self._blocked_until - self._clock()), self._throttles
            )

    def _record(self, now: float) -> None:
        self._last_completion = now
        for window in self._windows:
            window.record(now)

    def _apply_headers(self, now: float, headers: Mapping[str, str]) -> None:
        remaining = _number(headers.get("ratelimit-remaining"))
        reset = _number(headers.get("ratelimit-reset"))
        if remaining is not None and remaining <= 0 and reset is not None:
            self._blocked_until = max(self._blocked_until, now + reset)


def _number(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        return float(text.split(",")[0].strip())
    except ValueError:
        return None


class LimiterRegistry:
    """One limiter per account, created on first use."""

    def __init__(self, settings: RateLimitSettings) -> None:
        self._settings = settings
        self._lock = threading.Lock()
        self._limiters: dict[str, AccountLimiter] = {}

    def for_account(self, account: str) -> AccountLimiter:
        with self._lock:
            if account not in self._limiters:
                self._limiters[account] = AccountLimiter(self._settings)
            return self._limiters[account]
