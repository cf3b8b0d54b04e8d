"""The live bus: what the worker publishes for the monitor, and how it is addressed."""
