"""Admin forms for stream rules: a new rule, and its rate cap. Table choices are handed in by the
view (``selectors.table_listing``): nothing here asks DynamoDB at import."""

from __future__ import annotations

from typing import Any

from django import forms

from bulkwrites.dynamo.streams import EVENTS
from bulkwrites.models import StreamRule
from bulkwrites.selectors import TableListing


class StreamRuleForm(forms.ModelForm[StreamRule]):
    """What a rule does; whether the tables and the stream can do it is checked by the service."""

    source_table = forms.ChoiceField(choices=(), help_text="a table with a DynamoDB Stream")
    target_table = forms.ChoiceField(choices=())
    events = forms.MultipleChoiceField(
        choices=[(e, e) for e in EVENTS], widget=forms.CheckboxSelectMultiple, initial=["REMOVE"]
    )

    class Meta:
        model = StreamRule
        fields = [
            "name",
            "source_table",
            "target_table",
            "events",
            "operation",
            "mapping",
            "callable_path",
            "start_position",
            "rate_limit_wcu",
        ]
        widgets = {"mapping": forms.Textarea(attrs={"rows": 4, "cols": 60, "placeholder": "pk -> pk"})}
        help_texts = {
            "mapping": "one 'source -> target' per line (a source may be Keys.x, NewImage.x or OldImage.x; "
            "a target may end in :S or :N to convert). Empty: the record's keys (delete) or its image (put).",
        }

    def __init__(self, *args: Any, tables: TableListing | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        tables = tables or TableListing()
        choices = [("", "— choose a table —"), *((n, n) for n in tables.names)]
        for name in ("source_table", "target_table"):
            field = self.fields[name]
            field.choices = choices  # type: ignore[attr-defined]
            if tables.error:
                field.help_text = f"Could not list tables: {tables.error}"


class StreamRateForm(forms.ModelForm[StreamRule]):
    """The rule page's rate cap, checked by the same field as at creation."""

    class Meta:
        model = StreamRule
        fields = ["rate_limit_wcu"]


class StreamMappingForm(forms.ModelForm[StreamRule]):
    """The rule page's mapping: the same fields as at creation."""

    class Meta:
        model = StreamRule
        fields = ["mapping", "callable_path"]
        widgets = {"mapping": forms.Textarea(attrs={"rows": 4, "cols": 60})}
