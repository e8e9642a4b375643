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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


def run_stem(run: FileRun) -> str:
    ident = run.identity
    return f"{run.id:06d}-{safe_name(ident.folder, 40)}-{safe_name(ident.name)}-v{run.version}"


class RejectsFile:
    """Append-only JSONL of skipped rows, resumable at a checkpointed size."""

    def __init__(self, path: Path, resume_at: int) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._handle = path.open("ab")
            self._handle.truncate(resume_at)  # what a crash left past the checkpoint
            self._handle.seek(resume_at)
        except OSError as exc:
            raise StateUnwritable.from_os_error(path, exc) from None

    def write(self, reject: Reject) -> None:
        try:
            self._handle.write(
                orjson.dumps(
                    {"line": reject.line, "reason": reject.reason, "raw": reject.raw},
                    option=orjson.OPT_APPEND_NEWLINE,
                )
            )
        except OSError as exc:
            raise StateUnwritable.from_os_error(self.path, exc) from None
        if crashpoints.armed("rejects.unsynced"):
            self._handle.flush()  # so the crash leaves bytes past the checkpoint on disk
            crashpoints.reached("rejects.unsynced")

    def sync(self) -> int:
        """Flush to disk; return the size to checkpoint."""
        try:
            self._handle.flush()
            os.fsync(self._handle.fileno())
        except OSError as exc:
            raise StateUnwritable.from_os_error(self.path, exc) from None
        return self._handle.tell()

    def close(self) -> None:
        """Close; rows not yet synced may be lost, and need not be: they lie past the
        checkpoint, so a resume writes them again."""
        with contextlib.suppress(OSError):
            self._handle.close()


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


@dataclass(frozen=True, slots=True)
class Report:
    path: Path
    data: dict[str, Any]


def write_report(
    run: FileRun, state_dir: Path, *, ignored: tuple[str, ...] = (), samples: int = 20
) -> Report:
    """Write the run's JSON report next to its rejects file (atomically) and return it."""
    ident = run.identity
    counts = run.counts
    finished = run.finished_at or run.updated_at
    duration = max(0.0, finished - run.started_at)
    data: dict[str, Any] = {
        "run_id": run.id,
        "company": ident.company,
        "kind": ident.kind,
        "folder": ident.folder,
        "file": ident.name,
        "path": ident.path,
        "size": ident.size,
        "sha256": ident.sha256,
        "version": run.version,
        "data_source_id": run.target_id,
        "state": run.state.value,
        "reason": run.reason,
        "started_at": run.started_at,
        "finished_at": finished,
        "duration_seconds": round(duration, 3),
        "records_read": counts.read,
        "records_sent": counts.sent,
        "records_skipped": counts.skipped,
        "batches": counts.batches,
        "retries": counts.retries,
        "throttled_seconds": round(counts.throttled_seconds, 3),
        "records_per_second": round(counts.sent / duration, 1) if duration > 0 else None,
        "skipped_samples": first_rejects(run.rejects_path, samples),
        "rejected_rows_file": run.rejects_path if counts.skipped else "",
        "ignored_files": list(ignored),
    }
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
    return Report(path, data)
