"""Tests of bulkwrites.dynamo.items against DynamoDB's documented rules (no Django, no AWS)."""

from __future__ import annotations

import base64
import copy
import datetime as dt
import random
from decimal import Context, Decimal, localcontext
from typing import Any

import pytest

from bulkwrites.dynamo.items import (
    MAX_ITEM_BYTES,
    ItemError,
    KeyAttribute,
    KeySchema,
    from_python,
    from_wire,
    item_size,
    key_identity,
    normalize_number,
    number_size,
    parse_dynamodb_json,
    parse_header,
    prepare_item,
    row_to_item,
    to_attribute,
    to_wire,
    validate_item,
)

# --- helpers --------------------------------------------------------------------------


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def schema(*attributes: tuple[str, str, str]) -> KeySchema:
    return KeySchema(tuple(KeyAttribute(name, type_, role) for name, type_, role in attributes))


# pk: string partition key, sk: number sort key
PK_S_SK_N = schema(("pk", "S", "HASH"), ("sk", "N", "RANGE"))
PK_S = schema(("pk", "S", "HASH"))


# --- parse_header ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("column", "expected"),
    [
        ("price:N", ("price", "N")),
        ("name:S", ("name", "S")),
        ("blob:B", ("blob", "B")),
        ("flag:BOOL", ("flag", "BOOL")),
        ("tags:SS", ("tags", "SS")),
        ("doc:M", ("doc", "M")),
        ("a:b:N", ("a:b", "N")),  # only the last colon separates the type
        (" price :N", ("price", "N")),  # the name is stripped
    ],
)
def test_parse_header_typed(column: str, expected: tuple[str, str]) -> None:
    assert parse_header(column) == expected


@pytest.mark.parametrize(("column", "expected"), [("price", "price"), (" price ", "price"), ("", "")])
def test_parse_header_untyped(column: str, expected: str) -> None:
    assert parse_header(column) == (expected, None)


@pytest.mark.parametrize("column", ["a:x", "url:https", "time:12:30", "ratio:NUM", "x:SSS"])
def test_parse_header_unknown_suffix_stays_part_of_the_name(column: str) -> None:
    assert parse_header(column) == (column, None)


def test_parse_header_a_colon_b_stays_a_name() -> None:
    assert parse_header("a:b") == ("a:b", None)


@pytest.mark.parametrize("column", ["price:n", "flag:bool", "tags:Ss", "time:s"])
def test_parse_header_types_are_upper_case_as_dynamodb_writes_them(column: str) -> None:
    # Case-sensitive on purpose: otherwise "a:b" or "time:s" would silently become typed.
    assert parse_header(column) == (column, None)


# --- normalize_number -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("42", "42"),
        ("+7", "7"),
        ("-3.25", "-3.25"),
        ("1.500", "1.5"),  # trailing zeros trimmed
        ("007", "7"),  # leading zeros trimmed
        ("100", "100"),  # zeros before the point are kept as value
        ("0.0", "0"),
        ("-0", "0"),
        ("1e3", "1000"),
        ("1.5E-3", "0.0015"),
        (12, "12"),
        (Decimal("2.50"), "2.5"),
    ],
)
def test_normalize_number_canonical_text(value: object, expected: str) -> None:
    assert normalize_number(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0.1, "0.1"),
        (1.1, "1.1"),
        (2.675, "2.675"),
        (1e-7, "0.0000001"),
        (1e20, "100000000000000000000"),
        (-0.5, "-0.5"),
        (3.0, "3"),
    ],
)
def test_normalize_number_float_has_no_binary_artefacts(value: float, expected: str) -> None:
    # Decimal(1.1) would be 1.100000000000000088817841970012523233890533447265625
    assert normalize_number(value) == expected


def test_normalize_number_integers_take_the_short_way_to_the_same_answer() -> None:
    # Plain integers skip Decimal; whatever their length, sign or zeros, the text must be
    # exactly what the exact Decimal path gives (or the same refusal).
    rng = random.Random(5)

    def reference(text: str) -> str | None:
        with localcontext(Context(prec=200)):
            number = Decimal(text)
            if number.is_zero():
                return "0"
            digits = len("".join(map(str, number.as_tuple().digits)).strip("0"))
            return None if digits > 38 else format(number.normalize(), "f")

    cases = ["0", "-0", "00", "7", "-7", "10", "1" + "0" * 45, "9" * 38, "-" + "9" * 38, "9" * 39]
    for _ in range(3000):
        digits = rng.choice("123456789") + "".join(rng.choice("0123456789") for _ in range(rng.randrange(0, 44)))
        if rng.random() < 0.2:
            digits = digits.rstrip("123456789") or digits  # runs of trailing zeros
        cases.append(("-" if rng.random() < 0.5 else "") + digits)
    for text in cases:
        expected = reference(text)
        for value in (text, int(text)):
            if expected is None:
                with pytest.raises(ItemError):
                    normalize_number(value)
            else:
                assert normalize_number(value) == expected, value


def test_normalize_number_38_significant_digits_are_kept() -> None:
    # Trailing/leading zeros do not count: 1 followed by 50 zeros has 1 significant digit.
    assert normalize_number("1" + "0" * 50) == "1" + "0" * 50
    assert normalize_number("0.000" + "5" * 20) == "0.000" + "5" * 20


@pytest.mark.parametrize("value", ["12345678901234567890123456789012345678", "-" + "9" * 38, "0." + "7" * 38])
def test_normalize_number_keeps_all_38_digits(value: str) -> None:
    assert normalize_number(value) == value


@pytest.mark.parametrize("value", ["1" * 39, "123456789012345678901234567890123456789", "1." + "2" * 40])
def test_normalize_number_rejects_39_significant_digits(value: str) -> None:
    with pytest.raises(ItemError, match="significant digits"):
        normalize_number(value)


@pytest.mark.parametrize(
    "value",
    ["NaN", "nan", "sNaN", "Infinity", "-Infinity", "inf", float("nan"), float("inf"), float("-inf"), Decimal("NaN")],
)
def test_normalize_number_rejects_nan_and_infinity(value: object) -> None:
    with pytest.raises(ItemError, match="NaN or Infinity"):
        normalize_number(value)


@pytest.mark.parametrize("value", ["1E-130", "-1E-130", "9.99E+125", "-9.99E+125"])
def test_normalize_number_range_edges_accepted(value: str) -> None:
    assert Decimal(normalize_number(value)) == Decimal(value)


@pytest.mark.parametrize("value", ["1E-131", "-9E-131", "1E+126", "-1E+126", "1" + "0" * 126])
def test_normalize_number_out_of_range(value: str) -> None:
    with pytest.raises(ItemError, match="range"):
        normalize_number(value)


@pytest.mark.parametrize("value", ["abc", "", "  ", "1,000", "0x10", "1.2.3", True, False])
def test_normalize_number_rejects_non_numbers(value: object) -> None:
    with pytest.raises(ItemError):
        normalize_number(value)


# --- to_attribute ---------------------------------------------------------------------


def test_to_attribute_scalars() -> None:
    assert to_attribute("héllo", "S") == {"S": "héllo"}
    assert to_attribute("", "S") == {"S": ""}
    assert to_attribute(42, "S") == {"S": "42"}
    assert to_attribute("9.50", "N") == {"N": "9.5"}
    assert to_attribute(" AAEC ", "B") == {"B": "AAEC"}
    assert to_attribute(b"\x00\x01\x02", "B") == {"B": "AAEC"}
    assert to_attribute("true", "NULL") == {"NULL": True}


# The text DynamoDB itself takes for a boolean (checked against DynamoDB Local): these three
# spellings, surrounding spaces ignored; and 0/1 as JSON numbers.
@pytest.mark.parametrize("word", ["true", "TRUE", "True", " true ", True, 1])
def test_to_attribute_bool_true(word: object) -> None:
    assert to_attribute(word, "BOOL") == {"BOOL": True}


@pytest.mark.parametrize("word", ["false", "FALSE", "False", False, 0])
def test_to_attribute_bool_false(word: object) -> None:
    assert to_attribute(word, "BOOL") == {"BOOL": False}


@pytest.mark.parametrize("word", ["yes", "no", "1", "0", "Y", "t", "tRuE", "", None])
def test_to_attribute_bool_refuses_what_dynamodb_refuses(word: object) -> None:
    with pytest.raises(ItemError, match="not a boolean: DynamoDB takes true or false"):
        to_attribute(word, "BOOL")


@pytest.mark.parametrize("word", ["false", "FALSE", False, 0, "anything", ""])
def test_to_attribute_null_is_only_ever_true(word: object) -> None:
    with pytest.raises(ItemError, match="DynamoDB's NULL can only be true"):
        to_attribute(word, "NULL")


@pytest.mark.parametrize(
    ("value", "type_name", "message"),
    [
        ("abc", "N", "not a number"),
        ("NaN", "N", "NaN"),
        ("not base64!", "B", "base64"),
        ("YQ", "B", "base64"),  # missing padding
        ("maybe", "BOOL", "boolean"),
        ("2", "BOOL", "boolean"),
        ("x", "XS", "unknown DynamoDB type"),
        ("x", "s", "unknown DynamoDB type"),
    ],
)
def test_to_attribute_bad_scalar(value: str, type_name: str, message: str) -> None:
    with pytest.raises(ItemError, match=message):
        to_attribute(value, type_name)


def test_to_attribute_sets_from_json_strings() -> None:
    assert to_attribute('["a", "b"]', "SS") == {"SS": ["a", "b"]}
    assert to_attribute("[1, 2.50, -3]", "NS") == {"NS": ["1", "2.5", "-3"]}
    assert to_attribute('["0.1"]', "NS") == {"NS": ["0.1"]}
    assert to_attribute(f'["{b64(b"ab")}", "{b64(b"cd")}"]', "BS") == {"BS": [b64(b"ab"), b64(b"cd")]}
    assert to_attribute(["x", "y"], "SS") == {"SS": ["x", "y"]}  # native list from JSON/XLSX


@pytest.mark.parametrize("set_type", ["SS", "NS", "BS"])
@pytest.mark.parametrize("value", ["[]", []])
def test_to_attribute_empty_set(set_type: str, value: object) -> None:
    with pytest.raises(ItemError, match="empty"):
        to_attribute(value, set_type)


@pytest.mark.parametrize(
    ("value", "set_type"),
    [
        ('["a", "b", "a"]', "SS"),
        ('["1", "1.0"]', "NS"),  # the same number written twice
        ("[1, 1.00]", "NS"),
        ('["1E+2", "100"]', "NS"),
        (f'["{b64(b"ab")}", "{b64(b"ab")}"]', "BS"),
    ],
)
def test_to_attribute_duplicate_set_members(value: str, set_type: str) -> None:
    with pytest.raises(ItemError, match="duplicate"):
        to_attribute(value, set_type)


def test_to_attribute_bad_set_member() -> None:
    with pytest.raises(ItemError, match="not a number"):
        to_attribute('["1", "x"]', "NS")
    with pytest.raises(ItemError, match="base64"):
        to_attribute('["%%"]', "BS")


def test_to_attribute_list_from_json_string() -> None:
    assert to_attribute('[1, "a", null, true, 0.1, [2], {"k": 2.50}]', "L") == {
        "L": [
            {"N": "1"},
            {"S": "a"},
            {"NULL": True},
            {"BOOL": True},
            {"N": "0.1"},
            {"L": [{"N": "2"}]},
            {"M": {"k": {"N": "2.5"}}},
        ]
    }
    assert to_attribute("[]", "L") == {"L": []}  # lists and maps may be empty


def test_to_attribute_map_from_json_string() -> None:
    assert to_attribute('{"a": "x", "b": {"c": false}, "d": [null]}', "M") == {
        "M": {"a": {"S": "x"}, "b": {"M": {"c": {"BOOL": False}}}, "d": {"L": [{"NULL": True}]}}
    }


@pytest.mark.parametrize(
    ("value", "type_name", "message"),
    [
        ("[1, 2", "L", "not valid JSON"),
        ('{"a": 1}', "L", "not a JSON list"),
        ("[1]", "M", "not a JSON dict"),
        ("{oops}", "M", "not valid JSON"),
        ('"a"', "SS", "not a JSON list"),
        ("a,b", "SS", "not valid JSON"),
        ('{"a": NaN}', "M", "NaN"),
    ],
)
def test_to_attribute_bad_json(value: str, type_name: str, message: str) -> None:
    with pytest.raises(ItemError, match=message):
        to_attribute(value, type_name)


# --- from_python ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, {"NULL": True}),
        (True, {"BOOL": True}),  # bool is checked before int
        (False, {"BOOL": False}),
        (0, {"N": "0"}),
        (1, {"N": "1"}),
        (Decimal("1.50"), {"N": "1.5"}),
        (0.1, {"N": "0.1"}),
        ("1", {"S": "1"}),
        (b"\x00\xff", {"B": "AP8="}),
        (dt.date(2024, 2, 29), {"S": "2024-02-29"}),
        ({"a", "b"}, {"SS": ["a", "b"]}),
        ({1}, {"NS": ["1"]}),
    ],
)
def test_from_python_natural_mapping(value: object, expected: dict[str, Any]) -> None:
    result = from_python(value)
    if "SS" in expected:
        assert sorted(result["SS"]) == expected["SS"]
    else:
        assert result == expected


def test_from_python_nested() -> None:
    assert from_python({"a": [1, True, None, {"b": Decimal("2.0")}], 3: "x"}) == {
        "M": {
            "a": {"L": [{"N": "1"}, {"BOOL": True}, {"NULL": True}, {"M": {"b": {"N": "2"}}}]},
            "3": {"S": "x"},
        }
    }
    assert from_python((1, "a")) == {"L": [{"N": "1"}, {"S": "a"}]}


@pytest.mark.parametrize("value", [float("nan"), Decimal("Infinity"), set(), {"a", 1}])
def test_from_python_errors(value: object) -> None:
    with pytest.raises(ItemError):
        from_python(value)


# --- row_to_item ----------------------------------------------------------------------


def test_row_to_item_typed_and_untyped_columns() -> None:
    row = {
        "pk": "user#1",
        "sk": "42",  # untyped text for an N sort key takes the key's type
        "price:N": "9.50",
        "note": "42",  # untyped text for a non-key attribute stays a string
        "active:BOOL": "TRUE",
        "tags:SS": '["a", "b"]',
        "raw:B": b64(b"\x01\x02"),
    }
    assert row_to_item(row, PK_S_SK_N) == {
        "pk": {"S": "user#1"},
        "sk": {"N": "42"},
        "price": {"N": "9.5"},
        "note": {"S": "42"},
        "active": {"BOOL": True},
        "tags": {"SS": ["a", "b"]},
        "raw": {"B": b64(b"\x01\x02")},
    }


def test_row_to_item_untyped_key_cell_takes_binary_key_type() -> None:
    key_schema = schema(("id", "B", "HASH"))
    assert row_to_item({"id": b64(b"\xff")}, key_schema) == {"id": {"B": b64(b"\xff")}}


def test_row_to_item_native_values_map_naturally() -> None:
    row = {"pk": "a", "sk": 7, "count": 3, "ok": False, "gone": None, "doc": {"x": [1]}}
    assert row_to_item(row, PK_S_SK_N) == {
        "pk": {"S": "a"},
        "sk": {"N": "7"},
        "count": {"N": "3"},
        "ok": {"BOOL": False},
        "gone": {"NULL": True},
        "doc": {"M": {"x": {"L": [{"N": "1"}]}}},
    }


def test_row_to_item_numeric_native_cell_for_string_key_stays_string() -> None:
    assert row_to_item({"pk": 42}, PK_S) == {"pk": {"S": "42"}}


def test_row_to_item_declared_type_wins_over_key_type() -> None:
    # The declared type is kept even if it is wrong for the key; validate_item reports it.
    assert row_to_item({"sk:S": "42"}, PK_S_SK_N) == {"sk": {"S": "42"}}


def test_row_to_item_duplicate_attribute_names_it() -> None:
    with pytest.raises(ItemError, match=r"'price'.*twice"):
        row_to_item({"pk": "a", "price": "1", "price:S": "2"}, PK_S)


def test_row_to_item_bad_cell_names_the_column() -> None:
    with pytest.raises(ItemError, match=r"column 'price': 'abc' is not a number"):
        row_to_item({"pk": "a", "price:N": "abc"}, PK_S)
    with pytest.raises(ItemError, match=r"column 'sk'"):
        row_to_item({"pk": "a", "sk": "forty-two"}, PK_S_SK_N)


def test_row_to_item_column_without_name() -> None:
    with pytest.raises(ItemError, match="no attribute name"):
        row_to_item({"pk": "a", "": "x"}, PK_S)


# --- parse_dynamodb_json ----------------------------------------------------------------


def test_parse_dynamodb_json_valid_item_is_normalised() -> None:
    item = {
        "pk": {"S": "a"},
        "n": {"N": "1.50"},
        "b": {"B": b64(b"xyz")},
        "t": {"BOOL": True},
        "z": {"NULL": True},
        "ss": {"SS": ["a", "b"]},
        "ns": {"NS": ["1", "2.0"]},
        "bs": {"BS": [b64(b"1")]},
        "l": {"L": [{"S": "x"}, {"N": "007"}]},
        "m": {"M": {"k": {"L": [{"NULL": True}]}}},
    }
    expected = copy.deepcopy(item)
    expected["n"] = {"N": "1.5"}
    expected["ns"] = {"NS": ["1", "2"]}
    expected["l"] = {"L": [{"S": "x"}, {"N": "7"}]}
    assert parse_dynamodb_json(item) == expected


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ([{"pk": {"S": "a"}}], "expected an object"),
        ("pk", "expected an object"),
        ({}, "expected an object"),
        ({"pk": "a"}, r"'pk' is not a DynamoDB JSON value"),
        ({"pk": {"S": "a", "N": "1"}}, r"'pk' is not a DynamoDB JSON value"),
        ({"pk": {}}, r"'pk' is not a DynamoDB JSON value"),
        ({"pk": {"STRING": "a"}}, "unknown type 'STRING'"),
        ({"pk": {"s": "a"}}, "unknown type 's'"),
        ({"pk": {"S": 1}}, "S must be a string"),
        ({"n": {"N": "abc"}}, r"'n'.*not a number"),
        ({"b": {"B": "***"}}, r"'b'.*base64"),
        ({"l": {"L": 5}}, r"'l': malformed L"),
        ({"m": {"M": ["a"]}}, r"'m': malformed M"),
        ({"l": {"L": [{"S": "ok"}, "bad"]}}, r"'l\[1\]'"),
        ({"m": {"M": {"k": {"N": "x"}}}}, r"'m\.k'"),
        ({"ss": {"SS": []}}, "empty"),
        ({"ns": {"NS": ["1", "1.0"]}}, "duplicate"),
        ({"ns": {"NS": 5}}, "malformed NS"),
    ],
)
def test_parse_dynamodb_json_malformed(item: object, message: str) -> None:
    with pytest.raises(ItemError, match=message):
        parse_dynamodb_json(item)


@pytest.mark.parametrize("item", [{"ss": {"SS": "abc"}}, {"ns": {"NS": "12"}}])
def test_parse_dynamodb_json_set_given_as_string_is_malformed(item: dict[str, Any]) -> None:
    with pytest.raises(ItemError):
        parse_dynamodb_json(item)


# --- item_size --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        # S: "name" 4 + "héllo" 6 UTF-8 bytes (é is 2) = 10
        ({"name": {"S": "héllo"}}, 10),
        # S: "e" 1 + "" 0 = 1
        ({"e": {"S": ""}}, 1),
        # N: digits paired from the decimal point, 1 byte of exponent, 1 more if negative.
        # "price" 5 + 123.45 = 01|23|45: 3 + 1 = 9
        ({"price": {"N": "123.45"}}, 9),
        # N: "n" 1 + 1000 = 10|00: zero pairs dropped -> 1, +1 = 3
        ({"n": {"N": "1000"}}, 3),
        # N: "n" 1 + 0.00120 = .00|12: 1 pair, +1 = 3
        ({"n": {"N": "0.00120"}}, 3),
        # N: "n" 1 + 1.5 = 01|.50: 2 pairs, +1 = 4 (the guide's "1 byte per 2 digits" would say 3)
        ({"n": {"N": "1.5"}}, 4),
        # N: "n" 1 + -12345 = 01|23|45: 3, +1 exponent, +1 sign = 6
        ({"n": {"N": "-12345"}}, 6),
        # N: "z" 1 + zero is 1 byte = 2
        ({"z": {"N": "0"}}, 2),
        # B: "blob" 4 + 5 raw bytes (the base64 text is 8 chars) = 9
        ({"blob": {"B": b64(b"\x00\x01\x02\x03\x04")}}, 9),
        # BOOL: "ok" 2 + 1 = 3
        ({"ok": {"BOOL": False}}, 3),
        # NULL: "nothing" 7 + 1 = 8
        ({"nothing": {"NULL": True}}, 8),
        # SS: "tags" 4 + "a" 1 + "bc" 2 + "déf" 4 = 11
        ({"tags": {"SS": ["a", "bc", "déf"]}}, 11),
        # NS: "nums" 4 + "1" (1+1) + "22" (1+1) + "333" (2+1) = 11
        ({"nums": {"NS": ["1", "22", "333"]}}, 11),
        # BS: "bs" 2 + 2 raw + 3 raw = 7
        ({"bs": {"BS": [b64(b"ab"), b64(b"cde")]}}, 7),
        # L: "l" 1 + 3 + ("ab" 2 + 1) + ("7" (1+1) + 1) + (BOOL 1 + 1) = 1+3+3+3+2 = 12
        ({"l": {"L": [{"S": "ab"}, {"N": "7"}, {"BOOL": True}]}}, 12),
        # L empty: "l" 1 + 3 = 4
        ({"l": {"L": []}}, 4),
        # M: "m" 1 + 3 + ("k" 1 + "v" 1 + 1) + ("kk" 2 + NULL 1 + 1) = 1+3+3+4 = 11
        ({"m": {"M": {"k": {"S": "v"}, "kk": {"NULL": True}}}}, 11),
        # M of L: "m" 1 + 3 + ("l" 1 + [3 + ("x" 1 + 1)] + 1) = 1+3+(1+5+1) = 11
        ({"m": {"M": {"l": {"L": [{"S": "x"}]}}}}, 11),
        # whole item: "pk" 2 + "a" 1 = 3; "sk" 2 + "5" (1+1) = 4; "é" 2 + BOOL 1 = 3 -> 10
        ({"pk": {"S": "a"}, "sk": {"N": "5"}, "é": {"BOOL": True}}, 10),
    ],
)
def test_item_size_hand_computed(item: dict[str, dict[str, Any]], expected: int) -> None:
    assert item_size(item) == expected


def test_item_size_38_digit_number() -> None:
    # "n" 1 + ceil(38 / 2) = 19, + 1 = 21
    assert item_size({"n": {"N": "12345678901234567890123456789012345678"}}) == 21


# --- validate_item ----------------------------------------------------------------------


def test_validate_item_returns_size() -> None:
    # "pk" 2 + "a" 1 = 3; "sk" 2 + "1" (1+1) = 4 -> 7
    assert validate_item({"pk": {"S": "a"}, "sk": {"N": "1"}}, PK_S_SK_N) == 7


def test_validate_item_missing_key() -> None:
    with pytest.raises(ItemError, match=r"missing key attribute 'sk' \(N\)"):
        validate_item({"pk": {"S": "a"}, "other": {"N": "1"}}, PK_S_SK_N)


def test_validate_item_wrong_key_type() -> None:
    with pytest.raises(ItemError, match=r"'sk' is S but the table's key is N"):
        validate_item({"pk": {"S": "a"}, "sk": {"S": "1"}}, PK_S_SK_N)
    with pytest.raises(ItemError, match=r"'pk' is SS"):
        validate_item({"pk": {"SS": ["a"]}, "sk": {"N": "1"}}, PK_S_SK_N)


@pytest.mark.parametrize(
    ("key_schema", "item"),
    [
        (PK_S, {"pk": {"S": ""}}),
        (schema(("pk", "B", "HASH")), {"pk": {"B": ""}}),
        (schema(("pk", "S", "HASH"), ("sk", "S", "RANGE")), {"pk": {"S": "a"}, "sk": {"S": ""}}),
    ],
)
def test_validate_item_empty_key(key_schema: KeySchema, item: dict[str, dict[str, Any]]) -> None:
    with pytest.raises(ItemError, match="is empty"):
        validate_item(item, key_schema)


def test_validate_item_empty_non_key_string_is_allowed() -> None:
    assert validate_item({"pk": {"S": "a"}, "note": {"S": ""}}, PK_S) == 3 + 4


def test_validate_item_partition_key_length() -> None:
    assert validate_item({"pk": {"S": "a" * 2048}}, PK_S) == 2 + 2048
    # 1,025 characters of "é" are 2,050 UTF-8 bytes
    with pytest.raises(ItemError, match=r"'pk' is 2050 bytes; the limit is 2048"):
        validate_item({"pk": {"S": "é" * 1025}}, PK_S)


def test_validate_item_sort_key_length() -> None:
    key_schema = schema(("pk", "S", "HASH"), ("sk", "B", "RANGE"))
    ok = {"pk": {"S": "a"}, "sk": {"B": b64(b"\x00" * 1024)}}
    assert validate_item(ok, key_schema) == 3 + 2 + 1024  # raw bytes, not base64 length
    with pytest.raises(ItemError, match=r"'sk' is 1025 bytes; the limit is 1024"):
        validate_item({"pk": {"S": "a"}, "sk": {"B": b64(b"\x00" * 1025)}}, key_schema)


def test_validate_item_at_the_size_limit() -> None:
    # pk: 2 + 1 = 3; sk: 2 + 2 = 4; "data" 4 + L -> 11 + L
    item = {"pk": {"S": "a"}, "sk": {"N": "1"}, "data": {"S": "x" * (MAX_ITEM_BYTES - 11)}}
    assert validate_item(item, PK_S_SK_N) == 409_600


def test_validate_item_oversize_message() -> None:
    item = {"pk": {"S": "a"}, "sk": {"N": "1"}, "data": {"S": "x" * (MAX_ITEM_BYTES - 10)}}
    with pytest.raises(ItemError) as info:
        validate_item(item, PK_S_SK_N)
    assert "409,601" in str(info.value)
    assert "409,600" in str(info.value)


# --- key_identity -----------------------------------------------------------------------


def test_key_identity_same_number_written_differently() -> None:
    for other in ("1.0", "1.000", "1E+0", "10E-1"):
        a = key_identity({"pk": {"S": "x"}, "sk": {"N": "1"}})
        b = key_identity({"pk": {"S": "x"}, "sk": {"N": other}})
        assert a == b
        assert hash(a) == hash(b)
    assert len({key_identity({"n": {"N": "1"}}), key_identity({"n": {"N": "1.0"}})}) == 1


def test_key_identity_attribute_order_irrelevant() -> None:
    assert key_identity({"pk": {"S": "x"}, "sk": {"N": "2"}}) == key_identity({"sk": {"N": "2"}, "pk": {"S": "x"}})


@pytest.mark.parametrize(
    "other",
    [
        {"pk": {"S": "x"}, "sk": {"N": "2"}},
        {"pk": {"S": "y"}, "sk": {"N": "1"}},
        {"pk": {"S": "x"}, "sk": {"S": "1"}},
        {"pk": {"S": "x"}, "other": {"N": "1"}},
        {"pk": {"S": "x"}},
    ],
)
def test_key_identity_distinguishes_different_keys(other: dict[str, dict[str, Any]]) -> None:
    assert key_identity({"pk": {"S": "x"}, "sk": {"N": "1"}}) != key_identity(other)


# --- to_wire / from_wire ----------------------------------------------------------------


def test_wire_round_trip_with_binary_everywhere() -> None:
    item: dict[str, dict[str, Any]] = {
        "pk": {"S": "a"},
        "b": {"B": b64(b"\x00\xff")},
        "bs": {"BS": [b64(b"1"), b64(b"22")]},
        "n": {"N": "5"},
        "ns": {"NS": ["1", "2"]},
        "l": {"L": [{"B": b64(b"x")}, {"L": [{"B": b64(b"y")}]}, {"S": "s"}]},
        "m": {"M": {"bin": {"BS": [b64(b"z")]}, "deep": {"M": {"b": {"B": b64(b"w")}}}, "t": {"BOOL": True}}},
    }
    original = copy.deepcopy(item)
    wire = to_wire(item)
    assert item == original  # not mutated
    assert wire["b"] == {"B": b"\x00\xff"}
    assert wire["bs"] == {"BS": [b"1", b"22"]}
    assert wire["l"]["L"][0] == {"B": b"x"}
    assert wire["l"]["L"][1] == {"L": [{"B": b"y"}]}
    assert wire["m"]["M"]["bin"] == {"BS": [b"z"]}
    assert wire["m"]["M"]["deep"] == {"M": {"b": {"B": b"w"}}}
    assert wire["pk"] == {"S": "a"}
    assert wire["ns"] == {"NS": ["1", "2"]}
    assert from_wire(wire) == original


# --- prepare_item -----------------------------------------------------------------------


def test_prepare_item_put() -> None:
    prepared = prepare_item(3, {"pk": "a", "sk": "1", "note": "hi"}, PK_S_SK_N)
    assert prepared.is_valid
    assert prepared.error is None
    assert prepared.position == 3
    assert prepared.item == {"pk": {"S": "a"}, "sk": {"N": "1"}, "note": {"S": "hi"}}
    assert prepared.key == {"pk": {"S": "a"}, "sk": {"N": "1"}}
    # 3 + 4 + ("note" 4 + "hi" 2) = 13
    assert prepared.size == 13


@pytest.mark.parametrize(
    ("values", "dynamodb_json", "where"),
    [
        ({"pk": "a", "sk": "1", "note": "x\ud800"}, False, "attribute 'note'"),
        ({"pk": "a\udfff", "sk": "1"}, False, "attribute 'pk'"),
        ({"pk": {"S": "a"}, "sk": {"N": "1"}, "m": {"M": {"in\udc00": {"S": "v"}}}}, True, "attribute 'm'"),
    ],
)
def test_prepare_item_a_lone_surrogate_fails_the_row_not_the_staging(
    values: dict[str, Any], dynamodb_json: bool, where: str
) -> None:
    prepared = prepare_item(4, values, PK_S_SK_N, dynamodb_json=dynamodb_json)
    assert not prepared.is_valid
    assert prepared.error is not None
    assert prepared.error.startswith(f"{where} holds a lone surrogate (U+D")
    assert "not Unicode text" in prepared.error


def test_prepare_item_delete_carries_only_the_key() -> None:
    prepared = prepare_item(0, {"pk": "a", "sk": "1", "note": "hi"}, PK_S_SK_N, delete=True)
    assert prepared.is_valid
    assert prepared.item == {"pk": {"S": "a"}, "sk": {"N": "1"}}
    assert prepared.key == prepared.item
    assert prepared.size == 7  # key only: 3 + 4


def test_prepare_item_dynamodb_json() -> None:
    prepared = prepare_item(1, {"pk": {"S": "a"}, "sk": {"N": "2.0"}}, PK_S_SK_N, dynamodb_json=True)
    assert prepared.is_valid
    assert prepared.item == {"pk": {"S": "a"}, "sk": {"N": "2"}}


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"pk": "a", "sk": "x"}, "column 'sk'"),
        ({"pk": "a"}, "missing key attribute 'sk'"),
        ({"pk": "", "sk": "1"}, "'pk' is empty"),
    ],
)
@pytest.mark.parametrize("delete", [False, True])
def test_prepare_item_invalid_row(values: dict[str, str], message: str, delete: bool) -> None:
    prepared = prepare_item(5, values, PK_S_SK_N, delete=delete)
    assert not prepared.is_valid
    assert prepared.error is not None
    assert message in prepared.error
    assert prepared.item is None
    assert prepared.key is None
    assert prepared.position == 5


def test_prepare_item_delete_ignores_bad_non_key_columns() -> None:
    prepared = prepare_item(0, {"pk": "a", "sk": "1", "price:N": "abc"}, PK_S_SK_N, delete=True)
    assert prepared.is_valid
    assert prepared.item == {"pk": {"S": "a"}, "sk": {"N": "1"}}


# --- KeySchema --------------------------------------------------------------------------


DESCRIBE_TABLE = {
    "TableName": "orders",
    "TableStatus": "ACTIVE",
    "AttributeDefinitions": [
        {"AttributeName": "created", "AttributeType": "N"},
        {"AttributeName": "gsi_pk", "AttributeType": "S"},
        {"AttributeName": "customer", "AttributeType": "B"},
    ],
    # RANGE listed before HASH on purpose
    "KeySchema": [
        {"AttributeName": "created", "KeyType": "RANGE"},
        {"AttributeName": "customer", "KeyType": "HASH"},
    ],
    "ItemCount": 0,
    "TableArn": "arn:aws:dynamodb:eu-west-1:123456789012:table/orders",
    "BillingModeSummary": {"BillingMode": "PAY_PER_REQUEST"},
    "GlobalSecondaryIndexes": [
        {
            "IndexName": "by_gsi",
            "KeySchema": [{"AttributeName": "gsi_pk", "KeyType": "HASH"}],
            "Projection": {"ProjectionType": "ALL"},
        }
    ],
}


def test_key_schema_from_describe_table_puts_hash_first() -> None:
    key_schema = KeySchema.from_describe_table(DESCRIBE_TABLE)
    assert key_schema.attributes == (
        KeyAttribute("customer", "B", "HASH"),
        KeyAttribute("created", "N", "RANGE"),
    )
    assert key_schema.names == ("customer", "created")
    assert key_schema.type_of("created") == "N"
    assert key_schema.type_of("gsi_pk") is None  # index attributes are not the table's key
    assert key_schema.describe() == "customer (B, hash), created (N, range)"


def test_key_schema_hash_only_and_json_round_trip() -> None:
    table = {
        "AttributeDefinitions": [{"AttributeName": "id", "AttributeType": "S"}],
        "KeySchema": [{"AttributeName": "id", "KeyType": "HASH"}],
    }
    key_schema = KeySchema.from_describe_table(table)
    assert key_schema == KeySchema((KeyAttribute("id", "S", "HASH"),))
    full = KeySchema.from_describe_table(DESCRIBE_TABLE)
    assert KeySchema.from_json(full.to_json()) == full
    assert full.to_json()[0] == {"name": "customer", "type": "B", "role": "HASH"}


# --- DynamoDB's rules, as DynamoDB Local applies them ----------------------------------
# (tests/integration/test_boundary_items.py checks each against DynamoDB Local itself)


@pytest.mark.parametrize("text", [" 1", "1 ", "1_000", "1,000", "0x10", "- 1", "--1", "e3", "1e", "", "\u00a01", "1\t"])
def test_normalize_number_refuses_what_dynamodb_cannot_read(text: str) -> None:
    with pytest.raises(ItemError, match="is not a number"):
        normalize_number(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("+1", "1"),
        ("1.", "1"),
        (".5", "0.5"),
        ("1E3", "1000"),
        ("1e+3", "1000"),
        ("0E+500", "0"),
        ("9.9999E+125", None),
    ],
)
def test_normalize_number_reads_what_dynamodb_reads(text: str, expected: str | None) -> None:
    assert normalize_number(text) == (expected or format(Decimal(text), "f"))


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("0", 1),
        ("-0", 1),
        ("1", 2),
        ("12", 2),
        ("123", 3),
        ("12345", 4),
        ("1.5", 3),  # 01|50
        ("10.5", 3),  # 10|50
        ("0.0105", 3),  # .01|05
        ("105000", 3),  # 10|50|00, the zero pair dropped
        ("1000000", 2),
        ("-1", 3),  # one byte more for the sign
        ("-12345", 5),
        ("9" * 38, 20),
        ("-" + "9" * 38, 21),
        ("1.0000000000000000000000000000000000001", 21),
        ("1E-130", 2),
    ],
)
def test_number_size_as_dynamodb_counts_it(text: str, size: int) -> None:
    # Each figure measured against DynamoDB Local at the 400 KB boundary.
    assert number_size(text) == size


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ({"": {"S": "a"}}, "an attribute name is empty"),
        ({"n" * 65_536: {"S": "a"}}, "is 65,536 bytes; DynamoDB names must be 1 to 65,535 bytes"),
        ({"m": {"M": {"": {"S": "a"}}}}, "a key of map 'm' is empty"),
        ({"m": {"M": {"a": {"L": [{"M": {"": {"N": "1"}}}]}}}}, "a key of map 'm.a' is empty"),
    ],
)
def test_names_and_map_keys_have_dynamodbs_limits(item: dict[str, Any], message: str) -> None:
    with pytest.raises(ItemError, match=message):
        validate_item({"pk": {"S": "a"}, **item}, PK_S)


def test_a_name_of_65535_bytes_is_fine() -> None:
    assert validate_item({"pk": {"S": "a"}, "é" * 32_767 + "n": {"S": ""}}, PK_S) == 2 + 1 + 65_535


def nested(levels: int, kind: str = "M") -> dict[str, Any]:
    value: dict[str, Any] = {"N": "1"}
    for _ in range(levels):
        value = {"M": {"a": value}} if kind == "M" else {"L": [value]}
    return value


@pytest.mark.parametrize("kind", ["M", "L"])
def test_nesting_is_limited_to_31_maps_or_lists(kind: str) -> None:
    assert parse_dynamodb_json({"x": nested(31, kind)})
    with pytest.raises(ItemError, match="nested more than 31 deep") as raised:
        parse_dynamodb_json({"x": nested(32, kind)})
    assert str(raised.value).count("attribute") == 1  # named once, not once per level
    assert row_to_item({"x:L": "[" * 31 + "]" * 31}, PK_S)
    with pytest.raises(ItemError, match="nested more than 31 deep"):
        row_to_item({"x:L": "[" * 32 + "]" * 32}, PK_S)
    with pytest.raises(ItemError, match="nested more than 31 deep"):
        from_python({"a": [[{"b": nested(29)}]]})


@pytest.mark.parametrize("value", [False, 0, "false", None, "yes"])
def test_dynamodb_json_null_must_be_true(value: object) -> None:
    with pytest.raises(ItemError, match="NULL"):
        parse_dynamodb_json({"z": {"NULL": value}})
    assert parse_dynamodb_json({"z": {"NULL": True}}) == {"z": {"NULL": True}}


def test_binary_set_members_are_compared_as_bytes() -> None:
    with pytest.raises(ItemError, match="duplicate"):
        parse_dynamodb_json({"b": {"BS": ["YQ==", "YR=="]}})  # both decode to b"a"


# --- key hashes and key search -----------------------------------------------------------------


def test_key_hash_follows_the_key_identity() -> None:
    from bulkwrites.dynamo.items import key_hash, key_identity

    # Keys as conversion makes them (canonical): every way of writing 1.5 is one key, one hash.
    same = [{"pk": to_attribute(text, "N")} for text in ("1.5", "1.50", "15E-1", "0001.500")]
    assert len({key_identity(k) for k in same}) == 1
    assert len({key_hash(k) for k in same}) == 1
    assert key_hash({"pk": to_attribute("AAEC", "B")}) == key_hash({"pk": to_attribute(b"\x00\x01\x02", "B")})
    different = [{"pk": {"N": "1.5"}}, {"pk": {"S": "1.5"}}, {"other": {"N": "1.5"}}, {"pk": {"N": "1.6"}}]
    assert len({key_hash(k) for k in different}) == len(different)
    composite = {"pk": {"S": "a"}, "sk": {"N": "1"}}
    assert key_hash(composite) == key_hash({"sk": {"N": "1"}, "pk": {"S": "a"}})  # order of attributes
    assert -(2**63) <= key_hash(composite) < 2**63


def test_key_search_reads_a_bare_value_or_every_key_attribute() -> None:
    from bulkwrites.dynamo.items import KeySearch, key_search

    pk_n = KeySchema((KeyAttribute("id", "N", "HASH"),))
    assert key_search(" 7.0 ", pk_n) == KeySearch(({"id": {"N": "7"}},))
    assert key_search("id=7", pk_n) == KeySearch(({"id": {"N": "7"}},))
    assert key_search("seven", pk_n) == KeySearch()
    pk_s = KeySchema((KeyAttribute("pk", "S", "HASH"),))
    # A string key holding "=" or "," is still found by its bare value.
    assert key_search("pk=a", pk_s) == KeySearch(({"pk": {"S": "pk=a"}}, {"pk": {"S": "a"}}))
    assert key_search("x, y", pk_s) == KeySearch(({"pk": {"S": "x, y"}},))
    assert key_search("", pk_s) == KeySearch()
    # As the admin prints a composite key; a partition key alone is partial.
    assert key_search("pk=a, sk=1.50", PK_S_SK_N) == KeySearch(({"pk": {"S": "a"}, "sk": {"N": "1.5"}},))
    assert key_search("a", PK_S_SK_N) == KeySearch(partial={"pk": {"S": "a"}})
    assert key_search("sk=2", PK_S_SK_N) == KeySearch(partial={"sk": {"N": "2"}})
    assert key_search("pk=a, sk=x", PK_S_SK_N) == KeySearch()  # not a number
    assert key_search("pk=a, colour=red", PK_S_SK_N) == KeySearch()


def test_an_invalid_row_keeps_its_key_when_the_key_itself_is_sound() -> None:
    prepared = prepare_item(4, {"pk": "a", "sk": "2.50", "price:N": "abc"}, PK_S_SK_N)
    assert not prepared.is_valid
    assert prepared.key == {"pk": {"S": "a"}, "sk": {"N": "2.5"}}
    assert prepared.item is None
    oversized = prepare_item(5, {"pk": "a", "sk": "1", "blob": "x" * 500_000}, PK_S_SK_N)
    assert "409,600" in (oversized.error or "")
    assert oversized.key == {"pk": {"S": "a"}, "sk": {"N": "1"}}
    json_row = prepare_item(6, {"pk": {"S": "a"}, "sk": {"N": "3"}, "n": {"N": "x"}}, PK_S_SK_N, dynamodb_json=True)
    assert json_row.key == {"pk": {"S": "a"}, "sk": {"N": "3"}}
