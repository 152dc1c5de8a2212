"""The Nexmark reference queries on hand-built events (answers worked out by hand), then on the generator."""

from __future__ import annotations

import doctest

import pytest
from nexmark import reference
from nexmark.reference import q0, q1, q2, q3, q4, q5, q7, q8

from connectors.nexmark import NexmarkConfig, events


def person(id, t, name="Ann Lee", city="Boise", state="ID"):
    return {
        "type": "person",
        "id": id,
        "name": name,
        "email_address": "a@b.com",
        "credit_card": "0000 0000 0000 0000",
        "city": city,
        "state": state,
        "date_time": t,
        "extra": "",
    }


def auction(id, seller, t, expires=None, reserve=0, category=10):
    return {
        "type": "auction",
        "id": id,
        "item_name": "item",
        "description": "desc",
        "initial_bid": reserve,
        "reserve": reserve,
        "date_time": t,
        "expires": t + 1000 if expires is None else expires,
        "seller": seller,
        "category": category,
        "extra": "",
    }


def bid(auction, price, t, bidder=1):
    return {
        "type": "bid",
        "auction": auction,
        "bidder": bidder,
        "price": price,
        "channel": "Google",
        "url": "https://www.nexmark.com/a/b/c/item.htm?query=1",
        "date_time": t,
        "extra": "",
    }


def test_docstring_examples():
    assert doctest.testmod(reference).failed == 0


def test_q0_passes_bids_through_in_order():
    stream = [person(1, 0), bid(7, 10, 5), auction(7, 1, 1), bid(8, 20, 3)]
    assert q0(stream) == [stream[1], stream[3]]
    assert q0([]) == []


def test_q1_converts_dollars_to_euros_rounding_down():
    stream = [bid(7, 100, 5, bidder=2), person(1, 0), bid(8, 199, 6, bidder=3), bid(9, 1, 7)]
    assert q1(stream) == [(7, 2, 89, 5), (8, 3, 177, 6), (9, 1, 0, 7)]


def test_q2_selects_every_123rd_auction():
    stream = [
        bid(1107, 5, 0),
        bid(124, 6, 1),
        auction(1230, 1, 2),
        bid(0, 7, 3),
        bid(1230, 8, 4),
        bid(1107, 9, 5),
    ]
    assert q2(stream) == [(1107, 5), (0, 7), (1230, 8), (1107, 9)]


def test_q3_joins_sellers_of_some_states_with_their_category_10_auctions():
    stream = [
        person(1, 0, "Al", "Bend", "OR"),
        auction(100, 1, 1, category=10),
        auction(101, 1, 2, category=11),  # other category
        auction(102, 3, 3, category=10),  # its seller comes later
        person(2, 4, "Bo", "Kent", "WA"),  # other state
        auction(103, 2, 5, category=10),
        person(3, 6, "Cy", "Phoenix", "CA"),
        auction(104, 1, 7, category=10),
        auction(105, 9, 8, category=10),  # unknown seller
    ]
    assert q3(stream) == [("Al", "Bend", "OR", 100), ("Al", "Bend", "OR", 104), ("Cy", "Phoenix", "CA", 102)]
    assert q3(list(reversed(stream))) == q3(stream)


def test_q4_averages_closing_prices_per_category():
    stream = [
        auction(1, 50, 1000, expires=2000, reserve=50, category=10),
        bid(1, 40, 1100),  # below the reserve
        bid(1, 60, 1500),
        bid(1, 55, 1600),  # lower than the highest
        bid(1, 70, 2000),  # at expiry: the auction is closed
        bid(1, 95, 999),  # before the auction opened
        auction(2, 50, 1000, expires=5000, reserve=100, category=10),
        bid(2, 120, 1000),  # at the opening instant: counts
        bid(2, 150, 4999),
        auction(3, 50, 0, expires=9000, reserve=500, category=11),
        bid(3, 499, 10),  # no bid reaches the reserve: no winner
        auction(4, 50, 0, expires=9000, reserve=10, category=12),
        bid(4, 10, 8999),  # exactly the reserve wins
        bid(77, 10**6, 10),  # unknown auction
    ]
    assert q4(stream) == [(10, 105.0), (12, 10.0)]
    assert q4(stream[::-1]) == q4(stream)
    assert q4([auction(5, 1, 0, reserve=1)]) == []


def test_q5_hot_items_per_sliding_window_with_ties():
    stream = [
        bid(1, 5, 0),
        bid(1, 5, 1999),
        bid(2, 5, 2000),
        bid(2, 5, 3999),
        bid(2, 5, 4000),  # not in [0, 4000)
        person(9, 100),
    ]
    assert q5(stream, size_ms=4000, slide_ms=2000) == [
        (-2000, 2000, 1, 2),
        (0, 4000, 1, 2),  # a tie: both auctions
        (0, 4000, 2, 2),
        (2000, 6000, 2, 3),
        (4000, 8000, 2, 1),
    ]
    # default windows of 10 s every 2 s: a bid at t=10,000 is in the windows starting 2,000 .. 10,000
    assert q5([bid(3, 1, 10_000)]) == [(s, s + 10_000, 3, 1) for s in range(2000, 10_001, 2000)]
    assert q5([]) == []
    with pytest.raises(ValueError, match="q5: size_ms and slide_ms must be > 0, got 10 and 0"):
        q5(stream, size_ms=10, slide_ms=0)


def test_q7_highest_bid_per_tumbling_window_with_ties():
    stream = [
        bid(1, 5, 0, bidder=11),
        bid(3, 7, 5000, bidder=13),
        bid(2, 7, 9999, bidder=12),
        bid(4, 1, 10_000, bidder=14),  # the next window
        bid(2, 7, 9998, bidder=12),  # the same bid twice: two results
        auction(5, 1, 3000),
    ]
    assert q7(stream) == [
        (0, 10_000, 2, 12, 7),
        (0, 10_000, 2, 12, 7),
        (0, 10_000, 3, 13, 7),
        (10_000, 20_000, 4, 14, 1),
    ]
    assert q7(stream, size_ms=5000) == [
        (0, 5000, 1, 11, 5),
        (5000, 10_000, 2, 12, 7),  # t=5000 opens the second window
        (5000, 10_000, 2, 12, 7),
        (5000, 10_000, 3, 13, 7),
        (10_000, 15_000, 4, 14, 1),
    ]


def test_q8_new_users_selling_in_their_registration_window():
    stream = [
        person(1, 1000, "Al"),
        auction(100, 1, 9999),  # same window [0, 10000)
        person(2, 9999, "Bo"),
        auction(101, 2, 10_000),  # the next window
        auction(102, 3, 20_500),  # before its seller registers, same window
        person(3, 21_000, "Cy"),
        auction(103, 3, 29_999),  # a second auction: still one result
        auction(104, 4, 30_000),
        person(4, 25_000, "Di"),  # registered in [20000, 30000), sold in [30000, 40000)
    ]
    assert q8(stream) == [(1, "Al", 0, 10_000), (3, "Cy", 20_000, 30_000)]
    assert q8(stream, size_ms=100_000) == [
        (1, "Al", 0, 100_000),
        (2, "Bo", 0, 100_000),
        (3, "Cy", 0, 100_000),
        (4, "Di", 0, 100_000),
    ]


def test_queries_on_generated_events_are_plausible():
    stream = events(20_000, NexmarkConfig())
    bids = [e for e in stream if e["type"] == "bid"]
    assert q0(stream) == bids and len(bids) == 18_400
    assert q1(stream)[0] == (
        bids[0]["auction"],
        bids[0]["bidder"],
        bids[0]["price"] * 89 // 100,
        bids[0]["date_time"],
    )
    selected = q2(stream)
    assert selected and all(a % 123 == 0 for a, _ in selected)
    joined = q3(stream)
    assert joined and {state for _, _, state, _ in joined} <= {"OR", "ID", "CA"}
    averages = q4(stream)
    assert averages and {c for c, _ in averages} <= set(range(10, 15))
    assert all(100 <= avg <= 10**8 for _, avg in averages)
    hot = q5(stream)
    # 2 s of event time from 2026-01-01: five 10 s windows every 2 s hold it; the hot auction leads
    assert len({(s, e) for s, e, _, _ in hot}) == 5 and all(a % 100 == 0 for _, _, a, _ in hot)
    highest = q7(stream)
    assert highest and highest[0][4] == max(b["price"] for b in bids)
    new_users = q8(stream)
    assert new_users and all(end - start == 10_000 for _, _, start, end in new_users)
    sellers = {a["seller"] for a in stream if a["type"] == "auction"}
    assert {person_id for person_id, _, _, _ in new_users} <= sellers
