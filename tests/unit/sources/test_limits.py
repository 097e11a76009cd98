"""Bounded work for any file: each limit is checked while reading, with small limits configured here.

The crafted files are made by the generators of ``bench/crafted.py`` (which measures the
full-size ones: ``python bench/crafted.py``), smaller. "While reading" is shown by how many bytes
a reader took from a stream before refusing, and by tracemalloc's peak.
"""

from __future__ import annotations

import io
import itertools
import tracemalloc
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any, cast

import pytest

from bench.crafted import csv_long_line, json_array, xlsx_inline_cell, xlsx_shared_cell, xlsx_shared_strings
from bulkwrites.sources.formats import CHUNK_SIZE, Limits, SourceError, SourceRow, read_rows

SMALL = Limits(max_cell_chars=1000, max_row_bytes=10_000, max_row_cells=50, max_xlsx_part_bytes=1_000_000)


class LazyStream(io.RawIOBase):
    """A non-seekable stream over generated chunks, counting what was read (nothing is built ahead)."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks: Iterator[bytes] = iter(chunks)
        self._pending = b""
        self.bytes_read = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[no-untyped-def]
        while not self._pending:
            self._pending = next(self._chunks, b"")
            if not self._pending:
                return 0
        size = min(len(buffer), len(self._pending))
        buffer[:size] = self._pending[:size]
        self._pending = self._pending[size:]
        self.bytes_read += size
        return size


def endless(head: bytes, piece: bytes, tail: bytes = b"", total: int = 1 << 30) -> LazyStream:
    """``head``, then ``piece`` repeated to ``total`` bytes (1 GiB unless told), then ``tail``: never made whole."""
    block = piece * (CHUNK_SIZE // len(piece))
    return LazyStream(itertools.chain([head], itertools.repeat(block, total // len(block)), [tail]))


def read_all(stream: Any, fmt: str, limits: Limits = SMALL) -> list[SourceRow]:
    return list(read_rows(stream, fmt, limits=limits))


# --- CSV and TSV ---------------------------------------------------------------------------------


def test_a_1_gib_csv_line_of_small_cells_is_refused_after_reading_little_of_it() -> None:
    stream = endless(b"pk\n", b"a,")
    with pytest.raises(SourceError) as info:
        read_all(stream, "csv")
    message = str(info.value)
    assert message.startswith("CSV file: line 2 is longer than 10,000 characters (")
    assert "BULKWRITES_MAX_ROW_BYTES" in message
    assert stream.bytes_read <= 10_000 + 2 * CHUNK_SIZE  # stopped there, not at the end of the line


def test_the_default_row_limit_stops_a_50_mb_line_early(tmp_path: Path) -> None:
    path = csv_long_line(tmp_path / "line.csv", 5_000_000)
    with path.open("rb") as file, pytest.raises(SourceError, match=r"line 2 is longer than 2,097,152 characters"):
        read_all(file, "csv", Limits())


def test_a_quoted_record_over_many_lines_is_refused_while_it_grows() -> None:
    stream = endless(b'pk,text\na,"', b"many lines,\n")
    with pytest.raises(SourceError) as info:
        read_all(stream, "csv", Limits(max_cell_chars=50_000, max_row_bytes=10_000))
    assert str(info.value).startswith("CSV file: row 1 (line 2) is longer than 10,000 characters (")
    assert "is a quotation mark left open?" in str(info.value)
    assert stream.bytes_read <= 10_000 + 2 * CHUNK_SIZE


def test_a_cell_over_the_cell_limit_is_refused() -> None:
    data = b"pk,text\na," + b"x" * 1001 + b"\n"
    with pytest.raises(SourceError, match=r"a cell is longer than 1,000 characters \(BULKWRITES_MAX_CELL_CHARS\)"):
        read_all(io.BytesIO(data), "csv")
    assert read_all(io.BytesIO(b"pk,text\na," + b"x" * 1000 + b"\n"), "csv")[0].values == {
        "pk": "a",
        "text": "x" * 1000,
    }


def test_a_header_wider_than_the_cell_count_limit_is_refused() -> None:
    header = ",".join(f"c{n}" for n in range(51)).encode()
    with pytest.raises(
        SourceError, match=r"header row has 51 cells, more than the limit of 50 \(BULKWRITES_MAX_ROW_CELLS\)"
    ):
        read_all(io.BytesIO(header + b"\n"), "csv")


def test_a_wide_data_row_is_a_row_error_and_reading_goes_on() -> None:
    data = b"pk\n" + b"a," * 40 + b"a\nb\n"
    rows = read_all(io.BytesIO(data), "csv")
    assert rows[0].error == "row 1 (line 2): 41 cells but the header has 1 column"
    assert rows[1].values == {"pk": "b"}


# --- JSON Lines and JSON arrays ------------------------------------------------------------------


def test_a_json_line_over_the_row_limit_is_refused_early() -> None:
    stream = endless(b'{"pk": "a"}\n{"pk": "', b"x")
    with pytest.raises(SourceError, match=r"^JSON Lines file: line 2 is longer than 10,000 characters"):
        read_all(stream, "jsonl")
    assert stream.bytes_read <= 10_000 + 2 * CHUNK_SIZE


def test_a_json_array_element_over_the_row_limit_is_refused_early() -> None:
    stream = endless(b'[{"pk": "a"}, {"pk": "', b"x")
    rows = read_rows(cast(IO[bytes], stream), "json", limits=SMALL)
    assert next(rows).values == {"pk": "a"}
    with pytest.raises(SourceError) as info:
        next(rows)
    assert str(info.value).startswith("JSON file: element 2 is larger than 10,000 bytes (")
    assert "BULKWRITES_MAX_ROW_BYTES" in str(info.value)
    assert stream.bytes_read <= 10_000 + 3 * CHUNK_SIZE


def test_a_json_array_streams_element_by_element() -> None:
    """200,000 objects (~7 MB) from a stream that is never whole: a few chunks in memory at a time."""
    count = 200_000
    block = b"".join(b'{"pk":"k%07d","n":%d,"v":"ab"},' % (n, n % 100) for n in range(1000))
    stream = LazyStream(itertools.chain([b"["], itertools.repeat(block, count // 1000), [b'{"pk":"last"}]']))
    rows = read_rows(cast(IO[bytes], stream), "json", limits=Limits())
    tracemalloc.start()
    try:
        first = next(rows)
        read_for_first_row = stream.bytes_read
        seen = 1 + sum(1 for _ in rows)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert first == SourceRow(1, {"pk": "k0000000", "n": 0, "v": "ab"})
    assert read_for_first_row <= 2 * CHUNK_SIZE  # the first row comes before the file is read
    assert seen == count + 1
    assert stream.bytes_read > 6_000_000
    assert peak < 4 * 1024 * 1024, f"peak {peak / 1e6:.1f} MB"


def test_a_real_json_array_file_loads_correctly(tmp_path: Path) -> None:
    """The legitimate file of finding 5, smaller: every element loads, in order, with its types."""
    path = json_array(tmp_path / "array.json", objects=30_000)
    with path.open("rb") as file:
        rows = read_all(file, "json", Limits())
    assert len(rows) == 30_000
    assert rows[12_345] == SourceRow(12_346, {"pk": "k0012345", "n": 45, "v": "ab"})


def test_deep_nesting_takes_neither_memory_nor_time() -> None:
    """ijson.items keeps a prefix per level: 30,000 "[" took 2 GB. Built from events, it is nothing."""
    tracemalloc.start()
    try:
        with pytest.raises(SourceError, match=r"the file ends in the middle of the JSON"):
            read_all(io.BytesIO(b"[" * 1_000_000), "json", Limits())
        rows = read_all(io.BytesIO(b"[" + b"[" * 50_000 + b"]" * 50_000 + b', {"pk": "a"}]'), "json", Limits())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert rows[0].error == "element 1: nested more than 100 levels deep (DynamoDB allows 32)"
    assert rows[1].values == {"pk": "a"}
    assert peak < 20 * 1024 * 1024, f"peak {peak / 1e6:.1f} MB"


# --- XLSX ---------------------------------------------------------------------------------------------


def test_an_xlsx_part_over_the_part_limit_is_refused_before_unpacking(tmp_path: Path) -> None:
    path = xlsx_shared_strings(tmp_path / "bomb.xlsx", unpacked_bytes=2_000_000)
    assert path.stat().st_size < 100_000
    with path.open("rb") as file, pytest.raises(SourceError) as info:
        read_all(file, "xlsx")
    message = str(info.value)
    assert "the part 'xl/sharedStrings.xml' would unpack to 1.9 MB" in message
    assert "more than the limit of 1 MB per part (BULKWRITES_MAX_XLSX_PART_BYTES)" in message


def test_many_shared_strings_are_kept_out_of_memory(tmp_path: Path) -> None:
    """20 MB of shared strings (150,000 strings): read as a stream, kept in a temporary file."""
    path = xlsx_shared_strings(tmp_path / "strings.xlsx", unpacked_bytes=20_000_000, string_chars=120)
    tracemalloc.start()
    try:
        with path.open("rb") as file:
            rows = read_all(file, "xlsx", Limits())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [row.values for row in rows] == [{"pk": "s" * 120}] * 10
    assert peak < 15 * 1024 * 1024, f"peak {peak / 1e6:.1f} MB"  # openpyxl's list of strings: ~40 MB


def test_a_shared_string_over_the_cell_limit_is_refused_while_parsed(tmp_path: Path) -> None:
    path = xlsx_shared_cell(tmp_path / "cell.xlsx", cell_chars=600_000)
    limits = Limits(max_cell_chars=1000, max_xlsx_part_bytes=10_000_000)
    with path.open("rb") as file, pytest.raises(SourceError) as info:
        read_all(file, "xlsx", limits)
    message = str(info.value)
    assert message.startswith("XLSX file: a cell of the shared strings (string 1) is longer than 1,000 characters")
    assert "BULKWRITES_MAX_CELL_CHARS" in message
    assert "600,000" not in message  # refused part-way: it never read the whole cell


def test_an_inline_cell_over_the_cell_limit_is_refused_before_openpyxl_builds_it(tmp_path: Path) -> None:
    path = xlsx_inline_cell(tmp_path / "inline.xlsx", cell_chars=5_000_000)
    limits = Limits(max_cell_chars=1000, max_xlsx_part_bytes=10_000_000)
    tracemalloc.start()
    try:
        with path.open("rb") as file, pytest.raises(SourceError) as info:
            read_all(file, "xlsx", limits)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert str(info.value).startswith("XLSX file: a cell in sheet row 2 is longer than 1,000 characters")
    assert peak < 2 * 1024 * 1024, f"peak {peak / 1e6:.1f} MB"


def test_a_sheet_row_with_too_many_cells_is_refused_while_read(tmp_path: Path) -> None:
    import openpyxl

    workbook = openpyxl.Workbook()
    sheet = workbook.worksheets[0]
    sheet.append(["pk"])
    sheet.append([f"v{n}" for n in range(60)])
    path = tmp_path / "wide.xlsx"
    workbook.save(path)
    with path.open("rb") as file, pytest.raises(SourceError, match=r"sheet row 2 has more than 50 cells"):
        read_all(file, "xlsx")


def test_a_row_of_shared_strings_over_the_row_limit_is_refused(tmp_path: Path) -> None:
    import openpyxl

    workbook = openpyxl.Workbook()
    sheet = workbook.worksheets[0]
    sheet.append(["pk", *(f"c{n}" for n in range(20))])
    sheet.append(["a", *(f"{n:02d}" + "y" * 900 for n in range(20))])  # 20 distinct shared strings of 902
    path = tmp_path / "long-row.xlsx"
    workbook.save(path)
    with path.open("rb") as file, pytest.raises(SourceError, match=r"a row's cells hold more than 10,000 characters"):
        read_all(file, "xlsx")


def test_limits_come_from_settings() -> None:
    assert Limits.from_settings({}) == Limits()
    assert Limits.from_settings({"MAX_CELL_CHARS": "7", "MAX_ROW_BYTES": None}) == Limits(max_cell_chars=7)
