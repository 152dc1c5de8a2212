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
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from engine.connector import Sink, Source
from engine.errors import DuplicateStepError, JobDefinitionError

__all__ = ["Edge", "Job", "KeyedStream", "Step", "StepKind", "Stream"]

StepKind = Literal[
    "source", "map", "flat_map", "filter", "union", "count", "reduce", "count_final", "reduce_final", "sink"
]
Partitioning = Literal["forward", "rebalance", "hash"]

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class Edge:
    """A connection into a step: from ``upstream``'s output, partitioned as ``partitioning``."""

    upstream: str
    partitioning: Partitioning = "forward"
    key_fn: Callable[[Any], Any] | None = None


@dataclass(frozen=True)
class Step:
    """One node of the job graph (a logical operator). Built by :class:`Stream` methods, never by hand."""

    name: str
    kind: StepKind
    inputs: tuple[Edge, ...] = ()
    fn: Callable[..., Any] | None = None
    key_fn: Callable[[Any], Any] | None = None
    source: Source | None = None
    sink: Sink | None = None
    parallelism: int | None = None

    @property
    def keyed(self) -> bool:
        return self.kind in ("count", "reduce", "count_final", "reduce_final")


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

    def source(self, name: str, source: Source, *, parallelism: int | None = None) -> Stream:
        """Add a source step reading from ``source`` (a :class:`engine.connector.Source`)."""
        if not isinstance(source, Source):
            raise JobDefinitionError(
                f"step {name!r}: source expects an engine.connector.Source (e.g. connectors.FileSource), "
                f"got {type(source).__name__}"
            )
        return self._add(Step(name, "source", source=source, parallelism=parallelism))

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

    __slots__ = ("_job", "_partitioning", "_step")

    def __init__(self, job: Job, step: str, partitioning: Partitioning = "forward"):
        self._job = job
        self._step = step
        self._partitioning: Partitioning = partitioning

    def __repr__(self) -> str:
        return f"Stream(job={self._job.name!r}, step={self._step!r})"

    @property
    def job(self) -> Job:
        return self._job

    @property
    def step_name(self) -> str:
        return self._step

    def _edge(self) -> Edge:
        return Edge(self._step, self._partitioning)

    def _add(
        self, name: str, kind: StepKind, fn: Callable[..., Any] | None, parallelism: int | None
    ) -> Stream:
        if fn is not None:
            _check_fn(name, kind, fn)
        return self._job._add(Step(name, kind, (self._edge(),), fn=fn, parallelism=parallelism))

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
            edges.append(other._edge())
        names = [e.upstream for e in edges]
        if len(set(names)) != len(names):
            raise JobDefinitionError(f"step {name!r}: union lists step(s) {names} more than once")
        return self._job._add(Step(name, "union", tuple(edges), parallelism=parallelism))

    def rebalance(self) -> Stream:
        """Distribute the next step's input round-robin over its instances (no chaining across it)."""
        return Stream(self._job, self._step, "rebalance")

    def key_by(self, fn: Callable[[Any], Any]) -> KeyedStream:
        """Partition by ``fn(x)`` (a stable hash, equal in every process and run) for a keyed step."""
        _check_fn(self._step, "key_by", fn)
        return KeyedStream(self._job, self._step, fn)

    def sink(self, name: str, sink: Sink, *, parallelism: int | None = None) -> None:
        """Write the stream to ``sink`` (an :class:`engine.connector.Sink`). Ends the chain."""
        if not isinstance(sink, Sink):
            raise JobDefinitionError(
                f"step {name!r}: sink expects an engine.connector.Sink (e.g. connectors.FileSink), "
                f"got {type(sink).__name__}"
            )
        self._job._add(Step(name, "sink", (self._edge(),), sink=sink, parallelism=parallelism))


class KeyedStream(Stream):
    """A stream partitioned by key: the input of keyed, stateful steps."""

    __slots__ = ("_key_fn",)

    def __init__(self, job: Job, step: str, key_fn: Callable[[Any], Any]):
        super().__init__(job, step, "hash")
        self._key_fn = key_fn

    def __repr__(self) -> str:
        return f"KeyedStream(job={self._job.name!r}, step={self._step!r})"

    def _edge(self) -> Edge:
        return Edge(self._step, "hash", self._key_fn)

    def _keyed(
        self, name: str, kind: StepKind, fn: Callable[..., Any] | None, parallelism: int | None
    ) -> Stream:
        if fn is not None:
            _check_fn(name, kind, fn)
        step = Step(name, kind, (self._edge(),), fn=fn, key_fn=self._key_fn, parallelism=parallelism)
        return self._job._add(step)

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
            "(count, reduce, count_final, reduce_final); drop the key_by or add a keyed step first"
        )
