"""One output edge of a task instance: partitioning, per-channel buffers, and the event time batches carry.

Records are split by the edge's partitioner (a stable hash for ``key_by``, round-robin for
``rebalance``) into one buffer per receiving channel; a full buffer leaves at once (a deterministic
point), a partial one when the instance's flush timer fires (a logged ``FLUSH``). On a timed edge the
records are ``(timestamp, value)`` pairs, and each batch carries the watermark (and idleness) of the
instance as of its oldest record; see :mod:`engine.instance` for why.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from engine.errors import SerializationError
from engine.fault_tolerance import ChannelSender
from engine.graph import Step
from engine.partition import HashPartitioner, RoundRobinPartitioner
from engine.plan import TaskOutput
from operators.base import OperatorContext, locate_failure

__all__ = ["OutputRouter"]


class OutputRouter:
    """One output edge of a task instance: partitions records into per-channel buffers and sends them."""

    def __init__(
        self,
        output: TaskOutput,
        senders: list[ChannelSender],
        batch_size: int,
        owner: OperatorContext,
        keyed_step: Step,
    ):
        self.output = output
        self.keyed_step = keyed_step
        self.senders = senders
        self.batch_size = batch_size
        self.owner = owner  # the step of the chain whose records these are
        self.buffers: list[list[Any]] = [[] for _ in senders]
        #: per buffer, the ingestion stamp of its oldest record (engine.metrics)
        self.ingest: list[int | None] = [None] * len(senders)
        n = len(senders)
        #: the event time every batch sent now carries: the instance's watermark, and whether it is idle
        self.watermark: int | None = None
        self.idle = False
        #: per channel, the watermark and idleness its last batch carried
        self.sent: list[tuple[int | None, bool]] = [(None, False)] * n
        #: per buffer, the event time when its oldest record was added: what its batch carries
        self.time_of: list[tuple[int | None, bool]] = [(None, False)] * n
        self.stale = False  # some channel has not been sent the current watermark or idleness
        self.partitioner: HashPartitioner | RoundRobinPartitioner | None
        if n == 1:
            self.partitioner = None
        elif output.partitioning == "hash":
            key_fn = output.key_fn
            assert key_fn is not None
            if output.timed:  # (timestamp, value) pairs: the key function reads the value
                self.partitioner = HashPartitioner(lambda pair: key_fn(pair[1]), n)
            else:
                self.partitioner = HashPartitioner(key_fn, n)
        else:
            self.partitioner = RoundRobinPartitioner(n)

    def set_time(self, watermark: int | None, idle: bool) -> None:
        """The event time the next batches carry; channels not yet told are *stale*."""
        if watermark != self.watermark or idle != self.idle:
            self.watermark, self.idle = watermark, idle
            self.stale = True

    def add(self, records: Sequence[Any], ingest_ns: int | None = None) -> bool:
        """Buffer ``records`` (stamped ``ingest_ns``); True if some buffer is now full."""
        if self.partitioner is None:
            buf = self.buffers[0]
            if not buf:
                self.ingest[0] = ingest_ns
                self.time_of[0] = (self.watermark, self.idle)
            buf.extend(records)
            return len(buf) >= self.batch_size
        try:
            parts = self.partitioner.split(records)
        except SerializationError:
            raise
        except Exception as exc:  # the key function is the downstream step's, run here to route
            assert self.output.key_fn is not None
            # the key function belongs to the keyed step downstream: name that step, and where it ran
            keyed = OperatorContext(self.keyed_step, f"{self.owner.instance}, routing", self.owner.index, 0)
            values = [v for _, v in records] if self.output.timed else records
            raise locate_failure(keyed, self.output.key_fn, values, exc) from None
        full = False
        for j, (buf, part) in enumerate(zip(self.buffers, parts, strict=True)):
            if part:
                if not buf:
                    self.ingest[j] = ingest_ns
                    self.time_of[j] = (self.watermark, self.idle)
                buf.extend(part)
                full = full or len(buf) >= self.batch_size
        return full

    async def send_full(self) -> None:
        size = self.batch_size
        for j, buf in enumerate(self.buffers):
            while len(buf) >= size:
                chunk = buf[:size]
                del buf[:size]
                await self._send(j, chunk)

    async def flush(self) -> None:
        """Send every partially filled buffer (after :meth:`send_full`), and the current event time
        in a record-less batch to every channel that has not had it yet."""
        await self.send_full()
        for j, buf in enumerate(self.buffers):
            if buf:
                self.buffers[j] = []
                await self._send(j, buf)
        if self.stale:
            now = (self.watermark, self.idle)
            for j, sent in enumerate(self.sent):
                if sent != now:
                    self.ingest[j] = None
                    await self._send(j, [])
            self.stale = False

    async def _send(self, j: int, records: list[Any]) -> None:
        watermark, idle = self.time_of[j] if records else (self.watermark, self.idle)
        self.sent[j] = (watermark, idle)
        try:
            await self.senders[j].send(records, self.ingest[j], watermark, idle)
        except SerializationError as exc:
            raise SerializationError(
                f"step {self.owner.step.name!r} (instance {self.owner.instance}) emitted a record for step "
                f"{self.output.downstream!r} that cannot cross a channel: {exc}"
            ) from exc

    @property
    def buffered(self) -> int:
        return sum(map(len, self.buffers))

    def snapshot(self) -> Any:
        """The router's own state for a checkpoint (buffers are empty): where round-robin continues,
        and, on a timed output, the event time each channel was last sent."""
        position = self.partitioner.next if isinstance(self.partitioner, RoundRobinPartitioner) else 0
        if not self.output.timed:
            return position
        return [position, self.watermark, self.idle, self.sent]

    def restore(self, state: Any) -> None:
        position = state
        if isinstance(state, list | tuple):
            position, watermark, idle, sent = state
            self.watermark, self.idle = watermark, bool(idle)
            self.sent = [(w, bool(i)) for w, i in sent]
            self.stale = any(x != (watermark, idle) for x in self.sent)
        if isinstance(self.partitioner, RoundRobinPartitioner):
            self.partitioner.next = position
