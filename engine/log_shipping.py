"""Shipping an instance's determinants to the GCS (DESIGN.md §5.3), off the critical path.

Determinants leave once something depends on them, in as few messages as that allows:

* a batch sent: its receiver's state depends on everything logged before it, and a sink downstream may
  hold output for it (the output-commit rule, §5.5);
* output held in the instance's own commit gate: it waits for the instance's own log (its ``RECV`` at
  least); then within :data:`SINK_LOG_FLUSH_S`, and the message says that output waits, so that the
  coordinator publishes commits to this worker at once (the others hear of them every 100 ms);
* a checkpoint: it completes once its log position is committed;
* anything else after :data:`LAZY_LOG_FLUSH_S`.

At most one message per ``--log-flush-ms`` otherwise. The first after a quiet spell leave at once;
under load they gather for the rest of the interval. So a source's ``SOURCE`` and the timer ``FLUSH``
that sends its batch go in one message, and a sink after a window sends none per input batch between
two firings (Nexmark q8, 1M events: 1,259 -> 476 log messages).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from engine.causal_log import CausalLog, encode

__all__ = ["LAZY_LOG_FLUSH_S", "SINK_LOG_FLUSH_S", "LogShipper"]

#: the longest a sink's instance lets its determinants gather while output waits for them in its commit
#: gate (``--log-flush-ms`` is for the rest: then its flushes are on the latency path)
SINK_LOG_FLUSH_S = 0.001
#: the longest determinants that nothing waits for yet stay unshipped: none of this instance's batches
#: sent since depends on them and no output is held for them; only its own checkpoints' completion does
LAZY_LOG_FLUSH_S = 0.05


class LogShipper:
    """Ships the new entries of one instance's :class:`~engine.causal_log.CausalLog` as ``log`` messages.

    ``want()`` when something depends on what is logged, ``logged()`` after each new determinant;
    :meth:`run` is the instance's shipping task. ``holding()`` says whether output waits in the
    commit gate (only a sink's can); ``identity()`` gives the fields that name the sender (job,
    instance, incarnation).
    """

    def __init__(
        self,
        log: CausalLog,
        send: Callable[[dict[str, Any]], Awaitable[None]],
        identity: Callable[[], dict[str, Any]],
        holding: Callable[[], bool],
        *,
        interval_s: float,
    ):
        self.log = log
        self._send = send
        self._identity = identity
        self._holding = holding
        self._slow = interval_s
        self._wanted = asyncio.Event()
        self._lazy: asyncio.TimerHandle | None = None
        #: ``log`` messages sent
        self.messages = 0

    def want(self) -> None:
        """Something depends on the determinants logged so far: ship them at the instance's pace."""
        if not self._wanted.is_set():
            self._wanted.set()

    def logged(self) -> None:
        """A determinant was logged: it leaves with the next batch sent or output held, or lazily."""
        if self._lazy is None:
            lazy = max(self._slow, LAZY_LOG_FLUSH_S)
            self._lazy = asyncio.get_running_loop().call_later(lazy, self.want)

    def close(self) -> None:
        """The instance is closing: no lazy shipment after this."""
        self._cancel_lazy()

    def _cancel_lazy(self) -> None:
        if self._lazy is not None:
            self._lazy.cancel()
            self._lazy = None

    async def run(self) -> None:
        """Ship until cancelled: each time something wants the log, at most once per interval."""
        # a sink's output waits for its own determinants: while some waits, they leave within 1 ms.
        # An upstream instance's are mostly committed before its batches reach a sink (and it holds none)
        slow = self._slow
        fast = min(slow, SINK_LOG_FLUSH_S)
        holding, last = self._holding, 0.0
        told = False  # what the coordinator last heard: whether our output waits for commits
        while True:
            await self._wanted.wait()
            wait = last + (fast if holding() else slow) - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            last = time.monotonic()
            self._wanted.clear()
            self._cancel_lazy()  # whatever is logged by now leaves in this message
            waiting = holding()
            taken = self.log.take_unflushed()
            if taken is None:
                if waiting and not told:  # our determinants left already, before the output was held
                    told = True
                    await self._send({"type": "waiting", **self._identity(), "waiting": True})
                continue
            start, dets = taken
            self.messages += 1
            told = waiting
            await self._send({
                "type": "log", **self._identity(), "start": start, "count": len(dets),
                "entries": encode(dets), "sent_at": time.time(), "waiting": waiting,
            })  # fmt: skip
