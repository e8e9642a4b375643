"""Settings: one object built once and passed down; no module reads globals or the environment.

Defaults follow Klaviyo's guide for revision 2025-07-15 (bulk endpoint: SMALL tier, burst 3/s,
steady 60/min). The newer published spec says steady 15/min; every limit here is a setting,
and the sender adapts to what the server actually answers.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ingestor.errors import ConfigError

DEFAULT_BASE_URL = "https://a.klaviyo.com"
DEFAULT_REVISION = "2025-07-15"


@dataclass(frozen=True, slots=True)
class RateLimitSettings:
    """Client-side limits per account: at most ``burst`` requests per ``burst_window`` seconds
    and ``steady`` per ``steady_window`` seconds. ``enabled=False`` is for benchmarks only."""

    burst: int = 3
    burst_window: float = 1.0
    steady: int = 60
    steady_window: float = 60.0
    enabled: bool = True

    def scaled(self, clock_factor: float) -> RateLimitSettings:
        """The same limits on a clock running ``clock_factor`` times faster (tests, benches)."""
        return RateLimitSettings(
            burst=self.burst,
            burst_window=self.burst_window / clock_factor,
            steady=self.steady,
            steady_window=self.steady_window / clock_factor,
            enabled=self.enabled,
        )

    @property
    def requests_per_second(self) -> float:
        """The sustained rate these limits allow."""
        return min(self.burst / self.burst_window, self.steady / self.steady_window)


@dataclass(frozen=True, slots=True)
class RetrySettings:
    """Exponential backoff with full jitter, capped; transient errors are retried forever."""

    initial_delay: float = 0.5
    max_delay: float = 60.0
    multiplier: float = 2.0


@dataclass(frozen=True, slots=True)
class ApiSettings:
    base_url: str = DEFAULT_BASE_URL
    revision: str = DEFAULT_REVISION
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    rate_limit: RateLimitSettings = field(default_factory=RateLimitSettings)
    retry: RetrySettings = field(default_factory=RetrySettings)


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything one ingestion run needs besides the API key."""

    state_dir: Path
    api: ApiSettings = field(default_factory=ApiSettings)
    report_skip_samples: int = 20
    max_raw_excerpt: int = 2048


@dataclass(frozen=True, slots=True, repr=False)
class ApiKey:
    """A secret that never prints: its repr and str are masked."""

    value: str

    def __repr__(self) -> str:
        return "ApiKey(***)"

    __str__ = __repr__

    @classmethod
    def from_env(cls, var: str, environ: dict[str, str] | None = None) -> ApiKey:
        env = os.environ if environ is None else environ
        value = env.get(var, "").strip()
        if not value:
            raise ConfigError(
                f"environment variable {var} is empty or not set; put the API key there"
            )
        return cls(value)
