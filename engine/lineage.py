"""The lineage stash inside one task instance (DESIGN.md §4-§7): mode ``--ft lineage``.

:class:`LineageFT` plugs into the instance loop's hooks (:mod:`engine.fault_tolerance`):

* every nondeterministic event goes into the instance's :class:`~engine.causal_log.CausalLog`
  (``RECV`` per input batch, ``SOURCE`` per source cut, ``FLUSH`` per timer flush, ``TIME``/``RAND``
  through :data:`engine.ctx`);
* every outgoing batch carries the receiver's lineage delta from the :class:`~engine.stash.Stash`,
  and every incoming batch's delta enters the stash *before* the batch is processed: otherwise the
  instance's state could depend on a determinant that no survivor holds (an orphan);
* a background task ships new determinants to the GCS through the coordinator once something depends
  on them (:class:`~engine.log_shipping.LogShipper`); commit positions come back and trim the stash.
  Nothing on the batch path waits for storage;
* each :class:`LineageSender` keeps an :class:`~engine.output_log.OutputLog` of what it sent, so a
  restarted receiver can be resent what it lost, and reconnects to a receiver that moved;
* sinks hold output until its causal past is committed (:class:`~engine.commit_gate.CommitGate`, the output-commit rule);
* every ``checkpoint_interval`` the instance checkpoints alone, between two batches (§6).

A restarted instance gets a :class:`Recovery`: its latest complete checkpoint and the causal log after
it, gathered by the coordinator from the GCS and the stashes of live peers (:mod:`engine.recovery`).
It restores, then replays the log (``replaying``: decisions come from the :class:`LogCursor` instead of
the clock and the arrival order), regenerating the same batches with the same seqs; receivers that
already hold them are not sent them again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import time
import zlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from engine.causal_log import (
    CausalLog,
    Determinant,
    Kind,
    LogCursor,
    flush,
    now,
    rand,
    source,
    timer,
)
from engine.causal_log import (
    idle as idle_determinant,
)
from engine.channel import Address, ChannelId
from engine.checkpoint import CheckpointRecord, CheckpointStore
from engine.codec import FRAME_HEADER_BYTES, Batch, decode_batch, encode_batch, unpack
from engine.commit_gate import CommitGate
from engine.errors import ChannelBroken, ChannelError, ProtocolError
from engine.fault_tolerance import ChannelSender
from engine.log_shipping import LogShipper
from engine.output_channel import OutputChannel, OutputChannelStatistics
from engine.output_log import OutputLog
from engine.snapshot import SnapshottingFT
from engine.stash import Stash

if TYPE_CHECKING:
    from engine.instance import TaskInstance

__all__ = ["LineageFT", "LineageSender", "LineageServices", "Recovery", "WalFT"]

log = logging.getLogger("stashflow.lineage")

_OUTPUT_LOGS = "output-logs.msgpack"  # a checkpoint's file of the frames its receivers may ask again


@dataclass
class LineageServices:
    """What the hosting worker provides to the lineage runtime of its instances."""

    job_id: str
    store: CheckpointStore
    send: Callable[[dict[str, Any]], Awaitable[None]]  # a control message to the coordinator
    depth: int = 1
    checkpoint_interval: float = 2.0
    log_flush_s: float = 0.002
    output_log_bytes: int = 64 * 1024 * 1024
    #: instance -> (generation, address): where each instance currently receives, updated on moves
    addresses: dict[str, tuple[int, Address]] = field(default_factory=dict)
    moved: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def peer_moved(self, instance: str, address: Address) -> None:
        generation = self.addresses.get(instance, (0, address))[0] + 1
        self.addresses[instance] = (generation, address)
        async with self.moved:
            self.moved.notify_all()

    async def address_after(self, instance: str, generation: int) -> tuple[int, Address]:
        """Wait until ``instance`` has an address newer than ``generation`` (a restarted receiver)."""
        async with self.moved:
            await self.moved.wait_for(lambda: self.addresses.get(instance, (0, None))[0] > generation)
        return self.addresses[instance]


@dataclass
class Recovery:
    """How a restarted instance resumes: its latest complete checkpoint and its log after it."""

    record: CheckpointRecord | None
    entries: list[Determinant]
    restarts: int


class LineageSender(ChannelSender):
    """Sends one channel's batches with lineage deltas, logs them, and survives a receiver's restart."""

    def __init__(
        self, ft: LineageFT, channel: OutputChannel, channel_id: ChannelId, next_seq: int, outlog: OutputLog
    ):
        super().__init__(channel, channel_id)
        self.ft = ft
        self.next_seq = next_seq
        self.outlog = outlog
        self.generation = ft.services.addresses.get(channel_id.dst, (0, None))[0]
        #: the last seq the receiver held when we connected: regenerated batches up to it are not resent
        self.receiver_holds = channel.last_seq_acked_on_connect
        self.eos_sent = False
        self.suppressed = 0
        self._lock = asyncio.Lock()
        self._stats = channel.statistics()
        self._broken = False
        self._resyncing: asyncio.Task[None] | None = None

    @property
    def key(self) -> str:
        return f"{self.channel_id.dst}#{self.channel_id.index}"

    async def send(
        self,
        records: Sequence[Any],
        ingest_ns: int | None = None,
        watermark: int | None = None,
        idle: bool = False,
    ) -> None:
        seq = self.next_seq
        self.next_seq = seq + 1
        ft = self.ft
        # write-first (--ft wal) piggybacks nothing: what the batch depends on is durable before it leaves
        delta = None if ft.write_first else ft.stash.delta_for(self.channel_id.dst)
        batch = Batch(seq, records, watermark=watermark, lineage=delta, ingest_ns=ingest_ns, idle=idle)
        frame = encode_batch(batch)
        self.outlog.append(seq, frame)
        if not ft.replaying:
            ft.want_log()  # the receiver's state will depend on what we logged before this batch
        ft.delta_bytes += len(delta) if delta else 0
        ft.frames_sent += 1
        if seq <= self.receiver_holds:
            self.suppressed += 1  # a replay regenerated a batch the receiver already holds
            return
        if ft.write_first and not ft.replaying:
            await ft.wait_committed(ft.log.end)
        async with self._lock:
            await self._deliver(frame, len(records))

    async def _deliver(self, frame: bytes, records: int) -> None:
        if not self._broken:
            try:
                await self.channel.send_frame(frame, records)
                return
            except ChannelBroken:
                self._broken = True
        # the receiver died. This frame is in the output log already, and its next incarnation is resent
        # everything it lacks when it is up (resync_if_moved, on peer_moved): meanwhile this instance goes
        # on with its other receivers instead of waiting, so the rest of the job keeps running (§7)
        self._resync_if_already_moved()

    def _resync_if_already_moved(self) -> None:
        """The replacement may have been announced before this sender noticed the loss: resync now."""
        current = self.ft.services.addresses.get(self.channel_id.dst)
        if current is not None and current[0] > self.generation and self._resyncing is None:
            self._resyncing = asyncio.create_task(self.resync_if_moved(), name=f"resync {self.key}")
            self._resyncing.add_done_callback(self._resync_done)

    def _resync_done(self, task: asyncio.Task[None]) -> None:
        self._resyncing = None
        if not task.cancelled() and task.exception() is not None:
            log.warning(
                "%s: resync with %s failed: %s", self.channel_id.src, self.channel_id.dst, task.exception()
            )

    async def _reconnect(self) -> None:
        """Wait for the receiver's next incarnation and resync with it; again if that one dies too."""
        while True:
            moved = await self.ft.services.address_after(self.channel_id.dst, self.generation)
            try:
                await self._resync(moved)
                return
            except (ChannelError, ProtocolError, OSError) as exc:
                log.info("%s: resync with %s failed (%s); waiting for its next incarnation",
                         self.channel_id.src, self.channel_id.dst, exc)  # fmt: skip
                self.generation = moved[0]
                self._broken = True

    async def catch_up(self) -> None:
        """Resend restored output-log frames the receiver lacks (it may hold less than our checkpoint)."""
        last = self.outlog.last_seq
        if last is None or last <= self.receiver_holds:
            return
        async with self._lock:
            try:
                await self._resend_after(self.receiver_holds)
            except ChannelBroken:
                self._broken = True
                await self._reconnect()
            self.receiver_holds = last

    async def _resend_after(self, holds: int) -> int:
        """Resend the logged frames after seq ``holds``, with lineage fit for the receiver we have now.

        The logged frames carry the deltas computed for an earlier connection; the receiver's stash
        must hold everything the resent batches depend on before it processes them (no orphans), so
        the first resent batch carries a fresh delta (after :meth:`Stash.reset_receiver`: every
        uncommitted entry) and the others none.
        """
        resent = 0
        for seq, frame in self.outlog.frames_after(holds):
            batch = decode_batch(memoryview(frame)[FRAME_HEADER_BYTES:])
            delta = self.ft.stash.delta_for(self.channel_id.dst) if resent == 0 else None
            resend = Batch(seq, batch.records, batch.watermark, delta, batch.ingest_ns, idle=batch.idle)
            await self.channel.send_frame(encode_batch(resend), len(batch.records))
            resent += 1
        return resent

    async def resync_if_moved(self) -> None:
        """A receiver restarted elsewhere while we were idle (or done): reconnect and resend."""
        current = self.ft.services.addresses.get(self.channel_id.dst)
        if current is None or current[0] <= self.generation:
            return
        # a send may be blocked on credits from the old incarnation (a frozen process, cut off but not
        # closed): drop that connection so the send fails over to the new one instead of waiting forever
        self.channel.abort()
        async with self._lock:
            if self.ft.services.addresses[self.channel_id.dst][0] > self.generation:
                await self._reconnect()  # returns at once with the newer address, retries if it dies

    async def _resync(self, moved: tuple[int, Address]) -> None:
        generation, address = moved
        self._stats = _add_stats(self._stats, self.channel.statistics())
        with contextlib.suppress(Exception):
            await self.channel.aclose()
        self.generation = generation
        self.channel = await self.ft.instance.open_channel(address, self.channel_id)
        self._broken = False
        self.ft.stash.reset_receiver(self.channel_id.dst)
        holds = self.channel.last_seq_acked_on_connect
        resent = await self._resend_after(holds)
        if self.eos_sent:
            await self.channel.send_eos()
        log.info("%s: reconnected to %s at %s, resent %d batches after seq %d",
                 self.channel_id.src, self.channel_id.dst, address, resent, holds,
                 extra={"receiver": self.channel_id.dst, "resent": resent, "after_seq": holds})  # fmt: skip

    async def send_eos(self) -> None:
        self.eos_sent = True
        async with self._lock:
            if self.channel.eos_sent:
                return  # a resync to a restarted receiver, holding the lock before us, sent it already
            if not self._broken:
                try:
                    await self.channel.send_eos()
                    return
                except ChannelBroken:
                    self._broken = True
            self._resync_if_already_moved()  # else the resync on peer_moved sends it

    def statistics(self) -> OutputChannelStatistics:
        return _add_stats(self._stats, self.channel.statistics())


def checkpoint_phase(instance: str) -> float:
    """Where in the checkpoint interval ``instance`` checkpoints: a fraction in [0, 1), fixed per name.

    Independent checkpoints need no common moment (DESIGN.md §6), and taking them all at once costs:
    every instance's snapshot, every state flush and fsync and every record at the coordinator in the
    same few milliseconds, which the batches in flight then wait behind. Spread over the interval by
    a hash of the name, the same in every process and incarnation, they cost the same but one at a time
    (union word count at half its maximum rate: lineage's sink p99 36-46 ms against 51-76 ms with
    the checkpoints taken together, four alternating runs each).

    >>> checkpoint_phase("count/1") == checkpoint_phase("count/1") and 0 <= checkpoint_phase("a/0") < 1
    True
    """
    return zlib.crc32(instance.encode()) / 2**32


def _add_stats(a: OutputChannelStatistics, b: OutputChannelStatistics) -> OutputChannelStatistics:
    if a is b:
        return a
    return OutputChannelStatistics(
        batches_sent=a.batches_sent + b.batches_sent,
        records_sent=a.records_sent + b.records_sent,
        bytes_sent=a.bytes_sent + b.bytes_sent,
        backpressure_s=a.backpressure_s + b.backpressure_s,
        credits=b.credits,
    )


class LineageFT(SnapshottingFT):
    """Mode ``lineage``: causal logging with stashes, independent checkpoints, single-instance recovery."""

    mode = "lineage"
    #: write-first logging (:class:`WalFT`): a batch leaves only once its causal past is in the GCS
    write_first = False

    def __init__(self, instance: TaskInstance, services: LineageServices, recovery: Recovery | None = None):
        record = recovery.record if recovery else None
        super().__init__(instance, services, record, recovery.restarts if recovery else 0)
        self.services = services
        self.recovery = recovery
        name = instance.name
        self.log = CausalLog(start=record.log_position if record else 0, owner=name)
        self.stash = Stash(name, services.depth)
        self.stash.attach_own(self.log)
        self.cursor: LogCursor | None = None
        if recovery is not None and recovery.entries:
            for det in recovery.entries:
                self.log.append(det)
            self.cursor = LogCursor(name, recovery.entries, start=self.log.start)
            self.replaying = True
        self.committed: dict[str, int] = {}
        self.gate = CommitGate(self)
        self.outlogs: dict[str, OutputLog] = {}
        self._saved_outputs: dict[str, Any] | None = None  # a restored checkpoint's output logs
        self.senders: list[LineageSender] = []
        self.checkpoint_id = services.store.next_checkpoint_id(services.job_id, name)
        # the first checkpoint after 1 to 2 intervals, the later ones each interval: never earlier than
        # one interval after the start, and instances at their own phase
        self.last_checkpoint = time.monotonic() + checkpoint_phase(name) * services.checkpoint_interval
        self.pending_checkpoints: dict[int, int] = {}  # id -> log position
        self.replayed_batches = 0
        self.delta_bytes = 0
        self.frames_sent = 0
        self.checkpoints_taken = 0
        self.shipper = LogShipper(
            self.log,
            services.send,
            lambda: {"job": services.job_id, "instance": name, "incarnation": self.incarnation},
            lambda: bool(self.gate.held),
            interval_s=services.log_flush_s,
        )
        self._committed_changed = asyncio.Event()
        self.commit_wait_s = 0.0  # time the loop spent waiting for the GCS (write-first only)
        self._flusher: asyncio.Task[None] | None = None

    # -- sinks ------------------------------------------------------------------------------------

    def output_gate(self) -> CommitGate:
        return self.gate

    # -- lifecycle ----------------------------------------------------------------------------------

    async def start(self) -> None:
        inst = self.instance
        if inst.gate is not None:
            inst.gate.tolerate_broken = True
        self.restore_operators(restart=self.recovery is not None)
        self.gate.restore(self.restored_held())  # held again: released as commits cover them
        if self.gate.held:
            self.want_log()  # the coordinator must hear that our output waits
        self._flusher = asyncio.create_task(self.shipper.run(), name=f"log-flush {inst.name}")
        for sender in self.senders:  # a receiver that restarted too may hold less than our checkpoint
            await sender.catch_up()
        if self.recovery is not None and not self.replaying:
            await self.replay_done()  # nothing to replay (no decision since the checkpoint): live now

    async def replay_done(self) -> None:
        self.replaying = False
        self.cursor = None
        log.info("%s: replay done, live again (incarnation %d, %d batches replayed)", self.instance.name,
                 self.incarnation, self.replayed_batches,
                 extra={"incarnation": self.incarnation, "replayed_batches": self.replayed_batches})  # fmt: skip
        await self.services.send({
            "type": "recovered",
            "job": self.services.job_id,
            "instance": self.instance.name,
            "replayed_batches": self.replayed_batches,
            "time": time.time(),
        })  # fmt: skip

    async def finish(self) -> None:
        """End of input: wait until every held sink batch is released, then flush the writers again."""
        self.check_snapshot()
        self.want_log()
        await self.gate.drained.wait()
        for writer in self.sink_writers():
            writer.flush()

    async def aclose(self) -> None:
        self.shipper.close()
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
            self._flusher = None
        for sender in self.senders:
            if sender._resyncing is not None:
                sender._resyncing.cancel()
        for outlog in self.outlogs.values():
            outlog.close()
        await super().aclose()  # a snapshot in flight: its thread ends before the state closes

    # -- nondeterministic events --------------------------------------------------------------------

    def on_recv(self, index: int, batch: Batch) -> None:
        if batch.lineage is not None:
            # before processing: the batch's state changes must not outlive the lineage they depend on
            self.stash.ingest(batch.lineage)
        if self.replaying:
            self.replayed_batches += 1
        else:
            self.log.recv(index)
            self.shipper.logged()
        self.clock.next_batch()

    def on_source(self, offset: Any, count: int) -> None:
        if self.replaying:
            self.replayed_batches += 1
        else:
            self.log.append(source(offset, count))
            self.shipper.logged()
        self.clock.next_batch()

    def on_flush(self) -> None:
        if not self.replaying:
            self.log.append(flush())
            self.shipper.logged()

    def on_timer(self, time_ns: int) -> None:
        if not self.replaying:
            self.log.append(timer(time_ns))
            self.shipper.logged()
        self.clock.next_batch()

    def on_idle(self) -> None:
        if not self.replaying:
            self.log.append(idle_determinant())
            self.shipper.logged()

    def read_time(self) -> int:
        if self.replaying:
            assert self.cursor is not None
            return int(self.cursor.expect(Kind.TIME)[1])
        value = time.time_ns()
        self.log.append(now(value))
        return value

    def read_seed(self) -> int:
        if self.replaying:
            assert self.cursor is not None
            return int(self.cursor.expect(Kind.RAND)[1])
        value = secrets.randbits(63)
        self.log.append(rand(value))
        return value

    def want_log(self) -> None:
        """Something depends on the determinants logged so far (a batch sent, output held): ship them."""
        self.shipper.want()

    # -- output -------------------------------------------------------------------------------------

    async def open_output(self, address: Address, channel_id: ChannelId) -> OutputChannel:
        """Connect to a receiver; one that is dead or restarting is waited for (its next incarnation)."""
        services = self.services
        generation = services.addresses.get(channel_id.dst, (0, address))[0]
        while True:
            try:
                return await self.instance.open_channel(address, channel_id)
            except (ChannelError, ProtocolError, OSError) as exc:
                log.info("%s: %s is not reachable (%s); waiting for its next incarnation",
                         channel_id.src, channel_id.dst, exc)  # fmt: skip
                generation, address = await services.address_after(channel_id.dst, generation)

    def sender(self, channel: OutputChannel, channel_id: ChannelId) -> ChannelSender:
        key = f"{channel_id.dst}#{channel_id.index}"
        record = self.record
        next_seq = record.next_seq.get(key, 1) if record is not None else 1
        outlog = OutputLog(
            str(channel_id),
            memory_limit_bytes=self.services.output_log_bytes,
            spill_dir=os.path.join(
                self.services.store.instance_dir(self.services.job_id, self.instance.name), "spill"
            ),
        )
        if record is not None:
            for seq, frame in self._restored_frames(key):
                outlog.append(seq, frame)
        self.outlogs[key] = outlog
        sender = LineageSender(self, channel, channel_id, next_seq, outlog)
        self.senders.append(sender)
        return sender

    def _restored_frames(self, key: str) -> list[tuple[int, bytes]]:
        """The frames of channel ``key`` that the checkpoint saved (the file is read once, for all)."""
        if self._saved_outputs is None:
            self._saved_outputs = {}
            path = self._outlog_path(self.record.checkpoint_id) if self.record else None
            if path is not None and os.path.exists(path):
                with open(path, "rb") as f:
                    self._saved_outputs = unpack(f.read())
        return [(int(seq), bytes(frame)) for seq, frame in self._saved_outputs.pop(key, ())]

    def _outlog_path(self, checkpoint_id: int) -> str:
        return self.checkpoint_file(checkpoint_id, _OUTPUT_LOGS)

    # -- checkpoints (DESIGN.md §6) -----------------------------------------------------------------

    async def between_batches(self) -> None:
        self.check_snapshot()
        if not self.gate.below_limit.is_set():
            self.want_log()  # the held output waits for our own determinants too: flush them now
            await self.gate.below_limit.wait()
        if (
            self.replaying
            or self.snapshotting
            or time.monotonic() - self.last_checkpoint < self.services.checkpoint_interval
        ):
            return
        await self.checkpoint()

    async def checkpoint(self) -> None:
        """Snapshot this instance alone, between two batches; complete once its causal past is committed.

        What the checkpoint holds is captured here; it is written on a thread while the instance goes
        on (:meth:`snapshot_in_background`), and the record goes to the coordinator once it is.
        """
        inst = self.instance
        await inst.flush_for_checkpoint()  # buffers empty: batch boundaries stay those of the log
        cid = self.checkpoint_id
        self.checkpoint_id += 1
        outputs = {
            s.key: list(s.outlog.frames_after(s.outlog.first_seq - 1))
            for s in self.senders
            if s.outlog.first_seq is not None
        }
        record = CheckpointRecord(
            instance=inst.name,
            checkpoint_id=cid,
            log_position=self.log.end,
            consumed=dict(inst.consumed),
            next_seq={s.key: s.next_seq for s in self.senders},
            source_offset=inst.reader.offset() if inst.reader is not None else None,
            operators=self.snapshot_operators(),
            state_dirs=self.state_dirs(cid),
            requirements=self.stash.frontier(),
        )
        services = self.services
        message = {  # the record encoded now: operators' snapshots may share objects the next batches change
            "type": "checkpoint", "job": services.job_id, "instance": inst.name, "incarnation": self.incarnation,
            "checkpoint_id": cid, "record": record.to_bytes(), "requirements": record.requirements,
            "consumed": {str(k): v for k, v in record.consumed.items()},
        }  # fmt: skip
        self.last_checkpoint = time.monotonic()
        self.snapshot_in_background(
            cid,
            self.gate.snapshot(),
            {_OUTPUT_LOGS: outputs},
            lambda: self._send_record(cid, record.log_position, message),
        )

    async def _send_record(self, checkpoint_id: int, log_position: int, message: dict[str, Any]) -> None:
        """The checkpoint is on disk: the coordinator may now complete it."""
        self.pending_checkpoints[checkpoint_id] = log_position
        self.checkpoints_taken += 1
        self.want_log()
        await self.services.send(message)

    # -- messages from the coordinator -------------------------------------------------------------

    def on_commit(self, positions: dict[str, int]) -> None:
        committed = self.committed
        for name, pos in positions.items():
            if pos > committed.get(name, 0):
                committed[name] = pos
        self.stash.commit(positions)
        self.gate.release()
        self._committed_changed.set()

    async def wait_committed(self, position: int) -> None:
        """Wait until this instance's own log is committed up to ``position`` (write-first logging)."""
        name = self.instance.name
        if self.committed.get(name, 0) >= position:
            return
        began = time.perf_counter()
        while self.committed.get(name, 0) < position:
            self._committed_changed.clear()
            self.want_log()
            await self._committed_changed.wait()
        self.commit_wait_s += time.perf_counter() - began

    def on_checkpoint_complete(self, checkpoint_id: int) -> None:
        position = self.pending_checkpoints.pop(checkpoint_id, None)
        for older in [c for c in self.pending_checkpoints if c < checkpoint_id]:
            del self.pending_checkpoints[older]
        if position is not None:
            with contextlib.suppress(ValueError):
                self.log.prune(position)
        with contextlib.suppress(Exception):
            self.services.store.discard_before(self.services.job_id, self.instance.name, checkpoint_id)

    def on_trim(self, channel_key: str, upto: int) -> None:
        outlog = self.outlogs.get(channel_key)
        if outlog is not None:
            outlog.trim(upto)

    async def on_peer_moved(self) -> None:
        for sender in self.senders:
            await sender.resync_if_moved()

    def holdings(self, instance: str) -> tuple[int, list[Determinant]] | None:
        """What this instance holds of ``instance``'s log, batches received but not yet processed included."""
        if instance == self.instance.name:
            return None
        for channel in self.instance.inputs:
            if channel.channel_id.src == instance:
                # stashed early, not late: ingesting twice is harmless (copies must agree), and the
                # batches carrying these deltas will be processed whatever the recovery decides
                for delta in channel.buffered_lineage():
                    self.stash.ingest(delta)
        return self.stash.holdings(instance)

    # -- observability ------------------------------------------------------------------------------

    def statistics(self) -> dict[str, Any]:
        st = self.stash.statistics()
        outlogs = [o.statistics() for o in self.outlogs.values()]
        return {
            "ft": "lineage",
            "log_end": self.log.end,
            "log_messages": self.shipper.messages,
            "stash_entries": st.entries + st.own_uncommitted,
            "stash_entries_max": st.entries_max,
            "stash_bytes": st.encoded_bytes,
            "stash_bytes_max": st.encoded_bytes_max,
            "delta_bytes_mean": round(self.delta_bytes / self.frames_sent, 2) if self.frames_sent else 0.0,
            "frames_sent": self.frames_sent,
            "output_log_batches": sum(o.batches for o in outlogs),
            "output_log_bytes": sum(o.bytes_in_memory + o.bytes_spilled for o in outlogs),
            "checkpoints": self.checkpoints_taken,
            "checkpoint_ms": self.checkpoint_ms,
            "checkpoint_async_ms": self.checkpoint_async_ms,
            "held_sink_batches": len(self.gate.held),
            "commit_wait_s": round(self.commit_wait_s, 4),
            "replaying": self.replaying,
            "replayed_batches": self.replayed_batches,
        }


class WalFT(LineageFT):
    """Mode ``wal``, the write-first baseline (DESIGN.md §8): determinants reach the GCS before the outputs
    that depend on them leave the instance, so nothing is piggybacked and recovery reads the GCS alone.

    The same runtime as :class:`LineageFT` with one difference on the critical path: every batch sent
    waits until the instance's log up to that batch is committed, a storage round trip per message (the
    cost the lineage stash takes off the path). Upstream determinants need no wait: by the same rule
    they were committed before their batches were sent here.
    """

    mode = "wal"
    write_first = True
