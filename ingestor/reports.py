"""Per-file reports in the state dir (never in the drop folder).

- ``<run>.rejected.jsonl``: one line per skipped row: line number, reason, the raw row text.
  It is appended as rows are skipped; the ledger checkpoints its size, and a resume truncates
  it back to that size, so a crash never duplicates or loses a line.
- ``<run>.report.json``: the file's outcome and counts, with the first skip reasons.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from ingestor import crashpoints
from ingestor.errors import StateUnwritable
from ingestor.ledger import FileRun
from ingestor.records import Reject

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(name: str, limit: int = 80) -> str:
    """A file-system-safe rendering of an untrusted name, for report file names."""
    return (_UNSAFE.sub("_", name).strip("._") or "file")[:limit]


def report_dir(state_dir: Path, company: str) -> Path:
    return state_dir / "reports" / safe_name(company)


def folder_label(folder: str, kind: str) -> str:
    """How a file's folder is named everywhere a person sees it (report and e-mail file
    names, subject, body): the import folder, or for a file put directly under a kind's
    folder, that folder (``custom_objects``)."""
    return folder or kind


def run_stem(run: FileRun) -> str:
    ident = run.identity
    folder = safe_name(folder_label(ident.folder, ident.kind), 40)
    return f"{run.id:06d}-{folder}-{safe_name(ident.name)}-v{run.version}"


class RejectsFile:
    """Append-only JSONL of skipped rows, resumable at a checkpointed size. The file exists
    only once a row has been skipped."""

    def __init__(self, path: Path, resume_at: int) -> None:
        self.path = path
        self._handle: BinaryIO | None = None
        self._size = resume_at
        try:
            if resume_at or path.exists():
                self._open().truncate(resume_at)  # what a crash left past the checkpoint
        except OSError as exc:
            raise StateUnwritable.from_os_error(path, exc) from None

    def _open(self) -> BinaryIO:
        if self._handle is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._handle = self.path.open("ab")
            self._handle.seek(self._size)
        return self._handle

    def write(self, reject: Reject) -> None:
        try:
            handle = self._open()
            handle.write(
                orjson.dumps(
                    {"line": reject.line, "reason": reject.reason, "raw": reject.raw},
                    option=orjson.OPT_APPEND_NEWLINE,
                )
            )
        except OSError as exc:
            raise StateUnwritable.from_os_error(self.path, exc) from None
        if crashpoints.armed("rejects.unsynced"):
            handle.flush()  # so the crash leaves bytes past the checkpoint on disk
            crashpoints.reached("rejects.unsynced")

    def sync(self) -> int:
        """Flush to disk; return the size to checkpoint."""
        if self._handle is None:
            return self._size
        try:
            self._handle.flush()
            os.fsync(self._handle.fileno())
        except OSError as exc:
            raise StateUnwritable.from_os_error(self.path, exc) from None
        self._size = self._handle.tell()
        return self._size

    def close(self) -> None:
        """Close; rows not yet synced may be lost, and need not be: they lie past the
        checkpoint, so a resume writes them again. An empty file is not left behind."""
        if self._handle is None:
            return
        with contextlib.suppress(OSError):
            empty = self._handle.tell() == 0
            self._handle.close()
            if empty:
                self.path.unlink(missing_ok=True)


def first_rejects(path: str, limit: int) -> list[dict[str, Any]]:
    """The first ``limit`` skipped rows recorded in a rejects file."""
    if not path or not os.path.exists(path):
        return []
    found: list[dict[str, Any]] = []
    with open(path, "rb") as handle:
        for line in handle:
            if len(found) >= limit:
                break
            found.append(orjson.loads(line))
    return found


REPORT_SCHEMA = 2  # the "schema" of a report file; bump with any change of its fields


@dataclass(frozen=True, slots=True)
class FileReport:
    """One file's outcome, as written to ``<id>-<folder>-<file>-v<n>.report.json`` and read
    back by the e-mails and ``ingestor report``: written and loaded only here."""

    run_id: int
    company: str
    kind: str
    folder: str
    file: str
    path: str
    size: int
    sha256: str
    version: int
    data_source_id: str
    state: str
    reason: str
    reason_code: str
    started_at: float
    finished_at: float
    duration_seconds: float
    records_read: int
    records_sent: int
    records_skipped: int
    batches: int
    retries: int
    throttled_seconds: float
    records_maybe_resent: int
    records_per_second: float | None
    skipped_samples: tuple[dict[str, Any], ...]
    rejected_rows_file: str
    ignored_files: tuple[str, ...]
    # How the file was read (format, encoding, delimiter...); {} if it was not read.
    read_as: dict[str, str] = field(default_factory=dict)
    schema: int = REPORT_SCHEMA

    def as_dict(self) -> dict[str, Any]:
        data = {name: getattr(self, name) for name in self.__dataclass_fields__}
        data["skipped_samples"] = list(self.skipped_samples)
        data["ignored_files"] = list(self.ignored_files)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FileReport:
        """A report as stored; fields a report from an older release lacks take their
        neutral value."""
        defaults: dict[str, Any] = {
            "run_id": 0,
            "reason_code": "",
            "records_maybe_resent": 0,
            "kind": "custom_objects",
            "read_as": {},
            "schema": REPORT_SCHEMA,
        }
        values = {**defaults, **{k: v for k, v in data.items() if k in cls.__dataclass_fields__}}
        values["skipped_samples"] = tuple(values.get("skipped_samples") or ())
        values["ignored_files"] = tuple(values.get("ignored_files") or ())
        return cls(**values)

    @classmethod
    def load(cls, path: str) -> FileReport | None:
        """The report at ``path``, or None if there is none to read."""
        try:
            return cls.from_dict(orjson.loads(Path(path).read_bytes()))
        except (OSError, orjson.JSONDecodeError, TypeError, AttributeError):
            return None


@dataclass(frozen=True, slots=True)
class Report:
    path: Path
    report: FileReport

    @property
    def data(self) -> dict[str, Any]:
        return self.report.as_dict()


def write_report(
    run: FileRun,
    state_dir: Path,
    *,
    ignored: tuple[str, ...] = (),
    samples: int = 20,
    read_as: dict[str, str] | None = None,
) -> Report:
    """Write the run's JSON report next to its rejects file (atomically) and return it."""
    ident = run.identity
    counts = run.counts
    finished = run.finished_at or run.updated_at
    duration = max(0.0, finished - run.started_at)
    report = FileReport(
        run_id=run.id,
        company=ident.company,
        kind=ident.kind,
        folder=ident.folder,
        file=ident.name,
        path=ident.path,
        size=ident.size,
        sha256=ident.sha256,
        version=run.version,
        data_source_id=run.target_id,
        state=run.state.value,
        reason=run.reason,
        reason_code=run.reason_code,
        started_at=run.started_at,
        finished_at=finished,
        duration_seconds=round(duration, 3),
        records_read=counts.read,
        records_sent=counts.sent,
        records_skipped=counts.skipped,
        batches=counts.batches,
        retries=counts.retries,
        throttled_seconds=round(counts.throttled_seconds, 3),
        records_maybe_resent=counts.maybe_resent,
        records_per_second=round(counts.sent / duration, 1) if duration > 0 else None,
        # In line order (a profile import's refusals come after the rows skipped locally).
        skipped_samples=tuple(
            sorted(first_rejects(run.rejects_path, samples), key=lambda s: s["line"])
        ),
        rejected_rows_file=run.rejects_path if counts.skipped else "",
        ignored_files=ignored,
        read_as=read_as or {},
    )
    data = report.as_dict()
    directory = report_dir(state_dir, ident.company)
    path = directory / f"{run_stem(run)}.report.json"
    temporary = path.with_suffix(".tmp")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        temporary.write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2))
        crashpoints.reached("report.unrenamed")
        os.replace(temporary, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            temporary.unlink(missing_ok=True)
        raise StateUnwritable.from_os_error(path, exc) from None
    return Report(path, report)
