"""Coordinator CPU per causal-log message (DESIGN.md §5.3): one task per message vs one flush per turn.

::

    .venv/bin/python bench/coordinator_log.py [--messages 20000] [--rounds 3] [--rate 1800]
        [--clump-ms 0 | --hot N] [--instances 9] [--entries 40] [--gcs rocks|memory]
        [--gcs-delay-ms 0] [--ft lineage|wal] [--paths per-message,engine]

Under ``--ft lineage`` every task instance ships its new determinants to the coordinator about every
5 ms as a ``log`` control message. This feeds ``--messages`` such messages, for ``--instances`` task
instances of a real plan (a source, a map and a keyed count with a sink, parallelism 3), through the
coordinator's real dispatch (``Coordinator._on_worker_message``) and lineage coordinator, with an
embedded GCS (RocksDB in a temporary directory, or in memory), and measures the process CPU time
(``time.process_time``) from the first message until every position is committed and the commit
publications went out (to fake worker connections that drop what they are sent). The messages come
as the unpacked dicts a worker connection hands the dispatch, each with about ``--entries`` ``RECV``
determinants, paced at ``--rate`` per second in total, each instance at its own phase: one message
per wake-up of the coordinator, the worst case for batching. ``--clump-ms T`` delivers them every T
ms instead, what a coordinator that gets the CPU in slices (2 cores, busy workers) reads per
wake-up; ``--rate 0`` delivers them all at once. ``--hot N`` delivers N at a time, back to back,
each N once the previous ones are committed: the work per message in batches of N, without the cost
of waking up the process (which, in a VM, can cost as much again), and with few commit publications
(they are timed: the run is short).

Paths, measured side by side in every round (alternating order):

- ``engine``: the engine's own path (``LineageCoordinator.on_log``): the messages of a job that
  arrive in one turn of the event loop are stored as one GCS request, and commit positions, their
  publication and checkpoint completion are updated once per such batch;
- ``per-message``: the path before batching, copied here (:class:`PerMessageLineage`): the dispatch
  spawns one task per message, which awaits its own ``GCS.append_log`` and then updates commit
  positions, schedules the commit publication and looks for completable checkpoints.

``idle`` is the cost of the harness alone (pacing and dispatching messages the lineage coordinator
ignores); ``net us/msg`` subtracts it. The figures are CPU time of this one process, the kernel's
included (its wake-ups): on a shared machine they are noisy, so run several rounds.
Also shown: GCS writes (groups) and messages per write, the wall time, and the commit lag p50 (from
a message's arrival to its acknowledgment).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import math
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from connectors import CollectSink, GeneratorSource
from engine import Job
from engine.causal_log import encode, recv
from engine.codec import pack, unpack
from engine.config import JobConfig
from engine.coordinator import Coordinator
from engine.gcs_backends import MemoryGCS, RocksGCS
from engine.job_run import TERMINAL, JobRun, WorkerConn
from engine.loader import register_in_process
from engine.plan import Plan
from engine.recovery import LineageCoordinator

PATHS = ("per-message", "engine")


class PerMessageLineage(LineageCoordinator):
    """The commit path before batching, for comparison: one task and one GCS request per message.

    The dispatch used to be ``self._spawn(run.lineage.on_log(run, data))``; ``on_log`` spawns the
    same coroutine, whose body is the former ``on_log``.
    """

    def on_log(self, run: JobRun, msg: dict[str, Any]) -> None:
        self.coord.spawn(self._on_log_one(run, msg))

    async def _on_log_one(self, run: JobRun, msg: dict[str, Any]) -> None:
        lineage = self.job(run.job_id)
        inst = msg["instance"]
        if run.state in TERMINAL:
            return
        if msg.get("incarnation", 0) < lineage.incarnation.get(inst, 0):
            return
        sent = msg.get("sent_at")
        committed = await self.gcs.append_log(run.job_id, inst, msg["start"], msg["entries"], msg["count"])
        if sent:
            lineage.lag_ms.append((time.time() - sent) * 1000)
            del lineage.lag_ms[:-2000]
        if committed > lineage.committed.get(inst, 0):
            lineage.committed[inst] = committed
            if run.config.ft == "wal":
                await self.coord.send_to_instance(
                    run, inst, {"type": "commit", "job": run.job_id, "positions": {inst: committed}}
                )
            self._schedule_broadcast(run, lineage)
            await self._complete_checkpoints(run, lineage)


class _DropWS:
    """A worker's websocket that drops what it is sent (and counts it)."""

    closed = False

    def __init__(self) -> None:
        self.sent = 0

    async def send_bytes(self, data: bytes) -> None:
        self.sent += 1


def _plan_job(instances: int) -> Job:
    parallelism = max(1, instances // 3)
    job = Job("logbench", parallelism=parallelism)
    nums = job.source("nums", GeneratorSource(lambda i: i, count=10))
    parsed = nums.rebalance().map("parse", lambda x: x)
    parsed.key_by(lambda x: x % 7).count("count").sink("out", CollectSink())
    return job


def _messages(
    job_id: str, instances: list[str], n: int, entries: int, rate: float, clump_ms: float, seed: int
) -> list[tuple[float, dict[str, Any]]]:
    """``n`` log messages, round robin over ``instances``, with their arrival offsets in seconds."""
    rng = random.Random(seed)
    clump = clump_ms / 1000.0
    interval = len(instances) / rate if rate > 0 else 0.0  # each instance flushes every `interval`
    phase = {inst: rng.uniform(0, interval) for inst in instances}
    position = dict.fromkeys(instances, 0)
    out: list[tuple[float, dict[str, Any]]] = []
    for k in range(n):
        inst = instances[k % len(instances)]
        count = max(1, entries + rng.randint(-entries // 4, entries // 4))
        dets = encode([recv(rng.randrange(2)) for _ in range(count)])
        msg = {
            "type": "log", "job": job_id, "instance": inst, "incarnation": 0,
            "start": position[inst], "count": count, "entries": dets, "sent_at": 0.0,
        }  # fmt: skip
        position[inst] += count
        offset = phase[inst] + (k // len(instances)) * interval
        if clump > 0:  # the coordinator gets the CPU every `clump` s and reads what came meanwhile
            offset = math.ceil(offset / clump) * clump
        out.append((offset, unpack(pack(msg))))
    out.sort(key=lambda item: item[0])
    return out


async def _measure(path: str, args: argparse.Namespace, tmp: Path, seed: int) -> dict[str, Any]:
    coord = Coordinator(port=0, data_dir=str(tmp / "coord"))
    delay = args.gcs_delay_ms
    gcs = (
        MemoryGCS(delay_ms=delay)
        if args.gcs == "memory"
        else RocksGCS(tmp / f"gcs-{path}-{seed}", delay_ms=delay)
    )
    writes = _count_writes(gcs)
    coord.gcs = gcs  # type: ignore[assignment]
    lineage_cls = PerMessageLineage if path == "per-message" else LineageCoordinator
    coord.lineage = lineage = lineage_cls(coord, gcs)
    job = _plan_job(args.instances)
    plan = Plan.of(job)
    config = JobConfig(ft=args.ft)
    run = JobRun("logbench-000001", job.name, register_in_process(job), {}, config, plan, b"k" * 32)
    run.state = "running"
    run.lineage = None if path == "idle" else lineage  # idle: the dispatch ignores the messages
    instances = plan.instances()
    sockets = [_DropWS() for _ in range(2)]
    conns = [WorkerConn(f"w{i}", ws, ("127.0.0.1", 0), 8, None, None) for i, ws in enumerate(sockets)]  # type: ignore[arg-type]
    for i, inst in enumerate(instances):
        run.placement[inst] = conns[i % 2].worker_id
    coord.workers = {c.worker_id: c for c in conns}
    coord.jobs[run.job_id] = run
    feed = [
        (offset, coord.workers[run.placement[msg["instance"]]], msg)
        for offset, msg in _messages(
            run.job_id, instances, args.messages, args.entries, args.rate, args.clump_ms, seed
        )
    ]
    ends = {msg["instance"]: msg["start"] + msg["count"] for _, _, msg in feed}
    loop = asyncio.get_running_loop()
    gc.collect()
    cpu0 = time.process_time()
    t0 = loop.time()
    if args.hot:
        # back to back, `hot` messages at a time, each group once the previous one is committed
        state = lineage.job(run.job_id)
        for i in range(0, len(feed), args.hot):
            due: dict[str, int] = {}
            for _, conn, msg in feed[i : i + args.hot]:
                msg["sent_at"] = time.time()
                await coord._on_worker_message(conn, msg)
                due[msg["instance"]] = msg["start"] + msg["count"]
            while path != "idle" and any(state.committed.get(k, 0) < v for k, v in due.items()):
                await asyncio.sleep(0)
    for offset, conn, msg in [] if args.hot else feed:
        delay = t0 + offset - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        msg["sent_at"] = time.time()
        await coord._on_worker_message(conn, msg)  # what a worker's control connection does
    if path != "idle":
        state = lineage.job(run.job_id)
        while state.committed != ends or state.inbox:  # every position committed...
            await asyncio.sleep(0.0005)
        while any(not t.done() for t in coord._bg):  # ...and published
            await asyncio.sleep(0.0005)
    wall = loop.time() - t0
    cpu = time.process_time() - cpu0
    lags = lineage.commit_lag(run.job_id)
    await gcs.aclose()
    return {
        "path": path,
        "cpu_s": cpu,
        "wall_s": wall,
        "us_per_msg": cpu / args.messages * 1e6,
        "writes": len(writes),
        "lag_p50_ms": lags["p50_ms"],
        "sent": sum(ws.sent for ws in sockets),
    }


def _count_writes(gcs: Any) -> list[int]:
    """Count the GCS groups written (one storage write each)."""
    sizes: list[int] = []
    write = gcs._write

    async def counting(ops: list[Any]) -> None:
        sizes.append(len(ops))
        await write(ops)

    gcs._write = counting
    return sizes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--messages", type=int, default=20000, help="log messages per measured run")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--rate", type=float, default=1800.0, help="messages/s in total (0: all at once)")
    ap.add_argument(
        "--clump-ms", type=float, default=0.0, help="deliver arrivals every this many ms (a busy coordinator)"
    )
    ap.add_argument(
        "--hot",
        type=int,
        default=0,
        help="instead: N messages at a time, back to back, each N once the previous are committed",
    )
    ap.add_argument("--instances", type=int, default=9, help="about this many task instances")
    ap.add_argument("--entries", type=int, default=40, help="determinants per message (+-25%%)")
    ap.add_argument("--gcs", choices=("rocks", "memory"), default="rocks")
    ap.add_argument("--gcs-delay-ms", type=float, default=0.0, help="the GCS's acknowledgment delay")
    ap.add_argument("--ft", choices=("lineage", "wal"), default="lineage")
    ap.add_argument("--paths", default=",".join(PATHS), help=f"comma-separated, of {', '.join(PATHS)}")
    args = ap.parse_args()
    paths = [p.strip() for p in args.paths.split(",") if p.strip()]
    for p in paths:
        if p not in PATHS:
            ap.error(f"unknown path {p!r}; pick from {', '.join(PATHS)}")
    results: dict[str, list[dict[str, Any]]] = {p: [] for p in ("idle", *paths)}
    with tempfile.TemporaryDirectory(prefix="stashflow-logbench-") as tmp:
        for r in range(args.rounds):
            order = ["idle", *(paths if r % 2 == 0 else paths[::-1])]
            for p in order:
                results[p].append(asyncio.run(_measure(p, args, Path(tmp), seed=r)))
    idle = statistics.median(x["us_per_msg"] for x in results["idle"])
    n_inst = len(Plan.of(_plan_job(args.instances)).instances())
    print(
        f"{args.messages} log messages, {n_inst} instances, rate {args.rate:g}/s, clump {args.clump_ms:g} ms, "
        f"~{args.entries} entries each, GCS {args.gcs} (delay {args.gcs_delay_ms:g} ms), --ft {args.ft}; medians of {args.rounds} round(s)"
    )
    header = f"{'path':<12} {'us/msg':>8} {'net us/msg':>11} {'GCS writes':>11} {'msgs/write':>11} {'wall s':>7} {'lag p50 ms':>11}"
    print(header)
    print("-" * len(header))
    for p, rows in results.items():
        us = statistics.median(x["us_per_msg"] for x in rows)
        writes = statistics.median(x["writes"] for x in rows)
        wall = statistics.median(x["wall_s"] for x in rows)
        lags = [x["lag_p50_ms"] for x in rows if x["lag_p50_ms"] is not None]
        lag = f"{statistics.median(lags):.3f}" if lags else "-"
        per_write = f"{args.messages / writes:.1f}" if writes else "-"
        net = f"{us - idle:.1f}" if p != "idle" else "-"
        print(f"{p:<12} {us:>8.1f} {net:>11} {writes:>11.0f} {per_write:>11} {wall:>7.2f} {lag:>11}")


if __name__ == "__main__":
    main()
