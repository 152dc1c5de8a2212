"""The operator actor: one task instance, a single-threaded asyncio loop over batches.

A task instance owns its operators (a chain of steps), its input gate (one :class:`InputChannel` per
upstream instance) and its output routers (per downstream edge: a partitioner, a buffer and an
:class:`OutputChannel` per receiver). Its loop is the one place where the nondeterminism of DESIGN.md §4
happens, and each such point is marked below:

* ``RECV``: which input channel the next batch is taken from (:meth:`InputGate.next`);
* ``FLUSH``: a partially filled output buffer sent because the flush timer fired, not because it filled;
* ``SOURCE``: where a source reader cut the batch it returned;
* ``TIMER``: processing-time timers (processing-time windows) fired between two batches;
* ``IDLE``: a source that produced nothing for its idle timeout declared its event time idle.

Everything else is a deterministic function of those, so output batch boundaries and sequence numbers
follow from them: the property the lineage stash builds on.

**Event time** (:mod:`engine.event_time`). On a timed stream records are ``(timestamp, value)`` pairs
and every batch carries its sender's watermark. The instance's watermark is the minimum over its inputs
(:class:`~engine.event_time.InputWatermarks`), updated from each batch's header *before* its records are
processed, in the order batches are taken (``RECV``): so it too replays exactly. When it moves, each
operator of the chain gets :meth:`~operators.base.Operator.on_watermark` in chain order (what fires flows
down the rest of the chain). A batch carries the sender's watermark as of its *first* record: every
record in it was emitted after that watermark held, so a record the sender already considered late is
late at the receiver too (and a record that was on time is never made late). A newer watermark goes out
with the next batch, or in a record-less batch at the next timer flush (a logged ``FLUSH``). At the end of its
input an instance sends ``MAX_WATERMARK`` before its end of stream, so an ended input never holds its
receivers back, and ends in order with the data rather than at a moment a replay could not reproduce.
"""

from __future__ import annotations

import asyncio
import logging
import time
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
from engine.errors import ProtocolError, SerializationError, UserFunctionError, short_repr
from engine.event_time import MAX_WATERMARK, InputWatermarks
from engine.fault_tolerance import FaultTolerance
from engine.input_gate import InputGate
from engine.metrics import BatchStamp
from engine.output_channel import OutputChannel, connect
from engine.output_router import OutputRouter
from engine.plan import ChannelId, Plan, Task
from operators.base import Operator, OperatorContext, describe_raiser
from operators.stateless import AssignTimestamps

__all__ = ["InjectedCrash", "InputGate", "InstanceStatistics", "OutputRouter", "StepMetrics", "TaskInstance"]

log = logging.getLogger("stashflow.instance")


class InjectedCrash(Exception):
    """Raised by an instance armed with ``kill_after`` when it reaches its record count (tests only)."""


@dataclass
class StepMetrics:
    """Counters of one step instance (``step/i``), chained steps included."""

    records_in: int = 0
    records_out: int = 0
    late: int = 0  # records sent to the late side output (dropped if nothing consumes it)


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
        #: every output router; the main ones get the chain's output, side routers an operator's side output
        self.routers: list[OutputRouter] = []
        self.main_routers: list[OutputRouter] = []
        self.side_routers: dict[tuple[int, str], list[OutputRouter]] = {}
        # event time (see the module docstring): the instance's watermark, whether its source is idle
        self.watermark: int | None = None
        self.out_idle = False
        self.input_watermarks: InputWatermarks | None = None
        self._assigner = self.ops[0] if isinstance(self.ops[0], AssignTimestamps) else None
        self._idle_s: float | None = None
        if self._assigner is not None and self._assigner.strategy.idle_timeout_ms is not None:
            self._idle_s = self._assigner.strategy.idle_timeout_ms / 1000.0
        self._timer_ops = [
            i for i, op in enumerate(self.ops) if type(op).next_timer is not Operator.next_timer
        ]
        self._side_ops = [(i, op) for i, op in enumerate(self.ops) if op.side is not None]
        self._input_of: list[int] | None = None  # channel index -> input of the first step
        self.reader: SourceReader | None = None
        #: a bounded source's last ``(done, total)``: still reported once the reader is closed
        self._progress: tuple[int, int] | None = None
        self._progress_raised = False  # the reader's progress() raised once: not asked again
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
        if self.inputs and self.task.steps[0].timed_in:
            self.input_watermarks = InputWatermarks(len(self.inputs))
        if len(self.task.inputs) > 1 and self.task.steps[0].kind != "union":
            # a two-input step (a join) is told which input each batch comes from
            groups = self.plan.input_groups(self.task.name, self.index)
            self._input_of = [k for k, group in enumerate(groups) for _ in group]
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
        position = {s.name: i for i, s in enumerate(self.task.steps)}
        for out, cids in zip(self.task.outputs, outputs, strict=True):
            channels = await asyncio.gather(*(self.ft.open_output(addresses[cid.dst], cid) for cid in cids))
            senders = [self.ft.sender(ch, cid) for ch, cid in zip(channels, cids, strict=True)]
            downstream = self.plan.task(out.downstream).steps[0]
            producer = position.get(out.step, len(self.ops) - 1)
            router = OutputRouter(out, senders, self.config.batch_size, self.contexts[producer], downstream)
            self.routers.append(router)
            if out.tag is None:
                self.main_routers.append(router)
            else:
                self.side_routers.setdefault((producer, out.tag), []).append(router)

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
                    if router.output.timed:  # the end of event time, before the end of stream (see above)
                        router.set_time(MAX_WATERMARK, False)
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
            if self._timer_ops:
                due = self._next_timer()
                if due is not None:
                    until = max(0.0, due / 1000.0 - time.time())
                    timeout = until if timeout is None else min(timeout, until)
            item = await gate.next(timeout)
            if item is None:
                if gate.finished:
                    return
                if gate.blocked:
                    await self.ft.on_input_change()  # an input ended during a barrier alignment
                await self._maybe_fire_timers()
                await self._maybe_timer_flush()
                continue
            index, batch = item
            if batch.barrier is not None:
                await self.ft.on_barrier(index, batch.barrier)
                continue
            await self._process_input(index, batch)
            if self._timer_ops:
                await self._maybe_fire_timers()
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
        watermarks = self.input_watermarks
        if watermarks is not None:  # before the records: they were emitted after it held (see above)
            moved = watermarks.idle(index) if batch.idle else watermarks.update(index, batch.watermark)
            if moved is not None:
                await self._advance_watermark(moved)
        if self._input_of is not None:
            self.ops[0].input = self._input_of[index]
        await self._emit(self._run_chain(batch.records))
        self._count_records(len(batch.records))

    async def _run_source(self) -> None:
        reader = self.reader
        assert reader is not None
        size = self.config.batch_size
        pending: asyncio.Task[Sequence[Any] | None] | None = None
        last_records = time.monotonic()
        try:
            while True:
                offset = reader.offset()
                # a source with an idle timeout declares its event time idle after that long without records
                idle_at = None if self._idle_s is None or self.out_idle else last_records + self._idle_s
                if self._flush_deadline is None and pending is None and idle_at is None:
                    records = await self._read(reader, size)
                else:
                    # wait for the reader only until the flush timer fires or the source turns idle
                    if pending is None:
                        pending = asyncio.ensure_future(self._read(reader, size))
                    wakes = [d for d in (self._flush_deadline, idle_at) if d is not None]
                    timeout = max(0.0, min(wakes) - time.monotonic()) if wakes else None
                    done, _ = await asyncio.wait({pending}, timeout=timeout)
                    if not done:
                        await self._maybe_timer_flush()
                        if idle_at is not None and time.monotonic() >= idle_at:
                            await self._go_idle()
                        continue
                    records, pending = pending.result(), None
                if records is None:
                    return
                if records:
                    last_records = time.monotonic()
                    await self._process_source(offset, records)
                await self._maybe_timer_flush()
                await self.ft.between_batches()
        finally:
            if pending is not None:
                pending.cancel()

    async def _process_source(self, offset: Any, records: Sequence[Any]) -> None:
        # SOURCE(offset, count): where the reader cut this batch, so a replay re-reads the same one
        self.ft.on_source(offset, len(records))
        assert self.reader is not None
        self.stamp.ingest_ns = self.reader.ingest_ns() or time.time_ns()
        self.batches_in += 1
        assigner = self._assigner
        if assigner is not None and self.out_idle:  # records again: the source is active from this batch on
            self.out_idle = False
            self._set_time()
        await self._emit(self._run_chain(records))
        if assigner is not None:
            moved = assigner.watermark
            if moved is not None and (self.watermark is None or moved > self.watermark):
                await self._advance_watermark(moved)
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
            elif kind == Kind.TIMER:
                await self._fire_timers(det[1])
            elif kind == Kind.IDLE:
                await self._go_idle()
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

    def _run_chain(self, records: Sequence[Any], start: int = 0) -> Sequence[Any]:
        """Run ``records`` through the operators from ``start`` on; the output of the last one."""
        metrics, ops = self.metrics, self.ops
        for i in range(start, len(ops)):
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
        """Route the chain's output to the main routers, and the operators' side outputs to theirs."""
        ingest = self.stamp.ingest_ns
        if records:
            for router in self.main_routers:
                if router.add(records, ingest):
                    await router.send_full()
        for i, op in self._side_ops:
            assert op.side is not None
            for tag, side in op.side.items():
                if not side:
                    continue
                if tag == "late":
                    self.metrics[i].late += len(side)
                for router in self.side_routers.get((i, tag), ()):
                    if router.add(side, ingest):
                        await router.send_full()
                side.clear()
        self._arm_flush()

    def _arm_flush(self) -> None:
        """Start the flush timer if output waits in a buffer (or event time waits to be sent)."""
        if (
            self._flush_deadline is None
            and not self.ft.replaying
            and any(r.buffered or r.stale for r in self.routers)
        ):
            self._flush_deadline = time.monotonic() + self._flush_s

    # -- event time and timers -----------------------------------------------------------------------

    def _set_time(self) -> None:
        for router in self.routers:
            if router.output.timed:
                router.set_time(self.watermark, self.out_idle)

    async def _advance_watermark(self, watermark: int) -> None:
        """The instance's watermark moved: each operator fires in chain order, then it goes out."""
        self.watermark = watermark
        for i, op in enumerate(self.ops):
            fired = op.on_watermark(watermark)
            if fired:
                self.metrics[i].records_out += len(fired)
                await self._emit(self._run_chain(fired, i + 1))
        self._set_time()
        self._arm_flush()

    def _next_timer(self) -> int | None:
        due = [t for i in self._timer_ops if (t := self.ops[i].next_timer()) is not None]
        return min(due) if due else None

    async def _maybe_fire_timers(self) -> None:
        due = self._next_timer()
        if due is not None:
            now = time.time_ns()
            if now // 1_000_000 >= due:
                await self._fire_timers(now)

    async def _fire_timers(self, time_ns: int) -> None:
        """TIMER: processing-time timers up to ``time_ns`` fire now, between two batches."""
        self.ft.on_timer(time_ns)
        time_ms = time_ns // 1_000_000
        for i in self._timer_ops:
            fired = self.ops[i].on_processing_time(time_ms)
            if fired:
                self.metrics[i].records_out += len(fired)
                await self._emit(self._run_chain(fired, i + 1))

    async def _go_idle(self) -> None:
        """IDLE: this source produced nothing for its idle timeout; its receivers stop waiting for its
        watermark until it sends records again. Told at once: idleness is news only while it is fresh."""
        self.ft.on_idle()
        self.out_idle = True
        self._set_time()
        for router in self.routers:
            await router.flush()

    def time_snapshot(self) -> dict[str, Any]:
        """The instance's event time, for a checkpoint (operators and routers hold the rest)."""
        inputs = self.input_watermarks
        return {
            "watermark": self.watermark,
            "idle": self.out_idle,
            "inputs": None if inputs is None else inputs.snapshot(),
        }

    def restore_time(self, state: dict[str, Any]) -> None:
        self.watermark = state["watermark"]
        self.out_idle = bool(state["idle"])
        if self.input_watermarks is not None and state["inputs"] is not None:
            self.input_watermarks.restore(state["inputs"])

    async def _maybe_timer_flush(self) -> None:
        if self._flush_deadline is not None and time.monotonic() >= self._flush_deadline:
            await self._timer_flush()

    async def _timer_flush(self) -> None:
        """FLUSH: partially filled buffers (and a new watermark) leave now because a timer fired; when
        is nondeterministic."""
        self._flush_deadline = None
        if not any(r.buffered or r.stale for r in self.routers):
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

    def _source_progress(self) -> dict[str, Any]:
        """A source's ``progress``: ``[done, total]`` of its reader (records, bytes: the reader's unit)."""
        if self.reader is not None and not self._progress_raised:
            try:
                self._progress = self.reader.progress()
            except Exception as exc:  # a statistics report must not fail: the heartbeat carries it
                self._progress_raised = True
                self._progress = None
                log.warning(
                    "%s: %s.progress() raised %s: %s; this source's progress is not shown",
                    self.name, type(self.reader).__qualname__, type(exc).__name__, exc,
                )  # fmt: skip
        if self._progress is None:
            return {}
        done, total = self._progress
        return {"progress": [int(done), int(total)]}

    def _event_time(self) -> dict[str, Any]:
        if self.input_watermarks is None and self._assigner is None:
            return {}
        return {"watermark": self.watermark, "idle": self.out_idle}

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
                | ({"late": m.late} if m.late else {})
                for c, m in zip(self.contexts, self.metrics, strict=True)
            },
            batches_in=self.batches_in,
            batches_out=batches_out,
            bytes_out=bytes_out,
            backpressure_s=backpressure,
            started_at=self.started_at,
            finished_at=self.finished_at,
            extra={
                **self.ft.statistics(),
                **self._latency(),
                **self._event_time(),
                **self._source_progress(),
            },
        )
