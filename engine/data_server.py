"""The server side of data channels: one :class:`DataServer` per worker process (DESIGN.md §2, §5).

The wire protocol, credit flow control and sequence numbers are described in :mod:`engine.channel`;
this module is the receiving worker's half of the handshake and the tasks that feed its
:class:`~engine.channel.InputChannel` objects.

Authentication: every accepted connection first gets a CHALLENGE with a fresh random nonce and must
answer with a HELLO within ``handshake_timeout``. The server checks the protocol version, asks
``secret_for(job_id)`` for the job's secret (``None``: this worker does not run the job) and compares
the HELLO's HMAC in constant time. Handshake frames are capped at a few KiB, so an unauthenticated peer
never makes the server buffer more.

Routing by channel id: each instance registers one input channel per input with
:meth:`~DataServer.register`, keyed by job id and channel id (by value: ``src``, ``dst``, ``index``).
An authenticated connection is bound to the channel its HELLO names and gets its WELCOME; then one
task per connection (the pump) reads its BATCH and EOS frames into that channel until end of stream,
a replacement, or a failure.

Replacing connections on reconnect: a second authenticated connection for a channel replaces the
first, whose socket is aborted at once, because a recovered sender must not wait for the death of its
predecessor's socket. Frames still read from the replaced connection are ignored, and the new one is
granted every window slot not held by a buffered batch.

Dropping strays: a connection that fails the handshake (timeout, early EOF, I/O error, malformed frame,
another protocol version, unknown job, bad HMAC, or a channel no instance has registered, yet or any
more) is dropped with one warning naming the peer, the job and channel if known, and the reason;
:meth:`DataServer.statistics` counts it by reason. An authenticated sender that breaks the protocol
loses its connection, and its channel keeps the :class:`~engine.errors.ProtocolError` as
:attr:`~engine.channel.InputChannel.broken`. Other channels are unaffected by either.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hmac
import logging
import os
import socket
import struct
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from engine.channel import (
    _CHALLENGE,
    _HANDSHAKE_HINT,
    _HANDSHAKE_MAX_BYTES,
    _STREAM_LIMIT,
    Address,
    ChannelId,
    InputChannel,
    _close_writer,
    _Connection,
    _format_address,
    _hello_mac,
)
from engine.codec import MAX_FRAME_BYTES, PROTOCOL_VERSION, FrameKind, encode_frame, pack, read_frame, unpack
from engine.errors import ChannelBroken, ChannelClosed, ProtocolError

__all__ = ["DataServer", "DataServerStatistics"]

# the logger of engine.channel, as before the split: operators and tests filter on its name
log = logging.getLogger("stashflow.channel")


def _key(job_id: str, cid: Any) -> tuple[str, str, str, int]:
    # keyed by value, not by ChannelId class: engine.plan builds its own equal-valued ids
    return (job_id, cid.src, cid.dst, cid.index)


def _peer_label(writer: asyncio.StreamWriter) -> str:
    peer = writer.get_extra_info("peername")
    if isinstance(peer, tuple) and len(peer) >= 2:
        host = peer[0]
        return f"[{host}]:{peer[1]}" if ":" in host else f"{host}:{peer[1]}"
    sock = writer.get_extra_info("socket")
    try:  # a Unix peer has no address; its pid is what an operator can act on
        pid, _, _ = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
        return f"unix peer pid {pid}"
    except (AttributeError, OSError):
        return "unix peer"


@dataclass(frozen=True)
class DataServerStatistics:
    """``rejected_reasons`` counts rejections by reason: timeout, eof, io, protocol, version,
    unknown_job, hmac, unknown_channel."""

    accepted: int  # connections that passed the handshake
    rejected: int  # connections dropped during the handshake
    rejected_reasons: Mapping[str, int]
    protocol_errors: int  # authenticated connections dropped for breaking the protocol
    connections: int  # authenticated connections open now
    channels: int  # input channels registered now


class _Reject(Exception):
    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


class DataServer:
    """Accepts the data connections of every instance one worker process hosts.

    ``secret_for(job_id)`` returns the job's channel secret, or ``None`` for a job this worker does not
    run. Connections authenticate per job; each is then bound to the registered :class:`InputChannel`
    it names and feeds it until end of stream, a replacement, or a failure.

    Usage::

        async with DataServer(secrets.get) as server:
            address = await server.start(("tcp", "127.0.0.1", 0))
            server.register("wc-1", InputChannel(ChannelId("split/0", "count/0", 0)))
    """

    def __init__(
        self,
        secret_for: Callable[[str], bytes | None],
        *,
        max_frame_bytes: int = MAX_FRAME_BYTES,
        handshake_timeout: float = 5.0,
    ):
        self._secret_for = secret_for
        self._max_frame_bytes = max_frame_bytes
        self._handshake_timeout = handshake_timeout
        self._channels: dict[tuple[str, str, str, int], InputChannel] = {}
        self._server: asyncio.Server | None = None
        self._address: Address | None = None
        self._label = "(not started)"
        self._handlers: set[asyncio.Task[Any]] = set()
        self._connections: set[_Connection] = set()
        self._closed = False
        self._accepted = self._protocol_errors = 0
        self._rejected: collections.Counter[str] = collections.Counter()

    @property
    def address(self) -> Address | None:
        """The bound address once started (the actual port when started on port 0)."""
        return self._address

    async def start(self, address: Address) -> Address:
        """Listen on ``address``; return the bound address. Use an IP address, not a name, for TCP."""
        if self._server is not None or self._closed:
            raise RuntimeError(f"data server {self._label} was already started; create a new one")
        if address[0] == "tcp" and len(address) == 3:
            server = await asyncio.start_server(self._serve, address[1], address[2], limit=_STREAM_LIMIT)
            host, port = server.sockets[0].getsockname()[:2]
            self._address = ("tcp", host, port)
        elif address[0] == "unix" and len(address) == 2:
            server = await asyncio.start_unix_server(self._serve, address[1], limit=_STREAM_LIMIT)
            self._address = ("unix", address[1])
        else:
            raise ValueError(
                f"unsupported data server address {address!r}: use ('tcp', host, port) or ('unix', path)"
            )
        self._server = server
        self._label = _format_address(self._address)
        return self._address

    def register(self, job_id: str, channel: InputChannel) -> None:
        """Accept connections for ``channel`` of job ``job_id`` from now on."""
        if self._closed:
            raise ChannelClosed(
                f"data server {self._label} is closed; cannot register channel {channel.channel_id}"
            )
        key = _key(job_id, channel.channel_id)
        known = self._channels.setdefault(key, channel)
        if known is not channel:
            raise ValueError(
                f"data server {self._label}: channel {channel.channel_id} of job {job_id} is already "
                "registered with another InputChannel; unregister it first"
            )

    def unregister(self, job_id: str, channel_id: ChannelId) -> None:
        """Stop accepting connections for the channel and close its connection. Idempotent."""
        channel = self._channels.pop(_key(job_id, channel_id), None)
        conn = channel._conn if channel is not None else None
        if channel is not None and conn is not None:
            channel._detach(conn)
            conn.transport.abort()

    def statistics(self) -> DataServerStatistics:
        return DataServerStatistics(
            accepted=self._accepted,
            rejected=sum(self._rejected.values()),
            rejected_reasons=types.MappingProxyType(dict(self._rejected)),
            protocol_errors=self._protocol_errors,
            connections=len(self._connections),
            channels=len(self._channels),
        )

    async def aclose(self) -> None:
        """Stop listening and close every connection. Registered channels stay intact. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._server is not None:
            self._server.close()
        # connections accepted just before close() get their handler task on the next iterations
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        handlers = set(self._handlers)
        for task in handlers:
            task.cancel()
        if handlers:
            await asyncio.wait(handlers)
        if self._server is not None:
            await self._server.wait_closed()
        if self._address is not None and self._address[0] == "unix":
            with contextlib.suppress(OSError):
                os.unlink(self._address[1])

    async def __aenter__(self) -> DataServer:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- connections ------------------------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """The task of one connection. It always ends normally: only :meth:`aclose` cancels it, and
        Python 3.11's stream machinery logs an error for a connection task that ends cancelled."""
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        conn: _Connection | None = None
        peer = _peer_label(writer)
        graceful = False
        try:
            if not self._closed:
                conn = await self._handshake(reader, writer, peer)
            if conn is not None:
                graceful = await self._pump(conn)
        except asyncio.CancelledError:
            pass
        except Exception:  # a bug, not a peer's fault: keep the server serving the other channels
            log.exception("data server %s: connection from %s failed unexpectedly", self._label, peer)
        if conn is not None:
            self._connections.discard(conn)
            conn.channel._detach(conn)
        try:
            await _close_writer(writer, abort=not graceful)
        except asyncio.CancelledError:
            writer.transport.abort()
        finally:
            self._handlers.discard(task)
            if conn is not None:
                conn.done.set()

    async def _handshake(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: str
    ) -> _Connection | None:
        nonce = os.urandom(16)
        writer.write(encode_frame(FrameKind.CHALLENGE, _CHALLENGE.pack(nonce, PROTOCOL_VERSION)))
        try:
            try:
                async with asyncio.timeout(self._handshake_timeout):
                    kind, body = await read_frame(reader, _HANDSHAKE_MAX_BYTES, limit_hint=_HANDSHAKE_HINT)
            except TimeoutError:
                raise _Reject(
                    "timeout", f"no HELLO within handshake_timeout={self._handshake_timeout} s"
                ) from None
            except asyncio.IncompleteReadError:
                raise _Reject("eof", "the peer closed the connection before sending HELLO") from None
            except ProtocolError as exc:
                raise _Reject("protocol", str(exc)) from None
            except OSError as exc:
                raise _Reject(
                    "io", f"the connection failed before HELLO ({type(exc).__name__}: {exc})"
                ) from None
            if kind is not FrameKind.HELLO:
                raise _Reject("protocol", f"expected a HELLO frame, got {kind.name}")
            version, job_id, cid, mac = _parse_hello(body)
            what = f"channel {cid} of job {job_id}"
            if version != PROTOCOL_VERSION:
                raise _Reject(
                    "version",
                    f"{what}: the peer speaks channel protocol {version}, this worker {PROTOCOL_VERSION} "
                    "(run the same stashflow version everywhere)",
                )
            secret = self._secret_for(job_id)
            if secret is None:
                raise _Reject(
                    "unknown_job", f"unknown job {job_id} for channel {cid} (no such job runs on this worker)"
                )
            if not hmac.compare_digest(mac, _hello_mac(secret, nonce, job_id, cid)):
                raise _Reject(
                    "hmac", f"HMAC check failed for {what} (the peer does not hold this job's secret)"
                )
            channel = self._channels.get(_key(job_id, cid))
            if channel is None or channel._closed:
                raise _Reject(
                    "unknown_channel",
                    f"no instance on this worker expects {what} (not registered yet, or already unregistered)",
                )
        except _Reject as rejection:
            self._rejected[rejection.reason] += 1
            log.warning("data server %s: dropped connection from %s: %s", self._label, peer, rejection)
            return None
        conn = _Connection(reader, writer, peer, job_id, channel, self._label)
        old, credits, last_seq = channel._attach(conn)
        if old is not None:
            log.info(
                "data server %s: %s from %s replaces the connection from %s",
                self._label,
                what,
                peer,
                old.peer,
                extra={"job": job_id, "instance": cid.dst, "sender": cid.src},
            )
            old.transport.abort()
        writer.write(encode_frame(FrameKind.WELCOME, pack([credits, last_seq])))
        self._connections.add(conn)
        self._accepted += 1
        return conn

    async def _pump(self, conn: _Connection) -> bool:
        """Read frames into the channel until end of stream (return True), replacement or failure."""
        channel = conn.channel
        reader = conn.reader
        limit = self._max_frame_bytes
        error: BaseException
        while True:
            try:
                kind, body = await read_frame(reader, limit)
                if kind is FrameKind.BATCH:
                    channel._on_batch(conn, body)
                elif kind is FrameKind.EOS:
                    # Nothing may follow EOS, and we close first: a sender that closed first could make a
                    # CREDIT write of ours fail, and a failed write discards what we had not read yet.
                    channel._on_eos(conn)
                    return True
                else:
                    raise ProtocolError(f"unexpected {kind.name} frame from a sender")
            except asyncio.IncompleteReadError:
                error = self._lost(conn, ConnectionResetError("the sender closed the connection"))
                break
            except OSError as exc:
                error = self._lost(conn, exc)
                break
            except ProtocolError as exc:
                if isinstance(exc.__cause__, asyncio.IncompleteReadError):  # died in the middle of a frame
                    error = self._lost(conn, ConnectionResetError(str(exc)))
                    break
                error = exc
                if channel._conn is conn:
                    self._protocol_errors += 1
                    log.warning(
                        "data server %s: dropped connection from %s: channel %s of job %s: %s",
                        self._label, conn.peer, channel.channel_id, conn.job_id, exc,
                        extra={"job": conn.job_id, "instance": channel.channel_id.dst,
                               "sender": channel.channel_id.src},
                    )  # fmt: skip
                break
            if channel._conn is not conn:  # replaced or unregistered: stop feeding the channel
                return False
        channel._on_lost(conn, error)
        return False

    def _lost(self, conn: _Connection, cause: OSError) -> ChannelBroken:
        """The error an input channel keeps when its sender's connection is lost before end of stream."""
        channel = conn.channel
        error = ChannelBroken(
            f"channel {channel.channel_id} of job {conn.job_id}: the sender {conn.peer} was lost before end of "
            f"stream ({type(cause).__name__}: {cause}); it must reconnect and resend after seq {channel.last_seq}"
        )
        error.__cause__ = cause  # as if raised ``from`` it: the input gate raises this error
        if channel._conn is conn and not channel._eos:
            log.warning("data server %s: %s", self._label, error, extra={
                "job": conn.job_id, "instance": channel.channel_id.dst, "sender": channel.channel_id.src,
            })  # fmt: skip
        return error


def _parse_hello(body: bytes) -> tuple[int, str, ChannelId, bytes]:
    try:
        hello = unpack(body)
    except ProtocolError as exc:
        raise _Reject("protocol", f"malformed HELLO: {exc}") from None
    if not (
        isinstance(hello, tuple)
        and len(hello) == 6
        and type(hello[0]) is int
        and all(type(v) is str for v in hello[1:4])
        and type(hello[4]) is int
        and hello[4] >= 0
        and type(hello[5]) is bytes
    ):
        raise _Reject(
            "protocol",
            f"malformed HELLO: expected [version, job_id, src, dst, index, mac], got {hello!r:.120}",
        )
    version, job_id, src, dst, index, mac = hello
    return version, job_id, ChannelId(src, dst, index), mac
