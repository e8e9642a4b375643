"""A company's view of the drop tree over SFTP: ``/`` is ``<drop_root>/<company>/``.

Every client path is normalised inside that root (``..`` stops at ``/``, as in a chroot) and
refused if any part of it is a symlink. Writes are allowed only under ``/imports/<kind>/``.
An upload is written to a hidden temporary name and renamed into place only when the client
closes it: a client that disconnects mid-upload, or goes over a size limit, leaves nothing
for discovery to pick up.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import os
import posixpath
import secrets
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import paramiko
import structlog
from paramiko.sftp import (
    SFTP_FAILURE,
    SFTP_NO_SUCH_FILE,
    SFTP_OK,
    SFTP_OP_UNSUPPORTED,
    SFTP_PERMISSION_DENIED,
)

from ingestor.dropfile import open_directory, walk
from ingestor.errors import LayoutError
from ingestor.layout import FOLDER_DEPTH, may_create_file, may_create_folder

if TYPE_CHECKING:
    from typing_extensions import Buffer

log = structlog.get_logger("ingestor.sftp")

UPLOAD_SUFFIX = ".upload"  # hidden temporaries: ".<name>.<token>.upload"
NAME_MAX = 255  # bytes in one file name (Linux file systems)
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


class Quota:
    """A company's storage limit, shared by all its sessions. Each upload reserves bytes
    before it writes them, so uploads running side by side cannot together go over it."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._settled = 0  # bytes on disk, not counting uploads in progress (at the last look)
        self._reserved: dict[int, int] = {}  # upload → the size it may grow to
        self._in_progress: set[Path] = set()  # those uploads' temporaries (counted as reserved)

    def look(self, root: Path) -> None:
        """Recount what is on disk (files come and go outside SFTP too). Everything stored
        counts, whatever its name, except the temporaries of uploads in progress, which
        count through their reservations."""
        with self._lock:
            live = set(self._in_progress)
        settled = disk_usage(root, skip=live.__contains__)
        with self._lock:
            self._settled = settled

    def begin(self, temporary: Path) -> None:
        with self._lock:
            self._in_progress.add(temporary)

    def reserve(self, upload: int, size: int, replacing: int) -> bool:
        """May ``upload`` (which will replace a file of ``replacing`` bytes) grow to
        ``size``? If so the bytes are its own until ``release``."""
        with self._lock:
            held = self._reserved.get(upload, 0)
            if size <= held:
                return True
            others = sum(self._reserved.values()) - held
            if self._settled - replacing + others + size > self.limit:
                return False
            self._reserved[upload] = size
            return True

    def release(self, upload: int, kept: int | None, replacing: int, temporary: Path) -> None:
        """The upload ended: ``kept`` bytes are now a file in place (None: discarded)."""
        with self._lock:
            self._reserved.pop(upload, None)
            self._in_progress.discard(temporary)
            if kept is not None:
                self._settled += kept - replacing


@dataclass(frozen=True, slots=True)
class Company:
    """What one company's sessions need: where its root is, its limits, and the hooks."""

    name: str
    root: Path
    max_file_bytes: int
    quota: Quota
    # (temporary, final, sha256 or None) once a file is in place
    on_upload: Callable[[Path, Path, str | None], None]
    busy: Callable[[Path], bool]  # is this file queued or being processed?
    # The results of an import folder (kind, folder) → {name: the report or rejects file}
    results: Callable[[str, str], dict[str, Path]] = lambda _kind, _folder: {}
    status: Callable[[], bytes] | None = None  # /_status.json (None: not served)


RESULTS = "_results"  # /imports/<kind>/<folder>/_results/: reports, read-only
STATUS = "_status.json"  # /_status.json: what the company's files are doing
_READ_ONLY = "results are written by the service: read or delete them, never write"


def _code(exc: OSError) -> int:
    """The SFTP status for an OS error."""
    return int(paramiko.SFTPServer.convert_errno(exc.errno or errno.EIO))


P = ParamSpec("P")
R = TypeVar("R")


class Refused(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def _answers(operation: Callable[P, R]) -> Callable[P, R | int]:
    """An SFTP operation whose refusals and OS errors become status codes (with our
    reason, for a refusal)."""

    @functools.wraps(operation)
    def answer(*args: P.args, **kwargs: P.kwargs) -> R | int:
        try:
            return operation(*args, **kwargs)
        except Refused as exc:
            fs = args[0]
            assert isinstance(fs, CompanyFs)
            return fs.refuse(exc.code, str(exc))
        except OSError as exc:
            return _code(exc)

    return answer


def _is_upload_temp(name: str) -> bool:
    return name.startswith(".") and name.endswith(UPLOAD_SUFFIX)


def remove_orphaned_uploads(drop_root: Path) -> int:
    """Delete upload temporaries left by a process that died mid-upload (before it starts
    listening, no session can own one); each is logged. Returns how many."""
    removed = 0
    for path, info, _depth in walk(drop_root, FOLDER_DEPTH + 1):
        if stat.S_ISREG(info.st_mode) and _is_upload_temp(path.name):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed += 1
                log.info("sftp_orphaned_upload_removed", path=str(path), size=info.st_size)
    return removed


# How deep below a company's root its stored bytes are counted (iteratively): far deeper than
# SFTP lets a company create folders, so nothing it stores escapes the count.
USAGE_DEPTH = 64


def disk_usage(root: Path, skip: Callable[[Path], bool] = lambda _path: False) -> int:
    """Bytes of the regular files under ``root`` (links are not followed)."""
    return sum(
        info.st_size
        for path, info, _depth in walk(root, USAGE_DEPTH)
        if stat.S_ISREG(info.st_mode) and not skip(path)
    )


class Jail:
    """Client paths → real paths under one root, refusing symlinks anywhere on the way."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @staticmethod
    def virtual(path: str) -> str:
        normal = posixpath.normpath("/" + path)
        return "/" + normal.lstrip("/")

    def local(self, path: str) -> Path:
        parts = [p for p in self.virtual(path).split("/") if p]
        current = self.root
        for part in parts:
            current = current / part
            try:
                if stat.S_ISLNK(os.lstat(current).st_mode):
                    raise Refused(SFTP_PERMISSION_DENIED, "symbolic links are not followed")
            except FileNotFoundError:
                break  # the rest does not exist yet (a new file or folder)
        return self.root.joinpath(*parts)

    def parts(self, path: str) -> list[str]:
        return [p for p in self.virtual(path).split("/") if p]

    def writable(self, path: str) -> bool:
        """Files and folders may be created only below ``/imports/<kind>/`` (layout's rule)."""
        return may_create_file(self.parts(path))


class ReadHandle(paramiko.SFTPHandle):
    def __init__(self, fd: int, flags: int) -> None:
        super().__init__(flags)
        self._fd = fd

    def read(self, offset: int, length: int) -> bytes | int:
        return os.pread(self._fd, length, offset)

    def write(self, offset: int, data: Buffer) -> int:
        return SFTP_PERMISSION_DENIED

    def stat(self) -> paramiko.SFTPAttributes | int:
        return paramiko.SFTPAttributes.from_stat(os.fstat(self._fd))

    def chattr(self, attr: Any) -> int:
        return SFTP_PERMISSION_DENIED  # opened for reading: nothing about it may change

    def close(self) -> None:
        os.close(self._fd)


class BytesHandle(paramiko.SFTPHandle):
    """A file made on the spot (``/_status.json``), read-only."""

    def __init__(self, data: bytes, flags: int) -> None:
        super().__init__(flags)
        self._data = data

    def read(self, offset: int, length: int) -> bytes | int:
        return self._data[offset : offset + length]

    def write(self, offset: int, data: Buffer) -> int:
        return SFTP_PERMISSION_DENIED

    def stat(self) -> paramiko.SFTPAttributes | int:
        return _virtual_file(STATUS, len(self._data))

    def chattr(self, attr: Any) -> int:
        return SFTP_PERMISSION_DENIED


def _virtual_file(name: str, size: int, mtime: float | None = None) -> paramiko.SFTPAttributes:
    attrs = paramiko.SFTPAttributes()
    attrs.filename, attrs.st_size = name, size
    attrs.st_mode = stat.S_IFREG | 0o440
    attrs.st_mtime = attrs.st_atime = int(mtime if mtime is not None else time.time())
    return attrs


def _virtual_folder(name: str) -> paramiko.SFTPAttributes:
    attrs = paramiko.SFTPAttributes()
    attrs.filename, attrs.st_size = name, 0
    attrs.st_mode = stat.S_IFDIR | 0o550
    attrs.st_mtime = attrs.st_atime = int(time.time())
    return attrs


class UploadHandle(paramiko.SFTPHandle):
    """Writes go to a hidden temporary; ``close`` renames it into place, unless the session
    ended without a close or a limit was hit, in which case the temporary is removed."""

    def __init__(
        self, fs: CompanyFs, fd: int, flags: int, temporary: Path, final: Path, replacing: int
    ) -> None:
        super().__init__(flags)
        self._fs, self._fd = fs, fd
        self._temporary, self._final = temporary, final
        self._replacing = replacing  # the size of the file this one will replace, if any
        self._size = 0
        self._failed = False
        # Clients write in order: hash as the bytes arrive, so nobody reads the file again.
        self._hash: Any = hashlib.sha256()

    def write(self, offset: int, data: Buffer) -> int:
        end = offset + memoryview(data).nbytes
        company = self._fs.company
        if end > company.max_file_bytes or not company.quota.reserve(
            id(self), end, self._replacing
        ):
            self._failed = True
            return self._fs.refuse(SFTP_FAILURE, self._fs.limit_message(end))
        try:
            os.pwrite(self._fd, data, offset)
        except OSError as exc:
            self._failed = True
            return self._fs.refuse(_code(exc), f"write failed: {exc.strerror}")
        if self._hash is not None and offset == self._size:
            self._hash.update(data)
        else:
            self._hash = None  # out of order: identity hashes the file itself
        self._size = max(self._size, end)
        self._fs.touch()
        return SFTP_OK

    def read(self, offset: int, length: int) -> bytes | int:
        return os.pread(self._fd, length, offset)

    def stat(self) -> paramiko.SFTPAttributes | int:
        return paramiko.SFTPAttributes.from_stat(os.fstat(self._fd))

    def chattr(self, attr: Any) -> int:
        refusal = _unchangeable(attr)
        if refusal:
            return self._fs.refuse(SFTP_OP_UNSUPPORTED, refusal)
        if attr._flags & attr.FLAG_AMTIME:
            os.utime(self._fd, (attr.st_atime, attr.st_mtime))
        return SFTP_OK

    def close(self) -> None:
        kept = None
        try:
            if not self._failed and not self._fs.ended:
                os.fsync(self._fd)  # the file is whole on disk before it has its name
                kept = self._size
        finally:
            os.close(self._fd)
            if kept is not None:
                try:
                    os.replace(self._temporary, self._final)
                except OSError as exc:  # e.g. a folder took the name meanwhile
                    log.warning(
                        "sftp_upload_not_placed", path=str(self._final), reason=exc.strerror
                    )
                    kept = None
            if kept is None:  # nothing of a refused or broken upload stays behind
                self._temporary.unlink(missing_ok=True)
            self._fs.company.quota.release(id(self), kept, self._replacing, self._temporary)
        if kept is None:
            return
        digest = self._hash.hexdigest() if self._hash is not None else None
        self._fs.company.on_upload(self._temporary, self._final, digest)


def _unchangeable(attr: Any) -> str:
    """Why the attributes a client asks to set cannot be set ('' if they can: times only)."""
    if attr._flags & (attr.FLAG_PERMISSIONS | attr.FLAG_UIDGID):
        return "owners and permissions are set by the service; only times can be changed"
    if attr._flags & attr.FLAG_SIZE:
        return "a file's size changes only by uploading it again"
    return ""


class CompanyFs(paramiko.SFTPServerInterface):
    """One SFTP session of one company. ``server`` is the session's ``ServerInterface``
    (it carries the logged-in company and the activity clock)."""

    def __init__(self, server: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(server, *args, **kwargs)
        self.company: Company = server.company
        self._server = server
        self.jail = Jail(self.company.root)
        self.ended = False
        self.message: str | None = None  # the text of the next error status

    # -- helpers -------------------------------------------------------------------------

    def touch(self) -> None:
        self._server.touch()

    def refuse(self, code: int, message: str) -> int:
        self.message = message
        return code

    def limit_message(self, size: int) -> str:
        c = self.company
        if size > c.max_file_bytes:
            return f"file too large: the limit is {c.max_file_bytes:,} bytes per file"
        return f"quota exceeded: {c.name} may store at most {c.quota.limit:,} bytes"

    def _local(self, path: str) -> Path:
        self.touch()
        if self._virtual(path) is not None:
            raise Refused(SFTP_PERMISSION_DENIED, _READ_ONLY)
        return self.jail.local(path)

    def _virtual(self, path: str) -> tuple[str, ...] | None:
        """What a path names among the files the service serves: ("status",), ("results",
        kind, folder) or ("result", kind, folder, name); None for the real tree."""
        parts = self.jail.parts(path)
        if parts == [STATUS] and self.company.status is not None:
            return ("status",)
        if len(parts) >= 4 and parts[0] == "imports" and parts[3] == RESULTS:
            if len(parts) == 4:
                return ("results", parts[1], parts[2])
            if len(parts) == 5:
                return ("result", parts[1], parts[2], parts[4])
        return None

    def _result(self, kind: str, folder: str, name: str) -> Path:
        found = self.company.results(kind, folder).get(name)
        if found is None:
            raise Refused(SFTP_NO_SUCH_FILE, f"no result {name}")
        return found

    def _virtual_attrs(self, what: tuple[str, ...]) -> paramiko.SFTPAttributes:
        if what[0] == "status":
            assert self.company.status is not None
            return _virtual_file(STATUS, len(self.company.status()))
        if what[0] == "results":
            return _virtual_folder(RESULTS)
        info = os.stat(self._result(*what[1:]))
        return _virtual_file(what[3], info.st_size, info.st_mtime)

    # -- the SFTP operations ---------------------------------------------------------------

    def session_ended(self) -> None:
        self.ended = True

    def canonicalize(self, path: str) -> str:
        return self.jail.virtual(path)

    @_answers
    def list_folder(self, path: str) -> list[paramiko.SFTPAttributes] | int:
        self.touch()
        what = self._virtual(path)
        if what is not None:
            if what[0] != "results":
                return SFTP_FAILURE  # not a folder
            return [
                _virtual_file(name, info.st_size, info.st_mtime)
                for name, real in sorted(self.company.results(what[1], what[2]).items())
                if (info := _stat_or_none(real)) is not None
            ]
        local = self._local(path)
        parts = self.jail.parts(path)
        entries = []
        if not parts and self.company.status is not None:
            entries.append(self._virtual_attrs(("status",)))
        if len(parts) == 3 and parts[0] == "imports":  # an import folder: its results too
            entries.append(_virtual_folder(RESULTS))
        with os.scandir(local) as listing:
            for entry in listing:
                if entry.is_symlink() or _is_upload_temp(entry.name):
                    continue
                info = entry.stat(follow_symlinks=False)
                entries.append(paramiko.SFTPAttributes.from_stat(info, entry.name))
        return entries

    def stat(self, path: str) -> paramiko.SFTPAttributes | int:
        return self.lstat(path)

    @_answers
    def lstat(self, path: str) -> paramiko.SFTPAttributes | int:
        what = self._virtual(path)
        if what is not None:
            return self._virtual_attrs(what)
        local = self._local(path)
        info = os.lstat(local)
        if stat.S_ISLNK(info.st_mode) or _is_upload_temp(local.name):
            return SFTP_NO_SUCH_FILE
        return paramiko.SFTPAttributes.from_stat(info, local.name)

    @_answers
    def open(self, path: str, flags: int, attr: Any) -> paramiko.SFTPHandle | int:
        what = self._virtual(path)
        if what is not None:
            if flags & _WRITE_FLAGS:
                return self.refuse(SFTP_PERMISSION_DENIED, _READ_ONLY)
            if what[0] == "status":
                assert self.company.status is not None
                return BytesHandle(self.company.status(), flags)
            if what[0] == "results":
                return SFTP_FAILURE  # a folder
            # The service's own file in its state directory: never a link (O_NOFOLLOW).
            real = self._result(*what[1:])
            return ReadHandle(os.open(real, os.O_RDONLY | os.O_NOFOLLOW), flags)
        local = self._local(path)
        if flags & _WRITE_FLAGS:
            return self._upload(path, local, flags)
        # Read through the safe opener: no link followed anywhere on the way, and a FIFO or
        # device is refused before it is opened for reading (it would block this session).
        parts = local.relative_to(self.company.root).parts
        try:
            with open_directory(self.company.root, parts[:-1]) as directory:
                file = directory.open_file(local.name)
        except LayoutError as exc:
            raise Refused(SFTP_PERMISSION_DENIED, str(exc)) from None
        fd, file.fd = file.fd, -1  # the handle owns the descriptor from here
        return ReadHandle(fd, flags)

    def _upload(self, path: str, local: Path, flags: int) -> paramiko.SFTPHandle | int:
        if not self.jail.writable(path) or _is_upload_temp(local.name):
            return self.refuse(
                SFTP_PERMISSION_DENIED,
                "uploads go to /imports/<kind>/<folder>/ (e.g. /imports/custom_objects/pets/)",
            )
        try:
            existing: os.stat_result | None = os.lstat(local)
        except FileNotFoundError:
            existing = None
        if existing is not None and not stat.S_ISREG(existing.st_mode):
            return self.refuse(SFTP_FAILURE, f"{local.name} exists and is not a file")
        if existing is not None and not flags & os.O_TRUNC:
            return self.refuse(
                SFTP_OP_UNSUPPORTED, "resuming or appending is not supported; upload the whole file"
            )
        if not local.parent.is_dir():
            return SFTP_NO_SUCH_FILE
        quota = self.company.quota
        quota.look(self.company.root)
        replacing = existing.st_size if existing is not None else 0
        # The name is cut so that the temporary's own fits the file system's 255 bytes too.
        token = f".{secrets.token_hex(4)}{UPLOAD_SUFFIX}"
        keep = NAME_MAX - len(token) - 1
        short = os.fsencode(local.name)[:keep].decode("utf-8", "ignore")
        temporary = local.parent / f".{short}{token}"
        fd = os.open(temporary, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o640)
        quota.begin(temporary)
        return UploadHandle(self, fd, flags, temporary, local, replacing)

    @_answers
    def remove(self, path: str) -> int:
        what = self._virtual(path)
        if what is not None and what[0] == "result":
            # The company's own results (its rejected rows hold its data): theirs to delete.
            os.unlink(self._result(*what[1:]))
            log.info("sftp_result_deleted", company=self.company.name, result=what[3])
            return SFTP_OK
        local = self._local(path)
        if not self.jail.writable(path):
            return SFTP_PERMISSION_DENIED
        if self.company.busy(local):
            return self.refuse(
                SFTP_PERMISSION_DENIED, "this file is being processed; delete it afterwards"
            )
        os.unlink(local)
        return SFTP_OK

    def rename(self, oldpath: str, newpath: str) -> int:
        return self._rename(oldpath, newpath, overwrite=False)

    def posix_rename(self, oldpath: str, newpath: str) -> int:
        return self._rename(oldpath, newpath, overwrite=True)

    @_answers
    def _rename(self, oldpath: str, newpath: str, overwrite: bool) -> int:
        old, new = self._local(oldpath), self._local(newpath)
        if not (self.jail.writable(oldpath) and self.jail.writable(newpath)):
            return SFTP_PERMISSION_DENIED
        if _is_upload_temp(new.name) or _is_upload_temp(old.name):
            return self.refuse(
                SFTP_PERMISSION_DENIED, f"names like {new.name} are reserved for uploads"
            )
        if new.exists() and not overwrite:
            return self.refuse(SFTP_FAILURE, f"{new.name} already exists")
        if self.company.busy(old):
            return self.refuse(SFTP_PERMISSION_DENIED, "this file is being processed")
        os.replace(old, new)
        return SFTP_OK

    @_answers
    def mkdir(self, path: str, attr: Any) -> int:
        local = self._local(path)
        if not self.jail.writable(path):
            return self.refuse(SFTP_PERMISSION_DENIED, "folders go under /imports/<kind>/ only")
        if self.jail.parts(path)[-1:] == [RESULTS]:
            return self.refuse(SFTP_PERMISSION_DENIED, f"{RESULTS} is the service's, read-only")
        if not may_create_folder(self.jail.parts(path)):  # an import folder, nothing deeper
            return self.refuse(
                SFTP_PERMISSION_DENIED,
                "import folders hold files, not folders: create /imports/<kind>/<folder>/ only",
            )
        os.mkdir(local, 0o750)
        return SFTP_OK

    @_answers
    def rmdir(self, path: str) -> int:
        local = self._local(path)
        if not self.jail.writable(path):
            return SFTP_PERMISSION_DENIED
        os.rmdir(local)
        return SFTP_OK

    @_answers
    def chattr(self, path: str, attr: Any) -> int:
        """Times may be set (clients preserve them after an upload); owners, permissions and
        sizes are the service's, and a request to change them is refused, not ignored."""
        local = self._local(path)
        refusal = _unchangeable(attr)
        if refusal:
            return self.refuse(SFTP_OP_UNSUPPORTED, refusal)
        if not attr._flags & attr.FLAG_AMTIME:
            return SFTP_OK
        if not self.jail.writable(path):
            return SFTP_PERMISSION_DENIED
        if self.company.busy(local):
            return self.refuse(SFTP_PERMISSION_DENIED, "this file is being processed")
        os.utime(local, (attr.st_atime, attr.st_mtime), follow_symlinks=False)
        return SFTP_OK

    def readlink(self, path: str) -> str | int:
        return SFTP_OP_UNSUPPORTED

    def symlink(self, target_path: str, path: str) -> int:
        return self.refuse(SFTP_PERMISSION_DENIED, "symbolic links cannot be created")


class StatusWithReason(paramiko.SFTPServer):
    """paramiko's SFTP server, sending our reason with an error status instead of the
    generic text for its code (e.g. "file too large: the limit is …")."""

    def _send_status(  # private in paramiko, absent from its stubs
        self, request_number: int, code: int, desc: str | None = None
    ) -> None:
        fs = self.server
        if desc is None and code != SFTP_OK and isinstance(fs, CompanyFs) and fs.message:
            desc, fs.message = fs.message, None
        super()._send_status(request_number, code, desc)  # type: ignore[misc]


def _stat_or_none(path: Path) -> os.stat_result | None:
    try:
        return os.stat(path)
    except OSError:
        return None
