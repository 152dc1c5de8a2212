"""engine.commit_gate: held sink batches are kept as the writer prepared them and written in order."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from connectors import CollectSink, GeneratorSource
from engine import Job, log_shipping, recovery
from engine.causal_log import CausalLog
from engine.codec import pack, unpack
from engine.commit_gate import CommitGate
from engine.connector import SinkWriter
from engine.stash import Stash
from engine.testing import run


class JoiningWriter(SinkWriter):
    """Prepares a batch as one ``bytes`` line and records every call."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.calls: list[str] = []

    def write_batch(self, records: Sequence[Any]) -> None:
        self.calls.append("write_batch")
        self.lines.extend(str(r) for r in records)

    def prepare(self, records: Sequence[Any]) -> Any:
        self.calls.append("prepare")
        return ",".join(str(r) for r in records).encode()

    def write_prepared(self, prepared: Any) -> None:
        self.calls.append("write_prepared")
        self.lines.extend(prepared.decode().split(","))


class PlainWriter(SinkWriter):
    """Only ``write_batch``: the default ``prepare`` holds the records themselves."""

    def __init__(self) -> None:
        self.batches: list[list[Any]] = []

    def write_batch(self, records: Sequence[Any]) -> None:
        self.batches.append(list(records))


class FakeFT:
    """What a CommitGate uses of its LineageFT: the stash, the commit positions, the sink writers, and
    the call for its log (counted)."""

    def __init__(self, writers: list[SinkWriter]):
        self.log = CausalLog(owner="write/0")
        self.stash = Stash("write/0")
        self.stash.attach_own(self.log)
        self.committed: dict[str, int] = {}
        self.writers = writers
        self.log_wanted = 0

    def want_log(self) -> None:
        self.log_wanted += 1

    def sink_writers(self) -> list[SinkWriter]:
        return self.writers

    def commit(self, position: int) -> None:
        self.committed["write/0"] = position
        self.stash.commit({"write/0": position})


def test_nothing_held_and_nothing_uncommitted_writes_at_once_without_preparing():
    writer = JoiningWriter()
    ft = FakeFT([writer])
    gate = CommitGate(ft)  # type: ignore[arg-type]
    gate.hold(writer, ["a", "b"], None)
    assert writer.calls == ["write_batch"] and writer.lines == ["a", "b"]
    assert gate.drained.is_set() and ft.log_wanted == 0


def test_held_batches_are_prepared_at_once_and_written_in_order_as_commits_cover_them():
    writer = JoiningWriter()
    ft = FakeFT([writer])
    gate = CommitGate(ft)  # type: ignore[arg-type]
    ft.log.recv(0)  # position 1: the batch depends on its own RECV, not yet committed
    gate.hold(writer, ["a", "b"], None)
    ft.log.recv(1)  # position 2
    gate.hold(writer, ["c"], None)
    assert writer.calls == ["prepare", "prepare"] and writer.lines == []
    assert [entry[2:4] for entry in gate.held] == [(b"a,b", 2), (b"c", 1)]
    assert not gate.drained.is_set()
    assert ft.log_wanted == 2  # each held batch calls for our log

    ft.commit(1)
    gate.release()
    assert writer.lines == ["a", "b"] and len(gate.held) == 1
    ft.commit(2)
    gate.release()
    assert writer.lines == ["a", "b", "c"] and writer.calls[2:] == ["write_prepared", "write_prepared"]
    assert gate.drained.is_set()


def test_a_checkpoint_keeps_the_prepared_batches_and_a_restore_writes_them_once_committed():
    writer = JoiningWriter()
    ft = FakeFT([PlainWriter(), writer])
    gate = CommitGate(ft)  # type: ignore[arg-type]
    ft.log.recv(0)
    gate.hold(writer, ["x", "y"], None)
    saved = unpack(pack(gate.snapshot()))  # as SnapshottingFT.save_held / restored_held store it

    again = JoiningWriter()
    ft2 = FakeFT([PlainWriter(), again])
    gate2 = CommitGate(ft2)  # type: ignore[arg-type]
    gate2.restore(saved)
    assert not gate2.drained.is_set()
    ft2.committed["write/0"] = 1
    gate2.release()
    assert again.lines == ["x", "y"] and again.calls == ["write_prepared"]
    assert gate2.drained.is_set()


def test_a_writer_without_prepare_is_held_its_records_and_written_by_write_batch():
    writer = PlainWriter()
    ft = FakeFT([writer])
    gate = CommitGate(ft)  # type: ignore[arg-type]
    ft.log.recv(0)
    gate.hold(writer, (1, 2, 3), None)
    assert writer.batches == []
    saved = unpack(pack(gate.snapshot()))
    ft.commit(1)
    gate.release()
    assert writer.batches == [[1, 2, 3]]

    restored = PlainWriter()
    gate2 = CommitGate(FakeFT([restored]))  # type: ignore[arg-type]
    gate2.restore(saved)
    gate2.ft.committed["write/0"] = 1
    gate2.release()
    assert restored.batches == [[1, 2, 3]]


def test_held_batches_saved_before_writers_prepared_them_restore_through_prepare():
    # a checkpoint of the previous layout: (frontier, writer index, records)
    saved = unpack(pack([({"write/0": 1}, 0, ["p", "q"])]))
    writer = JoiningWriter()
    gate = CommitGate(FakeFT([writer]))  # type: ignore[arg-type]
    gate.restore(saved)
    assert writer.calls == ["prepare"] and [entry[2:4] for entry in gate.held] == [(b"p,q", 2)]
    gate.ft.committed["write/0"] = 1
    gate.release()
    assert writer.lines == ["p", "q"]


def test_a_sinks_output_does_not_wait_for_the_log_flush_interval() -> None:
    """The sink's own determinants leave within 1 ms (SINK_LOG_FLUSH_S), whatever --log-flush-ms says:
    its output waits for them. Source and sink in one task, so no other log is in its causal past."""
    job = Job("sink_flush", parallelism=1)
    job.source("nums", GeneratorSource(lambda i: i, count=2000, rate=2000)).sink("out", CollectSink())
    result = run(job, batch_size=50, flush_ms=5, log_flush_ms=400)
    latency = result.instances["out/0"]["latency"]
    assert latency["count"] >= 20
    # with the 400 ms interval, most batches would wait 200 ms or more for their commit
    assert latency["p50_ms"] < 100, latency


def test_a_sink_with_nothing_held_ships_its_log_at_the_leaf_pace(monkeypatch: pytest.MonkeyPatch) -> None:
    """An instance that sends to no one ships its log once per LAZY_LOG_FLUSH_S while no output waits for
    it (not once per batch: those messages would load the coordinator for nothing), and at the sink's
    pace again as soon as output waits, and hears of commits at once while it does: the rare outputs
    are held neither for the longer interval nor until the next trim publication."""
    monkeypatch.setattr(log_shipping, "LAZY_LOG_FLUSH_S", 0.5)  # so that waiting it out would show
    monkeypatch.setattr(recovery, "TRIM_PUBLISH_S", 1.0)  # as would the commits not reaching it at once
    job = Job("leaf_flush", parallelism=1)
    out = CollectSink()
    nums = job.source("nums", GeneratorSource(lambda i: i, count=3000, rate=2000))
    nums.filter("rare", lambda i: i % 500 == 499).sink("out", out)
    result = run(job, batch_size=20, flush_ms=5)
    assert sorted(out.records) == [499, 999, 1499, 1999, 2499, 2999]
    instance = result.instances["out/0"]
    batches = result.instances["nums/0"]["batches_in"]
    assert batches >= 60, instance  # a batch every 10 ms or so: one message per batch at the sink's pace
    assert instance["log_messages"] < batches / 4, (instance["log_messages"], batches)
    latency = instance["latency"]
    assert latency["count"] == 6 and latency["p50_ms"] < 100, latency  # 250 ms if it waited the interval


def test_a_sources_log_leaves_with_the_batches_that_depend_on_it() -> None:
    """Determinants are shipped when a batch that depends on them is sent, not when they are logged: a
    source batch cut at SOURCE and sent at the timer's FLUSH 5 ms later costs one log message, not two."""
    job = Job("source_flush", parallelism=2)
    out = CollectSink()
    nums = job.source("nums", GeneratorSource(lambda i: i, count=2000, rate=2000))
    nums.key_by(lambda i: i % 4).count("count").sink("out", out)
    result = run(job, batch_size=100, flush_ms=5)
    assert len(out.records) == 2000
    source = result.instances["nums/0"]
    # every batch is cut (SOURCE) and, below the batch size per receiver, sent by the timer (FLUSH)
    assert source["log_end"] >= 2 * source["batches_in"] - 1 >= 15, source
    assert source["log_messages"] <= source["batches_in"] + 1, source
