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

import contextlib
import enum
import os
import stat
import threading
import time
from collections import OrderedDict
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
)
from watchdog.observers.inotify_c import (
    CallbackId,
    InotifyConstants,
    InotifyEvent,
    InotifyFD,
    Mask,
    WatchDescriptor,
)

from ingestor.dropfile import Stat, walk
from ingestor.kinds import KINDS
from ingestor.layout import FOLDER_DEPTH, Placed, Placement, place

log = structlog.get_logger("ingestor.discovery")
STALE_CLOSE_MIN = 60.0  # seconds; see Readiness.stale_close


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
        # Files that changed while being sent: ready only once they hold still for the quiet
        # period, whatever close events say (a file appended to every 100 ms is one upload,
        # not one version per append).
        self._settling: set[str] = set()
        # The last completion of each path (its stat, when): rewrites in quick succession
        # are one upload still going on, not a new version each.
        self._completed: OrderedDict[str, tuple[Stat | None, float]] = OrderedDict()

    def written(self, path: str, current: Stat | None, now: float) -> None:
        """The file is being written: with close events, wait for the close (unless it is
        settling, which waits for quiet whatever closes say)."""
        if self.close_events and path not in self._settling:
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

    def completed(self, path: str, current: Stat | None, now: float) -> bool:
        """A close after writing, or a rename into place: is the upload complete (ready
        now)? Not when the file keeps being rewritten (a second version within the quiet
        period of the last) or is already settling: then it is ready only once it holds
        still for the quiet period."""
        last = self._completed.pop(path, None)
        self._completed[path] = (current, now)
        if len(self._completed) > 10_000:
            self._completed.popitem(last=False)
        if last is not None and last[0] != current and now - last[1] < self.quiet_period:
            self.settle(path, current, now)
            return False
        if path in self._settling:  # closes restart its quiet wait
            self.seen(path, current, now)
            return False
        self.closed(path)
        return True

    def settle(self, path: str, current: Stat | None, now: float) -> None:
        """The file changed while being sent: it is ready once it has held still for a whole
        quiet period from now (closes no longer make it ready at once)."""
        self._awaiting_close.discard(path)
        if current is None:
            self._settling.discard(path)
            return
        self._settling.add(path)
        self._quiet[path] = (current, now)

    def settling(self, path: str) -> bool:
        return path in self._settling

    def forget(self, path: str) -> None:
        self._awaiting_close.discard(path)
        self._quiet.pop(path, None)
        self._settling.discard(path)

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
                self._settling.discard(path)
                ready.append(path)
        return ready

    @property
    def waiting(self) -> int:
        return len(self._awaiting_close) + len(self._quiet)


class FoundKind(enum.Enum):
    DATA = "data"  # a complete data file in an import folder
    # An import folder's config.json, or a data file's manifest, was written: how the folder's
    # files are read changed (its files: look again).
    CONFIG = "config"
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
        self._nested_reported: set[Path] = set()  # import folders whose subfolders were said

    def _files(self, top: Path) -> Iterator[str]:
        """Regular files under ``top`` down to the import folders' files (depth 5 below the
        drop root), walked iteratively: links are not followed, and folders inside an import
        folder (not part of the drop tree) are reported once per import folder, not entered."""
        try:
            base = len(top.relative_to(self.drop_root).parts)
        except ValueError:
            return
        for path, info, depth in walk(top, FOLDER_DEPTH + 1 - base):
            if stat.S_ISREG(info.st_mode):
                yield str(path)
            elif stat.S_ISDIR(info.st_mode) and base + depth > FOLDER_DEPTH:
                self._report_nested(path)

    def _report_nested(self, path: Path) -> None:
        folder = path.parent
        relative = path.relative_to(self.drop_root)
        if relative.parts[1] != "imports" or relative.parts[2] not in KINDS:
            return  # not inside an import folder: nobody expects it to be read
        if folder in self._nested_reported or len(self._nested_reported) > 10_000:
            return
        self._nested_reported.add(folder)
        log.warning(
            "nested_folder_ignored",
            company=relative.parts[0],
            folder=str(relative.parent),
            nested=path.name,
            detail="folders inside an import folder are not read; put files in the folder itself",
        )

    def _placed(self, path: str) -> Placed | None:
        try:
            relative = PurePosixPath(Path(path).relative_to(self.drop_root).as_posix())
        except ValueError:
            return None
        placed = place(relative)
        if placed.placement in (Placement.OUTSIDE, Placement.WAITING, Placement.IGNORED):
            return None
        return placed

    def found(self, path: str) -> Found | None:
        """What a complete file at ``path`` is for the service (None: nothing to do)."""
        placed = self._placed(path)
        if placed is None or has_symlink(self.drop_root, Path(path)):
            return None
        kind = {
            Placement.DATA_FILE: FoundKind.DATA,
            Placement.CONFIG: FoundKind.CONFIG,
            Placement.MANIFEST: FoundKind.CONFIG,
            Placement.STRAY: FoundKind.STRAY,
        }[placed.placement]
        return Found(kind, Path(path), placed)

    def on_event(self, event: FileSystemEvent, now: float) -> list[Found]:
        """Ready files an event reveals (most events reveal none yet)."""
        src = os.fsdecode(event.src_path)
        if isinstance(event, FileClosedEvent):
            return self._complete(src, now)
        if isinstance(event, FileMovedEvent):
            dest = os.fsdecode(event.dest_path)
            if dest != src:
                self.readiness.forget(src)
            return self._complete(dest, now)
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

    def _complete(self, path: str, now: float) -> list[Found]:
        """A close after writing, or a rename into place (see ``Readiness.completed``)."""
        return self._ready([path]) if self.readiness.completed(path, stat_of(path), now) else []

    def _ready(self, paths: list[str]) -> list[Found]:
        found = [f for f in map(self.found, paths) if f is not None]
        return [f for f in found if f.kind is FoundKind.CONFIG or stat_of(str(f.path))]

    def scan(self, top: Path | None = None, now: float | None = None) -> int:
        """Note every candidate file under ``top`` (default: the drop root); they become
        ready through ``due`` once they hold still. Returns how many were seen."""
        now = time.monotonic() if now is None else now
        wall = time.time()
        count = 0
        for path in self._files(top or self.drop_root):
            placed = self._placed(path)
            if placed is None or placed.placement in (Placement.CONFIG, Placement.MANIFEST):
                continue
            current = stat_of(path)
            if current is not None:
                self.readiness.seen(path, current, now, age=wall - current[1] / 1e9)
                count += 1
        return count

    def due(self, now: float) -> list[Found]:
        return self._ready(self.readiness.due(stat_of, now))


_ONE = CallbackId(0)  # the watcher is the one callback on each of its watches


class TreeWatcher:
    """inotify watches on the folders that can hold work, and on nothing deeper: the drop
    root (depth 0), each company, its ``imports/``, each kind and each import folder (depth
    4, whose files are the work). Every watch is a plain, non-recursive one on a single
    inotify descriptor read by one thread, so a company's deep or wide tree is never walked
    by the watcher, and costs one watch per folder that matters.

    Events go to ``sink`` as watchdog events; a lost-events overflow calls ``on_overflow``
    (the service rescans). The watcher is also the one callback inotify calls (watchdog's
    ``WatchCallback``), so an overflow is reported once.
    """

    reports_close = True  # inotify reports close-after-write

    _MASK = (
        InotifyConstants.IN_CLOSE_WRITE
        | InotifyConstants.IN_CREATE
        | InotifyConstants.IN_MODIFY
        | InotifyConstants.IN_MOVED_FROM
        | InotifyConstants.IN_MOVED_TO
        | InotifyConstants.IN_DELETE
        | InotifyConstants.IN_ONLYDIR
        | InotifyConstants.IN_DONT_FOLLOW
        | InotifyConstants.IN_EXCL_UNLINK
    )
    _MOVES_REMEMBERED = 1024

    def __init__(
        self,
        root: Path,
        sink: Callable[[FileSystemEvent], None],
        on_overflow: Callable[[], None] = lambda: None,
    ) -> None:
        self.root = root
        self._sink = sink
        self._on_overflow = on_overflow
        self._inotify = InotifyFD()
        self._lock = threading.Lock()
        self._watched: dict[Path, WatchDescriptor] = {}
        self._folders: dict[WatchDescriptor, tuple[Path, int]] = {}  # → (folder, depth)
        self._moved_from: OrderedDict[int, Path] = OrderedDict()  # cookie → source

    def start(self) -> TreeWatcher:
        self._inotify.start()
        self.watch_below(self.root, 0)
        return self

    def stop(self) -> None:
        self._inotify.stop()

    def join(self, timeout: float | None = None) -> None:
        self._inotify.join(timeout)

    def is_alive(self) -> bool:
        return self._inotify.is_alive()

    def watch_below(self, top: Path, depth: int) -> None:
        """Watch ``top`` (at ``depth`` below the root) and its folders down to depth 4."""
        self._watch(top, depth)
        for path, info, below in walk(top, FOLDER_DEPTH - depth):
            if stat.S_ISDIR(info.st_mode):
                self._watch(path, depth + below)

    def _watch(self, path: Path, depth: int) -> None:
        if depth > FOLDER_DEPTH:
            return
        with self._lock:
            if path in self._watched:
                return
            try:
                wd = self._inotify.add_callback(os.fsencode(path), Mask(self._MASK), self, _ONE)
            except OSError as exc:  # gone already, or a link (IN_DONT_FOLLOW | IN_ONLYDIR)
                log.debug("watch_not_added", path=str(path), reason=str(exc))
                return
            self._watched[path] = wd
            self._folders[wd] = (path, depth)

    def _unwatch_below(self, top: Path) -> None:
        with self._lock:
            gone = [p for p in self._watched if p == top or top in p.parents]
            callbacks = []
            for path in gone:
                wd = self._watched.pop(path)
                self._folders.pop(wd, None)
                callbacks.append((wd, _ONE))
        with contextlib.suppress(OSError, KeyError):
            self._inotify.remove_callbacks(callbacks)

    # -- watchdog's WatchCallback, called on the inotify thread ------------------------------

    def on_watch_deleted(self, wd: WatchDescriptor) -> None:
        with self._lock:
            known = self._folders.pop(wd, None)
            if known is not None and self._watched.get(known[0]) == wd:
                del self._watched[known[0]]

    def on_queue_overflow(self) -> None:
        log.warning("watch_events_lost", detail="the kernel's event queue overflowed; rescanning")
        self._on_overflow()

    def on_event(self, event: InotifyEvent) -> None:
        with self._lock:
            known = self._folders.get(event.wd)
        if known is None or not event.name:
            return  # a folder no longer watched, or the folder itself (its parent says)
        folder, depth = known
        path = folder / os.fsdecode(event.name)
        if event.is_directory:
            if event.is_moved_from or event.is_delete:
                self._unwatch_below(path)
            elif event.is_create or event.is_moved_to:
                if depth < FOLDER_DEPTH:
                    self.watch_below(path, depth + 1)
                created = event.is_create
                self._sink(DirCreatedEvent(str(path)) if created else DirMovedEvent("", str(path)))
            return
        if event.is_close_write:
            self._sink(FileClosedEvent(str(path)))
        elif event.is_moved_from:
            with self._lock:
                self._moved_from[event.cookie] = path
                if len(self._moved_from) > self._MOVES_REMEMBERED:
                    self._moved_from.popitem(last=False)
            self._sink(FileDeletedEvent(str(path)))  # gone from here, wherever it went
        elif event.is_moved_to:
            with self._lock:
                source = self._moved_from.pop(event.cookie, path)
            self._sink(FileMovedEvent(str(source), str(path)))
        elif event.is_create:
            self._sink(FileCreatedEvent(str(path)))
        elif event.is_modify:
            self._sink(FileModifiedEvent(str(path)))
        elif event.is_delete:
            self._sink(FileDeletedEvent(str(path)))


class PollingWatcher:
    """No watches (network file systems send none): the service rescans every
    ``poll_interval`` seconds instead, and files are ready by the quiet period."""

    reports_close = False

    def __init__(self, poll_interval: float = 1.0) -> None:
        self.poll_interval = poll_interval

    def start(self) -> PollingWatcher:
        return self

    def stop(self) -> None:
        pass

    def join(self, timeout: float | None = None) -> None:
        pass

    def is_alive(self) -> bool:
        return True


Watcher = TreeWatcher | PollingWatcher
