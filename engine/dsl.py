"""The job DSL: a :class:`Job` is a graph of named steps built through :class:`Stream` methods.

Every method that adds a step takes the step's name first, as Bytewax does; names are unique within a
job, validated as the graph is built, and become the names of the instances (``"count/1"``) that the
metrics, the CLI's ``--kill`` and the dashboard speak of.

>>> from engine import Job
>>> from connectors import CollectSink, ListSource
>>> job = Job("shout")
>>> out = CollectSink()
>>> job.source("read", ListSource(["a", "b"])).map("upper", str.upper).sink("write", out)
>>> [step.name for step in job.steps]
['read', 'upper', 'write']

Records that cross a channel between instances are msgpack-encoded: sequences arrive as tuples, so
write functions that accept either.

**Event time.** A source given ``timestamp=fn`` (and a ``watermark`` strategy,
:class:`~engine.event_time.BoundedOutOfOrderness`) makes a *timed* stream: every record carries its
event time, and watermarks flow with the batches. ``map``, ``flat_map``, ``filter``, ``key_by``,
``union`` and the running ``count``/``reduce`` keep the timestamp of the record they came from (user
functions only ever see values); ``window`` results carry ``end - 1``, as in Flink. Sinks write values.

>>> from engine import BoundedOutOfOrderness, Tumbling
>>> clicks = Job("clicks")
>>> events = clicks.source("read", ListSource([("u1", 1_000), ("u2", 1_500), ("u1", 12_000)]),
...                        timestamp=lambda e: e[1], watermark=BoundedOutOfOrderness(2_000))
>>> counts = events.key_by(lambda e: e[0]).window("per_10s", Tumbling(10_000)).count()
>>> counts.sink("write", CollectSink())
>>> clicks.step("per_10s").kind, clicks.step("per_10s").timed_in
('window', True)
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from engine.connector import Sink, Source
from engine.errors import DuplicateStepError, JobDefinitionError, ParameterError, short_repr
from engine.event_time import BoundedOutOfOrderness
from engine.graph import LATE, Edge, JoinSpec, Partitioning, Step, StepKind, TimeDomain, WindowSpec

if TYPE_CHECKING:
    from operators.windows import WindowAggregate, WindowAssigner

__all__ = [
    "Edge",
    "Job",
    "JoinSpec",
    "KeyedStream",
    "ProcessStream",
    "Step",
    "StepKind",
    "Stream",
    "WindowSpec",
    "WindowStream",
    "WindowedStream",
]

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")


@dataclass
class Job:
    """A dataflow job: a named graph of steps.

    ``parallelism`` is the default number of instances of every step; a step may override it.
    """

    name: str
    parallelism: int = 1
    _steps: dict[str, Step] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise JobDefinitionError(
                f"job name {self.name!r} is invalid: use letters, digits, '_', '.', '-', starting with a letter"
            )
        _check_parallelism(self.parallelism, f"job {self.name!r}")

    @property
    def steps(self) -> list[Step]:
        """The steps in the order they were added (a topological order)."""
        return list(self._steps.values())

    def step(self, name: str) -> Step:
        try:
            return self._steps[name]
        except KeyError:
            known = ", ".join(self._steps) or "none"
            raise JobDefinitionError(f"job {self.name!r} has no step {name!r}; its steps: {known}") from None

    def source(
        self,
        name: str,
        source: Source,
        *,
        timestamp: Callable[[Any], int] | None = None,
        watermark: BoundedOutOfOrderness | None = None,
        parallelism: int | None = None,
    ) -> Stream:
        """Add a source step reading from ``source`` (a :class:`engine.connector.Source`).

        ``timestamp(record)`` gives a record's event time in int milliseconds and makes the stream
        timed; ``watermark`` says how far out of order records may come (default
        ``BoundedOutOfOrderness(0)``: in order) and after how long a quiet source instance is idle.
        """
        if not isinstance(source, Source):
            raise JobDefinitionError(
                f"step {name!r}: source expects an engine.connector.Source (e.g. connectors.FileSource), "
                f"got {type(source).__name__}"
            )
        if timestamp is not None:
            _check_fn(name, "timestamp", timestamp)
        if watermark is not None:
            if not isinstance(watermark, BoundedOutOfOrderness):
                raise JobDefinitionError(
                    f"step {name!r}: watermark expects engine.BoundedOutOfOrderness(max_out_of_order_ms), "
                    f"got {short_repr(watermark)}"
                )
            if timestamp is None:
                raise JobDefinitionError(
                    f"step {name!r}: a watermark strategy needs event times: pass timestamp=fn too, a "
                    "function from a record to its event time in int milliseconds"
                )
        elif timestamp is not None:
            watermark = BoundedOutOfOrderness(0)
        step = Step(
            name,
            "source",
            source=source,
            parallelism=parallelism,
            timestamp_fn=timestamp,
            watermark=watermark,
        )
        return self._add(step)

    def _add(self, step: Step) -> Stream:
        if not isinstance(step.name, str) or not _NAME.match(step.name):
            raise JobDefinitionError(
                f"step name {step.name!r} in job {self.name!r} is invalid: use letters, digits, '_', '.', '-', "
                "starting with a letter (a '/' would clash with instance names like 'count/0')"
            )
        if step.name in self._steps:
            first = self._steps[step.name]
            raise DuplicateStepError(
                f"step name {step.name!r} is used twice in job {self.name!r}: by a {first.kind} step and by a "
                f"{step.kind} step; give each step a unique name"
            )
        if step.parallelism is not None:
            _check_parallelism(step.parallelism, f"step {step.name!r}")
        self._steps[step.name] = step
        return Stream(self, step.name)


def _check_parallelism(value: object, where: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise JobDefinitionError(f"{where}: parallelism must be a positive integer, got {value!r}")


def _check_fn(step: str, what: str, fn: object) -> None:
    if not callable(fn):
        raise JobDefinitionError(f"step {step!r}: {what} expects a callable, got {type(fn).__name__} {fn!r}")


class Stream:
    """The output of a step; methods add downstream steps and return their streams."""

    __slots__ = ("_job", "_partitioning", "_step", "_tag")

    def __init__(self, job: Job, step: str, partitioning: Partitioning = "forward", tag: str | None = None):
        self._job = job
        self._step = step
        self._partitioning: Partitioning = partitioning
        self._tag = tag

    def __repr__(self) -> str:
        return f"Stream(job={self._job.name!r}, step={self._step!r})"

    @property
    def job(self) -> Job:
        return self._job

    @property
    def step_name(self) -> str:
        return self._step

    @property
    def timed(self) -> bool:
        """Its records carry event time (see the module docstring)."""
        step = self._job.step(self._step)
        return step.side_tags_timed if self._tag is not None else step.timed_out

    def _edge(self) -> Edge:
        return Edge(self._step, self._partitioning, tag=self._tag, timed=self.timed)

    def _add(
        self, name: str, kind: StepKind, fn: Callable[..., Any] | None, parallelism: int | None
    ) -> Stream:
        if fn is not None:
            _check_fn(name, kind, fn)
        step = Step(name, kind, (self._edge(),), fn=fn, parallelism=parallelism, timed_in=self.timed)
        return self._job._add(step)

    def map(self, name: str, fn: Callable[[Any], Any], *, parallelism: int | None = None) -> Stream:
        """Emit ``fn(x)`` for every record ``x``."""
        return self._add(name, "map", fn, parallelism)

    def flat_map(
        self, name: str, fn: Callable[[Any], Iterable[Any]], *, parallelism: int | None = None
    ) -> Stream:
        """Emit every item of ``fn(x)`` for every record ``x``."""
        return self._add(name, "flat_map", fn, parallelism)

    def filter(self, name: str, fn: Callable[[Any], bool], *, parallelism: int | None = None) -> Stream:
        """Keep the records for which ``fn(x)`` is true."""
        return self._add(name, "filter", fn, parallelism)

    def union(self, name: str, *others: Stream, parallelism: int | None = None) -> Stream:
        """Merge this stream with ``others`` into one (no order is promised across inputs)."""
        if not others:
            raise JobDefinitionError(f"step {name!r}: union needs at least one other stream to merge with")
        edges = [self._edge()]
        timed = self.timed
        for other in others:
            if not isinstance(other, Stream) or isinstance(other, KeyedStream):
                raise JobDefinitionError(
                    f"step {name!r}: union expects Streams, got {type(other).__name__}; "
                    "call union before key_by"
                )
            if other._job is not self._job:
                raise JobDefinitionError(
                    f"step {name!r}: stream of step {other._step!r} belongs to job {other._job.name!r}, "
                    f"not to job {self._job.name!r}; build each job from its own sources"
                )
            if other.timed != timed:
                which = [f"{e.upstream} ({'with' if e.timed else 'without'} event time)" for e in edges]
                raise JobDefinitionError(
                    f"step {name!r}: union of a stream with event time and one without: {', '.join(which)}, "
                    f"{other._step} ({'with' if other.timed else 'without'} event time); give every source "
                    "of the union timestamp=fn, or none"
                )
            edges.append(other._edge())
        names = [(e.upstream, e.tag) for e in edges]
        if len(set(names)) != len(names):
            listed = [e.upstream if e.tag is None else f"{e.upstream}.{e.tag}" for e in edges]
            raise JobDefinitionError(f"step {name!r}: union lists step(s) {listed} more than once")
        return self._job._add(Step(name, "union", tuple(edges), parallelism=parallelism, timed_in=timed))

    def rebalance(self) -> Stream:
        """Distribute the next step's input round-robin over its instances (no chaining across it)."""
        return Stream(self._job, self._step, "rebalance", self._tag)

    def key_by(self, fn: Callable[[Any], Any]) -> KeyedStream:
        """Partition by ``fn(x)`` (a stable hash, equal in every process and run) for a keyed step."""
        _check_fn(self._step, "key_by", fn)
        return KeyedStream(self._job, self._step, fn, self._tag)

    def sink(self, name: str, sink: Sink, *, parallelism: int | None = None) -> None:
        """Write the stream to ``sink`` (an :class:`engine.connector.Sink`). Ends the chain."""
        if not isinstance(sink, Sink):
            raise JobDefinitionError(
                f"step {name!r}: sink expects an engine.connector.Sink (e.g. connectors.FileSink), "
                f"got {type(sink).__name__}"
            )
        step = Step(name, "sink", (self._edge(),), sink=sink, parallelism=parallelism, timed_in=self.timed)
        self._job._add(step)


class KeyedStream(Stream):
    """A stream partitioned by key: the input of keyed, stateful steps."""

    __slots__ = ("_key_fn",)

    def __init__(self, job: Job, step: str, key_fn: Callable[[Any], Any], tag: str | None = None):
        super().__init__(job, step, "hash", tag)
        self._key_fn = key_fn

    def __repr__(self) -> str:
        return f"KeyedStream(job={self._job.name!r}, step={self._step!r})"

    def _edge(self) -> Edge:
        return Edge(self._step, "hash", self._key_fn, self._tag, self.timed)

    def _keyed(
        self, name: str, kind: StepKind, fn: Callable[..., Any] | None, parallelism: int | None
    ) -> Stream:
        if fn is not None:
            _check_fn(name, kind, fn)
        step = Step(
            name,
            kind,
            (self._edge(),),
            fn=fn,
            key_fn=self._key_fn,
            parallelism=parallelism,
            timed_in=self.timed,
        )
        return self._job._add(step)

    def process(self, name: str, fn: Any, *, parallelism: int | None = None) -> ProcessStream:
        """Run a keyed process function, Flink's ``KeyedProcessFunction``: per record
        ``fn.process_element(value, ctx)`` (or a plain ``fn(value, ctx)``) returns the outputs, with
        keyed value/list/map state (``ctx.value_state(name, ttl_ms=None)``...), event- and
        processing-time timers (``ctx.timers``, fired through ``fn.on_timer(timestamp, ctx)``) and
        side outputs (``ctx.output(tag, value)``, read with :meth:`ProcessStream.side_output`).
        See :mod:`operators.process` for the whole API."""
        from operators.process import ProcessRunner

        try:
            ProcessRunner(fn)  # validates the function the way the instances will
        except Exception as exc:
            raise JobDefinitionError(f"step {name!r}: {exc}") from None
        step = Step(
            name,
            "process",
            (self._edge(),),
            fn=fn,
            key_fn=self._key_fn,
            parallelism=parallelism,
            timed_in=self.timed,
        )
        self._job._add(step)
        return ProcessStream(self._job, name)

    def interval_join(
        self,
        name: str,
        other: KeyedStream,
        lower: int,
        upper: int,
        fn: Callable[[Any, Any], Any],
        *,
        parallelism: int | None = None,
    ) -> WindowStream:
        """Join each record ``l`` of this stream with every record ``r`` of ``other`` of the same key
        whose event time is in ``[ts_l + lower, ts_l + upper]`` (ms, inclusive): emits ``fn(l, r)``
        stamped ``max(ts_l, ts_r)``. Both sides are buffered in keyed state until the watermark passes
        their interval; late records go to ``.late()``. Flink's ``intervalJoin().between()``."""
        from operators.joins import IntervalJoinBuffer

        self._check_join(name, other, fn)
        try:
            IntervalJoinBuffer(lower, upper, fn)
        except Exception as exc:
            raise type(exc)(f"step {name!r}: {exc}") from None
        return self._join(name, "interval_join", other, fn, JoinSpec(lower, upper), parallelism)

    def window_join(
        self,
        name: str,
        other: KeyedStream,
        assigner: WindowAssigner,
        fn: Callable[[Any, Any], Any],
        *,
        parallelism: int | None = None,
    ) -> WindowStream:
        """Join the records of this stream and of ``other`` that share a key and a window
        (``Tumbling`` or ``Sliding``): when the window fires, ``fn(l, r)`` for every pair, stamped
        ``end - 1``. Flink's ``join().where().equalTo().window()``."""
        from operators.joins import WindowJoinBuffer

        self._check_join(name, other, fn)
        try:
            WindowJoinBuffer(assigner, fn)  # type: ignore[arg-type]  # refuses Session itself
        except Exception as exc:
            raise type(exc)(f"step {name!r}: {exc}") from None
        return self._join(name, "window_join", other, fn, JoinSpec(assigner=assigner), parallelism)

    def _check_join(self, name: str, other: object, fn: object) -> None:
        if not isinstance(other, KeyedStream):
            raise JobDefinitionError(
                f"step {name!r}: a join needs the other stream keyed too: pass other.key_by(fn), got "
                f"{type(other).__name__}"
            )
        if other._job is not self._job:
            raise JobDefinitionError(
                f"step {name!r}: stream of step {other._step!r} belongs to job {other._job.name!r}, not to "
                f"job {self._job.name!r}"
            )
        for side in (self, other):
            if not side.timed:
                raise JobDefinitionError(
                    f"step {name!r}: a join needs records with event time, and the stream of step "
                    f"{side._step!r} has none: give its source timestamp=fn"
                )
        _check_fn(name, "join", fn)

    def _join(
        self,
        name: str,
        kind: StepKind,
        other: KeyedStream,
        fn: Callable[[Any, Any], Any],
        spec: JoinSpec,
        parallelism: int | None,
    ) -> WindowStream:
        step = Step(
            name,
            kind,
            (self._edge(), other._edge()),
            fn=fn,
            key_fn=self._key_fn,
            parallelism=parallelism,
            timed_in=True,
            join=spec,
        )
        self._job._add(step)
        return WindowStream(self._job, name)

    def window(
        self,
        name: str,
        assigner: WindowAssigner,
        *,
        allowed_lateness: int = 0,
        time: TimeDomain = "event",
        parallelism: int | None = None,
    ) -> WindowedStream:
        """Group each key's records into windows (``Tumbling``, ``Sliding``, ``Session``); then
        ``.count()``, ``.reduce(fn)`` or ``.aggregate(...)`` makes the step.

        Each result is ``(key, start, end, value)`` (milliseconds, ``[start, end)``), emitted once
        the watermark passes ``end`` (``time="event"``, the stream needs event time) or once the
        processing-time clock does (``time="processing"``). A record that arrives after its window
        fired but within ``allowed_lateness`` ms updates it and fires it again; later ones go to
        the ``.late()`` side output of the step.
        """
        from operators.windows import Session, Sliding, Tumbling

        if not isinstance(assigner, Tumbling | Sliding | Session):
            raise JobDefinitionError(
                f"step {name!r}: window expects engine.Tumbling(size_ms), engine.Sliding(size_ms, "
                f"slide_ms) or engine.Session(gap_ms), got {short_repr(assigner)}"
            )
        if type(allowed_lateness) is not int or allowed_lateness < 0:
            raise ParameterError(
                f"step {name!r}: allowed_lateness must be an int >= 0 (milliseconds), got "
                f"{short_repr(allowed_lateness)}"
            )
        if time not in ("event", "processing"):
            raise JobDefinitionError(f"step {name!r}: time must be 'event' or 'processing', got {time!r}")
        if time == "event" and not self.timed:
            raise JobDefinitionError(
                f"step {name!r}: an event-time window needs records with event time, and the stream of "
                f"step {self._step!r} has none: give its source timestamp=fn (and watermark="
                "BoundedOutOfOrderness(ms)), or use time='processing'"
            )
        return WindowedStream(self, name, assigner, allowed_lateness, time, parallelism)

    def count(self, name: str, *, parallelism: int | None = None) -> Stream:
        """Emit ``(key, running_count)`` for every record."""
        return self._keyed(name, "count", None, parallelism)

    def reduce(self, name: str, fn: Callable[[Any, Any], Any], *, parallelism: int | None = None) -> Stream:
        """Emit ``(key, running_value)`` for every record, ``value = fn(value, record)``; the first record is the start."""
        return self._keyed(name, "reduce", fn, parallelism)

    def count_final(self, name: str, *, parallelism: int | None = None) -> Stream:
        """Emit ``(key, count)`` once per key when the (bounded) input ends."""
        return self._keyed(name, "count_final", None, parallelism)

    def reduce_final(
        self, name: str, fn: Callable[[Any, Any], Any], *, parallelism: int | None = None
    ) -> Stream:
        """Emit ``(key, value)`` once per key when the (bounded) input ends, ``value = fn(value, record)``."""
        return self._keyed(name, "reduce_final", fn, parallelism)

    def map(self, name: str, fn: Callable[[Any], Any], *, parallelism: int | None = None) -> Stream:
        raise self._not_keyed("map")

    def flat_map(
        self, name: str, fn: Callable[[Any], Iterable[Any]], *, parallelism: int | None = None
    ) -> Stream:
        raise self._not_keyed("flat_map")

    def filter(self, name: str, fn: Callable[[Any], bool], *, parallelism: int | None = None) -> Stream:
        raise self._not_keyed("filter")

    def sink(self, name: str, sink: Sink, *, parallelism: int | None = None) -> None:
        raise self._not_keyed("sink")

    def _not_keyed(self, what: str) -> JobDefinitionError:
        return JobDefinitionError(
            f"{what} after key_by on step {self._step!r}: a KeyedStream feeds keyed steps "
            "(count, reduce, count_final, reduce_final, window); drop the key_by or add a keyed step first"
        )


class WindowedStream:
    """A keyed stream cut into windows; :meth:`count`, :meth:`reduce` or :meth:`aggregate` adds the step."""

    __slots__ = ("_assigner", "_keyed", "_lateness", "_name", "_parallelism", "_time")

    def __init__(
        self,
        keyed: KeyedStream,
        name: str,
        assigner: WindowAssigner,
        allowed_lateness: int,
        time: TimeDomain,
        parallelism: int | None,
    ):
        self._keyed = keyed
        self._name = name
        self._assigner = assigner
        self._lateness = allowed_lateness
        self._time: TimeDomain = time
        self._parallelism = parallelism

    def count(self) -> WindowStream:
        """``(key, start, end, number of records)`` per window."""
        from operators.windows import WindowAggregate

        return self._add(WindowAggregate.count())

    def reduce(self, fn: Callable[[Any, Any], Any]) -> WindowStream:
        """``(key, start, end, fn(...fn(fn(r1, r2), r3)...))`` per window (records in arrival order)."""
        from operators.windows import WindowAggregate

        _check_fn(self._name, "reduce", fn)
        return self._add(WindowAggregate.reduce(fn))

    def aggregate(
        self,
        init: Callable[[], Any],
        add: Callable[[Any, Any], Any],
        merge: Callable[[Any, Any], Any] | None = None,
        result: Callable[[Any], Any] | None = None,
    ) -> WindowStream:
        """Flink's ``AggregateFunction``: ``init() -> acc``, ``add(acc, record) -> acc``,
        ``merge(acc, acc) -> acc`` (needed by ``Session``), ``result(acc) -> value``; emits
        ``(key, start, end, value)``. Accumulators are stored as msgpack: return new ones (lists come
        back as tuples)."""
        from operators.windows import WindowAggregate

        for what, fn in (("init", init), ("add", add)):
            _check_fn(self._name, f"aggregate {what}", fn)
        for what, opt in (("merge", merge), ("result", result)):
            if opt is not None:
                _check_fn(self._name, f"aggregate {what}", opt)
        return self._add(WindowAggregate.aggregate(init, add, merge, result))

    def _add(self, aggregate: WindowAggregate) -> WindowStream:
        keyed = self._keyed
        if self._assigner.merging and aggregate.merge is None:
            raise JobDefinitionError(
                f"step {self._name!r}: {self._assigner} merges windows, so the aggregate needs a merge "
                "function: pass merge=(acc, acc) -> acc to aggregate()"
            )
        spec = WindowSpec(self._assigner, aggregate, self._lateness, self._time)
        step = Step(
            self._name,
            "window",
            (keyed._edge(),),
            key_fn=keyed._key_fn,
            parallelism=self._parallelism,
            timed_in=keyed.timed,
            window=spec,
        )
        keyed._job._add(step)
        return WindowStream(keyed._job, self._name)


class WindowStream(Stream):
    """The results of a window or join step; :meth:`late` is its side output of late records."""

    __slots__ = ()

    def late(self) -> Stream:
        """The records that came after every window they belong to was dropped (event time past
        ``end + allowed_lateness``), as they were, with their event time: not silently dropped."""
        if self._tag is not None:
            raise JobDefinitionError(f"late() of step {self._step!r} is already its late side output")
        return Stream(self._job, self._step, "forward", LATE)


class ProcessStream(Stream):
    """The main output of a ``process`` step; :meth:`side_output` reads its other outputs."""

    __slots__ = ()

    def side_output(self, tag: str) -> Stream:
        """What the process function sent with ``ctx.output(tag, value)``."""
        if not isinstance(tag, str) or not tag:
            raise JobDefinitionError(
                f"step {self._step!r}: side_output expects a non-empty str tag, got {tag!r}"
            )
        return Stream(self._job, self._step, "forward", tag)
