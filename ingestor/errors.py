"""One exception hierarchy for everything ingestor raises on purpose.

Each message says what is wrong and, where it helps, what to do about it. Each class that
can end a file carries a stable ``code``: what is stored (ledger, report) and what chooses
the advice a person is given, so nothing is ever decided by matching message text.

    IngestorError
    ├── ConfigError, LedgerError ── StateUnwritable
    ├── LayoutError ("folder_config") ── UnsafeEntry ("unsafe_entry"), Unreadable (dropfile)
    ├── ParseError ("bad_file") ── ManifestMismatch ("manifest_mismatch"),
    │   FileChanged ("file_changed"), Interrupted
    └── ApiError ── AuthError ("key_refused"), NotFound ("data_source_missing"),
                    ApiUnreachable, RateLimited, Transient, PayloadTooLarge, Rejected,
                    SystemicRejection ("api_refused_all")
"""

from __future__ import annotations

import errno


class IngestorError(Exception):
    """Base of every error ingestor raises deliberately."""

    code = "error"  # stable: stored with a file that ends on it, and chooses the advice


class ConfigError(IngestorError):
    """Settings or command-line options are invalid."""


class LayoutError(IngestorError):
    """A path breaks the drop-tree rules, or an import folder's config.json is invalid."""

    code = "folder_config"


class ParseError(IngestorError):
    """A whole file cannot be parsed (e.g. a bad CSV header); single bad rows are Rejects."""

    code = "bad_file"


class ManifestMismatch(ParseError):
    """A data file does not match its completion manifest (rows or sha256): rejected before
    anything is sent."""

    code = "manifest_mismatch"


class LedgerError(IngestorError):
    """The ledger cannot be read or written."""


class StateUnwritable(LedgerError):
    """The state directory cannot be written (disk full, read-only, no permission).

    Progress could not be kept, so work waits (each file at its last checkpoint) until it
    can be; nothing is marked failed for it.
    """

    @classmethod
    def from_os_error(cls, path: object, exc: OSError) -> StateUnwritable:
        return cls(state_problem(f"writing {path}", exc.errno, exc.strerror or str(exc)))


_RESUMES = "work waits and resumes by itself from the last checkpoint once it can write"


def state_problem(doing: str, code: int | None, detail: str) -> str:
    """What is wrong with the state directory, in words an operator can act on."""
    if code in (errno.ENOSPC, errno.EDQUOT):
        return f"the state directory's disk is full ({doing}): free space there; {_RESUMES}"
    if code == errno.EROFS:
        return f"the state directory is read-only ({doing}): remount it read-write; {_RESUMES}"
    if code in (errno.EACCES, errno.EPERM):
        return (
            f"no permission to write in the state directory ({doing}): it must belong to "
            f"the service user; {_RESUMES}"
        )
    return f"cannot write the state directory ({doing}): {detail}; {_RESUMES}"


class FileChanged(IngestorError):
    """A file changed while it was being processed; its new version is processed afresh."""

    code = "file_changed"


class Interrupted(IngestorError):
    """Work stopped on request (signal, shutdown); progress up to the last checkpoint is kept."""


class ApiError(IngestorError):
    """The Klaviyo API answered with something other than success."""

    def __init__(self, message: str, status: int | None = None, detail: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.detail = detail


class AuthError(ApiError):
    """401/403: the key is wrong, revoked, or lacks the custom-objects:write scope."""

    code = "key_refused"


class NotFound(ApiError):
    """404 with Klaviyo's JSON:API error body: e.g. the data source named in config.json
    does not exist in the account."""

    code = "data_source_missing"


class ApiUnreachable(ApiError):
    """The answer did not come from the API (a 404 without a JSON:API error body: a wrong
    ``api.base_url``, or a proxy answering instead). The operator must act; the company's
    files wait with their place kept."""


class RateLimited(ApiError):
    """429: the account is over its rate limit; ``retry_after`` is the server's hint."""

    def __init__(self, message: str, retry_after: float | None) -> None:
        super().__init__(message, status=429)
        self.retry_after = retry_after


class Transient(ApiError):
    """5xx, timeouts, resets: worth retrying, never a reason to give up."""


class PayloadTooLarge(ApiError):
    """413: the body is over the server's limit; split it and retry."""


class Rejected(ApiError):
    """400/422: the API refuses the request's content.

    ``record_index`` is set when the error points at one record of the batch.
    """

    def __init__(
        self, message: str, status: int, detail: str = "", record_index: int | None = None
    ) -> None:
        super().__init__(message, status=status, detail=detail)
        self.record_index = record_index


class SystemicRejection(ApiError):
    """Every record of a batch was refused: the cause is the request, not the data.

    The file stops (its place kept) instead of skipping every record as bad.
    """

    code = "api_refused_all"


# Codes for ends that are not an exception of their own.
STRAY_FILE = "stray_file"  # a file directly under imports/<kind>/
READ_FAILED = "read_failed"  # an I/O error while reading the file
OVER_BUDGET = "over_budget"  # quarantined: more rows would be skipped than the budget allows
