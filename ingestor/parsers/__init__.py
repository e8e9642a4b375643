"""Streaming parsers: bytes on disk → Records and Rejects, with line numbers and byte offsets.

Each parser can start at a checkpoint (byte offset + line number) and never holds more than
one record's worth of a file in memory.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import BinaryIO, cast

from ingestor.parsers.common import HEAD_BYTES, ParseLimits, assumptions
from ingestor.parsers.compressed import Gunzipped, GzipLimits
from ingestor.parsers.csv import parse_csv, parse_csv_blocks
from ingestor.parsers.encoding import Transcoded, same_encoding
from ingestor.parsers.jsonl import parse_jsonl, parse_jsonl_blocks
from ingestor.records import LineRun, Record, Reject

__all__ = [
    "HEAD_BYTES",
    "GzipLimits",
    "ParseLimits",
    "assumptions",
    "parse_csv",
    "parse_csv_blocks",
    "parse_file",
    "parse_jsonl",
    "parse_jsonl_blocks",
    "read_head",
    "uncompressed",
]


def uncompressed(handle: BinaryIO, compressed: bool, limits: ParseLimits) -> BinaryIO:
    """The bytes a data file holds: ``handle`` itself, or for a gzip file (``compressed``)
    a view that decompresses it as it is read (see ``compressed``)."""
    return cast(BinaryIO, Gunzipped(handle, limits.gzip)) if compressed else handle


def read_head(handle: BinaryIO, compressed: bool, limits: ParseLimits) -> bytes:
    """A data file's first ``HEAD_BYTES`` as it holds them (for ``assumptions``); closes
    ``handle``."""
    with uncompressed(handle, compressed, limits) as view:
        return view.read(HEAD_BYTES)


def parse_file(
    handle: BinaryIO,
    fmt: str,
    limits: ParseLimits,
    start_offset: int = 0,
    start_line: int = 0,
    delimiter: str = ",",
    encoding: str = "utf-8",
    compressed: bool = False,
) -> Iterator[LineRun | Record | Reject]:
    """Parse an open file as ``fmt`` ('csv' or 'jsonl') from a checkpoint. The parser's own
    generator is returned (no wrapper in between); it closes ``handle`` when done. JSONL
    comes a block at a time where it can (``parse_jsonl_blocks``), CSV a chunk of rows at
    a time (``parse_csv_blocks``), its fields separated by ``delimiter``. A file in another
    ``encoding`` than UTF-8 is read as UTF-8 text (``Transcoded``): offsets are then in
    that text. A gzip file (``compressed``) is read as the bytes it holds, offsets in them."""
    handle = uncompressed(handle, compressed, limits)
    if not same_encoding(encoding, "utf-8"):
        handle = cast(BinaryIO, Transcoded(handle, encoding))
    if fmt == "csv":
        return parse_csv_blocks(handle, limits, start_offset, start_line, True, delimiter)
    if fmt == "jsonl":
        return parse_jsonl_blocks(handle, limits, start_offset, start_line, close=True)
    handle.close()
    raise ValueError(f"unknown format {fmt!r}")
