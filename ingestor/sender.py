"""Deliver one batch, whatever the API throws at it.

- 429: wait as the server says (the limiter also slows down), then resend.
- 5xx, timeouts, resets: exponential backoff with full jitter, capped, forever (while the
  process runs and no stop is requested); each retry is logged.
- 413: split the batch in two and send each half.
- other 4xx refusals: isolate the refused record(s) (directly when the error points at one,
  else by bisection), send the rest, and report the refused ones as skipped with the API's
  detail. If nothing in a batch is accepted and enough records are refused the same way,
  the cause is the request, not the data: SystemicRejection stops the file with its place
  kept instead of skipping good records.
- 401/403/404 propagate: the account or folder must stop.
- a batch the API fails on every time (a dropped connection, a 5xx) while it answers other
  requests: after ``POISON_AFTER`` failures in a row the sender checks that the API is up
  (``probe``, a cheap read), tries once more, then bisects the batch as for a refusal. A
  single record is skipped ("the API failed on this record every time") only if other bulk
  requests succeeded meanwhile; when every request fails, that is an outage, retried forever.
"""

from __future__ import annotations

import random
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import structlog

from ingestor.config import RetrySettings
from ingestor.errors import (
    ApiError,
    Interrupted,
    PayloadTooLarge,
    RateLimited,
    Rejected,
    SystemicRejection,
    Transient,
)
from ingestor.http import Reply
from ingestor.kinds import Envelope
from ingestor.klaviyo import KlaviyoClient
from ingestor.ratelimit import AccountLimiter
from ingestor.records import Record, Reject, SendOutcome, jsons_of

SYSTEMIC_MIN_REFUSALS = 8
POISON_AFTER = 3  # transient failures of one body in a row before the API itself is checked
T = TypeVar("T")


class _FailsEveryTime(Exception):
    """A body failed ``POISON_AFTER`` times, and again after a probe found the API up."""

    def __init__(self, last: Transient) -> None:
        super().__init__(str(last))
        self.last = last


log = structlog.get_logger("ingestor.sender")


_last_request = 0.0  # monotonic time of the last request any sender of this process made
SENDING_WINDOW = 0.25  # seconds after a request during which a lane counts as sending


def others_sending() -> bool:
    """Whether any lane of this process made a request in the last ``SENDING_WINDOW``: CPU
    work that can wait (the error budget's look ahead) then yields to them."""
    return time.monotonic() - _last_request < SENDING_WINDOW


def backoff_delay(attempt: int, policy: RetrySettings, rng: random.Random) -> float:
    """Exponential backoff with jitter: uniform in [c/2, c], c = min(cap, initial*mult^n)."""
    ceiling = min(policy.max_delay, policy.initial_delay * policy.multiplier**attempt)
    return rng.uniform(ceiling / 2, ceiling)


@dataclass(slots=True)
class _Tally:
    accepted: int = 0
    requests: int = 0
    retries: int = 0
    throttled: float = 0.0
    refused: list[Reject] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    lost_answers: int = 0  # requests sent whose answer never came (timeout, dropped)
    maybe_resent: int = 0
    answers: list[tuple[bytes, Sequence[Record]]] = field(default_factory=list)

    def count(self, status: int) -> None:
        self.statuses[status] = self.statuses.get(status, 0) + 1


class Sender:
    """Sends batches for one account, one request at a time (the account's limit is the
    bottleneck, and sequential requests keep checkpoints simple and exact)."""

    def __init__(
        self,
        client: KlaviyoClient,
        limiter: AccountLimiter,
        endpoint: str,
        envelope: Envelope,
        retry: RetrySettings,
        stop: threading.Event,
        rng: random.Random | None = None,
        probe: Callable[[], object] | None = None,
    ) -> None:
        """``probe`` is a cheap request that tells whether the API answers at all (without
        one, a body that always fails is retried forever, as in an outage)."""
        self._probe = probe
        self._bulk_successes = 0  # bulk requests accepted by this sender, ever
        self._client = client
        self._limiter = limiter
        self._endpoint = endpoint
        self.envelope = envelope  # the batcher packs with it, so sizes match what is sent
        self._retry = retry
        self._stop = stop
        self._rng = rng or random.Random()

    def send(self, records: Sequence[Record]) -> SendOutcome:
        """Deliver ``records``; return what was accepted and refused. Raises Interrupted on
        stop, AuthError/NotFound for the caller to stop the account or folder."""
        tally = _Tally()
        parts: deque[Sequence[Record]] = deque([records])
        successes_before: int | None = None  # bulk successes when a body first failed for good
        while parts:
            part = parts.popleft()
            try:
                self._deliver(part, tally, outage=False)
                tally.accepted += len(part)
            except _FailsEveryTime as exc:
                if successes_before is None:
                    successes_before = self._bulk_successes
                if len(part) > 1:
                    middle = len(part) // 2
                    parts.extendleft((part[middle:], part[:middle]))
                elif self._bulk_successes > successes_before:  # others got through: poison
                    log.warning("record_fails_every_time", line=part[0].line, error=str(exc))
                    tally.refused.append(
                        _refusal(
                            part[0],
                            "the API failed on this record every time while accepting the "
                            f"others ({exc.last}); skipped",
                        )
                    )
                else:  # nothing gets through: an outage, waited out as ever
                    self._deliver(part, tally, outage=True)
                    tally.accepted += len(part)
            except PayloadTooLarge as exc:
                if len(part) == 1:
                    tally.refused.append(
                        _refusal(
                            part[0],
                            f"API refused the record as too large "
                            f"(413): {exc.detail or 'no detail'}",
                        )
                    )
                else:
                    middle = len(part) // 2
                    parts.extendleft((part[middle:], part[:middle]))
            except Rejected as exc:
                self._isolate(part, exc, parts, tally)
                if (
                    tally.accepted == 0
                    and len(tally.refused) >= min(SYSTEMIC_MIN_REFUSALS, len(records))
                    and len(records) >= SYSTEMIC_MIN_REFUSALS
                    and _same_reason(tally.refused)
                ):
                    raise SystemicRejection(
                        f"the API refused {len(tally.refused)} records in a row with the same "
                        f"error and accepted none: {exc}. The file is paused at its last "
                        "checkpoint; fix the cause and run it again",
                        exc.status,
                        exc.detail,
                    ) from None
        return SendOutcome(
            maybe_resent=tally.maybe_resent,
            accepted=tally.accepted,
            refused=tuple(tally.refused),
            requests=tally.requests,
            retries=tally.retries,
            throttled_seconds=tally.throttled,
            status_counts=tally.statuses,
            answers=tuple(tally.answers),
        )

    def _isolate(
        self,
        part: Sequence[Record],
        exc: Rejected,
        parts: deque[Sequence[Record]],
        tally: _Tally,
    ) -> None:
        reason = f"API refused the record ({exc.status}): {exc.detail or 'no detail'}"
        if exc.record_index is not None and 0 <= exc.record_index < len(part):
            index = exc.record_index
            tally.refused.append(_refusal(part[index], reason))
            rest = [*part[:index], *part[index + 1 :]]
            if rest:
                parts.appendleft(rest)
        elif len(part) == 1:
            tally.refused.append(_refusal(part[0], reason))
        else:
            middle = len(part) // 2
            parts.extendleft((part[middle:], part[:middle]))

    def _deliver(self, part: Sequence[Record], tally: _Tally, outage: bool) -> None:
        """Send one body until the API decides on it (2xx, 413 or a refusal). Unless in an
        ``outage``, a body that fails every time raises _FailsEveryTime."""
        body = self.envelope.body(jsons_of(part))
        lost = tally.lost_answers
        try:
            answer = self.call(
                lambda: self._client.post_bulk(self._endpoint, body),
                tally,
                poison_after=None if outage else POISON_AFTER,
            )
        finally:
            if tally.lost_answers > lost:  # the API may have stored it before the answer
                tally.maybe_resent += len(part)  # was lost: what follows may repeat it
        self._bulk_successes += 1
        tally.count(answer.status)
        if answer.body:  # an import job to follow (custom objects and events answer empty)
            tally.answers.append((answer.body, part))

    def call(
        self,
        request: Callable[[], T],
        tally: _Tally | None = None,
        poison_after: int | None = None,
    ) -> T:
        """Run one API call under the limiter, retrying 429s and transient failures until it
        succeeds or fails for good (any other ApiError propagates). With ``poison_after``,
        that many transient failures in a row make it probe the API; if the API answers and
        the call fails once more, _FailsEveryTime is raised instead of retrying forever."""
        global _last_request  # when any sender last made a request: see others_sending
        tally = tally if tally is not None else _Tally()
        attempt = 0
        probed = False
        while True:
            tally.throttled += self._limiter.acquire(self._stop)
            if self._stop.is_set():
                raise Interrupted("stop requested; unacknowledged work is resent on resume")
            tally.requests += 1
            _last_request = time.monotonic()  # one float, written whole: no lock needed
            try:
                result = request()
            except RateLimited as exc:
                tally.count(429)
                tally.retries += 1
                pause = self._limiter.throttled(exc.retry_after)
                log.warning("rate_limited", retry_after=exc.retry_after, pause=round(pause, 3))
                continue
            except Transient as exc:
                if exc.status:
                    tally.count(exc.status)
                else:
                    tally.lost_answers += 1
                self._limiter.completed(bulk=False)  # not something the server allowed
                attempt += 1
                tally.retries += 1
                if probed:
                    raise _FailsEveryTime(exc) from None
                if poison_after is not None and attempt >= poison_after and self._probe:
                    self.call(self._probe, tally)  # waits out an outage, as any call does
                    probed = True
                    continue
                delay = backoff_delay(attempt - 1, self._retry, self._rng)
                log.warning(
                    "transient_error_retrying",
                    error=str(exc),
                    attempt=attempt,
                    delay=round(delay, 3),
                )
                if self._stop.wait(delay):
                    raise Interrupted("stop requested during backoff") from None
                continue
            except ApiError as exc:
                if exc.status:
                    tally.count(exc.status)
                self._limiter.completed()
                raise
            if isinstance(result, Reply):  # the bulk endpoint's answer
                self._limiter.completed(result.headers)
            else:  # a lookup: it does not count towards the bulk endpoint's limit
                self._limiter.completed(bulk=False)
            return result


def _refusal(record: Record, reason: str) -> Reject:
    return Reject(
        record.line,
        record.end_line,
        record.end_offset,
        reason,
        record.json[:2048].decode("utf-8", "replace"),
    )


def _same_reason(refused: list[Reject]) -> bool:
    return len({r.reason for r in refused}) == 1
