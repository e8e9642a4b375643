"""Durable state behind a small interface: SQLite now, PostgreSQL for shared workers later."""

from ingestor.ledger.base import FileIdentity, FileRun, FileState, Ledger, QueuedFile
from ingestor.ledger.sqlite import SqliteLedger

LEDGER_NAME = "ledger.sqlite3"  # inside the state directory

__all__ = [
    "LEDGER_NAME",
    "FileIdentity",
    "FileRun",
    "FileState",
    "Ledger",
    "QueuedFile",
    "SqliteLedger",
]
