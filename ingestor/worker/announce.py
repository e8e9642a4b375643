"""Telling each person once: the one owner of completion e-mails and of their bookkeeping.

A lane only reports facts (a ``Finished``); this decides what is said and to whom: one
message per file or a digest per folder run; nothing for a failure already told (the same
run failing for the same reason again, remembered in the ledger as the run's ``told``, so a
restart does not repeat it) or for a folder whose broken config.json was already told; and
at start and at each rescan, the e-mails a crash or a full outbox left unsent. A finished
file's run stays "unannounced" in the ledger until its message is durably in the outbox (or
there is nobody to tell), so a kill in between repeats an e-mail at worst, never loses one.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import structlog

from ingestor.errors import LayoutError, LedgerError, StateUnwritable
from ingestor.ledger import FileRun, FileState, Ledger
from ingestor.notify.notifier import Notifier, NotifySettings
from ingestor.pipeline import FileResult
from ingestor.reports import FileReport
from ingestor.service_config import CompanySettings
from ingestor.worker.lane import Finished

log = structlog.get_logger("ingestor.announce")


class Announcer:
    """Completion e-mails for a service. ``companies`` gives the settings in force (they
    change on reload); ``open_ledger`` a ledger connection for this thread's bookkeeping."""

    def __init__(
        self,
        state_dir: Path,
        settings: NotifySettings,
        environ: Mapping[str, str],
        companies: Callable[[], Mapping[str, CompanySettings]],
        open_ledger: Callable[[], Ledger],
    ) -> None:
        self.settings = settings
        self._companies = companies
        self._open_ledger = open_ledger
        self._notifier = Notifier(state_dir, settings, environ, on_settled=self._announced)
        # (company, kind, folder) → the config.json problem told. Used from the lanes and
        # the rescan; each use is one dict operation (atomic), and a race costs one e-mail.
        self._folder_problems: dict[tuple[str, str, str], str] = {}

    def start(self, ledger: Ledger) -> None:
        """Start delivering, and e-mail whatever the last process left unsent."""
        self._notifier.start()
        self.announce_missed(ledger, everything=True)

    def stop(self) -> None:
        self._notifier.stop()

    def file_finished(self, finished: Finished) -> None:
        """From a lane's thread: tell the company's people about its finished file(s), once
        (never raising: e-mail must never stop ingestion)."""
        company = self._companies().get(finished.company)
        files = finished.result.files
        if not finished.announce or company is None:
            self._mark_announced([file.run.id for file in files])  # nothing (new) to say
            return
        news: list[FileResult] = []
        old: list[FileResult] = []
        held = self._notifier.holding()
        for file in files:
            (news if self._is_news(file.run, held) else old).append(file)
        self._mark_announced([file.run.id for file in old])
        for file in news:
            report = file.report.report if file.report else FileReport.load(file.run.report_path)
            if report is None:
                log.warning("report_missing", company=company.name, run=file.run.id)
                self._mark_announced([file.run.id])
                continue
            self._queue(company, report, finished.digest)
        if finished.folder_drained and files:
            with self._guard(company.name):
                self._notifier.folder_drained(company.name, files[-1].run.identity.folder)

    def _is_news(self, run: FileRun, held: set[int]) -> bool:
        """Is there something to tell about this run? Not when it failed again just as it
        did when last told or is in a digest being ``held``, nor when its folder's
        config.json is broken in a way already told for another file of the folder. A run
        that went through clears its folder."""
        folder = (run.identity.company, run.identity.kind, run.identity.folder)
        if run.state is FileState.DONE:
            self._folder_problems.pop(folder, None)
            return True
        if (run.told and run.told == run.reason) or run.id in held:
            return False
        if run.reason_code == LayoutError.code:
            if self._folder_problems.get(folder) == run.reason:
                return False
            self._folder_problems[folder] = run.reason
            log.warning(
                "folder_not_processed",
                company=run.identity.company,
                folder=run.identity.folder,
                reason=run.reason,
                fix="correct config.json in place; waiting files are processed then",
            )
        return True

    def _queue(self, company: CompanySettings, report: FileReport, digest: bool) -> None:
        with self._guard(company.name, report.run_id):
            self._notifier.file_finished(report, company.recipients, digest, folder_drained=False)

    @contextlib.contextmanager
    def _guard(self, company: str, run: int | None = None) -> Iterator[None]:
        try:
            yield
        except StateUnwritable as exc:  # retried at each rescan until it can be written
            log.error("email_not_queued", company=company, run=run, reason=str(exc))
        except Exception:  # e-mail must never stop ingestion
            log.exception("email_not_queued", company=company, run=run)

    def announce_missed(self, ledger: Ledger, everything: bool = False) -> None:
        """E-mail the files that finished while no message got queued (the process died in
        between, or the outbox could not be written), grouped by folder so a digest company
        still gets one message a folder. Unless ``everything`` (at start), files that
        finished within ``announce_grace_seconds`` are left to the lane announcing them right
        now; digests being held are left alone too."""
        finished_before = None if everything else time.time() - self.settings.announce_grace
        try:
            runs = ledger.unannounced()
        except LedgerError as exc:
            log.warning("announcements_unchecked", reason=str(exc))
            return
        held = self._notifier.holding()
        by_folder: dict[tuple[str, str], list[FileReport]] = {}
        dropped: list[int] = []
        for run in runs:
            if run.id in held or (
                finished_before is not None and (run.finished_at or 0) >= finished_before
            ):
                continue
            if not self._is_news(run, held):
                dropped.append(run.id)
                continue
            company = self._companies().get(run.identity.company)
            report = FileReport.load(run.report_path)
            if company is None or report is None:
                log.warning(
                    "announcement_dropped",
                    company=run.identity.company,
                    run=run.id,
                    reason="company no longer configured" if company is None else "no report",
                )
                dropped.append(run.id)
                continue
            by_folder.setdefault((company.name, run.identity.folder), []).append(report)
        self._mark_announced(dropped)
        for (name, _folder), reports in by_folder.items():
            company = self._companies()[name]
            log.info("announcing_missed", company=name, files=len(reports))
            try:
                for index, report in enumerate(reports):
                    self._notifier.file_finished(
                        report,
                        company.recipients,
                        company.digest,
                        folder_drained=index == len(reports) - 1,
                    )
            except StateUnwritable as exc:
                log.error("email_not_queued", company=name, reason=str(exc))

    def _announced(self, reports: list[FileReport]) -> None:
        self._mark_announced([r.run_id for r in reports])

    def _mark_announced(self, run_ids: list[int]) -> None:
        if not run_ids:
            return
        ledger = self._open_ledger()
        try:
            ledger.mark_announced(run_ids)
        except LedgerError as exc:  # the e-mail may be repeated after a restart; no more
            log.warning("announcement_not_recorded", runs=run_ids, reason=str(exc))
        finally:
            ledger.close()
