"""Completion manifests: `x.csv.manifest.json` says how many data rows `x.csv` holds and/or
its SHA-256; a file that does not match is rejected before anything is sent, and a folder
whose config.json requires manifests waits for each file's."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from ingestor.app import ingest_folder_once
from ingestor.errors import LayoutError
from ingestor.layout import Placement, parse_manifest, place
from ingestor.ledger import FileState
from ingestor.simulator import Simulator
from tests.conftest import DS_ID, api_key, make_folder, settings_for
from tests.service_helpers import (
    ledger_runs,
    openssh,
    running_service,
    sftp_service_settings,
    write_settings,
)

PETS = b"id,name\n" + b"".join(b"%d,pet %d\n" % (i, i) for i in range(1200))
BULK = "/api/data-source-record-bulk-create-jobs"


def manifest(folder: Path, name: str, **fields: object) -> None:
    (folder / f"{name}.manifest.json").write_text(json.dumps(fields))


def required(folder: Path) -> None:
    (folder / "config.json").write_text(
        json.dumps({"data_source_id": DS_ID, "manifest": "required"})
    )


def posts(sim: Simulator) -> int:
    return sum(1 for r in sim.state.requests if r.path == BULK)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (b"[1]", 'must be a JSON object with "rows", "sha256" or both'),
        (b"{}", 'must be a JSON object with "rows", "sha256" or both'),
        (b'{"rows": -1}', '"rows" must be a whole number of data rows, got -1'),
        (b'{"rows": "12"}', "got '12'"),
        (b'{"sha256": "abc"}', '"sha256" must be 64 hex digits'),
        (b'{"rows": 1, "lines": 2}', "unknown key 'lines'"),
        (b"{rows: 1}", "is not valid JSON"),
    ],
)
def test_a_bad_manifest_says_what_is_wrong(text: bytes, reason: str) -> None:
    with pytest.raises(LayoutError) as caught:
        parse_manifest(text, "x.csv.manifest.json")
    assert reason in str(caught.value) and "x.csv.manifest.json" in str(caught.value)


def test_a_manifest_is_placed_as_such_not_as_data() -> None:
    placed = place(Path("acme/imports/custom_objects/pets/x.csv.manifest.json"))  # type: ignore[arg-type]
    assert placed.placement is Placement.MANIFEST


def test_a_file_matching_its_manifest_is_sent(sim: Simulator, tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "drop")
    (folder / "pets.csv").write_bytes(PETS)
    manifest(folder, "pets.csv", rows=1200, sha256=hashlib.sha256(PETS).hexdigest().upper())
    result = ingest_folder_once(folder, api_key(), settings_for(sim, tmp_path / "s"))
    assert result.files[0].run.state is FileState.DONE
    assert result.files[0].run.counts.sent == 1200
    assert result.ignored == ()  # the manifest is not listed as an ignored file


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"rows": 1500}, "pets.csv.manifest.json says 1,500 data rows, the file has 1,200"),
        ({"sha256": "0" * 64}, "pets.csv.manifest.json says sha256 0000000000000000…"),
    ],
)
def test_a_file_that_does_not_match_its_manifest_is_rejected_before_anything_is_sent(
    sim: Simulator, tmp_path: Path, fields: dict[str, object], reason: str
) -> None:
    """A truncated upload that ends on a line boundary looks complete; its manifest says not."""
    folder = make_folder(tmp_path / "drop")
    (folder / "pets.csv").write_bytes(PETS)
    manifest(folder, "pets.csv", **fields)
    result = ingest_folder_once(folder, api_key(), settings_for(sim, tmp_path / "s"))
    run = result.files[0].run
    assert run.state is FileState.REJECTED and reason in run.reason
    assert "nothing was sent" in run.reason
    assert (run.counts.sent, posts(sim)) == (0, 0)
    assert run.reason_code == "manifest_mismatch"


def test_a_folder_that_requires_manifests_waits_for_each(sim: Simulator, tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "drop")
    required(folder)
    (folder / "pets.csv").write_bytes(PETS)
    waiting = ingest_folder_once(folder, api_key(), settings_for(sim, tmp_path / "s"))
    assert waiting.files[0].unchanged and posts(sim) == 0  # not processed, nothing to tell
    manifest(folder, "pets.csv", rows=1200)
    done = ingest_folder_once(folder, api_key(), settings_for(sim, tmp_path / "s"))
    assert done.files[0].run.state is FileState.DONE and done.files[0].run.counts.sent == 1200


def test_a_bad_manifest_rejects_its_file_with_the_reason(sim: Simulator, tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "drop")
    (folder / "pets.csv").write_bytes(PETS)
    (folder / "pets.csv.manifest.json").write_text('{"rows": "many"}')
    run = ingest_folder_once(folder, api_key(), settings_for(sim, tmp_path / "s")).files[0].run
    assert run.state is FileState.REJECTED and '"rows" must be a whole number' in run.reason
    assert posts(sim) == 0


def test_the_service_waits_for_a_manifest_that_comes_after_its_file_or_before(
    sim: Simulator, tmp_path: Path
) -> None:
    drop, state = tmp_path / "drop", tmp_path / "state"
    drop.mkdir()
    settings = write_settings(tmp_path / "s.toml", drop, state, sim)
    with running_service(settings) as svc:
        folder = make_folder(drop)
        required(folder)
        (folder / "after.csv").write_bytes(PETS)  # its manifest comes later
        manifest(folder, "before.csv", rows=1200)  # this one's comes first
        (folder / "before.tmp").write_bytes(PETS)
        os.rename(folder / "before.tmp", folder / "before.csv")
        assert svc.run_for("before.csv").state is FileState.DONE
        assert posts(sim) == 3  # before.csv only: after.csv waits for its manifest
        manifest(folder, "after.csv", rows=1200)
        run = svc.run_for("after.csv")
    assert run.state is FileState.DONE and run.counts.sent == 1200
    assert len(sim.records("acme")) == 2400
    assert {r.identity.name for r in ledger_runs(state)} == {"after.csv", "before.csv"}


@pytest.mark.skipif(shutil.which("sftp") is None, reason="needs OpenSSH's sftp")
def test_an_openssh_upload_then_its_manifest_is_imported(
    sim: Simulator, tmp_path: Path, keys: dict[str, Path]
) -> None:
    settings = sftp_service_settings(tmp_path, sim, keys)
    (tmp_path / "config.json").write_text(
        json.dumps({"data_source_id": DS_ID, "manifest": "required"})
    )
    (tmp_path / "pets.csv").write_bytes(PETS)
    (tmp_path / "m.json").write_text(json.dumps({"rows": 1200}))
    with running_service(settings) as svc:
        upload = openssh(
            svc, tmp_path, keys["acme"],
            "mkdir imports/custom_objects/pets\n"
            f"put {tmp_path / 'config.json'} imports/custom_objects/pets/config.json\n"
            f"put {tmp_path / 'pets.csv'} imports/custom_objects/pets/pets.csv\n"
            f"put {tmp_path / 'm.json'} imports/custom_objects/pets/pets.csv.manifest.json\n",
        )  # fmt: skip
        assert upload.returncode == 0, upload.stderr
        run = svc.run_for("pets.csv")
    assert run.state is FileState.DONE and run.counts.sent == 1200
