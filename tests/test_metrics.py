"""End-to-end latency, measured per batch from the source's ingestion stamp to the sink's write."""

from __future__ import annotations

import pytest

from connectors import CollectSink, GeneratorSource
from engine import Job
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
