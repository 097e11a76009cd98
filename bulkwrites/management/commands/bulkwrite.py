"""The operator CLI: ``python manage.py bulkwrite load|copy|copy-table|status|export|wait|verify|repair|recover|demo``,
the job page's controls (``cancel|pause|resume|retry-failed|rate``), API tokens (``token``) and
stream rules (``stream``, in ``bulkwrites/management/streams.py``).

Each subcommand parses its options and calls a service; what a job is and how it runs is
decided there, exactly as for the admin. Control actions are recorded in Django's admin log,
like the admin's buttons, under ``--as USER`` or the OS user (see ``services.audit.cli_user``).

Exit codes: 0 every item succeeded (or a dry run found no invalid row, or a control action was
done, or a verification found every checked item as written), 3 some items failed (or a dry run
found invalid rows, or a verification found items missing or different), 1 the job or
verification could not run or the action was refused (the message says why).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from bulkwrites import selectors
from bulkwrites.management.progress import ProgressBar
from bulkwrites.management.streams import StreamCommands, add_stream_parser
from bulkwrites.models import (
    DEFAULT_CONCURRENCY,
    DEFAULT_SAMPLE_SIZE,
    FULL_VERIFICATION_MAX_ITEMS,
    ApiToken,
    CheckOutcome,
    DuplicatePolicy,
    ItemCheck,
    Job,
    JobStatus,
    Operation,
    Verification,
    VerificationStatus,
)
from bulkwrites.resources import FORMATS_BY_NAME, export_items
from bulkwrites.services import audit, control, create, deletion, dispatch, notify, schema, sql, tokens, verifying, work
from bulkwrites.services.demo import demo_setup
from bulkwrites.services.errors import JobError
from bulkwrites.services.streams.consume import recover_stalled_stream_rules
from bulkwrites.sources import formats

EXIT_OK, EXIT_FAILED_ITEMS, EXIT_JOB_FAILED = 0, 3, 1
NO_WORKER_GRACE_SECONDS = 5.0
MISMATCHES_SHOWN = 20
DONE_VERIFYING = (VerificationStatus.FINISHED, VerificationStatus.FAILED, VerificationStatus.CANCELLED)


def mismatch_line(check: ItemCheck) -> str:
    """``missing: pk=a`` or ``different: pk=b: price expected {"N":"1"}, actual {"N":"2"}``."""
    line = f"{check.outcome}: {check.item.key_text}"
    if check.outcome == CheckOutcome.DIFFERENT and check.diff:
        line += ": " + "; ".join(f"{d['attribute']} expected {d['expected']}, actual {d['actual']}" for d in check.diff)
    return line


# The control subcommands: (transition, what is said once it is done).
CONTROL_COMMANDS: dict[str, tuple[str, str]] = {
    "cancel": ("cancel", "cancelled"),
    "pause": ("pause", "paused"),
    "resume": ("resume", "resumed"),
    "retry-failed": ("retry_failed", "failed items queued again"),
}


def outcome_line(job: Job) -> str:
    return notify.outcome_line(job)


def rate_value(text: str) -> float | None:
    """``rate JOB WCU``: a number of WCU/s; ``0`` or ``none`` removes the cap."""
    if text.strip().lower() in {"none", "0", "0.0", "off"}:
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of WCU/s (0 or 'none' removes the cap)") from None


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
        actor = CommandParser(add_help=False)
        actor.add_argument(
            "--as", dest="as_user", metavar="USER", help="the Django user the admin log records (default: the OS user)"
        )

        load = sub.add_parser(
            "load", help="create a job from a file or an S3 object (and wait for it with --wait)", parents=[actor]
        )
        load.add_argument("file", help="a local file, or s3://bucket/key (gzip and zstd are read as they are)")
        load.add_argument("--table", required=True)
        load.add_argument("--format", choices=sorted(formats.FORMATS), dest="source_format")
        load.add_argument(
            "--encoding",
            default=formats.UTF8,
            help=f"text encoding of the file: {', '.join(formats.ENCODINGS)} (default utf-8; a UTF-16 BOM is "
            "recognised)",
        )
        load.add_argument("--operation", choices=Operation.values, default=Operation.PUT)
        load.add_argument("--duplicates", choices=DuplicatePolicy.values, default=DuplicatePolicy.LAST)
        load.add_argument("--concurrency", type=int, help=f"calls in flight per worker (default {DEFAULT_CONCURRENCY})")
        load.add_argument("--workers", type=int, help="workers on the job at once (default 1)")
        load.add_argument("--max-attempts", type=int)
        load.add_argument(
            "--rate", type=float, help="rate cap in WCU/s for the whole job (default: the table's, or none)"
        )
        load.add_argument("--webhook", help="URL POSTed a JSON summary when the job ends or fails")
        load.add_argument("--wait", action="store_true", help="wait for the job and print its outcome")
        load.add_argument("--verify", action="store_true", help="read every item back once the job has ended")
        load.add_argument("--dry-run", action="store_true", help="validate only: no job, nothing written")

        copy = sub.add_parser("copy", help="create a job from a PostgreSQL query or table", parents=[actor])
        copy.add_argument("--database", required=True, help="a connection name (alias) or a postgres:// URL")
        what = copy.add_mutually_exclusive_group(required=True)
        what.add_argument("--query", help="a single read-only SELECT")
        what.add_argument("--from-table", help="[schema.]table to copy")
        copy.add_argument("--columns", help="comma-separated columns of --from-table (default: all)")
        copy.add_argument("--table", required=True, help="the DynamoDB table")
        copy.add_argument("--operation", choices=Operation.values, default=Operation.PUT)
        copy.add_argument("--duplicates", choices=DuplicatePolicy.values, default=DuplicatePolicy.LAST)
        copy.add_argument("--concurrency", type=int, help=f"calls in flight per worker (default {DEFAULT_CONCURRENCY})")
        copy.add_argument("--workers", type=int)
        copy.add_argument(
            "--rate", type=float, help="rate cap in WCU/s for the whole job (default: the table's, or none)"
        )
        copy.add_argument("--webhook", help="URL POSTed a JSON summary when the job ends or fails")
        copy.add_argument("--wait", action="store_true")
        copy.add_argument("--verify", action="store_true", help="read every item back once the job has ended")

        copy_table = sub.add_parser(
            "copy-table", help="create a job copying another DynamoDB table (parallel Scan)", parents=[actor]
        )
        copy_table.add_argument("--source-table", required=True, help="the table to read")
        copy_table.add_argument("--source-region", default="", help="its region, if not AWS_REGION")
        copy_table.add_argument("--segments", type=int, default=4, help="parallel Scan segments (1-64, default 4)")
        copy_table.add_argument(
            "--map",
            action="append",
            default=[],
            dest="mapping",
            help="`source -> target` (repeat it; a name alone keeps it; `*` keeps the other attributes)",
        )
        copy_table.add_argument("--table", required=True, help="the table to write")
        copy_table.add_argument("--operation", choices=Operation.values, default=Operation.PUT)
        copy_table.add_argument("--duplicates", choices=DuplicatePolicy.values, default=DuplicatePolicy.LAST)
        copy_table.add_argument("--concurrency", type=int)
        copy_table.add_argument("--workers", type=int)
        copy_table.add_argument("--rate", type=float, help="rate cap in WCU/s for the whole job (writes to the target)")
        copy_table.add_argument("--webhook", help="URL POSTed a JSON summary when the job ends or fails")
        copy_table.add_argument("--wait", action="store_true")

        status = sub.add_parser("status", help="print a job's status and counts")
        status.add_argument("job", type=int)

        export = sub.add_parser("export", help="export a job's items")
        export.add_argument("job", type=int)
        export.add_argument("--status", default="failed")
        export.add_argument("--format", choices=sorted(FORMATS_BY_NAME), default="csv", dest="export_format")
        export.add_argument("-o", "--output", help="file to write (default: standard output)")

        wait = sub.add_parser("wait", help="wait for a job to finish")
        wait.add_argument("job", type=int)

        verify = sub.add_parser(
            "verify", help="read a job's items back and compare them with what it wrote", parents=[actor]
        )
        verify.add_argument("job", type=int)
        sample = verify.add_mutually_exclusive_group()
        sample.add_argument(
            "--sample",
            type=float,
            metavar="FRACTION",
            help=f"check a random fraction of the written items (0 < FRACTION <= 1); default: all of them up to "
            f"{FULL_VERIFICATION_MAX_ITEMS:,}, a random {DEFAULT_SAMPLE_SIZE:,} above",
        )
        sample.add_argument("--sample-size", type=int, metavar="N", help="check N written items chosen at random")
        verify.add_argument(
            "--eventually-consistent", action="store_true", help="half the read units; recent writes may look stale"
        )
        verify.add_argument("--rate", type=float, metavar="RCU", help="read capacity units per second at most")
        verify.add_argument("--wait", action="store_true", help="wait and print what was found")

        repair = sub.add_parser(
            "repair",
            help="send again what the latest verification found missing or different, then verify those",
            parents=[actor],
        )
        repair.add_argument("job", type=int)
        repair.add_argument("--wait", action="store_true", help="wait for the job and the re-check")

        sub.add_parser("recover", help="re-enqueue jobs nobody is working on (what workers do every 20 s)")

        sub.add_parser("demo", help="create the admin user, a demo table and a demo file (make run)")

        for name, (transition, _) in CONTROL_COMMANDS.items():
            command = sub.add_parser(
                name, help=f"the job page's {transition.replace('_', ' ')} button", parents=[actor]
            )
            command.add_argument("job", type=int)
        rate = sub.add_parser("rate", help="set a job's rate cap in WCU/s (0 or 'none' removes it)", parents=[actor])
        rate.add_argument("job", type=int)
        rate.add_argument("wcu", type=rate_value, metavar="WCU")

        token = sub.add_parser("token", help="API tokens: create, revoke, list")
        token_sub = token.add_subparsers(dest="what", required=True)
        token_create = token_sub.add_parser("create", help="make a token for USER; it is printed once")
        token_create.add_argument("user")
        token_create.add_argument("--expires", type=int, metavar="DAYS", help="days until it expires (default: never)")
        token_create.add_argument("--name", default="", help="what it is for")
        token_revoke = token_sub.add_parser("revoke", help="revoke the token with this prefix")
        token_revoke.add_argument("prefix")
        token_list = token_sub.add_parser("list", help="tokens (prefix, user, state); never their secrets")
        token_list.add_argument("user", nargs="?")

        # DynamoDB Streams rules: their own block (bulkwrites/management/streams.py).
        add_stream_parser(sub)

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            schema.check_schema()
        except schema.SchemaError as exc:
            raise CommandError(str(exc)) from None
        subcommand = options["subcommand"]
        handler = (
            self.handle_control
            if subcommand in CONTROL_COMMANDS
            else getattr(self, f"handle_{subcommand.replace('-', '_')}")
        )
        code = handler(**options)
        if code:
            sys.exit(code)

    def handle_stream(self, **options: Any) -> int:
        return StreamCommands(self.stdout, self.stderr).handle(options)

    # --- load ---------------------------------------------------------------------------

    def handle_load(self, *, file: str, table: str, dry_run: bool, wait: bool, **options: Any) -> int:
        is_s3 = file.startswith("s3://")
        path = Path(file)
        if not is_s3 and not path.is_file():
            raise CommandError(f"{file}: no such file")
        if dry_run:
            return self._dry_run(file, table, options)
        job_settings = {
            "duplicate_policy": options["duplicates"],
            "concurrency": options["concurrency"],
            "workers": options["workers"],
            "max_attempts": options["max_attempts"],
            "rate_limit_wcu": options["rate"],
            "webhook_url": options["webhook"],
            "verify_when_done": options["verify"] or None,
        }
        user, person = self._actor(options)
        common = {
            "table_name": table,
            "operation": options["operation"],
            "source_format": options["source_format"],
            "encoding": options["encoding"],
            "created_by": user if person else None,
            **job_settings,
        }
        try:
            dispatch.require_queue("start the job")  # before the job is made: no draft left behind
            if is_s3:
                job = create.job_create_from_s3(url=file, **common)
            else:
                with path.open("rb") as upload:
                    job = create.job_create_from_file(upload=upload, file_name=path.name, **common)
        except JobError as exc:
            raise CommandError(str(exc)) from None
        return self._start(job, wait=wait, user=user)

    def _start(self, job: Job, *, wait: bool, user: Any) -> int:
        """Queue the job, print its id at once, and follow it with --wait."""
        try:
            control.job_start(job=job)
        except JobError as exc:
            raise CommandError(str(exc)) from None
        self._record(job, user, f"start (status now {job.status})")
        self.stdout.write(f"job {job.pk}")
        self.stdout.flush()
        return self._wait(job.pk) if wait else EXIT_OK

    def _dry_run(self, file: str, table: str, options: dict[str, Any]) -> int:
        common = {
            "table_name": table,
            "operation": options["operation"],
            "source_format": options["source_format"],
            "encoding": options["encoding"],
        }
        try:
            if file.startswith("s3://"):
                preview = create.preview_s3(url=file, **common)
            else:
                path = Path(file)
                with path.open("rb") as stream:
                    preview = create.preview_file(stream, file_name=path.name, **common)
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
            "rate_limit_wcu": options["rate"],
            "webhook_url": options["webhook"],
            "verify_when_done": options["verify"] or None,
        }
        user, person = self._actor(options)
        try:
            dispatch.require_queue("start the job")
            if options["query"]:
                spec = sql.SqlSpec.for_query(database, options["query"])
            else:
                columns = [c.strip() for c in (options["columns"] or "").split(",") if c.strip()]
                spec = sql.SqlSpec.for_table(database, options["from_table"], columns)
            if database in sql.connection_names():
                job = create.job_create_from_sql(
                    spec=spec, table_name=table, source_name="command line", operation=options["operation"],
                    created_by=user if person else None, **job_settings,
                )  # fmt: skip
            else:
                dsn = sql.resolve_dsn(database, allow_url=True)
                job = create.job_create_from_dsn(
                    dsn=dsn, spec=spec, table_name=table, operation=options["operation"], **job_settings
                )
        except JobError as exc:
            raise CommandError(str(exc)) from None
        return self._start(job, wait=wait, user=user)

    # --- copy another DynamoDB table ------------------------------------------------------

    def handle_copy_table(self, *, source_table: str, table: str, wait: bool, **options: Any) -> int:
        user, person = self._actor(options)
        try:
            dispatch.require_queue("start the job")
            job = create.job_create_from_table(
                source_table=source_table,
                table_name=table,
                segments=options["segments"],
                mapping_text="\n".join(options["mapping"]),
                source_region=options["source_region"],
                operation=options["operation"],
                duplicate_policy=options["duplicates"],
                concurrency=options["concurrency"],
                workers=options["workers"],
                rate_limit_wcu=options["rate"],
                webhook_url=options["webhook"],
                created_by=user if person else None,
            )
        except JobError as exc:
            raise CommandError(str(exc)) from None
        return self._start(job, wait=wait, user=user)

    # --- wait / status ------------------------------------------------------------------

    def handle_wait(self, *, job: int, **options: Any) -> int:
        return self._wait(job)

    def _wait(self, job_id: int) -> int:
        progress = ProgressBar(self.stderr._out)
        no_worker_since: float | None = None
        while True:
            job = Job.objects.get(pk=job_id)
            progress.show(job, average_rate=selectors.recent_rate(job, now=timezone.now()))
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

    # --- verify / repair ------------------------------------------------------------------

    def handle_verify(self, *, job: int, wait: bool, **options: Any) -> int:
        found = Job.objects.filter(pk=job).first()
        if found is None:
            self.stderr.write(f"no job {job}")
            return EXIT_JOB_FAILED
        user, _ = self._actor(options)
        try:
            verification = verifying.verification_create(
                job=found,
                created_by=user,
                sample_fraction=options["sample"],
                sample_size=options["sample_size"],
                consistent_read=not options["eventually_consistent"],
                rate_limit_rcu=options["rate"],
            )
        except JobError as exc:
            self.stderr.write(str(exc))
            return EXIT_JOB_FAILED
        self._record(found, user, f"verify (verification {verification.pk}: {verification.scope()})")
        self.stdout.write(f"verification {verification.pk} of job {job}: {verification.scope()}")
        self.stdout.flush()
        return self._wait_verification(verification.pk) if wait else EXIT_OK

    def handle_repair(self, *, job: int, wait: bool, **options: Any) -> int:
        found = Job.objects.filter(pk=job).first()
        if found is None:
            self.stderr.write(f"no job {job}")
            return EXIT_JOB_FAILED
        user, _ = self._actor(options)
        try:
            reopened = verifying.job_repair(job=found, created_by=user)
        except JobError as exc:
            self.stderr.write(str(exc))
            return EXIT_JOB_FAILED
        recheck = found.latest_verification()
        assert recheck is not None
        self._record(found, user, f"repair ({reopened} items sent again, re-checked by verification {recheck.pk})")
        self.stdout.write(f"job {job}: sending {reopened} items again; verification {recheck.pk} re-checks them after")
        self.stdout.flush()
        if not wait:
            return EXIT_OK
        code = self._wait(job)
        if code == EXIT_JOB_FAILED:
            return code
        return self._wait_verification(recheck.pk)

    def _wait_verification(self, verification_id: int) -> int:
        no_worker_since: float | None = None
        while True:
            verification = Verification.objects.get(pk=verification_id)
            if verification.status in DONE_VERIFYING:
                break
            if dispatch.live_worker_count() == 0:
                no_worker_since = no_worker_since or time.monotonic()
                if time.monotonic() - no_worker_since > NO_WORKER_GRACE_SECONDS:
                    self.stderr.write(
                        f"verification {verification_id} is {verification.status} but no worker is listening on "
                        "the queue; start one with `make worker` (it runs when one starts)"
                    )
                    return EXIT_JOB_FAILED
            else:
                no_worker_since = None
            time.sleep(0.5)
        for check in selectors.mismatched_checks(verification, limit=MISMATCHES_SHOWN):
            self.stdout.write(mismatch_line(check))
        if verification.mismatched_items > MISMATCHES_SHOWN:
            self.stdout.write(
                f"... {verification.mismatched_items - MISMATCHES_SHOWN} more: see the job page in the admin"
            )
        if verification.error_message:
            self.stderr.write(f"verification {verification.pk} {verification.status}: {verification.error_message}")
        elif verification.status != VerificationStatus.FINISHED:
            self.stderr.write(f"verification {verification.pk} was {verification.status}")
        if verification.errored_items:
            self.stderr.write(
                f"{verification.errored_items} items could not be read back: {verifying.first_error(verification)}"
            )
        self.stdout.write(verifying.verify_line(verification))
        if verification.mismatched_items:
            return EXIT_FAILED_ITEMS
        if verification.status != VerificationStatus.FINISHED or verification.errored_items:
            return EXIT_JOB_FAILED
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
        restaffed = work.restaff_jobs()
        if restaffed:
            self.stdout.write(f"enqueued the runs {len(restaffed)} job(s) were short of {restaffed}")
        verifications = verifying.recover_stalled_verifications()
        self.stdout.write(f"started or re-enqueued {len(verifications)} verification(s) {verifications or ''}".rstrip())
        restaffed = verifying.restaff_verifications()
        if restaffed:
            self.stdout.write(f"enqueued a run for {len(restaffed)} verification(s) that had none {restaffed}")
        rules = recover_stalled_stream_rules()
        if rules:
            self.stdout.write(f"re-enqueued {len(rules)} stream rule(s) nobody consumed {rules}")
        expired = work.delete_expired_drafts()
        if expired:
            self.stdout.write(f"deleted {len(expired)} expired draft(s) {expired}")
        reclaims = deletion.reclaim_stalled_deletions()
        if reclaims:
            self.stdout.write(f"re-enqueued the reclaim of {len(reclaims)} deleted job(s) {reclaims}")
        return EXIT_OK

    def handle_demo(self, **options: Any) -> int:
        for line in demo_setup():
            self.stdout.write(line)
        return EXIT_OK

    # --- the job page's controls ------------------------------------------------------------

    def handle_control(self, *, subcommand: str, job: int, **options: Any) -> int:
        """cancel, pause, resume, retry-failed: the admin's use-cases, refused (exit 1) with the reason."""
        transition, done = CONTROL_COMMANDS[subcommand]
        found = self._job(job)
        user, _ = self._actor(options)
        try:
            result = control.ACTIONS[transition](job=found)
        except JobError as exc:
            raise CommandError(str(exc)) from None
        found.refresh_from_db()
        self._record(found, user, f"{transition.replace('_', ' ')} (status now {found.status})")
        if transition == "retry_failed":
            done = f"{result} failed item(s) queued again"
        self.stdout.write(f"job {found.pk}: {done} (status now {found.status})")
        return EXIT_OK

    def handle_rate(self, *, job: int, wcu: float | None, **options: Any) -> int:
        found = self._job(job)
        user, _ = self._actor(options)
        if found.is_finished:
            raise CommandError(f"Job {found.pk} is {found.status}; the rate cap of a finished job cannot change.")
        try:
            control.job_set_rate(job=found, wcu_per_second=wcu)
        except JobError as exc:
            raise CommandError(str(exc)) from None
        message = f"rate cap set to {wcu:g} WCU/s" if wcu else "rate cap removed"
        self._record(found, user, message)
        self.stdout.write(f"job {found.pk}: {message}")
        return EXIT_OK

    def _job(self, job_id: int) -> Job:
        found = Job.objects.filter(pk=job_id).first()
        if found is None:
            raise CommandError(f"no job {job_id}")
        return found

    def _actor(self, options: dict[str, Any]) -> tuple[Any, bool]:
        try:
            return audit.cli_user(options.get("as_user"))
        except JobError as exc:
            raise CommandError(str(exc)) from None

    def _record(self, job: Job, user: Any, message: str) -> None:
        audit.record_job_change(
            job=job, user_id=user.pk, message=f"{message} from the command line (OS user {audit.os_user()})"
        )

    # --- API tokens -----------------------------------------------------------------------

    def handle_token(self, *, what: str, **options: Any) -> int:
        if what == "create":
            user = get_user_model().objects.filter(username=options["user"]).first()
            if user is None:
                raise CommandError(f"no user {options['user']!r}")
            if not (user.is_active and user.is_staff):
                raise CommandError(f"{user.username} is not an active staff user; the API would refuse the token")
            try:
                made = tokens.token_create(user=user, name=options["name"], expires_in_days=options["expires"])
            except tokens.TokenError as exc:
                raise CommandError(str(exc)) from None
            expires = made.token.expires_at.date().isoformat() if made.token.expires_at else "never"
            self.stderr.write(
                f"token {made.token.prefix} for {user.username} (expires: {expires}); "
                "it is shown only now: store it in your secret store"
            )
            self.stdout.write(made.secret)
            return EXIT_OK
        if what == "revoke":
            try:
                revoked = tokens.token_revoke(prefix=options["prefix"])
            except tokens.TokenError as exc:
                raise CommandError(str(exc)) from None
            self.stdout.write(f"token {revoked.prefix} of {revoked.user} revoked")
            return EXIT_OK
        listed = ApiToken.objects.select_related("user").order_by("-created_at")
        if options["user"]:
            listed = listed.filter(user__username=options["user"])
        for token in listed:
            state = "revoked" if token.is_revoked else "expired" if token.is_expired else "active"
            used = token.last_used_at.isoformat(timespec="seconds") if token.last_used_at else "never used"
            self.stdout.write(f"{token.prefix}  {token.user}  {state}  {token.name or '-'}  {used}")
        return EXIT_OK
