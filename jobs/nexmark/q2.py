"""Nexmark Q2, selection: ``(auction, price)`` of the bids on every 123rd auction.

stashflow run jobs/nexmark/q2.py -P events=100000 -P output=out/nexmark/q2 --parallelism 2
"""

from typing import Any

from nexmark_job import event_source

from connectors import FileSink
from engine import Job

AUCTION_SKIP = 123


def selected(e: dict[str, Any]) -> bool:
    return e["type"] == "bid" and e["auction"] % AUCTION_SKIP == 0


def build(
    events: str = "100000",
    rate: str = "",
    seed: str = "0",
    out_of_order_ms: str = "0",
    events_per_second: str = "10000",
    output: str = "out/nexmark/q2",
) -> Job:
    job = Job("nexmark_q2")
    stream = event_source(
        job, events, rate, seed, out_of_order_ms, events_per_second, event_time_needed=False
    )
    stream.filter("selected", selected).map("project", lambda b: (b["auction"], b["price"])).sink(
        "write", FileSink(output)
    )
    return job
