"""What the target DynamoDB table looks like, asked with a read-only client."""

from __future__ import annotations

from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from bulkwrites.dynamo import client as dynamo_client
from bulkwrites.dynamo.errors import classify
from bulkwrites.dynamo.estimates import TableCapacity
from bulkwrites.dynamo.items import KeySchema
from bulkwrites.services.errors import JobError


class TableError(Exception):
    """The table cannot be used; the message is for an operator."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _describe(table_name: str) -> dict[str, Any]:
    try:
        table: dict[str, Any] = dynamo_client.reading_client().describe_table(TableName=table_name)["Table"]
    except (ClientError, BotoCoreError, ConnectionError) as exc:
        error = classify(exc, table=table_name, endpoint=dynamo_client.endpoint_label())
        raise TableError(error.code, error.message) from None
    return table


def describe_capacity(table_name: str) -> TableCapacity:
    """The table's billing mode and write throughput, for the preview's estimate."""
    return TableCapacity.from_describe_table(_describe(table_name))


def describe_key_schema(table_name: str) -> KeySchema:
    table = _describe(table_name)
    if table.get("TableStatus") not in (None, "ACTIVE", "UPDATING"):
        raise TableError("TableNotActive", f"table {table_name!r} is {table['TableStatus']}, not ACTIVE")
    return KeySchema.from_describe_table(table)


def key_schema_for_job(table_name: str) -> KeySchema:
    """The table's key for a new job; a JobError with DynamoDB's reason if it cannot be read."""
    try:
        return describe_key_schema(table_name)
    except TableError as exc:
        raise JobError(exc.message) from None


def list_table_names() -> list[str]:
    client = dynamo_client.reading_client()
    names: list[str] = []
    kwargs: dict[str, str] = {}
    try:
        while True:
            page = client.list_tables(**kwargs)
            names.extend(page.get("TableNames", []))
            if "LastEvaluatedTableName" not in page:
                return names
            kwargs = {"ExclusiveStartTableName": page["LastEvaluatedTableName"]}
    except (ClientError, BotoCoreError, ConnectionError) as exc:
        error = classify(exc, endpoint=dynamo_client.endpoint_label())
        raise TableError(error.code, error.message) from None
