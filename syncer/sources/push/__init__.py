"""The push source: changes posted to the API as NDJSON, queued in the console's database."""
