"""Streaming parsers: bytes on disk → Records and Rejects, with line numbers and byte offsets.

Each parser can start at a checkpoint (byte offset + line number) and never holds more than
one record's worth of a file in memory.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from ingestor.parsers.common import ParseLimits
from ingestor.parsers.csv import parse_csv
from ingestor.parsers.jsonl import parse_jsonl
from ingestor.records import Record, Reject

__all__ = ["ParseLimits", "parse_csv", "parse_file", "parse_jsonl"]


def parse_file(
    path: Path, fmt: str, limits: ParseLimits, start_offset: int = 0, start_line: int = 0
) -> Iterator[Record | Reject]:
    """Parse ``path`` as ``fmt`` ('csv' or 'jsonl') from a checkpoint."""
    with path.open("rb") as handle:
        if fmt == "csv":
            yield from parse_csv(handle, limits, start_offset, start_line)
        elif fmt == "jsonl":
            yield from parse_jsonl(handle, limits, start_offset, start_line)
        else:
            raise ValueError(f"unknown format {fmt!r}")
