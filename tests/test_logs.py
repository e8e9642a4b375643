"""Log lines: secrets masked wherever they appear, and nothing else touched."""

from __future__ import annotations

from ingestor.logs import Redactor


def test_a_key_is_masked_in_every_string_of_an_event() -> None:
    redact = Redactor(["pk_test_secret_0123456789"])
    event = redact(None, "info", {"event": "x", "reason": "sent pk_test_secret_0123456789 twice"})
    assert event["reason"] == "sent *** twice"


def test_a_very_short_secret_does_not_mangle_ordinary_words() -> None:
    """Before: a one-letter "key" turned 'does not exist' into 'does not ***xist'."""
    redact = Redactor(["e", "pk_test_secret_0123456789"])
    event = redact(None, "info", {"event": "folder_not_processed", "reason": "does not exist"})
    assert event["reason"] == "does not exist"
