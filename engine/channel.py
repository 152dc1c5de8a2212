"""Authenticated, credit-flow-controlled FIFO channels between instances (DESIGN.md §2, §5).

A channel carries the batches of one upstream instance to one input of one downstream instance. The
receiving worker runs one :class:`~engine.data_server.DataServer` (the server side lives in
:mod:`engine.data_server`); each of its instances registers an :class:`InputChannel` per input. The
sending instance opens an :class:`OutputChannel` with :func:`connect`. Transports: TCP
(``("tcp", host, port)``) and Unix sockets (``("unix", path)``), with identical behaviour.

Handshake (every frame is :mod:`engine.codec`'s ``[u32 length][u8 kind][body]``)::

    server: CHALLENGE  16-byte random nonce + u16 protocol version
    client: HELLO      msgpack [version, job_id, src, dst, index, mac]
                       mac = HMAC-SHA256(job secret, nonce + msgpack [job_id, src, dst, index])
    server: WELCOME    msgpack [initial_credits, last_seq_received]

The nonce makes a recorded HELLO useless on another connection. The server checks the mac (in constant
time), that it knows the job and that a registered input expects the channel; on any failure it drops
the connection and logs one warning naming the peer, the job and channel if known, and the reason.
Other channels are unaffected. ``last_seq_received`` lets a reconnecting sender skip what the receiver
already holds (DESIGN.md §7.4). A second authenticated connection for a connected channel replaces the
first, which is closed: a recovered sender must not wait for the death of its predecessor's socket.

Flow control is by credits, one per batch: the receiver grants ``window`` credits, a sender spends one
per batch and blocks at zero, and the receiver returns credits as the instance takes batches. The
receiver therefore never holds more than ``window`` batches per input, and a slow consumer slows its
producers instead of growing memory. Credits are returned in groups of ``max(1, window // 4)`` (one
small frame per several batches), and always when the receiver's buffer runs empty, so the last
credits of a window can never be held back while the sender waits for them.

Sequence numbers make a channel safe to resend on: a batch with ``seq <= last_seq`` is a duplicate
(resent after a recovery) and dropped; ``seq > last_seq + 1`` means batches were lost, a protocol
error that breaks the channel.

Errors: :class:`ChannelBroken` (the peer died: raised ``from`` the ``OSError``) is not
:class:`ChannelClosed` (this side closed the channel and then used it: a bug). An instance must own an
:class:`OutputChannel` alone: sends from two tasks would interleave sequence numbers.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import hmac
import logging
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgpack

from engine.codec import (
    COMPRESS_MIN_BYTES,
    MAX_FRAME_BYTES,
    PROTOCOL_VERSION,
    Batch,
    FrameKind,
    batch_seq,
    decode_batch,
    encode_batch,
    encode_frame,
    pack,
    read_frame,
    unpack,
)
from engine.errors import AuthenticationError, ChannelBroken, ChannelClosed, ProtocolError

__all__ = [
    "Address",
    "ChannelId",
    "InputChannel",
    "InputChannelStatistics",
    "OutputChannel",
    "OutputChannelStatistics",
    "connect",
]

log = logging.getLogger("stashflow.channel")

#: Where a data server listens: ``("tcp", host, port)`` or ``("unix", path)``.
Address = tuple[str, str, int] | tuple[str, str]

_CHALLENGE = struct.Struct(">16sH")  # nonce, protocol version
_CREDIT = struct.Struct(">I")
_HANDSHAKE_MAX_BYTES = 4096  # HELLO is ~150 bytes: an unauthenticated peer never makes us buffer more
_HANDSHAKE_HINT = "handshake frames are small; is the peer a stashflow sender of the same version?"
_CONTROL_MAX_BYTES = 64  # the sender only ever reads CREDIT frames
_STREAM_LIMIT = 1 << 20  # StreamReader buffer before it pauses the socket: a few large batches
_HIGH_WATER = 256 * 1024  # sender awaits drain() above this many unsent bytes
_CLOSE_TIMEOUT = 5.0  # aclose() flushes for at most this long, then aborts
_EOS_FRAME = encode_frame(FrameKind.EOS, b"")


@dataclass(frozen=True, order=True)
class ChannelId:
    """One FIFO channel: from instance ``src`` to input number ``index`` of instance ``dst``.

    ``index`` is what the causal log records for ``RECV``, so it must be stable across restarts.

    >>> str(ChannelId("split/0", "count/1", 0))
    'split/0->count/1#0'
    """

    src: str
    dst: str
    index: int

    def __str__(self) -> str:
        return f"{self.src}->{self.dst}#{self.index}"


def _hello_mac(secret: bytes, nonce: bytes, job_id: str, cid: Any) -> bytes:
    # msgpack of (str, str, str, int) is canonical: one encoding per value, the same on both ends
    message = nonce + msgpack.packb([job_id, cid.src, cid.dst, cid.index])
    return hmac.new(secret, message, hashlib.sha256).digest()


def _format_address(address: Address) -> str:
    if len(address) == 2:
        return f"{address[0]}:{address[1]}"
    _, host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def _close_writer(writer: asyncio.StreamWriter, *, abort: bool) -> None:
    """Close a stream and wait until its socket is released (no unclosed-transport warnings)."""
    if abort:
        writer.transport.abort()
    else:
        writer.close()
    try:
        async with asyncio.timeout(_CLOSE_TIMEOUT):
            await writer.wait_closed()
    except TimeoutError:  # a peer that does not read: stop flushing to it
        writer.transport.abort()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    except OSError:  # the connection had already failed; closing is all we wanted
        pass


# -- receiving side ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class InputChannelStatistics:
    """``records_received`` counts the records of the batches taken: batches are decoded when taken."""

    batches_received: int
    records_received: int
    bytes_received: int
    duplicates_dropped: int
    pending: int


class _Connection:
    """A data connection that passed the handshake, owned by one data server task.

    It lives here rather than in :mod:`engine.data_server` because :class:`InputChannel` returns credits
    and drops connections through it: the server depends on this module, never the reverse.
    """

    __slots__ = ("channel", "done", "job_id", "peer", "reader", "server", "transport", "writer")

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        peer: str,
        job_id: str,
        channel: InputChannel,
        server: str,
    ):
        self.reader = reader
        self.writer = writer
        self.transport = writer.transport
        self.peer = peer
        self.job_id = job_id
        self.channel = channel
        self.server = server  # the data server's address, for log lines
        self.done = asyncio.Event()  # set once the socket is released

    def send_credit(self, credits: int) -> None:
        if not self.transport.is_closing():  # writing to a lost socket only makes asyncio log noise
            self.transport.write(encode_frame(FrameKind.CREDIT, _CREDIT.pack(credits)))


class InputChannel:
    """The receiving end of one channel: a bounded FIFO of received batches a data server fills.

    ``on_ready`` is called synchronously whenever a batch, the end of stream or a breakage arrives; the
    instance's input gate uses it to learn the arrival order across its inputs. It must not raise.
    ``last_seq`` is the last sequence number already held (from the instance's checkpoint on restart).
    A channel survives its connections: a sender that reconnects continues where the previous
    connection stopped, and a new connection clears :attr:`broken`.
    """

    def __init__(
        self,
        channel_id: ChannelId,
        *,
        window: int = 8,
        on_ready: Callable[[], None] | None = None,
        last_seq: int = 0,
    ):
        if not isinstance(window, int) or window < 1:
            raise ValueError(f"input channel {channel_id}: window must be an int >= 1, got {window!r}")
        self.channel_id = channel_id
        self.window = window
        self.on_ready = on_ready
        #: why the connection was lost before end of stream: a ChannelBroken (the sender died) or a
        #: ProtocolError (the sender broke the protocol); None while healthy
        self.broken: BaseException | None = None
        # encoded bodies: decoded by take(), in the consuming task, right before the batch is processed
        self._buffer: collections.deque[bytes] = collections.deque()
        self._credit_batch = max(1, window // 4)
        self._unreturned = 0  # credits owed to the sender of the current connection
        self._conn: _Connection | None = None
        self._last_seq = last_seq
        self._eos = False
        self._closed = False
        self._batches = self._records = self._bytes = self._duplicates = 0

    @property
    def pending(self) -> int:
        """Batches received and not yet taken."""
        return len(self._buffer)

    @property
    def finished(self) -> bool:
        """The end of stream arrived and every batch before it was taken."""
        return self._eos and not self._buffer

    @property
    def last_seq(self) -> int:
        """Sequence number of the last batch received (taken or not)."""
        return self._last_seq

    def take(self) -> Batch | None:
        """Pop and decode the oldest received batch and return its credit; ``None`` if none is buffered.

        Batches are decoded here rather than on arrival. The connection's task then does almost no work
        per frame, so it never decodes a whole window before the consumer gets to return a credit: the
        sender keeps sending while the consumer works. The window also stays compact (encoded bytes,
        not Python objects), and a batch is decoded right before it is processed, while its objects are
        hot in the CPU cache. A body that does not decode breaks the channel (:attr:`broken` is the
        :class:`ProtocolError`, the connection is dropped) and ``None`` is returned.

        Raises:
            ChannelClosed: the channel was closed with :meth:`aclose`.
        """
        if not self._buffer:
            if self._closed:
                raise ChannelClosed(
                    f"input channel {self.channel_id} is closed; take() after aclose() is a bug"
                )
            return None
        body = self._buffer.popleft()
        self._return_credit()
        try:
            batch = decode_batch(body)
        except ProtocolError as exc:
            # Drop what follows too and rewind last_seq, so that a reconnecting sender resends from
            # this batch on (WELCOME tells it) and the FIFO order holds.
            self._buffer.clear()
            self._last_seq = batch_seq(body) - 1
            conn = self._conn
            if conn is not None:
                log.warning(
                    "data server %s: dropped connection from %s: channel %s of job %s: %s",
                    conn.server, conn.peer, self.channel_id, conn.job_id, exc,
                )  # fmt: skip
                self._detach(conn)
                conn.transport.abort()
            self.broken = exc
            return None
        self._records += len(batch.records)
        return batch

    def statistics(self) -> InputChannelStatistics:
        return InputChannelStatistics(
            self._batches, self._records, self._bytes, self._duplicates, len(self._buffer)
        )

    async def aclose(self) -> None:
        """Close the current connection, if any; buffered batches can still be taken. Idempotent."""
        self._closed = True
        conn = self._conn
        if conn is not None:
            self._detach(conn)
            conn.transport.abort()
            await conn.done.wait()

    def __repr__(self) -> str:
        return f"<InputChannel {self.channel_id} pending={len(self._buffer)} last_seq={self._last_seq}>"

    # -- called by the DataServer (all synchronous: no other task runs in between) ---------------------

    def _return_credit(self) -> None:
        conn = self._conn
        if conn is None:  # the next connection's WELCOME accounts for the freed slot
            return
        self._unreturned += 1
        if self._unreturned >= self._credit_batch or not self._buffer:
            conn.send_credit(self._unreturned)
            self._unreturned = 0

    def _attach(self, conn: _Connection) -> tuple[_Connection | None, int, int]:
        """Make ``conn`` the current connection; return the replaced one and the WELCOME values."""
        old = self._conn
        self._conn = conn
        self._unreturned = 0
        self.broken = None
        # the new sender holds no credits: grant every slot not occupied by a buffered batch
        return old, self.window - len(self._buffer), self._last_seq

    def _detach(self, conn: _Connection) -> None:
        if self._conn is conn:
            self._conn = None

    def _on_batch(self, conn: _Connection, body: bytes) -> None:
        if conn is not self._conn:  # read from a replaced connection after it was replaced
            return
        seq = batch_seq(body)
        if seq <= self._last_seq:
            self._duplicates += 1
            self._return_credit()
            return
        if seq != self._last_seq + 1:
            raise ProtocolError(
                f"sequence gap: expected seq {self._last_seq + 1}, got {seq} (batches were lost; "
                f"the sender must resend from seq {self._last_seq + 1})"
            )
        if self._eos:
            raise ProtocolError(f"batch seq {seq} after end of stream")
        if len(self._buffer) + self._unreturned >= self.window:
            raise ProtocolError(
                f"the sender exceeded its credits: batch seq {seq} arrived while {len(self._buffer)} "
                f"batches are buffered and {self._unreturned} credits unreturned (window {self.window})"
            )
        self._buffer.append(body)
        self._last_seq = seq
        self._batches += 1
        self._bytes += len(body) + 5
        if self.on_ready is not None:
            self.on_ready()

    def _on_eos(self, conn: _Connection) -> None:
        if conn is not self._conn or self._eos:  # a recovered sender ends its stream again
            return
        self._eos = True
        if self.on_ready is not None:
            self.on_ready()

    def _on_lost(self, conn: _Connection, error: BaseException) -> None:
        if conn is not self._conn:
            return
        self._conn = None
        if self._eos:  # the sender closed after its end of stream: the normal end
            return
        self.broken = error
        if self.on_ready is not None:
            self.on_ready()


# -- sending side ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OutputChannelStatistics:
    batches_sent: int
    records_sent: int
    bytes_sent: int
    backpressure_s: float  # total time send() waited for a credit
    credits: int


class OutputChannel:
    """The sending end of one channel; open it with :func:`connect`.

    One task owns it (an instance's loop): :meth:`send` assigns nothing, it ships batches in call
    order, so concurrent sends would interleave sequence numbers and are refused. A background task
    reads the receiver's CREDIT frames; it is also how a dead receiver is noticed while waiting.
    """

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        channel_id: ChannelId,
        job_id: str,
        peer: str,
        credits: int,
        last_seq: int,
        max_frame_bytes: int,
        compress_min_bytes: int | None,
    ):
        self.channel_id = channel_id
        self.job_id = job_id
        self.peer = peer
        #: the last seq the receiver held when this connection was made: resend only what follows
        self.last_seq_acked_on_connect = last_seq
        self._reader = reader
        self._writer = writer
        self._transport = writer.transport
        self._transport.set_write_buffer_limits(high=_HIGH_WATER)
        self._compress_min_bytes = compress_min_bytes
        self._max_frame_bytes = max_frame_bytes
        self._credits = credits
        self._waiter: asyncio.Future[None] | None = None
        self._cause: BaseException | None = None  # why the connection is broken
        self._closed = False
        self._eos_sent = False
        self._batches = self._records = self._bytes = 0
        self._backpressure_s = 0.0
        self._credit_task = asyncio.create_task(self._read_credits(), name=f"stashflow credits {channel_id}")

    @property
    def credits(self) -> int:
        """Batches that may be sent now without waiting."""
        return self._credits

    async def send(self, batch: Batch) -> int:
        """Encode and send ``batch``, waiting for a credit if the receiver's window is full.

        Returns the frame size in bytes.

        Raises:
            SerializationError: a record cannot be encoded (nothing was sent).
            ProtocolError: the encoded batch exceeds ``max_frame_bytes`` (nothing was sent).
            ChannelBroken: the receiver died or the connection failed (``from`` the ``OSError``).
            ChannelClosed: the channel was closed, or its end of stream already sent.
        """
        frame = encode_batch(batch, compress_min_bytes=self._compress_min_bytes)
        await self.send_frame(frame, len(batch.records))
        return len(frame)

    async def send_frame(self, frame: bytes, records: int) -> None:
        """Send an already encoded ``BATCH`` frame (a resend from the output log); see :meth:`send`."""
        transport = self._transport
        if len(frame) - 4 > self._max_frame_bytes:
            raise ProtocolError(
                f"channel {self.channel_id} of job {self.job_id}: a batch of {records} records encodes to "
                f"{len(frame) - 4} bytes, over max_frame_bytes={self._max_frame_bytes}; send smaller "
                "batches (batch_size) or raise max_frame_bytes on both ends"
            )
        if self._credits <= 0 or self._cause is not None or self._closed or self._eos_sent:
            await self._acquire()
        elif transport.is_closing():
            self._check_usable()
        self._credits -= 1
        transport.write(frame)
        self._batches += 1
        self._records += records
        self._bytes += len(frame)
        if transport.get_write_buffer_size() > _HIGH_WATER:
            await self._drain()

    async def send_eos(self) -> None:
        """Send the end of stream (needs no credit). The channel accepts no batch afterwards."""
        self._check_usable()
        self._eos_sent = True
        self._transport.write(_EOS_FRAME)
        await self._drain()

    def statistics(self) -> OutputChannelStatistics:
        return OutputChannelStatistics(
            self._batches, self._records, self._bytes, self._backpressure_s, self._credits
        )

    def abort(self) -> None:
        """Drop the connection at once, unsent data and all, as if this process had died.

        Failure injection uses it (``engine.testing``): the receiver sees its sender lost before the
        end of stream. :meth:`aclose` must still be awaited afterwards to release the reader task.
        """
        self._transport.abort()

    async def aclose(self) -> None:
        """Flush what was written and close the connection. Idempotent.

        After :meth:`send_eos` this waits (at most a few seconds) until the receiver has read the end
        of stream and closed its side, so that the receiver never sees a connection lost before it.
        """
        if self._closed:
            return
        self._closed = True
        self._wake()
        if self._eos_sent and self._cause is None:
            # the receiver closes once it has read our EOS; closing before that could lose the EOS
            await asyncio.wait([self._credit_task], timeout=_CLOSE_TIMEOUT)
        self._credit_task.cancel()
        await asyncio.wait([self._credit_task])
        if not self._credit_task.cancelled():
            self._credit_task.result()  # surfaces a bug in the reader instead of losing it
        await _close_writer(self._writer, abort=False)

    async def __aenter__(self) -> OutputChannel:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"<OutputChannel {self.channel_id} to {self.peer} credits={self._credits}>"

    # -- internals ------------------------------------------------------------------------------------

    def _check_usable(self) -> None:
        if self._closed:
            raise ChannelClosed(
                f"output channel {self.channel_id} of job {self.job_id} is closed; connect() again to send"
            )
        if self._eos_sent:
            raise ChannelClosed(
                f"output channel {self.channel_id} of job {self.job_id} already sent its end of stream"
            )
        if self._cause is None and self._transport.is_closing():
            self._cause = ConnectionResetError("the connection was lost")
        if self._cause is not None:
            raise ChannelBroken(
                f"channel {self.channel_id} of job {self.job_id} to {self.peer} is broken: "
                f"{type(self._cause).__name__}: {self._cause}"
            ) from self._cause

    async def _acquire(self) -> None:
        """Wait for a credit; the slow path of :meth:`send_frame`."""
        self._check_usable()
        if self._credits > 0:
            return
        if self._waiter is not None:
            raise RuntimeError(
                f"output channel {self.channel_id}: concurrent send() from two tasks; one task must own a channel"
            )
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        try:
            while self._credits <= 0:
                self._waiter = loop.create_future()
                try:
                    await self._waiter
                finally:
                    self._waiter = None
                self._check_usable()
        finally:
            self._backpressure_s += time.perf_counter() - started

    async def _drain(self) -> None:
        try:
            await self._writer.drain()
        except OSError as exc:
            if self._cause is None:
                self._cause = exc
            self._check_usable()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _read_credits(self) -> None:
        cause: BaseException
        try:
            while True:
                kind, body = await read_frame(self._reader, _CONTROL_MAX_BYTES)
                if kind is not FrameKind.CREDIT or len(body) != _CREDIT.size:
                    raise ProtocolError(
                        f"expected a CREDIT frame from the receiver, got {kind.name} ({len(body)} bytes)"
                    )
                self._credits += _CREDIT.unpack(body)[0]
                self._wake()
        except asyncio.IncompleteReadError:
            cause = ConnectionResetError(
                "the receiver closed the connection (its worker stopped, it dropped the channel, or a newer "
                "connection replaced this one)"
            )
        except ProtocolError as exc:
            truncated = isinstance(exc.__cause__, asyncio.IncompleteReadError)
            cause = ConnectionResetError(str(exc)) if truncated else exc
        except OSError as exc:
            cause = exc
        if self._cause is None:
            self._cause = cause
        self._transport.abort()  # a receiver that broke the protocol gets nothing more from us
        self._wake()


async def connect(
    address: Address,
    job_id: str,
    channel_id: ChannelId,
    secret: bytes,
    *,
    max_frame_bytes: int = MAX_FRAME_BYTES,
    timeout: float = 10.0,
    compress_min_bytes: int | None = COMPRESS_MIN_BYTES,
) -> OutputChannel:
    """Open channel ``channel_id`` of job ``job_id`` to the data server at ``address``.

    A refused connection is retried with a short backoff until ``timeout``: the receiving worker may
    still be starting. ``compress_min_bytes`` is passed to :func:`engine.codec.encode_batch`: ``None``
    disables compression, which is what a loopback or Unix-socket channel wants. ``max_frame_bytes``
    must equal the receiver's setting: a larger batch is refused here, before it would break the
    channel there.

    Raises:
        ChannelBroken: the server could not be reached, or the handshake did not finish, in time.
        AuthenticationError: the server dropped the connection after our HELLO: it does not know the
            job, we do not hold the job's secret, or no instance there expects the channel.
        ProtocolError: the peer is not a stashflow data server of this protocol version.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    where = _format_address(address)
    what = f"channel {channel_id} of job {job_id}"
    reader, writer = await _open(address, deadline, f"{what}: cannot connect to the data server at {where}")
    hello_sent = False
    try:
        async with asyncio.timeout_at(deadline):
            kind, body = await read_frame(reader, _HANDSHAKE_MAX_BYTES, limit_hint=_HANDSHAKE_HINT)
            if kind is not FrameKind.CHALLENGE or len(body) != _CHALLENGE.size:
                raise ProtocolError(f"expected a CHALLENGE frame, got {kind.name}")
            nonce, version = _CHALLENGE.unpack(body)
            if version != PROTOCOL_VERSION:
                raise ProtocolError(
                    f"it speaks channel protocol {version}, we speak {PROTOCOL_VERSION} (run the same "
                    "stashflow version everywhere)"
                )
            mac = _hello_mac(secret, nonce, job_id, channel_id)
            hello = [PROTOCOL_VERSION, job_id, channel_id.src, channel_id.dst, channel_id.index, mac]
            writer.write(encode_frame(FrameKind.HELLO, pack(hello)))
            hello_sent = True
            kind, body = await read_frame(reader, _HANDSHAKE_MAX_BYTES, limit_hint=_HANDSHAKE_HINT)
            welcome = unpack(body) if kind is FrameKind.WELCOME else None
            if not (
                isinstance(welcome, tuple) and len(welcome) == 2 and all(type(v) is int for v in welcome)
            ):
                raise ProtocolError(f"expected a WELCOME frame, got {kind.name} {welcome!r:.80}")
    except TimeoutError as exc:
        await _close_writer(writer, abort=True)
        raise ChannelBroken(
            f"{what}: the data server at {where} did not complete the handshake in {timeout} s"
        ) from exc
    except (asyncio.IncompleteReadError, ConnectionError, ProtocolError) as exc:
        await _close_writer(writer, abort=True)
        dropped = isinstance(exc, asyncio.IncompleteReadError | ConnectionError) or isinstance(
            exc.__cause__, asyncio.IncompleteReadError
        )
        if dropped and hello_sent:
            raise AuthenticationError(
                f"{what}: the data server at {where} dropped the connection after our HELLO: it does not "
                "run this job, we do not hold the job's secret, or no instance there expects this channel "
                "(its log names the reason)"
            ) from exc
        if dropped:
            raise ChannelBroken(
                f"{what}: the data server at {where} closed the connection before the handshake"
            ) from exc
        raise ProtocolError(f"{what}: handshake with the data server at {where} failed: {exc}") from exc
    except BaseException:
        await _close_writer(writer, abort=True)
        raise
    credits, last_seq = welcome
    return OutputChannel(
        reader,
        writer,
        channel_id=channel_id,
        job_id=job_id,
        peer=where,
        credits=credits,
        last_seq=last_seq,
        max_frame_bytes=max_frame_bytes,
        compress_min_bytes=compress_min_bytes,
    )


async def _open(
    address: Address, deadline: float, failure: str
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect, retrying while the server is not listening yet (refused, or no socket file)."""
    loop = asyncio.get_running_loop()
    delay = 0.01
    while True:
        try:
            async with asyncio.timeout_at(deadline):
                if address[0] == "tcp" and len(address) == 3:
                    return await asyncio.open_connection(address[1], address[2], limit=_STREAM_LIMIT)
                if address[0] == "unix" and len(address) == 2:
                    return await asyncio.open_unix_connection(address[1], limit=_STREAM_LIMIT)
                raise ValueError(
                    f"unsupported channel address {address!r}: use ('tcp', host, port) or ('unix', path)"
                )
        except TimeoutError as exc:
            raise ChannelBroken(f"{failure}: timed out") from exc
        except (ConnectionRefusedError, FileNotFoundError) as exc:
            if loop.time() + delay >= deadline:
                raise ChannelBroken(f"{failure}: {exc.strerror or exc} (is the worker running?)") from exc
        except OSError as exc:
            raise ChannelBroken(f"{failure}: {type(exc).__name__}: {exc}") from exc
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.25)
