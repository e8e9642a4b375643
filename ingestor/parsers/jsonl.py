"""JSONL: one JSON object a line; blank lines ignored; anything else skipped with a reason.

A line orjson accepts as an object is valid JSON already, so it goes to the wire as the
same bytes (no decode/encode round trip, and big integers keep every digit).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import BinaryIO

import orjson

from ingestor.parsers.common import (
    UTF8_BOM,
    ParseLimits,
    check_not_utf16,
    excerpt,
    skip_long_line,
)
from ingestor.records import Record, Reject

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
    (closing ``handle`` at the end if ``close``)."""
    try:
        check_not_utf16(handle, "JSON Lines")
        handle.seek(start_offset)
        offset, line_no = start_offset, start_line
        max_line = limits.max_line_bytes
        loads, decode_error, whitespace = orjson.loads, orjson.JSONDecodeError, JSON_WHITESPACE
        while True:
            raw = handle.readline(max_line)
            if not raw:
                return
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
                    _invalid_reason(exc),
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
    finally:
        if close:
            handle.close()
