"""The seam between an instance's loop and its fault-tolerance mode (``--ft``, DESIGN.md §8).

The instance loop (:mod:`engine.instance`) reports every nondeterministic event to a
:class:`FaultTolerance` object and sends every batch through a :class:`ChannelSender` it provides.
This module holds the base classes, which are also the ``none`` mode: events are not recorded,
batches are sent as they are made, and a lost instance fails the job. :mod:`engine.lineage`
implements the lineage stash on the same hooks.

Hook order within one input batch (the order the causal log records, so the order a replay needs):
``on_recv`` (the stash takes the batch's lineage delta first: DESIGN.md §5.2), then the operators run
(``read_time`` / ``read_seed`` through :data:`engine.ctx`), then ``ChannelSender.send`` for full
buffers; ``on_flush`` when the latency timer sends partial buffers; ``between_batches`` last.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from engine.channel import Address, ChannelId
from engine.codec import Batch
from engine.context import BatchClock
from engine.errors import ProtocolError
from engine.output_channel import OutputChannel, OutputChannelStatistics

if TYPE_CHECKING:
    from engine.causal_log import LogCursor
    from engine.instance import TaskInstance
    from operators.base import OutputGate

__all__ = ["ChannelSender", "FaultTolerance"]


class ChannelSender:
    """Sends the batches of one output channel, numbering them 1, 2, 3... (mode ``none``)."""

    def __init__(self, channel: OutputChannel, channel_id: ChannelId):
        self.channel = channel
        self.channel_id = channel_id
        self.next_seq = 1

    async def send(
        self,
        records: Sequence[Any],
        ingest_ns: int | None = None,
        watermark: int | None = None,
        idle: bool = False,
    ) -> None:
        """Send one batch; ``watermark`` and ``idle`` are the sender's event time after its records."""
        seq = self.next_seq
        self.next_seq = seq + 1
        await self.channel.send(Batch(seq, records, watermark=watermark, ingest_ns=ingest_ns, idle=idle))

    async def send_barrier(self, checkpoint_id: int) -> None:
        """A checkpoint barrier (``--ft checkpoint``): a record-less batch, in order with the data."""
        seq = self.next_seq
        self.next_seq = seq + 1
        await self.channel.send(Batch(seq, (), barrier=checkpoint_id))

    async def send_eos(self) -> None:
        await self.channel.send_eos()

    async def aclose(self) -> None:
        await self.channel.aclose()

    def statistics(self) -> OutputChannelStatistics:
        return self.channel.statistics()


class FaultTolerance:
    """Mode ``none``: no logging, no checkpoints; the base class of the other modes."""

    mode = "none"
    #: True while the instance re-executes its logged history after a restart
    replaying = False
    #: the recovered log a replay follows (modes that recover set it)
    cursor: LogCursor | None = None
    #: restarts of this instance so far (modes that recover count them)
    incarnation = 0
    #: restored at the end of its input: the instance only has its end of stream left to send
    input_done = False

    def __init__(self, instance: TaskInstance):
        self.instance = instance
        self.clock = BatchClock(self.read_time, self.read_seed)

    # -- lifecycle -------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Called once the output channels are connected, before the first batch."""

    async def finish(self) -> None:
        """Called after the last batch and before the end of stream is sent downstream."""

    async def aclose(self) -> None:
        """Release what the mode holds (background tasks, logs)."""

    async def replay_done(self) -> None:
        """The recovered log is exhausted: the instance is live again (DESIGN.md §7.5)."""
        self.replaying = False

    # -- what operators get ----------------------------------------------------------------------------

    def state_opener(self) -> Callable[[str], Any] | None:
        """Opens a keyed step's state; ``None``: operators keep state in memory."""
        return None

    def output_gate(self) -> OutputGate | None:
        """Where sinks hold output until it may be released; ``None``: they write at once."""
        return None

    # -- nondeterministic events -----------------------------------------------------------------------

    def on_recv(self, index: int, batch: Batch) -> None:
        """The instance took ``batch`` from input channel ``index`` and is about to process it."""
        self.clock.next_batch()

    def on_source(self, offset: Any, count: int) -> None:
        """A source reader cut a batch of ``count`` records starting at ``offset``."""
        self.clock.next_batch()

    def on_flush(self) -> None:
        """The latency timer fired: partially filled buffers are being sent."""

    def on_timer(self, time_ns: int) -> None:
        """Processing-time timers due at ``time_ns`` fire now, between two batches."""
        self.clock.next_batch()

    def on_idle(self) -> None:
        """A source produced nothing for its idle timeout and declares its event time idle."""

    async def on_barrier(self, index: int, checkpoint_id: int) -> None:
        """A checkpoint barrier arrived on input ``index`` (only ``--ft checkpoint`` sends them)."""
        raise ProtocolError(
            f"instance {self.instance.name} received checkpoint barrier {checkpoint_id} but runs --ft "
            f"{self.mode}: every instance of a job must run the same fault-tolerance mode"
        )

    async def on_input_change(self) -> None:
        """An input ended, or the input gate has nothing to offer but blocked inputs."""

    def read_time(self) -> int:
        return time.time_ns()

    def read_seed(self) -> int:
        return secrets.randbits(63)

    # -- output ----------------------------------------------------------------------------------------

    async def open_output(self, address: Address, channel_id: ChannelId) -> OutputChannel:
        """Connect an output channel (modes that recover wait for a receiver that is restarting)."""
        return await self.instance.open_channel(address, channel_id)

    def sender(self, channel: OutputChannel, channel_id: ChannelId) -> ChannelSender:
        return ChannelSender(channel, channel_id)

    async def between_batches(self) -> None:
        """Called by the loop between two batches: the place for checkpoints."""

    def statistics(self) -> dict[str, Any]:
        return {}
