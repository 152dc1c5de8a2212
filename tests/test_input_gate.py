"""The input gate: arrival order live (the RECV determinant), logged order during a replay."""

from __future__ import annotations

import asyncio
from collections import deque

import pytest

from engine.codec import Batch
from engine.errors import ProtocolError
from engine.instance import InputGate


class FakeChannel:
    """What the gate uses of an InputChannel: take(), pending, finished, broken."""

    def __init__(self, name: str):
        from engine.channel import ChannelId

        self.channel_id = ChannelId(name, "x/0", 0)
        self.buffer: deque[Batch] = deque()
        self.eos = False
        self.broken: BaseException | None = None
        self.seq = 0

    def deliver(self, gate: InputGate, index: int, eos: bool = False) -> None:
        if eos:
            self.eos = True
        else:
            self.seq += 1
            self.buffer.append(Batch(self.seq, [f"{self.channel_id.src}-{self.seq}"]))
        gate.notify(index)

    def take(self) -> Batch | None:
        return self.buffer.popleft() if self.buffer else None

    @property
    def pending(self) -> int:
        return len(self.buffer)

    @property
    def finished(self) -> bool:
        return self.eos and not self.buffer


async def test_live_order_is_arrival_order():
    a, b = FakeChannel("a/0"), FakeChannel("b/0")
    gate = InputGate([a, b])
    for index, ch in [(1, b), (0, a), (1, b)]:
        ch.deliver(gate, index)
    got = [(i, batch.records[0]) for i, batch in [await gate.next(0.1) for _ in range(3)]]
    assert got == [(1, "b/0-1"), (0, "a/0-1"), (1, "b/0-2")]
    assert await gate.next(0.01) is None and not gate.finished


async def test_replay_takes_the_logged_channel_and_holds_early_arrivals():
    a, b = FakeChannel("a/0"), FakeChannel("b/0")
    gate = InputGate([a, b])
    # arrivals after a restart come in another order than the one the log recorded
    b.deliver(gate, 1)
    b.deliver(gate, 1)
    logged = [0, 1, 0, 1]  # RECV determinants of the original run

    async def late_a() -> None:
        await asyncio.sleep(0.02)
        a.deliver(gate, 0)
        await asyncio.sleep(0.02)
        a.deliver(gate, 0)

    feeder = asyncio.create_task(late_a())
    replayed = [(await gate.take_from(i)).records[0] for i in logged]
    await feeder
    assert replayed == ["a/0-1", "b/0-1", "a/0-2", "b/0-2"]
    # live again: nothing is lost or taken twice, and the end of both streams ends the gate
    gate.rescan()
    b.deliver(gate, 1)
    a.deliver(gate, 0, eos=True)
    b.deliver(gate, 1, eos=True)
    item = await gate.next(0.1)
    assert item is not None and item[1].records[0] == "b/0-3"
    assert await gate.next(0.1) is None and gate.finished


async def test_replay_waiting_on_an_ended_channel_is_a_divergence():
    a = FakeChannel("a/0")
    gate = InputGate([a])
    a.deliver(gate, 0, eos=True)
    with pytest.raises(
        ProtocolError, match="replay of x/0 needs another batch from a/0, but that channel has ended"
    ):
        await gate.take_from(0)


async def test_end_of_stream_seen_during_a_replay_still_ends_the_gate():
    a, b = FakeChannel("a/0"), FakeChannel("b/0")
    gate = InputGate([a, b])
    a.deliver(gate, 0)
    a.deliver(gate, 0, eos=True)
    b.deliver(gate, 1, eos=True)
    assert (await gate.take_from(0)).records == ["a/0-1"]
    gate.rescan()
    assert await gate.next(0.1) is None and gate.finished


async def test_a_cancel_that_comes_with_a_batch_is_not_lost():
    """Cancelled in the loop turn its batch arrived, a waiting gate raises CancelledError.

    (asyncio.wait_for of Python 3.11 returned the batch instead when its inner wait completed in the
    same turn as the cancel: the instance's task would go on after being cancelled.)
    """
    a = FakeChannel("a/0")
    gate = InputGate([a])

    async def consume() -> None:
        while True:
            await gate.next(5.0)

    task = asyncio.create_task(consume())
    await asyncio.sleep(0.01)  # waiting in next()
    a.deliver(gate, 0)  # wakes it...
    task.cancel()  # ...in the same turn as the cancel
    done, _ = await asyncio.wait([task], timeout=1.0)
    assert task in done and task.cancelled()
