"""structlog set-up: JSON lines for services, readable console output interactively.

A redaction processor masks every configured secret wherever it appears in an event, as a
last line of defence; the code itself never logs a key.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, MutableMapping
from typing import Any, Protocol, TextIO, cast

REDACTED = "***"
LOG_FORMATS = ("auto", "json", "console")
LOG_LEVELS = ("debug", "info", "warning", "error")
# A "secret" shorter than this cannot be a real API key or password, and masking it would
# mangle ordinary words in every line ("exist" → "e***ist" for a one-letter key).
MIN_SECRET_LENGTH = 8


class Redactor:
    """Replace each secret with *** in every string of an event dict."""

    def __init__(self, secrets: Iterable[str]) -> None:
        self._secrets = tuple(s for s in secrets if len(s) >= MIN_SECRET_LENGTH)

    def __call__(
        self, _logger: Any, _name: str, event: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        if self._secrets:
            for key, value in event.items():
                text = value if isinstance(value, str) else None
                if text is None and isinstance(value, BaseException):
                    text = str(value)
                if text is not None:
                    for secret in self._secrets:
                        text = text.replace(secret, REDACTED)
                    event[key] = text
        return event


class Stream(Protocol):
    """Where log lines go: a text file, or anything that writes like one."""

    def write(self, text: str, /) -> int: ...
    def flush(self) -> None: ...
    def isatty(self) -> bool: ...


def configure_logging(
    fmt: str = "auto",
    level: str = "info",
    secrets: Iterable[str] = (),
    stream: Stream | None = None,
) -> None:
    """``fmt`` is 'json', 'console' or 'auto' (console on a terminal, JSON otherwise)."""
    import structlog  # here, not at the top: a command that never logs never loads it

    out = stream or sys.stderr
    use_json = fmt == "json" or (fmt == "auto" and not out.isatty())
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(colors=out.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            Redactor(secrets),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(cast(TextIO, out)),
        cache_logger_on_first_use=False,
    )
