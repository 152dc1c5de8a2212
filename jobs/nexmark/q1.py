"""Nexmark Q1, currency conversion: ``(auction, bidder, price in euro cents, date_time)`` per bid.

stashflow run jobs/nexmark/q1.py -P events=100000 -P output=out/nexmark/q1 --parallelism 2
"""

from typing import Any

from nexmark_job import event_source, is_bid

from connectors import FileSink
from engine import Job


def to_euro(b: dict[str, Any]) -> tuple[int, int, int, int]:
    return (b["auction"], b["bidder"], b["price"] * 89 // 100, b["date_time"])


def build(
    events: str = "100000",
    rate: str = "",
    seed: str = "0",
    out_of_order_ms: str = "0",
    events_per_second: str = "10000",
    output: str = "out/nexmark/q1",
) -> Job:
    job = Job("nexmark_q1")
    stream = event_source(
        job, events, rate, seed, out_of_order_ms, events_per_second, event_time_needed=False
    )
    stream.filter("bids", is_bid).map("to_euro", to_euro).sink("write", FileSink(output))
    return job
