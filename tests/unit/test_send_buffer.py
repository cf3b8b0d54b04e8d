"""console.live.send_buffer: a socket's bounded outgoing buffer, against a client whose
reads the test lets through one by one."""

from __future__ import annotations

import asyncio
import json
import time

from console.live.send_buffer import CONTROL_LIMIT, SendBuffer


class Client:
    """A client that receives only when the test lets it (`read`)."""

    def __init__(self) -> None:
        self.received: list[str] = []
        self._allowed = asyncio.Semaphore(0)

    async def send(self, text: str) -> None:
        await self._allowed.acquire()
        self.received.append(text)

    async def read(self, count: int) -> None:
        for _ in range(count):
            self._allowed.release()
        for _ in range(20):
            await asyncio.sleep(0)


def kinds(received: list[str]) -> list[str]:
    return [text if not text.startswith("{") else json.loads(text)["type"] for text in received]


async def never_behind() -> None:
    raise AssertionError("not behind in this test")


async def test_a_full_buffer_drops_and_then_says_how_many_in_their_place() -> None:
    client = Client()
    started = time.time()
    buffer = SendBuffer(client.send, size=3, behind=60, on_behind=never_behind)
    buffer.start("t")
    await asyncio.sleep(0)
    offered = [buffer.offer("e0")]
    await asyncio.sleep(0)  # the sender takes it, and waits on the client
    offered += [buffer.offer(f"e{i}") for i in range(1, 10)]
    # One in the sender's hands, three buffered, six dropped.
    assert offered == [True] * 4 + [False] * 6
    assert (buffer.dropped, buffer.dropped_total) == (6, 6)
    assert buffer.behind_since is not None

    await client.read(4)
    assert client.received == ["e0", "e1", "e2", "e3"]
    buffer.offer("e10")
    await client.read(2)
    summary = json.loads(client.received[4])
    assert (summary["type"], summary["count"]) == ("dropped", 6)
    assert started <= summary["since"] <= time.time()  # when the first was dropped
    assert client.received[5] == "e10"
    assert (buffer.dropped, buffer.dropped_total) == (0, 6)
    assert buffer.behind_since is None
    await buffer.stop()


async def test_the_summary_is_sent_when_room_returns_even_without_a_new_event() -> None:
    client = Client()
    buffer = SendBuffer(client.send, size=1, behind=60, on_behind=never_behind)
    buffer.start("t")
    await asyncio.sleep(0)
    for i in range(5):
        buffer.offer(f"e{i}")  # e0 buffered, the others dropped
    await client.read(3)
    assert kinds(client.received) == ["e0", "dropped"]
    assert json.loads(client.received[1])["count"] == 4
    await buffer.stop()


async def test_replies_go_first_and_are_never_dropped() -> None:
    client = Client()
    buffer = SendBuffer(client.send, size=1, behind=60, on_behind=never_behind)
    buffer.start("t")
    await asyncio.sleep(0)
    buffer.offer("e0")  # taken by the sender
    await asyncio.sleep(0)
    buffer.offer("e1")
    buffer.offer("e2")  # dropped
    for i in range(3):
        buffer.reply(f"r{i}")
    await client.read(7)
    assert kinds(client.received) == ["e0", "r0", "r1", "r2", "e1", "dropped"]


async def test_a_client_that_stays_behind_is_given_up_on() -> None:
    client = Client()
    gave_up = asyncio.Event()

    async def on_behind() -> None:
        gave_up.set()

    buffer = SendBuffer(client.send, size=2, behind=0.2, on_behind=on_behind)
    buffer.start("t")
    await asyncio.sleep(0)
    for i in range(10):
        buffer.offer(f"e{i}")
    await asyncio.wait_for(gave_up.wait(), timeout=2)
    await buffer.stop()


async def test_too_many_unread_replies_count_as_behind() -> None:
    client = Client()
    gave_up = asyncio.Event()

    async def on_behind() -> None:
        gave_up.set()

    buffer = SendBuffer(client.send, size=10, behind=0.2, on_behind=on_behind)
    buffer.start("t")
    for i in range(CONTROL_LIMIT + 2):
        buffer.reply(f"r{i}")
    await asyncio.wait_for(gave_up.wait(), timeout=2)
    await buffer.stop()


async def test_a_client_that_catches_up_in_time_is_kept() -> None:
    client = Client()
    buffer = SendBuffer(client.send, size=2, behind=0.5, on_behind=never_behind)
    buffer.start("t")
    await asyncio.sleep(0)
    for i in range(6):
        buffer.offer(f"e{i}")
    await asyncio.sleep(0.2)
    await client.read(10)
    await asyncio.sleep(0.6)  # past `behind` since the drops began, but caught up
    assert buffer.behind_since is None
    assert kinds(client.received)[-1] == "dropped"
    await buffer.stop()


async def test_with_a_window_at_most_that_many_events_wait_for_an_ack() -> None:
    sent: list[str] = []

    async def server_that_never_waits(text: str) -> None:
        sent.append(text)  # as daphne: the frame is buffered, the send returns at once

    buffer = SendBuffer(server_that_never_waits, size=3, behind=60, on_behind=never_behind)
    buffer.set_window(2)
    for i in range(8):
        buffer.offer(f"e{i}")  # 3 buffered, 5 dropped
    buffer.reply("r0")
    buffer.start("t")
    await asyncio.sleep(0.05)
    assert kinds(sent) == ["r0", "e0", "e1"]  # replies do not count against the window
    buffer.ack(99)  # more than was sent: counts as all of it
    await asyncio.sleep(0.05)
    assert kinds(sent)[3:] == ["e2", "dropped"]  # the summary is not an event either
    assert json.loads(sent[4])["count"] == 5
    for i in range(8, 11):
        buffer.offer(f"e{i}")
    await asyncio.sleep(0.05)
    assert kinds(sent)[5:] == ["e8"]  # e2 and e8 unacknowledged
    buffer.ack(4)
    await asyncio.sleep(0.05)
    assert kinds(sent)[5:] == ["e8", "e9", "e10"]
    await buffer.stop()
