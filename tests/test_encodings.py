"""Files in a declared encoding: read as the UTF-8 text they hold, with every rule, line
number and checkpoint of a UTF-8 file."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingestor.errors import LayoutError, ParseError
from ingestor.layout import parse_folder_config
from ingestor.ledger import FileState
from ingestor.notify.content import file_facts, read_as_line
from ingestor.parsers import ParseLimits, parse_file
from ingestor.parsers import views as views_module
from ingestor.parsers.encoding import Transcoded
from ingestor.records import LineRun, Record, Reject
from ingestor.reports import FileReport
from ingestor.simulator import Simulator
from tests.conftest import make_folder
from tests.service_helpers import running_service, write_settings

DS = "01KTMWCZ8ZMNZS0HG5HQNX0H6E"
LIMITS = ParseLimits()
# What each encoding can hold: Windows-1252 and Latin-1 western text, UTF-16 anything.
TEXT = {
    "cp1252": st.text(alphabet='ab,;\n\r"{}1 äöüßéèçñ€\u2013„“', max_size=200),
    "latin-1": st.text(alphabet='ab,;\n\r"{}1 äöüßéèçñ', max_size=200),
    "utf-16": st.text(alphabet='ab,;\n\r"{}1 äöß€😀日本', max_size=200),
}


@settings(max_examples=200, deadline=None)
@given(data=st.data(), encoding=st.sampled_from(sorted(TEXT)), chunk=st.integers(1, 9))
def test_decoded_text_reads_and_seeks_as_the_utf8_bytes_would(
    data: st.DataObject, encoding: str, chunk: int
) -> None:
    text = data.draw(TEXT[encoding])
    utf8 = io.BytesIO(text.encode("utf-8"))
    size = len(utf8.getvalue())
    with pytest.MonkeyPatch.context() as patch:  # tiny chunks: every boundary is crossed
        patch.setattr(views_module, "_SOURCE_CHUNK", chunk)
        patch.setattr(views_module, "_KEEP_BEHIND", 3)
        decoded = Transcoded(io.BytesIO(text.encode(encoding)), encoding)
        for _ in range(data.draw(st.integers(1, 12))):
            step = data.draw(st.sampled_from(["read", "readline", "seek"]))
            n = data.draw(st.integers(-1, size + 2))
            if step == "seek":
                target = max(n, 0)
                assert decoded.seek(target) == utf8.seek(target)
            elif step == "read":
                assert decoded.read(n) == utf8.read(n)
            else:
                assert decoded.readline(n) == utf8.readline(n)
            assert decoded.tell() == utf8.tell()


def items(data: bytes, encoding: str, start: int = 0, line: int = 0) -> list[Record | Reject]:
    flat: list[Record | Reject] = []
    for item in parse_file(io.BytesIO(data), "csv", LIMITS, start, line, ",", encoding):
        flat.extend(item if isinstance(item, LineRun) else [item])
    return flat


@pytest.mark.parametrize("encoding", ["windows-1252", "latin-1", "utf-16"])
def test_a_declared_encoding_gives_what_the_utf8_file_gives_from_any_checkpoint(
    encoding: str,
) -> None:
    text = 'id,name,city\n1,Jürgen,Köln\n2,"Zoë, the ""cat""",Besançon\n3,Ann,Bergen,x\n4,,Åre\n'
    expected = items(text.encode("utf-8"), "utf-8")
    got = items(text.encode(encoding), encoding)
    assert got == expected
    assert next(i.json for i in got if isinstance(i, Record)) == (
        '{"id":"1","name":"Jürgen","city":"Köln"}'.encode()
    )
    for index, checkpoint in enumerate(got):  # offsets are in the UTF-8 text
        resumed = items(text.encode(encoding), encoding, checkpoint.end_offset, checkpoint.end_line)
        assert resumed == got[index + 1 :]


def test_a_byte_the_encoding_does_not_define_skips_its_row_and_only_it() -> None:
    data = b"id,name\n1,caf\xe9\n2,bad\x81\n3,ok\n"  # 0x81 means nothing in Windows-1252
    got = items(data, "windows-1252")
    assert [(i.line, type(i).__name__) for i in got] == [
        (2, "Record"),
        (3, "Reject"),
        (4, "Record"),
    ]
    assert got[0].json == '{"id":"1","name":"café"}'.encode()  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"encoding": "rot13"}, '"encoding" "rot13" is not a text encoding'),
        ({"encoding": "klingon"}, '"encoding" "klingon" is not a text encoding'),
        ({"encoding": 1252}, '"encoding" 1252 is not a text encoding'),
    ],
)
def test_an_encoding_python_does_not_know_is_a_config_problem(
    config: dict[str, object], message: str
) -> None:
    with pytest.raises(LayoutError, match=message):
        parse_folder_config(json.dumps({"data_source_id": DS, **config}).encode())


def test_a_windows_export_and_an_excel_unicode_text_are_sent_as_declared(
    tmp_path: Path, sim: Simulator
) -> None:
    """Before: every row with an accent was skipped as invalid UTF-8, and a UTF-16 file was
    rejected whole, with no way to say what they were."""
    drop = tmp_path / "drop"
    settings_path = write_settings(tmp_path / "s.toml", drop, tmp_path / "state", sim)
    windows = make_folder(drop, name="windows")
    (windows / "config.json").write_text(json.dumps({"data_source_id": DS, "encoding": "cp1252"}))
    excel = make_folder(drop, name="excel")
    (excel / "config.json").write_text(
        json.dumps({"data_source_id": DS, "encoding": "utf-16", "delimiter": "\t"})
    )
    with running_service(settings_path) as svc:
        (windows / "a.csv").write_bytes("id,name\n1,Müller \u2013 5 €\n".encode("cp1252"))
        (excel / "b.csv").write_bytes("id\tname\r\n2\tŁódź\r\n".encode("utf-16"))
        runs = {run.identity.name: run for run in (svc.next_run(), svc.next_run())}
    assert {name: run.state for name, run in runs.items()} == {
        "a.csv": FileState.DONE,
        "b.csv": FileState.DONE,
    }
    read_as = {name: FileReport.load(run.report_path).read_as for name, run in runs.items()}  # type: ignore[union-attr]
    assert read_as == {
        "a.csv": {"format": "CSV", "encoding": "cp1252", "byte_order_mark": "none",
                  "line_ends": "LF", "delimiter": "comma",
                  "header": "the first row names the fields"},
        "b.csv": {"format": "CSV", "encoding": "utf-16",
                  "byte_order_mark": "present, not part of the data", "line_ends": "CRLF",
                  "delimiter": "tab", "header": "the first row names the fields"},
    }  # fmt: skip
    report = FileReport.load(runs["b.csv"].report_path)
    assert report is not None and ("Read as", read_as_line(read_as["b.csv"])) in (
        file_facts(report).facts  # the e-mail's facts
    )
    assert read_as_line(read_as["b.csv"]) == (
        "CSV, utf-16, tab-separated, CRLF line ends, header row, byte-order mark"
    )
    assert sorted(sim.records("acme"), key=lambda r: str(r["id"])) == [
        {"id": "1", "name": "Müller \u2013 5 €"},
        {"id": "2", "name": "Łódź"},
    ]


def test_a_declared_encoding_reads_jsonl_as_its_utf8_twin_from_any_checkpoint() -> None:
    text = '{"id": 1, "name": "Jürgen"}\n\n{"id": 2, "city": "Besançon"}\nnot json\n{"id": 3}\n'

    def jsonl(data: bytes, encoding: str, start: int = 0, line: int = 0) -> list[object]:
        flat: list[object] = []
        for item in parse_file(io.BytesIO(data), "jsonl", LIMITS, start, line, ",", encoding):
            flat.extend(item if isinstance(item, LineRun) else [item])
        return flat

    got = jsonl(text.encode("latin-1"), "latin-1")
    assert got == jsonl(text.encode("utf-8"), "utf-8") and len(got) == 4
    for index, checkpoint in enumerate(got):
        end = (checkpoint.end_offset, checkpoint.end_line)  # type: ignore[attr-defined]
        assert jsonl(text.encode("latin-1"), "latin-1", *end) == got[index + 1 :]


def test_an_undeclared_utf16_file_is_rejected_with_how_to_declare_it() -> None:
    data = "id\tname\r\n1\tRex\r\n".encode("utf-16")
    with pytest.raises(ParseError) as raised:
        items(data, "utf-8")
    assert 'or declare "encoding": "utf-16" (and "delimiter": "\\t" if it is Excel' in str(
        raised.value
    )


def test_an_undeclared_windows_jsonl_line_says_how_to_declare_the_encoding() -> None:
    data = b'{"name": "caf\xe9"}\n{"name": oops}\n'
    reasons = [i.reason for i in parse_file(io.BytesIO(data), "jsonl", LIMITS)]  # type: ignore[union-attr]
    assert reasons[0].startswith("invalid UTF-8") and reasons[0].endswith(
        'declare "encoding": "windows-1252" in the folder\'s config.json)'
    )
    assert reasons[1].startswith("invalid JSON") and "Windows-1252" not in reasons[1]
