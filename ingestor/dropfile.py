"""Opening what a company put in its tree, without following a link or opening a FIFO.

The company's tree is the trust boundary. A folder is opened from a trusted base (the drop
root, which the operator chose) one component at a time, each relative to its parent's
descriptor with ``O_NOFOLLOW | O_DIRECTORY``: a symlink anywhere on the way, swapped in at
any moment, makes the open fail instead of leading elsewhere. A file is first opened with
``O_PATH`` (which does no I/O on the file, so a FIFO or device is never really opened),
checked with ``fstat`` to be a regular file, and only then reopened for reading through that
descriptor. Everything afterwards (hash, parse, re-check) goes through the one descriptor.

Refusals are ``UnsafeEntry`` (a LayoutError with a reason a person can act on); a file the
service may not read is ``Unreadable`` (the operator must fix owner or mode).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import os
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from ingestor.errors import LayoutError

HASH_CHUNK = 1024 * 1024
Stat = tuple[int, int]  # (size, mtime_ns): what the file system says a version looks like
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_PATH_FLAGS = getattr(os, "O_PATH", 0)
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK


class UnsafeEntry(LayoutError):
    """A path in a company's tree is a symlink, a FIFO, a device or otherwise not a plain
    file or folder; it is refused, never followed or opened for reading."""

    code = "unsafe_entry"


class Unreadable(LayoutError):
    """The service may not read a file (owner or mode); the operator must fix it."""

    code = "unreadable"


def _kind_of(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISDIR(mode):
        return "a folder"
    return "not a regular file"


def _refusal(name: str, exc: OSError, what: str) -> LayoutError:
    if exc.errno in (errno.ELOOP, errno.EMLINK):
        return UnsafeEntry(f"{name} is a symbolic link; links are never followed")
    if exc.errno == errno.ENOTDIR:
        return UnsafeEntry(f"{name} is not a {what} (links are never followed)")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return Unreadable(
            f"the service may not read {name} (permission denied): the operator must give the "
            "service user read access (owner or group, e.g. chmod g+r) or fix the upload umask"
        )
    if exc.errno == errno.ENOENT:
        return LayoutError(f"{name} no longer exists")
    return LayoutError(f"cannot open {name}: {exc.strerror or exc}")


class Directory:
    """An open folder: entries are listed and opened relative to its descriptor."""

    def __init__(self, fd: int, path: Path) -> None:
        self.fd = fd
        self.path = path

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Directory:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def entries(self) -> Iterator[tuple[str, os.stat_result]]:
        """(name, lstat) of each entry, never following a link."""
        with os.scandir(self.fd) as listing:
            for entry in listing:
                with contextlib.suppress(FileNotFoundError):
                    yield entry.name, entry.stat(follow_symlinks=False)

    def lstat(self, name: str) -> os.stat_result:
        return os.stat(name, dir_fd=self.fd, follow_symlinks=False)

    def open_file(self, name: str, max_bytes: int | None = None) -> DropFile:
        return open_file_at(self.fd, name, self.path / name, max_bytes)


def open_directory(base: Path, parts: Sequence[str] = ()) -> Directory:
    """Open ``base/parts…``: ``base`` as given (the operator's path), each part below it
    without following a link."""
    try:
        fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise _refusal(str(base), exc, "folder") from None
    path = base
    for part in parts:
        path = path / part
        try:
            child = os.open(part, _DIR_FLAGS, dir_fd=fd)
        except OSError as exc:
            refusal = _refusal(part + "/", exc, "folder")
            if exc.errno in (errno.ENOTDIR, errno.ELOOP):  # say what it is instead
                with contextlib.suppress(OSError):
                    mode = os.stat(part, dir_fd=fd, follow_symlinks=False).st_mode
                    refusal = UnsafeEntry(
                        f"{part}/ is {_kind_of(mode)}, not a folder; links are never followed"
                    )
            os.close(fd)
            raise refusal from None
        os.close(fd)
        fd = child
    return Directory(fd, path)


@dataclass(slots=True)
class DropFile:
    """A regular file opened for reading through one descriptor. ``info`` is its fstat at
    open; ``replaced_or_written()`` says whether it has changed since."""

    fd: int
    path: Path
    info: os.stat_result

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def size(self) -> int:
        return self.info.st_size

    @property
    def mtime_ns(self) -> int:
        return self.info.st_mtime_ns

    def read_all(self, limit: int) -> bytes:
        return os.pread(self.fd, limit + 1, 0)

    def sha256(self, prefix: int | None = None) -> tuple[str, str | None]:
        """The file's sha256 and, in the same pass, that of its first ``prefix`` bytes (None
        if the file is shorter)."""
        digest = hashlib.sha256()
        at_prefix: str | None = None
        offset = 0
        while chunk := os.pread(self.fd, HASH_CHUNK, offset):
            if prefix is not None and offset < prefix <= offset + len(chunk):
                digest.update(chunk[: prefix - offset])
                at_prefix = digest.copy().hexdigest()
                digest.update(chunk[prefix - offset :])
            else:
                digest.update(chunk)
            offset += len(chunk)
        if prefix == 0:
            at_prefix = hashlib.sha256().hexdigest()
        return digest.hexdigest(), at_prefix

    def ends_a_line_at(self, offset: int) -> bool:
        """Whether the byte before ``offset`` is a line feed (a record boundary)."""
        return offset > 0 and os.pread(self.fd, 1, offset - 1) == b"\n"

    def reader(self) -> BinaryIO:
        """A buffered reader of its own (closing it leaves this descriptor open); reads
        through a duplicate of the same descriptor, so it is the same file whatever
        happens to the name."""
        return io.BufferedReader(io.FileIO(os.dup(self.fd), "rb", closefd=True))

    def replaced_or_written(self) -> str:
        """'' while the name still leads to this very file, unchanged; else what happened,
        as a sentence about the file."""
        now = os.fstat(self.fd)
        if (now.st_size, now.st_mtime_ns) != (self.info.st_size, self.info.st_mtime_ns):
            return (
                f"{self.name} changed while being processed ({self.info.st_size:,} bytes when "
                f"it started, {now.st_size:,} now)"
            )
        try:
            there = os.lstat(self.path)
        except FileNotFoundError:
            return f"{self.name} was removed while being processed"
        except OSError as exc:
            return f"{self.name} became unreachable while being processed ({exc.strerror})"
        if (there.st_dev, there.st_ino) != (now.st_dev, now.st_ino):
            return f"{self.name} was replaced by another file while being processed"
        return ""

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> DropFile:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def walk(top: Path, max_depth: int) -> Iterator[tuple[Path, os.stat_result, int]]:
    """Every entry below ``top`` as (path, lstat, depth) with depth 1 for ``top``'s own
    entries, iteratively (no recursion, whatever the tree's depth). Links are
    reported, never followed; folders deeper than ``max_depth`` are reported, not entered;
    folders that vanish or cannot be read are passed over."""
    pending: list[tuple[Path, int]] = [(top, 0)]
    while pending:
        folder, depth = pending.pop()
        try:
            with os.scandir(folder) as listing:
                entries = list(listing)
        except OSError:
            continue
        for entry in entries:
            try:
                info = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            path = Path(entry.path)
            yield path, info, depth + 1
            if stat.S_ISDIR(info.st_mode) and depth + 1 < max_depth:
                pending.append((path, depth + 1))


def open_file_at(dir_fd: int, name: str, path: Path, max_bytes: int | None = None) -> DropFile:
    """Open ``name`` in the folder ``dir_fd`` for reading, if and only if it is a regular
    file (checked on the descriptor itself, before any read)."""
    if "/" in name or name in ("", ".", ".."):
        raise UnsafeEntry(f"{name!r} is not a file name")
    if _PATH_FLAGS:
        try:
            handle = os.open(name, _PATH_FLAGS | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
        except OSError as exc:
            raise _refusal(name, exc, "file") from None
        try:
            info = os.fstat(handle)
            _require_regular(name, info, max_bytes)
            try:  # the same inode, now for reading (no name is looked up again)
                fd = os.open(f"/proc/self/fd/{handle}", os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY)
            except FileNotFoundError:  # no /proc: open the name again, then compare
                fd = _open_plain(dir_fd, name)
            except OSError as exc:
                raise _refusal(name, exc, "file") from None
        finally:
            os.close(handle)
    else:  # pragma: no cover - not Linux
        fd = _open_plain(dir_fd, name)
        info = os.fstat(fd)
    now = os.fstat(fd)
    if (now.st_dev, now.st_ino) != (info.st_dev, info.st_ino) or not stat.S_ISREG(now.st_mode):
        os.close(fd)
        raise UnsafeEntry(f"{name} was replaced while it was being opened; it is looked at again")
    return DropFile(fd, path, now)


def _open_plain(dir_fd: int, name: str) -> int:
    try:
        fd = os.open(name, _FILE_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        raise _refusal(name, exc, "file") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise UnsafeEntry(f"{name} is {_kind_of(mode)}; only regular files are read")
    os.set_blocking(fd, True)
    return fd


def _require_regular(name: str, info: os.stat_result, max_bytes: int | None) -> None:
    if not stat.S_ISREG(info.st_mode):
        raise UnsafeEntry(f"{name} is {_kind_of(info.st_mode)}; only regular files are read")
    if max_bytes is not None and info.st_size > max_bytes:
        raise LayoutError(f"{name} is {info.st_size:,} bytes, over the {max_bytes:,}-byte limit")
