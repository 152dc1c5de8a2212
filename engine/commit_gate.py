"""The output-commit rule (DESIGN.md §5.5): a sink releases output only once its causal past is committed.

Under the lineage stash a sink's batch may depend on determinants that are not yet in the GCS; if the
world saw its output and then those determinants died with their holders, a recovery could produce
different output. :class:`CommitGate` holds such batches and writes them, in order, as commit positions
arrive; a bounded number of held batches makes a sink that waits for storage slow its producers down
rather than grow memory.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from engine.connector import SinkWriter
from engine.metrics import BatchStamp
from engine.stash import Stash

if TYPE_CHECKING:
    from engine.lineage import LineageFT

__all__ = ["CommitGate"]


class CommitGate:
    """The output-commit rule (DESIGN.md §5.5): a sink writes a batch once its causal past is committed.

    Each held batch remembers the stash's frontier when it was processed (every log position it
    depends on, the sink's own ``RECV`` included); commits arriving from the GCS release batches in
    order. This is the one place where the lineage stash waits for storage.
    """

    #: held batches past which the instance stops taking input until commits release some: a sink
    #: that waits for storage must slow its producers down (backpressure), not grow memory. It must
    #: cover a commit round trip at full speed (flush interval + GCS ack + publish, ~10 ms: 100k+
    #: records at 10M records/s), or the commit lag caps throughput
    LIMIT = 256

    def __init__(self, ft: LineageFT):
        self.ft = ft
        #: (frontier, writer, the batch as the writer prepared it, its records, ingest stamp)
        self.held: deque[tuple[dict[str, int], SinkWriter, Any, int, int | None]] = deque()
        self.stamp: BatchStamp | None = None
        self.drained = asyncio.Event()
        self.drained.set()
        self.below_limit = asyncio.Event()
        self.below_limit.set()
        self.max_held = 0

    def hold(self, writer: SinkWriter, records: Sequence[Any], stamp: BatchStamp | None) -> None:
        frontier = self.ft.stash.frontier()
        ingest = stamp.ingest_ns if stamp is not None else None
        self.stamp = stamp
        if not self.held and Stash.satisfied(frontier, self.ft.committed):
            writer.write_batch(records)
            if stamp is not None:
                stamp.written(ingest, len(records))
            return
        # held encoded (SinkWriter.prepare): ~1000 live objects per held batch made the sink's garbage
        # collector run on every batch and its records go cold before they were written
        self.held.append((frontier, writer, writer.prepare(records), len(records), ingest))
        self.max_held = max(self.max_held, len(self.held))
        self.drained.clear()
        self.ft.want_log()  # it waits for our own determinants too (its RECV at least)
        if len(self.held) >= self.LIMIT:
            self.below_limit.clear()

    def release(self) -> None:
        held, committed = self.held, self.ft.committed
        while held and Stash.satisfied(held[0][0], committed):
            _, writer, prepared, count, ingest = held.popleft()
            writer.write_prepared(prepared)
            if self.stamp is not None:
                self.stamp.written(ingest, count)
        if len(held) < self.LIMIT:
            self.below_limit.set()
        if not held:
            self.drained.set()

    def snapshot(self) -> list[tuple[dict[str, int], int, Any, int]]:
        """Held batches belong to a checkpoint: they were processed before it but not yet written."""
        writers = {id(w): i for i, w in enumerate(self.ft.sink_writers())}
        return [(f, writers[id(w)], p, n) for f, w, p, n, _ in self.held]

    def restore(self, held: Sequence[Any]) -> None:
        writers = self.ft.sink_writers()
        for item in held:
            if len(item) == 3:  # saved before writers prepared held batches: (frontier, writer, records)
                frontier, index, records = item
                prepared, count = writers[index].prepare(records), len(records)
            else:
                frontier, index, prepared, count = item
            self.held.append((dict(frontier), writers[index], prepared, int(count), None))
        if self.held:
            self.drained.clear()
