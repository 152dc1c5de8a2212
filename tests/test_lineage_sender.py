"""engine.lineage.LineageSender: the end of stream reaches a restarted receiver exactly once.

A sender's ``send_eos`` marks the stream ended and then waits for the channel's lock; a resync with a
restarted receiver that holds the lock meanwhile resends the logged batches and, seeing the mark,
sends the end of stream on the new connection itself. ``send_eos`` must then not send it a second
time (the channel refuses: the instance failed with "already sent its end of stream", seen in
tests/test_nexmark_jobs.py's q8 under a kill).
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from engine.channel import ChannelId
from engine.errors import ChannelClosed
from engine.lineage import LineageSender
from engine.output_channel import OutputChannelStatistics


class FakeChannel:
    """The part of an OutputChannel the sender's end of stream uses; refuses a second end of stream."""

    last_seq_acked_on_connect = 0

    def __init__(self) -> None:
        self.eos_sent = False
        self.eos_calls = 0

    def statistics(self) -> OutputChannelStatistics:
        return OutputChannelStatistics(0, 0, 0, 0.0, 0)

    async def send_eos(self) -> None:
        self.eos_calls += 1
        if self.eos_sent:
            raise ChannelClosed("output channel x already sent its end of stream")
        self.eos_sent = True


def make_sender(channel: FakeChannel) -> LineageSender:
    ft = SimpleNamespace(services=SimpleNamespace(addresses={}))
    return LineageSender(ft, channel, ChannelId("events/1", "new_users/1", 1), 1, None)  # type: ignore[arg-type]


async def test_send_eos_after_a_resync_that_sent_it_sends_nothing_more():
    old = FakeChannel()
    sender = make_sender(old)
    new = FakeChannel()
    async with sender._lock:  # a resync holds the lock: send_eos marks the stream ended and waits
        waiting = asyncio.create_task(sender.send_eos())
        await asyncio.sleep(0)
        assert sender.eos_sent and not waiting.done()
        sender.channel = new  # what _resync does: the new connection, logged batches, then the EOS
        await new.send_eos()
    await asyncio.wait_for(waiting, 1)
    assert new.eos_calls == 1 and old.eos_calls == 0


async def test_send_eos_sends_it_once_on_a_live_channel():
    channel = FakeChannel()
    sender = make_sender(channel)
    await sender.send_eos()
    assert channel.eos_calls == 1 and channel.eos_sent
