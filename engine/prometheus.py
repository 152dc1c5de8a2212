"""Prometheus ``GET /metrics``: what the coordinator knows of its jobs, in Prometheus' exposition format.

The figures are built when Prometheus scrapes, from what the coordinator already holds: the statistics
every instance reports with its heartbeats (:meth:`engine.job_run.JobRun.instance_metrics`), the
recovery records of the fault-tolerance coordinators and the connected workers. Nothing is added to
the data path. A :class:`StashflowCollector` on a private registry per coordinator (not the process'
global one) produces them; the response is Prometheus text 0.0.4, or OpenMetrics 1.0 when the
scraper asks for it (``Accept: application/openmetrics-text``), gzip-compressed when it accepts that.

Labels (Flink's reporter's names where they exist). Per job: ``job_id`` (e.g. ``union_count-1a2b3c``)
and ``job_name``. Per instance,
also ``step``, ``instance`` (the step instance, as everywhere in stashflow: ``count/1``) and ``task``
(the task instance running it: chained steps share one, named after its first step, so ``count/1``
runs ``count/1`` and ``write/1``). What Flink reports per operator (records) is reported per step
instance; what it reports per task (batches, bytes, backpressure, restarts, checkpoints, the stash,
watermarks) is reported once per task instance, on the series of its first step (where ``instance``
equals ``task``): a ``sum()`` over a job never counts a task twice.

``instance`` is also a target label Prometheus adds itself (the scraped address); scrape the
coordinator with ``honor_labels: true`` to keep ours (otherwise Prometheus renames it
``exported_instance``)::

    scrape_configs:
      - job_name: stashflow
        honor_labels: true
        static_configs: [{targets: ["127.0.0.1:8081"]}]

================================================  ========  ==============================================
metric (labels besides the job's / instance's)    type      meaning (Flink's nearest metric)
================================================  ========  ==============================================
``stashflow_workers``                             gauge     workers connected to the coordinator, spares
                                                            included (``numRegisteredTaskManagers``)
``stashflow_jobs{state}``                         gauge     jobs the coordinator knows, per state:
                                                            deploying, running, finished, failed, canceled
``stashflow_job_info{ft}``                        info      the job's fault-tolerance mode (lineage, wal,
                                                            checkpoint, none)
``stashflow_job_state{state}``                    gauge     a state set: 1 for the job's state, 0 for the
                                                            others (``runningState`` and its siblings)
``stashflow_job_source_records_total``            counter   records its sources have emitted
``stashflow_job_elapsed_seconds``                 gauge     time since it started running (submitted, if
                                                            it never did), up to its end
``stashflow_gcs_commit_lag_seconds{quantile}``    gauge     lineage, wal: p50 and p99 of how long the
                                                            instances' determinants took to be committed
                                                            to the GCS
``stashflow_records_in_total``                    counter   records the step instance took in
                                                            (``numRecordsIn``)
``stashflow_records_out_total``                   counter   records it emitted (``numRecordsOut``)
``stashflow_late_records_total``                  counter   window steps: records that came after every
                                                            window they belong to was dropped
                                                            (``numLateRecordsDropped``)
``stashflow_instance_state{state}``               gauge     a state set: deploying, running, recovering,
                                                            replaying, finished, failed, canceled
``stashflow_sink_latency_seconds{quantile}``      gauge     sink steps, once they wrote: p50 and p99 of
                                                            the time from a record's source to the sink
                                                            (``latency``)
``stashflow_batches_in_total``                    counter   task: batches it took in
``stashflow_batches_out_total``                   counter   task: batches it sent
``stashflow_bytes_out_total``                     counter   task: bytes it sent (``numBytesOut``)
``stashflow_backpressure_seconds_total``          counter   task: time its senders waited for credit
                                                            (``backPressuredTimeMsPerSecond``, summed)
``stashflow_instance_restarts_total``             counter   task, lineage/wal/checkpoint: how often it was
                                                            restarted (``numRestarts``, per instance)
``stashflow_last_recovery_seconds``               gauge     task, after a recovery: from its failure (the
                                                            kill, else its detection) to live again
``stashflow_checkpoint_age_seconds``              gauge     task, lineage/wal/checkpoint, while the job
                                                            runs: age of its latest complete checkpoint
                                                            (the global one under checkpoint)
``stashflow_stash_bytes``                         gauge     task, lineage/wal: encoded size of its lineage
                                                            stash (uncommitted determinants it holds)
``stashflow_stash_entries``                       gauge     task, lineage/wal: determinants in its stash
``stashflow_watermark_seconds``                   gauge     task, event time: its watermark, seconds since
                                                            the epoch; +Inf once its input ended
                                                            (``currentInputWatermark``)
================================================  ========  ==============================================

A metric is there only where it applies: ``--ft none`` has no restarts, checkpoints nor stash; a
checkpoint-mode job has no stash; a job without event time no watermark; a percentile that has no
sample yet, or a checkpoint not taken yet, is left out rather than shown as zero. Finished jobs stay
listed (the coordinator keeps them), with their final counts.

Counters restart at zero when an instance restarts: the new incarnation is a new process that counts
from zero. To Prometheus that is a counter reset, which ``rate()`` and ``increase()`` handle;
``stashflow_instance_restarts_total`` (which never resets) says which instance it was. The job's
source record count is the sum of its sources' counters, so a restarted source resets it too.

A coordinator without jobs (a stand-in with its two attributes the collector reads):

    >>> from types import SimpleNamespace
    >>> from prometheus_client import generate_latest
    >>> idle = SimpleNamespace(jobs={}, workers={})
    >>> print(generate_latest(registry(idle)).decode())  # doctest: +NORMALIZE_WHITESPACE
    # HELP stashflow_workers Workers connected to the coordinator, spares included.
    # TYPE stashflow_workers gauge
    stashflow_workers 0.0
    # HELP stashflow_jobs Jobs the coordinator knows, per state.
    # TYPE stashflow_jobs gauge
    stashflow_jobs{state="deploying"} 0.0
    stashflow_jobs{state="running"} 0.0
    stashflow_jobs{state="finished"} 0.0
    stashflow_jobs{state="failed"} 0.0
    stashflow_jobs{state="canceled"} 0.0
    <BLANKLINE>
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector, CollectorRegistry

from engine.event_time import MAX_WATERMARK
from engine.job_run import TERMINAL
from engine.monitor import INSTANCE_STATES, instance_state

if TYPE_CHECKING:
    from engine.coordinator import Coordinator
    from engine.job_run import JobRun

__all__ = ["INSTANCE_STATES", "JOB_STATES", "StashflowCollector", "registry", "routes"]

log = logging.getLogger("stashflow.prometheus")

#: the values of ``stashflow_jobs{state}`` and ``stashflow_job_state{state}``
JOB_STATES = ("deploying", "running", "finished", "failed", "canceled")

_JOB = ("job_id", "job_name")
_INSTANCE = (*_JOB, "step", "instance", "task")
_QUANTILES = (("0.5", "p50_ms"), ("0.99", "p99_ms"))


class _Families:
    """Every metric family /metrics may carry, empty; :meth:`StashflowCollector.collect` fills them."""

    def __init__(self) -> None:
        def counter(name: str, doc: str, labels: tuple[str, ...], unit: str = "") -> CounterMetricFamily:
            return CounterMetricFamily(name, doc, labels=labels, unit=unit)

        def gauge(name: str, doc: str, labels: tuple[str, ...], unit: str = "") -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, labels=labels, unit=unit)

        self.workers = gauge(
            "stashflow_workers", "Workers connected to the coordinator, spares included.", ()
        )
        self.jobs = gauge("stashflow_jobs", "Jobs the coordinator knows, per state.", ("state",))
        self.job_info = InfoMetricFamily(
            "stashflow_job", "The job's fault-tolerance mode (lineage, wal, checkpoint or none).", labels=_JOB
        )
        self.job_state = gauge(
            "stashflow_job_state", "Whether the job is in this state (1) or not (0).", (*_JOB, "state")
        )
        self.job_source_records = counter(
            "stashflow_job_source_records_total", "Records the job's sources have emitted.", _JOB
        )
        self.job_elapsed = gauge(
            "stashflow_job_elapsed_seconds",
            "Time since the job started running (since it was submitted if it never did), up to its end.",
            _JOB,
            "seconds",
        )
        self.gcs_commit_lag = gauge(
            "stashflow_gcs_commit_lag_seconds",
            "How long the job's determinants took to be committed to the GCS, at this quantile.",
            (*_JOB, "quantile"),
            "seconds",
        )
        self.records_in = counter(
            "stashflow_records_in_total", "Records the step instance took in.", _INSTANCE
        )
        self.records_out = counter(
            "stashflow_records_out_total", "Records the step instance emitted.", _INSTANCE
        )
        self.late = counter(
            "stashflow_late_records_total",
            "Records the window step instance received after every window they belong to was dropped.",
            _INSTANCE,
        )
        self.instance_state = gauge(
            "stashflow_instance_state",
            "Whether the step instance is in this state (1) or not (0).",
            (*_INSTANCE, "state"),
        )
        self.sink_latency = gauge(
            "stashflow_sink_latency_seconds",
            "Time from a record's source to this sink, at this quantile.",
            (*_INSTANCE, "quantile"),
            "seconds",
        )
        self.batches_in = counter(
            "stashflow_batches_in_total", "Batches the task instance took in.", _INSTANCE
        )
        self.batches_out = counter(
            "stashflow_batches_out_total", "Batches the task instance sent.", _INSTANCE
        )
        self.bytes_out = counter("stashflow_bytes_out_total", "Bytes the task instance sent.", _INSTANCE)
        self.backpressure = counter(
            "stashflow_backpressure_seconds_total",
            "Time the task instance's senders spent waiting for credit from their receivers.",
            _INSTANCE,
            "seconds",
        )
        self.restarts = counter(
            "stashflow_instance_restarts_total",
            "How often the task instance was restarted after a failure.",
            _INSTANCE,
        )
        self.last_recovery = gauge(
            "stashflow_last_recovery_seconds",
            "Time from the task instance's latest completed recovery's failure to live again.",
            _INSTANCE,
            "seconds",
        )
        self.checkpoint_age = gauge(
            "stashflow_checkpoint_age_seconds",
            "Age of the task instance's latest complete checkpoint.",
            _INSTANCE,
            "seconds",
        )
        self.stash_bytes = gauge(
            "stashflow_stash_bytes",
            "Encoded size of the task instance's lineage stash (the uncommitted determinants it holds).",
            _INSTANCE,
            "bytes",
        )
        self.stash_entries = gauge(
            "stashflow_stash_entries", "Determinants in the task instance's lineage stash.", _INSTANCE
        )
        self.watermark = gauge(
            "stashflow_watermark_seconds",
            "The task instance's event-time watermark, in seconds since the epoch; +Inf once its input ended.",
            _INSTANCE,
            "seconds",
        )

    def all(self) -> list[Metric]:
        return list(vars(self).values())


class StashflowCollector(Collector):
    """Builds the families of the module docstring from ``coord``'s jobs and workers at each scrape.

    ``clock`` (wall-clock seconds) dates the checkpoint ages.
    """

    def __init__(self, coord: Coordinator, clock: Callable[[], float] = time.time):
        self.coord = coord
        self.clock = clock

    def describe(self) -> Iterator[Metric]:
        """The families this collector owns (the registry refuses another collector of the same names)."""
        return iter(_Families().all())

    def collect(self) -> Iterator[Metric]:
        # runs on the coordinator's event loop (the /metrics handler calls it), between two of its
        # steps: every figure of one scrape comes from the same moment
        f = _Families()
        now = self.clock()
        f.workers.add_metric([], len(self.coord.workers))
        runs = sorted(self.coord.jobs.values(), key=lambda r: (r.submitted_at, r.job_id))
        by_state = Counter(run.state for run in runs)
        for state in JOB_STATES:
            f.jobs.add_metric([state], by_state[state])
        for run in runs:
            _collect_job(f, run, now)
        return iter(m for m in f.all() if m.samples)


def _collect_job(f: _Families, run: JobRun, now: float) -> None:
    job = [run.job_id, run.name]
    f.job_info.add_metric(job, {"ft": run.config.ft})
    for state in JOB_STATES:
        f.job_state.add_metric([*job, state], 1.0 if run.state == state else 0.0)
    f.job_source_records.add_metric(job, run.source_records())
    f.job_elapsed.add_metric(job, run.elapsed_s)
    if run.lineage is not None:
        lag = run.lineage.commit_lag(run.job_id)
        for quantile, key in _QUANTILES:
            ms = lag.get(key)
            if ms is not None:
                f.gcs_commit_lag.add_metric([*job, quantile], round(ms / 1000, 6))
    for name, m in run.instance_metrics(detail=False).items():
        step = name.rpartition("/")[0]
        labels = [*job, step, name, m["task"]]
        f.records_in.add_metric(labels, m["records_in"])
        f.records_out.add_metric(labels, m["records_out"])
        if "late" in m:  # window steps only
            f.late.add_metric(labels, m["late"])
        state = instance_state(run, m)
        for s in INSTANCE_STATES:
            f.instance_state.add_metric([*labels, s], 1.0 if s == state else 0.0)
        latency = m.get("latency")
        if m["kind"] == "sink" and isinstance(latency, dict):
            for quantile, key in _QUANTILES:
                if latency.get(key) is not None:
                    f.sink_latency.add_metric([*labels, quantile], round(latency[key] / 1000, 6))
        if name == m["task"]:  # the task's figures, once per task instance (see the module docstring)
            _collect_task(f, run, m, labels, state, now)


def _collect_task(
    f: _Families, run: JobRun, m: dict[str, Any], labels: list[str], state: str, now: float
) -> None:
    f.batches_in.add_metric(labels, m["batches_in"])
    f.batches_out.add_metric(labels, m["batches_out"])
    f.bytes_out.add_metric(labels, m["bytes_out"])
    f.backpressure.add_metric(labels, m["backpressure_s"])
    if run.recovers:
        f.restarts.add_metric(labels, m["restarts"])
        live = [r["live_s"] for r in m.get("recoveries", ()) if r.get("live_s") is not None]
        if live:
            f.last_recovery.add_metric(labels, live[-1])
    checkpoint_at = m.get("checkpoint_at")
    # a job or instance that ended takes no more checkpoints: an age growing forever would only alarm
    if checkpoint_at is not None and run.state not in TERMINAL and state not in ("finished", "failed"):
        f.checkpoint_age.add_metric(labels, max(0.0, now - checkpoint_at))
    if "stash_bytes" in m:  # lineage and wal instances
        f.stash_bytes.add_metric(labels, m["stash_bytes"])
        f.stash_entries.add_metric(labels, m.get("stash_entries", 0))
    watermark = m.get("watermark")
    if watermark is not None:
        f.watermark.add_metric(labels, math.inf if watermark >= MAX_WATERMARK else watermark / 1000)


def registry(coord: Coordinator) -> CollectorRegistry:
    """A registry of its own for ``coord`` (several coordinators may share a process, as in the tests)."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(StashflowCollector(coord))
    return reg


def routes(coord: Coordinator) -> list[web.RouteDef]:
    """``GET /metrics`` (public: the coordinator's authentication lets it through, like ``/health``)."""
    reg = registry(coord)

    async def metrics(request: web.Request) -> web.Response:
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        try:
            body = encoder(reg)
        except Exception as exc:  # a bug of ours: say so in one line, keep the traceback in the log
            log.exception("GET /metrics: collecting the metrics failed")
            return web.Response(
                status=500,
                text=f"stashflow coordinator: GET /metrics failed while collecting: {type(exc).__name__}: "
                f"{exc}; the coordinator's log has the traceback\n",
            )
        response = web.Response(body=body, headers={"Content-Type": content_type})
        response.enable_compression()  # when the scraper accepts it (Prometheus asks for gzip)
        return response

    return [web.get("/metrics", metrics)]
