"""The GCS's in-memory index of one instance's causal log and checkpoints (:mod:`engine.gcs`).

The GCS keeps, per instance, which log segments ``[start, end)`` it stores, how far the log is
contiguous (``reach``: where the committed position will be once the writes applied so far are
acknowledged), the committed position itself, and the ids of its checkpoints. The index is rebuilt
from the keys on disk when a GCS is opened; :class:`InstanceIndex` holds it and the few operations
on segments the GCS needs: extending the contiguous reach, the fewest segments covering a range, and
removing segments.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["MAX_POSITION", "InstanceIndex"]

#: the largest log position or checkpoint id: they are 20 decimal digits in keys
MAX_POSITION = 10**20 - 1


@dataclass(eq=False, slots=True)
class InstanceIndex:
    """The in-memory index of one instance: what is stored, what is committed, which checkpoints exist."""

    base: int = 0  # positions below base were pruned
    reach: int = 0  # where `committed` will be once every write applied so far is acknowledged
    committed: int = 0  # acknowledged: every position below it is durable and was reported so
    segments: list[tuple[int, int]] = field(default_factory=list)  # stored (start, end), sorted
    checkpoints: list[int] = field(default_factory=list)  # acknowledged ids >= `complete`, sorted
    complete: int | None = None  # id of the latest complete checkpoint (acknowledged)

    def extend(self, start: int, end: int) -> None:
        """Advance ``reach`` after ``[start, end)`` was added to ``segments``."""
        if start > self.reach or end <= self.reach:
            return
        previous, self.reach = self.reach, end
        # pending segments start after the old reach; those the longer run now touches join it
        i = bisect.bisect_right(self.segments, (previous, MAX_POSITION + 1))
        while i < len(self.segments) and self.segments[i][0] <= self.reach:
            self.reach = max(self.reach, self.segments[i][1])
            i += 1

    def chain(self, start: int) -> list[tuple[int, int]] | None:
        """The fewest committed segments covering ``[start, committed)``; ``None`` on a hole (a bug)."""
        chain: list[tuple[int, int]] = []
        position, i, segments = start, 0, self.segments
        while position < self.committed:
            best: tuple[int, int] | None = None  # of those starting at or before `position`, the longest
            while i < len(segments) and segments[i][0] <= position:
                s, e = segments[i]
                if position < e <= self.committed and (best is None or e > best[1]):
                    best = (s, e)
                i += 1
            if best is None:
                return None
            chain.append(best)
            position = best[1]
        return chain

    def remove(self, drop: Callable[[int, int], bool]) -> list[tuple[int, int]]:
        """Remove the segments for which ``drop(start, end)`` holds; return them."""
        dropped = [seg for seg in self.segments if drop(*seg)]
        self.segments = [seg for seg in self.segments if not drop(*seg)]
        return dropped
