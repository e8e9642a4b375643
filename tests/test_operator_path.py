"""The operator's path, end to end: the wheel installed in a fresh virtual environment, run
from ``/`` as systemd runs it, with a settings file of relative paths, against a server
stricter than the settings, fed by OpenSSH's sftp as companies feed it.

Run alone with ``pytest -m operator``.
"""

from __future__ import annotations

import email
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from email.policy import default
from pathlib import Path

import pytest

from ingestor.simulator import Simulator
from ingestor.simulator.state import SPEC_BULK_LIMITS
from tests.conftest import BETA_WRONG_KEY, DS_ID, KEY, keypair
from tests.service_helpers import BETA_KEY, jsonl, sftp_batch

pytestmark = pytest.mark.operator

REPO = Path(__file__).resolve().parent.parent
CLOCK = 20.0  # one server minute is three seconds here
needs_openssh = pytest.mark.skipif(
    subprocess.run(["which", "sftp"], capture_output=True).returncode != 0,
    reason="needs OpenSSH's sftp (apt-get install openssh-client)",
)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``pip install`` of the wheel into a fresh virtual environment; its ``bin/``.
    Dependencies come from the test environment (added by a .pth file), ingestor itself only
    from the wheel."""
    work = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(work), str(REPO)],
        check=True, capture_output=True,
    )  # fmt: skip
    (wheel,) = work.glob("ingestor-*.whl")
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
         "--no-index", "-q", str(wheel)],
        check=True, capture_output=True,
    )  # fmt: skip
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    deps = [p for p in sys.path if p.endswith("site-packages")]
    (Path(site) / "test-dependencies.pth").write_text("\n".join(deps) + "\n")
    where = subprocess.run(
        [str(python), "-c", "import ingestor; print(ingestor.__file__)"],
        check=True, capture_output=True, text=True, cwd="/",
    ).stdout  # fmt: skip
    assert where.startswith(site), where  # the wheel's copy, not the checkout
    return venv / "bin"


def run(bin_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(bin_dir / "ingestor"), *args], capture_output=True, text=True, cwd="/", timeout=120
    )


def test_demo_works_from_the_installed_wheel_in_any_directory(
    installed: Path, tmp_path: Path
) -> None:
    """Before: FileNotFoundError: 'sample_drop' (it was looked for in the working dir)."""
    result = run(installed, "demo", "--state-dir", str(tmp_path / "demo"))
    assert result.returncode == 0, result.stderr
    assert "simulator received 2,267 records, 6 events and 4 profiles" in result.stdout


def events(log: Path) -> list[dict[str, object]]:
    found = []
    for line in log.read_text().splitlines():
        if line.startswith("{"):
            found.append(json.loads(line))
    return found


def wait_for_event(log: Path, name: str, timeout: float = 30) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for event in events(log):
            if event.get("event") == name:
                return event
        time.sleep(0.05)
    raise AssertionError(f"no {name} event in the log:\n{log.read_text()[-4000:]}")


@pytest.fixture
def site(tmp_path: Path) -> Iterator[tuple[Path, Simulator]]:
    """A settings file in etc/ with paths relative to it, keys in files, and a simulator
    holding to the published spec's 15/min while the settings say the guide's 60/min."""
    spec = SPEC_BULK_LIMITS.scaled(CLOCK)
    keys = {KEY: "acme", BETA_KEY: "beta"}
    with Simulator(keys, bulk_limits=spec, clock_factor=CLOCK) as sim:
        sim.add_data_source("acme", DS_ID)
        sim.add_data_source("beta", DS_ID)
        etc = tmp_path / "etc"
        (etc / "keys").mkdir(parents=True)
        (tmp_path / "drop").mkdir()
        for name, key in (("acme", KEY), ("beta", BETA_WRONG_KEY)):
            path = etc / "keys" / f"{name}.key"
            path.write_text(key + "\n")
            path.chmod(0o600)
        keypair(etc / "keys", "acme_sftp")
        window = 60.0 / CLOCK
        (etc / "ingestor.toml").write_text(
            f'drop_root = "../drop"\nstate_dir = "../state"\n'
            "[service]\nquiet_period_seconds = 0.3\nauth_retry_interval_seconds = 1.0\n"
            f'[api]\nbase_url = "{sim.url}"\nretry_initial_seconds = 0.05\n'
            "retry_max_seconds = 0.5\n"
            f"[rate_limit]\nburst = 3\nburst_window_seconds = {1 / CLOCK}\n"
            f"steady = 60\nsteady_window_seconds = {window}\n"
            '[sftp]\nlisten = "127.0.0.1:0"\nmax_sessions = 4\n'
            '[companies.acme]\napi_key_file = "keys/acme.key"\n'
            'sftp_authorized_keys = "keys/acme_sftp.pub"\nrecipients = ["ops@acme.example"]\n'
            '[companies.beta]\napi_key_file = "keys/beta.key"\n'
            'recipients = ["data@beta.example"]\n'
        )
        yield etc / "ingestor.toml", sim


@needs_openssh
def test_a_first_deployment_as_an_operator_runs_it(
    installed: Path, site: tuple[Path, Simulator], tmp_path: Path
) -> None:
    began = time.monotonic()
    settings, sim = site
    checked = run(installed, "check-config", str(settings))
    assert checked.returncode == 0, checked.stderr
    log = tmp_path / "service.log"
    service = subprocess.Popen(
        [str(installed / "ingestor"), "run", "--config", str(settings), "--log-format", "json"],
        cwd="/", stdout=log.open("wb"), stderr=subprocess.STDOUT,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    )  # fmt: skip
    try:
        port = int(str(wait_for_event(log, "sftp_listening")["port"]))
        wait_for_event(log, "service_ready")
        key = settings.parent / "keys" / "acme_sftp"
        known = tmp_path / "known_hosts"
        host_key = tmp_path / "state" / "sftp_host_key"
        public = subprocess.run(["ssh-keygen", "-y", "-f", str(host_key)], capture_output=True,
                                text=True, check=True).stdout.split()  # fmt: skip
        known.write_text(f"[127.0.0.1]:{port} {public[0]} {public[1]}\n")

        def sftp(commands: str) -> subprocess.CompletedProcess[str]:
            return sftp_batch(port, known, key, commands, "acme", tmp_path)

        (tmp_path / "config.json").write_text(f'{{"data_source_id": "{DS_ID}"}}')
        first = sftp(
            "mkdir /imports/custom_objects/pets\n"
            f"put {tmp_path / 'config.json'} /imports/custom_objects/pets/config.json\n"
            "mkdir /imports/custom_objects/nocfg\n"
        )
        assert first.returncode == 0, first.stderr
        for n in range(16):
            (tmp_path / f"f{n}.jsonl").write_bytes(jsonl(n * 1000, 1000))
        uploads = [
            sftp(f"put {tmp_path / f'f{n}.jsonl'} /imports/custom_objects/pets/f{n}.jsonl\n")
            for n in range(12)  # twelve logins in a row
        ]
        with ThreadPoolExecutor(4) as pool:  # and four at once
            uploads += pool.map(
                lambda n: sftp(
                    f"put {tmp_path / f'f{n}.jsonl'} /imports/custom_objects/pets/f{n}.jsonl\n"
                ),
                range(12, 16),
            )
        assert [u.returncode for u in uploads] == [0] * 16, [u.stderr for u in uploads]
        (tmp_path / "stray.csv").write_text("id\n1\n")
        (tmp_path / "a.jsonl").write_bytes(jsonl(0, 3))
        others = sftp(
            f"put {tmp_path / 'stray.csv'} /imports/custom_objects/stray.csv\n"
            f"put {tmp_path / 'a.jsonl'} /imports/custom_objects/nocfg/a.jsonl\n"
        )
        assert others.returncode == 0, others.stderr
        beta = tmp_path / "drop" / "beta" / "imports" / "custom_objects" / "pets"
        beta.mkdir(parents=True)
        (beta / "config.json").write_text(f'{{"data_source_id": "{DS_ID}"}}')
        (beta / "b.jsonl").write_bytes(jsonl(0, 10))
        assert sim.wait_for_records("acme", 16_000, timeout=60), sim.stats()
        wait_for_event(log, "auth_failed")
        service.send_signal(signal.SIGHUP)
        wait_for_event(log, "settings_reloaded")
        status = run(installed, "status", "--config", str(settings))
        assert status.returncode == 0, status.stderr
        assert "service: running" in status.stdout and "beta" in status.stdout
    finally:
        service.send_signal(signal.SIGTERM)
        code = service.wait(timeout=60)
    assert code == 0, log.read_text()[-3000:]
    seen = events(log)
    assert seen[-1]["event"] == "service_stopped"

    # Nothing lost: every record of the sixteen uploads, exactly once.
    assert sorted(int(r["id"]) for r in sim.records("acme")) == list(range(16_000))
    # A server stricter than the settings: no 429 after its second window.
    bulk = [r for r in sim.state.requests if r.method == "POST" and r.account == "acme"]
    window = SPEC_BULK_LIMITS.steady_window / CLOCK
    late = [r for r in bulk if r.status == 429 and r.at - bulk[0].at >= 2 * window]
    assert late == [], [(round(r.at - bulk[0].at, 2), r.status) for r in bulk]

    # The operator is told what only the operator can fix, with the company named.
    (auth,) = [e for e in seen if e["event"] == "auth_failed"]
    assert auth["company"] == "beta" and "Klaviyo refused the API key" in str(auth["reason"])
    assert all("company" in e for e in seen if e["event"] in ("rate_limited", "file_done"))
    assert [e["company"] for e in seen if e["event"] == "folder_not_processed"] == ["acme"]

    # The companies are told what they can fix, in plain words.
    mails = {}
    for path in (tmp_path / "state" / "outbox").glob("*.eml"):
        message = email.message_from_bytes(path.read_bytes(), policy=default)
        part = message.get_body(("plain",))
        assert part is not None
        mails[str(message["Subject"])] = (str(message["To"]), str(part.get_content()))  # type: ignore[attr-defined]
    subjects = sorted(mails)
    done = [s for s in subjects if s.startswith("[ingestor] acme / pets / f")]
    assert len(done) == 16 and all(s.endswith(": 1,000 imported, 0 skipped") for s in done)
    stray = mails["[ingestor] acme / custom_objects / stray.csv: not processed: it must be "
                  "inside a named folder that has a config.json"]  # fmt: skip
    assert stray[0] == "ops@acme.example" and "move it into a named folder" in stray[1]
    (nocfg,) = [s for s in subjects if s.startswith("[ingestor] acme / nocfg / a.jsonl")]
    assert "config.json is missing in nocfg/" in nocfg
    (refused,) = [s for s in subjects if s.startswith("[ingestor] beta / pets / b.jsonl")]
    assert refused.endswith("waiting: Klaviyo refused the API key, the operator must renew it "
                            "(0 imported)")  # fmt: skip
    assert mails[refused][0] == "data@beta.example"
    assert "Nothing for you to change in the file" in mails[refused][1]

    # After the stop: the ledger answers; a report by the run id status shows.
    stopped = run(installed, "status", "--config", str(settings))
    assert stopped.returncode == 0 and "service: not running" in stopped.stdout
    run_id = re.search(r"│\s*(\d+)\s*│\s*acme\s*│\s*pets\s*│\s*f0\.jsonl", stopped.stdout)
    assert run_id is not None, stopped.stdout
    report = run(installed, "report", run_id.group(1), "--config", str(settings))
    assert report.returncode == 0 and "f0.jsonl" in report.stdout, report.stderr
    assert time.monotonic() - began < 90
