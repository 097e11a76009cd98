"""Crafted files against every path that reads them: peak RSS and time per process.

The files of issue 9 (finding 5), made by the generators below:

``xlsx_shared_strings_200mb``  a ~0.4 MB XLSX whose sharedStrings part unpacks to 200 MB
``xlsx_cell_300mb``            a ~0.3 MB XLSX with one 300 MB cell (a shared string)
``xlsx_inline_cell_200mb``     a ~0.2 MB XLSX with one 200 MB inline cell (under the part limit)
``csv_line_50mb``              a CSV whose one data line is 50 MB of small cells (``ab,ab,ab,...``)
``csv_line_100mb``             the same, 100 MB
``json_array_48mb``            a legitimate 48 MB JSON array of 1.5M small objects: it must load

Each is read by the three processes an operator's file meets, each a fresh child process whose
peak RSS (``ru_maxrss`` of the child, from ``wait4``) and wall time are reported:

``preview``  the web process: ``job_create_from_file`` then ``job_preview`` (what the admin's
             preview page runs);
``dry_run``  the CLI: ``manage.py bulkwrite load FILE --table T --dry-run``;
``staging``  the worker: ``job_create_from_file`` then ``job_stage`` (conversion processes off,
             ``BULKWRITES_STAGING_PROCESSES=0``, so all the work is in the measured process).

Run with the services' environment::

    eval "$(make -s services)"
    .venv/bin/python bench/crafted.py                      # this checkout
    .venv/bin/python bench/crafted.py --code /tmp/old-main # another checkout of the code (before)

``--code DIR`` runs the children on the code in DIR (e.g. ``git archive main | tar -x -C DIR``),
so the same files and the same measurement compare two versions. Each run is killed after
``--timeout`` seconds (default 120). Results go to stdout as a table and to ``--json``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import uuid
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
MB = 1000 * 1000

# --- generators ---------------------------------------------------------------------------------

_CONTENT_TYPES = (
    '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
    '<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
    '<Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/>'
    '<Default Extension="xml" ContentType="application/xml"/>'
    '<Override PartName="/xl/workbook.xml" '
    'ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.sheet.main+xml"/>'
    '<Override PartName="/xl/worksheets/sheet1.xml" '
    'ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.worksheet+xml"/>'
    '<Override PartName="/xl/sharedStrings.xml" '
    'ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.sharedStrings+xml"/>'
    "</Types>"
)
_ROOT_RELS = (
    '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
    '<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
    '<Relationship Id="rId1" '
    'Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/officeDocument" '
    'Target="xl/workbook.xml"/></Relationships>'
)
_WORKBOOK = (
    '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
    '<workbook xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main" '
    'xmlns:r="http://schemas.openxmlformats.org/officeDocument/2006/relationships">'
    '<sheets><sheet name="Sheet1" sheetId="1" r:id="rId1"/></sheets></workbook>'
)
_WORKBOOK_RELS = (
    '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
    '<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
    '<Relationship Id="rId1" '
    'Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/worksheet" '
    'Target="worksheets/sheet1.xml"/>'
    '<Relationship Id="rId2" '
    'Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/sharedStrings" '
    'Target="sharedStrings.xml"/></Relationships>'
)
_SHEET_HEAD = (
    b'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
    b'<worksheet xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main"><sheetData>'
)
_SHEET_TAIL = b"</sheetData></worksheet>"
_STRINGS_HEAD = (
    b'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
    b'<sst xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main">'
)
_STRINGS_TAIL = b"</sst>"
_BLOCK = 1 << 20


def _write_repeated(out: Any, piece: bytes, total: int) -> None:
    """``piece`` repeated until ``total`` bytes are written, a MB at a time."""
    block = piece * max(1, _BLOCK // len(piece))
    written = 0
    while written + len(block) <= total:
        out.write(block)
        written += len(block)
    out.write(piece * ((total - written) // len(piece)))


def _xlsx(path: Path, sheet: Callable[[Any], None], strings: Callable[[Any], None]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        archive.writestr("[Content_Types].xml", _CONTENT_TYPES)
        archive.writestr("_rels/.rels", _ROOT_RELS)
        archive.writestr("xl/workbook.xml", _WORKBOOK)
        archive.writestr("xl/_rels/workbook.xml.rels", _WORKBOOK_RELS)
        with archive.open("xl/worksheets/sheet1.xml", "w", force_zip64=True) as out:
            sheet(out)
        with archive.open("xl/sharedStrings.xml", "w", force_zip64=True) as out:
            strings(out)
    return path


def _rows_of_shared_strings(out: Any, rows: int = 10) -> None:
    """A header ``pk`` (shared string 0) and ``rows`` data rows pointing at shared strings 1..rows."""
    out.write(_SHEET_HEAD + b'<row r="1"><c r="A1" t="s"><v>0</v></c></row>')
    for n in range(1, rows + 1):
        out.write(f'<row r="{n + 1}"><c r="A{n + 1}" t="s"><v>{n}</v></c></row>'.encode())
    out.write(_SHEET_TAIL)


def xlsx_shared_strings(path: Path, unpacked_bytes: int = 200 * MB, string_chars: int = 100) -> Path:
    """An XLSX whose sharedStrings part unpacks to ``unpacked_bytes`` (many identical strings)."""

    def strings(out: Any) -> None:
        out.write(_STRINGS_HEAD + b"<si><t>pk</t></si>")
        _write_repeated(out, b"<si><t>" + b"s" * string_chars + b"</t></si>", unpacked_bytes)
        out.write(_STRINGS_TAIL)

    return _xlsx(path, _rows_of_shared_strings, strings)


def xlsx_shared_cell(path: Path, cell_chars: int = 300 * MB) -> Path:
    """An XLSX with one cell of ``cell_chars`` characters, held as a shared string."""

    def strings(out: Any) -> None:
        out.write(_STRINGS_HEAD + b"<si><t>pk</t></si><si><t>")
        _write_repeated(out, b"x", cell_chars)
        out.write(b"</t></si>" + _STRINGS_TAIL)

    return _xlsx(path, lambda out: _rows_of_shared_strings(out, rows=1), strings)


def xlsx_inline_cell(path: Path, cell_chars: int = 200 * MB) -> Path:
    """An XLSX with one inline-string cell of ``cell_chars`` characters in the sheet itself."""

    def sheet(out: Any) -> None:
        out.write(_SHEET_HEAD + b'<row r="1"><c r="A1" t="s"><v>0</v></c></row>')
        out.write(b'<row r="2"><c r="A2" t="inlineStr"><is><t>')
        _write_repeated(out, b"x", cell_chars)
        out.write(b"</t></is></c></row>" + _SHEET_TAIL)

    return _xlsx(path, sheet, lambda out: out.write(_STRINGS_HEAD + b"<si><t>pk</t></si>" + _STRINGS_TAIL))


def csv_long_line(path: Path, line_bytes: int = 50 * MB) -> Path:
    """A CSV with a header ``pk`` and one data line of ``line_bytes`` bytes of two-letter cells.

    Two letters: Python caches one-letter strings, so ``a,a,a`` would cost a pointer per cell;
    ``ab`` costs a string object per cell, as real small cells do.
    """
    with path.open("wb") as out:
        out.write(b"pk\n")
        _write_repeated(out, b"ab,", line_bytes)
        out.write(b"ab\n")
    return path


def json_array(path: Path, objects: int = 1_500_000) -> Path:
    """A legitimate JSON array of ``objects`` small objects (~33 bytes each: 49 MB for 1.5M)."""
    with path.open("wb") as out:
        out.write(b"[")
        for start in range(0, objects, 10_000):
            out.write(
                b",".join(
                    b'{"pk":"k%07d","n":%d,"v":"ab"}' % (n, n % 100) for n in range(start, min(objects, start + 10_000))
                )
            )
            if start + 10_000 < objects:
                out.write(b",")
        out.write(b"]")
    return path


CRAFTED: dict[str, tuple[str, Callable[[Path], Path]]] = {
    "xlsx_shared_strings_200mb": ("xlsx", xlsx_shared_strings),
    "xlsx_cell_300mb": ("xlsx", xlsx_shared_cell),
    "xlsx_inline_cell_200mb": ("xlsx", xlsx_inline_cell),
    "csv_line_50mb": ("csv", lambda p: csv_long_line(p, 50 * MB)),
    "csv_line_100mb": ("csv", lambda p: csv_long_line(p, 100 * MB)),
    "json_array_48mb": ("json", json_array),
}

# --- children -------------------------------------------------------------------------------------


def _child(path_kind: str, code: str, file: str, table: str) -> None:
    """In the child process: one path on one file; the outcome as JSON on stdout."""
    sys.path.insert(0, code)
    os.chdir(code)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
    import django

    django.setup()
    import importlib

    try:  # services split by use-case (since bc187cf)
        create = importlib.import_module("bulkwrites.services.create")
        work = importlib.import_module("bulkwrites.services.work")
        errors = importlib.import_module("bulkwrites.services.errors")
    except ImportError:  # older trees: one jobs module
        create = work = errors = importlib.import_module("bulkwrites.services.jobs")
    JobError = errors.JobError

    began = time.perf_counter()
    outcome: dict[str, Any] = {}
    with open(file, "rb") as upload:
        job = create.job_create_from_file(upload=upload, file_name=Path(file).name, table_name=table)
    outcome["job_id"] = job.pk
    try:
        if path_kind == "preview":
            preview = create.job_preview(job)
            outcome["result"] = f"{preview.rows} rows: {preview.valid} valid, {preview.invalid} invalid"
        else:
            # As a worker finds it: queued (a draft cannot fail, so its reason would be lost).
            type(job).objects.filter(pk=job.pk).update(status="queued")
            staged = work.job_stage(job)
            job.refresh_from_db()
            outcome["result"] = (
                f"staged {job.total_items} items ({job.failed_items} failed)" if staged else job.error_message
            )
    except JobError as exc:
        outcome["result"] = f"refused: {exc}"
    outcome["seconds"] = time.perf_counter() - began
    print(json.dumps(outcome))


def run_child(args: list[str], env: dict[str, str], cwd: str, timeout: float) -> dict[str, Any]:
    """Start a child, wait for it (killing it after ``timeout`` s); its own peak RSS and wall time."""
    began = time.perf_counter()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        child = subprocess.Popen(args, cwd=cwd, env=env, stdout=out, stderr=err)
        deadline = began + timeout
        status = None
        usage = None
        while True:
            pid, status, usage = os.wait4(child.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                child.kill()
                _, status, usage = os.wait4(child.pid, 0)
                break
            time.sleep(0.05)
        child.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - began
        out.seek(0)
        err.seek(0)
        stdout = out.read().decode("utf-8", "replace")
        stderr = err.read().decode("utf-8", "replace")
    return {
        "seconds": round(wall, 1),
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
        "exit": child.returncode,
        "timed_out": wall >= timeout,
        "stdout": stdout[-2000:],
        "stderr": stderr[-2000:],
    }


def summary(kind: str, run: dict[str, Any]) -> str:
    if run["timed_out"]:
        return "killed at the timeout"
    if kind == "dry_run":
        out: str = run["stdout"]
        err: str = run["stderr"]
        return ((out.strip().splitlines() or [""])[-1] or (err.strip().splitlines() or [""])[-1])[:160]
    try:
        return str(json.loads(run["stdout"].strip().splitlines()[-1])["result"])[:160]
    except (ValueError, IndexError, KeyError):
        return ("crashed: " + (str(run["stderr"]).strip().splitlines() or ["?"])[-1])[:160]


# --- main -------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--code", default=str(ROOT), help="checkout whose code the children run (default: this one)")
    parser.add_argument("--only", default="", help="comma-separated file names (default: all)")
    parser.add_argument("--paths", default="preview,dry_run,staging", help="comma-separated paths")
    parser.add_argument("--timeout", type=float, default=120, help="seconds before a run is killed")
    parser.add_argument("--workdir", help="where the files are made (default: a temporary directory)")
    parser.add_argument("--json", default="", help="write the results there too")
    parser.add_argument("--_child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args._child:
        _child(*args._child)
        return 0

    import boto3

    code = str(Path(args.code).resolve())
    names = [n for n in args.only.split(",") if n] or list(CRAFTED)
    paths = [p for p in args.paths.split(",") if p]
    env = dict(os.environ, BULKWRITES_STAGING_PROCESSES="0", BULKWRITES_LOG_LEVEL="WARNING", PYTHONUNBUFFERED="1")
    env.setdefault("DJANGO_SECRET_KEY", f"bench-only-{uuid.uuid4().hex}{uuid.uuid4().hex}")
    client = boto3.client("dynamodb")
    table = f"crafted-{uuid.uuid4().hex[:10]}"
    client.create_table(
        TableName=table,
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        BillingMode="PAY_PER_REQUEST",
    )
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bulkwrites-crafted-", dir=args.workdir) as tmp:
        try:
            for name in names:
                fmt, make = CRAFTED[name]
                file = make(Path(tmp) / f"{name}.{fmt}")
                size = file.stat().st_size
                print(f"{name}: {size / MB:.2f} MB", file=sys.stderr)
                for kind in paths:
                    if kind == "dry_run":
                        command = [sys.executable, "manage.py", "bulkwrite", "load", str(file), "--table", table]
                        run = run_child([*command, "--dry-run"], env, code, args.timeout)
                    else:
                        command = [sys.executable, str(Path(__file__).resolve()), "--_child", kind, code]
                        run = run_child([*command, str(file), table], env, code, args.timeout)
                    row = {"file": name, "size_mb": round(size / MB, 2), "path": kind, **run}
                    row["outcome"] = summary(kind, run)
                    results.append(row)
                    print(f"  {kind:8} {run['peak_rss_mb']:8.1f} MB {run['seconds']:7.1f} s  {row['outcome']}",
                          file=sys.stderr)  # fmt: skip
                file.unlink()
        finally:
            client.delete_table(TableName=table)
            _delete_jobs(results, code, env)
    print(f"{'file':28} {'MB':>7} {'path':8} {'peak RSS MB':>11} {'seconds':>8}  outcome")
    for row in results:
        print(
            f"{row['file']:28} {row['size_mb']:7.2f} {row['path']:8} {row['peak_rss_mb']:11.1f} "
            f"{row['seconds']:8.1f}  {row['outcome']}"
        )
    if args.json:
        slim = [{k: v for k, v in r.items() if k not in ("stdout", "stderr")} for r in results]
        Path(args.json).write_text(json.dumps({"code": code, "results": slim}, indent=2) + "\n")
    return 0


def _delete_jobs(results: list[dict[str, Any]], code: str, env: dict[str, str]) -> None:
    """The bench's jobs (and their stored files) go: a crafted file is no audit trail."""
    ids = []
    for row in results:
        try:
            ids.append(int(json.loads(row["stdout"].strip().splitlines()[-1])["job_id"]))
        except (ValueError, IndexError, KeyError):
            continue
    if ids:
        script = (
            "import django, sys; django.setup()\n"
            "from bulkwrites.models import Job\n"
            "for job in Job.objects.filter(pk__in=[int(x) for x in sys.argv[1:]]):\n"
            "    job.source_file.delete(save=False); job.delete()\n"
        )
        subprocess.run(
            [sys.executable, "-c", script, *map(str, ids)],
            cwd=code,
            env={**env, "DJANGO_SETTINGS_MODULE": "project.settings", "PYTHONPATH": code},
            check=False,
        )


if __name__ == "__main__":
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    sys.exit(main())
