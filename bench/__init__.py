"""Benchmarks of searchsync (not tests): `make bench` runs bench/run.py."""
