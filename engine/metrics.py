"""Metrics an instance keeps for the coordinator: end-to-end latency measured per batch, and over time.

Sources stamp each batch they cut with its ingestion time (``Batch.ingest_ns``, a header field, not a
per-record cost): when its newest record entered the system, which the reader knows when it reads a log
that keeps filling (:meth:`~engine.connector.SourceReader.ingest_ns`: a generator's schedule), else the
time of the read; every operator passes the stamp of the batch it processes on to the batches it
emits (a buffer keeps the stamp of its oldest record), and a sink calls :meth:`BatchStamp.written`
when it writes a batch: after the output-commit wait, under the lineage stash, so the figure is what
the outside world sees. Replayed batches are stamped again the same way; the figures are measurements,
never state.

Two views of the same events: :class:`LatencyHistogram`, the percentiles of the last batches written,
and :class:`Timeline`, records written and a latency histogram per 100 ms of wall-clock time. Timeline
buckets start at multiples of 100 ms since the epoch, so the series of several instances, or of the
incarnations of one restarted instance, add up bucket by bucket. An instance hands the coordinator the
buckets it has closed, incrementally (:meth:`Timeline.drain`, in its heartbeat statistics), and the
coordinator merges them (:meth:`Timeline.merge`): buckets a killed process had not handed over yet are
lost with it, at most one heartbeat's worth. :class:`Gauges` holds values sampled over time on the
coordinator's side (the lineage stash's size, say).

>>> h = LatencyHistogram(capacity=4)
>>> for ms in (1, 2, 3, 40):
...     h.add_ns(ms * 1_000_000)
>>> h.summary()["p50_ms"], h.summary()["max_ms"]
(3.0, 40.0)
>>> t = Timeline()
>>> t.add(1_000_050_000_000, records=1000, latency_ns=12_000_000)  # 1000 s + 50 ms after the epoch
>>> t.add(1_000_150_000_000, records=500, latency_ns=None)
>>> rows = t.drain(now_ns=1_000_150_000_000)  # only the closed bucket [1000.0 s, 1000.1 s)
>>> rows
[[1000000, 1000, 1, [167, 1]]]
>>> merged = Timeline()
>>> merged.merge(rows)
>>> merged.merge(t.drain(everything=True))
>>> merged.to_dict()["records"], merged.to_dict()["p99_ms"]
([1000, 500], [12.032, None])
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = ["BUCKET_MS", "BatchStamp", "Gauges", "LatencyHistogram", "Timeline", "bin_ms", "latency_bin"]

#: width of a timeline bucket
BUCKET_MS = 100
_BUCKET_NS = BUCKET_MS * 1_000_000
#: bins per power of two of the timelines' latency histograms: a bin spans at most 1/16 of its lower
#: bound, so a percentile read from it (the bin's middle) is within ~3% of the true value
_SUB = 16


def latency_bin(latency_ns: int) -> int:
    """The histogram bin of a latency: exact microseconds below 32 us, then 16 bins per power of two.

    >>> [latency_bin(us * 1000) for us in (0, 31, 32, 33, 1000, 1_000_000)]
    [0, 31, 32, 32, 111, 270]
    """
    us = max(0, latency_ns // 1000)
    shift = us.bit_length() - 5
    if shift <= 0:
        return us
    return shift * _SUB + (us >> shift)


def bin_ms(b: int) -> float:
    """The middle of bin ``b``'s range, in milliseconds (the value a percentile reads from it).

    >>> bin_ms(latency_bin(12_000_000))  # 12 ms, within the bin's half width
    12.032
    """
    if b < 2 * _SUB:
        return round((b + 0.5) / 1000, 4)
    shift = b // _SUB - 1
    lower = (b - shift * _SUB) << shift
    return round((lower + (1 << shift) / 2) / 1000, 4)


def percentile_ms(hist: Mapping[int, int], q: float) -> float | None:
    """The ``q`` quantile (0..1) of a latency histogram ``{bin: count}``, in ms; ``None`` when empty.

    The same rank as :meth:`LatencyHistogram.summary`: the sample at index ``int(q * n)`` in order.
    """
    n = sum(hist.values())
    if n == 0:
        return None
    rank = min(n - 1, int(q * n))
    seen = 0
    for b in sorted(hist):
        seen += hist[b]
        if seen > rank:
            return bin_ms(b)
    raise AssertionError("unreachable: the ranks add up to n")


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


class Timeline:
    """Records and batches written, and a latency histogram, per 100 ms bucket of wall-clock time.

    ``buckets`` maps a bucket's start (ms since the epoch) to ``[records, batches, {bin: count}]``.
    At most ``max_buckets`` are kept (the newest; 10 minutes by default), so a long-running job's
    series stays bounded. The wire form of a bucket, what :meth:`drain` returns and :meth:`merge`
    takes, is ``[start_ms, records, batches, [bin, count, bin, count, ...]]``.
    """

    __slots__ = ("_cur", "_key", "buckets", "max_buckets")

    def __init__(self, max_buckets: int = 6000):
        self.buckets: dict[int, list[Any]] = {}
        self.max_buckets = max_buckets
        self._key = -1
        self._cur: list[Any] = []

    def add(self, now_ns: int, records: int, latency_ns: int | None) -> None:
        """A batch of ``records`` was written at ``now_ns`` (``time.time_ns()``), ``latency_ns`` after its
        ingestion (``None``: not stamped). Called once per batch: a dict lookup only when the bucket changes."""
        key = now_ns // _BUCKET_NS * BUCKET_MS
        if key != self._key:
            cur = self.buckets.get(key)
            if cur is None:
                cur = self.buckets[key] = [0, 0, {}]
                if len(self.buckets) > self.max_buckets:
                    self._trim()
            self._key, self._cur = key, cur
        cur = self._cur
        cur[0] += records
        cur[1] += 1
        if latency_ns is not None:
            b = latency_bin(latency_ns)
            hist = cur[2]
            hist[b] = hist.get(b, 0) + 1

    def drain(self, now_ns: int | None = None, everything: bool = False) -> list[list[Any]]:
        """Remove and return the buckets closed at ``now_ns`` (default: now), oldest first, in wire form;
        with ``everything`` the open bucket too (the instance is done writing)."""
        if everything:
            keys = sorted(self.buckets)
        else:
            current = (time.time_ns() if now_ns is None else now_ns) // _BUCKET_NS * BUCKET_MS
            keys = sorted(k for k in self.buckets if k < current)
        rows = []
        for k in keys:
            records, batches, hist = self.buckets.pop(k)
            rows.append([k, records, batches, [x for item in sorted(hist.items()) for x in item]])
            if k == self._key:
                self._key = -1
        return rows

    def merge(self, rows: Iterable[Sequence[Any]]) -> None:
        """Add buckets in wire form (from :meth:`drain`) to this series, bucket by bucket."""
        for start, records, batches, flat in rows:
            cur = self.buckets.get(int(start))
            if cur is None:
                cur = self.buckets[int(start)] = [0, 0, {}]
            cur[0] += int(records)
            cur[1] += int(batches)
            hist = cur[2]
            for i in range(0, len(flat) - 1, 2):
                hist[int(flat[i])] = hist.get(int(flat[i]), 0) + int(flat[i + 1])
        self._key = -1  # merged buckets are not in insertion order: add() must look up again
        if len(self.buckets) > self.max_buckets:
            self._trim()

    def _trim(self) -> None:
        # down to 90%, so that a series at its bound does not sort on every new bucket
        for k in sorted(self.buckets)[: len(self.buckets) - self.max_buckets * 9 // 10]:
            del self.buckets[k]
        self._key = -1

    @classmethod
    def combine(cls, series: Iterable[Timeline]) -> Timeline:
        """The bucket-by-bucket sum of several series (all the instances of a sink step, say)."""
        out = cls(max_buckets=1 << 62)
        for t in series:
            out.merge(t.rows())
        return out

    def rows(self) -> list[list[Any]]:
        """Every bucket in wire form, oldest first, without removing any."""
        return [
            [k, r, b, [x for item in sorted(h.items()) for x in item]]
            for k, (r, b, h) in sorted(self.buckets.items())
        ]

    def histogram(self, start_ms: int | None = None, end_ms: int | None = None) -> dict[int, int]:
        """The latency histogram of the buckets that start in ``[start_ms, end_ms)``."""
        out: dict[int, int] = {}
        for k, (_, _, hist) in self.buckets.items():
            if (start_ms is None or k >= start_ms) and (end_ms is None or k < end_ms):
                for b, c in hist.items():
                    out[b] = out.get(b, 0) + c
        return out

    def to_dict(self) -> dict[str, Any]:
        """Columns, oldest bucket first, JSON-ready: ``t_ms`` (bucket starts), ``records``, ``batches``,
        ``p50_ms``/``p99_ms`` per bucket (``None`` without stamped batches) and ``latency_bins`` (each
        bucket's histogram, flat ``[bin, count, ...]``: merge instances with :meth:`from_dict` +
        :meth:`combine`, read bins with :func:`bin_ms`)."""
        keys = sorted(self.buckets)
        cols: dict[str, Any] = {"bucket_ms": BUCKET_MS, "t_ms": keys}
        cols["records"] = [self.buckets[k][0] for k in keys]
        cols["batches"] = [self.buckets[k][1] for k in keys]
        cols["p50_ms"] = [percentile_ms(self.buckets[k][2], 0.5) for k in keys]
        cols["p99_ms"] = [percentile_ms(self.buckets[k][2], 0.99) for k in keys]
        cols["latency_bins"] = [
            [x for item in sorted(self.buckets[k][2].items()) for x in item] for k in keys
        ]
        return cols

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Timeline:
        """The inverse of :meth:`to_dict` (a ``timeline`` of ``--metrics-out``, say)."""
        out = cls(max_buckets=1 << 62)
        out.merge(zip(data["t_ms"], data["records"], data["batches"], data["latency_bins"], strict=True))
        return out


class Gauges:
    """Values sampled over time (the lineage stash's bytes, say): the last sample of each 100 ms bucket.

    >>> g = Gauges()
    >>> g.sample(1000.04, {"stash_bytes": 10})
    >>> g.sample(1000.06, {"stash_bytes": 12})
    >>> g.sample(1000.25, {"stash_bytes": 0, "entries": 3})
    >>> g.to_dict()
    {'bucket_ms': 100, 't_ms': [1000000, 1000200], 'entries': [None, 3], 'stash_bytes': [12, 0]}
    """

    __slots__ = ("buckets", "max_buckets")

    def __init__(self, max_buckets: int = 6000):
        self.buckets: dict[int, dict[str, float]] = {}
        self.max_buckets = max_buckets

    def sample(self, now_s: float, values: Mapping[str, float]) -> None:
        key = int(now_s * 1000) // BUCKET_MS * BUCKET_MS
        self.buckets.setdefault(key, {}).update(values)
        if len(self.buckets) > self.max_buckets:
            for k in sorted(self.buckets)[: len(self.buckets) - self.max_buckets * 9 // 10]:
                del self.buckets[k]

    def to_dict(self) -> dict[str, Any]:
        keys = sorted(self.buckets)
        names = sorted({n for v in self.buckets.values() for n in v})
        cols: dict[str, Any] = {"bucket_ms": BUCKET_MS, "t_ms": keys}
        for name in names:
            cols[name] = [self.buckets[k].get(name) for k in keys]
        return cols


class BatchStamp:
    """The ingestion stamp of the batch an instance is processing, and where its sinks record it written."""

    __slots__ = ("arrival", "ingest_ns", "latency", "timeline")

    def __init__(self) -> None:
        self.ingest_ns: int | None = None
        self.latency = LatencyHistogram()
        #: ingestion to the sink's operator, before any output-commit wait: ``latency`` minus this is
        #: what the sink held the batch back (the lineage stash's commit wait, a 2PC sink's checkpoint)
        self.arrival = LatencyHistogram()
        self.timeline = Timeline()

    def arrived(self) -> None:
        """The batch being processed reached a sink's operator now."""
        if self.ingest_ns is not None:
            self.arrival.add_ns(time.time_ns() - self.ingest_ns)

    def written(self, ingest_ns: int | None, records: int) -> None:
        """A batch of ``records`` stamped ``ingest_ns`` (``None``: unstamped) reached the outside world now."""
        now = time.time_ns()
        latency = None
        if ingest_ns is not None:
            latency = now - ingest_ns
            self.latency.add_ns(latency)
        self.timeline.add(now, records, latency)
