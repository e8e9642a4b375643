"""profiles/ folders: each row becomes a profile for the bulk profile import endpoint; the
asynchronous jobs it answers with are followed (across restarts) and the profiles Klaviyo
refused come back as skipped rows, at their lines."""

from __future__ import annotations

import io
import json
import signal
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pytest

from ingestor import crashpoints
from ingestor.app import ingest_folder_once
from ingestor.config import Settings
from ingestor.errors import LayoutError
from ingestor.kinds import PROFILES
from ingestor.layout import parse_folder_config
from ingestor.ledger import LEDGER_NAME, FileState, SqliteLedger
from ingestor.mapping import map_rows, profile_row
from ingestor.parsers import ParseLimits, parse_file
from ingestor.records import Record, Reject
from ingestor.simulator import Simulator
from tests.conftest import FAST_LIMITS, KEY, api_key, settings_for
from tests.service_helpers import ingest_command

JOBS = "/api/profile-bulk-import-jobs"


def profiles_folder(root: Path, config: dict[str, Any] | None = None) -> Path:
    folder = root / "acme" / "imports" / "profiles" / "customers"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config if config is not None else {}))
    return folder


def fast(sim: Simulator, state: Path) -> Settings:
    settings = settings_for(sim, state)
    return replace(settings, api=replace(settings.api, job_poll_interval=0.05))


def made(rows: bytes, fmt: str) -> list[Record | Reject]:
    limits = ParseLimits(max_record_bytes=PROFILES.limits.max_record_bytes)
    return list(map_rows(parse_file(io.BytesIO(rows), fmt, limits), profile_row))


def profile_of(item: Record | Reject) -> dict[str, Any]:
    assert isinstance(item, Record), item
    whole: dict[str, Any] = orjson.loads(item.json)
    assert whole["type"] == "profile"
    attributes: dict[str, Any] = whole["attributes"]
    return attributes


def test_every_documented_csv_column_lands_where_the_api_wants_it() -> None:
    rows = (
        b"email,phone_number,external_id,first_name,last_name,organization,title,locale,image,"
        b"location.city,location.country,location.latitude,tier,properties\n"
        b"a@x.io,+15005550006,c-1,Sarah,Mason,Acme,CTO,en-US,https://i/x.png,Oslo,Norway,"
        b'59.91,gold,"{""vip"": true}"\n'
    )
    assert profile_of(made(rows, "csv")[0]) == {
        "email": "a@x.io",
        "phone_number": "+15005550006",
        "external_id": "c-1",
        "first_name": "Sarah",
        "last_name": "Mason",
        "organization": "Acme",
        "title": "CTO",
        "locale": "en-US",
        "image": "https://i/x.png",
        "location": {"city": "Oslo", "country": "Norway", "latitude": "59.91"},
        "properties": {"vip": True, "tier": "gold"},  # the other columns join it
    }


def test_a_jsonl_profile_may_nest_its_location_and_use_a_numeric_external_id() -> None:
    rows = b'{"external_id": 42, "location": {"zip": "0150", "longitude": 10.75}}\n'
    assert profile_of(made(rows, "jsonl")[0]) == {
        "external_id": "42",
        "location": {"zip": "0150", "longitude": 10.75},
    }


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        ({"first_name": "x"}, "no profile identifier: the row needs an email"),
        ({"email": ["a"]}, "email must be text"),
        ({"email": "a@x.io", "location": "Oslo"}, "location must be a JSON object"),
        ({"email": "a@x.io", "location": {"street": "x"}}, "location has no field 'street'"),
        ({"email": "a@x.io", "location": {"city": 5}}, "location.city must be text"),
        ({"email": "a@x.io", "properties": [1]}, "properties must be a JSON object"),
    ],
)
def test_a_row_that_cannot_be_a_profile_is_skipped_with_its_line_and_why(
    row: dict[str, Any], reason: str
) -> None:
    good, bad = made(b'{"email": "ok@x.io"}\n' + orjson.dumps(row) + b"\n", "jsonl")
    assert isinstance(good, Record)
    assert isinstance(bad, Reject) and bad.line == 2 and reason in bad.reason


def test_a_profile_over_100_kb_is_skipped_before_sending(sim: Simulator, tmp_path: Path) -> None:
    folder = profiles_folder(tmp_path / "drop")
    rows = [{"email": "a@x.io"}, {"email": "b@x.io", "bio": "x" * 100_001}]
    (folder / "c.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    result = ingest_folder_once(folder, api_key(), fast(sim, tmp_path / "s"))
    assert (result.files[0].run.counts.sent, result.files[0].run.counts.skipped) == (1, 1)
    (sample,) = result.files[0].report.data["skipped_samples"]  # type: ignore[union-attr]
    assert sample["line"] == 2 and "100,000-byte per-record limit" in sample["reason"]


@pytest.mark.parametrize(
    ("config", "reason"),
    [
        ({"list_id": ""}, '"list_id" "" is not a list id'),
        ({"list_id": "a b"}, '"list_id" "a b" is not a list id'),
        ({"list_id": 7}, '"list_id" 7 is not a list id'),
    ],
)
def test_a_profiles_config_says_what_is_wrong(config: dict[str, Any], reason: str) -> None:
    with pytest.raises(LayoutError) as caught:
        parse_folder_config(json.dumps(config).encode(), PROFILES)
    assert reason in str(caught.value)


def test_a_profiles_config_may_name_a_list_or_none() -> None:
    assert parse_folder_config(b"{}", PROFILES).target_id == ""
    assert parse_folder_config(b'{"list_id": "Y6nRLr"}', PROFILES).target_id == "Y6nRLr"


def test_profiles_klaviyo_refuses_come_back_at_their_lines_across_jobs_and_pages(
    sim: Simulator, tmp_path: Path
) -> None:
    """25,000 rows: three jobs (10,000 a request); 150 invalid e-mails in the first job (two
    pages of import errors) and a bad phone in the third, each back at the line it came from."""
    folder = profiles_folder(tmp_path / "drop", {"list_id": "Y6nRLr"})
    bad_emails = {2 + i * 60 for i in range(150)}  # file lines, all in the first request
    bad_phone = 24_001
    lines = ["email,phone_number,first_name"]
    for line in range(2, 25_002):
        email = f"nobody-{line}" if line in bad_emails else f"c{line}@x.io"
        phone = "12345" if line == bad_phone else ""
        lines.append(f"{email},{phone},N{line}")
    (folder / "customers.csv").write_text("\n".join(lines) + "\n")
    result = ingest_folder_once(folder, api_key(), fast(sim, tmp_path / "s"))
    run = result.files[0].run
    assert run.state is FileState.DONE
    assert (run.counts.read, run.counts.sent, run.counts.skipped) == (25_000, 24_849, 151)
    assert len(sim.profiles("acme")) == 24_849
    posts = [r for r in sim.state.requests if r.method == "POST" and r.path == JOBS]
    assert [(r.status, r.records) for r in posts] == [(202, 10_000), (202, 10_000), (202, 5_000)]
    pages = [r for r in sim.state.requests if r.path.endswith("/import-errors")]
    assert len(pages) == 3  # 100 a page: job 1 has 150; job 2 none (not read); job 3 one
    assert sim.state.schema_failures == []
    rejected = [orjson.loads(line) for line in Path(run.rejects_path).read_bytes().splitlines()]
    assert sorted(r["line"] for r in rejected) == sorted([*bad_emails, bad_phone])
    by_line = {r["line"]: r for r in rejected}
    assert "(email): Invalid email address: 'nobody-2'" in by_line[2]["reason"]
    assert "(phone_number): Invalid phone number '12345'" in by_line[bad_phone]["reason"]
    assert json.loads(by_line[2]["raw"])["first_name"] == "N2"  # Klaviyo's original payload


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "kill-9"])
def test_a_job_still_running_when_the_worker_stops_is_followed_after_restart(
    tmp_path: Path, stop: signal.Signals
) -> None:
    with Simulator(
        {KEY: "acme"}, bulk_limits=FAST_LIMITS, read_limits=FAST_LIMITS, profile_job_seconds=3600
    ) as sim:
        folder = profiles_folder(tmp_path / "drop")
        (folder / "c.csv").write_text("email\na@x.io\nnot-an-email\nb@x.io\n")
        state = tmp_path / "state"
        command, env = ingest_command(folder, sim, state)
        worker = subprocess.Popen(command, env=env, stderr=subprocess.PIPE)
        assert sim.wait_for_requests(lambda rs: any(r.path.startswith(JOBS + "/") for r in rs), 30)
        worker.send_signal(stop)  # while it waits for the job
        worker.communicate(timeout=30)
        with SqliteLedger(state / LEDGER_NAME) as ledger:
            (run,) = ledger.runs()
            (job,) = ledger.jobs(run.id)
        assert run.state is FileState.PROCESSING and not job.done
        for pending in sim.state.account("acme").jobs.values():
            pending.due = 0.0  # the job completes while the worker is down
        again = subprocess.run(command, env=env, capture_output=True, timeout=60)
        assert again.returncode == 0, again.stderr.decode()[-2000:]
        with SqliteLedger(state / LEDGER_NAME) as ledger:
            (run,) = ledger.runs()
            (job,) = ledger.jobs(run.id)
        assert (run.state, run.counts.sent, run.counts.skipped) == (FileState.DONE, 2, 1)
        assert job.done and job.failed == 1
        posts = [r for r in sim.state.requests if r.method == "POST"]
        assert len(posts) == 1  # nothing sent twice: the restart only read the job
        rejected = [orjson.loads(x) for x in Path(run.rejects_path).read_bytes().splitlines()]
        assert [r["line"] for r in rejected] == [3]


def test_a_batch_sent_again_after_a_kill_does_not_refuse_its_rows_twice(tmp_path: Path) -> None:
    """Killed after the API accepted the batch and before its checkpoint: the restart sends
    it again (a second job for the same rows); the first job's refusals are not counted."""
    with Simulator({KEY: "acme"}, bulk_limits=FAST_LIMITS, read_limits=FAST_LIMITS) as sim:
        folder = profiles_folder(tmp_path / "drop")
        (folder / "c.csv").write_text("email\na@x.io\nnot-an-email\nb@x.io\n")
        state = tmp_path / "state"
        command, env = ingest_command(folder, sim, state, "--job-poll-interval", "0.05")
        killed = subprocess.run(
            command, env={**env, crashpoints.ENV: "batch.acknowledged:1"}, capture_output=True
        )
        assert killed.returncode == -9
        again = subprocess.run(command, env=env, capture_output=True, timeout=60)
        assert again.returncode == 0, again.stderr.decode()[-2000:]
        with SqliteLedger(state / LEDGER_NAME) as ledger:
            (run,) = ledger.runs()
            jobs = ledger.jobs(run.id)
        assert (run.counts.read, run.counts.sent, run.counts.skipped) == (3, 2, 1)
        assert len(jobs) == 1 and jobs[0].done  # the first job was forgotten
        assert len([r for r in sim.state.requests if r.method == "POST"]) == 2


def test_the_report_lists_skipped_rows_in_line_order_whoever_skipped_them(
    sim: Simulator, tmp_path: Path
) -> None:
    """Rows skipped before sending are written first, Klaviyo's refusals after its jobs."""
    folder = profiles_folder(tmp_path / "drop")
    (folder / "c.csv").write_text("email,first_name\nnot-an-email,A\n,B\nok@x.io,C\n")
    result = ingest_folder_once(folder, api_key(), fast(sim, tmp_path / "s"))
    samples = result.files[0].report.data["skipped_samples"]  # type: ignore[union-attr]
    assert [s["line"] for s in samples] == [2, 3]
    assert (
        "Klaviyo refused" in samples[0]["reason"]
        and "no profile identifier" in samples[1]["reason"]
    )
