"""Stream rules: create one from two tables and a mapping; pause, resume, rate-cap, retry failures.

Each status change is a transition of ``StreamRule`` (``models.STREAM_RULE_TRANSITIONS``: a
conditional UPDATE); workers are asked after the transaction commits, and only rule ids travel
through Redis.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError
from django.core.exceptions import ValidationError
from django.db import transaction

from bulkwrites.conf import app_settings
from bulkwrites.dynamo import client as dynamo_client
from bulkwrites.dynamo.errors import classify
from bulkwrites.dynamo.items import ItemError, KeySchema
from bulkwrites.dynamo.streams import EVENTS, StreamMapping, format_mapping, parse_mapping, view_type_problem
from bulkwrites.models import Operation, StreamFailure, StreamRule, StreamStartPosition
from bulkwrites.services import dispatch
from bulkwrites.services.errors import JobError
from bulkwrites.services.tables import TableError, describe_key_schema

RequestsHook = Callable[[Mapping[str, Any], list[dict[str, Any]]], Iterable[Mapping[str, Any]] | None]

_DOTTED_PATH = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*(:[A-Za-z_]\w*)?")


def rate_scope(rule_id: int) -> str:
    """The rule's key in the shared write-capacity budgets (its own, apart from jobs')."""
    return f"{dispatch.current_queue()}:stream:{rule_id}"


def enqueue_consume(rule_id: int, *, robust: bool = False) -> None:
    """Ask a worker to consume the rule's stream (after the transaction commits; ``robust``: see
    ``dispatch.enqueue_task``)."""
    dispatch.enqueue_task("run_stream_rule", rule_id, description=f"bulkwrites stream rule {rule_id}", robust=robust)


def enqueue_retry(rule_id: int, *, robust: bool = False) -> None:
    dispatch.enqueue_task(
        "retry_stream_failures",
        rule_id,
        job_timeout=3600,
        description=f"bulkwrites stream rule {rule_id}: retry failed writes",
        robust=robust,
    )


# --- creating a rule -------------------------------------------------------------------------


def stream_rule_create(
    *,
    name: str,
    source_table: str,
    target_table: str,
    events: Sequence[str],
    operation: str,
    mapping_text: str = "",
    callable_path: str = "",
    start_position: str = StreamStartPosition.TRIM_HORIZON,
    rate_limit_wcu: float | None = None,
    created_by: Any = None,
    start: bool = True,
) -> StreamRule:
    """A new rule, checked against both tables; consumed at once unless ``start`` is False (paused).

    Refused, with the reason: a source without a stream, a stream whose view type cannot feed the
    mapping, a mapping that does not give the target's key, a callable outside the allowed
    modules, the same table as source and target (each write would come back as a record).
    """
    name = name.strip()
    if not name:
        raise JobError("A stream rule needs a name.")
    if start:
        dispatch.require_queue("consume the rule's stream")
    if StreamRule.objects.filter(name=name).exists():
        raise JobError(f"A stream rule named {name!r} exists already.")
    chosen = [e.strip().upper() for e in events if e.strip()]
    unknown = sorted(set(chosen) - set(EVENTS))
    if unknown or not chosen:
        raise JobError(f"Events are {', '.join(EVENTS)} (at least one), not {', '.join(unknown) or 'none'}.")
    if operation not in Operation.values:
        raise JobError(f"The operation is put or delete, not {operation!r}.")
    if start_position not in StreamStartPosition.values:
        raise JobError(f"The start position is TRIM_HORIZON or LATEST, not {start_position!r}.")
    if source_table == target_table:
        raise JobError("The source and the target are the same table: every write would come back as a record.")
    _check_rate(rate_limit_wcu)
    stream_arn, view_type, source_key = describe_source(source_table)
    try:
        target_key = describe_key_schema(target_table)
    except TableError as exc:
        raise JobError(f"Target table {target_table!r}: {exc.message}") from None
    mapping = check_mapping(
        mapping_text,
        operation=operation,
        events=chosen,
        view_type=view_type,
        source_key=source_key,
        target_key=target_key,
        has_callable=bool(callable_path.strip()),
    )
    if callable_path.strip():
        resolve_callable(callable_path.strip())
    ordered_events = [e for e in EVENTS if e in chosen]
    with transaction.atomic():
        rule = StreamRule.objects.create(
            name=name,
            status="active" if start else "paused",
            source_table=source_table,
            stream_arn=stream_arn,
            stream_view_type=view_type,
            source_key_schema=source_key.to_json(),
            target_table=target_table,
            target_key_schema=target_key.to_json(),
            events=ordered_events,
            operation=operation,
            mapping=format_mapping(mapping.lines),
            callable_path=callable_path.strip(),
            start_position=start_position,
            rate_limit_wcu=rate_limit_wcu,
            queue=dispatch.current_queue(),
            created_by=created_by,
        )
        if start:
            enqueue_consume(rule.pk, robust=True)
    return rule


def describe_source(table_name: str) -> tuple[str, str, KeySchema]:
    """The source table's stream ARN, view type and key; JobError if it has no stream."""
    try:
        table = dynamo_client.reading_client().describe_table(TableName=table_name)["Table"]
    except (ClientError, BotoCoreError, ConnectionError) as exc:
        error = classify(exc, table=table_name, endpoint=dynamo_client.endpoint_label())
        raise JobError(f"Source table {table_name!r}: {error.message}") from None
    spec = table.get("StreamSpecification") or {}
    arn = table.get("LatestStreamArn")
    if not spec.get("StreamEnabled") or not arn:
        raise JobError(
            f"Source table {table_name!r} has no DynamoDB Stream. Enable one (NEW_AND_OLD_IMAGES, or KEYS_ONLY "
            "when the keys are enough) with UpdateTable's StreamSpecification, then add the rule."
        )
    return str(arn), str(spec.get("StreamViewType") or ""), KeySchema.from_describe_table(table)


def check_mapping(
    text: str,
    *,
    operation: str,
    events: Sequence[str],
    view_type: str,
    source_key: KeySchema,
    target_key: KeySchema,
    has_callable: bool = False,
) -> StreamMapping:
    """The rule's mapping, or a JobError saying why it cannot work with these tables and stream."""
    try:
        lines = parse_mapping(text)
    except ItemError as exc:
        raise JobError(f"Mapping: {exc}") from None
    mapping = StreamMapping(operation=operation, lines=tuple(lines), target_key=target_key)
    problem = view_type_problem(view_type, mapping, events, source_key.names)
    if problem:
        raise JobError(f"Mapping: {problem}.")
    if has_callable:
        return mapping  # the callable may build what the lines do not give
    targets = {line.target for line in lines}
    if lines:
        missing = [name for name in target_key.names if name not in targets]
        if missing:
            raise JobError(
                f"Mapping: nothing maps to the target's key attribute {missing[0]!r} "
                f"(target key: {target_key.describe()})."
            )
        if operation == Operation.DELETE:
            extra = sorted(targets - set(target_key.names))
            if extra:
                raise JobError(
                    f"Mapping: a delete carries only the target's key ({', '.join(target_key.names)}), "
                    f"not {', '.join(extra)}."
                )
    elif operation == Operation.DELETE and set(source_key.names) != set(target_key.names):
        raise JobError(
            "Mapping: the tables' keys differ (source: "
            f"{source_key.describe()}; target: {target_key.describe()}): say which source attribute gives each "
            "target key attribute, e.g. 'customer_id -> pk'."
        )
    return mapping


def rule_mapping(rule: StreamRule) -> StreamMapping:
    return StreamMapping(
        operation=rule.operation,
        lines=tuple(parse_mapping(rule.mapping)),
        target_key=KeySchema.from_json(rule.target_key_schema),
    )


def resolve_callable(path: str) -> RequestsHook:
    """The rule's callable: only from a module under ``BULKWRITES_STREAM_CALLABLE_PREFIXES``.

    It gets the record (plain JSON, as Lambda would deliver it) and the requests the mapping made
    of it, and returns the requests to write (DynamoDB JSON), or None for none.
    """
    allowed = app_settings().stream_callable_prefixes
    if not _DOTTED_PATH.fullmatch(path):
        raise JobError(f"Callable {path!r} is not a dotted path like package.module.function.")
    if not any(path == p or path.startswith((p + ".", p + ":")) for p in allowed):
        where = ", ".join(allowed) if allowed else "none are allowed (set BULKWRITES_STREAM_CALLABLE_PREFIXES)"
        raise JobError(f"Callable {path!r} is not in an allowed module ({where}).")
    module_name, _, attribute = path.rpartition(":") if ":" in path else path.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise JobError(f"Callable {path!r}: module {module_name!r} cannot be imported ({exc}).") from None
    hook = getattr(module, attribute, None)
    if not callable(hook):
        raise JobError(f"Callable {path!r}: {module_name} has no function {attribute!r}.")
    return hook  # type: ignore[no-any-return]


def _check_rate(rate: float | None) -> None:
    field = StreamRule._meta.get_field("rate_limit_wcu")
    try:
        field.clean(rate, None)
    except ValidationError as exc:
        raise JobError(f"Rate cap: {' '.join(exc.messages)}") from None


# --- controlling a rule ----------------------------------------------------------------------


def stream_rule_pause(*, rule: StreamRule) -> None:
    """Workers stop before their next call; shards keep their checkpoints."""
    if not rule.pause():
        raise JobError(_refused(rule, "only an active rule can be paused"))


def stream_rule_resume(*, rule: StreamRule) -> None:
    """Consume again from every shard's checkpoint."""
    dispatch.require_queue("consume the rule's stream")
    with transaction.atomic():
        if not rule.resume(queue=dispatch.current_queue()):
            raise JobError(_refused(rule, "only a paused or failed rule can resume"))
        enqueue_consume(rule.pk, robust=True)


def stream_rule_set_rate(*, rule: StreamRule, wcu_per_second: float | None) -> None:
    """Change the rule's write-capacity cap on the target; running workers follow within ~1 s."""
    _check_rate(wcu_per_second)
    StreamRule.objects.filter(pk=rule.pk).update(rate_limit_wcu=wcu_per_second)
    dispatch.tell_rate_cap(rate_scope(rule.pk), wcu_per_second, what=f"stream rule {rule.pk}")
    rule.refresh_from_db()


def stream_rule_set_mapping(*, rule: StreamRule, mapping_text: str, callable_path: str = "") -> None:
    """Change what the rule's records become (checked against the tables as the rule knows them).

    Workers take the new mapping at their next time slice; **Retry failed writes** maps the
    ledger's records with it, which is how a record the old mapping could not write is fixed.
    """
    mapping = check_mapping(
        mapping_text,
        operation=rule.operation,
        events=rule.events,
        view_type=rule.stream_view_type,
        source_key=KeySchema.from_json(rule.source_key_schema),
        target_key=KeySchema.from_json(rule.target_key_schema),
        has_callable=bool(callable_path.strip()),
    )
    if callable_path.strip():
        resolve_callable(callable_path.strip())
    StreamRule.objects.filter(pk=rule.pk).update(
        mapping=format_mapping(mapping.lines), callable_path=callable_path.strip()
    )
    rule.refresh_from_db(fields=["mapping", "callable_path"])


def stream_rule_retry_failures(*, rule: StreamRule) -> int:
    """Queue the rule's failed records to be mapped (with the mapping as it is now) and written again."""
    dispatch.require_queue("write the failed records again")
    with transaction.atomic():
        queued = StreamFailure.objects.queue_for_retry(rule.pk)
        if not queued:
            raise JobError(f"Stream rule {rule.name!r} has no failed writes to retry.")
        enqueue_retry(rule.pk, robust=True)
    return queued


# The operator actions by transition name (the admin's buttons, the CLI's commands).
ACTIONS: dict[str, Callable[..., None]] = {"pause": stream_rule_pause, "resume": stream_rule_resume}


def _refused(rule: StreamRule, why: str) -> str:
    status = StreamRule.objects.status_of(rule.pk) or "gone"
    return f"Stream rule {rule.name!r} is {status}; {why}."
