"""The sink operator: hands each batch to the step's :class:`~engine.connector.SinkWriter`.

Under the lineage stash a sink must not release output whose causal past is not yet committed
(the output-commit rule, DESIGN.md §5.5): a recovery could otherwise regenerate different output than
the world already saw. The instance then gives the operator an output gate, which holds each batch
until the commits cover it and writes batches in order.
"""

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
        self.gate = ctx.output_gate
        self.timed = ctx.step.timed_in

    def process(self, records: Sequence[Any]) -> Sequence[Any]:
        if records:
            if self.timed:  # the outside world gets values; event time stays inside the engine
                records = [v for _, v in records]
            stamp = self.ctx.stamp
            if stamp is not None:
                stamp.arrived()
            if self.gate is not None:
                self.gate.hold(self.writer, records, stamp)
            else:
                self.writer.write_batch(records)
                if stamp is not None:
                    stamp.written(stamp.ingest_ns, len(records))
        return ()

    def finish(self) -> Sequence[Any]:
        self.writer.flush()
        return ()

    def close(self) -> None:
        self.writer.close()

    def snapshot(self) -> Any:
        return self.writer.snapshot()

    def restore(self, state: Any) -> None:
        self.writer.restore(state)
