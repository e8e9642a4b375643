"""The service's settings file (TOML): drop root, state dir, service knobs, and each company.

Every problem is collected with its key path (``companies.acme.api_key_env: …``) so that
``ingestor check-config`` can print them all at once. API keys never live in the file: a
company names where its key comes from (an environment variable, a file only the service
user can read, or a systemd credential).
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from email.utils import parseaddr
from pathlib import Path
from typing import Any

from ingestor.config import ApiSettings, RateLimitSettings, RetrySettings, SecretSource, Settings
from ingestor.errors import ConfigError
from ingestor.logs import LOG_FORMATS, LOG_LEVELS
from ingestor.notify.message import DEFAULT_ATTACH_MAX
from ingestor.notify.notifier import DEFAULT_SENDER, NotifySettings
from ingestor.notify.smtp import SECURITY, SmtpSettings
from ingestor.sftp.auth import authorized_keys_problem
from ingestor.sftp.config import COMPANY_SFTP_KEYS, SftpSettings, parse_sftp
from ingestor.toml_reader import Problem, TableReader, non_negative, one_of, positive

_COMPANY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_EMAIL = re.compile(r"[^@\s<>]+@[^@\s<>.][^@\s<>]*")


@dataclass(frozen=True, slots=True)
class CompanySettings:
    name: str
    key_source: SecretSource
    recipients: tuple[str, ...] = ()
    rate_limit: RateLimitSettings = field(default_factory=RateLimitSettings)
    enabled: bool = True
    digest: bool = False  # one e-mail per folder run instead of one per file


@dataclass(frozen=True, slots=True)
class ServiceSettings:
    source: Path  # the settings file itself
    drop_root: Path
    state_dir: Path
    api: ApiSettings = field(default_factory=ApiSettings)
    quiet_period: float = 5.0
    rescan_interval: float = 300.0
    retention_days: float = 30.0
    sweep_interval: float = 3600.0
    auth_retry_interval: float = 60.0
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 0  # 0: no /metrics endpoint
    log_format: str = "auto"
    log_level: str = "info"
    report_skip_samples: int = 20
    notify: NotifySettings = field(default_factory=NotifySettings)
    sftp: SftpSettings | None = None  # None: no embedded SFTP endpoint
    companies: Mapping[str, CompanySettings] = field(default_factory=dict)

    def pipeline_settings(self, company: CompanySettings) -> Settings:
        return Settings(
            state_dir=self.state_dir,
            api=ApiSettings(
                base_url=self.api.base_url,
                revision=self.api.revision,
                connect_timeout=self.api.connect_timeout,
                read_timeout=self.api.read_timeout,
                rate_limit=company.rate_limit,
                retry=self.api.retry,
            ),
            report_skip_samples=self.report_skip_samples,
        )


_TOP_KEYS = {
    "drop_root",
    "state_dir",
    "service",
    "api",
    "rate_limit",
    "reports",
    "notify",
    "smtp",
    "sftp",
    "companies",
}
_NOTIFY_KEYS = {
    "from",
    "attach_max_bytes",
    "digest",
    "digest_after_files",
    "announce_grace_seconds",
}
_SMTP_KEYS = {
    "host",
    "port",
    "security",
    "username",
    "password_env",
    "password_file",
    "password_credential",
    "ca_file",
    "timeout_seconds",
    "retry_initial_seconds",
    "retry_max_seconds",
}
_SERVICE_KEYS = {
    "quiet_period_seconds",
    "rescan_interval_seconds",
    "retention_days",
    "retention_sweep_interval_seconds",
    "auth_retry_interval_seconds",
    "metrics_host",
    "metrics_port",
    "log_format",
    "log_level",
}
_API_KEYS = {
    "base_url",
    "revision",
    "connect_timeout_seconds",
    "read_timeout_seconds",
    "retry_initial_seconds",
    "retry_max_seconds",
}
_RATE_KEYS = {
    "burst",
    "burst_window_seconds",
    "steady",
    "steady_window_seconds",
    "max_retry_after_seconds",
}
_COMPANY_KEYS = {
    *COMPANY_SFTP_KEYS,
    "digest",
    "api_key_env",
    "api_key_file",
    "api_key_credential",
    "recipients",
    "rate_limit",
    "enabled",
}
_SECRET_KEYS = {"api_key", "key", "private_key", "token", "password"}


def _rate_limit(
    r: TableReader, table: Mapping[str, Any], prefix: str, base: RateLimitSettings
) -> RateLimitSettings:
    r.known(table, _RATE_KEYS, prefix)
    return RateLimitSettings(
        burst=r.value(table, "burst", prefix, int, base.burst, positive),
        burst_window=r.value(
            table, "burst_window_seconds", prefix, float, base.burst_window, positive
        ),
        steady=r.value(table, "steady", prefix, int, base.steady, positive),
        steady_window=r.value(
            table, "steady_window_seconds", prefix, float, base.steady_window, positive
        ),
        max_retry_after=r.value(
            table, "max_retry_after_seconds", prefix, float, base.max_retry_after, positive
        ),
    )


def _mailbox(value: str) -> str | None:
    address = parseaddr(value)[1]
    return None if _EMAIL.fullmatch(address) else f"{value!r} is not an e-mail address"


def _path_under(base: Path, text: str) -> str:
    """A path from the settings file: relative ones are relative to the file's folder (not
    to the working directory, which is / under systemd)."""
    return str(base / Path(text).expanduser()) if text else ""


def _smtp(r: TableReader, data: Mapping[str, Any], base: Path) -> SmtpSettings | None:
    """[smtp]: absent means messages are written to <state_dir>/outbox/ only."""
    if "smtp" not in data:
        return None
    table, p = r.table(data, "smtp", ""), "smtp."
    r.known(table, _SMTP_KEYS, p)
    host = r.value(table, "host", p, str, "")
    if not host:
        r.problem(
            p + "host", "is required when [smtp] is present (remove [smtp] to use the outbox)"
        )
    security = r.value(table, "security", p, str, "starttls", one_of(SECURITY))
    if security == "none" and host not in ("127.0.0.1", "::1", "localhost"):
        r.problem(p + "security", '"none" (no TLS) is allowed only for a loopback host')
    sources = {
        k: r.value(table, k, p, str, "")
        for k in ("password_env", "password_file", "password_credential")
    }
    password = SecretSource(
        env=sources["password_env"],
        file=_path_under(base, sources["password_file"]),
        credential=sources["password_credential"],
        what="SMTP password",
    )
    username = r.value(table, "username", p, str, "")
    if sum(map(bool, sources.values())) > 1:
        r.problem(
            p + "password_env",
            "name at most one of password_env, password_file, password_credential",
        )
    if username and not password.complete:
        r.problem(
            p + "username",
            "a username needs a password source: password_env, password_file or "
            "password_credential",
        )
    return SmtpSettings(
        host=host,
        port=r.value(table, "port", p, int, 465 if security == "tls" else 587),
        security=security,
        username=username,
        password=password if password.complete else None,
        ca_file=_path_under(base, r.value(table, "ca_file", p, str, "")),
        timeout=r.value(table, "timeout_seconds", p, float, 30.0, positive),
        retry_initial=r.value(table, "retry_initial_seconds", p, float, 5.0, positive),
        retry_max=r.value(table, "retry_max_seconds", p, float, 300.0, positive),
    )


def _company(
    r: TableReader,
    name: str,
    table: Any,
    default_limits: RateLimitSettings,
    default_digest: bool,
    base: Path,
) -> CompanySettings | None:
    prefix = f"companies.{name}."
    if not isinstance(table, dict):
        r.problem(prefix[:-1], "must be a table ([companies.<name>])")
        return None
    if not _COMPANY_NAME.fullmatch(name):
        r.problem(
            prefix[:-1],
            "a company name is its drop-tree directory: letters, digits, '.', '_' or '-', "
            "starting with a letter or digit",
        )
    for key in table.keys() & _SECRET_KEYS:
        r.problem(
            prefix + key,
            "never put a secret in the settings file; name its source with api_key_env, "
            "api_key_file or api_key_credential",
        )
    r.known({k: v for k, v in table.items() if k not in _SECRET_KEYS}, _COMPANY_KEYS, prefix)
    sources = {
        key: r.value(table, key, prefix, str, "")
        for key in ("api_key_env", "api_key_file", "api_key_credential")
    }
    given = [key for key, value in sources.items() if value]
    if len(given) != 1:
        r.problem(
            prefix + "api_key_env",
            "set exactly one of api_key_env, api_key_file, api_key_credential"
            + (f" (found {', '.join(given)})" if given else ""),
        )
    recipients = table.get("recipients", [])
    if not isinstance(recipients, list) or not all(isinstance(a, str) for a in recipients):
        r.problem(prefix + "recipients", "must be a list of e-mail addresses")
        recipients = []
    for address in recipients:
        if not _EMAIL.fullmatch(address):
            r.problem(prefix + "recipients", f"{address!r} is not an e-mail address")
    limits = _rate_limit(
        r, r.table(table, "rate_limit", prefix), prefix + "rate_limit.", default_limits
    )
    return CompanySettings(
        name=name,
        key_source=SecretSource(
            env=sources["api_key_env"],
            file=_path_under(base, sources["api_key_file"]),
            credential=sources["api_key_credential"],
        ),
        recipients=tuple(recipients),
        rate_limit=limits,
        enabled=r.value(table, "enabled", prefix, bool, True),
        digest=r.value(table, "digest", prefix, bool, default_digest),
    )


def _parse(path: Path) -> tuple[ServiceSettings | None, list[Problem]]:
    r = TableReader()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        return None, [Problem(str(path), f"cannot read: {exc.strerror or exc}")]
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        return None, [Problem(str(path), f"not valid TOML: {exc}")]
    r.known(data, _TOP_KEYS, "")
    base = path.resolve().parent  # relative paths in the file are relative to its folder

    def location(key: str) -> Path | None:
        if key not in data:
            r.problem(key, "is required (a directory path)")
            return None
        text = r.value(data, key, "", str, "")
        if not text:
            return None
        return (base / Path(text).expanduser()).resolve()

    drop_root, state_dir = location("drop_root"), location("state_dir")
    service = r.table(data, "service", "")
    r.known(service, _SERVICE_KEYS, "service.")
    api = r.table(data, "api", "")
    r.known(api, _API_KEYS, "api.")
    reports = r.table(data, "reports", "")
    r.known(reports, {"skip_samples"}, "reports.")
    default_limits = _rate_limit(
        r, r.table(data, "rate_limit", ""), "rate_limit.", RateLimitSettings()
    )
    notify_table = r.table(data, "notify", "")
    r.known(notify_table, _NOTIFY_KEYS, "notify.")
    notify_digest = r.value(notify_table, "digest", "notify.", bool, False)
    notify = NotifySettings(
        sender=r.value(notify_table, "from", "notify.", str, DEFAULT_SENDER, _mailbox),
        attach_max_bytes=r.value(
            notify_table, "attach_max_bytes", "notify.", int, DEFAULT_ATTACH_MAX, positive
        ),
        smtp=_smtp(r, data, base),
        digest_after_files=r.value(
            notify_table,
            "digest_after_files",
            "notify.",
            int,
            NotifySettings().digest_after_files,
            positive,
        ),
        announce_grace=r.value(
            notify_table,
            "announce_grace_seconds",
            "notify.",
            float,
            NotifySettings().announce_grace,
            non_negative,
        ),
    )
    companies: dict[str, CompanySettings] = {}
    for name, table in r.table(data, "companies", "").items():
        company = _company(r, name, table, default_limits, notify_digest, base)
        if company is not None:
            companies[name] = company
    if not companies:
        r.problem("companies", "no company is configured; add a [companies.<name>] table")

    s, d = "service.", ServiceSettings(source=path, drop_root=Path(), state_dir=Path())
    port = r.value(service, "metrics_port", s, int, d.metrics_port)
    if not 0 <= port <= 65535:
        r.problem(s + "metrics_port", "must be 0 (off) or a TCP port")
    host = r.value(service, "metrics_host", s, str, d.metrics_host)
    if host not in ("127.0.0.1", "::1", "localhost"):
        r.problem(s + "metrics_host", "must be a loopback address (127.0.0.1, ::1, localhost)")
    api_defaults = ApiSettings()
    retry = api_defaults.retry
    base_url = r.value(api, "base_url", "api.", str, api_defaults.base_url)
    if not base_url.startswith(("https://", "http://127.0.0.1", "http://localhost")):
        r.problem("api.base_url", "must be https:// (plain http only on loopback)")
    settings = ServiceSettings(
        source=path,
        drop_root=drop_root or Path(),
        state_dir=state_dir or Path(),
        api=ApiSettings(
            base_url=base_url,
            revision=r.value(api, "revision", "api.", str, api_defaults.revision),
            connect_timeout=r.value(
                api,
                "connect_timeout_seconds",
                "api.",
                float,
                api_defaults.connect_timeout,
                positive,
            ),
            read_timeout=r.value(
                api, "read_timeout_seconds", "api.", float, api_defaults.read_timeout, positive
            ),
            retry=RetrySettings(
                initial_delay=r.value(
                    api, "retry_initial_seconds", "api.", float, retry.initial_delay, positive
                ),
                max_delay=r.value(
                    api, "retry_max_seconds", "api.", float, retry.max_delay, positive
                ),
            ),
        ),
        quiet_period=r.value(service, "quiet_period_seconds", s, float, d.quiet_period, positive),
        rescan_interval=r.value(
            service, "rescan_interval_seconds", s, float, d.rescan_interval, positive
        ),
        retention_days=r.value(service, "retention_days", s, float, d.retention_days, positive),
        sweep_interval=r.value(
            service, "retention_sweep_interval_seconds", s, float, d.sweep_interval, positive
        ),
        auth_retry_interval=r.value(
            service, "auth_retry_interval_seconds", s, float, d.auth_retry_interval, positive
        ),
        metrics_host=host,
        metrics_port=port,
        log_format=r.value(service, "log_format", s, str, d.log_format, one_of(LOG_FORMATS)),
        log_level=r.value(service, "log_level", s, str, d.log_level, one_of(LOG_LEVELS)),
        report_skip_samples=r.value(
            reports, "skip_samples", "reports.", int, d.report_skip_samples, positive
        ),
        companies=companies,
        notify=notify,
        sftp=parse_sftp(r, data, base, r.table(data, "companies", "")),
    )
    return settings, r.problems


def check_service_settings(
    path: Path, environ: Mapping[str, str]
) -> tuple[ServiceSettings | None, list[Problem]]:
    """Everything wrong with a settings file, including keys that cannot be read and a drop
    root that does not exist. The settings are None only if the file is unreadable."""
    env = environ
    settings, problems = _parse(path)
    if settings is None:
        return None, problems
    if "drop_root" not in {p.key for p in problems} and not settings.drop_root.is_dir():
        problems.append(Problem("drop_root", f"{settings.drop_root} is not a directory"))
    smtp = settings.notify.smtp
    if smtp is not None and smtp.password is not None:
        try:
            smtp.password.load_text(env)
        except ConfigError as exc:
            problems.append(Problem("smtp", str(exc)))
    if smtp is not None and smtp.ca_file and not os.access(smtp.ca_file, os.R_OK):
        problems.append(Problem("smtp.ca_file", f"{smtp.ca_file} cannot be read"))
    for company in settings.companies.values():
        if not company.enabled or not company.key_source.complete:
            continue  # a missing or doubled source is already a problem
        try:
            company.key_source.load(env)
        except ConfigError as exc:
            problems.append(Problem(f"companies.{company.name}", str(exc)))
    if settings.sftp is not None:
        for name, login in settings.sftp.companies.items():
            if login.authorized_keys is not None:
                problem = authorized_keys_problem(login.authorized_keys)
                if problem:
                    problems.append(Problem(f"companies.{name}.sftp_authorized_keys", problem))
    return settings, problems


def load_service_settings(path: Path) -> ServiceSettings:
    """The settings, or ConfigError listing every structural problem (keys are read later,
    per company, so one company's missing key never stops the others)."""
    settings, problems = _parse(path)
    if settings is None or problems:
        raise ConfigError(
            f"{path} has {len(problems)} problem(s):\n" + "\n".join(f"  {p}" for p in problems)
        )
    return settings
