"""The error budget: a file whose rows would mostly be skipped is read whole first and, over
its budget, quarantined with nothing sent; approved (by the uploader's `x.csv.approve`, or
`ingestor approve`), it is sent exactly as if it had passed."""

from __future__ import annotations

import email
import gzip
import json
import os
import shutil
import subprocess
import sys
from email.policy import default
from pathlib import Path

import orjson
import pytest

from ingestor import crashpoints
from ingestor.app import ingest_folder_once
from ingestor.config import Budget
from ingestor.errors import LayoutError
from ingestor.layout import parse_folder_config
from ingestor.ledger import LEDGER_NAME, FileState, SqliteLedger
from ingestor.simulator import Simulator
from tests.conftest import DS_ID, FAST_LIMITS, KEY, api_key, make_folder, settings_for
from tests.service_helpers import (
    ENVIRON,
    ingest_command,
    openssh,
    running_service,
    sftp_service_settings,
    write_settings,
)

BULK = "/api/data-source-record-bulk-create-jobs"


def messy(bad: int, good: int) -> bytes:
    """A CSV whose first ``bad`` rows have a cell too many, then ``good`` good rows."""
    rows = [b"id,name"] + [b"%d,x,extra" % i for i in range(bad)]
    rows += [b"%d,pet" % i for i in range(bad, bad + good)]
    return b"\n".join(rows) + b"\n"


def posts(sim: Simulator) -> int:
    return sum(1 for r in sim.state.requests if r.path == BULK)


@pytest.mark.parametrize(
    ("value", "expected"),
    [("5%", Budget(share=5.0)), ("0.5%", Budget(share=0.5)), (100, Budget(count=100)),
     ("100", Budget(count=100)), ("none", Budget())],
)  # fmt: skip
def test_a_budget_is_a_share_a_count_or_none(value: object, expected: Budget) -> None:
    assert Budget.parse(value) == expected


@pytest.mark.parametrize("value", ["5", "x%", "150%", -1, True, 2.5])
def test_a_bad_budget_in_config_json_says_what_it_takes(value: object) -> None:
    if value == "5":
        assert Budget.parse(value) == Budget(count=5)  # digits alone are a count
        return
    config = json.dumps({"data_source_id": DS_ID, "max_skipped": value}).encode()
    with pytest.raises(LayoutError, match=r'"max_skipped" .* must be a share such as "5%"'):
        parse_folder_config(config)


def test_budget_arithmetic_is_strictly_over() -> None:
    assert not Budget(share=10).exceeded(100, 1000) and Budget(share=10).exceeded(101, 1000)
    assert not Budget(count=3).exceeded(3, 10) and Budget(count=3).exceeded(4, 10)
    assert not Budget().exceeded(10**6, 10**6)


def test_a_file_over_its_budget_is_quarantined_with_nothing_sent(
    sim: Simulator, tmp_path: Path
) -> None:
    """Before: 900 broken rows of 1,000 finished `done` with 100 sent, exit 0."""
    folder = make_folder(tmp_path / "drop")
    (folder / "orders.csv").write_bytes(messy(900, 100))
    result = ingest_folder_once(folder, api_key(), settings_for(sim, tmp_path / "s"))
    run = result.files[0].run
    assert run.state is FileState.QUARANTINED and run.reason_code == "over_budget"
    assert (run.counts.read, run.counts.sent, run.counts.skipped) == (1000, 0, 900)
    assert "900 of its 1,000 rows would be skipped (90.0%), over the folder's error budget" in (
        run.reason
    )
    assert "orders.csv.approve" in run.reason and f"ingestor approve {run.id}" in run.reason
    assert posts(sim) == 0
    rejected = [orjson.loads(x) for x in Path(run.rejects_path).read_bytes().splitlines()]
    assert [r["line"] for r in rejected] == list(range(2, 902))


def test_a_file_within_its_budget_is_sent_and_its_rows_skipped_once(
    sim: Simulator, tmp_path: Path
) -> None:
    folder = make_folder(tmp_path / "drop")
    (folder / "config.json").write_text(json.dumps({"data_source_id": DS_ID, "max_skipped": 10}))
    (folder / "orders.csv").write_bytes(messy(10, 990))
    run = ingest_folder_once(folder, api_key(), settings_for(sim, tmp_path / "s")).files[0].run
    assert run.state is FileState.DONE and (run.counts.sent, run.counts.skipped) == (990, 10)
    rejected = Path(run.rejects_path).read_bytes().splitlines()
    assert len(rejected) == 10  # the look ahead's rows are not kept twice


def test_records_too_large_to_send_count_against_the_budget(sim: Simulator, tmp_path: Path) -> None:
    """The look ahead checks each record's size as the batcher does (it skips the packing,
    which skips nothing): a line the parser takes but the API's per-record limit does not
    is a skipped row before anything is sent."""
    folder = make_folder(tmp_path / "drop")
    (folder / "config.json").write_text(json.dumps({"data_source_id": DS_ID, "max_skipped": 2}))
    big = b'{"id": %d, "blob": "' + b"x" * (600 * 1024) + b'"}\n'
    lines = [b'{"id": 1}\n'] + [big % i for i in (2, 3, 4)] + [b'{"id": 5}\n']
    (folder / "big.jsonl").write_bytes(b"".join(lines))
    run = ingest_folder_once(folder, api_key(), settings_for(sim, tmp_path / "s")).files[0].run
    assert run.state is FileState.QUARANTINED
    assert (run.counts.read, run.counts.skipped) == (5, 3) and posts(sim) == 0
    rejected = [orjson.loads(x) for x in Path(run.rejects_path).read_bytes().splitlines()]
    assert [r["line"] for r in rejected] == [2, 3, 4]
    assert all("per-record limit" in r["reason"] for r in rejected)


def outbox_subjects(state: Path) -> list[str]:
    return sorted(
        email.message_from_bytes(p.read_bytes(), policy=default)["Subject"]
        for p in (state / "outbox").glob("*.eml")
    )


def test_an_uploaders_approve_file_releases_it_through_the_service(
    sim: Simulator, tmp_path: Path
) -> None:
    drop, state = tmp_path / "drop", tmp_path / "state"
    drop.mkdir()
    settings = write_settings(
        tmp_path / "s.toml", drop, state, sim, company_lines='recipients = ["a@example.com"]'
    )
    with running_service(settings) as svc:
        folder = make_folder(drop)
        (folder / "orders.csv").write_bytes(messy(900, 100))
        held = svc.run_for("orders.csv")
        assert held.state is FileState.QUARANTINED and posts(sim) == 0
        (folder / "orders.csv.approve").write_text("ok\n")
        run = svc.run_for("orders.csv")
    assert run.state is FileState.DONE and run.id == held.id
    assert (run.counts.read, run.counts.sent, run.counts.skipped) == (1000, 100, 900)
    assert sorted(r["id"] for r in sim.records("acme")) == [str(i) for i in range(900, 1000)]
    assert outbox_subjects(state) == [
        "[ingestor] acme / pets / orders.csv: 100 imported, 900 skipped",
        "[ingestor] acme / pets / orders.csv: quarantined, nothing imported: 900 of 1,000 "
        "rows would be skipped",
    ]
    assert (folder / "orders.csv.approve").exists()  # not ours to delete


def test_ingestor_approve_releases_it_from_another_process(sim: Simulator, tmp_path: Path) -> None:
    drop, state = tmp_path / "drop", tmp_path / "state"
    drop.mkdir()
    settings = write_settings(tmp_path / "s.toml", drop, state, sim)
    with running_service(settings) as svc:
        folder = make_folder(drop)
        (folder / "orders.csv").write_bytes(messy(600, 400))
        held = svc.run_for("orders.csv")
        assert held.state is FileState.QUARANTINED
        command = [sys.executable, "-m", "ingestor.cli", "approve", str(held.id)]
        command += ["--config", str(settings)]
        approve = subprocess.run(
            command, capture_output=True, text=True, env={**os.environ, **ENVIRON}, timeout=30
        )
        assert approve.returncode == 0, approve.stderr
        assert "sends its 400 good rows now" in approve.stdout
        run = svc.run_for("orders.csv")  # the service takes it without a rescan
    assert run.state is FileState.DONE and run.counts.sent == 400
    again = subprocess.run(
        command, capture_output=True, text=True, env={**os.environ, **ENVIRON}, timeout=30
    )
    assert again.returncode == 2 and "is done, not quarantined" in again.stderr


def test_a_kill_while_an_approved_file_is_sent_loses_nothing(tmp_path: Path) -> None:
    with Simulator({KEY: "acme"}, bulk_limits=FAST_LIMITS, read_limits=FAST_LIMITS) as sim:
        sim.add_data_source("acme", DS_ID)
        folder = make_folder(tmp_path / "drop")
        (folder / "orders.csv").write_bytes(messy(4000, 3000))
        state = tmp_path / "state"
        command, env = ingest_command(folder, sim, state, "--burst", "100", "--steady", "6000")
        held = subprocess.run(command, env=env, capture_output=True, timeout=60)
        assert held.returncode == 1  # quarantined: not processed
        (folder / "orders.csv.approve").write_text("")
        killed = subprocess.run(
            command, env={**env, crashpoints.ENV: "batch.acknowledged:3"}, capture_output=True
        )
        assert killed.returncode == -9
        done = subprocess.run(command, env=env, capture_output=True, timeout=60)
        assert done.returncode == 0, done.stderr.decode()[-2000:]
        ids = [int(r["id"]) for r in sim.records("acme")]
        assert sorted(set(ids)) == list(range(4000, 7000))  # every good row, none lost
        assert len(ids) - len(set(ids)) <= 500  # at most the batch in flight, sent twice
        with SqliteLedger(state / LEDGER_NAME) as ledger:
            (run,) = ledger.runs()
        assert (run.state, run.counts.sent, run.counts.skipped) == (FileState.DONE, 3000, 4000)


@pytest.mark.skipif(shutil.which("sftp") is None, reason="needs OpenSSH's sftp")
def test_an_approve_file_put_over_openssh_sftp_releases_it(
    sim: Simulator, tmp_path: Path, keys: dict[str, Path]
) -> None:
    settings = sftp_service_settings(tmp_path, sim, keys)
    drop = tmp_path / "drop"
    (tmp_path / "approve").write_text("")
    with running_service(settings) as svc:
        folder = make_folder(drop)
        (folder / "orders.csv").write_bytes(messy(900, 100))
        assert svc.run_for("orders.csv").state is FileState.QUARANTINED
        upload = openssh(
            svc, tmp_path, keys["acme"],
            f"put {tmp_path / 'approve'} imports/custom_objects/pets/orders.csv.approve\n",
        )  # fmt: skip
        assert upload.returncode == 0, upload.stderr
        run = svc.run_for("orders.csv")
    assert run.state is FileState.DONE and run.counts.sent == 100


def test_a_folder_whose_budget_is_none_is_not_read_ahead(sim: Simulator, tmp_path: Path) -> None:
    """ "none" in config.json turns the read-ahead off, as the setting does: a truncated
    gzip then sends the batches before the damage (read ahead, it would send none)."""
    folder = make_folder(tmp_path / "drop")
    (folder / "config.json").write_text(
        json.dumps({"data_source_id": DS_ID, "max_skipped": "none"})
    )
    rows = b"".join(b'{"id": %d, "n": "%d"}\n' % (i, i * 7919 % 10007) for i in range(20_000))
    packed = gzip.compress(rows)
    (folder / "pets.jsonl.gz").write_bytes(packed[: len(packed) * 3 // 4])
    run = ingest_folder_once(folder, api_key(), settings_for(sim, tmp_path / "s")).files[0].run
    assert run.state is FileState.REJECTED and "ends early" in run.reason
    assert 0 < run.counts.sent == len(sim.records("acme"))
