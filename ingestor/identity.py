"""A file version's identity: stat plus sha256, hashed only when the stat changed."""

from __future__ import annotations

import hashlib
from pathlib import Path

from ingestor.ledger import FileIdentity, Ledger

HASH_CHUNK = 1024 * 1024


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def identify(path: Path, company: str, kind: str, folder: str, ledger: Ledger) -> FileIdentity:
    """Identify ``path``; the ledger's latest hash is reused when size and mtime are unchanged."""
    info = path.stat()
    latest = ledger.latest(company, kind, folder, path.name)
    if latest and (latest.identity.size, latest.identity.mtime_ns) == (
        info.st_size,
        info.st_mtime_ns,
    ):
        sha = latest.identity.sha256
    else:
        sha = sha256_of(path)
    return FileIdentity(
        company, kind, folder, path.name, str(path), info.st_size, info.st_mtime_ns, sha
    )
