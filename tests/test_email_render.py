"""The HTML part as a person sees it: rendered by headless Chromium (skipped where absent)."""

from __future__ import annotations

import struct
import sys
from pathlib import Path

import pytest

from ingestor.notify.message import render
from ingestor.reports import FileReport

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "docs"))
from screenshots import find_browser, render_png

REPORT = {
    "company": "acme",
    "kind": "custom_objects",
    "folder": "pets",
    "file": "pet_records.csv",
    "path": "/drop/acme/imports/custom_objects/pets/pet_records.csv",
    "size": 1_234_567,
    "sha256": "0" * 64,
    "version": 1,
    "data_source_id": "01KTMWCZ8ZMNZS0HG5HQNX0H6E",
    "state": "done",
    "reason": "",
    "started_at": 1_795_000_000.0,
    "finished_at": 1_795_000_040.0,
    "duration_seconds": 40.0,
    "records_read": 20_000,
    "records_sent": 19_998,
    "records_skipped": 2,
    "batches": 40,
    "retries": 1,
    "throttled_seconds": 2.5,
    "records_per_second": 499.9,
    "skipped_samples": [
        {"line": 18, "reason": "row has 5 cells but the header has 4 columns", "raw": "a,b,c,d,e"},
        {"line": 977, "reason": "row is not valid UTF-8", "raw": "caf\ufffd"},
    ],
    "rejected_rows_file": "",
    "ignored_files": [],
}


@pytest.mark.skipif(find_browser() is None, reason="needs Chromium (apt-get install chromium)")
def test_the_html_part_renders_to_a_png(tmp_path: Path) -> None:
    _text, html = render([FileReport.from_dict(REPORT)])
    png = tmp_path / "message.png"
    render_png(html, png, find_browser() or "", width=800, height=900)
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (800, 900)
    assert len(data) > 20_000  # a rendered page, not a blank canvas
