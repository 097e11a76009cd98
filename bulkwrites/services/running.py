"""Running a job: claim a slice, hand its pending items to the writer, record the outcomes.

Several workers can serve one job: each claims one slice at a time with a lease
(``SELECT ... FOR UPDATE SKIP LOCKED``). A worker killed mid-slice leaves its lease to
expire; the slice is then claimed again and its still-pending items are sent again (puts
and deletes are idempotent), while outcomes are recorded only for items still pending, so
nothing is counted twice.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol, Self, cast

from django.db import connection
from django.db.models import OuterRef, TextField, Value
from django.utils import timezone

from bulkwrites.conf import app_settings
from bulkwrites.dependencies import DATABASE_DOWN, REDIS_DOWN, retry_database
from bulkwrites.dynamo import client as dynamo_client
from bulkwrites.dynamo import ratelimit
from bulkwrites.dynamo.backoff import Backoff
from bulkwrites.dynamo.batching import chunk_requests
from bulkwrites.dynamo.errors import ErrorInfo
from bulkwrites.dynamo.items import Item as DynamoItem
from bulkwrites.dynamo.writer import BatchResult, BatchWriter, CallStats, Outcome, WriteRequest, WriterPolicy
from bulkwrites.models import Item, Job, JobStatus, Operation, Slice, SliceRun, payload_of
from bulkwrites.services import dispatch, notify, shutdown

logger = logging.getLogger(__name__)

FLUSH_OUTCOMES = 250  # record at least this often (items), ...
FLUSH_SECONDS = 0.5  # ... or this often (seconds), whichever comes first
# A recorder that fell behind records everything already queued in one statement, up to this many
# outcomes. Each statement costs a round trip and then, against 16 call threads, up to 5 ms of
# waiting for the GIL: at 250 outcomes a statement, that capped one worker at ~9,000 outcomes/s.
FLUSH_MAX_OUTCOMES = 5000
# The rate controller's constants (ratelimit.RatePolicy) follow the standard designs it is
# built from; make bench's capacity and chaos ways measure them.
JOB_RATE_POLICY = ratelimit.RatePolicy()
CONTROL_POLL_SECONDS = 0.1  # how often a running writer looks for cancel/pause (a PK lookup)
CAP_REFRESH_SECONDS = 5.0  # how often the ledger's cap is written to Redis again (a flushed Redis forgets it)


# A run that found the job's `workers` runs already under way stops before it starts: one enqueued
# in place of a worker that died (`claim_slice`) while another replacement was already running.
STAFFED = "staffed"


@dataclass
class RunReport:
    slices: int = 0
    items: int = 0
    stopped_by: str = ""  # "", "cancelled", "paused", "fatal", "budget", "shutdown", STAFFED
    finished: bool = False

    @property
    def hands_over(self) -> bool:
        return hands_over(self.stopped_by)


def hands_over(stopped_by: str) -> bool:
    """A run (a job's, a verification's, a stream rule's) that stopped with work left and nobody
    having stopped it: its time slice ran out, or its worker was asked to stop. Its successor is
    enqueued at once."""
    return stopped_by in ("budget", shutdown.REASON)


class RunControl:
    """Tells calling threads to stop once the run's status is no longer an active one.

    ``read()`` gives the run's (status, rate cap) row, or None once it is deleted. Only the
    calling thread touches the database (``poll``); the threads making calls read a flag.
    ``on_cap`` is told the ledger's cap when it changes and every ``CAP_REFRESH_SECONDS``.
    """

    def __init__(self, read: Callable[[], tuple[str, float | None] | None], active: Sequence[str]) -> None:
        self.read = read
        self.active = tuple(active)
        self.stop_reason = ""
        self.on_cap: Callable[[float | None], None] | None = None  # told the ledger's cap, now and then
        self._stop = threading.Event()
        self._polled_at = 0.0
        self._cap_sent_at = -CAP_REFRESH_SECONDS
        self._cap: float | None = None

    def poll(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._polled_at < CONTROL_POLL_SECONDS:
            return
        self._polled_at = now
        try:
            row = self.read()
        except DATABASE_DOWN:
            # PostgreSQL is away: the calls go on (the recorder keeps their outcomes until it is
            # back), and the next poll asks again on a new connection.
            connection.close()
            return
        status, cap = row if row is not None else (None, None)
        if self.on_cap is not None and (cap != self._cap or now - self._cap_sent_at >= CAP_REFRESH_SECONDS):
            self._cap, self._cap_sent_at = cap, now
            self.on_cap(cap)
        # Calls go on only while a worker may work on the run: an operator paused or cancelled
        # it, or another worker failed it.
        if status not in self.active:
            self.stop_reason = str(status or "deleted")
            self._stop.set()

    def should_stop(self) -> bool:
        if not self._stop.is_set() and shutdown.requested():
            self.stop_reason = shutdown.REASON
            self._stop.set()
        return self._stop.is_set()


class JobControl(RunControl):
    """Tells writer threads to stop when an operator cancels or pauses the job."""

    def __init__(self, job_id: int) -> None:
        super().__init__(
            lambda: Job.objects.filter(pk=job_id).values_list("status", "rate_limit_wcu").first(), JobStatus.active()
        )
        self.job_id = job_id


def job_run(
    job_id: int,
    *,
    worker: str,
    client: Any = None,
    sleep: Callable[[float], None] = time.sleep,
    budget_seconds: float | None = None,
) -> RunReport:
    """Work on a job for up to ``budget_seconds``; the caller re-enqueues if it is not done."""
    report = RunReport()
    budget = app_settings().run_slice_seconds if budget_seconds is None else budget_seconds
    deadline = time.monotonic() + budget
    job = retry_database(lambda: Job.objects.filter(pk=job_id).first(), what="loading the job")
    if job is not None and job.workers <= retry_database(
        lambda: Slice.objects.holders(job_id, other_than=worker), what="counting the job's runs"
    ):
        report.stopped_by = STAFFED
        return report
    if job is None or not retry_database(job.claim, what="starting a run"):
        report.stopped_by = "inactive"
        return report
    control = JobControl(job_id)
    redis = dispatch.redis_connection()
    # The cap lives in Redis so every worker on every machine shares it; the ledger is the truth.
    limiter = ratelimit.JobRateLimiter(redis, dispatch.rate_scope(job_id), sleep=sleep, policy=JOB_RATE_POLICY)
    limiter.ensure_cap(job.rate_limit_wcu)
    control.on_cap = limiter.ensure_cap
    if client is None:
        client = dynamo_client.make_client(for_writing=True, max_connections=job.concurrency)
    writer = BatchWriter(
        client,
        job.table_name,
        policy=WriterPolicy(max_attempts=job.max_attempts, backoff=Backoff(base=job.backoff_base, cap=job.backoff_cap)),
        sleep=sleep,
        should_stop=control.should_stop,
        limiter=limiter,
        endpoint=job.endpoint or dynamo_client.endpoint_label(),
    )
    with heap_frozen():
        return _run_slices(job, writer, control, worker=worker, deadline=deadline, report=report, limiter=limiter)


@contextlib.contextmanager
def heap_frozen() -> Iterator[None]:
    """Keep the objects that exist before a run (Django, botocore's models) out of the collector's way.

    A run allocates a lot (a call's request, answer and outcomes), so the cyclic collector runs
    often, and its full collections walked every object of the process, a few hundred thousand
    that a run never frees (measured: 0.2-0.5 s of a 50,000-item run, under the GIL). Frozen, they
    are left out; afterwards they are ordinary objects again. A forked RQ work horse also keeps
    them shared with its parent. Runs in other threads at the same time only unfreeze early, and
    objects a process froze itself before are walked again afterwards (no more than that).
    """
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


@dataclass
class SliceProgress:
    """One claimed slice while its batches are in flight; becomes its SliceRun row."""

    job_slice: Slice
    items_sent: int
    started_at: datetime
    outstanding: int = 0  # batches handed to the writer and not finished yet
    all_submitted: bool = False
    closed: bool = False
    succeeded: int = 0
    failed: int = 0
    stats: CallStats = field(default_factory=CallStats)
    fatal: ErrorInfo | None = None
    stopped: bool = False

    def add(self, result: BatchResult) -> None:
        ok = sum(1 for o in result.outcomes if o.succeeded)
        self.succeeded += ok
        self.failed += len(result.outcomes) - ok
        self.stats.add(result.stats)
        self.fatal = self.fatal or result.fatal
        self.stopped = self.stopped or result.stopped

    @property
    def complete(self) -> bool:
        """Every item of the slice has an outcome (or had one before this claim)."""
        return self.all_submitted and not (self.fatal or self.stopped)


class Pass(Protocol):
    """What :func:`stream_slices` keeps on each slice while its batches are in flight."""

    outstanding: int  # batches handed out and not finished yet
    all_submitted: bool
    closed: bool


@dataclass
class Streamed[P, Res]:
    result: Res  # the writer's or reader's summed result
    passes: list[P]  # every slice started, in order
    drained: bool  # no open slice was left to claim


def stream_slices[S, R, P: Pass, Res](
    prefetcher: SlicePrefetcher[S, R],
    *,
    start_pass: Callable[[S, list[R]], P],
    batches_of: Callable[[list[R]], Iterable[list[R]]],
    send: Callable[[Iterator[tuple[P, list[R]]], Callable[[P, Res], None]], Res],
    on_batch: Callable[[P, Res], None],
    close: Callable[[P], None],
    control: RunControl,
    deadline: float,
) -> Streamed[P, Res]:
    """Stream the batches of one slice after another to ``send``, with no drain in between.

    The next slice is claimed and read on the prefetcher's thread while the current one is
    worked on, and its batches go out as soon as call slots free up; ``close(pass)`` is called
    once every batch of a slice has come back (and, after the end, for slices left unfinished:
    the caller tells them apart by its own pass record). ``on_batch`` sees each finished batch
    in the calling thread. Waiting for each slice to drain, then claiming and reading the next,
    left the calls idle ~30 % of the time (measured: call slots 55-68 % busy at 1,000-item slices).
    Write jobs (BatchWriter) and verifications (BatchReader) both run this way.
    """
    started: list[P] = []
    drained = False

    def close_once(progress: P) -> None:
        progress.closed = True
        close(progress)

    def batches() -> Iterator[tuple[P, list[R]]]:
        nonlocal drained
        while time.monotonic() < deadline and not control.should_stop():
            entry = prefetcher.next()
            if entry is None:
                drained = True
                return
            claimed, requests = entry
            progress = start_pass(claimed, requests)
            started.append(progress)
            for batch in batches_of(requests):
                progress.outstanding += 1
                yield progress, batch
            progress.all_submitted = True
            if progress.outstanding == 0:
                close_once(progress)

    def on_result(progress: P, result: Res) -> None:
        progress.outstanding -= 1
        on_batch(progress, result)
        if progress.all_submitted and progress.outstanding == 0:
            close_once(progress)
        control.poll()

    control.poll(force=True)
    try:
        result = send(batches(), on_result)
    finally:
        prefetcher.close()  # no claim after this point, so the caller's release is the last word
    for progress in started:
        if not progress.closed:
            close_once(progress)
    return Streamed(result, started, drained)


def _run_slices(
    job: Job,
    writer: BatchWriter,
    control: JobControl,
    *,
    worker: str,
    deadline: float,
    report: RunReport,
    limiter: ratelimit.JobRateLimiter,
) -> RunReport:
    """Write slice after slice (:func:`stream_slices`); a slice is marked done once the
    outcomes of all its items are recorded."""
    prefetcher: SlicePrefetcher[Slice, WriteRequest] = SlicePrefetcher(
        claim=lambda: claim_slice(job, worker=worker),
        read=lambda job_slice: _pending_requests(job, job_slice),
    )
    recorder: OutcomeRecorder[Outcome, CallStats] = OutcomeRecorder(
        record=lambda outcomes, stats: Item.objects.record_outcomes(job.pk, outcomes, stats),
        renew=lambda: Slice.objects.renew(job.pk, worker=worker, lease=lease_duration()),
        close_range=lambda closing: _close_slice(job.pk, closing),
        new_stats=CallStats,
    )

    def close(progress: SliceProgress) -> None:
        recorder.close_slice(progress, stopped_by=_stopped_by(progress, control))

    def on_batch(progress: SliceProgress, batch: BatchResult) -> None:
        progress.add(batch)
        recorder.add(batch.outcomes, batch.stats)

    try:
        streamed = stream_slices(
            prefetcher,
            start_pass=lambda job_slice, requests: SliceProgress(job_slice, len(requests), timezone.now()),
            batches_of=lambda requests: chunk_requests(requests, max_requests=job.batch_size),
            send=lambda batches, on_result: writer.write_batches(
                batches, concurrency=job.concurrency, on_result=on_result
            ),
            on_batch=on_batch,
            close=close,
            control=control,
            deadline=deadline,
        )
    finally:
        try:
            recorder.close()
        finally:
            retry_database(lambda: Slice.objects.release(job.pk, worker=worker), what="releasing leases")
    result, started, drained = streamed.result, streamed.passes, streamed.drained
    limiter.flush()
    report.slices = len(started)
    report.items = len(result.outcomes)
    if result.fatal:
        report.stopped_by = "fatal"
        fatal = result.fatal
        if retry_database(lambda: job.fail(fatal.code, fatal.message), what="failing the job"):
            logger.warning("job %s failed: %s: %s", job.pk, fatal.code, fatal.message)
            notify.job_ended(job)
    elif result.stopped or control.should_stop():
        report.stopped_by = control.stop_reason or "stopped"
    elif not drained:
        report.stopped_by = "budget"
    else:
        report.finished = retry_database(lambda: finish_if_done(job), what="finishing the job")
    return report


def _stopped_by(progress: SliceProgress, control: JobControl) -> str:
    if progress.complete:
        return ""
    if progress.fatal:
        return progress.fatal.code
    return control.stop_reason or "stopped"


def claim_slice(job: Job, *, worker: str) -> Slice | None:
    """The job's next slice, and a run in place of a worker that died holding one.

    A job runs on ``workers`` runs, each handing over to its successor. A worker killed (SIGKILL,
    the OOM killer, a machine lost) hands over nothing: the job went on with one run fewer for the
    rest of its life, as the sweeper steps in only once nobody works on it at all. Measured (two
    workers, calls of 100 ms, one killed 1,000 items into 16,000): the other 15,000 took 70 s, 50 s
    now. The dead run's slice, taken over once its lease ran out, is the sign.
    """
    claimed = Slice.objects.claim(job.pk, worker=worker, lease=lease_duration())
    if claimed is not None and claimed.taken_over_from and job.workers > 1:
        logger.warning(
            "job %s: slice %s taken over from %s, whose lease ran out", job.pk, claimed.pk, claimed.taken_over_from
        )
        try:
            restaff(job)
        except REDIS_DOWN:
            # Not waited for: the slice is claimed and this run goes on (one run short, as before).
            logger.warning("job %s: Redis unreachable, no run enqueued in place of %s", job.pk, claimed.taken_over_from)
    return claimed


def restaff(job: Job, *, queued: dict[int, set[str]] | None = None, also: str = "") -> int:
    """Enqueue the runs the job is short of; how many.

    A job's runs are those holding a live lease (PostgreSQL), those waiting for a worker
    (``dispatch.queued_runs``; ``queued`` when the caller read it for several jobs), and ``also``,
    the caller's own run when it holds no lease yet (after staging). A Redis flushed, or back
    empty, loses the queued ones, and a run killed outright hands over nothing: neither costs the
    job a run now, and no run is enqueued twice (a dead run's two slices, one read ahead, taken
    over one after the other, used to enqueue two replacements). A run between two of those
    states for a moment (started, not yet holding a lease) may be missed: the run enqueued for
    it is a spare, which stops at once (``STAFFED``).
    """
    holding = Slice.objects.holding(job.pk)
    waiting = (dispatch.queued_runs() if queued is None else queued).get(job.pk, set())
    runs = live_runs(holding | {also}, waiting)
    short = job.workers - len(runs)
    if short <= 0:
        return 0
    logger.warning("job %s has %s of its %s runs; %s enqueued", job.pk, len(runs), job.workers, short)
    dispatch.enqueue_run(job.pk, copies=short)
    return short


def live_runs(holding: set[str], waiting: set[str]) -> set[str]:
    """The RQ ids of the runs holding a lease (their lease names) or waiting in the queue (their RQ ids).

    A run's lease name ends with its RQ id (``tasks._worker_name``): one run, whichever side saw it.
    """
    return {name.rsplit(":", 1)[-1] for name in holding if name} | waiting


def lease_duration() -> timedelta:
    return timedelta(seconds=app_settings().lease_seconds)


class SlicePrefetcher[S, R]:
    """Claims and reads the next slice on its own thread and connection, one slice ahead.

    ``claim()`` leases the next slice (None: none left), ``read(slice)`` gives its requests;
    both run on the prefetching thread, retried while PostgreSQL is away. ``next()`` hands over
    the slice read ahead and asks for the one after, so a run holds at most the slice being
    worked on and one more. ``close()`` stops it; slices it claimed and nobody started are
    released by the caller (their items are still pending). Write jobs and verifications use
    it alike.
    """

    def __init__(self, *, claim: Callable[[], S | None], read: Callable[[S], list[R]]) -> None:
        self.claim = claim
        self.read = read
        self._ready: queue.SimpleQueue[tuple[S, list[R]] | BaseException | None] = queue.SimpleQueue()
        self._wanted = threading.Semaphore(1)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bulkwrites-prefetch", daemon=True)
        self._thread.start()

    def next(self) -> tuple[S, list[R]] | None:
        """The next slice and its pending requests, or None when no open slice is left."""
        entry = self._ready.get()
        if isinstance(entry, BaseException):
            raise entry
        if entry is not None:
            self._wanted.release()
        return entry

    def close(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        try:
            while True:
                while not self._wanted.acquire(timeout=0.1):
                    if self._stop.is_set():
                        return
                if self._stop.is_set():
                    return
                claimed = retry_database(self.claim, what="claiming a slice")
                if claimed is None:
                    self._ready.put(None)
                    return
                requests = retry_database(functools.partial(self.read, claimed), what="reading a slice")
                self._ready.put((claimed, requests))
        except BaseException as exc:  # noqa: BLE001 - raised in the dispatching thread by next()
            self._ready.put(exc)
        finally:
            connection.close()  # this thread's own connection


def _pending_requests(job: Job, job_slice: Slice) -> list[WriteRequest]:
    is_put = job.operation == Operation.PUT
    # The payload comes as JSON text (not parsed): it is sent in the call's body as it is.
    rows = (
        job.items.pending()
        .in_positions(job_slice.first_position, job_slice.last_position)
        .order_by("position")
        .annotate(
            item_json=payload_of(OuterRef("job_id"), OuterRef("position"), as_text=True)
            if is_put
            else Value(None, TextField())
        )
        .values_list("id", "key", "item_json", "size", "wire_bytes")
    )
    # The queryset's SQL, run on a plain cursor: Django's row converters and its json.loads per
    # key cost ~3 µs of each item's CPU, on the thread that reads the next slice while the
    # calls share the GIL with it (measured: 9 -> 6 µs an item to read a slice of 1,000).
    sql, params = rows.query.sql_with_params()
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        fetched = cursor.fetchall()
    # Pending items always have a key: rows that could not be read are failed at staging.
    return [
        WriteRequest(pk, _key_from_db(key), None, wire_bytes, size, item_json)
        for pk, key, item_json, size, wire_bytes in fetched
    ]


_scan_json: Callable[[str, int], tuple[Any, int]] = json.JSONDecoder().scan_once  # type: ignore[attr-defined]


def _key_from_db(value: Any) -> DynamoItem:
    """A stored key: PostgreSQL's text of a jsonb object (Django reads jsonb as text), as a dict.

    jsonb's text has no whitespace around the value, so the decoder's scanner reads it without
    ``json.loads``'s two whitespace matches; anything else takes the ordinary way.
    """
    if isinstance(value, str):
        try:
            parsed, end = _scan_json(value, 0)
        except StopIteration:
            return cast(DynamoItem, json.loads(value))
        if end == len(value) and isinstance(parsed, dict):
            return cast(DynamoItem, parsed)
        return cast(DynamoItem, json.loads(value))
    return cast(DynamoItem, value)


class Stats(Protocol):
    """What a recorder sums between flushes: the calls' costs (``CallStats``, ``ReadStats``)."""

    calls: int

    def add(self, other: Self, /) -> None: ...


class OutcomeRecorder[O, T: Stats]:
    """Records a run's outcomes, and closes its slices, on its own thread and connection.

    The dispatch loop only queues outcomes here: waiting ~30 ms for each UPDATE would leave
    the calls idle (measured: a third of a job's time). Outcomes are recorded with one
    statement per flush (``record``), at least every 250 outcomes or 0.5 s (with whatever else is
    queued by then, up to 5,000, when the recorder is behind); the run's slice
    leases are renewed (``renew``) with each flush and at least every third of a lease. A
    slice is closed (``close_range``: marked done, audited) only after its outcomes are
    recorded, in queue order. Each of them waits while PostgreSQL is away. ``close()`` waits
    until everything queued is recorded. Write jobs record ``Outcome``s with ``CallStats``,
    verifications ``Check``s with ``ReadStats``.
    """

    def __init__(
        self,
        *,
        record: Callable[[list[O], T], None],
        renew: Callable[[], object],
        close_range: Callable[[SliceClosing], None],
        new_stats: Callable[[], T],
    ) -> None:
        self.record = record
        self.renew = renew
        self.close_range = close_range
        self.new_stats = new_stats
        self._queue: queue.SimpleQueue[tuple[list[O], T] | SliceClosing | None] = queue.SimpleQueue()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="bulkwrites-recorder", daemon=True)
        self._thread.start()

    def add(self, outcomes: list[O], stats: T) -> None:
        self._raise_if_failed()
        self._queue.put((outcomes, stats))

    def close_slice(self, progress: Any, *, stopped_by: str) -> None:
        self._raise_if_failed()
        self._queue.put(SliceClosing(progress, stopped_by, timezone.now()))

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()
        self._raise_if_failed()

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        outcomes: list[O] = []
        stats = self.new_stats()
        flushed_at = renewed_at = time.monotonic()
        renew_every = app_settings().lease_seconds / 3
        try:
            while True:
                try:
                    entry = self._queue.get(timeout=FLUSH_SECONDS)
                except queue.Empty:
                    entry = ([], self.new_stats())
                if entry is None:
                    break
                if isinstance(entry, SliceClosing):
                    self._flush(outcomes, stats)
                    outcomes, stats, flushed_at = [], self.new_stats(), time.monotonic()
                    retry_database(functools.partial(self.close_range, entry), what="closing a slice")
                    continue
                outcomes.extend(entry[0])
                stats.add(entry[1])
                now = time.monotonic()
                if len(outcomes) >= FLUSH_OUTCOMES or now - flushed_at >= FLUSH_SECONDS:
                    if len(outcomes) < FLUSH_MAX_OUTCOMES and not self._queue.empty():
                        continue  # more is queued already: take it into the same statement
                    if self._flush(outcomes, stats) or now - renewed_at >= renew_every:
                        retry_database(self.renew, what="renewing leases")
                        renewed_at = now
                    outcomes, stats, flushed_at = [], self.new_stats(), now
            self._flush(outcomes, stats)
        except BaseException as exc:  # noqa: BLE001 - handed to the dispatching thread by add()/close()
            self._error = exc
        finally:
            connection.close()  # this thread's own connection

    def _flush(self, outcomes: list[O], stats: T) -> bool:
        if not outcomes and not stats.calls:
            return False
        # Outcomes wait here while PostgreSQL is away; the calls run out of claimed slices soon.
        retry_database(functools.partial(self.record, outcomes, stats), what="recording outcomes")
        return True


@dataclass(frozen=True)
class SliceClosing:
    progress: Any  # the run's own record of the slice (SliceProgress for a write job)
    stopped_by: str
    finished_at: datetime


def _close_slice(job_id: int, closing: SliceClosing) -> None:
    """Mark the slice done (or hand it back, if some of its items were not written) and audit it."""
    progress: SliceProgress = closing.progress
    Slice.objects.close(progress.job_slice.pk, done=progress.complete)
    stats = progress.stats
    SliceRun.objects.create(
        job_id=job_id,
        slice_id=progress.job_slice.pk,
        worker=progress.job_slice.leased_by[:255],
        started_at=progress.started_at,
        finished_at=closing.finished_at,
        items_sent=progress.items_sent,
        succeeded=progress.succeeded,
        failed=progress.failed,
        calls=stats.calls,
        unprocessed=stats.unprocessed,
        throttled_calls=stats.throttled_calls,
        consumed_wcu=stats.consumed_wcu,
        latency_ms=stats.latency_seconds * 1000,
        error_codes=dict(stats.error_codes),
        stopped_by=closing.stopped_by,
    )


def finish_if_done(job: Job) -> bool:
    """Close the job when no slice is open; the conditional UPDATE makes one worker win."""
    if Slice.objects.open().filter(job_id=job.pk).exists():
        return False
    if job.finish():
        logger.info("job %s finished: %s", job.pk, job.status)
        notify.job_ended(job)
        return True
    return False
