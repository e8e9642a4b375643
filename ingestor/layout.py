"""The drop tree's rules, as pure functions where possible.

    <drop_root>/<company_id>/imports/<kind>/<folder>/config.json + *.csv / *.jsonl

Files directly under ``imports/<kind>/`` are rejected; other extensions are ignored (and
listed); hidden and partial-upload names wait until renamed; symlinks are never followed.
"""

from __future__ import annotations

import enum
import re
import stat
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import orjson

from ingestor.config import Budget
from ingestor.dropfile import Directory, open_directory
from ingestor.errors import LayoutError
from ingestor.kinds import (
    CSV_DELIMITERS,
    CUSTOM_OBJECTS,
    KIB,
    KINDS,
    MAX_METRIC_NAME,
    ImportKind,
)

CONFIG_NAME = "config.json"
# company (1) / imports (2) / kind (3) / folder (4): an import folder's depth below the drop
# root. Its files are the work; nothing deeper is ever watched, walked or read.
FOLDER_DEPTH = 4
MAX_CONFIG_BYTES = 64 * 1024
DATA_FORMATS = {".csv": "csv", ".jsonl": "jsonl"}
PARTIAL_SUFFIXES = (".tmp", ".part", ".filepart", ".partial", ".crdownload")
# ULID: 26 Crockford base32 characters; the first is at most 7 (a 48-bit timestamp).
_ULID = re.compile(r"[0-7][0-9A-HJKMNP-TV-Z]{25}", re.IGNORECASE)


def is_ulid(text: str) -> bool:
    return _ULID.fullmatch(text) is not None


COMPRESSED_SUFFIX = ".gz"


def data_format(name: str) -> str | None:
    """'csv' / 'jsonl' for a data file name (``x.csv``, or gzip-compressed ``x.csv.gz``),
    else None (case-insensitive extensions)."""
    if is_compressed(name):
        name = name[: -len(COMPRESSED_SUFFIX)]
    return DATA_FORMATS.get(PurePosixPath(name).suffix.lower())


MANIFEST_SUFFIX = ".manifest.json"
APPROVE_SUFFIX = ".approve"  # x.csv.approve: send quarantined x.csv anyway
MAX_MANIFEST_BYTES = 4 * KIB


def manifest_of(name: str) -> str | None:
    """The data file a manifest's or an approval's name is for (``x.csv.manifest.json``,
    ``x.csv.approve`` → ``x.csv``)."""
    for suffix in (MANIFEST_SUFFIX, APPROVE_SUFFIX):
        if name.endswith(suffix):
            data = name[: -len(suffix)]
            return data if data_format(data) is not None else None
    return None


@dataclass(frozen=True, slots=True)
class Manifest:
    """What an uploader says a data file holds: its data rows and/or its SHA-256."""

    rows: int | None
    sha256: str | None


def parse_manifest(data: bytes, name: str) -> Manifest:
    """Validate a manifest's bytes; LayoutError saying exactly what is wrong."""
    example = '{"rows": 1000, "sha256": "<64 hex digits>"}'
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise LayoutError(f"{name} is not valid JSON ({exc}); expected {example}") from None
    if not isinstance(value, dict) or not ({"rows", "sha256"} & value.keys()):
        raise LayoutError(f'{name} must be a JSON object with "rows", "sha256" or both: {example}')
    unknown = sorted(set(value) - {"rows", "sha256"})
    if unknown:
        raise LayoutError(f"{name} has an unknown key {unknown[0]!r}; it takes rows and sha256")
    rows, sha = value.get("rows"), value.get("sha256")
    if rows is not None and (not isinstance(rows, int) or isinstance(rows, bool) or rows < 0):
        raise LayoutError(f'{name}: "rows" must be a whole number of data rows, got {rows!r}')
    if sha is not None and (not isinstance(sha, str) or not _SHA256.fullmatch(sha)):
        raise LayoutError(f'{name}: "sha256" must be 64 hex digits, got {str(sha)[:70]!r}')
    return Manifest(rows, sha.lower() if isinstance(sha, str) else None)


def load_manifest(folder: Directory, data_name: str) -> Manifest | None:
    """The manifest of ``data_name`` in the folder, if one is there (read through the
    folder's descriptor, as config.json is)."""
    name = data_name + MANIFEST_SUFFIX
    data = _read_small(folder, name, MAX_MANIFEST_BYTES, f"{name} cannot be used")
    return None if data is None else parse_manifest(data, name)


def _read_small(folder: Directory, name: str, limit: int, refused: str) -> bytes | None:
    """A small file the folder's files are read by (config.json, a manifest), through the
    folder's descriptor (never a link, never a FIFO: see ``dropfile``); None if there is
    none. A file that cannot be used raises LayoutError starting with ``refused``."""
    try:
        folder.lstat(name)
    except FileNotFoundError:
        return None
    try:
        handle = folder.open_file(name, limit)
    except LayoutError as exc:
        raise LayoutError(f"{refused}: {exc}") from None
    with handle:
        return handle.read_all(limit)


_SHA256 = re.compile(r"[0-9a-fA-F]{64}")


def is_compressed(name: str) -> bool:
    """Whether a data file's name says it is gzip-compressed (``x.jsonl.gz``)."""
    return name.lower().endswith(COMPRESSED_SUFFIX)


def is_hidden_or_partial(name: str) -> bool:
    """Names an uploader is still writing, or that are not meant for us."""
    return name.startswith(".") or name.lower().endswith(PARTIAL_SUFFIXES)


class Placement(enum.Enum):
    DATA_FILE = "data_file"  # a csv/jsonl inside a named import folder
    MANIFEST = "manifest"  # a data file's manifest or approval (x.csv.manifest.json, .approve)
    CONFIG = "config"  # an import folder's config.json
    STRAY = "stray"  # a file directly under imports/<kind>/: rejected
    IGNORED = "ignored"  # another extension inside an import folder: listed, not read
    WAITING = "waiting"  # hidden or partial upload name: ignored until renamed
    OUTSIDE = "outside"  # not part of any import kind's tree


@dataclass(frozen=True, slots=True)
class Placed:
    """Where a path sits in the drop tree, decided from its parts alone (no I/O)."""

    placement: Placement
    company: str = ""
    kind: str = ""
    folder: str = ""
    name: str = ""


def place(relative: PurePosixPath) -> Placed:
    """Classify a path relative to the drop root: ``company/imports/kind/folder/name``."""
    parts = relative.parts
    if len(parts) < 4 or parts[1] != "imports" or parts[2] not in KINDS:
        return Placed(Placement.OUTSIDE)
    company, kind, name = parts[0], parts[2], parts[-1]
    if is_hidden_or_partial(name):
        return Placed(Placement.WAITING, company, kind, "", name)
    if len(parts) == 4:
        return Placed(Placement.STRAY, company, kind, "", name)
    if len(parts) > 5:  # deeper nesting is not part of the contract
        return Placed(Placement.IGNORED, company, kind, parts[3], "/".join(parts[4:]))
    folder = parts[3]
    if name == CONFIG_NAME:
        return Placed(Placement.CONFIG, company, kind, folder, name)
    if manifest_of(name) is not None:
        return Placed(Placement.MANIFEST, company, kind, folder, name)
    if data_format(name) is None:
        return Placed(Placement.IGNORED, company, kind, folder, name)
    return Placed(Placement.DATA_FILE, company, kind, folder, name)


def may_create_file(parts: tuple[str, ...] | list[str]) -> bool:
    """Whether a company may create a file at ``parts`` (relative to its own root): only
    below ``imports/<kind>/``."""
    return len(parts) >= 3 and parts[0] == "imports" and parts[1] in KINDS


def may_create_folder(parts: tuple[str, ...] | list[str]) -> bool:
    """Whether a company may create a folder there: an import folder, and nothing deeper."""
    return may_create_file(parts) and len(parts) <= FOLDER_DEPTH - 1


def company_folders() -> list[PurePosixPath]:
    """The folders every company's tree starts with: ``imports/<kind>`` for each kind."""
    return [PurePosixPath("imports", kind) for kind in KINDS]


@dataclass(frozen=True, slots=True)
class FolderConfig:
    """A valid config.json: where the folder's records go, and how its CSV files are
    written."""

    target_id: str  # custom objects: the data source's id; events: the metric's name
    delimiter: str = ","  # between a CSV file's fields
    encoding: str = "utf-8"  # the data files' text encoding, as declared
    backfill: bool = False  # events: recorded without triggering flows
    manifest_required: bool = False  # each data file waits for its x.manifest.json
    budget: Budget | None = None  # "max_skipped"; None: the settings' default


_EXAMPLES = {
    "data_source_id": "01KTMWCZ8ZMNZS0HG5HQNX0H6E",
    "metric": "Placed Order",
    "list_id": "VRgFBd",
}
# A list id: Klaviyo's are short base62 strings; anything else cannot be one.
_LIST_ID = re.compile(r"[A-Za-z0-9]{1,64}")


def parse_folder_config(data: bytes, kind: ImportKind = CUSTOM_OBJECTS) -> FolderConfig:
    """Validate config.json bytes; raise LayoutError saying exactly what is wrong."""
    key = kind.target_key
    example = f'{{"{key}": "{_EXAMPLES[key]}"}}'
    if len(data) > MAX_CONFIG_BYTES:
        raise LayoutError(
            f"config.json is {len(data):,} bytes, over the {MAX_CONFIG_BYTES:,}-byte limit; "
            f"it should hold only {example}"
        )
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise LayoutError(f"config.json is not valid JSON ({exc}); expected {example}") from None
    if not isinstance(value, dict):
        raise LayoutError(
            f"config.json must be a JSON object, got {type(value).__name__}; expected {example}"
        )
    if key == "list_id":  # profiles: the list is optional
        return FolderConfig(
            target_id=_list_id(value.get("list_id")),
            delimiter=_delimiter(value),
            encoding=_encoding(value),
            manifest_required=_manifest_required(value),
            budget=_budget(value),
        )
    if key not in value:
        raise LayoutError(f'config.json has no "{key}" key; expected {example}')
    target = value[key]
    if not isinstance(target, str):
        raise LayoutError(f'config.json "{key}" must be a string, got {type(target).__name__}')
    if key == "metric":
        return FolderConfig(
            target_id=_metric_name(target),
            delimiter=_delimiter(value),
            encoding=_encoding(value),
            backfill=_backfill(value),
            manifest_required=_manifest_required(value),
            budget=_budget(value),
        )
    if not is_ulid(target):
        shown = target if len(target) <= 40 else target[:40] + "…"
        raise LayoutError(
            f'config.json "{key}" {shown!r} is not a ULID (26 characters of Crockford base32, '
            f"e.g. 01KTMWCZ8ZMNZS0HG5HQNX0H6E)"
        )
    return FolderConfig(
        target_id=target.upper(),
        delimiter=_delimiter(value),
        encoding=_encoding(value),
        manifest_required=_manifest_required(value),
        budget=_budget(value),
    )


def _metric_name(name: str) -> str:
    """config.json's "metric" of an events folder: the name every row's event is under."""
    if not name.strip():
        raise LayoutError('config.json "metric" is empty; name the metric, e.g. "Placed Order"')
    if len(name) > MAX_METRIC_NAME:
        raise LayoutError(
            f'config.json "metric" is {len(name)} characters; the API takes at most '
            f"{MAX_METRIC_NAME}"
        )
    return name


def _budget(config: dict[str, Any]) -> Budget | None:
    """config.json's optional "max_skipped": the files' error budget."""
    if "max_skipped" not in config:
        return None
    budget = Budget.parse(config["max_skipped"])
    if isinstance(budget, str):
        shown = orjson.dumps(config["max_skipped"]).decode()[:30]
        raise LayoutError(f'config.json "max_skipped" {shown} {budget}')
    return budget


def _manifest_required(config: dict[str, Any]) -> bool:
    """config.json's optional "manifest": "required" (or "optional", the default)."""
    value = config.get("manifest", "optional")
    if value not in ("required", "optional"):
        shown = orjson.dumps(value).decode()[:30]
        raise LayoutError(f'config.json "manifest" must be "required" or "optional", got {shown}')
    return bool(value == "required")


def _list_id(value: object) -> str:
    """config.json's optional "list_id" (profiles): the list every profile is added to."""
    if value is None:
        return ""
    if not isinstance(value, str) or not _LIST_ID.fullmatch(value):
        shown = orjson.dumps(value).decode()[:40]
        raise LayoutError(
            f'config.json "list_id" {shown} is not a list id (letters and digits, e.g. '
            '"VRgFBd"); leave it out to import the profiles without adding them to a list'
        )
    return value


def _backfill(config: dict[str, Any]) -> bool:
    """config.json's optional "backfill" (events): record without triggering flows."""
    backfill = config.get("backfill", False)
    if not isinstance(backfill, bool):
        shown = orjson.dumps(backfill).decode()[:20]
        raise LayoutError(f'config.json "backfill" must be true or false, got {shown}')
    return backfill


def _is_encoding(name: str) -> bool:
    """Whether ``name`` is a text encoding Python knows (not a codec such as rot13)."""
    try:
        "\n".encode(name)
    except LookupError:
        return False
    return True


def _encoding(config: dict[str, Any]) -> str:
    """config.json's optional "encoding": any text encoding Python knows by that name."""
    encoding = config.get("encoding", "utf-8")
    if not isinstance(encoding, str) or len(encoding) > 40 or not _is_encoding(encoding):
        shown = orjson.dumps(encoding).decode()
        shown = shown if len(shown) <= 40 else shown[:40] + "…"
        raise LayoutError(
            f'config.json "encoding" {shown} is not a text encoding; use a name such as '
            '"utf-8" (the default), "windows-1252", "latin-1" or "utf-16"'
        )
    return encoding


def _delimiter(config: dict[str, Any]) -> str:
    """config.json's optional "delimiter": one of the characters CSV exports use."""
    delimiter = config.get("delimiter", ",")
    if not isinstance(delimiter, str) or delimiter not in CSV_DELIMITERS:
        allowed = ", ".join(
            f"{orjson.dumps(char).decode()} ({name})" for char, name in CSV_DELIMITERS.items()
        )
        shown = orjson.dumps(delimiter).decode()
        shown = shown if len(shown) <= 20 else shown[:20] + "…"
        raise LayoutError(f'config.json "delimiter" {shown} is not one of {allowed}')
    return str(delimiter)


def load_folder_config(folder: Directory, kind: ImportKind = CUSTOM_OBJECTS) -> FolderConfig:
    """Read and validate the folder's config.json through its descriptor (never a link,
    never a FIFO: see ``dropfile``)."""
    refused = f"{CONFIG_NAME} in {folder.path.name}/ cannot be used"
    data = _read_small(folder, CONFIG_NAME, MAX_CONFIG_BYTES, refused)
    if data is None:
        wanted = (
            'one holding {} (or {"list_id": "…"} to add the profiles to a list)'
            if kind.target_key == "list_id"
            else f"one naming the {kind.target_key}"
        )
        raise LayoutError(f"{CONFIG_NAME} is missing in {folder.path.name}/; add {wanted}")
    return parse_folder_config(data, kind)


def read_folder_config(path: Path, kind: ImportKind = CUSTOM_OBJECTS) -> FolderConfig:
    """``load_folder_config`` for a folder named by the operator (``validate``, the demo)."""
    with open_directory(path) as folder:
        return load_folder_config(folder, kind)


@dataclass(frozen=True, slots=True)
class ImportFolder:
    """An import folder on disk and the tenant it belongs to."""

    path: Path
    company: str
    kind: ImportKind
    name: str
    # The trusted ancestor (the drop root, or the folder itself when given on the command
    # line): everything below it is opened without following links.
    base: Path | None = None

    def open(self) -> Directory:
        """The folder, opened from its base one component at a time (see ``dropfile``)."""
        base = self.base or self.path
        return open_directory(base, self.path.relative_to(base).parts)


def locate_import_folder(path: Path, company: str | None = None) -> ImportFolder:
    """Recognise ``…/<company>/imports/<kind>/<folder>``; outside a drop tree the company
    must be given (or defaults to the folder's parent name)."""
    resolved = path.resolve()
    if not resolved.is_dir():
        raise LayoutError(f"{path} is not a directory; give an import folder holding config.json")
    parts = resolved.parts
    if len(parts) >= 4 and parts[-3] == "imports" and parts[-2] in KINDS:
        kind = KINDS[parts[-2]]
        return ImportFolder(resolved, company or parts[-4], kind, parts[-1], resolved.parents[3])
    if len(parts) >= 3 and parts[-2] == "imports" and parts[-1] in KINDS:
        raise LayoutError(
            f"{path} is the {parts[-1]}/ folder itself; files must sit in a named subfolder "
            f"such as {parts[-1]}/pets/"
        )
    return ImportFolder(resolved, company or "default", CUSTOM_OBJECTS, resolved.name)


@dataclass(frozen=True, slots=True)
class FolderListing:
    data_files: tuple[Path, ...]
    ignored: tuple[str, ...]  # names listed in the report, not read


def list_folder(folder: Directory) -> FolderListing:
    """The data files of an import folder in name order; symlinks and others are set aside
    (looked at with lstat through the folder's descriptor: nothing is followed)."""
    data: list[Path] = []
    ignored: list[str] = []
    for name, info in sorted(folder.entries(), key=lambda entry: entry[0]):
        if name == CONFIG_NAME or is_hidden_or_partial(name) or manifest_of(name):
            continue
        if stat.S_ISLNK(info.st_mode):
            ignored.append(f"{name} (symlink, not followed)")
        elif not stat.S_ISREG(info.st_mode):
            ignored.append(f"{name} (not a regular file)")
        elif data_format(name) is None:
            ignored.append(f"{name} (only .csv, .jsonl, .csv.gz and .jsonl.gz are processed)")
        else:
            data.append(folder.path / name)
    return FolderListing(tuple(data), tuple(ignored))
