"""What the parsers share: limits, and turning raw bytes into a printable excerpt."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import BinaryIO

from ingestor.errors import ParseError
from ingestor.kinds import CSV_DELIMITERS, KIB
from ingestor.parsers.compressed import GzipLimits

UTF8_BOM = b"\xef\xbb\xbf"
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")  # what Excel's "Unicode Text" export starts with


def check_not_utf16(handle: BinaryIO, what: str) -> None:
    """Raise ParseError for a UTF-16 file: every line of it would fail as invalid UTF-8,
    so say once, for the whole file, what it is and how to save it instead."""
    handle.seek(0)
    if handle.read(2) in _UTF16_BOMS:
        excel = ""
        if what == "CSV":
            excel = ' (and "delimiter": "\\t" if it is Excel\'s "Unicode Text")'
        raise ParseError(
            f"the file is UTF-16 text, not UTF-8; save it as {what} (UTF-8) and upload it "
            f'again, or declare "encoding": "utf-16"{excel} in the folder\'s config.json'
        )


@dataclass(frozen=True, slots=True)
class ParseLimits:
    """``max_record_bytes`` is the API's per-record limit; a line longer than
    ``max_line_bytes`` is skipped without being read into memory."""

    max_record_bytes: int = 512 * KIB
    max_line_bytes: int = 1024 * KIB
    max_excerpt: int = 2048
    gzip: GzipLimits = field(default_factory=GzipLimits)  # how far a compressed file expands


HEAD_BYTES = 64 * KIB  # what ``assumptions`` looks at
WINDOWS_HINT = (
    ' (it is valid Windows-1252: if the file is, declare "encoding": "windows-1252" in '
    "the folder's config.json)"
)


def windows_hint(raw: bytes) -> str:
    """``WINDOWS_HINT`` for a line that is not UTF-8 but is Windows-1252 (what an undeclared
    Excel export gives), else ''."""
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        try:
            raw.decode("cp1252")
        except UnicodeDecodeError:
            return ""
        return WINDOWS_HINT
    return ""


def assumptions(
    head: bytes, fmt: str, delimiter: str, encoding: str, compressed: bool = False
) -> dict[str, str]:
    """How a file is read, for its report and e-mail: format, compression, encoding,
    byte-order mark, line ends (from its first ``HEAD_BYTES``, uncompressed), and for CSV
    the delimiter and header."""
    text = head.decode(encoding, "replace")
    bom = head.startswith(UTF8_BOM) or head[:2] in _UTF16_BOMS
    ends = "CRLF" if "\r\n" in text else "LF" if "\n" in text else "none in the first 64 KiB"
    read_as = {
        "format": "CSV" if fmt == "csv" else "JSON Lines",
        "encoding": encoding,
        "byte_order_mark": "present, not part of the data" if bom else "none",
        "line_ends": ends,
    }
    if compressed:
        read_as["compression"] = "gzip"
    if fmt == "csv":
        read_as["delimiter"] = CSV_DELIMITERS.get(delimiter, delimiter)
        read_as["header"] = "the first row names the fields"
    return read_as


def excerpt(raw: bytes, limit: int) -> str:
    """Printable text of a raw row for reports: decoded leniently and cut to ``limit``."""
    text = raw[:limit].decode("utf-8", "replace").rstrip("\r\n")
    return text + "…" if len(raw) > limit else text


def read_span(handle: BinaryIO, start: int, end: int, limit: int) -> bytes:
    """Bytes ``[start, end)`` of the file (at most ``limit``), without moving the handle."""
    size = min(end - start, limit + 1)
    try:
        return os.pread(handle.fileno(), size, start)
    except (OSError, ValueError):  # not a real file (e.g. BytesIO): seek and come back
        here = handle.tell()
        handle.seek(start)
        data = handle.read(size)
        handle.seek(here)
        return data


def skip_long_line(handle: BinaryIO, chunk: int) -> int:
    """Consume the rest of an over-long line; return how many bytes were skipped."""
    skipped = 0
    while True:
        piece = handle.readline(chunk)
        skipped += len(piece)
        if not piece or piece.endswith(b"\n"):
            return skipped
