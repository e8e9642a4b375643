"""The events kind against its endpoint's rate-limit bound.

    python bench/events_bench.py [--events 300000] [--clock-factor 10]

``ingestor ingest`` sends an events folder (``--events`` rows, JSONL) to the simulator
enforcing the bulk events endpoint's published limits (burst 10/s, steady 150/min) on a clock
``--clock-factor`` times faster; the worker's events limiter has the same published limits
on the same clock (its windows are the settings' windows, given here scaled). The minimum
time places every request at the earliest moment the server's sliding windows allow. Reported:
time ÷ minimum, achieved ÷ allowed request rate, events per request ÷ 1,000, 429s, and the
events kept (each once).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bound_bench import KEY, ingest, minimum_span

from ingestor.kinds import EVENTS
from ingestor.simulator import Simulator
from ingestor.simulator.state import EVENT_LIMITS, GUIDE_BULK_LIMITS


def events_folder(root: Path, events: int) -> Path:
    folder = root / "drop" / "acme" / "imports" / "events" / "bench"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"metric": "Placed Order"}))
    with (folder / "events.jsonl").open("wb") as handle:
        for i in range(events):
            handle.write(
                b'{"email": "c%d@example.com", "time": "2026-10-01T09:%02d:00Z", "value": %d, '
                b'"order_id": %d}\n' % (i % 5000, i % 60, i % 100, i)
            )
    return folder


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--clock-factor", type=float, default=10.0)
    args = parser.parse_args()
    limits = EVENT_LIMITS.scaled(args.clock_factor)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        folder = events_folder(root, args.events)
        with Simulator(
            {KEY: "acme"}, clock_factor=args.clock_factor, keep_records=False, validate_every=1
        ) as sim:
            began = time.monotonic()
            # The flags set the custom-objects limiter; the events limiter takes their windows
            # with the endpoint's published counts.
            ingest(folder, sim, root / "state", GUIDE_BULK_LIMITS.scaled(args.clock_factor))
            wall = time.monotonic() - began
            with sim.state.lock:
                posts = [r for r in sim.state.requests if r.path == EVENTS.endpoint]
                kept = sim.state.account("acme").events_received
            stats = sim.stats()
    accepted = [r for r in posts if r.status < 300]
    span = accepted[-1].at - accepted[0].at
    best = minimum_span(len(accepted), limits)
    per_request = sum(r.records for r in accepted) / len(accepted)
    print(
        f"{args.events:,} events at the events endpoint's limits x{args.clock_factor:g} "
        f"(burst {limits.burst}/{limits.burst_window:g} s, steady {limits.steady}/"
        f"{limits.steady_window:g} s): {len(accepted)} requests in {span:.2f} s (minimum "
        f"{best:.2f} s), {wall:.1f} s wall for the whole command; every body validated "
        f"({stats['schema_failures']} failures)"
    )
    print("| measure | value | target |\n|---|---|---|")
    print(f"| time ÷ theoretical minimum | {span / best:.3f} | ≤ 1.05 |")
    print(f"| achieved ÷ allowed request rate | {best / span:.3f} | ≥ 0.97 |")
    print(f"| events per request ÷ 1,000 | {per_request / 1000:.3f} | ≥ 0.99 |")
    print(f"| 429s received | {sum(1 for r in posts if r.status == 429)} | 0 |")
    print(f"| events accepted | {kept:,} of {args.events:,} | all |")


if __name__ == "__main__":
    main()
