"""DynamoDB Streams rules: a stream's records written to another table."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import connection, models, transaction
from django.db.models import Exists, OuterRef, Q
from django.utils import timezone

from bulkwrites.models.jobs import Operation


class StreamRuleStatus(models.TextChoices):
    ACTIVE = "active", "active"
    """Workers consume the source's stream."""
    PAUSED = "paused", "paused"
    """Stopped by an operator; every shard keeps its checkpoint for resume."""
    FAILED = "failed", "failed"
    """Stopped by an error no retry fixes (stream gone, target missing, access denied); see error_message."""


class StreamStartPosition(models.TextChoices):
    TRIM_HORIZON = "TRIM_HORIZON", "the oldest record kept (TRIM_HORIZON, up to 24 h back)"
    LATEST = "LATEST", "new records only (LATEST)"


@dataclass(frozen=True)
class StreamRuleTransition:
    """One allowed change of a stream rule's status; ``operator`` ones are buttons and CLI commands."""

    name: str
    sources: frozenset[str]
    target: str
    operator: bool = False

    def allows(self, status: str) -> bool:
        return status in self.sources


STREAM_RULE_TRANSITIONS: Mapping[str, StreamRuleTransition] = {
    t.name: t
    for t in (
        StreamRuleTransition("pause", frozenset({StreamRuleStatus.ACTIVE}), StreamRuleStatus.PAUSED, operator=True),
        StreamRuleTransition(
            "resume",
            frozenset({StreamRuleStatus.PAUSED, StreamRuleStatus.FAILED}),
            StreamRuleStatus.ACTIVE,
            operator=True,
        ),
        StreamRuleTransition("fail", frozenset({StreamRuleStatus.ACTIVE}), StreamRuleStatus.FAILED),
    )
}
STREAM_RULE_ACTIONS: tuple[str, ...] = tuple(name for name, t in STREAM_RULE_TRANSITIONS.items() if t.operator)


class StreamRuleQuerySet(models.QuerySet["StreamRule"]):
    def active(self) -> StreamRuleQuerySet:
        return self.filter(status=StreamRuleStatus.ACTIVE)

    def in_queue(self, queue: str) -> StreamRuleQuerySet:
        return self.filter(queue=queue)

    def stalled(self, *, older_than: timedelta) -> StreamRuleQuerySet:
        """Active rules no worker has reported on lately (a killed worker, a lost RQ job)."""
        cutoff = timezone.now() - older_than
        return self.active().filter(Q(last_activity_at__isnull=True) | Q(last_activity_at__lt=cutoff))

    def status_of(self, rule_id: int) -> str | None:
        return self.filter(pk=rule_id).values_list("status", flat=True).first()


class StreamRule(models.Model):
    """Consume a table's DynamoDB Stream and write what its records map to into another table.

    The classic rule is scavenging: when an item is removed from table A, delete the item with
    the same key (or a mapped one) from table B.
    """

    name = models.CharField(max_length=120, unique=True)
    status = models.CharField(max_length=16, choices=StreamRuleStatus.choices, default=StreamRuleStatus.ACTIVE)
    source_table = models.CharField(max_length=255)
    stream_arn = models.CharField(max_length=1024, help_text="the source's stream, from DescribeTable")
    stream_view_type = models.CharField(max_length=32, help_text="what the stream's records carry")
    source_key_schema = models.JSONField(default=list)
    target_table = models.CharField(max_length=255)
    target_key_schema = models.JSONField(default=list)
    events = models.JSONField(default=list, help_text="INSERT, MODIFY and/or REMOVE")
    operation = models.CharField(max_length=16, choices=Operation.choices, default=Operation.DELETE)
    mapping = models.TextField(
        blank=True, help_text="'source -> target[:S|N]' per line; empty: the record's keys (delete) or image (put)"
    )
    callable_path = models.CharField(
        "callable", max_length=255, blank=True, help_text="module.function for the rest (an allowed module only)"
    )
    start_position = models.CharField(
        max_length=16, choices=StreamStartPosition.choices, default=StreamStartPosition.TRIM_HORIZON
    )
    rate_limit_wcu = models.FloatField(
        "rate cap (WCU/s)",
        null=True,
        blank=True,
        validators=[MinValueValidator(0.1), MaxValueValidator(10_000_000.0)],
        help_text="write capacity units per second on the target; empty: no cap",
    )
    queue = models.CharField(max_length=100, blank=True, help_text="the RQ queue its workers serve")
    error_code = models.CharField(max_length=128, blank=True)
    error_message = models.TextField(blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    last_activity_at = models.DateTimeField(null=True, blank=True, help_text="last report of a worker consuming it")

    objects = StreamRuleQuerySet.as_manager()

    class Meta:
        ordering = ["name"]
        permissions = [("manage_streams", "Can add, pause, resume, rate-cap and retry stream rules")]

    def __str__(self) -> str:
        return self.name

    def can(self, transition: str) -> bool:
        return STREAM_RULE_TRANSITIONS[transition].allows(self.status)

    def available_actions(self) -> list[str]:
        return [name for name in STREAM_RULE_ACTIONS if self.can(name)]

    def _transition(self, name: str, **fields: Any) -> bool:
        """One conditional UPDATE, as for jobs: False (nothing changed) if the status moved meanwhile."""
        rule = STREAM_RULE_TRANSITIONS[name]
        if not StreamRule.objects.filter(pk=self.pk, status__in=rule.sources).update(status=rule.target, **fields):
            return False
        self.refresh_from_db(fields=["status", *fields])
        return True

    def pause(self) -> bool:
        return self._transition("pause")

    def resume(self, *, queue: str) -> bool:
        return self._transition("resume", queue=queue, error_code="", error_message="", last_activity_at=timezone.now())

    def fail(self, code: str, message: str) -> bool:
        return self._transition("fail", error_code=code[:128], error_message=message)


class StreamShardQuerySet(models.QuerySet["StreamShard"]):
    def open(self) -> StreamShardQuerySet:
        return self.filter(finished=False)

    def under_live_lease(self) -> StreamShardQuerySet:
        return self.open().filter(lease_expires_at__gt=timezone.now())

    def claim(self, rule_id: int, *, worker: str, lease: timedelta) -> list[StreamShard]:
        """Lease every shard of the rule that is free and ready; the shards ``worker`` holds now.

        Ready: not finished, and its parent (if we know it) read to its end, so the changes to a
        key are applied in their order. ``SKIP LOCKED``: two workers claiming at once take
        different shards, and neither waits for the other.
        """
        now = timezone.now()
        unfinished_parent = StreamShard.objects.filter(
            rule_id=OuterRef("rule_id"), shard_id=OuterRef("parent_shard_id"), finished=False
        )
        with transaction.atomic():
            free = (
                self.select_for_update(skip_locked=True)
                .filter(rule_id=rule_id, finished=False)
                .filter(Q(lease_expires_at__isnull=True) | Q(lease_expires_at__lt=now) | Q(leased_by=worker))
                .exclude(Exists(unfinished_parent))
            )
            ids = list(free.values_list("pk", flat=True))
            if ids:
                StreamShard.objects.filter(pk__in=ids).update(leased_by=worker, lease_expires_at=now + lease)
        return list(self.filter(rule_id=rule_id, leased_by=worker, finished=False).order_by("discovered_at", "pk"))

    def renew(self, rule_id: int, *, worker: str, lease: timedelta) -> int:
        return self.filter(rule_id=rule_id, leased_by=worker, finished=False).update(
            lease_expires_at=timezone.now() + lease
        )

    def release(self, rule_id: int, *, worker: str) -> int:
        return self.filter(rule_id=rule_id, leased_by=worker).update(leased_by="", lease_expires_at=None)

    def checkpoint(self, shard_id: int, *, worker: str, **fields: Any) -> bool:
        """Move the shard's checkpoint and counters, only while ``worker`` still holds its lease.

        False when the lease was lost (another worker took the shard over): the caller's reading
        is then abandoned, and the other worker reads again from the last checkpoint.
        """
        return bool(self.filter(pk=shard_id, leased_by=worker, finished=False).update(**fields))


class StreamShard(models.Model):
    """One shard of a rule's stream: who reads it (lease), how far (checkpoint), and its counters."""

    rule = models.ForeignKey(StreamRule, on_delete=models.CASCADE, related_name="shards")
    shard_id = models.CharField(max_length=128)
    parent_shard_id = models.CharField(max_length=128, blank=True)
    starting_sequence = models.CharField(max_length=64, blank=True)
    ending_sequence = models.CharField(max_length=64, blank=True, help_text="set once the shard is closed")
    initial_position = models.CharField(
        max_length=16, choices=StreamStartPosition.choices, default=StreamStartPosition.TRIM_HORIZON
    )
    checkpoint = models.CharField(
        max_length=64, blank=True, help_text="sequence number of the last record whose writes are recorded"
    )
    finished = models.BooleanField(default=False, help_text="closed and read to its end")
    # A LATEST shard has no sequence number to resume from until its first record: its iterator
    # (good for 15 minutes) is kept instead, so the next worker starts where this one stopped.
    resume_iterator = models.TextField(blank=True)
    resume_iterator_at = models.DateTimeField(null=True, blank=True)
    leased_by = models.CharField(max_length=255, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    records_read = models.BigIntegerField(default=0)
    records_failed = models.BigIntegerField(default=0, help_text="records kept in the failed-writes ledger")
    writes_succeeded = models.BigIntegerField(default=0)
    writes_failed = models.BigIntegerField(default=0)
    records_per_second = models.FloatField(default=0.0, help_text="records read per second, recent average")
    lag_seconds = models.FloatField(null=True, blank=True, help_text="age of the last record when it was read")
    caught_up = models.BooleanField(default=False, help_text="the last read found no new record")
    last_record_at = models.DateTimeField(null=True, blank=True, help_text="when the last record read was written")
    last_read_at = models.DateTimeField(null=True, blank=True)
    last_checkpoint_at = models.DateTimeField(null=True, blank=True)
    discovered_at = models.DateTimeField(default=timezone.now)

    objects = StreamShardQuerySet.as_manager()

    class Meta:
        ordering = ["rule", "discovered_at", "id"]
        constraints = [models.UniqueConstraint(fields=["rule", "shard_id"], name="stream_shard_rule_shard")]
        indexes = [
            models.Index(fields=["rule", "lease_expires_at"], name="stream_shard_open", condition=Q(finished=False))
        ]

    def __str__(self) -> str:
        return f"{self.shard_id} of {self.rule_id}"

    @property
    def closed(self) -> bool:
        return bool(self.ending_sequence)

    @property
    def lag(self) -> float | None:
        """Seconds behind the stream: 0 once a read found nothing new, else the last record's age when read."""
        if self.finished or self.caught_up:
            return 0.0
        return self.lag_seconds


class StreamFailureStatus(models.TextChoices):
    FAILED = "failed", "failed"
    """The record's write failed (or the record could not be mapped); see error_code/error_message."""
    RETRYING = "retrying", "queued for retry"
    """An operator asked to send it again; a worker will."""
    RESOLVED = "resolved", "written on retry"
    """Sent again and written; the first outcome is in ``history``."""


class StreamFailureQuerySet(models.QuerySet["StreamFailure"]):
    def failed(self) -> StreamFailureQuerySet:
        return self.filter(status=StreamFailureStatus.FAILED)

    def retrying(self) -> StreamFailureQuerySet:
        return self.filter(status=StreamFailureStatus.RETRYING)

    def queue_for_retry(self, rule_id: int) -> int:
        """Mark the rule's failed records to be sent again (one UPDATE); how many.

        Entries without a record (records lost to the stream's retention) have nothing to send."""
        return (
            self.filter(rule_id=rule_id, status=StreamFailureStatus.FAILED)
            .exclude(record={})
            .update(status=StreamFailureStatus.RETRYING, updated_at=timezone.now())
        )

    def record_retry(self, failure_id: int, *, succeeded: bool, code: str = "", message: str = "") -> None:
        """The outcome of one retry; the earlier outcome is appended to ``history``."""
        table = StreamFailure._meta.db_table
        with connection.cursor() as cursor:
            cursor.execute(
                f"""
                UPDATE {table} SET
                    history = history || jsonb_build_array(jsonb_build_object(
                        'status', %s, 'error_code', error_code, 'error_message', error_message, 'at', updated_at)),
                    status = %s, attempts = attempts + 1, updated_at = now(),
                    error_code = CASE WHEN %s THEN error_code ELSE %s END,
                    error_message = CASE WHEN %s THEN error_message ELSE %s END
                WHERE id = %s AND status = %s
                """,
                [
                    StreamFailureStatus.FAILED.value,
                    StreamFailureStatus.RESOLVED.value if succeeded else StreamFailureStatus.FAILED.value,
                    succeeded, code, succeeded, message, failure_id, StreamFailureStatus.RETRYING.value,
                ],
            )  # fmt: skip


class StreamFailure(models.Model):
    """A stream record that led to a failed write (or could not be mapped): the failed-writes ledger."""

    rule = models.ForeignKey(StreamRule, on_delete=models.CASCADE, related_name="failures")
    shard_id = models.CharField(max_length=128)
    sequence_number = models.CharField(max_length=64)
    event_name = models.CharField(max_length=16, blank=True)
    keys = models.JSONField(default=dict, blank=True, help_text="the record's keys (DynamoDB JSON)")
    record = models.JSONField(default=dict, blank=True, help_text="the stream record as read")
    status = models.CharField(max_length=16, choices=StreamFailureStatus.choices, default=StreamFailureStatus.FAILED)
    error_code = models.CharField(max_length=128, blank=True)
    error_message = models.TextField(blank=True)
    attempts = models.PositiveIntegerField(default=1)
    history = models.JSONField(default=list, blank=True, help_text="earlier outcomes, oldest first")
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)

    objects = StreamFailureQuerySet.as_manager()

    class Meta:
        ordering = ["rule", "id"]
        verbose_name = "stream failed write"
        indexes = [models.Index(fields=["rule", "status"], name="stream_failure_rule_status")]

    def __str__(self) -> str:
        return f"{self.event_name} {self.sequence_number} of {self.rule_id}"

    @property
    def key_text(self) -> str:
        if not self.keys:
            return "—"
        return ", ".join(f"{name}={next(iter(value.values()))}" for name, value in self.keys.items())
