"""kill -9 at any moment loses no record: a restart resumes after the last acknowledged batch."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

from ingestor import crashpoints
from ingestor.config import RateLimitSettings
from ingestor.ledger import LEDGER_NAME, SqliteLedger
from ingestor.simulator import Simulator
from tests.conftest import DS_ID, KEY, make_folder
from tests.service_helpers import ledger_runs

ROWS = 12_000  # 24 requests of 500


def run_ingest(
    sim: Simulator, folder: Path, state: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    env = {**os.environ, "KLAVIYO_KEY": KEY, **(env or {})}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ingestor.cli",
            "ingest",
            str(folder),
            "--api-key-env",
            "KLAVIYO_KEY",
            "--base-url",
            sim.url,
            "--state-dir",
            str(state),
            "--burst",
            "100",
            "--steady",
            "6000",
            "--log-format",
            "json",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def test_kill_9_mid_file_then_restart_loses_nothing(tmp_path: Path) -> None:
    limits = RateLimitSettings(burst=100, steady=6000)
    with Simulator({KEY: "acme"}, bulk_limits=limits, read_limits=limits) as sim:
        sim.add_data_source("acme", DS_ID)
        folder = make_folder(tmp_path / "drop")
        with (folder / "big.csv").open("w") as f:
            f.write("id,bad\n")
            for i in range(ROWS):
                f.write(f"{i},{'x,y,z' if i % 1000 == 7 else ''}\n")  # 12 bad rows
        sim.faults.latency = 0.03
        kills = 0
        for threshold in (2_000, 6_500, 9_000):
            worker = run_ingest(sim, folder, tmp_path / "state")
            assert sim.wait_for_records("acme", threshold, timeout=60)
            worker.send_signal(signal.SIGKILL)
            worker.wait(timeout=10)
            assert worker.returncode == -signal.SIGKILL
            kills += 1
        sim.faults.latency = 0.0
        final = run_ingest(sim, folder, tmp_path / "state")
        _, stderr = final.communicate(timeout=120)
        assert final.returncode == 0, stderr.decode()

        received = Counter(int(r["id"]) for r in sim.records("acme"))
        good = {i for i in range(ROWS) if i % 1000 != 7}
        assert set(received) == good  # every good record, nothing bad
        duplicates = sum(n - 1 for n in received.values())
        assert duplicates <= kills * 500  # at most one batch re-sent per kill

        report = next((tmp_path / "state" / "reports" / "acme").glob("*.report.json"))
        import orjson

        data = orjson.loads(report.read_bytes())
        assert (data["records_read"], data["records_sent"], data["records_skipped"]) == (
            ROWS,
            ROWS - 12,
            12,
        )
        rejected = Path(data["rejected_rows_file"]).read_text().splitlines()
        assert len(rejected) == 12  # truncated back on each resume: no duplicated lines


def test_files_an_interrupted_ingest_finished_are_not_e_mailed_later(tmp_path: Path) -> None:
    """`ingestor ingest` shows its outcome itself: the files it finished before it was
    killed must not wait in the ledger for a service on the same state dir to e-mail."""
    limits = RateLimitSettings(burst=100, steady=6000)
    with Simulator({KEY: "acme"}, bulk_limits=limits, read_limits=limits) as sim:
        sim.add_data_source("acme", DS_ID)
        folder = make_folder(tmp_path / "drop")
        for name in ("a.jsonl", "b.jsonl"):  # one batch each; the kill lands in b's
            (folder / name).write_bytes(b"".join(b'{"id": %d}\n' % i for i in range(300)))
        state = tmp_path / "state"
        worker = run_ingest(sim, folder, state, {crashpoints.ENV: "batch.parsed:2"})
        assert worker.wait(timeout=60) == -signal.SIGKILL
    runs = ledger_runs(state)
    assert sorted((r.identity.name, r.state.value) for r in runs) == [
        ("a.jsonl", "done"),
        ("b.jsonl", "processing"),
    ]
    ledger = SqliteLedger(state / LEDGER_NAME)
    try:
        assert ledger.unannounced() == []
    finally:
        ledger.close()
