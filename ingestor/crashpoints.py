"""Crash points: named moments where a test can make this process kill itself with SIGKILL,
to prove that a crash at exactly the worst time loses nothing.

Armed only through the environment, read once at the edge (``ingestor``'s main calls
``arm``), e.g. ``INGESTOR_CRASH_AT=batch.acknowledged:3`` kills the process the 3rd time it
reaches that point (several points: comma-separated). Unarmed, which is always the case in
production, a point costs one truth test of an empty dict.
"""

from __future__ import annotations

import os
import signal
import threading

ENV = "INGESTOR_CRASH_AT"

POINTS = {
    "batch.parsed": "a batch is packed, not sent yet (parsing is mid-file)",
    "batch.acknowledged": "the API accepted a batch, its checkpoint is not written yet",
    "rejects.unsynced": "a skipped row is written to the rejects file, not yet synced",
    "ledger.statement": "a ledger SQL statement is executing (SQLite's progress handler)",
    "report.unrenamed": "a report is written to its temporary file, not renamed into place",
    "report.unrecorded": "a report is in place, the ledger does not say the file is done",
    "email.unqueued": "a file is done in the ledger, its e-mail not queued yet",
    "email.unrecorded": "an e-mail is queued, the ledger does not say it was",
}


def _parse(spec: str) -> dict[str, int]:
    armed: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, _, count = part.partition(":")
        if name not in POINTS:
            raise ValueError(f"{ENV}: unknown crash point {name!r}; known: {', '.join(POINTS)}")
        armed[name] = int(count or "1")
    return armed


_armed: dict[str, int] = {}
_lock = threading.Lock()


def arm(spec: str) -> None:
    """Arm the points named in ``spec`` (the value of INGESTOR_CRASH_AT); "" arms none."""
    with _lock:
        _armed.clear()
        _armed.update(_parse(spec))


def armed(name: str) -> bool:
    return name in _armed


def reached(name: str) -> None:
    """Count a pass through ``name``; on the armed count, SIGKILL this process."""
    if not _armed or name not in _armed:
        return
    with _lock:
        _armed[name] -= 1
        if _armed[name] == 0:
            os.kill(os.getpid(), signal.SIGKILL)
