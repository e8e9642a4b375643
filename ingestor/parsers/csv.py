"""CSV: a header row, then one record a row.

An empty cell is an absent field; a cell holding a JSON object or array becomes nested data;
every other value stays a string (Klaviyo coerces types later). Rows with more cells than the
header, invalid UTF-8 or broken quoting are skipped with a reason; header problems reject the
whole file. The stdlib's C reader does the parsing; we feed it lines so we always know the
byte offset and physical line number where each row ends.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

import orjson

from ingestor.errors import ParseError
from ingestor.parsers.common import UTF8_BOM, ParseLimits, excerpt, read_span, skip_long_line
from ingestor.records import Record, Reject


@dataclass(slots=True)
class _Cursor:
    """Where the line feeder is, and what went wrong in the row being read."""

    offset: int
    line: int
    bad_utf8: bool = False
    too_long: bool = False


def _lines(handle: BinaryIO, cursor: _Cursor, max_line: int) -> Iterator[str]:
    """Decoded physical lines (endings kept, as csv wants), tracking offset and line number."""
    readline = handle.readline
    while True:
        raw = readline(max_line)
        if not raw:
            return
        cursor.offset += len(raw)
        cursor.line += 1
        if len(raw) == max_line and not raw.endswith(b"\n"):
            cursor.offset += skip_long_line(handle, max_line)
            cursor.too_long = True
            yield "\n"
            continue
        try:
            yield raw.decode("utf-8")
        except UnicodeDecodeError:
            cursor.bad_utf8 = True
            yield raw.decode("utf-8", "replace")


_MAYBE_JSON = frozenset("{[ \t\r\n")


def _cell_value(cell: str) -> Any:
    """A JSON object/array in a cell becomes nested data; anything else stays the string."""
    if cell[0] in "{[" or (cell[0].isspace() and cell.lstrip()[:1] in ("{", "[")):
        try:
            value = orjson.loads(cell)
        except orjson.JSONDecodeError:
            return cell
        if type(value) is dict or type(value) is list:
            return value
    return cell


def _read_header(handle: BinaryIO, limits: ParseLimits) -> tuple[list[str], int, int]:
    """Parse and validate the header row; return (columns, offset after it, its last line)."""
    handle.seek(0)
    cursor = _Cursor(0, 0)
    reader = csv.reader(_lines(handle, cursor, limits.max_line_bytes), strict=True)
    try:
        header = next(reader, None)
    except csv.Error as exc:
        raise ParseError(f"the header row is not valid CSV: {exc}") from None
    if header is None:
        raise ParseError("the file is empty: the first row must be a header naming the columns")
    if cursor.bad_utf8:
        raise ParseError("the header row is not valid UTF-8; save the file as UTF-8")
    if cursor.too_long:
        raise ParseError(f"the header row is over {limits.max_line_bytes:,} bytes")
    if header and header[0].startswith(UTF8_BOM.decode("utf-8")):
        header[0] = header[0][1:]
    if not header or all(not name.strip() for name in header):
        raise ParseError("the header row is empty: the first row must name the columns")
    seen: dict[str, int] = {}
    for position, name in enumerate(header, start=1):
        if not name.strip():
            raise ParseError(f"column {position} of the header has no name; name every column")
        if name in seen:
            raise ParseError(
                f"column {name!r} appears twice in the header (columns {seen[name]} and "
                f"{position}); column names must be unique"
            )
        seen[name] = position
    return header, cursor.offset, cursor.line


def parse_csv(
    handle: BinaryIO,
    limits: ParseLimits,
    start_offset: int = 0,
    start_line: int = 0,
    close: bool = False,
) -> Iterator[Record | Reject]:
    """Yield a Record per data row and a Reject per bad row, from a checkpoint (closing
    ``handle`` at the end if ``close``).

    Raises ParseError before yielding anything if the header is unusable.
    """
    try:
        csv.field_size_limit(limits.max_record_bytes)
        header, header_end, header_line = _read_header(handle, limits)
        if start_offset < header_end:
            start_offset, start_line = header_end, header_line
        handle.seek(start_offset)
        cursor = _Cursor(start_offset, start_line)
        reader = csv.reader(_lines(handle, cursor, limits.max_line_bytes), strict=True)
        width = len(header)
        dumps = orjson.dumps
        row_start, row_first_line = start_offset, start_line + 1

        def reject(reason: str) -> Reject:
            raw = read_span(handle, row_start, cursor.offset, limits.max_excerpt)
            cursor.bad_utf8 = cursor.too_long = False
            return Reject(
                row_first_line, cursor.line, cursor.offset, reason, excerpt(raw, limits.max_excerpt)
            )

        while True:
            try:
                for row in reader:
                    if cursor.too_long:
                        yield reject(
                            f"a line of this row is over {limits.max_line_bytes:,} bytes; "
                            "skipped unread"
                        )
                    elif cursor.bad_utf8:
                        yield reject("row is not valid UTF-8")
                    elif len(row) > width:
                        yield reject(f"row has {len(row)} cells but the header has {width} columns")
                    elif row:
                        # Only a cell starting with {, [ or whitespace can hold JSON: test inline.
                        record = {
                            key: cell if cell[0] not in _MAYBE_JSON else _cell_value(cell)
                            for key, cell in zip(header, row, strict=False)
                            if cell
                        }
                        if record:
                            yield Record(row_first_line, cursor.line, cursor.offset, dumps(record))
                        else:
                            yield reject("row has no values (every cell empty)")
                    row_start, row_first_line = cursor.offset, cursor.line + 1
                return
            except csv.Error as exc:  # the reader resumes at the next line
                yield reject(f"malformed CSV: {exc}")
                row_start, row_first_line = cursor.offset, cursor.line + 1
    finally:
        if close:
            handle.close()
