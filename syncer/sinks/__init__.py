"""Sinks: where consolidated changes are written (OpenSearch)."""
