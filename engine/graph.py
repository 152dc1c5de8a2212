"""The job graph the DSL builds: :class:`Step` nodes joined by :class:`Edge` s, with what each step computes.

Steps are frozen dataclasses made by :class:`engine.dsl.Stream` methods, never by hand; the planner
(:mod:`engine.plan`) reads them, and the operators (:mod:`operators`) are made from them. A step's
``timed_in`` says whether its input records are ``(timestamp, value)`` pairs (event time, see
:mod:`engine.dsl`); ``window`` and ``join`` hold what a window or join step computes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from engine.connector import Sink, Source
from engine.event_time import BoundedOutOfOrderness

if TYPE_CHECKING:
    from operators.windows import WindowAggregate, WindowAssigner

__all__ = ["LATE", "Edge", "JoinSpec", "Partitioning", "Step", "StepKind", "TimeDomain", "WindowSpec"]

StepKind = Literal[
    "source",
    "map",
    "flat_map",
    "filter",
    "union",
    "count",
    "reduce",
    "count_final",
    "reduce_final",
    "window",
    "process",
    "interval_join",
    "window_join",
    "sink",
]
Partitioning = Literal["forward", "rebalance", "hash"]
TimeDomain = Literal["event", "processing"]

#: the side output of a window step that carries its late records (:meth:`WindowStream.late`)
LATE = "late"


@dataclass(frozen=True)
class Edge:
    """A connection into a step: from ``upstream``'s output, partitioned as ``partitioning``."""

    upstream: str
    partitioning: Partitioning = "forward"
    key_fn: Callable[[Any], Any] | None = None
    #: which output of ``upstream``: ``None`` the main one, else a side output (``"late"``)
    tag: str | None = None
    #: records on this edge are ``(timestamp, value)`` pairs (the key function reads the value)
    timed: bool = False


@dataclass(frozen=True)
class WindowSpec:
    """What a window step computes: the assigner, the aggregate, the lateness and the time domain."""

    assigner: WindowAssigner
    aggregate: WindowAggregate
    allowed_lateness_ms: int = 0
    time: TimeDomain = "event"


@dataclass(frozen=True)
class JoinSpec:
    """What a join step computes: an interval join (``lower_ms``..``upper_ms``) or, with
    ``assigner``, a windowed join."""

    lower_ms: int = 0
    upper_ms: int = 0
    assigner: WindowAssigner | None = None


@dataclass(frozen=True)
class Step:
    """One node of the job graph (a logical operator). Built by :class:`Stream` methods, never by hand.

    ``timed_in``: its input records are ``(timestamp, value)`` pairs (event time, see the module
    docstring); ``timestamp_fn`` and ``watermark`` belong to a source that starts a timed stream.
    """

    name: str
    kind: StepKind
    inputs: tuple[Edge, ...] = ()
    fn: Callable[..., Any] | None = None
    key_fn: Callable[[Any], Any] | None = None
    source: Source | None = None
    sink: Sink | None = None
    parallelism: int | None = None
    timed_in: bool = False
    timestamp_fn: Callable[[Any], int] | None = None
    watermark: BoundedOutOfOrderness | None = None
    window: WindowSpec | None = None
    join: JoinSpec | None = None

    @property
    def keyed(self) -> bool:
        return self.kind in (
            "count",
            "reduce",
            "count_final",
            "reduce_final",
            "window",
            "process",
            "interval_join",
            "window_join",
        )

    @property
    def timed_out(self) -> bool:
        """Its (main) output records are ``(timestamp, value)`` pairs."""
        if self.kind == "source":
            return self.timestamp_fn is not None
        if self.kind in ("count_final", "reduce_final", "sink"):
            return False
        return self.kind in ("window", "interval_join", "window_join") or self.timed_in

    @property
    def side_tags_timed(self) -> bool:
        """Its side outputs carry event time (a window's late records always do)."""
        return self.kind in ("window", "interval_join", "window_join") or self.timed_in
