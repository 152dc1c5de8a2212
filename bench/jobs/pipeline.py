"""The pipeline benchmark's job: source -> map -> sink, the shape of ``bench/pipeline.py``'s baseline.

    stashflow run bench/jobs/pipeline.py -P records=10000000 -P summary=bench/out/pipeline/run \\
        --parallelism 1 --metrics-out bench/out/pipeline/run/metrics.json

``hops=1`` (default) plans two tasks: the source alone, then map and sink chained (``rebalance``
keeps the map out of the source's task), so every record crosses one channel, as in the baseline.
``hops=2`` also separates the map from the sink (two channels, as the baseline's ``--hops 2``).

Throughput (``rate=0``): :class:`connectors.GeneratorSource` yields the integers ``0..records-1``;
the map is ``x + 1``. Latency (``rate>0``): :class:`PacedSource` offers ``(i, due_ns)`` records at
``rate`` per second, each stamped with the ``CLOCK_MONOTONIC`` time it was due, so source-side delay
counts, as in the baseline. Either way :class:`SummarySink` counts and sums the mapped values (the
benchmark checks both against the source), notes when the first and last batches arrived, and in
latency mode the age of every record after ``warmup_s``; each instance writes
``<summary>/summary-<i>.json`` when it closes.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Sequence
from typing import Any

from connectors import GeneratorSource
from engine import Job, ParameterError, Sink, SinkWriter, Source, SourceReader


class PacedSource(Source):
    """``records`` records ``(i, due_ns)`` offered at ``rate`` per second in all, ``due_ns`` being when
    record ``i`` was due (``CLOCK_MONOTONIC``; the clock starts at the first read).

    Like the baseline's source, it wakes up every ``tick_s`` and returns what is due by then, so
    batches stay small and the engine's flush timer, not the source, decides how long records wait.
    Deterministic given its offset ``[position, t0_ns]``, as DESIGN.md §3 asks: a replay regenerates the
    same due times.
    """

    def __init__(self, records: int, rate: float, tick_s: float = 0.001):
        self.records = records
        self.rate = rate
        self.tick_s = tick_s

    def open(self, index: int, parallelism: int) -> SourceReader:
        return _PacedReader(self, index, parallelism)


class _PacedReader(SourceReader):
    def __init__(self, source: PacedSource, index: int, parallelism: int):
        self._values = range(index, source.records, parallelism)
        self._step_ns = 1e9 * parallelism / source.rate
        self._tick_s = source.tick_s
        self._pos = 0
        self._t0: int | None = None
        self._ticked = False

    def _records(self, n: int) -> list[tuple[int, int]]:
        assert self._t0 is not None
        first = self._pos
        self._pos += n
        return [(self._values[k], self._t0 + int(k * self._step_ns)) for k in range(first, first + n)]

    async def read(self, max_records: int) -> Sequence[Any] | None:
        if self._pos >= len(self._values):
            return None
        if self._t0 is None:
            self._t0 = time.monotonic_ns()
        elif self._ticked:
            # Wake up once per tick, as the baseline's source does, instead of cutting a batch of one
            # record on every call the engine makes.
            await asyncio.sleep(self._tick_s)
        while True:
            due = min(len(self._values), int((time.monotonic_ns() - self._t0) / self._step_ns) + 1)
            if due > self._pos:
                batch = self._records(min(due - self._pos, max_records))
                self._ticked = self._pos == due  # all that is due was taken: sleep before the next read
                return batch
            await asyncio.sleep(self._tick_s)

    async def read_exact(self, count: int) -> Sequence[Any]:
        if self._t0 is None or self._pos + count > len(self._values):
            raise EOFError(f"PacedSource: cannot replay {count} records from position {self._pos}")
        return self._records(count)

    def offset(self) -> Any:
        return [self._pos, self._t0]

    def seek(self, offset: Any) -> None:
        self._pos, self._t0 = offset

    def progress(self) -> tuple[int, int] | None:
        return (self._pos, len(self._values))


class SummarySink(Sink):
    """Counts and sums records (ints, or ``(value, due_ns)`` pairs whose latency it measures)."""

    def __init__(self, directory: str, warmup_records: int):
        self.directory = directory
        self.warmup_records = warmup_records

    def open(self, index: int, parallelism: int) -> SinkWriter:
        os.makedirs(self.directory, exist_ok=True)
        return _SummaryWriter(os.path.join(self.directory, f"summary-{index}.json"), self.warmup_records)


class _SummaryWriter(SinkWriter):
    def __init__(self, path: str, warmup_records: int):
        self._path = path
        self._warmup = warmup_records
        self._records = self._checksum = self._t_first = self._t_end = 0
        self._latencies: list[int] = []

    def write_batch(self, records: Sequence[Any]) -> None:
        now = time.monotonic_ns()
        if not self._t_first:
            self._t_first = now
        self._t_end = now
        if records and not isinstance(records[0], int):
            # (value, due) pairs; value is i + 1 after the map, so the warm-up ends at i = warmup.
            self._latencies.extend(now - due for value, due in records if value > self._warmup)
            records = [value for value, _ in records]
        self._records += len(records)
        self._checksum += sum(records)

    def close(self) -> None:
        summary = {
            "records": self._records,
            "checksum": self._checksum,
            "t_first_ns": self._t_first,
            "t_end_ns": self._t_end,
            "latency_ms": _percentiles(self._latencies),
        }
        with open(self._path, "w", encoding="utf-8") as f:
            json.dump(summary, f)


def _percentiles(latencies_ns: list[int]) -> dict[str, float] | None:
    """Nearest-rank percentiles in milliseconds (the same as ``bench/pipeline.py``'s baseline)."""
    if not latencies_ns:
        return None
    ordered = sorted(latencies_ns)

    def pct(p: float) -> float:
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] / 1e6

    return {
        "samples": len(ordered),
        "mean": sum(ordered) / len(ordered) / 1e6,
        "p50": pct(50),
        "p90": pct(90),
        "p99": pct(99),
        "p99.9": pct(99.9),
        "max": ordered[-1] / 1e6,
    }


def _identity(i: int) -> int:
    return i


def _increment(x: int) -> int:
    return x + 1


def _increment_value(record: Sequence[int]) -> tuple[int, int]:
    return record[0] + 1, record[1]


def build(
    records: str = "10000000",
    summary: str = "bench/out/pipeline/run",
    rate: str = "0",
    warmup_s: str = "1",
    hops: str = "1",
) -> Job:
    n, offered, hop_count = int(records), float(rate), int(hops)
    if hop_count not in (1, 2):
        raise ParameterError(f"pipeline job: hops must be 1 or 2 (channels a record crosses), got {hops!r}")
    job = Job("pipeline")
    if offered > 0:
        source: Source = PacedSource(n, offered)
        mapped = job.source("generate", source).rebalance().map("increment", _increment_value)
    else:
        mapped = (
            job.source("generate", GeneratorSource(_identity, count=n))
            .rebalance()
            .map("increment", _increment)
        )
    if hop_count == 2:
        mapped = mapped.rebalance()
    warmup_records = int(float(warmup_s) * offered) if offered > 0 else 0
    mapped.sink("count", SummarySink(summary, warmup_records))
    return job
