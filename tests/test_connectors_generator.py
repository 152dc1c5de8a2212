"""GeneratorSource: record numbering across instances, offsets and replay, the rate limit."""

from __future__ import annotations

import asyncio
import time

import pytest
from support import read_all

from connectors import GeneratorSource
from engine.errors import ParameterError


@pytest.mark.parametrize("parallelism", [1, 2, 3, 7, 12])
async def test_instances_share_the_numbers_exactly_once(parallelism):
    source = GeneratorSource(lambda i: ("rec", i), count=10)
    parts = [await read_all(source.open(k, parallelism), batch=3) for k in range(parallelism)]
    for k, part in enumerate(parts):
        assert part == [("rec", i) for i in range(k, 10, parallelism)]
    assert sorted(r for part in parts for r in part) == [("rec", i) for i in range(10)]


async def test_exact_output_and_progress():
    source = GeneratorSource(lambda i: i * 10, count=7)
    assert source.bounded is True
    reader = source.open(index=1, parallelism=3)
    assert reader.progress() == (0, 2)
    assert await reader.read(1) == [10]
    assert reader.progress() == (1, 2)
    assert await reader.read(5) == [40]
    assert await reader.read(5) is None
    assert reader.progress() == (2, 2)
    assert await GeneratorSource(str, count=0).open(0, 1).read(5) is None


async def test_unbounded_source_goes_on():
    source = GeneratorSource(lambda i: -i)
    assert source.bounded is False
    reader = source.open(2, 4)
    assert await reader.read(3) == [-2, -6, -10]
    assert await reader.read(2) == [-14, -18]
    assert reader.offset() == 5
    assert reader.progress() is None


async def test_batch_hint_caps_one_read():
    reader = GeneratorSource(int, count=100, batch_hint=8).open(0, 1)
    assert await reader.read(50) == list(range(8))
    assert await reader.read(3) == [8, 9, 10]
    assert await reader.read(0) == []


async def test_offset_seek_and_read_exact_round_trip():
    source = GeneratorSource(lambda i: f"r{i}", count=50)
    reader = source.open(1, 2)
    first = await reader.read(4)
    offset = reader.offset()
    assert (first, offset) == (["r1", "r3", "r5", "r7"], 4)
    more = await reader.read(6)
    again = source.open(1, 2)
    again.seek(offset)
    assert await again.read(6) == more
    replay = source.open(1, 2)
    replay.seek(offset)
    assert await replay.read_exact(6) == more
    assert replay.offset() == reader.offset() == 10


async def test_read_exact_past_the_end():
    reader = GeneratorSource(int, count=5).open(0, 1)
    reader.seek(3)
    with pytest.raises(EOFError, match="GeneratorSource: stream ended after 2 of 4 records to replay"):
        await reader.read_exact(4)
    assert reader.offset() == 3


async def test_user_function_errors_propagate_and_keep_the_offset():
    def fn(i):
        if i == 5:
            raise ZeroDivisionError("boom at 5")
        return i

    reader = GeneratorSource(fn, count=10).open(0, 1)
    assert await reader.read(3) == [0, 1, 2]
    with pytest.raises(ZeroDivisionError, match="boom at 5"):
        await reader.read(5)
    assert reader.offset() == 3


async def test_rate_limit_paces_reads():
    reader = GeneratorSource(int, count=1000, rate=2000).open(0, 1)
    start = time.monotonic()
    got = await read_all(reader)
    elapsed = time.monotonic() - start
    assert got == list(range(1000))
    assert 0.3 <= elapsed <= 2.0


async def test_rate_is_shared_by_the_instances():
    # 2000/s for the whole source: each of 4 instances gets 500/s, so 250 records take ~0.5 s
    reader = GeneratorSource(int, rate=2000).open(3, 4)
    start = time.monotonic()
    got = []
    while len(got) < 250:
        got.extend(await reader.read(250 - len(got)))
    elapsed = time.monotonic() - start
    assert got == list(range(3, 1000, 4))
    assert 0.3 <= elapsed <= 2.0


async def test_slow_rate_returns_small_batches_promptly():
    reader = GeneratorSource(int, rate=40).open(0, 1)
    start = time.monotonic()
    batch = await reader.read(1000)
    elapsed = time.monotonic() - start
    assert 1 <= len(batch) <= 4  # one record is due after 25 ms; the read waits at most ~50 ms more
    assert elapsed < 0.5


async def test_a_reader_behind_its_schedule_catches_up_at_once_with_the_records_due_times():
    # 2000/s: a record is due every 0.5 ms; 0.3 s without reading leaves ~600 due
    reader = GeneratorSource(int, rate=2000, batch_hint=100).open(0, 1)
    assert await reader.read(100) == list(range(100))  # the schedule starts here: ~50 ms of waiting
    start_ns, before = reader.offset()[1], time.time_ns()
    assert abs(reader.ingest_ns() - before) < 40e6  # on schedule: the newest record fell due just now
    await asyncio.sleep(0.3)
    t0 = time.monotonic()
    batches = [await reader.read(100) for _ in range(3)]
    # due records are read without waiting (a paced read would take 0.1 s)
    assert time.monotonic() - t0 < 0.08
    assert [b[0] for b in batches] == [100, 200, 300] and all(len(b) == 100 for b in batches)
    # stamped with when record 399 fell due, ~0.1 s before now: the time it waited counts as latency
    assert reader.ingest_ns() == start_ns + 400 * 500_000
    assert time.time_ns() - reader.ingest_ns() > 50e6


async def test_a_restored_reader_keeps_the_schedule_of_the_one_it_replaces():
    first = GeneratorSource(int, rate=1000).open(1, 2)  # 500/s per instance: one every 2 ms
    await first.read(10)
    offset = first.offset()
    assert offset[0] == 10 and isinstance(offset[1], int)
    await asyncio.sleep(0.2)
    second = GeneratorSource(int, rate=1000).open(1, 2)
    second.seek(list(offset))  # as a checkpoint or a logged SOURCE hands it back, through msgpack
    t0 = time.monotonic()
    assert await second.read(50) == list(range(21, 121, 2))  # ~100 due already: no wait
    assert time.monotonic() - t0 < 0.08  # a paced read of 50 would take 0.1 s
    assert second.ingest_ns() == offset[1] + 60 * 2_000_000
    second.seek(offset)
    assert await second.read_exact(5) == list(range(21, 31, 2))
    assert second.ingest_ns() == offset[1] + 15 * 2_000_000


@pytest.mark.parametrize("offset", [-1, "3", (1, 2, 3), (1.5, None), (2, "x"), None])
def test_seeking_to_an_offset_no_reader_made_says_what_was_expected(offset):
    reader = GeneratorSource(int, rate=1000).open(0, 1)
    with pytest.raises(
        ValueError, match=r"^GeneratorSource: cannot seek to offset .*: expected a record count"
    ):
        reader.seek(offset)


async def test_without_a_rate_the_offset_is_a_count_and_batches_are_stamped_when_read():
    reader = GeneratorSource(int).open(0, 1)
    await reader.read(5)
    assert reader.offset() == 5 and reader.ingest_ns() is None
    reader.seek(2)
    assert await reader.read_exact(1) == [2]


async def test_read_exact_does_not_wait_for_the_rate_limit():
    reader = GeneratorSource(int, rate=1.0).open(0, 1)
    start = time.monotonic()
    assert await reader.read_exact(1000) == list(range(1000))
    assert time.monotonic() - start < 0.2


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"fn": 3}, "GeneratorSource: fn must be a callable taking the record number, got int"),
        ({"count": -1}, "GeneratorSource: count must be an int >= 0, or None for an endless stream; got -1"),
        (
            {"count": 2.5},
            "GeneratorSource: count must be an int >= 0, or None for an endless stream; got 2.5",
        ),
        (
            {"rate": 0},
            "GeneratorSource: rate must be a positive number of records per second, or None for no limit; got 0",
        ),
        (
            {"rate": float("inf")},
            "rate must be a positive number of records per second, or None for no limit; got inf",
        ),
        ({"batch_hint": 0}, "GeneratorSource: batch_hint must be an int >= 1, got 0"),
    ],
)
def test_bad_parameters(kwargs, message):
    kwargs = {"fn": str, **kwargs}
    with pytest.raises(ParameterError) as info:
        GeneratorSource(**kwargs)
    assert message in str(info.value)
