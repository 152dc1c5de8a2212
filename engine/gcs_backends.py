"""Storage backends of the global control store (:mod:`engine.gcs`).

A backend is a subclass of :class:`~engine.gcs.GCS` that implements its four storage primitives:
``_write`` (apply a list of :data:`~engine.gcs.Op` in order, atomically and durably), ``_get`` (one
value by key), ``_close`` (release the storage, once, after the last write), and a call to ``_restore``
with every stored key when it opens. The index, group commit, acknowledgment delay and key layout are
the base class's, so every backend has the same semantics and the same tests (``tests/test_gcs.py``).

* :class:`RocksGCS`: embedded RocksDB in the coordinator's data directory, the default.
* :class:`MemoryGCS`: a dict, for tests; reopen one from the ``data`` of a closed one.

A replicated store (Redis with AOF) would be a third subclass in this module, implementing the same four
primitives: ``_write`` must apply a group as one atomic unit, and ``_restore`` must see every key.

Durability of :class:`RocksGCS`: RocksDB's write-ahead log is always on. With ``sync=False`` (default)
an acknowledged write is in the OS page cache: it survives a crash of the coordinator process (what
restarting from the GCS on disk is for) but not a power loss or kernel crash; a group costs ~5 us.
``sync=True`` fsyncs the WAL once per group and survives power loss, for ~0.1-10 ms per group depending
on the device: group commit spreads that over every concurrent writer, and the fsync runs in a thread
while the loop serves on.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterable
from typing import cast

from rocksdict import Options, Rdict, WriteBatch, WriteOptions

from engine.gcs import GCS, OP_DELETE, OP_PUT, GCSError, Op

__all__ = ["MemoryGCS", "RocksGCS"]


class MemoryGCS(GCS):
    """A GCS in a dict, for tests; pass the ``data`` of a closed one to reopen it.

    >>> import asyncio
    >>> async def demo() -> tuple[int, int]:
    ...     async with MemoryGCS() as gcs:
    ...         await gcs.append_log("wc", "count/0", 2, b"later", 3)  # pending: positions 0-1 missing
    ...         return await gcs.append_log("wc", "count/0", 0, b"first", 2), gcs.committed("wc", "count/0")
    >>> asyncio.run(demo())
    (5, 5)
    """

    def __init__(
        self, *, delay_ms: float = 0.0, max_group: int = 1024, data: dict[bytes, bytes] | None = None
    ):
        super().__init__(where="memory GCS", delay_ms=delay_ms, max_group=max_group)
        self.data: dict[bytes, bytes] = {} if data is None else data
        self._restore(sorted(self.data), self.data.get)

    async def _write(self, ops: list[Op]) -> None:
        for kind, key, value in ops:
            if kind == OP_PUT:
                self.data[key] = value
            elif kind == OP_DELETE:
                self.data.pop(key, None)
            else:
                for k in [k for k in self.data if key <= k < value]:
                    del self.data[k]

    async def _get(self, key: bytes) -> bytes | None:
        return self.data.get(key)

    async def _close(self) -> None:
        pass


class RocksGCS(GCS):
    """The embedded GCS: a RocksDB database in directory ``path``, created if missing.

    Opening an existing directory recovers everything stored in it. ``sync``: see the module docstring.

    Raises:
        GCSError: the directory cannot be opened (not writable, or locked by another coordinator).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        delay_ms: float = 0.0,
        sync: bool = False,
        max_group: int = 1024,
    ):
        self.path = os.fspath(path)
        super().__init__(where=f"GCS at {self.path}", delay_ms=delay_ms, max_group=max_group)
        options = Options(raw_mode=True)
        options.create_if_missing(True)
        try:
            self._db = Rdict(self.path, options)
        except Exception as exc:  # rocksdict raises plain Exception with RocksDB's status text
            raise GCSError(
                f"cannot open the GCS at {self.path}: {exc}; is another coordinator using this data "
                "directory, or is it not writable?"
            ) from exc
        self._sync = sync
        self._options = WriteOptions()
        self._options.sync = sync
        try:
            self._restore(cast("Iterable[bytes]", self._db.keys()), self._db.get)  # raw mode: bytes keys
        except BaseException:
            self._db.close()
            raise

    async def _write(self, ops: list[Op]) -> None:
        batch = WriteBatch(raw_mode=True)
        for kind, key, value in ops:
            if kind == OP_PUT:
                batch.put(key, value)
            elif kind == OP_DELETE:
                batch.delete(key)
            else:
                batch.delete_range(key, value)
        if self._sync:
            # an fsync takes milliseconds: the event loop serves on meanwhile (rocksdict drops the GIL)
            await asyncio.to_thread(self._db.write, batch, self._options)
        else:
            self._db.write(batch, self._options)  # ~5 us into the page cache: a thread hop costs more

    async def _get(self, key: bytes) -> bytes | None:
        value: bytes | None = self._db.get(key)
        return value

    async def _close(self) -> None:
        self._db.close()
