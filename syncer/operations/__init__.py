"""What the admin, the API and the management commands call.

Subscriptions (create, update, delete), control (pause, resume, resync, reset), dead
letters (retry, purge), declarations (a subscriptions file <-> specs) and the preflight
checks of a subscription against its source and OpenSearch. Each operation is written
once here and every face calls it, so the admin, the API and the commands agree.
"""
