"""Finding files that are ready: completely uploaded, inside a company's drop tree.

``Readiness`` is the decision (pure: callers pass stats and clock readings). ``Discovery``
applies it to file-system events and rescans, and says what each ready path is (a data file,
a config.json, a stray). ``DropObserver`` is the watchdog glue: it only forwards raw events
to a queue, so all decisions happen on the service's one thread.

A file is ready on a close-after-write or a rename into place. Where no close comes (a file
found by a rescan, a polling observer), it is ready once its size and mtime have held still
for the quiet period, and never while empty. A file seen being written waits for its close.
"""

from __future__ import annotations

import enum
import os
import stat
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import structlog
from watchdog.events import (
    DirCreatedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

from ingestor.layout import Placed, Placement, place

log = structlog.get_logger("ingestor.discovery")
STALE_CLOSE_MIN = 60.0  # seconds; see Readiness.stale_close

Stat = tuple[int, int]  # size, mtime_ns


def stat_of(path: str) -> Stat | None:
    """Size and mtime of a regular file (never through a symlink), or None."""
    try:
        info = os.lstat(path)
    except OSError:
        return None
    if not stat.S_ISREG(info.st_mode):
        return None
    return info.st_size, info.st_mtime_ns


class Readiness:
    """When is an upload complete? ``close_events`` says whether the observer reports
    close-after-write (inotify does; polling and network file systems do not)."""

    def __init__(self, quiet_period: float, close_events: bool) -> None:
        self.quiet_period = quiet_period
        self.close_events = close_events
        # A file awaiting its close event but untouched for this long lost the event (an
        # overflowed inotify queue drops events): a scan hands it to the quiet-period rule.
        self.stale_close = max(STALE_CLOSE_MIN, 10 * quiet_period)
        self._awaiting_close: set[str] = set()
        self._quiet: dict[str, tuple[Stat, float]] = {}  # path → (stat, stable since)

    def written(self, path: str, current: Stat | None, now: float) -> None:
        """The file is being written: with close events, wait for the close."""
        if self.close_events:
            self._awaiting_close.add(path)
            self._quiet.pop(path, None)
        else:
            self.seen(path, current, now)

    def seen(self, path: str, current: Stat | None, now: float, age: float = 0.0) -> None:
        """The file exists (found by a scan or a create event): wait for it to hold still.
        ``age`` (seconds since its mtime) lets a long-finished file be ready at once."""
        if current is None:
            return
        if path in self._awaiting_close:
            if age < self.stale_close:
                return
            self._awaiting_close.discard(path)
            log.warning(
                "close_event_missed",
                path=path,
                idle_seconds=round(age),
                detail="ready once it holds still for the quiet period",
            )
        known = self._quiet.get(path)
        if known is None or known[0] != current:
            self._quiet[path] = (current, now - min(max(age, 0.0), self.quiet_period))

    def closed(self, path: str) -> None:
        """Close-after-write or rename into place: the upload is complete."""
        self.forget(path)

    def forget(self, path: str) -> None:
        self._awaiting_close.discard(path)
        self._quiet.pop(path, None)

    def due(self, stat_fn: Callable[[str], Stat | None], now: float) -> list[str]:
        """Paths whose size and mtime held still for the quiet period (and are not empty)."""
        ready: list[str] = []
        for path, (known, since) in list(self._quiet.items()):
            current = stat_fn(path)
            if current is None:
                del self._quiet[path]
            elif current != known:
                self._quiet[path] = (current, now)
            elif now - since >= self.quiet_period and current[0] > 0:
                del self._quiet[path]
                ready.append(path)
        return ready

    @property
    def waiting(self) -> int:
        return len(self._awaiting_close) + len(self._quiet)


class FoundKind(enum.Enum):
    DATA = "data"  # a complete data file in an import folder
    CONFIG = "config"  # an import folder's config.json was written (its files: look again)
    STRAY = "stray"  # a complete file directly under imports/<kind>/


@dataclass(frozen=True, slots=True)
class Found:
    kind: FoundKind
    path: Path
    placed: Placed


def has_symlink(root: Path, path: Path) -> bool:
    """Whether ``path`` or any directory between ``root`` and it is a symlink."""
    current = path
    while current != root and current != current.parent:
        if current.is_symlink():
            return True
        current = current.parent
    return False


class Discovery:
    """Turns events and scans of one drop root into ready files. Not thread-safe: the
    service calls it from one thread."""

    def __init__(self, drop_root: Path, readiness: Readiness) -> None:
        self.drop_root = drop_root
        self.readiness = readiness

    def _placed(self, path: str) -> Placed | None:
        try:
            relative = PurePosixPath(Path(path).relative_to(self.drop_root).as_posix())
        except ValueError:
            return None
        placed = place(relative)
        if placed.placement in (Placement.OUTSIDE, Placement.WAITING, Placement.IGNORED):
            return None
        return placed

    def _found(self, path: str) -> Found | None:
        placed = self._placed(path)
        if placed is None or has_symlink(self.drop_root, Path(path)):
            return None
        kind = {
            Placement.DATA_FILE: FoundKind.DATA,
            Placement.CONFIG: FoundKind.CONFIG,
            Placement.STRAY: FoundKind.STRAY,
        }[placed.placement]
        return Found(kind, Path(path), placed)

    def on_event(self, event: FileSystemEvent, now: float) -> list[Found]:
        """Ready files an event reveals (most events reveal none yet)."""
        src = os.fsdecode(event.src_path)
        if isinstance(event, FileClosedEvent):
            self.readiness.closed(src)
            return self._ready([src])
        if isinstance(event, FileMovedEvent):
            self.readiness.forget(src)
            dest = os.fsdecode(event.dest_path)
            self.readiness.closed(dest)
            return self._ready([dest])
        if isinstance(event, FileDeletedEvent):
            self.readiness.forget(src)
        elif isinstance(event, FileModifiedEvent) and self._placed(src):
            self.readiness.written(src, stat_of(src), now)
        elif isinstance(event, FileCreatedEvent) and self._placed(src):
            self.readiness.seen(src, stat_of(src), now)
        elif isinstance(event, DirCreatedEvent | DirMovedEvent):
            # Files that landed before the new directory was watched send no events.
            target = os.fsdecode(event.dest_path) if event.dest_path else src
            self.scan(Path(target), now)
        return []

    def _ready(self, paths: list[str]) -> list[Found]:
        found = [f for f in map(self._found, paths) if f is not None]
        return [f for f in found if f.kind is FoundKind.CONFIG or stat_of(str(f.path))]

    def scan(self, top: Path | None = None, now: float | None = None) -> int:
        """Note every candidate file under ``top`` (default: the drop root); they become
        ready through ``due`` once they hold still. Returns how many were seen."""
        now = time.monotonic() if now is None else now
        wall = time.time()
        count = 0
        for path in _walk(top or self.drop_root):
            placed = self._placed(path)
            if placed is None or placed.placement is Placement.CONFIG:
                continue
            current = stat_of(path)
            if current is not None:
                self.readiness.seen(path, current, now, age=wall - current[1] / 1e9)
                count += 1
        return count

    def due(self, now: float) -> list[Found]:
        return self._ready(self.readiness.due(stat_of, now))


def _walk(top: Path) -> Iterator[str]:
    """Regular files under ``top``; symlinked files and directories are not followed."""
    for root, dirs, files in os.walk(top, followlinks=False):
        dirs[:] = [d for d in dirs if not os.path.islink(os.path.join(root, d))]
        for name in files:
            yield os.path.join(root, name)


class _Forwarder(FileSystemEventHandler):
    def __init__(self, sink: Callable[[FileSystemEvent], None]) -> None:
        self._sink = sink

    def on_any_event(self, event: FileSystemEvent) -> None:
        self._sink(event)


def start_observer(
    drop_root: Path, sink: Callable[[FileSystemEvent], None], polling: bool = False
) -> BaseObserver:
    """Watch the whole drop root (symlinks not followed), forwarding every event to ``sink``."""
    # watchdog warns when a directory created in a burst is added to its watch twice; the
    # second add replaces the first with the same callback, so nothing is lost.
    warnings.filterwarnings(
        "ignore", message="Callback with id .* already exists", category=RuntimeWarning
    )
    observer: BaseObserver = PollingObserver() if polling else Observer()
    observer.schedule(_Forwarder(sink), str(drop_root), recursive=True, follow_symlink=False)
    observer.daemon = True
    observer.start()
    return observer


def observer_reports_close(observer: BaseObserver) -> bool:
    """Only the inotify observer reports close-after-write."""
    return type(observer).__name__ == "InotifyObserver"
