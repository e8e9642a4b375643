"""Durable state behind a small interface: SQLite now, PostgreSQL for shared workers later."""

from ingestor.ledger.base import FileIdentity, FileRun, FileState, Ledger
from ingestor.ledger.sqlite import SqliteLedger

__all__ = ["FileIdentity", "FileRun", "FileState", "Ledger", "SqliteLedger"]
