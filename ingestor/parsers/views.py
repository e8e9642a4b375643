"""A read-only, seekable view of a file's bytes after a transformation (a declared encoding
read as UTF-8, a gzip stream decompressed): what the parsers read instead of the file.

Offsets are offsets in the transformed bytes. Seeking back further than what is kept
restarts the transformation from the file's start; seeking forward transforms and skips.
"""

from __future__ import annotations

import io
from typing import BinaryIO

from ingestor.kinds import KIB, MIB

_SOURCE_CHUNK = 64 * KIB
_KEEP_BEHIND = 2 * MIB  # transformed bytes kept behind the position, for steps back


class SeekableView(io.RawIOBase):
    """``source`` read from its start through ``_convert``. Closing it closes ``source``."""

    def __init__(self, source: BinaryIO) -> None:
        super().__init__()
        self._source = source
        self._restart()

    def _start(self) -> None:
        """Reset the transformation, for a read from the source's start."""
        raise NotImplementedError

    def _convert(self, chunk: bytes) -> bytes:
        """The transformed bytes of the source's next ``chunk`` (b"": the source ended)."""
        raise NotImplementedError

    def _grown(self, produced: int, consumed: int) -> None:
        """The view now reaches offset ``produced``, having read ``consumed`` source bytes."""

    def _restart(self) -> None:
        self._source.seek(0)
        self._data = bytearray()  # transformed bytes from offset _base on
        self._base = 0
        self._pos = 0
        self._eof = False
        self._consumed = 0
        self._start()

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
            raise io.UnsupportedOperation("seek from the end of transformed bytes")
        if offset < self._base:
            self._restart()
        self._pos = max(offset, 0)
        return self._pos

    def _fill(self, end: int) -> None:
        """Transform until the bytes reach offset ``end`` (or the source ends)."""
        while not self._eof and self._base + len(self._data) < end:
            chunk = self._source.read(_SOURCE_CHUNK)
            self._eof = not chunk
            self._consumed += len(chunk)
            self._data += self._convert(chunk)
            produced = self._base + len(self._data)
            self._grown(produced, self._consumed)
            # Drop what is far behind the position, in big steps (a skip to a checkpoint
            # deep in the file holds no more than this).
            keep_from = min(self._pos, produced) - _KEEP_BEHIND
            if keep_from - self._base > _KEEP_BEHIND:
                del self._data[: keep_from - self._base]
                self._base = keep_from

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            self._fill(1 << 62)
            size = self._base + len(self._data) - self._pos
        self._fill(self._pos + size)
        start = self._pos - self._base
        data = bytes(self._data[start : start + size])
        self._pos += len(data)
        return data

    def readline(self, size: int | None = -1) -> bytes:
        limit = size if size is not None and size >= 0 else 1 << 62
        searched = self._pos
        while True:
            start = max(searched, self._pos) - self._base
            newline = self._data.find(b"\n", start, self._pos - self._base + limit)
            if newline >= 0:
                return self.read(newline + 1 - (self._pos - self._base))
            searched = self._base + len(self._data)
            if self._eof or searched - self._pos >= limit:
                return self.read(limit)
            self._fill(searched + _SOURCE_CHUNK)

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def fileno(self) -> int:
        raise io.UnsupportedOperation("transformed bytes have no descriptor")

    def close(self) -> None:
        if not self.closed:
            self._source.close()
        super().close()
