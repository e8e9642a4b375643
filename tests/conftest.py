"""Shared fixtures: a real simulator on loopback, and helpers that build import folders."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ingestor.config import ApiKey, ApiSettings, RateLimitSettings, RetrySettings, Settings
from ingestor.simulator import Simulator

KEY = "pk_test_secret_acme_0123456789"
BETA_WRONG_KEY = "pk_test_secret_beta_revoked_000"  # a key the simulator refuses
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


# -- SFTP logins ----------------------------------------------------------------------------


def keypair(directory: Path, name: str) -> Path:
    """An Ed25519 key pair in OpenSSH's formats (``name`` and ``name.pub``)."""
    key = Ed25519PrivateKey.generate()
    private = directory / name
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
    )
    private.chmod(0o600)
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    (directory / f"{name}.pub").write_bytes(public + f" {name}\n".encode())
    return private


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Path]:
    directory = tmp_path / "keys"
    directory.mkdir()
    return {name: keypair(directory, name) for name in ("acme", "beta", "stranger")}


# -- Secrets never leak: every test's output and every file the suite writes is searched ----

SECRETS = (
    KEY,
    "pk_test_secret_beta_9876543210",  # tests.service_helpers.BETA_KEY
    "smtp-secret-Pa55",  # tests.service_helpers.SMTP_PASSWORD
    BETA_WRONG_KEY,
)
_LEAKS: list[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Captured stdout, stderr and logs, and any failure text, of every test phase."""
    texts = [report.longreprtext, *(content for _, content in report.sections)]
    for secret in SECRETS:
        if any(secret in text for text in texts):
            _LEAKS.append(f"{report.nodeid} ({report.when}): output shows {secret[:8]}…")


@pytest.fixture(scope="session", autouse=True)
def secrets_never_leak(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """After the whole suite: logs, reports, rejected rows, e-mails, ledgers — no secret."""
    yield
    for path in tmp_path_factory.getbasetemp().rglob("*"):
        # Key files and systemd credentials hold a key on purpose.
        if path.is_symlink() or not path.is_file() or path.suffix == ".key":
            continue
        if "creds" in path.parts or path.stat().st_size > 50 * 1024 * 1024:
            continue
        data = path.read_bytes()
        for secret in SECRETS:
            if secret.encode() in data:
                _LEAKS.append(f"{path}: contains {secret[:8]}…")
    assert not _LEAKS, "secrets leaked:\n" + "\n".join(_LEAKS)
