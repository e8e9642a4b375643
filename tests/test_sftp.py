"""Companies upload over SFTP to the embedded endpoint: paramiko's client and OpenSSH's sftp."""

from __future__ import annotations

import contextlib
import email
import hashlib
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from email.policy import default
from pathlib import Path

import paramiko
import pytest

from ingestor.ledger import FileRun, FileState
from ingestor.simulator import Simulator
from tests.conftest import DS_ID
from tests.service_helpers import (
    Running,
    jsonl,
    ledger_runs,
    running_service,
    sftp_batch,
    write_settings,
)

CONFIG = b'{"data_source_id": "%s"}' % DS_ID.encode()
PETS_CSV = b"id,name,species\n" + b"".join(b"%d,pet %d,cat\n" % (i, i) for i in range(300))


def sftp_settings(tmp_path: Path, sim: Simulator, keys: dict[str, Path], sftp: str = "") -> Path:
    lines = '[sftp]\nlisten = "127.0.0.1:0"\n' + sftp
    drop = tmp_path / "drop"
    drop.mkdir(exist_ok=True)
    settings = write_settings(
        tmp_path / "s.toml",
        drop,
        tmp_path / "state",
        sim,
        companies={"acme": "ACME_KEY", "beta": "BETA_KEY"},
        company_lines='recipients = ["ops@example.com"]',
        extra=lines,
    )
    text = settings.read_text()
    for name in ("acme", "beta"):
        text = text.replace(
            f"[companies.{name}]\n",
            f'[companies.{name}]\nsftp_authorized_keys = "{keys[name]}.pub"\n',
        )
    settings.write_text(text)
    return settings


class Client:
    """A paramiko SFTP client that checks the server's host key."""

    def __init__(self, svc: Running, user: str, key: Path) -> None:
        endpoint = svc.service.sftp
        assert endpoint is not None
        self.transport = paramiko.Transport(("127.0.0.1", endpoint.port))
        self.transport.connect(
            hostkey=endpoint.host_key,
            username=user,
            pkey=paramiko.Ed25519Key.from_private_key_file(str(key)),
        )
        self.sftp = paramiko.SFTPClient.from_transport(self.transport)
        assert self.sftp is not None

    def put(self, data: bytes, remote: str) -> None:
        with self.sftp.open(remote, "wb") as handle:
            handle.write(data)

    def close(self) -> None:
        self.transport.close()


@pytest.fixture
def service(tmp_path: Path, sim: Simulator, keys: dict[str, Path]) -> Iterator[Running]:
    with running_service(sftp_settings(tmp_path, sim, keys, "max_sessions = 2\n")) as svc:
        yield svc


def upload_folder(client: Client, folder: str, name: str, data: bytes) -> None:
    base = f"/imports/custom_objects/{folder}"
    client.sftp.mkdir(base)
    client.put(CONFIG, f"{base}/config.json")
    client.put(data, f"{base}/{name}")


def test_a_paramiko_upload_is_ingested_and_emailed(service: Running, sim, keys, tmp_path) -> None:
    client = Client(service, "acme", keys["acme"])
    try:
        upload_folder(client, "pets", "pet_records.csv", PETS_CSV)
        run = service.run_for("pet_records.csv")
        names = sorted(client.sftp.listdir("/imports/custom_objects/pets"))
        with client.sftp.open("/imports/custom_objects/pets/pet_records.csv", "rb") as f:
            read_back = f.read()
    finally:
        client.close()
    assert run.state is FileState.DONE and run.counts.sent == 300
    assert run.identity.sha256 == hashlib.sha256(PETS_CSV).hexdigest()  # hashed in flight
    assert len(sim.records("acme")) == 300
    # No upload temporaries shown; the folder's results, read-only, are.
    assert names == ["_results", "config.json", "pet_records.csv"]
    assert read_back == PETS_CSV
    (eml,) = (tmp_path / "state" / "outbox").glob("*.eml")
    subject = email.message_from_bytes(eml.read_bytes(), policy=default)["Subject"]
    assert subject == "[ingestor] acme / pets / pet_records.csv: 300 imported, 0 skipped"


@pytest.mark.skipif(shutil.which("sftp") is None, reason="needs OpenSSH's sftp")
def test_openssh_sftp_batch_upload_is_ingested(service: Running, sim, keys, tmp_path) -> None:
    endpoint = service.service.sftp
    assert endpoint is not None
    known_hosts = tmp_path / "known_hosts"
    host_key = endpoint.host_key
    known_hosts.write_text(
        f"[127.0.0.1]:{endpoint.port} {host_key.get_name()} {host_key.get_base64()}\n"
    )
    (tmp_path / "config.json").write_bytes(CONFIG)
    (tmp_path / "owners.jsonl").write_bytes(b'{"id": 1, "pets": [{"name": "Rex"}]}\n' * 5)
    result = sftp_batch(
        endpoint.port,
        known_hosts,
        keys["acme"],
        "mkdir imports/custom_objects/owners\n"
        "cd imports/custom_objects/owners\n"
        f"put {tmp_path / 'config.json'} config.json\n"
        f"put {tmp_path / 'owners.jsonl'} upload.tmp\n"
        "rename upload.tmp owners.jsonl\n"
        "ls\n",
        "acme",
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "owners.jsonl" in result.stdout
    run = service.run_for("owners.jsonl")
    assert run.state is FileState.DONE and run.counts.sent == 5
    assert len(sim.records("acme")) == 5
    runs = ledger_runs(tmp_path / "state")
    assert [r.identity.name for r in runs] == ["owners.jsonl"]  # not upload.tmp


def test_a_wrong_key_is_refused_and_sprays_are_throttled(tmp_path, sim, keys) -> None:
    settings = sftp_settings(tmp_path, sim, keys, "auth_failures_before_ban = 3\n")
    with running_service(settings) as svc:
        for _ in range(3):
            with pytest.raises(paramiko.AuthenticationException):
                Client(svc, "acme", keys["stranger"])
        # Banned now: even the right key is turned away.
        with pytest.raises((paramiko.SSHException, EOFError, OSError)):
            Client(svc, "acme", keys["acme"])


def test_a_company_cannot_reach_another_companys_tree(service: Running, keys, tmp_path) -> None:
    drop = tmp_path / "drop"
    beta_folder = drop / "beta" / "imports" / "custom_objects" / "secret"
    beta_folder.mkdir(parents=True)
    (beta_folder / "secret.csv").write_text("id\n1\n")
    acme_folder = drop / "acme" / "imports" / "custom_objects" / "pets"
    acme_folder.mkdir(parents=True)
    (acme_folder / "link").symlink_to(beta_folder)  # planted by another means
    (acme_folder / "link.csv").symlink_to(beta_folder / "secret.csv")
    client = Client(service, "acme", keys["acme"])
    sftp = client.sftp
    try:
        assert sftp.normalize("/../../..") == "/"
        # Its own root, nothing above (and its live status).
        assert sorted(sftp.listdir("/../..")) == ["_status.json", "imports"]
        for path in (
            "/../beta/imports/custom_objects/secret/secret.csv",
            f"{beta_folder}/secret.csv",
            "/imports/custom_objects/pets/link/secret.csv",
            "/imports/custom_objects/pets/link.csv",
        ):
            with pytest.raises(OSError):
                sftp.open(path, "rb").read()
        with pytest.raises(OSError):
            sftp.listdir("/imports/custom_objects/pets/link")
        with pytest.raises(OSError):
            client.put(b"id\n2\n", "/imports/custom_objects/pets/link/planted.csv")
        with pytest.raises(OSError):
            sftp.symlink("/imports", "/imports/custom_objects/pets/mine")
        with pytest.raises(OSError, match="uploads go to /imports"):
            client.put(b"x", "/outside.csv")
        # Links hidden (the results are the service's).
        assert sorted(sftp.listdir("/imports/custom_objects/pets")) == ["_results"]
    finally:
        client.close()
    assert sorted(p.name for p in beta_folder.iterdir()) == ["secret.csv"]


def test_an_oversize_upload_is_refused_and_nothing_is_processed(tmp_path, sim, keys) -> None:
    settings = sftp_settings(tmp_path, sim, keys, "max_file_bytes = 2000\n")
    with running_service(settings) as svc:
        client = Client(svc, "acme", keys["acme"])
        try:
            with pytest.raises(OSError, match="file too large: the limit is 2,000 bytes"):
                upload_folder(client, "pets", "big.csv", PETS_CSV)
            client.put(b"id\n1\n", "/imports/custom_objects/pets/small.csv")
            assert svc.run_for("small.csv").state is FileState.DONE
            listed = sorted(client.sftp.listdir("/imports/custom_objects/pets"))
            assert listed == ["_results", "config.json", "small.csv"]
        finally:
            client.close()
    folder = tmp_path / "drop" / "acme" / "imports" / "custom_objects" / "pets"
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "small.csv"]


def test_a_client_that_disconnects_mid_upload_leaves_nothing(
    service: Running, keys, tmp_path
) -> None:
    folder = tmp_path / "drop" / "acme" / "imports" / "custom_objects" / "pets"
    client = Client(service, "acme", keys["acme"])
    upload_folder(client, "pets", "ok.csv", b"id\n1\n")
    assert service.run_for("ok.csv").state is FileState.DONE
    handle = client.sftp.open("/imports/custom_objects/pets/cut.csv", "wb")
    handle.write(PETS_CSV[:2000])
    handle.flush()
    assert any(p.name.endswith(".upload") for p in folder.iterdir())  # in progress, hidden
    client.transport.close()  # gone without closing the file
    deadline = time.monotonic() + 10
    while any(p.name.endswith(".upload") for p in folder.iterdir()):
        assert time.monotonic() < deadline, "the partial upload was not removed"
        time.sleep(0.02)
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "ok.csv"]
    second = Client(service, "acme", keys["acme"])
    try:
        second.put(b"id\n2\n", "/imports/custom_objects/pets/after.csv")
        assert service.run_for("after.csv").state is FileState.DONE
    finally:
        second.close()
    assert sorted(r.identity.name for r in ledger_runs(tmp_path / "state")) == [
        "after.csv",
        "ok.csv",
    ]


def test_sessions_per_company_are_capped(service: Running, keys) -> None:
    first, second = Client(service, "acme", keys["acme"]), Client(service, "acme", keys["acme"])
    try:
        with pytest.raises(paramiko.AuthenticationException):
            Client(service, "acme", keys["acme"])  # max_sessions = 2
        Client(service, "beta", keys["beta"]).close()  # another company is not affected
    finally:
        first.close()
        second.close()


def test_a_file_being_processed_cannot_be_deleted(service: Running, sim, keys) -> None:
    sim.faults.latency = 0.2  # ten batches: about two seconds in flight
    client = Client(service, "acme", keys["acme"])
    try:
        big = b"".join(b'{"id": %d}\n' % i for i in range(5000))
        upload_folder(client, "pets", "big.jsonl", big)
        assert sim.wait_for_records("acme", 500, timeout=20)
        with pytest.raises(PermissionError):
            client.sftp.remove("/imports/custom_objects/pets/big.jsonl")
        sim.faults.latency = 0.0
        assert service.run_for("big.jsonl").state is FileState.DONE
        client.sftp.remove("/imports/custom_objects/pets/big.jsonl")  # done: allowed now
        assert "big.jsonl" not in client.sftp.listdir("/imports/custom_objects/pets")
    finally:
        client.close()


def test_password_login_only_against_a_stored_hash(tmp_path, sim, keys) -> None:
    hashed = subprocess.run(
        [sys.executable, "-m", "ingestor.cli", "sftp-password"],
        input="correct horse battery staple\n",
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert hashed.startswith("scrypt$") and "staple" not in hashed
    settings = sftp_settings(tmp_path, sim, keys, "password_login = true\n")
    settings.write_text(
        settings.read_text().replace(
            "[companies.acme]\n", f'[companies.acme]\nsftp_password_hash = "{hashed}"\n'
        )
    )
    with running_service(settings) as svc:
        endpoint = svc.service.sftp
        assert endpoint is not None
        for password, works in (("wrong password!", False), ("correct horse battery staple", True)):
            transport = paramiko.Transport(("127.0.0.1", endpoint.port))
            try:
                if works:
                    transport.connect(endpoint.host_key, "acme", password)
                    assert transport.is_authenticated()
                else:
                    with pytest.raises(paramiko.AuthenticationException):
                        transport.connect(endpoint.host_key, "acme", password)
            finally:
                transport.close()
        transport = paramiko.Transport(("127.0.0.1", endpoint.port))
        try:  # beta has no hash: refused (the methods offered are the same for every name)
            with pytest.raises(paramiko.AuthenticationException) as refused:
                transport.connect(endpoint.host_key, "beta", "correct horse battery staple")
            assert not isinstance(refused.value, paramiko.BadAuthenticationType)
        finally:
            transport.close()


def test_an_idle_session_is_closed(tmp_path, sim, keys) -> None:
    settings = sftp_settings(tmp_path, sim, keys, "idle_timeout_seconds = 0.4\n")
    with running_service(settings) as svc:
        client = Client(svc, "acme", keys["acme"])
        deadline = time.monotonic() + 10
        while client.transport.is_active():  # the server hangs up on an idle client
            assert time.monotonic() < deadline, "the idle session stayed open"
            time.sleep(0.05)
        client.close()


def test_two_sessions_uploading_at_once_cannot_together_exceed_the_quota(
    tmp_path, sim, keys
) -> None:
    """Each upload reserves its bytes as it writes them, in a book all of the company's
    sessions share: before, each session measured the free room once, at open."""
    settings = sftp_settings(tmp_path, sim, keys, "max_sessions = 2\n")
    settings.write_text(
        settings.read_text().replace(
            "[companies.acme]\n", "[companies.acme]\nsftp_quota_bytes = 10000\n"
        )
    )
    with running_service(settings) as svc:
        first, second = Client(svc, "acme", keys["acme"]), Client(svc, "acme", keys["acme"])
        try:
            first.sftp.mkdir("/imports/custom_objects/pets")
            one = first.sftp.open("/imports/custom_objects/pets/one.jsonl", "wb")
            two = second.sftp.open("/imports/custom_objects/pets/two.jsonl", "wb")
            for handle in (one, two, one):  # 3,000 bytes at a time, interleaved
                handle.write(jsonl(0, 300)[:3000])
                handle.flush()
            with pytest.raises(OSError, match="quota exceeded: acme may store at most 10,000"):
                two.write(jsonl(0, 300)[:3000])  # would make 12,000 in all
                two.flush()
            one.close()
            with contextlib.suppress(OSError):
                two.close()
            listed = sorted(first.sftp.listdir("/imports/custom_objects/pets"))
            assert listed == ["_results", "one.jsonl"]
            assert first.sftp.stat("/imports/custom_objects/pets/one.jsonl").st_size == 6000
        finally:
            first.close()
            second.close()


def test_a_company_over_its_quota_is_refused_with_a_message(tmp_path, sim, keys) -> None:
    settings = sftp_settings(tmp_path, sim, keys)
    settings.write_text(
        settings.read_text().replace(
            "[companies.acme]\n", "[companies.acme]\nsftp_quota_bytes = 6000\n"
        )
    )
    with running_service(settings) as svc:
        client = Client(svc, "acme", keys["acme"])
        try:
            upload_folder(client, "pets", "first.csv", PETS_CSV[:4000])
            assert svc.run_for("first.csv").state is FileState.DONE
            with pytest.raises(OSError, match="quota exceeded: acme may store at most 6,000 bytes"):
                client.put(PETS_CSV[:4000], "/imports/custom_objects/pets/second.csv")
            assert sorted(client.sftp.listdir("/imports/custom_objects/pets")) == [
                "_results",
                "config.json",
                "first.csv",
            ]
        finally:
            client.close()


def test_upload_temporaries_left_by_a_dead_process_are_removed_at_start(
    tmp_path, sim, keys
) -> None:
    """A kill -9 mid-upload leaves the hidden temporary behind (no close ever comes); the
    next start deletes it before any session could own one, and nothing else."""
    folder = tmp_path / "drop" / "acme" / "imports" / "custom_objects" / "pets"
    folder.mkdir(parents=True)
    orphan = folder / ".pets.csv.1a2b3c4d.upload"
    orphan.write_bytes(PETS_CSV[:3000])
    unrelated = folder / ".notes.upload.txt"
    unrelated.write_bytes(b"not ours")
    with running_service(sftp_settings(tmp_path, sim, keys)):
        assert not orphan.exists()
        assert unrelated.exists()


@pytest.mark.skipif(shutil.which("sftp") is None, reason="needs OpenSSH's sftp")
def test_openssh_uploads_events_and_profiles_beside_custom_objects_and_each_is_emailed(
    service: Running, sim, keys, tmp_path
) -> None:
    endpoint = service.service.sftp
    assert endpoint is not None
    known_hosts = tmp_path / "known_hosts"
    host_key = endpoint.host_key
    known_hosts.write_text(
        f"[127.0.0.1]:{endpoint.port} {host_key.get_name()} {host_key.get_base64()}\n"
    )
    (tmp_path / "events.json").write_bytes(b'{"metric": "Placed Order"}')
    (tmp_path / "orders.csv").write_bytes(
        b"email,time,value\n"
        + b"".join(b"c%d@x.io,2024-05-01,%d\n" % (i, i) for i in range(40))
        + b"nobody,,\n"
    )
    (tmp_path / "config.json").write_bytes(CONFIG)
    (tmp_path / "pets.csv").write_bytes(PETS_CSV)
    (tmp_path / "profiles.json").write_bytes(b'{"list_id": "Y6nRLr"}')
    (tmp_path / "customers.jsonl").write_bytes(
        b'{"email": "a@x.io", "first_name": "A"}\n{"email": "not-an-email"}\n'
        b'{"phone_number": "+15005550006"}\n'
    )
    result = sftp_batch(
        endpoint.port,
        known_hosts,
        keys["acme"],
        "mkdir imports/events/orders\n"
        f"put {tmp_path / 'events.json'} imports/events/orders/config.json\n"
        f"put {tmp_path / 'orders.csv'} imports/events/orders/orders.csv\n"
        "mkdir imports/custom_objects/pets\n"
        f"put {tmp_path / 'config.json'} imports/custom_objects/pets/config.json\n"
        f"put {tmp_path / 'pets.csv'} imports/custom_objects/pets/pets.csv\n"
        "mkdir imports/profiles/customers\n"
        f"put {tmp_path / 'profiles.json'} imports/profiles/customers/config.json\n"
        f"put {tmp_path / 'customers.jsonl'} imports/profiles/customers/customers.jsonl\n",
        "acme",
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    runs: dict[str, FileRun] = {}
    while len(runs) < 3:  # in whichever order the lane finishes them
        run = service.next_run()
        runs[run.identity.name] = run
    orders, pets = runs["orders.csv"], runs["pets.csv"]
    assert (orders.state, orders.counts.sent, orders.counts.skipped) == (FileState.DONE, 40, 1)
    assert (pets.state, pets.counts.sent) == (FileState.DONE, 300)
    customers = runs["customers.jsonl"]
    assert (customers.state, customers.counts.sent, customers.counts.skipped) == (
        FileState.DONE,
        2,
        1,
    )
    assert len(sim.events("acme")) == 40 and len(sim.records("acme")) == 300
    assert sorted(sim.profiles("acme")) == ["email:a@x.io", "phone_number:+15005550006"]
    subjects = sorted(
        email.message_from_bytes(eml.read_bytes(), policy=default)["Subject"]
        for eml in (tmp_path / "state" / "outbox").glob("*.eml")
    )
    assert subjects == [
        "[ingestor] acme / customers / customers.jsonl: 2 imported, 1 skipped",
        "[ingestor] acme / orders / orders.csv: 40 imported, 1 skipped",
        "[ingestor] acme / pets / pets.csv: 300 imported, 0 skipped",
    ]
