"""What people read: e-mails to a company and log lines for the operator, through the real
service. Each says what happened and who must act, in the words of the one who reads it."""

from __future__ import annotations

import email
from email.message import EmailMessage
from email.policy import default
from pathlib import Path

import pytest

from ingestor.simulator import Simulator
from tests.conftest import make_folder
from tests.service_helpers import jsonl, running_service, write_settings


def messages(state: Path) -> list[EmailMessage]:
    return [
        email.message_from_bytes(p.read_bytes(), policy=default)  # type: ignore[misc]
        for p in sorted((state / "outbox").glob("*.eml"))
    ]


def body(message: EmailMessage) -> str:
    part = message.get_body(("plain",))
    assert part is not None
    return str(part.get_content())


@pytest.fixture
def service(tmp_path: Path, sim: Simulator):  # type: ignore[no-untyped-def]
    settings = write_settings(
        tmp_path / "s.toml",
        tmp_path / "drop",
        tmp_path / "state",
        sim,
        company_lines='recipients = ["ops@acme.example"]',
    )
    (tmp_path / "drop").mkdir()
    with running_service(settings) as svc:
        yield svc


def test_a_file_directly_under_custom_objects_is_told_to_move_into_a_named_folder(
    service, tmp_path: Path
) -> None:
    """Before: it was e-mailed 'Fix the folder's config.json', and the folder was named
    three ways (custom_objects in the subject, '-' in the body, 'file' in the report's
    name)."""
    kind = tmp_path / "drop" / "acme" / "imports" / "custom_objects"
    kind.mkdir(parents=True)
    (kind / "stray.csv").write_bytes(b"id\n1\n")
    run = service.run_for("stray.csv")
    (message,) = messages(tmp_path / "state")
    text = body(message)
    assert message["Subject"].startswith("[ingestor] acme / custom_objects / stray.csv: ")
    assert "move it into a named folder that has a config.json" in text
    assert "Fix the folder's config.json" not in text
    assert "Folder: custom_objects" in " ".join(text.split())
    assert "-custom_objects-stray.csv-" in Path(run.report_path).name


def test_a_bad_config_json_is_emailed_with_what_is_wrong(service, tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "drop", ds=None)
    (folder / "config.json").write_text('{"data_source_id": "not-a-ulid"}')
    (folder / "a.jsonl").write_bytes(jsonl(0, 3))
    service.run_for("a.jsonl")
    (message,) = messages(tmp_path / "state")
    text = " ".join(body(message).split())
    assert "not processed" in message["Subject"]
    assert "Fix the folder's config.json" in text and "is not a ULID" in text


def test_a_broken_config_json_is_told_once_for_all_the_files_of_its_folder(
    service, tmp_path: Path
) -> None:
    folder = make_folder(tmp_path / "drop", ds=None)
    (folder / "config.json").write_text('{"data_source_id": "not-a-ulid"}')
    for name in ("a.jsonl", "b.jsonl", "c.jsonl"):
        (folder / name).write_bytes(jsonl(0, 3))
    assert {service.next_run().identity.name for _ in range(3)} == {"a.jsonl", "b.jsonl", "c.jsonl"}
    (message,) = messages(tmp_path / "state")
    assert "is not a ULID" in " ".join(body(message).split())


def test_no_rejected_rows_file_is_written_when_nothing_was_skipped(service, tmp_path: Path) -> None:
    """Before: an empty *.rejected.jsonl was written for every file."""
    folder = make_folder(tmp_path / "drop")
    (folder / "clean.jsonl").write_bytes(jsonl(0, 5))
    (folder / "dirty.jsonl").write_bytes(jsonl(0, 2) + b"{broken\n")
    service.run_for("clean.jsonl")
    service.run_for("dirty.jsonl")
    rejects = sorted(p.name for p in (tmp_path / "state" / "reports").rglob("*.rejected.jsonl"))
    assert len(rejects) == 1 and "dirty.jsonl" in rejects[0]


def test_an_invalid_json_line_is_named_by_its_file_line_only(service, tmp_path: Path) -> None:
    """Before: the reason for file line 10 said 'line 1 column 2' (orjson's own count)."""
    folder = make_folder(tmp_path / "drop")
    (folder / "a.jsonl").write_bytes(jsonl(0, 9) + b"{oops\n")
    run = service.run_for("a.jsonl")
    rejected = (Path(run.rejects_path)).read_text()
    assert '"line":10' in rejected and "line 1" not in rejected and "at column" in rejected


def test_every_event_of_a_lane_names_its_company(
    service, tmp_path: Path, sim: Simulator, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before: rate_limited (logged deep in the sender) carried no company."""
    sim.faults.throttle_next = 1
    sim.faults.throttle_retry_after = 0.01
    (make_folder(tmp_path / "drop") / "a.jsonl").write_bytes(jsonl(0, 3))
    service.run_for("a.jsonl")
    lines = [line for line in capsys.readouterr().out.splitlines() if "rate_limited" in line]
    assert lines and all("company=acme" in line for line in lines)


def test_a_folder_of_many_files_is_emailed_as_one_digest(tmp_path: Path, sim: Simulator) -> None:
    """Before: 10,000 files in one folder sent 10,000 e-mails. A folder run of at least
    [notify] digest_after_files files (20) becomes one digest."""
    folder = make_folder(tmp_path / "drop")
    for n in range(60):
        (folder / f"part-{n:03d}.jsonl").write_bytes(jsonl(n * 10, 10))
    settings = write_settings(
        tmp_path / "s.toml",
        tmp_path / "drop",
        tmp_path / "state",
        sim,
        company_lines='recipients = ["ops@acme.example"]',
    )
    with running_service(settings) as svc:
        for _ in range(60):
            svc.next_run()
    (message,) = messages(tmp_path / "state")
    assert message["Subject"] == ("[ingestor] acme / pets: 60 files, 600 imported, 0 skipped")
    assert len(sim.records("acme")) == 600


def test_a_stop_mid_file_logs_the_checkpoint_it_will_resume_from(
    tmp_path: Path, sim: Simulator, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before: file_interrupted said offset 0 though the checkpoint was at byte 270,296."""
    import re

    from ingestor.ledger import FileState
    from tests.service_helpers import ledger_runs

    folder = make_folder(tmp_path / "drop")
    (folder / "big.jsonl").write_bytes(jsonl(0, 5000))
    settings = write_settings(tmp_path / "s.toml", tmp_path / "drop", tmp_path / "state", sim)
    sim.faults.latency = 0.05
    with running_service(settings):
        assert sim.wait_for_records("acme", 1000, timeout=20)
    (run,) = ledger_runs(tmp_path / "state")
    assert run.state is FileState.PROCESSING and run.offset > 0
    (line,) = [x for x in capsys.readouterr().out.splitlines() if "file_interrupted" in x]
    logged = re.search(r"offset=(\d+)", line)
    assert logged is not None and int(logged.group(1)) == run.offset
