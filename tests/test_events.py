"""events/ folders: each row becomes a profile and its event for the bulk events endpoint,
sent through the same pipeline, with bad rows skipped by line and reason, and no duplicate
event when a batch is sent again."""

from __future__ import annotations

import json
import os
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from ingestor import crashpoints
from ingestor.app import ingest_folder_once
from ingestor.errors import LayoutError
from ingestor.kinds import EVENTS, MAX_EVENT_STRING_BYTES
from ingestor.layout import parse_folder_config
from ingestor.ledger import FileRun, FileState
from ingestor.mapping import EventRows, map_rows
from ingestor.parsers import ParseLimits, parse_file
from ingestor.records import Record, Reject
from ingestor.simulator import Simulator
from tests.conftest import FAST_LIMITS, KEY, api_key, make_folder, settings_for
from tests.service_helpers import ingest_command, running_service, write_settings

NOW = datetime(2026, 11, 23, tzinfo=UTC)
EVENTS_PATH = "/api/event-bulk-create-jobs"


def events_folder(root: Path, metric: str = "Placed Order", **config: Any) -> Path:
    folder = root / "acme" / "imports" / "events" / "orders"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"metric": metric, **config}))
    return folder


def made(rows: bytes, fmt: str, mapper: EventRows | None = None) -> list[Record | Reject]:
    """The items a file's rows become, as the pipeline makes them."""
    import io

    mapper = mapper or EventRows("Placed Order", False, "f1le", now=lambda: NOW)
    limits = ParseLimits(max_record_bytes=EVENTS.limits.max_record_bytes)
    return list(map_rows(parse_file(io.BytesIO(rows), fmt, limits), mapper))


def event_of(item: Record | Reject) -> dict[str, Any]:
    assert isinstance(item, Record), item
    whole: dict[str, Any] = orjson.loads(item.json)
    assert whole["type"] == "event-bulk-create"
    attributes = whole["attributes"]
    event = attributes["events"]["data"][0]["attributes"]
    return {"profile": attributes["profile"]["data"], **event}


def test_every_documented_csv_column_lands_where_the_api_wants_it() -> None:
    rows = (
        b"email,phone_number,external_id,anonymous_id,profile_id,time,value,value_currency,"
        b"unique_id,metric,sku,properties\n"
        b"a@x.io,+15005550006,c-1,anon-1,01PROFILE,2024-05-01T12:30:00Z,9.99,USD,o-1,Refund,"
        b'B-7,"{""gift"": true}"\n'
    )
    event = event_of(made(rows, "csv")[0])
    assert event["profile"] == {
        "type": "profile",
        "id": "01PROFILE",
        "attributes": {
            "email": "a@x.io",
            "phone_number": "+15005550006",
            "external_id": "c-1",
            "anonymous_id": "anon-1",
        },
    }
    assert event["metric"] == {"data": {"type": "metric", "attributes": {"name": "Refund"}}}
    assert event["time"] == "2024-05-01T12:30:00+00:00"
    assert (event["value"], event["value_currency"], event["unique_id"]) == (9.99, "USD", "o-1")
    assert event["properties"] == {"gift": True, "sku": "B-7"}  # the other columns join it


def test_a_jsonl_event_takes_numbers_unix_seconds_and_the_folder_metric() -> None:
    rows = b'{"external_id": 42, "time": 1700000000, "value": 3, "properties": {"n": [1]}}\n'
    event = event_of(made(rows, "jsonl")[0])
    assert event["profile"]["attributes"] == {"external_id": "42"}
    assert event["time"] == "2023-11-14T22:13:20+00:00"
    assert event["value"] == 3 and event["properties"] == {"n": [1]}
    assert event["metric"]["data"]["attributes"]["name"] == "Placed Order"


def test_a_row_without_a_unique_id_gets_one_from_the_file_version_and_its_line() -> None:
    rows = b"email,time\na@x.io,2024-05-01\nb@x.io,2024-05-02T08:00:00+02:00\n"
    first, second = (event_of(item) for item in made(rows, "csv"))
    assert (first["unique_id"], second["unique_id"]) == ("f1le-2", "f1le-3")
    assert first["time"] == "2024-05-01T00:00:00+00:00"  # a date alone: midnight UTC
    assert second["time"] == "2024-05-02T08:00:00+02:00"  # its own offset kept


def test_backfill_from_the_config_marks_every_event() -> None:
    mapper = EventRows("Placed Order", True, "f1le", now=lambda: NOW)
    event = event_of(made(b'{"email": "a@x.io", "time": "2024-01-01"}\n', "jsonl", mapper)[0])
    assert event["backfill"] is True


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        ({"time": "2024-05-01", "sku": "x"}, "no profile identifier"),
        ({"email": "a@x.io"}, "no time: the row needs a time"),
        ({"email": "a@x.io", "time": "last tuesday"}, 'time "last tuesday" is not ISO 8601'),
        ({"email": "a@x.io", "time": "1989-12-31"}, "out of range: after 1990"),
        ({"email": "a@x.io", "time": "2028-01-01"}, "at most a year from now"),
        ({"email": "a@x.io", "time": "2024-05-01", "value": "ten"}, 'a number, got "ten"'),
        ({"email": "a@x.io", "time": "2024-05-01", "properties": [1]}, "must be a JSON object"),
        ({"email": ["a"], "time": "2024-05-01"}, "email must be text"),
        ({"email": "a@x.io", "time": "2024-05-01", "metric": "m" * 128}, "at most 127 characters"),
        ({"email": "a@x.io", "time": "2024-05-01", **{f"p{i}": 1 for i in range(401)}}, "401 prop"),
        ({"email": "a@x.io", "time": "2024-05-01", "note": "x" * (MAX_EVENT_STRING_BYTES + 1)},
         "event.properties.note is over the API's 100,000-byte limit"),
    ],
)  # fmt: skip
def test_a_row_that_cannot_be_an_event_is_skipped_with_its_line_and_why(
    row: dict[str, Any], reason: str
) -> None:
    rows = b'{"email": "ok@x.io", "time": "2024-05-01"}\n' + orjson.dumps(row) + b"\n"
    good, bad = made(rows, "jsonl")
    assert isinstance(good, Record)
    assert isinstance(bad, Reject) and bad.line == 2
    assert reason in bad.reason


@pytest.mark.parametrize(
    ("config", "reason"),
    [
        ({}, 'config.json has no "metric" key; expected {"metric": "Placed Order"}'),
        ({"metric": " "}, 'config.json "metric" is empty'),
        ({"metric": "m" * 128}, "128 characters; the API takes at most 127"),
        ({"metric": 5}, 'config.json "metric" must be a string'),
        ({"metric": "Paid", "backfill": "yes"}, '"backfill" must be true or false'),
    ],
)
def test_an_events_config_says_what_is_wrong(config: dict[str, Any], reason: str) -> None:
    with pytest.raises(LayoutError) as caught:
        parse_folder_config(json.dumps(config).encode(), EVENTS)
    assert reason in str(caught.value)


def test_an_events_config_names_the_metric_and_may_backfill() -> None:
    config = parse_folder_config(b'{"metric": "Placed Order", "backfill": true}', EVENTS)
    assert (config.target_id, config.backfill) == ("Placed Order", True)


def test_an_events_folder_is_sent_in_full_requests_each_valid_against_the_spec(
    sim: Simulator, tmp_path: Path
) -> None:
    folder = events_folder(tmp_path / "drop")
    lines = ["email,time,value,sku"]
    for i in range(2500):
        lines.append(f"c{i}@x.io,2024-05-01T10:00:{i % 60:02d}Z,{i}.5,S{i}")
    lines[1001] = "c1000@x.io,,1,S"  # line 1002: no time
    lines[1801] = ",2024-05-01,1,S"  # line 1802: nobody
    (folder / "orders.csv").write_text("\n".join(lines) + "\n")
    result = ingest_folder_once(folder, api_key(), settings_for(sim, tmp_path / "s"))
    run = result.files[0].run
    assert run.state is FileState.DONE
    assert (run.counts.read, run.counts.sent, run.counts.skipped) == (2500, 2498, 2)
    events = sim.events("acme")
    assert len(events) == 2498
    assert {e["unique_id"] for e in events} == {
        f"{run.identity.sha256[:16]}-{line}" for line in range(2, 2502) if line not in (1002, 1802)
    }
    assert events[0]["profile"] == {"email": "c0@x.io"} and events[0]["value"] == 0.5
    assert events[0]["properties"] == {"sku": "S0"}
    posts = [r for r in sim.state.requests if r.path == EVENTS_PATH]
    assert [r.records for r in posts] == [1000, 1000, 498]  # as full as the limit allows
    assert {r.status for r in posts} == {202}
    assert sim.state.schema_failures == []
    report = result.files[0].report
    assert report is not None
    skipped = {s["line"]: s["reason"] for s in report.data["skipped_samples"]}
    assert set(skipped) == {1002, 1802}
    assert "no time" in skipped[1002] and "no profile identifier" in skipped[1802]


def test_an_event_refused_by_the_api_is_skipped_alone_by_its_pointer(
    sim: Simulator, tmp_path: Path
) -> None:
    folder = events_folder(tmp_path / "drop")
    rows = [{"email": f"c{i}@x.io", "time": "2024-05-01", "n": i} for i in range(30)]
    (folder / "orders.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))

    def refuse(item: dict[str, Any]) -> str | None:
        properties = item["attributes"]["events"]["data"][0]["attributes"]["properties"]
        return "invalid email" if properties["n"] == 17 else None

    sim.faults.refuse = refuse
    result = ingest_folder_once(folder, api_key(), settings_for(sim, tmp_path / "s"))
    run = result.files[0].run
    assert (run.counts.sent, run.counts.skipped) == (29, 1)
    assert sorted(e["properties"]["n"] for e in sim.events("acme")) == sorted(set(range(30)) - {17})
    samples = result.files[0].report.data["skipped_samples"]  # type: ignore[union-attr]
    assert [(s["line"], "invalid email" in s["reason"]) for s in samples] == [(18, True)]


def test_a_batch_sent_again_after_a_kill_creates_no_duplicate_event(tmp_path: Path) -> None:
    """Killed after the API accepted the 2nd batch and before its checkpoint: the restart
    sends that batch again, with the same unique ids, and the account keeps each event once."""
    with Simulator({KEY: "acme"}, bulk_limits=FAST_LIMITS, read_limits=FAST_LIMITS) as sim:
        folder = events_folder(tmp_path / "drop")
        with (folder / "orders.csv").open("w") as f:
            f.write("email,time,order\n")
            for i in range(3500):
                f.write(f"c{i % 50}@x.io,2024-05-01T10:00:00Z,{i}\n")
        state = tmp_path / "state"
        command, env = ingest_command(folder, sim, state)
        killed = subprocess.run(
            command, env={**env, crashpoints.ENV: "batch.acknowledged:2"}, capture_output=True
        )
        assert killed.returncode == -9
        assert sim.state.account("acme").events_received == 2000
        again = subprocess.run(command, env=env, capture_output=True)
        assert again.returncode == 0, again.stderr.decode()[-2000:]
        account = sim.state.account("acme")
        assert account.events_received == 4500  # the 2nd batch twice
        assert len(sim.events("acme")) == 3500  # each event once
        assert sorted(int(e["properties"]["order"]) for e in sim.events("acme")) == list(
            range(3500)
        )


def test_the_service_watching_the_tree_ingests_events_and_profiles_beside_custom_objects(
    sim: Simulator, tmp_path: Path
) -> None:
    drop, state = tmp_path / "drop", tmp_path / "state"
    drop.mkdir()
    settings = write_settings(tmp_path / "ingestor.toml", drop, state, sim)
    with running_service(settings) as svc:
        folder = events_folder(drop)
        rows = [
            {"email": f"c{i}@x.io", "time": "2024-05-01T10:00:00Z", "n": i} for i in range(1200)
        ]
        (folder / "orders.tmp").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
        os.rename(folder / "orders.tmp", folder / "orders.jsonl")  # an atomic upload
        pets = make_folder(drop)
        (pets / "pets.jsonl").write_bytes(b'{"id": 1}\n{"id": 2}\n')
        customers = drop / "acme" / "imports" / "profiles" / "customers"
        customers.mkdir(parents=True)
        (customers / "config.json").write_text("{}")
        (customers / "c.csv").write_text("email,tier\na@x.io,gold\nbad-address,gold\n")
        found: dict[str, FileRun] = {}
        while len(found) < 3:
            run = svc.next_run()
            found[run.identity.name] = run
    orders = found["orders.jsonl"]
    assert (orders.state, orders.counts.sent, orders.counts.batches) == (FileState.DONE, 1200, 2)
    assert orders.identity.kind == "events"
    assert sorted(e["properties"]["n"] for e in sim.events("acme")) == list(range(1200))
    assert found["pets.jsonl"].state is FileState.DONE and len(sim.records("acme")) == 2
    profiles = found["c.csv"]
    assert (profiles.state, profiles.counts.sent, profiles.counts.skipped) == (
        FileState.DONE,
        1,
        1,
    )
    assert sim.profiles("acme") == {
        "email:a@x.io": {"email": "a@x.io", "properties": {"tier": "gold"}}
    }
