"""Whatever bytes arrive, the parsers end, never crash, and account for every line:
each one is sent or reported as skipped (read = sent + skipped)."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingestor.errors import ParseError
from ingestor.parsers import ParseLimits, parse_csv, parse_jsonl
from ingestor.records import Record, Reject
from tests.parser_accounting import (
    Parser,
    check_accounting,
    jsonl_lines_expected,
    sent_or_skipped,
    starts_as_utf16,
)

LIMITS = ParseLimits(max_line_bytes=64 * 1024)
FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def items_of(parser: Parser, data: bytes) -> list[Record | Reject]:
    return sent_or_skipped(parser, data, LIMITS)


@FAST
@given(st.binary(max_size=2048))
def test_jsonl_random_bytes_every_line_sent_or_skipped(data: bytes) -> None:
    check_jsonl(data)


def check_jsonl(data: bytes) -> None:
    """Every line sent or skipped once; a file starting like UTF-16 is rejected whole."""
    if starts_as_utf16(data):
        with pytest.raises(ParseError, match="UTF-16"):
            items_of(parse_jsonl, data)
        return
    items = items_of(parse_jsonl, data)
    check_accounting(items, len(data))
    assert len(items) == jsonl_lines_expected(data, LIMITS.max_line_bytes)


json_line = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
).map(lambda value: orjson.dumps(value))


@FAST
@given(st.lists(json_line | st.binary(max_size=40), max_size=30))
def test_jsonl_mixed_valid_and_broken_lines(lines: list[bytes]) -> None:
    check_jsonl(b"\n".join(line.replace(b"\n", b" ") for line in lines) + b"\n")


csv_cell = st.text(
    alphabet=st.characters(blacklist_characters='"\r\n,', blacklist_categories=("Cs",)),
    max_size=12,
)


@FAST
@given(st.lists(st.lists(csv_cell, min_size=0, max_size=6), max_size=30))
def test_csv_unquoted_rows_each_sent_or_skipped(rows: list[list[str]]) -> None:
    data = ("a,b,c,d\n" + "".join(",".join(r) + "\n" for r in rows)).encode("utf-8")
    items = items_of(parse_csv, data)
    check_accounting(items, len(data))
    assert len(items) == sum(1 for r in rows if ",".join(r))  # an empty line is no row


@FAST
@given(st.binary(max_size=2048))
def test_csv_random_bytes_never_crash(data: bytes) -> None:
    try:
        items = items_of(parse_csv, b"id,name\n" + data)
    except ParseError:
        pytest.fail("a valid header must not reject the whole file")
    check_accounting(items, len(b"id,name\n" + data))


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b"[" * 60_000, "invalid JSON"),  # deeper than orjson recurses; under the line limit
        (b'{"n": 1e999999}', "invalid JSON"),
        (b'{"s": "\\ud800"}', "invalid"),
        (b'{"a": "\x00"}', "invalid JSON"),
        (b"\xff\xfe{}", "invalid UTF-8"),
    ],
)
def test_hostile_jsonl_lines_are_skipped_with_a_reason(line: bytes, reason: str) -> None:
    items = sorted(
        items_of(parse_jsonl, b'{"ok": 1}\n' + line + b'\n{"ok": 2}\n'), key=lambda i: i.line
    )
    assert [type(i).__name__ for i in items] == ["Record", "Reject", "Record"]
    assert reason in items[1].reason  # type: ignore[union-attr]


def test_duplicate_keys_are_sent_as_written() -> None:
    (record,) = items_of(parse_jsonl, b'{"a": 1, "a": 2}\n')
    assert isinstance(record, Record) and record.json == b'{"a": 1, "a": 2}'


def test_a_10_mb_line_is_skipped_unread_and_the_next_line_still_counts() -> None:
    data = b'{"x": "' + b"y" * (10 * 1024 * 1024) + b'"}\n{"ok": true}\n'
    items = items_of(parse_jsonl, data)
    assert [type(i).__name__ for i in items] == ["Reject", "Record"]
    assert "skipped unread" in items[0].reason  # type: ignore[union-attr]
    assert len(items[0].raw) <= LIMITS.max_excerpt + 1  # type: ignore[union-attr]


def test_a_10000_column_header_and_nul_bytes_in_csv() -> None:
    header = ",".join(f"c{i}" for i in range(10_000)).encode()
    row = ",".join(str(i) for i in range(10_000)).encode()
    items = sorted(
        items_of(parse_csv, header + b"\n" + row + b"\n1,\x00,3\n"), key=lambda i: i.line
    )
    assert isinstance(items[0], Record) and len(orjson.loads(items[0].json)) == 10_000
    assert len(items) == 2  # the NUL row is sent or skipped, never lost
