"""Settings: one object built once and passed down; no module reads globals or the environment.

Defaults follow Klaviyo's guide for revision 2025-07-15 (bulk endpoint: SMALL tier, burst 3/s,
steady 60/min). The newer published spec says steady 15/min; every limit here is a setting,
and the sender adapts to what the server actually answers.
"""

from __future__ import annotations

import stat
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from ingestor.errors import ConfigError
from ingestor.kinds import KINDS
from ingestor.toml_reader import knob, positive

DEFAULT_BASE_URL = "https://a.klaviyo.com"
DEFAULT_MAX_SKIPPED = "50%"


@dataclass(frozen=True, slots=True)
class Budget:
    """How many of a file's rows may be skipped before it is quarantined instead of sent:
    a share (``"5%"``) or a count (``100``); ``"none"`` for no limit."""

    share: float | None = None  # percent of the rows read
    count: int | None = None

    @classmethod
    def parse(cls, value: object) -> Budget | str:
        """The budget ``value`` says, or why it says none."""
        if value == "none":
            return cls()
        if isinstance(value, str) and value.isdigit():
            value = int(value)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return cls(count=value)
        if isinstance(value, str) and value.endswith("%"):
            try:
                share = float(value[:-1])
            except ValueError:
                share = -1.0
            if 0 <= share <= 100:
                return cls(share=share)
        return 'must be a share such as "5%", a number of rows such as 100, or "none"'

    @property
    def limited(self) -> bool:
        """False for ``"none"``: no file is ever over it (so none need be read ahead)."""
        return self.share is not None or self.count is not None

    def exceeded(self, skipped: int, rows: int) -> bool:
        if self.count is not None:
            return skipped > self.count
        if self.share is not None:
            return rows > 0 and skipped * 100 > self.share * rows
        return False

    def __str__(self) -> str:
        if self.count is not None:
            return f"{self.count:,} rows"
        return f"{self.share:g}%" if self.share is not None else "none"


def budget_problem(value: str) -> str | None:
    problem = Budget.parse(value)
    return problem if isinstance(problem, str) else None


DEFAULT_REVISION = "2025-07-15"


def _https(url: str) -> str | None:
    if url.startswith(("https://", "http://127.0.0.1", "http://localhost")):
        return None
    return "must be https:// (plain http only on loopback)"


@dataclass(frozen=True, slots=True)
class RateLimitSettings:
    """Client-side limits per account: at most ``burst`` requests per ``burst_window`` seconds
    and ``steady`` per ``steady_window`` seconds. ``enabled=False`` is for benchmarks only."""

    burst: int = knob(3, "requests per burst window", check=positive, flag=True)
    burst_window: float = knob(
        1.0, "the burst window, in seconds", key="burst_window_seconds", check=positive, flag=True
    )
    steady: int = knob(60, "requests per steady window", check=positive, flag=True)
    steady_window: float = knob(
        60.0,
        "the steady window, in seconds",
        key="steady_window_seconds",
        check=positive,
        flag=True,
    )
    enabled: bool = True
    # A Retry-After (or RateLimit-Reset) longer than this is cut to it: a server's hint must
    # not silence an account for ten minutes; at worst the next request is throttled again.
    max_retry_after: float = knob(
        120.0,
        "a longer Retry-After (or RateLimit-Reset) is cut to this",
        key="max_retry_after_seconds",
        check=positive,
    )

    def scaled(self, clock_factor: float) -> RateLimitSettings:
        """The same limits on a clock running ``clock_factor`` times faster (tests, benches)."""
        return replace(
            self,
            burst_window=self.burst_window / clock_factor,
            steady_window=self.steady_window / clock_factor,
            max_retry_after=self.max_retry_after / clock_factor,
        )

    @property
    def requests_per_second(self) -> float:
        """The sustained rate these limits allow."""
        return min(self.burst / self.burst_window, self.steady / self.steady_window)


@dataclass(frozen=True, slots=True)
class RetrySettings:
    """Exponential backoff with full jitter, capped; transient errors are retried forever.
    Its knobs live in the [api] table."""

    initial_delay: float = knob(
        0.5,
        "transient failures (5xx, timeouts) are retried forever,",
        key="retry_initial_seconds",
        table="api",
        check=positive,
    )
    max_delay: float = knob(
        60.0,
        "backing off with jitter from initial up to max",
        key="retry_max_seconds",
        table="api",
        check=positive,
    )
    multiplier: float = 2.0


# The published limits of the endpoints of the kinds whose limits are not [rate_limit]'s.
PUBLISHED_KIND_LIMITS: Mapping[str, RateLimitSettings] = {
    kind.folder: RateLimitSettings(burst=kind.burst, steady=kind.steady)
    for kind in KINDS.values()
    if not kind.has_data_source
}


@dataclass(frozen=True, slots=True)
class ApiSettings:
    base_url: str = knob(
        DEFAULT_BASE_URL,
        "the Klaviyo API; plain http is accepted only on loopback (the simulator)",
        check=_https,
        flag=True,
    )
    revision: str = knob(DEFAULT_REVISION, "the API revision header", flag=True)
    connect_timeout: float = knob(10.0, "seconds", key="connect_timeout_seconds", check=positive)
    read_timeout: float = knob(60.0, "seconds", key="read_timeout_seconds", check=positive)
    job_poll_interval: float = knob(
        2.0,
        "seconds between two looks at an import job still running (profiles)",
        key="job_poll_seconds",
        check=positive,
        flag=True,
    )
    rate_limit: RateLimitSettings = field(default_factory=RateLimitSettings)
    # Each other kind's endpoint has limits of its own (by the kind's folder name).
    kind_rate_limits: Mapping[str, RateLimitSettings] = field(
        default_factory=lambda: dict(PUBLISHED_KIND_LIMITS)
    )
    retry: RetrySettings = field(default_factory=RetrySettings)


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything one ingestion run needs besides the API key."""

    state_dir: Path
    api: ApiSettings = field(default_factory=ApiSettings)
    report_skip_samples: int = 20
    max_raw_excerpt: int = 2048
    max_uncompressed_bytes: int = 64 * 1024**3  # a .gz upload may expand to this much
    max_compression_ratio: int = 200  # and this many times its size
    max_skipped: str = DEFAULT_MAX_SKIPPED  # a file's error budget (see ``Budget``)


@dataclass(frozen=True, slots=True, repr=False)
class ApiKey:
    """A secret that never prints: its repr and str are masked."""

    value: str

    def __repr__(self) -> str:
        return "ApiKey(***)"

    __str__ = __repr__

    @classmethod
    def from_env(cls, var: str, environ: Mapping[str, str]) -> ApiKey:
        value = environ.get(var, "").strip()
        if not value:
            raise ConfigError(
                f"environment variable {var} is empty or not set; put the API key there"
            )
        return cls(checked_secret(value, f"the API key in {var}"))


def checked_secret(value: str, where: str) -> str:
    """``value`` if it can go into a header as is; a line break or other control character
    inside it (a key pasted with its newline, two keys in one file) is refused here, at
    load, instead of failing every request as if the network were down."""
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in value):
        raise ConfigError(
            f"{where} contains a line break, space or other control character inside it; "
            "it must be the key alone, on one line"
        )
    return value


@dataclass(frozen=True, slots=True)
class SecretSource:
    """Where a secret (an API key, an SMTP password) is read from; exactly one of ``env``,
    ``file`` and ``credential`` is set. The secret itself is never in the settings file."""

    env: str = ""
    file: str = ""
    credential: str = ""  # a name under $CREDENTIALS_DIRECTORY (systemd LoadCredential=)
    what: str = "API key"

    @property
    def complete(self) -> bool:
        """Exactly one source is named."""
        return sum(map(bool, (self.env, self.file, self.credential))) == 1

    def load_text(self, environ: Mapping[str, str]) -> str:
        """Read the secret now (so a reload picks up a rotated one); ConfigError says why not."""
        if self.env:
            value = environ.get(self.env, "").strip()
            if not value:
                raise ConfigError(
                    f"environment variable {self.env} is empty or not set; put the {self.what} "
                    "there"
                )
            return value
        if self.file:
            return _secret_from_file(Path(self.file), self.what, check_mode=True)
        directory = environ.get("CREDENTIALS_DIRECTORY", "")
        if not directory:
            raise ConfigError(
                f"systemd credential {self.credential}: $CREDENTIALS_DIRECTORY is not set "
                "(add LoadCredential= to the unit, or name an environment variable or a file)"
            )
        return _secret_from_file(Path(directory) / self.credential, self.what, check_mode=False)

    def load(self, environ: Mapping[str, str]) -> ApiKey:
        where = (
            f"the API key in environment variable {self.env}"
            if self.env
            else f"the API key in {self.file}"
            if self.file
            else f"the API key in credential {self.credential}"
        )
        return ApiKey(checked_secret(self.load_text(environ), where))


def _secret_from_file(path: Path, what: str, check_mode: bool) -> str:
    try:
        info = path.stat()
        if check_mode and info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError(
                f"{what} file {path} is readable by others "
                f"(mode {stat.S_IMODE(info.st_mode):o}); run: chmod 600 {path}"
            )
        value = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"cannot read {what} file {path}: {exc.strerror or exc}") from None
    if not value:
        raise ConfigError(f"{what} file {path} is empty")
    return value
