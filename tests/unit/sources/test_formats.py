"""Tests of the file readers (bulkwrites.sources.formats): plain Python, inputs built in memory."""

from __future__ import annotations

import ast
import contextlib
import datetime as dt
import io
import itertools
import json
import pathlib
import random
import tracemalloc
import zipfile
from collections.abc import Iterable, Iterator
from decimal import Decimal
from typing import Any, NoReturn

import openpyxl
import openpyxl.xml
import pytest
from openpyxl.worksheet.worksheet import Worksheet

from bulkwrites.sources import formats
from bulkwrites.sources.formats import (
    FORMATS,
    ROWS_ARE_DYNAMODB_JSON,
    SourceError,
    SourceRow,
    detect_format,
    read_rows,
)

# --- helpers --------------------------------------------------------------------------


def read(data: bytes, fmt: str, **kwargs: Any) -> list[SourceRow]:
    return list(read_rows(io.BytesIO(data), fmt, **kwargs))


def values(data: bytes, fmt: str) -> list[dict[str, Any] | None]:
    return [row.values for row in read(data, fmt)]


class ChunkStream(io.RawIOBase):
    """A non-seekable stream over byte chunks, handing out at most ``most`` bytes per read."""

    def __init__(self, chunks: Iterable[bytes], most: int | None = None) -> None:
        self._chunks: Iterator[bytes] = iter(chunks)
        self._pending = b""
        self._most = most
        self.bytes_read = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[no-untyped-def]
        while not self._pending:
            self._pending = next(self._chunks, b"")
            if not self._pending:
                return 0
        size = min(len(buffer), len(self._pending), self._most or len(buffer))
        buffer[:size] = self._pending[:size]
        self._pending = self._pending[size:]
        self.bytes_read += size
        return size


def trickle(data: bytes, most: int = 3) -> ChunkStream:
    return ChunkStream([data], most=most)


def make_xlsx(rows: Iterable[Iterable[object]], *, styled_empty: Iterable[tuple[int, int]] = ()) -> bytes:
    workbook = openpyxl.Workbook()
    sheet = workbook.active
    assert isinstance(sheet, Worksheet)  # a new workbook has one worksheet, the active one
    for row in rows:
        sheet.append(list(row))
    for row_number, column in styled_empty:  # cells with a format but no value
        sheet.cell(row=row_number, column=column).number_format = "0.00"
    out = io.BytesIO()
    workbook.save(out)
    return out.getvalue()


def zip_bytes(entries: dict[str, bytes], level: int = 1) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED, compresslevel=level) as archive:
        for name, content in entries.items():
            archive.writestr(name, content)
    return out.getvalue()


# --- the contract ---------------------------------------------------------------------


def test_formats_and_dynamodb_json_flag() -> None:
    assert FORMATS == {
        "csv": "CSV",
        "tsv": "TSV",
        "json": "JSON (array of objects)",
        "jsonl": "JSON Lines",
        "xlsx": "Excel (XLSX)",
        "ddbjson": "DynamoDB JSON (export lines, scan output, items)",
    }
    assert set(ROWS_ARE_DYNAMODB_JSON) == {"ddbjson"}


def test_module_does_not_import_django() -> None:
    package = pathlib.Path(formats.__file__).parent
    for path in [*package.glob("*.py"), package.parent / "rows.py", package.parent / "__init__.py"]:
        source = path.read_text()
        imported = set()
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Import):
                imported |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                imported.add(node.module or "")
        assert not {name for name in imported if name.split(".")[0] == "django"}


def test_unknown_format_code_raises_at_once() -> None:
    with pytest.raises(SourceError, match="Unknown file format"):
        read_rows(io.BytesIO(b"a\n1\n"), "parquet")


def test_source_row_is_frozen() -> None:
    row = SourceRow(1, {"a": "x"})
    assert row.error is None
    assert row.raw is None
    with pytest.raises(AttributeError):
        row.position = 2  # type: ignore[misc]


# --- CSV and TSV ----------------------------------------------------------------------


def test_csv_happy_path_typed_headers_and_empty_cells() -> None:
    rows = read(b"pk,price:N,note\na,9.5,hello\nb,,  spaced  \n", "csv")
    assert rows == [
        SourceRow(1, {"pk": "a", "price:N": "9.5", "note": "hello"}, raw="a,9.5,hello"),
        SourceRow(2, {"pk": "b", "note": "  spaced  "}, raw="b,,  spaced  "),
    ]


def test_csv_bom_crlf_and_blank_lines() -> None:
    data = b"\xef\xbb\xbfpk,n\r\n\r\na,1\r\n\r\n,\r\nb,2\r\n\r\n"
    rows = read(data, "csv")
    assert [(row.position, row.values) for row in rows] == [
        (1, {"pk": "a", "n": "1"}),
        (2, {"pk": "b", "n": "2"}),
    ]


def test_csv_bare_cr_line_endings() -> None:
    assert values(b"pk,n\ra,1\rb,2\r", "csv") == [{"pk": "a", "n": "1"}, {"pk": "b", "n": "2"}]


def test_csv_quoted_cells_with_newlines_and_commas_count_rows_not_lines() -> None:
    data = b'pk,text\r\na,"one, two"\r\nb,"line 1\r\nline 2\r\n""quoted"""\r\nc,x,extra\r\n'
    rows = read(data, "csv")
    assert rows[0] == SourceRow(1, {"pk": "a", "text": "one, two"}, raw='a,"one, two"')
    assert rows[1].position == 2
    assert rows[1].values == {"pk": "b", "text": 'line 1\nline 2\n"quoted"'}  # CRLF in a cell -> "\n"
    # The third data row starts on physical line 6: messages name both.
    assert rows[2] == SourceRow(3, None, error="row 3 (line 6): 3 cells but the header has 2 columns", raw="c,x,extra")


def test_csv_too_many_and_too_few_cells() -> None:
    rows = read(b"a,b,c\n1,2,3,4,5\n1\n1,2,3,,\n", "csv")
    assert rows[0].values is None
    assert rows[0].error == "row 1 (line 2): 5 cells but the header has 3 columns"
    assert rows[0].raw == "1,2,3,4,5"
    assert rows[1] == SourceRow(2, {"a": "1"}, raw="1")  # missing cells are simply absent
    assert rows[2].values == {"a": "1", "b": "2", "c": "3"}  # empty cells past the header are harmless


def test_csv_header_problems() -> None:
    with pytest.raises(SourceError, match=r'names "pk" twice \(columns 1 and 3\)'):
        read(b"pk,n,pk\n1,2,3\n", "csv")
    with pytest.raises(SourceError, match=r"CSV file: column 2 of the header row is blank"):
        read(b"pk,,n\n1,2,3\n", "csv")
    with pytest.raises(SourceError, match=r"column 2 of the header row is blank"):
        read(b"pk,  ,n\n1,2,3\n", "csv")
    with pytest.raises(SourceError, match=r"^CSV file: the header row is separated by semicolons, not commas"):
        read(b"pk;n\na;1\n", "csv")
    with pytest.raises(SourceError, match=r"separated by tabs, not commas; choose the TSV format"):
        read(b"pk\tn\na\t1\n", "csv")
    with pytest.raises(SourceError, match=r"^TSV file: .* by commas, not tabs; choose the CSV format"):
        read(b"pk,n\na,1\n", "tsv")
    assert values(b"pk\na\n", "csv") == [{"pk": "a"}]  # one column is fine
    # Blank header cells after the last name (as Excel writes them) are ignored.
    assert values(b"pk,n,,\na,1,,\n", "csv") == [{"pk": "a", "n": "1"}]


@pytest.mark.parametrize("data", [b"", b"\xef\xbb\xbf", b"\r\n\n", b",,\n"])
def test_csv_without_header_is_refused(data: bytes) -> None:
    with pytest.raises(SourceError, match="CSV file: the file is empty"):
        read(data, "csv")


def test_csv_header_only_has_no_rows() -> None:
    assert read(b"pk,n\n", "csv") == []


def test_csv_raw_is_truncated() -> None:
    rows = read(b"pk\n" + b"x" * 5000 + b"\n", "csv")
    assert rows[0].values == {"pk": "x" * 5000}
    assert rows[0].raw == "x" * 1000


def test_csv_cell_longer_than_an_item_is_refused() -> None:
    data = b'pk,text\na,"' + b"x" * (formats.limits.DEFAULT_MAX_CELL_CHARS + 10) + b'"\n'
    with pytest.raises(SourceError, match=r"row 1 \(line 2\): a cell is longer than"):
        read(data, "csv")


def test_tsv_reads_tabs_and_quotes() -> None:
    data = b'pk\tname:S\tnote\na\tx, y\t"tab\there"\nb\t\t\n'
    assert values(data, "tsv") == [{"pk": "a", "name:S": "x, y", "note": "tab\there"}, {"pk": "b"}]


def test_non_utf8_names_offset_and_line() -> None:
    with pytest.raises(SourceError) as caught:
        read(b"pk,name\na,caf\xe9\n", "csv")
    assert str(caught.value).startswith("The file is not valid UTF-8 (byte 0xe9 at offset 13, line 2).")


def test_non_utf8_offset_past_the_first_chunk() -> None:
    data = b"pk\n" + b"abc\n" * 40_000 + b"x\xff\n"
    with pytest.raises(SourceError, match=r"byte 0xff at offset 160004, line 40002\)"):
        read(data, "csv")


def test_utf8_cut_short_at_the_end() -> None:
    with pytest.raises(SourceError, match=r"byte 0xc3 at offset 5, line 2"):
        read(b"pk\na,\xc3", "csv")


def test_chunk_boundaries_do_not_matter() -> None:
    data = '\ufeffpk,text\r\né,"ü\r\n€"\r\n\r\nb,𝄞\rc,z\n'.encode()
    expected = read(data, "csv")
    assert [row.values for row in expected] == [
        {"pk": "é", "text": "ü\n€"},
        {"pk": "b", "text": "𝄞"},
        {"pk": "c", "text": "z"},
    ]
    for most in (1, 2, 3, 5):
        assert list(read_rows(trickle(data, most), "csv")) == expected


def test_max_bytes_on_csv() -> None:
    data = b"pk\n" + (b"x" * 999 + b"\n") * 2000  # 2 MB
    with pytest.raises(SourceError, match=r"^The file is larger than the limit of 1 MB\.$"):
        read(data, "csv", max_bytes=1024 * 1024)
    small = b"pk\na\n"
    assert len(read(small, "csv", max_bytes=len(small))) == 1  # exactly at the limit is fine


# --- JSON arrays ----------------------------------------------------------------------


def test_json_array_keeps_types_with_decimal_numbers() -> None:
    data = b'\xef\xbb\xbf[{"pk": "a", "price": 9.5, "n": 3, "ok": true, "none": null, "l": [1.25], "m": {"x": 0.1}}]'
    rows = read(data, "json")
    assert rows == [
        SourceRow(
            1,
            {
                "pk": "a",
                "price": Decimal("9.5"),
                "n": 3,
                "ok": True,
                "none": None,
                "l": [Decimal("1.25")],
                "m": {"x": Decimal("0.1")},
            },
        )
    ]
    first = rows[0].values
    assert first is not None
    assert type(first["n"]) is int
    assert not any(isinstance(v, float) for v in first.values())


def test_json_array_non_object_elements_are_row_errors() -> None:
    rows = read(b'[{"pk": "a"}, [1, 2], "x", 5.0, {"pk": "b"}]', "json")
    assert [row.position for row in rows] == [1, 2, 3, 4, 5]
    assert rows[1] == SourceRow(2, None, error="element 2: expected a JSON object, got a list", raw="[1, 2]")
    assert rows[2].error == "element 3: expected a JSON object, got a string"
    assert rows[3].error == "element 4: expected a JSON object, got a number"
    assert rows[3].raw == "5.0"
    assert rows[4].values == {"pk": "b"}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b'{"pk": "a"}', r"^JSON file: expected an array of objects at the top level, got an object"),
        (b"42", r"^JSON file: expected an array of objects at the top level, got a number\.$"),
        (b'[{"pk": "a"},\n {"pk": }]', r"^JSON file: invalid JSON \(line 2, column 9\): parse error: unallowed token"),
        (
            b'[{"n": NaN}]',
            r"^JSON file: invalid JSON \(line 1, column 8\): lexical error: invalid char in json text\.$",
        ),
        (b"  \n ", r"^JSON file: the file is empty\.$"),
        (b"[" * 100_000, r"^JSON file: the file ends in the middle of the JSON \(is the array closed\?\)\.$"),
        (b'["\xff"]', r"^The file is not valid UTF-8 \(byte 0xff at offset 2, line 1\)"),
    ],
)
def test_json_array_file_errors(data: bytes, message: str) -> None:
    with pytest.raises(SourceError, match=message):
        read(data, "json")


def test_json_array_too_deep_element_is_a_row_error() -> None:
    deep = b'{"a": ' * 200 + b"1" + b"}" * 200
    rows = read(b'[{"pk": "x"}, ' + deep + b', {"pk": "y"}]', "json")
    assert rows[1] == SourceRow(
        2,
        None,
        error="element 2: nested more than 100 levels deep (DynamoDB allows 32)",
        raw="(too deeply nested to show)",
    )
    assert rows[2].values == {"pk": "y"}


def test_json_array_empty_is_no_rows() -> None:
    assert read(b"[]", "json") == []


# --- JSON Lines -----------------------------------------------------------------------


def test_jsonl_positions_are_physical_lines_and_bad_lines_do_not_stop_reading() -> None:
    data = (
        b'{"pk": "a", "price": 1.5, "tags": ["x"]}\r\n'
        b"\n"
        b'{"pk": "b" "n": 1}\n'
        b"[1, 2]\n"
        b"   \n"
        b'{"pk": "c", "big": 12345678901234567890}\n'
        b'{"pk": "d", "n": Infinity}\n'
        b'{"pk": "e"}'
    )
    rows = read(data, "jsonl")
    assert rows[0] == SourceRow(1, {"pk": "a", "price": Decimal("1.5"), "tags": ["x"]}, raw=data[:40].decode())
    assert rows[1] == SourceRow(
        3, None, error="line 3: invalid JSON: Expecting ',' delimiter (column 12)", raw='{"pk": "b" "n": 1}'
    )
    assert rows[2] == SourceRow(4, None, error="line 4: expected a JSON object, got a list", raw="[1, 2]")
    assert rows[3] == SourceRow(6, {"pk": "c", "big": 12345678901234567890}, raw=data.split(b"\n")[5].decode())
    assert rows[4].position == 7
    assert rows[4].error is not None
    assert rows[4].error.startswith("line 7: Infinity is not valid JSON")
    assert rows[5] == SourceRow(8, {"pk": "e"}, raw='{"pk": "e"}')


def test_jsonl_pathological_lines_are_row_errors() -> None:
    data = b"[" * 100_000 + b"\n" + b'{"n": ' + b"9" * 5000 + b"}\n" + b'{"pk": "ok"}\n'
    rows = read(data, "jsonl")
    assert rows[0].error == "line 1: the JSON is nested too deeply"
    assert rows[0].raw == "[" * 1000
    assert rows[1].error == "line 2: a number has too many digits"
    assert rows[2].values == {"pk": "ok"}


def test_jsonl_empty_file_is_refused() -> None:
    with pytest.raises(SourceError, match=r"^JSON Lines file: the file is empty\.$"):
        read(b"\n \n", "jsonl")


# --- DynamoDB JSON lines ----------------------------------------------------------------


def test_ddbjson_with_and_without_the_item_wrapper() -> None:
    data = (
        b'{"Item": {"pk": {"S": "a"}, "n": {"N": "1"}, "m": {"M": {"x": {"BOOL": true}}}}}\n'
        b'{"pk": {"S": "b"}, "l": {"L": [{"N": "2.5"}]}}\n'
        b'{"Item": {"S": "lonely"}}\n'  # only the bare reading makes sense: an attribute named Item
    )
    assert values(data, "ddbjson") == [
        {"pk": {"S": "a"}, "n": {"N": "1"}, "m": {"M": {"x": {"BOOL": True}}}},
        {"pk": {"S": "b"}, "l": {"L": [{"N": "2.5"}]}},
        {"Item": {"S": "lonely"}},
    ]


def test_ddbjson_malformed_lines_are_row_errors() -> None:
    data = (
        b'{"Item": {"pk": {"S": "a"}}}\n'
        b'{"Item": {"pk": "a"}}\n'
        b'{"Item": {}}\n'
        b"[1]\n"
        b'{"Item": {"pk": {"S": "a"}\n'
        b'{"Metadata": {"WriteTimestampMicros": {"N": "1"}}, "Keys": {"pk": {"S": "a"}}, "NewImage": {}}\n'
        b'{"pk": {"S": "x", "N": "1"}}\n'
        b'{"pk": {"S": "ok"}}\n'
    )
    rows = read(data, "ddbjson")
    assert [row.position for row in rows] == [1, 2, 3, 4, 5, 6, 7, 8]
    assert rows[0].values == {"pk": {"S": "a"}}
    assert rows[1].error == 'line 2: attribute "pk" is not in DynamoDB JSON form (like {"S": "text"})'
    assert rows[2].error == "line 3: the item has no attributes"
    assert rows[3].error == "line 4: expected a JSON object, got a list"
    assert rows[4].error is not None
    assert rows[4].error.startswith("line 5: invalid JSON:")
    assert rows[5].error is not None
    assert rows[5].error.startswith("line 6: this is a change record of an incremental export")
    assert rows[6].error == 'line 7: attribute "pk" is not in DynamoDB JSON form (like {"S": "text"})'
    assert rows[7].values == {"pk": {"S": "ok"}}
    assert all(row.raw for row in rows)


# --- XLSX -----------------------------------------------------------------------------


def test_xlsx_uses_defusedxml() -> None:
    assert openpyxl.xml.DEFUSEDXML is True


def test_xlsx_cells_become_strings() -> None:
    data = make_xlsx(
        [
            ["pk", "price:N", "flag", "when", "day", "at", "took", "note", "blank", "midnight"],
            [
                "a",
                1.5,
                True,
                dt.datetime(2024, 1, 15, 13, 30),
                dt.date(2024, 1, 15),
                dt.time(13, 30),
                dt.timedelta(hours=26, minutes=30),
                "  spaced  ",
                "",
                dt.datetime(2024, 1, 15),
            ],
            [42, 42.0, False, None, None, None, None, 0.1, None, None],
            [10**15, 1e20, -0.5],
        ]
    )
    rows = read(data, "xlsx")
    assert [row.position for row in rows] == [1, 2, 3]
    assert rows[0].values == {
        "pk": "a",
        "price:N": "1.5",
        "flag": "true",
        "when": "2024-01-15T13:30:00",
        "day": "2024-01-15",  # a date-formatted cell
        "at": "13:30:00",
        "took": "PT26H30M",
        "note": "  spaced  ",
        "midnight": "2024-01-15T00:00:00",  # a datetime-formatted cell keeps its time
    }
    assert rows[1].values == {"pk": "42", "price:N": "42", "flag": "false", "note": "0.1"}
    assert rows[1].raw == "42\t42\tfalse\t\t\t\t\t0.1"
    assert rows[2].values == {"pk": "1000000000000000", "price:N": "1e+20", "flag": "-0.5"}


def test_xlsx_blank_and_trailing_rows_and_too_many_cells() -> None:
    data = make_xlsx(
        [["pk", "n"], ["a", 1], [], ["b", 2, "extra"], ["c"]],
        styled_empty=[(4, 5), (8, 1), (9, 3)],  # cells with formats but no values
    )
    rows = read(data, "xlsx")
    assert rows == [
        SourceRow(1, {"pk": "a", "n": "1"}, raw="a\t1"),
        SourceRow(2, None, error="row 2 (sheet row 4): 3 cells but the header has 2 columns", raw="b\t2\textra"),
        SourceRow(3, {"pk": "c"}, raw="c"),
    ]


def test_xlsx_header_problems() -> None:
    with pytest.raises(SourceError, match=r"XLSX file: column 2 \(B\) of the header row is blank"):
        read(make_xlsx([["pk", None, "n"], ["a", 1, 2]]), "xlsx")
    with pytest.raises(SourceError, match=r'XLSX file: the header row names "pk" twice \(columns 1 and 2\)'):
        read(make_xlsx([["pk", "pk"]]), "xlsx")
    with pytest.raises(SourceError, match="XLSX file: the first sheet is empty"):
        read(make_xlsx([]), "xlsx")
    assert read(make_xlsx([[None], ["pk", "n"]]), "xlsx") == []  # header on the first non-blank row


def test_xlsx_from_a_non_seekable_stream_and_max_bytes() -> None:
    data = make_xlsx([["pk"], ["a"]])
    assert [row.values for row in read_rows(trickle(data, 4096), "xlsx")] == [{"pk": "a"}]
    with pytest.raises(SourceError, match="larger than the limit"):
        read(data, "xlsx", max_bytes=len(data) - 1)
    with pytest.raises(SourceError, match="larger than the limit"):
        list(read_rows(trickle(data, 4096), "xlsx", max_bytes=len(data) - 1))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"pk,n\na,1\n", r"^XLSX file: not a valid Excel workbook\.$"),
        (b"", r"^XLSX file: not a valid Excel workbook\.$"),
        (b"PK\x03\x04 truncated", r"^XLSX file: not a valid Excel workbook\.$"),
        (zip_bytes({"hello.txt": b"hi"}), r"^XLSX file: not a valid Excel workbook\.$"),
        (
            b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(512),
            r"old-style Excel workbook \(\.xls\) or a password",
        ),
    ],
)
def test_xlsx_that_is_not_a_workbook(data: bytes, message: str) -> None:
    with pytest.raises(SourceError, match=message):
        read(data, "xlsx")


def test_xlsx_zip_bomb_is_refused_before_openpyxl(monkeypatch: pytest.MonkeyPatch) -> None:
    out = io.BytesIO()
    zeros = bytes(1 << 20)
    with (
        zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive,
        archive.open("xl/worksheets/sheet1.xml", "w") as member,
    ):
        for _ in range(50):
            member.write(zeros)
    data = out.getvalue()
    assert len(data) < 1_000_000

    def fail(*args: object, **kwargs: object) -> NoReturn:
        raise AssertionError("openpyxl must not see the file")

    monkeypatch.setattr(openpyxl, "load_workbook", fail)
    with pytest.raises(SourceError, match=r"would unpack to 50 MB, more than the limit of 10 MB.*zip bomb"):
        read(data, "xlsx", max_bytes=1_000_000)
    monkeypatch.setattr(formats.xlsx, "XLSX_MAX_UNPACKED", 1_000_000)  # the limit without max_bytes
    with pytest.raises(SourceError, match="zip bomb"):
        read(data, "xlsx")


# --- detect_format --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("filename", "head", "expected"),
    [
        ("data.csv", b"pk,n\n", "csv"),
        ("DATA.CSV", b"", "csv"),
        ("data.tsv", b"pk\tn\n", "tsv"),
        ("data.tab", b"pk\tn\n", "tsv"),
        ("data.xlsx", b"PK\x03\x04", "xlsx"),
        ("data.json", b'[{"pk": "a"}]', "json"),
        ("data.json", b'\xef\xbb\xbf  [\n  {"pk": "a"}\n]', "json"),
        ("data.json", b'{\n  "pk": "a"\n}\n', "json"),  # one pretty-printed object: JSON (refused later)
        ("data.json", b'{"pk": "a"}\n{"pk": "b"}\n', "jsonl"),
        ("data.json", b'{"pk": "a", "text": "a very long line cut sho', "jsonl"),
        ("data.json", b'{"Item": {"pk": {"S": "a"}}}\n', "ddbjson"),
        ("data.json", b'{"Item": {"pk": {"S": "a very long line cut sho', "ddbjson"),
        ("data.json", b'{"Item": {"name": "plain JSON"}}\n', "jsonl"),
        ("data.jsonl", b'{"pk": "a"}\n', "jsonl"),
        ("data.ndjson", b'{"pk": "a"}\n', "jsonl"),
        ("export.jsonl", b'{"Item": {"pk": {"S": "a"}}}\n', "ddbjson"),
        ("dir/upload", b"PK\x03\x04\x14\x00", "xlsx"),
        ("upload.bin", b'{"Item": {"pk": {"S": "a"}}}\n', "ddbjson"),
        ("upload", b'{"pk": "a"}\n', "jsonl"),
        ("upload", b"[1]", "json"),
        ("renamed.csv", b"PK\x03\x04\x14\x00", "xlsx"),
        ("export.txt", b"pk\tname\n", "tsv"),
        ("export.txt", b"pk,name\n", "csv"),
    ],
)
def test_detect_format(filename: str, head: bytes, expected: str) -> None:
    assert detect_format(filename, head) == expected


@pytest.mark.parametrize(
    ("filename", "head", "message"),
    [
        ("notes.txt", b"just some words\n", "Unknown file format"),
        ("data.parquet", b"PAR1\x00\x00", "Unknown file format"),
        ("noext", b"", "Unknown file format"),
        ("old.xls", b"\xd0\xcf\x11\xe0", r"old-style Excel workbook \(\.xls\)"),
    ],
)
def test_detect_format_refuses(filename: str, head: bytes, message: str) -> None:
    with pytest.raises(SourceError, match=message):
        detect_format(filename, head)


# --- robustness -------------------------------------------------------------------------


def _only_rows_or_source_error(data: bytes, fmt: str) -> str:
    """Read data; any exception other than SourceError fails the test. Returns the outcome."""
    try:
        for row in read_rows(io.BytesIO(data), fmt, max_bytes=1_000_000):
            assert isinstance(row, SourceRow)
            assert (row.values is None) == (row.error is not None)
            if row.error is not None:
                assert row.raw is not None
    except SourceError as exc:
        message = str(exc)
        assert message
        assert "Traceback" not in message
        return "file error"
    return "rows"


def test_random_garbage_only_yields_rows_or_raises_source_error() -> None:
    rng = random.Random(20240115)
    alphabet = b'{}[]",:\\\r\n\t ;abcNSIL0123456789.eE-\xef\xbb\xbf\xff\xc3\x00'
    outcomes: dict[str, set[str]] = {fmt: set() for fmt in FORMATS}
    for case in range(200):
        size = rng.randrange(0, 300)
        data = bytes(rng.choice(alphabet) for _ in range(size)) if case % 2 else rng.randbytes(size)
        if case % 4 == 1:
            data = bytes(byte for byte in data if byte < 0x80)  # ASCII: get past decoding
        for prefix in (b"", b"PK\x03\x04", b'{"Item": {', b"pk,n\n"):
            for fmt in FORMATS:
                outcomes[fmt].add(_only_rows_or_source_error(prefix + data, fmt))
            with contextlib.suppress(SourceError):
                assert detect_format(rng.choice(["x.csv", "x.json", "x", "x.txt"]), prefix + data) in FORMATS
    # Garbage gets past the first checks of the line formats (some of it reads as rows), while
    # no garbage is a JSON array or a zip: those two refuse every case, and none of it crashes.
    line_formats = {"csv", "tsv", "jsonl", "ddbjson"}
    assert outcomes == {fmt: {"rows", "file error"} if fmt in line_formats else {"file error"} for fmt in FORMATS}


def test_mutated_valid_files_only_yield_rows_or_raise_source_error() -> None:
    rng = random.Random(7)
    structural = b'{}[]",:\\\r\n\t ;aSNIL0.-'
    samples = {
        "csv": b'pk,n,text\na,1,"x, ""y"""\nb,2,"multi\r\nline"\n',
        "tsv": b"pk\tn\na\t1\nb\t2\n",
        "json": json.dumps([{"pk": "a", "n": 1.5, "l": [1, {"m": None}]}, {"pk": "b"}]).encode(),
        "jsonl": b'{"pk": "a", "n": 1.5}\n{"pk": "b", "l": [true, null]}\n',
        "ddbjson": b'{"Item": {"pk": {"S": "a"}, "n": {"N": "1"}}}\n{"pk": {"S": "b"}}\n',
        "xlsx": make_xlsx([["pk", "n", "when"], ["a", 1.5, dt.datetime(2024, 1, 1)], ["b", True, "x"]]),
    }
    outcomes: dict[str, set[str]] = {fmt: set() for fmt in samples}
    for fmt, sample in samples.items():
        for _ in range(100):
            data = bytearray(sample)
            for _ in range(rng.randrange(1, 4)):
                position = rng.randrange(len(data))
                action = 0 if fmt == "xlsx" else rng.randrange(4)  # keep zip offsets valid
                if action == 0:
                    data[position] = rng.randrange(256) if fmt == "xlsx" else rng.choice(structural)
                elif action == 1:
                    del data[position : position + rng.randrange(1, 5)]
                elif action == 2:
                    data[position:position] = bytes(rng.choice(structural) for _ in range(rng.randrange(1, 5)))
                else:
                    data[position] = rng.randrange(128, 256)  # not UTF-8, most of the time
                if not data:
                    break
            outcomes[fmt].add(_only_rows_or_source_error(bytes(data), fmt))
    # The mutations reach past the first checks: every format both reads rows and refuses files.
    assert all(seen == {"rows", "file error"} for seen in outcomes.values()), outcomes


def test_xlsx_work_stays_proportional_to_the_cells_in_the_file() -> None:
    workbook = openpyxl.Workbook()
    sheet = workbook.active
    assert isinstance(sheet, Worksheet)  # a new workbook has one worksheet, the active one
    sheet.append(["pk", "n"])
    sheet.append(["a", 1])
    sheet.cell(row=3, column=18278, value="far")  # openpyxl pads this row to 18,278 cells
    sheet.cell(row=999, column=1, value="late")
    out = io.BytesIO()
    workbook.save(out)
    rows = read(out.getvalue(), "xlsx")
    assert rows[1].error == "row 2 (sheet row 3): 18278 cells but the header has 2 columns"
    assert rows[1].raw is not None
    assert len(rows[1].raw) == 1000
    assert rows[2] == SourceRow(3, {"pk": "late"}, raw="late")

    # A row number past Excel's last row would make openpyxl yield billions of empty rows.
    with zipfile.ZipFile(out) as source:
        members = {name: source.read(name) for name in source.namelist()}
    sheet_xml = "xl/worksheets/sheet1.xml"
    members[sheet_xml] = members[sheet_xml].replace(b'r="999"', b'r="9999999999"')
    members[sheet_xml] = members[sheet_xml].replace(b'r="A999"', b'r="A9999999999"')
    with pytest.raises(SourceError, match=r"more than 1,048,576 rows, Excel's limit"):
        read(zip_bytes(members), "xlsx")


def test_csv_streams_in_bounded_memory() -> None:
    # 50,000 rows of ~420 bytes: a 21 MB file. Holding the file's text, or the rows, would
    # need well over 20 MB; streaming needs a few chunks. (Rows rather than bytes make
    # tracemalloc slow, hence fewer, wider rows than a 200,000-row file of the same size.)
    count = 50_000
    block = "".join(f"id-{i},{'x' * 400},{i}.5\n" for i in range(1000)).encode()
    stream = ChunkStream(itertools.chain([b"pk,text,price:N\n"], itertools.repeat(block, count // 1000)))
    rows = read_rows(stream, "csv")

    tracemalloc.start()
    try:
        first = next(rows)
        read_for_first_row = stream.bytes_read
        seen = 1 + sum(1 for _ in rows)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert first == SourceRow(1, {"pk": "id-0", "text": "x" * 400, "price:N": "0.5"}, raw=f"id-0,{'x' * 400},0.5")
    assert read_for_first_row <= 2 * formats.CHUNK_SIZE  # no read-ahead beyond a chunk or two
    assert seen == count
    assert stream.bytes_read > 20_000_000
    assert peak < 4 * 1024 * 1024, f"peak {peak / 1e6:.1f} MB"
