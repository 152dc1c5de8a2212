"""Nexmark Q7, highest bid per tumbling window (10 s): ``(window_start, window_end, auction, bidder, price)``
for every bid at the window's highest price.

Two window steps so the work spreads over the instances: the best bids per auction and window, then
the best of those per window (first-step results are stamped ``end - 1``: the same window).

    stashflow run jobs/nexmark/q7.py -P events=100000 -P output=out/nexmark/q7 --parallelism 2
"""

from typing import Any

from nexmark_job import event_source, is_bid

from connectors import FileSink
from engine import Job, Tumbling

Best = tuple[int, tuple[tuple[int, int, int], ...]]  # (price, bids at it as (auction, bidder, price))


def best_bid(acc: Best, b: dict[str, Any]) -> Best:
    price = b["price"]
    if price > acc[0]:
        return (price, ((b["auction"], b["bidder"], price),))
    if price == acc[0]:
        return (price, (*acc[1], (b["auction"], b["bidder"], price)))
    return acc


def best_of(acc: Best, result: tuple[Any, ...]) -> Best:
    price, bids = result[3]
    if price > acc[0]:
        return (price, bids)
    if price == acc[0]:
        return (price, acc[1] + bids)
    return acc


def build(
    events: str = "100000",
    rate: str = "",
    seed: str = "0",
    out_of_order_ms: str = "0",
    events_per_second: str = "10000",
    output: str = "out/nexmark/q7",
    size_ms: str = "10000",
) -> Job:
    size = int(size_ms)
    job = Job("nexmark_q7")
    bids = event_source(job, events, rate, seed, out_of_order_ms, events_per_second).filter("bids", is_bid)
    per_auction = bids.key_by(lambda b: b["auction"]).window("best_per_auction", Tumbling(size))
    best = per_auction.aggregate(lambda: (-1, ()), best_bid)
    top = (
        best.key_by(lambda r: (r[1], r[2]))
        .window("best", Tumbling(size))
        .aggregate(lambda: (-1, ()), best_of)
    )
    rows = top.flat_map("rows", lambda r: [(r[1], r[2], a, bidder, p) for a, bidder, p in r[3][1]])
    rows.sink("write", FileSink(output))
    return job
