"""Files as they really arrive: compressed (gzip, zstd), DynamoDB JSON documents, legacy encodings.

Plain Python, inputs built in memory (bulkwrites.sources.formats).
"""

from __future__ import annotations

import codecs
import gzip
import io
import json
import tracemalloc
from collections.abc import Callable
from typing import Any

import pytest
import zstandard

from bulkwrites.sources.formats import (
    FORMATS,
    Limits,
    SourceError,
    SourceRow,
    detect_format,
    read_rows,
    sniff,
)
from bulkwrites.sources.formats.compression import DecompressingReader, decompressed_head
from bulkwrites.sources.formats.dynamodb_json import looks_like_item

CSV = b"pk,n:N\n" + b"".join(b"k%d,%d\n" % (i, i) for i in range(1, 2001))


class OneWayStream:
    """A non-seekable stream handing out small reads (like an S3 body), counting what was read."""

    def __init__(self, data: bytes, most: int = 7000) -> None:
        self._data = io.BytesIO(data)
        self._most = most
        self.bytes_read = 0

    def read(self, size: int = -1) -> bytes:
        size = self._most if size is None or size < 0 else min(size, self._most)
        data = self._data.read(size)
        self.bytes_read += len(data)
        return data


def rows_of(data: bytes, fmt: str, **kwargs: Any) -> list[SourceRow]:
    return list(read_rows(io.BytesIO(data), fmt, **kwargs))


def zstd(data: bytes, frames: int = 1) -> bytes:
    step = max(1, len(data) // frames)
    compressor = zstandard.ZstdCompressor()
    return b"".join(compressor.compress(data[i : i + step]) for i in range(0, len(data), step))


# --- compression ------------------------------------------------------------------------


@pytest.mark.parametrize("compress", [gzip.compress, zstd, lambda d: zstd(d, frames=3)], ids=["gzip", "zstd", "zstd3"])
@pytest.mark.parametrize("one_way", [False, True])
def test_compressed_csv_reads_like_the_plain_file(compress: Callable[[bytes], bytes], one_way: bool) -> None:
    packed = compress(CSV)
    stream = OneWayStream(packed) if one_way else io.BytesIO(packed)
    assert list(read_rows(stream, "csv")) == rows_of(CSV, "csv")


def test_gzip_with_several_members_reads_them_all() -> None:
    packed = gzip.compress(CSV[:5000]) + gzip.compress(CSV[5000:])
    assert rows_of(packed, "csv") == rows_of(CSV, "csv")


@pytest.mark.parametrize("fmt", sorted(set(FORMATS) - {"xlsx"}))
def test_every_text_format_reads_compressed(fmt: str) -> None:
    samples = {
        "csv": b"pk\na\n",
        "tsv": b"pk\tn\na\t1\n",
        "json": b'[{"pk": "a"}]',
        "jsonl": b'{"pk": "a"}\n',
        "ddbjson": b'{"Item": {"pk": {"S": "a"}}}\n',
    }
    plain = rows_of(samples[fmt], fmt)
    assert plain
    assert rows_of(gzip.compress(samples[fmt]), fmt) == plain
    assert rows_of(zstd(samples[fmt]), fmt) == plain


def test_xlsx_inside_gzip_is_spooled_within_the_cap() -> None:
    import openpyxl

    book = openpyxl.Workbook()
    sheet: Any = book.active
    sheet.append(["pk", "n:N"])
    sheet.append(["a", 1])
    raw = io.BytesIO()
    book.save(raw)
    packed = gzip.compress(raw.getvalue())
    rows = list(read_rows(OneWayStream(packed), "xlsx", max_bytes=1_000_000))
    assert [row.values for row in rows] == [{"pk": "a", "n:N": "1"}]
    with pytest.raises(SourceError, match="larger than the limit"):
        list(read_rows(io.BytesIO(packed), "xlsx", max_bytes=len(raw.getvalue()) - 1))


@pytest.mark.parametrize("compress", [gzip.compress, zstd], ids=["gzip", "zstd"])
def test_a_compression_bomb_stops_at_the_limit_in_bounded_memory(compress: Callable[[bytes], bytes]) -> None:
    # 16 MB of valid rows in a few KB; the limit (1 MB here) is what stops it, and nothing is held.
    bomb = compress(b"pk\n" + (b"a" * 1023 + b"\n") * (16 * 1024))
    assert len(bomb) < 50_000
    stream = OneWayStream(bomb, most=256)
    tracemalloc.start()
    try:
        with pytest.raises(SourceError) as caught:
            for _ in read_rows(stream, "csv", limits=Limits(max_decompressed_bytes=1_000_000)):
                pass
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    message = str(caught.value)
    assert "decompresses to more than" in message
    assert "BULKWRITES_MAX_DECOMPRESSED_BYTES" in message
    assert peak < 20_000_000
    assert stream.bytes_read < len(bomb)  # reading stopped early: the rest was never decompressed


def test_the_decompressing_reader_never_hands_out_more_than_asked() -> None:
    reader = DecompressingReader(io.BytesIO(gzip.compress(b"x" * 1_000_000)), "gzip", 10_000_000)
    sizes: list[int] = []
    while piece := reader.read(4096):
        sizes.append(len(piece))
    assert max(sizes) <= 4096
    assert sum(sizes) == 1_000_000


@pytest.mark.parametrize("compress", [gzip.compress, zstd], ids=["gzip", "zstd"])
def test_truncated_and_corrupt_compressed_files_are_refused(compress: Callable[[bytes], bytes]) -> None:
    packed = compress(CSV)
    with pytest.raises(SourceError, match="truncated"):
        rows_of(packed[: len(packed) // 2], "csv")
    corrupt = packed[:30] + bytes(b ^ 0x5A for b in packed[30:80]) + packed[80:]
    with pytest.raises(SourceError, match=r"corrupt|truncated|not valid"):
        rows_of(corrupt, "csv")


@pytest.mark.parametrize(
    ("head", "message"),
    [(b"BZh91AY&SY", "bzip2-compressed"), (b"\xfd7zXZ\x00\x00", "xz-compressed")],
)
def test_other_compressions_are_refused_with_what_to_do(head: bytes, message: str) -> None:
    with pytest.raises(SourceError, match=message):
        rows_of(head, "csv")
    with pytest.raises(SourceError, match=message):
        sniff(head, "data.csv.bz2")


@pytest.mark.parametrize(
    ("name", "data", "expected"),
    [
        ("export.json.gz", b'{"Item": {"pk": {"S": "a"}}}\n', ("ddbjson", "gzip")),
        ("data.csv.gz", b"pk,n\na,1\n", ("csv", "gzip")),
        ("data.csv", b"pk,n\na,1\n", ("csv", "gzip")),  # told by the magic bytes, not the name
        ("data.tsv.zst", b"pk\tn\na\t1\n", ("tsv", "zstd")),
        ("upload", b'[{"pk": "a"}]', ("json", "zstd")),
    ],
)
def test_sniff_decompresses_the_head(name: str, data: bytes, expected: Any) -> None:
    packed = zstd(data) if expected[1] == "zstd" else gzip.compress(data)
    found = sniff(packed, name)
    assert (found.format, found.compression) == expected


def test_sniff_reads_a_head_cut_short_in_the_middle_of_the_compressed_data() -> None:
    packed = gzip.compress(CSV * 20)
    head, compression = decompressed_head(packed[:2000], 65536)
    assert compression == "gzip"
    assert CSV.startswith(head[:1000])
    assert sniff(packed[:2000], "x.csv.gz").format == "csv"


def test_a_plain_file_named_gz_is_read_as_it_is() -> None:
    assert sniff(b"pk,n\na,1\n", "data.csv.gz").compression == ""
    assert rows_of(b"pk\na\n", "csv")[0].values == {"pk": "a"}


# --- DynamoDB JSON documents ------------------------------------------------------------

ITEMS = [
    {"pk": {"S": "a"}, "n": {"N": "1.50"}, "tags": {"SS": ["x", "y"]}, "b": {"B": "AAE="}},
    {"pk": {"S": "b"}, "m": {"M": {"x": {"BOOL": True}}}, "l": {"L": [{"NULL": True}]}},
]


def _scan_output(items: list[dict[str, Any]]) -> bytes:
    return json.dumps({"Items": items, "Count": len(items), "ScannedCount": len(items), "ConsumedCapacity": None},
                      indent=4).encode()  # fmt: skip


@pytest.mark.parametrize(
    "data",
    [
        _scan_output(ITEMS),
        json.dumps(ITEMS, indent=2).encode(),
        json.dumps([{"Item": item} for item in ITEMS], indent=2).encode(),
        json.dumps({"Items": ITEMS}).encode(),  # a whole document on one line
        json.dumps({"Count": 2, "Items": ITEMS}).encode(),  # Items not first
        b"\n".join(json.dumps({"Item": item}).encode() for item in ITEMS) + b"\n",  # export lines
    ],
    ids=["scan-output", "array", "array-of-wrapped", "one-line-document", "items-not-first", "lines"],
)
def test_dynamodb_json_in_every_shape_gives_the_items(data: bytes) -> None:
    rows = rows_of(data, "ddbjson")
    assert [row.values for row in rows] == ITEMS
    assert [row.position for row in rows] == [1, 2]
    assert sniff(data, "scan.json").format == "ddbjson"


def test_a_single_pretty_printed_item() -> None:
    data = json.dumps(ITEMS[0], indent=2).encode()
    assert [row.values for row in rows_of(data, "ddbjson")] == [ITEMS[0]]
    wrapped = json.dumps({"Item": ITEMS[1]}, indent=2).encode()
    assert [row.values for row in rows_of(wrapped, "ddbjson")] == [ITEMS[1]]
    assert sniff(data, "item.json").format == "ddbjson"


def test_dynamodb_json_documents_stream_element_by_element() -> None:
    items = [{"pk": {"S": f"k{i}"}, "pad": {"S": "x" * 200}} for i in range(20_000)]
    data = _scan_output(items)  # ~5 MB
    stream = OneWayStream(data, most=65536)
    rows = read_rows(stream, "ddbjson")
    assert next(rows).values == items[0]
    assert stream.bytes_read < 300_000  # the first item came before the document was read
    assert sum(1 for _ in rows) == len(items) - 1


def test_dynamodb_json_document_problems_are_rows_or_file_errors() -> None:
    data = json.dumps({"Items": [ITEMS[0], {"pk": "plain"}, 5, ITEMS[1]]}, indent=1).encode()
    rows = rows_of(data, "ddbjson")
    assert [row.values is not None for row in rows] == [True, False, False, True]
    assert str(rows[1].error).startswith('element 2: attribute "pk" is not in DynamoDB JSON form')
    assert rows[2].error == "element 3: expected a JSON object, got a number"
    with pytest.raises(SourceError, match=r"DynamoDB JSON file: invalid JSON \(line 3"):
        rows_of(b'{\n  "Items": [\n    {"pk": {"S": "a"}},,\n  ]\n}', "ddbjson")
    with pytest.raises(SourceError, match="ends in the middle"):
        rows_of(b'{\n  "Items": [\n    {"pk": {"S": "a"}}\n', "ddbjson")
    with pytest.raises(SourceError, match="element 1 is larger than 1,000 bytes"):
        rows_of(json.dumps({"Items": [{"pk": {"S": "x" * 100_000}}]}, indent=1).encode(), "ddbjson",
                limits=Limits(max_row_bytes=1000))  # fmt: skip


def test_dynamodb_json_lines_keep_one_error_per_bad_line() -> None:
    data = b'{"Item": {"pk": {"S": "a"}}}\n{"Item": {"pk": \n{"Item": {"pk": {"S": "c"}}}\n'
    rows = rows_of(data, "ddbjson")
    assert [row.values for row in rows] == [{"pk": {"S": "a"}}, None, {"pk": {"S": "c"}}]
    assert str(rows[1].error).startswith("line 2: invalid JSON")


def test_a_broken_first_line_stays_a_line() -> None:
    data = b'{"Item": {"pk": {"S": "a"}},,}\n{"Item": {"pk": {"S": "b"}}}\n'
    rows = rows_of(data, "ddbjson")
    assert rows[0].values is None
    assert rows[1].values == {"pk": {"S": "b"}}


@pytest.mark.parametrize(
    ("obj", "typed"),
    [
        ({"pk": {"S": "a"}, "n": {"N": "1"}}, True),
        ({"Item": {"pk": {"S": "a"}}}, True),
        ({"pk": {"S": "a"}, "n": {"N": 1}}, False),  # a number where DynamoDB JSON has a string
        ({"pk": {"S": 5}}, False),
        ({"flag": {"BOOL": "yes"}}, False),
        ({"s": {"SS": ["a", 1]}}, False),
        ({"nothing": {"NULL": False}}, False),
        ({"pk": "a"}, False),
        ({"pk": {"S": "a", "N": "1"}}, False),
        ({}, False),
        ({"x": {"Q": "a"}}, False),
    ],
)
def test_the_rule_that_tells_dynamodb_json_from_plain_json(obj: dict[str, Any], typed: bool) -> None:
    assert looks_like_item(obj) is typed


@pytest.mark.parametrize(
    ("filename", "head", "expected"),
    [
        ("data.json", b'[{"pk": {"S": "a"}, "n": {"N": "1"}}]', "ddbjson"),
        ("data.json", b'[{"pk": {"S": "a"}, "n": {"N": 1}}]', "json"),  # N holding a number: plain JSON
        ("data.json", b'[{"pk": {"S": "a"}}, {"pk": "plain"}]', "json"),  # every element must be typed
        ("data.json", b'[\n  {\n    "Item": {\n      "pk": {"S": "a"}', "ddbjson"),  # cut by the head
        ("data.json", b'{\n    "Items": [\n        {\n            "pk": {', "ddbjson"),
        ("data.json", b'{\n  "pk": {"S": "a"},\n  "n": {"N": "2"}\n}\n', "ddbjson"),
        ("data.json", b'{\n  "pk": {"S": "a"},\n  "n": {"N": "2"},\n  "text": {"S": "cut sh', "ddbjson"),
        ("data.json", b'{\n  "pk": "a"\n}\n', "json"),
        ("data.jsonl", b'{"pk": {"S": "a"}}\n', "ddbjson"),  # bare typed items, one per line
        ("data.jsonl", b'{"pk": {"N": 5}}\n', "jsonl"),
        ("scan.json", b'{"Items": [], "Count": 0}', "ddbjson"),
    ],
)
def test_detect_dynamodb_json_documents(filename: str, head: bytes, expected: Any) -> None:
    assert detect_format(filename, head) == expected


def test_the_operator_overrides_detection_with_the_format() -> None:
    data = b'[{"pk": {"S": "a"}}]'  # plain JSON whose values happen to look typed
    assert sniff(data, "x.json").format == "ddbjson"
    assert sniff(data, "x.json", source_format="json").format == "json"
    assert rows_of(data, "json")[0].values == {"pk": {"S": "a"}}


def test_plain_json_object_hint_names_both_formats() -> None:
    with pytest.raises(SourceError, match="choose JSON Lines; for DynamoDB JSON"):
        rows_of(b'{\n  "pk": "a"\n}', "json")


# --- encodings --------------------------------------------------------------------------

LATIN = "pk,name\nk1,Zoë\nk2,Ångström\n"


@pytest.mark.parametrize("encoding", ["iso-8859-1", "windows-1252", "iso-8859-15", "utf-16", "utf-16-le"])
@pytest.mark.parametrize("fmt", ["csv", "json", "jsonl"])
def test_legacy_encodings_are_read_as_text(encoding: str, fmt: str) -> None:
    text = {"csv": LATIN, "json": '[{"pk": "k1", "name": "Zoë"}]', "jsonl": '{"pk": "k1", "name": "Zoë"}\n'}[fmt]
    data = text.encode(encoding)
    rows = rows_of(data, fmt, encoding=encoding)
    assert rows[0].values == {"pk": "k1", "name": "Zoë"}
    assert rows_of(gzip.compress(data), fmt, encoding=encoding) == rows


def test_windows_1252_has_the_euro_sign_and_latin1_does_not() -> None:
    data = "pk,price\na,€5\n".encode("windows-1252")
    assert rows_of(data, "csv", encoding="windows-1252")[0].values == {"pk": "a", "price": "€5"}
    assert rows_of(data, "csv", encoding="iso-8859-1")[0].values == {"pk": "a", "price": "\x805"}


def test_a_utf16_file_is_told_by_its_bom_whatever_was_chosen() -> None:
    data = codecs.BOM_UTF16_LE + "pk\tname\nk1\tZoë\n".encode("utf-16-le")
    assert rows_of(data, "tsv")[0].values == {"pk": "k1", "name": "Zoë"}
    found = sniff(data, "export.txt")
    assert (found.format, found.encoding) == ("tsv", "utf-16")
    assert sniff("pk,name\nk,Zoë\n".encode("latin-1"), "x.csv", encoding="latin-1").encoding == "iso-8859-1"


def test_a_wrong_encoding_names_the_byte_and_the_line() -> None:
    data = LATIN.encode("latin-1")
    with pytest.raises(SourceError) as caught:
        rows_of(data, "csv")
    assert str(caught.value).startswith("The file is not valid UTF-8 (byte 0xeb at offset 13, line 2).")
    assert "--encoding" in str(caught.value)
    bad_1252 = b"pk,name\nk1,ok\nk2,\x81\n"  # 0x81 has no character in Windows-1252
    with pytest.raises(SourceError, match=r"not valid Windows-1252 \(byte 0x81 at offset 17, line 3\)"):
        rows_of(bad_1252, "csv", encoding="windows-1252")
    with pytest.raises(SourceError, match=r"not valid UTF-16 LE \(byte 0x00 at offset 10, line 3\)"):
        rows_of("pk\na\n".encode("utf-16-le") + b"\x00", "csv", encoding="utf-16-le")


def test_unknown_encodings_are_refused() -> None:
    with pytest.raises(SourceError, match='Unknown encoding "ebcdic"'):
        rows_of(b"pk\na\n", "csv", encoding="ebcdic")
    assert rows_of(b"pk\na\n", "csv", encoding="Latin-1")[0].values == {"pk": "a"}
