"""Nexmark generator: determinism, the Beam event model, event-time disorder bound, the source reader."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import time
from collections import Counter

import msgpack
import pytest
from support import read_all

from connectors.nexmark import (
    BASE_TIME_MS,
    US_CITIES,
    US_STATES,
    NexmarkConfig,
    NexmarkSource,
    event,
    events,
    timestamp,
)
from engine.errors import ParameterError

STREAM = events(20_000)  # default config: 2 s of event time
#: sha256 of the JSON of the first 1000 events of the default config
PINNED_DIGEST = "810bb363fb1a05527313abe894880126263472eb8e4e7f83ad035212d4582458"


def test_event_is_a_pure_function_of_number_seed_and_config():
    config = NexmarkConfig(seed=42, max_out_of_order_ms=25, extra_size=8)
    numbers = [0, 1, 4, 49, 50, 51, 999, 123_456, 10**12]
    forward = [event(n, config) for n in numbers]
    backward = [event(n, config) for n in reversed(numbers)][::-1]
    interleaved = [(event(n, NexmarkConfig(seed=1)), event(n, config))[1] for n in numbers]
    assert forward == backward == interleaved
    assert [
        event(n, NexmarkConfig(seed=42, max_out_of_order_ms=25, extra_size=8)) for n in numbers
    ] == forward
    assert events(500) == STREAM[:500] == [event(n) for n in range(500)]
    other_seed = events(500, NexmarkConfig(seed=1))
    assert sum(a != b for a, b in zip(other_seed, STREAM[:500], strict=True)) > 450


def test_the_stream_is_the_same_in_another_process():
    # No hash randomization, no process state: a recovering worker regenerates the same events.
    code = (
        "import json; from connectors.nexmark import event, NexmarkConfig; "
        "print(json.dumps([event(n, NexmarkConfig(seed=9, max_out_of_order_ms=7)) for n in (0, 2, 77, 5000)]))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    expected = [event(n, NexmarkConfig(seed=9, max_out_of_order_ms=7)) for n in (0, 2, 77, 5000)]
    assert json.loads(out.stdout) == expected


def test_the_stream_is_pinned():
    # Results and benchmarks are compared across versions: changing the stream must be deliberate.
    digest = hashlib.sha256(json.dumps(STREAM[:1000], sort_keys=True).encode()).hexdigest()
    assert digest == PINNED_DIGEST
    assert (STREAM[4]["auction"], STREAM[4]["bidder"], STREAM[4]["price"]) == (1001, 1000, 1_262_626)


def test_proportions_follow_the_event_number():
    assert [e["type"] for e in STREAM[:50]] == ["person"] + ["auction"] * 3 + ["bid"] * 46
    for n, e in enumerate(STREAM):
        offset = n % 50
        assert e["type"] == ("person" if offset == 0 else "auction" if offset < 4 else "bid")
    assert Counter(e["type"] for e in STREAM) == {"person": 400, "auction": 1200, "bid": 18_400}


def test_ids_are_derived_from_the_event_number():
    persons = [e["id"] for e in STREAM if e["type"] == "person"]
    auctions = [e["id"] for e in STREAM if e["type"] == "auction"]
    assert persons == list(range(1000, 1400))
    assert auctions == list(range(1000, 2200))
    assert event(10**6 + 2)["id"] == 1000 + 3 * 20_000 + 1


@pytest.mark.parametrize(
    "config", [NexmarkConfig(), NexmarkConfig(seed=3, num_active_people=5, num_in_flight_auctions=2)]
)
def test_bids_and_auctions_refer_to_earlier_events(config):
    persons: set[int] = set()
    auctions: set[int] = set()
    for e in events(10_000, config):
        if e["type"] == "person":
            persons.add(e["id"])
        elif e["type"] == "auction":
            assert e["seller"] in persons
            auctions.add(e["id"])
            newest = e["id"]
        else:
            assert e["bidder"] in persons
            assert e["auction"] in auctions
            hot = (newest - 1000) // 100 * 100 + 1000
            assert e["auction"] == hot or e["auction"] >= newest - config.num_in_flight_auctions


def test_hot_auctions_bidders_and_sellers_are_skewed_like_beam():
    bids = [e for e in STREAM if e["type"] == "bid"]
    auctions = [e for e in STREAM if e["type"] == "auction"]
    # hot_auction_ratio 2: half the bids go to the first auction of the last batch of 100
    hot_auction = sum((b["auction"] - 1000) % 100 == 0 for b in bids) / len(bids)
    assert 0.45 < hot_auction < 0.6
    # the hot auction changes every 100 auctions (1666 events): 12 hot auctions in 20,000 events
    top = Counter(b["auction"] for b in bids).most_common(13)
    assert {a for a, _ in top[:12]} == set(range(1000, 2200, 100))
    assert top[11][1] > 20 * top[12][1]
    # hot_bidders_ratio 4: three bids in four by the second person of the batch (the first in epoch 0)
    hot_bidders = sum((b["bidder"] - 1000) % 100 == 1 for b in bids[46:]) / len(bids[46:])
    assert 0.7 < hot_bidders < 0.8
    hot_sellers = sum((a["seller"] - 1000) % 100 == 0 for a in auctions) / len(auctions)
    assert 0.7 < hot_sellers < 0.85
    flat = [
        e for e in events(5000, NexmarkConfig(hot_auction_ratio=1, hot_bidders_ratio=1)) if e["type"] == "bid"
    ]
    assert sum((b["auction"] - 1000) % 100 == 0 for b in flat) / len(flat) < 0.1


def test_field_values():
    for e in STREAM:
        assert msgpack.unpackb(msgpack.packb(e)) == e
        assert re.fullmatch(r"[a-z]{0,16}", e["extra"])
        if e["type"] == "person":
            assert e["state"] in US_STATES and e["city"] in US_CITIES
            assert re.fullmatch(r"[A-Z][a-z]+ [A-Z][a-z]+", e["name"])
            assert re.fullmatch(r"[a-z]{3,6}@[a-z]{3,4}\.com", e["email_address"])
            assert re.fullmatch(r"\d{4} \d{4} \d{4} \d{4}", e["credit_card"])
        elif e["type"] == "auction":
            assert 100 <= e["initial_bid"] <= 10**8 and e["initial_bid"] + 100 <= e["reserve"] <= 2 * 10**8
            assert 10 <= e["category"] <= 14
            # Beam's auction length: 1 + U[0, 2 * horizon), horizon = 1666 events = 166 ms at 10,000/s
            assert 1 <= e["expires"] - e["date_time"] <= 332
            assert len(e["item_name"]) <= 19 and len(e["description"]) <= 99
        else:
            assert 100 <= e["price"] <= 10**8
            assert e["channel"] and e["url"].startswith("https://www.nexmark.com/")
    prices = sorted(e["price"] for e in STREAM if e["type"] == "bid")
    assert (
        50_000 < prices[len(prices) // 2] < 200_000
    )  # log-uniform in [$1, $10^6]: the median is about $1000
    assert {e["category"] for e in STREAM if e["type"] == "auction"} == set(range(10, 15))
    assert {e["state"] for e in STREAM if e["type"] == "person"} == set(US_STATES)


def test_extra_size():
    assert {e["extra"] for e in events(500, NexmarkConfig(extra_size=0))} == {""}
    sizes = [len(e["extra"]) for e in events(2000, NexmarkConfig(extra_size=100))]
    assert max(sizes) <= 100 and 40 < sum(sizes) / len(sizes) < 60


def test_event_time_is_in_order_by_default():
    times = [timestamp(e) for e in STREAM]
    assert times == sorted(times)
    assert times[0] == BASE_TIME_MS == 1_767_225_600_000  # 2026-01-01T00:00:00Z
    assert all(t == BASE_TIME_MS + n // 10 for n, t in enumerate(times))  # 10,000 events per second
    assert timestamp(event(5000, NexmarkConfig(events_per_second=1000))) == BASE_TIME_MS + 5000
    assert timestamp(event(7, NexmarkConfig(events_per_second=1))) == BASE_TIME_MS + 7000


@pytest.mark.parametrize(("max_delay", "stride"), [(40, 1), (40, 3), (1000, 1)])
def test_out_of_order_events_are_at_most_max_out_of_order_ms_late(max_delay, stride):
    config = NexmarkConfig(max_out_of_order_ms=max_delay)
    newest = -1
    lateness = []
    for n in range(1, 20_000, stride):  # one instance's share of the stream when stride > 1
        t = timestamp(event(n, config))
        assert BASE_TIME_MS + n // 10 <= t <= BASE_TIME_MS + n // 10 + max_delay
        lateness.append(newest - t)
        newest = max(newest, t)
    assert max(lateness) <= max_delay
    assert max(lateness) > max_delay * 0.8  # the bound is nearly reached
    assert sum(x > 0 for x in lateness) > len(lateness) / 4


@pytest.mark.parametrize("parallelism", [1, 2, 3, 7])
async def test_instances_share_the_numbers_exactly_once(parallelism):
    source = NexmarkSource(count=500)
    parts = [await read_all(source.open(k, parallelism), batch=64) for k in range(parallelism)]
    for k, part in enumerate(parts):
        assert part == STREAM[k:500:parallelism]
    assert sum(len(p) for p in parts) == 500


async def test_offset_seek_read_exact_and_progress():
    config = NexmarkConfig(seed=5, max_out_of_order_ms=10)
    source = NexmarkSource(count=300, config=config, batch_hint=50)
    assert source.bounded is True and source.config is config
    reader = source.open(1, 2)
    assert reader.progress() == (0, 150)
    first = await reader.read(1000)  # batch_hint caps one read
    assert first == events(100, config)[1::2] and reader.offset() == 50
    more = await reader.read(20)
    again = source.open(1, 2)
    again.seek(50)
    assert await again.read(20) == more
    replay = source.open(1, 2)
    replay.seek(50)
    assert await replay.read_exact(20) == more
    assert replay.offset() == reader.offset() == 70 and reader.progress() == (70, 150)
    replay.seek(140)
    with pytest.raises(EOFError, match="stream ended after 10 of 11 records to replay"):
        await replay.read_exact(11)


async def test_unbounded_source_goes_on():
    source = NexmarkSource()
    assert source.bounded is False
    reader = source.open(2, 4)
    reader.seek(10**6)
    batch = await reader.read(3)
    assert batch == [event(2 + 4 * n) for n in range(10**6, 10**6 + 3)]
    assert reader.progress() is None


async def test_rate_limit_paces_reads():
    reader = NexmarkSource(count=1000, rate=2000).open(0, 1)
    start = time.monotonic()
    got = await read_all(reader)
    elapsed = time.monotonic() - start
    assert got == STREAM[:1000]
    assert 0.3 <= elapsed <= 2.0
    replay = NexmarkSource(rate=1.0).open(0, 1)
    start = time.monotonic()
    assert await replay.read_exact(500) == STREAM[:500]  # replay ignores the rate limit
    assert time.monotonic() - start < 0.5


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"seed": -1}, "NexmarkConfig: seed must be an int in [0, 18446744073709551615], got -1"),
        (
            {"events_per_second": 0},
            "NexmarkConfig: events_per_second must be an int in [1, 1000000000], got 0",
        ),
        (
            {"events_per_second": 10.5},
            "NexmarkConfig: events_per_second must be an int in [1, 1000000000], got 10.5",
        ),
        (
            {"max_out_of_order_ms": -5},
            "NexmarkConfig: max_out_of_order_ms must be an int in [0, 86400000], got -5",
        ),
        ({"extra_size": 5000}, "NexmarkConfig: extra_size must be an int in [0, 4096], got 5000"),
        ({"extra_size": True}, "NexmarkConfig: extra_size must be an int in [0, 4096], got True"),
        ({"hot_auction_ratio": 0}, "NexmarkConfig: hot_auction_ratio must be an int in [1, 1000], got 0"),
        ({"hot_bidders_ratio": "4"}, "NexmarkConfig: hot_bidders_ratio must be an int in [1, 1000], got '4'"),
        (
            {"hot_sellers_ratio": 1001},
            "NexmarkConfig: hot_sellers_ratio must be an int in [1, 1000], got 1001",
        ),
        ({"num_active_people": 0}, "NexmarkConfig: num_active_people must be an int in [1, 10000000], got 0"),
        (
            {"num_in_flight_auctions": 0},
            "NexmarkConfig: num_in_flight_auctions must be an int in [1, 1000000], got 0",
        ),
    ],
)
def test_bad_config(kwargs, message):
    with pytest.raises(ParameterError) as info:
        NexmarkConfig(**kwargs)
    assert str(info.value) == message


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"count": -1}, "NexmarkSource: count must be an int >= 0, or None for an endless stream; got -1"),
        (
            {"rate": 0},
            "NexmarkSource: rate must be a positive number of records per second, or None for no limit; got 0",
        ),
        ({"batch_hint": 0}, "NexmarkSource: batch_hint must be an int >= 1, got 0"),
        ({"config": {"seed": 1}}, "NexmarkSource: config must be a NexmarkConfig, got dict"),
    ],
)
def test_bad_source_parameters(kwargs, message):
    with pytest.raises(ParameterError) as info:
        NexmarkSource(**kwargs)
    assert str(info.value) == message
