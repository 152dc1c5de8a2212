"""``ctx``: the nondeterminism a user function may use, recorded so that a replay sees the same values.

User functions must be deterministic functions of their input (DESIGN.md §3). When one needs the
clock or randomness, it asks ``ctx`` instead of ``time`` or ``random``: the runtime logs the value it
hands out (a ``TIME`` or ``RAND`` determinant, at most one of each per batch) and, when the instance is
replayed after a failure, hands out the logged value again.

>>> from engine import ctx
>>> isinstance(ctx.now(), float)          # outside a running instance: the plain clock
True
>>> 0.0 <= ctx.random().random() < 1.0
True

Inside a job::

    from engine import ctx
    stream.map("stamp", lambda e: (e, ctx.now()))
    stream.filter("sample", lambda e: ctx.random().random() < 0.01)

Every record of one batch sees the same ``ctx.now()`` (one clock read per batch, as the determinant
table of DESIGN.md §4 says); ``ctx.random()`` returns one generator per batch, seeded from a logged seed.
"""

from __future__ import annotations

import contextvars
import random as _random
import secrets
import time
from collections.abc import Callable
from typing import Protocol

__all__ = ["BatchClock", "Nondeterminism", "bind", "ctx", "unbind"]


class Nondeterminism(Protocol):
    """What an instance's runtime provides while it processes a batch (live: log; replay: read the log)."""

    def now_ns(self) -> int: ...

    def seed(self) -> int: ...


_current: contextvars.ContextVar[Nondeterminism | None] = contextvars.ContextVar(
    "stashflow_ctx", default=None
)


class _Context:
    """The ``ctx`` object user functions import from :mod:`engine`."""

    __slots__ = ()

    def now(self) -> float:
        """Processing time in seconds since the epoch; logged (``TIME``), identical on replay."""
        source = _current.get()
        return (source.now_ns() if source is not None else time.time_ns()) / 1e9

    def now_ns(self) -> int:
        """Like :meth:`now`, in integer nanoseconds."""
        source = _current.get()
        return source.now_ns() if source is not None else time.time_ns()

    def random(self) -> _random.Random:
        """A random generator seeded from a logged seed (``RAND``), identical on replay."""
        source = _current.get()
        return _random.Random(source.seed() if source is not None else secrets.randbits(64))


ctx = _Context()


def bind(source: Nondeterminism | None) -> contextvars.Token[Nondeterminism | None]:
    """Make ``source`` what ``ctx`` reads in this task until :func:`unbind` (the instance loop does this)."""
    return _current.set(source)


def unbind(token: contextvars.Token[Nondeterminism | None]) -> None:
    _current.reset(token)


class BatchClock:
    """A per-batch cache of the clock and seed: at most one ``TIME`` and one ``RAND`` per batch.

    ``read_time``/``read_seed`` produce a value (live: read the clock and log it; replay: take it from
    the log); the cache makes every further call in the same batch return the same value.
    """

    __slots__ = ("_now", "_read_seed", "_read_time", "_seed")

    def __init__(self, read_time: Callable[[], int], read_seed: Callable[[], int]):
        self._read_time = read_time
        self._read_seed = read_seed
        self._now: int | None = None
        self._seed: int | None = None

    def next_batch(self) -> None:
        self._now = None
        self._seed = None

    def now_ns(self) -> int:
        if self._now is None:
            self._now = self._read_time()
        return self._now

    def seed(self) -> int:
        if self._seed is None:
            self._seed = self._read_seed()
        return self._seed
