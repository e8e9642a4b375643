"""The events and profiles kinds against their endpoints' rate-limit bounds.

    python bench/kinds_bench.py --kind events [--rows 200000]
    python bench/kinds_bench.py --kind profiles [--rows 1700000]

``ingestor ingest`` sends a folder of ``--rows`` rows (JSONL) to the simulator enforcing the
endpoint's published limits (both: burst 10/s, steady 150/min), in real time: the worker's
limiter for that endpoint has its defaults, the published limits. The minimum time places
every request at the earliest moment the server's sliding windows allow. Reported: time ÷
minimum, achieved ÷ allowed request rate, rows per request ÷ the kind's maximum, 429s, and
what the account received. Profiles: the time is the POSTs' (following the jobs comes after).
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

from ingestor.kinds import EVENTS, KINDS, ImportKind
from ingestor.simulator import Simulator
from ingestor.simulator.state import EVENT_LIMITS, GUIDE_BULK_LIMITS


def kind_folder(root: Path, kind: ImportKind, rows: int) -> Path:
    folder = root / "drop" / "acme" / "imports" / kind.folder / "bench"
    folder.mkdir(parents=True)
    config = {"metric": "Placed Order"} if kind is EVENTS else {"list_id": "Y6nRLr"}
    (folder / "config.json").write_text(json.dumps(config))
    with (folder / "rows.jsonl").open("wb") as handle:
        for i in range(rows):
            if kind is EVENTS:
                handle.write(
                    b'{"email": "c%d@example.com", "time": "2026-10-01T09:%02d:00Z", '
                    b'"value": %d, "order_id": %d}\n' % (i % 5000, i % 60, i % 100, i)
                )
            else:
                handle.write(
                    b'{"email": "c%d@example.com", "first_name": "N%d", "tier": "gold"}\n' % (i, i)
                )
    return folder


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--kind", choices=("events", "profiles"), default="events")
    parser.add_argument("--rows", type=int, default=200_000)
    args = parser.parse_args()
    kind = KINDS[args.kind]
    limits = EVENT_LIMITS  # the profile endpoints publish the same
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        folder = kind_folder(root, kind, args.rows)
        with Simulator({KEY: "acme"}, keep_records=False, validate_every=1) as sim:
            began = time.monotonic()
            ingest(folder, sim, root / "state", GUIDE_BULK_LIMITS)  # custom objects' flags
            wall = time.monotonic() - began
            with sim.state.lock:
                posts = [r for r in sim.state.requests if r.path == kind.endpoint]
                account = sim.state.account("acme")
                jobs = list(account.jobs.values())
                kept = account.events_received + sum(len(job.profiles) for job in jobs)
            stats = sim.stats()
    accepted = [r for r in posts if r.status < 300]
    span = accepted[-1].at - accepted[0].at
    best = minimum_span(len(accepted), limits)
    per_request = sum(r.records for r in accepted) / len(accepted)
    print(
        f"{args.rows:,} {kind.folder} at the endpoint's published limits "
        f"(burst {limits.burst}/{limits.burst_window:g} s, steady {limits.steady}/"
        f"{limits.steady_window:g} s): {len(accepted)} requests in {span:.2f} s (minimum "
        f"{best:.2f} s), {wall:.1f} s wall for the whole command; every body validated "
        f"({stats['schema_failures']} failures)"
    )
    print("| measure | value | target |\n|---|---|---|")
    print(f"| time ÷ theoretical minimum | {span / best:.3f} | ≤ 1.05 |")
    print(f"| achieved ÷ allowed request rate | {best / span:.3f} | ≥ 0.97 |")
    maximum = kind.limits.max_records
    print(f"| rows per request ÷ {maximum:,} | {per_request / maximum:.3f} | ≥ 0.99 |")
    print(f"| 429s received | {sum(1 for r in posts if r.status == 429)} | 0 |")
    print(f"| rows accepted | {kept:,} of {args.rows:,} | all |")


if __name__ == "__main__":
    main()
