"""Compressed uploads: `x.csv.gz` and `x.jsonl.gz` are streamed (never unpacked to disk) with
the same rules, line numbers and reports; a resume works inside the gzip stream; a corrupt,
truncated or bomb-like stream is rejected with the reason, keeping what was sent."""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import subprocess
import zlib
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingestor import crashpoints
from ingestor.app import ingest_folder_once
from ingestor.errors import ParseError
from ingestor.layout import Placement, data_format, is_compressed, place
from ingestor.ledger import FileState
from ingestor.parsers import views as views_module
from ingestor.parsers.compressed import Gunzipped, GzipLimits
from ingestor.simulator import Simulator
from tests.conftest import DS_ID, FAST_LIMITS, KEY, api_key, make_folder, settings_for
from tests.service_helpers import ingest_command, openssh, running_service, sftp_service_settings


@settings(max_examples=150, deadline=None)
@given(
    parts=st.lists(st.binary(max_size=300), min_size=1, max_size=4),
    chunk=st.integers(1, 9),
    seeks=st.lists(st.integers(0, 1300), max_size=6),
)
def test_a_gzip_view_reads_and_seeks_as_the_uncompressed_bytes_would(
    parts: list[bytes], chunk: int, seeks: list[int]
) -> None:
    """Several members (as `cat a.gz b.gz` makes), tiny chunks (every boundary crossed),
    seeks back and forth (a resume, a parser's step back)."""
    raw = b"".join(parts)
    packed = b"".join(gzip.compress(part) for part in parts)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(views_module, "_SOURCE_CHUNK", chunk)
        patch.setattr(views_module, "_KEEP_BEHIND", 3)
        view = Gunzipped(io.BytesIO(packed))
        assert view.read() == raw
        for offset in seeks:
            view.seek(offset)
            assert view.read(7) == raw[offset : offset + 7]
            view.seek(offset)
            assert view.readline() == io.BytesIO(raw[offset:]).readline()


def test_a_gzip_data_file_is_recognised_by_its_double_extension() -> None:
    assert [data_format(n) for n in ("a.csv.gz", "b.JSONL.GZ", "c.gz", "d.txt.gz")] == [
        "csv",
        "jsonl",
        None,
        None,
    ]
    assert is_compressed("a.csv.gz") and not is_compressed("a.csv")
    placed = place(Path("acme/imports/custom_objects/pets/a.csv.gz"))  # type: ignore[arg-type]
    assert placed.placement is Placement.DATA_FILE


def rows_csv(count: int, bad_every: int = 0) -> bytes:
    lines = [b"id,name,extra"]
    for i in range(count):
        extra = b"x,y" if bad_every and i % bad_every == 7 else b""
        lines.append(b"%d,pet %d,%s" % (i, i, extra))
    return b"\n".join(lines) + b"\n"


def test_a_compressed_csv_sends_and_skips_exactly_what_the_plain_one_does(
    sim: Simulator, tmp_path: Path
) -> None:
    data = rows_csv(3000, bad_every=250)
    plain = make_folder(tmp_path / "plain")
    (plain / "pets.csv").write_bytes(data)
    packed = make_folder(tmp_path / "packed")
    (packed / "pets.csv.gz").write_bytes(gzip.compress(data))
    before = ingest_folder_once(plain, api_key(), settings_for(sim, tmp_path / "s1"))
    sent_plain = [r["id"] for r in sim.records("acme")]
    after = ingest_folder_once(packed, api_key(), settings_for(sim, tmp_path / "s2"))
    sent_packed = [r["id"] for r in sim.records("acme")][len(sent_plain) :]
    assert after.files[0].run.state is FileState.DONE
    assert after.files[0].run.counts == before.files[0].run.counts
    assert sent_packed == sent_plain  # the same records, in the same order
    report, plain_report = after.files[0].report, before.files[0].report
    assert report is not None and plain_report is not None
    lines = [s["line"] for s in report.data["skipped_samples"]]
    assert lines == [s["line"] for s in plain_report.data["skipped_samples"]]
    assert lines == [9 + 250 * i for i in range(12)]
    assert report.data["read_as"]["compression"] == "gzip"


def test_a_killed_ingest_resumes_inside_the_gzip_stream_losing_nothing(tmp_path: Path) -> None:
    with Simulator({KEY: "acme"}, bulk_limits=FAST_LIMITS, read_limits=FAST_LIMITS) as sim:
        sim.add_data_source("acme", DS_ID)
        folder = make_folder(tmp_path / "drop")
        records = b"".join(b'{"id": %d, "pad": "%s"}\n' % (i, b"p" * 40) for i in range(12_000))
        (folder / "pets.jsonl.gz").write_bytes(gzip.compress(records))
        command, env = ingest_command(
            folder, sim, tmp_path / "state", "--burst", "100", "--steady", "6000"
        )
        killed = subprocess.run(
            command, env={**env, crashpoints.ENV: "batch.parsed:9"}, capture_output=True
        )
        assert killed.returncode == -9
        assert len(sim.records("acme")) == 4000  # 8 batches sent and checkpointed
        again = subprocess.run(command, env=env, capture_output=True, timeout=60)
        assert again.returncode == 0, again.stderr.decode()[-2000:]
        ids = [r["id"] for r in sim.records("acme")]
        assert sorted(set(ids)) == list(range(12_000))  # nothing lost
        assert len(ids) == 12_000  # and nothing sent twice: the resume began at the checkpoint
        assert b'"resumed": true' in again.stderr or b'"resumed":true' in again.stderr


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        ("truncate", "the gzip stream ends early (a truncated upload?) after"),
        ("corrupt", "the gzip stream is corrupt after"),
        ("trailing", "bytes after the end of the gzip stream are not gzip"),
    ],
)
def test_a_damaged_gzip_is_rejected_with_why_keeping_what_was_sent(
    sim: Simulator, tmp_path: Path, damage: str, reason: str
) -> None:
    data = b"".join(b'{"id": %d, "n": "%d"}\n' % (i, i * 7919 % 10007) for i in range(20_000))
    packed = gzip.compress(data)
    if damage == "truncate":
        packed = packed[: len(packed) * 3 // 4]
    elif damage == "corrupt":
        middle = len(packed) * 3 // 4
        packed = (
            packed[:middle]
            + bytes(b ^ 0x55 for b in packed[middle : middle + 64])
            + packed[middle + 64 :]
        )
    else:
        packed += b"garbage after the end"
    folder = make_folder(tmp_path / "drop")
    (folder / "pets.jsonl.gz").write_bytes(packed)
    # Read whole before sending (the error budget's look ahead): found before anything goes.
    result = ingest_folder_once(folder, api_key(), settings_for(sim, tmp_path / "s"))
    run = result.files[0].run
    assert run.state is FileState.REJECTED and reason in run.reason
    assert run.counts.sent == 0 and sim.records("acme") == []
    # Without a budget, nothing is read ahead: the batches before the damage are sent.
    folder.rename(folder.with_name("again"))
    settings = replace(settings_for(sim, tmp_path / "s2"), max_skipped="none")
    run = ingest_folder_once(folder.with_name("again"), api_key(), settings).files[0].run
    assert run.state is FileState.REJECTED and reason in run.reason
    sent = run.counts.sent
    assert sent == len(sim.records("acme"))
    if damage == "trailing":  # every row came out; the batch being packed when the
        assert sent >= 19_000  # garbage was met is not sent (a corrected upload is, whole)
    else:
        assert 0 < sent < 20_000  # the batches before the damage stay sent


def test_a_decompression_bomb_is_stopped_by_the_ratio_and_by_the_size(
    sim: Simulator, tmp_path: Path
) -> None:
    bomb = zlib.compressobj(9, zlib.DEFLATED, 31)
    line = b'{"a": "' + b"a" * 4000 + b'"}\n'
    packed = bomb.compress(line * 15_000) + bomb.flush()  # 60 MB in ~60 KB
    with pytest.raises(ParseError, match="expands more than 200 times"):
        Gunzipped(io.BytesIO(packed)).read()
    with pytest.raises(ParseError, match="expands to more than 1,000,000 bytes"):
        Gunzipped(io.BytesIO(packed), GzipLimits(max_bytes=1_000_000)).read()
    folder = make_folder(tmp_path / "drop")
    (folder / "bomb.jsonl.gz").write_bytes(packed)
    settings = replace(settings_for(sim, tmp_path / "s"), max_compression_ratio=200)
    result = ingest_folder_once(folder, api_key(), settings)
    run = result.files[0].run
    assert run.state is FileState.REJECTED and "decompression bomb" in run.reason
    assert json.dumps(run.reason)  # a reason a person can read, not a traceback


@pytest.mark.skipif(shutil.which("sftp") is None, reason="needs OpenSSH's sftp")
def test_the_service_ingests_a_gzip_upload_from_disk_and_over_openssh_sftp(
    sim: Simulator, tmp_path: Path, keys: dict[str, Path]
) -> None:
    settings = sftp_service_settings(tmp_path, sim, keys)
    drop = tmp_path / "drop"
    with running_service(settings) as svc:
        folder = make_folder(drop)
        (folder / "disk.csv.tmp").write_bytes(gzip.compress(rows_csv(700)))
        os.rename(folder / "disk.csv.tmp", folder / "disk.csv.gz")  # an atomic upload
        on_disk = svc.run_for("disk.csv.gz")
        (tmp_path / "up.jsonl.gz").write_bytes(gzip.compress(b'{"id": 5000}\n' * 3))
        upload = openssh(
            svc,
            tmp_path,
            keys["acme"],
            f"put {tmp_path / 'up.jsonl.gz'} imports/custom_objects/pets/up.jsonl.gz\n",
        )
        assert upload.returncode == 0, upload.stderr
        over_sftp = svc.run_for("up.jsonl.gz")
    assert (on_disk.state, on_disk.counts.sent) == (FileState.DONE, 700)
    assert (over_sftp.state, over_sftp.counts.sent) == (FileState.DONE, 3)
    assert len(sim.records("acme")) == 703
