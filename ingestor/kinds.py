"""Import kinds: what differs between `custom_objects/`, `events/` and `profiles/`.

A kind names its drop folder, its endpoint, its size limits and how records are wrapped
into a request body. Parsers, batcher, sender, ledger and reports are shared by all kinds.
"""

from __future__ import annotations

from dataclasses import dataclass

KIB = 1024
MIB = 1024 * 1024
# The published spec says "4MB" and "512KB" without saying which megabyte. The worker packs
# to the stricter, decimal reading (4,000,000 and 512,000 bytes), so a server that means
# either accepts every request; the simulator enforces the same reading.
MB = 1000 * 1000
KB = 1000

# The field delimiters a folder's config.json may declare for its CSV files (every kind
# reads CSV the same way), by the name a person uses.
CSV_DELIMITERS = {",": "comma", ";": "semicolon", "\t": "tab", "|": "pipe"}


@dataclass(frozen=True, slots=True)
class BatchLimits:
    """Per-request limits published for an endpoint."""

    max_records: int
    max_body_bytes: int
    max_record_bytes: int


@dataclass(frozen=True, slots=True)
class Envelope:
    """The fixed bytes around records in one request body.

    body = prefix + (item_prefix + record + item_suffix) joined by "," + suffix
    so its exact size is known before it is built.
    """

    prefix: bytes
    item_prefix: bytes
    item_suffix: bytes
    suffix: bytes

    def item_size(self, record_json: bytes) -> int:
        return len(record_json) + self.item_overhead

    @property
    def item_overhead(self) -> int:
        """What each record adds to a body besides its own bytes (not counting its comma)."""
        return len(self.item_prefix) + len(self.item_suffix)

    @property
    def fixed_size(self) -> int:
        return len(self.prefix) + len(self.suffix)

    def body(self, records: list[bytes] | tuple[bytes, ...]) -> bytes:
        joiner = self.item_suffix + b"," + self.item_prefix
        return b"".join(
            (self.prefix, self.item_prefix, joiner.join(records), self.item_suffix, self.suffix)
        )


@dataclass(frozen=True, slots=True)
class ImportKind:
    """One kind of bulk import: its folder under ``imports/``, endpoint and limits."""

    folder: str
    endpoint: str
    limits: BatchLimits
    target_key: str  # the config.json key naming where the records go
    # The endpoint's published rate limits (requests per second, per minute), for kinds
    # whose limiter is not a setting of its own yet.
    burst: int = 3
    steady: int = 60
    # Whether the target is a data source that must exist (checked before sending).
    has_data_source: bool = False
    # Whether each row is made into the endpoint's item (``mapping``), not sent as it is.
    maps_rows: bool = False
    # Whether an accepted request is an asynchronous job whose outcome is read back later.
    makes_jobs: bool = False

    def envelope(self, target_id: str) -> Envelope:
        if self.folder == PROFILES_FOLDER:
            # Each item is a profile built by ``mapping``; the list, if any, for them all.
            lists = (
                b',"relationships":{"lists":{"data":[{"type":"list","id":"'
                + target_id.encode("ascii")
                + b'"}]}}'
                if target_id
                else b""
            )
            return Envelope(
                prefix=b'{"data":{"type":"profile-bulk-import-job",'
                b'"attributes":{"profiles":{"data":[',
                item_prefix=b"",
                item_suffix=b"",
                suffix=b"]}}" + lists + b"}}",
            )
        if self.folder == EVENTS_FOLDER:
            # Each item (a profile and its event) is built whole by ``mapping``.
            return Envelope(
                prefix=b'{"data":{"type":"event-bulk-create-job",'
                b'"attributes":{"events-bulk-create":{"data":[',
                item_prefix=b"",
                item_suffix=b"",
                suffix=b"]}}}}",
            )
        if self.folder != CUSTOM_OBJECTS_FOLDER:  # pragma: no cover - future kinds
            raise NotImplementedError(f"no envelope for import kind {self.folder!r} yet")
        return Envelope(
            prefix=b'{"data":{"type":"data-source-record-bulk-create-job",'
            b'"attributes":{"data-source-records":{"data":[',
            item_prefix=b'{"type":"data-source-record","attributes":{"record":',
            item_suffix=b"}}",
            suffix=b']}},"relationships":{"data-source":{"data":{"type":"data-source","id":"'
            + target_id.encode("ascii")
            + b'"}}}}}',
        )


CUSTOM_OBJECTS_FOLDER = "custom_objects"
EVENTS_FOLDER = "events"
PROFILES_FOLDER = "profiles"

CUSTOM_OBJECTS = ImportKind(
    folder=CUSTOM_OBJECTS_FOLDER,
    endpoint="/api/data-source-record-bulk-create-jobs",
    # Klaviyo's published limits: 500 records, 4 MB payload, 512 KB per record (decimal).
    limits=BatchLimits(max_records=500, max_body_bytes=4 * MB, max_record_bytes=512 * KB),
    target_key="data_source_id",
    has_data_source=True,
)

# A string in an event may be at most this long (the spec: "a single string cannot exceed
# 100KB"; the decimal reading, as for the other limits).
MAX_EVENT_STRING_BYTES = 100 * KB
MAX_METRIC_NAME = 127  # "must be less than 128 characters"

EVENTS = ImportKind(
    folder=EVENTS_FOLDER,
    endpoint="/api/event-bulk-create-jobs",
    # Published: 1,000 events and 5 MB per request; no per-event limit but the body's (each
    # string at most 100 KB, checked when a row is made an event).
    limits=BatchLimits(max_records=1000, max_body_bytes=5 * MB, max_record_bytes=5 * MB),
    target_key="metric",
    burst=10,
    steady=150,
    maps_rows=True,
)

PROFILES = ImportKind(
    folder=PROFILES_FOLDER,
    endpoint="/api/profile-bulk-import-jobs",
    # Published: 10,000 profiles, 5 MB per request, 100 KB per profile.
    limits=BatchLimits(max_records=10_000, max_body_bytes=5 * MB, max_record_bytes=100 * KB),
    target_key="list_id",
    burst=10,
    steady=150,
    maps_rows=True,
    makes_jobs=True,
)

KINDS: dict[str, ImportKind] = {kind.folder: kind for kind in (CUSTOM_OBJECTS, EVENTS, PROFILES)}
