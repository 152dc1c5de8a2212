"""Nexmark Q3, local item suggestion: sellers in OR, ID or CA and their auctions of category 10, as
``(name, city, state, auction_id)``: an incremental, unwindowed join of persons and auctions.

A keyed process function over both kinds of event, keyed by person id (``auction.seller``): it keeps
the person once seen and the auctions that came before their seller, and emits each match once,
whichever side arrives first (Flink's regular inner join, written by hand).

    stashflow run jobs/nexmark/q3.py -P events=100000 -P output=out/nexmark/q3 --parallelism 2
"""

from typing import Any

from nexmark_job import event_source

from connectors import FileSink
from engine import Job
from operators.process import Context, KeyedProcessFunction

STATES = ("OR", "ID", "CA")
CATEGORY = 10


def wanted(e: dict[str, Any]) -> bool:
    if e["type"] == "person":
        return e["state"] in STATES
    return e["type"] == "auction" and e["category"] == CATEGORY


def person_id(e: dict[str, Any]) -> int:
    pid: int = e["id"] if e["type"] == "person" else e["seller"]
    return pid


class IncrementalJoin(KeyedProcessFunction):
    def process_element(self, e: dict[str, Any], ctx: Context) -> Any:
        person, waiting = ctx.value_state("person"), ctx.list_state("auctions")
        if e["type"] == "person":
            seller = (e["name"], e["city"], e["state"])
            person.update(seller)
            matches = [(*seller, auction) for auction in waiting.get()]
            waiting.clear()
            return matches
        seller = person.value()
        if seller is None:
            waiting.add(e["id"])
            return None
        return [(*seller, e["id"])]


def build(
    events: str = "100000",
    rate: str = "",
    seed: str = "0",
    out_of_order_ms: str = "0",
    events_per_second: str = "10000",
    output: str = "out/nexmark/q3",
) -> Job:
    job = Job("nexmark_q3")
    stream = event_source(
        job, events, rate, seed, out_of_order_ms, events_per_second, event_time_needed=False
    )
    joined = stream.filter("wanted", wanted).key_by(person_id).process("join", IncrementalJoin())
    joined.sink("write", FileSink(output))
    return job
