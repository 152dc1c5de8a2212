"""Prometheus ``/metrics`` (engine/prometheus.py): names, labels and values, the HTTP endpoint, a real run.

The unit tests give a real :class:`JobRun` (the union word count's plan, Nexmark Q7's for window steps)
hand-made reports and read the scrape back with prometheus_client's own parser; the HTTP tests scrape an
in-process coordinator; the end-to-end test scrapes a local cluster running the union word count while
``count/1`` is killed. Processes: the launcher's workers, loopback only.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client import generate_latest
from prometheus_client.core import Metric
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry
from prometheus_client.samples import Sample
from support import ROOT

import engine.prometheus as prom
from engine.config import JobConfig
from engine.coordinator import Coordinator
from engine.event_time import MAX_WATERMARK
from engine.global_rollback import GlobalCheckpointCoordinator
from engine.job_run import JobRun
from engine.launcher import LocalLauncher
from engine.loader import JobRef, load_job
from engine.plan import Plan
from engine.prometheus import INSTANCE_STATES, JOB_STATES, StashflowCollector, registry
from engine.recovery import InstanceRecovery, LineageCoordinator

UNION_COUNT = ROOT / "jobs" / "union_count.py"
Q7 = ROOT / "jobs" / "nexmark" / "q7.py"
INSTANCE_LABELS = {"job_id", "job_name", "step", "instance", "task"}


class FakeCoordinator:
    """What the collector reads of a coordinator: its jobs and its workers."""

    def __init__(self) -> None:
        self.jobs: dict[str, JobRun] = {}
        self.workers: dict[str, object] = {}


def make_run(coord: FakeCoordinator, ft: str = "none", job: Path = UNION_COUNT, **fields: Any) -> JobRun:
    ref = JobRef.parse(str(job))
    config = JobConfig(parallelism=2, ft=ft)
    built = load_job(ref, {})
    plan = Plan.of(built, config.parallelism)
    run = JobRun("j1", built.name, ref, {}, config, plan, b"s", state="running", started_at=1000.0)
    for name, value in fields.items():
        setattr(run, name, value)
    if ft in ("lineage", "wal"):
        run.lineage = LineageCoordinator(coord, None)  # type: ignore[arg-type]
    elif ft == "checkpoint":
        run.checkpoints = GlobalCheckpointCoordinator(coord, None)  # type: ignore[arg-type]
    coord.jobs[run.job_id] = run
    return run


def report(
    run: JobRun,
    task: str,
    steps: dict[str, tuple[int, ...]],
    *,
    state: str = "running",
    batches: tuple[int, int] = (0, 0),
    bytes_out: int = 0,
    backpressure_s: float = 0.0,
    **extra: Any,
) -> None:
    """A task instance's heartbeat statistics; a step's counts are (in, out) or (in, out, late)."""
    counts = {}
    for step, c in steps.items():
        counts[step] = {"records_in": c[0], "records_out": c[1]} | ({"late": c[2]} if len(c) > 2 else {})
    run.stats[task] = {
        "state": state,
        "steps": counts,
        "batches_in": batches[0],
        "batches_out": batches[1],
        "bytes_out": bytes_out,
        "backpressure_s": backpressure_s,
        "extra": extra,
    }


@dataclass
class Scrape:
    """The samples of one scrape, by sample name (``stashflow_records_in_total``, not the family's)."""

    samples: dict[str, list[Sample]]

    @classmethod
    def of(cls, families: Iterable[Metric]) -> Scrape:
        samples: dict[str, list[Sample]] = {}
        for family in families:
            for s in family.samples:
                samples.setdefault(s.name, []).append(s)
        return cls(samples)

    @classmethod
    def text(cls, text: str) -> Scrape:
        return cls.of(text_string_to_metric_families(text))

    def series(self, name: str, **labels: str) -> list[Sample]:
        return [s for s in self.samples.get(name, []) if labels.items() <= s.labels.items()]

    def value(self, name: str, **labels: str) -> float:
        found = self.series(name, **labels)
        assert len(found) == 1, f"{name}{labels}: {len(found)} series, expected one"
        return found[0].value

    def by_instance(self, name: str) -> dict[str, float]:
        out = {s.labels["instance"]: s.value for s in self.series(name)}
        assert len(out) == len(self.series(name)), f"{name}: an instance has several series"
        return out


def scrape(coord: FakeCoordinator, now: float = 1010.0) -> Scrape:
    reg = CollectorRegistry()
    reg.register(StashflowCollector(coord, clock=lambda: now))  # type: ignore[arg-type]
    return Scrape.text(generate_latest(reg).decode())


def report_union_count(run: JobRun, **extra: Any) -> None:
    """Every task instance of the union word count: left, right, merge (merge, split), count (count, write)."""
    assert [[s.name for s in t.steps] for t in run.plan.tasks] == [
        ["left"], ["right"], ["merge", "split"], ["count", "write"]
    ]  # fmt: skip
    for i in (0, 1):
        report(run, f"left/{i}", {f"left/{i}": (0, 1000 + i)}, batches=(0, 10), bytes_out=5000 + i, **extra)
        report(run, f"right/{i}", {f"right/{i}": (0, 2000 + i)}, batches=(0, 20), bytes_out=6000, **extra)
        report(run, f"merge/{i}", {f"merge/{i}": (1500, 1500), f"split/{i}": (1500, 7500 + i)},
               batches=(30, 40), bytes_out=9000, backpressure_s=0.25 * (i + 1), **extra)  # fmt: skip
        report(run, f"count/{i}", {f"count/{i}": (7500, 7500), f"write/{i}": (7500, 0)}, batches=(41, 0),
               latency={"count": 7500, "p50_ms": 4.0 + i, "p99_ms": 25.0}, **extra)  # fmt: skip


# -- unit: a JobRun with hand-made reports ------------------------------------------------------------


def test_step_instances_get_their_counters_and_task_figures_appear_once_per_task_instance():
    coord = FakeCoordinator()
    run = make_run(coord, ft="lineage")
    report_union_count(run, stash_bytes=0, stash_entries=0)
    got = scrape(coord)
    steps = run.plan.step_instances()
    assert len(steps) == 12
    assert got.by_instance("stashflow_records_in_total") == {
        **{f"{s}/{i}": 0 for s in ("left", "right") for i in (0, 1)},
        **{f"{s}/{i}": 1500 for s in ("merge", "split") for i in (0, 1)},
        **{f"{s}/{i}": 7500 for s in ("count", "write") for i in (0, 1)},
    }
    assert got.by_instance("stashflow_records_out_total") == {
        "left/0": 1000, "left/1": 1001, "right/0": 2000, "right/1": 2001, "merge/0": 1500, "merge/1": 1500,
        "split/0": 7500, "split/1": 7501, "count/0": 7500, "count/1": 7500, "write/0": 0, "write/1": 0,
    }  # fmt: skip
    assert got.series("stashflow_records_in_total", instance="write/1")[0].labels == {
        "job_id": "j1", "job_name": "union_count", "step": "write", "instance": "write/1", "task": "count/1"
    }  # fmt: skip
    for name in ("stashflow_records_in_total", "stashflow_records_out_total"):
        assert all(set(s.labels) == INSTANCE_LABELS for s in got.series(name))
    # batches, bytes, backpressure: the task's, on its first step only (a sum() must not count it twice)
    tasks = set(run.plan.instances())
    assert tasks == {f"{t}/{i}" for t in ("left", "right", "merge", "count") for i in (0, 1)}
    for name in ("stashflow_batches_in_total", "stashflow_batches_out_total", "stashflow_bytes_out_total",
                 "stashflow_backpressure_seconds_total", "stashflow_instance_restarts_total",
                 "stashflow_stash_bytes", "stashflow_stash_entries"):  # fmt: skip
        assert set(got.by_instance(name)) == tasks, name
        assert all(s.labels["instance"] == s.labels["task"] for s in got.series(name))
    assert got.value("stashflow_batches_in_total", instance="merge/1") == 30
    assert got.value("stashflow_batches_out_total", instance="right/0") == 20
    assert got.value("stashflow_bytes_out_total", instance="left/1") == 5001
    assert got.value("stashflow_backpressure_seconds_total", instance="merge/1") == 0.5
    assert sum(got.by_instance("stashflow_bytes_out_total").values()) == 2 * (5000 + 6000 + 9000) + 1
    # the job: its sources' records out, its state, its mode
    assert got.value("stashflow_job_source_records_total", job_id="j1") == 1000 + 1001 + 2000 + 2001
    assert got.value("stashflow_job_state", state="running") == 1
    assert [s.labels["state"] for s in got.series("stashflow_job_state") if s.value == 0] == [
        s for s in JOB_STATES if s != "running"
    ]
    assert got.value("stashflow_job_info", job_id="j1", job_name="union_count") == 1
    assert got.series("stashflow_job_info")[0].labels["ft"] == "lineage"
    assert got.value("stashflow_jobs", state="running") == 1 and got.value("stashflow_workers") == 0


def test_the_instance_state_set_has_exactly_one_1_per_step_instance():
    coord = FakeCoordinator()
    run = make_run(coord, ft="lineage")
    report_union_count(run)
    report(run, "merge/1", {"merge/1": (1, 1), "split/1": (1, 5)}, replaying=True)
    run.stats.pop("left/0")  # no report yet: still starting
    run.recovering.add("count/0")
    report(run, "right/1", {"right/1": (0, 2001)}, state="finished")
    got = scrape(coord)
    current: dict[str, list[str]] = {}
    for s in got.series("stashflow_instance_state"):
        assert set(s.labels) == INSTANCE_LABELS | {"state"} and s.value in (0, 1)
        if s.value == 1:
            current.setdefault(s.labels["instance"], []).append(s.labels["state"])
    assert len(got.series("stashflow_instance_state")) == 12 * len(INSTANCE_STATES)
    assert current == {
        "left/0": ["deploying"], "left/1": ["running"], "right/0": ["running"], "right/1": ["finished"],
        "merge/0": ["running"], "merge/1": ["replaying"], "split/0": ["running"], "split/1": ["replaying"],
        "count/0": ["recovering"], "write/0": ["recovering"], "count/1": ["running"], "write/1": ["running"],
    }  # fmt: skip
    # the job's end decides for those that did not finish themselves
    run.state, run.finished_at = "canceled", 1012.5
    got = scrape(coord)
    states = {
        s.labels["instance"]: s.labels["state"] for s in got.series("stashflow_instance_state") if s.value
    }
    assert states["right/1"] == "finished" and {states[i] for i in states if i != "right/1"} == {"canceled"}
    assert got.value("stashflow_job_state", state="canceled") == 1
    assert got.value("stashflow_job_elapsed_seconds") == 12.5


def test_lineage_figures_stash_checkpoint_age_commit_lag_latency_watermark_and_recovery():
    coord = FakeCoordinator()
    run = make_run(coord, ft="lineage")
    report_union_count(run, stash_bytes=300, stash_entries=12)
    report(run, "merge/0", {"merge/0": (1, 1), "split/0": (1, 5)}, stash_bytes=4096, stash_entries=77,
           watermark=12_345)  # fmt: skip
    report(run, "merge/1", {"merge/1": (1, 1), "split/1": (1, 5)}, stash_bytes=300, stash_entries=12,
           watermark=MAX_WATERMARK)  # fmt: skip
    assert run.lineage is not None
    lineage = run.lineage.job("j1")
    lineage.checkpointed_at["count/0"] = 1004.5
    lineage.lag_ms = [4.0, 1.0, 3.0, 2.0]
    rec = InstanceRecovery("count/1", 1, killed_at=1001.0, detected_at=1001.2, reason="killed")
    lineage.recoveries["count/1"] = [rec]
    got = scrape(coord, now=1010.0)
    assert got.by_instance("stashflow_stash_bytes") == {
        **{t: 300 for t in run.plan.instances()}, "merge/0": 4096
    }  # fmt: skip
    assert got.value("stashflow_stash_entries", instance="merge/0") == 77
    # checkpoint age: only where a checkpoint is complete
    assert got.by_instance("stashflow_checkpoint_age_seconds") == {"count/0": 5.5}
    assert {s.labels["quantile"]: s.value for s in got.series("stashflow_gcs_commit_lag_seconds")} == {
        "0.5": 0.003, "0.99": 0.004
    }  # fmt: skip
    # sink latency: on the sink step, not on the count step it is chained to
    assert {(s.labels["instance"], s.labels["quantile"]): s.value
            for s in got.series("stashflow_sink_latency_seconds")} == {
        ("write/0", "0.5"): 0.004, ("write/0", "0.99"): 0.025,
        ("write/1", "0.5"): 0.005, ("write/1", "0.99"): 0.025,
    }  # fmt: skip
    # an instance's watermark in seconds; an input that ended is +Inf; no watermark, no series
    assert got.value("stashflow_watermark_seconds", instance="merge/0") == 12.345
    assert math.isinf(got.value("stashflow_watermark_seconds", instance="merge/1"))
    assert set(got.by_instance("stashflow_watermark_seconds")) == {"merge/0", "merge/1"}
    # a recovery under way counts as a restart; its time to live again shows once it is live
    restarts = got.by_instance("stashflow_instance_restarts_total")
    assert restarts.pop("count/1") == 1 and set(restarts.values()) == {0}
    assert "stashflow_last_recovery_seconds" not in got.samples
    rec.deployed_at, rec.live_at = 1001.4, 1001.7
    got = scrape(coord)
    assert got.by_instance("stashflow_last_recovery_seconds") == {"count/1": pytest.approx(0.7)}
    # once the job ended, no checkpoint ages (they would only grow)
    run.state, run.finished_at = "finished", 1011.0
    assert "stashflow_checkpoint_age_seconds" not in scrape(coord, now=1020.0).samples


def test_only_window_steps_count_late_records():
    coord = FakeCoordinator()
    run = make_run(coord, ft="none", job=Q7)
    windows = [s.name for t in run.plan.tasks for s in t.steps if s.kind == "window"]
    assert windows == ["best_per_auction", "best"]
    for task in run.plan.tasks:
        for i in range(task.parallelism):
            late = {"best_per_auction": 3 + i, "best": 0}
            steps = {f"{s.name}/{i}": (10, 10, late[s.name]) if s.name in late else (10, 10)
                     for s in task.steps}  # fmt: skip
            report(run, task.instance(i), steps)
    got = scrape(coord)
    assert got.by_instance("stashflow_late_records_total") == {
        "best_per_auction/0": 3, "best_per_auction/1": 4, "best/0": 0, "best/1": 0
    }  # fmt: skip
    assert len(got.series("stashflow_records_in_total")) == len(run.plan.step_instances()) > 4


def test_a_mode_shows_only_what_it_has():
    coord = FakeCoordinator()
    run = make_run(coord, ft="none")
    report_union_count(run)
    got = scrape(coord)
    for absent in ("stashflow_instance_restarts_total", "stashflow_last_recovery_seconds",
                   "stashflow_checkpoint_age_seconds", "stashflow_stash_bytes", "stashflow_stash_entries",
                   "stashflow_gcs_commit_lag_seconds", "stashflow_late_records_total",
                   "stashflow_watermark_seconds"):  # fmt: skip
        assert absent not in got.samples, absent
    assert got.series("stashflow_job_info")[0].labels["ft"] == "none"
    # checkpoint: restarts and the global checkpoint's age, no stash, no GCS commit lag
    coord = FakeCoordinator()
    run = make_run(coord, ft="checkpoint")
    report_union_count(run, checkpoints=2, alignment_s=0.01)
    assert run.checkpoints is not None
    run.checkpoints.job("j1").completed_at = 1007.0
    got = scrape(coord, now=1010.0)
    assert set(got.by_instance("stashflow_instance_restarts_total").values()) == {0}
    assert got.by_instance("stashflow_checkpoint_age_seconds") == {t: 3.0 for t in run.plan.instances()}
    for absent in ("stashflow_stash_bytes", "stashflow_stash_entries", "stashflow_gcs_commit_lag_seconds"):
        assert absent not in got.samples, absent
    # wal: a stash (its own uncommitted determinants) like lineage
    coord = FakeCoordinator()
    run = make_run(coord, ft="wal")
    report_union_count(run, stash_bytes=10, stash_entries=1)
    assert set(scrape(coord).by_instance("stashflow_stash_bytes").values()) == {10}


def test_the_docstring_table_lists_exactly_the_exposed_metrics():
    assert prom.__doc__ is not None
    documented = set(re.findall(r"^``(stashflow_\w+)", prom.__doc__, re.MULTILINE))
    suffix = {"counter": "_total", "info": "_info"}
    coord = FakeCoordinator()
    collector = StashflowCollector(coord)  # type: ignore[arg-type]
    exposed = {m.name + suffix.get(m.type, "") for m in collector.describe()}
    assert documented == exposed
    assert all(m.documentation.endswith(".") and m.documentation[0].isupper() for m in collector.describe())
    reg = registry(coord)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        reg.register(StashflowCollector(coord))  # type: ignore[arg-type]


# -- HTTP --------------------------------------------------------------------------------------------


async def fetch(
    url: str, method: str = "GET", headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], str]:
    """Status, headers and (decompressed) text of a request without the token."""
    async with aiohttp.ClientSession() as session, session.request(method, url, headers=headers) as resp:
        return resp.status, dict(resp.headers), await resp.text()


async def test_metrics_is_public_text_or_openmetrics_and_the_rest_still_needs_the_token():
    async with Coordinator(port=0, token="t", deploy_timeout=30) as coord:
        url = coord.url + "/metrics"
        status, headers, body = await fetch(url)
        assert status == 200
        assert headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
        got = Scrape.text(body)
        assert got.value("stashflow_workers") == 0
        assert {s.labels["state"]: s.value for s in got.series("stashflow_jobs")} == dict.fromkeys(
            JOB_STATES, 0
        )
        assert (await fetch(coord.url + "/jobs"))[0] == 401  # the exemption is /metrics' alone
        assert (await fetch(url, method="POST"))[0] == 401
        status, headers, body = await fetch(
            url, headers={"Accept": "application/openmetrics-text; version=1.0.0"}
        )
        assert status == 200 and headers["Content-Type"].startswith(
            "application/openmetrics-text; version=1.0.0"
        )
        assert body.endswith("# EOF\n")
        prometheus_3 = (  # what Prometheus 3 sends: it gets OpenMetrics
            "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.6,"
            "application/openmetrics-text;version=0.0.1;q=0.5,text/plain;version=1.0.0;escaping=allow-utf-8;"
            "q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2"
        )
        status, headers, _ = await fetch(url, headers={"Accept": prometheus_3})
        assert status == 200 and headers["Content-Type"].startswith(
            "application/openmetrics-text; version=1.0.0"
        )
        assert Scrape.of(parse_openmetrics(body)).value("stashflow_jobs", state="running") == 0
        status, headers, body = await fetch(url, headers={"Accept-Encoding": "gzip"})
        assert status == 200 and headers["Content-Encoding"] == "gzip" and "stashflow_workers 0.0" in body
        status, headers, _ = await fetch(url, headers={"Accept-Encoding": "identity"})
        assert status == 200 and "Content-Encoding" not in headers

        # a job without workers stays deploying: every step instance is deploying, nothing counted yet
        run = coord.submit(JobRef.parse(str(UNION_COUNT)), {}, JobConfig(parallelism=2, ft="lineage"))
        got = Scrape.text((await fetch(url))[2])
        assert got.value("stashflow_jobs", state="deploying") == 1
        assert (
            got.value("stashflow_job_state", job_id=run.job_id, job_name="union_count", state="deploying")
            == 1
        )
        states = {
            s.labels["instance"]: s.labels["state"] for s in got.series("stashflow_instance_state") if s.value
        }
        assert states == dict.fromkeys(run.plan.step_instances(), "deploying")
        assert set(got.by_instance("stashflow_records_out_total").values()) == {0}
        assert set(got.by_instance("stashflow_instance_restarts_total").values()) == {0}


async def test_a_failure_to_collect_is_one_line_and_a_logged_traceback(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
):
    async with Coordinator(port=0, deploy_timeout=30) as coord:
        run = coord.submit(JobRef.parse(str(UNION_COUNT)), {}, JobConfig(parallelism=2))

        def broken(detail: bool = True) -> dict[str, dict[str, Any]]:
            raise RuntimeError("no statistics today")

        monkeypatch.setattr(run, "instance_metrics", broken)
        status, _, body = await fetch(coord.url + "/metrics")
        assert status == 500
        assert body == (
            "stashflow coordinator: GET /metrics failed while collecting: RuntimeError: no statistics today; "
            "the coordinator's log has the traceback\n"
        )
        monkeypatch.undo()
        assert (await fetch(coord.url + "/metrics"))[0] == 200
    assert any(
        r.name == "stashflow.prometheus" and r.levelno == logging.ERROR and r.exc_info for r in caplog.records
    )


# -- end to end -------------------------------------------------------------------------------------


async def test_a_scraped_run_counts_every_instance_and_the_kill_of_count_1(tmp_path: Path):
    token = "prometheus-test-token"
    launcher = LocalLauncher(token=token, spares=1)
    sentences = 18000
    params = {"sentences": str(sentences), "rate": "6000", "output": str(tmp_path / "out")}
    config = JobConfig(parallelism=2, ft="lineage", checkpoint_interval=0.3)
    async with Coordinator(port=0, launcher=launcher, token=token) as coord:
        url = coord.url + "/metrics"
        run = coord.submit(JobRef.parse(str(UNION_COUNT)), params, config)
        steps = run.plan.step_instances()
        kinds = {
            f"{s.name}/{i}": s.kind for t in run.plan.tasks for s in t.steps for i in range(t.parallelism)
        }

        def flowing(got: Scrape) -> bool:
            rin, rout = (
                got.by_instance("stashflow_records_in_total"),
                got.by_instance("stashflow_records_out_total"),
            )
            assert set(rin) == set(rout) == set(steps)
            return all(
                (kinds[s] == "source" or rin[s] > 0) and (kinds[s] == "sink" or rout[s] > 0) for s in steps
            )

        seen_checkpoint_age = seen_commit_lag = False
        deadline = time.monotonic() + 30
        while True:  # scrape while it runs until every step instance has counted records
            assert time.monotonic() < deadline and run.state in ("deploying", "running"), run.state
            got = Scrape.text((await fetch(url))[2])
            seen_checkpoint_age |= "stashflow_checkpoint_age_seconds" in got.samples
            seen_commit_lag |= "stashflow_gcs_commit_lag_seconds" in got.samples
            if run.state == "running" and flowing(got):
                break
            await asyncio.sleep(0.2)
        sources = [s for s in steps if kinds[s] == "source"]
        assert len(sources) == 4
        out = got.by_instance("stashflow_records_out_total")
        assert sum(out[s] for s in sources) == got.value("stashflow_job_source_records_total") > 0
        assert got.value("stashflow_job_state", state="running") == 1

        assert run.started_at is not None  # killed once checkpoints were taken, as test_monitor does
        await asyncio.sleep(max(0.0, run.started_at + 1.5 - time.time()))
        await coord.kill(run.job_id, "count/1")
        while run.state == "running":  # keep scraping through the recovery
            got = Scrape.text((await fetch(url))[2])
            seen_checkpoint_age |= "stashflow_checkpoint_age_seconds" in got.samples
            seen_commit_lag |= "stashflow_gcs_commit_lag_seconds" in got.samples
            await asyncio.sleep(0.3)
        await coord.wait(run.job_id, 60)
        final = Scrape.text((await fetch(url))[2])
    assert run.state == "finished", run.error
    assert seen_checkpoint_age and seen_commit_lag
    restarts = final.by_instance("stashflow_instance_restarts_total")
    assert set(restarts) == set(run.plan.instances())
    assert restarts.pop("count/1") == 1 and set(restarts.values()) == {0}
    assert set(final.by_instance("stashflow_last_recovery_seconds")) == {"count/1"}
    assert 0 < final.value("stashflow_last_recovery_seconds", instance="count/1") < 15
    out = final.by_instance("stashflow_records_out_total")
    assert sum(out[s] for s in sources) == final.value("stashflow_job_source_records_total") == 2 * sentences
    assert final.value("stashflow_job_state", state="finished") == 1
    states = {
        s.labels["instance"]: s.labels["state"] for s in final.series("stashflow_instance_state") if s.value
    }
    assert states == dict.fromkeys(steps, "finished")
    assert "stashflow_checkpoint_age_seconds" not in final.samples
    assert set(final.by_instance("stashflow_stash_bytes")) == set(run.plan.instances())
