"""The service killed (SIGKILL) at each moment that matters for durability, then restarted:
every good record arrives, at most one batch is sent twice, every report is exact, the
rejected-rows files hold each skipped row once, and every file gets its e-mail.

The random campaign (test_crash_campaign.py) hits these moments by chance; here each one is
hit on purpose, through the crash points in ingestor/crashpoints.py, and mid-request through
the simulator."""

from __future__ import annotations

import json
import signal
import time
from collections import Counter
from email import message_from_bytes
from email.policy import default
from pathlib import Path

import pytest

from ingestor import crashpoints
from ingestor.ledger import LEDGER_NAME, FileState, SqliteLedger
from ingestor.simulator import Simulator
from tests.conftest import DS_ID, FAST_LIMITS, KEY, make_folder
from tests.service_helpers import jsonl, ledger_runs, start_process, stop_process, write_settings

CSV_ROWS, JSONL_LINES = 2_400, 3_100  # 5 and 7 batches


def build_drop(drop: Path) -> tuple[set[int], dict[str, int]]:
    """A CSV and a JSONL file with a few bad rows: the good ids, and each file's bad count."""
    good: set[int] = set()
    with (make_folder(drop, "pets") / "pets.csv").open("w") as f:
        f.write("id,name,tags\n")
        for i in range(CSV_ROWS):
            if i % 700 == 5:
                f.write(f"{i},too,many,cells\n")
            else:
                f.write(f'{i},pet {i},"[""a"", ""b""]"\n')
                good.add(i)
    with (make_folder(drop, "owners") / "owners.jsonl").open("w") as f:
        for i in range(10_000, 10_000 + JSONL_LINES):
            if i % 1000 == 7:
                f.write("{broken\n")
            else:
                f.write(json.dumps({"id": i}) + "\n")
                good.add(i)
    bad = {"pets.csv": CSV_ROWS // 700 + 1, "owners.jsonl": JSONL_LINES // 1000 + 1}
    return good, bad


def emails_by_file(outbox: Path) -> Counter[str]:
    subjects = (
        message_from_bytes(path.read_bytes(), policy=default)["Subject"]
        for path in outbox.glob("*.eml")
    )
    return Counter(subject.split(" / ")[2].split(":")[0] for subject in subjects)


def wait_until_settled(state: Path, files: int, timeout: float = 60) -> None:
    """Until every file is done and its e-mail recorded as queued (polling another process's
    ledger: there is no event to wait on across processes)."""
    deadline = time.monotonic() + timeout
    ledger = SqliteLedger(state / LEDGER_NAME)
    try:
        while True:
            runs = ledger.runs()
            done = len(runs) == files and all(r.state is FileState.DONE for r in runs)
            if done and not ledger.unannounced():
                return
            assert time.monotonic() < deadline, [(r.identity.name, r.state) for r in runs]
            time.sleep(0.05)
    finally:
        ledger.close()


CASES = {
    # crash point: the pass that kills (chosen to land mid-run, not on the first step)
    "batch.parsed:4": "parsing is mid-file",
    "batch.acknowledged:3": "the API accepted a batch; no checkpoint yet",
    "rejects.unsynced:3": "a skipped row is on disk past the checkpoint",
    "ledger.statement:1500": "inside a ledger statement",
    "report.unrenamed:1": "a report half-way into place",
    "report.unrecorded:1": "a report in place, the file not yet marked done",
    "email.unqueued:1": "a file done, its e-mail not queued yet",
    "email.unrecorded:1": "an e-mail queued, not yet recorded as queued",
    "mid-request:6": "a request is in flight (killed by the simulator as it arrives)",
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_kill_at_this_moment_loses_nothing(tmp_path: Path, case: str) -> None:
    point, _, count = case.partition(":")
    with Simulator({KEY: "acme"}, bulk_limits=FAST_LIMITS, read_limits=FAST_LIMITS) as sim:
        sim.add_data_source("acme", DS_ID)
        drop, state = tmp_path / "drop", tmp_path / "state"
        good, bad = build_drop(drop)
        settings = write_settings(
            tmp_path / "s.toml", drop, state, sim, company_lines='recipients = ["ops@x.test"]'
        )
        log = tmp_path / "service.log"
        if point == "mid-request":
            worker = start_process(settings, log, {crashpoints.ENV: ""})
            arrivals = iter(range(1, 1000))

            def kill_on_arrival() -> None:
                if next(arrivals) == int(count):
                    worker.send_signal(signal.SIGKILL)

            sim.faults.latency = 0.2  # the request is still in flight when the kill lands
            sim.faults.on_bulk = kill_on_arrival
        else:
            worker = start_process(settings, log, {crashpoints.ENV: case})
        assert worker.wait(timeout=60) == -signal.SIGKILL, log.read_text()[-2000:]
        sim.faults.on_bulk, sim.faults.latency = None, 0.0
        before = len(sim.records("acme"))

        final = start_process(settings, log, {crashpoints.ENV: ""})
        try:
            assert sim.wait_for_records("acme", len(good), timeout=60), log.read_text()[-2000:]
            wait_until_settled(state, files=2)
        finally:
            assert stop_process(final, log) == 0

    received = Counter(int(r["id"]) for r in sim.records("acme"))
    duplicates = sum(n - 1 for n in received.values())
    print(f"{case}: {before:,} records before the kill, {duplicates} sent twice")
    assert set(received) == good
    assert duplicates <= 500  # at most the one batch in flight
    runs = ledger_runs(state)
    # What was sent twice is said, never less: the reports' "may have been sent twice".
    said = sum(json.loads(Path(r.report_path).read_text())["records_maybe_resent"] for r in runs)
    assert said >= duplicates, (said, duplicates)
    total = {"pets.csv": CSV_ROWS, "owners.jsonl": JSONL_LINES}
    for run in runs:
        name = run.identity.name
        report = json.loads(Path(run.report_path).read_text())
        assert report["records_read"] == total[name]
        assert report["records_skipped"] == bad[name]
        assert report["records_sent"] == total[name] - bad[name]
        rejected = Path(report["rejected_rows_file"]).read_text().splitlines()
        assert len({json.loads(line)["line"] for line in rejected}) == len(rejected) == bad[name]
        assert not list(Path(run.report_path).parent.glob("*.tmp"))
    emails = emails_by_file(state / "outbox")
    assert set(emails) == {"pets.csv", "owners.jsonl"}
    # An e-mail queued in the instant before the ledger recorded it is sent again: at least
    # once, never lost. Everywhere else: exactly once.
    most = 2 if point == "email.unrecorded" else 1
    assert all(1 <= n <= most for n in emails.values()), emails


def test_a_digest_held_in_memory_when_the_process_dies_is_still_sent(
    tmp_path: Path, sim: Simulator
) -> None:
    """Digest mode holds a folder's reports until the folder is drained: a kill then would
    lose them without the ledger's record of what is unannounced."""
    drop, state, log = tmp_path / "drop", tmp_path / "state", tmp_path / "service.log"
    folder = make_folder(drop, "pets")
    for index, name in enumerate(("a.jsonl", "b.jsonl")):
        (folder / name).write_bytes(jsonl(index * 1000, 1000))  # 2 batches each
    settings = write_settings(
        tmp_path / "s.toml",
        drop,
        state,
        sim,
        company_lines='recipients = ["ops@x.test"]\ndigest = true',
    )
    worker = start_process(settings, log, {crashpoints.ENV: "batch.parsed:3"})  # 2nd file
    assert worker.wait(timeout=60) == -signal.SIGKILL, log.read_text()[-2000:]
    assert not list((state / "outbox").glob("*.eml"))  # the first file's report was held
    final = start_process(settings, log, {crashpoints.ENV: ""})
    try:
        assert sim.wait_for_records("acme", 2000, timeout=60)
        wait_until_settled(state, files=2)
    finally:
        assert stop_process(final, log) == 0
    bodies = [path.read_text() for path in (state / "outbox").glob("*.eml")]
    for name in ("a.jsonl", "b.jsonl"):
        assert any(name in body for body in bodies), (name, len(bodies))
