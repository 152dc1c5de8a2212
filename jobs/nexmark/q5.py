"""Nexmark Q5, hot items: per sliding window (10 s every 2 s), the auction(s) with the most bids.

Two window steps: bids counted per auction and sliding window, then, per window, the largest count
and every auction tied at it. A result of the first step is stamped ``end - 1``, so it falls in the
tumbling window of the slide that ends where its sliding window ends: the second step groups by
window with that. Output: ``(window_start, window_end, auction, count)``.

    stashflow run jobs/nexmark/q5.py -P events=100000 -P output=out/nexmark/q5 --parallelism 2
"""

from typing import Any

from nexmark_job import event_source, is_bid

from connectors import FileSink
from engine import Job, Sliding, Tumbling


def hottest(acc: tuple[int, tuple[int, ...]], result: tuple[Any, ...]) -> tuple[int, tuple[int, ...]]:
    """Fold ``(auction, start, end, count)`` into ``(top count, auctions at it)``."""
    auction, _, _, n = result
    if n > acc[0]:
        return (n, (auction,))
    if n == acc[0]:
        return (n, (*acc[1], auction))
    return acc


def build(
    events: str = "100000",
    rate: str = "",
    seed: str = "0",
    out_of_order_ms: str = "0",
    events_per_second: str = "10000",
    output: str = "out/nexmark/q5",
    size_ms: str = "10000",
    slide_ms: str = "2000",
) -> Job:
    size, slide = int(size_ms), int(slide_ms)
    job = Job("nexmark_q5")
    bids = event_source(job, events, rate, seed, out_of_order_ms, events_per_second).filter("bids", is_bid)
    counts = bids.key_by(lambda b: b["auction"]).window("bids_per_auction", Sliding(size, slide)).count()
    per_window = counts.key_by(lambda r: (r[1], r[2])).window("hottest", Tumbling(slide))
    top = per_window.aggregate(lambda: (0, ()), hottest)
    rows = top.flat_map("rows", lambda r: [(r[0][0], r[0][1], a, r[3][0]) for a in r[3][1]])
    rows.sink("write", FileSink(output))
    return job
