"""The recovery benchmark's job: a steady, rate-limited stream over many keys into a running count.

    stashflow run bench/jobs/keyed_load.py -P records=500000 -P rate=50000 -P keys=100000 \\
        -P output=bench/out/recovery/run/output --parallelism 2 --checkpoint-interval 1 \\
        --kill count/1@6 --timeout 60 --metrics-out bench/out/recovery/run/metrics.json

``generate`` (a :class:`connectors.GeneratorSource` capped at ``rate`` records/s in all) yields
``records`` records ``("k<i % keys>", i, i % 1000, "p<i % 7>")``: key ``k<j>`` comes back every
``keys / rate`` seconds, so after that long every key has state. They are keyed by their first field
into ``count``, a running count (keyed state: ``(key, n)`` for the n-th record of a key), whose output
goes to ``write``, a :class:`connectors.FileSink` (``<output>/part-<i>.jsonl``) that the benchmark
reads back to check that every ``(key, n)`` was written exactly once.

``sink=separate`` (default) puts ``write`` in a task of its own behind ``rebalance``, so killing
``count/1`` kills that one step instance and nothing else; ``sink=chained`` chains ``write`` into
``count``'s task (the layout a plain ``.sink`` gets), so the kill takes ``write/1`` down with it.
"""

from __future__ import annotations

from typing import Any

from connectors import FileSink, GeneratorSource
from engine import Job, ParameterError


def _parse(name: str, value: str, kind: type, minimum: float) -> Any:
    try:
        parsed = kind(value)
    except ValueError:
        raise ParameterError(f"keyed_load job: {name} must be a number, got {value!r}") from None
    if parsed < minimum:
        raise ParameterError(f"keyed_load job: {name} must be at least {minimum:g}, got {value!r}")
    return parsed


def build(
    records: str = "500000",
    rate: str = "50000",
    keys: str = "100000",
    output: str = "bench/out/recovery/output",
    sink: str = "separate",
) -> Job:
    count = _parse("records", records, int, 0)
    per_second = _parse("rate", rate, float, 1e-9)
    distinct = _parse("keys", keys, int, 1)
    if sink not in ("separate", "chained"):
        raise ParameterError(f"keyed_load job: sink must be 'separate' or 'chained', got {sink!r}")

    def record(i: int) -> tuple[str, int, int, str]:
        return (f"k{i % distinct}", i, i % 1000, f"p{i % 7}")

    def key_of(r: tuple[str, int, int, str]) -> str:
        return r[0]

    job = Job("keyed_load")
    counts = (
        job.source("generate", GeneratorSource(record, count=count, rate=per_second))
        .key_by(key_of)
        .count("count")
    )
    if sink == "separate":
        counts = counts.rebalance()
    counts.sink("write", FileSink(output))
    return job
