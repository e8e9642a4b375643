"""Completion e-mails, received by a real SMTP server on loopback (aiosmtpd)."""

from __future__ import annotations

import email
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from email.message import EmailMessage
from email.policy import default
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from ingestor.ledger import FileState
from ingestor.notify.outbox import Outbox
from ingestor.notify.smtp import Courier, SmtpSettings
from ingestor.simulator import Simulator
from tests.conftest import KEY, make_folder
from tests.service_helpers import SMTP_PASSWORD, running_service, write_settings

SMTP_USER = "ingestor"
TO = "data-team@acme.example"


class Sink:
    """An aiosmtpd handler that keeps what it receives and can refuse recipients."""

    def __init__(self) -> None:
        self.messages: list[EmailMessage] = []
        self.envelopes: list[tuple[str, list[str]]] = []
        self.refuse: set[str] = set()
        self._arrived = threading.Condition()

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address in self.refuse:
            return "550 5.1.1 no such user here"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        message = email.message_from_bytes(envelope.original_content, policy=default)
        with self._arrived:
            self.messages.append(message)  # type: ignore[arg-type]
            self.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos)))
            self._arrived.notify_all()
        return "250 Message accepted"

    def wait(self, count: int, timeout: float = 20.0) -> list[EmailMessage]:
        with self._arrived:
            assert self._arrived.wait_for(lambda: len(self.messages) >= count, timeout), (
                f"expected {count} messages, got {len(self.messages)}"
            )
            return list(self.messages)


def authenticate(server, session, envelope, mechanism, auth_data) -> AuthResult:
    ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (
        SMTP_USER.encode(),
        SMTP_PASSWORD.encode(),
    )
    return AuthResult(success=ok)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def tls(tmp_path: Path) -> tuple[ssl.SSLContext, Path]:
    """A server TLS context with a certificate from a throwaway CA, and that CA's PEM."""
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    return context, ca_file


@pytest.fixture
def starttls_server(tls: tuple[ssl.SSLContext, Path]) -> Iterator[tuple[Sink, int]]:
    sink = Sink()
    controller = Controller(
        sink,
        hostname="127.0.0.1",
        port=free_port(),
        tls_context=tls[0],
        require_starttls=True,
        authenticator=authenticate,
        auth_required=True,
        auth_require_tls=True,
    )
    controller.start()
    yield sink, controller.port
    controller.stop()


def smtp_table(port: int, ca_file: Path | None = None, security: str = "starttls") -> str:
    lines = [
        "[smtp]",
        'host = "127.0.0.1"',
        f"port = {port}",
        f'security = "{security}"',
        "retry_initial_seconds = 0.2",
        "retry_max_seconds = 0.5",
        "timeout_seconds = 5",
    ]
    if ca_file:
        lines += [f'ca_file = "{ca_file}"', f'username = "{SMTP_USER}"']
        lines += ['password_env = "SMTP_PASSWORD"']
    return "\n".join(lines) + '\n[notify]\nfrom = "Ingestor <ingestor@ops.example>"\n'


def plain_smtp_setup(tmp_path: Path, sim: Simulator, port: int) -> tuple[Path, Path, Path]:
    """A pets folder, the state dir, and settings sending to a plain SMTP server on ``port``."""
    drop, state = tmp_path / "drop", tmp_path / "state"
    folder = make_folder(drop)
    settings = write_settings(
        tmp_path / "s.toml",
        drop,
        state,
        sim,
        company_lines=f'recipients = ["{TO}"]',
        extra=smtp_table(port, security="none"),
    )
    return folder, state, settings


def bodies(message: EmailMessage) -> tuple[str, str]:
    text = message.get_body(("plain",))
    html = message.get_body(("html",))
    assert text is not None and html is not None
    return text.get_content(), html.get_content()


def jsonl(count: int, bad_lines: dict[int, bytes] | None = None) -> bytes:
    lines = [b'{"id": %d}\n' % i for i in range(count)]
    for index, raw in (bad_lines or {}).items():
        lines[index] = raw
    return b"".join(lines)


def test_a_finished_file_is_emailed_over_starttls_with_auth(
    tmp_path: Path, sim: Simulator, starttls_server: tuple[Sink, int], tls
) -> None:
    sink, port = starttls_server
    drop = tmp_path / "drop"
    folder = make_folder(drop)
    (folder / "notes.txt").write_text("not data")
    settings = write_settings(
        tmp_path / "s.toml",
        drop,
        tmp_path / "state",
        sim,
        company_lines=f'recipients = ["{TO}"]',
        extra=smtp_table(port, tls[1]),
    )
    with running_service(settings) as svc:
        (folder / "pet_records.jsonl").write_bytes(
            jsonl(1000, {17: b"{not json\n", 41: b"[1, 2]\n"})
        )
        svc.run_for("pet_records.jsonl")
        (message,) = sink.wait(1)
    assert (
        message["Subject"] == "[ingestor] acme / pets / pet_records.jsonl: 998 imported, 2 skipped"
    )
    assert message["From"] == "Ingestor <ingestor@ops.example>"
    assert message["To"] == TO
    assert sink.envelopes == [("ingestor@ops.example", [TO])]
    assert message.get_content_type() == "multipart/mixed"
    text, html = bodies(message)
    assert "line 18: invalid JSON" in text and "line 42: line is an array" in text
    assert ">18</td>" in html and ">42</td>" in html
    for body in (text, html):
        assert "998" in body and "line is an array, not a JSON object" in body
        assert "notes.txt" in body  # ignored files are listed
        assert "01KTMWCZ8ZMNZS0HG5HQNX0H6E" in body
    (attachment,) = list(message.iter_attachments())
    assert attachment.get_filename() == "pet_records.rejected.jsonl"
    assert len(attachment.get_content().splitlines()) == 2
    raw = message.as_string()
    assert SMTP_PASSWORD not in raw and KEY not in raw


def test_a_hostile_file_name_cannot_inject_headers_or_markup(
    tmp_path: Path, sim: Simulator
) -> None:
    drop = tmp_path / "drop"
    folder = make_folder(drop)
    name = 'pets\r\nBcc: victim@evil.example\r\n<img src=x onerror="alert(1)"> ünïcødé.jsonl'
    settings = write_settings(
        tmp_path / "s.toml", drop, tmp_path / "state", sim, company_lines=f'recipients = ["{TO}"]'
    )
    with running_service(settings) as svc:
        (folder / name).write_bytes(jsonl(3, {1: b"<b>bold</b>\n"}))
        svc.run_for(name)
    (eml,) = (tmp_path / "state" / "outbox").glob("*.eml")
    message = email.message_from_bytes(eml.read_bytes(), policy=default)
    assert message["Bcc"] is None and "victim@evil.example" not in message["To"]
    assert message["To"] == TO
    subject = message["Subject"]
    assert "\n" not in subject and "\r" not in subject
    assert 'pets Bcc: victim@evil.example <img src=x onerror="alert(1)"> ünïcødé.jsonl' in subject
    text, html = bodies(message)
    assert "<img" not in html and "&lt;img src=x onerror=&#34;alert(1)&#34;&gt;" in html
    assert "<b>bold</b>" not in html and "&lt;b&gt;bold&lt;/b&gt;" in html
    assert "ünïcødé" in html and "ünïcødé" in text
    assert all(line.isascii() for line in eml.read_bytes().decode("ascii").splitlines())


def test_smtp_down_queues_then_delivers_exactly_once_across_restarts(
    tmp_path: Path, sim: Simulator
) -> None:
    port = free_port()  # nothing listens here yet
    folder, state, settings = plain_smtp_setup(tmp_path, sim, port)
    with running_service(settings) as svc:
        (folder / "pets.jsonl").write_bytes(jsonl(10))
        assert svc.run_for("pets.jsonl").state is FileState.DONE
        assert len(list((state / "outbox" / "pending").glob("*.eml"))) == 1
    assert len(list((state / "outbox" / "pending").glob("*.eml"))) == 1  # survived the stop

    sink = Sink()
    controller = Controller(sink, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        with running_service(settings):
            (message,) = sink.wait(1)
        assert "10 imported" in message["Subject"]
        assert list((state / "outbox" / "pending").glob("*.eml")) == []
        assert len(list((state / "outbox" / "sent").glob("*.eml"))) == 1
        with running_service(settings) as svc:  # a third start sends nothing again
            (folder / "more.jsonl").write_bytes(jsonl(2))
            svc.run_for("more.jsonl")
            messages = sink.wait(2)
        assert [m["Subject"].rsplit(": ", 1)[0] for m in messages] == [
            "[ingestor] acme / pets / pets.jsonl",
            "[ingestor] acme / pets / more.jsonl",
        ]
    finally:
        controller.stop()


def test_a_refused_recipient_moves_the_message_to_failed(tmp_path: Path, sim: Simulator) -> None:
    sink = Sink()
    sink.refuse.add(TO)
    controller = Controller(sink, hostname="127.0.0.1", port=free_port())
    controller.start()
    folder, state, settings = plain_smtp_setup(tmp_path, sim, controller.port)
    try:
        with running_service(settings) as svc:
            (folder / "pets.jsonl").write_bytes(jsonl(1))
            svc.run_for("pets.jsonl")
            (folder / "second.jsonl").write_bytes(jsonl(1))  # the queue keeps moving
            svc.run_for("second.jsonl")
            svc.service.request_stop()
    finally:
        controller.stop()
    assert sink.messages == []
    assert len(list((state / "outbox" / "failed").glob("*.eml"))) >= 1


def test_digest_mode_sends_one_message_per_folder_run(tmp_path: Path, sim: Simulator) -> None:
    drop, state = tmp_path / "drop", tmp_path / "state"
    folder = make_folder(drop)
    for index in range(3):
        (folder / f"part{index}.jsonl").write_bytes(jsonl(5 + index))
    settings = write_settings(
        tmp_path / "s.toml",
        drop,
        state,
        sim,
        company_lines=f'recipients = ["{TO}"]\ndigest = true',
    )
    with running_service(settings) as svc:
        for _ in range(3):
            svc.next_run()
    (eml,) = (state / "outbox").glob("*.eml")
    message = email.message_from_bytes(eml.read_bytes(), policy=default)
    assert message["Subject"] == "[ingestor] acme / pets: 3 files, 18 imported, 0 skipped"
    text, _ = bodies(message)
    assert all(f"part{index}.jsonl" in text for index in range(3))


def test_report_and_resend_from_the_command_line(tmp_path: Path, sim: Simulator) -> None:
    drop, state = tmp_path / "drop", tmp_path / "state"
    folder = make_folder(drop)
    settings = write_settings(
        tmp_path / "s.toml", drop, state, sim, company_lines=f'recipients = ["{TO}"]'
    )
    with running_service(settings) as svc:
        (folder / "pets.jsonl").write_bytes(jsonl(4, {2: b"oops\n"}))
        run = svc.run_for("pets.jsonl")

    def cli(*args: str) -> Any:
        return subprocess.run(
            [sys.executable, "-m", "ingestor.cli", *args], capture_output=True, text=True
        )

    shown = cli("report", str(run.id), "--config", str(settings))
    assert shown.returncode == 0, shown.stderr
    assert "3 imported, 1 skipped" in shown.stdout and "line 3" in shown.stdout
    by_path = cli("report", str(folder / "pets.jsonl"), "--state-dir", str(state), "--json")
    assert '"records_skipped": 1' in by_path.stdout
    resent = cli("notify", "--resend", str(run.id), "--config", str(settings))
    assert resent.returncode == 0, resent.stderr
    assert len(list((state / "outbox").glob("*.eml"))) == 2
    missing = cli("report", "999", "--config", str(settings))
    assert missing.returncode == 2 and "no run 999" in missing.stderr


def test_implicit_tls_delivery_verifies_the_server_certificate(tmp_path: Path, tls) -> None:
    sink = Sink()
    controller = Controller(sink, hostname="127.0.0.1", port=free_port(), ssl_context=tls[0])
    controller.start()
    try:
        outbox = Outbox(tmp_path / "outbox", queued=True)
        message = EmailMessage()
        message["From"], message["To"], message["Subject"] = "a@x.example", TO, "tls"
        message.set_content("hello")
        outbox.put(message, "tls")
        trusting = SmtpSettings("127.0.0.1", controller.port, "tls", ca_file=str(tls[1]))
        untrusting = SmtpSettings("127.0.0.1", controller.port, "tls")
        assert Courier(outbox, untrusting, {}).deliver_pending() is False  # unknown CA: kept
        assert len(outbox.pending()) == 1 and sink.messages == []
        assert Courier(outbox, trusting, {}).deliver_pending() is True
        assert sink.wait(1)[0]["Subject"] == "tls"
        assert outbox.pending() == [] and len(list((tmp_path / "outbox" / "sent").iterdir())) == 1
    finally:
        controller.stop()
