"""Pack records into request bodies as full as the limits allow.

Sizes are exact, not estimated: an Envelope knows its fixed bytes, so the body's length is
known before it is built. Rejects pass straight through, in file order, so the caller can
write them as they come; a Batch's end position covers everything yielded before it.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable, Iterator, Sequence
from itertools import accumulate

from ingestor.kinds import BatchLimits, Envelope
from ingestor.records import Batch, LineRun, Record, Reject

# With no records pending, emit a progress marker after this many rejects so a file of
# mostly bad lines still checkpoints.
REJECTS_PER_MARKER = 10_000


def oversize_reason(size: int, limit: int) -> str:
    return f"record is {size:,} bytes serialized, over the API's {limit:,}-byte per-record limit"


def batches(
    items: Iterable[LineRun | Record | Reject], envelope: Envelope, limits: BatchLimits
) -> Iterator[Batch | Reject]:
    """Yield Rejects as met and a Batch whenever the next record would overflow a limit.

    A LineRun (a block of records from the JSONL parser) is packed a batch at a time, by
    its cumulative sizes, never a record at a time; the batches are the same as if its
    records had come one by one. The last Batch (possibly without records) ends where the
    input ended.
    """
    pending: list[Record] = []  # records that came one by one...
    run: LineRun | None = None  # ...or, once a LineRun has joined the batch, all as lists
    fixed_size = envelope.fixed_size
    body_size = fixed_size - 1  # each record adds itself and a comma; the first needs none
    item_overhead = envelope.item_overhead
    step = item_overhead + 1
    max_body, max_records = limits.max_body_bytes, limits.max_records
    end_offset = end_line = 0  # where the last item before the pending records ended
    record_last = False  # the newest item is a pending record (the batch ends with it)
    rejects_since_batch = 0

    def batch() -> Batch:
        held: Sequence[Record] = run if run is not None else tuple(pending)
        if record_last:
            return Batch(held, held[-1].end_offset, held[-1].end_line, body_size)
        return Batch(held, end_offset, end_line, body_size)

    for item in within_limits(items, envelope, limits):
        kind = type(item)
        if kind is Reject:
            yield item  # type: ignore[misc]
            end_offset, end_line = item.end_offset, item.end_line  # type: ignore[union-attr]
            record_last = False
            rejects_since_batch += 1
            if not pending and run is None and rejects_since_batch >= REJECTS_PER_MARKER:
                yield Batch((), end_offset, end_line, 0)
                rejects_since_batch = 0
            continue
        if kind is LineRun:
            block: LineRun = item  # type: ignore[assignment]
            count = len(block.jsons)
            running = block.running_sizes
            if running is None:  # in C: no Python step per record
                running = list(accumulate(map(len, block.jsons), initial=0))

            def total(i: int, running: list[int] = running) -> int:
                """What the block's first i records add to a body: each its bytes, its
                envelope and a comma."""
                return running[i] + step * i

            start = 0
            while start < count:
                held = len(run) if run is not None else len(pending)
                size = running[start + 1] - running[start] + step
                if held == max_records or (held and body_size + size > max_body):
                    full = batch()
                    yield full
                    end_offset, end_line = full.end_offset, full.end_line
                    pending, run, body_size = [], None, fixed_size - 1
                    rejects_since_batch = 0
                    continue
                room = max_body - body_size + total(start)
                last = min(count, start + max_records - held)  # as many as the count allows
                if total(last) > room:  # ...or as fit, found by bisection
                    last = max(
                        bisect_right(range(last + 1), room, start + 1, key=total) - 1, start + 1
                    )
                piece = block[start:last]  # fresh lists: the batch may grow them
                if run is None and not pending:
                    run = piece
                else:
                    if run is None:
                        run, pending = LineRun.of(pending), []
                    run.extend(piece)
                body_size += total(last) - total(start)
                start = last
                record_last = True
            continue
        record: Record = item  # type: ignore[assignment]
        item_size = len(record.json) + item_overhead
        held = len(run) if run is not None else len(pending)
        if held and (held == max_records or body_size + item_size + 1 > max_body):
            full = batch()
            yield full
            end_offset, end_line = full.end_offset, full.end_line
            pending, run, body_size = [], None, fixed_size - 1
            rejects_since_batch = 0
        if run is not None:
            run.append(record)
        else:
            pending.append(record)
        body_size += item_size + 1
        record_last = True
    if pending or run is not None:
        yield batch()
    elif end_offset:
        yield Batch((), end_offset, end_line, 0)


def within_limits(
    items: Iterable[LineRun | Record | Reject], envelope: Envelope, limits: BatchLimits
) -> Iterator[LineRun | Record | Reject]:
    """The items, with each record too large to send replaced by its Reject (a LineRun
    holding one is taken apart, which is rare: the parser caps lines near the limit). The
    only records ``batches`` skips; what is left is packing."""
    fixed = envelope.fixed_size + envelope.item_overhead
    max_body, max_record = limits.max_body_bytes, limits.max_record_bytes
    for item in items:
        kind = type(item)
        if kind is Reject:
            yield item
            continue
        if kind is LineRun:
            bound = item.size_bound  # type: ignore[union-attr]
            if bound is None or bound > max_record or fixed + bound > max_body:
                bound = max(map(len, item.jsons))  # type: ignore[union-attr]
            if bound <= max_record and fixed + bound <= max_body:
                yield item
                continue
            records: Iterable[Record] = item  # type: ignore[assignment]
        else:
            records = (item,)  # type: ignore[assignment]
        for record in records:
            size = len(record.json)
            if size > max_record or fixed + size > max_body:
                yield Reject(
                    record.line,
                    record.end_line,
                    record.end_offset,
                    oversize_reason(size, max_record),
                    record.json[:200].decode("utf-8", "replace"),
                )
            else:
                yield record
