"""The SFTP endpoint: a listening socket, one paramiko transport per connection, SFTP only.

Public-key login (a password only against a stored hash, and only if enabled), one user per
company, sessions per company capped, idle sessions closed, and an address that fails to log
in too often is refused outright for a while. No shell, exec, port or agent forwarding.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import paramiko
import structlog
from paramiko.common import (
    AUTH_FAILED,
    AUTH_SUCCESSFUL,
    OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED,
    OPEN_SUCCEEDED,
)

from ingestor.sftp.auth import AuthThrottle, authorized_blobs, check_password, fingerprint
from ingestor.sftp.config import SftpSettings
from ingestor.sftp.fs import (
    Company,
    CompanyFs,
    Quota,
    StatusWithReason,
    remove_orphaned_uploads,
)

log = structlog.get_logger("ingestor.sftp")

UploadFn = Callable[[Path, Path, str | None], None]
BusyFn = Callable[[Path], bool]


def load_host_key(path: Path) -> paramiko.PKey:
    """The server's key; an ECDSA P-256 key is generated (mode 600) on first start."""
    if path.exists():
        return paramiko.ECDSAKey.from_private_key_file(str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    key = paramiko.ECDSAKey.generate(bits=256)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        key.write_private_key(handle)
    log.info("sftp_host_key_generated", path=str(path), fingerprint=fingerprint(key))
    return key


class _Session(paramiko.ServerInterface):
    """Authentication and channel policy for one connection."""

    def __init__(self, endpoint: SftpEndpoint, address: str) -> None:
        self._endpoint = endpoint
        self.address = address
        self.company: Company | None = None
        self.last_activity = time.monotonic()

    def touch(self) -> None:
        self.last_activity = time.monotonic()

    def get_allowed_auths(self, username: str) -> str:
        login = self._endpoint.settings.companies.get(username)
        if self._endpoint.settings.password_login and login and login.password_hash:
            return "publickey,password"
        return "publickey"

    def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
        login = self._endpoint.settings.companies.get(username)
        ok = (
            login is not None
            and login.authorized_keys is not None
            and key.asbytes() in authorized_blobs(login.authorized_keys)
        )
        return self._decide(username, ok, "publickey")

    def check_auth_password(self, username: str, password: str) -> int:
        login = self._endpoint.settings.companies.get(username)
        ok = (
            self._endpoint.settings.password_login
            and login is not None
            and bool(login.password_hash)
            and check_password(password, login.password_hash)
        )
        return self._decide(username, ok, "password")

    def _decide(self, username: str, ok: bool, method: str) -> int:
        endpoint = self._endpoint
        if endpoint.throttle.banned(self.address):
            return AUTH_FAILED
        if not ok:
            endpoint.throttle.failed(self.address)
            log.warning("sftp_login_failed", user=username, address=self.address, method=method)
            return AUTH_FAILED
        company = endpoint.company(username)
        if not endpoint.open_session(username):
            log.warning("sftp_too_many_sessions", company=username, address=self.address)
            return AUTH_FAILED
        self.company = company
        log.info("sftp_login", company=username, address=self.address, method=method)
        return AUTH_SUCCESSFUL

    def check_channel_request(self, kind: str, chanid: int) -> int:
        if kind == "session":
            return OPEN_SUCCEEDED
        return OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED

    def check_channel_subsystem_request(self, channel: paramiko.Channel, name: str) -> bool:
        return name == "sftp" and bool(super().check_channel_subsystem_request(channel, name))

    def check_channel_exec_request(self, channel: paramiko.Channel, command: bytes) -> bool:
        return False

    def check_channel_shell_request(self, channel: paramiko.Channel) -> bool:
        return False

    def check_channel_pty_request(self, *args: object) -> bool:
        return False

    def check_port_forward_request(self, address: str, port: int) -> int | bool:
        return False

    def check_channel_direct_tcpip_request(self, chanid: int, origin: object, dest: object) -> int:
        return OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED


class SftpEndpoint:
    """``start()`` listens on ``settings.host:settings.port`` (0: any free port; see ``port``)."""

    def __init__(
        self,
        settings: SftpSettings,
        drop_root: Path,
        state_dir: Path,
        *,
        on_upload: UploadFn | None = None,
        busy: BusyFn | None = None,
    ) -> None:
        self.settings = settings
        self._drop_root = drop_root
        self._host_key = load_host_key(state_dir / settings.host_key)
        self._on_upload = on_upload or (lambda _temporary, _final, _sha: None)
        self._busy = busy or (lambda _path: False)
        self.throttle = AuthThrottle(settings.auth_failures_before_ban, settings.ban_seconds)
        self._sessions: dict[str, int] = {}
        self._quotas: dict[str, Quota] = {}  # one per company, shared by its sessions
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._listener = socket.create_server(
            (settings.host, settings.port), reuse_port=False, backlog=64
        )
        self.port: int = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._accept, name="sftp-accept", daemon=True)

    @property
    def host_key(self) -> paramiko.PKey:
        return self._host_key

    def start(self) -> SftpEndpoint:
        remove_orphaned_uploads(self._drop_root)
        log.info(
            "sftp_listening",
            host=self.settings.host,
            port=self.port,
            fingerprint=fingerprint(self._host_key),
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):  # wakes the blocked accept() (close alone does not)
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self._thread.join(timeout=5)

    def __enter__(self) -> SftpEndpoint:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def company(self, name: str) -> Company:
        login = self.settings.companies[name]
        root = self._drop_root / name
        (root / "imports" / "custom_objects").mkdir(parents=True, exist_ok=True)
        limit = login.quota_bytes or self.settings.quota_bytes
        with self._lock:
            quota = self._quotas.setdefault(name, Quota(limit))
            quota.limit = limit  # settings may have been reloaded
        return Company(
            name=name,
            root=root,
            max_file_bytes=login.max_file_bytes or self.settings.max_file_bytes,
            quota=quota,
            on_upload=self._on_upload,
            busy=self._busy,
        )

    def open_session(self, company: str) -> bool:
        with self._lock:
            if self._sessions.get(company, 0) >= self.settings.max_sessions:
                return False
            self._sessions[company] = self._sessions.get(company, 0) + 1
            return True

    def _close_session(self, company: str) -> None:
        with self._lock:
            self._sessions[company] -= 1

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                sock, address = self._listener.accept()
            except OSError:
                return  # the listener was closed
            threading.Thread(
                target=self._serve, args=(sock, address[0]), name="sftp-session", daemon=True
            ).start()

    def _serve(self, sock: socket.socket, address: str) -> None:
        if self.throttle.banned(address):
            log.warning("sftp_refused_banned_address", address=address)
            sock.close()
            return
        session = _Session(self, address)
        transport = paramiko.Transport(sock)
        transport.add_server_key(self._host_key)
        transport.set_subsystem_handler("sftp", StatusWithReason, CompanyFs)
        try:
            transport.start_server(server=session)
            while transport.is_active() and not self._stop.is_set():
                idle = time.monotonic() - session.last_activity
                if idle > self.settings.idle_timeout:
                    log.info("sftp_idle_closed", address=address, idle_seconds=round(idle))
                    break
                self._stop.wait(min(1.0, self.settings.idle_timeout / 4))
        except (paramiko.SSHException, EOFError, OSError) as exc:
            log.info(
                "sftp_connection_ended", address=address, reason=str(exc) or type(exc).__name__
            )
        finally:
            transport.close()
            if session.company is not None:
                self._close_session(session.company.name)
