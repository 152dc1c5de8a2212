"""The ``window`` step: :class:`~operators.windows.WindowBuffer` inside a task instance.

The buffer is the whole window logic; this operator feeds it and persists it:

* its state mapping is the step's keyed state (RocksDB under the lineage stash, a dict with
  ``--ft none``), and its :meth:`~operators.windows.WindowBuffer.meta` is the operator snapshot, so a
  checkpoint holds both as of the same batch boundary;
* **event time**: records are ``(timestamp, value)`` pairs and windows fire in :meth:`on_watermark`,
  which the instance calls when the watermark of its inputs moves (DESIGN.md §4: watermarks are a
  deterministic function of the batches processed, so a replay fires the same windows at the same
  points);
* **processing time**: each batch is stamped with ``ctx.now()`` (one logged ``TIME`` per batch) and
  windows fire from :meth:`on_processing_time`, which the instance calls when a timer set at
  :meth:`next_timer` is due (a logged ``TIMER``); at the end of a bounded input every window fires.

Results are ``(key, start, end, value)`` tuples stamped ``end - 1`` (Flink's ``maxTimestamp``), late
records go to the ``"late"`` side output with their own timestamp.

>>> from engine import Job, Tumbling, BoundedOutOfOrderness
>>> from engine.testing import run
>>> from connectors import CollectSink, ListSource
>>> job = Job("taps")
>>> results, late = CollectSink(), CollectSink()
>>> taps = job.source("taps", ListSource([("a", 1_000), ("b", 2_000), ("a", 11_000), ("a", 3_000)]),
...                   timestamp=lambda e: e[1], watermark=BoundedOutOfOrderness(0))
>>> counted = taps.key_by(lambda e: e[0]).window("per_10s", Tumbling(10_000)).count()
>>> counted.sink("out", results)
>>> counted.late().sink("late", late)
>>> _ = run(job, batch_size=1)  # a batch per record: the watermark moves after each
>>> sorted(results.records), late.records
([('a', 0, 10000, 1), ('a', 10000, 20000, 1), ('b', 0, 10000, 1)], [('a', 3000)])
"""

from __future__ import annotations

from collections.abc import Callable, MutableMapping, Sequence
from typing import Any, cast

from engine.context import ctx as runtime
from engine.errors import UserFunctionError
from engine.graph import LATE
from engine.state import MemoryState
from operators.base import Operator, OperatorContext, describe_raiser, locate_failure
from operators.windows import Late, Result, WindowBuffer

__all__ = ["WindowOperator"]


class WindowOperator(Operator):
    """One instance of a ``window`` step (see the module docstring)."""

    def __init__(self, ctx: OperatorContext):
        super().__init__(ctx)
        spec = ctx.step.window
        assert spec is not None and ctx.step.key_fn is not None
        self.spec = spec
        self.key_fn: Callable[[Any], Any] = ctx.step.key_fn
        self.timed = ctx.step.timed_in
        self.processing = spec.time == "processing"
        self.state = ctx.open_state(ctx.step.name) if ctx.open_state is not None else MemoryState()
        self.buffer = self._buffer(None)
        self.side = {LATE: []}

    def _buffer(self, meta: Any) -> WindowBuffer:
        spec = self.spec
        mapping = cast(MutableMapping[Any, Any], self.state)
        return WindowBuffer(spec.assigner, spec.aggregate, spec.allowed_lateness_ms, mapping, meta)

    def process(self, records: Sequence[Any]) -> Sequence[Any]:
        if self.processing:
            now = runtime.now_ns() // 1_000_000
            values = [v for _, v in records] if self.timed else list(records)
            stamps: Sequence[int] = [now] * len(values)
            watermark: int | None = now
        else:
            stamps, values = [t for t, _ in records], [v for _, v in records]
            watermark = None
        key_fn = self.key_fn
        try:
            keys = [key_fn(v) for v in values]
        except Exception as exc:
            raise locate_failure(self.ctx, key_fn, values, exc) from None
        add, out, late = self.buffer.add, [], self.side[LATE] if self.side else []
        for key, ts, value in zip(keys, stamps, values, strict=True):
            try:
                fired = add(key, ts, value, watermark)
            except Exception as exc:
                raise self._user_error(exc, value) from None
            for item in fired:
                if type(item) is Late:
                    late.append((item.ts, item.value))
                else:
                    out.append(_emit(cast(Result, item)))
        self.state.trim()
        return out

    def on_watermark(self, watermark: int) -> Sequence[Any]:
        if self.processing:
            return ()
        return self._advance(watermark)

    def next_timer(self) -> int | None:
        return self.buffer.next_fire() if self.processing else None

    def on_processing_time(self, time_ms: int) -> Sequence[Any]:
        return self._advance(time_ms) if self.processing else ()

    def finish(self) -> Sequence[Any]:
        # the end of a bounded input: the watermark goes to the end of time and every window fires
        try:
            fired = self.buffer.flush()
        except Exception as exc:
            raise self._user_error(exc, None) from None
        self.state.trim()
        return [_emit(r) for r in fired]

    def _advance(self, time_ms: int) -> list[Any]:
        try:
            fired = self.buffer.advance(time_ms)
        except Exception as exc:
            raise self._user_error(exc, None) from None
        self.state.trim()
        return [_emit(r) for r in fired]

    def _user_error(self, exc: Exception, value: Any) -> UserFunctionError:
        aggregate = self.spec.aggregate
        function = describe_raiser(exc, aggregate.result or aggregate.add)
        where = None if value is not None else "while firing a window"
        err = UserFunctionError(self.ctx.step.name, self.ctx.instance, function, value, exc, where=where)
        err.__cause__ = exc
        return err

    def snapshot(self) -> Any:
        return self.buffer.meta()

    def restore(self, state: Any) -> None:
        self.buffer = self._buffer(state)

    def close(self) -> None:
        self.state.close()


def _emit(result: Result) -> tuple[int, tuple[Any, Any, Any, Any]]:
    key, start, end, value = result
    return (end - 1, (key, start, end, value))
