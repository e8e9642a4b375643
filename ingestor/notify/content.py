"""What a completion message says, derived from one or more file reports.

Names in a report come from untrusted uploads: everything here is plain data; escaping is the
templates' job (HTML autoescaped) and header safety is ``message``'s.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

from ingestor.dropfile import Unreadable
from ingestor.errors import (
    STRAY_FILE,
    AuthError,
    FileChanged,
    LayoutError,
    ManifestMismatch,
    NotFound,
)
from ingestor.kinds import EVENTS, PROFILES
from ingestor.reports import FileReport, folder_label

_CONTROL = re.compile(r"[\x00-\x1f\x7f\u2028\u2029]+")
EXCERPT_CHARS = 120


def one_line(text: str, limit: int = 200) -> str:
    """Control characters (CR, LF, tabs…) become one space; long text is cut with an ellipsis."""
    flat = _CONTROL.sub(" ", text).strip()
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _when(timestamp: float | None) -> str:
    if not timestamp:
        return "-"
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _size(size: int) -> str:
    value = float(size)
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{size:,} bytes" if unit == "bytes" else f"{value:,.1f} {unit}"
        value /= 1024
    return f"{size:,} bytes"


def _code(report: FileReport) -> str:
    """What ended the file, as a stable code (``ingestor.errors``); "" when it was done.
    Chooses every piece of advice: nothing here reads the reason's words."""
    return report.reason_code


def outcome(report: FileReport) -> str:
    """The result at a glance, as the subject line states it."""
    sent, skipped = report.records_sent, report.records_skipped
    state, code = report.state, _code(report)
    if state == "done":
        return f"{sent:,} imported, {skipped:,} skipped"
    if code == STRAY_FILE:
        return "not processed: it must be inside a named folder that has a config.json"
    if state == "quarantined":
        return (
            f"quarantined, nothing imported: {skipped:,} of {report.records_read:,} rows "
            "would be skipped"
        )
    if state == "rejected":
        return f"not processed: {one_line(report.reason, 90)}"
    if code == AuthError.code:
        return (
            f"waiting: Klaviyo refused the API key, the operator must renew it ({sent:,} imported)"
        )
    return f"stopped after {sent:,} imported: {one_line(report.reason, 80)}"


def _done_steps(report: FileReport) -> list[str]:
    twice = report.records_maybe_resent
    steps = (
        [
            f"{twice:,} records may have been sent twice: a request whose answer was lost (a "
            "timeout, a dropped connection, or the service stopping) was sent again. If "
            "your data source does not de-duplicate by id, check those records."
        ]
        if twice
        else []
    )
    if not report.records_skipped:
        return (
            ["Every record was imported.", *steps]
            if steps
            else ["Nothing to do: every record was imported."]
        )
    return [
        *steps,
        "Correct the skipped rows listed below (line numbers refer to the file as "
        "uploaded; the attached or referenced rejected-rows file has all of them).",
        "Upload only the corrected rows, in a new file in the same folder: rows already "
        "imported need not be sent again.",
    ]


def next_steps(report: FileReport) -> list[str]:
    """What the reader should do now, most specific first, chosen by the reason's code."""
    state, reason, code = report.state, report.reason, _code(report)
    sentence = reason[0].upper() + reason[1:] + "." if reason else ""
    if state == "done":
        return _done_steps(report)
    if code == STRAY_FILE:
        return [
            sentence,
            "Files are read only inside a named folder that has a config.json; this one was "
            "not read and nothing was imported.",
        ]
    if code == AuthError.code:
        return [
            "Nothing for you to change in the file: Klaviyo refused the API key the ingestor "
            "service uses for your account. The ingestor operator has been told and must "
            "renew the key (it needs the custom-objects:write scope).",
            "The file then resumes where it stopped; nothing already imported is sent again.",
        ]
    if code == LayoutError.code:
        return [
            f"Fix the folder's config.json: {reason}",
            "Save it in place; the folder's waiting files are processed as soon as it is "
            "valid. (Klaviyo's own import needs a re-upload under a new name; ingestor does "
            "not.)",
        ]
    if code == NotFound.code:
        return [
            sentence,
            "Then save config.json again (even unchanged) to have the folder retried.",
        ]
    if state == "quarantined":
        name = report.file
        return [
            f"Nothing was imported: {skipped_share(report)} of its rows would have been "
            "skipped, more than the folder's error budget allows. The first of them are "
            "listed below.",
            f"To import its {report.records_read - report.records_skipped:,} good rows as "
            f"they are, put a file named {name}.approve beside it (any content; the "
            f"operator can also run `ingestor approve {report.run_id}`). To import them all, "
            "correct the rows and upload the file again (the same name is fine).",
        ]
    if code == ManifestMismatch.code:
        return [
            sentence,
            "Nothing was imported. Upload the complete file again, then its manifest (the "
            "same names are fine); it is imported once the two agree.",
        ]
    if code == FileChanged.code:
        return [
            "The file changed while it was being imported; its new version is imported once "
            "it holds still. Upload under a temporary name and rename it when complete.",
        ]
    if code == Unreadable.code:
        return [
            "Nothing for you to change in the file: the ingestor service may not read it. The "
            "operator has been told; the file is read as soon as its permissions allow.",
        ]
    if state == "rejected":
        return [f"Correct the file and upload it again (the same name is fine): {reason}"]
    return [
        f"The file stopped with its place kept: {reason}",
        "It is retried at the next rescan or restart, from where it stopped.",
    ]


@dataclass(frozen=True, slots=True)
class SkippedRow:
    line: int
    reason: str
    excerpt: str


@dataclass(frozen=True, slots=True)
class FileFacts:
    """One file's outcome, ready for the templates."""

    company: str
    folder: str
    file: str
    state: str
    outcome: str
    facts: list[tuple[str, str]]
    skipped: list[SkippedRow]
    skipped_total: int
    next_steps: list[str]
    rejected_rows_file: str
    ignored_files: list[str]


def read_as_line(read_as: dict[str, str]) -> str:
    """``CSV, windows-1252, semicolon-separated, CRLF line ends, header row, byte-order mark``"""
    parts = [read_as.get("format", "?"), read_as.get("encoding", "?")]
    if "compression" in read_as:
        parts.insert(1, f"{read_as['compression']}-compressed")
    if "delimiter" in read_as:
        parts.append(f"{read_as['delimiter']}-separated")
    parts.append(f"{read_as.get('line_ends', '?')} line ends")
    if "header" in read_as:
        parts.append("header row")
    if read_as.get("byte_order_mark", "none") != "none":
        parts.append("byte-order mark")
    return ", ".join(parts)


# What a report's data_source_id names, by kind (custom objects: the data source).
_TARGET_LABELS = {EVENTS.folder: "Metric", PROFILES.folder: "List"}


def file_facts(report: FileReport) -> FileFacts:
    rate = report.records_per_second
    facts = [
        ("Company", report.company),
        ("Folder", folder_label(report.folder, report.kind)),
        ("File", f"{report.file} ({_size(report.size)})"),
        (_TARGET_LABELS.get(report.kind, "Data source"), report.data_source_id or "-"),
        ("Outcome", report.state),
        ("Started", _when(report.started_at)),
        ("Finished", _when(report.finished_at)),
        ("Duration", f"{report.duration_seconds:,.1f} s"),
        ("Records read", f"{report.records_read:,}"),
        ("Records sent", f"{report.records_sent:,}"),
        ("Records skipped", f"{report.records_skipped:,}"),
        ("Batches", f"{report.batches:,}"),
        ("Retries", f"{report.retries:,}"),
        ("May have been sent twice", f"{report.records_maybe_resent:,}"),
        ("Waited for rate limits", f"{report.throttled_seconds:,.1f} s"),
        ("Records/s", f"{rate:,.0f}" if rate else "-"),
    ]
    if report.read_as:
        facts.append(("Read as", read_as_line(report.read_as)))
    if report.reason:
        facts.append(("Reason", report.reason))
    skipped = [
        SkippedRow(row["line"], row["reason"], one_line(row["raw"], EXCERPT_CHARS))
        for row in report.skipped_samples
    ]
    return FileFacts(
        company=report.company,
        folder=report.folder,
        file=report.file,
        state=report.state,
        outcome=outcome(report),
        facts=facts,
        skipped=skipped,
        skipped_total=report.records_skipped,
        next_steps=next_steps(report),
        rejected_rows_file=report.rejected_rows_file,
        ignored_files=list(report.ignored_files),
    )


def skipped_share(report: FileReport) -> str:
    """``900 (90.0%)``: the rows skipped, and their share of those read."""
    read, skipped = report.records_read, report.records_skipped
    return f"{skipped:,} ({skipped * 100 / read:.1f}%)" if read else f"{skipped:,}"


def subject(reports: list[FileReport]) -> str:
    """``[ingestor] acme / pets / pets.csv: 19,998 imported, 2 skipped``, or for a digest
    ``[ingestor] acme / pets: 3 files, 40,000 imported, 2 skipped, 1 not finished``."""
    first = reports[0]
    folder = folder_label(first.folder, first.kind)
    where = f"{first.company} / {folder}"
    if len(reports) == 1:
        return one_line(f"[ingestor] {where} / {first.file}: {outcome(first)}", 250)
    sent = sum(r.records_sent for r in reports)
    skipped = sum(r.records_skipped for r in reports)
    unfinished = sum(1 for r in reports if r.state != "done")
    text = f"[ingestor] {where}: {len(reports)} files, {sent:,} imported, {skipped:,} skipped"
    if unfinished:
        text += f", {unfinished} not finished"
    return one_line(text, 250)
