"""The one exception tree: syncer.errors's diagram is the classes' real hierarchy."""

from __future__ import annotations

import inspect
import json
import re

import pytest

from syncer import errors
from syncer.errors import (
    DeadLettersRemain,
    DeclarationError,
    IndexNameTaken,
    MetricsPortUnavailable,
    Problem,
    SyncError,
    TooManyForARequest,
    UnknownSubscription,
)
from syncer.models import Subscription
from syncer.operations import subscriptions

_NODE = re.compile(r"^(?P<indent>[│ ]*)(?:[├└]── )?(?P<name>[A-Z][A-Za-z]+)\b")


def diagram() -> dict[str, str | None]:
    """Each class the docstring's tree names, with its parent in the tree (None: the root)."""
    doc = errors.__doc__ or ""
    lines = [line[4:] for line in doc.splitlines() if line.startswith("    ")]
    parents: dict[str, str | None] = {}
    path: list[str] = []
    for line in lines:
        match = _NODE.match(line)
        if not match or ("──" not in line and match.group("name") != "SyncError"):
            continue  # a continuation of the previous node's description
        depth = len(match.group("indent")) // 4 + (1 if "──" in line else 0)
        del path[depth:]
        parents[match.group("name")] = path[-1] if path else None
        path.append(match.group("name"))
    return parents


def defined() -> dict[str, type[Exception]]:
    return {
        name: value
        for name, value in vars(errors).items()
        if inspect.isclass(value) and issubclass(value, Exception)
    }


def test_the_diagram_names_every_class_of_the_module_and_only_those() -> None:
    assert set(diagram()) == set(defined())


def test_each_class_sits_in_the_diagrams_branch() -> None:
    classes = defined()
    for name, parent in diagram().items():
        cls = classes[name]
        if parent is None:
            assert cls is SyncError
            continue
        assert issubclass(cls, SyncError), name
        # The parent in the tree is the first base that is a SyncError; others are mixins.
        (first,) = [base for base in cls.__bases__ if issubclass(base, SyncError)]
        assert first is classes[parent], (name, parent)


@pytest.mark.parametrize(
    ("cls", "mixin"),
    [
        (UnknownSubscription, LookupError),
        (DeadLettersRemain, ValueError),
        (IndexNameTaken, ValueError),
        (TooManyForARequest, ValueError),
        (DeclarationError, ValueError),
        (MetricsPortUnavailable, OSError),
    ],
)
def test_the_diagrams_mixins_are_kept(cls: type[Exception], mixin: type[Exception]) -> None:
    assert issubclass(cls, mixin)
    line = next(line for line in (errors.__doc__ or "").splitlines() if cls.__name__ in line)
    assert f"(also {mixin.__name__})" in line


def test_an_unknown_subscription_is_said_one_way() -> None:
    assert str(UnknownSubscription("nope")) == "no subscription named 'nope'"
    assert str(UnknownSubscription("nope", ["customers", "orders"])) == (
        "no subscription named 'nope' (known: customers, orders)"
    )
    assert str(UnknownSubscription("or\x00ders", [])) == (
        "no subscription named 'or\\x00ders' (known: none)"
    )
    # Names from the command line are shown as typed, not quoted.
    several = UnknownSubscription(["a", "b"], ["orders"])
    assert str(several) == "no subscription named a, b (known: orders)"
    assert several.names == ["a", "b"] and several.known == ["orders"]


def test_a_name_holding_a_nul_is_unknown_without_asking_the_database() -> None:
    # No database in unit tests: a query would fail; none() sends none.
    assert not Subscription.objects.named("or\x00ders")
    with pytest.raises(UnknownSubscription) as caught:
        subscriptions.named("or\x00ders")
    assert str(caught.value) == "no subscription named 'or\\x00ders'"


async def test_the_async_lookup_says_the_same() -> None:
    with pytest.raises(UnknownSubscription) as caught:
        await subscriptions.anamed("or\x00ders")
    assert str(caught.value) == "no subscription named 'or\\x00ders'"


def test_a_declaration_error_carries_its_problems_as_values() -> None:
    problems = [
        Problem("subscription 'orders'", "source.relation", "required; add it"),
        Problem("subscriptions[1]", "", "expected a mapping with name, source and index"),
        Problem("orders.yaml, line 3, column 1", "", "found a tab"),
        Problem("", "", "... and 2 more errors"),
    ]
    error = DeclarationError(problems)
    assert error.problems == problems
    assert error.errors == [
        "subscription 'orders': source.relation: required; add it",
        "subscriptions[1]: expected a mapping with name, source and index",
        "orders.yaml, line 3, column 1: found a tab",
        "... and 2 more errors",
    ]
    assert str(error) == "\n".join(error.errors)


def test_the_file_loader_reports_entry_path_and_message_apart() -> None:
    from syncer.operations.declarations import parse

    entry = {
        "name": "orders",
        "source": {"kind": "postgres", "dsn": "env:SOURCE_DATABASE_URL"},
        "index": {"name": "orders"},
    }
    text = json.dumps({"subscriptions": [entry, 3]})
    with pytest.raises(DeclarationError) as caught:
        parse(text, filename="f.json")
    assert caught.value.problems == [
        Problem(
            "subscription 'orders'",
            "source.relation",
            "required; add it (e.g. public.orders)",
        ),
        Problem(
            "subscriptions[1]", "", "expected a mapping with name, source and index, got a number"
        ),
    ]
    with pytest.raises(DeclarationError) as caught:
        parse("[]", filename="f.json")
    assert caught.value.problems == [
        Problem("f.json", "", "the file must be a mapping with a 'subscriptions' list, not a list")
    ]
