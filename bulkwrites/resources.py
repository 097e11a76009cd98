"""django-import-export resources: exports of the ledger, safe to open in a spreadsheet.

Spreadsheets run a cell that starts with ``= + - @`` (and, in some, tab, CR or NUL) as a
formula (CSV/formula injection, OWASP ASVS 1.2.10). django-import-export's own escaping
removes one leading ``=`` only, which both misses the other triggers and changes the data;
here such a cell gets a leading apostrophe instead, which spreadsheets show as text.
"""

from __future__ import annotations

import json
from typing import Any

from import_export import fields, resources
from import_export.formats import base_formats

from bulkwrites.models import Item, ItemQuerySet, StreamFailure

FORMULA_TRIGGERS = ("=", "+", "-", "@", "\t", "\r", "\0")


def neutralize_formula(value: Any) -> Any:
    if isinstance(value, str) and value.startswith(FORMULA_TRIGGERS):
        return "'" + value
    return value


class _FormulaSafe:
    """Mixed into a tablib format: neutralise every cell of the dataset before writing it."""

    def export_data(self, dataset: Any, **kwargs: Any) -> Any:
        for index, row in enumerate(list(dataset)):
            dataset[index] = [neutralize_formula(cell) for cell in row]
        return dataset.export(self.get_title(), **kwargs)  # type: ignore[attr-defined]


class SafeCSV(_FormulaSafe, base_formats.CSV):  # type: ignore[misc]  # import-export is untyped
    pass


class SafeTSV(_FormulaSafe, base_formats.TSV):  # type: ignore[misc]
    pass


class SafeXLSX(_FormulaSafe, base_formats.XLSX):  # type: ignore[misc]
    pass


EXPORT_FORMATS = [SafeCSV, SafeXLSX, SafeTSV, base_formats.JSON]
FORMATS_BY_NAME: dict[str, type[base_formats.Format]] = {
    "csv": SafeCSV,
    "xlsx": SafeXLSX,
    "tsv": SafeTSV,
    "json": base_formats.JSON,
}


class JSONText(fields.Field):  # type: ignore[misc]
    def get_value(self, instance: Any) -> Any:
        value = super().get_value(instance)
        return "" if value is None else json.dumps(value, ensure_ascii=False, sort_keys=True)


class ItemExportResource(resources.ModelResource):  # type: ignore[misc]
    """One row per item: where it came from, its outcome, and the item itself."""

    key = JSONText(attribute="key", column_name="key")
    payload = JSONText(attribute="payload", column_name="item")

    class Meta:
        model = Item
        fields = (
            "job",
            "position",
            "status",
            "attempts",
            "error_code",
            "error_message",
            "key",
            "payload",
            "raw",
            "updated_at",
        )
        export_order = fields
        use_natural_foreign_keys = False

    def dehydrate_job(self, item: Item) -> int:
        return item.job_id

    def filter_export(self, queryset: Any, **kwargs: Any) -> Any:
        # Payloads live in their own table: fetched with the items, one statement, not one per item.
        # A list of items (a page the caller already read) fetches each one's unless read with_payload().
        return queryset.with_payload() if isinstance(queryset, ItemQuerySet) else queryset


def export_items(queryset: Any, format_name: str) -> tuple[bytes | str, str]:
    """Items in ``csv``, ``xlsx``, ``tsv`` or ``json``, and the content type (job page and CLI)."""
    file_format = FORMATS_BY_NAME[format_name]()
    dataset = ItemExportResource().export(queryset=queryset)
    return file_format.export_data(dataset), file_format.get_content_type()


# --- stream rules: the failed-writes ledger, exported with the same safe formats ------------


class StreamFailureExportResource(resources.ModelResource):  # type: ignore[misc]
    """One row per failed record: where it was in the stream, why it failed, the record itself."""

    keys = JSONText(attribute="keys", column_name="keys")
    record = JSONText(attribute="record", column_name="record")
    history = JSONText(attribute="history", column_name="history")

    class Meta:
        model = StreamFailure
        fields = (
            "rule",
            "shard_id",
            "sequence_number",
            "event_name",
            "status",
            "attempts",
            "error_code",
            "error_message",
            "keys",
            "record",
            "history",
            "created_at",
            "updated_at",
        )
        export_order = fields

    def dehydrate_rule(self, failure: StreamFailure) -> str:
        return failure.rule.name


def export_stream_failures(queryset: Any, format_name: str) -> tuple[bytes | str, str]:
    """Failed records in ``csv``, ``xlsx``, ``tsv`` or ``json``, and the content type (rule page and CLI)."""
    file_format = FORMATS_BY_NAME[format_name]()
    dataset = StreamFailureExportResource().export(queryset=queryset.select_related("rule"))
    return file_format.export_data(dataset), file_format.get_content_type()
