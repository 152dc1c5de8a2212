"""What the coordinator shows of running jobs: rates, a throughput history and a timeline of failures.

:class:`JobMonitor` samples every job the coordinator runs at a fixed interval (``interval_s``, 0.5 s)
from what the instances already report (heartbeat statistics, :meth:`JobRun.instance_metrics`) and
the recovery records of the fault-tolerance coordinators: nothing is added to the data path. From two
consecutive samples it derives, per step instance, records in and out per second and the share of
the interval its senders spent blocked on credit (backpressure); per job, the source and sink rates
over time (the last ``history_s`` seconds); and a timeline of events: the job's state changes and,
per recovery of an instance, the kill (when the coordinator made it), its detection, the new
incarnation's deployment and the moment it was live again, with how long each took.

Counters restart at zero with a new incarnation of an instance: a counter that went down is read as
counted since the restart. The dashboard (:mod:`engine.dashboard`) sends :meth:`JobMonitor.view` to
browsers; ``stashflow run``'s progress view reads it in process. Views are JSON-friendly.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from engine.checkpoint import checkpoint_name
from engine.job_run import TERMINAL

if TYPE_CHECKING:
    from engine.coordinator import Coordinator
    from engine.job_run import JobRun

__all__ = ["INSTANCE_STATES", "JobMonitor", "instance_state"]

#: the states a step instance is shown in (dashboard, Prometheus' ``stashflow_instance_state``)
INSTANCE_STATES = ("deploying", "running", "recovering", "replaying", "finished", "failed", "canceled")

#: the per-instance figures a view carries as they are reported
_COPIED = ("task", "worker", "records_in", "records_out", "restarts", "stash_bytes", "stash_entries",
           "late", "watermark", "replayed_batches", "progress")  # fmt: skip


@dataclass
class _Sample:
    at: float
    #: step instance -> (records_in, records_out, backpressure_s)
    counters: dict[str, tuple[int, int, float]]
    source_records: int
    sink_records: int


@dataclass
class _JobTrack:
    last: _Sample | None = None
    #: step instance -> (in/s, out/s, backpressure share) over the last interval
    rates: dict[str, tuple[float, float, float]] = field(default_factory=dict)
    #: [time, source records/s, sink records/s]
    history: deque[tuple[float, float, float]] = field(default_factory=deque)
    events: list[dict[str, Any]] = field(default_factory=list)
    #: (task instance, incarnation, what) already in ``events``
    seen: set[tuple[str, int, str]] = field(default_factory=set)
    state: str | None = None


class JobMonitor:
    """Samples the coordinator's jobs; :meth:`view` is a job as the dashboard and the terminal show it."""

    def __init__(self, coord: Coordinator, interval_s: float = 0.5, history_s: float = 600.0):
        self.coord = coord
        self.interval_s = interval_s
        self.history_len = max(2, int(history_s / interval_s))
        self._jobs: dict[str, _JobTrack] = {}
        #: set after every sample round, then replaced: ``await monitor.changed()`` waits for the next
        self._tick = asyncio.Event()

    async def run(self) -> None:
        """Sample every ``interval_s`` until cancelled (the coordinator runs it in the background)."""
        while True:
            self.sample()
            await asyncio.sleep(self.interval_s)

    async def changed(self, timeout: float | None = None) -> None:
        """Wait for the next sample round (or ``timeout`` seconds)."""
        # asyncio.timeout, not wait_for: no inner task for Event.wait(), which a loop closing before
        # it ran left "never awaited" (a RuntimeWarning that failed a test run at exit)
        tick = self._tick
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await tick.wait()

    def sample(self, now: float | None = None) -> None:
        """Take one sample of every job (jobs that ended are sampled one last time, then kept as they are)."""
        now = time.time() if now is None else now
        for run in list(self.coord.jobs.values()):
            track = self._jobs.setdefault(run.job_id, _JobTrack())
            if track.state in TERMINAL and run.state in TERMINAL:
                continue
            self._sample_job(run, track, now)
        tick, self._tick = self._tick, asyncio.Event()
        tick.set()

    def _sample_job(self, run: JobRun, track: _JobTrack, now: float) -> None:
        metrics = run.instance_metrics(detail=False)
        counters = {
            name: (m["records_in"], m["records_out"], m["backpressure_s"]) for name, m in metrics.items()
        }
        source = sum(m["records_out"] for m in metrics.values() if m["kind"] == "source")
        sink = sum(m["records_in"] for m in metrics.values() if m["kind"] == "sink")
        sample = _Sample(now, counters, source, sink)
        last = track.last
        if last is not None and now > last.at:
            dt = now - last.at
            rates = {}
            for name, (rin, rout, bp) in counters.items():
                before = last.counters.get(name, (0, 0, 0.0))
                rates[name] = (
                    round(_delta(rin, before[0]) / dt, 1),
                    round(_delta(rout, before[1]) / dt, 1),
                    round(min(1.0, _delta(bp, before[2]) / dt), 3),
                )
            track.rates = rates
            track.history.append((
                round(now, 3),
                round(sum(r[1] for n, r in rates.items() if metrics[n]["kind"] == "source"), 1),
                round(sum(r[0] for n, r in rates.items() if metrics[n]["kind"] == "sink"), 1),
            ))  # fmt: skip
            while len(track.history) > self.history_len:
                track.history.popleft()
        track.last = sample
        self._events(run, track, metrics, now)

    def _events(self, run: JobRun, track: _JobTrack, metrics: dict[str, dict[str, Any]], now: float) -> None:
        if run.state != track.state:
            at = {"running": run.started_at, "deploying": run.submitted_at}.get(run.state) or run.finished_at
            text = f"job {run.state}" + (f": {run.error}" if run.error else "")
            self._event(track, (run.job_id, 0, run.state), at or now, run.state, None, text)
            track.state = run.state
        tasks: dict[str, dict[str, Any]] = {}
        for m in metrics.values():
            tasks.setdefault(m["task"], m)
        for task, m in tasks.items():
            for rec in m.get("recoveries", ()):
                inc = rec["incarnation"]
                origin = rec.get("killed_at") or rec.get("detected_at")
                if rec.get("killed_at"):
                    self._event(track, (task, inc, "killed"), rec["killed_at"], "killed", task,
                                f"{task} killed")  # fmt: skip
                if rec.get("detected_at"):
                    after = f" {rec['detected_s']:.2f} s after the kill" if rec.get("detected_s") else ""
                    self._event(track, (task, inc, "detected"), rec["detected_at"], "detected", task,
                                f"{task} lost{after}: {rec['reason']}")  # fmt: skip
                if rec.get("deployed_at"):
                    cp = rec.get("checkpoint_id")
                    self._event(track, (task, inc, "deployed"), rec["deployed_at"], "deployed", task,
                                f"{task} restarted (incarnation {inc}) from {checkpoint_name(cp)}")  # fmt: skip
                if rec.get("live_at"):
                    took = f" {rec['live_at'] - origin:.2f} s after the failure" if origin else ""
                    self._event(track, (task, inc, "live"), rec["live_at"], "live", task,
                                f"{task} live again{took}, {rec['replayed_batches']} batches replayed")  # fmt: skip

    @staticmethod
    def _event(
        track: _JobTrack, key: tuple[str, int, str], at: float, kind: str, instance: str | None, text: str
    ) -> None:
        if key in track.seen:
            return
        track.seen.add(key)
        track.events.append({"t": round(at, 3), "kind": kind, "instance": instance, "text": text})
        track.events.sort(key=lambda e: e["t"])

    # -- views ------------------------------------------------------------------------------------------

    def jobs(self) -> list[dict[str, Any]]:
        """Every job, newest first: id, name, state, error."""
        runs = sorted(self.coord.jobs.values(), key=lambda r: r.submitted_at, reverse=True)
        return [{"job": r.job_id, "name": r.name, "state": r.state, "error": r.error} for r in runs]

    def view(self, job_id: str, now: float | None = None) -> dict[str, Any] | None:
        """One job as the dashboard shows it; None if there is no such job.

        ``instances`` (per step instance): ``step``, ``index``, ``task``, ``kind``, ``state`` (deploying,
        running, recovering, replaying, finished, failed), ``in_per_s``, ``out_per_s``, ``backpressure``
        (share of the last interval blocked on credit), ``checkpoint_age_s`` and the reported counters;
        a bounded source's ``progress`` ``[done, total]`` (its reader's unit: records, bytes) when reported.
        ``history``: ``[time, source records/s, sink records/s]``; ``events``: ``{t, kind, instance, text}``.
        """
        run = self.coord.jobs.get(job_id)
        if run is None:
            return None
        now = time.time() if now is None else now
        track = self._jobs.get(job_id) or _JobTrack()
        instances = {}
        for name, m in run.instance_metrics(detail=False).items():
            step, _, index = name.rpartition("/")
            rin, rout, bp = track.rates.get(name, (0.0, 0.0, 0.0))
            state = instance_state(run, m)
            checkpoint_at = m.get("checkpoint_at")
            instances[name] = {
                "step": step,
                "index": int(index),
                "kind": m["kind"],
                "state": state,
                "in_per_s": rin,
                "out_per_s": rout,
                "backpressure": bp,
                "checkpoint_age_s": round(now - checkpoint_at, 2) if checkpoint_at else None,
                **{k: m[k] for k in _COPIED if k in m},
            }
        history = list(track.history)
        return {
            "job": run.job_id,
            "name": run.name,
            "state": run.state,
            "error": run.error,
            "failed_instance": run.failed_instance,
            "ft": run.config.ft,
            "elapsed_s": round(run.elapsed_s, 2),
            "source_records": run.source_records(),
            "source_per_s": history[-1][1] if history else 0.0,
            "sink_per_s": history[-1][2] if history else 0.0,
            "gcs_commit_lag": run.lineage.commit_lag(run.job_id) if run.lineage else None,
            "graph": run.plan.describe(),
            "instances": instances,
            "history": history,
            "events": list(track.events),
            "interval_s": self.interval_s,
            "time": round(now, 3),
        }

    def forget(self, job_id: str) -> None:
        self._jobs.pop(job_id, None)


def _delta(value: float, before: float) -> float:
    """Counted since the previous sample; a counter that went down was restarted from zero."""
    return value if value < before else value - before


def instance_state(run: JobRun, metrics: dict[str, Any]) -> str:
    """One of :data:`INSTANCE_STATES`: the state a step instance's ``metrics`` report, as shown.

    Replaying while running is shown as such; created, deployed or not yet reported is deploying; once
    the job is over, an instance that did not finish or fail itself takes the job's end state.
    """
    state = str(metrics["state"])
    if state == "running" and metrics.get("replaying"):
        state = "replaying"
    elif state in ("created", "deployed", "unknown"):  # started or placed, not running yet
        state = "deploying"
    if run.state in TERMINAL and state not in ("finished", "failed"):
        state = run.state  # what the job's end made of it
    return state if state in INSTANCE_STATES else "deploying"
