"""Flink-style global checkpoints inside one task instance: mode ``--ft checkpoint`` (DESIGN.md §8).

The baseline the lineage stash is measured against, built on the same hooks (:mod:`engine.fault_tolerance`):

* **Barriers.** The coordinator triggers checkpoint ``n`` at every source instance; a source, between
  two batches, flushes its buffers, snapshots itself and sends a *barrier* (a record-less batch with
  ``barrier=n``, :class:`engine.codec.Batch`) on every output channel, in order with the data.
* **Alignment.** An instance with several inputs that receives barrier ``n`` on one stops taking
  batches from it (they wait in the channel, whose credits then hold the sender back) until barrier
  ``n`` came on every input still open; then it snapshots and forwards the barrier. Everything
  before the barriers is in the snapshot, nothing after: the snapshots of all instances form one
  consistent cut.
* **Acknowledgment.** Each instance writes its snapshot (keyed state through
  :class:`~engine.checkpoint.CheckpointStore`, a :class:`~engine.checkpoint.CheckpointRecord` with
  operator state and the source offset) and acknowledges it; checkpoint ``n`` is complete once every
  instance did (:mod:`engine.global_rollback`).
* **Transactional sinks (two-phase commit).** A sink holds its output: the batches of epoch ``n``
  (after barrier ``n-1``, up to barrier ``n``) are pre-committed by snapshot ``n`` and written once
  checkpoint ``n`` is complete (:class:`EpochGate`). A rollback can thus never take back output the
  world saw, and output appears at checkpoint completion: the latency price of this mode.
* **End of input.** Each instance takes a last, *final* checkpoint when its input ends; sinks write
  their remaining output once the final checkpoint of every instance is complete.
* **Rollback.** Any failure restarts *every* instance from the last complete checkpoint (sources
  rewind to its offsets, channels start afresh); nothing is replayed from a log, so user functions
  need not be deterministic.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from engine.checkpoint import CheckpointRecord, CheckpointStore
from engine.codec import unpack
from engine.connector import SinkWriter
from engine.errors import ChannelBroken
from engine.fault_tolerance import ChannelSender
from engine.metrics import BatchStamp
from engine.snapshot import SnapshottingFT

if TYPE_CHECKING:
    from engine.instance import TaskInstance
    from engine.lineage import Recovery

__all__ = ["FINAL_CHECKPOINT", "BarrierServices", "CheckpointFT", "EpochGate"]

log = logging.getLogger("stashflow.checkpoint")

#: the ids of the checkpoints every instance takes when its input ends: ``FINAL_CHECKPOINT + epoch``
#: (greater than any periodic one, and new after each rollback)
FINAL_CHECKPOINT: Final = 2**40
#: how long a sender whose receiver died waits for the rollback that replaces them both
ROLLBACK_WAIT_S: Final = 30.0


@dataclass
class BarrierServices:
    """What the hosting worker provides to the global-checkpoint runtime of its instances."""

    job_id: str
    store: CheckpointStore
    send: Callable[[dict[str, Any]], Awaitable[None]]  # a control message to the coordinator


class EpochGate:
    """A sink's two-phase commit: output is held per epoch and written when its checkpoint completes.

    Held batches are kept as their writer prepared them (:meth:`~engine.connector.SinkWriter.prepare`:
    a file sink's encoded lines), as the lineage stash's commit gate keeps them: an epoch holds a whole
    checkpoint interval of output, and writing it at the checkpoint's completion is then one write of
    bytes per batch, not a decoding and an encoding of every record. Held as msgpack-packed records,
    unpacked and JSON-encoded at the completion, the union word count ran at 251-271k sentences/s;
    held prepared, 301-314k (``none``: 315-325k; five alternating rounds, bench/RESULTS.md).
    """

    def __init__(self, ft: CheckpointFT):
        self.ft = ft
        self.stamp: BatchStamp | None = None
        #: batches since the last barrier: (writer index, the batch as prepared, its records, ingest stamp)
        self.current: list[tuple[int, Any, int, int | None]] = []
        #: pre-committed epochs, by the checkpoint that sealed them, oldest first
        self.sealed: dict[int, list[tuple[int, Any, int, int | None]]] = {}
        self.held_records = 0
        self._writers: dict[int, int] = {}

    def hold(self, writer: SinkWriter, records: Sequence[Any], stamp: BatchStamp | None) -> None:
        """Hold a batch for the epoch in progress; an encoding error of the writer's is raised here."""
        self.stamp = stamp
        index = self._writers.get(id(writer))
        if index is None:
            index = self._writers[id(writer)] = next(
                i for i, w in enumerate(self.ft.sink_writers()) if w is writer
            )
        prepared = writer.prepare(records)
        self.current.append((index, prepared, len(records), stamp.ingest_ns if stamp is not None else None))
        self.held_records += len(records)

    def seal(self, checkpoint_id: int) -> None:
        """Barrier ``checkpoint_id`` passed: what was held since the last one belongs to that checkpoint."""
        self.sealed[checkpoint_id] = self.current
        self.current = []

    def snapshot(self) -> list[Any]:
        """The pre-committed epochs, to be written on restore (their checkpoint is then complete)."""
        return [[cid, batches] for cid, batches in self.sealed.items()]

    def restore(self, epochs: Sequence[Any]) -> None:
        """Restored from a complete checkpoint: its pre-committed epochs are committed; write them now.

        A writer restored to the checkpoint skips what it finds already written (the commit before the
        failure may have got that far), so committing twice writes once.
        """
        writers = self.ft.sink_writers()
        for _cid, batches in epochs:
            restored: list[tuple[int, Any, int, int | None]] = []
            for item in batches:
                # saved before batches were held as prepared: (index, packed records, stamp)
                if len(item) == 3:
                    index, data, _ = item
                    records = unpack(data)
                    restored.append((int(index), writers[int(index)].prepare(records), len(records), None))
                else:
                    index, prepared, count, _ = item
                    restored.append((int(index), prepared, int(count), None))
            self._write(restored, held=False)

    def commit(self, checkpoint_id: int) -> None:
        """Checkpoint ``checkpoint_id`` is complete: write every epoch it (and any before it) sealed."""
        for cid in [c for c in self.sealed if c <= checkpoint_id]:
            self._write(self.sealed.pop(cid))

    def _write(self, batches: list[tuple[int, Any, int, int | None]], *, held: bool = True) -> None:
        """Write ``batches``; ``held``: they were held by this incarnation (not restored ones)."""
        writers = self.ft.sink_writers()
        stamp = self.stamp
        for index, prepared, count, ingest in batches:
            writers[index].write_prepared(prepared)
            if held:
                self.held_records -= count
            if stamp is not None and ingest is not None:
                stamp.written(ingest, count)


class _RollbackAwareSender(ChannelSender):
    """A sender whose receiver died waits for the job's rollback (which cancels it) instead of failing.

    The receiver's loss is the coordinator's to handle; failing this instance as well would fail the job.
    If no rollback comes within :data:`ROLLBACK_WAIT_S`, the broken channel is an error after all.
    """

    async def _guard(self, send: Awaitable[None]) -> None:
        try:
            await send
        except ChannelBroken:
            log.info(
                "%s: receiver %s lost; waiting for the job's rollback",
                self.channel_id.src,
                self.channel_id.dst,
            )
            await asyncio.sleep(ROLLBACK_WAIT_S)
            raise

    async def send(
        self,
        records: Sequence[Any],
        ingest_ns: int | None = None,
        watermark: int | None = None,
        idle: bool = False,
    ) -> None:
        await self._guard(super().send(records, ingest_ns, watermark, idle))

    async def send_barrier(self, checkpoint_id: int) -> None:
        await self._guard(super().send_barrier(checkpoint_id))

    async def send_eos(self) -> None:
        await self._guard(super().send_eos())


class CheckpointFT(SnapshottingFT):
    """Mode ``checkpoint``: aligned barriers, global checkpoints, global rollback (DESIGN.md §8)."""

    mode = "checkpoint"

    def __init__(self, instance: TaskInstance, services: BarrierServices, recovery: Recovery | None = None):
        super().__init__(
            instance, services, recovery.record if recovery else None, recovery.restarts if recovery else 0
        )
        self.services = services
        self.recovery = recovery
        #: restored from the final checkpoint: the input had ended, only the end of stream is left to send
        self.input_done = self.record is not None and self.record.checkpoint_id >= FINAL_CHECKPOINT
        self.gate = EpochGate(self)
        self.senders: list[ChannelSender] = []
        self.triggered: int | None = None  # a source: the checkpoint to inject at the next batch boundary
        self.aligning: int | None = None  # the barrier being aligned
        self.arrived: set[int] = set()  # inputs whose barrier ``aligning`` came
        self.final_complete = asyncio.Event()
        self.checkpoints_taken = 0
        self.alignment_s = 0.0
        self._aligning_since = 0.0

    # -- sinks and senders ------------------------------------------------------------------------

    def output_gate(self) -> EpochGate:
        return self.gate

    def sender(self, channel: Any, channel_id: Any) -> ChannelSender:
        sender = _RollbackAwareSender(channel, channel_id)
        self.senders.append(sender)
        return sender

    # -- lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        if self.instance.gate is not None:
            # an upstream that dies is restarted with everyone else: its broken channel is not an error here
            self.instance.gate.tolerate_broken = True
        self.restore_operators(restart=self.recovery is not None)
        # after the writers' restore: the pre-committed epochs are written at once, where it left them
        self.gate.restore(self.restored_held())
        if self.input_done:
            self.final_complete.set()  # the final checkpoint it restarts from is complete
        if self.recovery is not None:
            await self._send({"type": "recovered", "replayed_batches": 0, "time": time.time()})

    async def finish(self) -> None:
        """End of input: take the final checkpoint; a sink writes its output once that is complete."""
        if not self.input_done:
            await self._snapshot(FINAL_CHECKPOINT + self.incarnation)
            await self.wait_snapshot()  # its acknowledgement is sent before the instance closes
        if self.sink_writers():
            await self.final_complete.wait()
            for writer in self.sink_writers():
                writer.flush()

    # -- barriers ----------------------------------------------------------------------------------

    def on_trigger(self, checkpoint_id: int) -> None:
        """The coordinator asks this source instance to inject barrier ``checkpoint_id``."""
        if self.triggered is None or checkpoint_id > self.triggered:
            self.triggered = checkpoint_id

    async def between_batches(self) -> None:
        self.check_snapshot()
        if self.triggered is not None:
            checkpoint_id, self.triggered = self.triggered, None
            await self._snapshot(checkpoint_id)

    async def on_barrier(self, index: int, checkpoint_id: int) -> None:
        """Barrier ``checkpoint_id`` arrived on input ``index``: align, then snapshot and forward it."""
        gate = self.instance.gate
        assert gate is not None
        if self.aligning is not None and checkpoint_id != self.aligning:
            if checkpoint_id < self.aligning:
                return  # the barrier of a checkpoint this instance already gave up: ignore it
            # a newer checkpoint overtook the one being aligned (a source never injected that one)
            log.info("%s: checkpoint %d abandoned for %d", self.instance.name, self.aligning, checkpoint_id)
            self._end_alignment()
        if self.aligning is None:
            self.aligning = checkpoint_id
            self._aligning_since = time.perf_counter()
        self.arrived.add(index)
        gate.block(index)
        await self.on_input_change()

    async def on_input_change(self) -> None:
        """An input delivered its barrier or ended: the alignment may be complete."""
        gate = self.instance.gate
        if self.aligning is None or gate is None:
            return
        if all(i in self.arrived or gate.channels[i].finished for i in range(len(gate.channels))):
            checkpoint_id = self.aligning
            self._end_alignment()
            await self._snapshot(checkpoint_id)

    def _end_alignment(self) -> None:
        self.alignment_s += time.perf_counter() - self._aligning_since
        self.aligning = None
        self.arrived.clear()
        assert self.instance.gate is not None
        self.instance.gate.unblock()

    async def _snapshot(self, checkpoint_id: int) -> None:
        """Snapshot this instance for ``checkpoint_id``, forward the barrier; acknowledge once written.

        The snapshot is written on a thread (:meth:`snapshot_in_background`) while the barrier goes on
        downstream and this instance processes what follows it, as Flink's asynchronous snapshots do.
        """
        inst = self.instance
        await self.wait_snapshot()  # the last one's state is frozen until it is written
        await inst.flush_for_checkpoint()  # everything before the barrier goes out before it
        self.gate.seal(checkpoint_id)
        record = CheckpointRecord(
            instance=inst.name,
            checkpoint_id=checkpoint_id,
            log_position=0,
            source_offset=inst.reader.offset() if inst.reader is not None else None,
            operators=self.snapshot_operators(),
            state_dirs=self.state_dirs(checkpoint_id),
        ).to_bytes()  # encoded now: operators' snapshots may share objects the next batches change
        self.snapshot_in_background(
            checkpoint_id, self.gate.snapshot(), {}, lambda: self._acknowledge(checkpoint_id, record)
        )
        if checkpoint_id < FINAL_CHECKPOINT:  # the end of stream that follows is the final barrier
            for sender in self.senders:
                await sender.send_barrier(checkpoint_id)

    async def _acknowledge(self, checkpoint_id: int, record: bytes) -> None:
        self.checkpoints_taken += 1
        await self._send({"type": "barrier_ack", "checkpoint_id": checkpoint_id, "record": record})

    async def _send(self, message: dict[str, Any]) -> None:
        services = self.services
        await services.send(
            {
                "job": services.job_id,
                "instance": self.instance.name,
                "incarnation": self.incarnation,
                **message,
            }
        )

    # -- messages from the coordinator -------------------------------------------------------------

    def on_checkpoint_complete(self, checkpoint_id: int) -> None:
        self.gate.commit(checkpoint_id)
        if checkpoint_id >= FINAL_CHECKPOINT:
            self.final_complete.set()
        with contextlib.suppress(Exception):
            self.services.store.discard_before(self.services.job_id, self.instance.name, checkpoint_id)

    # -- observability -----------------------------------------------------------------------------

    def statistics(self) -> dict[str, Any]:
        return {
            "ft": "checkpoint",
            "checkpoints": self.checkpoints_taken,
            "checkpoint_ms": self.checkpoint_ms,
            "checkpoint_async_ms": self.checkpoint_async_ms,
            "alignment_s": round(self.alignment_s, 4),
            "held_sink_records": self.gate.held_records,
        }
