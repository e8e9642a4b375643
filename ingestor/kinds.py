"""Import kinds: what differs between `custom_objects/`, and later `events/` and `profiles/`.

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
        return len(self.item_prefix) + len(record_json) + len(self.item_suffix)

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

    def envelope(self, target_id: str) -> Envelope:
        if self.folder != CUSTOM_OBJECTS.folder:  # pragma: no cover - future kinds
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


CUSTOM_OBJECTS = ImportKind(
    folder="custom_objects",
    endpoint="/api/data-source-record-bulk-create-jobs",
    # Klaviyo's published limits: 500 records, 4 MB payload, 512 KB per record (decimal).
    limits=BatchLimits(max_records=500, max_body_bytes=4 * MB, max_record_bytes=512 * KB),
    target_key="data_source_id",
)

# Folders reserved for later kinds (bulk events: 1,000 / 5 MB; profiles: 10,000 / 5 MB).
RESERVED_FOLDERS = ("profiles", "events")

KINDS: dict[str, ImportKind] = {CUSTOM_OBJECTS.folder: CUSTOM_OBJECTS}
