"""API outage drills against the running service: 5xx runs, resets, 429 storms with and
without Retry-After, a slow API, and an API that accepts and then times out. Nothing is lost
or given up, the other company keeps going, and the final counts match."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from collections import Counter
from pathlib import Path

from ingestor.ledger import LEDGER_NAME, FileState
from ingestor.simulator import Simulator
from tests.conftest import make_folder
from tests.service_helpers import jsonl, running_service, two_companies, write_settings


def test_the_service_rides_out_every_kind_of_outage(tmp_path: Path) -> None:
    with two_companies() as sim:
        drop, state = tmp_path / "drop", tmp_path / "state"
        settings = write_settings(
            tmp_path / "s.toml",
            drop,
            state,
            sim,
            companies={"acme": "ACME_KEY", "beta": "BETA_KEY"},
        )
        settings.write_text(
            settings.read_text().replace("read_timeout_seconds = 5.0", "read_timeout_seconds = 1.0")
        )
        acme = make_folder(drop)
        beta = make_folder(drop, company="beta")
        faults = sim.faults
        faults.throttle_retry_after = None  # a 429 without Retry-After first
        drills = [
            ("fail_next", 40),  # a run of 503s
            ("drop_next", 5),  # connections reset with no answer
            ("throttle_next", 3),  # 429 storm, no Retry-After (1 s backoff each)
            ("hang_after_accept_next", 2),  # stored, then no answer before the timeout
        ]
        with running_service(settings) as svc:
            faults.hang_seconds = 1.5
            for name, count in drills:
                setattr(faults, name, count)
            (acme / "big.jsonl").write_bytes(jsonl(0, 8_000))
            # Meanwhile the other company's file goes through (lanes are independent, and
            # the faults are shared, so beta rides them out too).
            (beta / "b.jsonl").write_bytes(jsonl(0, 2_000))
            status = subprocess.run(
                [sys.executable, "-m", "ingestor.cli", "status", "--config", str(settings)],
                capture_output=True,
                text=True,
                timeout=30,
            )
            assert status.returncode == 0, status.stderr  # the ledger answers during the storm
            faults.throttle_retry_after = 0.05
            faults.throttle_next = 2  # a second storm, with Retry-After (whole seconds)
            faults.latency = 0.1  # and a slow API for a while
            runs = {svc.next_run(60).identity.name: None for _ in range(2)}
            faults.latency = 0.0
        assert set(runs) == {"big.jsonl", "b.jsonl"}
        acme_ids = Counter(r["id"] for r in sim.records("acme"))
        beta_ids = Counter(r["id"] for r in sim.records("beta"))
    assert set(acme_ids) == set(range(8_000))
    assert set(beta_ids) == set(range(2_000))
    # Only an accepted-then-timed-out batch may arrive twice: 2 hangs, 500 records each.
    assert sum(n - 1 for n in acme_ids.values()) + sum(n - 1 for n in beta_ids.values()) <= 1000
    assert all(fault == 0 for fault in (faults.fail_next, faults.drop_next, faults.throttle_next))


def test_final_counts_match_after_the_drill(tmp_path: Path, sim: Simulator) -> None:
    drop = tmp_path / "drop"
    folder = make_folder(drop)
    settings = write_settings(tmp_path / "s.toml", drop, tmp_path / "state", sim)
    sim.faults.fail_next = 30
    sim.faults.throttle_next = 2  # whole-second Retry-After on a real-time clock
    with running_service(settings) as svc:
        (folder / "pets.jsonl").write_bytes(jsonl(0, 3_000) + b"not json\n")
        run = svc.run_for("pets.jsonl", timeout=60)
    assert run.state is FileState.DONE
    assert (run.counts.read, run.counts.sent, run.counts.skipped) == (3_001, 3_000, 1)
    assert run.counts.retries >= 30


def test_a_drop_file_truncated_or_deleted_mid_run_is_stopped_and_said(
    tmp_path: Path, sim: Simulator
) -> None:
    drop = tmp_path / "drop"
    folder = make_folder(drop)
    settings = write_settings(tmp_path / "s.toml", drop, tmp_path / "state", sim)
    sim.faults.latency = 0.1
    with running_service(settings) as svc:
        (folder / "cut.jsonl").write_bytes(jsonl(0, 5_000))
        assert sim.wait_for_records("acme", 500, timeout=20)
        with (folder / "cut.jsonl").open("r+b") as handle:
            handle.truncate(1_000)  # mid-line, too
        stopped = svc.run_for("cut.jsonl")
        assert stopped.state is FileState.FAILED
        assert "changed while being processed" in stopped.reason
        (folder / "gone.jsonl").write_bytes(jsonl(10_000, 5_000))
        assert sim.wait_for_records("acme", len(sim.records("acme")) + 500, timeout=20)
        (folder / "gone.jsonl").unlink()
        removed = svc.run_for("gone.jsonl")
        sim.faults.latency = 0.0
    assert removed.state is FileState.FAILED and "was removed" in removed.reason
    assert removed.counts.sent < 5_000  # stopped, not run to the end of a deleted file


def test_a_ledger_locked_by_another_process_makes_the_service_wait(
    tmp_path: Path, sim: Simulator
) -> None:
    """Another process (a backup, an operator's sqlite3 shell) holds the ledger's write lock:
    the lane waits for it rather than sending batches it cannot checkpoint."""
    drop, state = tmp_path / "drop", tmp_path / "state"
    folder = make_folder(drop)
    settings = write_settings(tmp_path / "s.toml", drop, state, sim)
    with running_service(settings) as svc:
        holder = sqlite3.connect(state / LEDGER_NAME, isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")
        try:
            (folder / "pets.jsonl").write_bytes(jsonl(0, 2_000))
            # With the lock held, at most the first batch can be in flight, unacknowledged
            # in the ledger; wait until it has been stored (or the lane stopped short of it).
            sim.wait_for_records("acme", 500, timeout=2)
            assert len(sim.records("acme")) <= 500
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        run = svc.run_for("pets.jsonl", timeout=60)
    assert run.state is FileState.DONE and run.counts.sent == 2_000
    assert sorted({r["id"] for r in sim.records("acme")}) == list(range(2_000))
