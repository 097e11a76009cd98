"""Ranges of positions workers claim under a lease; a job's slices and the audit of each pass over one."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, ClassVar, Self

from django.db import connection, models, transaction
from django.db.models import Q
from django.utils import timezone

from bulkwrites.models.items import Item, ItemStatus
from bulkwrites.models.jobs import Job


class LeasedRangeQuerySet[R: LeasedRange](models.QuerySet[R]):
    """Ranges of positions workers claim one at a time with a lease (``SELECT ... FOR UPDATE SKIP LOCKED``).

    The same machinery for a job's slices (owner ``job_id``) and a verification's
    (``verification_id``): ``owner_field`` names the owner's column.
    """

    owner_field: ClassVar[str]

    def _of(self, owner_id: int) -> Self:
        return self.filter(**{self.owner_field: owner_id})

    def open(self) -> Self:
        return self.filter(done=False)

    def under_live_lease(self) -> Self:
        return self.open().filter(lease_expires_at__gt=timezone.now())

    def abandoned(self) -> Self:
        """Open ranges whose holder's lease ran out: a run that stops hands its ranges back, so
        their holder died (or lost PostgreSQL for a whole lease)."""
        return self.open().filter(lease_expires_at__lt=timezone.now())

    def claimable(self) -> Self:
        """Open ranges a run may claim: nobody holds them, or their holder's lease ran out."""
        return self.open().filter(Q(lease_expires_at__isnull=True) | Q(lease_expires_at__lt=timezone.now()))

    def holding(self, owner_id: int) -> set[str]:
        """The runs holding a live lease on the owner's ranges (runs, not ranges: a run reads one ahead)."""
        live = self._of(owner_id).under_live_lease().order_by()
        return set(live.values_list("leased_by", flat=True).distinct())

    def holders(self, owner_id: int, *, other_than: str) -> int:
        """How many runs other than ``other_than`` hold a live lease on the owner's ranges."""
        return len(self.holding(owner_id) - {other_than})

    def claim(self, owner_id: int, *, worker: str, lease: timedelta) -> R | None:
        """Lease the owner's next open range nobody holds (or whose holder's lease ran out).

        A range taken from a holder whose lease ran out says who that was (``taken_over_from``):
        a run that stops hands its ranges back, so that holder died (or lost PostgreSQL for a
        whole lease) and nobody runs in its place.
        """
        now = timezone.now()
        with transaction.atomic():
            leased = (
                self.select_for_update(skip_locked=True)._of(owner_id).claimable().order_by("first_position").first()
            )
            if leased is None:
                return None
            died = leased.lease_expires_at is not None and leased.leased_by != worker
            leased.taken_over_from = leased.leased_by if died else ""
            leased.leased_by = worker
            leased.lease_expires_at = now + lease
            leased.save(update_fields=["leased_by", "lease_expires_at"])
        return leased

    def renew(self, owner_id: int, *, worker: str, lease: timedelta) -> int:
        return self._of(owner_id).filter(leased_by=worker, done=False).update(lease_expires_at=timezone.now() + lease)

    def release(self, owner_id: int, *, worker: str) -> int:
        """Hand back the open ranges a worker holds (stopped, or claimed ahead and never started)."""
        return self._of(owner_id).filter(leased_by=worker, done=False).update(leased_by="", lease_expires_at=None)

    def close(self, range_id: int, *, done: bool) -> None:
        """A pass over the range ended: done if every item got an outcome, else handed back."""
        self.filter(pk=range_id).update(done=done, leased_by="", lease_expires_at=None)

    def cut(self, owner_id: int, *, first: int, last: int, size: int) -> None:
        """Cut positions ``first..last`` into open ranges of ``size`` (one INSERT ... SELECT)."""
        if last < first:
            return
        table = self.model._meta.db_table
        with connection.cursor() as cursor:
            cursor.execute(
                f"""
                INSERT INTO {table} ({self.owner_field}, first_position, last_position, done, leased_by)
                SELECT %s, s, s + %s - 1, false, '' FROM generate_series(%s::bigint, %s::bigint, %s::bigint) AS s
                """,
                [owner_id, size, first, last, size],
            )


class LeasedRange(models.Model):
    """A range of positions one worker works on at a time, under a lease."""

    first_position = models.BigIntegerField()
    last_position = models.BigIntegerField()
    done = models.BooleanField(default=False)
    leased_by = models.CharField(max_length=255, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    taken_over_from = ""  # not stored: set by ``claim`` (see there)

    class Meta:
        abstract = True


class SliceQuerySet(LeasedRangeQuerySet["Slice"]):
    owner_field = "job_id"

    def create_for_job(self, job_id: int, *, slice_size: int) -> None:
        """Cut the job's positions into slices of ``slice_size``."""
        bounds = Item.objects.filter(job_id=job_id).aggregate(lo=models.Min("position"), hi=models.Max("position"))
        if bounds["lo"] is not None:
            self.cut(job_id, first=bounds["lo"], last=bounds["hi"], size=slice_size)

    def reopen_positions(self, job_id: int, positions: Sequence[int]) -> None:
        """Open again the slices holding these positions (their items are pending again)."""
        condition = Q()
        for position in positions:
            condition |= Q(first_position__lte=position, last_position__gte=position)
        self.filter(condition, job_id=job_id).update(done=False, leased_by="", lease_expires_at=None)

    def reopen_with_pending(self, job_id: int) -> int:
        """Open again every slice of the job that holds a pending item (one statement, any number of items)."""
        pending = Item.objects.filter(
            job_id=job_id,
            status=ItemStatus.PENDING,
            position__gte=models.OuterRef("first_position"),
            position__lte=models.OuterRef("last_position"),
        )
        return (
            self.filter(job_id=job_id, done=True)
            .filter(models.Exists(pending))
            .update(done=False, leased_by="", lease_expires_at=None)
        )


class Slice(LeasedRange):
    """A range of a job's items that one worker claims at a time (lease + SKIP LOCKED)."""

    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="slices")

    objects = SliceQuerySet.as_manager()

    class Meta:
        ordering = ["job", "first_position"]
        indexes = [
            models.Index(fields=["job", "first_position"], name="slice_open", condition=Q(done=False)),
        ]

    def __str__(self) -> str:
        return f"slice {self.first_position}-{self.last_position} of job {self.job_id}"


@dataclass(frozen=True)
class ThroughputBucket:
    """What the passes of a job's workers did within one time bucket (shares of passes that straddle it)."""

    number: int  # the bucket's index since the start: it covers [number x width, (number + 1) x width) seconds
    items: float  # items given an outcome
    consumed_wcu: float
    calls: float
    throttled_calls: float


class SliceRunQuerySet(models.QuerySet["SliceRun"]):
    def throughput(self, job_id: int, *, since: Any, bucket_seconds: float) -> list[ThroughputBucket]:
        """The job's passes summed per ``bucket_seconds`` since ``since``, in order; empty buckets left out.

        A pass's items, units and calls are spread evenly over its own time span: a slice a capped
        job writes over a minute shows as the rate it ran at, not as a spike when it ended.
        """
        with connection.cursor() as cursor:
            cursor.execute(
                f"""
                WITH runs AS (
                    SELECT extract(epoch FROM started_at - %(since)s) AS s,
                           greatest(extract(epoch FROM finished_at - %(since)s),
                                    extract(epoch FROM started_at - %(since)s) + 0.001) AS e,
                           succeeded + failed AS items, consumed_wcu, calls, throttled_calls
                    FROM {SliceRun._meta.db_table} WHERE job_id = %(job)s
                )
                SELECT b, sum(items * w), sum(consumed_wcu * w), sum(calls * w), sum(throttled_calls * w)
                FROM runs
                CROSS JOIN LATERAL generate_series(
                    floor(s / %(width)s)::int, floor((e - 0.000001) / %(width)s)::int) AS b
                CROSS JOIN LATERAL (
                    SELECT (least(e, (b + 1) * %(width)s) - greatest(s, b * %(width)s)) / (e - s) AS w
                ) AS share
                GROUP BY b ORDER BY b
                """,
                {"since": since, "job": job_id, "width": bucket_seconds},
            )
            return [
                ThroughputBucket(int(n), float(items), float(wcu), float(calls), float(throttled))
                for n, items, wcu, calls, throttled in cursor.fetchall()
            ]


class SliceRun(models.Model):
    """Audit of one worker's pass over one slice: the BatchWriteItem calls it made."""

    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="runs")
    slice = models.ForeignKey(Slice, on_delete=models.CASCADE, related_name="runs")
    worker = models.CharField(max_length=255)
    started_at = models.DateTimeField()
    finished_at = models.DateTimeField()
    items_sent = models.IntegerField(default=0)
    succeeded = models.IntegerField(default=0)
    failed = models.IntegerField(default=0)
    calls = models.IntegerField(default=0)
    unprocessed = models.IntegerField(default=0)
    throttled_calls = models.IntegerField(default=0)
    consumed_wcu = models.FloatField(default=0.0)
    latency_ms = models.FloatField(default=0.0, help_text="total time waiting on DynamoDB")
    error_codes = models.JSONField(default=dict, blank=True)
    stopped_by = models.CharField(max_length=128, blank=True, help_text="why the pass ended early")

    objects = SliceRunQuerySet.as_manager()

    class Meta:
        ordering = ["job", "started_at"]

    def __str__(self) -> str:
        return f"run of {self.slice} by {self.worker}"

    @property
    def duration(self) -> timedelta:
        return self.finished_at - self.started_at
