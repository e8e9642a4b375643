"""Many small files in one folder, as a lane takes them: one at a time, each its own call.

    python bench/many_files_bench.py [--files 3000]

Each file is handed to ``Pipeline.ingest_files(folder, [file])``, as a company's lane does,
against the simulator with both limiters off. Reported: files per second with the folder's
listing kept until the folder changes (what ships), and the baseline in the same run: the
listing read again for every file (what shipped before). The ratio is the figure.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from ingestor.config import ApiKey, ApiSettings, RateLimitSettings, Settings
from ingestor.kinds import CUSTOM_OBJECTS
from ingestor.klaviyo import KlaviyoClient
from ingestor.layout import ImportFolder, list_folder
from ingestor.ledger import open_ledger
from ingestor.pipeline import Pipeline
from ingestor.ratelimit import AccountLimiter
from ingestor.simulator import Simulator

DS_ID = "01KTMWCZ8ZMNZS0HG5HQNX0H6E"
KEY = "pk_bench_many_files_0123456789"
OFF = RateLimitSettings(enabled=False)


def run(sim: Simulator, files: int, cached: bool) -> float:
    """Files per second through one pipeline."""
    with tempfile.TemporaryDirectory() as top:
        root = Path(top)
        folder = root / "drop" / "acme" / "imports" / "custom_objects" / "many"
        folder.mkdir(parents=True)
        (folder / "config.json").write_text(f'{{"data_source_id": "{DS_ID}"}}')
        names = [f"part-{n:05d}.jsonl" for n in range(files)]
        for n, name in enumerate(names):
            (folder / name).write_bytes(b'{"id": %d}\n' % n)
        settings = Settings(state_dir=root / "state", api=ApiSettings(base_url=sim.url))
        ledger = open_ledger(settings.state_dir)
        target = ImportFolder(folder, "acme", CUSTOM_OBJECTS, "many", root / "drop")
        with KlaviyoClient(settings.api, ApiKey(KEY)) as client:
            pipeline = Pipeline(settings, ledger, client, AccountLimiter(OFF), emails=False)
            if not cached:  # the baseline: the whole folder listed for every file
                pipeline._listing = list_folder  # type: ignore[method-assign]
            began = time.perf_counter()
            for name in names:
                pipeline.ingest_files(target, [folder / name])
            elapsed = time.perf_counter() - began
        ledger.close()
    return files / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=3000)
    args = parser.parse_args()
    with Simulator({KEY: "acme"}, bulk_limits=OFF, read_limits=OFF, keep_records=False) as sim:
        sim.add_data_source("acme", DS_ID)
        baseline = run(sim, args.files, cached=False)
        ours = run(sim, args.files, cached=True)
    print(f"{args.files:,} files in one folder, one call per file, limiters off")
    print(f"  listing once per folder change: {ours:,.0f} files/s")
    print(f"  listing once per file (before): {baseline:,.0f} files/s")
    print(f"  ratio: {ours / baseline:.2f}x")


if __name__ == "__main__":
    main()
