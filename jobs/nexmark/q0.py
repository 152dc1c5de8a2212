"""Nexmark Q0, pass-through: every bid, unchanged (the cost of the engine itself).

stashflow run jobs/nexmark/q0.py -P events=100000 -P output=out/nexmark/q0 --parallelism 2
"""

from nexmark_job import event_source, is_bid

from connectors import FileSink
from engine import Job


def build(
    events: str = "100000",
    rate: str = "",
    seed: str = "0",
    out_of_order_ms: str = "0",
    events_per_second: str = "10000",
    output: str = "out/nexmark/q0",
) -> Job:
    job = Job("nexmark_q0")
    stream = event_source(
        job, events, rate, seed, out_of_order_ms, events_per_second, event_time_needed=False
    )
    stream.filter("bids", is_bid).sink("write", FileSink(output))
    return job
