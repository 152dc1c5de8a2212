"""Keyed process functions without the engine: Flink's ``KeyedProcessFunction``, state, timers and TTL.

A user subclasses :class:`KeyedProcessFunction` (or passes a plain ``fn(value, ctx)``, which cannot
use timers). For every record, ``process_element(value, ctx)`` returns an iterable of outputs (or
``None``, or yields them); a timer it registered calls ``on_timer(timestamp, ctx)`` later, which
returns outputs the same way. ``ctx`` is one reusable :class:`Context`, rebound before each call:
``ctx.key``, ``ctx.timestamp`` (the record's event time, ``None`` on a stream without one; the
timer's time in ``on_timer``), ``ctx.time_domain`` (``"event"`` or ``"processing"`` in ``on_timer``,
else ``None``), ``ctx.watermark``, ``ctx.processing_time()``, state of the current key declared by
name on use (:meth:`~Context.value_state`, :meth:`~Context.list_state`, :meth:`~Context.map_state`),
``ctx.timers`` (:class:`TimerService`) and side outputs (``ctx.output(tag, value)``).
A :class:`ProcessRunner` is what one instance of a keyed process step runs. ``ctx``, the timer
service and the state handles are defined in :mod:`operators.process_state` and re-exported here.

>>> class CountUntilTimer(KeyedProcessFunction):
...     def process_element(self, value, ctx):
...         count = ctx.value_state("count")
...         count.update(count.value(0) + 1)
...         ctx.timers.register_event_time(ctx.timestamp // 10 * 10 + 10)  # the end of its 10 ms
...         if value == "!":
...             ctx.output("alerts", ctx.key)
...         return [(ctx.key, value)]
...     def on_timer(self, timestamp, ctx):
...         yield (ctx.key, ctx.value_state("count").value())
...         ctx.value_state("count").clear()
>>> runner = ProcessRunner(CountUntilTimer())
>>> runner.process("a", 3, "x", None, now=0) + runner.process("a", 5, "!", None, now=0)
[Output(tag=None, ts=3, value=('a', 'x')), Output(tag='alerts', ts=5, value='a'), Output(tag=None, ts=5, value=('a', '!'))]
>>> runner.advance_watermark(9), runner.advance_watermark(10)
([], [Output(tag=None, ts=10, value=('a', 2))])
>>> upper = ProcessRunner(lambda value, ctx: [value.upper()])  # a plain function
>>> upper.process("k", None, "hi", None, now=0)
[Output(tag=None, ts=None, value='HI')]

**Semantics.** Outputs of one call come in the order they were made (``ctx.output`` calls and the
items of the returned iterable, interleaved when the function is a generator); a ``set`` is refused,
since its order changes with the hash seed and a replay would differ. Main outputs and side outputs
carry the record's ``ts`` (the timer's time in ``on_timer``). Timers are Flink's: one per
``(key, domain, time)`` (registering twice fires once; deleting an absent timer does nothing);
:meth:`~ProcessRunner.advance_watermark` fires the event-time timers with ``time <= watermark`` in order
of ``(time, registration)``, a timer registered by ``on_timer`` at or before the watermark fires in
the same call, and a timer registered for a time the watermark has passed fires at the next
advance. The watermark never goes back; neither does processing time: a ``now`` below the last one
counts as the last one. :meth:`~ProcessRunner.process` does not fire processing-time timers: the
engine calls :meth:`~ProcessRunner.advance_processing_time` between batches (DESIGN.md §4, ``TIMER``).
In ``on_timer`` of an event-time timer, ``ctx.processing_time()`` is the ``now`` given to the advance,
or the last one. At end of input :meth:`~ProcessRunner.flush` fires every event-time timer (Flink's
final ``MAX`` watermark); processing-time timers do not fire at the end, as in Flink (an ended job has
no processing time left); their entries stay in the state.

**State TTL** is Flink's ``StateTtlConfig`` with ``OnCreateAndWrite`` and ``NeverReturnExpired``: an
entry (a value, one list element, one map entry) written at processing time ``p`` expires at ``p +
ttl_ms`` and is invisible from then on; reads do not extend it. Expired entries are removed when a
call reads them and by :meth:`~ProcessRunner.expire`, a sweep the engine may call between batches.
TTL runs on the processing time the engine passes in, never on a clock, so a replay sees the same
entries expire.

**Determinism.** Map state iterates in the byte order of the msgpack-encoded map keys (what Flink's
RocksDB backend does), never in an order that depends on hash seeds or on history; timers fire by
``(time, registration)`` and the registration counter is in :meth:`~ProcessRunner.meta`.

**Atomicity.** A call's state writes, timer changes and new state declarations are buffered and
applied only once the call (and the iteration of what it returned) has finished. A user function that
raises propagates unchanged and leaves the runner as it was before that call: the engine may then
fail the instance, and a replay redoes the call exactly. In an advance that fires several timers each
``on_timer`` is its own call: the timers fired before a failing one stay fired (like the windows
fired before a failing one in :mod:`operators.windows`), and the watermark is not advanced; so does
the advance a :meth:`~ProcessRunner.process` call makes before its record. A state handle works
only during a call, on the key current when it is used.

**State the engine must persist**: the ``state`` mapping and :meth:`~ProcessRunner.meta`, as of the
same checkpoint. Every entry is under its own key, so updating one map entry writes one entry:

* ``("v", key, name)`` -> ``(value, expires_at)`` (value state; ``expires_at`` is ``None`` without TTL);
* ``("l", key, name)`` -> ``(items, expires)``: a tuple of elements and a parallel tuple of their
  expiry times (``None`` without TTL); an ``add`` rewrites the list (prefer map state for big ones);
* ``("m", key, name, map_key)`` -> ``(value, expires_at)``;
* ``("t", "e" | "p", time, key)`` -> the timer's registration number (event or processing time).

Values are read with ``get`` and ``in``, written with ``m[k] = v`` and ``del m[k]``, never mutated in
place; every value the runner writes is already :func:`engine.state.normalize`-d, so an adapter over
:class:`~engine.state.KeyedState` may write through its fast path (``cache`` and ``dirty``).
``meta()`` is ``{"watermark", "processing_time", "seq", "states"}``: the last watermark and processing
time (``MIN_WATERMARK`` before the first), the next timer registration number, and the declared states
(``name -> (kind, ttl_ms)``, so that a kind conflict is detected after a restore too). In memory the
runner keeps indexes of the timers, the map keys and the TTL'd entries (memory proportional to their
number; heaps with lazy deletion, compacted when stale entries outnumber live ones), which
:meth:`~ProcessRunner.rebuild` recomputes from one scan of the mapping after a restore: map iteration
and the TTL sweep never scan the mapping.

User values cross msgpack: lists come back as tuples, so values read are tuples where lists were
written (also with a dict mapping: the runner normalizes on write). Never mutate a value read from
state; build a new one and ``update``/``put`` it.

Speed on a busy 2-core machine (CPython 3.11.7; CPU time, best of 5 runs of 200k calls
``runner.process(i % 10_000, i, None, None, i)``): a value-state counter over 10k keys (read, update,
return ``[n]``) costs 2.2 us per :meth:`~ProcessRunner.process` with a dict mapping, 3.3 us over
:class:`~engine.state.KeyedState`; a function that does nothing costs 0.5 us.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from typing import Any, Final, NamedTuple, TypeVar

from engine.codec import pack
from engine.errors import JobDefinitionError, ParameterError, StateError, short_repr
from operators.process_state import (
    _DELETED,
    MAX_WATERMARK,
    MIN_WATERMARK,
    Context,
    ListState,
    MapState,
    TimerService,
    ValueState,
    _iterable,
)

__all__ = [
    "MAX_WATERMARK",
    "MIN_WATERMARK",
    "Context",
    "KeyedProcessFunction",
    "ListState",
    "MapState",
    "Output",
    "ProcessRunner",
    "TimerService",
    "ValueState",
]

_ABSENT: Final[Any] = object()
_DOMAINS: Final = {"e": "event", "p": "processing"}
_KINDS: Final = {"v": "value", "l": "list", "m": "map"}
_new: Final = tuple.__new__  # _new(Output, (tag, ts, value)): half the cost of Output(tag, ts, value)


class Output(NamedTuple):
    """One output: ``tag`` is ``None`` for the main output, else the side output's name."""

    tag: str | None
    ts: int | None
    value: Any


class KeyedProcessFunction:
    """Subclass it and define :meth:`process_element` (and :meth:`on_timer` if you register timers).

    Both return an iterable of outputs or ``None`` (or are generators). They must be deterministic
    functions of their arguments and of what ``ctx`` gives them (DESIGN.md §3).
    """

    def process_element(self, value: Any, ctx: Context) -> Iterable[Any] | None:
        """Handle one record of key ``ctx.key``."""
        raise NotImplementedError

    def on_timer(self, timestamp: int, ctx: Context) -> Iterable[Any] | None:
        """A timer of ``ctx.key`` fired; ``ctx.time_domain`` says which clock. Default: nothing."""
        return None


_H = TypeVar("_H", ValueState, ListState, MapState)


def _describe(fn: Any) -> str:
    name = getattr(fn, "__qualname__", None)
    return name if isinstance(name, str) else type(fn).__qualname__


class ProcessRunner:
    """The keyed process function of one step instance (see the module docstring).

    ``function`` is a :class:`KeyedProcessFunction` (any object with a ``process_element`` method) or
    a plain ``fn(value, ctx)``. ``state`` is the mapping (a dict by default; the engine passes a
    RocksDB-backed one), ``meta`` a former :meth:`meta`; a non-empty ``state`` is indexed at once.

    Raises:
        JobDefinitionError: ``function`` is not callable, is a class rather than an instance, or
            does not define ``process_element``.
    """

    def __init__(
        self,
        function: KeyedProcessFunction | Callable[[Any, Context], Iterable[Any] | None],
        state: MutableMapping[Any, Any] | None = None,
        meta: Mapping[str, Any] | None = None,
    ):
        if isinstance(function, type):
            raise JobDefinitionError(
                f"ProcessRunner: function must be an instance or a plain function, got the class "
                f"{function.__qualname__}; pass {function.__qualname__}() instead"
            )
        element = getattr(function, "process_element", None)
        if callable(element):
            if getattr(type(function), "process_element", None) is KeyedProcessFunction.process_element:
                raise JobDefinitionError(
                    f"ProcessRunner: {type(function).__qualname__} does not define process_element(value, "
                    "ctx); every KeyedProcessFunction must"
                )
            self.name: str = type(function).__qualname__
            self._element: Callable[[Any, Context], Any] = element
            self._on_timer: Callable[[int, Context], Any] | None = getattr(function, "on_timer", None)
        elif callable(function):
            self.name = _describe(function)
            self._element, self._on_timer = function, None
        else:
            raise JobDefinitionError(
                "ProcessRunner: function must be a KeyedProcessFunction or a callable fn(value, ctx), "
                f"got {short_repr(function)}"
            )
        self.function: Final = function
        self.state: Final[MutableMapping[Any, Any]] = {} if state is None else state
        self.ctx: Final = Context(self)
        meta = meta or {}
        self._watermark: int = meta.get("watermark", MIN_WATERMARK)
        self._now: int = meta.get("processing_time", MIN_WATERMARK)
        self._seq: int = meta.get("seq", 0)  # the next timer registration number
        self._declared: dict[str, tuple[str, int | None]] = {
            name: (kind, ttl) for name, (kind, ttl) in (meta.get("states") or {}).items()
        }
        self._handles: dict[str, ValueState | ListState | MapState] = {}
        # the call in progress: its write buffer, outputs, timestamp, new declarations, timer numbers
        self._active = False
        self._pending: dict[tuple[Any, ...], Any] = {}
        self._encodings: dict[tuple[Any, ...], bytes] = {}  # of map keys the index may not know yet
        self._new_names: list[str] = []
        self._next_seq = self._seq
        self._out: list[Output] = []
        self._firing: tuple[Any, ...] | None = None  # the timer being fired, and its clock's limit
        self._limit = MIN_WATERMARK
        # indexes, derived from the mapping (rebuild)
        self._timers: dict[tuple[Any, ...], int] = {}  # timer entry -> registration number
        self._live = {"e": 0, "p": 0}  # timers per domain: the heaps hold these and stale entries
        self._heaps: dict[str, list[tuple[int, int, Any]]] = {"e": [], "p": []}  # (time, seq, key)
        self._maps: dict[tuple[Any, Any], dict[Any, bytes]] = {}  # (key, name) -> map key -> encoding
        self._ttl: dict[tuple[Any, ...], tuple[int, int]] = {}  # entry -> (expiry in heap, heap id)
        self._ttl_heap: list[tuple[int, int, tuple[Any, ...]]] = []  # (expiry, id, entry)
        self._ttl_ids = 0
        if self.state:
            self.rebuild()

    @property
    def watermark(self) -> int:
        """The last watermark, ``MIN_WATERMARK`` before the first."""
        return self._watermark

    @property
    def processing_time(self) -> int:
        """The last processing time passed in, ``MIN_WATERMARK`` before the first."""
        return self._now

    def meta(self) -> dict[str, Any]:
        """What the engine persists next to the mapping; pass it back as ``meta=`` on restore."""
        states = {name: (kind, ttl) for name, (kind, ttl) in self._declared.items()}
        return {
            "watermark": self._watermark,
            "processing_time": self._now,
            "seq": self._seq,
            "states": states,
        }

    def rebuild(self) -> None:
        """Recompute the timer, map-key and TTL indexes from one scan of the mapping (after a restore).

        Raises:
            StateError: the mapping holds an entry that is not process state (a shared mapping).
        """
        self._timers, self._maps, self._ttl, self._ttl_heap = {}, {}, {}, []
        self._live = {"e": 0, "p": 0}
        heaps: dict[str, list[tuple[int, int, Any]]] = {"e": [], "p": []}
        top = self._seq - 1
        for mkey, stored in self.state.items():
            kind = mkey[0] if type(mkey) is tuple and mkey else None
            if kind == "t" and len(mkey) == 4 and mkey[1] in heaps:
                self._timers[mkey] = stored
                self._live[mkey[1]] += 1
                heaps[mkey[1]].append((mkey[2], stored, mkey[3]))
                top = max(top, stored)
                continue
            if kind == "m" and len(mkey) == 4:
                self._maps.setdefault((mkey[1], mkey[2]), {})[mkey[3]] = pack(mkey[3])
            elif kind not in ("v", "l") or len(mkey) != 3:
                raise StateError(
                    f"ProcessRunner({self.name}): the state mapping holds {short_repr(mkey, 80)}, which is not "
                    "process state; give each process step a mapping of its own"
                )
            self._track_ttl(mkey, stored)
        for heap in heaps.values():
            heapq.heapify(heap)
        self._heaps = heaps
        self._seq = self._next_seq = top + 1

    # -- calls ---------------------------------------------------------------------------------------

    def process(self, key: Any, ts: int | None, value: Any, watermark: int | None, now: int) -> list[Output]:
        """Run ``process_element`` on one record; return its outputs.

        A ``watermark`` ahead of the last one advances the runner first (its timer outputs come
        first); ``now`` is the processing time the engine read for this batch.
        """
        out = (
            self.advance_watermark(watermark, now)
            if watermark is not None and watermark > self._watermark
            else []
        )
        if type(now) is not int:
            self._bad_now("process", now)
        before = self._now
        if now > before:
            self._now = now
        ctx = self.ctx
        ctx.key, ctx.timestamp, ctx.time_domain, ctx.watermark = key, ts, None, self._watermark
        try:
            self._call(self._element, value, out, "process_element")
        except BaseException:
            self._now = before
            raise
        return out

    def advance_watermark(self, watermark: int, now: int | None = None) -> list[Output]:
        """Fire the event-time timers with ``time <= watermark``; return their outputs.

        ``now`` (default: the last processing time) is what ``on_timer`` sees and TTL uses.
        """
        if type(watermark) is not int:
            raise ParameterError(
                f"ProcessRunner.advance_watermark: watermark must be an int (ms), got {short_repr(watermark)}"
            )
        if now is not None:
            self._clock(now, "advance_watermark")
        limit = max(watermark, self._watermark)
        out = self._fire("e", limit, limit)
        self._watermark = limit
        return out

    def advance_processing_time(self, now: int) -> list[Output]:
        """Fire the processing-time timers with ``time <= now``; return their outputs."""
        self._clock(now, "advance_processing_time")
        return self._fire("p", self._now, self._watermark)

    def flush(self, now: int | None = None) -> list[Output]:
        """End of input: fire every event-time timer (the watermark goes to ``MAX_WATERMARK``).

        Processing-time timers do not fire (see the module docstring); state is kept.
        """
        return self.advance_watermark(MAX_WATERMARK, now)

    def next_processing_timer(self) -> int | None:
        """The time of the earliest processing-time timer, or ``None``: when the engine should wake up."""
        heap, timers = self._heaps["p"], self._timers
        while heap and timers.get(("t", "p", heap[0][0], heap[0][2])) != heap[0][1]:
            heapq.heappop(heap)  # deleted or fired
        return heap[0][0] if heap else None

    def expire(self, now: int | None = None) -> int:
        """Remove the state entries expired at ``now`` (default: the last processing time); return how
        many values, list elements and map entries went.

        ``now`` also advances the runner's processing time: a later call must not see an entry the
        sweep removed. Costs O(log n) per expired or extended entry, never a scan of the mapping.
        """
        if now is not None:
            self._clock(now, "expire")
        now, state, index, heap = self._now, self.state, self._ttl, self._ttl_heap
        removed = 0
        while heap and heap[0][0] <= now:
            _, ident, mkey = heapq.heappop(heap)
            if index.get(mkey, (0, -1))[1] != ident:
                continue  # rewritten since, or deleted
            del index[mkey]
            stored = state.get(mkey)
            if stored is None:
                continue
            if mkey[0] == "l":
                items, exps = stored
                keep = [i for i, e in enumerate(exps) if e is None or e > now]
                removed += len(items) - len(keep)
                if keep:
                    stored = tuple(items[i] for i in keep), tuple(exps[i] for i in keep)
                    if len(keep) < len(items):
                        state[mkey] = stored
                    self._track_ttl(mkey, stored)
                    continue
            elif stored[1] is None or stored[1] > now:
                self._track_ttl(mkey, stored)  # written again since: expires later
                continue
            else:
                removed += 1
            del state[mkey]
            if mkey[0] == "m":
                self._unindex_map(mkey)
        return removed

    # -- internals -----------------------------------------------------------------------------------

    def _clock(self, now: Any, owner: str) -> None:
        if type(now) is not int:
            self._bad_now(owner, now)
        if now > self._now:
            self._now = now

    @staticmethod
    def _bad_now(owner: str, now: Any) -> None:
        raise ParameterError(
            f"ProcessRunner.{owner}: now must be an int (processing time in ms), got {short_repr(now)}"
        )

    def _call(self, fn: Callable[[Any, Context], Any], arg: Any, out: list[Output], what: str) -> None:
        """Run one user call atomically: its writes are applied only if it (and its outputs) finished."""
        self._out, self._active = out, True
        try:
            result = fn(arg, self.ctx)
            if result is not None:
                ts = self.ctx.timestamp
                if type(result) is not list and type(result) is not tuple:
                    result = _iterable(result, f"{self.name}.{what}", "its result", JobDefinitionError)
                append = out.append
                for v in result:  # a generator's items come between its ctx.output calls
                    append(_new(Output, (None, ts, v)))
        except BaseException:
            self._pending.clear()
            self._encodings.clear()
            for name in self._new_names:
                del self._declared[name]
                self._handles.pop(name, None)
            self._new_names.clear()
            self._next_seq = self._seq
            raise
        finally:
            self._active = False
            self._firing = None
        self._commit()

    def _commit(self) -> None:
        pending = self._pending
        self._seq = self._next_seq
        if self._new_names:
            self._new_names.clear()
        if not pending:
            return
        state = self.state
        for mkey, val in pending.items():
            kind = mkey[0]
            if val is _DELETED:
                try:  # noqa: SIM105 (suppress() costs a context manager per delete)
                    del state[mkey]
                except KeyError:  # a state entry the call found absent (a cleared list...)
                    pass
                if kind == "t":
                    if self._timers.pop(mkey, None) is not None:
                        self._live[mkey[1]] -= 1
                elif kind == "m":
                    self._unindex_map(mkey)
                if self._ttl:
                    self._ttl.pop(mkey, None)
                continue
            state[mkey] = val
            if kind == "v":  # the common case first
                if val[1] is not None:
                    self._track_ttl(mkey, val)
                continue
            if kind == "t":
                self._add_timer(mkey, val)
                continue
            if kind == "m":
                index = self._maps.get((mkey[1], mkey[2]))
                if index is None:
                    index = self._maps[mkey[1], mkey[2]] = {}
                if mkey[3] not in index:
                    index[mkey[3]] = self._encodings[mkey]
            if val[1] is not None:
                self._track_ttl(mkey, val)
        pending.clear()
        self._encodings.clear()

    def _fire(self, domain: str, limit: int, watermark: int) -> list[Output]:
        out: list[Output] = []
        heap, timers, ctx = self._heaps[domain], self._timers, self.ctx
        on_timer = self._on_timer
        time_domain = _DOMAINS[domain]
        while heap and heap[0][0] <= limit:
            entry = heapq.heappop(heap)
            t, seq, key = entry
            mkey = ("t", domain, t, key)
            if timers.get(mkey) != seq or on_timer is None:
                continue  # deleted, or re-registered (a newer entry is in the heap)
            ctx.key, ctx.timestamp, ctx.time_domain, ctx.watermark = key, t, time_domain, watermark
            self._pending[mkey] = _DELETED
            self._firing, self._limit = mkey, limit
            try:
                self._call(on_timer, t, out, "on_timer")
            except BaseException:
                heapq.heappush(heap, entry)  # still registered
                raise
        return out

    def _check_active(self) -> None:
        if not self._active:
            raise JobDefinitionError(
                f"{self.name}: ctx and state handles work only during a call of process_element or "
                "on_timer; do not keep them for later, or iterate a returned generator lazily"
            )

    def _side_output(self, tag: str, ts: int | None, value: Any) -> None:
        """``ctx.output`` once its tag is checked (here, as process_state cannot import :class:`Output`)."""
        self._check_active()
        self._out.append(Output(tag, ts, value))

    def _read(self, mkey: tuple[Any, ...]) -> Any:
        if not self._active:
            self._check_active()
        pending = self._pending
        if pending:
            val = pending.get(mkey, _ABSENT)
            if val is not _ABSENT:
                return None if val is _DELETED else val
        return self.state.get(mkey)

    def _write(self, mkey: tuple[Any, ...], val: Any) -> None:
        if not self._active:
            self._check_active()
        self._pending[mkey] = val

    def _handle(self, cls: type[_H], kind: str, name: str, ttl_ms: int | None) -> _H:
        handle = self._handles.get(name)
        if handle is not None and type(handle) is cls and handle.ttl_ms == ttl_ms:
            return handle
        what = f"ctx.{_KINDS[kind]}_state({short_repr(name, 40)})"
        if type(name) is not str or not name:
            raise ParameterError(
                f"ctx.{_KINDS[kind]}_state: name must be a non-empty str, got {short_repr(name)}"
            )
        if ttl_ms is not None and (type(ttl_ms) is not int or ttl_ms <= 0):
            raise ParameterError(
                f"{what}: ttl_ms must be None or an int > 0 (milliseconds), got {short_repr(ttl_ms)}"
            )
        self._check_active()
        declared = self._declared.get(name)
        if declared is not None and declared != (kind, ttl_ms):
            before = f"{_KINDS[declared[0]]} state with ttl_ms={declared[1]}"
            raise JobDefinitionError(
                f"{self.name}: state {name!r} is {before}, now used as {_KINDS[kind]} state with "
                f"ttl_ms={ttl_ms}; declare each state the same way every time, and give each state its own name"
            )
        if declared is None:
            self._declared[name] = (kind, ttl_ms)
            self._new_names.append(name)
        new = self._handles[name] = cls(self, name, ttl_ms)
        return new

    def _timer(self, domain: str, t: Any, what: str, register: bool) -> None:
        if type(t) is not int or not MIN_WATERMARK <= t <= MAX_WATERMARK:
            raise ParameterError(
                f"ctx.timers.{what}: time must be an int (milliseconds, 64-bit), got {short_repr(t)}"
            )
        if self._on_timer is None and register:
            raise JobDefinitionError(
                f"ctx.timers.{what}: {self.name} has no on_timer(timestamp, ctx) to call; "
                "subclass KeyedProcessFunction and define on_timer"
            )
        mkey = ("t", domain, t, self.ctx.key)
        pending = self._pending.get(mkey, _ABSENT) if self._pending else _ABSENT
        present = self._timers.get(mkey) is not None if pending is _ABSENT else pending is not _DELETED
        if not register:
            if present:
                self._write(mkey, _DELETED)
        elif not present:
            if mkey == self._firing and t <= self._limit:
                clock = "watermark" if domain == "e" else "processing time"
                raise JobDefinitionError(
                    f"{self.name}.on_timer: re-registering the timer at {t} that is firing would fire it "
                    f"again at once, forever (the {clock} is {self._limit}); register a later time"
                )
            self._write(mkey, self._next_seq)
            self._next_seq += 1

    def _add_timer(self, mkey: tuple[Any, ...], seq: int) -> None:
        domain, timers = mkey[1], self._timers
        if mkey not in timers:  # else re-registered in the call that deleted it: a new number
            self._live[domain] += 1
        timers[mkey] = seq
        heap = self._heaps[domain]
        heapq.heappush(heap, (mkey[2], seq, mkey[3]))
        # Deleted timers stay in the heap until their time (lazy deletion); a step that deletes and
        # registers a timer per record (a session timeout) would grow it without bound: compact it
        # when stale entries outnumber live ones, O(1) amortized per registration.
        if len(heap) > 2 * self._live[domain] + 64:
            heap[:] = [e for e in heap if timers.get(("t", domain, e[0], e[2])) == e[1]]
            heapq.heapify(heap)

    def _encode_map_key(self, mkey: tuple[Any, ...]) -> None:
        index = self._maps.get((mkey[1], mkey[2]))
        if index is None or mkey[3] not in index:
            self._encodings[mkey] = pack(mkey[3])  # raises here, in the call, if it cannot be stored

    def _map_keys(self, key: Any, name: str) -> list[Any]:
        """The map keys of ``(key, name)`` (expired ones included), committed and pending, sorted."""
        merged = dict(self._maps.get((key, name), ()))
        for mkey, val in self._pending.items():
            if mkey[0] == "m" and mkey[2] == name and mkey[1] == key:
                if val is _DELETED:
                    merged.pop(mkey[3], None)
                elif mkey[3] not in merged:
                    merged[mkey[3]] = self._encodings[mkey]
        return sorted(merged, key=merged.__getitem__)

    def _unindex_map(self, mkey: tuple[Any, ...]) -> None:
        index = self._maps.get((mkey[1], mkey[2]))
        if index is not None:
            index.pop(mkey[3], None)
            if not index:
                del self._maps[mkey[1], mkey[2]]

    def _track_ttl(self, mkey: tuple[Any, ...], stored: Any) -> None:
        """Index the earliest expiry of an entry; one heap entry per entry, unless it expires earlier."""
        exp = stored[1]
        if mkey[0] == "l" and exp is not None:
            exp = min((e for e in exp if e is not None), default=None)
        if exp is None:
            return
        tracked = self._ttl.get(mkey)
        if tracked is not None and tracked[0] <= exp:
            return  # the sweep finds it at the earlier time and re-tracks it then
        self._ttl_ids += 1
        self._ttl[mkey] = (exp, self._ttl_ids)
        heap = self._ttl_heap
        heapq.heappush(heap, (exp, self._ttl_ids, mkey))
        if len(heap) > 2 * len(self._ttl) + 64:  # deleted entries left stale ones: as for timers
            index = self._ttl
            heap[:] = [e for e in heap if index.get(e[2], (0, -1))[1] == e[1]]
            heapq.heapify(heap)

    def __repr__(self) -> str:
        return (
            f"<ProcessRunner {self.name} watermark={self._watermark} processing_time={self._now} "
            f"timers={len(self._timers)} entries={len(self.state)}>"
        )
