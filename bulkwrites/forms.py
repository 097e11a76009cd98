"""Admin forms: a new job from a file, records or a query, the settings every job has, SQL sources.

Forms ask nothing of DynamoDB or PostgreSQL when they are imported: table choices are handed
in by the view (from ``selectors.table_listing``).
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.core.validators import MaxValueValidator, MinValueValidator

from bulkwrites.conf import app_settings
from bulkwrites.models import DEFAULT_SAMPLE_SIZE, FULL_VERIFICATION_MAX_ITEMS, Job, Operation, SqlSource, Verification
from bulkwrites.selectors import SourceCatalog, TableListing
from bulkwrites.services import sql
from bulkwrites.services.create import upload_too_large
from bulkwrites.sources import postgres
from bulkwrites.sources.formats import ENCODINGS, FORMATS


def _setting_field(model_field: Any, **kwargs: Any) -> Any:
    """A form field for a job setting, with the model's bounds as the input's min and max."""
    field = model_field.formfield(**kwargs)
    for validator in model_field.validators:
        if isinstance(validator, MinValueValidator):
            field.widget.attrs["min"] = validator.limit_value
        elif isinstance(validator, MaxValueValidator):
            field.widget.attrs["max"] = validator.limit_value
    return field


class JobSettingsForm(forms.ModelForm[Job]):
    """The settings every job has; bounds, defaults and help come from the Job model's fields."""

    class Meta:
        model = Job
        fields = [
            "rate_limit_wcu", "duplicate_policy", "concurrency", "workers", "max_attempts", "batch_size", "webhook_url",
            "verify_when_done",
        ]  # fmt: skip
        formfield_callback = _setting_field
        help_texts = {
            "rate_limit_wcu": "write capacity units per second for the whole job "
            "(empty: the table's default, or no cap)",
            "webhook_url": "optional: POSTed a JSON summary when the job ends or fails (public http(s) hosts only)",
        }

    def job_settings(self) -> dict[str, Any]:
        return {name: self.cleaned_data[name] for name in self._meta.fields or ()}


class VerifyForm(forms.ModelForm[Verification]):
    """The job page's Verify: what to read back and how; empty fields take the defaults."""

    class Meta:
        model = Verification
        fields = ["sample_fraction", "sample_size", "consistent_read", "rate_limit_rcu"]
        formfield_callback = _setting_field
        help_texts = {
            "sample_fraction": "a random share of the written items (0 < f ≤ 1); empty: all of them up to "
            f"{FULL_VERIFICATION_MAX_ITEMS:,}, a random {DEFAULT_SAMPLE_SIZE:,} above",
            "sample_size": "or this many written items, chosen at random",
        }

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if data.get("sample_fraction") is not None and data.get("sample_size") is not None:
            raise forms.ValidationError("Give a sample fraction or a sample size, not both.")
        return data

    def verification_settings(self) -> dict[str, Any]:
        return {name: self.cleaned_data[name] for name in self._meta.fields or ()}


class RateForm(forms.ModelForm[Job]):
    """The job page's rate cap, checked by the same field as at creation."""

    class Meta:
        model = Job
        fields = ["rate_limit_wcu"]
        formfield_callback = _setting_field
        help_texts = {"rate_limit_wcu": "empty: no cap"}


class TargetForm(JobSettingsForm):
    """Target table and operation, for sources that are not files.

    The table choices are handed in by the view (``tables``): nothing here asks DynamoDB.
    """

    table_name = forms.ChoiceField(label="Target table", choices=())
    operation = forms.ChoiceField(choices=Operation.choices, initial=Operation.PUT)

    field_order = ["table_name", "operation"]

    def __init__(self, *args: Any, tables: TableListing | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        tables = tables or TableListing()
        table_field = self.fields["table_name"]
        table_field.choices = [("", "— choose a table —"), *((n, n) for n in tables.names)]  # type: ignore[attr-defined]
        if tables.error:
            table_field.help_text = f"Could not list tables: {tables.error}"


class FileJobForm(TargetForm):
    file = forms.FileField(
        required=False,
        help_text="CSV, TSV, JSON, JSON Lines, XLSX or DynamoDB JSON (export lines, a scan's output, items); "
        "gzip or zstd compressed too",
    )
    s3_url = forms.CharField(
        required=False,
        label="or an S3 object",
        max_length=1100,
        widget=forms.TextInput(attrs={"size": 60, "placeholder": "s3://bucket/path/export.json.gz"}),
        help_text="read by the workers from S3 (buckets and prefixes allowed by BULKWRITES_S3_ALLOWED)",
    )
    source_format = forms.ChoiceField(
        choices=[("", "detect from the file"), *FORMATS.items()], required=False, label="Format"
    )
    encoding = forms.ChoiceField(
        choices=list(ENCODINGS.items()),
        initial="utf-8",
        required=False,
        help_text="of a text file (not XLSX); a UTF-16 byte-order mark is recognised whatever is chosen",
    )

    field_order = ["file", "s3_url", "source_format", "encoding", "table_name", "operation"]

    def clean_file(self) -> Any:
        upload = self.cleaned_data["file"]
        if upload and upload.size > app_settings().max_upload_bytes:
            raise forms.ValidationError(upload_too_large(upload.size))
        return upload

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        has_file, has_url = bool(data.get("file")), bool((data.get("s3_url") or "").strip())
        if has_file == has_url and not self.errors.get("file"):
            raise forms.ValidationError("Upload a file, or give an S3 URL — one of the two.")
        data["encoding"] = data.get("encoding") or "utf-8"
        return data


class TableCopyForm(TargetForm):
    """A job copying another DynamoDB table: parallel Scan segments, an optional attribute mapping."""

    source_table = forms.CharField(max_length=255, help_text="the table to read (on the same endpoint)")
    source_region = forms.CharField(
        max_length=64, required=False, help_text="its region, if not the one jobs write to (empty: the same)"
    )
    segments = forms.IntegerField(
        min_value=1, max_value=64, initial=4, help_text="parallel Scan segments (more: faster, more read capacity)"
    )
    mapping = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 6, "cols": 60}),
        required=False,
        help_text="One `source -> target` per line (a name alone keeps it; `*` keeps every other attribute). "
        "Empty: every attribute as it is. Types are kept.",
    )

    field_order = ["source_table", "source_region", "segments", "mapping", "table_name", "operation"]


class CopyRecordsForm(TargetForm):
    mapping = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 8, "cols": 60}),
        required=False,
        help_text="One `field -> attribute` per line (a type may follow: `total -> amount:N`). "
        "Empty: every field under its own name, related objects by id, and the primary key "
        "feeding the table's key attribute if no field has its name.",
    )


class SqlSourceForm(forms.ModelForm[SqlSource]):
    """A saved PostgreSQL source: a named connection and a SELECT, or a table and columns from lists."""

    class Meta:
        model = SqlSource
        fields = ["name", "connection", "query", "table", "columns"]
        widgets = {"query": forms.Textarea(attrs={"rows": 8, "cols": 80, "spellcheck": "false"})}

    # Handed in by the view (SqlSourceAdmin.get_form, from selectors.source_catalog): building
    # the form opens no connection. Without one, the connections are offered and nothing else.
    catalog: SourceCatalog | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        catalog = self.catalog or SourceCatalog(connections=tuple(sql.connection_names()))
        self.fields["connection"] = forms.ChoiceField(
            choices=[(n, n) for n in catalog.connections],
            help_text="a database alias, or BULKWRITES_SQL_&lt;NAME&gt; set for the web server and workers",
        )
        if catalog.connection:
            self.initial.setdefault("connection", catalog.connection)
        self.table_choices = list(catalog.tables)
        if self.table_choices:
            self.fields["table"] = forms.ChoiceField(
                choices=[("", "— a query instead —"), *((t, t) for t in self.table_choices)],
                required=False,
                help_text=f"tables and views connection {catalog.connection!r} may read",
            )
        columns = catalog.columns
        if columns:
            self.fields["columns"] = forms.MultipleChoiceField(
                choices=[(c, f"{c} ({t})") for c, t in columns],
                required=False,
                widget=forms.SelectMultiple(attrs={"size": min(12, len(columns))}),
                help_text="none selected: every column",
            )
            if self.instance.pk and not self.data:
                self.initial["columns"] = self.instance.column_list

    def clean_columns(self) -> str:
        value = self.cleaned_data.get("columns") or ""
        return ", ".join(value) if isinstance(value, list) else value

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        query, table = (data.get("query") or "").strip(), (data.get("table") or "").strip()
        if bool(query) == bool(table):
            raise forms.ValidationError("Write a query, or pick a table — one of the two.")
        if query:
            try:
                data["query"] = postgres.check_select(query)
            except postgres.QueryError as exc:
                self.add_error("query", str(exc))
        return data
