"""Authenticated, credit-flow-controlled FIFO channels between instances (DESIGN.md §2, §5).

A channel carries the batches of one upstream instance to one input of one downstream instance. The
receiving worker runs one :class:`~engine.data_server.DataServer` (the server side lives in
:mod:`engine.data_server`); each of its instances registers an :class:`InputChannel` per input. The
sending instance opens an :class:`~engine.output_channel.OutputChannel` with
:func:`~engine.output_channel.connect` (the sending side lives in :mod:`engine.output_channel`).
Transports: TCP (``("tcp", host, port)``) and Unix sockets (``("unix", path)``), with identical
behaviour.

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
:class:`~engine.output_channel.OutputChannel` alone: sends from two tasks would interleave sequence
numbers.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import hmac
import logging
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgpack

from engine.codec import Batch, FrameKind, batch_seq, decode_batch, encode_frame
from engine.errors import ChannelClosed, ProtocolError

__all__ = ["Address", "ChannelId", "InputChannel", "InputChannelStatistics"]

log = logging.getLogger("stashflow.channel")

#: Where a data server listens: ``("tcp", host, port)`` or ``("unix", path)``.
Address = tuple[str, str, int] | tuple[str, str]

_CHALLENGE = struct.Struct(">16sH")  # nonce, protocol version
_CREDIT = struct.Struct(">I")
_HANDSHAKE_MAX_BYTES = 4096  # HELLO is ~150 bytes: an unauthenticated peer never makes us buffer more
_HANDSHAKE_HINT = "handshake frames are small; is the peer a stashflow sender of the same version?"
_STREAM_LIMIT = 1 << 20  # StreamReader buffer before it pauses the socket: a few large batches
_CLOSE_TIMEOUT = 5.0  # aclose() flushes for at most this long, then aborts


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

    def buffered_lineage(self) -> list[bytes]:
        """The lineage deltas of the batches received and not yet taken, oldest first.

        Recovery asks a receiver what it holds of a failed sender's log (DESIGN.md §7.2): what it has
        *received* counts, processed or not, because those batches will be processed, and the failed
        sender's next incarnation must follow the decisions they depend on. Decodes the buffered
        batches (a rare, recovery-time cost).
        """
        deltas = []
        for body in self._buffer:
            lineage = decode_batch(body).lineage
            if lineage is not None:
                deltas.append(lineage)
        return deltas

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
                    extra={"job": conn.job_id, "instance": self.channel_id.dst, "sender": self.channel_id.src},
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
