"""The block paths (``parse_jsonl_blocks``, ``parse_csv_blocks`` and the batcher's LineRun
packing) against the record-by-record reference: the same records, rejects, batches, bodies
and checkpoints, for any block size, resume point and batch limits. This is what lets
ingestion take the fast paths."""

from __future__ import annotations

import io

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingestor.batcher import batches
from ingestor.errors import ParseError
from ingestor.kinds import BatchLimits, Envelope
from ingestor.parsers import (
    ParseLimits,
    parse_csv,
    parse_csv_blocks,
    parse_jsonl,
    parse_jsonl_blocks,
)
from ingestor.records import Batch, LineRun, Record, Reject

ENVELOPE = Envelope(b'{"data":[', b"]}", b'{"r":', b"}")
LIMITS = ParseLimits(max_record_bytes=300, max_line_bytes=200)
# Small limits, so that a few dozen lines fill several batches, by count or by bytes, and
# some records are too large to send.
BATCH_LIMITS = st.builds(
    BatchLimits,
    max_records=st.integers(1, 10),
    max_body_bytes=st.integers(120, 1000),
    max_record_bytes=st.integers(40, 250),
)

GOOD = st.one_of(
    st.builds(lambda n: b'{"id": %d}' % n, st.integers(0, 10**6)),  # the common case
    st.builds(
        lambda n, s: b'{"id": %d, "s": "%s"}' % (n, b"x" * s), st.integers(), st.integers(0, 150)
    ),
)
ODD = st.one_of(
    st.sampled_from(
        [b"", b"   ", b' {"pad": 1}', b'{"pad": 2}\t', b"[1, 2]", b'"text"', b"{broken", b"null"]
    ),
    st.sampled_from([b'\xef\xbb\xbf{"bom": 1}', b'{"cr": 1}\r', b'{"lone": "\r"}', b"\x0c{}"]),
    st.builds(lambda n: b'{"long": "%s"}' % (b"y" * n), st.integers(180, 400)),
)
# Runs of plain lines (what the fast path takes) between odd lines (what it must not).
LINES = st.lists(st.one_of(st.lists(GOOD, min_size=1, max_size=25), ODD.map(lambda x: [x])))


def flat(items: object) -> list[Record | Reject]:
    out: list[Record | Reject] = []
    for item in items:  # type: ignore[attr-defined]
        out += list(item) if type(item) is LineRun else [item]
    return out


def batched(items: object, limits: BatchLimits) -> list[tuple[object, ...]]:
    out: list[tuple[object, ...]] = []
    for item in batches(items, ENVELOPE, limits):  # type: ignore[arg-type]
        if isinstance(item, Batch):
            body = ENVELOPE.body([r.json for r in item.records])
            out.append(("batch", list(item.records), item.end_offset, item.end_line, body))
            assert item.body_size == (len(body) if item.records else 0)
        else:
            out.append(("reject", item))
    return out


def data_of(lines: list[bytes], crlf: bool, final_newline: bool) -> bytes:
    data = (b"\r\n" if crlf else b"\n").join(lines)
    return data + b"\n" if final_newline and lines else data


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    LINES.map(lambda segments: [line for segment in segments for line in segment]),
    st.booleans(),
    st.booleans(),
    st.integers(1, 600),
    BATCH_LIMITS,
    st.data(),
)
def test_blocks_give_what_line_by_line_gives(
    lines: list[bytes],
    crlf: bool,
    final_newline: bool,
    block: int,
    limits: BatchLimits,
    draw: st.DataObject,
) -> None:
    data = data_of(lines, crlf, final_newline)
    reference = list(parse_jsonl(io.BytesIO(data), LIMITS))
    # Resume from any checkpoint the reference could have written (a line's end), or 0.
    points = [(0, 0)] + [(i.end_offset, i.end_line) for i in reference]
    offset, line = draw.draw(st.sampled_from(points))
    expected = list(parse_jsonl(io.BytesIO(data), LIMITS, offset, line))
    blocks = list(parse_jsonl_blocks(io.BytesIO(data), LIMITS, offset, line, block_bytes=block))
    assert flat(blocks) == expected
    assert batched(blocks, limits) == batched(expected, limits)


def test_plain_blocks_come_as_line_runs_and_odd_ones_line_by_line() -> None:
    good = b"".join(b'{"id": %d}\n' % n for n in range(100))
    odd = b'{"a": 1}\n\n{"b": 2}\n'
    items = list(parse_jsonl_blocks(io.BytesIO(good + odd + good), LIMITS, block_bytes=len(good)))
    kinds = [type(i).__name__ for i in items]
    assert kinds[0] == "LineRun" and len(items[0]) == 100
    assert "Record" in kinds  # the block holding the blank line went line by line
    assert sum(len(i) if type(i) is LineRun else 1 for i in items) == 202


def test_crlf_blocks_take_the_fast_path_with_exact_offsets() -> None:
    data = b'{"id": 1}\r\n{"id": 22}\r\n'
    (run,) = list(parse_jsonl_blocks(io.BytesIO(data), LIMITS))
    assert type(run) is LineRun
    assert [(r.line, r.end_offset, r.json) for r in run] == [
        (1, 11, b'{"id": 1}'),
        (2, 23, b'{"id": 22}'),
    ]


def test_utf16_is_rejected_whole_on_the_block_path_too() -> None:
    with pytest.raises(ParseError, match="UTF-16"):
        list(parse_jsonl_blocks(io.BytesIO('{"a": 1}\n'.encode("utf-16")), LIMITS))


@pytest.mark.parametrize("block", [100, 300, 5000])
@pytest.mark.parametrize(("max_records", "max_body"), [(10, 400), (4, 10_000), (3, 450)])
def test_runs_pack_batches_as_full_as_records_one_by_one(
    block: int, max_records: int, max_body: int
) -> None:
    data = b"".join(b'{"id": %d, "s": "%s"}\n' % (n, b"x" * (n % 90)) for n in range(60))
    limits = BatchLimits(max_records=max_records, max_body_bytes=max_body, max_record_bytes=250)
    blocks = list(parse_jsonl_blocks(io.BytesIO(data), LIMITS, block_bytes=block))
    assert batched(blocks, limits) == batched(list(parse_jsonl(io.BytesIO(data), LIMITS)), limits)


CELLS = st.one_of(
    st.sampled_from(["", "", "x", "Rex", '{"a": 1}', "[1, 2]", "[broken", "two\nlines", "é"]),
    st.text(alphabet='abc ,"', max_size=8),
    st.builds(lambda n: "y" * n, st.integers(50, 200)),
)
ROWS = st.lists(st.lists(CELLS, min_size=0, max_size=5), max_size=80)


def csv_of(rows: list[list[str]]) -> bytes:
    import csv

    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["id", "name", "tags", "note"])
    for row in rows:
        writer.writerow(row)
    return out.getvalue().encode()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ROWS, BATCH_LIMITS, st.data())
def test_csv_chunks_batch_as_their_rows_one_by_one(
    rows: list[list[str]], limits: BatchLimits, draw: st.DataObject
) -> None:
    data = csv_of(rows)
    reference = list(parse_csv(io.BytesIO(data), LIMITS))
    points = [(0, 0)] + [(i.end_offset, i.end_line) for i in reference]
    offset, line = draw.draw(st.sampled_from(points))
    expected = list(parse_csv(io.BytesIO(data), LIMITS, offset, line))
    blocks = list(parse_csv_blocks(io.BytesIO(data), LIMITS, offset, line))
    assert flat(blocks) == expected
    assert batched(blocks, limits) == batched(expected, limits)


def test_good_csv_rows_come_as_line_runs() -> None:
    data = b"id,name\n" + b"".join(b"%d,n%d\n" % (n, n) for n in range(200))
    items = list(parse_csv_blocks(io.BytesIO(data), LIMITS))
    assert {type(i) for i in items} == {LineRun}
    assert sum(map(len, items)) == 200  # type: ignore[arg-type]
