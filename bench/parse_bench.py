"""parse + batch + serialise throughput and peak RSS: ingestor vs a naive stdlib baseline.

    python bench/parse_bench.py [--rows 1000000] [--rounds 3] [--big-gb 0]

Each variant runs in its own process (so peak RSS is its own), on the same generated files,
in the same run; the figure that matters is the ratio. The baseline is what a user would
write: csv.DictReader / json.loads per line, json.dumps of each 500-record body.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ENVELOPE_ID = "01KTMWCZ8ZMNZS0HG5HQNX0H6E"


def generate(directory: Path, rows: int) -> tuple[Path, Path]:
    rng = random.Random(42)
    jsonl, csv_path = directory / "data.jsonl", directory / "data.csv"
    with jsonl.open("w") as j, csv_path.open("w") as c:
        c.write("id,name,email,age,status,tags\n")
        for i in range(rows):
            name = rng.choice(["Buddy", "Whiskers", "Nibbles", "Rex"])
            j.write(
                json.dumps(
                    {
                        "id": i,
                        "name": name,
                        "email": f"u{i}@example.com",
                        "age": rng.randint(1, 15),
                        "status": "active",
                        "tags": ["a", "b"],
                    }
                )
                + "\n"
            )
            c.write(f'{i},{name},u{i}@example.com,{rng.randint(1, 15)},active,"[""a"", ""b""]"\n')
    return jsonl, csv_path


def run_ours(path: Path) -> int:
    from ingestor.batcher import batches
    from ingestor.kinds import CUSTOM_OBJECTS
    from ingestor.parsers import ParseLimits, parse_file
    from ingestor.records import Batch, jsons_of

    envelope = CUSTOM_OBJECTS.envelope(ENVELOPE_ID)
    fmt = "csv" if path.suffix == ".csv" else "jsonl"
    count = 0
    items = parse_file(path.open("rb"), fmt, ParseLimits())  # the parser closes it
    for item in batches(items, envelope, CUSTOM_OBJECTS.limits):
        if type(item) is Batch and item.records:
            body = envelope.body(jsons_of(item.records))  # as the sender builds it
            count += len(item.records) if body else 0
    return count


def run_floor(path: Path) -> int:
    """The least any JSONL parser must do: orjson.loads of every line, nothing else."""
    import orjson

    loads, count = orjson.loads, 0
    with path.open("rb") as handle:
        for line in handle:
            if loads(line):
                count += 1
    return count


def run_baseline(path: Path) -> int:
    import csv

    def bodies(rows: object) -> int:
        count, chunk = 0, []
        for row in rows:  # type: ignore[attr-defined]
            chunk.append({"type": "data-source-record", "attributes": {"record": row}})
            if len(chunk) == 500:
                count += len(chunk) if json.dumps(wrap(chunk)) else 0
                chunk = []
        if chunk:
            count += len(chunk) if json.dumps(wrap(chunk)) else 0
        return count

    def wrap(chunk: list[dict[str, object]]) -> dict[str, object]:
        return {
            "data": {
                "type": "data-source-record-bulk-create-job",
                "attributes": {"data-source-records": {"data": chunk}},
                "relationships": {
                    "data-source": {"data": {"type": "data-source", "id": ENVELOPE_ID}}
                },
            }
        }

    with path.open(newline="", encoding="utf-8") as handle:
        if path.suffix == ".csv":
            return bodies({k: v for k, v in row.items() if v} for row in csv.DictReader(handle))
        return bodies(json.loads(line) for line in handle if line.strip())


def _spread(ratios: list[float]) -> str:
    return f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f})"


def peak_rss_mb() -> float:
    """This process's peak RSS. VmHWM belongs to the address space exec created; ru_maxrss
    would also count the parent's high-water mark inherited across fork+exec."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def one(variant: str, path: Path) -> None:
    import csv  # noqa: F401  (imports are not what is measured)

    import orjson  # noqa: F401

    import ingestor.batcher
    import ingestor.kinds
    import ingestor.parsers  # noqa: F401

    began, cpu = time.perf_counter(), time.process_time()
    count = {"ours": run_ours, "baseline": run_baseline, "floor": run_floor}[variant](path)
    wall = time.perf_counter() - began
    peak_mb = peak_rss_mb()
    print(
        json.dumps(
            {
                "records": count,
                "wall": wall,
                "cpu": time.process_time() - cpu,
                "peak_rss_mb": peak_mb,
            }
        )
    )


def measure(variant: str, path: Path) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, "--one", variant, str(path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    result: dict[str, float] = json.loads(out)
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument(
        "--big-gb",
        type=float,
        default=0.0,
        help="also measure peak RSS on a JSONL file of this many GB",
    )
    parser.add_argument("--rounds", type=int, default=3, help="paired rounds (median)")
    parser.add_argument("--one", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        one(args.one[0], Path(args.one[1]))
        return
    with tempfile.TemporaryDirectory() as tmp:
        jsonl, csv_path = generate(Path(tmp), args.rows)
        print(
            f"| file ({args.rows:,} records, {args.rounds} paired rounds) | variant | records/s"
            " | CPU s | peak RSS MB | ingestor speed-up (median, spread) |"
        )
        print("|---|---|---|---|---|---|")
        for path in (jsonl, csv_path):
            variants = ["baseline", "ours"] + (["floor"] if path.suffix == ".jsonl" else [])
            rounds: list[dict[str, dict[str, float]]] = []
            for _ in range(args.rounds):  # each round measures every variant, back to back
                rounds.append({v: measure(v, path) for v in variants})
            for r in rounds:
                assert r["ours"]["records"] == r["baseline"]["records"] == args.rows, r
            for variant in variants:
                runs = [r[variant] for r in rounds]
                wall = statistics.median(x["wall"] for x in runs)
                cpu = statistics.median(x["cpu"] for x in runs)
                rss = max(x["peak_rss_mb"] for x in runs)
                # On a noisy machine the best of each is steadier than any one round.
                best = {v: min(r[v]["wall"] for r in rounds) for v in variants}
                if variant == "ours":
                    ratios = [r["baseline"]["wall"] / r["ours"]["wall"] for r in rounds]
                    figure = (
                        f"{_spread(ratios)} vs baseline; best ÷ best "
                        f"{best['baseline'] / best['ours']:.2f}x"
                    )
                elif variant == "floor":
                    ratios = [r["ours"]["wall"] / r["floor"]["wall"] for r in rounds]
                    figure = (
                        f"ingestor ÷ floor: {_spread(ratios)}; best ÷ best "
                        f"{best['ours'] / best['floor']:.2f}x"
                    )
                else:
                    figure = "1.00x"
                name = {"ours": "ingestor", "floor": "floor (orjson.loads per line)"}.get(
                    variant, variant
                )
                print(
                    f"| {path.name} | {name} | {args.rows / wall:,.0f} | {cpu:.2f} | {rss:.0f} "
                    f"| {figure} |"
                )
        if args.big_gb:
            big = Path(tmp) / "big.jsonl"
            with big.open("wb") as handle:
                while handle.tell() < args.big_gb * 1024**3:
                    with jsonl.open("rb") as source:
                        shutil.copyfileobj(source, handle)
            r = measure("ours", big)
            print(
                f"| big.jsonl ({big.stat().st_size / 1024**3:.1f} GB) | ingestor | "
                f"{r['records'] / r['wall']:,.0f} | {r['cpu']:.2f} | {r['peak_rss_mb']:.0f} | |"
            )


if __name__ == "__main__":
    main()
