"""Compose one RFC 5322 message (text + HTML alternatives, the rejected rows attached) from
file reports. Header values are built only through ``email``'s policy, from flattened text, so
a file name with CR/LF, quotes or non-ASCII can neither inject headers nor break encoding."""

from __future__ import annotations

import os
import socket
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import formatdate, make_msgid
from pathlib import Path

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from ingestor.notify.content import file_facts, one_line, subject
from ingestor.reports import FileReport, safe_name

_TEMPLATES = Environment(
    loader=PackageLoader("ingestor.notify", "templates"),
    autoescape=select_autoescape(enabled_extensions=("html",), default_for_string=False),
    undefined=StrictUndefined,
    keep_trailing_newline=True,
)
DEFAULT_ATTACH_MAX = 5 * 1024 * 1024


def render(reports: list[FileReport], attachments: dict[str, str] | None = None) -> tuple[str, str]:
    """The plain-text and HTML bodies: the same facts, twice."""
    context = {
        "files": [file_facts(r) for r in reports],
        "attachments": attachments or {},
        "subject": subject(reports),
        "host": socket.gethostname(),
    }
    text = _TEMPLATES.get_template("message.txt").render(context)
    html = _TEMPLATES.get_template("message.html").render(context)
    return text, html


def _attachments(
    reports: list[FileReport], limit: int
) -> tuple[dict[str, str], list[tuple[Path, str]]]:
    """Which rejected-rows files fit under ``limit`` (together); how the body refers to each."""
    notes: dict[str, str] = {}
    chosen: list[tuple[Path, str]] = []
    budget = limit
    for report in reports:
        path = report.rejected_rows_file
        if not path:
            continue
        try:
            size = os.path.getsize(path)
        except OSError:
            notes[path] = f"{path} (no longer on the server)"
            continue
        name = f"{safe_name(Path(report.file).stem)}.rejected.jsonl"
        if size <= budget:
            budget -= size
            chosen.append((Path(path), name))
            notes[path] = f"attached as {name}"
        else:
            notes[path] = f"{path} on the server ({size:,} bytes, too large to attach)"
    return notes, chosen


def compose(
    reports: list[FileReport],
    *,
    sender: str,
    recipients: tuple[str, ...],
    attach_max_bytes: int = DEFAULT_ATTACH_MAX,
) -> EmailMessage:
    """One message for one file, or for several (a digest of a folder run)."""
    notes, chosen = _attachments(reports, attach_max_bytes)
    text, html = render(reports, notes)
    message = EmailMessage(policy=SMTP)
    message["Subject"] = subject(reports)
    message["From"] = sender
    message["To"] = ", ".join(recipients)
    message["Date"] = formatdate(usegmt=True)
    message["Message-ID"] = make_msgid(domain=one_line(socket.getfqdn(), 200) or "localhost")
    message["X-Ingestor-Company"] = one_line(reports[0].company, 100)
    message.set_content(text)
    message.add_alternative(html, subtype="html")
    for path, name in chosen:
        message.add_attachment(
            path.read_bytes(), maintype="application", subtype="jsonl", filename=name
        )
    return message
