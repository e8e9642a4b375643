"""``ingestor check-config``: every problem at once, each with its key path."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ingestor.config import SecretSource
from ingestor.errors import ConfigError
from ingestor.service_config import (
    SECTIONS,
    check_service_settings,
    example_settings,
    load_service_settings,
)
from ingestor.toml_reader import knobs

REPO = Path(__file__).resolve().parent.parent


def check_config(path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ingestor.cli", "check-config", str(path)],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
    )


def test_every_problem_is_listed_with_its_key_path(tmp_path: Path) -> None:
    settings = tmp_path / "bad.toml"
    settings.write_text(
        """
drop_root = "missing"
state_dir = 7
colour = "blue"
[service]
quiet_period_seconds = -1
log_levle = "debug"
metrics_host = "0.0.0.0"
[rate_limit]
burst = "3"
[companies.acme]
api_key = "pk_live_do_not_do_this"
recipients = ["ops@acme.example", "not an address"]
[companies.beta]
api_key_env = "BETA_KEY"
api_key_file = "/etc/ingestor/beta"
[companies."bad/name"]
api_key_env = "X"
"""
    )
    result = check_config(settings)
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert lines[0].endswith(f"{len(lines) - 1} problem(s)"), result.stderr
    problems: dict[str, str] = {}
    for line in lines[1:]:
        key, message = line.strip().split(": ", 1)
        problems.setdefault(key, message)
    assert problems["state_dir"].startswith("must be a string")
    assert problems["colour"] == "unknown key"
    assert problems["service.quiet_period_seconds"] == "must be greater than 0"
    assert problems["service.log_levle"] == "unknown key; did you mean 'log_level'?"
    assert "loopback" in problems["service.metrics_host"]
    assert problems["rate_limit.burst"] == "must be an integer, got str '3'"
    assert "never put a secret" in problems["companies.acme.api_key"]
    assert "'not an address' is not an e-mail address" in problems["companies.acme.recipients"]
    assert "found api_key_env, api_key_file" in problems["companies.beta.api_key_env"]
    assert "letters, digits" in problems["companies.bad/name"]
    assert "drop_root" not in problems or "not a directory" in problems["drop_root"]
    assert "pk_live_do_not_do_this" not in result.stderr + result.stdout


def test_a_good_file_passes_and_names_its_companies(tmp_path: Path) -> None:
    (tmp_path / "drop").mkdir()
    settings = tmp_path / "ok.toml"
    settings.write_text(
        'drop_root = "drop"\nstate_dir = "state"\n'
        '[companies.acme]\napi_key_env = "ACME_KEY"\nrecipients = ["ops@acme.example"]\n'
        "[companies.acme.rate_limit]\nsteady = 15\n"
    )
    result = check_config(settings, ACME_KEY="pk_x")
    assert result.returncode == 0, result.stderr
    assert "1 companies: acme" in result.stdout
    loaded = load_service_settings(settings)
    assert loaded.drop_root == tmp_path / "drop"  # relative to the settings file
    assert loaded.companies["acme"].rate_limit.steady == 15
    assert loaded.companies["acme"].rate_limit.burst == 3  # the default where not overridden


def test_a_missing_key_is_a_problem_but_only_check_config_reads_keys(tmp_path: Path) -> None:
    (tmp_path / "drop").mkdir()
    settings = tmp_path / "s.toml"
    settings.write_text(
        'drop_root = "drop"\nstate_dir = "state"\n[companies.acme]\napi_key_env = "NOPE_KEY"\n'
    )
    _, problems = check_service_settings(settings, environ={})
    assert [str(p) for p in problems] == [
        "companies.acme: environment variable NOPE_KEY is empty or not set; put the API key there"
    ]
    load_service_settings(settings)  # the service still starts: other companies are not held up


def test_key_files_must_be_private_and_credentials_need_systemd(tmp_path: Path) -> None:
    key = tmp_path / "acme.key"
    key.write_text("pk_secret\n")
    key.chmod(0o644)
    with pytest.raises(ConfigError, match=r"readable by others.*chmod 600"):
        SecretSource(file=str(key)).load({})
    key.chmod(0o600)
    assert SecretSource(file=str(key)).load({}).value == "pk_secret"
    with pytest.raises(ConfigError, match="CREDENTIALS_DIRECTORY is not set"):
        SecretSource(credential="acme").load({})
    credentials = tmp_path / "creds"
    credentials.mkdir()
    shutil.copy(key, credentials / "acme")
    source = SecretSource(credential="acme")
    assert source.load({"CREDENTIALS_DIRECTORY": str(credentials)}).value == "pk_secret"


def test_the_example_settings_file_is_valid(tmp_path: Path) -> None:
    example = (REPO / "deploy" / "ingestor.example.toml").read_text()
    drop = tmp_path / "drop"
    drop.mkdir()
    settings = tmp_path / "ingestor.toml"
    settings.write_text(example.replace("/srv/ingestor/drop", str(drop)))
    result = check_config(settings, ACME_KLAVIYO_KEY="pk_example")
    assert result.returncode == 0, result.stderr


def test_the_shipped_example_is_the_one_derived_from_the_declarations() -> None:
    shipped = (REPO / "deploy" / "ingestor.example.toml").read_text()
    assert shipped == example_settings(), (
        "deploy/ingestor.example.toml drifted: regenerate it with "
        "`ingestor check-config --example > deploy/ingestor.example.toml`"
    )
    printed = subprocess.run(
        [sys.executable, "-m", "ingestor.cli", "check-config", "--example"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert printed.stdout == shipped


def test_every_declared_knob_is_read_from_its_own_table(tmp_path: Path) -> None:
    """Each knob set to a value of the wrong type is a problem at its exact key path: the
    reader looks for every declared key, in the table the example file shows it in."""
    lines = ['drop_root = "."', 'state_dir = "."']
    expected = set()
    for section in SECTIONS:
        keys = [d.key for cls, table in section.knobs for d in knobs(cls, table)]
        if not keys:
            continue
        lines.append(f"[{section.name}]")
        if section.name.startswith("companies."):
            lines.append('api_key_env = "ACME_KEY"')
        for key in keys:
            lines.append(f"{key} = [1]")
            expected.add(f"{section.name}.{key}")
    settings = tmp_path / "every.toml"
    settings.write_text("\n".join(lines) + "\n")
    _, problems = check_service_settings(settings, {})
    wrong_type = {p.key for p in problems if p.message.startswith("must be ")}
    assert len(expected) > 40
    assert expected <= wrong_type, sorted(expected - wrong_type)


def test_the_file_defaults_reach_the_api_settings_and_each_company(tmp_path: Path) -> None:
    settings = tmp_path / "limits.toml"
    settings.write_text(
        """
drop_root = "."
state_dir = "."
[rate_limit]
steady = 30
max_retry_after_seconds = 10
[notify]
digest = true
[companies.acme]
api_key_env = "A"
[companies.beta]
api_key_env = "B"
digest = false
rate_limit = { burst = 1 }
"""
    )
    loaded = load_service_settings(settings)
    assert loaded.api.rate_limit.steady == 30  # it used to keep the built-in 60
    acme, beta = loaded.companies["acme"], loaded.companies["beta"]
    assert (acme.rate_limit.steady, acme.rate_limit.burst, acme.digest) == (30, 3, True)
    assert (beta.rate_limit.steady, beta.rate_limit.burst, beta.digest) == (30, 1, False)
    assert beta.rate_limit.max_retry_after == 10.0
    assert loaded.pipeline_settings(beta).api.rate_limit == beta.rate_limit


def test_ingest_takes_the_flag_knobs_with_their_validation(tmp_path: Path) -> None:
    shown = subprocess.run(
        [sys.executable, "-m", "ingestor.cli", "ingest", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for flag in ("--base-url", "--revision", "--burst", "--burst-window", "--steady"):
        assert flag in shown
    ingest = [sys.executable, "-m", "ingestor.cli", "ingest", str(tmp_path), "--api-key-env", "K"]
    refused = subprocess.run(
        [*ingest, "--steady-window", "0"],
        capture_output=True,
        text=True,
    )
    assert refused.returncode == 2
    assert "argument --steady-window: must be greater than 0" in refused.stderr
    plain = subprocess.run(
        [*ingest, "--base-url", "http://example.com"],
        capture_output=True,
        text=True,
    )
    assert "must be https:// (plain http only on loopback)" in plain.stderr


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_the_systemd_unit_verifies(tmp_path: Path) -> None:
    unit = (REPO / "deploy" / "ingestor.service").read_text()
    ingestor = Path(sys.executable).parent / "ingestor"
    assert ingestor.exists()
    # verify checks that ExecStart exists: point it at this checkout's venv.
    (tmp_path / "ingestor.service").write_text(
        unit.replace("/opt/ingestor/.venv/bin/ingestor", str(ingestor))
    )
    result = subprocess.run(
        ["systemd-analyze", "verify", str(tmp_path / "ingestor.service")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert "ingestor.service" not in result.stderr  # no warnings about our unit
    for directive in (
        "Type=notify",
        "WatchdogSec=",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "CapabilityBoundingSet=\n",
        "SystemCallFilter=@system-service",
        "StateDirectory=ingestor",
        "ReadWritePaths=",
    ):
        assert directive in unit


def test_run_with_a_missing_drop_root_says_so_and_exits_2(tmp_path: Path) -> None:
    settings = tmp_path / "s.toml"
    settings.write_text(
        'drop_root = "nowhere"\nstate_dir = "state"\n[companies.acme]\napi_key_env = "K"\n'
    )
    result = subprocess.run(
        [sys.executable, "-m", "ingestor.cli", "run", "--config", str(settings)],
        capture_output=True,
        text=True,
        env={**os.environ, "K": "pk_x"},
        timeout=30,
    )
    assert result.returncode == 2
    assert f"drop_root {tmp_path / 'nowhere'} is not a directory" in result.stderr
    assert "Traceback" not in result.stderr


def relative_settings(root: Path, sftp: bool = True) -> Path:
    """A settings file in ``root/etc`` whose paths are all relative to it."""
    etc = root / "etc"
    (etc / "keys").mkdir(parents=True)
    (root / "drop").mkdir()
    key = etc / "keys" / "acme.key"
    key.write_text("pk_test_relative_0123456789\n")
    key.chmod(0o600)
    (etc / "keys" / "acme.pub").write_text(
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOvvB7kqxFQe0u6lYQpX0Q5bqK3m1b7Zb3x1c2d3e4f5 acme\n"
    )
    settings = etc / "ingestor.toml"
    settings.write_text(
        'drop_root = "../drop"\nstate_dir = "../state"\n'
        + ('[sftp]\nlisten = "127.0.0.1:0"\n' if sftp else "")
        + '[companies.acme]\napi_key_file = "keys/acme.key"\n'
        + ('sftp_authorized_keys = "keys/acme.pub"\n' if sftp else "")
    )
    return settings


def test_relative_paths_are_relative_to_the_settings_file_not_the_working_directory(
    tmp_path: Path,
) -> None:
    """Before: api_key_file was read relative to the working directory, so under systemd
    (cwd /) the company's key silently became unavailable."""
    settings = relative_settings(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "ingestor.cli", "check-config", str(settings)],
        capture_output=True,
        text=True,
        cwd="/",
    )
    assert result.returncode == 0, result.stderr
    loaded = load_service_settings(settings)
    assert loaded.drop_root == tmp_path / "drop"
    key_file = Path(loaded.companies["acme"].key_source.file)
    assert key_file == tmp_path / "etc" / "keys" / "acme.key"
    assert loaded.sftp is not None
    assert loaded.sftp.companies["acme"].authorized_keys == tmp_path / "etc/keys/acme.pub"


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (None, "cannot read"),
        ("this is not a key\n", "holds no usable public key"),
        ("ssh-ed25519 !!!notbase64!!! acme\n", "holds no usable public key"),
    ],
)
def test_check_config_reads_each_sftp_authorized_keys_file(
    tmp_path: Path, content: str | None, says: str
) -> None:
    """Before: check-config said OK, and the company could not log in."""
    settings = relative_settings(tmp_path)
    public = tmp_path / "etc" / "keys" / "acme.pub"
    if content is None:
        public.unlink()
    else:
        public.write_text(content)
    result = check_config(settings)
    assert result.returncode == 2
    assert "companies.acme.sftp_authorized_keys" in result.stderr and says in result.stderr


@pytest.mark.parametrize("key", ["pk_test_one\npk_test_two", "pk_test key", "pk_test\x00key"])
def test_a_key_with_a_line_break_inside_is_refused_at_load(key: str) -> None:
    """Before: a key with an embedded newline made every request fail as if the network were
    down, and was retried forever."""
    with pytest.raises(ConfigError, match="line break, space or other control character"):
        SecretSource(env="K").load({"K": key})
    assert SecretSource(env="K").load({"K": " pk_test_fine \n"}).value == "pk_test_fine"


def test_the_events_and_profiles_endpoints_have_limits_of_their_own(tmp_path: Path) -> None:
    settings = tmp_path / "kinds.toml"
    settings.write_text(
        """
drop_root = "."
state_dir = "."
[rate_limit]
steady = 15
[rate_limit.events]
steady = 100
[companies.acme]
api_key_env = "A"
[companies.beta]
api_key_env = "B"
rate_limit = { profiles = { steady = 30 } }
"""
    )
    loaded = load_service_settings(settings)
    beta = loaded.pipeline_settings(loaded.companies["beta"]).api.kind_rate_limits
    assert (beta["profiles"].steady, beta["events"].steady) == (30, 100)  # its own; the file's
    api = loaded.pipeline_settings(loaded.companies["acme"]).api
    assert (api.rate_limit.burst, api.rate_limit.steady) == (3, 15)  # custom objects
    events, profiles = api.kind_rate_limits["events"], api.kind_rate_limits["profiles"]
    assert (events.burst, events.steady) == (10, 100)  # set; the burst stays the published
    assert (profiles.burst, profiles.steady) == (10, 150)  # the published limits
    settings.write_text(settings.read_text().replace("steady = 100", "stedy = 100"))
    result = check_config(settings, A="k", B="k")
    assert "rate_limit.events.stedy: unknown key; did you mean 'steady'?" in result.stderr
