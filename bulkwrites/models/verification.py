"""Read-back verification: a job's items read back from the table and judged against what it wrote."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import connection, models, transaction
from django.db.models import F, Q
from django.db.models.functions import Coalesce
from django.utils import timezone

from bulkwrites.dynamo import verify
from bulkwrites.models.items import EstimatedCountQuerySet, Item, ItemStatus, planner_without
from bulkwrites.models.jobs import DEFAULT_CONCURRENCY, Job, JobStatus
from bulkwrites.models.lifecycle import _guarded_update
from bulkwrites.models.slices import LeasedRange, LeasedRangeQuerySet


class VerificationStatus(models.TextChoices):
    DRAFT = "draft", "draft"
    """Waiting: for its job to end (automatic checks, re-checks after a repair), or to be started."""
    QUEUED = "queued", "queued"
    """Waiting for a worker."""
    RUNNING = "running", "running"
    """A worker is reading items back."""
    FINISHED = "finished", "finished"
    """Every chosen item has a verdict (``errored_items`` could not be read: see their error)."""
    FAILED = "failed", "failed"
    """Could not go on (missing table, access denied...); unchecked items stay pending; resume once fixed."""
    CANCELLED = "cancelled", "cancelled"
    """Stopped by an operator; unchecked items stay pending."""

    @classmethod
    def active(cls) -> tuple[str, ...]:
        return (cls.QUEUED, cls.RUNNING)


@dataclass(frozen=True)
class VerificationTransition:
    name: str
    sources: frozenset[str]
    target: str


_VERIFYING = frozenset(VerificationStatus.active())
VERIFICATION_TRANSITIONS: Mapping[str, VerificationTransition] = {
    t.name: t
    for t in (
        VerificationTransition("start", frozenset({VerificationStatus.DRAFT}), VerificationStatus.QUEUED),
        VerificationTransition("claim", _VERIFYING, VerificationStatus.RUNNING),
        VerificationTransition("finish", _VERIFYING, VerificationStatus.FINISHED),
        VerificationTransition("fail", _VERIFYING, VerificationStatus.FAILED),
        VerificationTransition(
            "resume", frozenset({VerificationStatus.FAILED, VerificationStatus.CANCELLED}), VerificationStatus.QUEUED
        ),
        VerificationTransition(
            "cancel",
            frozenset({VerificationStatus.DRAFT, VerificationStatus.QUEUED, VerificationStatus.RUNNING}),
            VerificationStatus.CANCELLED,
        ),
    )
}


class CheckOutcome(models.TextChoices):
    """The verdict on one item read back (the values are ``bulkwrites.dynamo.verify``'s)."""

    PENDING = "pending", "pending"
    """Not read back yet."""
    VERIFIED = verify.VERIFIED, "verified"
    """The table holds the item as written (for a delete: no item under the key)."""
    MISSING = verify.MISSING, "missing"
    """No item under the key."""
    DIFFERENT = verify.DIFFERENT, "different"
    """An item under the key, not as written (for a delete: an item is there); ``diff`` says how."""
    ERROR = verify.ERROR, "error"
    """Could not be read (gave up after retries, or DynamoDB refused the key); ``error_message`` says why."""

    @classmethod
    def mismatches(cls) -> tuple[str, ...]:
        return (cls.MISSING, cls.DIFFERENT)


class VerificationQuerySet(models.QuerySet["Verification"]):
    def active(self) -> VerificationQuerySet:
        return self.filter(status__in=VerificationStatus.active())

    def stalled(self, *, older_than: timedelta) -> VerificationQuerySet:
        return self.active().filter(last_activity_at__lt=timezone.now() - older_than)

    def due(self) -> VerificationQuerySet:
        """Drafts waiting for their job's end, whose job has ended with items written."""
        return self.filter(
            status=VerificationStatus.DRAFT,
            start_when_job_ends=True,
            job__status__in=(JobStatus.SUCCEEDED, JobStatus.COMPLETED_WITH_FAILURES),
        )

    def waiting_for_job(self, job_id: int) -> VerificationQuerySet:
        return self.filter(job_id=job_id, status=VerificationStatus.DRAFT, start_when_job_ends=True)

    def status_of(self, verification_id: int) -> str | None:
        return self.filter(pk=verification_id).values_list("status", flat=True).first()


# Verify every item of a job up to this many; above it, a random sample (unless asked otherwise).
# Reading back costs about as much as writing (1 RCU per 4 KB, strongly consistent); a sample of
# 100,000 that finds nothing wrong says, with 95 % confidence, that fewer than 3 in 100,000 items
# are wrong (the "rule of three": 3 / n).
FULL_VERIFICATION_MAX_ITEMS = 1_000_000
DEFAULT_SAMPLE_SIZE = 100_000


class Verification(models.Model):
    """Reading a job's items back from the table and judging each against what the job wrote."""

    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="verifications")
    status = models.CharField(max_length=16, choices=VerificationStatus.choices, default=VerificationStatus.DRAFT)
    recheck_of = models.ForeignKey(
        "self",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        help_text="a repair's re-check: the items this verification found missing or different",
    )
    start_when_job_ends = models.BooleanField(default=False)

    # What to check: the default (None, None) is every written item up to
    # FULL_VERIFICATION_MAX_ITEMS, a sample of DEFAULT_SAMPLE_SIZE above.
    sample_fraction = models.FloatField(
        null=True, blank=True, validators=[MinValueValidator(1e-9), MaxValueValidator(1.0)], help_text="0 < f ≤ 1"
    )
    sample_size = models.PositiveIntegerField(null=True, blank=True, validators=[MinValueValidator(1)])
    consistent_read = models.BooleanField(default=True, help_text="strongly consistent reads (twice the read units)")
    rate_limit_rcu = models.FloatField(
        "rate cap (RCU/s)",
        null=True,
        blank=True,
        validators=[MinValueValidator(0.1), MaxValueValidator(10_000_000.0)],
        help_text="read capacity units per second for the whole verification; empty: no cap",
    )
    concurrency = models.PositiveSmallIntegerField(
        default=DEFAULT_CONCURRENCY, validators=[MinValueValidator(1), MaxValueValidator(64)]
    )
    slice_size = models.PositiveIntegerField(default=1000, validators=[MinValueValidator(1)])

    # Set when its items are chosen (staged).
    eligible_items = models.BigIntegerField(default=0, help_text="written items a full verification checks")
    total_items = models.BigIntegerField(default=0, help_text="items this verification checks")
    sampled = models.BooleanField(default=False)

    verified_items = models.BigIntegerField(default=0)
    missing_items = models.BigIntegerField(default=0)
    different_items = models.BigIntegerField(default=0)
    errored_items = models.BigIntegerField(default=0)

    calls = models.BigIntegerField(default=0)
    throttled_calls = models.BigIntegerField(default=0)
    unprocessed_returned = models.BigIntegerField(default=0)
    consumed_rcu = models.FloatField(default=0.0)

    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    staged_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    last_activity_at = models.DateTimeField(null=True, blank=True)
    error_code = models.CharField(max_length=128, blank=True)
    error_message = models.TextField(blank=True)
    queue = models.CharField(max_length=100, blank=True)

    objects = VerificationQuerySet.as_manager()

    class Meta:
        ordering = ["-id"]
        indexes = [models.Index(fields=["status", "last_activity_at"], name="verification_status_activity")]

    def __str__(self) -> str:
        return f"verification {self.pk} of job {self.job_id}"

    @property
    def checked_items(self) -> int:
        return self.verified_items + self.missing_items + self.different_items + self.errored_items

    @property
    def pending_items(self) -> int:
        return max(0, self.total_items - self.checked_items)

    @property
    def mismatched_items(self) -> int:
        return self.missing_items + self.different_items

    @property
    def is_active(self) -> bool:
        return self.status in VerificationStatus.active()

    @property
    def duration_seconds(self) -> float | None:
        if self.started_at is None:
            return None
        return ((self.finished_at or timezone.now()) - self.started_at).total_seconds()

    def sample_size_for(self, written: int) -> int | None:
        """How many of ``written`` items to check at random; None: all of them."""
        if self.sample_fraction is not None:
            wanted = math.ceil(self.sample_fraction * written)
        elif self.sample_size is not None:
            wanted = self.sample_size
        elif written <= FULL_VERIFICATION_MAX_ITEMS:
            return None
        else:
            wanted = DEFAULT_SAMPLE_SIZE
        return None if wanted >= written else wanted

    def scope(self) -> str:
        """What it checks, in words."""
        if self.recheck_of_id:
            return f"re-check of verification {self.recheck_of_id}'s mismatches"
        if self.sample_fraction is not None:
            return f"a random {self.sample_fraction:.4g} of the written items"
        if self.sample_size is not None:
            return f"a random {self.sample_size:,} of the written items"
        return f"every written item (a sample of {DEFAULT_SAMPLE_SIZE:,} above {FULL_VERIFICATION_MAX_ITEMS:,})"

    # --- the lifecycle: every status change goes through VERIFICATION_TRANSITIONS ---------

    def _transition(self, name: str, *, condition: Q | None = None, **fields: Any) -> bool:
        return _guarded_update(self, VERIFICATION_TRANSITIONS[name], condition, fields)

    def start(self, *, queue: str) -> bool:
        return self._transition("start", queue=queue, last_activity_at=timezone.now())

    def claim(self) -> bool:
        now = timezone.now()
        return self._transition("claim", started_at=Coalesce(F("started_at"), now), last_activity_at=now)

    def finish(self) -> bool:
        now = timezone.now()
        return self._transition("finish", finished_at=now, last_activity_at=now)

    def fail(self, code: str, message: str) -> bool:
        now = timezone.now()
        return self._transition(
            "fail", error_code=code[:128], error_message=message, finished_at=now, last_activity_at=now
        )

    def resume(self, *, queue: str) -> bool:
        return self._transition(
            "resume", queue=queue, error_code="", error_message="", finished_at=None, last_activity_at=timezone.now()
        )

    def cancel(self) -> bool:
        return self._transition("cancel", finished_at=timezone.now())


class ItemCheckQuerySet(EstimatedCountQuerySet["ItemCheck"]):
    def pending(self) -> ItemCheckQuerySet:
        return self.filter(outcome=CheckOutcome.PENDING)

    def mismatched(self) -> ItemCheckQuerySet:
        return self.filter(outcome__in=CheckOutcome.mismatches())

    def in_positions(self, first: int, last: int) -> ItemCheckQuerySet:
        return self.filter(position__gte=first, position__lte=last)

    # --- statements over many rows ----------------------------------------------------------

    def stage(self, verification: Verification, *, sample_size: int | None) -> int:
        """Choose the items to check and record them: one row each, numbered 1..n.

        Written items are those with the status ``succeeded`` (a skipped item's key is checked
        through the item that superseded it). ``sample_size`` None: all of them; else that many
        chosen at random, once: a restarted verification checks the same ones.
        """
        sample = "" if sample_size is None else "ORDER BY random() LIMIT %s"
        params: list[Any] = [verification.job_id, ItemStatus.SUCCEEDED]
        if sample_size is not None:
            params.append(sample_size)
        return self._insert_checks(
            verification.pk,
            f"SELECT id, position FROM {Item._meta.db_table} WHERE job_id = %s AND status = %s {sample}",
            params,
        )

    def stage_recheck(self, verification: Verification, *, of: int) -> int:
        """The items verification ``of`` found missing or different (and that are written again)."""
        sql = f"""
            SELECT i.id, i.position FROM {ItemCheck._meta.db_table} AS c
            JOIN {Item._meta.db_table} AS i ON i.id = c.item_id
            WHERE c.verification_id = %s AND c.outcome IN (%s, %s) AND i.status = %s
        """
        return self._insert_checks(verification.pk, sql, [of, *CheckOutcome.mismatches(), ItemStatus.SUCCEEDED])

    def _insert_checks(self, verification_id: int, chosen_sql: str, params: list[Any]) -> int:
        with connection.cursor() as cursor:
            cursor.execute(
                f"""
                INSERT INTO {ItemCheck._meta.db_table} (verification_id, item_id, position, outcome, attempts,
                    error_code, error_message)
                SELECT %s, chosen.id, row_number() OVER (ORDER BY chosen.position), %s, 0, '', ''
                FROM ({chosen_sql}) AS chosen
                """,
                [verification_id, CheckOutcome.PENDING, *params],
            )
            return int(cursor.rowcount)

    def record_checks(self, verification_id: int, checks: Sequence[verify.Check], stats: verify.ReadStats) -> None:
        """One statement: the verdicts of checks still pending, added to the verification's counters.

        The ``outcome = pending`` guard makes recording idempotent: a key read again after a
        crash, or by two workers, is counted once.
        """
        if not checks and not stats.calls:
            return
        # The plan is pinned, whatever the table's statistics say: "c.id = ANY(ids)" fetches the
        # rows by primary key, and no nested loop joins them to the unnest. Joined on the unnest
        # alone, a table just staged (its statistics still saying "no pending check") was
        # planned as a nested loop over every row: 3.3 s a flush, 900 items/s; with ANY but a
        # nested loop, the 250 rows were compared with the 250 values: 44 ms; hash join: 5 ms.
        ids: list[int] = []
        outcomes: list[str] = []
        attempts: list[int] = []
        diffs: list[str | None] = []
        codes: list[str] = []
        messages: list[str] = []
        for check in checks:
            ids.append(check.ref)
            outcomes.append(check.verdict)
            attempts.append(check.attempts)
            diffs.append(json.dumps(check.diff, ensure_ascii=False) if check.diff else None)
            codes.append(check.error_code or "")
            messages.append(check.error_message or "")
        sql = f"""
            WITH v AS (
                SELECT * FROM unnest(%s::bigint[], %s::text[], %s::int[], %s::text[], %s::text[], %s::text[])
                    AS v(id, outcome, attempts, diff, code, message)
            ),
            changed AS (
                UPDATE {ItemCheck._meta.db_table} AS c
                SET outcome = v.outcome, attempts = c.attempts + v.attempts, diff = v.diff::jsonb,
                    error_code = v.code, error_message = v.message, checked_at = now()
                FROM v WHERE c.id = ANY(%s::bigint[]) AND c.id = v.id AND c.outcome = %s
                RETURNING c.outcome
            )
            UPDATE {Verification._meta.db_table} SET
                verified_items = verified_items + (SELECT count(*) FROM changed WHERE outcome = %s),
                missing_items = missing_items + (SELECT count(*) FROM changed WHERE outcome = %s),
                different_items = different_items + (SELECT count(*) FROM changed WHERE outcome = %s),
                errored_items = errored_items + (SELECT count(*) FROM changed WHERE outcome = %s),
                calls = calls + %s, throttled_calls = throttled_calls + %s,
                unprocessed_returned = unprocessed_returned + %s, consumed_rcu = consumed_rcu + %s,
                last_activity_at = now()
            WHERE id = %s
        """
        params: list[Any] = [
            ids, outcomes, attempts, diffs, codes, messages, ids, CheckOutcome.PENDING,
            CheckOutcome.VERIFIED, CheckOutcome.MISSING, CheckOutcome.DIFFERENT, CheckOutcome.ERROR,
            stats.calls, stats.throttled_calls, stats.unprocessed, stats.consumed_rcu, verification_id,
        ]  # fmt: skip
        with transaction.atomic(), connection.cursor() as cursor, planner_without(cursor, "enable_nestloop"):
            cursor.execute(sql, params)


class ItemCheck(models.Model):
    """One item of a job read back by one verification, and the verdict."""

    id = models.BigAutoField(primary_key=True)
    verification = models.ForeignKey(Verification, on_delete=models.CASCADE, related_name="checks", db_index=False)
    # No index of its own: checks are reached through their verification; items are never
    # deleted but with their job (and its verifications). No constraint either: its check ran
    # once for every item deleted, ~15 µs each (15.8 s of the 17 s a 1M-item job's items took);
    # a job's checks are deleted before its items (services.deletion).
    item = models.ForeignKey(Item, on_delete=models.CASCADE, related_name="checks", db_index=False, db_constraint=False)
    position = models.BigIntegerField(help_text="1..n within the verification")
    outcome = models.CharField(max_length=16, choices=CheckOutcome.choices, default=CheckOutcome.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    diff = models.JSONField(null=True, blank=True, help_text="the attributes that differ: expected and actual")
    error_code = models.CharField(max_length=128, blank=True)
    error_message = models.TextField(blank=True)
    checked_at = models.DateTimeField(null=True, blank=True)

    objects = ItemCheckQuerySet.as_manager()

    class Meta:
        ordering = ["verification", "position"]
        constraints = [models.UniqueConstraint(fields=["verification", "position"], name="check_position")]
        indexes = [models.Index(fields=["verification", "outcome", "position"], name="check_outcome")]

    def __str__(self) -> str:
        return f"check {self.position} of verification {self.verification_id}"


class CheckSliceQuerySet(LeasedRangeQuerySet["CheckSlice"]):
    owner_field = "verification_id"


class CheckSlice(LeasedRange):
    """A range of a verification's checks that one worker reads back at a time."""

    verification = models.ForeignKey(Verification, on_delete=models.CASCADE, related_name="slices")

    objects = CheckSliceQuerySet.as_manager()

    class Meta:
        ordering = ["verification", "first_position"]
        indexes = [
            models.Index(fields=["verification", "first_position"], name="check_slice_open", condition=Q(done=False))
        ]

    def __str__(self) -> str:
        return f"slice {self.first_position}-{self.last_position} of verification {self.verification_id}"
