"""``stashflow run``'s job: a coordinator in this process, one worker process per instance, and what it shows.

:class:`LocalRun` starts the coordinator (serving the dashboard unless turned off), submits the job,
kills instances at the times ``--kill`` asked for, feeds the progress view (:mod:`engine.progress`)
from the job monitor, and tears it all down in order: the workers exit before the view gives the
terminal back. :func:`recovery_lines` and :func:`rollback_lines` are the summary lines printed at the
end, one per recovery; :func:`write_metrics` writes ``--metrics-out``. The command line
(:mod:`engine.cli`) parses the options and builds a :class:`LocalRun`.
"""

from __future__ import annotations

import asyncio
import faulthandler
import json
import logging
import os
import secrets
import time
from dataclasses import dataclass
from typing import Any

import click

from engine.checkpoint import checkpoint_name
from engine.config import JobConfig
from engine.coordinator import Coordinator
from engine.errors import CoordinatorError, ParameterError
from engine.job_run import JobRun
from engine.launcher import LocalLauncher
from engine.loader import JobRef
from engine.progress import ProgressView

__all__ = ["DashboardSettings", "LocalRun", "recovery_lines", "rollback_lines", "write_metrics"]

log = logging.getLogger("stashflow.cli")

#: seconds after the job's end after which a shutdown still going on dumps every thread's stack
SHUTDOWN_WATCHDOG_S = 30.0


def recovery_lines(status: dict[str, Any]) -> list[str]:
    """One line per recovery, per task instance (chained steps share their task's recoveries)."""
    if status["ft"] == "checkpoint":
        return rollback_lines(status)
    lines, seen = [], set()
    for metrics in status["instances"].values():
        task = metrics["task"]
        if task in seen:
            continue
        seen.add(task)
        for rec in metrics.get("recoveries", ()):
            detected = f"detected in {rec['detected_s']} s, " if rec["detected_s"] is not None else ""
            live = (
                f"live again {rec['live_s']} s after the failure"
                if rec["live_s"] is not None
                else "not live again"
            )
            lines.append(
                f"instance {task} recovered alone (restart {rec['incarnation']}, {rec['reason']}): {detected}{live}, "
                f"{rec['replayed_batches']} batches replayed from {checkpoint_name(rec['checkpoint_id'])}"
            )
    return lines


def _global_checkpoint(checkpoint_id: int | None) -> str:
    if checkpoint_id is None:
        return "the start (no global checkpoint yet)"
    return f"global checkpoint {checkpoint_id}"


def rollback_lines(status: dict[str, Any]) -> list[str]:
    """``--ft checkpoint``: one line per global rollback, naming the instance whose loss caused it."""
    tasks: dict[str, list[dict[str, Any]]] = {}
    for metrics in status["instances"].values():
        tasks.setdefault(metrics["task"], metrics.get("recoveries", []))
    lines = []
    for n in range(max((len(r) for r in tasks.values()), default=0)):
        recs = {task: r[n] for task, r in tasks.items() if len(r) > n}
        lost = [t for t, rec in recs.items() if not rec["reason"].startswith("rolled back with the job")]
        lives = [rec["live_s"] for rec in recs.values() if rec["live_s"] is not None]
        first = next(iter(recs.values()))
        live = (
            f"all live again {max(lives)} s after the failure"
            if len(lives) == len(recs)
            else "not all live again"
        )
        cause = f"{', '.join(lost)} lost ({recs[lost[0]]['reason']})" if lost else "an instance was lost"
        lines.append(
            f"job rolled back (restart {first['incarnation']}): {cause}; all {len(recs)} task instances "
            f"restarted from {_global_checkpoint(first['checkpoint_id'])}, {live}"
        )
    return lines


@dataclass(frozen=True)
class DashboardSettings:
    """Where ``stashflow run``'s coordinator listens and what it serves there."""

    enabled: bool
    port: int
    #: listen on a free port when ``port`` is taken: only when the port was not asked for
    fallback: bool
    allow_kill: bool


@dataclass
class LocalRun:
    """``stashflow run``'s job on a coordinator in this process: its workers, ``--kill`` s and view."""

    ref: JobRef
    params: dict[str, str]
    config: JobConfig
    timeout: float | None
    kills: list[tuple[str, float]]
    spare_workers: int
    log_level: str
    log_format: str
    dashboard: DashboardSettings
    #: None with --quiet
    view: ProgressView | None
    job_id: str | None = None

    async def run(self) -> JobRun:
        token = secrets.token_hex(16)  # only this run's workers can register
        launcher = LocalLauncher(
            log_level=self.log_level, log_format=self.log_format, token=token, spares=self.spare_workers
        )
        d = self.dashboard
        coord = Coordinator(
            port=d.port,
            launcher=launcher,
            gcs_delay_ms=self.config.gcs_delay_ms,
            token=token,
            dashboard=d.enabled,
            allow_kill=d.allow_kill,
            port_fallback=d.fallback,
        )
        try:
            await coord.start()
        except CoordinatorError as exc:
            await coord.aclose()
            if d.enabled and not d.fallback:
                raise ParameterError(f"--dashboard-port {d.port}: {exc}") from None
            raise
        run: JobRun | None = None
        try:
            if d.enabled and self.view is not None:
                kill = f"#token={token}" if d.allow_kill else ""  # the page's Kill button sends it
                click.echo(f"stashflow: dashboard at {coord.url}/{kill}", err=True)
                self.view.dashboard_url = f"{coord.url}/"
            if self.view is not None:
                self.view.start()  # before the workers start: they inherit its capture of the terminal
            run = coord.submit(self.ref, self.params, self.config)
            self.job_id = run.job_id
            tasks = [asyncio.create_task(self._kill_later(coord, run, i, s)) for i, s in self.kills]
            if self.view is not None:
                tasks.append(asyncio.create_task(self.view.follow(coord.monitor, run.job_id)))
            try:
                await coord.wait(run.job_id, self.timeout)
            except TimeoutError:
                await coord.cancel(run.job_id)
                run.error = f"timed out after {self.timeout} s (--timeout)"
                run.state = "failed"
            finally:
                # the job is over: shutting down takes a few seconds at most. Should it hang, the
                # stacks of every thread go to stderr after SHUTDOWN_WATCHDOG_S, to say where
                faulthandler.dump_traceback_later(SHUTDOWN_WATCHDOG_S, exit=False)
                for t in tasks:
                    t.cancel()
                for outcome in await asyncio.gather(*tasks, return_exceptions=True):
                    if isinstance(outcome, Exception):  # a bug of the view or of --kill: the job is fine
                        log.error("stashflow run: a helper task failed: %r", outcome, exc_info=outcome)
            return run
        finally:
            try:
                await coord.aclose()  # the workers have exited: nothing writes to the view's capture
            finally:
                if self.view is not None:
                    final = None
                    if run is not None:
                        coord.monitor.sample()  # the job's end, and the events up to it
                        final = coord.monitor.view(run.job_id)
                    self.view.stop(final)

    async def _kill_later(self, coord: Coordinator, run: JobRun, instance: str, seconds: float) -> None:
        while run.started_at is None and not run.done.is_set():
            await asyncio.sleep(0.01)
        if run.started_at is None:
            return
        await asyncio.sleep(max(0.0, run.started_at + seconds - time.time()))
        try:
            message = await coord.kill(run.job_id, instance)
            if self.view is not None:
                click.echo(f"stashflow: --kill {instance}@{seconds:g}: {message}", err=True)
        except CoordinatorError as exc:
            click.echo(f"stashflow: --kill {instance}@{seconds:g} skipped: {exc}", err=True)


def write_metrics(path: str, status: dict[str, Any]) -> None:
    keys = (
        "state",
        "ft",
        "elapsed_s",
        "records_per_s",
        "source_records",
        "error",
        "gcs_commit_lag",
        "global_checkpoints",
        "instances",
    )
    doc = {k: status[k] for k in keys}
    doc["job"] = status["name"]
    doc["job_id"] = status["job"]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=2, sort_keys=True)
