"""The sink operator: hands each batch to the step's :class:`~engine.connector.SinkWriter`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from operators.base import Operator, OperatorContext

__all__ = ["SinkOperator"]


class SinkOperator(Operator):
    """Writes batches to the sink writer of this instance; emits nothing."""

    def __init__(self, ctx: OperatorContext):
        super().__init__(ctx)
        assert ctx.step.sink is not None
        self.writer = ctx.step.sink.open(ctx.index, ctx.parallelism)

    def process(self, records: Sequence[Any]) -> Sequence[Any]:
        if records:
            self.writer.write_batch(records)
        return ()

    def finish(self) -> Sequence[Any]:
        self.writer.flush()
        return ()

    def close(self) -> None:
        self.writer.close()
