"""Pack records into request bodies as full as the limits allow.

Sizes are exact, not estimated: an Envelope knows its fixed bytes, so the body's length is
known before it is built. Rejects pass straight through, in file order, so the caller can
write them as they come; a Batch's end position covers everything yielded before it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from ingestor.kinds import BatchLimits, Envelope
from ingestor.records import Batch, Record, Reject

# With no records pending, emit a progress marker after this many rejects so a file of
# mostly bad lines still checkpoints.
REJECTS_PER_MARKER = 10_000


def oversize_reason(size: int, limit: int) -> str:
    return f"record is {size:,} bytes serialized, over the API's {limit:,}-byte per-record limit"


def batches(
    items: Iterable[Record | Reject], envelope: Envelope, limits: BatchLimits
) -> Iterator[Batch | Reject]:
    """Yield Rejects as met and a Batch whenever the next record would overflow a limit.

    The last Batch (possibly without records) ends where the input ended.
    """
    pending: list[Record] = []
    fixed_size = envelope.fixed_size
    body_size = fixed_size - 1  # each record adds itself and a comma; the first needs none
    item_overhead = len(envelope.item_prefix) + len(envelope.item_suffix)
    max_body, max_records, max_record = (
        limits.max_body_bytes,
        limits.max_records,
        limits.max_record_bytes,
    )
    end_offset = end_line = 0  # where the last item before ``pending`` ended
    last: Record | None = None  # the newest pending record (its end is read only when needed)
    rejects_since_batch = 0
    for item in items:
        if type(item) is Reject:
            yield item
            if last is not None:  # a reject after pending records ends further on
                last = None
            end_offset, end_line = item.end_offset, item.end_line
            rejects_since_batch += 1
            if not pending and rejects_since_batch >= REJECTS_PER_MARKER:
                yield Batch((), end_offset, end_line, 0)
                rejects_since_batch = 0
            continue
        size = len(item.json)  # type: ignore[union-attr]
        item_size = size + item_overhead
        if size > max_record or fixed_size + item_size > max_body:
            if last is not None:
                last = None
            yield Reject(
                item.line,
                item.end_line,
                item.end_offset,
                oversize_reason(size, max_record),
                item.json[:200].decode("utf-8", "replace"),  # type: ignore[union-attr]
            )
            end_offset, end_line = item.end_offset, item.end_line
            continue
        if pending and (len(pending) == max_records or body_size + item_size + 1 > max_body):
            if last is not None:
                end_offset, end_line = last.end_offset, last.end_line
            yield Batch(tuple(pending), end_offset, end_line, body_size)
            pending, body_size = [], fixed_size - 1  # the comma below is not needed first
            rejects_since_batch = 0
        pending.append(item)  # type: ignore[arg-type]
        body_size += item_size + 1
        last = item  # type: ignore[assignment]
    if last is not None:
        end_offset, end_line = last.end_offset, last.end_line
    if pending or end_offset:
        yield Batch(tuple(pending), end_offset, end_line, body_size if pending else 0)
