"""The matched event's JSON and msg id, and the checks of the NATS settings."""

from __future__ import annotations

import dataclasses
import uuid
from typing import Any

import pytest

from syncer.checks import check_worker_settings
from syncer.conf import NatsConfig
from syncer.live.events import MatchedEvent, valid_gateway_id
from syncer.validators import gateway_id_problem

LIVE_ID = uuid.UUID("6f1c2a4e-8d4b-4c1e-9a57-3f0e2b7d9c10")


def event(**changes: object) -> MatchedEvent:
    base = MatchedEvent(LIVE_ID, "gw-1", "orders", "upsert", "42", 1000, 1.7e9, {"id": 42})
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def test_the_json_reads_back_as_the_same_event() -> None:
    for sample in (event(), event(op="delete", document=None, key="a|b\\c")):
        assert MatchedEvent.from_json(sample.to_json()) == sample


def test_document_keys_that_are_not_strings_are_written_as_text() -> None:
    assert MatchedEvent.from_json(event(document={1: "one"}).to_json()).document == {"1": "one"}


def test_the_msg_id_depends_on_live_subscription_position_and_key_only() -> None:
    same = event(document={"id": 42, "changed": True}, commit_time=0.0, subscription="other")
    assert same.msg_id == event().msg_id
    ids = {
        event().msg_id,
        event(position=1001).msg_id,
        event(key="43").msg_id,
        event(live_subscription_id=uuid.uuid4()).msg_id,
    }
    assert len(ids) == 4
    # Stable across processes and releases: the id a restarted worker publishes again.
    assert (
        event().msg_id == "6f1c2a4e8d4b4c1e9a573f0e2b7d9c10:1000:755345b7ef54b0d592c17e04737ab3d9"
    )


def test_a_long_or_odd_key_gives_a_short_header_safe_msg_id() -> None:
    msg_id = event(key="x\r\n" * 10_000).msg_id
    assert len(msg_id) < 100 and "\n" not in msg_id


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"op": "insert"}, "op must be one of upsert, delete, not 'insert'"),
        ({"gateway_id": "a.b"}, "gateway_id 'a.b' is not one NATS subject token"),
        ({"gateway_id": ""}, "is not one NATS subject token"),
        ({"gateway_id": "g" * 129}, "use 1 to 128"),
    ],
)
def test_an_event_that_cannot_be_addressed_is_refused(
    changes: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        event(**changes)


def test_json_without_a_field_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="needs the field 'position'"):
        MatchedEvent.from_json(
            f'{{"live_subscription_id": "{LIVE_ID}", "gateway_id": "g", "subscription": "s", '
            '"op": "upsert", "key": "k"}'
        )


def test_subjects_follow_the_prefix_gateway_and_live_subscription() -> None:
    config = NatsConfig(subject_prefix="acme.events")
    assert config.subject("gw-1", str(LIVE_ID)) == f"acme.events.gw-1.{LIVE_ID}"
    assert config.stream_subjects == ["acme.events.>"]
    assert NatsConfig(url="nats://a:4222, nats://b:4222").servers == [
        "nats://a:4222",
        "nats://b:4222",
    ]


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"duplicate_window": 600, "max_age": 60}, r"DUPLICATE_WINDOW_SECONDS \(600\) must not"),
        ({"max_age": 0}, "must be positive"),
        ({"stream": "has.dot"}, "LIVE_NATS_STREAM 'has.dot'"),
        ({"subject_prefix": "events.>"}, "no wildcards"),
        ({"buffer": 0}, "LIVE_NATS_BUFFER"),
    ],
)
def test_settings_jetstream_would_refuse_are_refused_with_the_setting_named(
    settings: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        NatsConfig(**settings)  # type: ignore[arg-type]


def test_django_check_reports_nats_settings_jetstream_would_refuse(settings: Any) -> None:
    settings.LIVE_NATS_MAX_AGE_SECONDS = 60
    settings.LIVE_NATS_DUPLICATE_WINDOW_SECONDS = 120
    errors = [e for e in check_worker_settings(None) if e.id == "syncer.E014"]
    assert [e.msg for e in errors] == [
        "LIVE_NATS_DUPLICATE_WINDOW_SECONDS (120) must not exceed LIVE_NATS_MAX_AGE_SECONDS "
        "(60): JetStream refuses such a stream"
    ]
    settings.LIVE_NATS_DUPLICATE_WINDOW_SECONDS = 30
    assert not [e for e in check_worker_settings(None) if e.id == "syncer.E014"]


@pytest.mark.parametrize(
    "gateway_id",
    ["gw-1", "a", "A_b-9", "x" * 128, "x" * 129, "", "a.b", "a*", "a>", "a b", "é", "gw/1"],
)
def test_the_model_and_the_event_agree_on_what_a_gateway_id_may_be(gateway_id: str) -> None:
    assert valid_gateway_id(gateway_id) is (gateway_id_problem(gateway_id) is None)
