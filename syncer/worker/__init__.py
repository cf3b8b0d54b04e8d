"""The `runsyncer` process: the runner and its supervisors, ownership of subscriptions,
the worker's rows in the console database, its HTTP server and its metrics."""
