"""[sftp] settings and each company's SFTP login, read from the service's TOML file."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ingestor.toml_reader import TableReader, positive

GIB = 1024**3
SFTP_KEYS = {
    "listen",
    "host_key",
    "max_file_bytes",
    "quota_bytes",
    "max_sessions",
    "idle_timeout_seconds",
    "auth_failures_before_ban",
    "ban_seconds",
    "password_login",
    "login_grace_seconds",
    "max_unauthenticated",
    "max_unauthenticated_per_address",
    "failures_before_delay",
}
COMPANY_SFTP_KEYS = {
    "sftp_authorized_keys",
    "sftp_password_hash",
    "sftp_max_file_bytes",
    "sftp_quota_bytes",
}


@dataclass(frozen=True, slots=True)
class CompanySftp:
    authorized_keys: Path | None = None
    password_hash: str = ""
    max_file_bytes: int | None = None  # None: the [sftp] default
    quota_bytes: int | None = None


@dataclass(frozen=True, slots=True)
class SftpSettings:
    host: str = "127.0.0.1"
    port: int = 2222
    host_key: Path = Path("sftp_host_key")  # relative to the state dir
    max_file_bytes: int = 2 * GIB
    quota_bytes: int = 20 * GIB
    max_sessions: int = 4  # per company, at once
    idle_timeout: float = 600.0
    auth_failures_before_ban: int = 10  # per source address, within ban_seconds
    ban_seconds: float = 300.0
    password_login: bool = False
    login_grace: float = 30.0  # seconds an unauthenticated connection may stay
    max_unauthenticated: int = 64  # connections not yet logged in, in all
    max_unauthenticated_per_address: int = 8
    failures_before_delay: int = 5  # per login name; further failures are answered slowly
    companies: Mapping[str, CompanySftp] = field(default_factory=dict)


def parse_listen(text: str) -> tuple[str, int] | None:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) < 65536:  # 0: any free port
        return None
    return host.strip("[]"), int(port)


def parse_sftp(
    r: TableReader, data: Mapping[str, Any], base: Path, companies: Mapping[str, Any]
) -> SftpSettings | None:
    """The [sftp] table (None if absent) with each company's login from its own table."""
    if "sftp" not in data:
        return None
    table, p = r.table(data, "sftp", ""), "sftp."
    r.known(table, SFTP_KEYS, p)
    d = SftpSettings()
    listen = r.value(table, "listen", p, str, f"{d.host}:{d.port}")
    address = parse_listen(listen)
    if address is None:
        r.problem(p + "listen", f'{listen!r} is not "host:port" (e.g. "0.0.0.0:2222")')
        address = (d.host, d.port)
    password_login = r.value(table, "password_login", p, bool, False)
    logins: dict[str, CompanySftp] = {}
    for name, company in companies.items():
        if not isinstance(company, dict):
            continue
        cp = f"companies.{name}."
        keys = r.value(company, "sftp_authorized_keys", cp, str, "")
        hashed = r.value(company, "sftp_password_hash", cp, str, "")
        if hashed and not password_login:
            r.problem(cp + "sftp_password_hash", "set [sftp] password_login = true to use it")
        if hashed and not hashed.startswith("scrypt$"):
            r.problem(cp + "sftp_password_hash", "must come from `ingestor sftp-password`")
        if keys or hashed:
            logins[name] = CompanySftp(
                authorized_keys=(base / keys) if keys else None,
                password_hash=hashed,
                max_file_bytes=r.value(company, "sftp_max_file_bytes", cp, int, 0, positive)
                or None,
                quota_bytes=r.value(company, "sftp_quota_bytes", cp, int, 0, positive) or None,
            )
    if not logins:
        r.problem(p[:-1], "no company has sftp_authorized_keys (or a password hash) to log in")
    return SftpSettings(
        host=address[0],
        port=address[1],
        host_key=Path(r.value(table, "host_key", p, str, str(d.host_key))),
        max_file_bytes=r.value(table, "max_file_bytes", p, int, d.max_file_bytes, positive),
        quota_bytes=r.value(table, "quota_bytes", p, int, d.quota_bytes, positive),
        max_sessions=r.value(table, "max_sessions", p, int, d.max_sessions, positive),
        idle_timeout=r.value(table, "idle_timeout_seconds", p, float, d.idle_timeout, positive),
        auth_failures_before_ban=r.value(
            table, "auth_failures_before_ban", p, int, d.auth_failures_before_ban, positive
        ),
        ban_seconds=r.value(table, "ban_seconds", p, float, d.ban_seconds, positive),
        password_login=password_login,
        login_grace=r.value(table, "login_grace_seconds", p, float, d.login_grace, positive),
        max_unauthenticated=r.value(
            table, "max_unauthenticated", p, int, d.max_unauthenticated, positive
        ),
        max_unauthenticated_per_address=r.value(
            table,
            "max_unauthenticated_per_address",
            p,
            int,
            d.max_unauthenticated_per_address,
            positive,
        ),
        failures_before_delay=r.value(
            table, "failures_before_delay", p, int, d.failures_before_delay, positive
        ),
        companies=logins,
    )
