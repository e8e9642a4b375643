"""CSV: a header row, then one record a row.

An empty cell is an absent field; a cell holding a JSON object or array becomes nested data;
every other value stays a string (Klaviyo coerces types later). Rows with more cells than the
header, invalid UTF-8 or broken quoting are skipped with a reason; header problems reject the
whole file.

The stdlib's C reader does the parsing. Around it, the per-row Python is kept to a minimum:
a feeder hands the reader a block of decoded lines at a time and keeps the byte offset where
each line ends, and good rows are converted to JSON a few dozen at a time, a column at a time,
with the loops in C (map, zip, compress). Rare cases (bad lines, blank lines, rows that are
too wide or have no values) leave that path one row at a time, in file order.
"""

from __future__ import annotations

import csv
from collections import deque
from collections.abc import Iterator, Sequence
from itertools import accumulate, chain, compress, islice, repeat, zip_longest
from operator import add, contains
from typing import Any, BinaryIO

import orjson

from ingestor.errors import ParseError
from ingestor.kinds import CSV_DELIMITERS, KIB
from ingestor.parsers.common import (
    UTF8_BOM,
    WINDOWS_HINT,
    ParseLimits,
    check_not_utf16,
    excerpt,
    read_span,
    skip_long_line,
    windows_hint,
)
from ingestor.records import LineRun, Record, Reject

BLOCK_BYTES = 32 * KIB  # as for JSONL: memory per busy company, at no cost in speed
# The C reader's cell size limit is one process-wide setting: set once, here, above every
# kind's record limit, instead of per call (lanes of different kinds parse at the same time).
# A cell under it but over a kind's record limit makes a record the batcher skips with the
# per-record reason; one over it is a malformed row. Either way memory stays bounded.
FIELD_LIMIT = 1024 * KIB
csv.field_size_limit(FIELD_LIMIT)
# Rows read and converted together. Each chunk costs the batcher a step, so fewer is faster
# (in-process, 1,000,000 rows: 64 -> 256 saved about a sixth); but the chunk's rows are live
# containers, and over the garbage collector's young-generation threshold (700) every
# collection walks them all (1,024 rows: 1,777 collections a million rows; 256: none).
CHUNK_ROWS = 256
# The bytes JSON must escape in a string besides quote and backslash (UTF-8 never uses them
# inside a multi-byte character), less the line endings, which end rows, not cells.
_CONTROLS = bytes(set(range(0x20)) - set(b"\r\n"))
TOO_LONG, BAD_UTF8 = "too long", "bad UTF-8"
BAD_UTF8_WINDOWS = "bad UTF-8, good Windows-1252"  # what an undeclared Excel export gives
# A line that is not UTF-8, by what its reason adds.
_NOT_UTF8 = {BAD_UTF8: "", BAD_UTF8_WINDOWS: WINDOWS_HINT}


class _Feed:
    """The file's physical lines (endings kept, as csv wants), decoded a block at a time.

    The reader pulls lines through ``lines()``, a C-level chain over blocks, so the Python
    here runs once a block, not once a line. ``end(n)`` is the byte offset after the reader's
    line ``n`` (counting from 1; ``end(0)`` is where the feed started). ``bad`` maps lines that
    were too long (handed over as an empty line, the rest skipped unread) or not UTF-8
    (decoded leniently) to the problem, in line order.
    """

    def __init__(self, handle: BinaryIO, offset: int, max_line: int) -> None:
        self.handle, self.max_line = handle, max_line
        self._ends = [offset]  # _ends[k]: offset after line _before + k
        self._before = 0
        self.bad: dict[int, str] = {}
        # The blocks not yet consumed whole, as (number of their first line, their lines):
        # what ``replay`` hands a second reader.
        self._kept: deque[tuple[int, list[str]]] = deque()
        # The last line of the latest block that may hold a control character in a cell:
        # rows after it need no search for one.
        self.controls_to = 0

    def lines(self) -> Iterator[str]:
        return chain.from_iterable(self._blocks())

    def end(self, line: int) -> int:
        return self._ends[line - self._before]

    def ends(self, first: int, last: int) -> list[int]:
        """``[end(first), ..., end(last)]``, as one slice."""
        return self._ends[first - self._before : last - self._before + 1]

    def replay(self, first: int, last: int) -> list[str]:
        """Lines ``first`` to ``last`` again, as the reader was handed them."""
        lines: list[str] = []
        for start, text in self._kept:
            if start > last:
                break
            if start + len(text) > first:
                lines += text[max(first - start, 0) : last - start + 1]
        return lines

    def forget(self, line: int) -> None:
        """Lines up to ``line`` are consumed; drop their offsets once there are many."""
        kept = self._kept
        while kept and kept[0][0] + len(kept[0][1]) <= line + 1:
            kept.popleft()
        if line - self._before > 4096:
            del self._ends[: line - self._before]
            self._before = line

    def problem(self, last: int) -> str | None:
        """Forget the bad lines up to line ``last``; return the worst of them, if any."""
        found = None
        while self.bad:
            number = next(iter(self.bad))
            if number > last:
                break
            kind = self.bad.pop(number)
            if found is None or kind == TOO_LONG:
                found = kind
        return found

    def _blocks(self) -> Iterator[list[str]]:
        read, readline, max_line, ends = (
            self.handle.read,
            self.handle.readline,
            self.max_line,
            self._ends,
        )
        taken = 0  # lines handed over so far
        while True:
            data = read(BLOCK_BYTES)
            if not data:
                return
            skipped = 0
            if not data.endswith(b"\n"):  # finish the last line, or find it is too long
                tail = readline(max_line)
                data += tail
                if len(tail) == max_line and not tail.endswith(b"\n"):
                    skipped = skip_long_line(self.handle, max_line)
            lines = None if skipped else self._quick(data)
            sizes, text = lines if lines is not None else self._careful(data, taken)
            if lines is None or len(data.translate(None, _CONTROLS)) != len(data):
                self.controls_to = taken + len(text)
            ends.extend(islice(accumulate(sizes, initial=ends[-1]), 1, None))
            ends[-1] += skipped
            self._kept.append((taken + 1, text))
            taken += len(text)
            yield text

    def _quick(self, data: bytes) -> tuple[list[int], list[str]] | None:
        """The common case, in C: no line too long, valid UTF-8, and every CR part of a
        CRLF. Returns each line's size in bytes and its text, or None if any of that does
        not hold. ASCII text (most) is decoded once and split as text; splitting text also
        splits at a few other controls (VT, FF, FS, GS, RS), so the line count must match."""
        carriage_returns = data.count(b"\r")
        if carriage_returns and carriage_returns != data.count(b"\r\n"):
            return None
        if data.isascii():
            text = data.decode("ascii")
            lines = text.splitlines(keepends=True)
            if len(lines) != data.count(b"\n") + (not data.endswith(b"\n")):
                return None
            sizes = list(map(len, lines))
        else:
            raw = data.splitlines(keepends=True)
            sizes = list(map(len, raw))
            try:
                lines = list(map(bytes.decode, raw))
            except UnicodeDecodeError:
                return None
        if max(sizes) >= self.max_line:
            return None
        return sizes, lines

    def _careful(self, data: bytes, taken: int) -> tuple[list[int], list[str]]:
        """Split at LF only, a line at a time, noting lines too long or not UTF-8."""
        parts = data.split(b"\n")
        raw = [part + b"\n" for part in parts[:-1]]
        if parts[-1]:
            raw.append(parts[-1])
        text = []
        for number, line in enumerate(raw, start=taken + 1):
            if len(line) - line.endswith(b"\n") >= self.max_line:
                self.bad[number] = TOO_LONG
                text.append("\n")
                continue
            try:
                text.append(line.decode("utf-8"))
            except UnicodeDecodeError:
                self.bad[number] = BAD_UTF8_WINDOWS if windows_hint(line) else BAD_UTF8
                text.append(line.decode("utf-8", "replace"))
        return list(map(len, raw)), text


def _nested(cell: str) -> bool:
    """Whether the cell is a JSON object or array (it goes to the API as written, as a
    JSONL line does)."""
    if cell[:1] in ("{", "[") or cell.lstrip()[:1] in ("{", "["):
        try:
            value = orjson.loads(cell)
        except orjson.JSONDecodeError:
            return False
        return type(value) is dict or type(value) is list
    return False


_NESTED = repeat((dict, list))  # endless, so one instance serves every map() below
# A column with no quote, backslash or unprintable character (a control character is one)
# needs no escaping: each cell is its own JSON text between quotes. Nothing that reaches the
# wire holds a raw NUL (orjson escapes it in a string and refuses it elsewhere), so a NUL
# can end each record of a chunk.
_END = "\x00"


def _all_nested(column: tuple[str, ...]) -> bool:
    """Whether every cell of a column is a JSON object or array (one C-level pass)."""
    try:
        return all(map(isinstance, map(orjson.loads, column), _NESTED))
    except orjson.JSONDecodeError:
        return False


def _json_texts(column: tuple[str, ...]) -> Sequence[str]:
    """Each cell's JSON text: the cell as written if it is an object or array, else the cell
    as a JSON string."""
    if _all_nested(column):
        return column
    return [cell if _nested(cell) else orjson.dumps(cell).decode() for cell in column]


def _serialize(header: list[str], rows: list[list[str]], controls: bool = True) -> list[bytes]:
    """Each row as a JSON object (``b"{}"`` for a row of empty cells). Rows are non-blank and
    no wider than the header; ``controls=False`` says no cell holds a control character.

    A chunk without an empty cell (most are) is written as one string, its cells placed
    between the keys column by column, in C; otherwise each row is a dict for orjson, the
    empty cells left out. A cell can hold JSON only if its column has a brace or bracket."""
    columns: list[Any] = list(zip_longest(*rows, fillvalue=""))
    joined = list(map("".join, columns))  # a column's cells as one text, to search at once
    nesting = ["{" in text or "[" in text for text in joined]
    if any(map(contains, columns, repeat(""))):
        for index in compress(range(len(columns)), nesting):  # embedded as they are
            columns[index] = list(map(orjson.Fragment, _json_texts(columns[index])))
        values = zip(*columns, strict=True)  # every column is as long as the chunk
        records = map(dict, map(compress, map(zip, repeat(header), values), rows))
        return list(map(orjson.dumps, records))
    parts: list[Any] = []
    glue = "{"
    for name, column, text, nests in zip(header, columns, joined, nesting, strict=False):
        key = glue + orjson.dumps(name).decode() + ":"
        if nests:
            parts += (repeat(key), _json_texts(column))
            glue = ","
        elif '"' in text or "\\" in text or (controls and not text.isprintable()):
            parts += (repeat(key), map(bytes.decode, map(orjson.dumps, column)))
            glue = ","
        else:
            parts += (repeat(key + '"'), column)
            glue = '",'
    parts.append(repeat(glue[:-1] + "}" + _END))
    text = "".join(chain.from_iterable(zip(*parts, strict=False)))  # the keys repeat forever
    jsons = text.encode().split(_END.encode())
    jsons.pop()  # after the last record's end
    return jsons


def _likeliest(name: str, delimiter: str) -> str:
    """The delimiter other than ``delimiter`` that a one-column header holds most of, if any."""
    counts = {other: name.count(other) for other in CSV_DELIMITERS if other != delimiter}
    best = max(counts, key=lambda other: counts[other])
    return best if counts[best] else ""


def _read_header(
    handle: BinaryIO, limits: ParseLimits, delimiter: str
) -> tuple[list[str], int, int]:
    """Parse and validate the header row; return (columns, offset after it, its last line)."""
    check_not_utf16(handle, "CSV")
    handle.seek(0)
    feed = _Feed(handle, 0, limits.max_line_bytes)
    reader = csv.reader(feed.lines(), strict=True, delimiter=delimiter)
    try:
        header = next(reader, None)
    except csv.Error as exc:
        raise ParseError(f"the header row is not valid CSV: {exc}") from None
    if header is None:
        raise ParseError("the file is empty: the first row must be a header naming the columns")
    problem = feed.problem(reader.line_num)
    if problem == TOO_LONG:
        raise ParseError(f"the header row is over {limits.max_line_bytes:,} bytes")
    if problem in _NOT_UTF8:
        raise ParseError(
            f"the header row is not valid UTF-8{_NOT_UTF8[problem]}; save the file as UTF-8"
        )
    if header and header[0].startswith(UTF8_BOM.decode("utf-8")):
        header[0] = header[0][1:]
    if not header or all(not name.strip() for name in header):
        raise ParseError("the header row is empty: the first row must name the columns")
    if len(header) == 1 and (likeliest := _likeliest(header[0], delimiter)):
        looks, declared = CSV_DELIMITERS[likeliest], CSV_DELIMITERS[delimiter]
        how = (
            f'save it as CSV with commas between fields, or declare "delimiter": '
            f"{orjson.dumps(likeliest).decode()} in the folder's config.json"
            if delimiter == ","
            else f"the folder's config.json declares {declared}s: correct one or the other"
        )
        raise ParseError(
            f"the header row has one column and it contains {looks}s: the file looks "
            f"{looks}-separated; {how}"
        )
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
    return header, feed.end(reader.line_num), reader.line_num


def parse_csv(
    handle: BinaryIO,
    limits: ParseLimits,
    start_offset: int = 0,
    start_line: int = 0,
    close: bool = False,
    delimiter: str = ",",
) -> Iterator[Record | Reject]:
    """Yield a Record per data row and a Reject per bad row, in file order, from a checkpoint
    (closing ``handle`` at the end if ``close``); fields are separated by ``delimiter``.

    Raises ParseError before yielding anything if the header is unusable.
    """
    for item in parse_csv_blocks(handle, limits, start_offset, start_line, close, delimiter):
        if type(item) is LineRun:
            yield from item
        else:
            yield item  # type: ignore[misc]


def parse_csv_blocks(
    handle: BinaryIO,
    limits: ParseLimits,
    start_offset: int = 0,
    start_line: int = 0,
    close: bool = False,
    delimiter: str = ",",
) -> Iterator[LineRun | Record | Reject]:
    """What ``parse_csv`` yields, with each chunk of good rows as one LineRun (parallel
    lists, no Record per row: the batcher packs it whole)."""
    try:
        header, header_end, header_line = _read_header(handle, limits, delimiter)
        if start_offset < header_end:
            start_offset, start_line = header_end, header_line
        handle.seek(start_offset)
        rows = _Rows(handle, header, limits, start_offset, start_line, delimiter)
        yield from rows.items()
    finally:
        if close:
            handle.close()


class _Rows:
    """The data rows after the header, as Records and Rejects. Line numbers inside are the
    reader's (1 = the first line after the start); ``start_line`` makes them the file's."""

    def __init__(
        self,
        handle: BinaryIO,
        header: list[str],
        limits: ParseLimits,
        start_offset: int,
        start_line: int,
        delimiter: str,
    ) -> None:
        self.handle, self.header, self.limits = handle, header, limits
        self.delimiter = delimiter
        self.start_line = start_line
        self.feed = _Feed(handle, start_offset, limits.max_line_bytes)
        self.done = 0  # the reader line where the last row handled ended
        self.rows: list[list[str]] = []  # good rows waiting to be converted
        self.lasts: list[int] = []  # the line each of them ends on

    def items(self) -> Iterator[LineRun | Record | Reject]:
        """A chunk of rows at a time from the reader, in C. A chunk of good rows of one line
        each (the common case) becomes a LineRun as it is; any other chunk (a blank, bad,
        too wide or multi-line row, a malformed line) has its lines read again, a row at a
        time, by ``_row_by_row``."""
        feed, width = self.feed, len(self.header)
        bad = feed.bad
        reader = csv.reader(feed.lines(), strict=True, delimiter=self.delimiter)
        while True:
            before = reader.line_num
            try:
                chunk = list(islice(reader, CHUNK_ROWS))
            except csv.Error:  # the rows before it in the chunk are lost: read them again
                yield from self._row_by_row(before + 1, reader.line_num)
                continue
            if not chunk:
                return
            last = reader.line_num
            if (
                last - before == len(chunk)
                and all(chunk)
                and max(map(len, chunk)) <= width
                and not (bad and next(iter(bad)) <= last)
            ):
                yield from self._chunk(chunk, before, last)
            else:
                yield from self._row_by_row(before + 1, last)

    def _chunk(
        self, rows: list[list[str]], before: int, last: int
    ) -> list[LineRun | Record | Reject]:
        """Good rows of one line each, lines ``before + 1`` to ``last``."""
        jsons = _serialize(self.header, rows, controls=before < self.feed.controls_to)
        if b"{}" in jsons:  # a row of empty cells: one at a time, to keep file order
            self.rows += rows
            self.lasts += range(before + 1, last + 1)
            return self._flush()
        base = self.start_line
        lines = range(base + before + 1, base + last + 1)
        run = LineRun(jsons, lines, lines, self.feed.ends(before + 1, last))
        self._done(last)
        return [run]

    def _row_by_row(self, first: int, last: int) -> Iterator[LineRun | Record | Reject]:
        """Lines ``first`` to ``last`` (whole rows) read again by a reader of their own, a
        row at a time: each row's last line is known, and a malformed one is skipped."""
        feed, rows, lasts, width = self.feed, self.rows, self.lasts, len(self.header)
        bad = feed.bad
        reader = csv.reader(feed.replay(first, last), strict=True, delimiter=self.delimiter)
        before = first - 1
        while True:
            try:
                for row in reader:
                    end = before + reader.line_num
                    if (bad and next(iter(bad)) <= end) or len(row) > width or not row:
                        yield from self._flush()
                        yield from self._odd_row(row, end, width)
                        continue
                    rows.append(row)
                    lasts.append(end)
                yield from self._flush()
                return
            except csv.Error as exc:  # the reader resumes at the next line
                yield from self._flush()
                end = before + reader.line_num
                feed.problem(end)
                yield self._reject(f"malformed CSV: {exc}", end)

    def _flush(self) -> list[LineRun | Record | Reject]:
        """The waiting rows as one LineRun (or, if any has no values, as Records and
        Rejects one by one, in file order)."""
        rows, lasts = self.rows, self.lasts
        if not rows:
            return []
        jsons = _serialize(self.header, rows)
        if b"{}" in jsons:  # a row of empty cells: one at a time, to keep file order
            items: list[LineRun | Record | Reject] = []
            for json, last in zip(jsons, lasts, strict=True):
                if json == b"{}":
                    items.append(self._reject("row has no values (every cell empty)", last))
                else:
                    items.append(self._record(json, last))
        else:
            base = self.start_line
            # A row starts on the line after the previous one ended.
            previous = chain((self.done,), islice(lasts, len(lasts) - 1))
            items = [
                LineRun(
                    jsons,
                    list(map(add, previous, repeat(base + 1))),
                    list(map(add, lasts, repeat(base))),
                    list(map(self.feed.end, lasts)),
                )
            ]
            self._done(lasts[-1])
        rows.clear()
        lasts.clear()
        return items

    def _odd_row(self, row: list[str], last: int, width: int) -> Iterator[Reject]:
        problem = self.feed.problem(last)
        if problem == TOO_LONG:
            max_line = self.limits.max_line_bytes
            yield self._reject(
                f"a line of this row is over {max_line:,} bytes; skipped unread", last
            )
        elif problem in _NOT_UTF8:
            yield self._reject(f"row is not valid UTF-8{_NOT_UTF8[problem]}", last)
        elif len(row) > width:
            yield self._reject(f"row has {len(row)} cells but the header has {width} columns", last)
        else:  # a blank line
            self._done(last)

    def _record(self, json: bytes, last: int) -> Record:
        record = Record(
            self.start_line + self.done + 1, self.start_line + last, self.feed.end(last), json
        )
        self._done(last)
        return record

    def _reject(self, reason: str, last: int) -> Reject:
        start, end = self.feed.end(self.done), self.feed.end(last)
        raw = read_span(self.handle, start, end, self.limits.max_excerpt)
        reject = Reject(
            self.start_line + self.done + 1,
            self.start_line + last,
            end,
            reason,
            excerpt(raw, self.limits.max_excerpt),
        )
        self._done(last)
        return reject

    def _done(self, last: int) -> None:
        self.done = last
        self.feed.forget(last)
