"""The sending side of a data channel: :func:`connect` opens an :class:`OutputChannel` (DESIGN.md §5).

The wire protocol (handshake, frames, credits, sequence numbers) is described in :mod:`engine.channel`,
which also holds the receiving side; this module is the sending instance's half. One task owns an
output channel: sends from two tasks would interleave sequence numbers, and are refused.

Credits and backpressure: the receiver's WELCOME grants one credit per free slot of its window.
:meth:`OutputChannel.send` spends one per batch and, at zero, waits until CREDIT frames return some;
the time spent waiting is ``backpressure_s`` in :meth:`OutputChannel.statistics`. A slow consumer thus
slows its producers instead of growing memory. A send also awaits the socket's ``drain()`` once more
than ``_HIGH_WATER`` bytes are unsent, so a peer that stops reading does not grow our buffers either.

Broken peers: a background task reads the CREDIT frames, and is also how a dead receiver is noticed
while a send waits for a credit. End of file, an I/O error or a frame that is not a CREDIT marks the
channel broken: the waiting or next send raises :class:`~engine.errors.ChannelBroken` ``from`` the
``OSError`` (or the :class:`~engine.errors.ProtocolError`). Using a channel that this side closed, or
whose end of stream it sent, raises :class:`~engine.errors.ChannelClosed` instead: that is a bug.

Reconnection: an :class:`OutputChannel` never reconnects; a broken one stays broken, and
:func:`connect` only retries while the server is not listening yet (a starting worker). With the
lineage stash (``--ft lineage``), :class:`~engine.lineage.LineageSender` catches ``ChannelBroken``,
waits for the receiver's next incarnation, opens a new channel with :func:`connect`, and resends from
its output log every batch after :attr:`OutputChannel.last_seq_acked_on_connect` (the receiver's
``last_seq`` from the WELCOME); the receiver drops any duplicate by its sequence number. In mode
``none`` a lost instance fails the job.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from engine.channel import (
    _CHALLENGE,
    _CLOSE_TIMEOUT,
    _CREDIT,
    _HANDSHAKE_HINT,
    _HANDSHAKE_MAX_BYTES,
    _STREAM_LIMIT,
    Address,
    ChannelId,
    _close_writer,
    _format_address,
    _hello_mac,
)
from engine.codec import (
    COMPRESS_MIN_BYTES,
    MAX_FRAME_BYTES,
    PROTOCOL_VERSION,
    Batch,
    FrameKind,
    encode_batch,
    encode_frame,
    pack,
    read_frame,
    unpack,
)
from engine.errors import AuthenticationError, ChannelBroken, ChannelClosed, ProtocolError

__all__ = ["OutputChannel", "OutputChannelStatistics", "connect"]

_CONTROL_MAX_BYTES = 64  # the sender only ever reads CREDIT frames
_HIGH_WATER = 256 * 1024  # sender awaits drain() above this many unsent bytes
_EOS_FRAME = encode_frame(FrameKind.EOS, b"")


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
    def eos_sent(self) -> bool:
        """Whether this connection carried the end of stream (it accepts nothing more)."""
        return self._eos_sent

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
        try:
            if self._eos_sent and self._cause is None:
                # the receiver closes once it has read our EOS; closing before that could lose the EOS
                await asyncio.wait([self._credit_task], timeout=_CLOSE_TIMEOUT)
            self._credit_task.cancel()
            await asyncio.wait([self._credit_task])
            if not self._credit_task.cancelled():
                self._credit_task.result()  # surfaces a bug in the reader instead of losing it
            await _close_writer(self._writer, abort=False)
        except asyncio.CancelledError:
            # cancelled while closing (the job is being cancelled): a second call returns at once, so
            # drop the connection now rather than leave its socket open
            self._credit_task.cancel()
            self._writer.transport.abort()
            raise

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
