"""JSONL: one object a line; every other line is skipped with its line number and a reason."""

from __future__ import annotations

import io

import pytest

from ingestor.errors import ParseError
from ingestor.parsers import ParseLimits, parse_jsonl
from ingestor.records import Record, Reject

LIMITS = ParseLimits(max_record_bytes=1024, max_line_bytes=2048)


def parse(data: bytes, start: int = 0, line: int = 0) -> list[Record | Reject]:
    return list(parse_jsonl(io.BytesIO(data), LIMITS, start, line))


def test_objects_become_records_with_their_exact_bytes() -> None:
    data = b'{"id": 1, "big": 123456789012345678901234567890}\n{"id":2}\n'
    items = parse(data)
    assert [type(i) for i in items] == [Record, Record]
    assert items[0].json == b'{"id": 1, "big": 123456789012345678901234567890}'
    assert (items[1].line, items[1].end_offset) == (2, len(data))


def test_blank_lines_are_ignored_and_bad_lines_rejected_with_reasons() -> None:
    data = b'{"a":1}\n\n   \n[1,2]\n"text"\n{"broken": \n{"ok":true}\n'
    items = parse(data)
    rejects = [(i.line, i.reason) for i in items if isinstance(i, Reject)]
    assert rejects == [
        (4, "line is an array, not a JSON object"),
        (5, "line is a string, not a JSON object"),
        (6, rejects[2][1]),
    ]
    assert rejects[2][1].startswith("invalid JSON")
    assert [i.line for i in items if isinstance(i, Record)] == [1, 7]


def test_bom_crlf_and_missing_final_newline() -> None:
    items = parse(b'\xef\xbb\xbf{"a":1}\r\n{"b":2}')
    assert [i.json for i in items if isinstance(i, Record)] == [b'{"a":1}', b'{"b":2}']


def test_invalid_utf8_and_lone_surrogate_skip_only_that_line() -> None:
    items = parse(b'{"a":"caf\xe9"}\n{"b":"\\ud800"}\n{"c":3}\n')
    assert [type(i) for i in items] == [Reject, Reject, Record]
    assert "UTF-8" in items[0].reason or "unicode" in items[0].reason


def test_overlong_line_is_skipped_without_reading_it_whole() -> None:
    long_line = b'{"a":"' + b"x" * 10_000 + b'"}\n'
    items = parse(b'{"a":1}\n' + long_line + b'{"b":2}\n')
    assert [type(i) for i in items] == [Record, Reject, Record]
    assert items[1].line == 2 and "over 2,048 bytes" in items[1].reason
    assert len(items[1].raw) <= LIMITS.max_excerpt + 1
    assert items[2].line == 3


def test_deep_nesting_and_huge_numbers_are_rejected_not_crashing() -> None:
    items = parse(b"[" * 100_000 + b"\n" + b'{"n": 1e999999}\n')
    assert all(isinstance(i, Reject) for i in items) and len(items) == 2


def test_resume_from_checkpoint_continues_numbering() -> None:
    data = b'{"a":1}\n{"a":2}\n{"a":3}\n'
    first = parse(data)
    resumed = parse(data, start=first[0].end_offset, line=first[0].end_line)
    assert [i.line for i in resumed] == [2, 3]
    assert [i.json for i in resumed] == [b'{"a":2}', b'{"a":3}']


def test_a_utf16_file_is_rejected_whole_with_what_to_do() -> None:
    data = '{"id": 1}\n{"id": 2}\n'.encode("utf-16")
    with pytest.raises(ParseError, match="UTF-16 text, not UTF-8; save it as JSON Lines"):
        list(parse_jsonl(io.BytesIO(data), ParseLimits()))


def test_a_bom_mid_file_from_concatenated_files_is_not_a_reason_to_skip() -> None:
    bom = b"\xef\xbb\xbf"
    data = bom + b'{"id": 1}\n' + bom + b'{"id": 2}\n' + bom + b"[3]\n" + bom + b"{oops\n"
    items = list(parse_jsonl(io.BytesIO(data), ParseLimits()))
    assert [i.json for i in items if isinstance(i, Record)] == [b'{"id": 1}', b'{"id": 2}']
    rejects = [(i.line, i.reason) for i in items if isinstance(i, Reject)]
    assert rejects[0] == (3, "line is an array, not a JSON object")
    assert rejects[1][0] == 4 and rejects[1][1].startswith("invalid JSON")


@pytest.mark.parametrize("padding", [b"\x0c", b"\x0b"])
def test_form_feed_or_vertical_tab_around_a_line_is_not_json_whitespace(padding: bytes) -> None:
    """Before: bytes.strip() took them away and the line was sent. JSON's whitespace is
    space, tab, CR and LF only (RFC 8259)."""
    items = parse(b'{"a":1}\n' + padding + b'{"b":2}\n{"c":3}' + padding + b'\n \t{"d":4}\r\n')
    assert [(type(i).__name__, i.line) for i in items] == [
        ("Record", 1),
        ("Reject", 2),
        ("Reject", 3),
        ("Record", 4),
    ]
    assert all("invalid JSON" in i.reason for i in items if isinstance(i, Reject))
