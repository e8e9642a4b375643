"""``ingestor run``: watch the drop tree and keep every company's lane busy until told to stop.

One thread (the caller's) owns discovery, routing, reloads, the retention sweep and systemd
notifications; it sleeps on one queue that the watchdog observer and the signal handlers
feed. Each company's lane is its own thread (see ``lane``).
"""

from __future__ import annotations

import contextlib
import enum
import os
import queue
import signal
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from types import FrameType

import structlog
from watchdog.events import FileMovedEvent, FileSystemEvent

from ingestor.discovery import (
    Discovery,
    Found,
    FoundKind,
    PollingWatcher,
    Readiness,
    TreeWatcher,
    Watcher,
    stat_of,
)
from ingestor.errors import ConfigError, LedgerError, StateUnwritable
from ingestor.http import Connections
from ingestor.identity import KnownHashes, same_version
from ingestor.layout import APPROVE_SUFFIX, CONFIG_NAME, MANIFEST_SUFFIX
from ingestor.ledger import FileState, Ledger, Ledgers, open_ledgers
from ingestor.service_config import ServiceSettings, load_service_settings
from ingestor.sftp.server import SftpEndpoint
from ingestor.worker.announce import Announcer
from ingestor.worker.lane import Finished, FinishedFn, Lane
from ingestor.worker.lock import LOCK_NAME, state_dir_lock
from ingestor.worker.metrics import Metrics
from ingestor.worker.retention import sweep
from ingestor.worker.sdnotify import SystemdNotifier
from ingestor.worker.status import (
    LIVE_NAME,
    ServiceView,
    company_status,
    service_status,
    write_live,
)

log = structlog.get_logger("ingestor.service")

TICK = 0.25  # how often quiet-period candidates are re-checked, at most
LIVE_EVERY = 1.0  # seconds between looks at the lanes for `ingestor status`


class _Signal(enum.Enum):
    STOP = "stop"
    RELOAD = "reload"
    RESCAN = "rescan"


@dataclass(frozen=True, slots=True)
class _Settle:
    """A lane found a file changing while it sent it: wait for it to hold still."""

    path: Path


class Service:
    """Build with a settings file; ``run()`` blocks until stopped and returns the exit code."""

    def __init__(
        self,
        settings_path: Path,
        *,
        environ: Mapping[str, str],
        polling: bool = False,
        install_signals: bool = True,
        on_finished: FinishedFn | None = None,
    ) -> None:
        """``on_finished`` hears about every file a lane finishes (from the lane's thread)."""
        self._settings_path = settings_path
        self.settings = load_service_settings(settings_path)
        self._environ = environ
        self._polling = polling
        self._install_signals = install_signals
        # SimpleQueue, not Queue: signal handlers put into it from the main thread, possibly
        # while that thread is inside get(); Queue's lock would deadlock there (seen as a
        # service that ignored SIGTERM after a SIGHUP), SimpleQueue's put is reentrant.
        self._inbox: queue.SimpleQueue[FileSystemEvent | _Signal | _Settle] = queue.SimpleQueue()
        self._lanes: dict[str, Lane] = {}
        self._unknown_companies: set[str] = set()
        self._systemd = SystemdNotifier(environ)
        self._metrics: Metrics | None = None
        self._announcer: Announcer | None = None  # completion e-mails
        self._ledgers: Ledgers | None = None  # every thread's ledger, while running
        self._on_finished = on_finished
        self.ready = threading.Event()  # set after the first scan
        self.sftp: SftpEndpoint | None = None
        self._known_hashes = KnownHashes()
        self._live: ServiceView | None = None  # the lanes as `status` last saw them

    # -- control, from any thread or a signal handler ------------------------------------

    def request_stop(self) -> None:
        self._inbox.put(_Signal.STOP)

    def request_reload(self) -> None:
        self._inbox.put(_Signal.RELOAD)

    def request_rescan(self) -> None:
        self._inbox.put(_Signal.RESCAN)

    # -- the service thread --------------------------------------------------------------

    def run(self) -> int:
        settings = self.settings
        if not settings.drop_root.is_dir():
            raise ConfigError(
                f"drop_root {settings.drop_root} is not a directory; create it (owned by the "
                "service user) or correct drop_root in " + str(self._settings_path)
            )
        try:
            settings.state_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StateUnwritable.from_os_error(settings.state_dir, exc) from None
        with state_dir_lock(settings.state_dir / LOCK_NAME):
            return self._run_locked()

    def _run_locked(self) -> int:
        settings = self.settings
        self._ledgers = open_ledgers(settings.state_dir)
        ledger = self._open_ledger()
        self._connections = Connections()  # what every lane's connection shares
        if settings.metrics_port:
            self._metrics = Metrics()
            self._metrics.serve(settings.metrics_host, settings.metrics_port)
            log.info("metrics_serving", host=settings.metrics_host, port=settings.metrics_port)
        if self._install_signals:
            self._handle_signals()
        announcer = self._announcer = Announcer(
            settings.state_dir,
            settings.notify,
            self._environ,
            lambda: self.settings.companies,  # the settings in force, after any reload
            self._open_ledger,
        )
        announcer.start(ledger)
        for company in settings.companies.values():
            if company.enabled:
                self._start_lane(company.name)
        observer: Watcher = (
            PollingWatcher()
            if self._polling
            else TreeWatcher(settings.drop_root, self._inbox.put, self.request_rescan)
        ).start()
        if settings.sftp is not None:
            self.sftp = SftpEndpoint(
                settings.sftp,
                settings.drop_root,
                settings.state_dir,
                on_upload=self._uploaded,
                busy=self._busy,
                results=self._results,
                status=self._company_status,
            ).start()
        readiness = Readiness(settings.quiet_period, observer.reports_close)
        discovery = Discovery(settings.drop_root, readiness)
        try:
            self._loop(ledger, discovery, observer)
        finally:
            self._systemd.notify(STOPPING="1", STATUS="stopping: finishing batches in flight")
            if self.sftp is not None:
                self.sftp.stop()
            observer.stop()
            for lane in self._lanes.values():
                lane.stop()
            for lane in self._lanes.values():
                if not lane.join(timeout=settings.api.read_timeout + 5):
                    log.error("lane_did_not_stop", company=lane.name)
            observer.join(timeout=5)
            announcer.stop()
            with contextlib.suppress(OSError):  # it would describe a service no longer there
                (settings.state_dir / LIVE_NAME).unlink(missing_ok=True)
            ledger.close()
            self._ledgers.close()
            log.info("service_stopped")
        return 0

    def _open_ledger(self) -> Ledger:
        assert self._ledgers is not None, "opened in _run_locked"
        return self._ledgers()

    def _loop(self, ledger: Ledger, discovery: Discovery, observer: Watcher) -> None:
        settings = self.settings
        now = time.monotonic()
        seen = discovery.scan(now=now)
        self._route(ledger, discovery.due(now), discovery)
        log.info(
            "service_ready",
            drop_root=str(settings.drop_root),
            companies=sorted(self._lanes),
            files_seen=seen,
            observer=type(observer).__name__,
        )
        self.ready.set()
        self._systemd.notify(READY="1", STATUS=self._status(discovery))
        # Without watches (polling), a bounded scan every poll interval finds the files.
        rescan_every = settings.rescan_interval
        if isinstance(observer, PollingWatcher):
            rescan_every = min(rescan_every, observer.poll_interval)
        next_rescan, next_announce = now + rescan_every, now + settings.rescan_interval
        next_sweep = now
        next_ping = next_live = now
        ping_every = self._systemd.watchdog_interval
        tick = min(TICK, settings.quiet_period / 4)
        while True:
            now = time.monotonic()
            wake_at = min(
                next_rescan,
                next_announce,
                next_sweep,
                next_live,
                next_ping if ping_every else next_rescan,
            )
            if discovery.readiness.waiting:
                wake_at = min(wake_at, now + tick)
            try:
                item = self._inbox.get(timeout=max(0.0, wake_at - now))
            except queue.Empty:
                item = None
            now = time.monotonic()
            if item is _Signal.STOP:
                log.info("service_stopping")
                return
            if item is _Signal.RELOAD:
                self._reload(discovery)
                next_rescan = now  # new companies' files are found at once
            elif item is _Signal.RESCAN:
                next_rescan = next_announce = now
            elif isinstance(item, _Settle):
                discovery.readiness.settle(str(item.path), stat_of(str(item.path)), now)
            elif item is not None:
                self._route(ledger, discovery.on_event(item, now), discovery)
            self._route(ledger, discovery.due(now), discovery)
            if now >= next_rescan:
                discovery.scan(now=now)
                self._route(ledger, discovery.due(now), discovery)
                next_rescan = now + rescan_every
            if now >= next_announce and self._announcer is not None:
                self._announcer.announce_missed(ledger)
                next_announce = now + settings.rescan_interval
            if now >= next_sweep:
                try:
                    sweep(ledger, self.settings.retention_days, time.time())
                except LedgerError as exc:  # the lanes say so loudly; try again next time
                    log.warning("retention_skipped", reason=str(exc))
                next_sweep = now + settings.sweep_interval
            if ping_every and now >= next_ping:
                self._ping(discovery, observer)
                next_ping = now + ping_every
            if now >= next_live:
                self._publish_live(discovery)
                self._release_approved(ledger, discovery)
                next_live = now + LIVE_EVERY

    def _release_approved(self, ledger: Ledger, discovery: Discovery) -> None:
        """Quarantined files the operator approved (``ingestor approve``, another process):
        their lanes take them now."""
        try:
            approved = ledger.approved_waiting()
        except LedgerError:
            return  # the lanes say so loudly
        found = [discovery.found(run.identity.path) for run in approved]
        # (a lane takes a file it already holds only once: see Lane.submit)
        self._route(ledger, [f for f in found if f is not None], discovery)

    def _publish_live(self, discovery: Discovery) -> None:
        """Keep the lanes' snapshot for `ingestor status` current (written when it changes)."""
        view = self._view(discovery)
        if view != self._live:
            write_live(self.settings.state_dir / LIVE_NAME, view)
            self._live = view

    def _view(self, discovery: Discovery) -> ServiceView:
        return ServiceView(
            [lane.view() for lane in self._lanes.values()], discovery.readiness.waiting
        )

    def _status(self, discovery: Discovery) -> str:
        return self._view(discovery).summary()

    def _ping(self, discovery: Discovery, observer: Watcher) -> None:
        """WATCHDOG=1 only while every part is alive: a dead lane or observer gets us
        restarted by systemd rather than silently idle."""
        dead = [lane.name for lane in self._lanes.values() if not lane.alive]
        if not observer.is_alive():
            dead.append("observer")
        if dead:
            log.error("service_unhealthy", dead=dead)
            self._systemd.notify(STATUS=f"unhealthy: {', '.join(dead)} stopped")
            return
        self._systemd.notify(WATCHDOG="1", STATUS=self._status(discovery))

    def _route(self, ledger: Ledger, found: list[Found], discovery: Discovery) -> None:
        for item in found:
            if item.kind is FoundKind.CONFIG:
                # Its folder's files (rejected for the old config, say) get another look;
                # files still being uploaded keep waiting for their close.
                discovery.scan(item.path.parent)
                continue
            company = item.placed.company
            lane = self._lanes.get(company)
            if lane is None:
                if company not in self._unknown_companies:
                    self._unknown_companies.add(company)
                    log.warning(
                        "unknown_company",
                        company=company,
                        file=str(item.path),
                        fix=f"add [companies.{company}] to {self._settings_path}",
                    )
                continue
            try:
                if self._already_handled(ledger, item):
                    continue
            except LedgerError as exc:  # the lane finds out for itself, and waits
                log.warning("ledger_unavailable", reason=str(exc), file=str(item.path))
            lane.submit(item)

    @staticmethod
    def _already_handled(ledger: Ledger, item: Found) -> bool:
        """Done, or rejected with nothing changed since: no need to look again. Failed and
        interrupted files are retried; a rejected file is, once its config.json is newer."""
        p = item.placed
        run = ledger.latest(p.company, p.kind, p.folder, item.path.name)
        if run is None or run.state in (FileState.FAILED, FileState.PROCESSING):
            return False
        current = stat_of(str(item.path))  # never through a link
        if current is None:
            return True
        if not same_version(current, run.identity):
            return False
        if run.state is FileState.QUARANTINED:  # until approved, by either means
            return not run.approved and not _newer(
                item.path.with_name(item.path.name + APPROVE_SUFFIX), 0.0
            )
        if run.state is FileState.REJECTED and item.kind is FoundKind.DATA:
            # Looked at again once its config.json or its manifest is newer.
            manifest = item.path.with_name(item.path.name + MANIFEST_SUFFIX)
            since = run.finished_at or 0
            return not (_newer(item.path.parent / CONFIG_NAME, since) or _newer(manifest, since))
        return True

    def _uploaded(self, temporary: Path, final: Path, sha: str | None) -> None:
        """An SFTP upload is in place: hand it over now (whatever the observer sees), with
        the hash the endpoint computed as the bytes arrived."""
        if sha is not None:
            info = final.stat()
            self._known_hashes.put(final, info.st_size, info.st_mtime_ns, sha)
        self._inbox.put(FileMovedEvent(str(temporary), str(final)))

    def _results(self, company: str, kind: str, folder: str) -> dict[str, Path]:
        """An import folder's reports and rejected-rows files, by the names the company
        sees under ``_results/`` (``pets.csv.v2.report.json``); asked by an SFTP session."""
        assert self._ledgers is not None
        ledger = self._ledgers()
        try:
            runs = ledger.runs(company=company)
        finally:
            ledger.close()
        found: dict[str, Path] = {}
        for run in runs:
            i = run.identity
            if (i.kind, i.folder) != (kind, folder):
                continue
            stem = f"{i.name}.v{run.version}"
            for suffix, path in ((".report.json", run.report_path),
                                 (".rejected.jsonl", run.rejects_path)):  # fmt: skip
                if path and os.path.isfile(path):
                    found[stem + suffix] = Path(path)
        return found

    def _company_status(self, company: str) -> bytes:
        """A company's ``/_status.json``: its part of what ``ingestor status`` shows."""
        assert self._ledgers is not None
        ledger = self._ledgers()
        try:
            view = service_status(ledger, time.time(), self._live)
        finally:
            ledger.close()
        return company_status(view, company, self.settings.drop_root, time.time())

    def _busy(self, path: Path) -> bool:
        """Whether a file is queued or being processed (SFTP refuses to delete it then),
        asked of its company's lane: the lanes, not the ledger, know what they hold."""
        try:
            company = path.relative_to(self.settings.drop_root).parts[0]
        except (ValueError, IndexError):
            return False
        lane = self._lanes.get(company)
        return lane is not None and lane.holds(path)

    def _file_finished(self, finished: Finished) -> None:
        """From a lane's thread: tell the people (never raising), then the hook."""
        try:
            if self._announcer is not None:
                self._announcer.file_finished(finished)
        finally:
            if self._on_finished:
                self._on_finished(finished)

    def _start_lane(self, name: str) -> None:
        lane = Lane(
            self.settings.companies[name],
            self.settings,
            self._open_ledger,
            metrics=self._metrics,
            environ=self._environ,
            connections=self._connections,
            on_finished=self._file_finished,
            known_hashes=self._known_hashes,
            on_changed=lambda path: self._inbox.put(_Settle(path)),
        )
        self._lanes[name] = lane
        lane.start()

    def _reload(self, discovery: Discovery) -> None:
        """SIGHUP: new companies start, changed ones take effect from their next file,
        removed ones stop after the batch in flight (their files wait for them)."""
        self._systemd.notify(
            RELOADING="1", MONOTONIC_USEC=str(time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000)
        )
        try:
            fresh = load_service_settings(self._settings_path)
        except ConfigError as exc:
            log.error("reload_failed", reason=str(exc), keeping="the settings in use")
            self._systemd.notify(READY="1", STATUS=self._status(discovery))
            return
        old = self.settings
        for key in ("drop_root", "state_dir", "metrics_port", "metrics_host"):
            if getattr(fresh, key) != getattr(old, key):
                log.warning("reload_needs_restart", setting=key, kept=str(getattr(old, key)))
        fresh = _keep_fixed(fresh, old)
        self.settings = fresh
        if self.sftp is not None and fresh.sftp is not None:
            self.sftp.settings = replace(
                fresh.sftp, host=self.sftp.settings.host, port=self.sftp.settings.port
            )
        discovery.readiness.quiet_period = fresh.quiet_period
        for name, lane in list(self._lanes.items()):
            company = fresh.companies.get(name)
            if company is None or not company.enabled:
                lane.stop()
                del self._lanes[name]
                log.info("company_removed", company=name)
            else:
                lane.update(company, fresh)
        for name, company in fresh.companies.items():
            if company.enabled and name not in self._lanes:
                self._start_lane(name)
                log.info("company_added", company=name)
        self._unknown_companies.clear()
        log.info("settings_reloaded", companies=sorted(self._lanes))
        self._systemd.notify(READY="1", STATUS=self._status(discovery))

    def _handle_signals(self) -> None:
        def stop(_signum: int, _frame: FrameType | None) -> None:
            self.request_stop()

        def reload(_signum: int, _frame: FrameType | None) -> None:
            self.request_reload()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGHUP, reload)


def _keep_fixed(fresh: ServiceSettings, old: ServiceSettings) -> ServiceSettings:
    """Settings that only a restart can change keep their running values."""
    return replace(
        fresh,
        drop_root=old.drop_root,
        state_dir=old.state_dir,
        metrics_port=old.metrics_port,
        metrics_host=old.metrics_host,
    )


def _newer(path: Path, since: float) -> bool:
    """Whether ``path`` (not followed if a link) exists and was changed after ``since``."""
    try:
        return os.lstat(path).st_mtime > since
    except OSError:
        return False
