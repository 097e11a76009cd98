"""The ledger: jobs, their items, the slices workers claim, and the audit of each slice run.

The one home of three kinds of rules:

- **The job lifecycle**: :data:`JOB_TRANSITIONS` says which status each transition leaves
  from and goes to. Every status change is one of :class:`Job`'s transition methods, a
  conditional ``UPDATE ... WHERE status IN (...)`` that saves only its fields, so two
  operators (or an operator and a worker) racing on a job never undo each other; the
  operator actions a job offers are derived from the same table.
- **Job settings**: bounds and defaults are the fields' validators and defaults
  (:meth:`Job.check_settings`); forms, the CLI and the services all go through them.
- **The ledger's SQL**: statements over many rows (staging, outcomes, duplicate keys,
  retries) are methods of the QuerySets of the modules below, named after what they do.

The services decide *when* to call these; nothing else writes a status.

One module per concern, everything re-exported here (``from bulkwrites.models import Job``):
``jobs`` (the job lifecycle, settings and per-table defaults), ``items`` (items, their payloads
and the ledger's SQL over them), ``slices`` (leased ranges: slices and the audit of each run),
``verification`` (read-back verification), ``streams`` (DynamoDB Streams rules),
``sql_sources`` and ``tokens``; ``lifecycle`` is the guarded ``UPDATE`` jobs and verifications share,
``fields`` the check of their settings against the fields.
"""

from __future__ import annotations

# The modules in the order their models were defined in when they were one module: the order
# Django registers them in, which orders e.g. a user's reverse relations.
# isort: off
from bulkwrites.models.jobs import (
    DEFAULT_CONCURRENCY,
    DuplicatePolicy,
    JOB_TRANSITIONS,
    Job,
    JobManager,
    JobQuerySet,
    JobStatus,
    JobTransition,
    OPERATOR_ACTIONS,
    Operation,
    SourceKind,
    TableSetting,
)
from bulkwrites.models.items import (
    EstimatedCountQuerySet,
    Item,
    ItemCopy,
    ItemPayload,
    ItemQuerySet,
    ItemStatus,
    NOT_RETRIED_CODES,
    RECORD_OUTCOMES_SQL,
    payload_of,
    planner_without,
    server_bound_cursor,
)
from bulkwrites.models.slices import (
    LeasedRange,
    LeasedRangeQuerySet,
    Slice,
    SliceQuerySet,
    SliceRun,
    SliceRunQuerySet,
    ThroughputBucket,
)
from bulkwrites.models.sql_sources import (
    SqlSource,
)
from bulkwrites.models.tokens import (
    ApiToken,
    ApiTokenQuerySet,
)
from bulkwrites.models.verification import (
    CheckOutcome,
    CheckSlice,
    CheckSliceQuerySet,
    DEFAULT_SAMPLE_SIZE,
    FULL_VERIFICATION_MAX_ITEMS,
    ItemCheck,
    ItemCheckQuerySet,
    VERIFICATION_TRANSITIONS,
    Verification,
    VerificationQuerySet,
    VerificationStatus,
    VerificationTransition,
)
from bulkwrites.models.streams import (
    STREAM_RULE_ACTIONS,
    STREAM_RULE_TRANSITIONS,
    StreamFailure,
    StreamFailureQuerySet,
    StreamFailureStatus,
    StreamRule,
    StreamRuleQuerySet,
    StreamRuleStatus,
    StreamRuleTransition,
    StreamShard,
    StreamShardQuerySet,
    StreamStartPosition,
)
# isort: on

__all__ = [
    "DEFAULT_CONCURRENCY",
    "DEFAULT_SAMPLE_SIZE",
    "FULL_VERIFICATION_MAX_ITEMS",
    "JOB_TRANSITIONS",
    "NOT_RETRIED_CODES",
    "OPERATOR_ACTIONS",
    "RECORD_OUTCOMES_SQL",
    "STREAM_RULE_ACTIONS",
    "STREAM_RULE_TRANSITIONS",
    "VERIFICATION_TRANSITIONS",
    "ApiToken",
    "ApiTokenQuerySet",
    "CheckOutcome",
    "CheckSlice",
    "CheckSliceQuerySet",
    "DuplicatePolicy",
    "EstimatedCountQuerySet",
    "Item",
    "ItemCheck",
    "ItemCheckQuerySet",
    "ItemCopy",
    "ItemPayload",
    "ItemQuerySet",
    "ItemStatus",
    "Job",
    "JobManager",
    "JobQuerySet",
    "JobStatus",
    "JobTransition",
    "LeasedRange",
    "LeasedRangeQuerySet",
    "Operation",
    "Slice",
    "SliceQuerySet",
    "SliceRun",
    "SliceRunQuerySet",
    "SourceKind",
    "SqlSource",
    "StreamFailure",
    "StreamFailureQuerySet",
    "StreamFailureStatus",
    "StreamRule",
    "StreamRuleQuerySet",
    "StreamRuleStatus",
    "StreamRuleTransition",
    "StreamShard",
    "StreamShardQuerySet",
    "StreamStartPosition",
    "TableSetting",
    "ThroughputBucket",
    "Verification",
    "VerificationQuerySet",
    "VerificationStatus",
    "VerificationTransition",
    "payload_of",
    "planner_without",
    "server_bound_cursor",
]
