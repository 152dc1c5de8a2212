"""engine.log_shipping: when an instance's determinants leave for the GCS, and what the message says."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from engine import log_shipping
from engine.causal_log import CausalLog, decode
from engine.log_shipping import LogShipper


class Harness:
    """A shipper over a real causal log, its messages collected instead of sent."""

    def __init__(self, *, interval_s: float = 0.005):
        self.log = CausalLog(owner="out/0")
        self.holding = asyncio.Event()
        self.sent: list[dict[str, Any]] = []
        self.shipper = LogShipper(
            self.log,
            self._send,
            lambda: {"job": "j", "instance": "out/0", "incarnation": 0},
            self.holding.is_set,
            interval_s=interval_s,
        )
        self.task = asyncio.get_running_loop().create_task(self.shipper.run())

    async def _send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)

    def recv(self) -> None:
        self.log.recv(0)
        self.shipper.logged()

    async def settle(self, seconds: float = 0.02) -> None:
        await asyncio.sleep(seconds)

    async def close(self) -> None:
        self.shipper.close()
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


@pytest.fixture
def lazy(monkeypatch: pytest.MonkeyPatch) -> float:
    monkeypatch.setattr(log_shipping, "LAZY_LOG_FLUSH_S", 0.4)  # wide margins: timing on a busy machine
    return 0.4


async def test_determinants_nothing_depends_on_wait_for_the_lazy_pace(lazy: float) -> None:
    h = Harness()
    h.recv()
    h.recv()
    await h.settle(lazy / 2)
    assert h.sent == []  # no batch sent, no output held: nothing waits for them
    await h.settle(lazy)
    assert [(m["type"], m["start"], m["count"], m["waiting"]) for m in h.sent] == [("log", 0, 2, False)]
    assert len(decode(h.sent[0]["entries"])) == 2 and h.shipper.messages == 1
    await h.close()


async def test_a_batch_sent_ships_what_was_logged_before_it_in_one_message(lazy: float) -> None:
    h = Harness()
    h.recv()  # SOURCE, say
    h.recv()  # and the FLUSH that sends the batch
    h.shipper.want()  # the batch leaves
    await h.settle()
    assert [(m["start"], m["count"]) for m in h.sent] == [(0, 2)]
    await h.settle(lazy / 2)
    h.recv()  # its lazy pace counts from now: the first one's timer went with that message
    await h.settle(0.75 * lazy)
    assert len(h.sent) == 1
    await h.settle(lazy / 2)
    assert [(m["start"], m["count"]) for m in h.sent] == [(0, 2), (2, 1)]
    await h.close()


async def test_output_held_with_the_log_already_shipped_is_told_once(lazy: float) -> None:
    """The log left before the output was held (it said not waiting): a ``waiting`` message tells the
    coordinator, once, so that it publishes commits to this worker at once; the next log says so too."""
    h = Harness()
    h.recv()
    h.shipper.want()
    await h.settle()
    h.holding.set()  # the commit gate holds output that needs nothing new of ours
    h.shipper.want()
    await h.settle()
    h.shipper.want()
    await h.settle()
    assert [(m["type"], m["waiting"]) for m in h.sent] == [("log", False), ("waiting", True)]
    assert h.sent[1] == {
        "type": "waiting",
        "job": "j",
        "instance": "out/0",
        "incarnation": 0,
        "waiting": True,
    }
    h.recv()
    h.shipper.want()
    await h.settle()
    assert (h.sent[-1]["type"], h.sent[-1]["waiting"]) == ("log", True)
    h.holding.clear()  # released
    h.recv()
    h.shipper.want()
    await h.settle()
    assert (h.sent[-1]["type"], h.sent[-1]["waiting"]) == ("log", False)
    await h.close()


async def test_a_sink_ships_within_a_millisecond_while_output_waits_and_others_keep_their_pace() -> None:
    sink, other = Harness(interval_s=0.2), Harness(interval_s=0.2)
    sink.holding.set()  # only a sink's commit gate holds output
    for h in (sink, other):
        h.recv()
        h.shipper.want()
    await asyncio.sleep(0.02)
    for h in (sink, other):  # the first after a quiet spell leaves at once
        assert len(h.sent) == 1
        h.recv()
        h.shipper.want()
    await asyncio.sleep(0.02)
    assert len(sink.sent) == 2  # 1 ms later
    assert len(other.sent) == 1  # waits for the rest of its 200 ms
    await sink.close()
    await other.close()
