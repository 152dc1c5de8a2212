"""Nexmark Q8, new users: persons who opened an auction in the tumbling window (10 s) in which they
registered: ``(person_id, name, window_start, window_end)``.

A window join of persons and auctions on ``person.id == auction.seller``, written as one window step
over both kinds of event keyed by that id: its accumulator holds the person's name (if they
registered in the window) and whether they sold in it.

    stashflow run jobs/nexmark/q8.py -P events=100000 -P output=out/nexmark/q8 --parallelism 2
"""

from typing import Any

from nexmark_job import event_source

from connectors import FileSink
from engine import Job, Tumbling

Seen = tuple[str | None, bool]  # (the person's name if they registered in the window, sold in it)


def seller_or_person(e: dict[str, Any]) -> int:
    person: int = e["id"] if e["type"] == "person" else e["seller"]
    return person


def see(acc: Seen, e: dict[str, Any]) -> Seen:
    return (e["name"], acc[1]) if e["type"] == "person" else (acc[0], True)


def build(
    events: str = "100000",
    rate: str = "",
    seed: str = "0",
    out_of_order_ms: str = "0",
    events_per_second: str = "10000",
    output: str = "out/nexmark/q8",
    size_ms: str = "10000",
) -> Job:
    job = Job("nexmark_q8")
    stream = event_source(job, events, rate, seed, out_of_order_ms, events_per_second)
    people = stream.filter("persons_and_auctions", lambda e: e["type"] != "bid")
    windows = people.key_by(seller_or_person).window("new_users", Tumbling(int(size_ms)))
    joined = windows.aggregate(lambda: (None, False), see)
    rows = joined.flat_map(
        "rows", lambda r: [(r[0], r[3][0], r[1], r[2])] if r[3][0] is not None and r[3][1] else []
    )
    rows.sink("write", FileSink(output))
    return job
