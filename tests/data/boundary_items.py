"""Boundary items: each one judged by DynamoDB Local's own PutItem and by bulkwrites' dry run.

``tests/integration/test_boundary_items.py`` sends every case's ``dynamodb`` item (the row
*as given*, in DynamoDB JSON, sent literally over HTTP so no SDK checks or rewrites anything)
to DynamoDB Local's ``PutItem``, reads the row through bulkwrites' own reader and dry run, and
checks that both say the same: valid ⇔ accepted, and for a valid row, what bulkwrites would
write equals what DynamoDB stored (``GetItem``). ``accepted`` records DynamoDB Local's verdict
as observed when the case was written, so a change of DynamoDB Local shows up as a failure too.

For CSV and JSON Lines rows, *as given* means the cell or value under the type the header
declares (a key column takes the table's key type), written into DynamoDB JSON without any
change: ``n:N`` = `` 1`` is ``{"N": " 1"}``. For DynamoDB JSON lines it is the line itself.

Tables (``TABLES``): ``s`` (pk S), ``sn`` (pk S, sk N), ``ss`` (pk S, sk S), ``b`` (pk B),
``n`` (pk N). Each case writes its own key, so cases never overwrite one another.
"""

from __future__ import annotations

import base64
import csv
import io
import json
from dataclasses import dataclass
from typing import Any

TABLES: dict[str, list[tuple[str, str, str]]] = {
    "s": [("pk", "S", "HASH")],
    "sn": [("pk", "S", "HASH"), ("sk", "N", "RANGE")],
    "ss": [("pk", "S", "HASH"), ("sk", "S", "RANGE")],
    "b": [("pk", "B", "HASH")],
    "n": [("pk", "N", "HASH")],
}

LIMIT = 409_600


@dataclass(frozen=True)
class Case:
    id: str
    note: str
    table: str
    fmt: str  # "csv", "jsonl" or "ddbjson": how bulkwrites reads ``text``
    text: str  # the file (header + one row, or one line)
    dynamodb: str  # the item as given, as DynamoDB JSON text (sent to PutItem literally)
    accepted: bool  # DynamoDB Local's verdict, as observed

    def __repr__(self) -> str:  # pytest ids; the texts can be 400 KB
        return self.id


def _ddb(id: str, note: str, attributes: str | dict[str, Any], *, accepted: bool, table: str = "s") -> Case:
    """A DynamoDB JSON line; ``attributes`` (a dict, or raw JSON text to keep its exact
    spelling) is added to the case's own key."""
    key = {"pk": {"S": id}}
    if isinstance(attributes, dict):
        item_text = json.dumps({**key, **attributes}, ensure_ascii=False)
    else:
        item_text = json.dumps(key)[:-1] + ", " + attributes.strip()[1:]
    return Case(id, note, table, "ddbjson", '{"Item": ' + item_text + "}\n", item_text, accepted)


def _csv(
    id: str, note: str, cells: dict[str, str], dynamodb: dict[str, Any], *, accepted: bool, table: str = "s"
) -> Case:
    """A CSV file of a header and one row; ``pk`` (the case's id) comes first unless given."""
    row = {"pk": id, **cells}
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(list(row))
    writer.writerow(list(row.values()))
    item = {"pk": {"S": id}, **dynamodb} if "pk" not in dynamodb else dynamodb
    return Case(id, note, table, "csv", out.getvalue(), json.dumps(item, ensure_ascii=False), accepted)


def _jsonl(id: str, note: str, values: str, dynamodb: dict[str, Any], *, accepted: bool, table: str = "s") -> Case:
    """A JSON Lines row: ``values`` is the JSON text after the case's own ``"pk"``."""
    line = '{"pk": ' + json.dumps(id) + ", " + values.strip()[1:] + "\n"
    item = {"pk": {"S": id}, **dynamodb}
    return Case(id, note, table, "jsonl", line, json.dumps(item, ensure_ascii=False), accepted)


def _nested(levels: int, leaf: Any, kind: str = "M") -> Any:
    value = leaf
    for _ in range(levels):
        value = {"M": {"a": value}} if kind == "M" else {"L": [value]}
    return value


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _pad(key: str, used: int, total: int) -> str:
    """Length of the string that brings an item of ``used`` bytes plus ``"x"`` to ``total``."""
    return "a" * (total - used - 1 - len(key.encode()) - 2)


CASES: list[Case] = [
    # --- attribute names and map keys --------------------------------------------------
    _ddb("name-empty", "an attribute named '' is refused", {"": {"S": "a"}}, accepted=False),
    _ddb("name-space", "a name of one space is a name", {" ": {"S": "a"}}, accepted=True),
    _ddb(
        "name-255",
        "255 bytes: the limit of key and index names, fine for others",
        {"n" * 255: {"S": "a"}},
        accepted=True,
    ),
    _ddb("name-65535", "65,535 bytes: the longest name", {"n" * 65_535: {"S": "a"}}, accepted=True),
    _ddb(
        "name-65536",
        "65,536 bytes: refused ('must be less than 65536 bytes')",
        {"n" * 65_536: {"S": "a"}},
        accepted=False,
    ),
    _ddb(
        "name-utf8-over",
        "21,846 euro signs are 65,538 bytes: counted in bytes",
        {"€" * 21_846: {"S": "a"}},
        accepted=False,
    ),
    _ddb("map-key-empty", "a map key '' is an empty attribute name", {"m": {"M": {"": {"S": "a"}}}}, accepted=False),
    _ddb(
        "map-key-empty-deep",
        "an empty key two maps down",
        {"m": {"M": {"a": {"M": {"": {"N": "1"}}}}}},
        accepted=False,
    ),
    _ddb("map-key-65536", "map keys have the names' limit", {"m": {"M": {"k" * 65_536: {"S": "a"}}}}, accepted=False),
    _ddb("map-key-space", "a map key of one space", {"m": {"M": {" ": {"N": "1"}}}}, accepted=True),
    _jsonl("json-name-empty", "a JSON object key '' at the top", '{"": 1}', {"": {"N": "1"}}, accepted=False),
    _jsonl(
        "json-map-key-empty",
        "a JSON object key '' in a nested object",
        '{"m": {"": 1}}',
        {"m": {"M": {"": {"N": "1"}}}},
        accepted=False,
    ),
    # --- nesting depth -----------------------------------------------------------------
    _ddb("maps-31-deep", "31 maps inside one another: stored", {"x": _nested(31, {"S": "leaf"})}, accepted=True),
    _ddb(
        "maps-32-deep",
        "32 maps: 'nested levels beyond supported limit'",
        {"x": _nested(32, {"S": "leaf"})},
        accepted=False,
    ),
    _ddb("lists-31-deep", "31 lists", {"x": _nested(31, {"N": "1"}, "L")}, accepted=True),
    _ddb("lists-32-deep", "32 lists", {"x": _nested(32, {"N": "1"}, "L")}, accepted=False),
    _ddb("empty-map-32-deep", "the 32nd map counts even when empty", {"x": _nested(31, {"M": {}})}, accepted=False),
    _jsonl(
        "json-lists-31-deep",
        "JSON arrays 31 deep",
        '{"x": ' + "[" * 31 + "1" + "]" * 31 + "}",
        {"x": _nested(31, {"N": "1"}, "L")},
        accepted=True,
    ),
    _jsonl(
        "json-lists-32-deep",
        "JSON arrays 32 deep",
        '{"x": ' + "[" * 32 + "1" + "]" * 32 + "}",
        {"x": _nested(32, {"N": "1"}, "L")},
        accepted=False,
    ),
    _csv(
        "csv-map-32-deep",
        "a doc:M cell nesting 32 objects (the cell is the first map)",
        {"doc:M": '{"a": ' * 32 + "1" + "}" * 32},
        {"doc": _nested(32, {"N": "1"})},
        accepted=False,
    ),
    # --- item size, names counted --------------------------------------------------------
    _ddb(
        "size-at-limit",
        "409,600 bytes: 'pk'+key, 'x'+value",
        {"x": {"S": _pad("size-at-limit", 0, LIMIT)}},
        accepted=True,
    ),
    _ddb("size-over-limit", "409,601 bytes", {"x": {"S": _pad("size-over-limit", 0, LIMIT + 1)}}, accepted=False),
    _ddb(
        "size-long-name-at-limit",
        "a 65,535-byte name counts: name + value = 409,600",
        {"n" * 65_535: {"S": "a" * (LIMIT - 2 - len("size-long-name-at-limit") - 65_535)}},
        accepted=True,
    ),
    _ddb(
        "size-long-name-over",
        "the same, one byte more",
        {"n" * 65_535: {"S": "a" * (LIMIT + 1 - 2 - len("size-long-name-over") - 65_535)}},
        accepted=False,
    ),
    _ddb(
        "size-number-pairs",
        "1.5 takes 3 bytes (01|50 + exponent), not 2: this item is 409,601 bytes",
        {"n": {"N": "1.5"}, "x": {"S": "a" * (LIMIT + 1 - 2 - len("size-number-pairs") - 1 - 3 - 1)}},
        accepted=False,
    ),
    _ddb(
        "size-negative-number",
        "a negative number takes one byte more: -1 is 3 bytes, this item 409,600",
        {"n": {"N": "-1"}, "x": {"S": "a" * (LIMIT - 2 - len("size-negative-number") - 1 - 3 - 1)}},
        accepted=True,
    ),
    _ddb(
        "size-negative-number-over",
        "the same with -12 (3 bytes too) and one byte more of string",
        {"n": {"N": "-12"}, "x": {"S": "a" * (LIMIT + 1 - 2 - len("size-negative-number-over") - 1 - 3 - 1)}},
        accepted=False,
    ),
    _ddb(
        "size-map-at-limit",
        "a map: 3 bytes + 1 per entry + names + values",
        {"m": {"M": {"k": {"S": "a" * (LIMIT - 2 - len("size-map-at-limit") - 1 - 3 - 1 - 1)}}}},
        accepted=True,
    ),
    _csv(
        "csv-size-at-limit",
        "a CSV row of exactly 409,600 bytes",
        {"x": _pad("csv-size-at-limit", 0, LIMIT)},
        {"x": {"S": _pad("csv-size-at-limit", 0, LIMIT)}},
        accepted=True,
    ),
    _csv(
        "csv-size-over",
        "a CSV row of 409,601 bytes",
        {"x": _pad("csv-size-over", 0, LIMIT + 1)},
        {"x": {"S": _pad("csv-size-over", 0, LIMIT + 1)}},
        accepted=False,
    ),
    # --- numbers -------------------------------------------------------------------------
    _csv("num-trailing-zero", "1.50 is stored as 1.5", {"n:N": "1.50"}, {"n": {"N": "1.50"}}, accepted=True),
    _csv("num-plus", "+1 is a number", {"n:N": "+1"}, {"n": {"N": "+1"}}, accepted=True),
    _csv(
        "num-space-before", "' 1' is refused: DynamoDB does not trim", {"n:N": " 1"}, {"n": {"N": " 1"}}, accepted=False
    ),
    _csv("num-space-after", "'1 ' is refused", {"n:N": "1 "}, {"n": {"N": "1 "}}, accepted=False),
    _csv("num-point-after", "'1.' is 1", {"n:N": "1."}, {"n": {"N": "1."}}, accepted=True),
    _csv("num-point-before", "'.5' is 0.5", {"n:N": ".5"}, {"n": {"N": ".5"}}, accepted=True),
    _csv("num-exponent", "'1e3' is 1000", {"n:N": "1e3"}, {"n": {"N": "1e3"}}, accepted=True),
    _csv("num-minus-zero", "'-0' is 0", {"n:N": "-0"}, {"n": {"N": "-0"}}, accepted=True),
    _csv("num-leading-zeros", "'007' is 7", {"n:N": "007"}, {"n": {"N": "007"}}, accepted=True),
    _csv(
        "num-underscore",
        "'1_000' (Python reads it; DynamoDB does not)",
        {"n:N": "1_000"},
        {"n": {"N": "1_000"}},
        accepted=False,
    ),
    _csv("num-thousands", "'1,000' is not a number", {"n:N": "1,000"}, {"n": {"N": "1,000"}}, accepted=False),
    _csv("num-hex", "'0x10' is not a number", {"n:N": "0x10"}, {"n": {"N": "0x10"}}, accepted=False),
    _csv("num-nan", "NaN does not exist in DynamoDB", {"n:N": "NaN"}, {"n": {"N": "NaN"}}, accepted=False),
    _csv("num-infinity", "nor does Infinity", {"n:N": "-Infinity"}, {"n": {"N": "-Infinity"}}, accepted=False),
    _csv("num-38-digits", "38 significant digits", {"n:N": "9" * 38}, {"n": {"N": "9" * 38}}, accepted=True),
    _csv(
        "num-39-digits",
        "39 significant digits: 'precision up to 38 digits'",
        {"n:N": "1" * 39},
        {"n": {"N": "1" * 39}},
        accepted=False,
    ),
    _csv(
        "num-38-digits-trailing-zeros",
        "trailing zeros are not significant: 41 characters, 38 digits",
        {"n:N": "1" * 38 + "000"},
        {"n": {"N": "1" * 38 + "000"}},
        accepted=True,
    ),
    _csv(
        "num-38-digits-leading-zeros",
        "nor are leading zeros",
        {"n:N": "0.000" + "1" * 38},
        {"n": {"N": "0.000" + "1" * 38}},
        accepted=True,
    ),
    _csv("num-smallest", "1E-130: the smallest magnitude", {"n:N": "1E-130"}, {"n": {"N": "1E-130"}}, accepted=True),
    _csv("num-underflow", "1E-131: 'Number underflow'", {"n:N": "1E-131"}, {"n": {"N": "1E-131"}}, accepted=False),
    _csv(
        "num-largest", "9.99E+125 (the guide's largest)", {"n:N": "9.99E+125"}, {"n": {"N": "9.99E+125"}}, accepted=True
    ),
    _csv(
        "num-largest-digits",
        "9.9999E+125: anything below 1E+126",
        {"n:N": "9.9999E+125"},
        {"n": {"N": "9.9999E+125"}},
        accepted=True,
    ),
    _csv("num-overflow", "1E+126: 'Number overflow'", {"n:N": "1E+126"}, {"n": {"N": "1E+126"}}, accepted=False),
    _csv("num-zero-huge-exponent", "0E+500 is zero", {"n:N": "0E+500"}, {"n": {"N": "0E+500"}}, accepted=True),
    _ddb("ddb-num-json-number", "a JSON number for N: taken as its value", '{"n": {"N": 1.50}}', accepted=True),
    _ddb("ddb-num-empty", "an empty N", {"n": {"N": ""}}, accepted=False),
    _ddb("ddb-num-space", "N ' 1' in DynamoDB JSON", {"n": {"N": " 1"}}, accepted=False),
    _ddb("ddb-num-exponent", "N '1.0e2' is 100", {"n": {"N": "1.0e2"}}, accepted=True),
    _jsonl("json-number-trailing-zero", "a JSON number 1.50", '{"n": 1.50}', {"n": {"N": "1.50"}}, accepted=True),
    _jsonl("json-number-overflow", "a JSON number 1e400", '{"n": 1e400}', {"n": {"N": "1e400"}}, accepted=False),
    _jsonl(
        "json-number-41-digits",
        "a JSON integer of 41 significant digits",
        '{"n": ' + "1" * 41 + "}",
        {"n": {"N": "1" * 41}},
        accepted=False,
    ),
    _jsonl("json-number-minus-zero", "JSON -0.0 is 0", '{"n": -0.0}', {"n": {"N": "-0.0"}}, accepted=True),
    # --- NULL and BOOL -------------------------------------------------------------------
    _ddb("null-true", "NULL true", {"z": {"NULL": True}}, accepted=True),
    _ddb(
        "null-false",
        "NULL false: 'Null attribute value types must have the value of true'",
        {"z": {"NULL": False}},
        accepted=False,
    ),
    _csv("csv-null-true", "a z:NULL cell 'true'", {"z:NULL": "true"}, {"z": {"NULL": "true"}}, accepted=True),
    _csv(
        "csv-null-false",
        "a z:NULL cell 'false' is not NULL",
        {"z:NULL": "false"},
        {"z": {"NULL": "false"}},
        accepted=False,
    ),
    _jsonl("json-null", "JSON null is NULL", '{"z": null}', {"z": {"NULL": True}}, accepted=True),
    _ddb("bool-false", "BOOL false", {"f": {"BOOL": False}}, accepted=True),
    _ddb("bool-text", "BOOL 'true' as text: DynamoDB takes it", {"f": {"BOOL": "true"}}, accepted=True),
    _ddb("bool-yes", "BOOL 'yes': refused", {"f": {"BOOL": "yes"}}, accepted=False),
    _csv(
        "csv-bool-upper",
        "an f:BOOL cell 'TRUE' (Excel's spelling)",
        {"f:BOOL": "TRUE"},
        {"f": {"BOOL": "TRUE"}},
        accepted=True,
    ),
    _csv("csv-bool-false", "an f:BOOL cell 'False'", {"f:BOOL": "False"}, {"f": {"BOOL": "False"}}, accepted=True),
    _csv(
        "csv-bool-yes",
        "an f:BOOL cell 'yes' is not a boolean to DynamoDB",
        {"f:BOOL": "yes"},
        {"f": {"BOOL": "yes"}},
        accepted=False,
    ),
    _csv("csv-bool-one", "an f:BOOL cell '1' neither", {"f:BOOL": "1"}, {"f": {"BOOL": "1"}}, accepted=False),
    # --- empty strings and binary: allowed outside keys ----------------------------------
    _ddb("empty-string", "an empty S outside the key", {"e": {"S": ""}}, accepted=True),
    _ddb("empty-binary", "an empty B outside the key", {"e": {"B": ""}}, accepted=True),
    _jsonl("json-empty-string", "a JSON '' outside the key", '{"e": ""}', {"e": {"S": ""}}, accepted=True),
    _csv(
        "csv-empty-cell",
        "an empty CSV cell is no attribute at all",
        {"e:S": "", "f": "x"},
        {"f": {"S": "x"}},
        accepted=True,
    ),
    _ddb("key-empty-string", "an empty string key", '{"x": {"S": "a"}}', accepted=False, table="s"),
    # --- sets ---------------------------------------------------------------------------
    _ddb("set-empty", "an empty SS", {"s": {"SS": []}}, accepted=False),
    _ddb("set-duplicate", "SS ['a', 'a']", {"s": {"SS": ["a", "a"]}}, accepted=False),
    _ddb("set-number-duplicate", "NS ['1', '1.0'] is one number twice", {"s": {"NS": ["1", "1.0"]}}, accepted=False),
    _ddb("set-number-exponent-duplicate", "NS ['1', '1e0']", {"s": {"NS": ["1", "1e0"]}}, accepted=False),
    _ddb("set-strings-like-numbers", "SS ['1', '1.0'] are two strings", {"s": {"SS": ["1", "1.0"]}}, accepted=True),
    _ddb("set-empty-string-member", "SS [''] is a set of one empty string", {"s": {"SS": [""]}}, accepted=True),
    _ddb(
        "set-binary-duplicate",
        "BS 'YQ==' and 'YR==' are both the byte 'a'",
        {"s": {"BS": ["YQ==", "YR=="]}},
        accepted=False,
    ),
    _ddb("set-binary-empty-member", "BS [''] is a set of one empty binary", {"s": {"BS": [""]}}, accepted=True),
    _ddb("set-number-bad-member", "NS ['1', ' 2']", {"s": {"NS": ["1", " 2"]}}, accepted=False),
    _csv(
        "csv-set-duplicate",
        "a tags:SS cell with 'a' twice",
        {"tags:SS": '["a", "a"]'},
        {"tags": {"SS": ["a", "a"]}},
        accepted=False,
    ),
    _csv(
        "csv-number-set-duplicate",
        "a nums:NS cell [1, 1.00]",
        {"nums:NS": "[1, 1.00]"},
        {"nums": {"NS": ["1", "1.00"]}},
        accepted=False,
    ),
    _csv(
        "csv-number-set",
        "a nums:NS cell [1, 2.50]",
        {"nums:NS": "[1, 2.50]"},
        {"nums": {"NS": ["1", "2.50"]}},
        accepted=True,
    ),
    # --- lists and maps -----------------------------------------------------------------
    _ddb("list-empty", "an empty L", {"l": {"L": []}}, accepted=True),
    _ddb("map-empty", "an empty M", {"m": {"M": {}}}, accepted=True),
    _jsonl(
        "json-empty-list-and-object",
        "[] and {} in JSON",
        '{"l": [], "m": {}}',
        {"l": {"L": []}, "m": {"M": {}}},
        accepted=True,
    ),
    # --- binary (base64) ----------------------------------------------------------------
    _ddb("b64-no-padding", "'YQ' without its '=='", {"b": {"B": "YQ"}}, accepted=False),
    _ddb("b64-inner-space", "'Y Q=='", {"b": {"B": "Y Q=="}}, accepted=False),
    _ddb("b64-urlsafe", "'-_8=' is the URL-safe alphabet", {"b": {"B": "-_8="}}, accepted=False),
    _ddb("b64-standard", "'+/8=' is the standard alphabet", {"b": {"B": "+/8="}}, accepted=True),
    _ddb(
        "b64-newline-after", "a line break after the text (as encoders write it)", {"b": {"B": "YQ==\n"}}, accepted=True
    ),
    _ddb(
        "b64-spare-bits",
        "'YR==': bits past the last byte are ignored (stored 'YQ==')",
        {"b": {"B": "YR=="}},
        accepted=True,
    ),
    _csv(
        "csv-b64",
        "a blob:B cell",
        {"blob:B": _b64(b"\x00\xffbinary")},
        {"blob": {"B": _b64(b"\x00\xffbinary")}},
        accepted=True,
    ),
    # --- keys ---------------------------------------------------------------------------
    _ddb("pk-2048", "a partition key of 2,048 bytes", '{"x": {"S": "a"}}', accepted=True, table="s"),
    _ddb("key-type-mismatch", "an N where the key is S", '{"x": {"S": "a"}}', accepted=False, table="s"),
    _ddb("sk-missing", "no sort key", {"x": {"S": "a"}}, accepted=False, table="sn"),
    _csv(
        "csv-sk-number",
        "sk '007' (untyped) takes the key's type N",
        {"sk": "007"},
        {"sk": {"N": "007"}},
        accepted=True,
        table="sn",
    ),
    _csv(
        "csv-sk-number-space", "sk ' 7' is not a number", {"sk": " 7"}, {"sk": {"N": " 7"}}, accepted=False, table="sn"
    ),
    _jsonl("json-number", "a JSON number outside the key is N", '{"x": 1}', {"x": {"N": "1"}}, accepted=True),
]


def _case_with_key(case: Case, key_text: str) -> Case:
    """The same case with its key replaced (keys that are the subject of the case)."""
    item = json.loads(case.dynamodb)
    item.update(json.loads(key_text))
    item_text = json.dumps(item, ensure_ascii=False)
    return Case(case.id, case.note, case.table, case.fmt, '{"Item": ' + item_text + "}\n", item_text, case.accepted)


def _b_key(id: str) -> str:
    return json.dumps({"pk": {"B": _b64(id.encode())}})


_KEYED: dict[str, str] = {
    "key-empty-string": json.dumps({"pk": {"S": ""}}),
    "pk-2048": json.dumps({"pk": {"S": "k" * 2048}}),
    "key-type-mismatch": json.dumps({"pk": {"N": "1"}}),
}
CASES = [_case_with_key(c, _KEYED[c.id]) if c.id in _KEYED else c for c in CASES]

CASES += [
    Case(
        "pk-2049",
        "2,049 bytes: 'must be under 2048 bytes'",
        "s",
        "ddbjson",
        "",
        json.dumps({"pk": {"S": "k" * 2049}}),
        False,
    ),
    Case(
        "pk-utf8-2050",
        "1,025 x 'é' is 2,050 bytes",
        "s",
        "ddbjson",
        "",
        json.dumps({"pk": {"S": "é" * 1025}}, ensure_ascii=False),
        False,
    ),
    Case(
        "pk-binary-2048",
        "a binary partition key of 2,048 bytes",
        "b",
        "ddbjson",
        "",
        json.dumps({"pk": {"B": _b64(b"k" * 2048)}}),
        True,
    ),
    Case(
        "pk-binary-2049",
        "2,049 bytes of binary",
        "b",
        "ddbjson",
        "",
        json.dumps({"pk": {"B": _b64(b"k" * 2049)}}),
        False,
    ),
    Case("pk-binary-empty", "an empty binary key", "b", "ddbjson", "", json.dumps({"pk": {"B": ""}}), False),
    Case(
        "sk-1024",
        "a sort key of 1,024 bytes",
        "ss",
        "ddbjson",
        "",
        json.dumps({"pk": {"S": "sk-1024"}, "sk": {"S": "s" * 1024}}),
        True,
    ),
    Case(
        "sk-1025",
        "1,025 bytes: over the sort key limit",
        "ss",
        "ddbjson",
        "",
        json.dumps({"pk": {"S": "sk-1025"}, "sk": {"S": "s" * 1025}}),
        False,
    ),
    Case(
        "sk-empty",
        "an empty string sort key",
        "ss",
        "ddbjson",
        "",
        json.dumps({"pk": {"S": "sk-empty"}, "sk": {"S": ""}}),
        False,
    ),
    Case("pk-number-38", "a number key of 38 digits", "n", "ddbjson", "", json.dumps({"pk": {"N": "7" * 38}}), True),
    Case("pk-number-minus-zero", "a number key '-0'", "n", "ddbjson", "", json.dumps({"pk": {"N": "-0"}}), True),
]
CASES = [
    c if c.text else Case(c.id, c.note, c.table, c.fmt, '{"Item": ' + c.dynamodb + "}\n", c.dynamodb, c.accepted)
    for c in CASES
]
CASES += [
    Case(
        "csv-number-key-space",
        "a CSV key ' 12' for an N key is not a number",
        "n",
        "csv",
        "pk,x\n 12,a\n",
        json.dumps({"pk": {"N": " 12"}, "x": {"S": "a"}}),
        False,
    ),
    Case(
        "csv-number-key",
        "a CSV key '12.50' for an N key is stored 12.5",
        "n",
        "csv",
        "pk,x\n12.50,a\n",
        json.dumps({"pk": {"N": "12.50"}, "x": {"S": "a"}}),
        True,
    ),
    Case(
        "csv-binary-key",
        "a CSV key for a B key is base64",
        "b",
        "csv",
        "pk,x\n" + _b64(b"csv-binary-key") + ",a\n",
        json.dumps({"pk": {"B": _b64(b"csv-binary-key")}, "x": {"S": "a"}}),
        True,
    ),
]

CASES.append(
    Case(
        "json-number-for-string-key",
        "a JSON number for an S key takes the key's type: its text",
        "s",
        "jsonl",
        '{"pk": 41, "x": "a"}\n',
        json.dumps({"pk": {"S": "41"}, "x": {"S": "a"}}),
        True,
    )
)

assert len({c.id for c in CASES}) == len(CASES), "case ids must be unique"
