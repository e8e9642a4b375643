"""A file version's identity: fstat of the open descriptor plus sha256, hashed only when the
size or mtime changed (or taken from whoever already saw every byte, e.g. the SFTP endpoint
as it received the upload). The hash is read through the same descriptor that is parsed."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

from ingestor.dropfile import DropFile, Stat
from ingestor.ledger import FileIdentity, FileRun, Ledger


def same_version(current: Stat | None, identity: FileIdentity) -> bool:
    """Whether a file whose (size, mtime_ns) is ``current`` is still the version
    ``identity`` describes. The one place this is decided: a version is its content, and a
    size or mtime that moved means the content may have."""
    return current is not None and current == (identity.size, identity.mtime_ns)


# The sha256 recorded for a file that could not be opened (a link, a FIFO, no permission):
# the same refusal again matches the same version, so it is reported once.
UNOPENED = "unopened"


class KnownHashes:
    """sha256 digests computed elsewhere, valid while the file keeps its size and mtime."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._known: dict[str, tuple[int, int, str]] = {}

    def put(self, path: Path, size: int, mtime_ns: int, sha: str) -> None:
        with self._lock:
            self._known[str(path)] = (size, mtime_ns, sha)

    def take(self, path: Path, size: int, mtime_ns: int) -> str | None:
        with self._lock:
            known = self._known.pop(str(path), None)
        return known[2] if known and known[:2] == (size, mtime_ns) else None


@dataclass(frozen=True, slots=True)
class Identified:
    """A file version's identity, and the earlier version it is a pure append of, if any
    (its bytes are the earlier version's, followed by more)."""

    identity: FileIdentity
    appends_to: FileRun | None = None


def identify(
    file: DropFile,
    company: str,
    kind: str,
    folder: str,
    ledger: Ledger,
    known: KnownHashes | None = None,
) -> Identified:
    """Identify an open file; a hash is reused (the ledger's, or a known one) while size and
    mtime are unchanged, else the file is read through its descriptor and hashed. When it
    has grown since the latest version, the same pass hashes the latest version's length
    too, to tell a pure append from a new file."""
    size, mtime_ns = file.size, file.mtime_ns
    latest = ledger.latest(company, kind, folder, file.name)
    sha = known.take(file.path, size, mtime_ns) if known else None
    appends_to = None
    if sha is not None:
        pass
    elif (
        latest
        and latest.identity.sha256 != UNOPENED
        and same_version((size, mtime_ns), latest.identity)
    ):
        sha = latest.identity.sha256
    else:
        prefix = None  # has it grown from a version read before? Hash that much too
        if latest is not None and latest.identity.sha256 != UNOPENED:
            prefix = latest.identity.size if latest.identity.size < size else None
        sha, head = file.sha256(prefix)
        if latest is not None and head is not None and head == latest.identity.sha256:
            appends_to = latest
    identity = FileIdentity(company, kind, folder, file.name, str(file.path), size, mtime_ns, sha)
    return Identified(identity, appends_to)


def unopened_identity(path: Path, company: str, kind: str, folder: str) -> FileIdentity:
    """The identity of a file that was refused before it could be read."""
    try:
        info = path.lstat()
        size, mtime_ns = info.st_size, info.st_mtime_ns
    except OSError:
        size, mtime_ns = 0, 0
    return FileIdentity(company, kind, folder, path.name, str(path), size, mtime_ns, UNOPENED)
