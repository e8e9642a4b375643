"""What "every line is sent or skipped, once" means, shared by the property tests
(tests/test_hostile_input.py, tests/test_csv_parser.py) and the fuzz target
(fuzz/fuzz_parsers.py)."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from typing import BinaryIO

import orjson

from ingestor.batcher import batches
from ingestor.kinds import CUSTOM_OBJECTS
from ingestor.parsers import ParseLimits
from ingestor.parsers import csv as csv_module
from ingestor.records import Batch, LineRun, Record, Reject

Parser = Callable[[BinaryIO, ParseLimits], Iterator[LineRun | Record | Reject]]
ENVELOPE = CUSTOM_OBJECTS.envelope("01KTMWCZ8ZMNZS0HG5HQNX0H6E")


def sent_or_skipped(parser: Parser, data: bytes, limits: ParseLimits) -> list[Record | Reject]:
    """Every record and skipped row of ``data``, through the batcher as ingestion runs it."""
    out: list[Record | Reject] = []
    for item in batches(parser(io.BytesIO(data), limits), ENVELOPE, CUSTOM_OBJECTS.limits):
        if isinstance(item, Batch):
            out += item.records
        else:
            out.append(item)
    return out


def check_accounting(items: list[Record | Reject], size: int) -> None:
    """Each line once (skipped rows come out ahead of their batch), records are JSON
    objects, skips have a reason, nothing ends past the input."""
    lines = [item.line for item in items]
    assert len(lines) == len(set(lines)), "each line is reported once"
    for item in items:
        assert item.end_offset <= size
        if isinstance(item, Record):
            assert type(orjson.loads(item.json)) is dict
        else:
            assert item.reason


def starts_as_utf16(data: bytes) -> bool:
    """A UTF-16 byte-order mark: the whole file is rejected with one reason instead."""
    return data[:2] in (b"\xff\xfe", b"\xfe\xff")


def jsonl_lines_expected(data: bytes, max_line: int) -> int:
    """How many JSONL lines must come out (sent or skipped): all but blank ones (JSON
    whitespace only: a form feed is not blank); a line of
    ``max_line`` bytes or more (newline excluded) counts whatever it holds: skipped unread."""
    lines = data.split(b"\n")
    if data.endswith(b"\n"):
        lines.pop()
    expected = 0
    for index, line in enumerate(lines):
        body = line[3:] if index == 0 and line.startswith(b"\xef\xbb\xbf") else line
        if len(line) >= max_line or body.strip(b" \t\r\n"):  # blank: JSON whitespace only
            expected += 1
    return expected


def row_by_row_only(
    self: csv_module._Rows, rows: list[list[str]], before: int, last: int
) -> Iterator[LineRun | Record | Reject]:
    """In place of ``_Rows._chunk``: the chunk's lines read again a row at a time, by the
    path the chunk path falls back to, so that the two can be compared."""
    return self._row_by_row(before + 1, last)
