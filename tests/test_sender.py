"""The sender adapts to 429s, retries transient failures forever, and isolates poison records."""

from __future__ import annotations

import itertools
import threading
from pathlib import Path

import pytest

from ingestor.app import ingest_folder_once
from ingestor.config import ApiKey, RateLimitSettings
from ingestor.errors import AuthError
from ingestor.ledger import FileState
from ingestor.pipeline import FolderResult
from ingestor.simulator import Simulator
from ingestor.simulator.state import GUIDE_BULK_LIMITS, SPEC_BULK_LIMITS
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


@pytest.mark.parametrize("pointer", [True, False], ids=["by-pointer", "by-bisection"])
def test_poison_records_are_isolated_by_pointer_and_by_bisection(
    sim: Simulator, tmp_path: Path, pointer: bool
) -> None:
    folder = jsonl_folder(tmp_path, 1000)
    poison = {7, 499, 500, 733}
    sim.faults.refuse = lambda r: "bad value" if r["id"] in poison else None
    sim.faults.refuse_with_pointer = pointer
    result = ingest(sim, folder, tmp_path)
    run = result.files[0].run
    assert sorted(ids(sim)) == sorted(set(range(1000)) - poison)
    assert (run.counts.sent, run.counts.skipped) == (996, 4)
    lines = [s["line"] for s in result.files[0].report.data["skipped_samples"]]  # type: ignore[union-attr]
    assert sorted(lines) == sorted(p + 1 for p in poison)
    refusals = sum(1 for r in sim.state.requests if r.status == 400)
    if pointer:  # one refusal names each poison record: no bisection needed
        assert refusals == len(poison)
    else:  # bisection: several refusals per poison record
        assert refusals > len(poison)


def test_a_record_the_api_drops_the_connection_on_every_time_is_skipped_not_retried_forever(
    sim: Simulator, tmp_path: Path
) -> None:
    """Before: the batch holding it was re-sent 27 times over 892 s and the file never
    finished. Now the batch is bisected once the API is seen answering other requests."""
    folder = jsonl_folder(tmp_path, 1200)
    sim.faults.drop_when = lambda record: record["id"] == 611
    result = ingest(sim, folder, tmp_path)
    run = result.files[0].run
    assert run.state is FileState.DONE
    assert sorted(ids(sim)) == [i for i in range(1200) if i != 611]
    (skipped,) = result.files[0].report.data["skipped_samples"]  # type: ignore[union-attr]
    assert skipped["line"] == 612 and "failed on this record every time" in skipped["reason"]
    assert len(sim.state.requests) < 80  # bounded (about 5 per halving): not forever


def test_an_outage_of_the_bulk_endpoint_alone_skips_nothing(sim: Simulator, tmp_path: Path) -> None:
    """Reads still work, every bulk request fails for a while: that is an outage, not poison;
    no record may be skipped for it."""
    folder = jsonl_folder(tmp_path, 1200)
    sim.faults.fail_next = 30
    result = ingest(sim, folder, tmp_path)
    assert sorted(ids(sim)) == list(range(1200))
    assert result.files[0].run.counts.skipped == 0


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


CLOCK = 60.0  # one server minute is one second of the test


def throttles_per_window(sim: Simulator, window: float) -> list[int]:
    """429s in each server window, counted from the first bulk request."""
    bulk = [r for r in sim.state.requests if r.method == "POST"]
    start = bulk[0].at
    windows = [0] * (int((bulk[-1].at - start) // window) + 1)
    for request in bulk:
        if request.status == 429:
            windows[int((request.at - start) // window)] += 1
    return windows


@pytest.mark.parametrize("headers", [True, False], ids=["RateLimit-headers", "no-headers"])
def test_configured_at_the_guides_60_against_the_specs_15_it_learns_the_servers_window(
    tmp_path: Path, headers: bool
) -> None:
    """Before: configured at 60/min against a server at 15/min, the limiter cut a spacing
    factor but kept a 60-request window, and drew a 429 in every window, forever."""
    spec = SPEC_BULK_LIMITS.scaled(CLOCK)  # 15 per server minute
    guide = GUIDE_BULK_LIMITS.scaled(CLOCK)  # what the settings say: 60
    with Simulator(
        {KEY: "acme"}, bulk_limits=spec, rate_limit_headers=headers, integer_retry_after=False
    ) as sim:
        sim.add_data_source("acme", DS_ID)
        folder = make_folder(tmp_path / "drop")
        jsonl(folder, 80 * 500)  # 80 requests: over five server windows at 15
        ingest_folder_once(folder, api_key(), settings_for(sim, tmp_path / "s", guide))
        assert sorted(ids(sim)) == list(range(40_000))
        per_window = throttles_per_window(sim, spec.steady_window)
    assert len(per_window) >= 5
    if headers:  # the server says its limit on every answer: not one 429 after the first
        assert sum(per_window) == 0, per_window
    else:  # learned by counting at the first 429, then only probes after two clean windows
        assert per_window[0] >= 1 and per_window[1] == 0, per_window
        late = [r.at for r in sim.state.requests if r.status == 429][per_window[0] - 1 :]
        gaps = [b - a for a, b in itertools.pairwise(late)]
        assert all(gap >= 2 * spec.steady_window for gap in gaps), per_window


def test_a_retry_after_far_in_the_future_is_capped(tmp_path: Path) -> None:
    """A server's Retry-After: 600 no longer silences an account for ten minutes."""
    from ingestor.ratelimit import AccountLimiter

    now = [100.0]
    limiter = AccountLimiter(RateLimitSettings(max_retry_after=30.0), clock=lambda: now[0])
    assert limiter.throttled(600.0) == 30.0
    now[0] += 30.0
    assert limiter.delay() <= 0.0


@pytest.mark.parametrize("form", ["seconds", "http-date"])
def test_retry_after_as_seconds_and_as_an_http_date(form: str) -> None:
    from datetime import UTC, datetime, timedelta
    from email.utils import format_datetime

    from ingestor.klaviyo import retry_after

    if form == "seconds":
        assert retry_after("7") == 7.0 and retry_after("0.25") == 0.25
    else:
        when = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
        assert 28.0 <= (retry_after(when) or 0.0) <= 30.0
        past = format_datetime(datetime.now(UTC) - timedelta(seconds=30), usegmt=True)
        assert retry_after(past) == 0.0
    assert retry_after("soon") is None and retry_after(None) is None


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


def test_a_batch_resent_after_its_answer_was_lost_is_reported_as_maybe_sent_twice(
    sim: Simulator, tmp_path: Path
) -> None:
    """Before: the API stored a batch, the answer timed out, the batch went again: the
    e-mail said every record was imported once, and nothing said otherwise."""
    folder = jsonl_folder(tmp_path, 1200)
    sim.faults.hang_after_accept_next = 1
    sim.faults.hang_seconds = 1.0
    settings = settings_for(sim, tmp_path / "s", read_timeout=0.3)
    result = ingest_folder_once(folder, api_key(), settings)
    report = result.files[0].report
    assert report is not None
    duplicates = len(sim.records("acme")) - 1200
    assert duplicates == 500  # the first batch, stored twice
    assert report.data["records_maybe_resent"] == 500
    from ingestor.notify.content import next_steps

    assert "500 records may have been sent twice" in " ".join(next_steps(report.report))
