"""CSV: header row; empty cell = absent; JSON objects/arrays in cells become nested data."""

from __future__ import annotations

import contextlib
import csv
import io
import re

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingestor.errors import ParseError
from ingestor.parsers import ParseLimits, parse_csv
from ingestor.parsers import csv as csv_module
from ingestor.records import Record, Reject
from tests.parser_accounting import row_by_row_only

LIMITS = ParseLimits(max_record_bytes=4096, max_line_bytes=8192)


def parse(data: bytes, start: int = 0, line: int = 0) -> list[Record | Reject]:
    return list(parse_csv(io.BytesIO(data), LIMITS, start, line))


def records(data: bytes) -> list[dict[str, object]]:
    return [orjson.loads(i.json) for i in parse(data) if isinstance(i, Record)]


# The csv-spectrum cases, with our rule that an empty cell is an absent field.
SPECTRUM = {
    "comma_in_quotes": (
        b'first,last,address,city,zip\nJohn,Doe,120 any st.,"Anytown, WW",08123\n',
        [
            {
                "first": "John",
                "last": "Doe",
                "address": "120 any st.",
                "city": "Anytown, WW",
                "zip": "08123",
            }
        ],
    ),
    "empty": (b'a,b,c\n1,"",""\n2,3,4\n', [{"a": "1"}, {"a": "2", "b": "3", "c": "4"}]),
    "empty_crlf": (b'a,b,c\r\n1,"",""\r\n2,3,4\r\n', [{"a": "1"}, {"a": "2", "b": "3", "c": "4"}]),
    "escaped_quotes": (
        b'a,b\n1,"ha ""ha"" ha"\n3,4\n',
        [{"a": "1", "b": 'ha "ha" ha'}, {"a": "3", "b": "4"}],
    ),
    "json": (
        b'key,val\n1,"{""type"": ""Point"", ""coordinates"": [102.0, 0.5]}"\n',
        [{"key": "1", "val": {"type": "Point", "coordinates": [102.0, 0.5]}}],
    ),
    "newlines": (
        b'a,b,c\n1,2,3\n"Once upon \na time",5,6\n7,8,9\n',
        [
            {"a": "1", "b": "2", "c": "3"},
            {"a": "Once upon \na time", "b": "5", "c": "6"},
            {"a": "7", "b": "8", "c": "9"},
        ],
    ),
    "newlines_crlf": (
        b'a,b,c\r\n1,2,3\r\n"Once upon \r\na time",5,6\r\n7,8,9\r\n',
        [
            {"a": "1", "b": "2", "c": "3"},
            {"a": "Once upon \r\na time", "b": "5", "c": "6"},
            {"a": "7", "b": "8", "c": "9"},
        ],
    ),
    "quotes_and_newlines": (
        b'a,b\n1,"ha \n""ha"" \nha"\n3,4\n',
        [{"a": "1", "b": 'ha \n"ha" \nha'}, {"a": "3", "b": "4"}],
    ),
    "simple": (b"a,b,c\n1,2,3\n", [{"a": "1", "b": "2", "c": "3"}]),
    "simple_crlf": (b"a,b,c\r\n1,2,3\r\n", [{"a": "1", "b": "2", "c": "3"}]),
    "utf8": (
        "a,b,c\n1,2,3\n4,5,ʤ\n".encode(),
        [{"a": "1", "b": "2", "c": "3"}, {"a": "4", "b": "5", "c": "ʤ"}],
    ),
}


@pytest.mark.parametrize("case", sorted(SPECTRUM))
def test_csv_spectrum(case: str) -> None:
    data, expected = SPECTRUM[case]
    assert records(data) == expected


def test_seed_subscription_example_with_nested_metadata() -> None:
    data = (
        b"subscription_id,product_name,status,start_date,metadata\n"
        b"sub_001,Premium Plan,active,2025-01-15,\n"
        b'sub_002,Basic Plan,inactive,2024-06-01,"{""source"": ""shopify"", '
        b'""tags"": [""vip"", ""annual""]}"\n'
    )
    assert records(data)[1]["metadata"] == {"source": "shopify", "tags": ["vip", "annual"]}
    assert "metadata" not in records(data)[0]


def test_values_stay_strings_and_invalid_json_stays_text() -> None:
    got = records(b'n,flag,j\n42,true,"[1,2"\n')
    assert got == [{"n": "42", "flag": "true", "j": "[1,2"}]


def test_bad_rows_are_skipped_with_line_numbers() -> None:
    data = b'id,name\n1,a\n2,b,EXTRA\n3,caf\xe9\n4,"open\nquote"x\n,\n5,e\n'
    items = parse(data)
    got = [(i.line, i.reason) for i in items if isinstance(i, Reject)]
    assert got[0] == (3, "row has 3 cells but the header has 2 columns")
    assert got[1] == (
        4,
        'row is not valid UTF-8 (it is valid Windows-1252: if the file is, declare "encoding": '
        '"windows-1252" in the folder\'s config.json)',
    )
    assert got[2][0] == 5 and got[2][1].startswith("malformed CSV")
    assert got[-1] == (7, "row has no values (every cell empty)")
    assert [orjson.loads(i.json)["id"] for i in items if isinstance(i, Record)] == ["1", "5"]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "the file is empty"),
        (b"\n1,2\n", "the header row is empty"),
        (b"a,,c\n1,2,3\n", "column 2 of the header has no name"),
        (b"a,b,a\n1,2,3\n", "column 'a' appears twice"),
    ],
)
def test_header_problems_reject_the_whole_file(data: bytes, message: str) -> None:
    with pytest.raises(ParseError, match=message):
        parse(data)


def test_bom_is_stripped_from_the_first_column_name() -> None:
    assert records(b"\xef\xbb\xbfid,name\r\n1,x\r\n") == [{"id": "1", "name": "x"}]


def test_resume_after_a_multiline_row_keeps_physical_line_numbers() -> None:
    data = b'a,b\n1,"two\nlines"\n3,4\n'
    first = parse(data)[0]
    assert (first.line, first.end_line) == (2, 3)
    resumed = parse(data, first.end_offset, first.end_line)
    assert [(i.line, orjson.loads(i.json)) for i in resumed] == [(4, {"a": "3", "b": "4"})]


def test_a_column_mixing_json_text_and_empty_cells_converts_cell_by_cell() -> None:
    data = b'id,v\n1,"[1, 2]"\n2,plain\n3,\n4,[]\n5,123\n6," {""a"": null}"\n7,"{""x"""\n'
    got = {row["id"]: row.get("v", "<absent>") for row in records(data)}
    assert got == {
        "1": [1, 2],
        "2": "plain",
        "3": "<absent>",
        "4": [],  # an empty array is a value, not an empty cell
        "5": "123",  # JSON, but not an object or array: stays text
        "6": {"a": None},
        "7": '{"x"',
    }


def test_a_lone_cr_inside_a_quoted_cell_is_kept_and_does_not_split_the_line() -> None:
    items = parse(b'a,b\n1,"x\ry"\n2,z\n')
    assert [(i.line, orjson.loads(i.json)) for i in items if isinstance(i, Record)] == [
        (2, {"a": "1", "b": "x\ry"}),
        (3, {"a": "2", "b": "z"}),
    ]


@pytest.mark.parametrize("ending", [b"\n", b"\r\n"])
def test_a_crlf_inside_quotes_is_data_and_reaches_the_api_exactly(ending: bytes) -> None:
    """What is inside quotes passes through as written (RFC 4180), whatever the file's own
    line endings, and at every block size."""
    data = b"id,story" + ending + b'1,"Once upon\r\na time"' + ending + b"2,plain" + ending
    expected = [{"id": "1", "story": "Once upon\r\na time"}, {"id": "2", "story": "plain"}]
    assert records(data) == expected
    with pytest.MonkeyPatch.context() as patch:
        for block in range(1, len(data) + 1):
            patch.setattr(csv_module, "BLOCK_BYTES", block)
            assert records(data) == expected


csv_piece = st.sampled_from(
    [b"a", b"1", b",", b'"', b'""', b"\n", b"\r\n", b"\r", b"\xff", b"\xc3\xa9", b"[1]",
     b'"{""k"": 2}"', b" [", b"{", b",,\n", b"\n\n", b"z" * 70, b'"a\r\nb"', b"\x0b", b"\\",
     b"\x00", b"\t", b"%s", b'"[1, {""a"": ""\\u00e9""}]"']
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(
    header=st.sampled_from([b"a,b,c\n", b"x\n", b"id,tags\r\n"]),
    body=st.lists(csv_piece, max_size=60).map(b"".join),
    block=st.integers(1, 40),
    chunk=st.integers(1, 4),
    data_=st.data(),
)
def test_block_and_chunk_sizes_never_change_what_comes_out_and_any_checkpoint_resumes(
    header: bytes, body: bytes, block: int, chunk: int, data_: st.DataObject
) -> None:
    limits = ParseLimits(max_record_bytes=4096, max_line_bytes=64)

    def run(start: int = 0, line: int = 0) -> list[Record | Reject]:
        return list(parse_csv(io.BytesIO(header + body), limits, start, line))

    whole = run()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(csv_module, "BLOCK_BYTES", block)
        patch.setattr(csv_module, "CHUNK_ROWS", chunk)
        assert run() == whole
        # The chunk path against the row-at-a-time path it falls back to: the same items.
        patch.setattr(csv_module._Rows, "_chunk", row_by_row_only)
        assert run() == whole
        if whole:
            index = data_.draw(st.integers(0, len(whole) - 1))
            checkpoint = whole[index]
            assert run(checkpoint.end_offset, checkpoint.end_line) == whole[index + 1 :]


def _expected(header: list[str], row: list[str]) -> dict[str, object]:
    """What a row means: each non-empty cell by its column, a JSON object or array nested."""
    record: dict[str, object] = {}
    for name, cell in zip(header, row, strict=False):
        if cell:
            record[name] = cell
            if cell.lstrip()[:1] in ("{", "["):
                with contextlib.suppress(orjson.JSONDecodeError):
                    value = orjson.loads(cell)
                    if isinstance(value, dict | list):
                        record[name] = value
    return record


cell_text = st.one_of(
    st.text(max_size=8),
    st.sampled_from(["", "", '["a", "b"]', '{"k": [1, 2.5, null]}', " [1]", "[1", '"q"', "\\"]),
)


@settings(max_examples=300, deadline=None)
@given(
    header=st.lists(st.text(min_size=1, max_size=4), min_size=1, max_size=4, unique=True),
    cells=st.lists(st.lists(cell_text, min_size=1, max_size=4), min_size=1, max_size=6),
)
def test_every_row_serialises_to_the_json_object_it_means(
    header: list[str], cells: list[list[str]]
) -> None:
    """Whichever way a chunk is written (as one string with its cells placed between the
    keys, or as dicts when a cell is empty), each row is valid JSON and means its cells."""
    rows = [row[: len(header)] for row in cells]
    jsons = csv_module._serialize(header, rows)
    assert [orjson.loads(json) for json in jsons] == [_expected(header, row) for row in rows]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"id;name;tags\n1;Rex;a\n", "looks semicolon-separated; save it as CSV with commas"),
        (b"id\tname\n1\tRex\n", "looks tab-separated"),
        ("id,name\n1,Rex\n".encode("utf-16"), "UTF-16 text, not UTF-8; save it as CSV"),
    ],
)
def test_a_file_that_is_not_comma_separated_utf8_is_rejected_whole(
    data: bytes, message: str
) -> None:
    with pytest.raises(ParseError, match=message):
        parse(data)


def test_a_one_column_file_with_a_comma_free_header_is_fine() -> None:
    assert records(b"email\na@x.test\n") == [{"email": "a@x.test"}]


def test_parsing_never_changes_the_process_wide_cell_limit() -> None:
    """Before: each parse set csv.field_size_limit to its own record limit, a setting every
    thread shares (lanes of different kinds would race on it)."""
    import csv

    before = csv.field_size_limit()
    small = ParseLimits(max_record_bytes=100, max_line_bytes=8192)
    items = list(parse_csv(io.BytesIO(b"id,text\n1," + b"x" * 500 + b"\n2,ok\n"), small))
    assert csv.field_size_limit() == before == csv_module.FIELD_LIMIT
    assert [type(i).__name__ for i in items] == ["Record", "Record"]  # the batcher sizes them


@pytest.mark.parametrize("delimiter", [b";", b"\t", b"|"])
def test_a_declared_delimiter_reads_the_file_as_a_comma_file_is_read(delimiter: bytes) -> None:
    comma = b'id,name,meta\n1,Rex,"{""a"": 1}"\n2,,"x,y"\n3,Ann\n4,Bo,c,d\n'
    # The same file with another delimiter; the quoted "x,y" keeps its comma.
    other = comma.replace(b",", delimiter).replace(b'"x' + delimiter + b'y"', b'"x,y"')
    expected = parse(comma)
    got = list(parse_csv(io.BytesIO(other), LIMITS, delimiter=delimiter.decode()))
    shown = [(i.line, i.json if isinstance(i, Record) else i.reason) for i in got]
    assert shown == [(i.line, i.json if isinstance(i, Record) else i.reason) for i in expected]
    assert len(shown) == 4 and b'"x,y"' in got[1].json  # type: ignore[union-attr]


def test_a_declared_delimiter_the_header_does_not_use_says_which_it_looks_like() -> None:
    declared = "looks comma-separated; the folder's config.json declares semicolons: correct"
    with pytest.raises(ParseError, match=re.escape(declared)):
        list(parse_csv(io.BytesIO(b"id,name\n1,Rex\n"), LIMITS, delimiter=";"))
    with pytest.raises(ParseError, match=re.escape('or declare "delimiter": ";" in the folder')):
        list(parse_csv(io.BytesIO(b"id;name\n1;Rex\n"), LIMITS))


def _written(rows: list[list[str]], delimiter: str) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, delimiter=delimiter, lineterminator="\n")
    writer.writerows([["a", "b", "c"], *rows])
    return out.getvalue().encode()


@settings(max_examples=200, deadline=None)
@given(
    rows=st.lists(
        st.lists(st.text(alphabet='ab{}[]1 ,;|\t"\n', max_size=6), min_size=3, max_size=3),
        max_size=30,
    ),
    delimiter=st.sampled_from([";", "\t", "|"]),
)
def test_any_table_reads_the_same_whatever_delimiter_it_was_written_and_declared_with(
    rows: list[list[str]], delimiter: str
) -> None:
    """csv.writer quotes what each delimiter needs; the records, skips and line numbers
    must not depend on which one the company's tool used."""

    def seen(items: list[Record | Reject]) -> list[tuple[int, bytes | str]]:
        return [(i.line, i.json if isinstance(i, Record) else i.reason) for i in items]

    comma = parse(_written(rows, ","))
    other = list(parse_csv(io.BytesIO(_written(rows, delimiter)), LIMITS, delimiter=delimiter))
    assert seen(other) == seen(comma)


def test_a_row_that_is_neither_utf8_nor_windows_1252_gets_no_encoding_hint() -> None:
    (reject,) = [i for i in parse(b"id,name\n1,bad\x81\xe9\n") if isinstance(i, Reject)]
    assert reject.reason == "row is not valid UTF-8"
