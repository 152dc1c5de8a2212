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

from operators.base import Operator, OperatorContext, locate_failure

__all__ = ["Filter", "FlatMap", "Map", "Passthrough"]


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
