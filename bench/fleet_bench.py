"""Hundreds of accounts on one worker, against a simulator that is not the bottleneck.

    python bench/fleet_bench.py [--companies 500] [--shards 2] [--requests 130]
                                [--clock-factor 1] [--validate-every 20] [--max-skipped none]

The simulator runs as ``--shards`` processes sharing one port (SO_REUSEPORT: the kernel
spreads the worker's connections over them), each knowing every account, keeping no
records and validating one bulk body in ``--validate-every`` against the spec (the others
are parsed only; every shard still counts, limits and answers each request). Each account
has the guide's limits (burst 3/s, steady 60/min) on a clock ``--clock-factor`` times
faster; the worker (``ingestor run``, its own process) is configured with the same.

Every company drops one file of ``--requests`` x 500 records at once. Reported: each
lane's utilisation (the accepted requests ÷ what the server's sliding window allows, over
whole steady windows from its first request; min and median), the time from each file's
completion (its rename) to its first bulk request (p50, p95, max), the worker's CPU seconds
per 1,000 records, its threads and RSS, the shards' CPU, and how many requests each shard
saw.
A shard enforces an account's limits only on the requests that reach it, so the worker's
own limiter is what keeps each account within its limits; 429s are reported.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from service_bench import (
    DS_ID,
    cpu_seconds,
    folder_of,
    key_of,
    records,
    start_worker,
    wait_ready,
    write_settings,
)

from ingestor.ledger import FileState, open_existing_ledger
from ingestor.simulator.state import GUIDE_BULK_LIMITS

BULK_PATH = "/api/data-source-record-bulk-create-jobs"


def context_switches(pid: int) -> tuple[int, int]:
    """Voluntary and involuntary context switches of every thread of ``pid`` (psutil's
    figure is the main thread's only)."""
    voluntary = involuntary = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            status = (task / "status").read_text()
        except OSError:  # the thread ended
            continue
        for line in status.splitlines():
            if line.startswith("voluntary_ctxt_switches:"):
                voluntary += int(line.split()[1])
            elif line.startswith("nonvoluntary_ctxt_switches:"):
                involuntary += int(line.split()[1])
    return voluntary, involuntary


def serve_shard(port: int, companies: int, factor: float, validate_every: int) -> None:
    """One simulator process: READY on stdout, serve until stdin closes, then its log."""
    from ingestor.simulator import Simulator

    keys = {key_of(i): f"c{i:02d}" for i in range(companies)}
    sim = Simulator(
        keys,
        port=port,
        reuse_port=True,
        clock_factor=factor,
        bulk_limits=GUIDE_BULK_LIMITS,
        keep_records=False,
        validate_every=validate_every,
    ).start()
    for i in range(companies):
        sim.add_data_source(f"c{i:02d}", DS_ID)
    gc.freeze()  # the set-up is permanent: the collector need not walk it again
    print("READY", flush=True)
    sys.stdin.read()
    sim.stop()
    with sim.state.lock:
        log = [
            (r.at, r.account, r.status, r.records)
            for r in sim.state.requests
            if r.path == BULK_PATH
        ]
        failures = len(sim.state.schema_failures)
    cpu = psutil.Process().cpu_times()
    print(json.dumps({"log": log, "schema_failures": failures, "cpu": cpu.user + cpu.system}))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--companies", type=int, default=500)
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--requests", type=int, default=130, help="per company")
    parser.add_argument("--clock-factor", type=float, default=1.0)
    parser.add_argument("--validate-every", type=int, default=20)
    parser.add_argument(
        "--max-skipped",
        default="",
        help='the service\'s error budget ("none": no file is read whole before it is sent)',
    )
    parser.add_argument("--shard", nargs=4, type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.shard:
        port, n, factor, every = args.shard
        serve_shard(int(port), int(n), factor, int(every))
        return
    n, f, every = args.companies, args.clock_factor, args.validate_every
    limits = GUIDE_BULK_LIMITS.scaled(f)
    port = free_port()
    shards = [
        subprocess.Popen(
            [sys.executable, __file__, "--shard", str(port), str(n), str(f), str(every)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(args.shards)
    ]
    for shard in shards:
        assert shard.stdout is not None and shard.stdout.readline().strip() == "READY"

    class _Url:  # what write_settings needs of a simulator
        url = f"http://127.0.0.1:{port}"

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        drop, state = root / "drop", root / "state"
        drop.mkdir()
        folders = [folder_of(drop, i) for i in range(n)]
        settings = root / "bench.toml"
        write_settings(settings, drop, state, _Url(), n, f)  # type: ignore[arg-type]
        if args.max_skipped:
            text = settings.read_text()
            budget = f"[service]\nmax_skipped = {json.dumps(args.max_skipped)}\n"
            settings.write_text(text.replace("[service]\n", budget, 1))
        per_file = args.requests * 500
        for folder in folders:
            (folder / ".big.jsonl.part").write_bytes(records(0, per_file))
        service, proc, notify = start_worker(root, settings, n)
        try:
            wait_ready(notify, 300)
            cpu_before, began = cpu_seconds(proc), time.time()
            times_before, switches_before = proc.cpu_times(), context_switches(proc.pid)
            closed = []  # when each company's file was complete (renamed into place)
            for folder in folders:
                os.rename(folder / ".big.jsonl.part", folder / "big.jsonl")
                closed.append(time.time())
            expected = n * per_file
            peak_rss = 0
            while True:  # the ledger says when every file is done
                time.sleep(1.0)
                peak_rss = max(peak_rss, proc.memory_info().rss)
                with open_existing_ledger(state) as ledger:
                    done = sum(
                        1
                        for run in ledger.runs()
                        if run.state is FileState.DONE and run.identity.name == "big.jsonl"
                    )
                if done >= n or time.time() - began > 3600:
                    break
            cpu = cpu_seconds(proc) - cpu_before
            times, switches = proc.cpu_times(), context_switches(proc.pid)
            system = times.system - times_before.system
            voluntary = switches[0] - switches_before[0]
            involuntary = switches[1] - switches_before[1]
            wall = time.time() - began
            threads = proc.num_threads()
        finally:
            service.terminate()
            service.wait(timeout=120)
    logs, shard_cpu, failures, per_shard = [], 0.0, 0, []
    for shard in shards:
        out, _ = shard.communicate("")
        result = json.loads(out.strip().splitlines()[-1])
        logs += result["log"]
        per_shard.append(len(result["log"]))
        shard_cpu += result["cpu"]
        failures += result["schema_failures"]
    statuses: dict[int, int] = {}
    for _, _, status, _ in logs:
        statuses[status] = statuses.get(status, 0) + 1
    stored = sum(count for _, _, status, count in logs if status < 300)
    first: dict[str, float] = {}
    for at, account, _, _ in logs:
        first[account] = min(at, first.get(account, at))
    latencies = sorted(first[f"c{i:02d}"] - closed[i] for i in range(n))
    accepted: dict[str, list[float]] = {}  # each account's accepted requests, in time order
    for at, account, status, _ in sorted(logs):
        if status < 300:
            accepted.setdefault(account, []).append(at)
    utilisations = []
    for i in range(n):
        stamps = [at for at in accepted.get(f"c{i:02d}", []) if at >= began]
        windows = int((stamps[-1] - stamps[0]) // limits.steady_window) if stamps else 0
        if not windows:
            raise SystemExit(f"c{i:02d} sent for under one steady window: raise --requests")
        end = stamps[0] + windows * limits.steady_window
        utilisations.append(sum(1 for t in stamps if t < end) / (windows * limits.steady))
    # The same, over the one steady window that starts once every lane has sent: what the
    # lanes do when none is starting any more (a lane that ended before it is left out).
    settled_at = max(first.values())
    settled_end = settled_at + limits.steady_window
    settled = [
        sum(1 for at in stamps if settled_at <= at < settled_end) / limits.steady
        for stamps in accepted.values()
        if max(stamps) >= settled_end
    ]
    print(
        f"{n} companies, {args.shards} simulator shards, steady limit "
        f"{limits.requests_per_second:g} req/s each (guide x{f:g}); 1 body in "
        f"{args.validate_every} validated against the spec"
    )
    print(
        f"utilisation min {min(utilisations):.1%}, median {statistics.median(utilisations):.1%}"
        f"; {stored:,} of {expected:,} records in {wall:.1f} s"
    )
    if settled:
        print(
            f"once every lane had started ({settled_at - began:.1f} s in): utilisation "
            f"min {min(settled):.1%}, median {statistics.median(settled):.1%} over the "
            f"{len(settled)} lanes still sending a window later"
        )
    print(
        f"close -> first request: p50 {statistics.median(latencies) * 1e3:.0f} ms, "
        f"p95 {latencies[int(0.95 * (n - 1))] * 1e3:.0f} ms, max {latencies[-1] * 1e3:.0f} ms"
    )
    print(
        f"worker: {cpu:.1f} CPU-s = {cpu / stored * 1e6:.2f} ms per 1,000 records; "
        f"{threads} threads; peak RSS {peak_rss / 2**20:.0f} MB"
    )
    print(
        f"worker: {system:.1f} of those CPU-s in the kernel; context switches "
        f"{voluntary / stored * 1e3:.1f} voluntary, {involuntary / stored * 1e3:.1f} "
        "involuntary per 1,000 records"
    )
    print(
        f"simulator: {shard_cpu:.1f} CPU-s over {args.shards} shards; requests per shard "
        f"{per_shard}; statuses {statuses}; schema failures {failures}"
    )


if __name__ == "__main__":
    main()
