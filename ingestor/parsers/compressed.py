"""A gzip-compressed upload, read as the bytes it holds: what the parsers see of
``orders.csv.gz``. Nothing is unpacked to disk.

Offsets (checkpoints, line ends) are offsets in the uncompressed bytes: resuming at one
decompresses the file again from its start up to it (zlib inflates at several hundred MB/s;
the figure is in bench/RESULTS.md). A short step back is served from what is kept. A corrupt
or truncated stream raises ParseError at the point it can no longer be read, so what was sent
before it stays sent. A decompression bomb is stopped by two bounds: the uncompressed size,
and the ratio of uncompressed to compressed bytes once a file has grown past 256 KiB; it
inflates a megabyte at a time, so a bomb never fills the memory.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import BinaryIO

from ingestor.errors import ParseError
from ingestor.kinds import KIB, MIB
from ingestor.parsers.views import SeekableView

_RATIO_AFTER = 256 * KIB  # the ratio is judged once this much has come out
_STEP = 1 * MIB  # inflated at most at a time
_GZIP = 16 + zlib.MAX_WBITS  # a gzip header and trailer, not a raw or zlib stream
GZIP_MAGIC = b"\x1f\x8b"


@dataclass(frozen=True, slots=True)
class GzipLimits:
    """How far a compressed upload may expand (settings: ``max_uncompressed_bytes`` and
    ``max_compression_ratio``)."""

    max_bytes: int = 64 * 1024 * MIB
    max_ratio: int = 200


class Gunzipped(SeekableView):
    """``source`` (a gzip file, read from its start; several members are read one after
    the other, as gzip does) decompressed, read-only and seekable by offset in the
    uncompressed bytes. Closing it closes ``source``."""

    def __init__(self, source: BinaryIO, limits: GzipLimits | None = None) -> None:
        self._limits = limits or GzipLimits()
        super().__init__(source)

    def _start(self) -> None:
        self._inflate = zlib.decompressobj(_GZIP)
        self._members = 0  # members read to their end
        self._at_member_start = True  # between members: the stream may end here
        self._produced = 0
        self._used = 0  # compressed bytes inflated
        self._failure: ParseError | None = None  # raised once what came before is read

    def _convert(self, chunk: bytes) -> bytes:
        if self._failure is not None:  # the bytes before it were handed out first
            raise self._failure
        if not chunk:  # the file ended: so must the last member
            if self._members and self._at_member_start:
                return b""
            if not self._consumed:
                raise ParseError("the file is empty: a gzip file holds at least a header")
            raise ParseError(
                f"the gzip stream ends early (a truncated upload?) after {self._produced:,} "
                "uncompressed bytes; the rows before that point were read"
            )
        out = bytearray()
        data = chunk
        while data:
            self._at_member_start = False
            try:  # a step at a time: a bomb is stopped before it fills the memory
                piece = self._inflate.decompress(data, _STEP)
            except zlib.error as exc:
                self._failure = ParseError(
                    f"the gzip stream is corrupt after {self._produced + len(out):,} "
                    f"uncompressed bytes ({exc}); the rows before that point were read"
                )
                break
            out += piece
            tail = self._inflate.unconsumed_tail
            self._used += len(data) - len(tail)
            self._check(self._produced + len(out), self._used)
            if tail:
                data = tail
                continue
            if not self._inflate.eof:
                break
            self._members += 1
            data = self._inflate.unused_data  # another member follows, or trailing bytes
            self._used -= len(data)
            self._inflate = zlib.decompressobj(_GZIP)
            self._at_member_start = True
            if data and not data.startswith(GZIP_MAGIC[: len(data)]):
                self._failure = ParseError(
                    f"bytes after the end of the gzip stream are not gzip (after "
                    f"{self._produced + len(out):,} uncompressed bytes); the rows before "
                    "that point were read"
                )
                break
        self._produced += len(out)
        return bytes(out)

    def _check(self, produced: int, used: int) -> None:
        limits = self._limits
        if produced > limits.max_bytes:
            raise ParseError(
                f"the file expands to more than {limits.max_bytes:,} bytes "
                "(max_uncompressed_bytes); split it, or raise the setting"
            )
        if produced > _RATIO_AFTER and produced > limits.max_ratio * max(used, 1):
            raise ParseError(
                f"the file expands more than {limits.max_ratio} times ({used:,} bytes to "
                f"over {produced:,}): a decompression bomb, or data no export holds "
                "(max_compression_ratio)"
            )
