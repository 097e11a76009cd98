"""The operator CLI: ``python manage.py bulkwrite load|copy|status|export|wait|recover|demo``.

Each subcommand parses its options and calls a service; what a job is and how it runs is
decided there, exactly as for the admin.

Exit codes: 0 every item succeeded (or a dry run found no invalid row), 3 some items failed
(or a dry run found invalid rows), 1 the job could not run (the message says why).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from bulkwrites.models import DEFAULT_CONCURRENCY, DuplicatePolicy, Job, JobStatus, Operation
from bulkwrites.resources import FORMATS_BY_NAME, export_items
from bulkwrites.services import control, create, dispatch, sql, work
from bulkwrites.services.demo import demo_setup
from bulkwrites.services.errors import JobError
from bulkwrites.sources import formats

EXIT_OK, EXIT_FAILED_ITEMS, EXIT_JOB_FAILED = 0, 3, 1
NO_WORKER_GRACE_SECONDS = 5.0


def outcome_line(job: Job) -> str:
    return f"job {job.pk}: {job.status}, {job.succeeded_items} succeeded, {job.failed_items} failed"


def exit_code(job: Job) -> int:
    if job.status == JobStatus.SUCCEEDED:
        return EXIT_OK
    if job.status == JobStatus.COMPLETED_WITH_FAILURES:
        return EXIT_FAILED_ITEMS
    return EXIT_JOB_FAILED


class Command(BaseCommand):
    help = "Bulk-write jobs from the command line: load a file, follow a job, export its items."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="subcommand", required=True)

        load = sub.add_parser("load", help="create a job from a file (and wait for it with --wait)")
        load.add_argument("file")
        load.add_argument("--table", required=True)
        load.add_argument("--format", choices=sorted(formats.FORMATS), dest="source_format")
        load.add_argument("--operation", choices=Operation.values, default=Operation.PUT)
        load.add_argument("--duplicates", choices=DuplicatePolicy.values, default=DuplicatePolicy.LAST)
        load.add_argument("--concurrency", type=int, help=f"calls in flight per worker (default {DEFAULT_CONCURRENCY})")
        load.add_argument("--workers", type=int, help="workers on the job at once (default 1)")
        load.add_argument("--max-attempts", type=int)
        load.add_argument("--wait", action="store_true", help="wait for the job and print its outcome")
        load.add_argument("--dry-run", action="store_true", help="validate only: no job, nothing written")

        copy = sub.add_parser("copy", help="create a job from a PostgreSQL query or table")
        copy.add_argument("--database", required=True, help="a connection name (alias) or a postgres:// URL")
        what = copy.add_mutually_exclusive_group(required=True)
        what.add_argument("--query", help="a single read-only SELECT")
        what.add_argument("--from-table", help="[schema.]table to copy")
        copy.add_argument("--columns", help="comma-separated columns of --from-table (default: all)")
        copy.add_argument("--table", required=True, help="the DynamoDB table")
        copy.add_argument("--operation", choices=Operation.values, default=Operation.PUT)
        copy.add_argument("--duplicates", choices=DuplicatePolicy.values, default=DuplicatePolicy.LAST)
        copy.add_argument("--concurrency", type=int)
        copy.add_argument("--workers", type=int)
        copy.add_argument("--wait", action="store_true")

        status = sub.add_parser("status", help="print a job's status and counts")
        status.add_argument("job", type=int)

        export = sub.add_parser("export", help="export a job's items")
        export.add_argument("job", type=int)
        export.add_argument("--status", default="failed")
        export.add_argument("--format", choices=sorted(FORMATS_BY_NAME), default="csv", dest="export_format")
        export.add_argument("-o", "--output", help="file to write (default: standard output)")

        wait = sub.add_parser("wait", help="wait for a job to finish")
        wait.add_argument("job", type=int)

        sub.add_parser("recover", help="re-enqueue jobs nobody is working on (what workers do every 20 s)")

        sub.add_parser("demo", help="create the admin user, a demo table and a demo file (make run)")

    def handle(self, *args: Any, **options: Any) -> None:
        handler = getattr(self, f"handle_{options['subcommand']}")
        code = handler(**options)
        if code:
            sys.exit(code)

    # --- load ---------------------------------------------------------------------------

    def handle_load(self, *, file: str, table: str, dry_run: bool, wait: bool, **options: Any) -> int:
        path = Path(file)
        if not path.is_file():
            raise CommandError(f"{file}: no such file")
        if dry_run:
            return self._dry_run(path, table, options)
        job_settings = {
            "duplicate_policy": options["duplicates"],
            "concurrency": options["concurrency"],
            "workers": options["workers"],
            "max_attempts": options["max_attempts"],
        }
        try:
            with path.open("rb") as upload:
                job = create.job_create_from_file(
                    upload=upload,
                    file_name=path.name,
                    table_name=table,
                    operation=options["operation"],
                    source_format=options["source_format"],
                    **job_settings,
                )
        except JobError as exc:
            raise CommandError(str(exc)) from None
        return self._start(job, wait=wait)

    def _start(self, job: Job, *, wait: bool) -> int:
        """Queue the job, print its id at once, and follow it with --wait."""
        try:
            control.job_start(job=job)
        except JobError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(f"job {job.pk}")
        self.stdout.flush()
        return self._wait(job.pk) if wait else EXIT_OK

    def _dry_run(self, path: Path, table: str, options: dict[str, Any]) -> int:
        try:
            with path.open("rb") as stream:
                preview = create.preview_file(
                    stream,
                    file_name=path.name,
                    table_name=table,
                    operation=options["operation"],
                    source_format=options["source_format"],
                )
        except JobError as exc:
            raise CommandError(str(exc)) from None
        for problem in preview.problems:
            self.stdout.write(problem.describe())
        if preview.duplicates:
            self.stdout.write(f"{preview.duplicates} rows repeat an earlier key (policy: {options['duplicates']})")
        self.stdout.write(f"dry run: {preview.valid} valid, {preview.invalid} invalid")
        return EXIT_OK if preview.invalid == 0 else EXIT_FAILED_ITEMS

    # --- copy from PostgreSQL -------------------------------------------------------------

    def handle_copy(self, *, database: str, table: str, wait: bool, **options: Any) -> int:
        job_settings = {
            "duplicate_policy": options["duplicates"],
            "concurrency": options["concurrency"],
            "workers": options["workers"],
        }
        try:
            if options["query"]:
                spec = sql.SqlSpec.for_query(database, options["query"])
            else:
                columns = [c.strip() for c in (options["columns"] or "").split(",") if c.strip()]
                spec = sql.SqlSpec.for_table(database, options["from_table"], columns)
            if database in sql.connection_names():
                job = create.job_create_from_sql(
                    spec=spec, table_name=table, source_name="command line", operation=options["operation"],
                    **job_settings,
                )  # fmt: skip
            else:
                dsn = sql.resolve_dsn(database, allow_url=True)
                job = create.job_create_from_dsn(
                    dsn=dsn, spec=spec, table_name=table, operation=options["operation"], **job_settings
                )
        except JobError as exc:
            raise CommandError(str(exc)) from None
        return self._start(job, wait=wait)

    # --- wait / status ------------------------------------------------------------------

    def handle_wait(self, *, job: int, **options: Any) -> int:
        return self._wait(job)

    def _wait(self, job_id: int) -> int:
        progress = ProgressBar(self.stderr._out)
        no_worker_since: float | None = None
        while True:
            job = Job.objects.get(pk=job_id)
            progress.show(job)
            if job.is_finished or job.status == JobStatus.PAUSED:
                break
            if dispatch.live_worker_count() == 0:
                no_worker_since = no_worker_since or time.monotonic()
                if time.monotonic() - no_worker_since > NO_WORKER_GRACE_SECONDS:
                    progress.close()
                    self.stderr.write(
                        f"job {job_id} is {job.status} but no worker is listening on the queue; "
                        "start one with `make worker` (the job stays queued and runs when one starts)"
                    )
                    return EXIT_JOB_FAILED
            else:
                no_worker_since = None
            time.sleep(0.5)
        progress.close()
        if job.error_message:
            self.stderr.write(f"job {job.pk} failed: {job.error_message}")
        self.stdout.write(outcome_line(job))
        return exit_code(job)

    def handle_status(self, *, job: int, **options: Any) -> int:
        found = Job.objects.filter(pk=job).first()
        if found is None:
            raise CommandError(f"no job {job}")
        self.stdout.write(outcome_line(found))
        self.stdout.write(
            f"  table {found.table_name}, {found.operation}; {found.total_items} items: "
            f"{found.pending_items} pending, {found.skipped_items} skipped; {found.calls} calls, "
            f"{found.throttled_calls} throttled, {found.consumed_wcu:.0f} WCU"
        )
        if found.error_message:
            self.stdout.write(f"  error: {found.error_code}: {found.error_message}")
        return EXIT_OK

    # --- export -------------------------------------------------------------------------

    def handle_export(self, *, job: int, status: str, export_format: str, output: str | None, **options: Any) -> int:
        found = Job.objects.filter(pk=job).first()
        if found is None:
            raise CommandError(f"no job {job}")
        content, _ = export_items(found.items.filter(status=status).order_by("position"), export_format)
        data = content.encode("utf-8") if isinstance(content, str) else content
        if output:
            Path(output).write_bytes(data)
            self.stderr.write(f"wrote {output}")
        else:
            sys.stdout.buffer.write(data)
            sys.stdout.flush()
        return EXIT_OK

    # --- maintenance --------------------------------------------------------------------

    def handle_recover(self, **options: Any) -> int:
        recovered = work.recover_stalled_jobs()
        self.stdout.write(f"re-enqueued {len(recovered)} stalled job(s) {recovered or ''}".rstrip())
        return EXIT_OK

    def handle_demo(self, **options: Any) -> int:
        for line in demo_setup():
            self.stdout.write(line)
        return EXIT_OK


class ProgressBar:
    """A one-line progress bar on a terminal; silent when output is not a terminal."""

    def __init__(self, stream: Any, width: int = 30) -> None:
        self.stream = stream
        self.width = width
        self.enabled = bool(getattr(stream, "isatty", lambda: False)())
        self.drawn = False

    def show(self, job: Job) -> None:
        if not self.enabled:
            return
        filled = int(self.width * job.progress_percent / 100)
        bar = "#" * filled + "-" * (self.width - filled)
        self.stream.write(f"\r[{bar}] {job.progress_percent:5.1f}% {job.done_items}/{job.total_items} {job.status:<12}")
        self.stream.flush()
        self.drawn = True

    def close(self) -> None:
        if self.drawn:
            self.stream.write("\n")
            self.stream.flush()
            self.drawn = False
