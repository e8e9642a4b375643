"""One service per state directory: two would deliver the same e-mails and race on files."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from ingestor.errors import ConfigError, StateUnwritable

LOCK_NAME = "service.lock"  # in the state directory; holds the running service's pid


@contextlib.contextmanager
def state_dir_lock(path: Path) -> Iterator[None]:
    """One service per state directory: two would deliver the same e-mails twice."""
    try:
        opened = path.open("a+")
    except OSError as exc:
        raise StateUnwritable.from_os_error(path, exc) from None
    with opened as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            owner = handle.read().strip() or "?"
            raise ConfigError(
                f"another ingestor service (pid {owner}) is running with state dir "
                f"{path.parent}; stop it first or give this one its own state_dir"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        yield


def lock_holder(path: Path) -> str | None:
    """The pid of the service holding the state dir's lock, or None if none runs."""
    try:
        handle = path.open("r")
    except FileNotFoundError:
        return None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return handle.read().strip() or "?"
        fcntl.flock(handle, fcntl.LOCK_UN)
        return None
