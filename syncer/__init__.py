"""searchsync's syncing app: subscriptions, the worker, and the engine it runs."""
