"""[sftp] settings and each company's SFTP login, read from the service's TOML file."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ingestor.toml_reader import TableReader, knob, knob_keys, non_negative, positive, read_knobs

GIB = 1024**3


@dataclass(frozen=True, slots=True)
class CompanySftp:
    """A company's SFTP login, from its own [companies.<name>] table."""

    authorized_keys: Path | None = None  # sftp_authorized_keys, relative to the settings file
    password_hash: str = knob(
        "",
        "only with [sftp] password_login",
        key="sftp_password_hash",
        check=lambda v: (
            None if v.startswith("scrypt$") else "must come from `ingestor sftp-password`"
        ),
        example="scrypt$...",
    )
    max_file_bytes: int = knob(
        0, "0: the [sftp] max_file_bytes", key="sftp_max_file_bytes", check=non_negative
    )
    quota_bytes: int = knob(
        0, "0: the [sftp] quota_bytes", key="sftp_quota_bytes", check=non_negative
    )


@dataclass(frozen=True, slots=True)
class SftpSettings:
    """The [sftp] table; ``host`` and ``port`` come from its ``listen`` key."""

    host: str = "127.0.0.1"
    port: int = 2222
    host_key: Path = knob(Path("sftp_host_key"), "relative to state_dir; generated on first start")
    max_file_bytes: int = knob(
        2 * GIB, "per file; per company: sftp_max_file_bytes", check=positive
    )
    quota_bytes: int = knob(
        20 * GIB, "per company tree; per company: sftp_quota_bytes", check=positive
    )
    max_sessions: int = knob(4, "per company, at once", check=positive)
    idle_timeout: float = knob(
        600.0, "a session idle this long is closed", key="idle_timeout_seconds", check=positive
    )
    auth_failures_before_ban: int = knob(
        10, "failed logins from one address within ban_seconds...", check=positive
    )
    ban_seconds: float = knob(
        300.0, "...and that address is refused until they age out", check=positive
    )
    failures_before_delay: int = knob(
        5, "per login name: later failures are answered slowly", check=positive
    )
    login_grace: float = knob(
        30.0,
        "a connection not logged in by then is closed",
        key="login_grace_seconds",
        check=positive,
    )
    max_unauthenticated: int = knob(64, "connections not logged in yet, in all...", check=positive)
    max_unauthenticated_per_address: int = knob(8, "...and from one address", check=positive)
    password_login: bool = knob(
        False, "true: also accept sftp_password_hash (ingestor sftp-password)"
    )
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
    r.known(table, knob_keys((SftpSettings, "")) | {"listen"}, p)
    d = read_knobs(r, table, p, SftpSettings())
    listen = r.value(table, "listen", p, str, f"{d.host}:{d.port}")
    address = parse_listen(listen)
    if address is None:
        r.problem(p + "listen", f'{listen!r} is not "host:port" (e.g. "0.0.0.0:2222")')
        address = (d.host, d.port)
    logins: dict[str, CompanySftp] = {}
    for name, company in companies.items():
        if not isinstance(company, dict):
            continue
        cp = f"companies.{name}."
        keys = r.value(company, "sftp_authorized_keys", cp, str, "")
        login = read_knobs(r, company, cp, CompanySftp())
        if login.password_hash and not d.password_login:
            r.problem(cp + "sftp_password_hash", "set [sftp] password_login = true to use it")
        if keys or login.password_hash:
            logins[name] = replace(login, authorized_keys=(base / keys) if keys else None)
    if not logins:
        r.problem(p[:-1], "no company has sftp_authorized_keys (or a password hash) to log in")
    return replace(d, host=address[0], port=address[1], companies=logins)
