"""What a row becomes for a kind whose endpoint wants more than the row itself.

Custom objects send each row as it is. A profiles row becomes one profile (``profile_row``).
An events row becomes one item of the bulk events
endpoint: a profile (its identifiers) and one event (metric, time, value, unique id and
properties). A row that cannot become a valid item is skipped with its line and the reason,
like any bad row; nothing is guessed.

The columns of an events row (CSV header names, or JSONL keys):

- ``email``, ``phone_number``, ``external_id``, ``anonymous_id``, ``profile_id``: who did
  it; at least one.
- ``time`` (required): ISO 8601 (``2024-05-01T12:30:00Z``; without an offset it is UTC; a
  date alone is midnight UTC) or Unix seconds. After 1990, at most a year ahead (the API's
  rule). There is no default: "now" would differ each time a resumed import re-sent a row.
- ``value`` (a number, or a cell holding one), ``value_currency`` (ISO 4217).
- ``unique_id``: the event's id for de-duplication. A row without one gets
  ``<first 16 hex digits of the file's SHA-256>-<line>``, the same every time the same file
  is sent, so a batch sent again after a crash creates no duplicate events.
- ``metric``: the metric's name, when a row's differs from config.json's ``metric``.
- ``properties``: a JSON object; every other column joins it as a property.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from ingestor.kinds import EVENTS, MAX_EVENT_STRING_BYTES, MAX_METRIC_NAME, PROFILES, ImportKind
from ingestor.records import LineRun, Record, Reject

# A row made an item: its JSON, or why it cannot be one.
RowMapper = Callable[[Record], bytes | str]

IDENTIFIERS = ("email", "phone_number", "external_id", "anonymous_id")
EVENT_COLUMNS = (*IDENTIFIERS, "profile_id", "time", "value", "value_currency", "unique_id")
MAX_PROPERTIES = 400  # the spec: "must not exceed 400 properties"
_EARLIEST = datetime(1990, 1, 1, tzinfo=UTC)


def row_mapper(kind: ImportKind, target: str, backfill: bool, file_sha256: str) -> RowMapper:
    """The mapper for a kind whose rows are made items (``kind.maps_rows``)."""
    if kind is EVENTS:
        return EventRows(target, backfill, file_sha256[:16])
    if kind is PROFILES:
        return profile_row
    raise ValueError(f"rows of {kind.folder!r} are sent as they are")


PROFILE_IDENTIFIERS = ("email", "phone_number", "external_id")
PROFILE_ATTRIBUTES = ("first_name", "last_name", "organization", "title", "locale", "image")
LOCATION_FIELDS = (
    "address1", "address2", "city", "country", "latitude", "longitude", "region", "zip",
    "timezone", "ip",
)  # fmt: skip


def profile_row(record: Record) -> bytes | str:
    """One row as an item of ``POST /api/profile-bulk-import-jobs``: the identifiers and
    standard attributes where the API wants them, ``location.<field>`` columns (or a
    ``location`` object) as the location, and every other column a custom property."""
    row: dict[str, Any] = orjson.loads(record.json)
    attributes: dict[str, Any] = {}
    problem = _take_texts(row, (*PROFILE_IDENTIFIERS, *PROFILE_ATTRIBUTES), attributes)
    if problem:
        return problem
    if not any(key in attributes for key in PROFILE_IDENTIFIERS):
        return "no profile identifier: the row needs an email, phone_number or external_id"
    location = row.pop("location", None)
    if location is None:
        location = {}
    elif not isinstance(location, dict):
        return f"location must be a JSON object, got {_shown(location)}"
    for field in LOCATION_FIELDS:
        value = row.pop(f"location.{field}", None)
        if value is not None and value != "":
            location[field] = value
    unknown = sorted(set(location) - set(LOCATION_FIELDS))
    if unknown:
        return f"location has no field {unknown[0]!r}; it takes {', '.join(LOCATION_FIELDS)}"
    for field, value in location.items():
        number = field in ("latitude", "longitude")
        if not isinstance(value, str) and not (number and _number(value) is not None):
            return f"location.{field} must be text, got {_shown(value)}"
    if location:
        attributes["location"] = location
    properties = _properties(row)
    if isinstance(properties, str):
        return properties
    if properties:
        attributes["properties"] = properties
    return orjson.dumps({"type": "profile", "attributes": attributes})


def map_rows(
    items: Iterable[LineRun | Record | Reject], mapper: RowMapper
) -> Iterator[Record | Reject]:
    """The parser's output with each record made an item (or a Reject), in file order."""
    for item in items:
        if type(item) is Reject:
            yield item
            continue
        records: Iterable[Record] = item if type(item) is LineRun else (item,)  # type: ignore[assignment]
        for record in records:
            made = mapper(record)
            if type(made) is bytes:
                yield Record(record.line, record.end_line, record.end_offset, made)
            else:
                raw = record.json[:200].decode("utf-8", "replace")
                yield Reject(record.line, record.end_line, record.end_offset, str(made), raw)


class EventRows:
    """Makes each row one item of ``POST /api/event-bulk-create-jobs``."""

    def __init__(
        self, metric: str, backfill: bool, file_key: str, now: Callable[[], datetime] | None = None
    ) -> None:
        """``file_key``: what a default unique id starts with (the file version's hash)."""
        self._metric = metric
        self._backfill = backfill
        self._file_key = file_key
        self._now = now or (lambda: datetime.now(UTC))

    def __call__(self, record: Record) -> bytes | str:
        row: dict[str, Any] = orjson.loads(record.json)
        profile: dict[str, Any] = {}
        problem = _take_texts(row, IDENTIFIERS, profile)
        if problem:
            return problem
        profile_id = row.pop("profile_id", None)
        if profile_id is not None and not isinstance(profile_id, str):
            return f"profile_id must be text, got {_shown(profile_id)}"
        if not profile and not profile_id:
            return (
                "no profile identifier: the row needs an email, phone_number, external_id, "
                "anonymous_id or profile_id"
            )
        metric = row.pop("metric", None) or self._metric
        if not isinstance(metric, str) or len(metric) > MAX_METRIC_NAME:
            return f"metric must be a name of at most {MAX_METRIC_NAME} characters"
        when = _time(row.pop("time", None), self._now())
        if not isinstance(when, datetime):
            return when
        attributes: dict[str, Any] = {
            "metric": {"data": {"type": "metric", "attributes": {"name": metric}}},
            "time": when.isoformat(),
        }
        value = row.pop("value", None)
        if value is not None and value != "":
            number = _number(value)
            if number is None:
                return f"value must be a number, got {_shown(value)}"
            attributes["value"] = number
        currency = row.pop("value_currency", None)
        if currency is not None and currency != "":
            if not isinstance(currency, str):
                return f"value_currency must be text, got {_shown(currency)}"
            attributes["value_currency"] = currency
        unique_id = row.pop("unique_id", None)
        if unique_id is None or unique_id == "":
            unique_id = f"{self._file_key}-{record.line}"
        elif not isinstance(unique_id, str | int) or isinstance(unique_id, bool):
            return f"unique_id must be text, got {_shown(unique_id)}"
        attributes["unique_id"] = str(unique_id)
        properties = _properties(row)
        if isinstance(properties, str):
            return properties
        if len(properties) > MAX_PROPERTIES:
            return f"{len(properties)} properties; the API takes at most {MAX_PROPERTIES}"
        attributes["properties"] = properties
        if self._backfill:
            attributes["backfill"] = True
        profile_data: dict[str, Any] = {"type": "profile", "attributes": profile}
        if profile_id:
            profile_data["id"] = profile_id
        item = orjson.dumps(
            {
                "type": "event-bulk-create",
                "attributes": {
                    "profile": {"data": profile_data},
                    "events": {"data": [{"type": "event", "attributes": attributes}]},
                },
            }
        )
        if len(item) > MAX_EVENT_STRING_BYTES:  # only then can one string be too long
            long = _long_string({"profile": profile, "event": attributes})
            if long:
                return (
                    f"{long} is over the API's {MAX_EVENT_STRING_BYTES:,}-byte limit for a "
                    "single string"
                )
        return item


def _take_texts(row: dict[str, Any], keys: tuple[str, ...], into: dict[str, Any]) -> str:
    """Move the row's ``keys`` that hold a value into ``into`` as text (an integer, such as
    an external id, becomes its digits); why one cannot be text ("" if all can)."""
    for key in keys:
        value = row.pop(key, None)
        if value is None or value == "":
            continue
        if not isinstance(value, str | int) or isinstance(value, bool):
            return f"{key} must be text, got {_shown(value)}"
        into[key] = str(value)
    return ""


def _properties(row: dict[str, Any]) -> dict[str, Any] | str:
    """The row's ``properties`` object with every other column left in the row joined to
    it; why not, if ``properties`` is not an object."""
    properties = row.pop("properties", None)
    if properties is None:
        properties = {}
    elif not isinstance(properties, dict):
        return f"properties must be a JSON object, got {_shown(properties)}"
    properties.update(row)
    return properties


def _time(value: object, now: datetime) -> datetime | str:
    """An event's time, timezone-aware; or why the cell is not one."""
    if value is None or value == "":
        return (
            "no time: the row needs a time (ISO 8601, e.g. 2024-05-01T12:30:00Z, or Unix seconds)"
        )
    when: datetime | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        when = _from_epoch(float(value))
    elif isinstance(value, str):
        text = value.strip()
        if text.isdigit():
            when = _from_epoch(float(text))
        else:
            try:
                when = datetime.fromisoformat(text)
            except ValueError:
                when = None
            if when is not None and when.tzinfo is None:
                when = when.replace(tzinfo=UTC)
    if when is None:
        return f"time {_shown(value)} is not ISO 8601 (e.g. 2024-05-01T12:30:00Z) or Unix seconds"
    if when < _EARLIEST or when > now + timedelta(days=365):
        return f"time {_shown(value)} is out of range: after 1990 and at most a year from now"
    return when


def _from_epoch(seconds: float) -> datetime | None:
    try:
        return datetime.fromtimestamp(seconds, UTC)
    except (OverflowError, OSError, ValueError):
        return None


def _number(value: object) -> float | int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return None
        return number if math.isfinite(number) else None
    return None


def _long_string(value: object) -> str:
    """The first string in ``value`` longer than the API takes, by where it is ("" if none)."""
    todo: list[tuple[object, str]] = [(value, "")]
    while todo:
        node, path = todo.pop()
        if isinstance(node, str):
            if len(node.encode("utf-8")) > MAX_EVENT_STRING_BYTES:
                return path
        elif isinstance(node, dict):
            todo.extend((child, f"{path}.{key}" if path else key) for key, child in node.items())
        elif isinstance(node, list):
            todo.extend((child, f"{path}[{index}]") for index, child in enumerate(node))
    return ""


def _shown(value: object) -> str:
    text = orjson.dumps(value).decode()
    return text if len(text) <= 60 else text[:60] + "…"
