"""In-memory connectors for tests: a list in, a list out.

They exist so that a job can be tested in one process (``engine.testing.run``) with exact expected
output and no files: :class:`ListSource` feeds fixed records, :class:`CollectSink` keeps what reaches
the sink. Neither survives its process, which is why :class:`CollectSink` refuses to run elsewhere.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Any

from engine.connector import Sink, SinkWriter, Source, SourceReader
from engine.errors import ParameterError

__all__ = ["CollectSink", "ListSource"]


class ListSource(Source):
    """A bounded source over a list: instance ``k`` of ``p`` reads ``records[k::p]``, in order.

    The records are copied at construction, so mutating the original list afterwards does not change
    the stream. A reader's offset is how many records it has returned.

    >>> import asyncio
    >>> reader = ListSource(["a", "b", "c", "d", "e"]).open(index=0, parallelism=2)
    >>> asyncio.run(reader.read(2))
    ['a', 'c']
    >>> reader.offset()
    2
    >>> asyncio.run(reader.read(2))
    ['e']
    >>> asyncio.run(reader.read(2)) is None
    True
    """

    bounded = True

    def __init__(self, records: Iterable[Any]):
        self.records = list(records)

    def open(self, index: int, parallelism: int) -> SourceReader:
        """Return the reader of instance ``index``, over ``records[index::parallelism]``."""
        return _ListReader(self.records[index::parallelism])


class _ListReader(SourceReader):
    def __init__(self, share: list[Any]):
        self._share = share
        self._pos = 0

    async def read(self, max_records: int) -> Sequence[Any] | None:
        if self._pos >= len(self._share):
            return None
        out = self._share[self._pos : self._pos + max_records]
        self._pos += len(out)
        return out

    def offset(self) -> int:
        return self._pos

    def seek(self, offset: Any) -> None:
        self._pos = offset

    def progress(self) -> tuple[int, int]:
        return (min(self._pos, len(self._share)), len(self._share))


class CollectSink(Sink):
    """Keeps every record that reaches the sink in memory, for assertions in in-process tests.

    :attr:`records` is the whole output, instance 0's records first, then instance 1's, and so on;
    :attr:`partitions` maps each instance index to its records. Re-opening an index starts that
    partition afresh, unless the writer is restored from a checkpoint (a recovered instance under the
    lineage stash): then it keeps what its predecessor collected and skips the regenerated records it
    already holds, exactly-once like :class:`~connectors.FileSink`.

    The records live in the process that built the sink, so opening a writer in another process (a
    forked worker, or a copy of the sink sent there) raises :class:`~engine.errors.ParameterError`:
    the output would be lost silently.

    >>> sink = CollectSink()
    >>> first, second = sink.open(index=0, parallelism=2), sink.open(index=1, parallelism=2)
    >>> second.write_batch(["c"])
    >>> first.write_batch(["a", "b"])
    >>> sink.records
    ['a', 'b', 'c']
    >>> sink.partitions
    {0: ['a', 'b'], 1: ['c']}
    """

    def __init__(self) -> None:
        self._pid = os.getpid()
        self._partitions: dict[int, list[Any]] = {}

    def open(self, index: int, parallelism: int) -> SinkWriter:
        """Return a writer into a fresh partition ``index``; only in the process that built the sink."""
        if os.getpid() != self._pid:
            raise ParameterError(
                "CollectSink collects in memory and works only when the job runs in-process "
                "(engine.testing.run); use FileSink for multi-process runs"
            )
        return _CollectWriter(self._partitions, index)

    @property
    def records(self) -> list[Any]:
        """All records collected so far, concatenated in instance order."""
        return [record for index in sorted(self._partitions) for record in self._partitions[index]]

    @property
    def partitions(self) -> dict[int, list[Any]]:
        """A copy of the records of each instance, by instance index (ascending)."""
        return {index: list(self._partitions[index]) for index in sorted(self._partitions)}


class _CollectWriter(SinkWriter):
    def __init__(self, partitions: dict[int, list[Any]], index: int):
        self._predecessor = partitions.get(index, [])
        self._partition: list[Any] = []
        partitions[index] = self._partition
        self._skip = 0  # regenerated records already collected (after a restore)

    def snapshot(self) -> Any:
        return {"count": len(self._partition), "skip": self._skip}

    def restore(self, state: Any) -> None:
        # the predecessor's records are in this process's memory and were all released under the
        # output-commit rule: keep them, and skip the regenerated records they already include
        kept = self._predecessor
        self._partition[:] = kept
        self._skip = int(state.get("skip", 0)) + max(0, len(kept) - int(state["count"]))

    def write_batch(self, records: Sequence[Any]) -> None:
        if self._skip:
            n = min(self._skip, len(records))
            self._skip -= n
            records = records[n:]
        self._partition.extend(records)
