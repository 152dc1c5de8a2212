"""The operator interface: how a step's logic runs over whole batches inside a task instance.

An operator is created once per step instance. The task instance calls :meth:`Operator.process` with
each batch of records (a sequence: a list inside a chain, a tuple off the wire) and gets back the
records to pass downstream; at the end of a bounded input it calls :meth:`Operator.finish` once.
Framework cost is paid per batch, never per record: operators run user functions in tight loops.

A user function that raises is reported as a :class:`~engine.errors.UserFunctionError` naming the
step, the instance, the function and the offending record. The fast paths (comprehensions) do not
track which record they are on; when one raises, :func:`locate_failure` re-runs the function record by
record to find the culprit. That is sound because user functions are deterministic (DESIGN.md §3) and
the instance fails right after, so nothing observes a second application.
"""

from __future__ import annotations

import abc
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from engine.connector import SinkWriter
from engine.errors import UserFunctionError
from engine.graph import Step
from engine.metrics import BatchStamp

__all__ = ["Operator", "OperatorContext", "describe_function", "describe_raiser", "locate_failure"]


class OutputGate(Protocol):
    """Holds a sink's output until its causal past is committed (the output-commit rule, DESIGN.md §5.5)."""

    def hold(self, writer: SinkWriter, records: Sequence[Any], stamp: BatchStamp | None) -> None: ...


@dataclass(frozen=True)
class OperatorContext:
    """Where an operator runs: its step, its instance name (``step/i``), index and parallelism.

    ``open_state(step)`` opens the keyed state of a stateful step (RocksDB-backed under the lineage
    stash; a dict otherwise); ``output_gate`` is set when sinks must respect the output-commit rule.
    """

    step: Step
    instance: str
    index: int
    parallelism: int
    open_state: Callable[[str], Any] | None = None
    output_gate: OutputGate | None = None
    stamp: BatchStamp | None = None


def describe_function(fn: Callable[..., Any]) -> str:
    """A readable name for a user function: ``qualname (file:line)`` where the code is known."""
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)
    code = getattr(fn, "__code__", None)
    if code is not None:
        return f"{name} ({os.path.basename(code.co_filename)}:{code.co_firstlineno})"
    module = getattr(fn, "__module__", None)
    return f"{module}.{name}" if module and module != "builtins" else name


_OWN_DIRS = tuple(
    os.path.dirname(os.path.abspath(p)) + os.sep
    for p in (
        __file__,
        os.path.join(os.path.dirname(__file__), "..", "engine", "x"),
        os.path.join(os.path.dirname(__file__), "..", "connectors", "x"),
    )
)


def describe_raiser(exc: BaseException, fallback: Callable[..., Any]) -> str:
    """``function (file:line)`` of the innermost frame of ``exc`` outside stashflow's own packages.

    Used where the engine calls user code indirectly (a source reader calling a generator function),
    so the error names the user's function rather than the connector that called it.
    """
    import traceback

    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        path = os.path.abspath(frame.filename)
        if not path.startswith(_OWN_DIRS):
            return f"{frame.name} ({os.path.basename(path)}:{frame.lineno})"
    return describe_function(fallback)


def locate_failure(
    ctx: OperatorContext,
    fn: Callable[..., Any],
    records: Sequence[Any],
    exc: BaseException,
    call: Callable[[Any], Any] | None = None,
) -> UserFunctionError:
    """Find the first record on which ``fn`` raises and build the error for it.

    ``call(record)`` applies the function the way the operator does (``list(fn(x))`` for a flat_map,
    so that a failure while iterating the result is found too); it defaults to ``fn``.
    """
    call = call or fn
    for record in records:
        try:
            call(record)
        except Exception as again:
            err = UserFunctionError(ctx.step.name, ctx.instance, describe_function(fn), record, again)
            err.__cause__ = again
            return err
    # the failure did not reproduce record by record (the function is not deterministic)
    err = UserFunctionError(ctx.step.name, ctx.instance, describe_function(fn), "<unknown record>", exc)
    err.__cause__ = exc
    return err


class Operator(abc.ABC):
    """Runs one step instance's logic over batches."""

    def __init__(self, ctx: OperatorContext):
        self.ctx = ctx

    #: which input the batch being processed came from (0: the first; a join's right side is 1)
    input: int = 0
    #: side outputs of the last call, by tag (a window's ``"late"``): the instance sends and empties them
    side: dict[str, list[Any]] | None = None

    @abc.abstractmethod
    def process(self, records: Sequence[Any]) -> Sequence[Any]:
        """Process one batch; return the records to emit downstream (possibly empty).

        On a timed stream (``ctx.step.timed_in``) records are ``(timestamp, value)`` pairs, and so
        are the records returned when the step's output is timed.
        """

    def finish(self) -> Sequence[Any]:
        """The input ended: return what to emit last. Default: nothing."""
        return ()

    def on_watermark(self, watermark: int) -> Sequence[Any]:
        """The event-time watermark of this step's input moved forward to ``watermark``; return what
        fires (windows, timers). Called between batches, in chain order. Default: nothing."""
        return ()

    def next_timer(self) -> int | None:
        """The processing time (ms since the epoch) of this operator's next timer, if it has one."""
        return None

    def on_processing_time(self, time_ms: int) -> Sequence[Any]:
        """Processing-time timers up to ``time_ms`` are due (a logged ``TIMER``); return what fires."""
        return ()

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources (sinks close their writers)."""

    def snapshot(self) -> Any:
        """Small msgpack-able state for a checkpoint, beside keyed state (a sink's written position)."""
        return None

    def restore(self, state: Any) -> None:  # noqa: B027 - optional hook
        """Resume from what :meth:`snapshot` returned, in a restarted instance."""

    def error(self, fn: Callable[..., Any], record: Any, exc: BaseException) -> UserFunctionError:
        err = UserFunctionError(self.ctx.step.name, self.ctx.instance, describe_function(fn), record, exc)
        err.__cause__ = exc
        return err
