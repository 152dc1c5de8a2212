"""Helpers to run jobs inside tests.

:func:`run` executes a job in this process: an in-process coordinator and one worker hosting every
instance, talking over loopback exactly as separate processes do (same channels, same codec, same
control messages), so in-memory sinks like :class:`connectors.CollectSink` can be read afterwards.

>>> from engine import Job
>>> from connectors import CollectSink, ListSource
>>> job = Job("double", parallelism=2)
>>> out = CollectSink()
>>> job.source("nums", ListSource(range(6))).map("double", lambda x: 2 * x).sink("out", out)
>>> result = run(job)
>>> result.state, sorted(out.records)
('finished', [0, 2, 4, 6, 8, 10])
>>> result.instances["double/1"]["records_in"]
3

Failure injection: kill an instance after it has processed N records and assert the output is still
exactly-once (the killed instance alone restarts; its ``restarts`` metric says so):

>>> job = Job("counted", parallelism=2)
>>> out = CollectSink()
>>> words = job.source("words", ListSource([f"w{i % 7}" for i in range(3000)]))
>>> words.key_by(lambda w: w).count("count").sink("out", out)
>>> result = run(job, batch_size=100, kill_after={"count/1": 700})
>>> sorted(out.records) == sorted((f"w{k}", n) for k in range(7) for n in range(1, 3000 // 7 + (k < 3000 % 7) + 1))
True
>>> result.instances["count/1"]["restarts"], result.instances["count/0"]["restarts"]
(1, 0)
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
from dataclasses import dataclass
from typing import Any

from engine.config import JobConfig
from engine.coordinator import Coordinator
from engine.dsl import Job
from engine.errors import JobFailed, ParameterError
from engine.loader import register_in_process
from engine.plan import Plan
from engine.worker import Worker

__all__ = ["RunResult", "arun", "run"]


@dataclass(frozen=True)
class RunResult:
    """How a test run ended: ``state``, ``error``, ``elapsed_s`` and per step instance metrics."""

    job_id: str
    state: str
    error: str | None
    elapsed_s: float
    instances: dict[str, dict[str, Any]]
    status: dict[str, Any]


async def arun(
    job: Job,
    *,
    timeout: float = 60.0,
    raise_on_failure: bool = True,
    kill_after: dict[str, int | list[int]] | None = None,
    **settings: Any,
) -> RunResult:
    """Run ``job`` to completion in this process (the async form of :func:`run`).

    ``settings`` are :class:`~engine.config.JobConfig` fields (``parallelism``, ``batch_size``,
    ``flush_ms``, ``ft``, ``checkpoint_interval``...). ``kill_after`` injects failures: for each step
    instance, the number of input records its task instance processes before it crashes (a list:
    one count per incarnation, so ``[500, 200]`` kills it again 200 records into its recovery).
    """
    kills = {k: [v] if isinstance(v, int) else list(v) for k, v in (kill_after or {}).items()}
    config = JobConfig(kill_after=kills, **settings)
    plan = Plan.of(job, config.parallelism)
    for name in kills:
        step, _, index = name.rpartition("/")
        if not index.isdigit() or int(index) >= plan.task_of_step(step).parallelism:
            raise ParameterError(f"kill_after: {name!r} is not an instance of this job (e.g. 'count/0')")
    slots = len(plan.instances())
    token = secrets.token_hex(16)  # the run's own worker only
    async with Coordinator(port=0, gcs_delay_ms=config.gcs_delay_ms, token=token) as coord:
        data_dir = os.path.join(coord.data_dir, "worker")
        worker = Worker(coord.url, slots=slots, heartbeat_s=0.2, data_dir=data_dir, token=token)
        serving = asyncio.create_task(worker.run())
        try:
            jobrun = coord.submit(register_in_process(job), {}, config)
            try:
                await coord.wait(jobrun.job_id, timeout)
            except TimeoutError:
                await coord.cancel(jobrun.job_id)
                jobrun.error = f"timed out after {timeout} s"
                jobrun.state = "failed"
        finally:
            worker._stop.set()
            with contextlib.suppress(asyncio.CancelledError):
                async with asyncio.timeout(10):  # not wait_for: 3.11's could swallow a cancel
                    await serving
    status = jobrun.status()
    result = RunResult(
        jobrun.job_id, jobrun.state, jobrun.error, status["elapsed_s"], status["instances"], status
    )
    if raise_on_failure and result.state != "finished":
        raise JobFailed(f"job {jobrun.job_id} {result.state}: {result.error}")
    return result


def run(job: Job, **kwargs: Any) -> RunResult:
    """Run ``job`` to completion in this process and return how it went.

    Raises :class:`~engine.errors.JobFailed` with the first instance error unless
    ``raise_on_failure=False``. Keyword arguments are those of :func:`arun`.
    """
    return asyncio.run(arun(job, **kwargs))
