"""The sender adapts to 429s, retries transient failures forever, and isolates poison records."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from ingestor.app import ingest_folder_once
from ingestor.config import ApiKey, RateLimitSettings
from ingestor.errors import AuthError
from ingestor.ledger import FileState
from ingestor.pipeline import FolderResult
from ingestor.simulator import Simulator
from tests.conftest import DS_ID, KEY, api_key, make_folder, settings_for


def jsonl(folder: Path, count: int, name: str = "a.jsonl") -> None:
    (folder / name).write_text("".join(f'{{"id": {i}}}\n' for i in range(count)))


def jsonl_folder(tmp_path: Path, count: int) -> Path:
    """An import folder holding a.jsonl with records {"id": 0} … {"id": count - 1}."""
    folder = make_folder(tmp_path / "drop")
    jsonl(folder, count)
    return folder


def ingest(sim: Simulator, folder: Path, tmp_path: Path) -> FolderResult:
    """Ingest with the fast test settings and the valid key."""
    return ingest_folder_once(folder, api_key(), settings_for(sim, tmp_path / "s"))


def ids(sim: Simulator) -> list[int]:
    return [r["id"] for r in sim.records("acme")]


def test_5xx_and_dropped_connections_are_retried_until_accepted(
    sim: Simulator, tmp_path: Path
) -> None:
    folder = jsonl_folder(tmp_path, 1200)
    sim.faults.fail_next = 4
    sim.faults.drop_next = 2
    result = ingest(sim, folder, tmp_path)
    assert sorted(ids(sim)) == list(range(1200))
    assert result.files[0].run.counts.retries == 6


def test_poison_records_are_isolated_by_pointer_and_by_bisection(
    sim: Simulator, tmp_path: Path
) -> None:
    folder = jsonl_folder(tmp_path, 1000)
    poison = {7, 499, 500, 733}
    sim.faults.refuse = lambda r: "bad value" if r["id"] in poison else None
    sim.faults.refuse_with_pointer = False
    result = ingest(sim, folder, tmp_path)
    run = result.files[0].run
    assert sorted(ids(sim)) == sorted(set(range(1000)) - poison)
    assert (run.counts.sent, run.counts.skipped) == (996, 4)
    lines = [s["line"] for s in result.files[0].report.data["skipped_samples"]]  # type: ignore[union-attr]
    assert sorted(lines) == sorted(p + 1 for p in poison)


def test_a_systemic_refusal_pauses_the_file_instead_of_skipping_everything(
    sim: Simulator, tmp_path: Path
) -> None:
    folder = jsonl_folder(tmp_path, 600)
    sim.faults.refuse = lambda r: "data source is archived"
    result = ingest(sim, folder, tmp_path)
    run = result.files[0].run
    assert run.state is FileState.FAILED and "accepted none" in run.reason
    assert run.counts.skipped == 0  # nothing was written off as bad data
    sim.faults.refuse = None
    retry = ingest(sim, folder, tmp_path)
    assert retry.files[0].run.state is FileState.DONE and sorted(ids(sim)) == list(range(600))


def test_429_storm_is_waited_out_without_losing_records(sim: Simulator, tmp_path: Path) -> None:
    folder = jsonl_folder(tmp_path, 700)
    sim.faults.throttle_next = 3
    sim.faults.throttle_retry_after = 0.05
    result = ingest(sim, folder, tmp_path)
    assert sorted(ids(sim)) == list(range(700))
    assert result.files[0].run.counts.throttled_seconds >= 0.15


def test_limiter_matching_the_server_provokes_no_429(tmp_path: Path) -> None:
    limits = RateLimitSettings(burst=3, burst_window=0.05, steady=10, steady_window=0.5)
    with Simulator({KEY: "acme"}, bulk_limits=limits, read_limits=limits) as sim:
        sim.add_data_source("acme", DS_ID)
        folder = make_folder(tmp_path / "drop")
        jsonl(folder, 25 * 500)
        ingest_folder_once(folder, api_key(), settings_for(sim, tmp_path / "s", limits))
        assert sim.stats()["statuses"] == {"200": 1, "204": 25}


def test_a_faster_client_adapts_to_the_servers_stricter_limit(tmp_path: Path) -> None:
    server = RateLimitSettings(burst=3, burst_window=0.05, steady=5, steady_window=0.5)
    client = RateLimitSettings(burst=3, burst_window=0.05, steady=20, steady_window=0.5)
    with Simulator({KEY: "acme"}, bulk_limits=server, integer_retry_after=False) as sim:
        sim.add_data_source("acme", DS_ID)
        folder = make_folder(tmp_path / "drop")
        jsonl(folder, 30 * 500)
        ingest_folder_once(folder, api_key(), settings_for(sim, tmp_path / "s", client))
        assert sorted(ids(sim)) == list(range(15_000))
        throttled = sim.stats()["statuses"].get("429", 0)
        assert 0 < throttled < 15  # it learned: far fewer 429s than requests


def test_bad_key_stops_with_a_clear_error_and_no_secret(sim: Simulator, tmp_path: Path) -> None:
    folder = jsonl_folder(tmp_path, 10)
    with pytest.raises(AuthError) as caught:
        ingest_folder_once(folder, ApiKey("pk_wrong_key_987"), settings_for(sim, tmp_path / "s"))
    assert "custom-objects:write" in str(caught.value)
    assert "pk_wrong_key_987" not in str(caught.value) and "pk_wrong" not in repr(ApiKey("pk_x"))


def test_stop_interrupts_an_endless_outage(sim: Simulator, tmp_path: Path) -> None:
    folder = jsonl_folder(tmp_path, 10)
    sim.faults.fail_next = 10**9
    stop = threading.Event()
    timer = threading.Timer(0.5, stop.set)
    timer.start()
    from ingestor.errors import Interrupted

    with pytest.raises(Interrupted):
        ingest_folder_once(folder, api_key(), settings_for(sim, tmp_path / "s"), stop=stop)
    assert sim.stats()["statuses"]["503"] >= 3  # it kept retrying until told to stop
