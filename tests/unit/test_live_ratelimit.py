"""The live monitor's per-subscription budget of individual events, and its drop summaries."""

from __future__ import annotations

import pytest

from syncer.engine.ratelimit import EventBudget


def test_events_within_the_limit_are_all_admitted_and_nothing_is_owed() -> None:
    budget = EventBudget(per_second=10)
    assert budget.admit("orders", 4, now=100.0) == 4
    assert budget.admit("orders", 6, now=100.5) == 6
    assert budget.summaries(now=101.5) == {}


def test_events_beyond_the_limit_in_one_second_are_counted_not_admitted() -> None:
    budget = EventBudget(per_second=10)
    assert budget.admit("orders", 8, now=100.0) == 8
    assert budget.admit("orders", 5, now=100.2) == 2
    assert budget.admit("orders", 3, now=100.9) == 0
    assert budget.pending("orders") == 6


def test_the_summary_comes_once_the_window_has_ended_and_only_once() -> None:
    budget = EventBudget(per_second=2)
    budget.admit("orders", 5, now=100.0)
    assert budget.summaries(now=100.5) == {}  # the second is not over: more may come
    budget.admit("orders", 4, now=100.7)
    assert budget.summaries(now=101.0) == {"orders": 7}
    assert budget.summaries(now=101.1) == {}
    assert budget.pending("orders") == 0


def test_a_new_second_gives_the_full_budget_again() -> None:
    budget = EventBudget(per_second=3)
    assert budget.admit("orders", 10, now=100.0) == 3
    assert budget.admit("orders", 10, now=101.0) == 3
    # The first window ended when the second began: its drops are owed, the second's not yet.
    assert budget.summaries(now=101.5) == {"orders": 7}
    assert budget.summaries(now=102.0) == {"orders": 7}


def test_subscriptions_have_budgets_of_their_own() -> None:
    budget = EventBudget(per_second=5)
    assert budget.admit("orders", 9, now=100.0) == 5
    assert budget.admit("users", 3, now=100.1) == 3
    assert budget.admit("users", 4, now=100.2) == 2
    assert budget.summaries(now=101.2) == {"orders": 4, "users": 2}


def test_drops_counted_outside_the_budget_join_the_summary() -> None:
    budget = EventBudget(per_second=5)
    budget.admit("orders", 5, now=100.0)
    budget.drop("orders", 12, now=100.3)  # the queue was full
    budget.drop("users", 1, now=100.3)
    assert budget.summaries(now=101.3) == {"orders": 12, "users": 1}


def test_a_zero_budget_summarises_everything() -> None:
    budget = EventBudget(per_second=0)
    assert budget.admit("orders", 3, now=100.0) == 0
    assert budget.summaries(now=101.0) == {"orders": 3}


def test_a_forgotten_subscription_owes_nothing() -> None:
    budget = EventBudget(per_second=1)
    budget.admit("orders", 3, now=100.0)
    budget.forget("orders")
    assert budget.summaries(now=102.0) == {}
    assert budget.admit("orders", 3, now=102.0) == 1


def test_a_negative_budget_is_refused_with_what_to_fix() -> None:
    with pytest.raises(ValueError, match="0 or more"):
        EventBudget(per_second=-1)
