"""``--ft checkpoint``, the Flink-style baseline: aligned barriers, global checkpoints, global rollback.

The same exactly-once failure tests as the lineage stash's (tests/test_recovery.py), with the opposite
expectation on who restarts: a failure anywhere rolls *every* instance back to the last complete
global checkpoint. Plus the pieces: barrier frames, alignment in the input gate, the sinks' two-phase
commit.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
from test_input_gate import FakeChannel
from test_recovery import assert_exactly_once, restarted, run_killing, union_job

from connectors import CollectSink
from engine.codec import Batch, decode_batch, encode_batch, pack
from engine.connector import SinkWriter
from engine.errors import ProtocolError
from engine.fault_tolerance import FaultTolerance
from engine.global_checkpoint import FINAL_CHECKPOINT, EpochGate
from engine.instance import InputGate
from engine.testing import run

ALL_TASKS = {f"{step}/{i}" for step in ("left", "right", "merge", "count") for i in range(2)}


# -- end to end: kill anything, everything rolls back, output exactly once ------------------------------


@pytest.mark.parametrize("step", ["left", "merge", "count"])
def test_kill_one_instance_rolls_back_every_instance(tmp_path: Path, step: str):
    rng = random.Random(f"checkpoint-{step}")
    index, when = rng.randrange(2), round(rng.uniform(0.4, 0.8), 2)
    result = run_killing(tmp_path, [f"{step}/{index}@{when}"], "--ft", "checkpoint")
    assert restarted(result["instances"]) == ALL_TASKS, result["stderr"][-2000:]
    assert "job rolled back (restart 1)" in result["stderr"]
    assert f"{step}/{index} lost" in result["stderr"]
    for m in result["instances"].values():
        assert m["restarts"] == 1
        rec = m["recoveries"][0]
        assert rec["live_s"] is not None and rec["live_s"] < 10


def test_kill_the_sink_alone_rolls_back_the_job(tmp_path: Path):
    result = run_killing(tmp_path, ["write/0@0.6"], "--ft", "checkpoint", "-P", "sink_parallelism=1")
    assert restarted(result["instances"]) == ALL_TASKS | {"write/0"}


def test_two_failures_two_rollbacks(tmp_path: Path):
    result = run_killing(tmp_path, ["count/0@0.4", "merge/1@2.0"], "--ft", "checkpoint", n=18000)
    assert {m["restarts"] for m in result["instances"].values()} == {2}


def test_in_process_kills(tmp_path: Path):
    sink = CollectSink()
    n = 3000
    # count/1 dies, then dies again in the epoch after the rollback (every instance is in epoch 1)
    result = run(
        union_job(n, sink), ft="checkpoint", batch_size=50, checkpoint_interval=0.05,
        kill_after={"count/1": [2000, 3000]},
    )  # fmt: skip
    assert_exactly_once(sink.records, n)
    assert {m["restarts"] for m in result.instances.values()} == {2}


def test_a_failure_before_the_first_checkpoint_restarts_from_the_beginning():
    sink = CollectSink()
    result = run(
        union_job(1000, sink),
        ft="checkpoint",
        batch_size=50,
        checkpoint_interval=60,
        kill_after={"merge/0": 200},
    )
    assert_exactly_once(sink.records, 1000)
    rec = result.instances["count/0"]["recoveries"][0]
    assert rec["checkpoint_id"] is None


# -- the pieces ------------------------------------------------------------------------------------------


def test_barrier_round_trips_with_every_other_header_field():
    for batch in (
        Batch(3, (), barrier=7),
        Batch(4, ("a", 1), watermark=-5, lineage=b"\x01\x02", ingest_ns=10**18, barrier=2**40),
        Batch(5, ("x" * 5000,) * 3, barrier=1),  # compressed payload
    ):
        back = decode_batch(memoryview(encode_batch(batch))[5:])
        assert (back.seq, back.records, back.watermark, back.lineage, back.ingest_ns, back.barrier) == (
            batch.seq, tuple(batch.records), batch.watermark, batch.lineage, batch.ingest_ns, batch.barrier,
        )  # fmt: skip


def _deliver(gate: InputGate, index: int, batch: Batch | None) -> None:
    """``batch`` (``None``: the end of stream) arrives on input ``index``, a :class:`FakeChannel`."""
    channel = gate.channels[index]
    if batch is None:
        channel.eos = True
    else:
        channel.buffer.append(batch)
    gate.notify(index)


async def test_a_blocked_input_waits_until_unblocked():
    gate = InputGate([FakeChannel("a/0"), FakeChannel("b/0")])  # type: ignore[list-item]
    _deliver(gate, 0, Batch(1, (), barrier=1))
    _deliver(gate, 0, Batch(2, ("after",)))
    _deliver(gate, 1, Batch(1, ("before",)))
    index, batch = await gate.next(0.1)
    assert (index, batch.barrier) == (0, 1)
    gate.block(0)
    index, batch = await gate.next(0.1)
    assert (index, batch.records) == (1, ("before",))
    assert await gate.next(0.05) is None  # channel 0 holds a batch, but it is blocked
    _deliver(gate, 1, Batch(2, (), barrier=1))
    index, batch = await gate.next(0.1)
    assert (index, batch.barrier) == (1, 1)
    gate.block(1)
    assert gate.stalled
    assert await gate.next(5) is None  # stalled: returns at once, the alignment can complete
    gate.unblock()
    index, batch = await gate.next(0.1)
    assert (index, batch.records) == (0, ("after",))


async def test_an_input_that_ends_during_an_alignment_wakes_the_loop():
    gate = InputGate([FakeChannel("a/0"), FakeChannel("b/0")])  # type: ignore[list-item]
    _deliver(gate, 0, Batch(1, (), barrier=1))
    assert (await gate.next(0.1))[1].barrier == 1
    gate.block(0)
    _deliver(gate, 1, None)  # input 1 ends instead of sending its barrier
    assert await gate.next(5) is None and not gate.finished and gate.stalled


async def test_a_barrier_in_a_job_of_another_mode_is_a_clear_error():
    class Inst:
        name = "count/0"

    ft = FaultTolerance(Inst())  # type: ignore[arg-type]
    with pytest.raises(ProtocolError, match="count/0 received checkpoint barrier 3 but runs --ft none"):
        await ft.on_barrier(0, 3)


class _Writer(SinkWriter):
    """Prepares a batch as text, as a file sink encodes lines, and counts what it prepared."""

    def __init__(self) -> None:
        self.written: list[Any] = []
        self.prepared = 0

    def prepare(self, records: Any) -> Any:
        self.prepared += 1
        return ",".join(str(int(r)) for r in records)  # int(): a record it cannot encode raises

    def write_prepared(self, prepared: Any) -> None:
        self.written.extend(int(x) for x in prepared.split(",") if x)

    def write_batch(self, records: Any) -> None:
        self.written.extend(records)


class _FT:
    def __init__(self, writer: _Writer):
        self.writer = writer

    def sink_writers(self) -> list[_Writer]:
        return [self.writer]


def test_sinks_write_an_epoch_when_its_checkpoint_completes():
    writer = _Writer()
    gate = EpochGate(_FT(writer))  # type: ignore[arg-type]
    gate.hold(writer, [1, 2], None)  # type: ignore[arg-type]
    gate.seal(1)
    gate.hold(writer, [3], None)  # type: ignore[arg-type]
    gate.seal(2)
    gate.hold(writer, [4], None)  # type: ignore[arg-type]
    assert writer.written == []
    snapshot = gate.snapshot()  # what checkpoint 2 pre-commits: epochs 1 and 2
    gate.commit(1)
    assert writer.written == [1, 2]
    gate.commit(2)
    assert writer.written == [1, 2, 3]
    gate.seal(FINAL_CHECKPOINT)
    gate.commit(FINAL_CHECKPOINT)
    assert writer.written == [1, 2, 3, 4]
    # restored from checkpoint 2 (complete): its pre-committed epochs are written again, in order; a
    # restored FileSink skips what it finds already written
    again = _Writer()
    EpochGate(_FT(again)).restore(snapshot)  # type: ignore[arg-type]
    assert again.written == [1, 2, 3]
    # held as the writer prepared them, once per batch, when they arrived; restored ones are not prepared again
    assert writer.prepared == 3 and again.prepared == 0
    # a checkpoint taken before batches were held prepared: (writer, msgpack-packed records, stamp)
    old = _Writer()
    EpochGate(_FT(old)).restore([[1, [(0, pack([1, 2]), None)]], [2, [(0, pack([3]), 7)]]])  # type: ignore[arg-type]
    assert old.written == [1, 2, 3]


def test_a_record_the_sink_cannot_encode_fails_when_it_is_held_not_when_its_epoch_is_written():
    writer = _Writer()
    gate = EpochGate(_FT(writer))  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        gate.hold(writer, [1, object()], None)  # type: ignore[arg-type]
    assert gate.held_records == 0 and gate.current == []
