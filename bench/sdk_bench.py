"""ingestor vs a straightforward script on Klaviyo's official Python SDK (``klaviyo-api``).

    pip install klaviyo-api   # (make bench installs the [bench] extra)
    python bench/sdk_bench.py [--records 50000] [--clock-factor 10]

Both ingest the same import folder (a CSV and a JSONL file, a few bad rows) into the
simulator, which enforces the guide's limits on a faster clock and answers 429 with a
whole-second Retry-After, as Klaviyo does. The SDK script is what a user would write:
``csv.DictReader`` / ``json.loads``, 500-record chunks, the SDK's own retry (3 tries), no
checkpoint. Each side gets its own account, so the request logs are its own. Then each is
killed halfway through a second account's ingest and run again, to show what a restart costs.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from ingestor.simulator import Simulator
from ingestor.simulator.state import GUIDE_BULK_LIMITS

DS_ID = "01KTMWCZ8ZMNZS0HG5HQNX0H6E"
BULK = "/api/data-source-record-bulk-create-jobs"

SDK_SCRIPT = r"""
import csv, json, sys
from pathlib import Path
from klaviyo_api import KlaviyoAPI

folder, key, host = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
klaviyo = KlaviyoAPI(key, test_host=host)  # the SDK's defaults: 3 retries, backoff
data_source = json.loads((folder / "config.json").read_text())["data_source_id"]

def send(chunk):
    klaviyo.Custom_Objects.bulk_create_data_source_records({"data": {
        "type": "data-source-record-bulk-create-job",
        "attributes": {"data-source-records": {"data": [
            {"type": "data-source-record", "attributes": {"record": r}} for r in chunk]}},
        "relationships": {"data-source": {"data": {"type": "data-source", "id": data_source}}},
    }})

def rows(path):
    with path.open(newline="", encoding="utf-8", errors="replace") as f:
        if path.suffix == ".csv":
            for row in csv.DictReader(f):
                yield {k: v for k, v in row.items() if v}
        else:
            for line in f:
                if line.strip():
                    try:
                        value = json.loads(line)
                    except ValueError:
                        continue
                    if isinstance(value, dict):
                        yield value

for path in sorted(folder.glob("*.*")):
    if path.suffix not in (".csv", ".jsonl"):
        continue
    chunk = []
    for record in rows(path):
        chunk.append(record)
        if len(chunk) == 500:
            send(chunk)
            chunk = []
    if chunk:
        send(chunk)
"""


def make_folder(root: Path, records: int, messy: bool) -> tuple[Path, set[int]]:
    """A CSV and a JSONL file; ``messy`` puts a bad row in every 10,000."""
    folder = root / "acme" / "imports" / "custom_objects" / ("messy" if messy else "clean")
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"data_source_id": DS_ID}))
    good: set[int] = set()
    half = records // 2
    with (folder / "a.csv").open("w") as f:
        f.write("id,name,status\n")
        for i in range(half):
            if messy and i % 10_000 == 7:
                f.write(f"{i},bad,row,extra\n")
                continue
            f.write(f"{i},pet {i},active\n")
            good.add(i)
    with (folder / "b.jsonl").open("w") as f:
        for i in range(half, records):
            if messy and i % 10_000 == 7:
                f.write("{not json\n")
                continue
            f.write(json.dumps({"id": i, "status": "active"}) + "\n")
            good.add(i)
    return folder, good


def ours(folder: Path, url: str, key: str, state: Path, f: float) -> subprocess.Popen[bytes]:
    limits = GUIDE_BULK_LIMITS.scaled(f)
    return subprocess.Popen(
        [
            *(sys.executable, "-m", "ingestor.cli", "ingest", str(folder)),
            *("--api-key-env", "BENCH_KEY", "--base-url", url, "--state-dir", str(state)),
            *("--burst", str(limits.burst), "--burst-window", str(limits.burst_window)),
            *("--steady", str(limits.steady), "--steady-window", str(limits.steady_window)),
            *("--log-format", "json", "--log-level", "error"),
        ],
        env={**os.environ, "BENCH_KEY": key},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def sdk(folder: Path, url: str, key: str, script: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, str(script), str(folder), key, url],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def measured(process: subprocess.Popen[bytes]) -> tuple[float, float, int, str]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    began = time.monotonic()
    _, stderr = process.communicate()
    wall = time.monotonic() - began
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    lines = (stderr or b"").decode(errors="replace").splitlines()
    errors = [line for line in lines if re.match(r"^[\w.]+(Error|Exception)\b", line)]
    return wall, cpu, process.returncode, errors[-1][:110] if errors else ""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=50_000)
    parser.add_argument("--clock-factor", type=float, default=10.0)
    args = parser.parse_args()
    f = args.clock_factor
    names = ("ours", "sdk", "ours_messy", "sdk_messy", "ours_kill", "sdk_kill")
    keys = {f"pk_bench_{name}_0123456789": name for name in names}
    key_of = {name: key for key, name in keys.items()}
    with (
        tempfile.TemporaryDirectory() as tmp,
        Simulator(
            keys, bulk_limits=GUIDE_BULK_LIMITS, clock_factor=f, integer_retry_after=True
        ) as sim,
    ):
        root = Path(tmp)
        clean, good = make_folder(root / "drop", args.records, messy=False)
        messy, good_messy = make_folder(root / "drop", args.records, messy=True)
        script = root / "sdk_script.py"
        script.write_text(SDK_SCRIPT)
        for name in names:
            sim.add_data_source(name, DS_ID)

        def run(name: str, folder: Path) -> subprocess.Popen[bytes]:
            if name.startswith("ours"):
                return ours(folder, sim.url, key_of[name], root / f"state-{name}", f)
            return sdk(folder, sim.url, key_of[name], script)

        rows = []
        for name, folder, expected in (
            ("ours", clean, good),
            ("sdk", clean, good),
            ("ours_messy", messy, good_messy),
            ("sdk_messy", messy, good_messy),
        ):
            wall, cpu, code, last = measured(run(name, folder))
            with sim.state.lock:
                log = [r for r in sim.state.requests if r.account == name and r.path == BULK]
            received = Counter(int(r["id"]) for r in sim.records(name))
            throttled = sum(1 for r in log if r.status == 429)
            lost = len(expected - set(received))
            twice = sum(n - 1 for n in received.values())
            rows.append((name, wall, cpu, throttled, code, last, lost, twice))

        # Killed halfway through the clean drop, then run again from the same state.
        restarts = []
        for name in ("ours_kill", "sdk_kill"):
            first = run(name, clean)
            sim.wait_for_records(name, len(good) // 2, timeout=600)
            first.send_signal(signal.SIGKILL)
            first.wait()
            measured(run(name, clean))
            received = Counter(int(r["id"]) for r in sim.records(name))
            restarts.append(
                (name, len(good - set(received)), sum(n - 1 for n in received.values()))
            )

    print(
        f"{args.records:,} records in a CSV and a JSONL file (the messy copy: a bad row in every "
        f"10,000); the guide's limits x{f:g}, whole-second Retry-After"
    )
    print("| drop | client | wall s | CPU s | 429s | exit | lost | sent twice | why it stopped |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, wall, cpu, throttled, code, last, lost, twice in rows:
        client = "ingestor" if name.startswith("ours") else "klaviyo-api script"
        drop = "messy" if name.endswith("messy") else "clean"
        print(
            f"| {drop} | {client} | {wall:.1f} | {cpu:.2f} | {throttled} | {code} | {lost:,} "
            f"| {twice:,} | {last if code else ''} |"
        )
    print("\nkill -9 at half the clean drop, then run again:")
    for name, lost, twice in restarts:
        client = "ingestor" if name.startswith("ours") else "klaviyo-api script"
        print(f"- {client}: {lost:,} records lost, {twice:,} sent twice")


if __name__ == "__main__":
    main()
