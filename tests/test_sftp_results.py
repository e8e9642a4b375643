"""Results an uploader can read over SFTP: each import folder's `_results/` (its files'
reports and rejected rows, read-only, deletable) and a live `/_status.json`, read with
OpenSSH's sftp as a company's script would."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from ingestor.ledger import FileState
from ingestor.simulator import Simulator
from tests.conftest import DS_ID, make_folder
from tests.service_helpers import Running, openssh, running_service, sftp_service_settings

pytestmark = pytest.mark.skipif(shutil.which("sftp") is None, reason="needs OpenSSH's sftp")

MESSY = b"id,name\n" + b"".join(
    b"%d,pet %d,extra\n" % (i, i) if i in (3, 7) else b"%d,pet %d\n" % (i, i) for i in range(40)
)


def login(svc: Running, tmp_path: Path, keys: dict[str, Path], commands: str) -> str:
    result = openssh(svc, tmp_path, keys["acme"], commands)
    assert result.returncode == 0, result.stderr
    return result.stdout


def refused(svc: Running, tmp_path: Path, keys: dict[str, Path], command: str) -> str:
    result = openssh(svc, tmp_path, keys["acme"], command)
    assert result.returncode != 0
    return result.stderr


def test_an_uploader_reads_its_results_and_status_and_may_delete_but_never_write(
    sim: Simulator, tmp_path: Path, keys: dict[str, Path]
) -> None:
    settings = sftp_service_settings(tmp_path, sim, keys)
    drop = tmp_path / "drop"
    with running_service(settings) as svc:
        folder = make_folder(drop)
        (folder / "pets.csv").write_bytes(MESSY)
        run = svc.run_for("pets.csv")
        assert run.state is FileState.DONE and run.counts.skipped == 2
        got = tmp_path / "got"
        got.mkdir()
        listing = login(
            svc, tmp_path, keys,
            "ls -1 /\n"
            "ls -1 imports/custom_objects/pets\n"
            "ls -1 imports/custom_objects/pets/_results\n"
            f"get imports/custom_objects/pets/_results/pets.csv.v1.report.json {got}/report.json\n"
            f"get imports/custom_objects/pets/_results/pets.csv.v1.rejected.jsonl {got}/rej.jsonl\n"
            f"get /_status.json {got}/status.json\n",
        )  # fmt: skip
        assert "_status.json" in listing and "_results" in listing
        assert "pets.csv.v1.report.json" in listing and "pets.csv.v1.rejected.jsonl" in listing
        report = json.loads((got / "report.json").read_text())
        assert (report["records_sent"], report["records_skipped"]) == (38, 2)
        lines = [json.loads(x)["line"] for x in (got / "rej.jsonl").read_text().splitlines()]
        assert lines == [5, 9]
        status = json.loads((got / "status.json").read_text())
        assert status["company"] == "acme"
        assert [d["file"] for d in status["done"]] == ["/imports/custom_objects/pets/pets.csv"]
        assert str(drop) not in (got / "status.json").read_text()  # no server path leaks
        (tmp_path / "x").write_text("mine")
        put = refused(
            svc, tmp_path, keys, f"put {tmp_path / 'x'} imports/custom_objects/pets/_results/x\n"
        )
        assert "Permission denied" in put  # OpenSSH shows the status, not our text
        mkdir = refused(svc, tmp_path, keys, "mkdir imports/custom_objects/other/_results\n")
        assert mkdir  # refused: the name is the service's
        login(
            svc,
            tmp_path,
            keys,
            "rm imports/custom_objects/pets/_results/pets.csv.v1.rejected.jsonl\n",
        )
        after = login(svc, tmp_path, keys, "ls -1 imports/custom_objects/pets/_results\n")
        assert "rejected.jsonl" not in after and "pets.csv.v1.report.json" in after
        assert not Path(run.rejects_path).exists()  # the company's rows, deleted at its word
    # Nothing virtual was ever written into the drop tree, so nothing there was taken as input.
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "pets.csv"]
    assert DS_ID in (folder / "config.json").read_text()
