"""Synthetic records from a function of the record number, optionally at a fixed rate.

The generator is the source of benchmarks and demos, so it must be both deterministic (a replayed
instance regenerates the same records: record ``i`` is always ``fn(i)``) and able to hold a steady
rate without burning a core. The rate is enforced by a token bucket that :meth:`read` awaits with
``asyncio.sleep``; :meth:`read_exact`, used to replay logged batches during recovery, ignores it,
because a recovering instance must catch up as fast as it can.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

from engine.connector import Source, SourceReader
from engine.errors import ParameterError

__all__ = ["GeneratorSource"]

#: Longest time a rate-limited read waits to fill its batch once it has at least one record. It keeps
#: latency low at slow rates (batches shrink) while fast rates still get batches of ``batch_hint``.
_MAX_BATCH_WAIT = 0.05


class GeneratorSource(Source):
    """Records ``fn(0), fn(1), ...``: ``count`` of them, or without end when ``count`` is ``None``.

    Instance ``k`` of ``p`` produces the records ``k, k+p, k+2p, ...``; its offset is how many records
    it has produced. ``fn`` must be deterministic (DESIGN.md §3): recovery regenerates a record by
    calling ``fn`` again with the same number. An exception from ``fn`` propagates unchanged out of
    :meth:`~engine.connector.SourceReader.read`, and the engine reports it as a user-function error;
    the reader's offset stays before the batch that failed.

    ``rate`` caps the whole source at that many records per second (each instance gets ``rate / p``)
    with a token bucket that starts empty and holds at most ``batch_hint`` tokens, so a source that
    was back-pressured does not burst past its rate by more than one batch. ``batch_hint`` is also the
    most records one ``read`` returns, bounding how long one call runs ``fn`` on the event loop.

    >>> import asyncio
    >>> reader = GeneratorSource(lambda i: i * i, count=10).open(index=1, parallelism=2)
    >>> asyncio.run(reader.read(3))
    [1, 9, 25]
    >>> reader.offset(), reader.progress()
    (3, (3, 5))
    >>> asyncio.run(reader.read(10))
    [49, 81]
    >>> asyncio.run(reader.read(10)) is None
    True
    >>> reader.seek(1)
    >>> asyncio.run(reader.read_exact(2))
    [9, 25]
    """

    def __init__(
        self,
        fn: Callable[[int], Any],
        count: int | None = None,
        rate: float | None = None,
        *,
        batch_hint: int = 1000,
    ):
        if not callable(fn):
            raise ParameterError(
                f"GeneratorSource: fn must be a callable taking the record number, got {type(fn).__name__}"
            )
        if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 0):
            raise ParameterError(
                f"GeneratorSource: count must be an int >= 0, or None for an endless stream; got {count!r}"
            )
        if rate is not None and (
            isinstance(rate, bool)
            or not isinstance(rate, (int, float))
            or not math.isfinite(rate)
            or rate <= 0
        ):
            raise ParameterError(
                f"GeneratorSource: rate must be a positive number of records per second, or None for no "
                f"limit; got {rate!r}"
            )
        if isinstance(batch_hint, bool) or not isinstance(batch_hint, int) or batch_hint < 1:
            raise ParameterError(f"GeneratorSource: batch_hint must be an int >= 1, got {batch_hint!r}")
        self.fn = fn
        self.count = count
        self.rate = rate
        self.batch_hint = batch_hint
        self.bounded = count is not None

    def open(self, index: int, parallelism: int) -> SourceReader:
        """Return the reader of instance ``index``: records ``index, index + parallelism, ...``."""
        return _GeneratorReader(self, index, parallelism)


class _GeneratorReader(SourceReader):
    def __init__(self, source: GeneratorSource, index: int, parallelism: int):
        self._fn = source.fn
        self._first = index
        self._stride = parallelism
        self._total = None if source.count is None else len(range(index, source.count, parallelism))
        self._batch = source.batch_hint
        self._rate = None if source.rate is None else source.rate / parallelism
        self._tokens = 0.0
        self._stamp: float | None = None  # the bucket starts filling at the first read, not at open
        self._produced = 0

    async def read(self, max_records: int) -> Sequence[Any] | None:
        want = min(max_records, self._batch)
        if self._total is not None:
            left = self._total - self._produced
            if left <= 0:
                return None
            want = min(want, left)
        if want <= 0:
            return []
        if self._rate is not None:
            want = await self._acquire(want)
        return self._produce(want)

    async def read_exact(self, count: int) -> Sequence[Any]:
        """Regenerate ``count`` records at once: replay must not wait for the rate limit."""
        if self._total is not None and self._produced + count > self._total:
            raise EOFError(
                f"GeneratorSource: stream ended after {self._total - self._produced} of {count} records to replay"
            )
        return self._produce(count)

    def offset(self) -> int:
        return self._produced

    def seek(self, offset: Any) -> None:
        self._produced = offset

    def progress(self) -> tuple[int, int] | None:
        if self._total is None:
            return None
        return (min(self._produced, self._total), self._total)

    def _produce(self, n: int) -> list[Any]:
        start = self._first + self._produced * self._stride
        out = list(map(self._fn, range(start, start + n * self._stride, self._stride)))
        self._produced += n  # only after fn succeeded for the whole batch: the offset stays consistent
        return out

    async def _acquire(self, want: int) -> int:
        """Wait for tokens and take up to ``want`` of them (at least one).

        Waits until the bucket holds ``want`` tokens, but once it holds one, no longer than
        ``_MAX_BATCH_WAIT``: a slow rate then yields small, timely batches instead of one late batch.
        Loops because ``asyncio.sleep`` may wake marginally early.
        """
        assert self._rate is not None
        self._refill()
        deadline = time.monotonic() + _MAX_BATCH_WAIT
        while self._tokens < want:
            now = time.monotonic()
            if self._tokens >= 1 and now >= deadline:
                break
            for_all = (want - self._tokens) / self._rate
            for_one = (1 - self._tokens) / self._rate
            await asyncio.sleep(min(for_all, max(for_one, deadline - now)))
            self._refill()
        taken = min(want, int(self._tokens))
        self._tokens -= taken
        return taken

    def _refill(self) -> None:
        assert self._rate is not None
        now = time.monotonic()
        if self._stamp is not None:
            self._tokens = min(float(self._batch), self._tokens + (now - self._stamp) * self._rate)
        self._stamp = now
