"""One account against the rate-limit bound, and CPU per million records with the limiter off.

    python bench/bound_bench.py [--records 200000] [--clock-factor 10] [--cpu-records 1000000]

1. ``ingestor ingest`` sends ``--records`` small records to the simulator enforcing the guide's
   limits (burst 3/s, steady 60/min) on a clock ``--clock-factor`` times faster, with our
   limiter set to the same limits. The theoretical minimum time is computed by placing every
   request at the earliest moment the server's sliding windows allow (zero latency).
   Reported: time ÷ minimum, achieved ÷ allowed request rate, records per request ÷ 500, 429s.
2. The same command with both limiters off on ``--cpu-records`` records: CPU seconds of the
   ingest process per million records, parse to HTTP.
3. With ``--rss-gb N``: the same on an N GB JSONL file, sampling the ingest process's VmHWM
   (its own peak RSS, monotonic) from /proc until it exits.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections import deque
from pathlib import Path

from ingestor.config import RateLimitSettings
from ingestor.simulator import Simulator
from ingestor.simulator.state import GUIDE_BULK_LIMITS

DS_ID = "01KTMWCZ8ZMNZS0HG5HQNX0H6E"
KEY = "pk_bench_bound_0123456789abcdef"
BULK = "/api/data-source-record-bulk-create-jobs"


def minimum_span(requests: int, limits: RateLimitSettings) -> float:
    """Seconds from the first to the last of ``requests`` requests, each sent at the earliest
    moment both sliding windows allow."""
    burst: deque[float] = deque()
    steady: deque[float] = deque()
    t = 0.0
    for _ in range(requests):
        if len(burst) == limits.burst:
            t = max(t, burst[0] + limits.burst_window)
        if len(steady) == limits.steady:
            t = max(t, steady[0] + limits.steady_window)
        burst.append(t)
        steady.append(t)
        if len(burst) > limits.burst:
            burst.popleft()
        if len(steady) > limits.steady:
            steady.popleft()
    return t


def drop_folder(root: Path, records: int, csv_too: bool = False) -> Path:
    """The same small records as JSONL, and with ``csv_too`` also as CSV (a second folder)."""
    folder = root / "drop" / "acme" / "imports" / "custom_objects" / "bench"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"data_source_id": DS_ID}))
    with (folder / "records.jsonl").open("wb") as handle:
        for i in range(records):
            handle.write(b'{"id": %d, "status": "active"}\n' % i)
    if csv_too:
        tabular = root / "drop" / "acme" / "imports" / "custom_objects" / "bench-csv"
        tabular.mkdir()
        (tabular / "config.json").write_text(json.dumps({"data_source_id": DS_ID}))
        with (tabular / "records.csv").open("wb") as handle:
            handle.write(b"id,status\n")
            for i in range(records):
                handle.write(b"%d,active\n" % i)
    return folder


def peak_rss_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def ingest(
    folder: Path, sim: Simulator, state: Path, limits: RateLimitSettings
) -> tuple[float, float]:
    """Run ``ingestor ingest``; return its CPU seconds (user + system) and peak RSS in MB."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ingestor.cli",
            "ingest",
            str(folder),
            "--api-key-env",
            "BENCH_KEY",
            "--base-url",
            sim.url,
            "--state-dir",
            str(state),
            "--burst",
            str(limits.burst),
            "--burst-window",
            str(limits.burst_window),
            "--steady",
            str(limits.steady),
            "--steady-window",
            str(limits.steady_window),
            "--log-format",
            "json",
            "--log-level",
            "warning",
        ],
        env={**os.environ, "BENCH_KEY": KEY},
        stdout=subprocess.DEVNULL,
    )
    peak = 0.0
    while process.poll() is None:
        peak = max(peak, peak_rss_mb(process.pid) or 0.0)
        time.sleep(0.1)  # sampling a monotonic high-water mark: the last sample is the peak
    assert process.returncode == 0, process.returncode
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), peak


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--clock-factor", type=float, default=10.0)
    parser.add_argument("--cpu-records", type=int, default=1_000_000)
    parser.add_argument("--rss-gb", type=float, default=0.0, help="also ingest a file this big")
    args = parser.parse_args()
    limits = GUIDE_BULK_LIMITS.scaled(args.clock_factor)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        folder = drop_folder(root / "bound", args.records)
        with Simulator(
            {KEY: "acme"},
            bulk_limits=GUIDE_BULK_LIMITS,
            clock_factor=args.clock_factor,
            keep_records=False,
        ) as sim:
            sim.add_data_source("acme", DS_ID)
            began = time.monotonic()
            ingest(folder, sim, root / "state-bound", limits)
            wall = time.monotonic() - began
            with sim.state.lock:
                bulk = [r for r in sim.state.requests if r.path == BULK]
            stats = sim.stats()
        accepted = [r for r in bulk if r.status < 300]
        span = accepted[-1].at - accepted[0].at
        best = minimum_span(len(accepted), limits)
        per_request = sum(r.records for r in accepted) / len(accepted)
        print(
            f"{args.records:,} records at the guide's limits x{args.clock_factor:g} "
            f"(steady {limits.requests_per_second:g} req/s): {len(accepted)} requests in "
            f"{span:.2f} s (minimum {best:.2f} s), {wall:.1f} s wall for the whole command"
        )
        print("| measure | value | target |\n|---|---|---|")
        print(f"| time ÷ theoretical minimum | {span / best:.3f} | ≤ 1.05 |")
        print(f"| achieved ÷ allowed request rate | {best / span:.3f} | ≥ 0.97 |")
        print(f"| records per request ÷ 500 | {per_request / 500:.3f} | ≥ 0.99 |")
        print(
            f"| 429s received | {sum(1 for r in bulk if r.status == 429)} | 0 |"
            f"\n| records stored | {stats['records']:,} of {args.records:,} | all |"
        )

        off = RateLimitSettings(burst=10**6, steady=10**6, enabled=False)
        folder = drop_folder(root / "cpu", args.cpu_records, csv_too=True)
        for name, source in (("JSONL", folder), ("CSV", folder.with_name("bench-csv"))):
            with Simulator(
                {KEY: "acme"}, bulk_limits=off, read_limits=off, keep_records=False
            ) as sim:
                sim.add_data_source("acme", DS_ID)
                began = time.monotonic()
                cpu, peak = ingest(source, sim, root / f"state-cpu-{name}", off)
                wall = time.monotonic() - began
                stored = sim.stats()["records"]
            assert stored == args.cpu_records, stored
            print(
                f"\nlimiter off, {name}: {args.cpu_records:,} records in {wall:.1f} s wall "
                f"({args.cpu_records / wall:,.0f} records/s, simulator on the same 2 cores); "
                f"ingest process CPU {cpu:.2f} s = {cpu / args.cpu_records * 1e6:.2f} CPU-s "
                f"per million records, parse to HTTP; peak RSS {peak:.0f} MB"
            )
        if args.rss_gb:
            big = root / "big" / "acme" / "imports" / "custom_objects" / "big"
            big.mkdir(parents=True)
            (big / "config.json").write_text(json.dumps({"data_source_id": DS_ID}))
            source = folder / "records.jsonl"
            with (big / "big.jsonl").open("wb") as out, source.open("rb") as chunk:
                block = chunk.read()
                while out.tell() < args.rss_gb * 1024**3:
                    out.write(block)
            size = (big / "big.jsonl").stat().st_size
            with Simulator(
                {KEY: "acme"}, bulk_limits=off, read_limits=off, keep_records=False
            ) as sim:
                sim.add_data_source("acme", DS_ID)
                began = time.monotonic()
                cpu, peak = ingest(big, sim, root / "state-big", off)
                wall = time.monotonic() - began
                stored = sim.stats()["records"]
            print(
                f"{size / 1024**3:.2f} GB JSONL ({stored:,} records) ingested end to end in "
                f"{wall:.0f} s: peak RSS of the ingest process {peak:.0f} MB (target < 150 MB)"
            )


if __name__ == "__main__":
    main()
