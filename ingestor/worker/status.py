"""What ``ingestor status --config`` shows: the ledger (read-only, safe while the service runs)
and the running service's own snapshot of its lanes (``LIVE_NAME`` in the state dir), which
is also where the files waiting in the lanes come from: the lanes, not the ledger, know."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

import orjson

from ingestor.ledger import FileRun, FileState, Ledger
from ingestor.worker.lane import LaneView

DAY = 86400.0
LIVE_NAME = "service-status.json"


@dataclass(frozen=True, slots=True)
class QueuedFile:
    """A file a lane holds, ready and not started yet."""

    company: str
    path: str
    queued_at: float


@dataclass(frozen=True, slots=True)
class StatusView:
    in_flight: list[FileRun]
    queued: list[QueuedFile]
    done: list[FileRun]  # finished in the last 24 h
    failed: list[FileRun]  # failed or rejected, latest version of each file


def records_per_second(run: FileRun, now: float) -> float:
    """The run's average send rate since it started (or resumed from the start)."""
    end = run.finished_at or now
    elapsed = end - run.started_at
    return run.counts.sent / elapsed if elapsed > 0 else 0.0


def service_status(ledger: Ledger, now: float, live: ServiceView | None = None) -> StatusView:
    """The ledger's runs, and what the running service's lanes hold (``live``; none when
    the service is not running)."""
    runs = ledger.runs()
    latest: dict[tuple[str, str, str, str], FileRun] = {}
    for run in runs:  # newest first: the first seen of each file is its latest version
        i = run.identity
        latest.setdefault((i.company, i.kind, i.folder, i.name), run)
    current = list(latest.values())
    return StatusView(
        in_flight=[r for r in current if r.state is FileState.PROCESSING],
        queued=sorted(
            (
                QueuedFile(lane.company, path, at)
                for lane in (live.lanes if live else [])
                for path, at in lane.waiting
            ),
            key=lambda q: q.queued_at,
        ),
        done=[
            r
            for r in runs
            if r.state is FileState.DONE and r.finished_at and r.finished_at >= now - DAY
        ],
        failed=[
            r
            for r in current
            if r.state in (FileState.FAILED, FileState.REJECTED, FileState.QUARANTINED)
        ],
    )


@dataclass(frozen=True, slots=True)
class ServiceView:
    lanes: list[LaneView]
    waiting_uploads: int

    def summary(self) -> str:
        busy = sum(1 for lane in self.lanes if lane.current)
        queued = sum(lane.queued for lane in self.lanes)
        sent = sum(lane.records_sent for lane in self.lanes)
        blocked = [lane.company for lane in self.lanes if lane.blocked]
        throttled = [
            f"{lane.company} ({lane.throttled_for:.0f} s)"
            for lane in self.lanes
            if lane.throttled_for >= 1
        ]
        text = (
            f"{len(self.lanes)} companies; {busy} files in flight, {queued} queued, "
            f"{self.waiting_uploads} uploads in progress; {sent:,} records sent"
        )
        text += f"; blocked: {', '.join(blocked)}" if blocked else ""
        return text + (f"; throttled: {', '.join(throttled)}" if throttled else "")


def write_live(path: Path, view: ServiceView) -> None:
    """Replace the snapshot atomically; best effort (a full state dir is reported elsewhere)."""
    # orjson writes the dataclasses itself: dataclasses.asdict (a deep copy, in Python)
    # took 1% of the worker's GIL time at 500 lanes, once a second.
    data = {"waiting_uploads": view.waiting_uploads, "lanes": view.lanes}
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        temporary.write_bytes(orjson.dumps(data))
        os.replace(temporary, path)
    except OSError:
        with contextlib.suppress(OSError):
            temporary.unlink(missing_ok=True)


def read_live(path: Path) -> ServiceView | None:
    """The running service's last snapshot, or None if there is none to read."""
    try:
        data = orjson.loads(path.read_bytes())
        lanes = [
            LaneView(**{**lane, "waiting": [tuple(w) for w in lane.get("waiting", [])]})
            for lane in data["lanes"]
        ]
        return ServiceView(lanes, data["waiting_uploads"])
    except (OSError, orjson.JSONDecodeError, KeyError, TypeError):
        return None


def _company_path(run: FileRun) -> str:
    """Where the file is in the company's own view of its tree (never a server path)."""
    i = run.identity
    return "/" + "/".join(p for p in ("imports", i.kind, i.folder, i.name) if p)


def _run_entry(run: FileRun) -> dict[str, object]:
    entry: dict[str, object] = {
        "file": _company_path(run),
        "version": run.version,
        "state": run.state.value,
        "read": run.counts.read,
        "sent": run.counts.sent,
        "skipped": run.counts.skipped,
    }
    if run.state is FileState.PROCESSING:
        entry["bytes_done"], entry["size"] = run.offset, run.identity.size
    if run.reason:
        entry["reason"] = run.reason
    if run.finished_at:
        entry["finished_at"] = run.finished_at
    return entry


def company_status(view: StatusView, company: str, drop_root: Path, now: float) -> bytes:
    """``/_status.json`` as a company reads it over SFTP: its files queued, in flight (with
    progress), done in the last 24 hours, failed or rejected, and quarantined."""
    root = drop_root / company
    mine = [r for r in view.failed if r.identity.company == company]
    queued = []
    for item in view.queued:
        if item.company == company:
            with contextlib.suppress(ValueError):
                relative = Path(item.path).relative_to(root)
                queued.append({"file": f"/{relative.as_posix()}", "queued_at": item.queued_at})
    data = {
        "company": company,
        "generated_at": now,
        "queued": queued,
        "in_flight": [_run_entry(r) for r in view.in_flight if r.identity.company == company],
        "done": [_run_entry(r) for r in view.done if r.identity.company == company],
        "failed": [_run_entry(r) for r in mine if r.state is not FileState.QUARANTINED],
        "quarantined": [_run_entry(r) for r in mine if r.state is FileState.QUARANTINED],
    }
    return orjson.dumps(data, option=orjson.OPT_INDENT_2)
