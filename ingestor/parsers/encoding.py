"""A file in a declared encoding, read as UTF-8: what the parsers see of a Latin-1, Windows
or UTF-16 export whose folder's config.json says so.

The parsers' byte offsets (checkpoints, line ends) are then offsets in the UTF-8 text, not
in the file: resuming at one decodes the file again from its start up to it (a single-byte
encoding decodes at several hundred MB/s; bench figures in bench/RESULTS.md). A short step
back (a parser re-reading the block it stopped in) is served from the text already decoded.
"""

from __future__ import annotations

import codecs
from typing import BinaryIO

from ingestor.parsers.views import SeekableView


def same_encoding(name: str, other: str) -> bool:
    return codecs.lookup(name).name == codecs.lookup(other).name


class Transcoded(SeekableView):
    """``source`` (read from its start) decoded from ``encoding`` and encoded as UTF-8,
    read-only and seekable by offset in the UTF-8 text. A byte the encoding does not
    define is kept as it is, so its row fails as invalid UTF-8 and is skipped with its
    line, like any undecodable row; nothing is replaced silently. Closing it closes
    ``source``."""

    def __init__(self, source: BinaryIO, encoding: str) -> None:
        self._encoding = encoding
        super().__init__(source)

    def _start(self) -> None:
        self._decoder = codecs.getincrementaldecoder(self._encoding)("surrogateescape")

    def _convert(self, chunk: bytes) -> bytes:
        text = self._decoder.decode(chunk, final=not chunk)
        return text.encode("utf-8", "surrogateescape")
