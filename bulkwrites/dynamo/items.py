"""DynamoDB item rules: attribute types, conversion of source rows, size and validation.

Items are kept in *DynamoDB JSON* (the format of DynamoDB's own export to S3 and of the
low-level API): ``{"pk": {"S": "a"}, "price": {"N": "9.5"}, "blob": {"B": "<base64>"}}``.
That form is JSON-storable as is (binary stays base64) and is turned into the wire form
(binary as bytes) only when sent, by :func:`to_wire`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import re
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Context, Decimal, InvalidOperation, localcontext
from functools import lru_cache
from typing import Any

from .text import quoted

MAX_ITEM_BYTES = 409_600  # 400 KB, DynamoDB's hard limit per item
MAX_PARTITION_KEY_BYTES = 2048
MAX_SORT_KEY_BYTES = 1024
MAX_NUMBER_DIGITS = 38
MAX_NAME_BYTES = 65_535  # attribute names and map keys: 1 to 65,535 UTF-8 bytes
# "Nested attributes up to 32 levels deep": the item itself is the first level, so a value may
# hold at most 31 maps or lists inside one another (checked against DynamoDB Local: 31 nested
# maps are stored, 32 are refused, even empty ones).
MAX_NESTED_DOCUMENTS = 31
MIN_NUMBER_EXPONENT = -130  # 1E-130 is the smallest magnitude DynamoDB stores
MAX_NUMBER_EXPONENT = 125  # numbers must stay below 1E+126
KEY_TYPES = ("S", "N", "B")
SCALAR_TYPES = ("S", "N", "B", "BOOL", "NULL")
SET_TYPES = ("SS", "NS", "BS")
DOCUMENT_TYPES = ("L", "M")
ALL_TYPES = SCALAR_TYPES + SET_TYPES + DOCUMENT_TYPES

Item = dict[str, dict[str, Any]]
Key = tuple[tuple[str, Any], ...]

_PLAIN_INTEGER = re.compile(r"-?[1-9][0-9]*|0")  # canonical as it stands: no sign on zero, no leading zeros
# DynamoDB's number syntax (Java's BigDecimal): "+1", "1.", ".5", "1e3" and "007" are numbers;
# " 1", "1_000", "0x10", "NaN" are not. Python's Decimal is more lenient (spaces, underscores,
# NaN, Infinity), so the text is matched first. \d is any Unicode decimal digit, as in Java.
_NUMBER_SYNTAX = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
# The text DynamoDB takes for a boolean (and, for NULL, "true"): surrounding spaces are ignored,
# case is not, apart from these three spellings each.
_TRUE_TEXT = frozenset({"true", "True", "TRUE"})
_FALSE_TEXT = frozenset({"false", "False", "FALSE"})


class ItemError(ValueError):
    """A row or item that DynamoDB would reject; the message is shown to operators."""


@dataclass(frozen=True)
class KeyAttribute:
    name: str
    type: str  # "S", "N" or "B"
    role: str  # "HASH" or "RANGE"


@dataclass(frozen=True)
class KeySchema:
    """The key of a table, as read from DescribeTable."""

    attributes: tuple[KeyAttribute, ...]

    @classmethod
    def from_describe_table(cls, table: Mapping[str, Any]) -> KeySchema:
        types = {a["AttributeName"]: a["AttributeType"] for a in table["AttributeDefinitions"]}
        ordered = sorted(table["KeySchema"], key=lambda k: 0 if k["KeyType"] == "HASH" else 1)
        return cls(tuple(KeyAttribute(k["AttributeName"], types[k["AttributeName"]], k["KeyType"]) for k in ordered))

    @classmethod
    def from_json(cls, data: Iterable[Mapping[str, str]]) -> KeySchema:
        return cls(tuple(KeyAttribute(d["name"], d["type"], d["role"]) for d in data))

    def to_json(self) -> list[dict[str, str]]:
        return [{"name": a.name, "type": a.type, "role": a.role} for a in self.attributes]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(a.name for a in self.attributes)

    def type_of(self, name: str) -> str | None:
        for attribute in self.attributes:
            if attribute.name == name:
                return attribute.type
        return None

    def describe(self) -> str:
        return ", ".join(f"{a.name} ({a.type}, {a.role.lower()})" for a in self.attributes)


# --- header types ---------------------------------------------------------------------


@lru_cache(maxsize=4096)  # one call per cell otherwise: a file has few distinct headers
def parse_header(column: str) -> tuple[str, str | None]:
    """Split a column header ``price:N`` into ``("price", "N")``; untyped gives ``None``.

    Only a DynamoDB type written as DynamoDB writes it (upper case) after the last colon
    counts as a type, so an attribute named ``a:b`` or ``time:s`` stays intact.
    """
    name, sep, type_name = column.rpartition(":")
    if sep and name and type_name in ALL_TYPES:
        return name.strip(), type_name
    return column.strip(), None


# --- conversion of source values into attribute values --------------------------------


def normalize_number(value: Any) -> str:
    """Validate a number the way DynamoDB does and return its canonical string.

    Never rewrites a value DynamoDB would refuse into one it accepts: text must be a number
    as DynamoDB reads it (no spaces, no NaN/Infinity), with at most 38 significant digits, of
    magnitude 1E-130 to below 1E+126. The canonical form is what DynamoDB stores and returns
    ("1.50" → "1.5", "1e3" → "1000", "-0" → "0"). Exact at any length: ``Decimal``'s default
    28-digit context would silently round a 38-digit number, so digits are counted and
    normalised without any context rounding.
    """
    if isinstance(value, bool):
        raise ItemError(f"{value!r} is a boolean, not a number")
    if isinstance(value, int):
        text = str(value)
        if len(text) <= MAX_NUMBER_DIGITS:  # an int is its own canonical text; "-0" cannot occur
            return text
        number = Decimal(value)
    elif isinstance(value, str) and _PLAIN_INTEGER.fullmatch(value) and len(value) <= MAX_NUMBER_DIGITS:
        # Most numbers in files are plain integers: their text is already canonical and within
        # DynamoDB's 38 digits and range (measured: a quarter of a CSV's staging time otherwise).
        return value
    elif isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            raise ItemError(f"{value!r} is not a number DynamoDB accepts (no NaN or Infinity)")
        number = Decimal(repr(value))
    elif isinstance(value, Decimal):
        number = value
    else:
        text = value if isinstance(value, str) else str(value)
        if not _NUMBER_SYNTAX.fullmatch(text):
            raise ItemError(_not_a_number(text))
        try:
            number = Decimal(text)
        except InvalidOperation:  # a digit Python's Decimal does not know
            raise ItemError(_not_a_number(text)) from None
    if not number.is_finite():
        raise ItemError(f"{value!r} is not a number DynamoDB accepts (no NaN or Infinity)")
    if number.is_zero():
        return "0"
    digits = _significant_digits(number)
    if digits > MAX_NUMBER_DIGITS:
        raise ItemError(f"{quoted(value)} has {digits} significant digits; DynamoDB keeps at most 38")
    exponent = number.adjusted()
    if exponent < MIN_NUMBER_EXPONENT or exponent > MAX_NUMBER_EXPONENT:
        raise ItemError(f"{quoted(value)} is out of DynamoDB's range (magnitude 1E-130 to below 1E+126)")
    with localcontext(Context(prec=MAX_NUMBER_DIGITS + 2)):
        return format(number.normalize(), "f")


def _not_a_number(text: str) -> str:
    if text != text.strip() and _NUMBER_SYNTAX.fullmatch(text.strip()):
        return f"{quoted(text)} is not a number: DynamoDB refuses spaces around a number"
    if text.strip().lower().lstrip("+-") in ("nan", "inf", "infinity", "snan"):
        return f"{quoted(text)} is not a number DynamoDB accepts (no NaN or Infinity)"
    return f"{quoted(text)} is not a number"


def _significant_digits(number: Decimal) -> int:
    """Digits between the first and last non-zero digit (no context rounding involved)."""
    digits = "".join(map(str, number.as_tuple().digits)).strip("0")
    return max(1, len(digits))


def decode_binary(value: Any) -> bytes:
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    try:
        return base64.b64decode(str(value).strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ItemError(f"{quoted(value)} is not valid base64") from None


def _binary(value: Any) -> str:
    return base64.b64encode(decode_binary(value)).decode("ascii")


def _bool(value: Any) -> bool:
    """A boolean as DynamoDB takes it: true/false, their text, or (in DynamoDB JSON) 0 and 1."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value != 0
    if isinstance(value, str):
        text = value.strip()
        if text in _TRUE_TEXT:
            return True
        if text in _FALSE_TEXT:
            return False
    raise ItemError(f"{quoted(value)} is not a boolean: DynamoDB takes true or false")


def _null(value: Any, *, allow_none: bool) -> bool:
    """NULL's only value is true; DynamoDB refuses ``{"NULL": false}`` rather than storing it."""
    if value is True or (value is None and allow_none):
        return True
    if isinstance(value, int) and not isinstance(value, bool):
        if value != 0:
            return True
    elif isinstance(value, str):
        if value.strip() in _TRUE_TEXT:
            return True
        if value.strip() not in _FALSE_TEXT:
            raise ItemError(f"{quoted(value)} is not a NULL value: DynamoDB's NULL can only be true")
    elif value is not False:
        raise ItemError(f"{quoted(value)} is not a NULL value: DynamoDB's NULL can only be true")
    raise ItemError(f"{quoted(value)} is not a NULL value: DynamoDB's NULL can only be true, never false")


def _json_value(value: Any, expected: type, type_name: str) -> Any:
    if isinstance(value, str):
        try:
            value = json.loads(value, parse_float=Decimal)
        except json.JSONDecodeError:
            raise ItemError(f"{quoted(value)} is not valid JSON for a {type_name}") from None
    if not isinstance(value, expected):
        raise ItemError(f"{quoted(value)} is not a JSON {expected.__name__} for a {type_name}")
    return value


def _set(values: list[Any], member: str, set_type: str) -> list[str]:
    if not values:
        raise ItemError(f"an empty {set_type} set; DynamoDB sets cannot be empty")
    if member == "S":
        members = [str(v) for v in values]
        unique: set[Any] = set(members)
    elif member == "N":
        members = [normalize_number(v) for v in values]
        unique = {Decimal(m) for m in members}
    else:
        members = [_binary(v) for v in values]
        unique = set(members)
    if len(unique) != len(members):
        raise ItemError(f"duplicate values in a {set_type} set")
    return members


def _too_deep() -> ItemError:
    return ItemError(
        f"maps and lists are nested more than {MAX_NESTED_DOCUMENTS} deep; DynamoDB allows 32 levels in an item"
    )


def to_attribute(value: Any, type_name: str, depth: int = 0) -> dict[str, Any]:
    """Convert a cell (text, or a native value from JSON/XLSX) into a typed attribute value.

    ``depth`` is the number of maps and lists the value sits in.
    """
    if type_name == "S":
        return {"S": value if isinstance(value, str) else str(value)}
    if type_name == "N":
        return {"N": normalize_number(value)}
    if type_name == "B":
        return {"B": _binary(value)}
    if type_name == "BOOL":
        return {"BOOL": _bool(value)}
    if type_name == "NULL":
        return {"NULL": _null(value, allow_none=True)}
    if type_name in SET_TYPES:
        return {type_name: _set(_json_value(value, list, type_name), type_name[0], type_name)}
    if type_name == "L":
        if depth >= MAX_NESTED_DOCUMENTS:
            raise _too_deep()
        return {"L": [from_python(v, depth + 1) for v in _json_value(value, list, "list (L)")]}
    if type_name == "M":
        if depth >= MAX_NESTED_DOCUMENTS:
            raise _too_deep()
        data = _json_value(value, dict, "map (M)")
        return {"M": {str(k): from_python(v, depth + 1) for k, v in data.items()}}
    raise ItemError(f"unknown DynamoDB type {type_name!r}")


def from_python(value: Any, depth: int = 0) -> dict[str, Any]:
    """Natural mapping of a JSON value: number→N, bool→BOOL, null→NULL, list→L, object→M."""
    if value is None:
        return {"NULL": True}
    if isinstance(value, bool):
        return {"BOOL": value}
    if isinstance(value, str):
        return {"S": value}
    if isinstance(value, int | float | Decimal):
        return {"N": normalize_number(value)}
    if isinstance(value, bytes | bytearray):
        return {"B": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, list | tuple):
        if depth >= MAX_NESTED_DOCUMENTS:
            raise _too_deep()
        return {"L": [from_python(v, depth + 1) for v in value]}
    if isinstance(value, Mapping):
        if depth >= MAX_NESTED_DOCUMENTS:
            raise _too_deep()
        return {"M": {str(k): from_python(v, depth + 1) for k, v in value.items()}}
    if isinstance(value, set | frozenset):
        members = list(value)
        if members and all(isinstance(m, str) for m in members):
            return {"SS": _set(members, "S", "SS")}
        if members and all(isinstance(m, int | Decimal) and not isinstance(m, bool) for m in members):
            return {"NS": _set(members, "N", "NS")}
        raise ItemError("sets must hold only strings or only numbers, and not be empty")
    # Dates, times, UUIDs and the like are stored as their text form.
    return {"S": value.isoformat() if hasattr(value, "isoformat") else str(value)}


def row_to_item(row: Mapping[str, Any], key_schema: KeySchema) -> Item:
    """Turn one source row (column header → cell) into a DynamoDB item.

    A header may carry a type (``price:N``). An untyped text cell is a string, except for
    key attributes, which take the type of the table's key. Native values (from JSON)
    map naturally. Raises :class:`ItemError` naming the column on the first bad cell.
    """
    item: Item = {}
    for column, value in row.items():
        name, declared = parse_header(str(column))
        if not name:
            raise ItemError(f"column {column!r} has no attribute name")
        type_name = declared or (key_schema.type_of(name) if isinstance(value, str) else None)
        if type_name is None and isinstance(value, int | float | Decimal) and key_schema.type_of(name) == "S":
            type_name = "S"  # a numeric-looking key in a string-keyed table stays a string
        try:
            attribute = to_attribute(value, type_name) if type_name else from_python(value)
        except ItemError as exc:
            raise ItemError(f"column {quoted(name, 80)}: {exc}") from None
        if name in item:
            raise ItemError(f"attribute {quoted(name, 80)} appears twice in the row")
        item[name] = attribute
    return item


def parse_dynamodb_json(item: Any) -> Item:
    """Check an item already in DynamoDB JSON (export-to-S3 lines) and normalise it."""
    if not isinstance(item, Mapping) or not item:
        raise ItemError("expected an object of attributes in DynamoDB JSON")
    return {str(name): _check_attribute(name, value) for name, value in item.items()}


class _LocatedItemError(ItemError):
    """An ItemError that already names the attribute where it happened (a nested one, say)."""


def _check_attribute(name: str, value: Any, depth: int = 0) -> dict[str, Any]:
    if not isinstance(value, Mapping) or len(value) != 1:
        raise _LocatedItemError(f'attribute {quoted(name, 80)} is not a DynamoDB JSON value like {{"S": "x"}}')
    ((type_name, inner),) = value.items()
    if type_name not in ALL_TYPES:
        raise _LocatedItemError(f"attribute {quoted(name, 80)} has unknown type {quoted(type_name)}")
    try:
        if type_name == "L":
            if depth >= MAX_NESTED_DOCUMENTS:
                raise _too_deep()
            return {"L": [_check_attribute(f"{name}[{i}]", v, depth + 1) for i, v in enumerate(inner)]}
        if type_name == "M":
            if depth >= MAX_NESTED_DOCUMENTS:
                raise _too_deep()
            return {"M": {str(k): _check_attribute(f"{name}.{k}", v, depth + 1) for k, v in inner.items()}}
        if type_name == "NULL":
            return {"NULL": _null(inner, allow_none=False)}
        if type_name == "S":
            if not isinstance(inner, str):
                raise ItemError("S must be a string")
            return {"S": inner}
        if type_name in SET_TYPES and not isinstance(inner, list):
            raise ItemError(f"malformed {type_name} value: a set must be a list of members")
        return to_attribute(inner, type_name)
    except (TypeError, AttributeError):
        raise _LocatedItemError(f"attribute {quoted(name, 80)}: malformed {type_name} value") from None
    except _LocatedItemError:
        raise
    except ItemError as exc:
        raise _LocatedItemError(f"attribute {quoted(name, 80)}: {exc}") from None


# --- keys, size and validation ---------------------------------------------------------


def key_of(item: Mapping[str, Mapping[str, Any]], key_schema: KeySchema) -> Item:
    """The key attributes of an item (what a delete request carries)."""
    return {name: dict(item[name]) for name in key_schema.names}


def key_identity(key: Mapping[str, Mapping[str, Any]]) -> Key:
    """A hashable identity of a key, so that ``1`` and ``1.0`` are the same number key."""
    if len(key) == 1:  # the common key, without the sort (a worker computes one per item)
        ((name, typed),) = key.items()
        ((type_name, value),) = typed.items()
        return ((name, (type_name, Decimal(value) if type_name == "N" else value)),)
    parts = []
    for name in sorted(key):
        ((type_name, value),) = key[name].items()
        parts.append((name, (type_name, Decimal(value) if type_name == "N" else value)))
    return tuple(parts)


def key_hash(key: Mapping[str, Mapping[str, Any]]) -> int:
    """A signed 64-bit hash of a key's identity (the one :func:`key_identity` compares), for an index.

    ``key`` is in canonical DynamoDB JSON, as conversion makes it (:func:`to_attribute`: numbers
    as ``normalize_number`` writes them, binary as canonical base64), so ``1.50`` and ``1.5``
    hash alike once converted. The hashed text is ``name US type US value`` per attribute,
    sorted by name, joined by RS: PostgreSQL computes the same value from a stored key with
    :data:`KEY_HASH_SQL` (what the migration fills older rows with). A hash finds candidates;
    the key itself is compared after, so a collision costs a row read, never a wrong answer.
    Staging hashes every row: ~1 µs here, against ~4.5 µs with normalising again.
    """
    if len(key) == 1:
        ((name, typed),) = key.items()
        ((type_name, value),) = typed.items()
        text = f"{name}\x1f{type_name}\x1f{value}"
    else:
        text = "\x1e".join(f"{name}\x1f{t}\x1f{v}" for name in sorted(key) for t, v in key[name].items())
    signed: int = _first_eight_signed(_md5(text.encode("utf-8"), usedforsecurity=False).digest())[0]
    return signed


_md5 = hashlib.md5
_first_eight_signed = struct.Struct(">q").unpack_from  # the digest's first 8 bytes, big-endian, signed


# The same hash in SQL, over a jsonb column holding a key in DynamoDB JSON (values canonical, as
# staging stores them); "C" collation orders names by code point, as Python's sorted() does.
KEY_HASH_SQL = """(
    SELECT ('x' || left(md5(string_agg(a.name || chr(31) || v.type || chr(31) || v.value, chr(30)
                                       ORDER BY a.name COLLATE "C")), 16))::bit(64)::bigint
    FROM jsonb_each({column}) AS a(name, typed), jsonb_each_text(a.typed) AS v(type, value)
)"""


@dataclass(frozen=True)
class KeySearch:
    """What an operator's search text means against one key schema.

    ``keys``: whole keys it may name (found through the key-hash index). ``partial``: when it
    names only some key attributes (the partition key alone of a composite key), those
    attributes, to be matched by containment instead.
    """

    keys: tuple[Item, ...] = ()
    partial: Item | None = None


def key_search(text: str, key_schema: KeySchema) -> KeySearch:
    """The keys ``text`` may mean: a bare value of a one-attribute key, or ``name=value, name=value``.

    The second form is how the admin prints keys (``pk=a, sk=1``), so a key copied from a page
    finds its item. Values are converted as staging converts them (``1.50`` is the number
    ``1.5``); a value the key's type cannot hold means nothing. Both readings are tried, so a
    string key that contains ``=`` or ``,`` is still found by its bare value.
    """
    text = text.strip()
    attributes = key_schema.attributes
    keys: list[Item] = []
    partial: Item | None = None
    if len(attributes) == 1 and text:
        bare = _typed_key_value(text, attributes[0].type)
        if bare is not None:
            keys.append({attributes[0].name: bare})
    elif len(attributes) > 1 and text and "=" not in text:
        bare = _typed_key_value(text, attributes[0].type)  # the partition key alone
        if bare is not None:
            partial = {attributes[0].name: bare}
    named = _named_values(text)
    if named and set(named) <= set(key_schema.names):
        typed: Item = {}
        for name, value in named.items():
            attribute_type = key_schema.type_of(name)
            converted = None if attribute_type is None else _typed_key_value(value, attribute_type)
            if converted is None:
                break
            typed[name] = converted
        else:
            if len(typed) == len(attributes):
                if typed not in keys:
                    keys.append(typed)
            elif partial is None:
                partial = typed
    return KeySearch(tuple(keys), partial)


def _named_values(text: str) -> dict[str, str]:
    """``{"pk": "a", "sk": "1"}`` from ``pk=a, sk=1``; empty if any part is not ``name=value``."""
    named: dict[str, str] = {}
    for part in text.split(","):
        name, sep, value = part.partition("=")
        if not sep or not name.strip() or name.strip() in named:
            return {}
        named[name.strip()] = value.strip()
    return named


def _typed_key_value(text: str, type_name: str) -> dict[str, Any] | None:
    if not text:
        return None
    try:
        return to_attribute(text, type_name)
    except ItemError:
        return None


def attribute_size(name: str, value: Mapping[str, Any]) -> int:
    """Bytes an attribute counts for, by the developer guide's "Item sizes" rules.

    Also checks the names on the way (the attribute's and every map key): 1 to 65,535 bytes.
    """
    size = len(name.encode("utf-8"))
    if not 0 < size <= MAX_NAME_BYTES:
        raise _BadName(name, size)
    try:
        return size + _value_size(value)
    except _BadName as exc:
        exc.maps.insert(0, name)
        raise


class _BadName(ItemError):
    """A name outside 1 to 65,535 bytes; ``maps`` are the names of the maps it is a key of."""

    def __init__(self, name: str, size: int) -> None:
        self.name = name
        self.size = size
        self.maps: list[str] = []
        super().__init__()

    def __str__(self) -> str:
        where = "an attribute name" if not self.maps else f"a key of map {quoted('.'.join(self.maps))}"
        rule = f"DynamoDB names must be 1 to {MAX_NAME_BYTES:,} bytes"
        if self.size == 0:
            return f"{where} is empty; {rule}"
        return f"{where} ({quoted(self.name)}) is {self.size:,} bytes; {rule}"


def _value_size(value: Mapping[str, Any]) -> int:
    ((type_name, inner),) = value.items()
    if type_name == "S":
        return len(inner.encode("utf-8"))
    if type_name == "N":
        return number_size(inner)
    if type_name == "B":
        return len(decode_binary(inner))
    if type_name in ("BOOL", "NULL"):
        return 1
    if type_name == "SS":
        return sum(len(s.encode("utf-8")) for s in inner)
    if type_name == "NS":
        return sum(number_size(n) for n in inner)
    if type_name == "BS":
        return sum(len(decode_binary(b)) for b in inner)
    if type_name == "L":
        return 3 + sum(_value_size(v) + 1 for v in inner)
    if type_name == "M":
        size = 3
        for key, member in inner.items():
            key_size = len(key.encode("utf-8"))
            if not 0 < key_size <= MAX_NAME_BYTES:
                raise _BadName(key, key_size)
            try:
                size += key_size + _value_size(member) + 1
            except _BadName as exc:
                exc.maps.insert(0, key)
                raise
        return size
    raise ItemError(f"unknown DynamoDB type {type_name!r}")


def number_size(text: str) -> int:
    """Bytes a number takes in DynamoDB: its base-100 digits, one byte of exponent, one of sign.

    The guide says "about 1 byte per 2 significant digits, plus 1 byte". Exactly (measured
    against DynamoDB Local, one number at a time at the 400 KB boundary): the digits are
    paired from the decimal point (1.5 is 01|50: 2 bytes; 12345 is 01|23|45: 3 bytes), zero
    pairs at either end are dropped (105000 is 10|50: 2 bytes), one byte holds the exponent,
    and a negative number takes one more byte; zero is 1 byte.
    """
    negative = text.startswith("-")
    whole, point, fraction = (text[1:] if negative else text).partition(".")
    if (
        whole.isdigit()
        and (whole == "0" or whole[0] != "0")
        and (not point or (fraction.isdigit() and fraction[-1] != "0"))
    ):
        # Canonical text (what normalize_number returns, so nearly always): no Decimal needed.
        if whole != "0":
            highest = len(whole) - 1
        elif fraction:
            highest = len(fraction.lstrip("0")) - len(fraction) - 1
        else:
            return 1  # zero
        lowest = -len(fraction) if fraction else len(whole) - len(whole.rstrip("0"))
        return (highest // 2 - lowest // 2 + 1) + 1 + negative
    number = Decimal(text)
    if number.is_zero():
        return 1
    sign, digits, exponent = number.as_tuple()
    assert isinstance(exponent, int)  # a finite number
    trailing_zeros = len(digits) - len("".join(map(str, digits)).rstrip("0"))
    lowest = exponent + trailing_zeros  # power of ten of the last non-zero digit
    highest = exponent + len(digits) - 1  # ...and of the first (Decimal keeps no leading zeros)
    return (highest // 2 - lowest // 2 + 1) + 1 + sign


def item_size(item: Mapping[str, Mapping[str, Any]]) -> int:
    return sum(attribute_size(name, value) for name, value in item.items())


def validate_item(item: Mapping[str, Mapping[str, Any]], key_schema: KeySchema) -> int:
    """Check an item against the key schema and the size limit; return its size in bytes."""
    try:
        return _checked_size(item, key_schema)
    except UnicodeEncodeError:  # sizing encodes every name and text as UTF-8
        raise ItemError(_not_unicode(item)) from None


def _not_unicode(item: Mapping[str, Mapping[str, Any]]) -> str:
    """Why an item whose text cannot be encoded as UTF-8 cannot be sent: a lone surrogate.

    Python's JSON readers turn an escape such as ``"\\ud800"`` with no partner into a string
    holding half a UTF-16 pair. That is no Unicode text: DynamoDB, which stores UTF-8, refuses
    it, and so would PostgreSQL, so the row fails here with the attribute named.
    """
    for name, value in item.items():
        try:
            attribute_size(name, value)
        except UnicodeEncodeError as exc:
            char = exc.object[exc.start]
            return (
                f"attribute {name!r} holds a lone surrogate (U+{ord(char):04X}), half of a UTF-16 pair, as an "
                f"unpaired JSON escape \\u{ord(char):04x} writes; it is not Unicode text and DynamoDB cannot store it"
            )
    return "the item holds text that is not valid Unicode"


def _checked_size(item: Mapping[str, Mapping[str, Any]], key_schema: KeySchema) -> int:
    for attribute in key_schema.attributes:
        if attribute.name not in item:
            raise ItemError(f"missing key attribute {attribute.name!r} ({attribute.type})")
        value = item[attribute.name]
        ((type_name, inner),) = value.items()
        if type_name != attribute.type:
            raise ItemError(f"key attribute {attribute.name!r} is {type_name} but the table's key is {attribute.type}")
        if type_name in ("S", "B") and not inner:
            raise ItemError(f"key attribute {attribute.name!r} is empty")
        limit = MAX_PARTITION_KEY_BYTES if attribute.role == "HASH" else MAX_SORT_KEY_BYTES
        size = _value_size(value)
        if size > limit:
            raise ItemError(f"key attribute {attribute.name!r} is {size} bytes; the limit is {limit}")
    size = item_size(item)
    if size > MAX_ITEM_BYTES:
        raise ItemError(f"item is {size:,} bytes; DynamoDB's limit is {MAX_ITEM_BYTES:,} bytes (400 KB)")
    return size


def to_wire(item: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """DynamoDB JSON → what botocore sends: binary values as bytes (botocore base64s them)."""
    return {name: _wire_value(value) for name, value in item.items()}


def _wire_value(value: Mapping[str, Any]) -> dict[str, Any]:
    ((type_name, inner),) = value.items()
    if type_name == "B":
        return {"B": decode_binary(inner)}
    if type_name == "BS":
        return {"BS": [decode_binary(b) for b in inner]}
    if type_name == "L":
        return {"L": [_wire_value(v) for v in inner]}
    if type_name == "M":
        return {"M": {k: _wire_value(v) for k, v in inner.items()}}
    return dict(value)


def from_wire(item: Mapping[str, Mapping[str, Any]]) -> Item:
    """What boto3 returns (binary as bytes) → DynamoDB JSON."""
    out: Item = {}
    for name, value in item.items():
        ((type_name, inner),) = value.items()
        if type_name == "B":
            out[name] = {"B": base64.b64encode(bytes(inner)).decode("ascii")}
        elif type_name == "BS":
            out[name] = {"BS": [base64.b64encode(bytes(b)).decode("ascii") for b in inner]}
        elif type_name == "L":
            out[name] = {"L": [from_wire({"_": v})["_"] for v in inner]}
        elif type_name == "M":
            out[name] = {"M": from_wire(inner)}
        else:
            out[name] = dict(value)
    return out


# --- from a source row to what the ledger stores --------------------------------------


@dataclass(frozen=True)
class PreparedItem:
    """A source row made ready to send, or the reason it cannot be sent."""

    position: int
    item: Item | None = None  # what a put sends, or the key alone for a delete
    key: Item | None = None
    size: int = 0
    error: str | None = None

    @property
    def is_valid(self) -> bool:
        return self.error is None


def prepare_item(
    position: int,
    values: Mapping[str, Any],
    key_schema: KeySchema,
    *,
    delete: bool = False,
    dynamodb_json: bool = False,
) -> PreparedItem:
    """Convert and validate one row exactly as DynamoDB would judge it, before any call."""
    if delete:
        # A delete carries exactly the key attributes: other columns are not even converted,
        # so a bad cell outside the key cannot fail a delete DynamoDB would accept.
        names = set(key_schema.names)
        values = {column: v for column, v in values.items() if parse_header(str(column))[0] in names}
    try:
        item = parse_dynamodb_json(values) if dynamodb_json else row_to_item(values, key_schema)
        size = validate_item(item, key_schema)
    except ItemError as exc:
        return PreparedItem(position, key=_valid_key(values, key_schema, dynamodb_json=dynamodb_json), error=str(exc))
    key = key_of(item, key_schema)
    if delete:
        return PreparedItem(position, item=key, key=key, size=size)
    return PreparedItem(position, item=item, key=key, size=size)


def _valid_key(values: Any, key_schema: KeySchema, *, dynamodb_json: bool) -> Item | None:
    """The key of a row that cannot be sent, when the key attributes themselves are sound.

    Such a row is never sent, but the ledger keeps its key so an operator finds it by key
    ("row 17 of the file, key order-42: 'price' is not a number"). Only invalid rows pay this.
    """
    if not isinstance(values, Mapping):
        return None
    names = set(key_schema.names)
    only_key = {column: v for column, v in values.items() if parse_header(str(column))[0] in names}
    try:
        item = parse_dynamodb_json(only_key) if dynamodb_json else row_to_item(only_key, key_schema)
        validate_item(item, key_schema)
    except ItemError:
        return None
    return key_of(item, key_schema)
