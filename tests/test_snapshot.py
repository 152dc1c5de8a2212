"""Asynchronous snapshots (engine.snapshot): the state is frozen between two batches, written on a
thread while the instance goes on, and the record is sent once it is on disk; a failure of the
write fails the instance with its reason."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from test_recovery import assert_exactly_once, union_job

from connectors import CollectSink, GeneratorSource
from engine import Job
from engine.errors import StateError
from engine.state import KeyedState
from engine.testing import run


class SlowWrites:
    """Make every ``KeyedState.write_checkpoint`` slow, and see whether the instance went on meanwhile."""

    def __init__(self, seconds: float, progress: list[int]):
        self.seconds = seconds
        self.progress = progress  # bumped by the job's operators, on the instances' loop
        self.writes = 0
        self.went_on = 0  # writes during which the job processed records
        self.threads: set[str] = set()
        self._original = KeyedState.write_checkpoint

    def __call__(self, state: KeyedState, path: Any) -> None:
        self.threads.add(threading.current_thread().name)
        before = self.progress[0]
        deadline = time.monotonic() + self.seconds
        while time.monotonic() < deadline and self.progress[0] == before:
            time.sleep(0.002)
        self.writes += 1
        self.went_on += self.progress[0] > before
        time.sleep(max(0.0, deadline - time.monotonic()))
        self._original(state, path)


@pytest.fixture
def progress() -> list[int]:
    return [0]


@pytest.fixture
def slow_writes(monkeypatch: pytest.MonkeyPatch, progress: list[int]) -> Iterator[SlowWrites]:
    slow = SlowWrites(0.1, progress)
    monkeypatch.setattr(KeyedState, "write_checkpoint", lambda state, path: slow(state, path))
    yield slow


def counting_job(name: str, n: int, sink: CollectSink, progress: list[int]) -> Job:
    def seen(record: tuple[str, int]) -> tuple[str, int]:
        progress[0] += 1
        return record

    job = Job(name, parallelism=2)
    # rate-limited (~1.5 s): long enough for checkpoints to be written and their records sent
    words = job.source("words", GeneratorSource(lambda i: f"w{i % 13}", count=n, rate=n / 1.5))
    words.key_by(lambda w: w).count("count").map("seen", seen).sink("out", sink)
    return job


@pytest.mark.parametrize("ft", ["lineage", "wal", "checkpoint"])
def test_the_instance_processes_batches_while_its_checkpoint_is_written(
    ft: str, slow_writes: SlowWrites, progress: list[int]
) -> None:
    sink = CollectSink()
    n = 6000
    result = run(
        counting_job(f"async_{ft}", n, sink, progress), ft=ft, batch_size=20, checkpoint_interval=0.05
    )
    assert sorted(sink.records) == sorted(
        (f"w{k}", c) for k in range(13) for c in range(1, len(range(k, n, 13)) + 1)
    )
    assert slow_writes.writes > 0 and slow_writes.went_on > 0, vars(slow_writes)
    assert threading.main_thread().name not in slow_writes.threads  # written off the loop
    counts = [m for name, m in result.instances.items() if name.startswith("count/")]
    assert any(m["checkpoints"] > 0 and m["checkpoint_async_ms"] >= 100 for m in counts), counts


def test_kills_while_checkpoints_are_written_stay_exactly_once(slow_writes: SlowWrites) -> None:
    sink = CollectSink()
    n = 3000
    result = run(
        union_job(n, sink),
        batch_size=50,
        checkpoint_interval=0.05,
        kill_after={"count/1": [2500, 3000], "count/0": 4000},
    )
    assert_exactly_once(sink.records, n)
    assert result.instances["count/1"]["restarts"] == 2 and result.instances["count/0"]["restarts"] == 1
    assert slow_writes.writes > 0


@pytest.mark.parametrize("ft", ["lineage", "checkpoint"])
def test_a_checkpoint_that_cannot_be_written_fails_the_job_with_its_reason(
    ft: str, monkeypatch: pytest.MonkeyPatch, progress: list[int]
) -> None:
    def full_disk(state: KeyedState, path: Any) -> None:
        raise StateError(f"keyed state at {state.path}: checkpoint into {path} failed: IO error: No space left on "
                         "device; free disk space, or point --data-dir at a writable disk with room")  # fmt: skip

    monkeypatch.setattr(KeyedState, "write_checkpoint", full_disk)
    result = run(
        counting_job(f"full_{ft}", 6000, CollectSink(), progress),
        ft=ft,
        batch_size=20,
        checkpoint_interval=0.05,
        raise_on_failure=False,
    )
    assert result.state == "failed"
    assert result.error is not None
    assert (
        "No space left on device; free disk space, or point --data-dir at a writable disk with room"
        in result.error
    )
    assert "count/" in result.error and "\n" not in result.error
