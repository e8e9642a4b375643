"""config.json and the drop tree: a folder that is not right says exactly why."""

from __future__ import annotations

import json
import re
from pathlib import Path, PurePosixPath

import pytest

from ingestor.errors import LayoutError
from ingestor.layout import Placement, parse_folder_config, place, read_folder_config


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"{not json", "not valid JSON"),
        (b"[1]", "must be a JSON object, got list"),
        (b'{"data_source": "x"}', 'no "data_source_id" key'),
        (b'{"data_source_id": 5}', "must be a string, got int"),
        (b'{"data_source_id": "01KTMWCZ8ZMNZS0HG5HQNX0H6"}', "is not a ULID"),
        (b'{"data_source_id": "81KTMWCZ8ZMNZS0HG5HQNX0H6E"}', "is not a ULID"),
        (b'{"data_source_id": "01KTMWCZ8ZMNZS0HG5HQNX0H6I"}', "is not a ULID"),
        (b'{"x": "' + b"a" * 70_000 + b'"}', "over the 65,536-byte limit"),
        (
            b'{"data_source_id": "01KTMWCZ8ZMNZS0HG5HQNX0H6E", "delimiter": ";;"}',
            '"delimiter" ";;" is not one of "," (comma), ";" (semicolon), "\\t" (tab), "|" (pipe)',
        ),
        (
            b'{"data_source_id": "01KTMWCZ8ZMNZS0HG5HQNX0H6E", "delimiter": [","]}',
            '"delimiter" [","] is not one of',
        ),
    ],
)
def test_invalid_config_json_says_why(data: bytes, message: str) -> None:
    with pytest.raises(LayoutError, match=re.escape(message)):
        parse_folder_config(data)


@pytest.mark.parametrize("delimiter", [",", ";", "\t", "|"])
def test_a_config_may_declare_its_csv_delimiter(delimiter: str) -> None:
    data = json.dumps({"data_source_id": "01KTMWCZ8ZMNZS0HG5HQNX0H6E", "delimiter": delimiter})
    assert parse_folder_config(data.encode()).delimiter == delimiter
    assert parse_folder_config(b'{"data_source_id": "01KTMWCZ8ZMNZS0HG5HQNX0H6E"}').delimiter == ","


def test_valid_config_and_missing_config(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"data_source_id": "01ktmwcz8zmnzs0hg5hqnx0h6e"}')
    assert read_folder_config(tmp_path).target_id == "01KTMWCZ8ZMNZS0HG5HQNX0H6E"
    (tmp_path / "config.json").unlink()
    with pytest.raises(LayoutError, match=r"config\.json is missing"):
        read_folder_config(tmp_path)


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("acme/imports/custom_objects/pets/a.csv", Placement.DATA_FILE),
        ("acme/imports/custom_objects/pets/a.JSONL", Placement.DATA_FILE),
        ("acme/imports/custom_objects/pets/config.json", Placement.CONFIG),
        ("acme/imports/custom_objects/stray.csv", Placement.STRAY),
        ("acme/imports/custom_objects/pets/notes.txt", Placement.IGNORED),
        ("acme/imports/custom_objects/pets/upload.csv.part", Placement.WAITING),
        ("acme/imports/custom_objects/pets/.hidden.csv", Placement.WAITING),
        ("acme/imports/contacts/x/a.csv", Placement.OUTSIDE),
        ("acme/other/a.csv", Placement.OUTSIDE),
    ],
)
def test_placement_in_the_drop_tree(path: str, expected: Placement) -> None:
    assert place(PurePosixPath(path)).placement is expected
