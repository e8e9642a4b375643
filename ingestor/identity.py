"""A file version's identity: stat plus sha256, hashed only when the stat changed (or taken
from whoever already saw every byte, e.g. the SFTP endpoint as it received the upload)."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

from ingestor.ledger import FileIdentity, Ledger

HASH_CHUNK = 1024 * 1024


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


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


def identify(
    path: Path,
    company: str,
    kind: str,
    folder: str,
    ledger: Ledger,
    known: KnownHashes | None = None,
) -> FileIdentity:
    """Identify ``path``; a hash is reused (the ledger's, or a known one) while size and mtime
    are unchanged, else the file is read and hashed."""
    info = path.stat()
    latest = ledger.latest(company, kind, folder, path.name)
    sha = known.take(path, info.st_size, info.st_mtime_ns) if known else None
    if sha is not None:
        pass
    elif latest and (latest.identity.size, latest.identity.mtime_ns) == (
        info.st_size,
        info.st_mtime_ns,
    ):
        sha = latest.identity.sha256
    else:
        sha = sha256_of(path)
    return FileIdentity(
        company, kind, folder, path.name, str(path), info.st_size, info.st_mtime_ns, sha
    )
