"""The pure rules of live subscriptions: gateway ids, the quota's and problems' words,
and the system checks of their settings."""

from __future__ import annotations

from typing import Any

import pytest

from syncer import checks, conf
from syncer.engine.matching import DEFAULT_UNPINNED_QUOTA
from syncer.errors import InvalidLiveSubscriptions, LiveSubscriptionProblem, QuotaExceeded
from syncer.validators import GATEWAY_ID_MAX, gateway_id_problem


@pytest.mark.parametrize("good", ["gw-1", "Gateway_EU_2", "x", "a" * GATEWAY_ID_MAX])
def test_gateway_ids_that_are_one_nats_subject_token_are_accepted(good: str) -> None:
    assert gateway_id_problem(good) is None


@pytest.mark.parametrize(
    ("bad", "says"),
    [
        ("", "required"),
        ("gw.eu", "letters, digits, _ and -"),
        ("gw*", "letters, digits, _ and -"),
        ("gw>", "letters, digits, _ and -"),
        ("gw 1", "letters, digits, _ and -"),
        ("gw\x00", "letters, digits, _ and -"),
        ("gäteway", "letters, digits, _ and -"),
        ("a" * (GATEWAY_ID_MAX + 1), f"at most {GATEWAY_ID_MAX}"),
    ],
)
def test_other_gateway_ids_are_refused_saying_why(bad: str, says: str) -> None:
    problem = gateway_id_problem(bad)
    assert problem is not None and says in problem


def test_a_quota_refusal_names_the_limit_its_setting_and_what_to_do() -> None:
    owner = QuotaExceeded(10_000, "owner", 9_990, 20)
    assert str(owner) == (
        "live subscription quota exceeded: this owner has 9,990 and may have at most 10,000 "
        "(LIVE_SUBSCRIPTIONS_PER_OWNER), so 20 more cannot be registered; delete some, or let "
        "unused ones expire, and try again"
    )
    assert (owner.limit, owner.scope, owner.active, owner.requested) == (10_000, "owner", 9_990, 20)
    assert "all owners together have 5 " in str(QuotaExceeded(5, "global", 5, 1))
    unpinned = QuotaExceeded(350, "unpinned", 350, 1, "orders")
    assert str(unpinned).startswith(
        "live subscription quota exceeded: subscription orders has 350 live subscriptions "
        "whose filter pins no value, and may have at most 350 "
        "(LIVE_SUBSCRIPTIONS_UNPINNED_PER_SUBSCRIPTION)"
    )
    assert 'pin a value at the top level of the filter (doc.tenant == "acme"' in str(unpinned)
    assert "(LIVE_SUBSCRIPTIONS_MAX)" in str(QuotaExceeded(5, "global", 5, 1))


def test_problems_say_the_entry_the_field_and_the_position() -> None:
    error = InvalidLiveSubscriptions(
        [
            LiveSubscriptionProblem(0, "filter", "unknown variable 'dc'", 4),
            LiveSubscriptionProblem(2, "subscription", "no subscription named 'x'"),
            LiveSubscriptionProblem(None, "gateway_id", "required"),
        ]
    )
    assert str(error) == (
        "[0] filter (at 4): unknown variable 'dc'; [2] subscription: no subscription named "
        "'x'; gateway_id: required"
    )


def test_the_settings_are_read_with_their_defaults(settings: Any) -> None:
    del settings.LIVE_SUBSCRIPTION_TTL_SECONDS
    del settings.LIVE_SUBSCRIPTIONS_PER_OWNER
    del settings.LIVE_SUBSCRIPTIONS_MAX
    read = conf.live_subscriptions()
    assert (read.ttl.total_seconds(), read.per_owner, read.total) == (300, 10_000, 200_000)
    # The matcher's benchmark sets it: one number, in syncer.engine.matching.
    assert read.unpinned_per_subscription == DEFAULT_UNPINNED_QUOTA == 350


@pytest.mark.parametrize(
    ("name", "value", "check_id"),
    [
        ("LIVE_SUBSCRIPTION_TTL_SECONDS", 0, "syncer.E008"),
        ("LIVE_SUBSCRIPTIONS_PER_OWNER", 0, "syncer.E009"),
        ("LIVE_SUBSCRIPTIONS_MAX", 0, "syncer.E009"),
        ("LIVE_SUBSCRIPTIONS_UNPINNED_PER_SUBSCRIPTION", -1, "syncer.E010"),
    ],
)
def test_settings_that_would_refuse_every_registration_fail_the_checks(
    settings: Any, name: str, value: int, check_id: str
) -> None:
    ours = {"syncer.E008", "syncer.E009", "syncer.E010"}
    assert not [e for e in checks.check_worker_settings(None) if e.id in ours]
    setattr(settings, name, value)
    found = [e for e in checks.check_worker_settings(None) if e.id == check_id]
    assert len(found) == 1 and name in found[0].msg
