"""Materialize: SUBSCRIBE with progress, resumed from the checkpoint with AS OF."""
