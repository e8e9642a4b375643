"""Durable state behind a small interface: SQLite now, PostgreSQL for shared workers later."""

from pathlib import Path

from ingestor.errors import ConfigError
from ingestor.ledger.base import FileIdentity, FileRun, FileState, ImportJob, Ledger, Ledgers
from ingestor.ledger.sqlite import SqliteLedger, SqliteLedgers

LEDGER_NAME = "ledger.sqlite3"  # inside the state directory


def open_ledger(state_dir: Path) -> SqliteLedger:
    """The ledger of a state directory, created if it is new (for commands that ingest)."""
    return SqliteLedger(state_dir / LEDGER_NAME)


def open_ledgers(state_dir: Path) -> Ledgers:
    """Ledgers of a state directory for the threads of one process (the service's lanes),
    created if it is new."""
    return SqliteLedgers(state_dir / LEDGER_NAME)


def open_existing_ledger(state_dir: Path) -> SqliteLedger:
    """The ledger of a state directory that must already hold one, opened read-only (for
    commands that only read: a mistyped path must not quietly become a new, empty state
    directory, and a reader never changes what a running service wrote)."""
    path = state_dir / LEDGER_NAME
    if not path.is_file():
        what = "does not exist" if not state_dir.exists() else "holds no ledger"
        raise ConfigError(
            f"{state_dir} {what}: give the service's state_dir (--state-dir DIR), or its "
            "settings file (--config FILE)"
        )
    return SqliteLedger(path, read_only=True)


__all__ = [
    "LEDGER_NAME",
    "FileIdentity",
    "FileRun",
    "FileState",
    "ImportJob",
    "Ledger",
    "Ledgers",
    "SqliteLedger",
    "open_existing_ledger",
    "open_ledger",
    "open_ledgers",
]
