"""Readers that turn a source (file, queryset, SQL query) into plain dict rows."""
