"""Credit-based flow control end to end: a slow sink slows its source instead of growing memory."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from support import ROOT

SLOW_JOB = """
import time
from engine import Job, Sink, SinkWriter
from connectors import GeneratorSource


class SlowWriter(SinkWriter):
    def write_batch(self, records):
        time.sleep(0.005)  # a sink that takes 5 ms per batch of 100: at most ~20k records/s


class SlowSink(Sink):
    def open(self, index, parallelism):
        return SlowWriter()


job = Job("slow")
job.source("gen", GeneratorSource(lambda i: "x" * 100, count=40000)).rebalance().sink("slow", SlowSink())
"""


@pytest.mark.parametrize("ft", ["none", "lineage"])
def test_slow_sink_backpressures_the_source(tmp_path: Path, ft: str):
    path = tmp_path / "slow.py"
    path.write_text(textwrap.dedent(SLOW_JOB))
    metrics = tmp_path / "m.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "engine",
            "run",
            str(path),
            "--batch-size",
            "100",
            "--ft",
            ft,
            "--metrics-out",
            str(metrics),
        ],
        capture_output=True,
        text=True,
        timeout=90,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads(metrics.read_text())["instances"]
    # 400 batches at 5 ms each is >= 2 s of sink time; the source could produce them all in a fraction
    # of that, so with at most `window` (8) batches in flight, plus under the lineage stash at most
    # engine.commit_gate.CommitGate.LIMIT (256) batches held for the output-commit rule, it must have spent long blocked
    assert data["gen/0"]["backpressure_s"] > 0.5, json.dumps(data["gen/0"], indent=1)
    assert data["slow/0"]["records_in"] == 40000
    assert data["slow/0"]["backpressure_s"] == 0
