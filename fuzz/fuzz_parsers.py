"""Coverage-guided fuzzing of the parsers with atheris (libFuzzer).

    pip install -e '.[fuzz]'
    python fuzz/fuzz_parsers.py -max_total_time=60 [corpus_dir]

Each input is parsed as JSONL and, behind a fixed header, as CSV, then batched as ingestion
does. A crash is any exception other than ParseError (CSV header problems), a record that is
not a JSON object, a line reported twice, or a JSONL line neither sent nor skipped.
"""

from __future__ import annotations

import io
import sys

import atheris

with atheris.instrument_imports():
    import orjson

    from ingestor.batcher import batches
    from ingestor.errors import ParseError
    from ingestor.kinds import CUSTOM_OBJECTS
    from ingestor.parsers import ParseLimits, parse_csv, parse_jsonl
    from ingestor.records import Batch, Record, Reject

LIMITS = ParseLimits(max_line_bytes=4096, max_record_bytes=2048, max_excerpt=64)
ENVELOPE = CUSTOM_OBJECTS.envelope("01KTMWCZ8ZMNZS0HG5HQNX0H6E")


def items(parser: object, data: bytes) -> list[Record | Reject]:
    out: list[Record | Reject] = []
    stream = parser(io.BytesIO(data), LIMITS)  # type: ignore[operator]
    for item in batches(stream, ENVELOPE, CUSTOM_OBJECTS.limits):
        if isinstance(item, Batch):
            out += item.records
        else:
            out.append(item)
    return out


def check(found: list[Record | Reject], size: int) -> None:
    lines = [i.line for i in found]
    assert len(lines) == len(set(lines)), "a line reported twice"
    for item in found:
        assert item.end_offset <= size
        if isinstance(item, Record):
            assert type(orjson.loads(item.json)) is dict
        else:
            assert item.reason


def jsonl_expected(data: bytes) -> int:
    lines = data.split(b"\n")
    if data.endswith(b"\n"):
        lines.pop()
    if lines and lines[0].startswith(b"\xef\xbb\xbf"):
        lines[0] = lines[0][3:]
    return sum(1 for line in lines if line.strip() or len(line) + 1 >= LIMITS.max_line_bytes)


def test_one_input(data: bytes) -> None:
    found = items(parse_jsonl, data)
    check(found, len(data))
    if all(len(line) + 1 < LIMITS.max_line_bytes for line in data.split(b"\n")):
        assert len(found) == jsonl_expected(data), "a JSONL line neither sent nor skipped"
    csv_data = b"id,name,tags\n" + data
    try:
        check(items(parse_csv, csv_data), len(csv_data))
    except ParseError:
        raise AssertionError("a valid header rejected the whole file") from None


if __name__ == "__main__":
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
