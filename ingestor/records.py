"""Shared value types that flow through the pipeline: parsers → batcher → sender → reports."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import overload


# Not frozen: a frozen dataclass's __init__ costs ~0.5 µs more per instance (it goes through
# object.__setattr__), a quarter of the whole per-record budget. Treat it as immutable.
@dataclass(slots=True)
class Record:
    """One record ready for the wire.

    ``line`` is the 1-based line the record starts on, ``end_line`` the last physical line it
    spans (they differ for CSV rows with embedded newlines); ``end_offset`` is the byte
    offset just past it: where a resume starts once it is acknowledged. ``json`` is the
    record's serialized JSON object (for JSONL, the validated line itself).
    """

    line: int
    end_line: int
    end_offset: int
    json: bytes


@dataclass(frozen=True, slots=True)
class Reject:
    """A row that will not be sent, with its 1-based line number and why."""

    line: int
    end_line: int
    end_offset: int
    reason: str
    raw: str = ""


@dataclass(frozen=True, slots=True)
class Batch:
    """Records packed for one request.

    ``end_offset``/``end_line`` mark the position after everything consumed up to this batch
    (its records and the rejects met before them): the checkpoint to write once it is
    acknowledged. A batch with no records is a pure progress marker.
    """

    records: Sequence[Record]  # a tuple, or a LineRun (see below)
    end_offset: int
    end_line: int
    body_size: int


@dataclass(slots=True)
class FileCounts:
    """Running counts for one file; ``read == sent + skipped`` once the file is done."""

    read: int = 0
    sent: int = 0
    skipped: int = 0
    batches: int = 0
    retries: int = 0
    throttled_seconds: float = 0.0
    # Records that may have reached the API twice: re-sent after a timeout or a dropped
    # connection (the API may have stored them before the answer was lost), or the batch
    # re-sent on resuming after the service stopped with it in flight.
    maybe_resent: int = 0

    def add(self, other: FileCounts) -> None:
        self.read += other.read
        self.sent += other.sent
        self.skipped += other.skipped
        self.batches += other.batches
        self.retries += other.retries
        self.throttled_seconds += other.throttled_seconds
        self.maybe_resent += other.maybe_resent


@dataclass(frozen=True, slots=True)
class SendOutcome:
    """What the API did with one batch: accepted records, refused ones, and the cost."""

    accepted: int
    refused: tuple[Reject, ...] = ()
    requests: int = 1
    retries: int = 0
    throttled_seconds: float = 0.0
    status_counts: dict[int, int] = field(default_factory=dict)
    maybe_resent: int = 0  # records re-sent after an answer was lost (see FileCounts)
    # Each accepted request whose answer had a body (an import job), with its records.
    answers: tuple[tuple[bytes, Sequence[Record]], ...] = ()


class LineRun(Sequence[Record]):
    """Records held as parallel lists rather than one object each: a block of JSONL lines
    that all passed (the parser's fast path), and the records of a batch built from such
    blocks. A ``Record`` is made only when one is asked for (a refused record, a bisected
    body); the body is built from ``jsons`` directly. Slicing gives a LineRun.

    Line numbers may be a ``range`` (a block of one-line records) rather than a list.

    A parser may also hand over what it knew for free, so that the batcher need not pass
    over every record again: ``running_sizes`` (``running_sizes[i]`` is the bytes of
    ``jsons[:i]``, one value more than there are records) and ``size_bound`` (no json is
    longer; a bound, not necessarily met). Both describe the LineRun as made: a slice or a
    batch has neither."""

    __slots__ = ("end_lines", "ends", "jsons", "lines", "running_sizes", "size_bound")

    def __init__(
        self,
        jsons: list[bytes],
        lines: Sequence[int],
        end_lines: Sequence[int],
        ends: list[int],
        running_sizes: list[int] | None = None,
        size_bound: int | None = None,
    ) -> None:
        self.jsons, self.lines, self.end_lines, self.ends = jsons, lines, end_lines, ends
        self.running_sizes, self.size_bound = running_sizes, size_bound

    @classmethod
    def of(cls, records: Iterable[Record]) -> LineRun:
        held = list(records)
        return cls(
            [r.json for r in held],
            [r.line for r in held],
            [r.end_line for r in held],
            [r.end_offset for r in held],
        )

    def __len__(self) -> int:
        return len(self.jsons)

    @overload
    def __getitem__(self, index: int) -> Record: ...

    @overload
    def __getitem__(self, index: slice) -> LineRun: ...

    def __getitem__(self, index: int | slice) -> Record | LineRun:
        if isinstance(index, slice):
            return LineRun(
                self.jsons[index], self.lines[index], self.end_lines[index], self.ends[index]
            )
        return Record(self.lines[index], self.end_lines[index], self.ends[index], self.jsons[index])

    def __iter__(self) -> Iterator[Record]:
        return map(Record, self.lines, self.end_lines, self.ends, self.jsons)

    def extend(self, other: LineRun) -> None:
        """Add ``other``'s records after these (a batch growing by a piece of a block).
        The lists grow in place: extend only a LineRun whose lists are its own (a slice)."""
        self._unshare()
        self.jsons += other.jsons
        self.lines = _joined(self.lines, other.lines)
        self.end_lines = _joined(self.end_lines, other.end_lines)
        self.ends += other.ends
        self.running_sizes = self.size_bound = None

    def append(self, record: Record) -> None:
        """Add one record after these (in place, as ``extend``)."""
        self._unshare()
        self.jsons.append(record.json)
        self.lines = _joined(self.lines, (record.line,))
        self.end_lines = _joined(self.end_lines, (record.end_line,))
        self.ends.append(record.end_offset)
        self.running_sizes = self.size_bound = None

    def _unshare(self) -> None:
        if self.end_lines is self.lines and type(self.lines) is list:
            self.end_lines = list(self.lines)  # grown one after the other, not twice

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sequence):
            return NotImplemented
        return list(self) == list(other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        if not self.lines:
            return "LineRun(0 records)"
        return f"LineRun({len(self)} records, lines {self.lines[0]}..{self.end_lines[-1]})"


def _joined(numbers: Sequence[int], more: Sequence[int]) -> Sequence[int]:
    """``numbers`` followed by ``more``: a range while both are ranges that meet (blocks of
    one-line records, one after another), else a list (``numbers`` itself if it is one)."""
    if (
        type(numbers) is range
        and type(more) is range
        and numbers.step == more.step == 1
        and numbers.stop == more.start
    ):
        return range(numbers.start, more.stop)
    if type(numbers) is list:
        numbers += more
        return numbers
    return [*numbers, *more]


def jsons_of(records: Sequence[Record]) -> list[bytes]:
    """The serialized records, without making a Record of each when they are a LineRun."""
    if type(records) is LineRun:
        return records.jsons
    return [record.json for record in records]
