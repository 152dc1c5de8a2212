"""The input gate of a task instance: its input channels merged in arrival order (``RECV``, DESIGN.md §4).

The order in which an instance takes batches from different channels is the main nondeterminism the
lineage stash logs; the gate is where that order is decided (live) or imposed (replay,
:meth:`InputGate.take_from`). Barrier alignment (``--ft checkpoint``) blocks channels here.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Sequence

from engine.channel import InputChannel
from engine.codec import Batch
from engine.errors import ProtocolError

__all__ = ["InputGate"]


class InputGate:
    """Merges the input channels of an instance, in arrival order.

    Channels report arrivals through ``on_ready``; the gate keeps their order, because the order in
    which an instance takes batches from different channels is exactly the ``RECV`` determinant.
    Channels can be *blocked* (barrier alignment, ``--ft checkpoint``): their batches wait in the
    channel until :meth:`unblock`.
    """

    def __init__(self, channels: Sequence[InputChannel]):
        self.channels = list(channels)
        self._arrivals: deque[int] = deque()
        self._wakeup = asyncio.Event()
        self._open = set(range(len(self.channels)))
        self.blocked: set[int] = set()
        #: with a recovering fault-tolerance mode, a lost upstream reconnects and resends: not an error
        self.tolerate_broken = False

    def block(self, index: int) -> None:
        """Take nothing more from channel ``index`` until :meth:`unblock`."""
        self.blocked.add(index)

    def unblock(self) -> None:
        self.blocked.clear()
        self.rescan()

    @property
    def stalled(self) -> bool:
        """Every input still open is blocked: nothing can come until the alignment completes."""
        return bool(self.blocked) and self._open <= self.blocked

    def notify(self, index: int) -> None:
        """Called by channel ``index`` when a batch, its end or its breakage arrives."""
        self._arrivals.append(index)
        self._wakeup.set()

    @property
    def finished(self) -> bool:
        return not self._open

    async def take_from(self, index: int) -> Batch:
        """The next batch of channel ``index``, waiting for it (replay follows the logged order).

        Batches of other channels that arrive meanwhile stay buffered in their channels (their credits
        bound how many), to be taken when the log names them or once the instance is live.
        """
        channel = self.channels[index]
        while True:
            batch = channel.take()
            if batch is not None:
                return batch
            if channel.finished:
                raise ProtocolError(
                    f"replay of {channel.channel_id.dst} needs another batch from {channel.channel_id.src}, "
                    "but that channel has ended: the recovered log does not match the inputs"
                )
            self._wakeup.clear()
            await self._wakeup.wait()

    def rescan(self) -> None:
        """After a replay: forget stale arrival notices; queue the channels that hold batches or ended."""
        self._arrivals.clear()
        self._arrivals.extend(
            i for i in sorted(self._open) if self.channels[i].pending or self.channels[i].finished
        )
        self._wakeup.set()

    async def next(self, timeout: float | None) -> tuple[int, Batch] | None:
        """The next batch and its channel index; ``None`` on timeout or once every input ended.

        Raises :class:`ChannelBroken` if an upstream connection broke before its end of stream.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        blocked = self.blocked
        while self._open:
            while self._arrivals:
                index = self._arrivals.popleft()
                if blocked and index in blocked:
                    continue  # its batches wait in the channel; unblock() queues it again
                channel = self.channels[index]
                batch = channel.take()
                if batch is not None:
                    return index, batch  # RECV(index): the merge order across inputs
                if channel.broken is not None and not self.tolerate_broken:
                    raise channel.broken
                if channel.finished:
                    self._open.discard(index)
                    if blocked:
                        return None  # an alignment waits for this input no more: let the loop check
            if not self._open or self.stalled:
                break
            self._wakeup.clear()
            # notices can be fewer than events (a replay took batches without them, a rescan queued
            # one notice for several batches): the channels themselves are the truth
            if any(self.channels[i].pending or self.channels[i].finished for i in self._open - blocked):
                self.rescan()
                continue
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return None
            try:
                # asyncio.timeout, not wait_for: Python 3.11's wait_for returned when the wake-up came in
                # the turn of a cancel, and the instance's task went on after being cancelled
                async with asyncio.timeout(remaining):
                    await self._wakeup.wait()
            except TimeoutError:
                return None
        return None
