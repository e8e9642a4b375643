"""Shared fixtures: a real simulator on loopback, and helpers that build import folders."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from ingestor.config import ApiKey, ApiSettings, RateLimitSettings, RetrySettings, Settings
from ingestor.simulator import Simulator

KEY = "pk_test_secret_acme_0123456789"
DS_ID = "01KTMWCZ8ZMNZS0HG5HQNX0H6E"
FAST_LIMITS = RateLimitSettings(burst=50, burst_window=1.0, steady=3000, steady_window=60.0)


@pytest.fixture
def sim() -> Iterator[Simulator]:
    """A simulator with fast limits (tests of the limits build their own)."""
    with Simulator({KEY: "acme"}, bulk_limits=FAST_LIMITS, read_limits=FAST_LIMITS) as server:
        server.add_data_source("acme", DS_ID)
        yield server


def settings_for(
    sim: Simulator,
    state_dir: Path,
    limits: RateLimitSettings = FAST_LIMITS,
    read_timeout: float = 10.0,
) -> Settings:
    return Settings(
        state_dir=state_dir,
        api=ApiSettings(
            base_url=sim.url,
            rate_limit=limits,
            read_timeout=read_timeout,
            retry=RetrySettings(initial_delay=0.01, max_delay=0.1),
        ),
    )


def api_key() -> ApiKey:
    return ApiKey(KEY)


def make_folder(
    root: Path, name: str = "pets", ds: str | None = DS_ID, company: str = "acme"
) -> Path:
    folder = root / company / "imports" / "custom_objects" / name
    folder.mkdir(parents=True)
    if ds is not None:
        (folder / "config.json").write_text(json.dumps({"data_source_id": ds}))
    return folder
