"""Determinants and an instance's causal log (DESIGN.md §4).

A **determinant** records the outcome of one nondeterministic event of an instance, so that a replay
of that instance (§7.4) makes the identical decision. It is a plain tuple whose first item is a
:class:`Kind`: tuples are the cheapest Python object to build, compare and hash, and the ``RECV``
tuples, which are most of any log, are shared (one object per channel index), so logging one costs a
list append and nothing else.

==================================== =============================================================
``(Kind.RECV, channel)``             the next input batch was taken from input channel ``channel``
``(Kind.FLUSH,)``                    the flush timer sent partially filled output buffers
``(Kind.TIME, value_ns)``            what ``ctx.now()`` returned
``(Kind.RAND, seed)``                the seed ``ctx.random()`` was drawn from
``(Kind.TIMER, time_ns)``            a processing-time timer fired between two batches
``(Kind.SOURCE, offset, count)``     a source cut a batch of ``count`` records after ``offset``
``(Kind.IDLE,)``                     a source declared its event time idle (no records for its
                                     idle timeout): its watermark no longer holds back the job's
==================================== =============================================================

Build them with :func:`recv`, :func:`flush`, :func:`now`, :func:`rand`, :func:`timer`,
:func:`source` and :func:`idle`. A SOURCE offset is any msgpack value; like records on a channel, its lists come back
as tuples, and :meth:`CausalLog.append` normalises it so that the live log and a recovered one agree.

**Positions.** The causal log of an instance holds its own determinants in processing order. The
position of a determinant is the number of determinants the instance logged before it since the job
began: a restored instance's log starts at the position its checkpoint recorded (§6), and a replay
regenerates the same determinants at the same positions (§7.4), which is what lets the stashes of
other instances, the GCS and the replaying instance talk about the same entry.

**Encoding.** :func:`encode` writes one msgpack array of tokens; decoding is the inverse:

* an int ``c >= 0``: ``RECV(c)`` once (one byte for channels below 128);
* a negative int ``-n`` followed by an int ``c``: ``n >= 2`` consecutive ``RECV(c)``: an instance with
  one busy input logs long runs, and a run of any length costs two to six bytes;
* an array ``[kind, *fields]``: any other determinant (``[2]`` is FLUSH).

>>> dets = [recv(0), recv(0), recv(0), recv(1), flush(), now(1_700_000_000_000_000_000)]
>>> data = encode(dets)
>>> len(data), decode(data) == dets
(17, True)
>>> decode(encode([recv(0)] * 1000)) == [recv(0)] * 1000, len(encode([recv(0)] * 1000))
(True, 5)
>>> describe(source(("part-3", 4096), 100))
"SOURCE(('part-3', 4096), 100)"
"""

from __future__ import annotations

import enum
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import msgpack

from engine.codec import pack, unpack
from engine.errors import ProtocolError, SerializationError, short_repr

__all__ = [
    "MAX_DECODED_ENTRIES",
    "CausalLog",
    "Determinant",
    "Kind",
    "LogCursor",
    "LogStatistics",
    "decode",
    "describe",
    "encode",
    "flush",
    "idle",
    "now",
    "rand",
    "recv",
    "source",
    "timer",
]


class Kind(enum.IntEnum):
    """The kind of a determinant. Values are wire format: never renumber, only append."""

    RECV = 1
    FLUSH = 2
    TIME = 3
    RAND = 4
    TIMER = 5
    SOURCE = 6
    IDLE = 7


#: A determinant: a tuple ``(Kind, *fields)`` (see the module docstring for the shapes).
Determinant = tuple[Any, ...]

#: :func:`decode` refuses input that expands to more determinants than this (a corrupt run length must
#: not allocate gigabytes). 16 Mi entries is hours of batches; callers moving longer logs chunk them.
MAX_DECODED_ENTRIES = 1 << 24

_RECV = Kind.RECV
# One packer for the process: ``msgpack.packb`` builds a Packer per call, half the cost of packing a
# small list. Packing holds the GIL throughout (no ``default`` hook), so sharing it is safe.
_pack = msgpack.Packer().pack
_FLUSH: Determinant = (Kind.FLUSH,)
_IDLE: Determinant = (Kind.IDLE,)
_KINDS: tuple[Kind | None, ...] = (None, *Kind)  # code -> Kind, without the cost of Kind(code)
_ARITY = {Kind.FLUSH: 1, Kind.IDLE: 1, Kind.TIME: 2, Kind.RAND: 2, Kind.TIMER: 2, Kind.SOURCE: 3}
_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1  # what msgpack can carry

# The RECV determinants of the first channels are shared: logging one allocates nothing, a decoded run
# of 1000 is 1000 pointers to one tuple, and comparing two of them is an identity check.
_RECVS: tuple[Determinant, ...] = tuple((Kind.RECV, c) for c in range(1024))


# -- constructors ------------------------------------------------------------------------------------


def recv(channel: int) -> Determinant:
    """``RECV(channel)``: the instance took its next input batch from input channel ``channel``."""
    return _RECVS[channel] if 0 <= channel < 1024 else (_RECV, channel)


def flush() -> Determinant:
    """``FLUSH``: the flush timer (not a full buffer) sent the partially filled output buffers."""
    return _FLUSH


def idle() -> Determinant:
    """``IDLE``: a source produced nothing for its idle timeout and declared its event time idle."""
    return _IDLE


def now(value_ns: int) -> Determinant:
    """``TIME(value_ns)``: the processing time an operator read through ``ctx.now()``."""
    return (Kind.TIME, value_ns)


def rand(seed: int) -> Determinant:
    """``RAND(seed)``: the seed the random numbers of ``ctx.random()`` are drawn from."""
    return (Kind.RAND, seed)


def timer(time_ns: int) -> Determinant:
    """``TIMER(time_ns)``: a processing-time timer for ``time_ns`` fired between two batches."""
    return (Kind.TIMER, time_ns)


def source(offset_before: Any, count: int) -> Determinant:
    """``SOURCE(offset_before, count)``: a source cut a batch of ``count`` records after ``offset_before``."""
    return (Kind.SOURCE, offset_before, count)


def describe(det: Determinant) -> str:
    """A determinant as text for messages: ``RECV(0)``, ``FLUSH``, ``SOURCE(('f', 10), 100)``."""
    name = _kind_name(det[0])
    if len(det) == 1:
        return name
    return f"{name}({', '.join(short_repr(v, 60) for v in det[1:])})"


def _kind_name(code: Any) -> str:
    kind: Kind | None = _KINDS[code] if type(code) in (int, Kind) and 0 < code < len(_KINDS) else None
    if kind is not None:
        return kind.name
    return f"?{short_repr(code, 20)}"


def _check(det: Any) -> Determinant:
    """``det`` as a canonical determinant (a ``Kind`` first, shared RECV tuples); ValueError if malformed.

    Does not check that a SOURCE offset is msgpack-encodable: :meth:`CausalLog.append` does.
    """
    if type(det) is not tuple or not det:
        raise ValueError(f"a determinant is a non-empty tuple, not {short_repr(det, 60)}")
    code = det[0]
    kind = _KINDS[code] if type(code) in (int, Kind) and 0 < code < len(_KINDS) else None
    if kind is None:
        raise ValueError(f"unknown determinant kind {short_repr(code, 20)} in {short_repr(det, 60)}")
    if kind is _RECV:
        if len(det) == 2 and type(det[1]) is int and 0 <= det[1] <= _INT_MAX:
            return recv(det[1])
        raise ValueError(f"RECV takes one channel index (an int >= 0), got {short_repr(det, 60)}")
    if len(det) != _ARITY[kind]:
        raise ValueError(f"{kind.name} takes {_ARITY[kind] - 1} field(s), got {short_repr(det, 60)}")
    if kind is Kind.FLUSH:
        return _FLUSH
    if kind is Kind.IDLE:
        return _IDLE
    if kind is Kind.SOURCE:
        count = det[2]
        if type(count) is not int or not 0 <= count <= _INT_MAX:
            raise ValueError(f"SOURCE count must be an int >= 0, got {short_repr(det, 60)}")
        return det if code is kind else (kind, det[1], count)
    value = det[1]
    if type(value) is not int or not _INT_MIN <= value <= _INT_MAX:
        raise ValueError(f"{kind.name} value must be a 64-bit int, got {short_repr(det, 60)}")
    return det if code is kind else (kind, value)


# -- encoding ----------------------------------------------------------------------------------------


def encode(determinants: Sequence[Determinant]) -> bytes:
    """The compact msgpack encoding of ``determinants`` (see the module docstring).

    Consecutive equal RECVs become one run; for the shared RECV tuples the run test is an identity
    check, so the cost is ~20 ns per determinant plus one msgpack call.

    Raises:
        SerializationError: a SOURCE offset msgpack cannot encode (only if it bypassed
            :meth:`CausalLog.append`, which checks it).
    """
    tokens: list[Any] = []
    append = tokens.append
    run: Determinant | None = None  # the RECV being repeated, n times, on channel ch
    n = ch = 0
    for det in determinants:
        if det is run or det == run:
            n += 1
            continue
        if n == 1:
            append(ch)
        elif n:
            append(-n)
            append(ch)
        if det[0] == _RECV:
            run, ch, n = det, det[1], 1
        else:
            run, n = None, 0
            append(det)
    if n == 1:
        append(ch)
    elif n:
        append(-n)
        append(ch)
    try:
        data: bytes = _pack(tokens)
        return data
    except (TypeError, ValueError, OverflowError) as exc:
        raise SerializationError(f"determinants cannot be encoded: {exc}") from None


def decode(data: bytes | memoryview, *, max_entries: int = MAX_DECODED_ENTRIES) -> list[Determinant]:
    """The determinants :func:`encode` wrote, checked: ``decode(encode(x)) == x``.

    Raises:
        ProtocolError: ``data`` is not an encoded determinant list, holds a malformed determinant
            (the message says which determinant and what is wrong), or expands past ``max_entries``.
    """
    try:
        tokens = msgpack.unpackb(data, use_list=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises ValueError subclasses, TypeError (unhashable key)...
        raise ProtocolError(f"malformed determinant list of {len(data)} bytes: {exc}") from None
    if type(tokens) is not tuple:
        raise ProtocolError(f"malformed determinant list: decodes to a {type(tokens).__name__}, not an array")
    out: list[Determinant] = []
    append = out.append
    tokens_iter = iter(tokens)
    for token in tokens_iter:
        if type(token) is int:
            if token >= 0:
                append(_RECVS[token] if token < 1024 else (_RECV, token))
                continue
            ch = next(tokens_iter, None)
            if type(ch) is not int or ch < 0 or token == -1:
                raise ProtocolError(
                    f"malformed determinant list: a run of {-token} RECVs at determinant {len(out)} is not "
                    f"followed by a channel index (runs are -n, channel with n >= 2)"
                )
            if -token > max_entries - len(out):
                raise ProtocolError(
                    f"determinant list expands past {max_entries} entries (a run of {-token} RECVs at "
                    f"determinant {len(out)}): corrupt, or a log to move in chunks"
                )
            out.extend([_RECVS[ch] if ch < 1024 else (_RECV, ch)] * -token)
        elif type(token) is tuple:
            if token and token[0] == _RECV:  # canonical: RECVs are bare channel indexes
                raise ProtocolError(
                    f"malformed determinant list: determinant {len(out)} is RECV as an array "
                    f"{short_repr(token, 40)}; RECV is encoded as its channel index"
                )
            try:
                append(_check(token))
            except ValueError as exc:
                raise ProtocolError(f"malformed determinant list: determinant {len(out)}: {exc}") from None
        else:
            raise ProtocolError(
                f"malformed determinant list: determinant {len(out)} is a {type(token).__name__} "
                f"({short_repr(token, 40)}), not a channel index, a run or a determinant array"
            )
    if len(out) > max_entries:
        raise ProtocolError(f"determinant list expands past {max_entries} entries")
    return out


# -- the log -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LogStatistics:
    """A snapshot of a causal log, as the coordinator serves it."""

    owner: str
    start: int  # oldest retained position
    end: int  # next position
    entries: int  # retained: end - start
    unflushed: int  # not yet handed to the GCS flush
    memory_bytes: int  # estimate: a list slot each, plus the tuple of each non-RECV entry


_SLOT_BYTES = 8
_TUPLE_BYTES = 72  # a 2-3 tuple and its int: RECVs are shared, other determinants own theirs


class CausalLog:
    """An instance's own determinants, in processing order, from its last checkpoint on.

    Entries are retained until a checkpoint that covers them is complete (:meth:`prune`, DESIGN.md
    §6); meanwhile they are handed to the asynchronous GCS flush once each (:meth:`take_unflushed`,
    §5.3) and the instance's stash serves the not yet committed ones to receivers straight from here.

    >>> log = CausalLog(start=100, owner="count/1")
    >>> log.recv(0), log.recv(1), log.append(now(5))
    (100, 101, 102)
    >>> log.take_unflushed()
    (100, [(<Kind.RECV: 1>, 0), (<Kind.RECV: 1>, 1), (<Kind.TIME: 3>, 5)])
    >>> log.take_unflushed() is None
    True
    >>> log.prune(102); log.start, log.end
    (102, 103)
    """

    __slots__ = ("_entries", "_flushed", "_others", "_start", "owner")

    def __init__(self, start: int = 0, *, owner: str = "this instance"):
        if type(start) is not int or start < 0:
            raise ValueError(f"a causal log starts at a position >= 0, not {start!r}")
        self.owner = owner
        self._entries: list[Determinant] = []
        self._start = start  # position of _entries[0]
        self._flushed = start  # positions below were handed to the GCS flush
        self._others = 0  # retained non-RECV entries, for the memory estimate

    @property
    def start(self) -> int:
        """The oldest retained position (entries before it were pruned)."""
        return self._start

    @property
    def end(self) -> int:
        """The position the next determinant will have."""
        return self._start + len(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def recv(self, channel: int) -> int:
        """Log ``RECV(channel)`` and return its position: the fast path, once per input batch."""
        entries = self._entries
        entries.append(_RECVS[channel] if 0 <= channel < 1024 else _check((_RECV, channel)))
        return self._start + len(entries) - 1

    def append(self, det: Determinant) -> int:
        """Log ``det`` and return its position.

        Raises:
            ValueError: ``det`` is not a well-formed determinant.
            SerializationError: a SOURCE offset msgpack cannot encode (the message names it).
        """
        det = _check(det)
        if det[0] is Kind.SOURCE:
            # what is logged is what a recovered log will hold: lists become tuples, as on a channel
            try:
                offset = unpack(pack(det[1]))
            except SerializationError as exc:
                raise SerializationError(f"{self.owner}: a SOURCE offset cannot be logged: {exc}") from None
            det = (Kind.SOURCE, offset, det[2])
        if det[0] is not _RECV:
            self._others += 1
        entries = self._entries
        entries.append(det)
        return self._start + len(entries) - 1

    def slice(self, start: int, end: int | None = None) -> list[Determinant]:
        """A copy of the entries at positions ``start`` (inclusive) to ``end`` (exclusive, default: all).

        Raises:
            KeyError: ``start`` was pruned (the entries are in the GCS, if anywhere).
            ValueError: ``end`` is beyond :attr:`end`, or ``start > end``.
        """
        stop = self.end if end is None else end
        if start < self._start:
            raise KeyError(
                f"causal log of {self.owner}: positions before {self._start} were pruned, "
                f"cannot slice from {start}"
            )
        if stop > self.end or start > stop:
            raise ValueError(
                f"causal log of {self.owner}: cannot slice [{start}, {stop}) from a log that ends at "
                f"{self.end}"
            )
        return self._entries[start - self._start : stop - self._start]

    def prune(self, upto: int) -> None:
        """Drop the entries before position ``upto``: a checkpoint at ``upto`` is complete (DESIGN.md §6).

        Raises:
            ValueError: ``upto`` is beyond :attr:`end`, or covers entries never handed to the GCS flush
                (a checkpoint cannot be complete while its causal past is not committed).
        """
        if upto <= self._start:
            return
        if upto > self._flushed:
            raise ValueError(
                f"causal log of {self.owner}: cannot prune up to {upto}: entries from {self._flushed} "
                f"were never flushed to the GCS (log ends at {self.end})"
            )
        k = upto - self._start
        dropped = self._entries[:k]
        self._others -= sum(1 for det in dropped if det[0] is not _RECV)
        del self._entries[:k]
        self._start = upto

    def take_unflushed(self, limit: int | None = None) -> tuple[int, list[Determinant]] | None:
        """The entries logged since the last call (at most ``limit``) and the position of the first.

        The worker sends them to the GCS in batches, off the critical path (DESIGN.md §5.3); ``None``
        when there is nothing new. Each entry is handed out exactly once: if a GCS write fails, the
        caller retries with what it took.
        """
        first = self._flushed
        end = self.end
        if first >= end:
            return None
        stop = end if limit is None else min(end, first + limit)
        self._flushed = stop
        return first, self._entries[first - self._start : stop - self._start]

    def statistics(self) -> LogStatistics:
        n = len(self._entries)
        return LogStatistics(
            owner=self.owner,
            start=self._start,
            end=self._start + n,
            entries=n,
            unflushed=self._start + n - self._flushed,
            memory_bytes=n * _SLOT_BYTES + self._others * _TUPLE_BYTES,
        )

    def __repr__(self) -> str:
        return f"<CausalLog {self.owner} [{self._start}, {self.end})>"


# -- replay ------------------------------------------------------------------------------------------


class LogCursor:
    """Walks a recovered causal log during a replay (DESIGN.md §7.4).

    The replaying instance asks for each nondeterministic decision in the order it meets them; the
    cursor hands out the logged outcome if the log holds a determinant of that kind at that position.
    A different kind means the replay took another path than the original run: a user function
    depends on something ``ctx`` does not log. When the cursor is :attr:`exhausted` the instance is
    live again and logs new decisions instead (§7.5); asking an exhausted cursor is a bug.

    >>> cur = LogCursor("count/1", [recv(1), now(42)], start=7)
    >>> cur.expect(Kind.RECV), cur.position
    ((<Kind.RECV: 1>, 1), 8)
    >>> cur.expect(Kind.RECV)
    Traceback (most recent call last):
    ...
    engine.errors.ProtocolError: replay of count/1 diverged at position 8: the log says TIME but the instance asked for RECV; a user function is not deterministic (DESIGN.md §3)
    """

    __slots__ = ("_dets", "_i", "_start", "instance")

    def __init__(self, instance: str, determinants: Sequence[Determinant], start: int = 0):
        self.instance = instance
        self._dets = determinants
        self._start = start
        self._i = 0

    @property
    def position(self) -> int:
        """The position of the next determinant."""
        return self._start + self._i

    @property
    def end(self) -> int:
        """The position after the last recovered determinant: where the instance goes live."""
        return self._start + len(self._dets)

    @property
    def exhausted(self) -> bool:
        return self._i >= len(self._dets)

    def peek(self) -> Determinant | None:
        """The next determinant without consuming it; ``None`` when exhausted."""
        i = self._i
        return self._dets[i] if i < len(self._dets) else None

    def next(self) -> Determinant:
        """The next determinant, whatever its kind.

        Raises:
            IndexError: the cursor is exhausted (check :attr:`exhausted` first).
        """
        i = self._i
        if i >= len(self._dets):
            raise self._exhausted_error()
        self._i = i + 1
        return self._dets[i]

    def expect(self, kind: Kind) -> Determinant:
        """The next determinant, which must be of ``kind``.

        Raises:
            ProtocolError: the log holds another kind at this position: the replay diverged.
            IndexError: the cursor is exhausted (check :attr:`exhausted` first).
        """
        i = self._i
        if i >= len(self._dets):
            raise self._exhausted_error()
        det = self._dets[i]
        if det[0] != kind:
            raise ProtocolError(
                f"replay of {self.instance} diverged at position {self._start + i}: the log says "
                f"{_kind_name(det[0])} but the instance asked for {Kind(kind).name}; "
                f"a user function is not deterministic (DESIGN.md §3)"
            )
        self._i = i + 1
        return det

    def __iter__(self) -> Iterator[Determinant]:
        while self._i < len(self._dets):
            yield self.next()

    def _exhausted_error(self) -> IndexError:
        return IndexError(
            f"replay of {self.instance}: the recovered log ends at position {self.end}; "
            f"check `exhausted` before asking (the instance is live from there)"
        )

    def __repr__(self) -> str:
        return f"<LogCursor {self.instance} at {self.position} of [{self._start}, {self.end})>"
