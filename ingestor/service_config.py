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
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ingestor.config import (
    DEFAULT_MAX_SKIPPED,
    PUBLISHED_KIND_LIMITS,
    ApiSettings,
    RateLimitSettings,
    RetrySettings,
    SecretSource,
    Settings,
    budget_problem,
)
from ingestor.errors import ConfigError
from ingestor.logs import LOG_FORMATS, LOG_LEVELS
from ingestor.notify.notifier import NotifySettings, address_problem
from ingestor.notify.smtp import SmtpSettings
from ingestor.sftp.auth import authorized_keys_problem
from ingestor.sftp.config import CompanySftp, SftpSettings, parse_sftp
from ingestor.toml_reader import (
    Problem,
    TableReader,
    knob,
    knob_keys,
    knobs,
    one_of,
    positive,
    read_knobs,
    toml_value,
)

_COMPANY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_LOOPBACK = ("127.0.0.1", "::1", "localhost")


def _port_or_off(port: int) -> str | None:
    return None if 0 <= port <= 65535 else "must be 0 (off) or a TCP port"


def _loopback(host: str) -> str | None:
    return None if host in _LOOPBACK else "must be a loopback address (127.0.0.1, ::1, localhost)"


@dataclass(frozen=True, slots=True)
class CompanySettings:
    """One [companies.<name>] table; its defaults are the file's own ([rate_limit], [notify])."""

    name: str
    key_source: SecretSource
    recipients: tuple[str, ...] = ()
    rate_limit: RateLimitSettings = field(default_factory=RateLimitSettings)
    # The events and profile import endpoints' limits ([rate_limit.events], ...).
    kind_rate_limits: Mapping[str, RateLimitSettings] = field(
        default_factory=lambda: dict(PUBLISHED_KIND_LIMITS)
    )
    digest: bool = knob(False, "true: one e-mail per folder run (default: [notify] digest)")
    enabled: bool = knob(True, "false: no lane; the company's files wait, untouched")


@dataclass(frozen=True, slots=True)
class ServiceSettings:
    """The whole settings file. Its own knobs live in [service] and [reports]."""

    source: Path  # the settings file itself
    drop_root: Path
    state_dir: Path
    api: ApiSettings = field(default_factory=ApiSettings)
    quiet_period: float = knob(
        5.0,
        "no close event (rescan, NFS, --polling): ready after this long unchanged",
        key="quiet_period_seconds",
        table="service",
        check=positive,
    )
    rescan_interval: float = knob(
        300.0,
        "safety rescan of the whole drop root",
        key="rescan_interval_seconds",
        table="service",
        check=positive,
    )
    max_skipped: str = knob(
        DEFAULT_MAX_SKIPPED,
        'a file with more skipped rows is quarantined, not sent: "5%", "100" or "none" '
        '(config.json "max_skipped" overrides)',
        table="service",
        check=budget_problem,
    )
    max_uncompressed_bytes: int = knob(
        64 * 1024**3,
        "a .gz upload expanding to more is rejected (a decompression bomb)",
        table="service",
        check=positive,
    )
    max_compression_ratio: int = knob(
        200,
        "a .gz upload expanding more times than this (past 256 KiB) is rejected",
        table="service",
        check=positive,
    )
    retention_days: float = knob(
        30.0,
        "processed files and their reports are deleted after this age",
        table="service",
        check=positive,
    )
    sweep_interval: float = knob(
        3600.0,
        "how often retention runs",
        key="retention_sweep_interval_seconds",
        table="service",
        check=positive,
    )
    auth_retry_interval: float = knob(
        60.0,
        "a company whose key fails waits this long (or for a reload)",
        key="auth_retry_interval_seconds",
        table="service",
        check=positive,
    )
    metrics_port: int = knob(
        0,
        "0: off; else Prometheus /metrics on metrics_host:metrics_port",
        table="service",
        check=_port_or_off,
    )
    metrics_host: str = knob("127.0.0.1", "loopback only", table="service", check=_loopback)
    log_format: str = knob(
        "auto",
        "auto (console on a terminal, JSON otherwise) | json | console",
        table="service",
        check=one_of(LOG_FORMATS),
    )
    log_level: str = knob(
        "info", "debug | info | warning | error", table="service", check=one_of(LOG_LEVELS)
    )
    report_skip_samples: int = knob(
        20,
        "skipped rows listed in each report (all are in the rejects file)",
        key="skip_samples",
        table="reports",
        check=positive,
    )
    notify: NotifySettings = field(default_factory=NotifySettings)
    sftp: SftpSettings | None = None  # None: no embedded SFTP endpoint
    companies: Mapping[str, CompanySettings] = field(default_factory=dict)

    def pipeline_settings(self, company: CompanySettings) -> Settings:
        return Settings(
            state_dir=self.state_dir,
            api=replace(
                self.api, rate_limit=company.rate_limit, kind_rate_limits=company.kind_rate_limits
            ),
            report_skip_samples=self.report_skip_samples,
            max_uncompressed_bytes=self.max_uncompressed_bytes,
            max_compression_ratio=self.max_compression_ratio,
            max_skipped=self.max_skipped,
        )


@dataclass(frozen=True, slots=True)
class Extra:
    """A key read by hand (a path, a list, one of several sources), as the example shows it."""

    key: str
    example: str
    help: str = ""
    commented: bool = False


@dataclass(frozen=True, slots=True)
class Section:
    """One TOML table: its knobs (a class and the class's table tag), its hand-read keys, and
    the comment that introduces it in the example file."""

    name: str
    intro: str = ""
    knobs: tuple[tuple[type, str], ...] = ()
    extras: tuple[Extra, ...] = ()  # shown before the knobs
    after: tuple[Extra, ...] = ()  # shown after them
    commented: bool = False  # shown commented out in the example (an optional table)
    optional: tuple[type, ...] = ()  # classes whose knobs the example shows commented out

    @property
    def keys(self) -> set[str]:
        return knob_keys(*self.knobs) | {e.key for e in self.extras + self.after}


_KEY_SOURCES = ("api_key_env", "api_key_file", "api_key_credential")
_PASSWORD_SOURCES = ("password_env", "password_file", "password_credential")

SECTIONS = (
    Section(
        "",
        """\
ingestor service settings. Every key is shown with its default; only drop_root, state_dir
and at least one [companies.<name>] table are required. Check a file with:
    ingestor check-config /etc/ingestor/ingestor.toml
Relative paths are relative to this file (not to the working directory, which is / under
systemd), except [sftp] host_key, which is relative to state_dir. Reload after editing:
systemctl reload ingestor (SIGHUP): new companies start, changed keys and limits apply from
each company's next file. This file is `ingestor check-config --example`.""",
        extras=(
            Extra(
                "drop_root",
                '"/srv/ingestor/drop"',
                "<drop_root>/<company>/imports/custom_objects/<folder>/",
            ),
            Extra(
                "state_dir",
                '"/var/lib/ingestor"',
                "ledger, reports, rejected rows (needs a restart to change)",
            ),
        ),
    ),
    Section("service", knobs=((ServiceSettings, "service"),)),
    Section("api", knobs=((ApiSettings, ""), (RetrySettings, "api"))),
    Section(
        "rate_limit",
        """\
Per-account limits for the bulk endpoint, the default for every company. Klaviyo's guide:
burst 3/s, steady 60/min; its newer published spec says 15/min. The sender also adapts to
429 + Retry-After, so a limit set too high costs retries, not data. A server stricter than
these is learned: from its RateLimit-Limit header at once, or by counting at its first 429;
the limit then probes upward only after two clean windows. The bulk events and profile
import endpoints have limits of their own (published: burst 10/s, steady 150/min, the
defaults), set in [rate_limit.events] and [rate_limit.profiles] with the same keys.""",
        knobs=((RateLimitSettings, ""),),
        after=tuple(
            Extra(
                name,
                f"{{ burst = {limits.burst}, steady = {limits.steady} }}",
                f"the {name} endpoint's own limits (the published ones)",
                commented=True,
            )
            for name, limits in PUBLISHED_KIND_LIMITS.items()
        ),
    ),
    Section("reports", knobs=((ServiceSettings, "reports"),)),
    Section(
        "notify",
        """\
Completion e-mails: one per finished file (done, failed or rejected), to each company's
recipients. Without an [smtp] table they are written as .eml files to <state_dir>/outbox/.""",
        knobs=((NotifySettings, ""),),
    ),
    Section(
        "smtp",
        """\
Uncomment to deliver: messages are queued in <state_dir>/outbox/pending until the server
accepts them, then moved to outbox/sent.""",
        knobs=((SmtpSettings, ""),),
        after=(
            Extra(
                "password_env",
                '"SMTP_PASSWORD"',
                "or password_file / password_credential, as for API keys",
            ),
            Extra("password_file", '""', "", commented=True),
            Extra("password_credential", '""', "", commented=True),
        ),
        commented=True,
    ),
    Section(
        "sftp",
        """\
The embedded SFTP endpoint (omit the table to run without it). Each company logs in as its
own name with a key from its sftp_authorized_keys; its "/" is <drop_root>/<company>/.""",
        knobs=((SftpSettings, ""),),
        extras=(Extra("listen", '"0.0.0.0:2222"', "the address and port to serve"),),
        commented=True,
    ),
    Section(
        "companies.acme",
        """\
One table per company; the name is its directory under drop_root. The API key is never
written here: name exactly one source.""",
        knobs=((CompanySettings, ""), (CompanySftp, "")),
        optional=(CompanySftp,),  # an SFTP login is optional per company
        extras=(
            Extra(
                "api_key_env", '"ACME_KLAVIYO_KEY"', "an environment variable (EnvironmentFile=)"
            ),
            Extra(
                "api_key_file",
                '"/etc/ingestor/keys/acme"',
                "a file only the service user can read (chmod 600)",
                commented=True,
            ),
            Extra(
                "api_key_credential",
                '"acme"',
                "$CREDENTIALS_DIRECTORY/acme (systemd LoadCredential=)",
                commented=True,
            ),
            Extra("recipients", '["data-team@acme.example"]', "who gets completion e-mails"),
        ),
        after=(
            Extra(
                "sftp_authorized_keys",
                '"/etc/ingestor/sftp/acme.pub"',
                "OpenSSH authorized_keys format",
                commented=True,
            ),
            Extra(
                "rate_limit",
                "{ steady = 15 }",
                "overrides [rate_limit] for this company",
                commented=True,
            ),
        ),
    ),
)
_SECRET_KEYS = {"api_key", "key", "private_key", "token", "password"}


def _section(name: str) -> Section:
    return next(s for s in SECTIONS if s.name == name)


def example_settings() -> str:
    """The example settings file, derived from the declarations (deploy/ingestor.example.toml
    is this text; a test fails if the two drift)."""
    lines: list[str] = []

    def entry(key: str, value: str, help: str, commented: bool) -> None:
        text = f"{'# ' if commented else ''}{key} = {value}"
        lines.append(f"{text:<34} # {help}".rstrip() if help else text)

    for section in SECTIONS:
        if lines:
            lines.append("")
        lines.extend(f"# {line}".rstrip() for line in section.intro.splitlines())
        if not section.name:
            lines.append("")  # the file's header stands apart
        else:
            lines.append(f"{'# ' if section.commented else ''}[{section.name}]")
        for extra in section.extras:
            entry(extra.key, extra.example, extra.help, section.commented or extra.commented)
        for cls, table in section.knobs:
            for d in knobs(cls, table):
                shown = d.default if d.knob.example is None else d.knob.example
                # A knob shown with an example, not its default, must not take effect.
                commented = (
                    section.commented or cls in section.optional or d.knob.example is not None
                )
                entry(d.key, toml_value(shown), d.knob.help, commented)
        for extra in section.after:
            entry(extra.key, extra.example, extra.help, section.commented or extra.commented)
    return "\n".join(lines) + "\n"


def _path_under(base: Path, text: str) -> str:
    """A path from the settings file: relative ones are relative to the file's folder (not
    to the working directory, which is / under systemd)."""
    return str(base / Path(text).expanduser()) if text else ""


def _sources(
    r: TableReader, table: Mapping[str, Any], prefix: str, keys: tuple[str, ...]
) -> dict[str, str]:
    return {k: r.value(table, k, prefix, str, "") for k in keys}


def _smtp(r: TableReader, data: Mapping[str, Any], base: Path) -> SmtpSettings | None:
    """[smtp]: absent means messages are written to <state_dir>/outbox/ only."""
    if "smtp" not in data:
        return None
    table, p = r.table(data, "smtp", ""), "smtp."
    r.known(table, _section("smtp").keys, p)
    smtp = read_knobs(r, table, p, SmtpSettings())
    if not smtp.host:
        r.problem(
            p + "host", "is required when [smtp] is present (remove [smtp] to use the outbox)"
        )
    if smtp.security == "none" and smtp.host not in _LOOPBACK:
        r.problem(p + "security", '"none" (no TLS) is allowed only for a loopback host')
    if "port" not in table and smtp.security == "tls":
        smtp = replace(smtp, port=465)
    sources = _sources(r, table, p, _PASSWORD_SOURCES)
    password = SecretSource(
        env=sources["password_env"],
        file=_path_under(base, sources["password_file"]),
        credential=sources["password_credential"],
        what="SMTP password",
    )
    if sum(map(bool, sources.values())) > 1:
        r.problem(
            p + "password_env",
            "name at most one of password_env, password_file, password_credential",
        )
    if smtp.username and not password.complete:
        r.problem(
            p + "username",
            "a username needs a password source: password_env, password_file or "
            "password_credential",
        )
    return replace(
        smtp,
        password=password if password.complete else None,
        ca_file=_path_under(base, smtp.ca_file),
    )


def _company(
    r: TableReader, name: str, table: Any, defaults: CompanySettings, base: Path
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
    allowed = _section("companies.acme").keys
    r.known({k: v for k, v in table.items() if k not in _SECRET_KEYS}, allowed, prefix)
    sources = _sources(r, table, prefix, _KEY_SOURCES)
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
        problem = address_problem(address)
        if problem:
            r.problem(prefix + "recipients", problem)
    limits_table, limits_prefix = r.table(table, "rate_limit", prefix), prefix + "rate_limit."
    r.known(
        limits_table, knob_keys((RateLimitSettings, "")) | set(PUBLISHED_KIND_LIMITS), limits_prefix
    )
    company = read_knobs(r, table, prefix, defaults)
    return replace(
        company,
        name=name,
        key_source=SecretSource(
            env=sources["api_key_env"],
            file=_path_under(base, sources["api_key_file"]),
            credential=sources["api_key_credential"],
        ),
        recipients=tuple(recipients),
        rate_limit=read_knobs(r, limits_table, limits_prefix, defaults.rate_limit),
        kind_rate_limits=_kind_limits(r, limits_table, limits_prefix, defaults.kind_rate_limits),
    )


def _kind_limits(
    r: TableReader,
    limits_table: dict[str, Any],
    prefix: str,
    defaults: Mapping[str, RateLimitSettings],
) -> dict[str, RateLimitSettings]:
    """The other kinds' endpoint limits in a rate_limit table (``events = { steady = 100 }``
    or ``[rate_limit.events]``), each over ``defaults``."""
    found: dict[str, RateLimitSettings] = {}
    for name in PUBLISHED_KIND_LIMITS:
        sub, sub_prefix = r.table(limits_table, name, prefix), f"{prefix}{name}."
        r.known(sub, knob_keys((RateLimitSettings, "")), sub_prefix)
        found[name] = read_knobs(r, sub, sub_prefix, defaults[name])
    return found


def _parse(path: Path) -> tuple[ServiceSettings | None, list[Problem]]:
    r = TableReader()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        return None, [Problem(str(path), f"cannot read: {exc.strerror or exc}")]
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        return None, [Problem(str(path), f"not valid TOML: {exc}")]
    r.known(
        data, {s.name for s in SECTIONS if s.name} | {"companies", "drop_root", "state_dir"}, ""
    )
    base = path.resolve().parent  # relative paths in the file are relative to its folder

    def location(key: str) -> Path | None:
        if key not in data:
            r.problem(key, "is required (a directory path)")
            return None
        text = r.value(data, key, "", str, "")
        if not text:
            return None
        return (base / Path(text).expanduser()).resolve()

    def table(name: str) -> tuple[dict[str, Any], str]:
        found, prefix = r.table(data, name, ""), name + "."
        r.known(found, _section(name).keys, prefix)
        return found, prefix

    drop_root, state_dir = location("drop_root"), location("state_dir")
    settings = ServiceSettings(
        source=path, drop_root=drop_root or Path(), state_dir=state_dir or Path()
    )
    service, reports, api, limits, notify = map(
        table, ("service", "reports", "api", "rate_limit", "notify")
    )
    settings = read_knobs(r, *service, settings, "service")
    settings = read_knobs(r, *reports, settings, "reports")
    default_limits = read_knobs(r, *limits, RateLimitSettings())
    kind_limits = _kind_limits(r, limits[0], "rate_limit.", PUBLISHED_KIND_LIMITS)
    api_settings = read_knobs(
        r, *api, ApiSettings(rate_limit=default_limits, kind_rate_limits=kind_limits)
    )
    api_settings = replace(api_settings, retry=read_knobs(r, *api, RetrySettings(), "api"))
    notify_settings = replace(read_knobs(r, *notify, NotifySettings()), smtp=_smtp(r, data, base))
    company_defaults = CompanySettings(
        name="",
        key_source=SecretSource(),
        rate_limit=default_limits,
        kind_rate_limits=kind_limits,
        digest=notify_settings.digest,
    )
    companies: dict[str, CompanySettings] = {}
    for name, company_table in r.table(data, "companies", "").items():
        company = _company(r, name, company_table, company_defaults, base)
        if company is not None:
            companies[name] = company
    if not companies:
        r.problem("companies", "no company is configured; add a [companies.<name>] table")
    settings = replace(
        settings,
        api=api_settings,
        notify=notify_settings,
        companies=companies,
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
