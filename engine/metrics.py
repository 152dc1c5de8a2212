"""Metrics an instance keeps for the coordinator: end-to-end latency measured per batch.

Sources stamp each batch they cut with its ingestion time (``Batch.ingest_ns``, a header field, not a
per-record cost); every operator passes the stamp of the batch it processes on to the batches it
emits (a buffer keeps the stamp of its oldest record), and a sink records ``now - ingest`` when it
writes a batch: after the output-commit wait, under the lineage stash, so the figure is what the
outside world sees. Replayed batches are stamped anew; the figures are measurements, never state.

>>> h = LatencyHistogram(capacity=4)
>>> for ms in (1, 2, 3, 40):
...     h.add_ns(ms * 1_000_000)
>>> h.summary()["p50_ms"], h.summary()["max_ms"]
(3.0, 40.0)
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

__all__ = ["BatchStamp", "LatencyHistogram"]


class LatencyHistogram:
    """The latencies of the last ``capacity`` batches a sink wrote, and their percentiles."""

    __slots__ = ("count", "samples")

    def __init__(self, capacity: int = 20_000):
        self.samples: deque[int] = deque(maxlen=capacity)
        self.count = 0

    def add_ns(self, latency_ns: int) -> None:
        self.samples.append(latency_ns)
        self.count += 1

    def record(self, ingest_ns: int | None) -> None:
        """A batch stamped ``ingest_ns`` reached the outside world now."""
        if ingest_ns is not None:
            self.add_ns(time.time_ns() - ingest_ns)

    def summary(self) -> dict[str, Any]:
        """``count`` and p50/p99/p99.9/max in milliseconds over the retained samples."""
        ordered = sorted(self.samples)
        if not ordered:
            return {"count": 0}

        def pick(q: float) -> float:
            return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1e6, 3)

        return {
            "count": self.count,
            "p50_ms": pick(0.5),
            "p99_ms": pick(0.99),
            "p999_ms": pick(0.999),
            "max_ms": round(ordered[-1] / 1e6, 3),
        }


class BatchStamp:
    """The ingestion stamp of the batch an instance is processing, and where its sinks record latency."""

    __slots__ = ("ingest_ns", "latency")

    def __init__(self) -> None:
        self.ingest_ns: int | None = None
        self.latency = LatencyHistogram()
