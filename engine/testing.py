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
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Any

from engine.config import JobConfig
from engine.coordinator import Coordinator
from engine.dsl import Job
from engine.errors import JobFailed
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
    parallelism: int | None = None,
    batch_size: int = 1000,
    flush_ms: float = 5.0,
    timeout: float = 60.0,
    raise_on_failure: bool = True,
) -> RunResult:
    """Run ``job`` to completion in this process (the async form of :func:`run`)."""
    config = JobConfig(parallelism=parallelism, batch_size=batch_size, flush_ms=flush_ms)
    slots = len(Plan.of(job, parallelism).instances())
    async with Coordinator(port=0) as coord:
        worker = Worker(coord.url, slots=slots, heartbeat_s=0.2)
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
                await asyncio.wait_for(serving, 10)
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
