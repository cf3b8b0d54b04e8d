"""console.live.sequences: events lost upstream of a socket, found from the worker's
numbers, and told through the socket's send buffer in their place in the stream."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import pytest

from console.live.send_buffer import SendBuffer
from console.live.sequences import Gap, Sequences
from syncer.live.events import LIVE_MESSAGE_TYPE, live_message
from tests.unit.test_send_buffer import Client, kinds, never_behind

A = uuid.UUID("11111111-2222-3333-4444-555555555555")
B = uuid.UUID("99999999-8888-7777-6666-555555555555")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        self.now += 1
        return self.now


def message(live: uuid.UUID, number: int, epoch: str = "run-1") -> dict[str, Any]:
    return live_message('{"key":"k"}', live.hex, epoch, number)


def gaps(sequences: Sequences, *numbers: int, live: uuid.UUID = A, epoch: str = "run-1"):
    return [sequences.gap(message(live, n, epoch)) for n in numbers]


def test_the_worker_message_carries_its_number_epoch_and_live_subscription() -> None:
    assert message(A, 7) == {
        "type": LIVE_MESSAGE_TYPE,
        "event": '{"key":"k"}',
        "live": A.hex,
        "epoch": "run-1",
        "seq": 7,
    }


def test_consecutive_numbers_are_no_gap_and_a_jump_counts_the_missing_ones() -> None:
    sequences = Sequences(clock=Clock())
    found = gaps(sequences, 1, 2, 3, 7, 8, 10)
    assert found[:3] == [None, None, None]
    assert found[3] == Gap(A.hex, 3, 1003.0), "4, 5, 6 lost after the event received at 1003"
    assert found[4] is None
    assert found[5] == Gap(A.hex, 1, 1005.0)


def test_the_first_message_of_a_resumed_live_subscription_is_no_gap() -> None:
    # Resumed mid-stream: what came before the socket held it was not for it.
    assert gaps(Sequences(), 500, 501) == [None, None]


def test_a_registered_live_subscription_counts_from_its_first_number() -> None:
    sequences = Sequences(clock=Clock())
    sequences.expect(A.hex)  # registered at 1001
    sequences.expect(B.hex)
    assert gaps(sequences, 1, 2, live=A) == [None, None]
    assert gaps(sequences, 4, live=B) == [Gap(B.hex, 3, 1002.0)], "1 to 3 lost since 1002"


def test_each_live_subscription_is_counted_on_its_own() -> None:
    sequences = Sequences(clock=Clock())
    assert gaps(sequences, 1, 2, live=A) == [None, None]
    assert gaps(sequences, 1, 4, live=B) == [None, Gap(B.hex, 2, 1003.0)]
    assert gaps(sequences, 3, live=A) == [None]


@pytest.mark.parametrize(
    "epoch",
    [
        pytest.param("run-2", id="a new worker run"),
        pytest.param("run-1", id="the worker took the subscription back"),
    ],
)
def test_a_count_started_again_is_counted_from_1(epoch: str) -> None:
    sequences = Sequences(clock=Clock())
    assert gaps(sequences, 7, 8) == [None, None]
    assert gaps(sequences, 1, 2, epoch=epoch) == [None, None]
    assert gaps(sequences, 5, epoch=epoch) == [Gap(A.hex, 2, 1004.0)], "3 and 4"


def test_numbers_lost_at_the_start_of_a_new_run_are_counted() -> None:
    sequences = Sequences(clock=Clock())
    assert gaps(sequences, 7, 8) == [None, None]
    assert gaps(sequences, 3, epoch="run-2") == [Gap(A.hex, 2, 1002.0)], "1 and 2 of run-2"


def test_messages_without_a_number_tell_nothing() -> None:
    sequences = Sequences()
    assert sequences.gap({"type": LIVE_MESSAGE_TYPE, "event": "{}"}) is None
    assert sequences.gap({"live": A.hex, "epoch": "x", "seq": "3"}) is None
    assert len(sequences) == 0


def test_forget_lets_a_live_subscription_go() -> None:
    sequences = Sequences()
    gaps(sequences, 1)
    sequences.forget(A.hex)
    sequences.forget(B.hex)  # never seen: nothing to do
    assert len(sequences) == 0
    assert gaps(sequences, 9) == [None]


def test_the_summary_names_where_and_which_live_subscription() -> None:
    assert json.loads(Gap(A.hex, 4, 1234.5).summary()) == {
        "type": "dropped",
        "count": 4,
        "since": 1234.5,
        "where": "upstream",
        "live_subscription_id": str(A),
    }


async def test_the_buffer_sends_the_gap_just_before_the_event_that_revealed_it() -> None:
    client = Client()
    buffer = SendBuffer(client.send, size=10, behind=60, on_behind=never_behind)
    buffer.start("t")
    buffer.offer("e1")
    buffer.offer("e5", Gap(A.hex, 3, 1.0))
    buffer.offer("e6")
    await client.read(4)
    assert kinds(client.received) == ["e1", "dropped", "e5", "e6"]
    assert json.loads(client.received[1])["where"] == "upstream"
    assert buffer.lost_upstream_total == 3
    assert buffer.dropped_total == 0, "lost upstream, not dropped by the socket"
    await buffer.stop()


async def test_a_gap_whose_event_the_full_buffer_drops_joins_the_buffer_summary() -> None:
    client = Client()
    buffer = SendBuffer(client.send, size=1, behind=60, on_behind=never_behind)
    buffer.start("t")
    await asyncio.sleep(0)
    buffer.offer("e0")
    await asyncio.sleep(0)  # the sender holds e0, waiting on the client
    buffer.offer("e1")  # buffered
    assert not buffer.offer("e9", Gap(A.hex, 7, 1.0))  # dropped, and 2..8 lost before it
    await client.read(3)
    assert kinds(client.received) == ["e0", "e1", "dropped"]
    summary = json.loads(client.received[2])
    assert (summary["count"], summary["where"]) == (8, "socket"), "7 upstream + e9"
    assert (buffer.lost_upstream_total, buffer.dropped_total) == (7, 1)
    await buffer.stop()
