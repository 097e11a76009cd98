"""``python manage.py bulkwrite stream ...``: stream rules from a terminal.

::

    bulkwrite stream add NAME --source-table A --target-table B --on REMOVE --operation delete \\
        --key TARGET_ATTR=SOURCE_ATTR[,...] [--map TARGET=SOURCE[:TYPE],...] [--callable module.fn] \\
        [--start-position TRIM_HORIZON|LATEST] [--rate WCU] [--paused]
    bulkwrite stream run NAME --until-caught-up     # consume in the foreground; exit 0, 3 or 1
    bulkwrite stream list | status NAME | pause NAME | resume NAME | rate NAME WCU|none
    bulkwrite stream mapping NAME --key ... [--map ...] [--callable ...]
    bulkwrite stream retry NAME                     # send the failed writes again (mapped as now), here
    bulkwrite stream export NAME [--status failed] [--format csv] [-o FILE]

``run`` ends with ``stream NAME: <r> records, <s> writes succeeded, <f> failed`` and exits 0, 3
when writes failed, or 1 when it could not run (the message says why). It starts from every
shard's checkpoint, so running it again processes nothing twice.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path
from typing import Any

from django.core.management.base import CommandError

from bulkwrites import selectors_streams
from bulkwrites.dynamo.streams import EVENTS
from bulkwrites.models import Operation, StreamFailure, StreamFailureStatus, StreamRule, StreamStartPosition
from bulkwrites.resources import FORMATS_BY_NAME, export_stream_failures
from bulkwrites.services.errors import JobError
from bulkwrites.services.streams import consume, rules

EXIT_OK, EXIT_FAILED_WRITES, EXIT_COULD_NOT_RUN = 0, 3, 1


def add_stream_parser(sub: Any) -> None:
    stream = sub.add_parser("stream", help="DynamoDB Streams rules: add, run, pause, resume, retry, export")
    commands = stream.add_subparsers(dest="stream_command", required=True)

    add = commands.add_parser("add", help="a rule: what a source table's stream records do to a target table")
    add.add_argument("name")
    add.add_argument("--source-table", required=True)
    add.add_argument("--target-table", required=True)
    add.add_argument("--on", required=True, help=f"events, comma-separated: {','.join(EVENTS)}")
    add.add_argument("--operation", choices=Operation.values, required=True)
    add.add_argument("--key", default="", help="TARGET_ATTR=SOURCE_ATTR[,...]: where the target's key comes from")
    add.add_argument("--map", default="", help="TARGET_ATTR[:S|N]=SOURCE_ATTR[,...]: more attributes of a put")
    add.add_argument("--callable", default="", help="module.function for the rest (an allowed module only)")
    add.add_argument("--start-position", choices=StreamStartPosition.values, default=StreamStartPosition.TRIM_HORIZON)
    add.add_argument("--rate", type=float, help="rate cap on the target, WCU/s")
    add.add_argument("--paused", action="store_true", help="create it paused (no worker consumes it)")

    run = commands.add_parser("run", help="consume the stream in the foreground")
    run.add_argument("name")
    how = run.add_mutually_exclusive_group(required=True)
    how.add_argument("--until-caught-up", action="store_true", help="until every open shard has nothing new")
    how.add_argument("--seconds", type=float, help="for this long")

    commands.add_parser("list", help="every rule, its state and lag")
    for name, text in (
        ("status", "a rule's shards"),
        ("pause", "stop consuming"),
        ("resume", "consume again"),
        ("retry", "send its failed writes again"),
    ):
        commands.add_parser(name, help=text).add_argument("name")
    mapping = commands.add_parser("mapping", help="change what the records become (then `retry` the failed ones)")
    mapping.add_argument("name")
    mapping.add_argument("--key", default="", help="TARGET_ATTR=SOURCE_ATTR[,...]")
    mapping.add_argument("--map", default="", help="TARGET_ATTR[:S|N]=SOURCE_ATTR[,...]")
    mapping.add_argument("--callable", default="")
    rate = commands.add_parser("rate", help="set the rate cap (WCU/s, or 'none')")
    rate.add_argument("name")
    rate.add_argument("wcu")
    export = commands.add_parser("export", help="export the failed-writes ledger")
    export.add_argument("name")
    export.add_argument("--status", choices=StreamFailureStatus.values, default=StreamFailureStatus.FAILED)
    export.add_argument("--format", choices=sorted(FORMATS_BY_NAME), default="csv", dest="export_format")
    export.add_argument("-o", "--output")


class StreamCommands:
    """The handlers of ``bulkwrite stream ...``; each returns the exit code."""

    def __init__(self, stdout: Any, stderr: Any) -> None:
        self.stdout = stdout
        self.stderr = stderr

    def handle(self, options: dict[str, Any]) -> int:
        command = options["stream_command"]
        handler = getattr(self, f"handle_{command}")
        try:
            code: int = handler(**options)
        except JobError as exc:
            raise CommandError(str(exc)) from None
        return code

    def _rule(self, name: str) -> StreamRule:
        rule = StreamRule.objects.filter(name=name).first()
        if rule is None:
            raise CommandError(f"no stream rule named {name!r}")
        return rule

    def handle_add(self, *, name: str, on: str, key: str, map: str, **options: Any) -> int:
        lines = _pairs("--key", key) + _pairs("--map", map)
        rule = rules.stream_rule_create(
            name=name,
            source_table=options["source_table"],
            target_table=options["target_table"],
            events=[e for e in on.split(",") if e.strip()],
            operation=options["operation"],
            mapping_text="\n".join(f"{source} -> {target}" for target, source in lines),
            callable_path=options["callable"],
            start_position=options["start_position"],
            rate_limit_wcu=options["rate"],
            start=not options["paused"],
        )
        self.stdout.write(
            f"stream rule {rule.name} ({rule.status}): {rule.source_table} {'/'.join(rule.events)} → "
            f"{rule.operation} in {rule.target_table}; stream {rule.stream_arn} ({rule.stream_view_type})"
        )
        return EXIT_OK

    def handle_run(self, *, name: str, until_caught_up: bool, seconds: float | None, **options: Any) -> int:
        rule = self._rule(name)
        worker = f"{socket.gethostname()}:{os.getpid()}:cli"
        report = consume.stream_rule_consume(
            rule, worker=worker, until_caught_up=until_caught_up, budget_seconds=seconds or 0.0
        )
        self.stdout.write(report.line(rule.name))
        if report.error:
            self.stderr.write(f"stream {rule.name}: {report.error}")
            return EXIT_COULD_NOT_RUN
        if until_caught_up and not report.caught_up:
            self.stderr.write(f"stream {rule.name}: stopped before it caught up (the rule is now {report.stopped_by})")
            return EXIT_COULD_NOT_RUN
        return EXIT_FAILED_WRITES if report.writes_failed else EXIT_OK

    def handle_list(self, **options: Any) -> int:
        all_rules = list(StreamRule.objects.all())
        lags = selectors_streams.lags_by_rule([r.pk for r in all_rules])
        for rule in all_rules:
            lag = lags.get(rule.pk)
            self.stdout.write(
                f"{rule.name}: {rule.status}, lag {'—' if lag is None else f'{lag:g} s'}; {rule.source_table} "
                f"{'/'.join(rule.events)} → {rule.operation} in {rule.target_table}"
            )
        return EXIT_OK

    def handle_status(self, *, name: str, **options: Any) -> int:
        rule = self._rule(name)
        totals = selectors_streams.rule_totals(rule)
        self.stdout.write(
            f"stream {rule.name}: {rule.status}; {totals['records']} records, {totals['writes_succeeded']} writes "
            f"succeeded, {totals['writes_failed']} failed; {totals['failures_failed']} in the failed-writes ledger"
        )
        if rule.error_message:
            self.stdout.write(f"  error: {rule.error_code}: {rule.error_message}")
        for row in selectors_streams.shard_rows(rule):
            lag = "—" if row.lag_seconds is None else f"{row.lag_seconds:g} s"
            self.stdout.write(
                f"  {row.shard_id}: {row.state}, lag {lag}, {row.records_read} records, "
                f"{row.writes_succeeded}/{row.writes_failed} writes ok/failed, checkpoint {row.checkpoint or '—'}"
            )
        return EXIT_OK

    def handle_pause(self, *, name: str, **options: Any) -> int:
        rules.stream_rule_pause(rule=self._rule(name))
        self.stdout.write(f"stream {name}: paused")
        return EXIT_OK

    def handle_resume(self, *, name: str, **options: Any) -> int:
        rules.stream_rule_resume(rule=self._rule(name))
        self.stdout.write(f"stream {name}: active")
        return EXIT_OK

    def handle_mapping(self, *, name: str, key: str, map: str, **options: Any) -> int:
        lines = _pairs("--key", key) + _pairs("--map", map)
        rule = self._rule(name)
        rules.stream_rule_set_mapping(
            rule=rule,
            mapping_text="\n".join(f"{source} -> {target}" for target, source in lines),
            callable_path=options["callable"],
        )
        self.stdout.write(
            f"stream {name}: mapping {rule.mapping.replace(chr(10), '; ') or '(keys or image as they are)'}"
        )
        return EXIT_OK

    def handle_rate(self, *, name: str, wcu: str, **options: Any) -> int:
        try:
            rate = None if wcu.lower() in ("none", "0", "") else float(wcu)
        except ValueError:
            raise CommandError(f"the rate is a number of WCU/s or 'none', not {wcu!r}") from None
        rules.stream_rule_set_rate(rule=self._rule(name), wcu_per_second=rate)
        self.stdout.write(f"stream {name}: rate cap {'none' if rate is None else f'{rate:g} WCU/s'}")
        return EXIT_OK

    def handle_retry(self, *, name: str, **options: Any) -> int:
        rule = self._rule(name)
        queued = StreamFailure.objects.queue_for_retry(rule.pk)
        if not queued:
            self.stdout.write(f"stream {name}: no failed writes to retry")
            return EXIT_OK
        self.stdout.write(consume.stream_failures_retry(rule.pk))
        still = StreamFailure.objects.failed().filter(rule=rule).count()
        return EXIT_FAILED_WRITES if still else EXIT_OK

    def handle_export(self, *, name: str, status: str, export_format: str, output: str | None, **options: Any) -> int:
        rule = self._rule(name)
        content, _ = export_stream_failures(StreamFailure.objects.filter(rule=rule, status=status), export_format)
        data = content.encode("utf-8") if isinstance(content, str) else content
        if output:
            Path(output).write_bytes(data)
            self.stderr.write(f"wrote {output}")
        else:
            sys.stdout.buffer.write(data)
            sys.stdout.flush()
        return EXIT_OK


def _pairs(option: str, text: str) -> list[tuple[str, str]]:
    """``T=S,T2=S2`` → [(T, S), (T2, S2)]."""
    pairs = []
    for part in text.split(","):
        if not part.strip():
            continue
        target, sep, source = (p.strip() for p in part.partition("="))
        if not sep or not target or not source:
            raise CommandError(f"{option} takes TARGET_ATTR=SOURCE_ATTR pairs, not {part.strip()!r}")
        pairs.append((target, source))
    return pairs
