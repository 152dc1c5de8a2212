"""The ``process`` step: a :class:`~operators.process.ProcessRunner` inside a task instance.

Like :mod:`operators.window_operator`: the runner's mapping is the step's keyed state (RocksDB under
the lineage stash), its :meth:`~operators.process.ProcessRunner.meta` the operator snapshot. The
processing time a call sees is read once per batch through ``ctx.now()`` (a logged ``TIME``);
event-time timers fire from :meth:`on_watermark`, processing-time timers from
:meth:`on_processing_time` (a logged ``TIMER``), so a replay fires the same timers with the same state.
Expired TTL state is swept whenever processing time moves.

Outputs keep the timestamp the runner gives them (the record's, or the timer's) on a timed stream;
``ctx.output(tag, value)`` goes to the side output ``tag`` (:meth:`engine.dsl.ProcessStream.side_output`).

>>> from engine import Job
>>> from engine.testing import run
>>> from connectors import CollectSink, ListSource
>>> def dedupe(value, ctx):
...     seen = ctx.value_state("seen")
...     if not seen.value(False):
...         seen.update(True)
...         return [value]
...     ctx.output("duplicates", value)
>>> job = Job("dedupe")
>>> unique, dupes = CollectSink(), CollectSink()
>>> firsts = job.source("ids", ListSource([3, 1, 3, 2, 1])).key_by(lambda x: x).process("first", dedupe)
>>> firsts.sink("unique", unique)
>>> firsts.side_output("duplicates").sink("dupes", dupes)
>>> _ = run(job)
>>> unique.records, dupes.records
([3, 1, 2], [3, 1])
"""

from __future__ import annotations

from collections.abc import Callable, MutableMapping, Sequence
from typing import Any, cast

from engine.context import ctx as runtime
from engine.errors import UserFunctionError
from engine.state import MemoryState
from operators.base import Operator, OperatorContext, describe_raiser, locate_failure
from operators.process import Output, ProcessRunner

__all__ = ["ProcessOperator"]


class ProcessOperator(Operator):
    """One instance of a ``process`` step (see the module docstring)."""

    def __init__(self, ctx: OperatorContext):
        super().__init__(ctx)
        assert ctx.step.fn is not None and ctx.step.key_fn is not None
        self.key_fn: Callable[[Any], Any] = ctx.step.key_fn
        self.timed = ctx.step.timed_in
        self.state = ctx.open_state(ctx.step.name) if ctx.open_state is not None else MemoryState()
        self.runner = self._runner(None)
        self.side = {}

    def _runner(self, meta: Any) -> ProcessRunner:
        mapping = cast(MutableMapping[Any, Any], self.state)
        return ProcessRunner(self.ctx.step.fn, mapping, meta)  # type: ignore[arg-type]

    def process(self, records: Sequence[Any]) -> Sequence[Any]:
        if self.timed:
            stamps: Sequence[int | None] = [t for t, _ in records]
            values: Sequence[Any] = [v for _, v in records]
        else:
            stamps, values = [None] * len(records), records
        key_fn = self.key_fn
        try:
            keys = [key_fn(v) for v in values]
        except Exception as exc:
            raise locate_failure(self.ctx, key_fn, values, exc) from None
        now = runtime.now_ns() // 1_000_000
        out: list[Any] = []
        process = self.runner.process
        for key, ts, value in zip(keys, stamps, values, strict=True):
            try:
                fired = process(key, ts, value, None, now)
            except Exception as exc:
                raise self._user_error(exc, value) from None
            self._route(fired, out)
        self.runner.expire()
        self.state.trim()
        return out

    def on_watermark(self, watermark: int) -> Sequence[Any]:
        return self._fire(lambda: self.runner.advance_watermark(watermark))

    def next_timer(self) -> int | None:
        return self.runner.next_processing_timer()

    def on_processing_time(self, time_ms: int) -> Sequence[Any]:
        return self._fire(lambda: self.runner.advance_processing_time(time_ms))

    def finish(self) -> Sequence[Any]:
        return self._fire(self.runner.flush)

    def _fire(self, advance: Callable[[], list[Output]]) -> list[Any]:
        try:
            fired = advance()
        except Exception as exc:
            raise self._user_error(exc, None) from None
        out: list[Any] = []
        self._route(fired, out)
        self.runner.expire()
        self.state.trim()
        return out

    def _route(self, fired: list[Output], out: list[Any]) -> None:
        timed, side = self.timed, self.side
        assert side is not None
        for tag, ts, value in fired:
            # on a timed stream every record has a time: a processing-time timer's output takes the watermark
            item = (ts if ts is not None else self.runner.watermark, value) if timed else value
            if tag is None:
                out.append(item)
            else:
                side.setdefault(tag, []).append(item)

    def _user_error(self, exc: Exception, value: Any) -> UserFunctionError:
        function = describe_raiser(exc, self.ctx.step.fn or self.key_fn)
        where = None if value is not None else "while firing a timer"
        err = UserFunctionError(self.ctx.step.name, self.ctx.instance, function, value, exc, where=where)
        err.__cause__ = exc
        return err

    def snapshot(self) -> Any:
        return self.runner.meta()

    def restore(self, state: Any) -> None:
        self.runner = self._runner(state)

    def close(self) -> None:
        self.state.close()
