"""Many accounts at once: does every company's lane keep its account at the rate limit?

    python bench/service_bench.py [--companies 20] [--requests 120] [--clock-factor 4]

Runs ``ingestor run`` as its own process against the simulator (in this process) with the
guide's limits (burst 3/s, steady 60/min) on a clock ``--clock-factor`` times faster, so the
steady limit is ``clock-factor`` requests/s per account.

1. Latency: with the service idle, a file is closed in one company's folder at a time;
   the time from the close to the simulator receiving that company's next request.
2. Throughput: every company drops a file of ``--requests`` x 500 records at once. Each lane's
   rate-limit utilisation is the requests it got accepted ÷ the requests the server's sliding
   window allows, over the whole steady windows from its first request; and the worker's CPU
   seconds (user + system, from /proc) per 1,000 records.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import psutil

from ingestor.simulator import Simulator
from ingestor.simulator.state import GUIDE_BULK_LIMITS

DS_ID = "01KTMWCZ8ZMNZS0HG5HQNX0H6E"
BULK_PATH = "/api/data-source-record-bulk-create-jobs"


def key_of(i: int) -> str:
    return f"pk_bench_{i:02d}_0123456789abcdef"


def write_settings(path: Path, drop: Path, state: Path, sim: Simulator, n: int, f: float) -> None:
    limits = GUIDE_BULK_LIMITS.scaled(f)
    lines = [
        f'drop_root = "{drop}"',
        f'state_dir = "{state}"',
        "[service]",
        'log_level = "warning"',
        "[api]",
        f'base_url = "{sim.url}"',
        "[rate_limit]",
        f"burst = {limits.burst}",
        f"burst_window_seconds = {limits.burst_window}",
        f"steady = {limits.steady}",
        f"steady_window_seconds = {limits.steady_window}",
    ]
    for i in range(n):
        lines += [f"[companies.c{i:02d}]", f'api_key_env = "BENCH_KEY_{i:02d}"']
    path.write_text("\n".join(lines) + "\n")


def records(start: int, count: int) -> bytes:
    return b"".join(b'{"id": %d, "status": "active"}\n' % i for i in range(start, start + count))


def folder_of(drop: Path, i: int) -> Path:
    folder = drop / f"c{i:02d}" / "imports" / "custom_objects" / "bench"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(f'{{"data_source_id": "{DS_ID}"}}')
    return folder


def requests_of(sim: Simulator, account: str, since: float) -> list[float]:
    """Arrival times of the account's accepted bulk requests since ``since``."""
    with sim.state.lock:
        return [
            r.at
            for r in sim.state.requests
            if r.account == account and r.at >= since and r.path == BULK_PATH and r.status < 300
        ]


def log_of(sim: Simulator, account: str, since: float) -> list[float]:
    """Arrival times of the account's requests since ``since`` (caller holds the lock)."""
    return [r.at for r in sim.state.requests if r.account == account and r.at >= since]


def wait_until(sim: Simulator, check: Callable[[], bool], timeout: float) -> None:
    """Block until ``check()`` holds; re-checked whenever the simulator stores records."""
    with sim.state.stored:
        if not sim.state.stored.wait_for(check, timeout):
            raise TimeoutError("benchmark step timed out")


def wait_ready(sock: socket.socket, timeout: float) -> None:
    """Block until the service tells its NOTIFY_SOCKET it is READY (first scan done)."""
    sock.settimeout(timeout)
    while b"READY=1" not in sock.recv(4096).split(b"\n"):
        pass


def start_worker(
    root: Path, settings: Path, n: int
) -> tuple[subprocess.Popen[bytes], psutil.Process, socket.socket]:
    """``ingestor run`` as its own process with the n bench keys in its environment, and
    the socket it will say READY on (see ``wait_ready``). It runs in ``root``: ``-m`` puts
    the working directory first on sys.path, and a checkout there would shadow the
    ``ingestor`` under test (PYTHONPATH, when comparing against an older commit)."""
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(root / "notify.sock"))
    env = {
        **os.environ,
        **{f"BENCH_KEY_{i:02d}": key_of(i) for i in range(n)},
        "NOTIFY_SOCKET": str(root / "notify.sock"),
    }
    service = subprocess.Popen(
        [sys.executable, "-m", "ingestor.cli", "run", "--config", str(settings)],
        env=env,
        stdout=subprocess.DEVNULL,
        cwd=root,
    )
    return service, psutil.Process(service.pid), notify


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--companies", type=int, default=20)
    parser.add_argument("--requests", type=int, default=200, help="per company")
    parser.add_argument("--clock-factor", type=float, default=4.0)
    parser.add_argument("--latency-samples", type=int, default=40)
    args = parser.parse_args()
    n, f = args.companies, args.clock_factor
    keys = {key_of(i): f"c{i:02d}" for i in range(n)}
    limits = GUIDE_BULK_LIMITS.scaled(f)
    allowed = limits.requests_per_second
    with (
        tempfile.TemporaryDirectory() as tmp,
        Simulator(keys, bulk_limits=GUIDE_BULK_LIMITS, clock_factor=f, keep_records=False) as sim,
    ):
        root = Path(tmp)
        drop, state = root / "drop", root / "state"
        drop.mkdir()
        folders = [folder_of(drop, i) for i in range(n)]
        for i in range(n):
            sim.add_data_source(f"c{i:02d}", DS_ID)
        settings = root / "bench.toml"
        write_settings(settings, drop, state, sim, n, f)
        service, proc, notify = start_worker(root, settings, n)
        try:
            wait_ready(notify, 120)
            ready_cpu = cpu_seconds(proc)
            ready_rss, ready_threads = proc.memory_info().rss, proc.num_threads()
            latencies = []
            for sample in range(args.latency_samples):
                i = sample % n
                account = f"c{i:02d}"
                before = sim.state.account(account).stored
                path = folders[i] / f"lat{sample}.jsonl"
                with path.open("wb") as handle:
                    handle.write(records(0, 10))
                closed = time.time()  # the simulator stamps requests with wall time
                wait_until(sim, lambda a=account, b=before: sim.state.account(a).stored > b, 30)  # type: ignore[misc]
                # The request is logged once answered (the stamp is its arrival).
                wait_until(sim, lambda a=account, c=closed: bool(log_of(sim, a, c)), 30)  # type: ignore[misc]
                latencies.append(min(log_of(sim, account, closed)) - closed)
                # Let this account's windows drain so every sample starts unthrottled.
                time.sleep(limits.burst_window)

            time.sleep(limits.steady_window)  # every window empty again
            per_file = args.requests * 500
            for folder in folders:  # written first, then moved in at once
                (folder / ".big.jsonl.part").write_bytes(records(0, per_file))

            def stored() -> int:  # called with the simulator's lock held
                return sum(sim.state.account(f"c{i:02d}").stored for i in range(n))

            stored_before = sim.stats()["records"]
            cpu_before, began = cpu_seconds(proc), time.time()
            for folder in folders:
                os.rename(folder / ".big.jsonl.part", folder / "big.jsonl")
            wait_until(sim, lambda: stored() - stored_before >= n * per_file, 3600)
            cpu = cpu_seconds(proc) - cpu_before
            wall = time.time() - began
            end_rss, end_threads = proc.memory_info().rss, proc.num_threads()
        finally:
            service.terminate()
            service.wait(timeout=60)

        print(f"{n} companies, steady limit {allowed:g} req/s each (guide limits x{f:g} clock)")
        print(
            f"latency close -> first request, {len(latencies)} samples: "
            f"p50 {statistics.median(latencies) * 1000:.0f} ms, "
            f"p95 {statistics.quantiles(latencies, n=20, method='inclusive')[-1] * 1000:.0f} ms, "
            f"max {max(latencies) * 1000:.0f} ms"
        )
        # Utilisation over whole steady windows from each lane's first request: the server
        # allows at most `steady` requests in any window, so k windows allow k x steady.
        utilisations = []
        print("| company | requests | whole windows | used of allowed | utilisation |")
        print("|---|---|---|---|---|")
        for i in range(n):
            stamps = sorted(requests_of(sim, f"c{i:02d}", began))
            windows = int((stamps[-1] - stamps[0]) // limits.steady_window)
            if not windows:
                raise SystemExit(
                    f"c{i:02d} sent for less than one steady window: give --requests more "
                    f"than {limits.steady} x 2"
                )
            end = stamps[0] + windows * limits.steady_window
            used = sum(1 for t in stamps if t < end)
            share = used / (windows * limits.steady)
            utilisations.append(share)
            print(
                f"| c{i:02d} | {len(stamps)} | {windows} | {used}/{windows * limits.steady} "
                f"| {share:.1%} |"
            )
        total = n * per_file
        print(
            f"utilisation: min {min(utilisations):.1%}, median "
            f"{statistics.median(utilisations):.1%}; {total:,} records in {wall:.1f} s "
            f"({total / wall:,.0f} records/s); worker CPU {cpu:.2f} s = "
            f"{cpu / total * 1e6:.2f} ms per 1,000 records"
        )
        per_account = 500 * cpu / total  # CPU share of one account at ~500 records/s
        print(
            f"at the real limit (~500 records/s per account) one account costs "
            f"{per_account:.1%} of a core: ~{0.8 / per_account:,.0f} accounts per core at 80%"
        )
        print(
            f"worker: {ready_cpu:.2f} CPU-s to start; RSS {ready_rss / 2**20:.0f} MB when ready, "
            f"{end_rss / 2**20:.0f} MB at the end; threads {ready_threads} / {end_threads}"
        )
        stats = sim.stats()
        print(f"simulator: {stats['statuses']}, schema failures {stats['schema_failures']}")


if __name__ == "__main__":
    main()
