"""How a source turns the DSN it is configured with into the one it connects with.

A source's config holds the DSN as stored (a literal DSN, or `env:VAR`) and a resolver
that the source calls when it opens, so an unset variable fails there, as the
subscription's error. The worker's wiring passes `syncer.dsn.resolve` (the `env:`
allow-list, the console-database refusal, which read the settings); the sources
themselves read no settings.
"""

from __future__ import annotations

from collections.abc import Callable

DsnResolver = Callable[[str], str]
"""A stored DSN -> the DSN to connect with; raises SourceConfigError if it may not be used."""


def as_given(dsn: str) -> str:
    """The resolver of a config built without one: the DSN is literal, used as it is."""
    return dsn
