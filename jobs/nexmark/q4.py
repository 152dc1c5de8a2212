"""Nexmark Q4, average closing price per category: ``(category, average)`` once every auction closed.

An auction closes at its ``expires`` time; its closing price is its highest bid at or above the
reserve placed between its start and its expiry. A keyed process function over auctions and bids,
keyed by auction id, keeps the auction and its best valid bid (bids that come before their auction
wait in list state) and emits ``(category, price)`` from an event-time timer at ``expires``; the
averages are folded per category at the end of the (bounded) input.

    stashflow run jobs/nexmark/q4.py -P events=100000 -P output=out/nexmark/q4 --parallelism 2
"""

from typing import Any

from nexmark_job import event_source

from connectors import FileSink
from engine import Job
from operators.process import Context, KeyedProcessFunction


def auction_id(e: dict[str, Any]) -> int:
    aid: int = e["id"] if e["type"] == "auction" else e["auction"]
    return aid


def valid(auction: tuple[int, int, int, int], bid: tuple[int, int]) -> bool:
    _, reserve, start, expires = auction
    price, at = bid
    return price >= reserve and start <= at < expires


class ClosingPrice(KeyedProcessFunction):
    def process_element(self, e: dict[str, Any], ctx: Context) -> None:
        auction, best, early = ctx.value_state("auction"), ctx.value_state("best"), ctx.list_state("early")
        if e["type"] == "auction":
            known = (e["category"], e["reserve"], e["date_time"], e["expires"])
            auction.update(known)
            top = max((b[0] for b in early.get() if valid(known, b)), default=None)
            if top is not None:
                best.update(top)
            early.clear()
            ctx.timers.register_event_time(e["expires"])
            return
        bid = (e["price"], e["date_time"])
        known = auction.value()
        if known is None:
            early.add(bid)
        elif valid(known, bid) and bid[0] > best.value(-1):
            best.update(bid[0])

    def on_timer(self, timestamp: int, ctx: Context) -> Any:
        known, top = ctx.value_state("auction").value(), ctx.value_state("best").value()
        for name in ("auction", "best"):
            ctx.value_state(name).clear()
        return [(known[0], (top, 1))] if top is not None else []


def build(
    events: str = "100000",
    rate: str = "",
    seed: str = "0",
    out_of_order_ms: str = "0",
    events_per_second: str = "10000",
    output: str = "out/nexmark/q4",
) -> Job:
    job = Job("nexmark_q4")
    stream = event_source(job, events, rate, seed, out_of_order_ms, events_per_second)
    closing = stream.filter("auctions_and_bids", lambda e: e["type"] != "person")
    prices = closing.key_by(auction_id).process("close", ClosingPrice())
    totals = prices.key_by(lambda cp: cp[0]).reduce_final(
        "per_category", lambda a, b: (a[0], (a[1][0] + b[1][0], a[1][1] + b[1][1]))
    )
    totals.map("average", lambda kv: (kv[0], kv[1][1][0] / kv[1][1][1])).sink("write", FileSink(output))
    return job
