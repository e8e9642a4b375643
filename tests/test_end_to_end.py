"""A drop folder ingested through the real HTTP simulator: every record arrives exactly once."""

from __future__ import annotations

import json
import random
from pathlib import Path

import orjson

from ingestor.app import ingest_folder_once
from ingestor.kinds import CUSTOM_OBJECTS
from ingestor.ledger import FileState
from ingestor.simulator import Simulator
from tests.conftest import DS_ID, api_key, make_folder, settings_for


def write_drop(folder: Path, csv_rows: int, jsonl_rows: int) -> set[str]:
    rng = random.Random(3)
    ids: set[str] = set()
    with (folder / "people.csv").open("w") as f:
        f.write("id,name,tags,note\n")
        for i in range(csv_rows):
            ids.add(f"c{i}")
            tags = '"[""a"", ""b""]"' if i % 3 == 0 else ""
            f.write(f'c{i},name {i},{tags},"multi\nline {rng.random()}"\n')
    with (folder / "orders.jsonl").open("w") as f:
        for i in range(jsonl_rows):
            ids.add(f"j{i}")
            f.write(json.dumps({"id": f"j{i}", "nested": {"k": [i, {"x": i}]}}) + "\n")
    return ids


def test_twenty_thousand_records_arrive_exactly_once(sim: Simulator, tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "drop")
    expected = write_drop(folder, 10_500, 9_700)
    settings = settings_for(sim, tmp_path / "state")
    result = ingest_folder_once(folder, api_key(), settings)
    assert result.ok, result
    got = [r["id"] for r in sim.records("acme")]
    assert len(got) == len(set(got)) == 20_200
    assert set(got) == expected
    stats = sim.stats()
    assert stats["schema_failures"] == 0
    assert stats["statuses"] == {"200": 1, "204": 41}  # 21 + 20 full-as-possible requests
    csv_run = next(f.run for f in result.files if f.run.identity.name == "people.csv")
    assert (csv_run.counts.read, csv_run.counts.sent, csv_run.counts.skipped) == (10_500, 10_500, 0)
    first_csv_row = next(r for r in sim.records("acme") if r["id"] == "c0")
    assert first_csv_row["tags"] == ["a", "b"] and first_csv_row["note"].startswith("multi\nline")

    again = ingest_folder_once(folder, api_key(), settings)
    assert all(f.unchanged for f in again.files)
    assert sim.stats()["statuses"] == stats["statuses"]  # nothing re-sent, not even the GET


def test_changed_file_is_a_new_version(sim: Simulator, tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "drop")
    (folder / "a.jsonl").write_text('{"id": 1}\n')
    settings = settings_for(sim, tmp_path / "state")
    ingest_folder_once(folder, api_key(), settings)
    (folder / "a.jsonl").write_text('{"id": 0}\n{"id": 1}\n{"id": 2}\n')  # not an append
    result = ingest_folder_once(folder, api_key(), settings)
    assert result.files[0].run.version == 2
    assert [r["id"] for r in sim.records("acme")] == [1, 0, 1, 2]


def test_a_pure_append_continues_where_the_earlier_version_stopped(
    sim: Simulator, tmp_path: Path
) -> None:
    """A new version whose bytes begin with the whole earlier version sends only what was
    added (its first bytes are hashed in the same pass as the whole file)."""
    folder = make_folder(tmp_path / "drop")
    (folder / "a.jsonl").write_text('{"id": 1}\n')
    settings = settings_for(sim, tmp_path / "state")
    ingest_folder_once(folder, api_key(), settings)
    with (folder / "a.jsonl").open("a") as f:
        f.write('{"id": 2}\n{"id": 3}\n')
    result = ingest_folder_once(folder, api_key(), settings)
    run = result.files[0].run
    assert (run.version, run.counts.read, run.counts.sent) == (2, 2, 2)
    assert [r["id"] for r in sim.records("acme")] == [1, 2, 3]


def test_unknown_data_source_rejects_the_folder(sim: Simulator, tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "drop", ds="01KTMX2Q4B8R0C1DVFJ6W3Y5ZA")
    (folder / "a.jsonl").write_text('{"id": 1}\n')
    result = ingest_folder_once(folder, api_key(), settings_for(sim, tmp_path / "state"))
    assert "does not exist in this account" in result.error
    assert result.files[0].run.state is FileState.REJECTED
    assert sim.records("acme") == []


def test_report_and_rejected_rows_file(sim: Simulator, tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "drop")
    (folder / "a.jsonl").write_text('{"id": 1}\n[2]\n\n{"id": 3}\n{oops\n')
    (folder / "notes.txt").write_text("hi")
    result = ingest_folder_once(folder, api_key(), settings_for(sim, tmp_path / "state"))
    report = orjson.loads(Path(result.files[0].run.report_path).read_bytes())
    assert (report["records_read"], report["records_sent"], report["records_skipped"]) == (4, 2, 2)
    assert report["data_source_id"] == DS_ID and report["state"] == "done"
    assert [s["line"] for s in report["skipped_samples"]] == [2, 5]
    assert report["ignored_files"] == [
        "notes.txt (only .csv, .jsonl, .csv.gz and .jsonl.gz are processed)"
    ]
    rejected = Path(report["rejected_rows_file"]).read_text().splitlines()
    assert [json.loads(x)["raw"] for x in rejected] == ["[2]", "{oops"]
    assert str(tmp_path / "drop") not in report["rejected_rows_file"]


def test_large_records_are_packed_to_the_real_4_mb_body_limit(
    sim: Simulator, tmp_path: Path
) -> None:
    """About 26 records of ~150 KB fill a body to just under 4,000,000 bytes, the spec's 4 MB
    read strictly; the simulator enforces the same limit, so no request is refused."""
    folder = make_folder(tmp_path / "drop")
    records = [orjson.dumps({"id": i, "pad": "p" * 150_000}) for i in range(80)]
    (folder / "big.jsonl").write_bytes(b"\n".join(records) + b"\n")
    result = ingest_folder_once(folder, api_key(), settings_for(sim, tmp_path / "state"))
    assert result.files[0].run.counts.sent == 80
    bulk = [r for r in sim.state.requests if r.method == "POST"]
    assert {r.status for r in bulk} == {204}
    item = len(CUSTOM_OBJECTS.envelope(DS_ID).body([records[0]])) - len(
        CUSTOM_OBJECTS.envelope(DS_ID).body([])
    )
    for request in bulk[:-1]:
        assert request.body_bytes <= 4_000_000 < request.body_bytes + item  # full, and no more
    assert [r.records for r in bulk] == [26, 26, 26, 2]
