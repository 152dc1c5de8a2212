"""Plain-Python references for the Nexmark queries: what an engine job must output, exactly.

Each query takes a finite list of events (dicts as :func:`connectors.nexmark.events` returns them,
or built by hand with the same keys) and returns its complete result. The definitions depend only
on the set of events and their event time (``date_time``, milliseconds), never on the order of the
list, except q0-q2, which keep it: an engine job run with parallelism compares q0-q2 as multisets and
the sorted queries (q3-q8) exactly.

Windows are aligned to epoch 0 and half-open: a tumbling window of ``size`` holds the times
``[k * size, (k + 1) * size)``; a sliding window of ``size`` every ``slide`` holds
``[k * slide, k * slide + size)``, so an event belongs to every window whose start ``s`` is a multiple
of ``slide`` with ``t - size < s <= t``. Windowed results carry ``(window_start, window_end)``.
Results are final results over the whole input: what an engine has emitted once its watermark has
passed every window end and every auction expiry.

>>> bid = {"type": "bid", "auction": 1107, "bidder": 1001, "price": 250, "date_time": 9_999}
>>> q1([bid]), q2([bid]), q7([bid])
([(1107, 1001, 222, 9999)], [(1107, 250)], [(0, 10000, 1107, 1001, 250)])
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from typing import Any

__all__ = ["q0", "q1", "q2", "q3", "q4", "q5", "q7", "q8"]

Event = dict[str, Any]

#: q3: the states of the sellers it looks for, and the category of their auctions (Beam's Query3).
Q3_STATES = ("OR", "ID", "CA")
Q3_CATEGORY = 10
#: q2: bids for every 123rd auction (Beam's auctionSkip).
Q2_AUCTION_SKIP = 123


def _of(events: Iterable[Event], kind: str) -> list[Event]:
    return [e for e in events if e["type"] == kind]


def q0(events: list[Event]) -> list[Event]:
    """Pass-through: every bid event, unchanged, in input order."""
    return _of(events, "bid")


def q1(events: list[Event]) -> list[tuple[int, int, int, int]]:
    """Currency conversion: ``(auction, bidder, price * 89 // 100, date_time)`` per bid, in input order.

    The euro price is Beam's integer ``(price * 89) / 100`` (prices are non-negative cents).
    """
    return [(b["auction"], b["bidder"], b["price"] * 89 // 100, b["date_time"]) for b in _of(events, "bid")]


def q2(events: list[Event]) -> list[tuple[int, int]]:
    """Selection: ``(auction, price)`` of every bid whose ``auction % 123 == 0``, in input order."""
    return [(b["auction"], b["price"]) for b in _of(events, "bid") if b["auction"] % Q2_AUCTION_SKIP == 0]


def q3(events: list[Event]) -> list[tuple[str, str, str, int]]:
    """Local item suggestion: sellers in OR, ID or CA and their auctions of category 10.

    An incremental, unwindowed inner join of persons (``state`` in ``Q3_STATES``) with auctions
    (``category == 10``) on ``auction.seller == person.id``: one ``(name, city, state, auction_id)`` per
    matching (person, auction) pair, whichever of the two comes first. Sorted.
    """
    auctions: dict[int, list[int]] = defaultdict(list)
    for a in _of(events, "auction"):
        if a["category"] == Q3_CATEGORY:
            auctions[a["seller"]].append(a["id"])
    return sorted(
        (p["name"], p["city"], p["state"], auction)
        for p in _of(events, "person")
        if p["state"] in Q3_STATES
        for auction in auctions.get(p["id"], ())
    )


def q4(events: list[Event]) -> list[tuple[int, float]]:
    """Average closing price per category, once every auction has expired.

    An auction's closing price is the highest ``price`` among the bids with ``bid.auction ==
    auction.id``, ``auction.date_time <= bid.date_time < auction.expires`` and ``price >=
    auction.reserve``; an auction without such a bid has no winner and counts for nothing. Per
    category, the average is ``sum(closing prices) / count`` (a float, computed exactly like this) over
    the auctions with a winner. Sorted ``(category, average)``; categories without a winner are absent.
    Auction ids are unique; bids for an unknown auction are ignored.
    """
    auctions = {a["id"]: a for a in _of(events, "auction")}
    closing: dict[int, int] = {}
    for b in _of(events, "bid"):
        a = auctions.get(b["auction"])
        if a is None or b["price"] < a["reserve"] or not a["date_time"] <= b["date_time"] < a["expires"]:
            continue
        if b["price"] > closing.get(a["id"], -1):
            closing[a["id"]] = b["price"]
    prices: dict[int, list[int]] = defaultdict(list)
    for auction_id, price in closing.items():
        prices[auctions[auction_id]["category"]].append(price)
    return sorted((category, sum(p) / len(p)) for category, p in prices.items())


def q5(events: list[Event], size_ms: int = 10_000, slide_ms: int = 2_000) -> list[tuple[int, int, int, int]]:
    """Hot items: per sliding window, the auction(s) with the most bids in it.

    Each bid counts once in every window that holds its ``date_time`` (``size_ms // slide_ms`` windows
    when ``slide_ms`` divides ``size_ms``). One ``(window_start, window_end, auction, count)`` for every
    auction tied at the window's largest count; only windows with at least one bid. Sorted.
    """
    if size_ms <= 0 or slide_ms <= 0:
        raise ValueError(f"q5: size_ms and slide_ms must be > 0, got {size_ms} and {slide_ms}")
    counts: dict[int, Counter[int]] = defaultdict(Counter)
    for b in _of(events, "bid"):
        t = b["date_time"]
        start = t - t % slide_ms
        while start > t - size_ms:
            counts[start][b["auction"]] += 1
            start -= slide_ms
    out: list[tuple[int, int, int, int]] = []
    for start, per_auction in counts.items():
        top = max(per_auction.values())
        out.extend((start, start + size_ms, a, n) for a, n in per_auction.items() if n == top)
    return sorted(out)


def q7(events: list[Event], size_ms: int = 10_000) -> list[tuple[int, int, int, int, int]]:
    """Highest bid per tumbling window: ``(window_start, window_end, auction, bidder, price)``.

    One tuple per bid whose price equals the largest price of its window (so every tie, and equal
    bids as often as they occur); only windows with at least one bid. Sorted.
    """
    if size_ms <= 0:
        raise ValueError(f"q7: size_ms must be > 0, got {size_ms}")
    windows: dict[int, list[Event]] = defaultdict(list)
    for b in _of(events, "bid"):
        windows[b["date_time"] - b["date_time"] % size_ms].append(b)
    out: list[tuple[int, int, int, int, int]] = []
    for start, bids in windows.items():
        top = max(b["price"] for b in bids)
        out.extend(
            (start, start + size_ms, b["auction"], b["bidder"], b["price"]) for b in bids if b["price"] == top
        )
    return sorted(out)


def q8(events: list[Event], size_ms: int = 10_000) -> list[tuple[int, str, int, int]]:
    """New users: persons who opened an auction in the tumbling window in which they registered.

    A window join of persons and auctions on ``auction.seller == person.id`` where both
    ``date_time`` fall in the same window (in either order within it). One ``(person_id, name,
    window_start, window_end)`` per such person and window, however many auctions matched. Sorted.
    """
    if size_ms <= 0:
        raise ValueError(f"q8: size_ms must be > 0, got {size_ms}")
    sold = {(a["seller"], a["date_time"] - a["date_time"] % size_ms) for a in _of(events, "auction")}
    out: set[tuple[int, str, int, int]] = set()
    for p in _of(events, "person"):
        start = p["date_time"] - p["date_time"] % size_ms
        if (p["id"], start) in sold:
            out.add((p["id"], p["name"], start, start + size_ms))
    return sorted(out)
