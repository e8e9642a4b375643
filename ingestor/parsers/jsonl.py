"""JSONL: one JSON object a line; blank lines ignored; anything else skipped with a reason.

A line orjson accepts as an object is valid JSON already, so it goes to the wire as the
same bytes (no decode/encode round trip, and big integers keep every digit).
"""

from __future__ import annotations

import operator
import re
from collections import deque
from collections.abc import Generator, Iterator
from itertools import accumulate, islice
from typing import BinaryIO

import orjson

from ingestor.parsers.common import (
    UTF8_BOM,
    ParseLimits,
    check_not_utf16,
    excerpt,
    skip_long_line,
    windows_hint,
)
from ingestor.records import LineRun, Record, Reject

JSON_WHITESPACE = b" \t\r\n"  # RFC 8259; bytes.strip() would also take \f and \v

_JSON_TYPE_NAMES = {
    list: "an array",
    str: "a string",
    int: "a number",
    float: "a number",
    bool: "a boolean",
    type(None): "null",
}


_WITHIN_LINE = re.compile(r"line 1 column (\d+) \(char \d+\)")


def _invalid_reason(exc: orjson.JSONDecodeError) -> str:
    # orjson counts lines within the one line it was given: "line 1" would contradict the
    # file's own line number, so only the column is kept.
    message = _WITHIN_LINE.sub(r"at column \1", str(exc))
    if "UTF-8" in message or "surrogate" in message:
        return f"invalid UTF-8 or unicode escape: {message}"
    return f"invalid JSON: {message}"


def parse_jsonl(
    handle: BinaryIO,
    limits: ParseLimits,
    start_offset: int = 0,
    start_line: int = 0,
    close: bool = False,
) -> Iterator[Record | Reject]:
    """Yield a Record per JSON-object line and a Reject per bad line, from a checkpoint
    (closing ``handle`` at the end if ``close``). The reference for ``parse_jsonl_blocks``."""
    try:
        check_not_utf16(handle, "JSON Lines")
        handle.seek(start_offset)
        yield from _line_by_line(handle, limits, start_offset, start_line, None)
    finally:
        if close:
            handle.close()


# Every busy company holds a block and its lines at once: at 256 KiB, 100 busy companies
# kept 343 MB resident, at 32 KiB 174 MB, and parsing was no slower (bench/RESULTS.md).
BLOCK_BYTES = 32 * 1024
_FIRST, _LAST = operator.itemgetter(0), operator.itemgetter(-1)
_OPEN, _CLOSE = ord("{"), ord("}")


def parse_jsonl_blocks(
    handle: BinaryIO,
    limits: ParseLimits,
    start_offset: int = 0,
    start_line: int = 0,
    close: bool = False,
    block_bytes: int = BLOCK_BYTES,
) -> Iterator[LineRun | Record | Reject]:
    """What ``parse_jsonl`` yields, a block at a time: a block of lines that are all plain
    JSON objects (the common case, LF or CRLF) comes as one LineRun, without a Record per
    line; any other block (a blank, bad, padded or overlong line, a BOM) goes line by line
    through ``parse_jsonl``'s own code. Flattened, the two give the same items."""
    try:
        check_not_utf16(handle, "JSON Lines")
        handle.seek(start_offset)
        offset, line_no, rest = start_offset, start_line, b""
        loads, max_line = orjson.loads, limits.max_line_bytes
        while True:
            data = rest + handle.read(block_bytes)
            if not data:
                return
            cut = data.rfind(b"\n") + 1
            body, rest = data[:cut], data[cut:]
            lines = _plain_lines(body, offset == 0, max_line)
            if lines is not None:
                try:  # each line is {...}: one that parses is an object
                    deque(map(loads, lines), maxlen=0)
                except orjson.JSONDecodeError:
                    lines = None
            if lines is not None:
                count, newline = len(lines), 2 if body.endswith(b"\r\n") else 1
                numbers = range(line_no + 1, line_no + count + 1)
                running = list(accumulate(map(len, lines), initial=0))
                steps = range(offset + newline, offset + newline * count + 1, newline)
                ends = list(map(operator.add, islice(running, 1, None), steps))
                offset, line_no = offset + cut, line_no + count
                # No line is longer than the block: for the batcher, a bound for free.
                yield LineRun(lines, numbers, numbers, ends, running, len(body))
                continue
            # Line by line, up to the block's last newline (or through one line, however
            # long, when the block holds none), then blocks again from where it stopped.
            handle.seek(offset)
            stop_at = offset + cut if cut else offset + 1
            offset, line_no = yield from _line_by_line(handle, limits, offset, line_no, stop_at)
            rest = b""
    finally:
        if close:
            handle.close()


def _plain_lines(body: bytes, file_start: bool, max_line: int) -> list[bytes] | None:
    """``body``'s lines (without their LF or CRLF) if each is ``{...}`` with nothing around
    it and none is too long, else None. Checked with one-byte searches and C-level maps,
    never a Python step per line (two-byte searches cost ten times a one-byte one)."""
    if not body or (file_start and body.startswith(UTF8_BOM)) or b"\t" in body:
        return None
    if b"\r" in body:  # CRLF, and no other CR
        newlines = body.count(b"\n")
        if body.count(b"\r") != newlines:
            return None
        lines = body.split(b"\r\n")
        if len(lines) != newlines + 1:
            return None
        separator = 2
    else:
        lines, separator = body.split(b"\n"), 1
    lines.pop()  # the empty remainder after the last separator
    try:  # a blank line has no first byte
        if set(map(_FIRST, lines)) != {_OPEN} or set(map(_LAST, lines)) != {_CLOSE}:
            return None
    except IndexError:
        return None
    # A block no longer than a line may be holds no line that is too long.
    if len(body) > max_line and max(map(len, lines)) + separator > max_line:
        return None
    return lines


def _line_by_line(
    handle: BinaryIO, limits: ParseLimits, offset: int, line_no: int, stop_at: int | None
) -> Generator[Record | Reject, None, tuple[int, int]]:
    """Lines from ``offset`` (where ``handle`` is), until the end or the first line ending
    at or past ``stop_at``; returns where it stopped (offset, line number)."""
    max_line = limits.max_line_bytes
    loads, decode_error, whitespace = orjson.loads, orjson.JSONDecodeError, JSON_WHITESPACE
    while stop_at is None or offset < stop_at:
        raw = handle.readline(max_line)
        if not raw:
            break
        line_no += 1
        offset += len(raw)
        if len(raw) == max_line and not raw.endswith(b"\n"):
            offset += skip_long_line(handle, max_line)
            yield Reject(
                line_no,
                line_no,
                offset,
                f"line is over {max_line:,} bytes, larger than a record may be; skipped unread",
                excerpt(raw, limits.max_excerpt),
            )
            continue
        if offset == len(raw) and raw.startswith(UTF8_BOM):
            raw = raw[len(UTF8_BOM) :]
        body = raw.strip(whitespace)
        if not body:
            continue
        try:
            try:
                value = loads(body)
            except decode_error:
                # A BOM mid-file: files that each began with one, concatenated. Looked
                # for only here, so the common path pays nothing for it.
                if not body.startswith(UTF8_BOM):
                    raise
                body = body[len(UTF8_BOM) :].strip(JSON_WHITESPACE)
                value = loads(body)
        except decode_error as exc:
            yield Reject(
                line_no,
                line_no,
                offset,
                _invalid_reason(exc) + windows_hint(body),
                excerpt(body, limits.max_excerpt),
            )
            continue
        if type(value) is not dict:
            kind = _JSON_TYPE_NAMES.get(type(value), type(value).__name__)
            yield Reject(
                line_no,
                line_no,
                offset,
                f"line is {kind}, not a JSON object",
                excerpt(body, limits.max_excerpt),
            )
            continue
        yield Record(line_no, line_no, offset, body)
    return offset, line_no
