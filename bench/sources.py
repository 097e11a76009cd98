"""Bench: reading files as they arrive, and sources elsewhere (issue 14).

Each case runs in a fresh child process (this script with ``--case``), which reports its rows,
wall time and peak RSS (``ru_maxrss``); the parent prints a table. Cases:

``csv`` / ``csv.gz`` / ``csv.zst`` / ``csv-latin1``
    ``read_rows`` over a ``--rows`` CSV (~150 bytes a row): plain, gzip, zstd, and transcoded
    from ISO-8859-1: what compression and encodings cost the reader.
``ddb-lines`` / ``ddb-scan-output``
    The same items as DynamoDB export lines and as one pretty-printed ``{"Items": [...]}``.
``s3.csv.gz``
    The gzip CSV as an S3 object (moto, ``AWS_ENDPOINT_URL_S3``), streamed by ``ObjectReader``.
``gzip-bomb``
    1 GiB of 1 KB rows in ~1 MB of gzip, against a 100 MB decompressed limit: how long and how
    much memory until it is refused.
``scan-1`` / ``scan-4``
    A ``--scan-items`` table in DynamoDB Local read by ``TableScan`` with 1 and 4 segments.

Run: ``eval "$(make -s services)" && .venv/bin/python bench/sources.py [--rows N] [--scan-items N]``.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CASES = ["csv", "csv.gz", "csv.zst", "csv-latin1", "ddb-lines", "ddb-scan-output", "s3.csv.gz", "gzip-bomb",
         "scan-1", "scan-4"]  # fmt: skip


def make_files(directory: Path, rows: int) -> None:
    import zstandard

    lines = [b"pk,name,price:N,note\n"]
    lines += [
        b"k%08d,Item %d \xe9,%d.%02d,some words about it %d\n" % (i, i, i % 1000, i % 100, i) for i in range(rows)
    ]
    latin = b"".join(lines)
    (directory / "rows-latin1.csv").write_bytes(latin)
    text = latin.decode("latin-1").encode("utf-8")
    (directory / "rows.csv").write_bytes(text)
    (directory / "rows.csv.gz").write_bytes(gzip.compress(text, 6))
    (directory / "rows.csv.zst").write_bytes(zstandard.ZstdCompressor(level=3).compress(text))
    items = [
        {"pk": {"S": f"k{i:08d}"}, "price": {"N": f"{i % 1000}.5"}, "tags": {"SS": ["a", "b"]}} for i in range(rows)
    ]
    (directory / "lines.json").write_text("".join(json.dumps({"Item": item}) + "\n" for item in items))
    (directory / "scan.json").write_text(json.dumps({"Items": items, "Count": rows}, indent=4))
    with gzip.open(directory / "bomb.csv.gz", "wb", 9) as bomb:
        bomb.write(b"pk,pad\n")
        chunk = (b"a," + b"x" * 1021 + b"\n") * 1024  # 1 MB of 1 KB rows
        for _ in range(1024):
            bomb.write(chunk)


def run_case(case: str, directory: Path, scan_items: int) -> dict[str, Any]:
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
    from bulkwrites.sources.formats import Limits, SourceError, read_rows

    start = time.perf_counter()
    rows = 0
    outcome = "read"
    if case.startswith("scan-"):
        from bulkwrites.dynamo.client import make_client
        from bulkwrites.sources.dynamodb_table import TableScan

        segments = int(case.split("-")[1])
        scan = TableScan(make_client(max_connections=segments), os.environ["BENCH_SCAN_TABLE"], segments)
        start = time.perf_counter()
        rows = sum(1 for _ in scan.rows())
        outcome = f"{scan.consumed_read_units:,.0f} RCU"
    elif case == "s3.csv.gz":
        from bulkwrites.dynamo.s3_client import make_s3_client
        from bulkwrites.sources import s3

        client = make_s3_client()
        location = s3.S3Location(os.environ["BENCH_BUCKET"], "rows.csv.gz")
        reader = s3.ObjectReader(client, location, s3.head_object(client, location))
        start = time.perf_counter()
        rows = sum(1 for _ in read_rows(reader, "csv"))
    else:
        files: dict[str, tuple[str, str, dict[str, Any]]] = {
            "csv": ("rows.csv", "csv", {}),
            "csv.gz": ("rows.csv.gz", "csv", {}),
            "csv.zst": ("rows.csv.zst", "csv", {}),
            "csv-latin1": ("rows-latin1.csv", "csv", {"encoding": "iso-8859-1"}),
            "ddb-lines": ("lines.json", "ddbjson", {}),
            "ddb-scan-output": ("scan.json", "ddbjson", {}),
            "gzip-bomb": ("bomb.csv.gz", "csv", {"limits": Limits(max_decompressed_bytes=100 * 1024 * 1024)}),
        }
        name, fmt, kwargs = files[case]
        try:
            with (directory / name).open("rb") as stream:
                rows = sum(1 for _ in read_rows(stream, fmt, **kwargs))
        except SourceError as exc:
            outcome = f"refused: {str(exc)[:60]}"
    seconds = time.perf_counter() - start
    return {"case": case, "rows": rows, "seconds": seconds, "outcome": outcome, "peak_rss_mb": peak_rss_mb()}


def peak_rss_mb() -> float:
    """This process's peak RSS since its exec (VmHWM; ru_maxrss would carry the parent's from before the fork)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def prepare_services(directory: Path, scan_items: int) -> dict[str, str]:
    import boto3

    env: dict[str, str] = {}
    s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL_S3"])
    bucket = f"bench-{uuid.uuid4().hex[:10]}"
    s3.create_bucket(Bucket=bucket)
    s3.upload_file(str(directory / "rows.csv.gz"), bucket, "rows.csv.gz")
    env["BENCH_BUCKET"] = bucket
    ddb = boto3.client("dynamodb")
    table = f"bench-scan-{uuid.uuid4().hex[:10]}"
    ddb.create_table(TableName=table, BillingMode="PAY_PER_REQUEST",
                     AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
                     KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}])  # fmt: skip
    pad = "x" * 900
    for first in range(0, scan_items, 25):
        requests = [{"PutRequest": {"Item": {"pk": {"S": f"k{i}"}, "pad": {"S": pad}, "n": {"N": str(i)}}}}
                    for i in range(first, min(first + 25, scan_items))]  # fmt: skip
        ddb.batch_write_item(RequestItems={table: requests})
    env["BENCH_SCAN_TABLE"] = table
    return env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--scan-items", type=int, default=20_000)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case, Path(args.dir), args.scan_items)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        make_files(directory, args.rows)
        env = {**os.environ, **prepare_services(directory, args.scan_items)}
        print(f"{'case':<18}{'rows':>10}{'seconds':>9}{'rows/s':>10}{'peak RSS':>10}  outcome")
        for case in CASES:
            out = subprocess.run(
                [sys.executable, __file__, "--case", case, "--dir", tmp, "--scan-items", str(args.scan_items)],
                env=env, capture_output=True, text=True, check=True,
            ).stdout  # fmt: skip
            r = json.loads(out.strip().splitlines()[-1])
            rate = r["rows"] / r["seconds"] if r["seconds"] else 0
            rss = f"{r['peak_rss_mb']:>8.0f} MB"
            print(f"{case:<18}{r['rows']:>10,}{r['seconds']:>9.2f}{rate:>10,.0f}{rss}  {r['outcome']}")


if __name__ == "__main__":
    main()
