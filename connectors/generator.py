"""Synthetic records from a function of the record number, optionally offered at a fixed rate.

The generator is the source of benchmarks and demos, so it must be both deterministic (a replayed
instance regenerates the same records: record ``i`` is always ``fn(i)``) and able to offer a steady
rate without burning a core. A rate is a schedule, not a cap: record ``n`` of an instance is *due*
at a fixed time after its first read, as if an outside log were appending records at that rate whether
or not the job keeps up. :meth:`read` sleeps until records are due (``asyncio.sleep``); records that
fell due while the job could not read (back-pressure, a restart, a rollback) are read at once, as
fast as the engine asks, the way a consumer catches up on a log that kept filling; each batch's
ingestion time is the time its newest record fell due, so latency counts the time records waited to be
read. :meth:`read_exact`, used to replay logged batches during recovery, never waits.
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

    ``rate`` offers the whole source at that many records per second (each instance ``rate / p``):
    record ``n`` of an instance is due ``(n + 1) / (rate / p)`` seconds after the instance's first read,
    and a read returns the records that are due, waiting for more only while its batch is not full
    and at most ``_MAX_BATCH_WAIT`` once one is due. A reader behind its schedule catches up at full
    speed, in batches of ``batch_hint``; the schedule's start is part of the offset (a rate-limited
    reader's offset is ``(records produced, start in ns since the epoch)``), so a reader restored from a
    checkpoint or a logged batch keeps the schedule of the one it replaces. :meth:`ingest_ns` of a
    batch is the time its newest record fell due. ``batch_hint`` is also the most records one ``read``
    returns, bounding how long one call runs ``fn`` on the event loop.

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
        #: nanoseconds between two records of this instance's schedule (None: no rate, never waits)
        self._period_ns = None if source.rate is None else 1e9 * parallelism / source.rate
        self._start_ns: int | None = None  # the schedule starts at the first read, not at open
        self._produced = 0
        self._ingest_ns: int | None = None

    async def read(self, max_records: int) -> Sequence[Any] | None:
        want = min(max_records, self._batch)
        if self._total is not None:
            left = self._total - self._produced
            if left <= 0:
                return None
            want = min(want, left)
        if want <= 0:
            return []
        if self._period_ns is not None:
            want = await self._due(want)
        return self._produce(want)

    async def read_exact(self, count: int) -> Sequence[Any]:
        """Regenerate ``count`` records at once: replay must not wait for the schedule."""
        if self._total is not None and self._produced + count > self._total:
            raise EOFError(
                f"GeneratorSource: stream ended after {self._total - self._produced} of {count} records to replay"
            )
        return self._produce(count)

    def offset(self) -> Any:
        return self._produced if self._period_ns is None else (self._produced, self._start_ns)

    def seek(self, offset: Any) -> None:
        # a plain count: from a reader without a rate; the schedule stays
        if type(offset) is int and offset >= 0:
            self._produced = offset
            return
        try:
            # a rate-limited reader's (records, schedule start), a list after msgpack
            produced, start_ns = offset
            if type(produced) is not int or produced < 0 or not (start_ns is None or type(start_ns) is int):
                raise ValueError
        except (TypeError, ValueError):
            raise ValueError(
                f"GeneratorSource: cannot seek to offset {offset!r}: expected a record count, or (record count, "
                "schedule start in ns or None) from a reader with a rate; was the checkpoint taken by another job?"
            ) from None
        self._produced, self._start_ns = produced, start_ns

    def ingest_ns(self) -> int | None:
        return self._ingest_ns

    def progress(self) -> tuple[int, int] | None:
        if self._total is None:
            return None
        return (min(self._produced, self._total), self._total)

    def _produce(self, n: int) -> list[Any]:
        start = self._first + self._produced * self._stride
        out = list(map(self._fn, range(start, start + n * self._stride, self._stride)))
        self._produced += n  # only after fn succeeded for the whole batch: the offset stays consistent
        if self._start_ns is not None:
            assert self._period_ns is not None
            due = self._start_ns + int(self._produced * self._period_ns)  # the newest record's due time
            self._ingest_ns = min(due, time.time_ns())
        return out

    async def _due(self, want: int) -> int:
        """Wait until records are due and return how many to take (at most ``want``, at least one).

        Waits until ``want`` records are due, but once one is, no longer than ``_MAX_BATCH_WAIT`` from
        the call: a slow rate then yields small, timely batches instead of one late batch. Loops
        because ``asyncio.sleep`` may wake marginally early.
        """
        period = self._period_ns
        assert period is not None
        now = time.time_ns()
        if self._start_ns is None:
            self._start_ns = now
        start, produced = self._start_ns, self._produced
        deadline = now + int(_MAX_BATCH_WAIT * 1e9)
        while True:
            due = int((now - start) / period) - produced
            if due >= want:
                return want
            if due >= 1 and now >= deadline:
                return due
            for_all = start + (produced + want) * period - now
            for_one = start + (produced + 1) * period - now
            await asyncio.sleep(max(0.0, min(for_all, max(for_one, deadline - now))) / 1e9)
            now = time.time_ns()
