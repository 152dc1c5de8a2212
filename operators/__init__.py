"""Built-in operator logic, one class per step kind; :func:`create` picks it for a step."""

from __future__ import annotations

from engine.graph import StepKind
from operators.base import Operator, OperatorContext, describe_function
from operators.join_operator import JoinOperator
from operators.keyed import Count, CountFinal, Reduce, ReduceFinal
from operators.process_operator import ProcessOperator
from operators.sink import SinkOperator
from operators.stateless import (
    AssignTimestamps,
    Filter,
    FlatMap,
    Map,
    Passthrough,
    TimedFilter,
    TimedFlatMap,
    TimedMap,
)
from operators.window_operator import WindowOperator

__all__ = [
    "AssignTimestamps",
    "Count",
    "CountFinal",
    "Filter",
    "FlatMap",
    "JoinOperator",
    "Map",
    "Operator",
    "OperatorContext",
    "Passthrough",
    "ProcessOperator",
    "Reduce",
    "ReduceFinal",
    "SinkOperator",
    "TimedFilter",
    "TimedFlatMap",
    "TimedMap",
    "WindowOperator",
    "create",
    "describe_function",
]

_BY_KIND: dict[StepKind, type[Operator]] = {
    "source": Passthrough,
    "union": Passthrough,
    "map": Map,
    "flat_map": FlatMap,
    "filter": Filter,
    "count": Count,
    "reduce": Reduce,
    "count_final": CountFinal,
    "reduce_final": ReduceFinal,
    "window": WindowOperator,
    "process": ProcessOperator,
    "interval_join": JoinOperator,
    "window_join": JoinOperator,
    "sink": SinkOperator,
}

# on a timed stream (records are (timestamp, value) pairs) the stateless steps apply fn to values
_TIMED: dict[StepKind, type[Operator]] = {"map": TimedMap, "flat_map": TimedFlatMap, "filter": TimedFilter}


def create(ctx: OperatorContext) -> Operator:
    """The operator for ``ctx.step``."""
    step = ctx.step
    if step.kind == "source" and step.timestamp_fn is not None:
        return AssignTimestamps(ctx)
    if step.timed_in and step.kind in _TIMED:
        return _TIMED[step.kind](ctx)
    return _BY_KIND[step.kind](ctx)
