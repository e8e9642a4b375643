"""The retention sweep: processed files and their reports go after a set age (Klaviyo: 30 days).

Only what the ledger knows as finished (done or rejected) is deleted, and a data file only if
it is still the very version that was processed (same size and mtime, not a symlink). Failed
files stay for an operator to look at. Ledger rows are kept: they are the history.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import structlog

from ingestor.discovery import stat_of
from ingestor.identity import same_version
from ingestor.ledger import FileState, Ledger

log = structlog.get_logger("ingestor.retention")

DAY = 86400.0


@dataclass(slots=True)
class SweepResult:
    data_files: list[Path] = field(default_factory=list)
    reports: list[Path] = field(default_factory=list)


def sweep(ledger: Ledger, max_age_days: float, now: float) -> SweepResult:
    """Delete finished files and reports older than ``max_age_days``; log each deletion."""
    result = SweepResult()
    cutoff = now - max_age_days * DAY
    runs = ledger.unswept(finished_before=cutoff)
    for run in runs:
        if run.state not in (FileState.DONE, FileState.REJECTED) or run.finished_at is None:
            continue
        identity = run.identity
        age_days = round((now - run.finished_at) / DAY, 1)
        latest = ledger.latest(identity.company, identity.kind, identity.folder, identity.name)
        path = Path(identity.path)
        is_latest = latest is not None and latest.id == run.id
        unchanged = same_version(stat_of(str(path)), identity)
        if is_latest and unchanged and _unlink(path):
            result.data_files.append(path)
            log.info(
                "retention_deleted_file",
                company=identity.company,
                folder=identity.folder,
                file=identity.name,
                age_days=age_days,
            )
        for extra in (run.report_path, run.rejects_path):
            if extra and _unlink(Path(extra)):
                result.reports.append(Path(extra))
                log.info(
                    "retention_deleted_report",
                    company=identity.company,
                    report=extra,
                    age_days=age_days,
                )
    ledger.mark_swept([run.id for run in runs])  # each run is looked at once
    return result


def _unlink(path: Path) -> bool:
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    except OSError as exc:
        log.warning("retention_cannot_delete", path=str(path), reason=exc.strerror or str(exc))
        return False
    return True
