"""The state directory on a real, tiny file system (tmpfs) that fills up or is read-only.

A full disk mid-file: the service says so once, loudly and with the fix; holds the file at
its last checkpoint rather than failing it; and carries on by itself once space is freed,
losing nothing. A read-only state directory at start: a one-line error, exit status 2.

Mounting needs root (CAP_SYS_ADMIN), which CI has; elsewhere these tests are skipped.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from ingestor.errors import LedgerError, StateUnwritable
from ingestor.ledger import LEDGER_NAME, FileIdentity, FileState, SqliteLedger
from ingestor.simulator import Simulator
from tests.conftest import make_folder
from tests.service_helpers import (
    jsonl,
    ledger_runs,
    running_service,
    start_process,
    stop_process,
    write_settings,
)

LINES = 6_000  # 12 batches; every 1,000th line is broken


class SmallDisk:
    """A tmpfs mounted on ``path``, which a filler file can fill to the last byte."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.filler = path / "filler"

    def fill(self) -> None:
        with self.filler.open("ab", buffering=0) as handle, contextlib.suppress(OSError):
            while True:  # until ENOSPC
                handle.write(b"\0" * 4096)

    def free(self) -> None:
        self.filler.unlink()


@contextlib.contextmanager
def small_disk(path: Path, size: str = "4m", read_only: bool = False) -> Iterator[SmallDisk]:
    path.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if read_only else "")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "ingestor-test", str(path)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.strip()}")
    try:
        yield SmallDisk(path)
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


def events(log: Path, name: str) -> list[dict[str, object]]:
    found = []
    for line in log.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            entry = json.loads(line)
            if isinstance(entry, dict) and entry.get("event") == name:
                found.append(entry)
    return found


def wait_for_event(log: Path, name: str, timeout: float = 30) -> dict[str, object]:
    """The service is another process: poll its JSON log for the event."""
    deadline = time.monotonic() + timeout
    while not (found := events(log, name)):
        assert time.monotonic() < deadline, f"no {name} in {log.read_text()[-3000:]}"
        time.sleep(0.05)
    return found[0]


@pytest.mark.parametrize("fill_at_request", [3, 12], ids=["mid-file", "last-batch"])
def test_a_full_state_disk_pauses_the_work_and_it_resumes_losing_nothing(
    tmp_path: Path, sim: Simulator, fill_at_request: int
) -> None:
    drop, state, log = tmp_path / "drop", tmp_path / "state", tmp_path / "service.log"
    with small_disk(state) as disk:
        drop.mkdir()
        settings = write_settings(
            tmp_path / "s.toml", drop, state, sim, company_lines='recipients = ["ops@x.test"]'
        )
        arrivals = iter(range(1, 10_000))
        sim.faults.on_bulk = lambda: disk.fill() if next(arrivals) == fill_at_request else None
        worker = start_process(settings, log)
        try:
            with (make_folder(drop, "owners") / "owners.jsonl").open("w") as f:
                for i in range(LINES):
                    f.write("{broken\n" if i % 1000 == 7 else json.dumps({"id": i}) + "\n")
            problem = wait_for_event(log, "ledger_unavailable")
            assert "disk is full" in str(problem["reason"])
            assert "free space there" in str(problem["reason"])
            assert problem["level"] == "error"

            disk.free()
            wait_for_event(log, "ledger_recovered")
            assert sim.wait_for_records("acme", LINES - LINES // 1000, timeout=30)
            wait_for_event(log, "email_queued")
        finally:
            assert stop_process(worker, log) == 0
        (run,) = ledger_runs(state)  # one run: the file was held, never failed and redone
        assert run.state is FileState.DONE
        report = json.loads(Path(run.report_path).read_text())
        assert (report["records_read"], report["records_skipped"]) == (LINES, LINES // 1000)
        rejected = Path(report["rejected_rows_file"]).read_text().splitlines()
        assert [json.loads(line)["line"] for line in rejected] == list(range(8, LINES, 1000))
        assert len(list((state / "outbox").glob("*.eml"))) == 1

    received = Counter(r["id"] for r in sim.records("acme"))
    assert set(received) == {i for i in range(LINES) if i % 1000 != 7}
    assert sum(n - 1 for n in received.values()) <= 500  # at most the batch in flight
    # Said once, however many times the lane tried again while the disk was full.
    assert len(events(log, "ledger_unavailable")) == 1
    assert not events(log, "lane_error") and not events(log, "file_error")


def test_a_read_only_state_dir_stops_the_service_at_start_with_the_reason(
    tmp_path: Path, sim: Simulator
) -> None:
    drop, state, log = tmp_path / "drop", tmp_path / "state", tmp_path / "service.log"
    drop.mkdir()
    with small_disk(state, read_only=True):
        settings = write_settings(tmp_path / "s.toml", drop, state, sim)
        worker = start_process(settings, log)
        assert worker.wait(timeout=30) == 2
    output = log.read_text()
    assert "read-only" in output and str(state) in output
    assert "Traceback" not in output
    assert len(output.strip().splitlines()) == 1, output


def identity(name: str) -> FileIdentity:
    return FileIdentity("acme", "custom_objects", "pets", name, f"/drop/{name}", 1, 1, "0" * 64)


def test_the_ledger_reports_a_full_disk_as_a_state_problem(tmp_path: Path) -> None:
    with small_disk(tmp_path / "state", size="512k") as disk:
        ledger = SqliteLedger(disk.path / LEDGER_NAME)
        try:
            assert ledger.runs() == []
            disk.fill()
            with pytest.raises(StateUnwritable, match=r"disk is full.*free space there"):
                for n in range(1000):  # until the WAL needs a page it cannot get
                    ledger.register(identity(f"{n:0200d}.csv"))
            disk.free()
            after = ledger.register(identity("after.csv"))
            assert ledger.get(after.id) is not None
        finally:
            ledger.close()


def test_a_full_reports_disk_holds_the_file_and_each_skipped_row_is_kept_once(
    tmp_path: Path, sim: Simulator
) -> None:
    """The ledger has room but the reports do not (a separate tiny mount): the rejects file
    and the report are what fails, and the file still waits at its checkpoint."""
    drop, state, log = tmp_path / "drop", tmp_path / "state", tmp_path / "service.log"
    lines, bad = 6_000, {i for i in range(6_000) if i % 10 == 3}
    state.mkdir()
    with small_disk(state / "reports", size="512k") as disk:
        drop.mkdir()
        settings = write_settings(tmp_path / "s.toml", drop, state, sim)
        arrivals = iter(range(1, 10_000))
        sim.faults.on_bulk = lambda: disk.fill() if next(arrivals) == 2 else None
        worker = start_process(settings, log)
        try:
            with (make_folder(drop, "owners") / "owners.jsonl").open("w") as f:
                for i in range(lines):
                    f.write("{broken\n" if i in bad else json.dumps({"id": i}) + "\n")
            problem = wait_for_event(log, "ledger_unavailable")
            assert "disk is full" in str(problem["reason"])
            assert "rejected.jsonl" in str(problem["reason"])  # what it was writing
            disk.free()
            wait_for_event(log, "file_done")
        finally:
            assert stop_process(worker, log) == 0
        (run,) = ledger_runs(state)
        assert run.state is FileState.DONE
        report = json.loads(Path(run.report_path).read_text())
        assert report["records_skipped"] == len(bad)
        rejected = Path(report["rejected_rows_file"]).read_text().splitlines()
        assert [json.loads(line)["line"] for line in rejected] == [i + 1 for i in sorted(bad)]
    received = Counter(r["id"] for r in sim.records("acme"))
    assert set(received) == set(range(lines)) - bad
    assert not events(log, "file_error") and not events(log, "lane_error")


def test_an_e_mail_the_outbox_could_not_take_is_queued_once_there_is_room(
    tmp_path: Path, sim: Simulator
) -> None:
    drop, state = tmp_path / "drop", tmp_path / "state"
    state.mkdir()
    with small_disk(state / "outbox", size="64k") as disk:
        drop.mkdir()
        settings = write_settings(
            tmp_path / "s.toml",
            drop,
            state,
            sim,
            service="rescan_interval_seconds = 0.2",
            company_lines='recipients = ["ops@x.test"]',
            extra="[notify]\nannounce_grace_seconds = 0.0",
        )
        disk.fill()
        with running_service(settings) as running:
            folder = make_folder(drop, "pets")
            (folder / "pets.jsonl").write_bytes(jsonl(0, 10))
            assert running.run_for("pets.jsonl").state is FileState.DONE
            assert not list(disk.path.glob("*.eml"))  # no room: not queued, not lost
            disk.free()
            deadline = time.monotonic() + 10
            while not list(disk.path.glob("*.eml")):  # the next rescans try again
                assert time.monotonic() < deadline, "the e-mail was never queued"
                time.sleep(0.05)
        (message,) = disk.path.glob("*.eml")
        assert "pets.jsonl" in message.read_text()
        ledger = SqliteLedger(state / LEDGER_NAME)
        try:
            assert ledger.unannounced() == []
        finally:
            ledger.close()


def test_a_damaged_ledger_is_named_with_what_to_do(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / LEDGER_NAME).write_bytes(b"not a database " * 1000)
    with pytest.raises(LedgerError, match=r"the ledger is damaged.*restore a backup"):
        SqliteLedger(state / LEDGER_NAME)
