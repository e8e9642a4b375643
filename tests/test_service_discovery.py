"""The service watching a real drop tree with a real inotify observer: a user's upload, then
what reaches the (simulated) API and the ledger."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from watchdog.events import FileModifiedEvent

from ingestor.discovery import Discovery, Readiness
from ingestor.ledger import FileState
from ingestor.simulator import Simulator
from tests.conftest import make_folder
from tests.service_helpers import jsonl, ledger_runs, running_service, write_settings


def rows(start: int, count: int) -> bytes:
    return b"".join(
        json.dumps({"id": i, "name": f"pet {i}"}).encode() + b"\n"
        for i in range(start, start + count)
    )


def sent_ids(sim: Simulator) -> list[int]:
    return [r["id"] for r in sim.records("acme")]


def runs_of(state: Path, name: str) -> list[object]:
    return [r for r in ledger_runs(state) if r.identity.name == name]


@pytest.fixture
def tree(tmp_path: Path, sim: Simulator) -> tuple[Path, Path, Path]:
    drop, state = tmp_path / "drop", tmp_path / "state"
    drop.mkdir()
    settings = write_settings(tmp_path / "ingestor.toml", drop, state, sim)
    return drop, state, settings


def drop_sentinel(drop: Path, name: str) -> None:
    """A small complete file in its own folder: once its result is in, every event before it
    has been handled (one service thread, one lane, arrival order)."""
    folder = drop / "acme" / "imports" / "custom_objects" / "sentinels"
    if not folder.exists():
        folder = make_folder(drop, "sentinels")
    (folder / name).write_bytes(rows(10_000_000, 1))


def test_a_slow_upload_is_processed_once_and_only_when_complete(tree, sim) -> None:
    drop, state, settings = tree
    folder = make_folder(drop)
    with running_service(settings) as svc:
        with (folder / "pets.jsonl").open("wb") as upload:
            for chunk in range(4):
                upload.write(rows(chunk * 250, 250))
                upload.flush()
                # A slow uploader: longer pauses than the quiet period, file still open.
                time.sleep(0.5)
                drop_sentinel(drop, f"s{chunk}.jsonl")
                assert svc.run_for(f"s{chunk}.jsonl").state is FileState.DONE
                assert not [i for i in sent_ids(sim) if i < 10_000_000], "read while uploading"
        run = svc.run_for("pets.jsonl")
    assert run.state is FileState.DONE and run.counts.sent == 1000
    assert sorted(i for i in sent_ids(sim) if i < 10_000_000) == list(range(1000))
    assert len(runs_of(state, "pets.jsonl")) == 1


def test_an_atomic_rename_is_processed_once(tree, sim) -> None:
    drop, state, settings = tree
    folder = make_folder(drop)
    with running_service(settings) as svc:
        (folder / "upload.tmp").write_bytes(rows(0, 700))
        os.rename(folder / "upload.tmp", folder / "pets.jsonl")
        run = svc.run_for("pets.jsonl")
        drop_sentinel(drop, "after.jsonl")
        svc.run_for("after.jsonl")
    assert run.state is FileState.DONE and run.counts.sent == 700
    assert sorted(i for i in sent_ids(sim) if i < 10_000_000) == list(range(700))
    assert len(runs_of(state, "pets.jsonl")) == 1
    assert runs_of(state, "upload.tmp") == []


def test_a_file_dropped_while_stopped_is_processed_at_start_up(tree, sim) -> None:
    drop, _state, settings = tree
    (make_folder(drop) / "pets.jsonl").write_bytes(rows(0, 300))
    with running_service(settings) as svc:
        run = svc.run_for("pets.jsonl")
    assert run.state is FileState.DONE and run.counts.sent == 300


def test_a_stray_file_is_rejected_and_never_read(tree, sim) -> None:
    drop, _state, settings = tree
    make_folder(drop)
    kind_dir = drop / "acme" / "imports" / "custom_objects"
    with running_service(settings) as svc:
        (kind_dir / "stray.jsonl").write_bytes(rows(0, 5))
        run = svc.run_for("stray.jsonl")
    assert run.state is FileState.REJECTED
    assert "directly under imports/custom_objects/" in run.reason
    assert sim.records("acme") == []
    report = json.loads(Path(run.report_path).read_text())
    assert report["state"] == "rejected"


def test_a_folder_whose_config_is_fixed_later_is_processed_then(tree, sim) -> None:
    drop, _state, settings = tree
    folder = make_folder(drop, ds=None)
    with running_service(settings) as svc:
        (folder / "pets.jsonl").write_bytes(rows(0, 40))
        first = svc.run_for("pets.jsonl")
        assert first.state is FileState.REJECTED and "config.json" in first.reason
        (folder / "config.json").write_text(json.dumps({"data_source_id": DS}))
        second = svc.run_for("pets.jsonl")
    assert second.state is FileState.DONE and second.counts.sent == 40


def test_a_symlink_is_never_followed(tree, sim, tmp_path) -> None:
    drop, state, settings = tree
    folder = make_folder(drop)
    outside = tmp_path / "secret.jsonl"
    outside.write_bytes(rows(0, 3))
    with running_service(settings) as svc:
        (folder / "linked.jsonl").symlink_to(outside)
        (drop / "acme" / "imports" / "custom_objects" / "linked_dir").symlink_to(folder)
        drop_sentinel(drop, "after.jsonl")
        svc.run_for("after.jsonl")
        svc.service.request_rescan()
        drop_sentinel(drop, "after_rescan.jsonl")
        svc.run_for("after_rescan.jsonl")
    assert runs_of(state, "linked.jsonl") == []
    assert [i for i in sent_ids(sim) if i < 10_000_000] == []


DS = "01KTMWCZ8ZMNZS0HG5HQNX0H6E"


def test_a_polling_observer_uses_the_quiet_period(tree, sim) -> None:
    """Network file systems send no inotify events: files are ready once they hold still."""
    drop, _state, settings = tree
    folder = make_folder(drop)
    with running_service(settings, polling=True) as svc:
        (folder / "nfs.jsonl").write_bytes(rows(0, 50))
        run = svc.run_for("nfs.jsonl")
    assert run.state is FileState.DONE and run.counts.sent == 50


def test_a_file_whose_close_event_was_lost_is_ready_at_a_later_scan(tmp_path: Path) -> None:
    """An overflowed inotify queue drops events: a file seen being written whose close never
    arrives must not wait forever. A scan hands it over once it has been idle long enough."""
    drop = tmp_path / "drop"
    path = make_folder(drop) / "pets.jsonl"
    path.write_bytes(jsonl(0, 3))
    discovery = Discovery(drop, Readiness(quiet_period=0.5, close_events=True))
    now = time.monotonic()
    assert discovery.on_event(FileModifiedEvent(str(path)), now) == []  # the close is lost
    discovery.scan(now=now)
    assert discovery.due(now + 3600) == []  # recently written: still waiting for its close

    idle = discovery.readiness.stale_close + 1
    os.utime(path, (time.time() - idle, time.time() - idle))
    discovery.scan(now=now)
    assert [f.path for f in discovery.due(now)] == [path]  # idle well past the quiet period


def test_a_semicolon_export_is_sent_once_its_folder_declares_the_delimiter(tree, sim) -> None:
    """A company whose tool exports semicolons says so in config.json; until then the file
    is rejected with that advice, and it is picked up again when config.json changes."""
    drop, _state, settings = tree
    folder = make_folder(drop)
    with running_service(settings) as svc:
        (folder / "pets.csv").write_bytes(b"id;name\n1;Rex\n2;Ann\n")
        first = svc.run_for("pets.csv")
        assert first.state is FileState.REJECTED
        assert 'declare "delimiter": ";"' in first.reason
        (folder / "config.json").write_text(json.dumps({"data_source_id": DS, "delimiter": ";"}))
        second = svc.run_for("pets.csv")
    assert second.state is FileState.DONE and second.counts.sent == 2
    assert sim.records("acme") == [{"id": "1", "name": "Rex"}, {"id": "2", "name": "Ann"}]
