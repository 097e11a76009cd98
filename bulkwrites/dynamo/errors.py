"""What a DynamoDB failure means for a bulk write, and the words an operator reads for it.

Every exception boto3/botocore can raise around a call is classified once, here:

- ``RETRYABLE``: throttling and server errors; the same items are sent again after a backoff.
- ``CONNECTION``: the endpoint did not answer; retried, and fatal for the job once the retry
  budget is spent (the items stay pending, nothing is wrongly marked failed).
- ``REJECTED``: DynamoDB refused the call because of its content (``ValidationException``),
  naming no item; the writer splits the call to find the offending items.
- ``FATAL``: nothing in this job can succeed until an operator acts (missing table, access
  denied, bad credentials); the job stops at once and its items stay pending.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    HTTPClientError,
    NoCredentialsError,
    NoRegionError,
    PartialCredentialsError,
)
from botocore.exceptions import (
    ConnectionError as BotoConnectionError,
)


class ErrorKind(enum.Enum):
    RETRYABLE = "retryable"
    CONNECTION = "connection"
    REJECTED = "rejected"
    FATAL = "fatal"


RETRYABLE_CODES = frozenset(
    {
        "ProvisionedThroughputExceededException",
        "ThrottlingException",
        "Throttling",
        "RequestLimitExceeded",
        "InternalServerError",
        "InternalFailure",
        "ServiceUnavailable",
        "ServiceUnavailableException",
        "TransactionInProgressException",
        "LimitExceededException",
    }
)
THROTTLING_CODES = frozenset(
    {"ProvisionedThroughputExceededException", "ThrottlingException", "Throttling", "RequestLimitExceeded"}
)
FATAL_CODES = frozenset(
    {
        "ResourceNotFoundException",
        "AccessDeniedException",
        "UnrecognizedClientException",
        "MissingAuthenticationToken",
        "MissingAuthenticationTokenException",
        "IncompleteSignature",
        "IncompleteSignatureException",
        "InvalidSignatureException",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "ExpiredTokenException",
        "InvalidClientTokenId",
        "UnauthorizedOperation",
        "NoCredentials",
        "NoRegion",
    }
)

# Codes an operator sees on items whose calls were refused or given up on.
CODE_UNPROCESSED = "UnprocessedItems"
CODE_CONNECTION = "EndpointUnreachable"
# DynamoDB answered every call with a server error (5xx) for as long as a batch may retry, and no
# other call of the writer wrote anything meanwhile: an outage, not the items' fault.
CODE_SERVER_FAILING = "EndpointFailing"
# Job-level codes whose items stay pending: the job (or rule) can simply be run again later.
ENDPOINT_CODES = frozenset({CODE_CONNECTION, CODE_SERVER_FAILING})
CODE_INVALID_ROW = "InvalidRow"
CODE_DUPLICATE_KEY = "DuplicateKey"
CODE_SUPERSEDED = "Superseded"


@dataclass(frozen=True)
class ErrorInfo:
    kind: ErrorKind
    code: str
    message: str

    @property
    def is_throttling(self) -> bool:
        return self.code in THROTTLING_CODES or self.code == CODE_UNPROCESSED


def classify(exc: BaseException, *, table: str | None = None, endpoint: str | None = None) -> ErrorInfo:
    """Classify an exception raised around a DynamoDB call."""
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code") or "Unknown")
        message = str(error.get("Message") or exc)
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        if code in FATAL_CODES:
            return ErrorInfo(ErrorKind.FATAL, code, fatal_message(code, message, table=table))
        if code in RETRYABLE_CODES or status >= 500:
            return ErrorInfo(ErrorKind.RETRYABLE, code, message)
        return ErrorInfo(ErrorKind.REJECTED, code, message)
    if isinstance(exc, NoCredentialsError | PartialCredentialsError):
        return ErrorInfo(ErrorKind.FATAL, "NoCredentials", fatal_message("NoCredentials", str(exc)))
    if isinstance(exc, NoRegionError):
        return ErrorInfo(ErrorKind.FATAL, "NoRegion", fatal_message("NoRegion", str(exc)))
    if isinstance(exc, BotoConnectionError | HTTPClientError | ConnectionError | TimeoutError):
        where = f" at {endpoint}" if endpoint else ""
        return ErrorInfo(ErrorKind.CONNECTION, CODE_CONNECTION, f"cannot reach DynamoDB{where}: {exc}")
    if isinstance(exc, BotoCoreError):
        return ErrorInfo(ErrorKind.FATAL, type(exc).__name__, str(exc))
    raise exc


def fatal_message(code: str, message: str, *, table: str | None = None) -> str:
    """The one sentence an operator reads when a job cannot run at all."""
    if code == "ResourceNotFoundException":
        subject = f"table {table!r}" if table else "the table"
        return f"DynamoDB says {subject} does not exist (or is not active) in this region: {message}"
    if code == "AccessDeniedException":
        return f"the AWS identity may not write to this table: {message}"
    if code in ("NoCredentials",):
        return "no AWS credentials were found (set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or a profile)"
    if code == "NoRegion":
        return "no AWS region is configured (set AWS_REGION)"
    if code in ("ExpiredToken", "ExpiredTokenException"):
        return "the AWS credentials have expired; refresh them and resume the job"
    return f"AWS rejected the credentials or signature ({code}): {message}"
