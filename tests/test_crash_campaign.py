"""The service killed with SIGKILL at 20 random moments while ingesting 100,000 records in
three folders, restarted each time: every good record arrives, reports are exact, and at most
one batch per kill is sent twice. Set INGESTOR_CRASH_KILLS for a longer campaign."""

from __future__ import annotations

import itertools
import json
import os
import random
import signal
import time
from collections import Counter
from pathlib import Path

from ingestor.ledger import LEDGER_NAME, FileState, SqliteLedger
from ingestor.simulator import Simulator
from tests.conftest import DS_ID, FAST_LIMITS, KEY, make_folder
from tests.service_helpers import start_process, stop_process, write_settings

KILLS = int(os.environ.get("INGESTOR_CRASH_KILLS", "20"))
TOTALS = {"pets.csv": 30_000, "owners.jsonl": 40_000, "orders.jsonl": 30_000}


def build_drop(drop: Path) -> tuple[set[int], dict[str, int]]:
    """Three files, 100,000 records, a few bad rows; the good ids and each file's bad count."""
    good: set[int] = set()
    bad: dict[str, int] = {}
    with (make_folder(drop, "pets") / "pets.csv").open("w") as f:
        f.write("id,name,tags\n")
        for i in range(30_000):
            if i % 5000 == 17:
                f.write(f"{i},too,many,cells\n")
            else:
                f.write(f'{i},pet {i},"[""a"", ""b""]"\n')
                good.add(i)
    bad["pets.csv"] = 6
    for name, start, count in (("owners", 100_000, 40_000), ("orders", 200_000, 30_000)):
        with (make_folder(drop, name) / f"{name}.jsonl").open("w") as f:
            for i in range(start, start + count):
                if i % 7000 == 3:
                    f.write("{broken\n")
                else:
                    f.write(json.dumps({"id": i, "n": name}) + "\n")
                    good.add(i)
        bad[f"{name}.jsonl"] = sum(1 for i in range(start, start + count) if i % 7000 == 3)
    return good, bad


def test_twenty_kill_9s_lose_nothing(tmp_path: Path) -> None:
    seed = int(os.environ.get("INGESTOR_CRASH_SEED", time.time_ns() % 10**6))
    rng = random.Random(seed)
    with Simulator({KEY: "acme"}, bulk_limits=FAST_LIMITS, read_limits=FAST_LIMITS) as sim:
        sim.add_data_source("acme", DS_ID)
        drop, state = tmp_path / "drop", tmp_path / "state"
        good, bad = build_drop(drop)
        settings = write_settings(tmp_path / "s.toml", drop, state, sim)
        sim.faults.latency = 0.01
        log = tmp_path / "service.log"
        stored = 0
        boundaries = [0]  # records received when each kill struck
        for kill in range(KILLS):
            worker = start_process(settings, log)
            if kill % 4 == 0:  # sometimes at start-up: scanning, hashing, parsing
                time.sleep(rng.uniform(0.05, 0.6))
            else:  # else mid-stream, after a random number of further records
                target = min(stored + rng.randint(1, 4000), len(good) - 1)
                sim.wait_for_records("acme", target, timeout=60)
            worker.send_signal(signal.SIGKILL)
            assert worker.wait(timeout=10) == -signal.SIGKILL
            stored = len(sim.records("acme"))
            boundaries.append(stored)
        sim.faults.latency = 0.0
        final = start_process(settings, log)
        try:
            assert sim.wait_for_records("acme", len(good), timeout=120), f"seed {seed}"
            ledger = SqliteLedger(state / LEDGER_NAME)
            try:
                deadline = time.monotonic() + 30
                while any(r.state is not FileState.DONE for r in ledger.runs()):
                    assert time.monotonic() < deadline, f"files not finished (seed {seed})"
                    time.sleep(0.05)  # reports are written after the last record lands
                runs = ledger.runs()
            finally:
                ledger.close()
        finally:
            assert stop_process(final, log) == 0

    arrived = [int(r["id"]) for r in sim.records("acme")]
    received = Counter(arrived)
    duplicates = sum(n - 1 for n in received.values())
    print(f"seed {seed}: {KILLS} kills, {len(received):,} records, {duplicates} re-sent")
    assert set(received) == good, f"seed {seed}"
    # Per kill, not only in total: by the end of what the k-th process received, at most k
    # batches (one per kill before it) were re-sent. A batch the killed process had in
    # flight can be stored just after the kill's snapshot, in the next segment, where the
    # next process sends it again: so the bound runs over prefixes, not segments, and a
    # record counts as re-sent when it was seen before, in an earlier segment or its own.
    seen: set[int] = set()
    per_segment = []
    for start, end in zip(boundaries, [*boundaries[1:], len(arrived)], strict=True):
        again = 0
        for i in arrived[start:end]:
            again += i in seen
            seen.add(i)
        per_segment.append(again)
    running = list(itertools.accumulate(per_segment))
    assert all(dups <= 500 * kills for kills, dups in enumerate(running)), (
        per_segment,
        f"seed {seed}",
    )
    assert running[-1] == duplicates
    assert len(runs) == 3
    for run in runs:
        report = json.loads(Path(run.report_path).read_text())
        skipped = bad[run.identity.name]
        assert report["records_skipped"] == skipped, (run.identity.name, seed)
        assert report["records_read"] == TOTALS[run.identity.name], (run.identity.name, seed)
        assert report["records_sent"] == TOTALS[run.identity.name] - skipped
        rejected = Path(report["rejected_rows_file"]).read_text().splitlines()
        assert len(rejected) == skipped, (run.identity.name, seed)  # no line twice
