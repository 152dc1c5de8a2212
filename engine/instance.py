"""The operator actor: one task instance, a single-threaded asyncio loop over batches.

A task instance owns its operators (a chain of steps), its input gate (one :class:`InputChannel` per
upstream instance) and its output routers (per downstream edge: a partitioner, a buffer and an
:class:`OutputChannel` per receiver). Its loop is the one place where the nondeterminism of DESIGN.md §4
happens, and each such point is marked below:

* ``RECV``: which input channel the next batch is taken from (:meth:`InputGate.next`);
* ``FLUSH``: a partially filled output buffer sent because the flush timer fired, not because it filled;
* ``SOURCE``: where a source reader cut the batch it returned.

Everything else is a deterministic function of those, so output batch boundaries and sequence numbers
follow from them: the property the lineage stash builds on.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import operators
from engine.causal_log import Kind, describe
from engine.channel import Address, InputChannel
from engine.codec import Batch
from engine.config import JobConfig
from engine.connector import SourceReader
from engine.context import bind, unbind
from engine.data_server import DataServer
from engine.dsl import Step
from engine.errors import ProtocolError, SerializationError, UserFunctionError, short_repr
from engine.fault_tolerance import ChannelSender, FaultTolerance
from engine.metrics import BatchStamp
from engine.output_channel import OutputChannel, connect
from engine.partition import HashPartitioner, RoundRobinPartitioner
from engine.plan import ChannelId, Plan, Task, TaskOutput
from operators.base import OperatorContext, describe_raiser, locate_failure

__all__ = ["InjectedCrash", "InputGate", "InstanceStatistics", "OutputRouter", "StepMetrics", "TaskInstance"]

log = logging.getLogger("stashflow.instance")


class InjectedCrash(Exception):
    """Raised by an instance armed with ``kill_after`` when it reaches its record count (tests only)."""


@dataclass
class StepMetrics:
    """Counters of one step instance (``step/i``), chained steps included."""

    records_in: int = 0
    records_out: int = 0


class InputGate:
    """Merges the input channels of an instance, in arrival order.

    Channels report arrivals through ``on_ready``; the gate keeps their order, because the order in
    which an instance takes batches from different channels is exactly the ``RECV`` determinant.
    Channels can be *blocked* (barrier alignment, ``--ft checkpoint``): their batches wait in the
    channel until :meth:`unblock`.
    """

    def __init__(self, channels: Sequence[InputChannel]):
        self.channels = list(channels)
        self._arrivals: deque[int] = deque()
        self._wakeup = asyncio.Event()
        self._open = set(range(len(self.channels)))
        self.blocked: set[int] = set()
        #: with a recovering fault-tolerance mode, a lost upstream reconnects and resends: not an error
        self.tolerate_broken = False

    def block(self, index: int) -> None:
        """Take nothing more from channel ``index`` until :meth:`unblock`."""
        self.blocked.add(index)

    def unblock(self) -> None:
        self.blocked.clear()
        self.rescan()

    @property
    def stalled(self) -> bool:
        """Every input still open is blocked: nothing can come until the alignment completes."""
        return bool(self.blocked) and self._open <= self.blocked

    def notify(self, index: int) -> None:
        """Called by channel ``index`` when a batch, its end or its breakage arrives."""
        self._arrivals.append(index)
        self._wakeup.set()

    @property
    def finished(self) -> bool:
        return not self._open

    async def take_from(self, index: int) -> Batch:
        """The next batch of channel ``index``, waiting for it (replay follows the logged order).

        Batches of other channels that arrive meanwhile stay buffered in their channels (their credits
        bound how many), to be taken when the log names them or once the instance is live.
        """
        channel = self.channels[index]
        while True:
            batch = channel.take()
            if batch is not None:
                return batch
            if channel.finished:
                raise ProtocolError(
                    f"replay of {channel.channel_id.dst} needs another batch from {channel.channel_id.src}, "
                    "but that channel has ended: the recovered log does not match the inputs"
                )
            self._wakeup.clear()
            await self._wakeup.wait()

    def rescan(self) -> None:
        """After a replay: forget stale arrival notices; queue the channels that hold batches or ended."""
        self._arrivals.clear()
        self._arrivals.extend(
            i for i in sorted(self._open) if self.channels[i].pending or self.channels[i].finished
        )
        self._wakeup.set()

    async def next(self, timeout: float | None) -> tuple[int, Batch] | None:
        """The next batch and its channel index; ``None`` on timeout or once every input ended.

        Raises :class:`ChannelBroken` if an upstream connection broke before its end of stream.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        blocked = self.blocked
        while self._open:
            while self._arrivals:
                index = self._arrivals.popleft()
                if blocked and index in blocked:
                    continue  # its batches wait in the channel; unblock() queues it again
                channel = self.channels[index]
                batch = channel.take()
                if batch is not None:
                    return index, batch  # RECV(index): the merge order across inputs
                if channel.broken is not None and not self.tolerate_broken:
                    raise channel.broken
                if channel.finished:
                    self._open.discard(index)
                    if blocked:
                        return None  # an alignment waits for this input no more: let the loop check
            if not self._open or self.stalled:
                break
            self._wakeup.clear()
            # notices can be fewer than events (a replay took batches without them, a rescan queued
            # one notice for several batches): the channels themselves are the truth
            if any(self.channels[i].pending or self.channels[i].finished for i in self._open - blocked):
                self.rescan()
                continue
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return None
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except TimeoutError:
                return None
        return None


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
        self.owner = owner  # the last step of the chain: the one whose records these are
        self.buffers: list[list[Any]] = [[] for _ in senders]
        #: per buffer, the ingestion stamp of its oldest record (engine.metrics)
        self.ingest: list[int | None] = [None] * len(senders)
        n = len(senders)
        self.partitioner: HashPartitioner | RoundRobinPartitioner | None
        if n == 1:
            self.partitioner = None
        elif output.partitioning == "hash":
            assert output.key_fn is not None
            self.partitioner = HashPartitioner(output.key_fn, n)
        else:
            self.partitioner = RoundRobinPartitioner(n)

    def add(self, records: Sequence[Any], ingest_ns: int | None = None) -> bool:
        """Buffer ``records`` (stamped ``ingest_ns``); True if some buffer is now full."""
        if self.partitioner is None:
            buf = self.buffers[0]
            if not buf:
                self.ingest[0] = ingest_ns
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
            raise locate_failure(keyed, self.output.key_fn, records, exc) from None
        full = False
        for j, (buf, part) in enumerate(zip(self.buffers, parts, strict=True)):
            if part:
                if not buf:
                    self.ingest[j] = ingest_ns
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
        """Send every partially filled buffer (after :meth:`send_full`)."""
        await self.send_full()
        for j, buf in enumerate(self.buffers):
            if buf:
                self.buffers[j] = []
                await self._send(j, buf)

    async def _send(self, j: int, records: list[Any]) -> None:
        try:
            await self.senders[j].send(records, self.ingest[j])
        except SerializationError as exc:
            raise SerializationError(
                f"step {self.owner.step.name!r} (instance {self.owner.instance}) emitted a record for step "
                f"{self.output.downstream!r} that cannot cross a channel: {exc}"
            ) from exc

    @property
    def buffered(self) -> int:
        return sum(map(len, self.buffers))

    def snapshot(self) -> int:
        """The router's own state for a checkpoint: where round-robin continues (buffers are empty)."""
        return self.partitioner.next if isinstance(self.partitioner, RoundRobinPartitioner) else 0

    def restore(self, state: int) -> None:
        if isinstance(self.partitioner, RoundRobinPartitioner):
            self.partitioner.next = state


@dataclass
class InstanceStatistics:
    """A snapshot of one task instance, as the coordinator serves it."""

    instance: str
    state: str
    steps: dict[str, dict[str, int]]
    batches_in: int
    batches_out: int
    bytes_out: int
    backpressure_s: float
    started_at: float | None
    finished_at: float | None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items()}


class TaskInstance:
    """Runs instance ``index`` of ``task``: ``prepare`` -> (report address) -> ``connect`` -> ``run``.

    ``ft_factory`` builds the fault-tolerance mode (:mod:`engine.fault_tolerance`); a restarted instance
    gets one that restores its checkpoint and replays its causal log (:mod:`engine.lineage`).
    """

    def __init__(
        self,
        *,
        job_id: str,
        plan: Plan,
        task: Task,
        index: int,
        config: JobConfig,
        secret: bytes,
        server: DataServer,
        ft_factory: Callable[[TaskInstance], FaultTolerance] = FaultTolerance,
    ):
        self.job_id = job_id
        self.plan = plan
        self.task = task
        self.index = index
        self.config = config
        self.secret = secret
        self.server = server
        self.name = task.instance(index)
        self.state = "created"
        self.ft = ft_factory(self)
        opener, gate = self.ft.state_opener(), self.ft.output_gate()
        #: the ingestion stamp of the batch being processed; sinks record end-to-end latency with it
        self.stamp = BatchStamp()
        self.contexts = [
            OperatorContext(s, f"{s.name}/{index}", index, task.parallelism, opener, gate, self.stamp)
            for s in task.steps
        ]
        self.ops = [operators.create(c) for c in self.contexts]
        self.metrics = [StepMetrics() for _ in self.ops]
        self.inputs: list[InputChannel] = []
        self.gate: InputGate | None = None
        self.routers: list[OutputRouter] = []
        self.reader: SourceReader | None = None
        #: last seq taken from each input channel: what a checkpoint records as consumed
        self.consumed: dict[int, int] = {}
        self.batches_in = 0
        self.started_at: float | None = None
        self.finished_at: float | None = None
        self._flush_deadline: float | None = None
        self._flush_s = config.flush_ms / 1000.0
        #: set by the worker before it cancels the instance to simulate a kill
        self.kill_requested = False
        self._crash_at: int | None = None
        self._crash: Callable[[TaskInstance], None] | None = None
        self._records_seen = 0

    def arm_crash(
        self, kill_after: dict[str, Any], incarnation: int, crash: Callable[[TaskInstance], None] | None
    ) -> None:
        """Failure injection for tests: crash after this many input records (``JobConfig.kill_after``).

        ``kill_after["step/i"]`` lists record counts; incarnation k (k restarts so far) of the task
        instance hosting ``step/i`` crashes once it has taken the k-th count of records, replayed
        ones included, so a count below the replayed total kills an instance during its recovery.
        ``crash`` kills the process; without it :class:`InjectedCrash` unwinds the instance.
        """
        for step in self.task.steps:
            counts = kill_after.get(f"{step.name}/{self.index}")
            if counts and incarnation < len(counts):
                self._crash_at = int(counts[incarnation])
                self._crash = crash

    def _count_records(self, n: int) -> None:
        self._records_seen += n
        if self._crash_at is not None and self._records_seen >= self._crash_at:
            self._crash_at = None
            if self._crash is not None:
                self._crash(self)
            raise InjectedCrash(f"{self.name}: injected crash after {self._records_seen} records")

    async def abort(self) -> None:
        """Vanish as a killed process would: drop every connection without an end of stream."""
        for router in self.routers:
            for sender in router.senders:
                sender.channel.abort()
        await self.aclose()

    # -- lifecycle -----------------------------------------------------------------------------------

    def prepare(self, consumed: dict[int, int] | None = None) -> None:
        """Create and register the input channels, so that upstream instances can connect.

        ``consumed`` (from a checkpoint) is the last seq already processed per input: senders resend
        from the next one.
        """
        self.consumed = dict(consumed or {})
        for cid in self.plan.inputs_of(self.task.name, self.index):
            last = self.consumed.get(cid.index, 0)
            ch = InputChannel(
                cid, window=self.config.window, on_ready=self._notifier(cid.index), last_seq=last
            )
            self.inputs.append(ch)
        self.gate = InputGate(self.inputs)
        for ch in self.inputs:
            self.server.register(self.job_id, ch)
        if self.task.is_source:
            source = self.task.steps[0].source
            assert source is not None
            self.reader = source.open(self.index, self.task.parallelism)
        self.state = "deployed"

    def _notifier(self, index: int) -> Any:
        def notify() -> None:
            assert self.gate is not None
            self.gate.notify(index)

        return notify

    async def connect(self, addresses: dict[str, Address]) -> None:
        """Open the output channels to every downstream instance (``addresses``: instance -> address)."""
        outputs = self.plan.outputs_of(self.task.name, self.index)
        for out, cids in zip(self.task.outputs, outputs, strict=True):
            channels = await asyncio.gather(*(self.ft.open_output(addresses[cid.dst], cid) for cid in cids))
            senders = [self.ft.sender(ch, cid) for ch, cid in zip(channels, cids, strict=True)]
            downstream = self.plan.task(out.downstream).steps[0]
            router = OutputRouter(out, senders, self.config.batch_size, self.contexts[-1], downstream)
            self.routers.append(router)

    async def open_channel(self, address: Address, cid: ChannelId) -> OutputChannel:
        return await connect(
            address, self.job_id, cid, self.secret, max_frame_bytes=self.config.max_frame_bytes
        )

    async def run(self) -> None:
        """Process until every input ended (or the source is exhausted), then end the outputs."""
        self.started_at = time.time()
        token = bind(self.ft.clock)
        try:
            await self.ft.start()
            if self.ft.replaying:
                self.state = "replaying"
                await self._replay()
            self.state = "running"
            if not self.ft.input_done:
                if self.task.is_source:
                    await self._run_source()
                else:
                    await self._run_inputs()
                await self._emit(self._finish_chain())
                for router in self.routers:
                    await router.flush()
            await self.ft.finish()
            for router in self.routers:
                for sender in router.senders:
                    await sender.send_eos()
            self.state = "finished"
        except BaseException:
            self.state = "failed"
            raise
        finally:
            unbind(token)
            self.finished_at = time.time()

    async def aclose(self) -> None:
        """Close channels and operators; safe to call more than once."""
        await self.ft.aclose()
        for router in self.routers:
            for sender in router.senders:
                await sender.aclose()
        for inp in self.inputs:
            self.server.unregister(self.job_id, inp.channel_id)
            await inp.aclose()
        self.inputs = []
        self.routers = []
        if self.reader is not None:
            await self.reader.aclose()
            self.reader = None
        for op in self.ops:
            op.close()
        self.ops = []

    # -- the loop ------------------------------------------------------------------------------------

    async def _run_inputs(self) -> None:
        gate = self.gate
        assert gate is not None
        while True:
            timeout = None
            if self._flush_deadline is not None:
                timeout = max(0.0, self._flush_deadline - time.monotonic())
            item = await gate.next(timeout)
            if item is None:
                if gate.finished:
                    return
                if gate.blocked:
                    await self.ft.on_input_change()  # an input ended during a barrier alignment
                await self._timer_flush()
                continue
            index, batch = item
            if batch.barrier is not None:
                await self.ft.on_barrier(index, batch.barrier)
                continue
            await self._process_input(index, batch)
            await self._maybe_timer_flush()
            await self.ft.between_batches()
            # Awaiting a batch that is already queued does not yield to the event loop: without this a
            # backlog would be processed in one go while commits, log flushes, credits and heartbeats wait
            # (a lineage sink's output would then wait for the end of the backlog to be released).
            await asyncio.sleep(0)

    async def _process_input(self, index: int, batch: Batch) -> None:
        # RECV(index): the stash ingests the batch's lineage before the batch is processed
        self.ft.on_recv(index, batch)
        self.consumed[index] = batch.seq
        self.stamp.ingest_ns = batch.ingest_ns
        self.batches_in += 1
        await self._emit(self._run_chain(batch.records))
        self._count_records(len(batch.records))

    async def _run_source(self) -> None:
        reader = self.reader
        assert reader is not None
        size = self.config.batch_size
        pending: asyncio.Task[Sequence[Any] | None] | None = None
        try:
            while True:
                offset = reader.offset()
                if self._flush_deadline is None and pending is None:
                    records = await self._read(reader, size)
                else:
                    # output is buffered: wait for the reader only until the flush timer fires
                    if pending is None:
                        pending = asyncio.ensure_future(self._read(reader, size))
                    timeout = max(0.0, (self._flush_deadline or time.monotonic()) - time.monotonic())
                    done, _ = await asyncio.wait({pending}, timeout=timeout)
                    if not done:
                        await self._timer_flush()
                        continue
                    records, pending = pending.result(), None
                if records is None:
                    return
                if records:
                    await self._process_source(offset, records)
                await self._maybe_timer_flush()
                await self.ft.between_batches()
        finally:
            if pending is not None:
                pending.cancel()

    async def _process_source(self, offset: Any, records: Sequence[Any]) -> None:
        # SOURCE(offset, count): where the reader cut this batch, so a replay re-reads the same one
        self.ft.on_source(offset, len(records))
        self.stamp.ingest_ns = time.time_ns()
        self.batches_in += 1
        await self._emit(self._run_chain(records))
        self._count_records(len(records))

    async def _replay(self) -> None:
        """Re-execute the logged history after a restart (DESIGN.md §7.4), then return to go live."""
        cursor = self.ft.cursor
        gate = self.gate
        assert cursor is not None and gate is not None
        while not cursor.exhausted:
            det = cursor.next()
            kind = det[0]
            if kind == Kind.RECV:
                index = det[1]
                await self._process_input(index, await gate.take_from(index))
            elif kind == Kind.SOURCE:
                assert self.reader is not None
                self.reader.seek(det[1])
                records = await self.reader.read_exact(det[2])
                await self._process_source(det[1], records)
            elif kind == Kind.FLUSH:
                await self._timer_flush()
            else:
                raise ProtocolError(
                    f"replay of {self.name} diverged at position {cursor.position - 1}: the log says "
                    f"{describe(det)} where a batch, a flush or a source read was expected; a user function "
                    "is not deterministic (DESIGN.md §3)"
                )
        gate.rescan()
        await self.ft.replay_done()

    async def _read(self, reader: SourceReader, size: int) -> Sequence[Any] | None:
        try:
            return await reader.read(size)
        except (OSError, UnicodeDecodeError, SerializationError):
            raise
        except Exception as exc:
            ctx = self.contexts[0]
            where = f"while reading the batch after offset {short_repr(reader.offset())}"
            function = describe_raiser(exc, reader.read)
            raise UserFunctionError(ctx.step.name, ctx.instance, function, None, exc, where=where) from exc

    def _run_chain(self, records: Sequence[Any]) -> Sequence[Any]:
        metrics, ops = self.metrics, self.ops
        for i in range(len(ops)):
            m = metrics[i]
            m.records_in += len(records)
            records = ops[i].process(records)
            m.records_out += len(records)
            if not records:
                return records
        return records

    def _finish_chain(self) -> Sequence[Any]:
        """End of input: each operator finishes in chain order, its final output flowing downstream."""
        carry: list[Any] = []
        for i, op in enumerate(self.ops):
            m = self.metrics[i]
            if carry:
                m.records_in += len(carry)
                carry = list(op.process(carry))
                m.records_out += len(carry)
            final = op.finish()
            m.records_out += len(final)
            carry.extend(final)
        return carry

    async def _emit(self, records: Sequence[Any]) -> None:
        if not records or not self.routers:
            return
        ingest = self.stamp.ingest_ns
        for router in self.routers:
            if router.add(records, ingest):
                await router.send_full()
        if self._flush_deadline is None and not self.ft.replaying and any(r.buffered for r in self.routers):
            self._flush_deadline = time.monotonic() + self._flush_s

    async def _maybe_timer_flush(self) -> None:
        if self._flush_deadline is not None and time.monotonic() >= self._flush_deadline:
            await self._timer_flush()

    async def _timer_flush(self) -> None:
        """FLUSH: partially filled buffers leave now because a timer fired; when is nondeterministic."""
        self._flush_deadline = None
        if not any(r.buffered for r in self.routers):
            return
        self.ft.on_flush()
        for router in self.routers:
            await router.flush()

    async def flush_for_checkpoint(self) -> None:
        """Empty the output buffers before a checkpoint (logged like a timer flush)."""
        await self._timer_flush()

    # -- observability -------------------------------------------------------------------------------

    def _latency(self) -> dict[str, Any]:
        """A sink's latency percentiles, and the timeline buckets closed since the previous call.

        The timeline is handed over incrementally: each call removes what it returns, and the
        coordinator adds it up (``JobRun.absorb``). Once the instance is done, the open bucket goes too.
        """
        if not any(c.step.kind == "sink" for c in self.contexts):
            return {}
        done = self.state in ("finished", "failed")
        return {
            "latency": self.stamp.latency.summary(),
            "arrival_latency": self.stamp.arrival.summary(),
            "timeline": self.stamp.timeline.drain(everything=done),
        }

    def statistics(self) -> InstanceStatistics:
        batches_out = bytes_out = 0
        backpressure = 0.0
        for router in self.routers:
            for sender in router.senders:
                st = sender.statistics()
                batches_out += st.batches_sent
                bytes_out += st.bytes_sent
                backpressure += st.backpressure_s
        return InstanceStatistics(
            instance=self.name,
            state=self.state,
            steps={
                c.instance: {"records_in": m.records_in, "records_out": m.records_out}
                for c, m in zip(self.contexts, self.metrics, strict=True)
            },
            batches_in=self.batches_in,
            batches_out=batches_out,
            bytes_out=bytes_out,
            backpressure_s=backpressure,
            started_at=self.started_at,
            finished_at=self.finished_at,
            extra={**self.ft.statistics(), **self._latency()},
        )
