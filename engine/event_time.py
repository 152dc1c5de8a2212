"""Event time: watermark strategies at the sources, and the watermark of an instance with many inputs.

A **watermark** ``W`` is a promise carried in batch headers (:attr:`engine.codec.Batch.watermark`,
milliseconds): no record with a timestamp ``< W`` follows on that channel (``ts == W`` is still on
time). Event-time windows ``[start, end)`` fire once ``end <= W`` (:mod:`operators.windows`).

- :class:`BoundedOutOfOrderness` is a source's strategy: after a batch whose largest timestamp so far
  is ``T``, the watermark is ``T - max_out_of_order_ms``. It is computed from the records alone, so a
  replayed source batch (same records, DESIGN.md §3) yields the same watermark: no determinant needed.
- :class:`InputWatermarks` is an instance's view of its inputs: the watermark of each input channel is
  the largest it has seen there, and the instance's is the minimum over its inputs that can still
  send, as in Flink's ``StatusWatermarkValve``. An ended input no longer holds the others back. An
  input that has sent nothing for a while may be declared *idle* and is left out of the minimum until
  it sends again: whether it was idle when a batch was processed depends on timing, so the engine logs
  the decision as a determinant and a replay takes it from the log, never from the clock.

Watermarks only move forward: a smaller value than one already seen is ignored (a channel's batches
may carry the same watermark many times).

>>> strategy = BoundedOutOfOrderness(5_000)
>>> w = strategy.advance(None, [12_000, 9_000, 15_000])
>>> w
10000
>>> strategy.advance(w, [11_000])  # late records do not pull it back
10000
>>> inputs = InputWatermarks(2)
>>> inputs.update(0, 10_000), inputs.update(1, 4_000)
(None, 4000)
>>> inputs.ended(1)  # channel 1 is done: channel 0 alone decides
10000
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from engine.errors import ParameterError

__all__ = ["MAX_WATERMARK", "BoundedOutOfOrderness", "InputWatermarks"]

#: the watermark of a stream that has ended: every window fires
MAX_WATERMARK = 2**63 - 1


@dataclass(frozen=True)
class BoundedOutOfOrderness:
    """Records arrive at most ``max_out_of_order_ms`` behind the newest timestamp seen so far.

    ``idle_timeout_ms``: a source instance that has produced nothing for that long is declared idle
    (its downstream stops waiting for it) until it produces again; ``None``: never.
    """

    max_out_of_order_ms: int
    idle_timeout_ms: int | None = None

    def __post_init__(self) -> None:
        bound = self.max_out_of_order_ms
        if isinstance(bound, bool) or not isinstance(bound, int) or bound < 0:
            raise ParameterError(
                f"BoundedOutOfOrderness: max_out_of_order_ms must be an int >= 0 (milliseconds), got {bound!r}"
            )
        idle = self.idle_timeout_ms
        if idle is not None and (isinstance(idle, bool) or not isinstance(idle, int) or idle <= 0):
            raise ParameterError(
                f"BoundedOutOfOrderness: idle_timeout_ms must be an int > 0 (milliseconds) or None, got {idle!r}"
            )

    def advance(self, watermark: int | None, timestamps: Iterable[int]) -> int | None:
        """The watermark after a batch with ``timestamps``, given the one before (``None``: none yet)."""
        newest = max(timestamps, default=None)
        if newest is None:
            return watermark
        candidate = newest - self.max_out_of_order_ms
        return candidate if watermark is None or candidate > watermark else watermark


class InputWatermarks:
    """The watermark of an instance with ``n`` input channels: the minimum over those that can send.

    :meth:`update`, :meth:`ended`, :meth:`idle` return the instance's watermark when it moved
    forward, else ``None``; :attr:`current` is its value (``None`` until every active input has sent
    one). The engine calls them in the order it processes batches, so their results replay exactly.
    """

    __slots__ = ("_active", "_ended", "_idle", "_seen", "current")

    def __init__(self, n: int):
        if n < 1:
            raise ValueError(f"InputWatermarks needs at least one input, got {n}")
        self._seen: list[int | None] = [None] * n
        self._ended = [False] * n
        self._idle = [False] * n
        self._active = n
        self.current: int | None = None

    def update(self, index: int, watermark: int | None) -> int | None:
        """A batch of input ``index`` carried ``watermark`` (``None``: it carried none)."""
        if self._idle[index]:
            self._idle[index] = False  # it sends again: it counts again (it cannot pull the minimum back)
            self._active += 1
        if watermark is not None:
            seen = self._seen[index]
            if seen is None or watermark > seen:
                self._seen[index] = watermark
        return self._recompute()

    def ended(self, index: int) -> int | None:
        """Input ``index`` reached its end of stream."""
        if not self._ended[index]:
            self._ended[index] = True
            if not self._idle[index]:
                self._active -= 1
            self._idle[index] = False
        return self._recompute()

    def idle(self, index: int) -> int | None:
        """Input ``index`` was declared idle (a logged decision): leave it out until it sends again."""
        if not self._idle[index] and not self._ended[index]:
            self._idle[index] = True
            self._active -= 1
        return self._recompute()

    def snapshot(self) -> list[list[int | None] | list[bool] | int | None]:
        """The whole state, msgpack-able, for a checkpoint."""
        return [self._seen, self._ended, self._idle, self.current]

    def restore(self, state: Sequence[Any]) -> None:
        """Resume from :meth:`snapshot` (of an instance with as many inputs)."""
        seen, ended, idle, current = state
        if len(seen) != len(self._seen):
            raise ValueError(f"InputWatermarks of {len(self._seen)} inputs cannot restore {len(seen)}")
        self._seen, self._ended, self._idle = list(seen), list(ended), list(idle)
        self._active = sum(1 for e, i in zip(self._ended, self._idle, strict=True) if not e and not i)
        self.current = current

    def _recompute(self) -> int | None:
        if self._active == 0:
            # every input ended (or is idle): an instance whose inputs all ended has seen everything
            value: int | None = MAX_WATERMARK if all(self._ended) else None
        else:
            value = None
            for seen, done, idle in zip(self._seen, self._ended, self._idle, strict=True):
                if done or idle:
                    continue
                if seen is None:
                    return None  # an active input has not sent a watermark yet: nothing is known
                value = seen if value is None or seen < value else value
        if value is not None and (self.current is None or value > self.current):
            self.current = value
            return value
        return None
