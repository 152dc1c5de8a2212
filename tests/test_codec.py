"""The channel wire format: batch round trips, frame reading, and the errors of bad input."""

from __future__ import annotations

import asyncio
import collections
import random
import struct
from typing import Any, NamedTuple

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.codec import (
    COMPRESS_MIN_BYTES,
    Batch,
    FrameKind,
    decode_batch,
    encode_batch,
    encode_frame,
    pack,
    read_frame,
    unpack,
)
from engine.errors import ProtocolError, SerializationError

# -- strategies ---------------------------------------------------------------------------------------

int64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
msgpack_ints = st.integers(min_value=-(2**63), max_value=2**64 - 1)
leaves = st.none() | st.booleans() | msgpack_ints | st.floats(allow_nan=False) | st.text() | st.binary()
keys = (
    st.none()
    | msgpack_ints
    | st.text(max_size=8)
    | st.binary(max_size=8)
    | st.tuples(st.text(max_size=4), int64)
)
records = st.recursive(
    leaves,
    lambda inner: (
        st.lists(inner, max_size=4) | st.tuples(inner, inner) | st.dictionaries(keys, inner, max_size=4)
    ),
    max_leaves=12,
)


def tuplify(value: Any) -> Any:
    """What a value becomes after a channel: every list or tuple (subclass) a plain tuple."""
    if isinstance(value, list | tuple):
        return tuple(tuplify(v) for v in value)
    if isinstance(value, dict):
        return {tuplify(k): tuplify(v) for k, v in value.items()}
    return value


def same(a: Any, b: Any) -> bool:
    """Equal *and* of the same types throughout: ``repr`` tells ``True``, ``1`` and ``1.0`` apart."""
    return repr(a) == repr(b)


def reader_of(data: bytes, *, eof: bool = True) -> asyncio.StreamReader:
    reader = asyncio.StreamReader()
    reader.feed_data(data)
    if eof:
        reader.feed_eof()
    return reader


# -- batch round trips ----------------------------------------------------------------------------------


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seq=st.integers(min_value=0, max_value=2**64 - 1),
    recs=st.lists(records, max_size=30),
    repeat=st.sampled_from([1, 1, 1, 200]),
    watermark=st.none() | int64,
    lineage=st.none() | st.binary(max_size=300),
    ingest_ns=st.none() | int64,
    compress_min_bytes=st.sampled_from([COMPRESS_MIN_BYTES, 0, None]),
)
def test_batch_round_trip(seq, recs, repeat, watermark, lineage, ingest_ns, compress_min_bytes):
    batch = Batch(seq, recs * repeat, watermark=watermark, lineage=lineage, ingest_ns=ingest_ns)
    frame = encode_batch(batch, compress_min_bytes=compress_min_bytes)
    size, kind = struct.unpack(">IB", frame[:5])
    assert size == len(frame) - 4 and kind == FrameKind.BATCH
    back = decode_batch(frame[5:])
    assert back.seq == seq and back.watermark == watermark and back.ingest_ns == ingest_ns
    assert back.lineage == lineage and (lineage is None or type(back.lineage) is bytes)
    assert type(back.records) is tuple
    assert same(back.records, tuplify(batch.records))


def test_large_batch_is_compressed_and_round_trips():
    recs = [(f"word{i % 50}", i % 7, "the same padding text") for i in range(5000)]
    plain = encode_batch(Batch(3, recs), compress_min_bytes=None)
    packed = encode_batch(Batch(3, recs))
    assert len(packed) < len(plain) // 4
    assert decode_batch(packed[5:]).records == decode_batch(plain[5:]).records == tuple(recs)


def test_incompressible_payload_is_sent_plain():
    noise = random.Random(7).randbytes(10_000)
    frame = encode_batch(Batch(1, [noise]), compress_min_bytes=16)
    assert frame == encode_batch(Batch(1, [noise]), compress_min_bytes=None)
    assert decode_batch(frame[5:]).records == (noise,)


def test_absent_optional_fields_cost_nothing():
    # prefix (5) + flags and seq (9) + payload: an empty msgpack array is one byte
    assert len(encode_batch(Batch(1, []))) == 5 + 9 + 1
    with_lineage = encode_batch(Batch(1, [], lineage=b"abc"))
    assert len(with_lineage) == 5 + 9 + 4 + 3 + 1


def test_lists_arrive_as_tuples_and_named_tuples_as_plain_tuples():
    class Point(NamedTuple):
        x: int
        y: int

    back = decode_batch(encode_batch(Batch(1, [[1, [2, 3]], Point(4, 5), {"k": [6]}]))[5:])
    assert back.records == ((1, (2, 3)), (4, 5), {"k": (6,)})
    assert type(back.records[1]) is tuple


def test_any_sequence_of_records_is_accepted():
    back = decode_batch(encode_batch(Batch(1, collections.deque(["a", "b"])))[5:])
    assert back.records == ("a", "b")


# -- unencodable records ------------------------------------------------------------------------------


def test_set_in_a_record_names_record_path_and_allowed_types():
    batch = Batch(9, ["ok", ("word", {1, 2})])
    with pytest.raises(SerializationError) as info:
        encode_batch(batch)
    assert str(info.value) == (
        "record 1 of batch seq 9 cannot cross a channel: it contains a value of type set at record[1] "
        "({1, 2}) in ('word', {1, 2}); records must be built of None, bool, int (64-bit), float, str, "
        "bytes, list, tuple and dict of those"
    )
    assert isinstance(info.value, TypeError)


def test_custom_object_deep_in_a_dict():
    class Sensor:
        def __repr__(self) -> str:
            return "<Sensor 7>"

    with pytest.raises(SerializationError, match=r"^record 0 of batch seq 1 cannot cross a channel: it contains "
                       r"a value of type \S*Sensor at record\['a'\]\[0\] \(<Sensor 7>\) in "
                       r"\{'a': \[<Sensor 7>\]\}; records must be built of None, bool"):  # fmt: skip
        encode_batch(Batch(1, [{"a": [Sensor()]}]))


def test_int_out_of_64_bit_range():
    with pytest.raises(SerializationError, match=r"record 0 of batch seq 2 .* an int outside the 64-bit range "
                       r"at record\[0\] \(18446744073709551616\)"):  # fmt: skip
        encode_batch(Batch(2, [[2**64]]))


def test_lone_surrogate_str():
    with pytest.raises(SerializationError, match=r"a str that is not valid UTF-8 \(a lone surrogate\)"):
        encode_batch(Batch(2, ["ok", "bad \ud800"]))


def test_header_out_of_range():
    with pytest.raises(
        SerializationError, match=r"batch header out of range \(seq=-1, .*seq must be an int in"
    ):
        encode_batch(Batch(-1, []))
    with pytest.raises(SerializationError, match=r"watermark=9223372036854775808"):
        encode_batch(Batch(1, [], watermark=2**63))


# -- pack / unpack --------------------------------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(value=records)
def test_pack_round_trip(value):
    assert same(unpack(pack(value)), tuplify(value))


def test_pack_error_names_the_path():
    with pytest.raises(SerializationError) as info:
        pack({"offsets": [1, frozenset({2})]})
    assert str(info.value) == (
        "cannot encode {'offsets': [1, frozenset({2})]}: value['offsets'][1] is a value of type frozenset "
        "(frozenset({2})); allowed: None, bool, int (64-bit), float, str, bytes, list, tuple and dict of those"
    )


def test_unpack_garbage():
    with pytest.raises(ProtocolError, match=r"^malformed msgpack value of 1 bytes: "):
        unpack(b"\xc1")
    with pytest.raises(ProtocolError, match=r"^malformed msgpack value of 2 bytes: .*"):
        unpack(b"\x01\x02")  # two values where one was expected


# -- malformed batch bodies -----------------------------------------------------------------------------


def body(flags: int, seq: int, rest: bytes) -> bytes:
    return struct.pack(">BQ", flags, seq) + rest


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x00\x00", "malformed BATCH frame: body of 2 bytes is shorter than the 9-byte header"),
        (body(0x40, 5, b"\x90"), "malformed BATCH frame (seq 5): unknown header flags 0x40"),
        (
            body(0x01, 5, b"\x00\x01"),
            "malformed BATCH frame (seq 5): body of 11 bytes too short for header flags 0x01",
        ),
        (
            body(0x04, 5, b"\x00\x00\x00\x09abc"),
            "malformed BATCH frame (seq 5): lineage of 9 bytes overruns the 16-byte body",
        ),
        (body(0, 5, b"\x07"), "malformed BATCH frame (seq 5): records decode to a int, not an array"),
        (body(0, 5, b"\x92\x01"), "malformed BATCH frame (seq 5): records do not decode: "),
        (body(0, 5, b"\x90\x90"), "malformed BATCH frame (seq 5): records do not decode: "),
        (body(0x08, 5, b"\x01"), "malformed BATCH frame (seq 5): compressed payload of 1 bytes"),
        (
            body(0x08, 5, b"\xff\xff\xff\x7fabcd"),
            "malformed BATCH frame (seq 5): claims 2147483647 uncompressed bytes for 8 compressed",
        ),
        (
            body(0x08, 5, b"\x10\x00\x00\x00garbage!"),
            "malformed BATCH frame (seq 5): lz4 payload does not decompress: ",
        ),
    ],
    ids=[
        "short",
        "flags",
        "short-watermark",
        "lineage",
        "not-array",
        "truncated",
        "extra",
        "lz4-short",
        "lz4-size",
        "lz4-corrupt",
    ],
)
def test_malformed_batch_body(data, message):
    with pytest.raises(ProtocolError) as info:
        decode_batch(data)
    assert str(info.value).startswith(message)


def test_unhashable_map_key_is_a_protocol_error():
    # a map used as a map key cannot be built in Python: the peer is broken, not our record
    with pytest.raises(ProtocolError, match=r"records do not decode: "):
        decode_batch(body(0, 1, b"\x91\x81\x81\x01\x02\x03"))


# -- frames ---------------------------------------------------------------------------------------------


async def test_read_frame_round_trip_of_every_kind():
    data = b"".join(encode_frame(kind, bytes([kind]) * kind) for kind in FrameKind)
    data += encode_frame(FrameKind.EOS, b"")
    reader = reader_of(data)
    for kind in FrameKind:
        assert await read_frame(reader, 100) == (kind, bytes([kind]) * kind)
    assert await read_frame(reader, 100) == (FrameKind.EOS, b"")
    with pytest.raises(asyncio.IncompleteReadError) as info:  # clean end, at a frame boundary
        await read_frame(reader, 100)
    assert info.value.partial == b""


async def test_oversized_frame_names_size_limit_and_setting():
    reader = reader_of(struct.pack(">IB", 70_000_000, FrameKind.BATCH), eof=False)
    with pytest.raises(ProtocolError) as info:
        await read_frame(reader, 64 * 1024 * 1024)
    assert str(info.value) == (
        "frame of 70000000 bytes exceeds the limit of 67108864 bytes (raise the max_frame_bytes setting on "
        "both ends if frames this large are intended)"
    )


async def test_oversized_frame_custom_hint():
    with pytest.raises(ProtocolError, match=r"^frame of 101 bytes exceeds the limit of 100 bytes \(tiny\)$"):
        await read_frame(reader_of(b"\x00\x00\x00\x65\x02"), 100, limit_hint="tiny")


async def test_empty_frame():
    with pytest.raises(
        ProtocolError, match=r"^empty frame \(length 0\): every frame has at least a kind byte$"
    ):
        await read_frame(reader_of(b"\x00\x00\x00\x00\x00"), 100)


async def test_unknown_kind():
    with pytest.raises(ProtocolError) as info:
        await read_frame(reader_of(b"\x00\x00\x00\x01\x63"), 100)
    assert str(info.value) == (
        "unknown frame kind 99 (known: 1=CHALLENGE, 2=HELLO, 3=WELCOME, 4=BATCH, 5=CREDIT, 6=EOS); "
        "is the peer a stashflow channel?"
    )


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x00\x00", "truncated frame: the stream ended after 2 of the 5 bytes of a frame header"),
        (b"\x00\x00\x00\x0a\x04abc", "truncated BATCH frame: the stream ended after 3 of 9 body bytes"),
    ],
    ids=["header", "body"],
)
async def test_truncated_frame_is_a_protocol_error_caused_by_the_eof(data, message):
    with pytest.raises(ProtocolError) as info:
        await read_frame(reader_of(data), 100)
    assert str(info.value) == message
    assert isinstance(info.value.__cause__, asyncio.IncompleteReadError)


def test_encode_frame_layout():
    assert encode_frame(FrameKind.CREDIT, b"\x00\x00\x00\x02") == b"\x00\x00\x00\x05\x05\x00\x00\x00\x02"
    assert msgpack.unpackb(encode_frame(FrameKind.HELLO, pack([1, "j"]))[5:]) == [1, "j"]


def test_cyclic_record():
    loop: list[Any] = ["a"]
    loop.append(loop)
    with pytest.raises(SerializationError, match=r"^record 0 of batch seq 4 cannot cross a channel: it contains "
                       r"nesting deeper than 500 levels \(a cycle\?\) at record(\[1\]){11}\[\.\.\. \(\['a', \[\.\.\.\]\]\) "):  # fmt: skip
        encode_batch(Batch(4, [loop]))
    with pytest.raises(SerializationError) as info:
        encode_batch(Batch(4, [loop]))
    assert len(str(info.value)) < 400
