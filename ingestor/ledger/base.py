"""The ledger's interface and value types.

A file version is identified by (company, kind, folder, name, sha256). The ledger is the only
place that remembers: what each version's state is, and the checkpoint (byte offset and line
after the last acknowledged batch, plus the rejected-rows file's size at that moment) from
which an interrupted version resumes.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Protocol

from ingestor.records import FileCounts


class FileState(enum.StrEnum):
    PROCESSING = "processing"
    DONE = "done"
    FAILED = "failed"  # stopped with its place kept (auth, unreadable, systemic refusal)
    REJECTED = "rejected"  # not processed: bad config.json, unknown data source, bad header
    QUARANTINED = "quarantined"  # over its error budget: nothing sent until approved


@dataclass(frozen=True, slots=True)
class FileIdentity:
    company: str
    kind: str
    folder: str
    name: str
    path: str
    size: int
    mtime_ns: int
    sha256: str


@dataclass(slots=True)
class FileRun:
    """One version of one file, and how far it got."""

    id: int
    identity: FileIdentity
    version: int
    state: FileState
    target_id: str = ""
    offset: int = 0
    line: int = 0
    rejects_bytes: int = 0
    counts: FileCounts = field(default_factory=FileCounts)
    reason: str = ""
    reason_code: str = ""  # stable: what ended the run (ingestor.errors' codes), "" if done
    told: str = ""  # the reason last e-mailed about this run ("" for done, or never told)
    approved: bool = False  # quarantined, and released to be sent as if within budget
    report_path: str = ""
    rejects_path: str = ""
    started_at: float = 0.0
    updated_at: float = 0.0
    finished_at: float | None = None


@dataclass(frozen=True, slots=True)
class ImportJob:
    """An asynchronous import job a run's accepted request created, and how far reading its
    outcome got: ``rejects_at`` is the rejects file's size when its errors began to be
    written (None before), ``done`` once they are written and checkpointed."""

    id: int
    run_id: int
    job_id: str
    lines: list[int]  # the line of each record of the request, in request order
    rejects_at: int | None = None
    done: bool = False
    failed: int = 0  # records the job refused


class Ledger(Protocol):
    """What the worker needs from durable state: the protocol a second backend (PostgreSQL,
    shared by several workers) implements. Nothing outside ``ledger/`` knows the backend.

    Guarantees: each call is atomic; a call that returns has made its change durable (a
    ``checkpoint`` or ``finish`` that returned survives a kill -9 or a power cut); readers in
    other processes see every change that has returned. A failure raises LedgerError
    (StateUnwritable when the storage cannot be written), never a backend's own error.
    """

    def latest(self, company: str, kind: str, folder: str, name: str) -> FileRun | None:
        """The newest version recorded for this file name, if any."""

    def register(self, identity: FileIdentity) -> FileRun:
        """The run for this content: the latest version if its sha256 matches, else a new one."""

    def start(self, run_id: int, target_id: str, rejects_path: str) -> FileRun:
        """Mark a run as processing (keeping its checkpoint) and return it."""

    def checkpoint(
        self, run_id: int, offset: int, line: int, rejects_bytes: int, counts: FileCounts
    ) -> None:
        """Record progress after an acknowledged batch."""

    def finish(
        self,
        run_id: int,
        state: FileState,
        counts: FileCounts,
        reason: str,
        report_path: str,
        reason_code: str = "",
    ) -> None:
        """Record a run's final state; it is then unannounced until marked."""

    def add_job(self, run_id: int, job_id: str, lines: list[int]) -> None:
        """Remember an import job an accepted request created (before that batch's
        checkpoint: a job is never forgotten, though a batch re-sent after a crash may
        make a second one for the same lines)."""

    def jobs(self, run_id: int) -> list[ImportJob]:
        """The run's import jobs, oldest first."""

    def forget_unsent_jobs(self, run_id: int, line: int) -> None:
        """Forget the run's unread jobs for records after ``line`` (its checkpoint): their
        batch was accepted but not checkpointed, so a resume sends it again and records the
        job that makes; the first would refuse the same records a second time."""

    def job_reading(self, row_id: int, rejects_at: int) -> None:
        """The job's errors are about to be appended to the rejects file, now this long."""

    def job_done(self, row_id: int, failed: int) -> None:
        """The job's errors are written and checkpointed."""

    def approve(self, run_id: int) -> bool:
        """Release a quarantined run (True if it is one, now approved)."""

    def approved_waiting(self) -> list[FileRun]:
        """Quarantined runs approved and not yet sent."""

    def get(self, run_id: int) -> FileRun | None: ...

    def runs(
        self,
        company: str | None = None,
        since: float | None = None,
        finished_before: float | None = None,
    ) -> list[FileRun]:
        """Runs, newest first, optionally for one company, updated since a time, or
        finished before one."""

    def unannounced(self) -> list[FileRun]:
        """Finished runs nobody has been told about yet (e.g. the process died between
        finishing a file and queueing its e-mail), oldest first."""

    def mark_announced(self, run_ids: list[int]) -> None:
        """The runs' e-mails are queued durably (or there is nothing to send); each run's
        reason is remembered as ``told``, so the same failure again is not news."""

    def unswept(self, finished_before: float) -> list[FileRun]:
        """Runs finished before a time that the retention sweep has not dealt with yet."""

    def mark_swept(self, run_ids: list[int]) -> None:
        """The sweep has dealt with these runs; it will not look at them again."""

    def close(self) -> None: ...

    def __enter__(self) -> Ledger: ...

    def __exit__(self, *exc: object) -> None: ...


class Ledgers(Protocol):
    """Ledgers for the threads of one process, sharing what a backend can share (SQLite:
    one writer that commits many threads' writes together; PostgreSQL: a connection pool).
    Each thread calls it for a ledger of its own; ``close()`` once every one is closed."""

    def __call__(self) -> Ledger: ...

    def close(self) -> None: ...
