"""The bench's items: generated once from a fixed seed, as DynamoDB JSON, Python values or CSV."""

from __future__ import annotations

import base64
import csv
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.common import SEED

Row = tuple[str, int, str, bool, str]
"""pk, n, name, flag, pad"""

WORDS = (
    "alpha",
    "bravo",
    "charlie",
    "delta",
    "echo",
    "foxtrot",
    "golf",
    "hotel",
    "india",
    "juliet",
    "kilo",
    "lima",
    "mike",
    "november",
    "oscar",
    "papa",
    "quebec",
    "romeo",
    "sierra",
    "tango",
    "uniform",
    "victor",
    "whiskey",
    "xray",
    "yankee",
    "zulu",
    "amber",
    "basalt",
    "cobalt",
    "dune",
    "ember",
)
ITEM_HEADER = ["pk", "n:N", "name", "flag:BOOL", "pad"]


def make_items(n: int, item_bytes: int, seed: int = SEED) -> list[Row]:
    """``n`` rows (pk, n, name, flag, pad) whose DynamoDB item size is ``item_bytes`` exactly.

    Size by DynamoDB's rules (attribute names + values), so a 1024-byte item costs 1 WCU.
    """
    from faultproxy import item_size

    rng = random.Random(seed)
    rows = []
    for i in range(n):
        pk = f"item-{i:08d}"
        number = rng.randrange(1, 10**9)
        if number % 10 == 0:  # DynamoDB Local sizes numbers with trailing zeros bigger than the guide does
            number += 1
        name = " ".join(rng.choices(WORDS, k=3))
        flag = bool(i & 1)
        head: dict[str, dict[str, Any]] = {
            "pk": {"S": pk},
            "n": {"N": str(number)},
            "name": {"S": name},
            "flag": {"BOOL": flag},
        }
        pad_len = max(1, item_bytes - item_size(head) - len("pad"))
        pad = base64.b64encode(rng.randbytes(pad_len * 3 // 4 + 3)).decode("ascii")[:pad_len]
        rows.append((pk, number, name, flag, pad))
    return rows


def wire_item(row: Row) -> dict[str, Any]:
    pk, number, name, flag, pad = row
    return {"pk": {"S": pk}, "n": {"N": str(number)}, "name": {"S": name}, "flag": {"BOOL": flag}, "pad": {"S": pad}}


def python_item(row: Row) -> dict[str, Any]:
    pk, number, name, flag, pad = row
    return {"pk": pk, "n": number, "name": name, "flag": flag, "pad": pad}


def write_items_csv(path: Path, rows: Sequence[Row]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(ITEM_HEADER)
        for pk, number, name, flag, pad in rows:
            writer.writerow((pk, number, name, "true" if flag else "false", pad))
    return path


def write_staging_csv(path: Path, rows: int, seed: int = SEED + 1, invalid_every: int = 0) -> Path:
    """~150 bytes a row: ``pk,n:N,name,flag:BOOL``; with ``invalid_every`` = k, every k-th row's
    number is not a number (the row fails at staging: a job with failed items to page through)."""
    rng = random.Random(seed)
    # A pool of names of 100..140 characters, so generating a million rows stays cheap.
    pool = []
    for _ in range(4096):
        words: list[str] = []
        target = rng.randrange(100, 141)
        while len(" ".join(words)) < target:
            words.append(rng.choice(WORDS))
        pool.append(" ".join(words))
    with path.open("w", newline="", encoding="utf-8") as f:
        f.write("pk,n:N,name,flag:BOOL\n")
        chunk = []
        for i in range(rows):
            number = (
                "not-a-number" if invalid_every and i % invalid_every == invalid_every - 1 else rng.randrange(10**9)
            )
            chunk.append(f"s-{i:09d},{number},{pool[i & 4095]},{'true' if i & 1 else 'false'}\n")
            if len(chunk) == 10_000:
                f.write("".join(chunk))
                chunk.clear()
        f.write("".join(chunk))
    return path


def to_batches(rows: Sequence[Row]) -> list[list[dict[str, Any]]]:
    """``BatchWriteItem`` request lists of 25 puts."""
    requests = [{"PutRequest": {"Item": wire_item(row)}} for row in rows]
    return [requests[i : i + 25] for i in range(0, len(requests), 25)]
