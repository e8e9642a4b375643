"""Operating the service: metrics, status, retention, key trouble, files that change mid-run."""

from __future__ import annotations

import email
import os
import socket
import subprocess
import sys
import time
from email.policy import default
from pathlib import Path

import httpx

from ingestor.http import Connection, Connections
from ingestor.ledger import LEDGER_NAME, FileState, SqliteLedger
from ingestor.simulator import Simulator
from ingestor.worker.retention import DAY, SweepResult, sweep
from tests.conftest import KEY, make_folder
from tests.service_helpers import jsonl, running_service, two_companies, write_settings


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def metric(text: str, name: str) -> float:
    """The value of one series, ``name`` with its labels exactly as exposed."""
    for line in text.splitlines():
        series, _, value = line.rpartition(" ")
        if series == name:
            return float(value)
    raise AssertionError(f"{name} not in /metrics")


def test_metrics_count_what_was_sent_skipped_and_asked(tmp_path: Path, sim: Simulator) -> None:
    drop, port = tmp_path / "drop", free_port()
    folder = make_folder(drop)
    settings = write_settings(
        tmp_path / "s.toml", drop, tmp_path / "state", sim, service=f"metrics_port = {port}"
    )
    with running_service(settings) as svc:
        (folder / "pets.jsonl").write_bytes(jsonl(0, 1100) + b"not json\n")
        svc.run_for("pets.jsonl")
        text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
    assert metric(text, 'ingestor_records_sent_total{company="acme"}') == 1100
    assert metric(text, 'ingestor_records_skipped_total{company="acme"}') == 1
    assert metric(text, 'ingestor_requests_total{company="acme",status="204"}') == 3
    assert metric(text, 'ingestor_files_total{company="acme",state="done"}') == 1
    assert metric(text, 'ingestor_queue_depth{company="acme"}') == 0
    assert metric(text, 'ingestor_file_lag_seconds_count{company="acme"}') == 1


def test_status_shows_done_and_failed_files_from_the_ledger(tmp_path: Path, sim) -> None:
    drop = tmp_path / "drop"
    folder = make_folder(drop)
    (make_folder(drop, "broken", ds=None) / "b.jsonl").write_bytes(jsonl(0, 2))
    (folder / "pets.jsonl").write_bytes(jsonl(0, 50))
    settings = write_settings(tmp_path / "s.toml", drop, tmp_path / "state", sim)
    status = [sys.executable, "-m", "ingestor.cli", "status", "--config", str(settings)]
    with running_service(settings) as svc:
        names = {svc.next_run().identity.name, svc.next_run().identity.name}
        running = subprocess.run(status, capture_output=True, text=True, check=True).stdout
    assert names == {"pets.jsonl", "b.jsonl"}
    assert f"service: running (pid {os.getpid()})" in running  # the service is in this process
    out = subprocess.run(status, capture_output=True, text=True, check=True).stdout
    assert "service: not running" in out
    assert "in flight (0)" in out and "queued (0)" in out, out
    assert "done, last 24 h (1)" in out and "pets.jsonl" in out
    assert "failed, rejected or quarantined (1)" in out and "config.json" in out


def test_retention_deletes_old_processed_files_and_reports_only(tmp_path: Path, sim) -> None:
    drop, state = tmp_path / "drop", tmp_path / "state"
    folder = make_folder(drop)
    settings = write_settings(tmp_path / "s.toml", drop, state, sim)
    with running_service(settings) as svc:
        (folder / "old.jsonl").write_bytes(jsonl(0, 5) + b"[1]\n")
        old = svc.run_for("old.jsonl")
        (folder / "edited.jsonl").write_bytes(jsonl(0, 5))
        svc.run_for("edited.jsonl")
    (folder / "edited.jsonl").write_bytes(jsonl(0, 6))  # a new version nobody processed yet
    ledger = SqliteLedger(state / LEDGER_NAME)
    try:
        assert sweep(ledger, 30, time.time()).data_files == []  # nothing is 30 days old yet
        result = sweep(ledger, 30, time.time() + 31 * DAY)
        # Each run is looked at once; a later sweep does not walk them again.
        assert ledger.unswept(finished_before=time.time() + 40 * DAY) == []
        assert sweep(ledger, 30, time.time() + 40 * DAY) == SweepResult()
    finally:
        ledger.close()
    assert result.data_files == [folder / "old.jsonl"]
    assert not (folder / "old.jsonl").exists()
    assert (folder / "edited.jsonl").exists()
    assert Path(old.report_path) in result.reports and not Path(old.report_path).exists()
    assert Path(old.rejects_path) in result.reports


def test_a_bad_key_pauses_only_its_company_until_the_key_is_fixed(tmp_path: Path) -> None:
    with two_companies() as sim:
        drop, key_file = tmp_path / "drop", tmp_path / "acme.key"
        key_file.write_text("pk_revoked_key")
        key_file.chmod(0o600)
        settings = write_settings(
            tmp_path / "s.toml", drop, tmp_path / "state", sim, companies={"beta": "BETA_KEY"}
        )
        settings.write_text(
            settings.read_text()
            + f'[companies.acme]\napi_key_file = "{key_file}"\nrecipients = ["ops@acme.example"]\n'
        )
        (make_folder(drop) / "a.jsonl").write_bytes(jsonl(0, 20))
        with running_service(settings) as svc:
            failed = svc.run_for("a.jsonl")
            assert failed.state is FileState.FAILED and "401" in failed.reason
            (make_folder(drop, company="beta") / "b.jsonl").write_bytes(jsonl(0, 20))
            assert svc.run_for("b.jsonl").state is FileState.DONE  # beta is not held up
            key_file.write_text(KEY)
            svc.service.request_reload()
            done = svc.run_for("a.jsonl")
        assert done.state is FileState.DONE and done.counts.sent == 20
        assert len(sim.records("acme")) == 20
        assert "pk_revoked_key" not in failed.reason
        # One e-mail for the outage (however many retries), one for the file once done.
        subjects = sorted(
            email.message_from_bytes(p.read_bytes(), policy=default)["Subject"]
            for p in (tmp_path / "state" / "outbox").glob("*.eml")
        )
        assert len(subjects) == 2
        assert subjects[0].startswith("[ingestor] acme / pets / a.jsonl: 20 imported")
        # Plainly what happened and who acts, no HTTP internals (it said "GET … -> 401: …").
        assert subjects[1] == (
            "[ingestor] acme / pets / a.jsonl: waiting: Klaviyo refused the API key, the "
            "operator must renew it (0 imported)"
        )


def test_a_file_changed_mid_run_is_stopped_and_redone_as_a_new_version(tmp_path, sim) -> None:
    drop, state = tmp_path / "drop", tmp_path / "state"
    folder = make_folder(drop)
    settings = write_settings(tmp_path / "s.toml", drop, state, sim)
    sim.faults.latency = 0.05
    with running_service(settings) as svc:
        (folder / "pets.jsonl").write_bytes(jsonl(0, 6000))
        assert sim.wait_for_records("acme", 1000, timeout=20)
        with (folder / "pets.jsonl").open("ab") as more:
            more.write(jsonl(6000, 500))
        first = svc.run_for("pets.jsonl")
        sim.faults.latency = 0.0
        second = svc.run_for("pets.jsonl")
    assert first.state is FileState.FAILED and "changed while being processed" in first.reason
    assert first.version == 1 and second.version == 2
    # The new version is a pure append: it continues where the first stopped, so every
    # record arrives once (before, the new version was re-sent from its start).
    assert second.state is FileState.DONE
    assert first.counts.sent + second.counts.sent == 6500
    assert sorted(r["id"] for r in sim.records("acme")) == list(range(6500))


def test_a_second_service_on_the_same_state_dir_refuses_to_start(tmp_path: Path, sim) -> None:
    drop = tmp_path / "drop"
    drop.mkdir()
    settings = write_settings(tmp_path / "s.toml", drop, tmp_path / "state", sim)
    with running_service(settings):
        second = subprocess.run(
            [sys.executable, "-m", "ingestor.cli", "run", "--config", str(settings)],
            capture_output=True,
            text=True,
            env={**os.environ, "ACME_KEY": KEY},
            timeout=30,
        )
    assert second.returncode == 2
    assert "another ingestor service" in second.stderr and str(os.getpid()) in second.stderr


def test_an_auth_outage_is_emailed_once_however_many_retries_and_rescans(
    tmp_path: Path,
) -> None:
    """Each retry during an outage closes the file as failed again; those closes have nothing
    new to say, and the rescans that send missed e-mails must not find them either."""
    # The grace is long enough for the lane's own e-mail of the first failure (milliseconds)
    # and shorter than the pause between retries, so each retry's close grows old enough
    # for the rescans (every 0.2 s) to take it for a missed e-mail.
    with two_companies() as sim:
        drop, key_file = tmp_path / "drop", tmp_path / "acme.key"
        key_file.write_text("pk_revoked_key")
        key_file.chmod(0o600)
        settings = write_settings(
            tmp_path / "s.toml",
            drop,
            tmp_path / "state",
            sim,
            companies={"beta": "BETA_KEY"},
            service="rescan_interval_seconds = 0.2",
        )
        retrying = settings.read_text().replace(
            "auth_retry_interval_seconds = 0.5", "auth_retry_interval_seconds = 1.2"
        )
        settings.write_text(
            retrying
            + f'[companies.acme]\napi_key_file = "{key_file}"\nrecipients = ["ops@acme.example"]\n'
            + "[notify]\nannounce_grace_seconds = 0.5\n"
        )
        (make_folder(drop) / "a.jsonl").write_bytes(jsonl(0, 20))
        with running_service(settings):
            refusals = lambda log: sum(1 for r in log if r.status == 401)  # noqa: E731
            assert sim.wait_for_requests(lambda log: refusals(log) >= 4, timeout=20)
    messages = list((tmp_path / "state" / "outbox").glob("*.eml"))
    assert len(messages) == 1, [m.name for m in messages]


def failing_every_time(tmp_path: Path, sim: Simulator) -> tuple[Path, Path]:
    """Settings (rescans every 0.2 s, a recipient) and the outbox, with a.jsonl dropped
    and every record refused the same way (a systemic failure: the file fails)."""
    drop = tmp_path / "drop"
    settings = write_settings(
        tmp_path / "s.toml",
        drop,
        tmp_path / "state",
        sim,
        service="rescan_interval_seconds = 0.2",
        company_lines='recipients = ["ops@acme.example"]',
    )
    sim.faults.refuse = lambda record: "data source is archived"
    (make_folder(drop) / "a.jsonl").write_bytes(jsonl(0, 20))
    return settings, tmp_path / "state" / "outbox"


def test_a_file_failing_the_same_way_at_every_rescan_is_emailed_once(
    tmp_path: Path, sim: Simulator
) -> None:
    """A failed file is retried at each rescan; the same failure again is not news. The
    e-mail that matters next is the one saying it finally went through."""
    settings, outbox = failing_every_time(tmp_path, sim)
    with running_service(settings) as svc:
        for _ in range(4):  # the first failure and three retries, one a rescan
            assert svc.run_for("a.jsonl").state is FileState.FAILED
        assert len(list(outbox.glob("*.eml"))) == 1
        sim.faults.refuse = None
        assert svc.run_for("a.jsonl").state is FileState.DONE
    subjects = sorted(
        email.message_from_bytes(p.read_bytes(), policy=default)["Subject"]
        for p in outbox.glob("*.eml")
    )
    assert len(subjects) == 2 and "20 imported" in subjects[0], subjects


def test_the_same_failure_is_not_emailed_again_after_a_restart(
    tmp_path: Path, sim: Simulator
) -> None:
    """What was told is in the ledger (each run's ``told``), not in a lane's memory: a
    restarted service retries the failed file, fails the same way and says nothing new."""
    settings, outbox = failing_every_time(tmp_path, sim)
    with running_service(settings) as svc:
        assert svc.run_for("a.jsonl").state is FileState.FAILED
    assert len(list(outbox.glob("*.eml"))) == 1
    with running_service(settings) as svc:
        for _ in range(3):  # retried at start and at rescans, failing the same way
            assert svc.run_for("a.jsonl").state is FileState.FAILED
    assert len(list(outbox.glob("*.eml"))) == 1


def test_status_shows_each_company_and_why_one_is_blocked(tmp_path: Path) -> None:
    with two_companies() as sim:
        drop, state, key_file = tmp_path / "drop", tmp_path / "state", tmp_path / "acme.key"
        key_file.write_text("pk_revoked_key")
        key_file.chmod(0o600)
        settings = write_settings(
            tmp_path / "s.toml",
            drop,
            state,
            sim,
            companies={"beta": "BETA_KEY"},
        )
        held = settings.read_text().replace(  # held, not retrying, while we look
            "auth_retry_interval_seconds = 0.5", "auth_retry_interval_seconds = 60"
        )
        settings.write_text(held + f'[companies.acme]\napi_key_file = "{key_file}"\n')
        (make_folder(drop) / "a.jsonl").write_bytes(jsonl(0, 20))
        (make_folder(drop, company="beta") / "b.jsonl").write_bytes(jsonl(0, 30))
        status = [sys.executable, "-m", "ingestor.cli", "status", "--config", str(settings)]
        with running_service(settings) as svc:
            assert svc.run_for("b.jsonl").state is FileState.DONE
            live = state / "service-status.json"
            deadline = time.monotonic() + 10
            while b"authentication failed" not in (live.read_bytes() if live.exists() else b""):
                assert time.monotonic() < deadline, "the snapshot never showed the block"
                time.sleep(0.05)  # the service refreshes it once a second
            out = subprocess.run(status, capture_output=True, text=True, check=True).stdout
        assert not live.exists()  # a stopped service leaves no snapshot behind
    assert "blocked: acme" in out
    companies = out[out.index("companies") : out.index("in flight (")]  # that table alone
    rows = {line.split("│")[1].strip(): line for line in companies.splitlines() if "│" in line}
    assert "authentication failed" in rows["acme"] and "1" in rows["acme"]  # a.jsonl waits
    assert "30" in rows["beta"] and "authentication" not in rows["beta"]
    assert "pk_revoked_key" not in out


def test_a_long_retry_after_is_capped_and_the_company_shows_as_throttled(
    tmp_path: Path, sim
) -> None:
    """Before: a Retry-After: 600 silenced a company for ten minutes with no sign anywhere."""
    from ingestor.worker.status import LIVE_NAME, read_live

    drop, state = tmp_path / "drop", tmp_path / "state"
    settings = write_settings(tmp_path / "s.toml", drop, state, sim)
    settings.write_text(settings.read_text() + "[rate_limit.max_retry_after_seconds]\n"[:0])
    text = settings.read_text().replace(
        "steady = 3000", "steady = 3000\nmax_retry_after_seconds = 3"
    )
    settings.write_text(text)
    sim.faults.throttle_next = 1
    sim.faults.throttle_retry_after = 600
    folder = make_folder(drop)
    with running_service(settings) as svc:
        (folder / "a.jsonl").write_bytes(jsonl(0, 20))
        deadline = time.monotonic() + 10
        while True:  # the snapshot `status` reads, written once a second
            live = read_live(state / LIVE_NAME)
            if live and any(lane.throttled_for >= 1 for lane in live.lanes):
                break
            assert time.monotonic() < deadline, "never shown as throttled"
            time.sleep(0.1)
        assert "throttled: acme" in live.summary()
        run = svc.run_for("a.jsonl", timeout=15)  # waited 3 s, not 600
    assert run.state is FileState.DONE and 2.5 <= run.counts.throttled_seconds < 10


def test_companies_share_one_tls_context_and_have_a_connection_each(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Loading the CA bundle costs ~25 ms and ~1 MB: once per company made 500 companies
    cost seconds and hundreds of MB, so the service loads it once, and only for https. A
    pool shared by all companies made each request walk every company's connections, so
    each has its own connection, kept open from one request to the next."""
    contexts: list[object] = []
    real_context = httpx.create_ssl_context
    monkeypatch.setattr(
        httpx, "create_ssl_context", lambda *a, **k: contexts.append(1) or real_context(*a, **k)
    )
    connections = Connections()
    plain = connections.connect("http://127.0.0.1:9", 1.0, 1.0)
    assert contexts == []  # plain http loads no CA bundle
    acme = connections.connect("https://a.klaviyo.com", 1.0, 1.0)
    beta = connections.connect("https://a.klaviyo.com", 1.0, 1.0)
    assert len(contexts) == 1 and acme is not beta
    for connection in (plain, acme, beta):
        connection.close()


def test_each_company_keeps_one_connection_open_across_files(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    made: list[Connection] = []
    original = Connection.__init__

    def counting(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        made.append(self)
        original(self, *args, **kwargs)

    monkeypatch.setattr(Connection, "__init__", counting)
    with two_companies() as sim:
        drop = tmp_path / "drop"
        drop.mkdir()
        settings = write_settings(
            tmp_path / "s.toml",
            drop,
            tmp_path / "state",
            sim,
            companies={"acme": "ACME_KEY", "beta": "BETA_KEY"},
        )
        folders = {company: make_folder(drop, company=company) for company in ("acme", "beta")}
        with running_service(settings) as svc:
            for round in range(3):
                for company, folder in folders.items():
                    (folder / f"{company}{round}.jsonl").write_bytes(jsonl(round * 5, 5))
                done = {svc.next_run().identity.company for _ in range(2)}
                assert done == {"acme", "beta"}
            opened = sorted(connection.opened for connection in made)
        assert len(sim.records("acme")) == len(sim.records("beta")) == 15
    assert opened == [1, 1]  # one client each, one connection each, for 3 files and 6 calls
