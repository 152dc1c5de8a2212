"""Per-user click totals with filter, map, rebalance and reduce_final over generated events.

Each event is ``(user, page, millis)``; bot users are filtered out, events are weighted by page, and
the total weight per user is written once the bounded input ends.

    stashflow run jobs/clicks.py -P events=50000 -P output=out/clicks --parallelism 2
"""

from connectors import FileSink, GeneratorSource
from engine import Job

PAGES = ("home", "search", "item", "cart", "checkout")
WEIGHT = {"home": 1, "search": 2, "item": 3, "cart": 5, "checkout": 8}


def event(i: int) -> tuple[str, str, int]:
    return (f"user{(i * 2654435761) % 97}", PAGES[(i * 31) % len(PAGES)], 1000 + 7 * i)


def build(events: str = "50000", output: str = "out/clicks") -> Job:
    job = Job("clicks")
    clicks = job.source("events", GeneratorSource(event, count=int(events)))
    humans = clicks.filter("no_bots", lambda e: not e[0].endswith("3"))
    weighted = humans.rebalance().map("weigh", lambda e: (e[0], WEIGHT[e[1]]))
    totals = weighted.key_by(lambda e: e[0]).reduce_final("total", lambda acc, e: (acc[0], acc[1] + e[1]))
    totals.map("flatten", lambda kv: {"user": kv[0], "weight": kv[1][1]}).sink("write", FileSink(output))
    return job
