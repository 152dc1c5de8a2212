"""Stateless operators: map, flat_map, filter and union (an identity over several inputs).

>>> from engine import Job
>>> from engine.testing import run
>>> from connectors import CollectSink, ListSource
>>> job = Job("stateless")
>>> out = CollectSink()
>>> (job.source("nums", ListSource([1, 2, 3, 4]))
...     .map("square", lambda x: x * x)
...     .filter("even", lambda x: x % 2 == 0)
...     .flat_map("twice", lambda x: [x, x])
...     .sink("out", out))
>>> _ = run(job)
>>> out.records
[4, 4, 16, 16]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from engine.errors import UserFunctionError, short_repr
from operators.base import Operator, OperatorContext, describe_function, locate_failure

__all__ = [
    "AssignTimestamps",
    "Filter",
    "FlatMap",
    "Map",
    "Passthrough",
    "TimedFilter",
    "TimedFlatMap",
    "TimedMap",
]


class Map(Operator):
    """Emit ``fn(x)`` for each record."""

    def __init__(self, ctx: OperatorContext):
        super().__init__(ctx)
        assert ctx.step.fn is not None
        self.fn = ctx.step.fn

    def process(self, records: Sequence[Any]) -> Sequence[Any]:
        fn = self.fn
        try:
            return [fn(x) for x in records]
        except Exception as exc:
            raise locate_failure(self.ctx, fn, records, exc) from None


class FlatMap(Operator):
    """Emit every item of ``fn(x)`` for each record; ``fn`` may return any iterable."""

    def __init__(self, ctx: OperatorContext):
        super().__init__(ctx)
        assert ctx.step.fn is not None
        self.fn = ctx.step.fn

    def process(self, records: Sequence[Any]) -> Sequence[Any]:
        fn = self.fn
        try:
            return [y for x in records for y in fn(x)]
        except Exception as exc:
            raise locate_failure(self.ctx, fn, records, exc, call=lambda x: list(fn(x))) from None


class Filter(Operator):
    """Keep records where ``fn(x)`` is truthy."""

    def __init__(self, ctx: OperatorContext):
        super().__init__(ctx)
        assert ctx.step.fn is not None
        self.fn = ctx.step.fn

    def process(self, records: Sequence[Any]) -> Sequence[Any]:
        fn = self.fn
        try:
            return [x for x in records if fn(x)]
        except Exception as exc:
            raise locate_failure(self.ctx, fn, records, exc) from None


class Passthrough(Operator):
    """Emit records unchanged: the logic of ``union`` (and of a source step, whose reader feeds it)."""

    def process(self, records: Sequence[Any]) -> Sequence[Any]:
        return records


# -- on timed streams: records are (timestamp, value) pairs; functions see values, timestamps carry over


def _values(records: Sequence[Any]) -> list[Any]:
    return [v for _, v in records]


class TimedMap(Map):
    """``map`` on a stream with event time: ``(t, fn(v))`` for each ``(t, v)``."""

    def process(self, records: Sequence[Any]) -> Sequence[Any]:
        fn = self.fn
        try:
            return [(t, fn(v)) for t, v in records]
        except Exception as exc:
            raise locate_failure(self.ctx, fn, _values(records), exc) from None


class TimedFlatMap(FlatMap):
    """``flat_map`` on a stream with event time: every item of ``fn(v)`` keeps ``t``."""

    def process(self, records: Sequence[Any]) -> Sequence[Any]:
        fn = self.fn
        try:
            return [(t, y) for t, v in records for y in fn(v)]
        except Exception as exc:
            raise locate_failure(self.ctx, fn, _values(records), exc, call=lambda x: list(fn(x))) from None


class TimedFilter(Filter):
    """``filter`` on a stream with event time: keeps the pairs whose value passes."""

    def process(self, records: Sequence[Any]) -> Sequence[Any]:
        fn = self.fn
        try:
            return [p for p in records if fn(p[1])]
        except Exception as exc:
            raise locate_failure(self.ctx, fn, _values(records), exc) from None


class AssignTimestamps(Operator):
    """A source step with ``timestamp=fn``: pairs each record with its event time and tracks the
    source's watermark (:class:`~engine.event_time.BoundedOutOfOrderness`), from the records alone,
    so a replayed source batch gives the same watermark."""

    def __init__(self, ctx: OperatorContext):
        super().__init__(ctx)
        assert ctx.step.timestamp_fn is not None and ctx.step.watermark is not None
        self.fn = ctx.step.timestamp_fn
        self.strategy = ctx.step.watermark
        #: the source's watermark after the last batch (``None`` before the first record)
        self.watermark: int | None = None

    def process(self, records: Sequence[Any]) -> Sequence[Any]:
        fn = self.fn
        try:
            stamps = [fn(x) for x in records]
        except Exception as exc:
            raise locate_failure(self.ctx, fn, records, exc) from None
        for x, t in zip(records, stamps, strict=True):
            if type(t) is not int:
                raise self._bad(x, t)
        self.watermark = self.strategy.advance(self.watermark, stamps)
        return list(zip(stamps, records, strict=True))

    def _bad(self, record: Any, ts: Any) -> UserFunctionError:
        problem = ValueError(
            f"returned {short_repr(ts)} ({type(ts).__name__}); an event time is an int of milliseconds "
            "since the epoch (e.g. int(seconds * 1000))"
        )
        return UserFunctionError(
            self.ctx.step.name, self.ctx.instance, describe_function(self.fn), record, problem
        )

    def snapshot(self) -> Any:
        return self.watermark

    def restore(self, state: Any) -> None:
        self.watermark = state
