"""What the coordinator knows of each job run and each connected worker, and how it reports them.

A :class:`JobRun` is one submitted job: its plan, placement, state, the statistics its instances report
(heartbeats, final statistics) and, through the lineage coordinator, their recoveries;
:meth:`JobRun.status` is what ``GET /jobs/{id}``, ``stashflow status`` and ``--metrics-out`` show.
Over time, it also keeps each sink's timeline (records and latency per 100 ms, :mod:`engine.metrics`),
merged from the increments instances report, and samples the lineage stash's size at every report.
A :class:`WorkerConn` is one worker's control connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web

from engine.codec import pack
from engine.config import JobConfig
from engine.loader import JobRef
from engine.metrics import Gauges, Timeline
from engine.plan import Plan

if TYPE_CHECKING:
    from engine.global_rollback import GlobalCheckpointCoordinator
    from engine.recovery import LineageCoordinator

__all__ = ["TERMINAL", "JobRun", "WorkerConn"]

TERMINAL = ("finished", "failed", "canceled")


@dataclass
class WorkerConn:
    worker_id: str
    ws: web.WebSocketResponse
    address: tuple[Any, ...]
    slots: int
    pin: str | None
    pid: int | None
    instances: set[tuple[str, str]] = field(default_factory=set)  # (job, instance)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    last_seen: float = field(default_factory=time.monotonic)  # any message counts as a heartbeat

    async def send(self, message: dict[str, Any]) -> None:
        await self.send_packed(pack(message))

    async def send_packed(self, data: bytes) -> None:
        """Send a message already packed (one message to many workers is packed once)."""
        if self.ws.closed:
            return
        async with self.lock:
            with contextlib.suppress(ConnectionError, RuntimeError):
                await self.ws.send_bytes(data)


@dataclass
class JobRun:
    """One submitted job, as the coordinator tracks it."""

    job_id: str
    name: str
    ref: JobRef
    params: dict[str, str]
    config: JobConfig
    plan: Plan
    secret: bytes
    state: str = "deploying"
    error: str | None = None
    failed_instance: str | None = None
    submitted_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    placement: dict[str, str] = field(default_factory=dict)  # instance -> worker id
    addresses: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    deployed: set[str] = field(default_factory=set)
    finished: set[str] = field(default_factory=set)
    stats: dict[str, dict[str, Any]] = field(default_factory=dict)  # task instance -> statistics
    done: asyncio.Event = field(default_factory=asyncio.Event)
    kill_times: dict[str, float] = field(default_factory=dict)  # task instance -> when we killed it
    recovering: set[str] = field(default_factory=set)
    #: held while instances of the job not started yet are placed and deployed
    deploy_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    lineage: LineageCoordinator | None = None
    #: ``--ft checkpoint``: global checkpoints and rollback (engine.global_rollback)
    checkpoints: GlobalCheckpointCoordinator | None = None
    #: task instance -> its sink's timeline, merged across reports and incarnations
    timelines: dict[str, Timeline] = field(default_factory=dict)
    #: task instance -> its lineage figures (stash bytes, piggybacked bytes) sampled at each report
    gauges: dict[str, Gauges] = field(default_factory=dict)

    @property
    def recovers(self) -> bool:
        """Whether a lost instance is recovered (lineage, wal, checkpoint) rather than failing the job."""
        return self.lineage is not None or self.checkpoints is not None

    @property
    def elapsed_s(self) -> float:
        start = self.started_at or self.submitted_at
        return (self.finished_at or time.time()) - start

    def absorb(self, inst: str, stats: dict[str, Any]) -> None:
        """Take what a report of task instance ``inst`` carries over time, before ``stats`` is stored.

        The timeline buckets it closed since its previous report are removed from ``stats`` and added
        to ``timelines[inst]``, bucket by bucket: the incarnations of a restarted instance add up. Its
        lineage stash's size and the bytes it has piggybacked so far are sampled into ``gauges``.
        """
        extra = stats.get("extra") or {}
        rows = extra.pop("timeline", None)
        if rows:
            self.timelines.setdefault(inst, Timeline()).merge(rows)
        if "stash_bytes" in extra:
            # delta_bytes_mean is rounded to 1/100 byte: the product is off by at most frames/200 bytes
            piggybacked = round(extra.get("delta_bytes_mean", 0.0) * extra.get("frames_sent", 0))
            self.gauges.setdefault(inst, Gauges()).sample(
                time.time(),
                {
                    "stash_bytes": extra["stash_bytes"],
                    "stash_entries": extra.get("stash_entries", 0),
                    "piggybacked_bytes": piggybacked,
                    "frames_sent": extra.get("frames_sent", 0),
                },
            )

    def instance_metrics(self, detail: bool = True) -> dict[str, dict[str, Any]]:
        """Per step instance (chained steps too): records in/out and the task instance's counters.

        Also, where they apply and with ``detail`` (they grow with the run's length): ``timeline``
        (sink steps) and ``gauges`` (lineage instances).
        """
        out: dict[str, dict[str, Any]] = {}
        for task in self.plan.tasks:
            for i in range(task.parallelism):
                tname = task.instance(i)
                st = self.stats.get(tname, {})
                steps = st.get("steps", {})
                recovery = self.lineage or self.checkpoints
                ft = recovery.metrics(self.job_id, tname) if recovery else {"restarts": 0}
                state = st.get("state", "deploying" if self.state == "deploying" else "unknown")
                if tname in self.recovering:
                    state = "recovering"
                for step in task.steps:
                    sname = f"{step.name}/{i}"
                    counts = steps.get(sname, {})
                    out[sname] = {
                        "task": tname,
                        "kind": step.kind,
                        "state": state,
                        "records_in": counts.get("records_in", 0),
                        "records_out": counts.get("records_out", 0),
                        "batches_in": st.get("batches_in", 0),
                        "batches_out": st.get("batches_out", 0),
                        "bytes_out": st.get("bytes_out", 0),
                        "backpressure_s": round(st.get("backpressure_s", 0.0), 4),
                        "worker": self.placement.get(tname),
                        **ft,
                        **st.get("extra", {}),
                    }
                    if step.kind == "window":  # records after every window they belong to was dropped
                        out[sname]["late"] = counts.get("late", 0)
                    if not detail:
                        continue
                    if step.kind == "sink" and tname in self.timelines:
                        out[sname]["timeline"] = self.timelines[tname].to_dict()
                    if tname in self.gauges:
                        out[sname]["gauges"] = self.gauges[tname].to_dict()
        return out

    def source_records(self) -> int:
        total = 0
        for task in self.plan.tasks:
            if task.is_source:
                for i in range(task.parallelism):
                    counts = (
                        self.stats.get(task.instance(i), {})
                        .get("steps", {})
                        .get(f"{task.steps[0].name}/{i}", {})
                    )
                    total += counts.get("records_out", 0)
        return total

    def status(self) -> dict[str, Any]:
        elapsed = self.elapsed_s
        records = self.source_records()
        return {
            "job": self.job_id,
            "name": self.name,
            "state": self.state,
            "error": self.error,
            "failed_instance": self.failed_instance,
            "ft": self.config.ft,
            "elapsed_s": round(elapsed, 4),
            "records_per_s": round(records / elapsed, 1) if elapsed > 0 else 0.0,
            "source_records": records,
            "gcs_commit_lag": self.lineage.commit_lag(self.job_id) if self.lineage else None,
            "global_checkpoints": self.checkpoints.summary(self.job_id) if self.checkpoints else None,
            "graph": self.plan.describe(),
            "instances": self.instance_metrics(),
        }
