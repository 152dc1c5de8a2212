"""Determinants, their encoding, the causal log's positions and flushes, and the replay cursor."""

from __future__ import annotations

import re
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.causal_log import (
    CausalLog,
    Determinant,
    Kind,
    LogCursor,
    decode,
    describe,
    encode,
    flush,
    idle,
    now,
    rand,
    recv,
    source,
    timer,
)
from engine.errors import ProtocolError, SerializationError

# -- strategies ---------------------------------------------------------------------------------------

int64 = st.integers(min_value=-(2**63), max_value=2**64 - 1)
channels = st.integers(0, 3) | st.integers(0, 2**32)  # mostly the few channels of a real instance
offsets = st.recursive(
    st.none() | int64 | st.text(max_size=8) | st.binary(max_size=8),
    lambda inner: st.tuples(inner, inner) | st.tuples(st.text(max_size=4), int64, inner),
    max_leaves=6,
)
determinants = st.one_of(
    channels.map(recv),
    st.just(flush()),
    st.just(idle()),
    int64.map(now),
    int64.map(rand),
    int64.map(timer),
    st.builds(source, offsets, st.integers(0, 2**64 - 1)),
)
# runs: a determinant repeated, so that long RECV runs (and repeated FLUSHes) are common
logs = st.lists(st.tuples(determinants, st.integers(1, 1500)), max_size=12).map(
    lambda runs: [det for det, n in runs for _ in range(n)]
)


# -- encoding -----------------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(logs)
def test_decode_inverts_encode(dets: list[Determinant]) -> None:
    decoded = decode(encode(dets))
    assert decoded == dets
    assert all(type(d[0]) is Kind for d in decoded)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(1, 5000)), max_size=20))
def test_a_recv_run_costs_a_few_bytes_whatever_its_length(runs: list[tuple[int, int]]) -> None:
    merged: list[list[int]] = []  # adjacent runs on one channel are one run
    for ch, n in runs:
        if merged and merged[-1][0] == ch:
            merged[-1][1] += n
        else:
            merged.append([ch, n])
    dets = [recv(ch) for ch, n in merged for _ in range(n)]
    assert len(encode(dets)) <= 3 + 4 * len(merged)  # array header, then -n (<= 3 bytes) and channel


def test_encoding_sizes() -> None:
    assert len(encode([recv(0)] * 1000)) == 5
    assert len(encode([recv(0)] * 1_000_000)) == 7
    assert len(encode([recv(0), recv(0), recv(1)])) == 4
    assert encode([]) == b"\x90"
    assert msgpack.unpackb(encode([recv(2), recv(2), recv(2), flush(), recv(0)])) == [-3, 2, [2], 0]


def test_plain_int_tuples_encode_like_the_constructors() -> None:
    assert encode([(1, 0), (1, 0), (3, 7)]) == encode([recv(0), recv(0), now(7)])


def test_recv_tuples_are_shared() -> None:
    assert recv(3) is recv(3)
    assert decode(encode([recv(1)] * 3))[2] is recv(1)
    assert recv(5000) == (Kind.RECV, 5000)


def test_source_offsets_come_back_as_tuples() -> None:
    dets = decode(encode([source(["part-1", [4096, 2]], 100)]))
    assert dets == [(Kind.SOURCE, ("part-1", (4096, 2)), 100)]


def test_encode_refuses_an_unencodable_offset() -> None:
    with pytest.raises(SerializationError, match="determinants cannot be encoded"):
        encode([source(object(), 1)])


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\xc1", "malformed determinant list of 1 bytes"),
        (msgpack.packb({"a": 1}), "decodes to a dict, not an array"),
        (msgpack.packb([0, -3]), "a run of 3 RECVs at determinant 1 is not followed by a channel index"),
        (msgpack.packb([-3, -1]), "a run of 3 RECVs at determinant 0 is not followed by a channel index"),
        (msgpack.packb([-1, 0]), "a run of 1 RECVs at determinant 0"),
        (msgpack.packb([0, [9]]), "determinant 1: unknown determinant kind 9"),
        (
            msgpack.packb([[1, 0]]),
            "determinant 0 is RECV as an array (1, 0); RECV is encoded as its channel index",
        ),
        (msgpack.packb([[2, 5]]), "FLUSH takes 0 field"),
        (msgpack.packb([[3, "soon"]]), "TIME value must be a 64-bit int"),
        (msgpack.packb([[3, True]]), "TIME value must be a 64-bit int"),
        (msgpack.packb([[6, "o", -1]]), "SOURCE count must be an int >= 0"),
        (msgpack.packb([[6, "o"]]), "SOURCE takes 2 field"),
        (msgpack.packb([[]]), "a determinant is a non-empty tuple"),
        (msgpack.packb([1.5]), "determinant 0 is a float (1.5), not a channel index"),
        (msgpack.packb([True]), "determinant 0 is a bool"),
        (msgpack.packb([-(2**40), 0]), "expands past 16777216 entries"),
    ],
)
def test_decode_rejects_malformed_input(data: bytes, message: str) -> None:
    with pytest.raises(ProtocolError, match=re.escape(message)):
        decode(data)


def test_decode_limit_counts_single_entries_too() -> None:
    with pytest.raises(ProtocolError, match="expands past 4 entries"):
        decode(encode([recv(0), recv(1)] * 3), max_entries=4)
    assert len(decode(encode([recv(0)] * 4), max_entries=4)) == 4


def test_describe() -> None:
    assert describe(recv(2)) == "RECV(2)"
    assert describe(flush()) == "FLUSH"
    assert describe(timer(5)) == "TIMER(5)"
    assert describe((42, 1)) == "?42(1)"


# -- the log ------------------------------------------------------------------------------------------


def test_positions_count_every_recv_of_a_run() -> None:
    log = CausalLog(start=100, owner="count/1")
    assert [log.recv(0) for _ in range(3)] == [100, 101, 102]
    assert log.append(now(7)) == 103
    assert log.recv(1) == 104
    assert (log.start, log.end, len(log)) == (100, 105, 5)
    assert log.slice(102, 104) == [recv(0), now(7)]
    assert log.slice(104) == [recv(1)]
    assert log.slice(105) == []


def test_append_checks_and_normalises() -> None:
    log = CausalLog(owner="read/0")
    assert log.append((1, 3)) == 0 and log.slice(0)[0] is recv(3)
    log.append(source(["f", [1, 2]], 10))
    assert log.slice(1) == [(Kind.SOURCE, ("f", (1, 2)), 10)]  # what a recovered log will hold
    with pytest.raises(ValueError, match=r"unknown determinant kind 8 in \(8, 1\)"):
        log.append((8, 1))
    with pytest.raises(ValueError, match=r"IDLE takes 0 field\(s\), got \(7, 1\)"):
        log.append((7, 1))
    position = log.append((7,))
    assert log.slice(position) == [idle()]
    with pytest.raises(ValueError, match="RAND value must be a 64-bit int"):
        log.append(rand(2**64))
    with pytest.raises(SerializationError, match="read/0: a SOURCE offset cannot be logged"):
        log.append(source({1, 2}, 1))
    assert log.end == 3  # nothing half-logged


def test_slice_errors() -> None:
    log = CausalLog(start=10, owner="map/2")
    for ch in (0, 1, 0, 1):
        log.recv(ch)
    log.take_unflushed()
    log.prune(12)
    with pytest.raises(
        KeyError, match="causal log of map/2: positions before 12 were pruned, cannot slice from 11"
    ):
        log.slice(11)
    with pytest.raises(ValueError, match=r"cannot slice \[12, 15\) from a log that ends at 14"):
        log.slice(12, 15)
    with pytest.raises(ValueError, match=r"cannot slice \[13, 12\)"):
        log.slice(13, 12)


def test_prune() -> None:
    log = CausalLog(owner="map/0")
    for _ in range(5):
        log.recv(0)
    log.append(now(1))
    with pytest.raises(
        ValueError, match="cannot prune up to 3: entries from 0 were never flushed to the GCS"
    ):
        log.prune(3)
    assert log.take_unflushed(limit=4) == (0, [recv(0)] * 4)
    log.prune(4)
    log.prune(2)  # below start: nothing to do
    assert (log.start, log.end, log.slice(4)) == (4, 6, [recv(0), now(1)])
    with pytest.raises(ValueError, match="cannot prune up to 7"):
        log.prune(7)


def test_take_unflushed_hands_out_each_entry_once() -> None:
    log = CausalLog(start=50)
    assert log.take_unflushed() is None
    for ch in range(5):
        log.recv(ch)
    assert log.take_unflushed(limit=2) == (50, [recv(0), recv(1)])
    assert log.take_unflushed() == (52, [recv(2), recv(3), recv(4)])
    assert log.take_unflushed() is None
    log.append(flush())
    assert log.take_unflushed(limit=10) == (55, [flush()])
    assert log.statistics().unflushed == 0


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["log", "flush", "prune"]), st.integers(0, 30)), max_size=40))
def test_flushed_chunks_are_the_log(ops: list[tuple[str, int]]) -> None:
    log = CausalLog(start=7)
    truth: list[Determinant] = []
    chunks: list[Determinant] = []
    for op, k in ops:
        if op == "log":
            for i in range(k):
                det = recv(i % 3) if i % 4 else now(i)
                truth.append(det)
                assert log.append(det) == 7 + len(truth) - 1
        elif op == "flush":
            taken = log.take_unflushed(limit=k or None)
            if taken is not None:
                assert taken[0] == 7 + len(chunks)
                chunks.extend(taken[1])
        else:
            upto = min(log.start + k, 7 + len(chunks))
            log.prune(upto)
            assert log.start == max(upto, 7)
        assert chunks == truth[: len(chunks)]
        assert log.slice(log.start) == truth[log.start - 7 :]
        assert log.end == 7 + len(truth)


def test_statistics() -> None:
    log = CausalLog(owner="win/0")
    for _ in range(10):
        log.recv(0)
    log.append(now(1))
    log.append(source("x", 3))
    stats = log.statistics()
    assert (stats.owner, stats.start, stats.end, stats.entries, stats.unflushed) == ("win/0", 0, 12, 12, 12)
    assert stats.memory_bytes == 12 * 8 + 2 * 72
    log.take_unflushed()
    log.prune(11)
    assert log.statistics().memory_bytes == 8 + 72
    assert repr(log) == "<CausalLog win/0 [11, 12)>"


def test_a_log_starts_at_a_valid_position() -> None:
    with pytest.raises(ValueError, match="starts at a position >= 0"):
        CausalLog(-1)


# -- replay -------------------------------------------------------------------------------------------


def test_cursor_walks_the_recovered_log() -> None:
    cursor = LogCursor("count/1", [recv(1), now(42), recv(0)], start=1232)
    assert (cursor.position, cursor.end, cursor.exhausted) == (1232, 1235, False)
    assert cursor.peek() == recv(1) and cursor.position == 1232
    assert cursor.expect(Kind.RECV) == recv(1)
    assert cursor.next() == now(42)
    assert list(cursor) == [recv(0)]
    assert cursor.exhausted and cursor.peek() is None and cursor.position == 1235
    with pytest.raises(IndexError, match="the recovered log ends at position 1235; check `exhausted`"):
        cursor.expect(Kind.RECV)
    with pytest.raises(IndexError):
        cursor.next()


def test_cursor_reports_divergence() -> None:
    cursor = LogCursor("count/1", [recv(0), now(5)], start=1233)
    cursor.expect(Kind.RECV)
    message = (
        "replay of count/1 diverged at position 1234: the log says TIME but the instance asked for RECV; "
        "a user function is not deterministic (DESIGN.md §3)"
    )
    with pytest.raises(ProtocolError) as info:
        cursor.expect(Kind.RECV)
    assert str(info.value) == message
    assert cursor.position == 1234  # nothing consumed: the caller can still inspect
    assert cursor.expect(Kind.TIME) == now(5)


@settings(max_examples=50, deadline=None)
@given(logs)
def test_replaying_the_same_requests_exhausts_the_cursor(dets: list[Any]) -> None:
    cursor = LogCursor("x/0", decode(encode(dets)), start=3)
    for det in dets:
        assert cursor.expect(Kind(det[0])) == det
    assert cursor.exhausted and cursor.position == 3 + len(dets)
