"""One company's lane: its own thread, queue, API client and rate limiter.

Files are processed one at a time in the order they became ready, so one company's 429
storm, auth failure or outage only ever waits inside its own lane.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from ingestor.discovery import Found, FoundKind, stat_of
from ingestor.errors import (
    ApiUnreachable,
    AuthError,
    ConfigError,
    IngestorError,
    Interrupted,
    LedgerError,
)
from ingestor.http import Connections
from ingestor.identity import KnownHashes
from ingestor.kinds import KINDS, ImportKind
from ingestor.klaviyo import KlaviyoClient
from ingestor.layout import ImportFolder
from ingestor.ledger import FileRun, FileState, Ledger
from ingestor.pipeline import FileResult, FolderResult, Pipeline
from ingestor.ratelimit import AccountLimiter
from ingestor.records import FileCounts
from ingestor.service_config import CompanySettings, ServiceSettings
from ingestor.worker.metrics import Metrics

log = structlog.get_logger("ingestor.lane")

LedgerFactory = Callable[[], Ledger]
# The event that says an outage is over, by the event that said it began.
_RECOVERED = {"ledger_unavailable": "ledger_recovered", "api_unreachable": "api_reachable_again"}


@dataclass(frozen=True, slots=True)
class Finished:
    """A lane finished a file (or rejected it unread)."""

    company: str
    result: FolderResult
    folder_drained: bool  # no more files of the same folder are queued in the lane
    announce: bool = True  # False: nothing to tell (the file changed while it was read)
    digest: bool = False  # e-mail the folder run as one message


FinishedFn = Callable[[Finished], None]
ChangedFn = Callable[[Path], None]


@dataclass(frozen=True, slots=True)
class Queued:
    found: Found
    ready_at: float  # monotonic
    queued_at: float  # wall clock, for `status`


@dataclass(slots=True)
class LaneView:
    """A snapshot for the STATUS line and ``status``."""

    company: str
    queued: int
    current: str = ""
    blocked: str = ""
    files_done: int = 0  # finished as done
    records_sent: int = 0
    files_failed: int = 0  # finished as failed or rejected
    throttled_for: float = 0.0  # seconds the server's rate limit still holds the company
    # The first files waiting, oldest first: (path, wall-clock time queued).
    waiting: list[tuple[str, float]] = field(default_factory=list)


@dataclass(slots=True)
class _Progress:
    """Turns the pipeline's running totals into metric increments."""

    company: str
    metrics: Metrics | None
    last: dict[int, FileCounts] = field(default_factory=dict)
    sent: int = 0

    def __call__(self, run: FileRun, _offset: int, counts: FileCounts) -> None:
        before = self.last.get(run.id) or run.counts
        delta = FileCounts(
            sent=counts.sent - before.sent,
            skipped=counts.skipped - before.skipped,
            retries=counts.retries - before.retries,
        )
        self.last[run.id] = FileCounts(
            sent=counts.sent, skipped=counts.skipped, retries=counts.retries
        )
        self.sent += delta.sent
        if self.metrics:
            self.metrics.progress(self.company, delta)


class Lane:
    def __init__(
        self,
        company: CompanySettings,
        service: ServiceSettings,
        ledger_factory: LedgerFactory,
        *,
        metrics: Metrics | None = None,
        environ: Mapping[str, str],
        connections: Connections | None = None,
        on_finished: FinishedFn | None = None,
        known_hashes: KnownHashes | None = None,
        on_changed: ChangedFn | None = None,
    ) -> None:
        """``on_changed`` hears of a file that changed while it was being sent (the service
        then waits for it to hold still before its next version starts)."""
        self._on_changed = on_changed
        self.name = company.name
        self._known_hashes = known_hashes
        self._company = company
        self._service = service
        self._ledger_factory = ledger_factory
        self._metrics = metrics
        self._environ = environ
        self._connections = connections
        self._on_finished = on_finished
        self._limiter = AccountLimiter(company.rate_limit)
        self._queue: deque[Queued] = deque()
        self._queued_paths: set[Path] = set()
        self._wake = threading.Condition()
        self._stop = threading.Event()
        self._reconfigured = False
        self._current = ""
        self._blocked = ""
        self._files_done = 0
        self._files_failed = 0
        self._folder_runs: dict[Path, int] = {}  # folder → files finished in its current run
        self._digest_folders: set[Path] = set()  # folder runs e-mailed as one digest
        self._current_path: Path | None = None  # the file being processed, and its stat
        self._current_stat: tuple[int, int] | None = None  # when it was taken from the queue
        self._progress = _Progress(company.name, metrics)
        self._auth_outage = False
        self._outages: set[str] = set()  # the outages under way (their log events)
        self._thread = threading.Thread(target=self._run, name=f"lane-{company.name}", daemon=True)

    # -- called from the service thread -------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def submit(self, found: Found) -> bool:
        """Queue a ready file (once: a file already waiting keeps its place, and the very
        version being processed now is not queued again when a second event reports it)."""
        with self._wake:
            if found.path in self._queued_paths:
                return False
            if found.path == self._current_path and stat_of(str(found.path)) == self._current_stat:
                return False
            self._queued_paths.add(found.path)
            self._queue.append(Queued(found, time.monotonic(), time.time()))
            self._publish_depth()
            self._wake.notify()
        return True

    def holds(self, path: Path) -> bool:
        """Whether ``path`` is queued in this lane or being processed by it now."""
        with self._wake:
            return path in self._queued_paths or path == self._current_path

    def update(self, company: CompanySettings, service: ServiceSettings) -> None:
        """New settings (SIGHUP): used from the next file on; a blocked lane retries now."""
        with self._wake:
            self._company, self._service = company, service
            self._limiter.reconfigure(company.rate_limit)
            self._reconfigured = True
            self._wake.notify()

    def stop(self) -> None:
        """Finish or leave (for resume) the batch in flight, then end the thread."""
        self._stop.set()
        with self._wake:
            self._wake.notify()

    def join(self, timeout: float | None = None) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def view(self) -> LaneView:
        throttled = round(self._limiter.state().blocked_for, 1)
        if self._metrics:
            self._metrics.throttled_for.labels(self.name).set(throttled)
        with self._wake:
            return LaneView(
                self.name,
                len(self._queue),
                self._current,
                self._blocked,
                self._files_done,
                self._progress.sent,
                self._files_failed,
                throttled,
                [(str(q.found.path), q.queued_at) for q in itertools.islice(self._queue, 50)],
            )

    # -- the lane's own thread -----------------------------------------------------------

    def _publish_depth(self) -> None:
        if self._metrics:
            self._metrics.queue_depth.labels(self.name).set(len(self._queue))

    def _next(self) -> Queued | None:
        with self._wake:
            while not self._queue and not self._stop.is_set():
                self._wake.wait()
            if self._stop.is_set():
                return None
            item = self._queue.popleft()
            self._queued_paths.discard(item.found.path)
            self._current = item.found.path.name
            self._current_path = item.found.path
            self._current_stat = stat_of(str(item.found.path))
            self._publish_depth()
            return item

    def _requeue_front(self, item: Queued, ledger: Ledger) -> None:
        """Put a file back at the head of the queue (it waits for the lane to unblock)."""
        with self._wake:
            if item.found.path not in self._queued_paths:
                self._queued_paths.add(item.found.path)
                self._queue.appendleft(item)
                self._publish_depth()

    def _pause(self, reason: str) -> None:
        """Hold the queue until the retry interval passes, new settings arrive, or stop."""
        if self._metrics:
            self._metrics.blocked.labels(self.name).set(1)
        with self._wake:
            self._blocked, self._current = reason, ""
            self._wake.wait_for(
                lambda: self._reconfigured or self._stop.is_set(),
                timeout=self._service.auth_retry_interval,
            )
            self._blocked = ""
        if self._metrics:
            self._metrics.blocked.labels(self.name).set(0)

    def _run(self) -> None:
        # Every event logged on this thread (the sender's rate_limited, the pipeline's
        # file_started, ...) names the company: a thread has a context of its own.
        structlog.contextvars.bind_contextvars(company=self.name)
        ledger = self._ledger_factory()
        client: KlaviyoClient | None = None
        pipeline: Pipeline | None = None
        reread_key = False
        bound = log.bind(company=self.name)
        try:
            while (item := self._next()) is not None:
                if self._metrics:
                    self._metrics.file_lag.labels(self.name).observe(
                        time.monotonic() - item.ready_at
                    )
                if pipeline is None or self._reconfigured or reread_key:
                    # New settings or key: a new client (and a fresh data-source cache).
                    if client is not None:
                        client.close()
                    client, pipeline, self._reconfigured, reread_key = None, None, False, False
                    try:
                        client = self._client()
                    except ConfigError as exc:
                        bound.error("api_key_unavailable", reason=str(exc))
                        self._requeue_front(item, ledger)
                        self._pause(f"API key unavailable: {exc}")
                        continue
                    pipeline = Pipeline(
                        self._service.pipeline_settings(self._company),
                        ledger,
                        client,
                        self._limiter,
                        self._stop,
                        self._progress,
                        self._known_hashes,
                    )
                try:
                    self._process(pipeline, item.found)
                    if self._auth_outage:
                        self._auth_outage = False
                        bound.info("auth_recovered")
                    for outage in sorted(self._outages):
                        bound.info(_RECOVERED[outage], detail="work has resumed")
                    self._outages.clear()
                except AuthError as exc:
                    if not self._auth_outage:  # logged once per outage, not once per try
                        self._auth_outage = True
                        bound.error("auth_failed", reason=str(exc), file=item.found.path.name)
                    self._finished_from_ledger(ledger, item.found)  # told once: see announce
                    self._requeue_front(item, ledger)
                    self._pause(f"authentication failed: {exc}")
                    reread_key = True  # a key rotated in its file needs no reload
                    continue
                except Interrupted:
                    bound.info("lane_stopping", file=item.found.path.name)
                    return
                except ApiUnreachable as exc:
                    # Not the company's doing: the operator must fix the URL or the proxy.
                    self._hold(item, ledger, "api_unreachable", exc, "the API is unreachable")
                    continue
                except LedgerError as exc:
                    # Progress cannot be recorded: stop taking work rather than send
                    # batches whose checkpoints would be lost.
                    self._hold(item, ledger, "ledger_unavailable", exc, "ledger unavailable")
                    continue
                except IngestorError as exc:
                    bound.error("file_error", file=item.found.path.name, reason=str(exc))
                except Exception:  # a bug must not silence the lane for good
                    bound.exception("lane_error", file=item.found.path.name)
                finally:
                    with self._wake:
                        self._current = ""
                        self._current_path = self._current_stat = None
        finally:
            if client is not None:
                client.close()
            ledger.close()

    def _hold(self, item: Queued, ledger: Ledger, event: str, exc: Exception, why: str) -> None:
        """An outage only the operator can end: the file waits at the head of the queue and
        the lane pauses. Said once per outage (``event``); each retry after that is a debug
        line."""
        report = log.debug if event in self._outages else log.error
        self._outages.add(event)
        report(event, company=self.name, reason=str(exc), file=item.found.path.name)
        self._requeue_front(item, ledger)
        self._pause(f"{why}: {exc}")

    def _client(self) -> KlaviyoClient:
        key = self._company.key_source.load(self._environ)
        on_status = None
        if self._metrics:
            metrics, name = self._metrics, self.name
            on_status = lambda status: metrics.request(name, status)  # noqa: E731
        return KlaviyoClient(
            self._service.pipeline_settings(self._company).api,
            key,
            self._connections,
            on_status,
        )

    def _process(self, pipeline: Pipeline, found: Found) -> None:
        placed = found.placed
        if placed.kind not in KINDS:
            return
        kind = KINDS[placed.kind]
        if found.kind is FoundKind.STRAY:
            stray = pipeline.reject_stray(
                self.name, placed.kind, found.path, self._service.drop_root
            )
            if not stray.unchanged:
                self._finished(FolderResult(self._folder(found, kind), [stray]))
            return
        folder = self._folder(found, kind)
        result = pipeline.ingest_files(folder, [found.path])
        if any(f.changed for f in result.files):
            # Still being written: nothing to tell anyone yet. Its next version starts once
            # it holds still (a close event queued meanwhile is dropped for that).
            with self._wake:
                self._queue = deque(q for q in self._queue if q.found.path != found.path)
                self._queued_paths.discard(found.path)
                self._publish_depth()
            if self._on_changed:
                self._on_changed(found.path)
            self._finished(result, announce=False)
            return
        if any(not f.unchanged for f in result.files):
            self._finished(result)

    def _finished_from_ledger(self, ledger: Ledger, found: Found) -> None:
        """Report a file the pipeline closed before raising (e.g. on a refused key)."""
        run = _latest_run(ledger, found)
        if run is not None and found.placed.kind in KINDS:
            folder = self._folder(found, KINDS[found.placed.kind])
            self._finished(FolderResult(folder, [FileResult(run, None)]))

    def _folder(self, found: Found, kind: ImportKind) -> ImportFolder:
        p = found.placed
        return ImportFolder(found.path.parent, p.company, kind, p.folder, self._service.drop_root)

    def _finished(self, result: FolderResult, announce: bool = True) -> None:
        folder = result.folder.path
        with self._wake:
            waiting = sum(1 for q in self._queue if q.found.path.parent == folder)
            run = self._folder_runs.get(folder, 0) + len(result.files)
            threshold = self._service.notify.digest_after_files
            if self._company.digest or run + waiting >= threshold:
                self._digest_folders.add(folder)  # for the rest of this folder run
            digest = folder in self._digest_folders
            if waiting:
                self._folder_runs[folder] = run
            else:  # the folder run ends
                self._folder_runs.pop(folder, None)
                self._digest_folders.discard(folder)
            done = sum(1 for f in result.files if f.run.state is FileState.DONE)
            self._files_done += done
            self._files_failed += len(result.files) - done
            drained = not waiting
        if self._metrics:
            for f in result.files:
                self._metrics.files.labels(self.name, f.run.state.value).inc()
        if self._on_finished:
            self._on_finished(Finished(self.name, result, drained, announce, digest))


def _latest_run(ledger: Ledger, found: Found) -> FileRun | None:
    p = found.placed
    return ledger.latest(p.company, p.kind, p.folder, found.path.name)
