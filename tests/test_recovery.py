"""The lineage stash end to end: kill instances of a running job; only they restart; output is exactly-once.

The job (jobs/union_count.py) merges two generated sources with ``union`` (so the order in which
``merge`` receives their batches is truly nondeterministic), splits sentences into words, keys by word
and keeps a running ``count`` written to a FileSink: for every word w seen N_w times the output must
hold the records (w, 1) .. (w, N_w), each exactly once, whatever was killed and when.

At the end, the coordinator's side of commits alone: ``log`` messages fed through its dispatch, with a
GCS in memory and fake worker connections.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import random
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import union_count
from support import ROOT, read_jsonl

from connectors import CollectSink, GeneratorSource, ListSource
from engine import Job
from engine.codec import pack, unpack
from engine.config import JobConfig
from engine.coordinator import Coordinator
from engine.errors import ProtocolError
from engine.gcs_backends import MemoryGCS
from engine.job_run import JobRun, WorkerConn
from engine.lineage import checkpoint_phase
from engine.loader import register_in_process
from engine.plan import Plan
from engine.recovery import LineageCoordinator
from engine.testing import run

SENTENCES = 6000
RATE = 6000  # per source: the job runs ~1 s, so kills land while it is busy


def expected_counts(n: int) -> Counter[str]:
    return Counter(w for salt in (1, 2) for i in range(n) for w in union_count.sentence(i, salt).split())


def assert_exactly_once(records: list, n: int) -> None:
    seen: dict[str, list[int]] = defaultdict(list)
    for word, count in records:
        seen[word].append(count)
    expected = expected_counts(n)
    problems = {
        w: (sorted(seen.get(w, [])) if len(seen.get(w, [])) < 8 else f"{len(seen.get(w, []))} records", c)
        for w, c in expected.items()
        if sorted(seen.get(w, [])) != list(range(1, c + 1))
    }
    assert not problems, f"{len(problems)} words without exactly 1..N: {dict(list(problems.items())[:3])}"
    assert set(seen) == set(expected)


def run_killing(tmp_path: Path, kills: list[str], *extra: str, n: int = SENTENCES) -> dict:
    out = tmp_path / "out"
    metrics = tmp_path / "metrics.json"
    args = [sys.executable, "-m", "engine", "run", "jobs/union_count.py", "--parallelism", "2"]
    args += ["-P", f"sentences={n}", "-P", f"rate={RATE}", "-P", f"output={out}", *extra]
    args += ["--checkpoint-interval", "0.3", "--metrics-out", str(metrics), "--timeout", "90"]
    for k in kills:
        args += ["--kill", k]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_exactly_once(read_jsonl(out), n)
    data = json.loads(metrics.read_text())["instances"]
    return {"instances": data, "stderr": proc.stderr}


def restarted(instances: dict) -> set[str]:
    return {m["task"] for m in instances.values() if m["restarts"]}


@pytest.mark.parametrize("step", ["left", "right", "merge", "count"])
@pytest.mark.parametrize("seed", [1, 2])
def test_kill_one_instance_of_each_step(tmp_path: Path, step: str, seed: int):
    rng = random.Random(f"{step}-{seed}")
    index, when = rng.randrange(2), round(rng.uniform(0.2, 0.8), 2)
    result = run_killing(tmp_path, [f"{step}/{index}@{when}"])
    assert restarted(result["instances"]) == {f"{step}/{index}"}, result["stderr"][-2000:]
    rec = result["instances"][f"{step}/{index}"]["recoveries"][0]
    assert rec["live_s"] is not None and rec["live_s"] < 10
    assert "recovered alone" in result["stderr"]


def test_kill_two_instances_at_once(tmp_path: Path):
    result = run_killing(tmp_path, ["merge/0@0.5", "count/1@0.5"])
    assert restarted(result["instances"]) == {"merge/0", "count/1"}


def test_kill_the_sink_alone(tmp_path: Path):
    result = run_killing(tmp_path, ["write/0@0.6"], "-P", "sink_parallelism=1")
    assert restarted(result["instances"]) == {"write/0"}


def test_kill_the_same_instance_twice(tmp_path: Path):
    result = run_killing(tmp_path, ["count/0@0.3", "count/0@2.0"], n=18000)
    assert restarted(result["instances"]) == {"count/0"}
    assert result["instances"]["count/0"]["restarts"] == 2


def test_write_first_mode_recovers_exactly_once(tmp_path: Path):
    result = run_killing(tmp_path, ["merge/0@0.5"], "--ft", "wal")
    assert restarted(result["instances"]) == {"merge/0"}
    rec = result["instances"]["merge/0"]["recoveries"][0]
    assert rec["log_entries_from_stashes"] == 0  # write-first: the GCS holds everything anyone depends on


def test_unbounded_forwarding_depth(tmp_path: Path):
    result = run_killing(tmp_path, ["merge/1@0.5"], "--ft-depth", "-1")
    assert restarted(result["instances"]) == {"merge/1"}


# -- in-process, deterministic: engine.testing's kill_after -------------------------------------------


def union_job(n: int, sink: CollectSink) -> Job:
    job = Job("union_inproc", parallelism=2)
    left = job.source("left", GeneratorSource(lambda i: union_count.sentence(i, 1), count=n))
    right = job.source("right", GeneratorSource(lambda i: union_count.sentence(i, 2), count=n))
    words = left.union("merge", right).flat_map("split", str.split)
    words.key_by(lambda w: w).count("count").sink("write", sink)
    return job


@pytest.mark.parametrize(
    "kill_after",
    [
        {"count/0": 3000},
        {"merge/1": 400},
        {"left/0": 500},
        {"count/1": 2500, "merge/0": 300},
        {"count/0": [2000, 500]},  # killed again 500 records into its own recovery (during replay)
        {"count/1": [1500, 4000, 100]},
    ],
)
def test_in_process_kills_are_exactly_once(kill_after: dict):
    sink = CollectSink()
    n = 3000
    result = run(union_job(n, sink), batch_size=50, checkpoint_interval=0.05, kill_after=kill_after)
    assert_exactly_once(sink.records, n)
    killed = {name: (len(v) if isinstance(v, list) else 1) for name, v in kill_after.items()}
    for name, m in result.instances.items():
        expected = killed.get(name, 0)
        if name.startswith("write/") or name.startswith("split/"):
            continue  # chained: they share count's / merge's task
        assert m["restarts"] == expected, (name, m["restarts"], expected)


def test_instances_checkpoint_each_at_its_own_phase_of_the_interval():
    """Independent checkpoints are spread over the interval, not taken by every instance at once."""
    names = [f"{step}/{i}" for step in ("left", "right", "merge", "split", "count") for i in (0, 1)] + [
        "write/0"
    ]
    phases = sorted(checkpoint_phase(n) for n in names)
    assert phases == sorted(checkpoint_phase(n) for n in reversed(names))  # a function of the name alone
    assert all(0 <= p < 1 for p in phases) and len(set(phases)) == len(names)
    assert max(b - a for a, b in itertools.pairwise([*phases, phases[0] + 1])) < 0.5  # no half left empty


def test_every_instance_checkpoints_each_interval_from_its_phase_on():
    job = Job("phases", parallelism=2)
    nums = job.source("nums", GeneratorSource(lambda i: i % 20, count=3000, rate=3000))  # ~1 s
    nums.key_by(lambda x: x).count("count").sink("out", CollectSink())
    result = run(job, batch_size=100, checkpoint_interval=0.2)
    # per task instance (the sinks are chained to count): the first after at most 0.4 s, then every 0.2 s
    taken = {
        name: result.instances[name]["checkpoints"] for name in ("nums/0", "nums/1", "count/0", "count/1")
    }
    assert all(n >= 2 for n in taken.values()), taken


@pytest.mark.parametrize("ft", ["lineage", "wal"])
def test_in_process_kill_in_each_recovering_mode(ft: str):
    sink = CollectSink()
    result = run(
        union_job(2000, sink), ft=ft, batch_size=50, checkpoint_interval=0.05, kill_after={"count/1": 1500}
    )
    assert_exactly_once(sink.records, 2000)
    assert result.instances["count/1"]["restarts"] == 1


def test_write_first_waits_for_storage_and_lineage_does_not():
    """--ft wal puts a GCS round trip before every batch leaves; the lineage stash puts none."""
    waits = {}
    for ft in ("wal", "lineage"):
        job = Job(f"wait_{ft}")
        job.source("nums", ListSource(list(range(2000)))).map("inc", lambda x: x + 1).rebalance().sink(
            "out", CollectSink()
        )
        result = run(job, ft=ft, batch_size=100, gcs_delay_ms=10)
        waits[ft] = result.instances["inc/0"]["commit_wait_s"]
    # 20 batches sent, each after a >= 10 ms acknowledgment (group commit may share some)
    assert waits["wal"] >= 0.1, waits
    assert waits["lineage"] == 0.0, waits


def test_replay_recovers_nondeterministic_ctx_values():
    """ctx.random() is logged: a replayed instance rebuilds the state its released output came from.

    The reduce function folds a random draw into the state and emits (total, draw). If the replay drew
    fresh values, the totals written after the recovery would not continue the ones written before it.
    """
    from engine import ctx

    def fold(acc, x):
        r = ctx.random().randrange(1000)
        return (acc[0] + r, r)

    sink = CollectSink()
    job = Job("ctx", parallelism=1)
    # paced, so that output released before the crash depends on draws the replay must reproduce
    nums = job.source("nums", GeneratorSource(lambda i: (i % 10, 0, 0), count=2000, rate=5000))
    nums.key_by(lambda t: t[0]).reduce("fold", lambda acc, t: (acc[0], *fold(acc[1:], t))).sink("out", sink)
    result = run(job, batch_size=100, checkpoint_interval=60, kill_after={"fold/0": 1250})
    assert result.instances["fold/0"]["restarts"] == 1
    by_key: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for key, (_, total, last) in sink.records:
        by_key[key].append((total, last))
    assert sorted(by_key) == list(range(10))
    for outputs in by_key.values():
        assert len(outputs) == 200
        assert outputs[0] == (0, 0)  # the first record of a key is the start value
        for (prev, _), (total, last) in itertools.pairwise(outputs):
            assert total == prev + last


# -- the coordinator's log path: messages of a loop turn are stored as one GCS request ---------------


LOG = bytes(range(256))  # position p holds determinant byte p


class FakeWS:
    """A worker's control websocket: records what the coordinator sends to the worker."""

    closed = False

    def __init__(self, worker_id: str, sent: list[tuple[str, dict]]):
        self.worker_id = worker_id
        self.sent = sent

    async def send_bytes(self, data: bytes) -> None:
        self.sent.append((self.worker_id, unpack(data)))


@dataclass
class LogPath:
    coord: Coordinator
    gcs: MemoryGCS
    run: JobRun
    insts: list[str]
    writes: list[int]  # the number of storage ops of every GCS write (one per group)
    requests: list[int]  # one item per request queued in the GCS
    sent: list[tuple[str, dict]]  # (worker id, message) the coordinator sent

    @property
    def lineage(self) -> Any:
        assert self.run.lineage is not None
        return self.run.lineage.job(self.run.job_id)

    async def log(
        self,
        inst: str,
        start: int,
        count: int,
        *,
        incarnation: int = 0,
        data: bytes | None = None,
        waiting: bool | None = None,
    ):
        msg = {
            "type": "log", "job": self.run.job_id, "instance": inst, "incarnation": incarnation,
            "start": start, "count": count, "entries": LOG[start : start + count] if data is None else data,
            "sent_at": time.time(),
        }  # fmt: skip
        if waiting is not None:
            msg["waiting"] = waiting
        conn = self.coord.workers[self.run.placement[inst]]
        await self.coord._on_worker_message(conn, msg)  # what a worker's control connection does

    def commits(self) -> list[tuple[str, dict]]:
        return [(w, m["positions"]) for w, m in self.sent if m["type"] == "commit"]


async def until(condition: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.001)


@pytest.fixture
async def log_path(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[LogPath]:
    """A coordinator (not listening) with a running job of 4 task instances on 2 fake workers."""
    ft, delay_ms = getattr(request, "param", ("lineage", 0.0))
    coord = Coordinator(port=0, data_dir=str(tmp_path))
    gcs = MemoryGCS(delay_ms=delay_ms)
    writes: list[int] = []
    write = gcs._write

    async def counting(ops: list) -> None:
        writes.append(len(ops))
        await write(ops)

    gcs._write = counting  # type: ignore[method-assign]
    requests: list[int] = []
    enqueue = gcs._enqueue

    def counting_requests(apply: Any) -> Any:
        requests.append(1)
        return enqueue(apply)

    gcs._enqueue = counting_requests  # type: ignore[method-assign]
    coord.gcs = gcs  # type: ignore[assignment]
    coord.lineage = LineageCoordinator(coord, gcs)
    job = Job("logs", parallelism=2)
    job.source("nums", ListSource([1, 2])).rebalance().map("inc", lambda x: x + 1).sink("out", CollectSink())
    plan = Plan.of(job)
    run_ = JobRun("logs-0a1b2c", "logs", register_in_process(job), {}, JobConfig(ft=ft), plan, b"k" * 32)
    run_.state, run_.lineage = "running", coord.lineage
    sent: list[tuple[str, dict]] = []
    for wid in ["w0", "w1"]:
        coord.workers[wid] = WorkerConn(wid, FakeWS(wid, sent), ("127.0.0.1", 0), 4, None, None)  # type: ignore[arg-type]
    insts = plan.instances()
    for i, inst in enumerate(insts):
        run_.placement[inst] = f"w{i % 2}"
    coord.jobs[run_.job_id] = run_
    yield LogPath(coord, gcs, run_, insts, writes, requests, sent)
    await coord.aclose()


async def test_a_burst_of_log_messages_is_one_gcs_group(log_path: LogPath) -> None:
    a, b, c = log_path.insts[:3]
    for start in range(0, 24, 3):  # interleaved; b's segments out of order, c's twice (retries)
        await log_path.log(a, start, 3)
        await log_path.log(b, 21 - start, 3)
        await log_path.log(c, start, 3)
        await log_path.log(c, start, 3)
    await until(lambda: len(log_path.lineage.committed) == 3)
    assert log_path.lineage.committed == {a: 24, b: 24, c: 24}
    assert log_path.gcs.committed_all(log_path.run.job_id) == {a: 24, b: 24, c: 24}
    assert len(log_path.requests) == 1  # one GCS request...
    assert log_path.writes == [24]  # ...in one group: every segment once (the retries are not rewritten)
    assert (log_path.lineage.log_batches, log_path.lineage.log_messages) == (1, 32)
    assert len(log_path.lineage.lag_ms) == 32
    # one publication per worker, every position in it (workers of waiting instances at once; a message
    # that does not say whether its output waits counts as waiting)
    await until(lambda: len(log_path.commits()) == 2)
    await asyncio.sleep(0.03)
    assert sorted(log_path.commits()) == [("w0", {a: 24, b: 24, c: 24}), ("w1", {a: 24, b: 24, c: 24})]


async def test_commits_reach_at_once_only_the_workers_whose_output_waits(log_path: LogPath) -> None:
    """A log message says whether its instance's output waits in a commit gate: only those instances'
    workers hear of commits at once, the rest with the trim publication (100 ms). An instance whose
    output starts waiting with its log already shipped says so in a ``waiting`` message, and hears
    of the positions at once."""
    a, b = log_path.insts[:2]  # on w0 and w1
    await log_path.log(a, 0, 3, waiting=False)
    await log_path.log(b, 0, 3, waiting=True)
    await until(lambda: log_path.commits())
    await asyncio.sleep(0.02)
    assert log_path.commits() == [("w1", {a: 3, b: 3})]
    assert log_path.lineage.waiting == {b}
    await until(lambda: len(log_path.commits()) == 2)  # the trim publication
    assert log_path.commits()[1] == ("w0", {a: 3, b: 3})
    del log_path.sent[:]
    message = {"type": "waiting", "job": log_path.run.job_id, "instance": a, "incarnation": 0}
    await log_path.coord._on_worker_message(log_path.coord.workers["w0"], {**message, "waiting": True})
    await until(lambda: log_path.commits())
    assert ("w0", {a: 3, b: 3}) in log_path.commits() and log_path.lineage.waiting == {a, b}
    await log_path.log(b, 3, 3, waiting=False)
    await until(lambda: log_path.lineage.committed[b] == 6)
    assert log_path.lineage.waiting == {a}
    with pytest.raises(ProtocolError, match="malformed waiting message"):
        await log_path.coord._on_worker_message(log_path.coord.workers["w0"], {**message, "waiting": "yes"})


async def test_log_messages_of_a_dead_incarnation_are_dropped(log_path: LogPath) -> None:
    a, b = log_path.insts[:2]
    log_path.lineage.incarnation[a] = 1
    await log_path.log(a, 0, 3, incarnation=0, data=b"old")  # dropped on arrival
    await log_path.log(a, 0, 3, incarnation=1)
    await log_path.log(b, 0, 3, incarnation=0, data=b"old")
    # b's recovery begins before the flush: its message is dropped then, not queued after the
    # recovery's discard_uncommitted (it would join the new incarnation's log)
    log_path.lineage.incarnation[b] = 1
    await until(lambda: log_path.lineage.committed)
    assert log_path.lineage.committed == {a: 3}
    assert log_path.gcs.committed_all(log_path.run.job_id) == {a: 3}
    assert (await log_path.gcs.read_log(log_path.run.job_id, a, 0))[0][1] == LOG[:3]
    assert log_path.lineage.log_messages == 1


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"entries": None}, "malformed log message: no field 'entries'; expected instance, start, count, "
                            "entries (and optionally incarnation, sent_at)"),
        ({"start": "3"}, "malformed log message of instance 'nums/0': start must be an integer, got '3'"),
        ({"entries": "abc"}, "malformed log message of instance 'nums/0': entries must be bytes, got 'abc'"),
        ({"incarnation": 1.0}, "malformed log message of instance 'nums/0': incarnation must be an integer, "
                               "got 1.0"),
        ({"sent_at": "now"}, "malformed log message of instance 'nums/0': sent_at must be a number, got 'now'"),
        ({"instance": 7}, "malformed log message of instance 7: instance must be a string, got 7"),
    ],
)  # fmt: skip
async def test_a_malformed_log_message_is_refused(log_path: LogPath, change: dict, error: str) -> None:
    msg = {"type": "log", "job": log_path.run.job_id, "instance": "nums/0", "start": 0, "count": 1,
           "entries": b"a", "sent_at": 1.0}  # fmt: skip
    msg.update(change)
    msg = {k: v for k, v in msg.items() if v is not None}
    with pytest.raises(ProtocolError) as info:
        await log_path.coord._on_worker_message(log_path.coord.workers["w0"], msg)
    assert str(info.value) == error
    assert not log_path.lineage.inbox and not log_path.lineage.flush_scheduled


async def test_a_malformed_log_message_drops_the_workers_connection(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """As for any malformed control message: one line in the log, and the connection goes."""
    caplog.set_level(logging.WARNING, "stashflow.coordinator")
    async with Coordinator(port=0, data_dir=str(tmp_path)) as coord:
        job = Job("logs", parallelism=1)
        job.source("nums", ListSource([1])).sink("out", CollectSink())
        run_ = JobRun(
            "logs-0a1b2c", "logs", register_in_process(job), {}, JobConfig(), Plan.of(job), b"k" * 32
        )
        run_.state, run_.lineage = "running", coord.lineage
        coord.jobs[run_.job_id] = run_
        bad = {
            "type": "log",
            "job": run_.job_id,
            "instance": "nums/0",
            "start": "3",
            "count": 1,
            "entries": b"a",
        }
        async with aiohttp.ClientSession() as session, session.ws_connect(coord.url + "/ws/worker") as ws:
            await ws.send_bytes(
                pack({"type": "register", "worker": "w9", "address": ["127.0.0.1", 1], "slots": 1})
            )
            await ws.send_bytes(pack(bad))
            msg = await ws.receive(timeout=5)
            assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING)
        assert (
            "coordinator: dropped worker w9: malformed 'log' message (ProtocolError: malformed log message of "
            "instance 'nums/0': start must be an integer, got '3')"
        ) in caplog.text
        assert run_.state == "running"


@pytest.mark.parametrize("refusal", ["bad span", "conflict"])
async def test_a_refused_segment_fails_the_job_naming_its_instance(log_path: LogPath, refusal: str) -> None:
    a, b = log_path.insts[:2]
    job_id = log_path.run.job_id
    if refusal == "conflict":
        await log_path.log(b, 0, 3)
        await until(lambda: log_path.lineage.committed.get(b) == 3)
    await log_path.log(a, 0, 3)
    await log_path.log(b, -1 if refusal == "bad span" else 0, 3, data=b"XYZ")
    await log_path.log(a, 3, 3)
    await until(lambda: log_path.run.state == "failed")
    assert log_path.run.failed_instance == b
    assert log_path.run.error == f"instance {b}: the GCS refused its log: " + (
        f"append_log for instance {b} of job {job_id}: bad span start=-1 count=3; need start >= 0, count >= 1 "
        "and start + count <= 99999999999999999999"
        if refusal == "bad span"
        else f"instance {b} of job {job_id} re-sent log positions [0, 3) with different bytes (3 vs 3 stored); "
        "one position holds one determinant: is a dead incarnation still flushing, or is the determinant "
        "encoding not deterministic?"
    )
    assert log_path.lineage.committed[a] == 6  # the rest of the batch was stored


@pytest.mark.parametrize("log_path", [("lineage", 20.0)], indirect=True)
async def test_the_job_ending_stops_the_log_path(log_path: LogPath) -> None:
    a, b = log_path.insts[:2]
    job_id = log_path.run.job_id
    # a batch in flight (the GCS acknowledges after 20 ms) and one queued, when the job ends
    await log_path.log(a, 0, 3)
    await until(lambda: log_path.lineage.log_batches == 1)
    await log_path.log(b, 0, 3)
    await log_path.coord.cancel(job_id)
    await log_path.log(b, 3, 3)  # after the end: dropped on arrival
    await until(lambda: all(t.done() for t in log_path.coord._bg))
    await asyncio.sleep(0.03)  # the first batch's acknowledgment came and changed nothing
    assert log_path.lineage.log_batches == 1
    assert not log_path.lineage.inbox and not log_path.lineage.flush_scheduled
    assert log_path.lineage.committed == {}
    assert log_path.commits() == []
    assert all(t.done() for t in log_path.coord._bg)  # nothing left running for the job
    assert log_path.gcs.committed_all(job_id) == {}  # and its GCS state dropped


@pytest.mark.parametrize("log_path", [("wal", 0.0)], indirect=True)
async def test_write_first_sends_each_instance_its_commit_at_once(log_path: LogPath) -> None:
    """A ``--ft wal`` writer waits for its own commit message: it is not coalesced with the others."""
    a, b = log_path.insts[:2]
    await log_path.log(a, 0, 3)
    await log_path.log(b, 0, 4)
    await log_path.log(a, 3, 3)
    await until(lambda: len(log_path.commits()) >= 2)
    per_instance = [c for c in log_path.commits() if len(c[1]) == 1]
    assert sorted(per_instance) == [(log_path.run.placement[a], {a: 6}), (log_path.run.placement[b], {b: 4})]
