"""A file in a declared encoding, read as UTF-8: what the parsers see of a Latin-1, Windows
or UTF-16 export whose folder's config.json says so.

The parsers' byte offsets (checkpoints, line ends) are then offsets in the UTF-8 text, not
in the file: resuming at one decodes the file again from its start up to it (a single-byte
encoding decodes at several hundred MB/s; bench figures in bench/RESULTS.md). A short step
back (a parser re-reading the block it stopped in) is served from the text already decoded.
"""

from __future__ import annotations

import codecs
import io
from typing import BinaryIO

from ingestor.kinds import KIB

_SOURCE_CHUNK = 64 * KIB
_KEEP_BEHIND = 2 * 1024 * KIB  # decoded text kept behind the position, for steps back


def same_encoding(name: str, other: str) -> bool:
    return codecs.lookup(name).name == codecs.lookup(other).name


class Transcoded(io.RawIOBase):
    """``source`` (read from its start) decoded from ``encoding`` and encoded as UTF-8,
    read-only and seekable by offset in the UTF-8 text. A byte the encoding does not
    define is kept as it is, so its row fails as invalid UTF-8 and is skipped with its
    line, like any undecodable row; nothing is replaced silently. Closing it closes
    ``source``."""

    def __init__(self, source: BinaryIO, encoding: str) -> None:
        super().__init__()
        self._source, self._encoding = source, encoding
        self._restart()

    def _restart(self) -> None:
        self._source.seek(0)
        self._decoder = codecs.getincrementaldecoder(self._encoding)("surrogateescape")
        self._text = bytearray()  # UTF-8 text from offset _base on
        self._base = 0
        self._pos = 0
        self._eof = False

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_CUR:
            offset += self._pos
        elif whence != io.SEEK_SET:
            raise io.UnsupportedOperation("seek from the end of decoded text")
        if offset < self._base:
            self._restart()
        self._pos = max(offset, 0)
        return self._pos

    def _fill(self, end: int) -> None:
        """Decode until the text reaches offset ``end`` (or the file ends)."""
        while not self._eof and self._base + len(self._text) < end:
            chunk = self._source.read(_SOURCE_CHUNK)
            self._eof = not chunk
            text = self._decoder.decode(chunk, final=self._eof)
            self._text += text.encode("utf-8", "surrogateescape")
            # Drop what is far behind the position, in big steps (a skip to a checkpoint
            # deep in the file holds no more than this).
            keep_from = min(self._pos, self._base + len(self._text)) - _KEEP_BEHIND
            if keep_from - self._base > _KEEP_BEHIND:
                del self._text[: keep_from - self._base]
                self._base = keep_from

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            self._fill(1 << 62)
            size = self._base + len(self._text) - self._pos
        self._fill(self._pos + size)
        start = self._pos - self._base
        data = bytes(self._text[start : start + size])
        self._pos += len(data)
        return data

    def readline(self, size: int | None = -1) -> bytes:
        limit = size if size is not None and size >= 0 else 1 << 62
        searched = self._pos
        while True:
            start = max(searched, self._pos) - self._base
            newline = self._text.find(b"\n", start, self._pos - self._base + limit)
            if newline >= 0:
                return self.read(newline + 1 - (self._pos - self._base))
            searched = self._base + len(self._text)
            if self._eof or searched - self._pos >= limit:
                return self.read(limit)
            self._fill(searched + _SOURCE_CHUNK)

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def fileno(self) -> int:
        raise io.UnsupportedOperation("decoded text has no descriptor")

    def close(self) -> None:
        if not self.closed:
            self._source.close()
        super().close()
