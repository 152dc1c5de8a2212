"""The wire format of data channels: frames, batches and the msgpack rules records follow.

Every message on a channel is one **frame**::

    [u32 big-endian: length of the rest][u8 kind][body]

A ``BATCH`` body is a fixed binary header followed by the record payload::

    [u8 flags][u64 seq]
    [i64 watermark]               if flags & WATERMARK
    [i64 ingest_ns]               if flags & INGEST_NS
    [u64 checkpoint id]           if flags & BARRIER (a checkpoint barrier: ``--ft checkpoint``)
    [u32 n][n bytes lineage]      if flags & LINEAGE
    [payload]                     msgpack array of the records; an lz4 block (size stored) if flags & LZ4

The ``IDLE`` flag adds no field: the sender's event time is idle (:mod:`engine.event_time`), so the
receiver leaves this channel out of its watermark until the channel sends a batch without the flag.

The header is ``struct``-packed rather than msgpack-encoded: it is parsed once per batch, and optional
fields cost nothing when absent (the lineage delta of DESIGN.md §5 is ``None`` on most batches of a
job without failures in its causal past). The records are packed as one msgpack array in one call, so
the per-record cost is msgpack's C loop and nothing else: framework cost is paid per batch.

Records are decoded with ``use_list=False``: **lists become tuples across a channel** (and inside
state and control messages decoded with :func:`unpack`). Tuples are cheaper to build (a batch of
1000 ``(str, int, float)`` records decodes in ~95 us instead of ~123 us with lists), they are
hashable (they can be keys), and a record that was already a tuple comes back equal to itself. Dict keys may be any hashable msgpack value (ints,
tuples...), not only strings: peers are authenticated, so msgpack's ``strict_map_key`` hash-flooding
guard buys nothing here.

Allowed record types: ``None``, ``bool``, ``int`` (-2**63 .. 2**64-1), ``float``, ``str``, ``bytes``,
``list``, ``tuple`` and ``dict`` of those. Subclasses (named tuples, ``IntEnum``) are encoded as their
base type. Anything else raises :class:`SerializationError` naming the offending record; it is found
by walking the batch only after msgpack refused it, so the happy path pays nothing for the diagnosis.

>>> frame = encode_batch(Batch(seq=1, records=[("a", 1), ["b", 2]], watermark=10))
>>> decode_batch(frame[5:])
Batch(seq=1, records=(('a', 1), ('b', 2)), watermark=10, lineage=None, ingest_ns=None, barrier=None, idle=False)
"""

from __future__ import annotations

import asyncio
import enum
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import lz4.block
import msgpack

from engine.errors import ProtocolError, SerializationError, short_repr

__all__ = [
    "COMPRESS_MIN_BYTES",
    "FRAME_HEADER_BYTES",
    "MAX_FRAME_BYTES",
    "PROTOCOL_VERSION",
    "Batch",
    "FrameKind",
    "batch_seq",
    "decode_batch",
    "encode_batch",
    "encode_frame",
    "pack",
    "read_frame",
    "unpack",
]

#: Version of the channel protocol, exchanged in the handshake; bump it on any wire change.
PROTOCOL_VERSION = 2  # 2: the IDLE header flag

#: Default largest frame (kind + body) a reader accepts; the ``max_frame_bytes`` setting overrides it.
MAX_FRAME_BYTES = 64 * 1024 * 1024

#: Payloads at least this large are lz4-compressed when that shrinks them by 1/8 or more. Compressing
#: 8 KB of short strings costs ~13 us and decompressing ~3 us: it pays on a network, not on loopback.
COMPRESS_MIN_BYTES = 4096


class FrameKind(enum.IntEnum):
    """The kind byte of a frame. Values are wire format: never renumber, only append."""

    CHALLENGE = 1  # server -> client: 16-byte nonce + u16 protocol version
    HELLO = 2  # client -> server: msgpack [version, job_id, src, dst, index, mac]
    WELCOME = 3  # server -> client: msgpack [initial_credits, last_seq_received]
    BATCH = 4  # client -> server: a Batch (see the module docstring)
    CREDIT = 5  # server -> client: u32 number of batches the sender may send more
    EOS = 6  # client -> server: end of stream, empty body


_KINDS: dict[int, FrameKind] = {k.value: k for k in FrameKind}

_PREFIX = struct.Struct(">IB")  # length of the rest, kind
#: bytes before a frame's body: the length prefix and the kind
FRAME_HEADER_BYTES = _PREFIX.size
_U64 = struct.Struct(">Q")
_I64 = struct.Struct(">q")
_U32 = struct.Struct(">I")
_BODY_HEAD = struct.Struct(">BQ")  # flags, seq

# header flag bits
_F_WATERMARK = 0x01
_F_INGEST = 0x02
_F_LINEAGE = 0x04
_F_LZ4 = 0x08
_F_BARRIER = 0x10
_F_IDLE = 0x20
_F_KNOWN = _F_WATERMARK | _F_INGEST | _F_LINEAGE | _F_LZ4 | _F_BARRIER | _F_IDLE
_F_HEADER = _F_WATERMARK | _F_INGEST | _F_LINEAGE | _F_BARRIER  # the flags that add header fields

# One Struct per combination of optional header fields: the frame prefix and the whole header are packed
# with a single call. Field order: length, kind, flags, seq, [watermark], [ingest_ns], [barrier],
# [lineage length]. Indexed by ``flags & _F_HEADER`` (the LZ4 bit selects the same header as without it).
_HEADERS = tuple(
    struct.Struct(
        ">IBBQ"
        + ("q" if flags & _F_WATERMARK else "")
        + ("q" if flags & _F_INGEST else "")
        + ("Q" if flags & _F_BARRIER else "")
        + ("I" if flags & _F_LINEAGE else "")
    )
    for flags in range(_F_HEADER + 1)
)

_ALLOWED = "None, bool, int (64-bit), float, str, bytes, list, tuple and dict of those"


@dataclass(slots=True)
class Batch:
    """The unit of transfer and processing on a channel (DESIGN.md §2).

    ``seq`` is assigned by the sender per channel, 1, 2, 3...; the receiver drops duplicates and
    rejects gaps. ``records`` is a list or tuple when sent and always a tuple when received.
    ``watermark`` is event time in ms; ``lineage`` an opaque lineage-stash delta that round-trips
    byte-exact; ``ingest_ns`` the source's ingestion time (``time.time_ns()``) for latency metrics.
    ``barrier``, on a batch without records, is the id of the global checkpoint whose barrier it is
    (``--ft checkpoint``, :mod:`engine.global_checkpoint`): it flows in order with the data.
    ``idle``: the sender declared its event time idle (a logged decision at a source, §4).
    """

    seq: int
    records: Sequence[Any]
    watermark: int | None = None
    lineage: bytes | None = None
    ingest_ns: int | None = None
    barrier: int | None = None
    idle: bool = False


# -- frames ------------------------------------------------------------------------------------------


def encode_frame(kind: FrameKind, body: bytes) -> bytes:
    """A complete frame, length prefix included.

    >>> encode_frame(FrameKind.EOS, b"")
    b'\\x00\\x00\\x00\\x01\\x06'
    """
    return _PREFIX.pack(len(body) + 1, kind) + body


_DEFAULT_HINT = "raise the max_frame_bytes setting on both ends if frames this large are intended"


async def read_frame(
    reader: asyncio.StreamReader, max_bytes: int, *, limit_hint: str = _DEFAULT_HINT
) -> tuple[FrameKind, bytes]:
    """Read one frame; return its kind and body.

    Raises:
        asyncio.IncompleteReadError: clean end of stream, at a frame boundary (``partial == b""``).
        ProtocolError: an oversized, empty or unknown-kind frame, or a stream that ends inside a
            frame. A truncated frame is raised ``from`` the :class:`asyncio.IncompleteReadError`, so a
            caller can tell a peer that died mid-write from one that sent garbage.
        OSError: the connection failed (reset...).

    ``limit_hint`` ends the oversized-frame message: it tells the reader of the log how to fix it.
    """
    try:
        head = await reader.readexactly(5)
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            raise
        raise ProtocolError(
            f"truncated frame: the stream ended after {len(exc.partial)} of the 5 bytes of a frame header"
        ) from exc
    size, kind_byte = _PREFIX.unpack(head)
    if size > max_bytes:
        raise ProtocolError(f"frame of {size} bytes exceeds the limit of {max_bytes} bytes ({limit_hint})")
    if size == 0:
        raise ProtocolError("empty frame (length 0): every frame has at least a kind byte")
    kind = _KINDS.get(kind_byte)
    if kind is None:
        known = ", ".join(f"{k.value}={k.name}" for k in FrameKind)
        raise ProtocolError(
            f"unknown frame kind {kind_byte} (known: {known}); is the peer a stashflow channel?"
        )
    if size == 1:
        return kind, b""
    try:
        body = await reader.readexactly(size - 1)
    except asyncio.IncompleteReadError as exc:
        raise ProtocolError(
            f"truncated {kind.name} frame: the stream ended after {len(exc.partial)} of {size - 1} body bytes"
        ) from exc
    return kind, body


# -- batches -----------------------------------------------------------------------------------------


def encode_batch(batch: Batch, *, compress_min_bytes: int | None = COMPRESS_MIN_BYTES) -> bytes:
    """The complete ``BATCH`` frame of ``batch``, length prefix included, ready to write.

    The payload is lz4-compressed when it is at least ``compress_min_bytes`` long (``None``: never)
    and compression saves at least 1/8 of it.

    Raises:
        SerializationError: a record holds a value msgpack cannot encode, or a header field is out of
            range; the message names the record and the offending value.
    """
    records = batch.records
    if type(records) is not list and type(records) is not tuple:
        records = list(records)
    try:
        payload: bytes = msgpack.packb(records)
    except (TypeError, ValueError, OverflowError) as exc:
        raise _record_error(batch, exc) from None
    flags = 0
    fields: list[int] = [batch.seq]
    if batch.watermark is not None:
        flags |= _F_WATERMARK
        fields.append(batch.watermark)
    if batch.ingest_ns is not None:
        flags |= _F_INGEST
        fields.append(batch.ingest_ns)
    if batch.barrier is not None:
        flags |= _F_BARRIER
        fields.append(batch.barrier)
    if batch.idle:
        flags |= _F_IDLE
    lineage = batch.lineage
    if lineage is not None:
        flags |= _F_LINEAGE
        fields.append(len(lineage))
    if compress_min_bytes is not None and len(payload) >= compress_min_bytes:
        packed = lz4.block.compress(payload, store_size=True)
        if len(packed) <= len(payload) - (len(payload) >> 3):
            payload = packed
            flags |= _F_LZ4
    header = _HEADERS[flags & _F_HEADER]
    rest = header.size - 4 + len(payload) + (len(lineage) if lineage is not None else 0)
    try:
        head = header.pack(rest, FrameKind.BATCH, flags, *fields)
    except struct.error as exc:
        raise SerializationError(
            f"batch header out of range (seq={batch.seq!r}, watermark={batch.watermark!r}, "
            f"ingest_ns={batch.ingest_ns!r}): seq must be an int in 0..2**64-1, watermark and "
            f"ingest_ns ints in the signed 64-bit range ({exc})"
        ) from None
    if lineage is None:
        return head + payload
    return b"".join((head, lineage, payload))


def batch_seq(body: bytes | memoryview) -> int:
    """The ``seq`` of an encoded ``BATCH`` body, without decoding the rest (a receiver checks order first).

    >>> batch_seq(encode_batch(Batch(seq=42, records=["a"]))[5:])
    42
    """
    if len(body) < _BODY_HEAD.size:
        raise ProtocolError(
            f"malformed BATCH frame: body of {len(body)} bytes is shorter than the 9-byte header"
        )
    seq: int = _U64.unpack_from(body, 1)[0]
    return seq


def decode_batch(body: bytes | memoryview) -> Batch:
    """Decode the body of a ``BATCH`` frame (the frame without its length prefix and kind byte).

    Raises:
        ProtocolError: the body is malformed; the message says which part.
    """
    n = len(body)
    if n < _BODY_HEAD.size:
        raise ProtocolError(f"malformed BATCH frame: body of {n} bytes is shorter than the 9-byte header")
    flags, seq = _BODY_HEAD.unpack_from(body, 0)
    if flags & ~_F_KNOWN:
        raise ProtocolError(f"malformed BATCH frame (seq {seq}): unknown header flags 0x{flags:02x}")
    offset = _BODY_HEAD.size
    watermark = ingest_ns = barrier = None
    lineage = None
    view = memoryview(body)
    try:
        if flags & _F_WATERMARK:
            (watermark,) = _I64.unpack_from(body, offset)
            offset += 8
        if flags & _F_INGEST:
            (ingest_ns,) = _I64.unpack_from(body, offset)
            offset += 8
        if flags & _F_BARRIER:
            (barrier,) = _U64.unpack_from(body, offset)
            offset += 8
        if flags & _F_LINEAGE:
            (size,) = _U32.unpack_from(body, offset)
            offset += 4
            if offset + size > n:
                raise ProtocolError(
                    f"malformed BATCH frame (seq {seq}): lineage of {size} bytes overruns the {n}-byte body"
                )
            lineage = bytes(view[offset : offset + size])
            offset += size
    except struct.error:
        raise ProtocolError(
            f"malformed BATCH frame (seq {seq}): body of {n} bytes too short for header flags 0x{flags:02x}"
        ) from None
    raw = view[offset:]
    payload = _decompress(raw, seq) if flags & _F_LZ4 else raw
    try:
        records = msgpack.unpackb(payload, use_list=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises ValueError subclasses, TypeError (unhashable key)...
        raise ProtocolError(f"malformed BATCH frame (seq {seq}): records do not decode: {exc}") from None
    if type(records) is not tuple:
        raise ProtocolError(
            f"malformed BATCH frame (seq {seq}): records decode to a {type(records).__name__}, not an array"
        )
    return Batch(seq, records, watermark, lineage, ingest_ns, barrier, bool(flags & _F_IDLE))


def _decompress(payload: memoryview, seq: int) -> bytes:
    # store_size puts the uncompressed size first (u32 little-endian); check it before lz4 allocates it,
    # since lz4 cannot expand more than 255x a corrupt size would make us allocate gigabytes.
    if len(payload) < 4:
        raise ProtocolError(f"malformed BATCH frame (seq {seq}): compressed payload of {len(payload)} bytes")
    size = int.from_bytes(payload[:4], "little")
    if size > 255 * len(payload):
        raise ProtocolError(
            f"malformed BATCH frame (seq {seq}): claims {size} uncompressed bytes for {len(payload)} compressed"
        )
    try:
        return lz4.block.decompress(payload)  # type: ignore[no-any-return]
    except lz4.block.LZ4BlockError as exc:
        raise ProtocolError(
            f"malformed BATCH frame (seq {seq}): lz4 payload does not decompress: {exc}"
        ) from None


# -- values ------------------------------------------------------------------------------------------


def pack(value: Any) -> bytes:
    """msgpack ``value`` (a control message, a state value) with the record rules of this module.

    >>> unpack(pack({"k": [1, (2.5, None)], 7: b"x"}))
    {'k': (1, (2.5, None)), 7: b'x'}

    Raises:
        SerializationError: ``value`` holds something msgpack cannot encode.
    """
    try:
        data: bytes = msgpack.packb(value)
    except (TypeError, ValueError, OverflowError) as exc:
        found = _find_unencodable(value, "value")
        if found is None:
            raise SerializationError(
                f"cannot encode {short_repr(value)}: {exc}; allowed: {_ALLOWED}"
            ) from None
        path, leaf, problem = found
        raise SerializationError(
            f"cannot encode {short_repr(value)}: {path} is {problem} ({short_repr(leaf, 60)}); allowed: {_ALLOWED}"
        ) from None
    return data


def unpack(data: bytes | memoryview) -> Any:
    """Decode what :func:`pack` produced; arrays come back as tuples.

    Raises:
        ProtocolError: ``data`` is not one complete msgpack value.
    """
    try:
        return msgpack.unpackb(data, use_list=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises ValueError subclasses, TypeError (unhashable key)...
        raise ProtocolError(f"malformed msgpack value of {len(data)} bytes: {exc}") from None


def _record_error(batch: Batch, exc: BaseException) -> SerializationError:
    """Find the record msgpack refused; only ever called once encoding has failed."""
    for i, record in enumerate(batch.records):
        found = _find_unencodable(record, "record")
        if found is not None:
            path, leaf, problem = found
            where = "" if path == "record" else f" at {path}"
            return SerializationError(
                f"record {i} of batch seq {batch.seq} cannot cross a channel: it contains {problem}{where} "
                f"({short_repr(leaf, 60)}) in {short_repr(batch.records[i])}; records must be built of {_ALLOWED}"
            )
    return SerializationError(
        f"batch seq {batch.seq} cannot be encoded: {exc}; records must be built of {_ALLOWED}"
    )


_MAX_DEPTH = 500  # msgpack's own nesting limit is 511


def _find_unencodable(value: Any, path: str, depth: int = 0) -> tuple[str, Any, str] | None:
    """``(path, leaf, problem)`` of the first part of ``value`` msgpack cannot encode, else ``None``."""
    if value is None or isinstance(value, bool | float | bytes | bytearray | memoryview):
        return None
    if isinstance(value, int):
        if -(2**63) <= value < 2**64:
            return None
        return path, value, "an int outside the 64-bit range"
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return path, value, "a str that is not valid UTF-8 (a lone surrogate)"
        return None
    if depth >= _MAX_DEPTH:
        return path[:40] + "...", value, f"nesting deeper than {_MAX_DEPTH} levels (a cycle?)"
    if isinstance(value, list | tuple):
        for i, item in enumerate(value):
            found = _find_unencodable(item, f"{path}[{i}]", depth + 1)
            if found is not None:
                return found
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            found = _find_unencodable(key, f"{path} key {short_repr(key, 30)}", depth + 1)
            if found is None:
                found = _find_unencodable(item, f"{path}[{short_repr(key, 30)}]", depth + 1)
            if found is not None:
                return found
        return None
    kind = type(value)
    name = kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"
    return path, value, f"a value of type {name}"
