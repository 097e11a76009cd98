"""Admin forms: a new job from a file, and the settings every job has."""

from __future__ import annotations

from typing import Any

from django import forms
from django.conf import settings

from bulkwrites.models import DEFAULT_CONCURRENCY, DuplicatePolicy, Operation, SqlSource
from bulkwrites.services.tables import TableError, list_table_names
from bulkwrites.sources.files import FORMATS


def upload_too_large(size: int) -> str:
    limit = settings.BULKWRITES["MAX_UPLOAD_BYTES"]
    return f"The file is {size / 1e6:.1f} MB; the limit is {limit / 1e6:.0f} MB."


class RateForm(forms.Form):
    rate_limit_wcu = forms.FloatField(
        required=False, min_value=0.1, label="Rate cap (WCU/s)", help_text="empty: no cap"
    )


class JobSettingsForm(forms.Form):
    rate_limit_wcu = forms.FloatField(
        required=False,
        min_value=0.1,
        label="Rate cap (WCU/s)",
        help_text="write capacity units per second for the whole job (empty: the table's default, or no cap)",
    )
    duplicate_policy = forms.ChoiceField(choices=DuplicatePolicy.choices, initial=DuplicatePolicy.LAST)
    concurrency = forms.IntegerField(
        min_value=1, max_value=64, initial=DEFAULT_CONCURRENCY, help_text="calls in flight per worker"
    )
    workers = forms.IntegerField(min_value=1, max_value=32, initial=1, help_text="workers on this job at once")
    max_attempts = forms.IntegerField(
        min_value=1, max_value=100, initial=10, help_text="calls without progress before an item is given up"
    )
    batch_size = forms.IntegerField(min_value=1, max_value=25, initial=25, help_text="requests per call (≤ 25)")

    def job_settings(self) -> dict[str, Any]:
        return {name: self.cleaned_data[name] for name in JobSettingsForm.base_fields}


class TableChoiceField(forms.ChoiceField):
    """The tables DynamoDB lists; a clear form error if it cannot be asked."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(choices=(), **kwargs)
        self.listing_error = ""
        try:
            names = list_table_names()
        except TableError as exc:
            names = []
            self.listing_error = exc.message
        self.choices = [("", "— choose a table —"), *((n, n) for n in names)]


class FileJobForm(JobSettingsForm):
    file = forms.FileField(help_text="CSV, TSV, JSON, JSON Lines, XLSX or DynamoDB JSON lines")
    source_format = forms.ChoiceField(
        choices=[("", "detect from the file"), *FORMATS.items()], required=False, label="Format"
    )
    table_name = TableChoiceField(label="Target table")
    operation = forms.ChoiceField(choices=Operation.choices, initial=Operation.PUT)

    field_order = ["file", "source_format", "table_name", "operation"]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["table_name"] = TableChoiceField(label="Target table")
        listing_error = self.fields["table_name"].listing_error
        if listing_error:
            self.fields["table_name"].help_text = f"Could not list tables: {listing_error}"

    def clean_file(self) -> Any:
        upload = self.cleaned_data["file"]
        limit = settings.BULKWRITES["MAX_UPLOAD_BYTES"]
        if upload.size > limit:
            raise forms.ValidationError(f"The file is {upload.size / 1e6:.1f} MB; the limit is {limit / 1e6:.0f} MB.")
        return upload


class TargetForm(JobSettingsForm):
    """Target table and operation, for sources that are not files."""

    table_name = TableChoiceField(label="Target table")
    operation = forms.ChoiceField(choices=Operation.choices, initial=Operation.PUT)

    field_order = ["table_name", "operation"]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["table_name"] = TableChoiceField(label="Target table")


class CopyRecordsForm(TargetForm):
    mapping = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 8, "cols": 60}),
        required=False,
        help_text="One `field -> attribute` per line (a type may follow: `total -> amount:N`). "
        "Empty: every field under its own name, related objects by id, and the primary key "
        "feeding the table's key attribute if no field has its name.",
    )


class SqlSourceForm(forms.ModelForm):
    """A saved PostgreSQL source: a named connection and a SELECT, or a table and columns from lists."""

    class Meta:
        model = SqlSource
        fields = ["name", "connection", "query", "table", "columns"]
        widgets = {"query": forms.Textarea(attrs={"rows": 8, "cols": 80, "spellcheck": "false"})}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        from bulkwrites.services import sql

        super().__init__(*args, **kwargs)
        names = sql.connection_names()
        self.fields["connection"] = forms.ChoiceField(
            choices=[(n, n) for n in names],
            help_text="a database alias, or BULKWRITES_SQL_&lt;NAME&gt; set for the web server and workers",
        )
        connection = self.data.get("connection") or self.initial.get("connection") or (names[0] if names else "")
        self.table_choices = self._tables(connection)
        if self.table_choices:
            self.fields["table"] = forms.ChoiceField(
                choices=[("", "— a query instead —"), *((t, t) for t in self.table_choices)],
                required=False,
                help_text=f"tables and views connection {connection!r} may read",
            )
        table = self.data.get("table") or self.initial.get("table") or ""
        columns = self._columns(connection, table)
        if columns:
            self.fields["columns"] = forms.MultipleChoiceField(
                choices=[(c, f"{c} ({t})") for c, t in columns],
                required=False,
                widget=forms.SelectMultiple(attrs={"size": min(12, len(columns))}),
                help_text="none selected: every column",
            )
            if self.instance.pk and not self.data:
                self.initial["columns"] = self.instance.column_list

    @staticmethod
    def _tables(connection: str) -> list[str]:
        from bulkwrites.services import sql
        from bulkwrites.services.jobs import JobError
        from bulkwrites.sources import postgres

        try:
            return [f"{schema}.{table}" for schema, table in postgres.list_tables(sql.resolve_dsn(connection))]
        except (JobError, postgres.QueryError):
            return []

    @staticmethod
    def _columns(connection: str, table: str) -> list[tuple[str, str]]:
        from bulkwrites.services import sql
        from bulkwrites.services.jobs import JobError
        from bulkwrites.sources import postgres

        schema, _, name = table.rpartition(".")
        if not name:
            return []
        try:
            return postgres.list_columns(sql.resolve_dsn(connection), schema or "public", name)
        except (JobError, postgres.QueryError):
            return []

    def clean_columns(self) -> str:
        value = self.cleaned_data.get("columns") or ""
        return ", ".join(value) if isinstance(value, list) else value

    def clean(self) -> dict[str, Any]:
        from bulkwrites.sources import postgres

        data = super().clean()
        query, table = (data.get("query") or "").strip(), (data.get("table") or "").strip()
        if bool(query) == bool(table):
            raise forms.ValidationError("Write a query, or pick a table — one of the two.")
        if query:
            try:
                data["query"] = postgres.check_select(query)
            except postgres.QueryError as exc:
                self.add_error("query", str(exc))
        return data
