"""SMTP delivery of queued messages, on its own thread, with backoff; never in ingestion's way.

A 4xx answer, a refused connection, a timeout or a rejected login keeps the message queued
and retried (the last two are fixed by an operator, not by giving up). A 5xx refusal of the
message or of every recipient moves it to ``failed/`` with the server's words in the log.
"""

from __future__ import annotations

import email
import smtplib
import ssl
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from email.message import EmailMessage
from email.policy import SMTP

import structlog

from ingestor.config import SecretSource
from ingestor.errors import ConfigError
from ingestor.notify.outbox import Outbox
from ingestor.toml_reader import knob, one_of, positive

log = structlog.get_logger("ingestor.notify")

SECURITY = ("starttls", "tls", "none")


@dataclass(frozen=True, slots=True)
class SmtpSettings:
    """The [smtp] table; ``password`` is read from its own keys (password_env, …)."""

    host: str = knob("", "the mail server", example="smtp.example.com")
    port: int = knob(587, "default 587 (starttls), 465 (tls)", check=positive)
    security: str = knob(
        "starttls", "starttls | tls (implicit) | none (loopback only)", check=one_of(SECURITY)
    )
    username: str = knob("", "needs one password source (below)", example="ingestor")
    password: SecretSource | None = None
    ca_file: str = knob("", "an extra CA bundle (an internal CA) trusted besides the system's")
    timeout: float = knob(30.0, "seconds", key="timeout_seconds", check=positive)
    retry_initial: float = knob(
        5.0, "delivery retries back off from this...", key="retry_initial_seconds", check=positive
    )
    retry_max: float = knob(
        300.0, "...up to this, for as long as it takes", key="retry_max_seconds", check=positive
    )


class DeliveryError(Exception):
    def __init__(self, message: str, permanent: bool) -> None:
        super().__init__(message)
        self.permanent = permanent


def _context(settings: SmtpSettings) -> ssl.SSLContext:
    context = ssl.create_default_context()
    if settings.ca_file:
        context.load_verify_locations(settings.ca_file)
    return context


def send(raw: bytes, settings: SmtpSettings, environ: Mapping[str, str]) -> None:
    """Deliver one stored message; DeliveryError says whether trying again can help."""
    message = email.message_from_bytes(raw, policy=SMTP)
    assert isinstance(message, EmailMessage)
    try:
        password = settings.password.load_text(environ) if settings.password else ""
    except ConfigError as exc:
        raise DeliveryError(f"SMTP password unavailable: {exc}", permanent=False) from None
    try:
        client: smtplib.SMTP
        if settings.security == "tls":
            client = smtplib.SMTP_SSL(
                settings.host, settings.port, timeout=settings.timeout, context=_context(settings)
            )
        else:
            client = smtplib.SMTP(settings.host, settings.port, timeout=settings.timeout)
        with client:
            if settings.security == "starttls":
                client.starttls(context=_context(settings))
            if settings.username:
                client.login(settings.username, password)
            client.send_message(message)
    except smtplib.SMTPRecipientsRefused as exc:
        codes = [code for code, _ in exc.recipients.values()]
        raise DeliveryError(
            f"every recipient was refused: {_describe(exc.recipients)}",
            permanent=all(code >= 500 for code in codes),
        ) from None
    except smtplib.SMTPAuthenticationError as exc:
        raise DeliveryError(f"SMTP login refused ({exc.smtp_code})", permanent=False) from None
    except smtplib.SMTPResponseException as exc:
        text = (
            exc.smtp_error.decode("utf-8", "replace")
            if isinstance(exc.smtp_error, bytes)
            else str(exc.smtp_error)
        )
        raise DeliveryError(
            f"SMTP server answered {exc.smtp_code} {text}", permanent=exc.smtp_code >= 500
        ) from None
    except (OSError, smtplib.SMTPException) as exc:
        raise DeliveryError(f"cannot reach {settings.host}:{settings.port}: {exc}", False) from None


def _describe(refused: Mapping[str, tuple[int, bytes]]) -> str:
    return "; ".join(
        f"{address}: {code} {text.decode('utf-8', 'replace')}"
        for address, (code, text) in refused.items()
    )


class Courier:
    """Delivers the outbox's queue in order; retries with backoff; survives restarts because
    the queue is the directory."""

    def __init__(self, outbox: Outbox, settings: SmtpSettings, environ: Mapping[str, str]) -> None:
        self._outbox = outbox
        self._settings = settings
        self._environ = environ
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="smtp-courier", daemon=True)
        self.delay = 0.0  # the current backoff, 0 when the server is reachable

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def deliver_pending(self) -> bool:
        """Try every queued message once, in order; False if one must wait for a retry."""
        for path in self._outbox.pending():
            if self._stop.is_set():
                return False
            try:
                send(path.read_bytes(), self._settings, self._environ)
            except DeliveryError as exc:
                if exc.permanent:
                    moved = self._outbox.mark_failed(path)
                    log.error("email_refused", message=moved.name, reason=str(exc))
                    continue
                log.warning("email_delayed", message=path.name, reason=str(exc))
                return False
            except FileNotFoundError:
                continue  # delivered by a resend meanwhile
            self._outbox.mark_sent(path)
            log.info("email_sent", message=path.name)
        return True

    def _run(self) -> None:
        settings = self._settings
        while not self._stop.is_set():
            self._wake.clear()
            if self.deliver_pending():
                self.delay = 0.0
                self._wake.wait(timeout=60.0)  # a new message wakes us sooner
            else:
                self.delay = min(settings.retry_max, max(settings.retry_initial, self.delay * 2))
                self._stop.wait(self.delay)
