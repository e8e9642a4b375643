"""The ledger's schema comes from numbered migrations, each applied once; a reader never
writes; the protocol is what a second backend implements."""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from ingestor.errors import LedgerError, StateUnwritable
from ingestor.ledger import FileIdentity, FileState, SqliteLedger, open_existing_ledger
from ingestor.ledger import sqlite as ledger_sqlite
from ingestor.ledger.sqlite import MIGRATIONS, SqliteLedgers
from ingestor.records import FileCounts

# A ledger as the release before migrations wrote it (its queue mirror included).
OLD_SCHEMA = """
CREATE TABLE file_runs (
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
    announced INTEGER NOT NULL DEFAULT 1, swept INTEGER NOT NULL DEFAULT 0,
    UNIQUE (company, kind, folder, name, version)
);
CREATE TABLE queued_files (path TEXT PRIMARY KEY, company TEXT NOT NULL, queued_at REAL);
INSERT INTO file_runs (company, kind, folder, name, path, size, mtime_ns, sha256, version,
    state, records_sent, started_at, updated_at)
VALUES ('acme', 'custom_objects', 'pets', 'a.csv', '/drop/a.csv', 5, 1, 'abc', 1, 'done',
    42, 1.0, 2.0);
"""


def old_ledger(path: Path) -> Path:
    db = sqlite3.connect(path)
    db.executescript(OLD_SCHEMA)
    db.close()
    return path


def test_an_older_ledger_is_brought_up_to_date_once_keeping_its_runs(tmp_path: Path) -> None:
    path = old_ledger(tmp_path / "ledger.sqlite3")
    with SqliteLedger(path) as ledger:
        (run,) = ledger.runs()
        assert (run.identity.name, run.counts.sent, run.reason_code) == ("a.csv", 42, "")
        ledger.finish(run.id, FileState.FAILED, FileCounts(maybe_resent=3), "x", "", "bad_file")
    db = sqlite3.connect(path)
    versions = [row[0] for row in db.execute("SELECT version FROM ledger_migrations")]
    tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    db.close()
    assert versions == list(range(1, len(MIGRATIONS) + 1))
    assert "queued_files" not in tables  # the queue mirror is gone: the lanes answer
    with SqliteLedger(path) as again:  # nothing left to apply
        (run,) = again.runs()
        assert (run.reason_code, run.counts.maybe_resent) == ("bad_file", 3)


def test_a_reader_never_writes_not_even_an_upgrade(tmp_path: Path) -> None:
    path = old_ledger(tmp_path / "ledger.sqlite3")
    with pytest.raises(LedgerError, match="written by an older ingestor"):
        open_existing_ledger(tmp_path)
    before = path.read_bytes()
    SqliteLedger(path).close()  # a writer upgrades it
    upgraded = path.read_bytes()
    assert upgraded != before
    with open_existing_ledger(tmp_path) as reader:
        assert len(reader.runs()) == 1
        with pytest.raises(LedgerError):
            reader.register(
                FileIdentity("acme", "custom_objects", "pets", "b.csv", "/b", 1, 1, "d")
            )


def test_a_report_is_typed_versioned_and_reads_back_as_written(tmp_path: Path) -> None:
    """The report file is written and loaded in one place (reports.FileReport), carries its
    schema version, and one from before a field existed still loads."""
    import orjson

    from ingestor.reports import REPORT_SCHEMA, FileReport

    path = tmp_path / "r.report.json"
    fields: dict[str, object] = dict.fromkeys(FileReport.__dataclass_fields__, 0)
    fields.update(company="acme", kind="custom_objects", folder="pets", file="a.csv",
                  path="/a", sha256="", data_source_id="", state="done", reason="",
                  reason_code="", rejected_rows_file="", records_per_second=None,
                  skipped_samples=({"line": 3, "reason": "x", "raw": "r"},),
                  ignored_files=("notes.txt",), schema=REPORT_SCHEMA,
                  read_as={"format": "CSV", "encoding": "cp1252"})  # fmt: skip
    report = FileReport(**fields)  # type: ignore[arg-type]
    path.write_bytes(orjson.dumps(report.as_dict()))
    assert FileReport.load(str(path)) == report
    older = report.as_dict()
    for added in ("reason_code", "records_maybe_resent", "schema", "read_as"):
        del older[added]
    path.write_bytes(orjson.dumps(older))
    loaded = FileReport.load(str(path))
    assert loaded is not None and loaded.reason_code == "" and loaded.records_maybe_resent == 0
    assert loaded.read_as == {}
    assert FileReport.load(str(tmp_path / "missing.json")) is None


def _identity(n: int) -> FileIdentity:
    return FileIdentity("acme", "custom_objects", "pets", f"f{n}.jsonl", f"/d/f{n}", 1, 1, "s")


def _hold_first_commit(db: sqlite3.Connection) -> tuple[threading.Event, list[str]]:
    """Make the writer's connection stop at its first statement until released, and
    record every statement it runs."""
    release, statements = threading.Event(), []

    def trace(sql: str) -> None:
        statements.append(sql.split()[0].upper())
        if len(statements) == 1:
            assert release.wait(30)

    db.set_trace_callback(trace)
    return release, statements


def _until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 30
    while not condition():
        assert time.monotonic() < deadline, "never happened"
        time.sleep(0.005)


def test_writes_that_wait_for_a_commit_are_committed_together(tmp_path: Path) -> None:
    """500 lanes checkpointing once a second each paid a transaction and an fsync, and
    raced for SQLite's write lock; the writes queued during a commit go in the next one."""
    ledgers = SqliteLedgers(tmp_path / "ledger.sqlite3")
    runs = [ledgers().register(_identity(n)).id for n in range(21)]
    release, statements = _hold_first_commit(ledgers._writer._db)
    seen: dict[int, int] = {}

    def checkpoint(n: int) -> None:
        ledger = ledgers()
        ledger.checkpoint(runs[n], 100 + n, n, 0, FileCounts(sent=n))
        with open_existing_ledger(tmp_path) as reader:  # committed when it returned
            run = reader.get(runs[n])
            assert run is not None
            seen[n] = run.offset if (run.line, run.counts.sent) == (n, n) else -1
        ledger.close()

    first = threading.Thread(target=checkpoint, args=(0,))
    first.start()
    _until(lambda: bool(statements))  # the first write is being committed, and held there
    others = [threading.Thread(target=checkpoint, args=(n,)) for n in range(1, 21)]
    for thread in others:
        thread.start()
    _until(lambda: len(ledgers._writer._queue) == 20)
    release.set()
    for thread in [first, *others]:
        thread.join(30)
    assert seen == {n: 100 + n for n in range(21)}
    # The 20 in one transaction, and one statement: each statement of a group released and
    # retook the GIL, and with hundreds of threads each retaking could wait 5 ms.
    assert statements == ["UPDATE", "BEGIN", "UPDATE", "COMMIT"]
    ledgers.close()


def test_a_write_that_fails_in_a_group_fails_alone(tmp_path: Path) -> None:
    ledgers = SqliteLedgers(tmp_path / "ledger.sqlite3")
    writer = ledgers._writer
    runs = [ledgers().register(_identity(n)).id for n in range(4)]
    release, statements = _hold_first_commit(writer._db)
    errors: dict[int, str] = {}

    def write(n: int) -> None:
        column = "nope" if n == 2 else "line"  # no such column: this one cannot succeed
        try:
            writer.write(f"UPDATE file_runs SET {column}=? WHERE id=?", (7, runs[n]))
        except sqlite3.Error as exc:
            errors[n] = str(exc)

    first = threading.Thread(target=write, args=(0,))
    first.start()
    _until(lambda: bool(statements))
    others = [threading.Thread(target=write, args=(n,)) for n in (1, 2, 3)]
    for thread in others:
        thread.start()
    _until(lambda: len(writer._queue) == 3)
    release.set()
    for thread in [first, *others]:
        thread.join(30)
    assert list(errors) == [2] and "nope" in errors[2]
    with open_existing_ledger(tmp_path) as reader:
        assert [reader.get(run).line for run in runs] == [7, 7, 0, 7]  # type: ignore[union-attr]
    ledgers.close()


def _ledger_descriptors(path: Path) -> int:
    fds = Path("/proc/self/fd")
    return sum(1 for fd in fds.iterdir() if os.path.realpath(fd) == str(path.resolve()))


def test_the_ledgers_of_one_process_share_a_writer_and_a_reader_connection(
    tmp_path: Path,
) -> None:
    """Each lane's ledger had a connection of its own: about 160 KB each, 78 MB for 500
    lanes. They now read and write through two, whatever their number."""
    path = tmp_path / "ledger.sqlite3"
    ledgers = SqliteLedgers(path)
    before = _ledger_descriptors(path)
    lanes = [ledgers() for _ in range(50)]
    runs = [lane.register(_identity(n)).id for n, lane in enumerate(lanes)]

    read: dict[int, int] = {}

    def read_back(n: int) -> None:
        lanes[n].checkpoint(runs[n], 10 * n, n, 0, FileCounts(sent=n))
        read[n] = lanes[n].get(runs[n]).offset  # type: ignore[union-attr]

    threads = [threading.Thread(target=read_back, args=(n,)) for n in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert read == {n: 10 * n for n in range(50)}
    assert _ledger_descriptors(path) == before == 2
    assert [run.offset for run in sorted(lanes[0].runs(), key=lambda r: r.id)] == [
        10 * n for n in range(50)
    ]
    for lane in lanes:
        lane.close()
    ledgers.close()
    assert _ledger_descriptors(path) == 0


def test_a_reader_connection_that_cannot_open_says_the_state_dir_is_unwritable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened: list[sqlite3.Connection] = []
    connect = ledger_sqlite._connect

    def second_fails(path: Path) -> sqlite3.Connection:
        if opened:
            raise PermissionError(13, "Permission denied", str(path))
        opened.append(connect(path))
        return opened[0]

    monkeypatch.setattr(ledger_sqlite, "_connect", second_fails)
    with pytest.raises(StateUnwritable):
        SqliteLedgers(tmp_path / "ledger.sqlite3")
    with pytest.raises(sqlite3.ProgrammingError):  # the writer's connection was closed
        opened[0].execute("SELECT 1")
