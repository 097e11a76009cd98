"""Recording outcomes (ItemQuerySet.record_outcomes): binary arrays bound on the server, failures apart."""

from __future__ import annotations

import pytest
from django.db import OperationalError, connection

from bulkwrites.dynamo.writer import CallStats, Outcome
from bulkwrites.models import DuplicatePolicy, Item, ItemStatus, Job, SourceKind, server_bound_cursor
from bulkwrites.services import staging
from bulkwrites.sources.rows import SourceRow

pytestmark = pytest.mark.django_db(transaction=True)

PK_S = [{"name": "pk", "type": "S", "role": "HASH"}]


def staged(n: int) -> tuple[Job, list[int]]:
    job = Job.objects.create(table_name="t", key_schema=PK_S, source_kind=SourceKind.FILE)
    staging.stage_job(job, [SourceRow(k, {"pk": f"k{k}"}) for k in range(1, n + 1)], dynamodb_json=False)
    job.refresh_from_db()
    return job, list(Item.objects.filter(job=job).order_by("position").values_list("id", flat=True))


def test_successes_and_failures_land_with_their_codes_messages_attempts_and_counters() -> None:
    job, ids = staged(6)
    message = 'it\'s "quoted", {braced}, back\\slashed, ünïcode ✓, and\nnewlined'
    outcomes = [
        Outcome(ids[0], True, 1),
        Outcome(ids[1], False, 3, "ValidationException", message),
        Outcome(ids[2], True, 2),
        Outcome(ids[3], False, 10, "ProvisionedThroughputExceededException", ""),
    ]
    stats = CallStats(calls=7, throttled_calls=2, unprocessed=5, consumed_wcu=2.5)

    Item.objects.record_outcomes(job.pk, outcomes, stats)

    rows = {i.pk: i for i in Item.objects.filter(job=job)}
    assert (rows[ids[0]].status, rows[ids[0]].attempts, rows[ids[0]].error_code) == (ItemStatus.SUCCEEDED, 1, "")
    assert (rows[ids[1]].status, rows[ids[1]].attempts) == (ItemStatus.FAILED, 3)
    assert (rows[ids[1]].error_code, rows[ids[1]].error_message) == ("ValidationException", message)
    assert (rows[ids[2]].status, rows[ids[2]].attempts) == (ItemStatus.SUCCEEDED, 2)
    assert rows[ids[3]].error_code == "ProvisionedThroughputExceededException"
    assert rows[ids[4]].status == rows[ids[5]].status == ItemStatus.PENDING
    job.refresh_from_db()
    assert (job.succeeded_items, job.failed_items) == (2, 2)
    assert (job.calls, job.throttled_calls, job.unprocessed_returned, job.consumed_wcu) == (7, 2, 5, 2.5)


def test_a_replayed_flush_counts_nothing_twice_and_stats_alone_are_recorded() -> None:
    job, ids = staged(3)
    flush = [Outcome(ids[0], True, 1), Outcome(ids[1], False, 1, "X", "y")]
    Item.objects.record_outcomes(job.pk, flush, CallStats(calls=1))
    Item.objects.record_outcomes(job.pk, flush, CallStats(calls=1))  # a crash's replay
    Item.objects.record_outcomes(job.pk, [], CallStats(calls=4, throttled_calls=4))  # throttled calls only

    job.refresh_from_db()
    assert (job.succeeded_items, job.failed_items, job.calls, job.throttled_calls) == (1, 1, 6, 4)
    assert Item.objects.get(pk=ids[0]).attempts == 1  # not re-counted either


def test_errors_come_out_as_djangos_so_the_recorders_outage_retry_sees_them() -> None:
    with pytest.raises(OperationalError), server_bound_cursor() as cursor:
        cursor.execute("SELECT pg_terminate_backend(pg_backend_pid())")
    connection.close()


def item_table_scans() -> int:
    """Sequential scans of the items table so far, by every session (this one's counts flushed)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_stat_force_next_flush()")  # this session's counts, once it is idle
        cursor.execute("SELECT pg_stat_clear_snapshot()")
        cursor.execute("SELECT seq_scan FROM pg_stat_user_tables WHERE relname = %s", [Item._meta.db_table])
        return int(cursor.fetchone()[0])


def test_outcomes_find_their_items_by_key_whatever_the_statistics_say() -> None:
    """An ANALYZE taken while no item was pending estimates the pending items at one row: the
    planner then read the whole items table once per outcome (a 4.4 s statement per flush, jobs
    standing still for 15-35 s in the bench). Outcomes are found by primary key regardless."""
    done, done_ids = staged(20_000)
    Item.objects.record_outcomes(done.pk, [Outcome(i, True, 1) for i in done_ids], CallStats(calls=1))
    with connection.cursor() as cursor:
        cursor.execute(f"ANALYZE {Item._meta.db_table}")  # no item pending at this moment
    job, ids = staged(2_000)
    scans = item_table_scans()

    Item.objects.record_outcomes(job.pk, [Outcome(i, True, 1) for i in ids[:500]], CallStats(calls=20))

    assert item_table_scans() == scans
    assert Item.objects.filter(job=job, status=ItemStatus.SUCCEEDED).count() == 500


def item_index_scans() -> int:
    """Index scans of the items table so far (each rescan of a nested loop's inner side counts)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_stat_force_next_flush()")
        cursor.execute("SELECT pg_stat_clear_snapshot()")
        cursor.execute("SELECT idx_scan FROM pg_stat_user_tables WHERE relname = %s", [Item._meta.db_table])
        return int(cursor.fetchone()[0])


@pytest.mark.parametrize("policy", [DuplicatePolicy.LAST, DuplicatePolicy.FIRST, DuplicatePolicy.REJECT])
def test_the_duplicate_policy_never_looks_items_up_one_by_one(policy: str) -> None:
    """The policy runs right after the COPY, in the staging transaction: the planner's statistics
    have never seen the rows, estimate one, and with a nested loop found each ranked row's item
    by its own index scan (measured: a 1M-row staging into an empty ledger did not finish in 8
    minutes). The statements run without nested loops: a few scans, whatever the job's size."""
    staged(10)
    with connection.cursor() as cursor:
        cursor.execute(f"ANALYZE {Item._meta.db_table}")  # the ledger as the planner last saw it: tiny
    job = Job.objects.create(table_name="t", key_schema=PK_S, source_kind=SourceKind.FILE, duplicate_policy=policy)
    rows = [SourceRow(k, {"pk": f"k{k % 200}"}) for k in range(1, 401)]  # each key twice
    scans = item_index_scans()
    with connection.cursor() as cursor:
        # With the nested loop, 3,000 rows ran for over ten minutes: fail, do not hang.
        cursor.execute("SET statement_timeout = '60s'")
    try:
        staging.stage_job(job, rows, dynamodb_json=False)
    finally:
        with connection.cursor() as cursor:
            cursor.execute("SET statement_timeout = DEFAULT")

    assert item_index_scans() - scans < 50
    marked = Item.objects.filter(job=job).exclude(status=ItemStatus.PENDING).count()
    assert marked == (400 if policy == DuplicatePolicy.REJECT else 200)
