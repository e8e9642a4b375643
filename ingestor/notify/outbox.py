"""The outbox: messages as ``.eml`` files in the state directory, written atomically.

With SMTP configured, ``pending/`` is the delivery queue (it survives restarts), ``sent/``
holds what the server accepted (moved there the moment it did, so it is never sent again)
and ``failed/`` what the server refused for good. Without SMTP, messages are written to the
outbox itself and stay there for a person or another tool to pick up.
"""

from __future__ import annotations

import contextlib
import os
import time
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path

from ingestor.errors import StateUnwritable
from ingestor.reports import safe_name


class Outbox:
    def __init__(self, root: Path, queued: bool) -> None:
        self.root = root
        self.queued = queued
        self.inbox = root / "pending" if queued else root
        for directory in (self.inbox, *((root / "sent", root / "failed") if queued else ())):
            directory.mkdir(parents=True, exist_ok=True)

    def put(self, message: EmailMessage, label: str, sent: bool = False) -> Path:
        """Store a message (fsynced, then renamed into place) in the queue, or with
        ``sent`` among the delivered ones; return its path."""
        name = f"{time.time_ns()}-{safe_name(label, 100)}.eml"
        directory = self.root / "sent" if sent and self.queued else self.inbox
        final = directory / name
        temporary = directory / f".{name}.tmp"
        try:
            with temporary.open("wb") as handle:
                handle.write(message.as_bytes(policy=SMTP))
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, final)
            _sync_dir(directory)
        except OSError as exc:
            with contextlib.suppress(OSError):
                temporary.unlink(missing_ok=True)
            raise StateUnwritable.from_os_error(final, exc) from None
        return final

    def pending(self) -> list[Path]:
        """Queued messages, oldest first."""
        if not self.queued:
            return []
        return sorted(p for p in self.inbox.glob("*.eml"))

    def mark_sent(self, path: Path) -> Path:
        return self._move(path, "sent")

    def mark_failed(self, path: Path) -> Path:
        return self._move(path, "failed")

    def _move(self, path: Path, where: str) -> Path:
        target = self.root / where / path.name
        os.replace(path, target)
        _sync_dir(target.parent)
        return target


def _sync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
