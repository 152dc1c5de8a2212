"""Built-in operator logic, one class per step kind; :func:`create` picks it for a step."""

from __future__ import annotations

from engine.dsl import StepKind
from operators.base import Operator, OperatorContext, describe_function
from operators.keyed import Count, CountFinal, Reduce, ReduceFinal
from operators.sink import SinkOperator
from operators.stateless import Filter, FlatMap, Map, Passthrough

__all__ = [
    "Count",
    "CountFinal",
    "Filter",
    "FlatMap",
    "Map",
    "Operator",
    "OperatorContext",
    "Passthrough",
    "Reduce",
    "ReduceFinal",
    "SinkOperator",
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
    "sink": SinkOperator,
}


def create(ctx: OperatorContext) -> Operator:
    """The operator for ``ctx.step``."""
    return _BY_KIND[ctx.step.kind](ctx)
