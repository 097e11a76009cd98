"""Consuming a rule's stream: lease shards, read records, write them, record outcomes, checkpoint.

Delivery is at-least-once, and nothing is counted twice:

- Every shard is leased by one worker at a time (``StreamShard.objects.claim``: lease + ``SKIP
  LOCKED``, as bulk-job slices), and only once its parent shard is read to its end, so the
  changes to one key are applied in their order.
- A batch (one ``GetRecords``, at most 1,000 records) is written through the bulk writer and the
  rule's rate limiter; then, in one transaction, the records whose writes failed go to the
  failed-writes ledger, the shard's counters move and its checkpoint becomes the batch's last
  settled record, and only while this worker still holds the lease. A worker killed before that
  commit leaves the checkpoint where it was: after its lease expires another worker reads those
  records again and writes them again (puts and deletes are idempotent).
- A record is *settled* when its writes succeeded, or failed for a reason that is the record's
  own (it cannot be mapped, DynamoDB rejects its item): those go to the ledger and the shard
  moves on. Writes left unprocessed by throttling, or failed by a server error, are not the
  record's fault: the checkpoint stops before the first such record and the shard reads it again
  after a pause, so a throttled table slows a rule down but never makes it drop a write.
- An error no retry fixes (target table missing, access denied, the stream gone) fails the rule
  with the reason; every checkpoint stays for resume.

A worker's RQ job consumes for ``BULKWRITES_RUN_SLICE_SECONDS`` and enqueues its successor while
the rule is active; the sweeper every worker runs re-enqueues an active rule nobody reports on.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from botocore.exceptions import BotoCoreError
from django.db import connection, transaction
from django.db.models import F
from django.utils import timezone

from bulkwrites.conf import app_settings
from bulkwrites.dynamo import client as dynamo_client
from bulkwrites.dynamo import ratelimit
from bulkwrites.dynamo.errors import CODE_UNPROCESSED, ENDPOINT_CODES, RETRYABLE_CODES, ErrorInfo
from bulkwrites.dynamo.items import KeySchema
from bulkwrites.dynamo.record_writes import RecordOutcome, TargetKey, write_records
from bulkwrites.dynamo.streams import LATEST, ShardReader, StreamError, describe_stream
from bulkwrites.dynamo.writer import BatchWriter, WriterPolicy
from bulkwrites.models import (
    StreamFailure,
    StreamFailureStatus,
    StreamRule,
    StreamRuleStatus,
    StreamShard,
    StreamStartPosition,
)
from bulkwrites.services import dispatch, shutdown
from bulkwrites.services.running import JOB_RATE_POLICY, hands_over
from bulkwrites.services.streams.rules import enqueue_consume, rate_scope, resolve_callable, rule_mapping

logger = logging.getLogger(__name__)

CONCURRENCY = 8  # calls in flight per batch of records
IDLE_POLL_SECONDS = 1.0  # a shard with nothing new is read again after this (AWS: a few GetRecords/s a shard)
UNSETTLED_PAUSE_SECONDS = 1.0  # after a batch whose writes were throttled beyond the writer's retries
SHARD_SYNC_SECONDS = 60.0  # DescribeStream at least this often, to find the children of split shards
WATCH_SECONDS = 0.5  # how often the watcher thread looks for pause/fail (and renews leases when due)
HEARTBEAT_SECONDS = 5.0
UNREACHABLE_PAUSE_SECONDS = 5.0  # before the next RQ job tries a stream or table that did not answer
RATE_HALF_LIFE_SECONDS = 20.0  # of the records/s average shown per shard
CODE_TRIMMED = "RecordsTrimmed"
CODE_SHARD_GONE = "ShardTrimmed"
# Failures that are not the record's fault: read again later rather than written to the ledger.
_NOT_THE_RECORDS_FAULT = frozenset(RETRYABLE_CODES | ENDPOINT_CODES | {CODE_UNPROCESSED, "Stopped"})


@dataclass
class ConsumeReport:
    records: int = 0
    writes_succeeded: int = 0
    writes_failed: int = 0
    failures_recorded: int = 0
    batches: int = 0
    caught_up: bool = False
    shards_held: int = 0  # the most shards this pass held at once
    stopped_by: str = ""  # budget, shutdown, caught_up, a status change (paused...), fatal, leased, unreachable
    error: str = ""

    def line(self, name: str) -> str:
        return (
            f"stream {name}: {self.records} records, {self.writes_succeeded} writes succeeded, "
            f"{self.writes_failed} failed"
        )


def stream_rule_work(rule_id: int, *, worker: str) -> str:
    """One RQ job's share: consume for a time slice, then hand over to a fresh RQ job."""
    rule = StreamRule.objects.filter(pk=rule_id).first()
    if rule is None or rule.status != StreamRuleStatus.ACTIVE:
        return f"stream rule {rule_id}: nothing to do ({rule.status if rule else 'deleted'})"
    report = stream_rule_consume(rule, worker=worker)
    # Hand over while the rule is active; but an RQ job that never got a shard (another worker
    # holds them all) bows out, or duplicates would multiply. The sweeper steps in if that
    # worker dies. After a transient error the successor starts after a pause, not at once.
    if report.stopped_by == "unreachable":
        time.sleep(UNREACHABLE_PAUSE_SECONDS)
    handover = report.stopped_by == "unreachable" or (hands_over(report.stopped_by) and report.shards_held > 0)
    if handover and StreamRule.objects.status_of(rule_id) == StreamRuleStatus.ACTIVE:
        enqueue_consume(rule_id)
    return f"{report.line(rule.name)}; stopped by {report.stopped_by}"


class RuleWatch:
    """On its own thread and connection: notices pause/fail, renews the worker's leases, heartbeats.

    The writer threads only read a flag; the loop that writes never waits on these queries.
    """

    def __init__(self, rule: StreamRule, worker: str, lease: timedelta) -> None:
        self.rule_id = rule.pk
        self.status = rule.status
        self.worker = worker
        self.lease = lease
        self.reason = ""
        self._stop = threading.Event()
        self._done = threading.Event()
        self._renew_every = min(lease.total_seconds() / 3, HEARTBEAT_SECONDS)
        self._thread = threading.Thread(target=self._run, name="bulkwrites-stream-watch", daemon=True)
        self._thread.start()

    def should_stop(self) -> bool:
        if not self._stop.is_set() and shutdown.requested():
            self.reason = shutdown.REASON
            self._stop.set()
        return self._stop.is_set()

    def close(self) -> None:
        self._done.set()
        self._thread.join()

    def _run(self) -> None:
        renewed = 0.0
        try:
            while not self._done.wait(WATCH_SECONDS):
                status = StreamRule.objects.status_of(self.rule_id)
                if status != self.status:
                    self.reason = str(status or "deleted")
                    self._stop.set()
                now = time.monotonic()
                if now - renewed >= self._renew_every:
                    StreamShard.objects.renew(self.rule_id, worker=self.worker, lease=self.lease)
                    StreamRule.objects.filter(pk=self.rule_id).update(last_activity_at=timezone.now())
                    renewed = now
        except Exception:  # the loop goes on without it; leases then expire and the shards move on
            logger.exception("stream rule %s: the watcher stopped", self.rule_id)
        finally:
            connection.close()


@dataclass
class _ShardState:
    reader: ShardReader | None = None
    pending: list[dict[str, Any]] = field(default_factory=list)  # read, not yet settled: written again first
    end_seen: bool = False  # the reader reached the end of a closed shard
    next_read_at: float = 0.0
    last_empty: bool = False
    rate: float = 0.0
    rate_at: float | None = None
    idle_written_at: float = 0.0


class _Fatal(Exception):
    def __init__(self, error: ErrorInfo) -> None:
        super().__init__(error.message)
        self.error = error


class _Unreachable(Exception):
    pass


def rule_to_requests(rule: StreamRule) -> Callable[[Mapping[str, Any]], list[Mapping[str, Any]]]:
    """What one of the rule's records becomes: its mapping, then its callable; other events: nothing."""
    mapping = rule_mapping(rule)
    hook = resolve_callable(rule.callable_path) if rule.callable_path else None
    wanted = frozenset(rule.events)

    def to_requests(record: Mapping[str, Any]) -> list[Mapping[str, Any]]:
        if record.get("eventName") not in wanted:
            return []
        requests = mapping.requests(record)
        if hook is None:
            return list(requests)
        return list(hook(record, requests) or ())

    return to_requests


@dataclass
class RuleConsumer:
    """One worker's pass over a rule's stream (see the module's docstring)."""

    rule: StreamRule
    worker: str
    writer: BatchWriter
    streams: Any
    watch: RuleWatch
    sleep: Callable[[float], None] = time.sleep
    report: ConsumeReport = field(default_factory=ConsumeReport)
    shards: dict[int, _ShardState] = field(default_factory=dict)
    synced_at: float = -math.inf

    def __post_init__(self) -> None:
        self.to_requests = rule_to_requests(self.rule)
        self.target_key = TargetKey(KeySchema.from_json(self.rule.target_key_schema))
        self.records_per_read = app_settings().stream_records_per_read

    # --- shards ------------------------------------------------------------------------

    def sync_shards(self) -> None:
        """Know every shard of the stream (new ones start at TRIM_HORIZON, except at a LATEST rule's start)."""
        info = describe_stream(self.streams, self.rule.stream_arn)
        known = dict(StreamShard.objects.filter(rule=self.rule).values_list("shard_id", "finished"))
        first_sync = not known
        from_latest = first_sync and self.rule.start_position == StreamStartPosition.LATEST
        new = [
            StreamShard(
                rule=self.rule,
                shard_id=s.shard_id,
                parent_shard_id=s.parent_shard_id or "",
                starting_sequence=s.starting_sequence,
                ending_sequence=s.ending_sequence or "",
                initial_position=LATEST if from_latest else StreamStartPosition.TRIM_HORIZON,
                # A LATEST rule has nothing to read in shards closed before it started.
                finished=from_latest and s.closed,
            )
            for s in info.shards
            if s.shard_id not in known
        ]
        StreamShard.objects.bulk_create(new, ignore_conflicts=True)
        for shard in info.shards:
            if shard.closed:
                StreamShard.objects.filter(rule=self.rule, shard_id=shard.shard_id, ending_sequence="").update(
                    ending_sequence=shard.ending_sequence or ""
                )
        listed = {s.shard_id for s in info.shards}
        for shard_id, finished in known.items():
            if not finished and shard_id not in listed:
                self._shard_trimmed_away(shard_id)
        self.synced_at = time.monotonic()

    def _shard_trimmed_away(self, shard_id: str) -> None:
        """A shard the stream no longer lists (past its retention) before we read it all: say so."""
        with transaction.atomic():
            updated = StreamShard.objects.filter(rule=self.rule, shard_id=shard_id, finished=False).update(
                finished=True, leased_by="", lease_expires_at=None
            )
            if updated:
                StreamFailure.objects.create(
                    rule=self.rule,
                    shard_id=shard_id,
                    sequence_number="",
                    error_code=CODE_SHARD_GONE,
                    error_message=f"shard {shard_id} left the stream (24-hour retention) before it was read to its end",
                )
                logger.error(
                    "stream rule %s: shard %s was trimmed before it was read to its end", self.rule.pk, shard_id
                )

    # --- the loop ----------------------------------------------------------------------

    def run(self, *, budget_seconds: float, until_caught_up: bool, wait_for_leases: float) -> ConsumeReport:
        started = time.monotonic()
        blocked_since: float | None = None
        self.sync_shards()
        while True:
            if self.watch.should_stop():
                self.report.stopped_by = self.watch.reason
                return self.report
            if not until_caught_up and time.monotonic() - started >= budget_seconds:
                self.report.stopped_by = "budget"
                return self.report
            if time.monotonic() - self.synced_at >= SHARD_SYNC_SECONDS:
                self.sync_shards()
            held = StreamShard.objects.claim(self.rule.pk, worker=self.worker, lease=_lease())
            self.report.shards_held = max(self.report.shards_held, len(held))
            finished_one = False
            for shard in held:
                state = self.shards.setdefault(shard.pk, _ShardState())
                if time.monotonic() < state.next_read_at or self.watch.should_stop():
                    continue
                finished_one |= self.consume_batch(shard, state)
            if finished_one:
                self.sync_shards()  # its children are readable now
                continue
            if until_caught_up:
                open_shards = list(StreamShard.objects.open().filter(rule=self.rule))
                mine = {s.pk for s in held}
                if all(
                    s.pk in mine and self.shards[s.pk].last_empty and not self.shards[s.pk].pending for s in open_shards
                ):
                    self.report.caught_up = True
                    self.report.stopped_by = "caught_up"
                    return self.report
                others = [s for s in open_shards if s.leased_by and s.leased_by != self.worker]
                if others:
                    blocked_since = blocked_since or time.monotonic()
                    if time.monotonic() - blocked_since > wait_for_leases:
                        self.report.stopped_by = "leased"
                        self.report.error = (
                            f"shard {others[0].shard_id} is leased by {others[0].leased_by} (a worker consuming "
                            "this rule); pause the rule or stop that worker to run it here"
                        )
                        return self.report
                else:
                    blocked_since = None
            waits = [s.next_read_at for s in self.shards.values()]
            pause = min(waits, default=time.monotonic() + IDLE_POLL_SECONDS) - time.monotonic()
            if pause > 0:
                self.sleep(min(pause, IDLE_POLL_SECONDS))

    def consume_batch(self, shard: StreamShard, state: _ShardState) -> bool:
        """Write the shard's next records (those left unsettled first), record them; True once it is finished."""
        trimmed: str | None = None
        if state.pending:
            records = state.pending
        else:
            if state.reader is None:
                state.reader = ShardReader(
                    self.streams,
                    self.rule.stream_arn,
                    shard.shard_id,
                    after=shard.checkpoint or None,
                    initial=shard.initial_position,
                    iterator=_resume_iterator(shard),
                    limit=self.records_per_read,
                )
            batch = state.reader.read()
            records, trimmed, state.end_seen = batch.records, batch.trimmed, batch.end_of_shard
            state.last_empty = not records
            if not records:
                state.next_read_at = time.monotonic() + IDLE_POLL_SECONDS
                return self._record_idle(shard, state, trimmed)
        result = write_records(
            records,
            self.to_requests,
            writer=self.writer,
            key=self.target_key,
            concurrency=CONCURRENCY,
            label=lambda i: f"stream rule {self.rule.pk} record {records[i]['dynamodb'].get('SequenceNumber')}",
            stopped_because=("Stopped", f"the rule is now {self.watch.reason or 'stopped'}"),
        )
        self.report.batches += 1
        if result.fatal is not None:
            if result.fatal.code in ENDPOINT_CODES:  # tried again later, as for a network blip
                raise _Unreachable(result.fatal.message)
            raise _Fatal(result.fatal)
        settled = _settled_prefix(result.outcomes)
        finished = state.end_seen and settled == len(records)
        if not self._record_batch(shard, state, records, result.outcomes[:settled], trimmed, finished=finished):
            self.shards[shard.pk] = _ShardState()  # the lease is gone: another worker reads from the checkpoint
            return False
        state.pending = records[settled:]
        state.last_empty = False
        state.next_read_at = time.monotonic() + (UNSETTLED_PAUSE_SECONDS if state.pending else 0.0)
        return finished

    def _record_batch(
        self,
        shard: StreamShard,
        state: _ShardState,
        batch: list[dict[str, Any]],
        outcomes: list[RecordOutcome],
        trimmed: str | None,
        *,
        finished: bool,
    ) -> bool:
        """In one transaction, while the lease holds: failures to the ledger, counters, checkpoint."""
        records = batch[: len(outcomes)]
        failures = [self._failure(shard, records[o.index], o) for o in outcomes if not o.succeeded]
        if trimmed:
            failures.insert(0, self._trim_failure(shard, trimmed))
        succeeded = sum(o.requests for o in outcomes if o.succeeded)
        failed = sum(max(1, o.requests) for o in outcomes if not o.succeeded)
        fields: dict[str, Any] = {
            "records_read": F("records_read") + len(records),
            "records_failed": F("records_failed") + len(failures),
            "writes_succeeded": F("writes_succeeded") + succeeded,
            "writes_failed": F("writes_failed") + failed,
            "records_per_second": self._rate(state, len(records)),
            "caught_up": False,
            "last_read_at": timezone.now(),
            "finished": finished,
        }
        if records:
            created = records[-1]["dynamodb"].get("ApproximateCreationDateTime")
            fields.update(checkpoint=records[-1]["dynamodb"]["SequenceNumber"], last_checkpoint_at=timezone.now())
            if isinstance(created, int | float):
                fields["last_record_at"] = datetime.fromtimestamp(created, tz=UTC)
                fields["lag_seconds"] = max(0.0, time.time() - created)
        if finished:
            fields.update(leased_by="", lease_expires_at=None)
        with transaction.atomic():
            if not StreamShard.objects.checkpoint(shard.pk, worker=self.worker, **fields):
                logger.warning("stream rule %s: lost the lease of %s; another worker goes on", self.rule.pk, shard)
                return False
            StreamFailure.objects.bulk_create(failures)
        self.report.records += len(records)
        self.report.writes_succeeded += succeeded
        self.report.writes_failed += failed
        self.report.failures_recorded += len(failures)
        return True

    def _record_idle(self, shard: StreamShard, state: _ShardState, trimmed: str | None) -> bool:
        """Nothing new: say so on the page now and then (and at once when the shard ends)."""
        now = time.monotonic()
        keep_iterator = not shard.checkpoint and shard.initial_position == LATEST and state.reader is not None
        if not (state.end_seen or trimmed or keep_iterator) and now - state.idle_written_at < HEARTBEAT_SECONDS:
            return False
        state.idle_written_at = now
        fields: dict[str, Any] = {
            "caught_up": True,
            "last_read_at": timezone.now(),
            "records_per_second": self._rate(state, 0),
        }
        if keep_iterator and state.reader is not None:
            fields.update(resume_iterator=state.reader.iterator or "", resume_iterator_at=timezone.now())
        if state.end_seen:
            fields.update(finished=True, leased_by="", lease_expires_at=None)
        with transaction.atomic():
            if not StreamShard.objects.checkpoint(shard.pk, worker=self.worker, **fields):
                self.shards[shard.pk] = _ShardState()
                return False
            if trimmed:
                StreamFailure.objects.bulk_create([self._trim_failure(shard, trimmed)])
        return state.end_seen

    def _rate(self, state: _ShardState, records: int) -> float:
        now = time.monotonic()
        if state.rate_at is None:
            state.rate_at = now
            return state.rate
        elapsed = max(now - state.rate_at, 1e-3)
        weight = 1 - math.exp(-elapsed * math.log(2) / RATE_HALF_LIFE_SECONDS)
        state.rate += weight * (records / elapsed - state.rate)
        state.rate_at = now
        return round(state.rate, 3)

    def _failure(self, shard: StreamShard, record: Mapping[str, Any], outcome: RecordOutcome) -> StreamFailure:
        change = record.get("dynamodb") or {}
        return StreamFailure(
            rule=self.rule,
            shard_id=shard.shard_id,
            sequence_number=str(change.get("SequenceNumber") or ""),
            event_name=str(record.get("eventName") or ""),
            keys=change.get("Keys") or {},
            record=dict(record),
            error_code=outcome.error_code[:128],
            error_message=outcome.error_message,
        )

    def _trim_failure(self, shard: StreamShard, message: str) -> StreamFailure:
        return StreamFailure(
            rule=self.rule,
            shard_id=shard.shard_id,
            sequence_number=shard.checkpoint,
            error_code=CODE_TRIMMED,
            error_message=message,
        )


ITERATOR_FRESH_SECONDS = 14 * 60  # DynamoDB Streams' iterators expire after 15 minutes


def _resume_iterator(shard: StreamShard) -> str | None:
    """A LATEST shard's kept iterator, while it is fresh and no checkpoint has replaced it."""
    if shard.checkpoint or not shard.resume_iterator or shard.resume_iterator_at is None:
        return None
    if (timezone.now() - shard.resume_iterator_at).total_seconds() > ITERATOR_FRESH_SECONDS:
        return None  # expired: the reader starts at LATEST again (records in between are not this rule's)
    return shard.resume_iterator


def _settled_prefix(outcomes: list[RecordOutcome]) -> int:
    """How many records, from the first, have a final outcome (success, or a failure of their own)."""
    for position, outcome in enumerate(outcomes):
        if not outcome.succeeded and (not outcome.settled or outcome.error_code in _NOT_THE_RECORDS_FAULT):
            return position
    return len(outcomes)


def _lease() -> timedelta:
    return timedelta(seconds=app_settings().lease_seconds)


def stream_rule_consume(
    rule: StreamRule,
    *,
    worker: str,
    budget_seconds: float | None = None,
    until_caught_up: bool = False,
    wait_for_leases: float | None = None,
    client: Any = None,
    streams_client: Any = None,
    policy: WriterPolicy | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> ConsumeReport:
    """Consume the rule's stream for ``budget_seconds`` (a worker's time slice), or with
    ``until_caught_up`` until every open shard returns no new record (the CLI's foreground run)."""
    settings = app_settings()
    budget = settings.run_slice_seconds if budget_seconds is None else budget_seconds
    redis = dispatch.redis_connection()
    scope = rate_scope(rule.pk)
    # The cap lives in Redis so every worker of the rule shares it; the rule row is the truth.
    limiter = ratelimit.JobRateLimiter(redis, scope, sleep=sleep, policy=JOB_RATE_POLICY)
    limiter.ensure_cap(rule.rate_limit_wcu)
    watch = RuleWatch(rule, worker, _lease())
    writer = BatchWriter(
        client or dynamo_client.make_client(for_writing=True, max_connections=CONCURRENCY),
        rule.target_table,
        policy=policy,
        sleep=sleep,
        should_stop=watch.should_stop,
        limiter=limiter,
        endpoint=dynamo_client.endpoint_label(),
    )
    consumer = RuleConsumer(
        rule=rule,
        worker=worker,
        writer=writer,
        streams=streams_client or dynamo_client.make_streams_client(),
        watch=watch,
        sleep=sleep,
    )
    report = consumer.report
    try:
        consumer.run(
            budget_seconds=budget,
            until_caught_up=until_caught_up,
            wait_for_leases=settings.lease_seconds + 5 if wait_for_leases is None else wait_for_leases,
        )
    except _Fatal as exc:
        report.stopped_by, report.error = "fatal", f"{exc.error.code}: {exc.error.message}"
        if rule.fail(exc.error.code, exc.error.message):
            logger.error("stream rule %s failed: %s", rule.pk, report.error)
    except StreamError as exc:
        if exc.retryable:
            report.stopped_by, report.error = "unreachable", f"{exc.code}: {exc.message}"
            logger.warning("stream rule %s: %s; trying again later", rule.pk, report.error)
        else:
            report.stopped_by, report.error = "fatal", f"{exc.code}: {exc.message}"
            if rule.fail(exc.code, exc.message):
                logger.error("stream rule %s failed: %s", rule.pk, report.error)
    except (_Unreachable, BotoCoreError, ConnectionError) as exc:
        report.stopped_by, report.error = "unreachable", str(exc)
        logger.warning("stream rule %s: %s; trying again later", rule.pk, exc)
    finally:
        watch.close()
        StreamShard.objects.release(rule.pk, worker=worker)
        limiter.flush()
    return report


# --- retrying the failed-writes ledger -------------------------------------------------------

RETRY_CHUNK = 1000


def stream_failures_retry(rule_id: int, *, client: Any = None, sleep: Callable[[float], None] = time.sleep) -> str:
    """Map the rule's queued failures again (with its mapping as it is now) and write them."""
    rule = StreamRule.objects.filter(pk=rule_id).first()
    if rule is None:
        return f"stream rule {rule_id}: deleted"
    redis = dispatch.redis_connection()
    limiter = ratelimit.JobRateLimiter(redis, rate_scope(rule.pk), sleep=sleep, policy=JOB_RATE_POLICY)
    limiter.ensure_cap(rule.rate_limit_wcu)
    writer = BatchWriter(
        client or dynamo_client.make_client(for_writing=True, max_connections=CONCURRENCY),
        rule.target_table,
        sleep=sleep,
        limiter=limiter,
        endpoint=dynamo_client.endpoint_label(),
    )
    to_requests = rule_to_requests(rule)
    target_key = TargetKey(KeySchema.from_json(rule.target_key_schema))
    written = failed = 0
    last_id = 0
    while True:
        chunk = list(StreamFailure.objects.retrying().filter(rule=rule, pk__gt=last_id).order_by("pk")[:RETRY_CHUNK])
        if not chunk:
            break
        last_id = chunk[-1].pk
        result = write_records(
            [f.record for f in chunk],
            to_requests,
            writer=writer,
            key=target_key,
            concurrency=CONCURRENCY,
            label=_retry_label(rule.pk, [f.pk for f in chunk]),
        )
        for failure, outcome in zip(chunk, result.outcomes, strict=True):
            StreamFailure.objects.record_retry(
                failure.pk, succeeded=outcome.succeeded, code=outcome.error_code[:128], message=outcome.error_message
            )
            written += outcome.succeeded
            failed += not outcome.succeeded
        if result.fatal is not None:
            break
    limiter.flush()
    left = StreamFailure.objects.retrying().filter(rule=rule).update(status=StreamFailureStatus.FAILED)
    return f"stream rule {rule.name}: {written} retried writes succeeded, {failed} failed, {left} not attempted"


def _retry_label(rule_id: int, failure_ids: list[int]) -> Callable[[int], str]:
    return lambda index: f"stream rule {rule_id} retry of failure {failure_ids[index]}"


# --- the sweeper ---------------------------------------------------------------------------


def recover_stalled_stream_rules() -> list[int]:
    """Re-enqueue active rules nobody is consuming (a killed worker, a lost RQ job, a flushed Redis).

    Stalled: no worker reported on the rule for ``STALL_SECONDS`` and none of its shards is under
    a live lease. Only this worker's queue; duplicates are harmless (shards are leased).
    """
    stall = timedelta(seconds=app_settings().stall_seconds)
    now = timezone.now()
    recovered = []
    for rule in StreamRule.objects.stalled(older_than=stall).in_queue(dispatch.current_queue()):
        if StreamShard.objects.under_live_lease().filter(rule=rule).exists():
            continue
        touched = StreamRule.objects.filter(pk=rule.pk, last_activity_at=rule.last_activity_at).update(
            last_activity_at=now
        )
        if touched:
            logger.warning("stream rule %s: nobody consumed it since %s; re-enqueued", rule.pk, rule.last_activity_at)
            enqueue_consume(rule.pk)
            recovered.append(rule.pk)
    return recovered
