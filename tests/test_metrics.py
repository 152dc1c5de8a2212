"""End-to-end latency, measured per batch from the source's ingestion stamp to the sink's write, and over time."""

from __future__ import annotations

import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from connectors import CollectSink, GeneratorSource, ListSource
from engine import Job
from engine.config import JobConfig
from engine.connector import SourceReader
from engine.job_run import JobRun
from engine.loader import JobRef
from engine.metrics import BUCKET_MS, BatchStamp, Timeline, bin_ms, latency_bin, percentile_ms
from engine.plan import Plan
from engine.testing import run


@pytest.mark.parametrize("ft", ["none", "lineage", "wal"])
def test_sinks_report_end_to_end_latency(ft: str):
    job = Job("lat", parallelism=1)
    out = CollectSink()
    # 2000 records at 4000/s: batches are cut small and flushed by the 5 ms timer on the way
    src = job.source("gen", GeneratorSource(lambda i: i, count=2000, rate=4000))
    src.map("inc", lambda x: x + 1).rebalance().key_by(lambda x: x % 7).count("count").sink("out", out)
    result = run(job, ft=ft, batch_size=100)
    assert len(out.records) == 2000
    latency = result.instances["out/0"]["latency"]
    assert latency["count"] >= 20  # one sample per batch written
    # through two hops with a 5 ms flush timer each, and under lineage the commit wait at the sink
    assert 0.1 < latency["p50_ms"] < 1000 and latency["p50_ms"] <= latency["p99_ms"] <= latency["max_ms"]
    assert "latency" not in result.instances["inc/0"]  # only sinks measure it


class _LateLog(ListSource):
    """Records a log appended 5 s ago: its reader says so, and latency must count those 5 s."""

    def open(self, index: int, parallelism: int) -> SourceReader:
        reader = super().open(index, parallelism)
        reader.ingest_ns = lambda: time.time_ns() - 5 * S  # type: ignore[method-assign]
        return reader


def test_batches_are_stamped_with_the_time_the_reader_says_their_records_entered():
    job = Job("late", parallelism=1)
    out = CollectSink()
    job.source("log", _LateLog(list(range(300)))).map("inc", lambda x: x + 1).sink("out", out)
    result = run(job, ft="lineage", batch_size=50)
    assert sorted(out.records) == list(range(1, 301))
    latency = result.instances["out/0"]["latency"]
    assert latency["count"] >= 1 and 5000 <= latency["p50_ms"] < 15000


# -- the timeline: records and latency per 100 ms of wall-clock time -------------------------------------

S = 1_000_000_000  # ns


def test_timeline_buckets_by_absolute_wall_clock_time():
    t = Timeline()
    t.add(1000 * S + 10_000_000, records=10, latency_ns=5_000_000)
    t.add(1000 * S + 99_000_000, records=20, latency_ns=7_000_000)
    t.add(1000 * S + 100_000_000, records=5, latency_ns=None)  # unstamped: counted, no latency
    assert sorted(t.buckets) == [1_000_000, 1_000_100]
    d = t.to_dict()
    assert d["bucket_ms"] == BUCKET_MS == 100
    assert d["t_ms"] == [1_000_000, 1_000_100]
    assert d["records"] == [30, 5] and d["batches"] == [2, 1]
    assert d["p99_ms"][1] is None
    # the sample at int(q * n) in order, as LatencyHistogram: of two, the upper for p50 too
    assert d["p50_ms"][0] == pytest.approx(7.0, rel=0.04) and d["p99_ms"][0] == pytest.approx(7.0, rel=0.04)
    assert percentile_ms(t.histogram(), 0.0) == pytest.approx(5.0, rel=0.04)


def test_drain_hands_over_closed_buckets_once():
    t = Timeline()
    t.add(1000 * S, records=1, latency_ns=1_000_000)
    t.add(1000 * S + 250_000_000, records=2, latency_ns=1_000_000)
    assert [row[0] for row in t.drain(now_ns=1000 * S + 260_000_000)] == [1_000_000]
    assert t.drain(now_ns=1000 * S + 260_000_000) == []  # the open bucket stays
    t.add(1000 * S + 270_000_000, records=3, latency_ns=None)  # still the open bucket
    rows = t.drain(everything=True)
    assert [(r[0], r[1], r[2]) for r in rows] == [(1_000_200, 5, 2)]
    assert t.buckets == {}


def test_merge_adds_the_incarnations_of_an_instance_bucket_by_bucket():
    first, second = Timeline(), Timeline()
    first.add(1000 * S + 50_000_000, records=100, latency_ns=2_000_000)  # before the kill
    second.add(1000 * S + 80_000_000, records=40, latency_ns=900_000_000)  # the new incarnation
    second.add(1000 * S + 150_000_000, records=60, latency_ns=3_000_000)
    merged = Timeline()
    merged.merge(first.drain(everything=True))
    merged.merge(second.drain(now_ns=1000 * S + 120_000_000))
    merged.merge(second.drain(everything=True))
    d = merged.to_dict()
    assert d["t_ms"] == [1_000_000, 1_000_100] and d["records"] == [140, 60] and d["batches"] == [2, 1]
    assert percentile_ms(merged.histogram(1_000_000, 1_000_100), 1.0) == pytest.approx(900, rel=0.04)
    assert Timeline.from_dict(d).to_dict() == d
    both = Timeline.combine([merged, Timeline.from_dict(d)])
    assert both.to_dict()["records"] == [280, 120]


@given(st.lists(st.integers(min_value=0, max_value=10**12), min_size=1, max_size=200))
def test_latency_bins_are_monotone_and_within_3_percent(latencies_ns: list[int]):
    for ns in latencies_ns:
        b = latency_bin(ns)
        assert latency_bin(ns + 1000) >= b
        if ns >= 32_000:  # below 32 us bins are exact microseconds
            assert bin_ms(b) == pytest.approx(ns / 1e6, rel=1 / 32)
    hist: dict[int, int] = {}
    for ns in latencies_ns:
        hist[latency_bin(ns)] = hist.get(latency_bin(ns), 0) + 1
    exact = sorted(latencies_ns)[min(len(latencies_ns) - 1, int(0.99 * len(latencies_ns)))] / 1e6
    assert percentile_ms(hist, 0.99) == pytest.approx(exact, rel=1 / 32, abs=0.001)


def test_a_timeline_keeps_its_newest_buckets_only():
    t = Timeline(max_buckets=10)
    for i in range(25):
        t.add(1000 * S + i * 100_000_000, records=1, latency_ns=None)
    assert len(t.buckets) <= 10 and max(t.buckets) == 1_002_400
    assert sorted(t.buckets) == list(range(min(t.buckets), 1_002_500, 100))


def test_batch_stamp_records_latency_and_timeline():
    stamp = BatchStamp()
    stamp.written(time.time_ns() - 20_000_000, 7)
    stamp.written(None, 3)
    assert stamp.latency.summary()["count"] == 1 and stamp.latency.summary()["p50_ms"] >= 20
    rows = stamp.timeline.drain(everything=True)
    assert sum(r[1] for r in rows) == 10 and sum(r[2] for r in rows) == 2


def test_batch_stamp_separates_arrival_at_the_sink_from_the_write():
    stamp = BatchStamp()
    stamp.ingest_ns = time.time_ns() - 5_000_000
    stamp.arrived()  # at the sink's operator after 5 ms; held back, then written 30 ms after ingestion
    stamp.written(stamp.ingest_ns - 25_000_000, 1)
    stamp.ingest_ns = None
    stamp.arrived()  # unstamped batches count in neither
    arrival, written = stamp.arrival.summary(), stamp.latency.summary()
    assert arrival["count"] == 1 and 5 <= arrival["p50_ms"] < 25
    assert written["count"] == 1 and written["p50_ms"] >= 30


def test_job_run_absorbs_timeline_increments_and_samples_the_stash():
    job = Job("absorb", parallelism=1)
    job.source("gen", GeneratorSource(lambda i: i, count=1)).sink("out", CollectSink())
    run_ = JobRun("absorb-1", "absorb", JobRef(), {}, JobConfig(), Plan.of(job, None), b"s")
    (task,) = run_.plan.tasks
    inst = task.instance(0)
    for incarnation_rows in (
        [[1_000_000, 10, 1, [100, 1]]],
        [[1_000_000, 5, 1, [200, 1]], [1_000_100, 7, 1, []]],
    ):
        stats = {
            "extra": {
                "timeline": incarnation_rows,
                "stash_bytes": 12,
                "delta_bytes_mean": 2.5,
                "frames_sent": 4,
            }
        }
        run_.absorb(inst, stats)
        assert "timeline" not in stats["extra"]  # taken out: what is stored is a snapshot, not increments
        run_.stats[inst] = stats
    metrics = run_.instance_metrics()["out/0"]
    assert metrics["timeline"]["records"] == [15, 7] and metrics["timeline"]["batches"] == [2, 1]
    assert metrics["gauges"]["stash_bytes"][-1] == 12 and metrics["gauges"]["piggybacked_bytes"][-1] == 10
    assert "timeline" not in run_.instance_metrics()["gen/0"]  # chained with the sink, but no sink itself


@pytest.mark.parametrize("ft", ["none", "lineage"])
def test_sink_timeline_adds_up_to_the_records_written(ft: str):
    job = Job("tl", parallelism=2)
    out = CollectSink()
    src = job.source("gen", GeneratorSource(lambda i: i, count=6000, rate=20000))
    src.key_by(lambda x: x % 11).count("count").sink("out", out, parallelism=1)
    result = run(job, ft=ft, batch_size=100, kill_after={"count/0": 1500} if ft == "lineage" else None)
    assert len(out.records) == 6000
    timeline = result.instances["out/0"]["timeline"]
    assert sum(timeline["records"]) == 6000  # the sink was not killed: every bucket reached the coordinator
    assert timeline["t_ms"] == sorted(timeline["t_ms"]) and len(timeline["t_ms"]) >= 2
    assert "timeline" not in result.instances["count/0"]
    if ft == "lineage":
        assert result.instances["count/0"]["restarts"] == 1
        assert result.instances["count/0"]["gauges"]["stash_bytes"]
