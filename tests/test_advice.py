"""The advice in an e-mail is chosen by what ended the file (a stable code), never by the
words of its reason: those carry untrusted names."""

from __future__ import annotations

from typing import Any

from ingestor.errors import READ_FAILED, AuthError
from ingestor.notify.content import next_steps, outcome
from ingestor.reports import FileReport


def report(state: str, reason: str, code: str, file: str = "pets.csv") -> FileReport:
    fields: dict[str, Any] = dict.fromkeys(FileReport.__dataclass_fields__, 0)
    fields.update(
        company="acme", kind="custom_objects", folder="pets", path="", sha256="",
        data_source_id="", rejected_rows_file="", skipped_samples=(), ignored_files=(),
        records_per_second=None, state=state, reason=reason, reason_code=code, file=file,
    )  # fmt: skip
    return FileReport(**fields)


def test_a_file_whose_name_says_key_refused_gets_the_advice_for_what_happened() -> None:
    """Before: advice was chosen by matching the reason's text, so a file named like a key
    problem (or a config.json) got that advice whatever happened to it."""
    name = "Klaviyo refused the API key config.json.csv"
    unreadable = report("failed", f"cannot read {name}: Input/output error", READ_FAILED, name)
    steps = " ".join(next_steps(unreadable))
    assert "API key" not in steps.replace(name, "") and "config.json:" not in steps
    assert "stopped with its place kept" in steps
    assert outcome(unreadable).startswith("stopped after 0 imported")


def test_a_refused_key_is_advised_by_its_code() -> None:
    refused = report("failed", "anything at all", AuthError.code)
    assert outcome(refused).startswith("waiting: Klaviyo refused the API key")
    assert "ingestor operator has been told" in " ".join(next_steps(refused))
