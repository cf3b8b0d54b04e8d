"""The engine: pure logic between a source and a sink.

Consolidation, batching, retry decisions and version rules live here and import no
Django, psycopg or opensearch-py; `pipeline` drives a source and a sink through the
small interfaces in `interfaces`, and `testing` holds in-memory fakes of them.
"""
