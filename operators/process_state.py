"""The user-facing half of keyed process functions: ``ctx`` and the state handles it gives out.

:class:`Context` (the ``ctx`` of every call), :class:`TimerService` (``ctx.timers``) and the state
handles :class:`ValueState`, :class:`ListState` and :class:`MapState`. They hold no data of their own:
each reads and writes through the :class:`~operators.process.ProcessRunner` that made it, which owns
the write buffer, the indexes and the mapping. Semantics (timers, TTL, atomicity) and the state layout
are in :mod:`operators.process`, which re-exports every public name here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Final

from engine.errors import ParameterError, short_repr
from engine.state import normalize

if TYPE_CHECKING:
    from operators.process import ProcessRunner

__all__ = [
    "MAX_WATERMARK",
    "MIN_WATERMARK",
    "Context",
    "ListState",
    "MapState",
    "TimerService",
    "ValueState",
]

#: The watermark before the first one and the final one at the end of input (Flink's Long bounds).
#: Defined here, where ``ctx.watermark`` starts, and re-exported by :mod:`operators.process`.
MIN_WATERMARK: Final = -(2**63)
MAX_WATERMARK: Final = 2**63 - 1

_DELETED: Final[Any] = object()  # a pending delete in the runner's write buffer
_SCALARS: Final = frozenset({int, float, str, bytes, bool})  # what normalize() returns unchanged


class ValueState:
    """One value per key. ``update(None)`` clears it, as in Flink."""

    __slots__ = ("_r", "name", "ttl_ms")

    def __init__(self, runner: ProcessRunner, name: str, ttl_ms: int | None):
        self._r, self.name, self.ttl_ms = runner, name, ttl_ms

    def value(self, default: Any = None) -> Any:
        """The value of the current key, or ``default`` when absent or expired."""
        r = self._r
        mkey = ("v", r.ctx.key, self.name)
        stored = r._read(mkey)
        if stored is None:
            return default
        if stored[1] is not None and stored[1] <= r._now:
            r._write(mkey, _DELETED)
            return default
        return stored[0]

    def update(self, value: Any) -> None:
        """Set the value of the current key (``None``: :meth:`clear`)."""
        if value is None:
            self.clear()
            return
        r, ttl = self._r, self.ttl_ms
        if not r._active:
            r._check_active()
        value = value if type(value) in _SCALARS else normalize(value)
        r._pending["v", r.ctx.key, self.name] = (value, None if ttl is None else r._now + ttl)

    def clear(self) -> None:
        """Remove the value of the current key."""
        r = self._r
        mkey = ("v", r.ctx.key, self.name)
        if r._read(mkey) is not None:
            r._write(mkey, _DELETED)


class ListState:
    """A list per key; with TTL each element expires on its own (Flink's per-element TTL)."""

    __slots__ = ("_r", "name", "ttl_ms")

    def __init__(self, runner: ProcessRunner, name: str, ttl_ms: int | None):
        self._r, self.name, self.ttl_ms = runner, name, ttl_ms

    def _live(self) -> tuple[tuple[Any, ...], tuple[Any, ...] | None]:
        r = self._r
        mkey = ("l", r.ctx.key, self.name)
        stored = r._read(mkey)
        if stored is None:
            return (), None
        items, exps = stored
        if exps is None:
            return items, None
        now = r._now
        if all(e is None or e > now for e in exps):
            return items, exps
        keep = [i for i, e in enumerate(exps) if e is None or e > now]
        items, exps = tuple(items[i] for i in keep), tuple(exps[i] for i in keep)
        r._write(mkey, (items, exps) if items else _DELETED)  # cleanup on access
        return items, exps

    def get(self) -> tuple[Any, ...]:
        """The visible elements of the current key, oldest first (``()`` when none)."""
        return self._live()[0]

    def add(self, value: Any) -> None:
        """Append ``value``."""
        r, ttl = self._r, self.ttl_ms
        items, exps = self._live()
        items += (normalize(value),)
        if ttl is not None or exps is not None:
            exps = (exps or (None,) * (len(items) - 1)) + (None if ttl is None else r._now + ttl,)
        r._write(("l", r.ctx.key, self.name), (items, exps))

    def update(self, values: Iterable[Any]) -> None:
        """Replace the elements by ``values`` (an empty iterable clears the list)."""
        r, ttl = self._r, self.ttl_ms
        items = tuple(normalize(v) for v in _iterable(values, f"list_state({self.name!r}).update", "values"))
        if not items:
            self.clear()
            return
        exps = None if ttl is None else (r._now + ttl,) * len(items)
        r._write(("l", r.ctx.key, self.name), (items, exps))

    def clear(self) -> None:
        """Remove every element of the current key."""
        r = self._r
        mkey = ("l", r.ctx.key, self.name)
        if r._read(mkey) is not None:
            r._write(mkey, _DELETED)


class MapState:
    """A map per key, one state entry per map entry. ``items()``, ``keys()`` and ``values()`` return
    lists in the byte order of the msgpack-encoded map keys (deterministic; they are snapshots, so
    the map may be changed while looping over them)."""

    __slots__ = ("_r", "name", "ttl_ms")

    def __init__(self, runner: ProcessRunner, name: str, ttl_ms: int | None):
        self._r, self.name, self.ttl_ms = runner, name, ttl_ms

    def _mkey(self, k: Any, what: str) -> tuple[Any, ...]:
        try:
            hash(k)
        except TypeError:
            raise ParameterError(
                f"map_state({self.name!r}).{what}: map keys must be hashable (str, int, tuple...), "
                f"got {short_repr(k)}"
            ) from None
        return ("m", self._r.ctx.key, self.name, k)

    def _visible(self, mkey: tuple[Any, ...]) -> Any:
        r = self._r
        stored = r._read(mkey)
        if stored is not None and stored[1] is not None and stored[1] <= r._now:
            r._write(mkey, _DELETED)
            return None
        return stored

    def get(self, k: Any, default: Any = None) -> Any:
        """The value of map key ``k``, or ``default``."""
        stored = self._visible(self._mkey(k, "get"))
        return default if stored is None else stored[0]

    def put(self, k: Any, value: Any) -> None:
        """Set map key ``k`` (its TTL restarts)."""
        r, ttl = self._r, self.ttl_ms
        mkey = self._mkey(k, "put")
        r._encode_map_key(mkey)
        r._write(mkey, (normalize(value), None if ttl is None else r._now + ttl))

    def remove(self, k: Any) -> None:
        """Remove map key ``k`` (no error if absent)."""
        mkey = self._mkey(k, "remove")
        if self._r._read(mkey) is not None:
            self._r._write(mkey, _DELETED)

    def __contains__(self, k: Any) -> bool:
        return self._visible(self._mkey(k, "__contains__")) is not None

    def items(self) -> list[tuple[Any, Any]]:
        """Every visible ``(map_key, value)``."""
        r, name, key = self._r, self.name, self._r.ctx.key
        out = []
        for k in r._map_keys(key, name):
            stored = self._visible(("m", key, name, k))
            if stored is not None:
                out.append((k, stored[0]))
        return out

    def keys(self) -> list[Any]:
        """Every visible map key."""
        return [k for k, _ in self.items()]

    def values(self) -> list[Any]:
        """Every visible value."""
        return [v for _, v in self.items()]

    def is_empty(self) -> bool:
        """Whether the map of the current key has no visible entry."""
        r, name, key = self._r, self.name, self._r.ctx.key
        return not any(self._visible(("m", key, name, k)) is not None for k in r._map_keys(key, name))

    def clear(self) -> None:
        """Remove every entry of the current key."""
        r, name, key = self._r, self.name, self._r.ctx.key
        for k in r._map_keys(key, name):
            r._write(("m", key, name, k), _DELETED)


class TimerService:
    """``ctx.timers``: timers of the current key; times are int milliseconds."""

    __slots__ = ("_r",)

    def __init__(self, runner: ProcessRunner):
        self._r = runner

    def register_event_time(self, time: int) -> None:
        """Call ``on_timer`` once the watermark reaches ``time``."""
        self._r._timer("e", time, "register_event_time", True)

    def register_processing_time(self, time: int) -> None:
        """Call ``on_timer`` once processing time reaches ``time``."""
        self._r._timer("p", time, "register_processing_time", True)

    def delete_event_time(self, time: int) -> None:
        """Delete the event-time timer at ``time`` of the current key, if any."""
        self._r._timer("e", time, "delete_event_time", False)

    def delete_processing_time(self, time: int) -> None:
        """Delete the processing-time timer at ``time`` of the current key, if any."""
        self._r._timer("p", time, "delete_processing_time", False)


class Context:
    """What a call sees: one object per runner, rebound before every call (see the module docstring)."""

    __slots__ = ("_r", "key", "time_domain", "timers", "timestamp", "watermark")

    def __init__(self, runner: ProcessRunner):
        self._r = runner
        self.key: Any = None
        self.timestamp: int | None = None
        self.time_domain: str | None = None
        self.watermark: int = MIN_WATERMARK
        self.timers = TimerService(runner)

    def processing_time(self) -> int:
        """The processing time of this call (ms), as the engine passed it (logged, so replayable)."""
        return self._r._now

    def value_state(self, name: str, ttl_ms: int | None = None) -> ValueState:
        """The value state ``name`` of the current key."""
        return self._r._handle(ValueState, "v", name, ttl_ms)

    def list_state(self, name: str, ttl_ms: int | None = None) -> ListState:
        """The list state ``name`` of the current key."""
        return self._r._handle(ListState, "l", name, ttl_ms)

    def map_state(self, name: str, ttl_ms: int | None = None) -> MapState:
        """The map state ``name`` of the current key."""
        return self._r._handle(MapState, "m", name, ttl_ms)

    def output(self, tag: str, value: Any) -> None:
        """Emit ``value`` to the side output ``tag``."""
        if type(tag) is not str or not tag:
            raise ParameterError(
                f"ctx.output: tag must be a non-empty str (the side output's name), got {short_repr(tag)}"
            )
        self._r._side_output(tag, self.timestamp, value)


def _iterable(value: Any, owner: str, what: str, error: type[Exception] = ParameterError) -> Iterable[Any]:
    if isinstance(value, set | frozenset):  # its order depends on the hash seed: a replay would differ
        raise error(
            f"{owner}: {what} must have a deterministic order, got a {type(value).__name__} "
            f"{short_repr(value, 60)}, whose order changes with the hash seed; use sorted(...) or a list"
        )
    if isinstance(value, str | bytes | bytearray | Mapping) or not hasattr(value, "__iter__"):
        kind = type(value).__name__
        raise error(
            f"{owner}: {what} must be an iterable such as a list or a generator, got {short_repr(value)} "
            f"(type {kind}); wrap a single value in a list: [value]"
        )
    return value  # type: ignore[no-any-return]
