"""The ``interval_join`` and ``window_join`` steps: :mod:`operators.joins` inside a task instance.

A join step has two inputs, the left and the right keyed stream; the instance tells the operator
which one a batch came from (:attr:`~operators.base.Operator.input`, from the batch's channel) and
the operator keys each record with that side's key function. Both sides' buffered records live in the
step's keyed state (RocksDB under the lineage stash) and expire by watermark; the buffer's
:meth:`~operators.joins.IntervalJoinBuffer.meta` is the operator snapshot. Outputs are ``fn(left,
right)`` stamped ``max(ts_l, ts_r)`` (interval) or ``end - 1`` (window); late records go to the
``"late"`` side output as they came.

>>> from engine import BoundedOutOfOrderness, Job
>>> from engine.testing import run
>>> from connectors import CollectSink, ListSource
>>> job = Job("ads")
>>> clicks = job.source("clicks", ListSource([("u1", 1_000), ("u2", 5_000)]), timestamp=lambda e: e[1])
>>> views = job.source("views", ListSource([("u1", 900), ("u2", 1_000)]), timestamp=lambda e: e[1])
>>> out = CollectSink()
>>> joined = clicks.key_by(lambda c: c[0]).interval_join(
...     "click_after_view", views.key_by(lambda v: v[0]), -500, 0, lambda c, v: (c[0], c[1] - v[1]))
>>> joined.sink("out", out)
>>> _ = run(job)
>>> out.records  # u2's view came 4 s before its click: outside [-500, 0]
[('u1', 100)]
"""

from __future__ import annotations

from collections.abc import Callable, MutableMapping, Sequence
from typing import Any, cast

from engine.errors import UserFunctionError
from engine.graph import LATE
from engine.state import MemoryState
from operators.base import Operator, OperatorContext, describe_raiser, locate_failure
from operators.joins import IntervalJoinBuffer, Joined, Late, WindowJoinBuffer

__all__ = ["JoinOperator"]


class JoinOperator(Operator):
    """One instance of an ``interval_join`` or ``window_join`` step (see the module docstring)."""

    def __init__(self, ctx: OperatorContext):
        super().__init__(ctx)
        spec = ctx.step.join
        assert spec is not None and ctx.step.fn is not None
        self.spec = spec
        self.fn: Callable[[Any, Any], Any] = ctx.step.fn
        self.key_fns: list[Callable[[Any], Any]] = [e.key_fn for e in ctx.step.inputs]  # type: ignore[misc]
        self.state = ctx.open_state(ctx.step.name) if ctx.open_state is not None else MemoryState()
        self.buffer = self._buffer(None)
        self.side = {LATE: []}

    def _buffer(self, meta: Any) -> IntervalJoinBuffer | WindowJoinBuffer:
        mapping = cast(MutableMapping[Any, Any], self.state)
        spec = self.spec
        if spec.assigner is not None:
            return WindowJoinBuffer(cast(Any, spec.assigner), self.fn, mapping, meta)
        return IntervalJoinBuffer(spec.lower_ms, spec.upper_ms, self.fn, mapping, meta)

    def process(self, records: Sequence[Any]) -> Sequence[Any]:
        side = self.input
        key_fn = self.key_fns[side]
        values = [v for _, v in records]
        try:
            keys = [key_fn(v) for v in values]
        except Exception as exc:
            raise locate_failure(self.ctx, key_fn, values, exc) from None
        add = self.buffer.add_left if side == 0 else self.buffer.add_right
        out: list[Any] = []
        late = self.side[LATE] if self.side else []
        for key, (ts, value) in zip(keys, records, strict=True):
            try:
                made = add(key, ts, value, None)
            except Exception as exc:
                raise self._user_error(exc, value) from None
            for item in made:
                if type(item) is Late:
                    late.append((item.ts, item.value))
                else:
                    out.append((item.ts, item.value))
        self.state.trim()
        return out

    def on_watermark(self, watermark: int) -> Sequence[Any]:
        return self._fire(lambda: self.buffer.advance(watermark))

    def finish(self) -> Sequence[Any]:
        return self._fire(self.buffer.flush)

    def _fire(self, advance: Callable[[], list[Joined]]) -> list[Any]:
        try:
            made = advance()
        except Exception as exc:
            raise self._user_error(exc, None) from None
        self.state.trim()
        return [(j.ts, j.value) for j in made]

    def _user_error(self, exc: Exception, value: Any) -> UserFunctionError:
        where = None if value is not None else "while firing a window"
        err = UserFunctionError(
            self.ctx.step.name, self.ctx.instance, describe_raiser(exc, self.fn), value, exc, where=where
        )
        err.__cause__ = exc
        return err

    def snapshot(self) -> Any:
        return self.buffer.meta()

    def restore(self, state: Any) -> None:
        self.buffer = self._buffer(state)

    def close(self) -> None:
        self.state.close()
