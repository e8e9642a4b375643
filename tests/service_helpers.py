"""Running the real service against a real simulator and a real drop tree, for tests."""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ingestor.ledger import LEDGER_NAME, FileRun, SqliteLedger
from ingestor.pipeline import FolderResult
from ingestor.simulator import Simulator
from ingestor.worker.service import Service
from tests.conftest import DS_ID, FAST_LIMITS, KEY

BETA_KEY = "pk_test_secret_beta_9876543210"


def write_settings(
    path: Path,
    drop: Path,
    state: Path,
    sim: Simulator,
    companies: dict[str, str] | None = None,
    service: str = "",
    company_lines: str = "",
    extra: str = "",
) -> Path:
    """A settings file: each company reads its key from the named environment variable."""
    companies = companies or {"acme": "ACME_KEY"}
    lines = [
        f'drop_root = "{drop}"',
        f'state_dir = "{state}"',
        "[service]",
        "quiet_period_seconds = 0.3",
        "auth_retry_interval_seconds = 0.5",
        service,
        "[api]",
        f'base_url = "{sim.url}"',
        "read_timeout_seconds = 5.0",
        "retry_initial_seconds = 0.01",
        "retry_max_seconds = 0.1",
        "job_poll_seconds = 0.05",
        "[rate_limit]",
        "burst = 50",
        "steady = 3000",
    ]
    for name, env in companies.items():
        lines += [f"[companies.{name}]", f'api_key_env = "{env}"', company_lines]
    path.write_text("\n".join([*lines, extra]) + "\n")
    return path


SMTP_PASSWORD = "smtp-secret-Pa55"
ENVIRON = {"ACME_KEY": KEY, "BETA_KEY": BETA_KEY, "SMTP_PASSWORD": SMTP_PASSWORD}


def ingest_command(
    folder: Path, sim: Simulator, state: Path, *options: str
) -> tuple[list[str], dict[str, str]]:
    """`ingestor ingest` of one folder, as its own process, against ``sim``; and the
    environment that gives it the key (in KLAVIYO_KEY)."""
    command = [
        sys.executable, "-m", "ingestor.cli", "ingest", str(folder),
        "--api-key-env", "KLAVIYO_KEY", "--base-url", sim.url, "--state-dir", str(state),
        *options,
    ]  # fmt: skip
    return command, {**os.environ, "KLAVIYO_KEY": KEY}


def start_process(
    settings: Path, log: Path, env: dict[str, str] | None = None, stderr: Path | None = None
) -> subprocess.Popen[bytes]:
    """``ingestor run`` as its own process, as systemd starts it: JSON log lines to ``log``
    (stderr too, unless given its own file). ``env`` adds to (an empty value removes from)
    the environment."""
    environ = {**os.environ, **ENVIRON}
    for key, value in (env or {}).items():
        if value:
            environ[key] = value
        else:
            environ.pop(key, None)
    return subprocess.Popen(
        [sys.executable, "-m", "ingestor.cli", "run", "--config", str(settings)],
        env=environ,
        stdout=log.open("ab"),
        stderr=stderr.open("ab") if stderr else subprocess.STDOUT,
    )


def stop_process(process: subprocess.Popen[bytes], log: Path) -> int:
    """SIGTERM, and the exit status. If it does not stop, the stacks of its threads
    (SIGUSR1 makes it write them to stderr) go into the failure."""
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGUSR1)
        time.sleep(1)  # for the dump to be written; the process is stuck anyway
        process.kill()
        process.wait()
        tails = [
            f"{path.name}:\n{path.read_text(errors='replace')[-6000:]}"
            for path in (log, log.with_suffix(".stderr"))
            if path.exists()
        ]
        raise AssertionError("the service did not stop on SIGTERM\n" + "\n".join(tails)) from None


def sftp_batch(
    port: int, known_hosts: Path, key: Path, commands: str, user: str, workdir: Path
) -> subprocess.CompletedProcess[str]:
    """One OpenSSH ``sftp -b`` login running ``commands``, as a company's script runs it
    (the server's key checked against ``known_hosts``)."""
    batch = workdir / f"sftp-batch-{uuid.uuid4().hex}"
    batch.write_text(commands)
    return subprocess.run(
        ["sftp", "-b", str(batch), "-i", str(key), "-P", str(port),
         "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={known_hosts}",
         "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes", f"{user}@127.0.0.1"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def ledger_runs(state: Path) -> list[FileRun]:
    """Every run in the state dir's ledger, newest first."""
    ledger = SqliteLedger(state / LEDGER_NAME)
    try:
        return ledger.runs()
    finally:
        ledger.close()


def jsonl(start: int, count: int) -> bytes:
    """``count`` JSONL records with ids from ``start``."""
    return b"".join(b'{"id": %d}\n' % i for i in range(start, start + count))


@contextlib.contextmanager
def two_companies() -> Iterator[Simulator]:
    """A fast simulator with the accounts acme and beta, each holding the data source DS_ID."""
    keys = {KEY: "acme", BETA_KEY: "beta"}
    with Simulator(keys, bulk_limits=FAST_LIMITS, read_limits=FAST_LIMITS) as sim:
        sim.add_data_source("acme", DS_ID)
        sim.add_data_source("beta", DS_ID)
        yield sim


@dataclass
class Running:
    service: Service
    results: queue.Queue[FolderResult] = field(default_factory=queue.Queue)

    def next_run(self, timeout: float = 20.0) -> FileRun:
        """The next file any lane finished (done, failed or rejected)."""
        while True:
            result = self.results.get(timeout=timeout)
            if result.files:
                return result.files[-1].run

    def run_for(self, name: str, timeout: float = 20.0) -> FileRun:
        """Wait for the file called ``name`` to finish; other files' results are skipped."""
        while True:
            run = self.next_run(timeout)
            if run.identity.name == name:
                return run


@contextlib.contextmanager
def running_service(settings: Path, polling: bool = False) -> Iterator[Running]:
    holder: list[Running] = []
    service = Service(
        settings,
        environ=ENVIRON,
        install_signals=False,
        polling=polling,
        on_finished=lambda finished: holder[0].results.put(finished.result),
    )
    running = Running(service)
    holder.append(running)
    exit_code: list[int] = []
    thread = threading.Thread(target=lambda: exit_code.append(service.run()), daemon=True)
    thread.start()
    assert service.ready.wait(10), "the service did not finish its first scan"
    try:
        yield running
    finally:
        service.request_stop()
        thread.join(30)
        assert not thread.is_alive(), "the service did not stop"
        assert exit_code == [0]


def sftp_service_settings(tmp_path: Path, sim: Simulator, keys: dict[str, Path]) -> Path:
    """A settings file for acme with the embedded SFTP endpoint on a free port, the drop
    root and state dir under ``tmp_path``."""
    drop = tmp_path / "drop"
    drop.mkdir(exist_ok=True)
    return write_settings(
        tmp_path / "s.toml", drop, tmp_path / "state", sim,
        company_lines=f'sftp_authorized_keys = "{keys["acme"]}.pub"',
        extra='[sftp]\nlisten = "127.0.0.1:0"\n',
    )  # fmt: skip


def openssh(
    svc: Running, tmp_path: Path, key: Path, commands: str, user: str = "acme"
) -> subprocess.CompletedProcess[str]:
    """One OpenSSH ``sftp -b`` login to the running service's endpoint, its host key known."""
    endpoint = svc.service.sftp
    assert endpoint is not None
    known = tmp_path / f"known_hosts-{uuid.uuid4().hex}"
    host = endpoint.host_key
    known.write_text(f"[127.0.0.1]:{endpoint.port} {host.get_name()} {host.get_base64()}\n")
    return sftp_batch(endpoint.port, known, key, commands, user, tmp_path)
