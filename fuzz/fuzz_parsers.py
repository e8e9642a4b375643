"""Coverage-guided fuzzing of the parsers with atheris (libFuzzer).

    pip install -e '.[fuzz]'
    python fuzz/fuzz_parsers.py -max_total_time=60 [corpus_dir]

Each input is parsed as JSONL and, behind a fixed header, as CSV, then batched as ingestion
does. A crash is any exception other than ParseError (CSV header problems), a record that is
not a JSON object, a line reported twice, a JSONL line neither sent nor skipped, or CSV output
that changes with the parser's block and chunk sizes (taken from the input's first bytes)
or between its chunk path and its row-at-a-time path.
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for tests.parser_accounting

with atheris.instrument_imports():
    from ingestor.errors import ParseError
    from ingestor.parsers import ParseLimits, parse_csv, parse_jsonl, parse_jsonl_blocks
    from ingestor.parsers import csv as csv_module
    from tests.parser_accounting import (
        check_accounting,
        jsonl_lines_expected,
        row_by_row_only,
        sent_or_skipped,
        starts_as_utf16,
    )

LIMITS = ParseLimits(max_line_bytes=4096, max_record_bytes=2048, max_excerpt=64)


def test_one_input(data: bytes) -> None:
    if starts_as_utf16(data):
        try:
            sent_or_skipped(parse_jsonl, data, LIMITS)
        except ParseError:
            return
        raise AssertionError("a UTF-16 file was not rejected as a whole")
    found = sent_or_skipped(parse_jsonl, data, LIMITS)
    check_accounting(found, len(data))
    expected = jsonl_lines_expected(data, LIMITS.max_line_bytes)
    assert len(found) == expected, "a JSONL line neither sent nor skipped"
    block = 1 + (data[0] if data else 0) % 97  # the block path, through the batcher
    fast = sent_or_skipped(
        lambda handle, limits: parse_jsonl_blocks(handle, limits, block_bytes=block), data, LIMITS
    )
    assert fast == found, "the JSONL block path differs from line by line"
    csv_data = b"id,name,tags\n" + data
    try:
        whole = sent_or_skipped(parse_csv, csv_data, LIMITS)
    except ParseError:
        raise AssertionError("a valid header rejected the whole file") from None
    check_accounting(whole, len(csv_data))
    sizes = (csv_module.BLOCK_BYTES, csv_module.CHUNK_ROWS)
    csv_module.BLOCK_BYTES = 1 + (data[0] if data else 0) % 97
    csv_module.CHUNK_ROWS = 1 + (data[1] if len(data) > 1 else 0) % 5
    try:
        small = sent_or_skipped(parse_csv, csv_data, LIMITS)
    finally:
        csv_module.BLOCK_BYTES, csv_module.CHUNK_ROWS = sizes
    assert small == whole, "the block or chunk size changed the CSV output"
    chunk_path = csv_module._Rows._chunk
    csv_module._Rows._chunk = row_by_row_only  # type: ignore[method-assign]
    try:
        slow = sent_or_skipped(parse_csv, csv_data, LIMITS)
    finally:
        csv_module._Rows._chunk = chunk_path  # type: ignore[method-assign]
    assert slow == whole, "the CSV chunk path differs from row by row"


if __name__ == "__main__":
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
