"""Logging in over SFTP as real clients do, and as attackers would.

OpenSSH's ``sftp`` first asks whether a key is acceptable and only then signs; an attacker
may know a company's public key (it is public) but not its private key, may guess names and
passwords from many addresses, or may simply open connections and say nothing.
"""

from __future__ import annotations

import base64
import shutil
import socket
import statistics
import subprocess
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import paramiko
import pytest

from ingestor.sftp.auth import hash_password
from ingestor.sftp.server import SftpEndpoint
from ingestor.simulator import Simulator
from tests.service_helpers import Running, running_service, sftp_batch
from tests.test_sftp import CONFIG, Client, sftp_settings

needs_openssh = pytest.mark.skipif(shutil.which("sftp") is None, reason="needs OpenSSH's sftp")


def endpoint_of(svc: Running) -> SftpEndpoint:
    endpoint = svc.service.sftp
    assert endpoint is not None
    return endpoint


def openssh(
    svc: Running, tmp_path: Path, key: Path, commands: str, user: str = "acme"
) -> subprocess.CompletedProcess[str]:
    """One ``sftp -b`` login, as a company's script runs it."""
    endpoint = endpoint_of(svc)
    # A file of its own per login: logins run at once, and one rewriting a shared file
    # while another's ssh reads it gives "No ECDSA host key is known" (seen in CI).
    known_hosts = tmp_path / f"known_hosts-{uuid.uuid4().hex}"
    host_key = endpoint.host_key
    known_hosts.write_text(
        f"[127.0.0.1]:{endpoint.port} {host_key.get_name()} {host_key.get_base64()}\n"
    )
    return sftp_batch(endpoint.port, known_hosts, key, commands, user, tmp_path)


@pytest.fixture
def two_sessions(tmp_path: Path, sim: Simulator, keys: dict[str, Path]) -> Any:
    with running_service(sftp_settings(tmp_path, sim, keys, "max_sessions = 2\n")) as svc:
        yield svc


@needs_openssh
def test_twelve_openssh_logins_in_a_row_all_succeed(
    two_sessions: Running, keys: dict[str, Path], tmp_path: Path
) -> None:
    """Before: with max_sessions = 2, the 2nd of ten consecutive logins and every one after it
    failed with 'Permission denied (publickey)' until a restart (each login took two slots
    and gave one back)."""
    results = [openssh(two_sessions, tmp_path, keys["acme"], "ls /imports\n") for _ in range(12)]
    failures = [r.stderr for r in results if r.returncode != 0]
    assert failures == []
    assert all("custom_objects" in r.stdout for r in results)


@needs_openssh
def test_logins_over_the_session_limit_are_told_why(
    two_sessions: Running, keys: dict[str, Path], tmp_path: Path
) -> None:
    held = [Client(two_sessions, "acme", keys["acme"]) for _ in range(2)]
    try:
        refused = openssh(two_sessions, tmp_path, keys["acme"], "ls /imports\n")
        assert refused.returncode != 0
        assert "acme already has 2 SFTP sessions open" in refused.stderr
        other = openssh(two_sessions, tmp_path, keys["beta"], "ls /imports\n", user="beta")
        assert other.returncode == 0, other.stderr  # another company is not affected
    finally:
        for client in held:
            client.close()
    assert endpoint_of(two_sessions).wait_for_sessions("acme", 0, timeout=10)
    assert openssh(two_sessions, tmp_path, keys["acme"], "ls /imports\n").returncode == 0


@needs_openssh
def test_four_openssh_uploads_at_once_within_the_limit_all_land(
    tmp_path: Path, sim: Simulator, keys: dict[str, Path]
) -> None:
    settings = sftp_settings(tmp_path, sim, keys, "max_sessions = 4\n")
    (tmp_path / "config.json").write_bytes(CONFIG)
    with running_service(settings) as svc:
        made = openssh(
            svc,
            tmp_path,
            keys["acme"],
            f"mkdir /imports/custom_objects/pets\nput {tmp_path / 'config.json'} "
            "/imports/custom_objects/pets/config.json\n",
        )
        assert made.returncode == 0, made.stderr
        assert endpoint_of(svc).wait_for_sessions("acme", 0, timeout=10)
        for n in range(4):
            (tmp_path / f"up{n}.jsonl").write_bytes(b'{"id": %d}\n' % n * 10)

        def upload(n: int) -> subprocess.CompletedProcess[str]:
            return openssh(
                svc,
                tmp_path,
                keys["acme"],
                f"put {tmp_path / f'up{n}.jsonl'} /imports/custom_objects/pets/up{n}.jsonl\n",
            )

        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(upload, range(4)))
        assert [r.returncode for r in results] == [0, 0, 0, 0], [r.stderr for r in results]
        done = {svc.next_run().identity.name for _ in range(4)}
        assert done == {f"up{n}.jsonl" for n in range(4)}


class PublicKeyOnly(paramiko.Ed25519Key):
    """What someone who found a company's public key can do: offer it, and sign nonsense."""

    def sign_ssh_data(self, data: bytes, algorithm: str | None = None) -> paramiko.Message:
        signature = paramiko.Message()
        signature.add_string("ssh-ed25519")
        signature.add_string(b"\0" * 64)
        return signature


def public_only(key: Path) -> PublicKeyOnly:
    blob = base64.b64decode(Path(f"{key}.pub").read_text().split()[1])
    return PublicKeyOnly(data=blob)


def test_knowing_only_the_public_key_cannot_lock_a_company_out(
    two_sessions: Running, keys: dict[str, Path]
) -> None:
    """Before: each such attempt took one of the company's two session slots and kept it as
    long as the attacker kept the connection open."""
    endpoint = endpoint_of(two_sessions)
    attackers = []
    for _ in range(3):
        transport = paramiko.Transport(("127.0.0.1", endpoint.port))
        with pytest.raises(paramiko.AuthenticationException):
            transport.connect(endpoint.host_key, "acme", pkey=public_only(keys["acme"]))
        attackers.append(transport)  # held open
    try:
        clients = [Client(two_sessions, "acme", keys["acme"]) for _ in range(2)]
        for client in clients:
            assert client.sftp.listdir("/imports")
            client.close()
    finally:
        for transport in attackers:
            transport.close()


def test_connections_that_never_log_in_are_capped_per_address(
    tmp_path: Path, sim: Simulator, keys: dict[str, Path]
) -> None:
    settings = sftp_settings(tmp_path, sim, keys, "max_unauthenticated_per_address = 2\n")
    with running_service(settings) as svc:
        endpoint = endpoint_of(svc)
        silent = [socket.create_connection(("127.0.0.1", endpoint.port)) for _ in range(2)]
        try:
            for sock in silent:
                sock.settimeout(10)
                assert sock.recv(64).startswith(b"SSH-2.0-")  # being served
            extra = socket.create_connection(("127.0.0.1", endpoint.port))
            extra.settimeout(10)
            assert extra.recv(64) == b""  # closed at once: no SSH greeting
            extra.close()
        finally:
            for sock in silent:
                sock.close()
        deadline = time.monotonic() + 10  # the silent ones are gone: new ones are served
        while True:
            try:  # a refused probe is closed unread; a reset says the same as an EOF
                with socket.create_connection(("127.0.0.1", endpoint.port), timeout=10) as probe:
                    greeting = probe.recv(64)
            except ConnectionError:
                greeting = b""
            if greeting.startswith(b"SSH-2.0-"):
                break
            assert time.monotonic() < deadline, "slots of closed connections were not freed"
            time.sleep(0.05)
        while True:  # and a real client logs in (the probe's own slot may still be closing)
            try:
                Client(svc, "acme", keys["acme"]).close()
                break
            except paramiko.SSHException:
                assert time.monotonic() < deadline, "a client could not log in again"
                time.sleep(0.05)


def test_an_unauthenticated_connection_is_closed_after_the_login_grace(
    tmp_path: Path, sim: Simulator, keys: dict[str, Path]
) -> None:
    settings = sftp_settings(tmp_path, sim, keys, "login_grace_seconds = 0.5\n")
    with running_service(settings) as svc:
        endpoint = endpoint_of(svc)
        transport = paramiko.Transport(("127.0.0.1", endpoint.port))
        transport.start_client(timeout=10)  # key exchange done, never authenticates
        deadline = time.monotonic() + 10
        while transport.is_active():
            assert time.monotonic() < deadline, "the silent connection was kept"
            time.sleep(0.05)
        transport.close()


def test_guessing_at_one_company_is_slowed_but_the_company_still_logs_in(
    tmp_path: Path, sim: Simulator, keys: dict[str, Path]
) -> None:
    """Many addresses defeat a per-address ban; a per-name delay does not, and it never
    applies to a successful login."""
    settings = sftp_settings(
        tmp_path, sim, keys, "failures_before_delay = 2\nauth_failures_before_ban = 1000\n"
    )
    with running_service(settings) as svc:
        timings = []
        for _ in range(5):
            began = time.monotonic()
            with pytest.raises(paramiko.AuthenticationException):
                Client(svc, "acme", keys["stranger"])
            timings.append(time.monotonic() - began)
        began = time.monotonic()
        Client(svc, "acme", keys["acme"]).close()
        real_login = time.monotonic() - began
    assert max(timings[:2]) < 0.25  # the first two are free
    assert timings[2] >= 0.25 and timings[4] >= 1.0  # then 0.25 s, 0.5 s, 1 s, ...
    assert real_login < 0.25 + min(timings[:2]) * 2


def _failure_time(port: int, host_key: paramiko.PKey, user: str, password: str) -> float:
    transport = paramiko.Transport(("127.0.0.1", port))
    try:
        transport.start_client(timeout=10)
        began = time.perf_counter()
        with pytest.raises(paramiko.AuthenticationException):
            transport.auth_password(user, password)
        return time.perf_counter() - began
    finally:
        transport.close()


def test_a_failed_login_does_not_tell_a_company_from_a_stranger(
    tmp_path: Path, sim: Simulator, keys: dict[str, Path]
) -> None:
    """Before: a wrong password took 43 ms for a real company and 0.8 ms for an unknown name,
    and the methods offered differed."""
    hashed = hash_password("correct horse battery staple")
    settings = sftp_settings(
        tmp_path,
        sim,
        keys,
        "password_login = true\nfailures_before_delay = 1000\nauth_failures_before_ban = 1000\n",
    )
    settings.write_text(
        settings.read_text().replace(
            "[companies.acme]\n", f'[companies.acme]\nsftp_password_hash = "{hashed}"\n'
        )
    )
    with running_service(settings) as svc:
        endpoint = endpoint_of(svc)
        methods = {}
        for user in ("acme", "beta", "nobody-here"):
            transport = paramiko.Transport(("127.0.0.1", endpoint.port))
            try:
                transport.start_client(timeout=10)
                with pytest.raises(paramiko.BadAuthenticationType) as offered:
                    transport.auth_none(user)
                methods[user] = sorted(offered.value.allowed_types)
            finally:
                transport.close()
        real, unknown = [], []
        for _ in range(12):  # interleaved, so load on the machine hits both alike
            real.append(_failure_time(endpoint.port, endpoint.host_key, "acme", "wrong guess 1"))
            unknown.append(
                _failure_time(endpoint.port, endpoint.host_key, "nobody-here", "wrong guess 1")
            )
    assert methods["acme"] == methods["beta"] == methods["nobody-here"]
    ratio = statistics.median(real) / statistics.median(unknown)
    print(f"wrong password: company {statistics.median(real) * 1000:.1f} ms, stranger "
          f"{statistics.median(unknown) * 1000:.1f} ms (medians of 12)")  # fmt: skip
    assert 0.5 < ratio < 2.0, (statistics.median(real), statistics.median(unknown))
