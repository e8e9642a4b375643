"""The SFTP endpoint: a listening socket, one paramiko transport per connection, SFTP only.

Public-key login (a password only against a stored hash, and only if enabled), one user per
company, sessions per company capped, idle sessions closed, and an address that fails to log
in too often is refused outright for a while. No shell, exec, port or agent forwarding.
"""

from __future__ import annotations

import contextlib
import functools
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
    OPEN_FAILED_RESOURCE_SHORTAGE,
    OPEN_SUCCEEDED,
    cMSG_USERAUTH_BANNER,
)
from paramiko.message import Message

from ingestor.layout import company_folders
from ingestor.sftp.auth import (
    AuthThrottle,
    GuessDelay,
    KeyBook,
    check_password,
    dummy_hash,
    fingerprint,
)
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
ResultsFn = Callable[[str, str, str], dict[str, Path]]  # (company, kind, folder) → name → file
StatusFn = Callable[[str], bytes]  # company → its /_status.json


def _no_results(_kind: str, _folder: str) -> dict[str, Path]:
    return {}


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
    """Authentication and channel policy for one connection.

    OpenSSH asks whether a key is acceptable, then signs: ``check_auth_publickey`` runs
    twice per login, and for a client that only knows the public key it runs once and the
    login never completes. So authentication decides nothing lasting: the company's session
    slot is taken when the authenticated client opens its channel, once per connection, and
    released once when the connection ends.
    """

    def __init__(self, endpoint: SftpEndpoint, address: str, transport: paramiko.Transport) -> None:
        self._endpoint = endpoint
        self._transport = transport
        self.address = address
        self.accepted: str | None = None  # the name authentication accepted
        self.company: Company | None = None  # set once the session slot is taken
        self.last_activity = time.monotonic()
        self._told_full = False

    def touch(self) -> None:
        self.last_activity = time.monotonic()

    def get_allowed_auths(self, username: str) -> str:
        # The same for every name, company or not: the list must not tell them apart.
        return "publickey,password" if self._endpoint.settings.password_login else "publickey"

    def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
        endpoint = self._endpoint
        login = endpoint.settings.companies.get(username)
        blobs = endpoint.keys.blobs(login.authorized_keys if login else None)
        return self._decide(username, key.asbytes() in blobs, "publickey")

    def check_auth_password(self, username: str, password: str) -> int:
        settings = self._endpoint.settings
        login = settings.companies.get(username)
        stored = login.password_hash if login and login.password_hash else dummy_hash()
        matches = check_password(password, stored)  # the same work for every name
        ok = settings.password_login and login is not None and bool(login.password_hash)
        return self._decide(username, ok and matches, "password")

    def _decide(self, username: str, ok: bool, method: str) -> int:
        endpoint = self._endpoint
        if endpoint.throttle.banned(self.address):
            return AUTH_FAILED
        if not ok:
            endpoint.throttle.failed(self.address)
            delay = endpoint.guesses.failed(username)
            log.warning(
                "sftp_login_failed",
                user=username,
                address=self.address,
                method=method,
                delayed_seconds=delay,
            )
            if delay:
                time.sleep(delay)  # this connection's thread only: slows guessing at the name
            return AUTH_FAILED
        if endpoint.sessions_full(username):
            self._say_full(username)
            return AUTH_FAILED
        self.accepted = username
        return AUTH_SUCCESSFUL

    def _say_full(self, company: str) -> None:
        """Tell the client why (OpenSSH prints a banner), once per connection."""
        if self._told_full:
            return
        self._told_full = True
        limit = self._endpoint.settings.max_sessions
        log.warning("sftp_too_many_sessions", company=company, address=self.address, limit=limit)
        text = (
            f"{company} already has {limit} SFTP sessions open, the most allowed at once; "
            "close one (or wait for it to end) and connect again.\r\n"
        )
        banner = Message()
        banner.add_byte(cMSG_USERAUTH_BANNER)
        banner.add_string(text)
        banner.add_string("en")
        with contextlib.suppress(Exception):  # the client may be gone; it then needs no reason
            self._transport._send_message(banner)  # type: ignore[attr-defined]  # paramiko sends its own banner this way

    def check_channel_request(self, kind: str, chanid: int) -> int:
        if kind != "session" or self.accepted is None:
            return OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED
        if self.company is None:
            company = self._endpoint.claim_session(self.accepted)
            if company is None:  # filled up since authentication
                self._say_full(self.accepted)
                return OPEN_FAILED_RESOURCE_SHORTAGE
            self.company = company
            log.info("sftp_login", company=company.name, address=self.address)
        return OPEN_SUCCEEDED

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
        results: ResultsFn | None = None,
        status: StatusFn | None = None,
    ) -> None:
        """``results`` (company, kind, folder) and ``status`` (company) serve each company
        its folders' reports (``_results/``) and its ``/_status.json``."""
        self._results = results
        self._status = status
        self.settings = settings
        self._drop_root = drop_root
        self._host_key = load_host_key(state_dir / settings.host_key)
        self._on_upload = on_upload or (lambda _temporary, _final, _sha: None)
        self._busy = busy or (lambda _path: False)
        self.throttle = AuthThrottle(settings.auth_failures_before_ban, settings.ban_seconds)
        self.guesses = GuessDelay(settings.failures_before_delay)
        self.keys = KeyBook()
        self._sessions: dict[str, int] = {}
        self._unauthenticated: dict[str, int] = {}  # address → connections not logged in yet
        self._quotas: dict[str, Quota] = {}  # one per company, shared by its sessions
        self._lock = threading.Lock()
        self._released = threading.Condition(self._lock)  # a session slot was given back
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
        for folder in company_folders():  # imports/<kind>/ for each kind
            (root / folder).mkdir(parents=True, exist_ok=True)
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
            results=functools.partial(self._results, name) if self._results else _no_results,
            status=functools.partial(self._status, name) if self._status else None,
        )

    def sessions_full(self, company: str) -> bool:
        with self._lock:
            return self._sessions.get(company, 0) >= self.settings.max_sessions

    def claim_session(self, name: str) -> Company | None:
        """Take one of the company's session slots (None: all taken)."""
        with self._lock:
            if self._sessions.get(name, 0) >= self.settings.max_sessions:
                return None
            self._sessions[name] = self._sessions.get(name, 0) + 1
        try:
            return self.company(name)
        except BaseException:
            self._release_session(name)
            raise

    def _release_session(self, company: str) -> None:
        with self._lock:
            self._sessions[company] -= 1
            self._released.notify_all()

    def wait_for_sessions(self, company: str, at_most: int, timeout: float) -> bool:
        """Block until ``company`` has at most ``at_most`` sessions open (True) or time runs
        out (False). Closed connections give their slots back as soon as the server sees
        them end."""
        with self._released:
            return self._released.wait_for(
                lambda: self._sessions.get(company, 0) <= at_most, timeout
            )

    def _admit(self, address: str) -> str:
        """'' if a new connection from ``address`` may try to log in, else why not."""
        if self.throttle.banned(address):
            return "banned after too many failed logins"
        s = self.settings
        with self._lock:
            if self._unauthenticated.get(address, 0) >= s.max_unauthenticated_per_address:
                return "too many connections from this address are not logged in yet"
            if sum(self._unauthenticated.values()) >= s.max_unauthenticated:
                return "too many connections are not logged in yet"
            self._unauthenticated[address] = self._unauthenticated.get(address, 0) + 1
        return ""

    def _authenticated_or_gone(self, address: str) -> None:
        with self._lock:
            left = self._unauthenticated.get(address, 0) - 1
            if left > 0:
                self._unauthenticated[address] = left
            else:
                self._unauthenticated.pop(address, None)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                sock, address = self._listener.accept()
            except OSError:
                return  # the listener was closed
            refusal = self._admit(address[0])
            if refusal:
                log.warning("sftp_connection_refused", address=address[0], reason=refusal)
                sock.close()
                continue
            threading.Thread(
                target=self._serve, args=(sock, address[0]), name="sftp-session", daemon=True
            ).start()

    def _serve(self, sock: socket.socket, address: str) -> None:
        transport = paramiko.Transport(sock)
        session = _Session(self, address, transport)
        transport.add_server_key(self._host_key)
        transport.set_subsystem_handler("sftp", StatusWithReason, CompanyFs)
        began, counted = time.monotonic(), True  # counted among the unauthenticated
        try:
            transport.start_server(server=session)
            while transport.is_active() and not self._stop.is_set():
                now = time.monotonic()
                if counted and transport.is_authenticated():
                    self._authenticated_or_gone(address)
                    counted = False
                if counted and now - began > self.settings.login_grace:
                    log.info("sftp_login_timeout", address=address)
                    break
                idle = now - session.last_activity
                if idle > self.settings.idle_timeout:
                    log.info("sftp_idle_closed", address=address, idle_seconds=round(idle))
                    break
                wait = self.settings.login_grace if counted else self.settings.idle_timeout
                # Returns as soon as the connection ends, so its slot is free at once.
                transport.join(timeout=min(0.2 if counted else 1.0, wait / 4))
        except (paramiko.SSHException, EOFError, OSError) as exc:
            log.info(
                "sftp_connection_ended", address=address, reason=str(exc) or type(exc).__name__
            )
        finally:
            transport.close()
            if counted:
                self._authenticated_or_gone(address)
            if session.company is not None:
                self._release_session(session.company.name)
