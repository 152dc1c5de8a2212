"""Output partitioning: which downstream channel each record goes to.

``key_by`` needs a hash that is equal in every process, machine and run, or a recovered instance and
its peers would disagree on who owns a key. Python's ``hash`` is salted per process for ``str`` and
``bytes`` (PYTHONHASHSEED), so we use CRC-32 over a canonical encoding: UTF-8 for ``str``, the bytes
themselves, the 8-byte two's complement for ``int``, and msgpack for anything else (tuples, floats).

>>> stable_hash("word") == stable_hash("word")
True
>>> [stable_hash(k) % 4 for k in ("a", "b", 7, ("x", 1))]
[3, 1, 0, 0]
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from typing import Any

import msgpack

from engine.errors import SerializationError, short_repr

__all__ = ["HashPartitioner", "RoundRobinPartitioner", "stable_hash"]

_crc32 = zlib.crc32


def stable_hash(key: Any) -> int:
    """A hash of ``key`` that is the same in every process and run."""
    if type(key) is str:
        return _crc32(key.encode("utf-8", "surrogatepass"))
    if type(key) is int and -(2**63) <= key < 2**63:
        return _crc32(key.to_bytes(8, "little", signed=True))
    if type(key) is bytes:
        return _crc32(key)
    try:
        return _crc32(msgpack.packb(key, use_bin_type=True))
    except (TypeError, ValueError, OverflowError) as exc:
        raise SerializationError(
            f"key {short_repr(key)} of type {type(key).__name__} cannot be hashed stably; key_by functions "
            "must return str, bytes, int, float, bool, None or tuples of those"
        ) from exc


class HashPartitioner:
    """Splits a batch into ``n`` lists by ``stable_hash(key_fn(record)) % n``.

    Keys repeat (a Zipf-distributed word stream most of all), so the channel of each ``str`` key is
    memoized: a dict lookup costs a third of encoding and hashing the key again. Only ``str`` keys are
    memoized, because a dict conflates equal keys of different types (``1``, ``1.0``, ``True``) that
    :func:`stable_hash` keeps apart.
    """

    __slots__ = ("_memo", "key_fn", "memo_limit", "n")

    def __init__(self, key_fn: Callable[[Any], Any], n: int, memo_limit: int = 1 << 17):
        self.key_fn = key_fn
        self.n = n
        self.memo_limit = memo_limit
        self._memo: dict[str, int] = {}

    def split(self, records: Sequence[Any]) -> list[list[Any]]:
        n, key_fn, memo = self.n, self.key_fn, self._memo
        if len(memo) > self.memo_limit:
            memo.clear()
        parts: list[list[Any]] = [[] for _ in range(n)]
        appends = [p.append for p in parts]
        crc = _crc32
        for x in records:
            k = key_fn(x)
            if type(k) is str:
                try:
                    i = memo[k]
                except KeyError:
                    i = memo[k] = crc(k.encode("utf-8", "surrogatepass")) % n
            else:
                i = stable_hash(k) % n
            appends[i](x)
        return parts


class RoundRobinPartitioner:
    """Deals records to ``n`` lists in turn, continuing where the previous batch stopped."""

    __slots__ = ("n", "next")

    def __init__(self, n: int):
        self.n = n
        self.next = 0

    def split(self, records: Sequence[Any]) -> list[list[Any]]:
        n, start = self.n, self.next
        parts = [list(records[(i - start) % n :: n]) for i in range(n)]
        self.next = (start + len(records)) % n
        return parts
