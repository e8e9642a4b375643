"""``ingestor validate``: a file or an import folder parsed and batched exactly as ingestion
would, with nothing sent. Kept apart from ``app`` so the command loads only the parsers
(no HTTP client, ledger, e-mail or logging set-up)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from ingestor.batcher import batches
from ingestor.dropfile import open_directory
from ingestor.errors import LayoutError, ParseError
from ingestor.kinds import CUSTOM_OBJECTS, ImportKind
from ingestor.layout import (
    FolderConfig,
    data_format,
    is_compressed,
    list_folder,
    load_folder_config,
    locate_import_folder,
)
from ingestor.mapping import map_rows, row_mapper
from ingestor.parsers import ParseLimits, parse_file
from ingestor.records import LineRun, Record, Reject


@dataclass
class FileValidation:
    path: Path
    records: int = 0
    batches: int = 0
    body_bytes: int = 0
    rejects: list[Reject] = field(default_factory=list)
    preview: list[bytes] = field(default_factory=list)
    error: str = ""


@dataclass
class Validation:
    target: Path
    folder_error: str = ""
    data_source_id: str = ""
    metric: str = ""  # an events folder's
    files: list[FileValidation] = field(default_factory=list)
    ignored: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.folder_error and not any(f.error for f in self.files)


def validate_file(
    path: Path,
    kind: ImportKind = CUSTOM_OBJECTS,
    preview: int = 3,
    delimiter: str = ",",
    encoding: str = "utf-8",
    config: FolderConfig | None = None,
) -> FileValidation:
    """Parse and batch a file exactly as ingestion would, without sending anything (an
    events row is made its event, with the folder's ``config``)."""
    result = FileValidation(path)
    fmt = data_format(path.name)
    if fmt is None:
        result.error = "not a .csv, .jsonl, .csv.gz or .jsonl.gz file"
        return result
    limits = ParseLimits(max_record_bytes=kind.limits.max_record_bytes)
    envelope = kind.envelope("0" * 26)
    try:
        with open_directory(path.parent) as directory, directory.open_file(path.name) as file:
            compressed = is_compressed(path.name)
            items: Iterable[LineRun | Record | Reject] = parse_file(
                file.reader(), fmt, limits, 0, 0, delimiter, encoding, compressed
            )
            if kind.maps_rows:
                target = config.target_id if config else "(the folder's metric)"
                backfill = config.backfill if config else False
                items = map_rows(items, row_mapper(kind, target, backfill, "0" * 16))
            for item in batches(items, envelope, kind.limits):
                if isinstance(item, Reject):
                    result.rejects.append(item)
                elif item.records:
                    result.batches += 1
                    result.records += len(item.records)
                    result.body_bytes += item.body_size
                    room = max(0, preview - len(result.preview))
                    result.preview += [r.json for r in item.records[:room]]
    except (ParseError, LayoutError, OSError) as exc:
        result.error = str(exc)
    return result


def validate_path(target: Path) -> Validation:
    """``ingestor validate``: a data file, or an import folder (config.json included). A
    file in an import folder with a valid config.json is read as the folder declares."""
    kind, config, problem = _folder_config(target.parent if target.is_file() else target)
    read = config or FolderConfig("")  # the defaults: UTF-8, commas

    def check(path: Path) -> FileValidation:
        return validate_file(path, kind, 3, read.delimiter, read.encoding, config)

    if target.is_file():
        return Validation(target, files=[check(target)])
    result = Validation(target, folder_error=problem)
    if kind.has_data_source:
        result.data_source_id = read.target_id
    else:
        result.metric = read.target_id
    if target.is_dir():
        with open_directory(target) as directory:
            listing = list_folder(directory)
        result.ignored = listing.ignored
        result.files = [check(p) for p in listing.data_files]
    return result


def _folder_config(folder: Path) -> tuple[ImportKind, FolderConfig | None, str]:
    """The import folder's kind and config.json, or why there is no config to use."""
    kind = CUSTOM_OBJECTS
    try:
        located = locate_import_folder(folder)
        kind = located.kind
        with open_directory(located.path) as directory:
            return kind, load_folder_config(directory, kind), ""
    except LayoutError as exc:
        return kind, None, str(exc)
