"""The OpenSSH alternative of deploy/README.md, exactly as documented: a real sshd on a
loopback port (internal-sftp, ChrootDirectory, one system user per company), a real upload
with OpenSSH's sftp, and the service picking the file up and able to clean it."""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ingestor.ledger import FileState
from ingestor.simulator import Simulator
from tests.conftest import DS_ID, KEY, keypair
from tests.service_helpers import jsonl, running_service, sftp_batch, write_settings

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
COMPANY = "ingsftpacme"  # the company's name, its directory and its system user
GROUP = "ingestor-sftp-test"  # the companies' group (sshd's Match Group)
SERVICE = "ingsftpsvc"  # the service's user; the upload folders' group is its group

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not os.path.exists(SSHD) or shutil.which("useradd") is None
    or shutil.which("sftp") is None,
    reason="needs root, OpenSSH's sshd and sftp, and useradd (apt-get install openssh-server)",
)  # fmt: skip


def ensure_user(name: str, group: str) -> pwd.struct_passwd:
    with contextlib.suppress(KeyError):
        return pwd.getpwnam(name)
    subprocess.run(
        # -p '*': no password, but not locked (sshd without PAM refuses a locked account).
        [
            "useradd",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            "-g",
            group,
            "-p",
            "*",
            name,
        ],
        check=True,
    )
    return pwd.getpwnam(name)


def ensure_group(name: str) -> grp.struct_group:
    with contextlib.suppress(KeyError):
        return grp.getgrnam(name)
    subprocess.run(["groupadd", name], check=True)
    return grp.getgrnam(name)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def base() -> Iterator[Path]:
    """Every component of a chroot path must be root-owned and not writable by others, so
    not under /tmp: a folder under /srv, removed afterwards."""
    Path("/srv").mkdir(exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix="ingestor-sshd-", dir="/srv"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def as_user(uid: int, gid: int, action: str, path: Path) -> bool:
    """Whether ``uid`` (in group ``gid``) can ``action`` ('unlink') ``path``: a forked child
    drops root and tries."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.setgroups([gid])
            os.setgid(gid)
            os.setuid(uid)
            if action == "unlink":
                path.unlink()
            code = 0
        except OSError:
            code = 3
        finally:
            os._exit(code)
    _pid, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) == 0


def test_an_openssh_chroot_upload_is_ingested_and_the_service_can_clean_it(
    base: Path, sim: Simulator, tmp_path: Path
) -> None:
    service_group = ensure_group(SERVICE)
    companies = ensure_group(GROUP)
    service_user = ensure_user(SERVICE, SERVICE)
    company_user = ensure_user(COMPANY, GROUP)
    # The layout deploy/README.md documents, with these names.
    drop = base / "drop"
    drop.mkdir(mode=0o755)  # root-owned: part of every company's chroot path
    chroot = drop / COMPANY
    chroot.mkdir(mode=0o755)  # the chroot itself: root-owned
    for folder in (chroot / "imports", chroot / "imports" / "custom_objects"):
        folder.mkdir()
        os.chown(folder, company_user.pw_uid, service_group.gr_gid)
        folder.chmod(0o2770)
    keys = base / "authorized_keys"
    keys.mkdir(mode=0o755)
    client_key = keypair(tmp_path, "company")
    shutil.copy(f"{client_key}.pub", keys / COMPANY)
    host_key = keypair(base, "host_key")
    port = free_port()
    config = base / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {host_key}\nPidFile none\n"
        "UsePAM no\nStrictModes no\nPasswordAuthentication no\n"
        f"KbdInteractiveAuthentication no\nAuthorizedKeysFile {keys}/%u\n"
        "Subsystem sftp internal-sftp\n"
        f"Match Group {companies.gr_name}\n"
        f"    ChrootDirectory {drop}/%u\n"
        "    ForceCommand internal-sftp -u 0007\n"
        "    AuthenticationMethods publickey\n"
        "    AllowTcpForwarding no\n    AllowAgentForwarding no\n"
        "    X11Forwarding no\n    PermitTTY no\n"
    )
    Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege separation directory
    check = subprocess.run([SSHD, "-t", "-f", str(config)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    sshd = subprocess.Popen(
        [SSHD, "-D", "-e", "-f", str(config)],
        stderr=(tmp_path / "sshd.log").open("wb"),
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port)):
                break
            assert time.monotonic() < deadline, (tmp_path / "sshd.log").read_text()
            time.sleep(0.05)
        settings = write_settings(tmp_path / "s.toml", drop, tmp_path / "state", sim,
                                  companies={COMPANY: "ACME_KEY"})  # fmt: skip
        sim.state.add_account(KEY, COMPANY)
        sim.add_data_source(COMPANY, DS_ID)
        (tmp_path / "config.json").write_text(f'{{"data_source_id": "{DS_ID}"}}')
        (tmp_path / "pets.jsonl").write_bytes(jsonl(0, 25))
        kind, blob = Path(f"{host_key}.pub").read_text().split()[:2]
        (tmp_path / "known_hosts").write_text(f"[127.0.0.1]:{port} {kind} {blob}\n")
        commands = (
            "mkdir /imports/custom_objects/pets\ncd /imports/custom_objects/pets\n"
            f"put {tmp_path / 'config.json'} config.json\n"
            f"put {tmp_path / 'pets.jsonl'} upload.tmp\n"
            "rename upload.tmp pets.jsonl\n"
        )
        with running_service(settings) as svc:
            known = tmp_path / "known_hosts"
            upload = sftp_batch(port, known, client_key, commands, COMPANY, tmp_path)
            assert upload.returncode == 0, upload.stderr + (tmp_path / "sshd.log").read_text()
            run = svc.run_for("pets.jsonl")
        assert run.state is FileState.DONE and run.counts.sent == 25
        assert len(sim.records(COMPANY)) == 25
        pets = chroot / "imports" / "custom_objects" / "pets"
        info = pets.stat()
        assert info.st_uid == company_user.pw_uid and info.st_gid == service_group.gr_gid
        assert info.st_mode & 0o070 == 0o070  # the service's group may delete in it
        # Retention deletes as the service user: it must be allowed to.
        assert as_user(service_user.pw_uid, service_group.gr_gid, "unlink", pets / "pets.jsonl")
    finally:
        sshd.terminate()
        sshd.wait(timeout=10)
