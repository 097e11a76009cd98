"""A job's items and their payloads, and the ledger's SQL over many items (staging, outcomes, duplicates, retries)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from django.db import OperationalError, connection, models, transaction
from django.db.models import Exists, F, OuterRef, Q, Subquery, Sum
from django.db.models.functions import Cast, Coalesce
from django.utils import timezone

from bulkwrites import ledger_copy
from bulkwrites.dynamo.errors import CODE_DUPLICATE_KEY, CODE_INVALID_ROW
from bulkwrites.dynamo.writer import CallStats, Outcome
from bulkwrites.models.jobs import DuplicatePolicy, Job


class ItemStatus(models.TextChoices):
    PENDING = "pending", "pending"
    """Not written yet (or its outcome was not recorded before a crash: it is sent again)."""
    SUCCEEDED = "succeeded", "succeeded"
    """DynamoDB accepted the put or delete."""
    FAILED = "failed", "failed"
    """Invalid, rejected by DynamoDB, or given up after retries; see error_code/error_message."""
    SKIPPED = "skipped", "skipped"
    """Not sent: another row of the job has the same key and wins (duplicate policy)."""


class EstimatedCountQuerySet[M: models.Model](models.QuerySet[M]):
    """A QuerySet whose admin pages count the way big tables need."""

    def estimated_count(self, *, exact_within_ms: int = 200) -> int:
        """COUNT(*) if PostgreSQL manages it within ``exact_within_ms``, else the planner's estimate.

        Counting a million-item job takes seconds; the page of 100 rows it is for takes milliseconds.
        """
        return self.count_or_estimate(exact_within_ms=exact_within_ms)[0]

    def count_or_estimate(self, *, exact_within_ms: int = 200) -> tuple[int, bool]:
        """(count, exact): :meth:`estimated_count`, saying whether it counted or estimated."""
        try:
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.execute("SET LOCAL statement_timeout = %s", [exact_within_ms])
                return self.count(), True
        except OperationalError:
            sql, params = self.query.sql_with_params()
            with connection.cursor() as cursor:
                cursor.execute(f"EXPLAIN (FORMAT JSON) {sql}", params)
                return int(cursor.fetchone()[0][0]["Plan"]["Plan Rows"]), False


# Failures that retrying cannot mend: the same input fails the same way. A row that could not be
# read or converted, and the copies of a key the duplicate policy "reject" refused.
NOT_RETRIED_CODES: tuple[str, ...] = (CODE_DUPLICATE_KEY, CODE_INVALID_ROW)


def payload_of(job_id: Any, position: Any, *, as_text: bool = False) -> Subquery[Any] | Cast:
    """The payload of the item at (``job_id``, ``position``), for ``annotate``: a primary-key probe.

    ``as_text``: the JSON text as stored (sent in a call's body as it is, never parsed).
    """
    payload = Subquery(
        # At most one row (the primary key): no ordering, which would join the job to each row.
        ItemPayload.objects.filter(job_id=job_id, position=position).order_by().values("payload")[:1],
        output_field=models.JSONField(),
    )
    return Cast(payload, models.TextField()) if as_text else payload


@contextmanager
def server_bound_cursor() -> Iterator[Any]:
    """A psycopg cursor on Django's connection that binds parameters on the server, in binary (``%b``).

    Django's own cursors bind on the client: psycopg quotes every element of an array in Python.
    Errors come out as Django's (``connection.wrap_database_errors``), so the callers' retries
    through an outage (``dependencies.DATABASE_DOWN``) see what they expect; the transaction is the
    connection's, as for any cursor. Not logged in ``connection.queries``.
    """
    import psycopg

    connection.ensure_connection()
    with connection.wrap_database_errors, psycopg.Cursor(connection.connection) as cursor:
        yield cursor


@contextmanager
def planner_without(cursor: Any, method: str) -> Iterator[None]:
    """One of PostgreSQL's plan methods off for the statements inside, in the caller's transaction.

    For the ledger's statements whose right plan never depends on statistics that can be stale
    (rows just copied, or an ANALYZE taken while no item was pending). Back to the default after
    them: a caller's outer transaction plans its next statements as usual.
    """
    if method not in ("enable_nestloop", "enable_seqscan"):
        raise ValueError(f"not a plan method switched off here: {method!r}")
    cursor.execute(f"SET LOCAL {method} = off")
    yield
    cursor.execute(f"SET LOCAL {method} = DEFAULT")


class ItemQuerySet(EstimatedCountQuerySet["Item"]):
    def pending(self) -> ItemQuerySet:
        return self.filter(status=ItemStatus.PENDING)

    def failed(self) -> ItemQuerySet:
        return self.filter(status=ItemStatus.FAILED)

    def in_positions(self, first: int, last: int) -> ItemQuerySet:
        return self.filter(position__gte=first, position__lte=last)

    def write_units(self, *, delete: bool) -> int:
        """What writing these items costs (dynamo.estimates.write_units): ceil(size / 1 KB) a put, 1 a delete."""
        if delete:
            return self.count()
        return int(self.aggregate(units=Coalesce(Sum((F("size") + 1023) / 1024), 0))["units"])

    # --- statements over many rows: the ledger's SQL lives here and nowhere else --------

    @contextmanager
    def copy_in(self) -> Iterator[ItemCopy]:
        """``COPY ... FROM STDIN`` into the items table, then into their payloads' (:class:`ItemPayload`).

        Items as :data:`ledger_copy.ITEM_COLUMNS`, as rows or as COPY text. One connection runs
        one COPY at a time: the payloads' text is kept (references to the caller's strings, not
        copies) and copied when the items' COPY has ended.
        """
        payloads: list[str] = []
        with connection.cursor() as cursor:
            columns = ", ".join(ledger_copy.ITEM_COLUMNS)
            with cursor.cursor.copy(f"COPY {Item._meta.db_table} ({columns}) FROM STDIN") as copy:
                yield ItemCopy(copy, payloads)
            if payloads:
                table, columns = ItemPayload._meta.db_table, ", ".join(ledger_copy.PAYLOAD_COLUMNS)
                with cursor.cursor.copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
                    for text in payloads:
                        copy.write(text)

    def with_payload(self) -> ItemQuerySet:
        """The items, each with its payload (``Item.payload``) fetched in the same statement."""
        return self.annotate(payload_json=payload_of(OuterRef("job_id"), OuterRef("position")))

    def apply_duplicate_policy(self, job_id: int, policy: str, *, code: str) -> tuple[int, int]:
        """Mark pending items of a job that share a key: (superseded, rejected).

        In SQL, so a million keys never sit in Python memory. ``last`` and ``first`` keep one
        row per key and mark the others ``skipped`` with ``code``; ``reject`` fails every copy.

        Rows are grouped by (``key_hash``, ``key``): sorting a million bigints is much cheaper
        than sorting a million jsonb keys, and the key itself still decides (a hash collision
        never merges two keys). Only rows whose hash occurs more than once are ranked: most jobs
        have few duplicates or none, and the window over every row sorted the keys themselves
        (1M rows: 1.7 s, 80 MB spilled to disk; the hashes alone, then the few rows that share
        one: 0.7 s). The statement runs inside the staging transaction, right after
        the COPY, so the planner's statistics have never seen these rows: it estimates one row
        and, given a nested loop, re-runs the whole window per item (measured: a 1M-row staging
        into an empty ledger did not finish in 8 minutes). A nested loop is never right here.
        """
        table = Item._meta.db_table
        # The key hashes that more than one pending item of the job has (params: job, status).
        shared = (
            f"shared AS (SELECT key_hash FROM {table} WHERE job_id = %s AND status = %s "
            "GROUP BY key_hash HAVING count(*) > 1)"
        )
        if policy == DuplicatePolicy.REJECT:
            sql = f"""
                WITH {shared}, ranked AS (
                    SELECT id, count(*) OVER (PARTITION BY key_hash, key) AS copies
                    FROM {table} WHERE job_id = %s AND status = %s AND key_hash IN (SELECT key_hash FROM shared)
                )
                UPDATE {table} AS i
                SET status = %s, error_code = %s,
                    error_message = 'the key appears ' || r.copies || ' times in the source (duplicate policy: reject)'
                FROM ranked AS r WHERE i.id = r.id AND i.job_id = %s AND r.copies > 1
            """
            with transaction.atomic(), connection.cursor() as cursor:
                with planner_without(cursor, "enable_nestloop"):
                    cursor.execute(
                        sql, [job_id, ItemStatus.PENDING, job_id, ItemStatus.PENDING, ItemStatus.FAILED, code, job_id]
                    )
                    rejected = cursor.rowcount  # before the planner's setting is put back
                return 0, rejected
        order, winner = ("DESC", "last") if policy == DuplicatePolicy.LAST else ("ASC", "first")
        sql = f"""
            WITH {shared}, ranked AS (
                SELECT id,
                       row_number() OVER (PARTITION BY key_hash, key ORDER BY position {order}) AS rank,
                       first_value(position) OVER (PARTITION BY key_hash, key ORDER BY position {order}) AS winner
                FROM {table} WHERE job_id = %s AND status = %s AND key_hash IN (SELECT key_hash FROM shared)
            )
            UPDATE {table} AS i
            SET status = %s, error_code = %s,
                error_message = 'superseded by row ' || r.winner || ' with the same key ({winner} row wins)'
            FROM ranked AS r WHERE i.id = r.id AND i.job_id = %s AND r.rank > 1
        """
        with transaction.atomic(), connection.cursor() as cursor:
            with planner_without(cursor, "enable_nestloop"):
                cursor.execute(
                    sql, [job_id, ItemStatus.PENDING, job_id, ItemStatus.PENDING, ItemStatus.SKIPPED, code, job_id]
                )
                superseded = cursor.rowcount  # before the planner's setting is put back
            return superseded, 0

    def record_outcomes(self, job_id: int, outcomes: Sequence[Outcome], stats: CallStats) -> None:
        """One statement: update the items still pending, and add what changed to the job's counters.

        The ``status = pending`` guard makes recording idempotent: an item re-sent after a
        crash, or recorded by two workers, is counted once.
        """
        if not outcomes and not stats.calls:
            return
        # Arrays, not a VALUES list of 5 x 250 placeholders: the statement text stays the same for
        # every flush, and psycopg no longer splits a thousand-placeholder query in Python on each
        # one (measured: ~65 µs of the worker's CPU per item, under the GIL). The arrays travel
        # bound on the server and in binary (psycopg's C dumpers: Django's client-side binding
        # quoted each element in Python, ~4 ms a flush of 250), and a failure's code and message
        # only for failures: most flushes are all successes, whose arrays are two of integers.
        ids: list[int] = []
        attempts: list[int] = []
        failed_ids: list[int] = []
        codes: list[str] = []
        messages: list[str] = []
        for o in outcomes:
            ids.append(o.ref)
            attempts.append(o.attempts)
            if not o.succeeded:
                failed_ids.append(o.ref)
                codes.append(o.error_code or "")
                messages.append(o.error_message or "")
        params = {
            "ids": ids, "attempts": attempts, "failed_ids": failed_ids, "codes": codes, "messages": messages,
            "succeeded": ItemStatus.SUCCEEDED.value, "failed": ItemStatus.FAILED.value,
            "pending": ItemStatus.PENDING.value, "calls": stats.calls, "throttled": stats.throttled_calls,
            "unprocessed": stats.unprocessed, "wcu": float(stats.consumed_wcu), "job": job_id,
        }  # fmt: skip
        # Items are found by primary key, one probe per outcome, whatever the statistics say. An
        # ANALYZE taken while a job had no pending items estimates `status = 'pending'` at one
        # row, and the planner then scanned the whole table once per outcome in a nested loop:
        # 4.4 s a flush, a job standing still for 20-35 s (bench sink runs, auto_explain).
        with transaction.atomic(), server_bound_cursor() as cursor, planner_without(cursor, "enable_seqscan"):
            cursor.execute(RECORD_OUTCOMES_SQL, params)

    def has_retryable_failures(self, job_id: int) -> bool:
        """Whether :meth:`reopen_failed` would reopen any item of the job.

        A few probes of the failed items' partial index, one per range of error codes between
        the codes never retried, each stopping at its first row: a job with a million invalid
        rows and nothing to retry answers as fast as one with none.
        """
        bounds: list[str | None] = [None, *sorted(NOT_RETRIED_CODES), None]
        # Its source row could be read: only an item with a payload can be sent again.
        has_payload = Exists(ItemPayload.objects.filter(job_id=OuterRef("job_id"), position=OuterRef("position")))
        probes = Q()
        for low, high in itertools.pairwise(bounds):
            between = Q()
            if low is not None:
                between &= Q(error_code__gt=low)
            if high is not None:
                between &= Q(error_code__lt=high)
            failed = Item.objects.filter(between, job_id=job_id, status=ItemStatus.FAILED).filter(has_payload)
            probes |= Q(Exists(failed))
        return Job.objects.filter(probes, pk=job_id).exists()

    def reopen_failed(self, job_id: int) -> list[int]:
        """Make a job's failed items that can be sent again pending; their positions.

        Each item's outcome so far is appended to its ``history``. Rows that could not be read
        (no payload) and items failed with one of :data:`NOT_RETRIED_CODES` are left as they are.
        """
        table = Item._meta.db_table
        with connection.cursor() as cursor:
            cursor.execute(
                f"""
                UPDATE {table} SET status = %s,
                    history = history || jsonb_build_array(jsonb_build_object(
                        'status', status, 'attempts', attempts, 'error_code', error_code,
                        'error_message', error_message, 'at', updated_at)),
                    error_code = '', error_message = '', updated_at = now()
                WHERE job_id = %s AND status = %s AND error_code <> ALL(%s)
                    AND EXISTS (SELECT FROM {ItemPayload._meta.db_table} AS p
                                WHERE p.job_id = {table}.job_id AND p.position = {table}.position)
                RETURNING position
                """,
                [ItemStatus.PENDING, job_id, ItemStatus.FAILED, list(NOT_RETRIED_CODES)],
            )
            return [row[0] for row in cursor.fetchall()]

    def reopen_mismatched(self, job_id: int, *, verification_id: int) -> int:
        """Make pending again the written items a verification found missing or different; how many.

        Each item's outcome so far, with the verdict and its diff, is appended to its ``history``.
        """
        from bulkwrites.models.verification import CheckOutcome, ItemCheck  # at call time: it imports this module

        checks = ItemCheck._meta.db_table
        with connection.cursor() as cursor:
            cursor.execute(
                f"""
                UPDATE {Item._meta.db_table} AS i SET status = %s,
                    history = i.history || jsonb_build_array(jsonb_build_object(
                        'status', i.status, 'attempts', i.attempts, 'error_code', i.error_code,
                        'error_message', i.error_message, 'at', i.updated_at,
                        'verification', c.verification_id, 'verdict', c.outcome, 'diff', c.diff)),
                    error_code = '', error_message = '', updated_at = now()
                FROM {checks} AS c
                WHERE c.verification_id = %s AND c.outcome IN (%s, %s) AND i.id = c.item_id
                    AND i.job_id = %s AND i.status = %s
                """,
                [ItemStatus.PENDING, verification_id, *CheckOutcome.mismatches(), job_id, ItemStatus.SUCCEEDED],
            )
            return int(cursor.rowcount)


class ItemCopy:
    """Items for :meth:`ItemQuerySet.copy_in`: rows in the order of ``ledger_copy.ITEM_COLUMNS``, or COPY text."""

    def __init__(self, copy: Any, payloads: list[str]) -> None:
        self._copy = copy
        self._payloads = payloads

    def write_row(self, row: Sequence[Any]) -> None:
        """One item that cannot be sent: no payload (only pending items have one, written as text)."""
        self._copy.write_row(row)

    def write_text(self, items: str, payloads: str) -> None:
        """Items, and their payloads, already in COPY's text format (``ledger_copy.PendingRows``)."""
        if items:
            self._copy.write(items)
        if payloads:
            self._payloads.append(payloads)


class Item(models.Model):
    id = models.BigAutoField(primary_key=True)
    # No constraint, as for ItemPayload: PostgreSQL checks a deferred one once per staged row at
    # commit, each check a lookup of the job row, which staging's progress updates (one a second,
    # from their own connection) leave with a longer chain of versions to walk every second. A
    # 10M-row staging spent over 7 minutes in its COMMIT; 1M rows with no progress updates ~6 s.
    # What the constraint guaranteed, that no item outlives its job, staging proves on the job
    # row at the end of its transaction (staging.stage_items) and deletion reclaims children
    # first (services/deletion.py).
    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="items", db_index=False, db_constraint=False)
    position = models.BigIntegerField(help_text="row number in the source")
    key = models.JSONField(null=True, blank=True, help_text="DynamoDB key (DynamoDB JSON)")
    raw = models.TextField(blank=True, help_text="the source row as read, for rows that could not be used")
    size = models.IntegerField(default=0, help_text="DynamoDB item size in bytes")
    wire_bytes = models.IntegerField(default=0, help_text="bytes of the request in a call")
    status = models.CharField(max_length=16, choices=ItemStatus.choices, default=ItemStatus.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    error_code = models.CharField(max_length=128, blank=True)
    error_message = models.TextField(blank=True)
    history = models.JSONField(default=list, blank=True, help_text="earlier outcomes, oldest first")
    updated_at = models.DateTimeField(default=timezone.now)
    key_hash = models.BigIntegerField(
        null=True, blank=True, help_text="hash of the key's identity (dynamo.items.key_hash), to find an item by key"
    )

    objects = ItemQuerySet.as_manager()

    class Meta:
        ordering = ["job", "position"]
        constraints = [models.UniqueConstraint(fields=["job", "position"], name="item_job_position")]
        indexes = [
            models.Index(fields=["job", "status", "position"], name="item_job_status"),
            models.Index(fields=["job", "error_code"], name="item_job_failed_code", condition=Q(status="failed")),
            # An item found by its key: one probe per job (selectors.search_items_by_key). Job first,
            # so a job's staging inserts only into its own part of the index (a global index on
            # key_hash took every page of it in turn: 1M rows staged 3.5 s slower, 0 s this way).
            models.Index(fields=["job", "key_hash"], name="item_job_key_hash", condition=Q(key_hash__isnull=False)),
        ]

    def __str__(self) -> str:
        return f"item {self.position} of job {self.job_id}"

    @property
    def key_text(self) -> str:
        """``pk=a, sk=1``, or a dash for a row that never had a key."""
        if not self.key:
            return "—"
        return ", ".join(f"{name}={next(iter(value.values()))}" for name, value in self.key.items())

    @property
    def payload(self) -> Any:
        """The item as sent (DynamoDB JSON), None for a row that could not be read.

        From :meth:`ItemQuerySet.with_payload`'s annotation when the item came with it (exports:
        one statement for any number of items), else one primary-key lookup in :class:`ItemPayload`.
        """
        if hasattr(self, "payload_json"):
            return self.payload_json
        return (
            ItemPayload.objects.filter(job_id=self.job_id, position=self.position)
            .values_list("payload", flat=True)
            .first()
        )


class ItemPayload(models.Model):
    """An item as sent (DynamoDB JSON), kept apart from its :class:`Item`: written once by staging.

    Recording an outcome rewrites the item's row (PostgreSQL writes a new version of a row on
    every UPDATE, and ``status`` is indexed, so never in place): with the ~1 KB payload in it,
    each outcome wrote the payload again, and the ledger recorded ~28,000 outcomes/s; apart, the
    row rewritten is ~150 bytes (bench/ledger.py, README "Performance"). The payload is read
    to send (running), to compare (verifying), to preview and to export, always by
    (job, position), the primary key. Rows that could not be read have none.
    """

    pk = models.CompositePrimaryKey("job_id", "position")
    # No constraint: its check would cost every staged row a lookup of the job; the rows go with
    # their job (Django's cascade, one DELETE ... WHERE job_id) and with a re-staging.
    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="+", db_index=False, db_constraint=False)
    position = models.BigIntegerField(help_text="the item's row number in the source")
    payload = models.JSONField(help_text="the item as sent (DynamoDB JSON)")

    class Meta:
        ordering = ["job", "position"]

    def __str__(self) -> str:
        return f"payload of item {self.position} of job {self.job_id}"


# ItemQuerySet.record_outcomes: ids and attempts, one per outcome; failed ids, codes and messages,
# one per failure; the item statuses; the calls' stats; the job.
RECORD_OUTCOMES_SQL = f"""
    WITH v AS (
        SELECT u.id, u.attempts, coalesce(f.code, '') AS code, coalesce(f.message, '') AS message,
               CASE WHEN f.id IS NULL THEN %(succeeded)b ELSE %(failed)b END AS status
        FROM unnest(%(ids)b::bigint[], %(attempts)b::int[]) AS u(id, attempts)
        LEFT JOIN unnest(%(failed_ids)b::bigint[], %(codes)b::text[], %(messages)b::text[])
            AS f(id, code, message) ON f.id = u.id
    ),
    changed AS (
        UPDATE {Item._meta.db_table} AS i
        SET status = v.status, attempts = i.attempts + v.attempts, error_code = v.code,
            error_message = v.message, updated_at = now()
        FROM v WHERE i.id = v.id AND i.status = %(pending)b
        RETURNING i.status
    )
    UPDATE {Job._meta.db_table} SET
        succeeded_items = succeeded_items + (SELECT count(*) FROM changed WHERE status = %(succeeded)b),
        failed_items = failed_items + (SELECT count(*) FROM changed WHERE status = %(failed)b),
        calls = calls + %(calls)b, throttled_calls = throttled_calls + %(throttled)b,
        unprocessed_returned = unprocessed_returned + %(unprocessed)b, consumed_wcu = consumed_wcu + %(wcu)b,
        last_activity_at = now()
    WHERE id = %(job)b
"""
