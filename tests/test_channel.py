"""Conformance suite of data channels: every test runs over TCP and over a Unix socket.

The handshake of the rejection tests is written out by hand from the protocol in engine/channel.py's
docstring (not with the module's helpers), so a change of the wire format breaks these tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import os
import re
import socket
import struct
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgpack
import pytest

from engine.channel import Address, ChannelId, InputChannel
from engine.codec import PROTOCOL_VERSION, Batch, FrameKind, encode_batch, encode_frame, read_frame
from engine.data_server import DataServer
from engine.errors import AuthenticationError, ChannelBroken, ChannelClosed, ProtocolError
from engine.output_channel import OutputChannel, connect

JOB = "wc-1"
SECRET = b"wc-1 secret, 32 bytes long......"
CID = ChannelId("split/0", "count/1", 0)
OTHER = ChannelId("split/1", "count/1", 1)
STEP = 5.0  # bound of every single wait: a hang fails the test instead of stalling the suite


class Harness:
    """A started DataServer plus everything a test opens on it, all closed at teardown."""

    def __init__(self, server: DataServer, address: Address):
        self.server = server
        self.address = address
        self.label = f"unix:{address[1]}" if address[0] == "unix" else f"{address[1]}:{address[2]}"
        self.outputs: list[OutputChannel] = []
        self.writers: list[asyncio.StreamWriter] = []

    def input(self, cid: ChannelId = CID, *, window: int = 8, **kwargs: Any) -> InputChannel:
        channel = InputChannel(cid, window=window, **kwargs)
        self.server.register(JOB, channel)
        return channel

    async def connect(
        self, cid: ChannelId = CID, *, job: str = JOB, secret: bytes = SECRET, **kwargs: Any
    ) -> OutputChannel:
        out = await connect(self.address, job, cid, secret, timeout=STEP, **kwargs)
        self.outputs.append(out)
        return out

    async def raw(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self.address[0] == "unix":
            reader, writer = await asyncio.open_unix_connection(self.address[1])
        else:
            reader, writer = await asyncio.open_connection(self.address[1], self.address[2])
        self.writers.append(writer)
        return reader, writer

    async def raw_handshake(
        self, cid: ChannelId = CID, *, job: str = JOB, secret: bytes = SECRET
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, list[int]]:
        """Authenticate by hand; return the stream and the WELCOME [credits, last_seq]."""
        reader, writer = await self.raw()
        kind, body = await read_frame(reader, 4096)
        assert kind is FrameKind.CHALLENGE and len(body) == 18
        nonce, version = body[:16], struct.unpack(">H", body[16:])[0]
        assert version == PROTOCOL_VERSION
        signed = nonce + msgpack.packb([job, cid.src, cid.dst, cid.index])
        mac = hmac.new(secret, signed, hashlib.sha256).digest()
        writer.write(
            encode_frame(FrameKind.HELLO, msgpack.packb([version, job, cid.src, cid.dst, cid.index, mac]))
        )
        kind, body = await read_frame(reader, 4096)
        assert kind is FrameKind.WELCOME
        return reader, writer, msgpack.unpackb(body)

    def peer_of(self, writer: asyncio.StreamWriter) -> str:
        """How the server names a client connection in its log."""
        if self.address[0] == "unix":
            return f"unix peer pid {os.getpid()}"
        host, port = writer.get_extra_info("sockname")[:2]
        return f"{host}:{port}"

    async def aclose(self) -> None:
        for out in self.outputs:
            await out.aclose()
        for writer in self.writers:
            writer.transport.abort()
            await wait_closed(writer)
        await self.server.aclose()


@pytest.fixture(params=["tcp", "unix"])
def listen_address(request: pytest.FixtureRequest, tmp_path: Any) -> Address:
    if request.param == "tcp":
        return ("tcp", "127.0.0.1", 0)
    return ("unix", str(tmp_path / "data.sock"))


@pytest.fixture
def server_options() -> dict[str, Any]:
    return {}


@pytest.fixture
async def h(listen_address: Address, server_options: dict[str, Any]) -> AsyncIterator[Harness]:
    server = DataServer({JOB: SECRET}.get, **server_options)
    harness = Harness(server, await server.start(listen_address))
    try:
        yield harness
    finally:
        await harness.aclose()


async def wait_closed(writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError):
        await writer.wait_closed()


async def until(predicate: Callable[[], bool], what: str) -> None:
    async with asyncio.timeout(STEP):
        while not predicate():
            await asyncio.sleep(0.002)
    assert predicate(), what


async def take(channel: InputChannel) -> Batch:
    await until(lambda: channel.pending > 0, f"a batch on {channel.channel_id}")
    batch = channel.take()
    assert batch is not None
    return batch


async def read_until_eof(reader: asyncio.StreamReader) -> None:
    """The server dropped us: reading ends (EOF or reset) within the step bound."""
    async with asyncio.timeout(STEP):
        try:
            while await reader.read(65536):
                pass
        except ConnectionResetError:
            pass


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "stashflow.channel" and r.levelno == logging.WARNING
    ]


async def send_until_broken(out: OutputChannel) -> ChannelBroken:
    """Keep sending (taking no credit into account) until the sender notices the dead peer."""
    async with asyncio.timeout(STEP):
        seq = out.last_seq_acked_on_connect
        while True:
            seq += 1
            try:
                await out.send(Batch(seq, ["x"]))
            except ChannelBroken as exc:
                return exc
            await asyncio.sleep(0.005)


# -- delivery -------------------------------------------------------------------------------------------


async def test_fifo_order_over_thousands_of_batches(h: Harness):
    ready = asyncio.Event()
    channel = h.input(on_ready=ready.set)
    out = await h.connect()
    assert out.credits == 8 and out.last_seq_acked_on_connect == 0
    n = 3000

    async def produce() -> None:
        for seq in range(1, n + 1):
            await out.send(Batch(seq, [seq, f"r{seq}"], ingest_ns=seq * 10))
        await out.send_eos()

    producer = asyncio.create_task(produce())
    got: list[Batch] = []
    async with asyncio.timeout(STEP * 2):
        while not channel.finished:
            batch = channel.take()
            if batch is not None:
                got.append(batch)
            elif not channel.finished:
                ready.clear()
                await ready.wait()
    await producer
    assert [b.seq for b in got] == list(range(1, n + 1))
    assert all(b.records == (b.seq, f"r{b.seq}") and b.ingest_ns == b.seq * 10 for b in got)
    stats = channel.statistics()
    assert (stats.batches_received, stats.records_received, stats.pending) == (n, 2 * n, 0)
    sent = out.statistics()
    assert (sent.batches_sent, sent.records_sent) == (n, 2 * n)
    assert sent.bytes_sent == stats.bytes_received > 0
    assert channel.broken is None and channel.last_seq == n


async def test_backpressure_blocks_sender_at_window_and_taking_releases_it(h: Harness):
    held: list[int] = []
    channel = h.input(window=8)
    channel.on_ready = lambda: held.append(channel.pending)
    out = await h.connect()

    async def produce() -> None:
        for seq in range(1, 21):
            await out.send(Batch(seq, [seq]))

    producer = asyncio.create_task(produce())
    await until(lambda: channel.pending == 8, "a full window")
    await asyncio.sleep(0.05)  # room for a 9th batch, if anything let it through
    assert not producer.done() and channel.pending == 8
    assert out.statistics().batches_sent == 8 and out.credits == 0

    assert channel.take().seq == 1  # one credit owed: less than a credit batch (8 // 4 = 2)
    await asyncio.sleep(0.05)
    assert out.statistics().batches_sent == 8
    assert channel.take().seq == 2  # the second one returns both credits
    await until(lambda: out.statistics().batches_sent == 10, "two more batches")

    seqs = [1, 2]
    while seqs[-1] < 20:
        seqs.append((await take(channel)).seq)
    await producer
    assert seqs == list(range(1, 21)) and max(held) == 8
    assert out.statistics().backpressure_s > 0.05


async def test_end_of_stream_finishes_channel_after_its_batches(h: Harness):
    calls: list[int] = []
    channel = h.input(on_ready=lambda: calls.append(channel.pending))
    out = await h.connect()
    await out.send(Batch(1, ["a"]))
    await out.send(Batch(2, ["b"]))
    await out.send_eos()
    await until(lambda: len(calls) == 3, "two batches and the end of stream")
    assert not channel.finished
    assert [channel.take().records, channel.take().records] == [("a",), ("b",)]
    assert channel.finished and channel.take() is None and channel.broken is None
    with pytest.raises(
        ChannelClosed, match=r"output channel split/0->count/1#0 of job wc-1 already sent its end"
    ):
        await out.send(Batch(3, ["c"]))
    await out.aclose()  # returns once the receiver has read the EOS and closed: no breakage afterwards
    await asyncio.sleep(0.02)
    assert channel.broken is None and calls == [1, 2, 2]


async def test_send_after_aclose_is_channel_closed(h: Harness):
    h.input()
    out = await h.connect()
    await out.aclose()
    await out.aclose()
    with pytest.raises(
        ChannelClosed, match=r"^output channel split/0->count/1#0 of job wc-1 is closed; connect"
    ):
        await out.send(Batch(1, []))


async def test_concurrent_send_is_refused(h: Harness):
    channel = h.input(window=1)
    out = await h.connect()
    await out.send(Batch(1, []))
    blocked = asyncio.create_task(out.send(Batch(2, [])))
    await asyncio.sleep(0.02)
    with pytest.raises(
        RuntimeError, match=r"concurrent send\(\) from two tasks; one task must own a channel"
    ):
        await out.send(Batch(3, []))
    channel.take()
    await blocked
    assert (await take(channel)).seq == 2


# -- peer death ----------------------------------------------------------------------------------------


async def test_receiver_death_breaks_a_blocked_sender(h: Harness):
    h.input(window=2)
    out = await h.connect()
    await out.send(Batch(1, []))
    await out.send(Batch(2, []))
    blocked = asyncio.create_task(out.send(Batch(3, [])))
    await asyncio.sleep(0.02)
    assert not blocked.done()
    await h.server.aclose()
    with pytest.raises(ChannelBroken) as info:
        await asyncio.wait_for(blocked, STEP)
    assert isinstance(info.value.__cause__, OSError)
    assert str(info.value).startswith(f"channel split/0->count/1#0 of job wc-1 to {h.label} is broken: ")


async def test_receiver_death_breaks_a_sending_sender(h: Harness):
    h.input(window=1000)
    out = await h.connect()
    await out.send(Batch(1, ["x"]))
    await h.server.aclose()
    error = await send_until_broken(out)
    assert isinstance(error.__cause__, OSError)
    assert f"to {h.label} is broken" in str(error)


async def test_sender_death_marks_input_broken_and_keeps_received_batches(h: Harness):
    calls: list[str] = []
    channel = h.input(on_ready=lambda: calls.append("ready"))
    _, writer, welcome = await h.raw_handshake()
    assert welcome == [8, 0]
    writer.write(encode_batch(Batch(1, ["kept"])))
    await until(lambda: channel.pending == 1, "the batch")
    writer.transport.abort()  # the sending process dies without an end of stream
    await until(lambda: channel.broken is not None, "the breakage")
    assert isinstance(channel.broken, ChannelBroken) and isinstance(channel.broken.__cause__, OSError)
    assert calls == ["ready", "ready"]
    assert channel.take().records == ("kept",) and not channel.finished
    assert re.fullmatch(
        r"channel split/0->count/1#0 of job wc-1: the sender .+ was lost before end of stream \(.+\); "
        r"it must reconnect and resend after seq 1",
        str(channel.broken),
    )


# -- rejected connections -------------------------------------------------------------------------------


async def wrong_secret(h: Harness) -> str:
    with pytest.raises(AuthenticationError, match=r"dropped the connection after our HELLO"):
        await h.connect(secret=b"not the secret")
    return "hmac"


async def unknown_job(h: Harness) -> str:
    with pytest.raises(
        AuthenticationError, match=r"^channel split/0->count/1#0 of job wc-9: the data server"
    ):
        await h.connect(job="wc-9")
    return "unknown_job"


async def unknown_channel(h: Harness) -> str:
    with pytest.raises(AuthenticationError):
        await h.connect(ChannelId("split/7", "count/1", 3))
    return "unknown_channel"


def raw_case(data: bytes, reason: str) -> Callable[[Harness], Any]:
    async def case(h: Harness) -> str:
        reader, writer = await h.raw()
        writer.write(data)
        writer.write_eof()
        await read_until_eof(reader)
        return reason

    return case


REJECTIONS = {
    "wrong-hmac": (
        wrong_secret,
        r"HMAC check failed for channel split/0->count/1#0 of job wc-1 \(the peer does not hold this job's secret\)",
    ),
    "unknown-job": (
        unknown_job,
        r"unknown job wc-9 for channel split/0->count/1#0 \(no such job runs on this worker\)",
    ),
    "unknown-channel": (
        unknown_channel,
        r"no instance on this worker expects channel split/7->count/1#3 of job wc-1 \(not registered yet, "
        r"or already unregistered\)",
    ),
    "garbage": (
        raw_case(b"\x00\x00\x00\x03\x63zz", "protocol"),
        r"unknown frame kind 99 \(known: 1=CHALLENGE, .*\); is the peer a stashflow channel\?",
    ),
    "http": (
        raw_case(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "protocol"),
        r"frame of 1195725856 bytes exceeds the limit of 4096 bytes \(handshake frames are small; is the peer "
        r"a stashflow sender of the same version\?\)",
    ),
    "oversized": (
        raw_case(b"\x00\x10\x00\x00\x02" + b"\x00" * 100, "protocol"),
        r"frame of 1048576 bytes exceeds the limit of 4096 bytes",
    ),
    "not-hello": (raw_case(encode_frame(FrameKind.EOS, b""), "protocol"), r"expected a HELLO frame, got EOS"),
    "bad-hello": (
        raw_case(encode_frame(FrameKind.HELLO, msgpack.packb([1, "wc-1"])), "protocol"),
        r"malformed HELLO: expected \[version, job_id, src, dst, index, mac\], got \(1, 'wc-1'\)",
    ),
    "version": (
        raw_case(
            encode_frame(FrameKind.HELLO, msgpack.packb([99, "wc-1", "a/0", "b/0", 0, b"m" * 32])), "version"
        ),
        r"channel a/0->b/0#0 of job wc-1: the peer speaks channel protocol 99, this worker 2 \(run the same",
    ),
    "eof": (raw_case(b"", "eof"), r"the peer closed the connection before sending HELLO"),
}


@pytest.mark.parametrize("case", list(REJECTIONS), ids=list(REJECTIONS))
async def test_rejected_connection_is_dropped_logged_once_and_harms_no_one(
    h: Harness, caplog: pytest.LogCaptureFixture, case: str
):
    action, pattern = REJECTIONS[case]
    channel = h.input()
    out = await h.connect()
    await out.send(Batch(1, ["before"]))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="stashflow.channel"):
        reason = await action(h)
        await until(lambda: h.server.statistics().rejected == 1, "the rejection")
    [line] = warnings_of(caplog)
    peer = r"unix peer pid \d+" if h.address[0] == "unix" else r"127\.0\.0\.1:\d+"
    assert re.fullmatch(
        rf"data server {re.escape(h.label)}: dropped connection from {peer}: {pattern}.*", line
    ), line
    assert dict(h.server.statistics().rejected_reasons) == {reason: 1}
    await out.send(Batch(2, ["after"]))
    assert [(await take(channel)).records for _ in range(2)] == [("before",), ("after",)]
    assert channel.broken is None and h.server.statistics().accepted == 1


@pytest.mark.parametrize("server_options", [{"handshake_timeout": 0.1}])
async def test_silent_client_is_dropped_after_handshake_timeout(h: Harness, caplog: pytest.LogCaptureFixture):
    with caplog.at_level(logging.WARNING, logger="stashflow.channel"):
        reader, writer = await h.raw()
        await read_until_eof(reader)
    assert warnings_of(caplog) == [
        f"data server {h.label}: dropped connection from {h.peer_of(writer)}: no HELLO within handshake_timeout=0.1 s"
    ]
    assert dict(h.server.statistics().rejected_reasons) == {"timeout": 1}


# -- sequence numbers -----------------------------------------------------------------------------------


async def test_duplicates_are_dropped_and_their_credit_returned(h: Harness):
    channel = h.input(window=4)
    out = await h.connect()
    for seq in (1, 2, 1, 2, 3):
        await out.send(Batch(seq, [seq]))
    assert [(await take(channel)).seq for _ in range(3)] == [1, 2, 3]
    await until(lambda: out.credits == 4, "every credit back")
    stats = channel.statistics()
    assert (stats.duplicates_dropped, stats.batches_received, channel.last_seq) == (2, 3, 3)


async def test_sequence_gap_breaks_the_channel(h: Harness, caplog: pytest.LogCaptureFixture):
    calls: list[int] = []
    channel = h.input(on_ready=lambda: calls.append(1))
    out = await h.connect()
    await out.send(Batch(1, ["one"]))
    with caplog.at_level(logging.WARNING, logger="stashflow.channel"):
        await out.send(Batch(3, ["three"]))
        await until(lambda: channel.broken is not None, "the breakage")
    assert isinstance(channel.broken, ProtocolError)
    assert str(channel.broken) == (
        "sequence gap: expected seq 2, got 3 (batches were lost; the sender must resend from seq 2)"
    )
    assert len(calls) == 2 and channel.take().seq == 1 and channel.take() is None
    [line] = warnings_of(caplog)
    assert line.startswith(f"data server {h.label}: dropped connection from ")
    assert line.endswith(": channel split/0->count/1#0 of job wc-1: " + str(channel.broken))
    await send_until_broken(out)
    assert h.server.statistics().protocol_errors == 1


async def test_sender_exceeding_its_credits_breaks_the_channel(h: Harness):
    channel = h.input(window=2)
    reader, writer, welcome = await h.raw_handshake()
    assert welcome == [2, 0]
    writer.write(b"".join(encode_batch(Batch(seq, [])) for seq in (1, 2, 3)))
    await until(lambda: channel.broken is not None, "the breakage")
    assert str(channel.broken) == (
        "the sender exceeded its credits: batch seq 3 arrived while 2 batches are buffered and 0 credits "
        "unreturned (window 2)"
    )
    assert channel.pending == 2
    await read_until_eof(reader)


@pytest.mark.parametrize("server_options", [{"max_frame_bytes": 1000}])
async def test_batch_over_max_frame_bytes_breaks_the_channel(h: Harness):
    channel = h.input()
    out = await h.connect(compress_min_bytes=None)
    await out.send(Batch(1, ["x" * 2000]))
    await until(lambda: channel.broken is not None, "the breakage")
    assert re.fullmatch(
        r"frame of 20\d\d bytes exceeds the limit of 1000 bytes \(raise the max_frame_bytes setting on both "
        r"ends if frames this large are intended\)",
        str(channel.broken),
    )


# -- reconnection and lifecycle -------------------------------------------------------------------------


async def test_reconnect_replaces_the_old_connection_and_reports_last_seq(h: Harness):
    channel = h.input(window=8)
    first = await h.connect()
    for seq in (1, 2, 3):
        await first.send(Batch(seq, [seq]))
    await take(channel)
    await until(lambda: channel.pending == 2, "three batches")
    second = await h.connect()
    assert second.last_seq_acked_on_connect == 3
    assert second.credits == 8 - 2  # the two buffered batches still occupy their slots
    error = await send_until_broken(first)
    assert isinstance(error.__cause__, OSError)
    await second.send(Batch(3, ["resent"]))  # a resend of what the receiver holds is dropped
    await second.send(Batch(4, [4]))
    assert [(await take(channel)).seq for _ in range(3)] == [2, 3, 4]
    assert channel.broken is None and channel.statistics().duplicates_dropped >= 1
    assert h.server.statistics().connections == 1


async def test_reconnect_after_breakage_clears_it(h: Harness):
    channel = h.input()
    _, writer, _ = await h.raw_handshake()
    writer.write(encode_batch(Batch(1, [])))
    writer.transport.abort()
    await until(lambda: channel.broken is not None, "the breakage")
    out = await h.connect()
    assert channel.broken is None and out.last_seq_acked_on_connect == 1
    await out.send(Batch(2, []))
    assert [(await take(channel)).seq for _ in range(2)] == [1, 2]


async def test_unregister_closes_the_connection(h: Harness):
    channel = h.input()
    out = await h.connect()
    h.server.unregister(JOB, CID)
    h.server.unregister(JOB, CID)
    await send_until_broken(out)
    assert channel.broken is None and h.server.statistics().channels == 0
    with pytest.raises(AuthenticationError):
        await h.connect()


async def test_register_twice_is_refused(h: Harness):
    h.input()
    with pytest.raises(ValueError, match=r"channel split/0->count/1#0 of job wc-1 is already registered"):
        h.input()


async def test_input_channel_aclose(h: Harness):
    channel = h.input()
    out = await h.connect()
    await out.send(Batch(1, ["x"]))
    await until(lambda: channel.pending == 1, "the batch")
    await channel.aclose()
    assert channel.take().seq == 1
    with pytest.raises(
        ChannelClosed, match=r"^input channel split/0->count/1#0 is closed; take\(\) after aclose"
    ):
        channel.take()
    await send_until_broken(out)


async def test_connect_waits_for_a_server_that_is_still_starting(listen_address: Address):
    if listen_address[0] == "tcp":
        with socket.socket() as probe:  # a port nobody listens on, yet
            probe.bind(("127.0.0.1", 0))
            listen_address = ("tcp", "127.0.0.1", probe.getsockname()[1])
    server = DataServer({JOB: SECRET}.get)
    server.register(JOB, InputChannel(CID))

    async def start_late() -> None:
        await asyncio.sleep(0.15)
        await server.start(listen_address)

    async with server:
        starter = asyncio.create_task(start_late())
        out = await connect(listen_address, JOB, CID, SECRET, timeout=STEP)
        await starter
        await out.aclose()
        assert server.statistics().accepted == 1


async def test_connect_gives_up_after_timeout(listen_address: Address):
    if listen_address[0] == "tcp":
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            listen_address = ("tcp", "127.0.0.1", probe.getsockname()[1])
    where = re.escape(
        f"unix:{listen_address[1]}" if listen_address[0] == "unix" else f"127.0.0.1:{listen_address[2]}"
    )
    with pytest.raises(ChannelBroken) as info:
        await connect(listen_address, JOB, CID, SECRET, timeout=0.2)
    assert re.fullmatch(
        rf"channel split/0->count/1#0 of job wc-1: cannot connect to the data server at {where}: .+ \(is the "
        r"worker running\?\)",
        str(info.value),
    )
    assert isinstance(info.value.__cause__, OSError)


async def test_batch_over_max_frame_bytes_is_refused_by_the_sender(h: Harness):
    channel = h.input()
    out = await h.connect(max_frame_bytes=1000, compress_min_bytes=None)
    with pytest.raises(ProtocolError) as info:
        await out.send(Batch(1, ["x" * 2000]))
    assert re.fullmatch(
        r"channel split/0->count/1#0 of job wc-1: a batch of 1 records encodes to 20\d\d bytes, over "
        r"max_frame_bytes=1000; send smaller batches \(batch_size\) or raise max_frame_bytes on both ends",
        str(info.value),
    )
    await out.send(Batch(1, ["small"]))
    assert (await take(channel)).records == ("small",) and out.statistics().batches_sent == 1


async def test_connect_to_something_else_is_a_protocol_error(listen_address: Address):
    async def http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        await reader.read()  # until the client gives up
        writer.close()

    if listen_address[0] == "tcp":
        other = await asyncio.start_server(http, "127.0.0.1", 0)
        address: Address = ("tcp", "127.0.0.1", other.sockets[0].getsockname()[1])
    else:
        other = await asyncio.start_unix_server(http, listen_address[1])
        address = listen_address
    async with other:
        with pytest.raises(ProtocolError) as info:
            await connect(address, JOB, CID, SECRET, timeout=STEP)
    assert re.fullmatch(
        r"channel split/0->count/1#0 of job wc-1: handshake with the data server at \S+ failed: frame of "
        r"1213486160 bytes exceeds the limit of 4096 bytes \(handshake frames are small; .*\)",
        str(info.value),
    )


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"\x00\x00\x00", "malformed BATCH frame: body of 3 bytes is shorter than the 9-byte header"),
        (struct.pack(">BQ", 0, 1) + b"\xc1", "malformed BATCH frame (seq 1): records do not decode: "),
    ],
    ids=["header", "payload"],
)
async def test_malformed_batch_breaks_the_channel(
    h: Harness, caplog: pytest.LogCaptureFixture, body, message
):
    channel = h.input()
    reader, writer, _ = await h.raw_handshake()
    with caplog.at_level(logging.WARNING, logger="stashflow.channel"):
        writer.write(encode_frame(FrameKind.BATCH, body))
        await until(lambda: channel.pending or channel.broken, "the batch or the breakage")
        assert channel.take() is None  # a payload is only decoded when taken
        await read_until_eof(reader)
    assert isinstance(channel.broken, ProtocolError) and str(channel.broken).startswith(message)
    assert warnings_of(caplog) == [
        f"data server {h.label}: dropped connection from {h.peer_of(writer)}: channel split/0->count/1#0 of "
        f"job wc-1: {channel.broken}"
    ]
    assert channel.last_seq == 0  # a reconnecting sender resends the batch that did not decode
