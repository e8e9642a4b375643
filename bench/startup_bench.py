"""How long a short command takes, whole process, against ``python -c pass``.

    python bench/startup_bench.py [--rounds 15]

Each round runs ``python -c pass``, ``ingestor validate`` of a 100-line JSONL file,
``ingestor validate --json`` of the same, and ``ingestor --help``, one after the other
(paired: the same machine state for each). Reported: the median time of each and its ratio
to the baseline, with the spread (min to max of the per-round ratios). The target for
``validate`` is at most 12x.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DS_ID = "01KTMWCZ8ZMNZS0HG5HQNX0H6E"


def timed(command: list[str]) -> float:
    began = time.perf_counter()
    subprocess.run(command, check=False, capture_output=True)
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as top:
        data = Path(top) / "a.jsonl"
        data.write_text("".join(f'{{"id": {n}, "name": "row {n}"}}\n' for n in range(100)))
        (Path(top) / "config.json").write_text(f'{{"data_source_id": "{DS_ID}"}}')
        cli = [sys.executable, "-m", "ingestor.cli"]
        commands = {
            "python -c pass": [sys.executable, "-c", "pass"],
            "ingestor validate FILE": [*cli, "validate", str(data)],
            "ingestor validate --json FILE": [*cli, "validate", "--json", str(data)],
            "ingestor --help": [*cli, "--help"],
        }
        for command in commands.values():  # warm the page cache
            timed(command)
        times: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(args.rounds):
            for name, command in commands.items():
                times[name].append(timed(command))
    base = times["python -c pass"]
    print(f"{'command':32} {'median':>9} {'÷ python -c pass':>17} {'spread':>14}")
    for name, values in times.items():
        ratios = [v / b for v, b in zip(values, base, strict=True)]
        median = statistics.median(values) * 1000
        spread = f"{min(ratios):.1f}-{max(ratios):.1f}x"
        print(f"{name:32} {median:7.1f}ms {statistics.median(ratios):16.1f}x {spread:>14}")


if __name__ == "__main__":
    main()
