"""Turning finished files into messages: one per file, or one per folder run (digest), queued
in the outbox and handed to the courier. Called from lane threads; never blocks on SMTP."""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from email.utils import parseaddr
from pathlib import Path

import structlog

from ingestor import crashpoints
from ingestor.notify.message import DEFAULT_ATTACH_MAX, compose
from ingestor.notify.outbox import Outbox
from ingestor.notify.smtp import Courier, SmtpSettings
from ingestor.reports import FileReport, folder_label
from ingestor.toml_reader import knob, non_negative, positive

log = structlog.get_logger("ingestor.notify")

DEFAULT_SENDER = "ingestor <ingestor@localhost>"


_EMAIL = re.compile(r"[^@\s<>]+@[^@\s<>.][^@\s<>]*")


def address_problem(address: str) -> str | None:
    """Why ``address`` (a bare address) is not an e-mail address, or None."""
    return None if _EMAIL.fullmatch(address) else f"{address!r} is not an e-mail address"


def mailbox_problem(value: str) -> str | None:
    """Why ``value`` (``Name <address>`` or a bare address) is not a mailbox, or None."""
    return None if address_problem(parseaddr(value)[1]) is None else address_problem(value)


@dataclass(frozen=True, slots=True)
class NotifySettings:
    """The [notify] table."""

    sender: str = knob(
        DEFAULT_SENDER, "the From: of every e-mail", key="from", check=mailbox_problem
    )
    attach_max_bytes: int = knob(
        DEFAULT_ATTACH_MAX,
        "the rejected-rows file is attached when under this size",
        check=positive,
    )
    digest: bool = knob(False, "default for companies: one e-mail per folder run instead")
    # A folder run of at least this many files is e-mailed as one digest, whatever the
    # company's digest setting: 10,000 files must not mean 10,000 e-mails.
    digest_after_files: int = knob(
        20, "a folder run of this many files is one digest anyway", check=positive
    )
    # A lane queues a finished file's e-mail within milliseconds; one still unannounced after
    # this long was missed (the outbox could not be written) and is tried again at a rescan.
    announce_grace: float = knob(
        60.0,
        "an e-mail still unqueued after this is retried at a rescan",
        key="announce_grace_seconds",
        check=non_negative,
    )
    smtp: SmtpSettings | None = None  # None: messages are written to the outbox only


Settled = Callable[[list[FileReport]], None]


class Notifier:
    """``on_settled`` is told which reports are dealt with: their message is queued durably,
    or there is nobody to send it to. Until then a report's run stays unannounced in the
    ledger, so a crash in between cannot lose an e-mail (it may, rarely, repeat one)."""

    def __init__(
        self,
        state_dir: Path,
        settings: NotifySettings,
        environ: Mapping[str, str],
        on_settled: Settled | None = None,
    ) -> None:
        self.settings = settings
        self._on_settled = on_settled
        self.outbox = Outbox(state_dir / "outbox", queued=settings.smtp is not None)
        self._courier = (
            Courier(self.outbox, settings.smtp, environ) if settings.smtp is not None else None
        )
        self._lock = threading.Lock()
        # (company, folder) → the reports held for one digest, and whom it goes to
        self._digests: dict[tuple[str, str], tuple[list[FileReport], tuple[str, ...]]] = {}

    def start(self) -> None:
        if self._courier:
            self._courier.start()

    def stop(self) -> None:
        """Send what digests hold, then stop the courier (queued messages wait on disk)."""
        with self._lock:
            held = list(self._digests.items())
            self._digests.clear()
        for (company, _folder), (reports, recipients) in held:
            self._queue(company, reports, recipients)
        if self._courier:
            self._courier.stop()

    def send(self, reports: list[FileReport], recipients: tuple[str, ...]) -> Path | None:
        """Queue one message about ``reports`` (all of one company); return where it is."""
        if not reports:
            return None
        return self._queue(reports[0].company, reports, recipients)

    def file_finished(
        self,
        report: FileReport,
        recipients: tuple[str, ...],
        digest: bool,
        folder_drained: bool,
    ) -> Path | None:
        """A file is finished. In digest mode its report waits until its folder's run ends
        (``folder_drained``: no more of the folder's files are queued)."""
        crashpoints.reached("email.unqueued")
        if not recipients:
            log.debug("email_skipped_no_recipients", company=report.company)
            self._settled([report])
            return None
        if not digest:
            return self._queue(report.company, [report], recipients)
        key = (report.company, report.folder)
        with self._lock:
            held, _ = self._digests.get(key, ([], recipients))
            held.append(report)
            self._digests[key] = (held, recipients)  # the latest settings' recipients
            if not folder_drained:
                return None
            reports, _ = self._digests.pop(key)
        return self._queue(key[0], reports, recipients)

    def folder_drained(self, company: str, folder: str) -> Path | None:
        """The folder's run has ended: send the digest it holds, if any."""
        with self._lock:
            held = self._digests.pop((company, folder), None)
        if held is None:
            return None
        reports, recipients = held
        return self._queue(company, reports, recipients)

    def holding(self) -> set[int]:
        """Runs whose reports wait in a digest."""
        with self._lock:
            return {r.run_id for held, _ in self._digests.values() for r in held}

    def _settled(self, reports: list[FileReport]) -> None:
        if self._on_settled:
            self._on_settled(reports)

    def _queue(self, company: str, reports: list[FileReport], recipients: tuple[str, ...]) -> Path:
        clean = reports
        message = compose(
            clean,
            sender=self.settings.sender,
            recipients=recipients,
            attach_max_bytes=self.settings.attach_max_bytes,
        )
        folder = folder_label(clean[0].folder, clean[0].kind)
        label = f"{company}-{folder}-{clean[0].file if len(clean) == 1 else 'digest'}"
        path = self.outbox.put(message, label)
        log.info("email_queued", company=company, message=path.name, files=len(clean))
        crashpoints.reached("email.unrecorded")
        self._settled(clean)
        if self._courier:
            self._courier.wake()
        return path
