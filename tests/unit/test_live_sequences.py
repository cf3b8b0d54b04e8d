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


def test_the_first_message_a_socket_sees_is_no_gap() -> None:
    # A socket that joins (or resumes) mid-stream: what came before was not for it.
    assert gaps(Sequences(), 500, 501) == [None, None]


def test_each_live_subscription_is_counted_on_its_own() -> None:
    sequences = Sequences(clock=Clock())
    assert gaps(sequences, 1, 2, live=A) == [None, None]
    assert gaps(sequences, 1, 4, live=B) == [None, Gap(B.hex, 2, 1003.0)]
    assert gaps(sequences, 3, live=A) == [None]


@pytest.mark.parametrize(
    ("second", "epoch"),
    [
        pytest.param(90, "run-2", id="a new worker run"),
        pytest.param(1, "run-1", id="the counter started again"),
        pytest.param(5, "run-1", id="the same number twice"),
    ],
)
def test_a_new_epoch_or_a_number_not_above_the_last_starts_again(second: int, epoch: str) -> None:
    sequences = Sequences()
    assert gaps(sequences, 5) == [None]
    assert gaps(sequences, second, epoch=epoch) == [None]
    assert gaps(sequences, second + 1, epoch=epoch) == [None], "counted from there on"
    assert gaps(sequences, second + 3, epoch=epoch)[0] is not None


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
