"""Batches are as full as the limits allow, and never over them (measured, not estimated)."""

from __future__ import annotations

import orjson

from ingestor.batcher import batches
from ingestor.kinds import CUSTOM_OBJECTS, BatchLimits
from ingestor.records import Batch, LineRun, Record, Reject
from ingestor.simulator.schema import first_error, request_validator

ENVELOPE = CUSTOM_OBJECTS.envelope("01KTMWCZ8ZMNZS0HG5HQNX0H6E")


def rec(i: int, payload: str = "") -> Record:
    return Record(i, i, i * 10, orjson.dumps({"id": i, "p": payload}))


def test_small_records_fill_500_per_request_and_bodies_validate() -> None:
    out = list(batches((rec(i) for i in range(1, 1201)), ENVELOPE, CUSTOM_OBJECTS.limits))
    sizes = [len(b.records) for b in out if isinstance(b, Batch)]
    assert sizes == [500, 500, 200]
    for batch in out:
        assert isinstance(batch, Batch)
        body = ENVELOPE.body([r.json for r in batch.records])
        assert len(body) == batch.body_size
        assert (
            first_error(request_validator("bulk_create_data_source_records"), orjson.loads(body))
            is None
        )


def test_byte_limit_is_exact_and_filled() -> None:
    limits = BatchLimits(max_records=500, max_body_bytes=50_000, max_record_bytes=20_000)
    items = [rec(i, "x" * 3000) for i in range(1, 60)]
    out = [b for b in batches(items, ENVELOPE, limits) if isinstance(b, Batch)]
    item_size = ENVELOPE.item_size(items[0].json) + 1
    for batch in out[:-1]:
        assert batch.body_size <= 50_000
        assert batch.body_size + item_size > 50_000  # one more would not have fit
    assert sum(len(b.records) for b in out) == 59


def test_oversize_record_is_rejected_and_checkpoints_cover_rejects() -> None:
    limits = BatchLimits(max_records=2, max_body_bytes=10_000, max_record_bytes=100)
    items: list[Record | Reject] = [
        rec(1),
        rec(2, "y" * 200),
        Reject(3, 3, 30, "bad"),
        rec(4),
        rec(5),
    ]
    out = list(batches(items, ENVELOPE, limits))
    kinds = [type(x).__name__ for x in out]
    assert kinds == ["Reject", "Reject", "Batch", "Batch"]
    assert "per-record limit" in out[0].reason  # type: ignore[union-attr]
    first, last = out[2], out[3]
    assert isinstance(first, Batch) and isinstance(last, Batch)
    assert [r.line for r in first.records] == [1, 4] and first.end_offset == 40
    assert [r.line for r in last.records] == [5] and last.end_offset == 50


def test_a_line_run_grows_its_line_numbers_as_a_range_while_they_meet() -> None:
    run = LineRun([b"{}", b"{}"], range(1, 3), range(1, 3), [3, 6])
    run.extend(LineRun([b"{}"], range(3, 4), range(3, 4), [9]))
    assert run.lines == range(1, 4) and run.end_lines == range(1, 4)
    run.extend(LineRun([b"{}"], range(7, 8), range(7, 8), [20]))  # lines 4-6 were skipped
    run.append(Record(8, 9, 30, b"{}"))  # a CSV row over two lines
    assert run.lines == [1, 2, 3, 7, 8] and run.end_lines == [1, 2, 3, 7, 9]
    assert [r.end_offset for r in run] == [3, 6, 9, 20, 30]
    assert repr(run) == "LineRun(5 records, lines 1..9)"  # was "[1]..[8]", or "range(...)"


def test_a_line_run_whose_lines_and_end_lines_are_one_list_grows_each_once() -> None:
    numbers = [1, 2]
    run = LineRun([b"{}", b"{}"], numbers, numbers, [3, 6])
    run.append(Record(3, 3, 9, b"{}"))
    run.extend(LineRun([b"{}"], [4], [5], [12]))
    assert run.lines == [1, 2, 3, 4] and run.end_lines == [1, 2, 3, 5]
