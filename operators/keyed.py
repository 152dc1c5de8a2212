"""Keyed, stateful operators: running ``count`` / ``reduce`` and their ``_final`` forms.

Each instance owns the keys that hash to it (the sender partitions with a stable hash, see
:mod:`engine.partition`), so the state of a key lives in exactly one instance. State goes through the
fast path of :class:`engine.state.KeyedState` (a dict cache over RocksDB): read ``cache`` first, fall
back to ``get`` on a miss, and add every written key to ``dirty``; without fault tolerance the same
code runs over :class:`engine.state.MemoryState`, a plain dict.

>>> from engine import Job
>>> from engine.testing import run
>>> from connectors import CollectSink, ListSource
>>> job = Job("counts")
>>> running, final = CollectSink(), CollectSink()
>>> words = job.source("words", ListSource(["a", "b", "a"]))
>>> words.key_by(lambda w: w).count("count").sink("running", running)
>>> words.key_by(lambda w: w).reduce_final("concat", lambda acc, w: acc + w).sink("final", final)
>>> _ = run(job)
>>> running.records
[('a', 1), ('b', 1), ('a', 2)]
>>> sorted(final.records)
[('a', 'aa'), ('b', 'b')]
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from engine.state import MemoryState

try:  # the C helper behind Counter.update: counts an iterable into any dict
    from _collections import _count_elements
except ImportError:  # pragma: no cover - other Pythons

    def _count_elements(mapping: dict[Any, Any], iterable: Any) -> None:
        get = mapping.get
        for k in iterable:
            mapping[k] = get(k, 0) + 1


from operators.base import Operator, OperatorContext, locate_failure

__all__ = ["Count", "CountFinal", "Reduce", "ReduceFinal"]

_ABSENT = object()


class _Keyed(Operator):
    def __init__(self, ctx: OperatorContext):
        super().__init__(ctx)
        assert ctx.step.key_fn is not None
        self.key_fn: Callable[[Any], Any] = ctx.step.key_fn
        self.state = ctx.open_state(ctx.step.name) if ctx.open_state is not None else MemoryState()
        #: records are (timestamp, value) pairs: keys and functions read values, outputs keep timestamps
        self.timed = ctx.step.timed_in

    def _keys(self, records: Sequence[Any]) -> list[Any]:
        key_fn = self.key_fn
        try:
            return [key_fn(x) for x in records]
        except Exception as exc:
            raise locate_failure(self.ctx, key_fn, records, exc) from None

    def close(self) -> None:
        self.state.close()


class Count(_Keyed):
    """Emit ``(key, running_count)`` per record."""

    def process(self, records: Sequence[Any]) -> Sequence[Any]:
        state = self.state
        cache, dirty, get = state.cache, state.dirty, state.get
        out: list[Any] = []
        append = out.append
        if self.timed:
            for (t, _), k in zip(records, self._keys([v for _, v in records]), strict=True):
                c = (cache[k] if k in cache else get(k, 0)) + 1
                cache[k] = c
                dirty.add(k)
                append((t, (k, c)))
            state.trim()
            return out
        for k in self._keys(records):
            c = (cache[k] if k in cache else get(k, 0)) + 1
            cache[k] = c
            dirty.add(k)
            append((k, c))
        state.trim()
        return out


class CountFinal(_Keyed):
    """Emit ``(key, count)`` per key at the end of the input."""

    def process(self, records: Sequence[Any]) -> Sequence[Any]:
        state = self.state
        cache, dirty = state.cache, state.dirty
        keys = self._keys([v for _, v in records] if self.timed else records)
        if state.complete:
            # every key is in the cache: count in C (what Counter.update does) and mark in C
            _count_elements(cache, keys)
            dirty.update(keys)
        else:
            get = state.get
            for k in keys:
                cache[k] = (cache[k] if k in cache else get(k, 0)) + 1
                dirty.add(k)
        state.trim()
        return ()

    def finish(self) -> Sequence[Any]:
        return list(self.state.items())


class Reduce(_Keyed):
    """Emit ``(key, running_value)`` per record, ``value = fn(value, record)``."""

    def __init__(self, ctx: OperatorContext):
        super().__init__(ctx)
        assert ctx.step.fn is not None
        self.fn: Callable[[Any, Any], Any] = ctx.step.fn

    def _fold(self, records: Sequence[Any], emit: bool) -> list[Any]:
        state, fn = self.state, self.fn
        get, put = state.get, state.put
        out: list[Any] = []
        stamps: Sequence[Any] = ()
        if self.timed:
            stamps, records = [t for t, _ in records], [v for _, v in records]
        for k, x in zip(self._keys(records), records, strict=True):
            v = get(k, _ABSENT)
            if v is _ABSENT:
                v = x
            else:
                try:
                    v = fn(v, x)
                except Exception as exc:
                    raise self.error(fn, x, exc) from None
            put(k, v)
            if emit:
                out.append((k, state.cache.get(k, v)))
        state.trim()
        if stamps and emit:
            return list(zip(stamps, out, strict=True))
        return out

    def process(self, records: Sequence[Any]) -> Sequence[Any]:
        return self._fold(records, emit=True)


class ReduceFinal(Reduce):
    """Emit ``(key, value)`` per key at the end of the input."""

    def process(self, records: Sequence[Any]) -> Sequence[Any]:
        return self._fold(records, emit=False)

    def finish(self) -> Sequence[Any]:
        return list(self.state.items())
