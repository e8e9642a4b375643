"""The ledger on SQLite (WAL, synchronous=FULL): a checkpoint that returned is on disk.

The threads of one process (``SqliteLedgers``) write through one connection that commits
what they wrote in the meantime together (a group commit), the group's checkpoints as one
statement: 500 lanes each checkpointing once a second made 500 transactions and fsyncs a
second, and SQLite's busy handler made the losers of each race for the write lock sleep 1
to 100 ms. Each write still returns only once it is committed.
"""

from __future__ import annotations

import errno
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from ingestor import crashpoints
from ingestor.errors import LedgerError, StateUnwritable, state_problem
from ingestor.ledger.base import FileIdentity, FileRun, FileState, ImportJob
from ingestor.records import FileCounts

# The schema is built by numbered migrations, each applied once and recorded in
# ledger_migrations, in one transaction with its record. A ledger from before the table
# existed had the schema up to migration 2 in some state; those two are written so that they
# are no-ops on whatever part of it is already there.
_BASE = """
CREATE TABLE IF NOT EXISTS file_runs (
    id INTEGER PRIMARY KEY,
    company TEXT NOT NULL, kind TEXT NOT NULL, folder TEXT NOT NULL, name TEXT NOT NULL,
    path TEXT NOT NULL, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, sha256 TEXT NOT NULL,
    version INTEGER NOT NULL, state TEXT NOT NULL, target_id TEXT NOT NULL DEFAULT '',
    byte_offset INTEGER NOT NULL DEFAULT 0, line INTEGER NOT NULL DEFAULT 0,
    rejects_bytes INTEGER NOT NULL DEFAULT 0,
    records_read INTEGER NOT NULL DEFAULT 0, records_sent INTEGER NOT NULL DEFAULT 0,
    records_skipped INTEGER NOT NULL DEFAULT 0, batches INTEGER NOT NULL DEFAULT 0,
    retries INTEGER NOT NULL DEFAULT 0, throttled_seconds REAL NOT NULL DEFAULT 0,
    reason TEXT NOT NULL DEFAULT '', report_path TEXT NOT NULL DEFAULT '',
    rejects_path TEXT NOT NULL DEFAULT '',
    started_at REAL NOT NULL, updated_at REAL NOT NULL, finished_at REAL,
    UNIQUE (company, kind, folder, name, version)
);
CREATE INDEX IF NOT EXISTS file_runs_updated ON file_runs (updated_at);
"""


def _add_column(db: sqlite3.Connection, column: str, definition: str) -> None:
    present = {row[1] for row in db.execute("PRAGMA table_info(file_runs)")}
    if column not in present:
        db.execute(f"ALTER TABLE file_runs ADD COLUMN {column} {definition}")


def _m1_base(db: sqlite3.Connection) -> None:
    for statement in filter(str.strip, _BASE.split(";")):
        db.execute(statement)


def _m2_announced_and_swept(db: sqlite3.Connection) -> None:
    _add_column(db, "announced", "INTEGER NOT NULL DEFAULT 1")
    _add_column(db, "swept", "INTEGER NOT NULL DEFAULT 0")
    db.execute(
        "CREATE INDEX IF NOT EXISTS file_runs_unannounced ON file_runs (id) WHERE announced=0"
    )
    db.execute(
        "CREATE INDEX IF NOT EXISTS file_runs_unswept ON file_runs (finished_at) WHERE swept=0"
    )


def _m3_maybe_resent(db: sqlite3.Connection) -> None:
    db.execute("ALTER TABLE file_runs ADD COLUMN maybe_resent INTEGER NOT NULL DEFAULT 0")


def _m4_reason_code(db: sqlite3.Connection) -> None:
    db.execute("ALTER TABLE file_runs ADD COLUMN reason_code TEXT NOT NULL DEFAULT ''")


def _m5_no_queue_mirror(db: sqlite3.Connection) -> None:
    # What waits in the lanes is the lanes' to say (status reads the running service).
    db.execute("DROP TABLE IF EXISTS queued_files")


def _m6_told(db: sqlite3.Connection) -> None:
    # The reason last e-mailed about a run: the same failure again is not news, even after a
    # restart. Runs announced before this column existed told their reason.
    db.execute("ALTER TABLE file_runs ADD COLUMN told TEXT NOT NULL DEFAULT ''")
    db.execute("UPDATE file_runs SET told=reason WHERE announced=1")


def _m7_import_jobs(db: sqlite3.Connection) -> None:
    # The asynchronous import jobs a run's accepted requests created (profiles), each with
    # the line of every record it holds, until its errors are read back to those lines.
    db.execute(
        "CREATE TABLE IF NOT EXISTS import_jobs (id INTEGER PRIMARY KEY, "
        "run_id INTEGER NOT NULL, job_id TEXT NOT NULL, lines TEXT NOT NULL, "
        "rejects_at INTEGER, done INTEGER NOT NULL DEFAULT 0, failed INTEGER NOT NULL DEFAULT 0)"
    )
    db.execute("CREATE INDEX IF NOT EXISTS import_jobs_run ON import_jobs (run_id)")


def _m8_approved(db: sqlite3.Connection) -> None:
    # A quarantined run someone approved: it is sent as if it had been within its budget.
    db.execute("ALTER TABLE file_runs ADD COLUMN approved INTEGER NOT NULL DEFAULT 0")
    # The service asks for approved quarantined runs every second: never a table scan.
    db.execute("CREATE INDEX file_runs_approved ON file_runs (id) WHERE approved=1")


MIGRATIONS = (
    _m1_base,
    _m2_announced_and_swept,
    _m3_maybe_resent,
    _m4_reason_code,
    _m5_no_queue_mirror,
    _m6_told,
    _m7_import_jobs,
    _m8_approved,
)


def _migrate(db: sqlite3.Connection, read_only: bool) -> None:
    """Apply the migrations this ledger has not had, each in its own transaction."""
    tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    done = 0
    if "ledger_migrations" in tables:
        done = db.execute("SELECT COALESCE(MAX(version), 0) FROM ledger_migrations").fetchone()[0]
    if done >= len(MIGRATIONS):
        return
    if read_only:
        raise LedgerError(
            "the ledger was written by an older ingestor; start the service (or run an "
            "ingest) once to bring it up to date, then look again"
        )
    db.execute(
        "CREATE TABLE IF NOT EXISTS ledger_migrations (version INTEGER PRIMARY KEY, "
        "applied_at REAL NOT NULL)"
    )
    for version, migration in enumerate(MIGRATIONS[done:], start=done + 1):
        db.execute("BEGIN IMMEDIATE")  # one process at a time; another may have been first
        try:
            if db.execute("SELECT 1 FROM ledger_migrations WHERE version=?", (version,)).fetchone():
                db.execute("COMMIT")
                continue
            migration(db)
            db.execute(
                "INSERT INTO ledger_migrations (version, applied_at) VALUES (?, ?)",
                (version, time.time()),
            )
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")


_COLUMNS = (
    "id, company, kind, folder, name, path, size, mtime_ns, sha256, version, state, target_id, "
    "byte_offset, line, rejects_bytes, records_read, records_sent, records_skipped, batches, "
    "retries, throttled_seconds, reason, report_path, rejects_path, started_at, updated_at, "
    "finished_at, maybe_resent, reason_code, told, approved"
)


_COUNTS_SET = (
    "records_read=?, records_sent=?, records_skipped=?, batches=?, retries=?, "
    "throttled_seconds=?, maybe_resent=?"
)


def _counts_values(c: FileCounts) -> tuple[int, int, int, int, int, float, int]:
    return (c.read, c.sent, c.skipped, c.batches, c.retries, c.throttled_seconds, c.maybe_resent)


# SQLite's primary result codes that mean the state directory, not the ledger, is at fault.
_STATE_CODES = {
    sqlite3.SQLITE_FULL: errno.ENOSPC,
    sqlite3.SQLITE_READONLY: errno.EROFS,
    sqlite3.SQLITE_PERM: errno.EACCES,
    sqlite3.SQLITE_CANTOPEN: None,
    sqlite3.SQLITE_IOERR: None,
}


def _ledger_error(doing: str, exc: sqlite3.Error) -> LedgerError:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None and code & 0xFF in _STATE_CODES:
        return StateUnwritable(state_problem(doing, _STATE_CODES[code & 0xFF], str(exc)))
    if code is not None and code & 0xFF in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB):
        return LedgerError(
            f"{doing}: {exc}: the ledger is damaged. Stop the service, move the file (and its "
            "-wal and -shm) aside and restore a backup; with no backup, a new ledger treats "
            "every file in the drop tree as new and sends it again"
        )
    return LedgerError(f"{doing}: {exc}")


def _crash_point() -> int:
    crashpoints.reached("ledger.statement")
    return 0  # go on with the statement


def _run(row: tuple[Any, ...]) -> FileRun:
    (
        id_,
        company,
        kind,
        folder,
        name,
        path,
        size,
        mtime_ns,
        sha,
        version,
        state,
        target,
        offset,
        line,
        rejects_bytes,
        read,
        sent,
        skipped,
        batches,
        retries,
        throttled,
        reason,
        report,
        rejects_path,
        started,
        updated,
        finished,
        maybe_resent,
        reason_code,
        told,
        approved,
    ) = row
    return FileRun(
        id=id_,
        identity=FileIdentity(company, kind, folder, name, path, size, mtime_ns, sha),
        version=version,
        state=FileState(state),
        target_id=target,
        offset=offset,
        line=line,
        rejects_bytes=rejects_bytes,
        counts=FileCounts(read, sent, skipped, batches, retries, throttled, maybe_resent),
        reason=reason,
        reason_code=reason_code,
        told=told,
        approved=bool(approved),
        report_path=report,
        rejects_path=rejects_path,
        started_at=started,
        updated_at=updated,
        finished_at=finished,
    )


def _connect(path: Path) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, timeout=30.0, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    if crashpoints.armed("ledger.statement"):
        db.set_progress_handler(_crash_point, 1)  # every VM step
    return db


_CHECKPOINT_SET = (
    "byte_offset", "line", "rejects_bytes", "records_read", "records_sent", "records_skipped",
    "batches", "retries", "throttled_seconds", "maybe_resent", "updated_at",
)  # fmt: skip
_CHECKPOINT = (
    f"UPDATE file_runs SET {', '.join(f'{column}=?' for column in _CHECKPOINT_SET)} WHERE id=?"
)


def _checkpoints(writes: list[_Write]) -> tuple[str, tuple[Any, ...]]:
    """Several runs' checkpoints as one statement (each write's arguments are those of
    ``_CHECKPOINT``: the columns, then the run's id)."""
    width = len(_CHECKPOINT_SET) + 1
    values = ",".join(["(" + ",".join("?" * width) + ")"] * len(writes))
    assignments = ", ".join(f"{c}=v.column{i}" for i, c in enumerate(_CHECKPOINT_SET, 1))
    sql = (
        f"UPDATE file_runs SET {assignments} FROM (VALUES {values}) AS v "
        f"WHERE file_runs.id=v.column{width}"
    )
    return sql, tuple(arg for write in writes for arg in write.args)


@dataclass(slots=True)
class _Write:
    sql: str
    args: tuple[Any, ...]
    done: bool = False  # its group's turn is over
    committed: bool = False
    rowid: int | None = None
    error: sqlite3.Error | None = None


class _Writer:
    """One connection's writes, committed in groups: a writer that finds the connection
    free commits every write queued by then in one transaction, while the others wait for
    the turn it holds; a waiter whose write went in that group finds it done and returns.
    A statement that fails is retried alone, so it fails only its own write.

    The waiters wake one at a time, as the turn passes. Waking a whole group at once (each
    waiting on a lock of its own) was tried: hundreds of threads runnable at once, all
    wanting the GIL, made the worker 1.6 times slower (bench/fleet_bench.py, 500 lanes)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db
        self._turn = threading.Lock()  # whoever holds it commits
        self._mutex = threading.Lock()  # guards the queue
        self._queue: list[_Write] = []

    def write(self, sql: str, args: tuple[Any, ...]) -> int | None:
        """Run one statement; when it returns, it is committed. Its lastrowid."""
        write = _Write(sql, args)
        with self._mutex:
            self._queue.append(write)
        with self._turn:
            if not write.done:
                with self._mutex:
                    group, self._queue = self._queue, []
                try:
                    self._commit(group)
                finally:
                    for each in group:
                        each.done = True
        if write.error is not None:
            raise write.error
        if not write.committed:  # the thread committing its group was interrupted
            raise sqlite3.OperationalError("interrupted before it was committed")
        return write.rowid

    def _commit(self, group: list[_Write]) -> None:
        if self._db.in_transaction:  # left open by an interrupted turn
            self._db.execute("ROLLBACK")
        if len(group) > 1:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                checkpoints = [write for write in group if write.sql is _CHECKPOINT]
                if len(checkpoints) > 1:  # one statement: each releases and retakes the GIL
                    self._db.execute(*_checkpoints(checkpoints))
                for write in group:
                    if write.sql is not _CHECKPOINT or len(checkpoints) == 1:
                        write.rowid = self._db.execute(write.sql, write.args).lastrowid
                self._db.execute("COMMIT")
            except sqlite3.Error:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
            else:
                for write in group:
                    write.committed = True
                return
        for write in group:  # alone, or each alone after the group failed
            try:
                write.rowid = self._db.execute(write.sql, write.args).lastrowid
                write.committed = True
            except sqlite3.Error as exc:
                write.error = exc

    def close(self) -> None:
        """Once the group being committed, if any, is."""
        with self._turn:
            self._db.close()


class _Reader:
    """One connection's reads, one at a time, each fetched whole while it has the turn."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db
        self._turn = threading.Lock()

    def rows(self, sql: str, args: tuple[Any, ...]) -> list[Any]:
        with self._turn:
            return self._db.execute(sql, args).fetchall()

    def close(self) -> None:
        with self._turn:
            self._db.close()


class SqliteLedgers:
    """Ledgers on one SQLite file for the threads of one process, writing through one
    shared connection (see the module's docstring) and reading through another: a
    connection is about 160 KB (SQLite's lookaside, schema and statement caches), 78 MB
    for 500 lanes with one each, and a lane reads only as a file starts and ends.
    ``close()`` once they are all done."""

    def __init__(self, path: Path) -> None:
        self.path = path
        ledger = SqliteLedger(path)  # creates or upgrades the file before anyone writes
        self._writer = ledger._writer
        try:
            self._reader = _Reader(_connect(path))
        except sqlite3.Error as exc:
            self._writer.close()
            raise _ledger_error(f"opening the ledger {path}", exc) from None
        except OSError as exc:
            self._writer.close()
            raise StateUnwritable.from_os_error(path, exc) from None

    def __call__(self) -> SqliteLedger:
        return SqliteLedger(self.path, shared=(self._writer, self._reader))

    def close(self) -> None:
        self._writer.close()
        self._reader.close()


class SqliteLedger:
    """Ledger on one SQLite file; safe to share between threads of one process and to read
    from other processes (``ingestor status``) while a worker writes."""

    def __init__(
        self,
        path: Path,
        read_only: bool = False,
        shared: tuple[_Writer, _Reader] | None = None,
    ) -> None:
        """``read_only``: a reader's connection (``status``, ``report``): it never writes,
        not even a schema upgrade. ``shared``: the writer and reader of ``SqliteLedgers``,
        whose connections it uses; by default the ledger has a connection of its own."""
        self.path = path
        self._shared = shared is not None
        if shared is not None:
            self._writer, self._reader = shared
            return
        try:
            if read_only:
                self._db = sqlite3.connect(
                    f"{path.resolve().as_uri()}?mode=ro",
                    uri=True,
                    timeout=30.0,
                    isolation_level=None,
                    check_same_thread=False,
                )
            else:
                self._db = _connect(path)
            _migrate(self._db, read_only)
        except sqlite3.Error as exc:
            raise _ledger_error(f"opening the ledger {path}", exc) from None
        except OSError as exc:
            raise StateUnwritable.from_os_error(path, exc) from None
        self._writer, self._reader = _Writer(self._db), _Reader(self._db)

    def __repr__(self) -> str:
        return f"SqliteLedger({str(self.path)!r})"

    def close(self) -> None:
        if not self._shared:  # else SqliteLedgers closes what they share
            self._writer.close()

    def __enter__(self) -> SqliteLedger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _one(self, sql: str, args: tuple[Any, ...]) -> FileRun | None:
        rows = self._rows(sql, args)
        return _run(rows[0]) if rows else None

    def _rows(self, sql: str, args: tuple[Any, ...] = ()) -> list[Any]:
        """A read's rows, all of them."""
        try:
            return self._reader.rows(sql, args)
        except sqlite3.Error as exc:
            raise _ledger_error(f"using the ledger {self.path}", exc) from None

    def _write(self, sql: str, args: tuple[Any, ...]) -> int | None:
        """A write, committed when it returns; its lastrowid."""
        try:
            return self._writer.write(sql, args)
        except sqlite3.Error as exc:
            raise _ledger_error(f"writing the ledger {self.path}", exc) from None

    def latest(self, company: str, kind: str, folder: str, name: str) -> FileRun | None:
        return self._one(
            f"SELECT {_COLUMNS} FROM file_runs WHERE company=? AND kind=? AND folder=? AND name=? "
            "ORDER BY version DESC LIMIT 1",
            (company, kind, folder, name),
        )

    def register(self, identity: FileIdentity) -> FileRun:
        i = identity
        latest = self.latest(i.company, i.kind, i.folder, i.name)
        now = time.time()
        if latest is not None and latest.identity.sha256 == i.sha256:
            self._write(
                "UPDATE file_runs SET path=?, size=?, mtime_ns=? WHERE id=?",
                (i.path, i.size, i.mtime_ns, latest.id),
            )
            latest.identity = identity
            return latest
        version = latest.version + 1 if latest else 1
        run_id = self._write(
            "INSERT INTO file_runs (company, kind, folder, name, path, size, mtime_ns, sha256, "
            "version, state, started_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                i.company,
                i.kind,
                i.folder,
                i.name,
                i.path,
                i.size,
                i.mtime_ns,
                i.sha256,
                version,
                FileState.PROCESSING.value,
                now,
                now,
            ),
        )
        assert run_id is not None
        return FileRun(
            run_id, identity, version, FileState.PROCESSING, started_at=now, updated_at=now
        )

    def start(self, run_id: int, target_id: str, rejects_path: str) -> FileRun:
        now = time.time()
        self._write(
            "UPDATE file_runs SET state=?, target_id=?, rejects_path=?, reason='', reason_code='', "
            "finished_at=NULL, updated_at=?, "
            "started_at=CASE WHEN byte_offset=0 THEN ? ELSE started_at END WHERE id=?",
            (FileState.PROCESSING.value, target_id, rejects_path, now, now, run_id),
        )
        run = self.get(run_id)
        if run is None:
            raise LedgerError(f"ledger {self.path}: no run {run_id}")
        return run

    def checkpoint(
        self, run_id: int, offset: int, line: int, rejects_bytes: int, counts: FileCounts
    ) -> None:
        c = counts
        self._write(
            _CHECKPOINT,
            (
                offset, line, rejects_bytes, c.read, c.sent, c.skipped, c.batches, c.retries,
                c.throttled_seconds, c.maybe_resent, time.time(), run_id,
            ),
        )  # fmt: skip

    def finish(
        self,
        run_id: int,
        state: FileState,
        counts: FileCounts,
        reason: str,
        report_path: str,
        reason_code: str = "",
    ) -> None:
        now = time.time()
        self._write(
            f"UPDATE file_runs SET state=?, reason=?, reason_code=?, report_path=?, "
            f"{_COUNTS_SET}, updated_at=?, finished_at=?, announced=0 WHERE id=?",
            (
                state.value,
                reason,
                reason_code,
                report_path,
                *_counts_values(counts),
                now,
                now,
                run_id,
            ),
        )

    def add_job(self, run_id: int, job_id: str, lines: list[int]) -> None:
        self._write(
            "INSERT INTO import_jobs (run_id, job_id, lines) VALUES (?,?,?)",
            (run_id, job_id, orjson.dumps(lines).decode()),
        )

    def jobs(self, run_id: int) -> list[ImportJob]:
        rows = self._rows(
            "SELECT id, job_id, lines, rejects_at, done, failed FROM import_jobs "
            "WHERE run_id=? ORDER BY id",
            (run_id,),
        )
        return [
            ImportJob(row_id, run_id, job, orjson.loads(lines), at, bool(done), failed)
            for row_id, job, lines, at, done, failed in rows
        ]

    def forget_unsent_jobs(self, run_id: int, line: int) -> None:
        self._write(
            "DELETE FROM import_jobs WHERE run_id=? AND done=0 AND rejects_at IS NULL "
            "AND json_extract(lines, '$[0]') > ?",
            (run_id, line),
        )

    def job_reading(self, row_id: int, rejects_at: int) -> None:
        self._write("UPDATE import_jobs SET rejects_at=? WHERE id=?", (rejects_at, row_id))

    def job_done(self, row_id: int, failed: int) -> None:
        self._write("UPDATE import_jobs SET done=1, failed=? WHERE id=?", (failed, row_id))

    def approve(self, run_id: int) -> bool:
        self._write(
            "UPDATE file_runs SET approved=1 WHERE id=? AND state=?",
            (run_id, FileState.QUARANTINED.value),
        )
        run = self.get(run_id)
        return run is not None and run.approved

    def approved_waiting(self) -> list[FileRun]:
        rows = self._rows(
            f"SELECT {_COLUMNS} FROM file_runs WHERE approved=1 AND state=? ORDER BY id",
            (FileState.QUARANTINED.value,),
        )
        return [_run(row) for row in rows]

    def get(self, run_id: int) -> FileRun | None:
        return self._one(f"SELECT {_COLUMNS} FROM file_runs WHERE id=?", (run_id,))

    def runs(
        self,
        company: str | None = None,
        since: float | None = None,
        finished_before: float | None = None,
    ) -> list[FileRun]:
        sql = f"SELECT {_COLUMNS} FROM file_runs WHERE 1=1"
        args: list[Any] = []
        if company is not None:
            sql += " AND company=?"
            args.append(company)
        if since is not None:
            sql += " AND updated_at>=?"
            args.append(since)
        if finished_before is not None:
            sql += " AND finished_at<?"
            args.append(finished_before)
        rows = self._rows(sql + " ORDER BY updated_at DESC, id DESC", tuple(args))
        return [_run(row) for row in rows]

    def unannounced(self) -> list[FileRun]:
        rows = self._rows(
            f"SELECT {_COLUMNS} FROM file_runs WHERE announced=0 AND finished_at IS NOT NULL "
            "ORDER BY id"
        )
        return [_run(row) for row in rows]

    def mark_announced(self, run_ids: list[int]) -> None:
        self._mark(run_ids, "announced=1, told=reason")

    def unswept(self, finished_before: float) -> list[FileRun]:
        rows = self._rows(
            f"SELECT {_COLUMNS} FROM file_runs WHERE swept=0 AND finished_at<? ORDER BY id",
            (finished_before,),
        )
        return [_run(row) for row in rows]

    def mark_swept(self, run_ids: list[int]) -> None:
        self._mark(run_ids, "swept=1")

    def _mark(self, run_ids: list[int], assignments: str) -> None:
        for start in range(0, len(run_ids), 500):  # SQLite caps a statement's parameters
            chunk = run_ids[start : start + 500]
            self._write(
                f"UPDATE file_runs SET {assignments} WHERE id IN ({','.join('?' * len(chunk))})",
                tuple(chunk),
            )
