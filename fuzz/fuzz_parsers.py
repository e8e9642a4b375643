"""Coverage-guided fuzzing of the parsers with atheris (libFuzzer).

    pip install -e '.[fuzz]'
    python fuzz/fuzz_parsers.py -max_total_time=60 [corpus_dir]

Each input is parsed as JSONL and, behind a fixed header, as CSV, then batched as ingestion
does. A crash is any exception other than ParseError (CSV header problems), a record that is
not a JSON object, a line reported twice, or a JSONL line neither sent nor skipped.
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for tests.parser_accounting

with atheris.instrument_imports():
    from ingestor.errors import ParseError
    from ingestor.parsers import ParseLimits, parse_csv, parse_jsonl
    from tests.parser_accounting import check_accounting, jsonl_lines_expected, sent_or_skipped

LIMITS = ParseLimits(max_line_bytes=4096, max_record_bytes=2048, max_excerpt=64)


def test_one_input(data: bytes) -> None:
    found = sent_or_skipped(parse_jsonl, data, LIMITS)
    check_accounting(found, len(data))
    expected = jsonl_lines_expected(data, LIMITS.max_line_bytes)
    assert len(found) == expected, "a JSONL line neither sent nor skipped"
    csv_data = b"id,name,tags\n" + data
    try:
        check_accounting(sent_or_skipped(parse_csv, csv_data, LIMITS), len(csv_data))
    except ParseError:
        raise AssertionError("a valid header rejected the whole file") from None


if __name__ == "__main__":
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
