"""The ``stashflow`` command line.

Exit codes: 0 the job finished; 1 the job failed (a user function raised, an instance died); 2 bad
input (job file, parameter, setting, usage), with one line on stderr naming the problem.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from typing import Any, NoReturn

import aiohttp
import click

from engine.config import FT_MODES, JobConfig
from engine.coordinator import Coordinator, JobRun
from engine.errors import CoordinatorError, JobDefinitionError, JobLoadError, ParameterError, StashflowError
from engine.launcher import LocalLauncher
from engine.loader import JobRef, load_job, parse_params
from engine.plan import Plan

__all__ = ["main"]

BAD_INPUT = (JobLoadError, ParameterError, JobDefinitionError)


def _die(message: str, code: int) -> NoReturn:
    click.echo(f"stashflow: error: {message}", err=True)
    sys.exit(code)


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.WARNING),
        format="%(asctime)s %(levelname)s %(name)s [%(process)d] %(message)s",
        stream=sys.stderr,
    )


def _job_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option(
            "-P", "--param", "params", multiple=True, metavar="KEY=VALUE", help="job parameter for build()"
        ),
        click.option("--parallelism", type=int, default=None, help="default parallelism of every step"),
        click.option("--batch-size", type=int, default=1000, show_default=True, help="records per batch"),
        click.option(
            "--flush-ms", type=float, default=5.0, show_default=True, help="latency bound of a batch"
        ),
        click.option(
            "--ft", type=click.Choice(FT_MODES), default="none", show_default=True, help="fault tolerance"
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _config(parallelism: int | None, batch_size: int, flush_ms: float, ft: str) -> JobConfig:
    return JobConfig(parallelism=parallelism, batch_size=batch_size, flush_ms=flush_ms, ft=ft)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--log-level", default="WARNING", envvar="STASHFLOW_LOG_LEVEL", show_default=True)
def cli(log_level: str) -> None:
    """stashflow: stream processing whose failed operators recover alone (the lineage stash)."""
    _setup_logging(log_level)


@cli.command()
@click.argument("job")
@_job_options
@click.option(
    "--metrics-out", type=click.Path(dir_okay=False), default=None, help="write run metrics as JSON"
)
@click.option("--timeout", type=float, default=None, help="fail the run after this many seconds")
def run(
    job: str,
    params: tuple[str, ...],
    parallelism: int | None,
    batch_size: int,
    flush_ms: float,
    ft: str,
    metrics_out: str | None,
    timeout: float | None,
) -> None:
    """Run JOB (a .py file or module:attr) on a local cluster: one process per instance."""
    try:
        ref = JobRef.parse(job)
        param_dict = parse_params(params)
        config = _config(parallelism, batch_size, flush_ms, ft)
        plan = Plan.of(load_job(ref, param_dict), config.parallelism)
    except BAD_INPUT as exc:
        _die(str(exc), 2)
    click.echo(
        f"stashflow: running job {plan.job.name!r}: {len(plan.tasks)} tasks, {len(plan.instances())} "
        f"instances (--ft {ft})",
        err=True,
    )
    try:
        result = asyncio.run(_run_local(ref, param_dict, config, timeout))
    except StashflowError as exc:
        _die(str(exc), 2 if isinstance(exc, BAD_INPUT) else 1)
    status = result.status()
    if metrics_out:
        _write_metrics(metrics_out, status)
    if result.state != "finished":
        _die(f"job {result.job_id} {result.state}: {result.error}", 1)
    click.echo(
        f"stashflow: job {result.job_id} finished in {status['elapsed_s']:.2f} s, "
        f"{status['source_records']} source records ({status['records_per_s']:.0f}/s)",
        err=True,
    )


async def _run_local(ref: JobRef, params: dict[str, str], config: JobConfig, timeout: float | None) -> JobRun:
    level = logging.getLevelName(logging.getLogger().level)
    async with Coordinator(port=0, launcher=LocalLauncher(log_level=str(level))) as coord:
        run = coord.submit(ref, params, config)
        try:
            await coord.wait(run.job_id, timeout)
        except TimeoutError:
            await coord.cancel(run.job_id)
            run.error = f"timed out after {timeout} s (--timeout)"
            run.state = "failed"
        return run


def _write_metrics(path: str, status: dict[str, Any]) -> None:
    keys = (
        "job",
        "name",
        "state",
        "ft",
        "elapsed_s",
        "records_per_s",
        "source_records",
        "error",
        "instances",
    )
    doc = {k: status[k] for k in keys}
    doc["job"] = status["name"]
    doc["job_id"] = status["job"]
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=2, sort_keys=True)


@cli.command()
@click.option("--host", default="127.0.0.1", envvar="STASHFLOW_HOST", show_default=True)
@click.option("--port", default=8081, type=int, envvar="STASHFLOW_PORT", show_default=True)
@click.option("--data-dir", default=None, envvar="STASHFLOW_DATA_DIR", help="where the GCS keeps its files")
def coordinator(host: str, port: int, data_dir: str | None) -> None:
    """Run the coordinator (HTTP API and worker control) until interrupted."""
    if data_dir:
        os.makedirs(data_dir, exist_ok=True)

    async def serve() -> None:
        async with Coordinator(host=host, port=port) as coord:
            click.echo(f"stashflow: coordinator at {coord.url}", err=True)
            await asyncio.Event().wait()

    try:
        asyncio.run(serve())
    except KeyboardInterrupt:
        pass
    except CoordinatorError as exc:
        _die(str(exc), 2)


@cli.command()
@click.option("--coordinator", "url", required=True, envvar="STASHFLOW_COORDINATOR", help="coordinator URL")
@click.option(
    "--host", default="127.0.0.1", envvar="STASHFLOW_HOST", show_default=True, help="data bind address"
)
@click.option(
    "--advertise", default=None, envvar="STASHFLOW_ADVERTISE", help="address peers use (default: --host)"
)
@click.option("--data-port", default=0, type=int, envvar="STASHFLOW_DATA_PORT", show_default=True)
@click.option("--slots", default=4, type=int, envvar="STASHFLOW_SLOTS", show_default=True)
@click.option("--pin", default=None, hidden=True, help="JOB:INSTANCE to host (local mode)")
@click.option(
    "--connect-timeout", default=30.0, type=float, envvar="STASHFLOW_CONNECT_TIMEOUT", show_default=True
)
@click.option("--exit-when-done", is_flag=True, hidden=True)
def worker(
    url: str,
    host: str,
    advertise: str | None,
    data_port: int,
    slots: int,
    pin: str | None,
    connect_timeout: float,
    exit_when_done: bool,
) -> None:
    """Run a worker that hosts instances for the coordinator at URL."""
    from engine.worker import Worker

    if slots < 1:
        _die(f"--slots must be at least 1, got {slots}", 2)
    w = Worker(
        url,
        host=host,
        advertise=advertise,
        data_port=data_port,
        slots=slots,
        pin=pin,
        exit_when_done=exit_when_done,
        connect_timeout=connect_timeout,
    )
    try:
        asyncio.run(w.run())
    except KeyboardInterrupt:
        pass
    except StashflowError as exc:
        _die(str(exc), 1)


def _api(url: str, method: str, path: str, body: Any = None) -> Any:
    async def call() -> Any:
        async with aiohttp.ClientSession() as session:
            try:
                async with session.request(method, url.rstrip("/") + path, json=body) as resp:
                    data = await resp.json()
                    if resp.status >= 400:
                        raise CoordinatorError(data.get("error", f"HTTP {resp.status}"))
                    return data
            except aiohttp.ClientError as exc:
                raise CoordinatorError(f"cannot reach the coordinator at {url}: {exc}") from None

    return asyncio.run(call())


_coordinator_option = click.option(
    "--coordinator", "url", default="http://127.0.0.1:8081", envvar="STASHFLOW_COORDINATOR", show_default=True
)


@cli.command()
@click.argument("job")
@_job_options
@_coordinator_option
@click.option("--wait/--detach", default=True, show_default=True, help="wait for the job to end")
def submit(
    job: str,
    params: tuple[str, ...],
    parallelism: int | None,
    batch_size: int,
    flush_ms: float,
    ft: str,
    url: str,
    wait: bool,
) -> None:
    """Submit JOB to a running coordinator (the job file's text is sent along)."""
    try:
        ref = JobRef.parse(job)
        body = {
            "ref": ref.to_dict(),
            "params": parse_params(params),
            "config": _config(parallelism, batch_size, flush_ms, ft).to_dict(),
        }
        job_id = _api(url, "POST", "/jobs", body)["job"]
    except BAD_INPUT as exc:
        _die(str(exc), 2)
    except CoordinatorError as exc:
        _die(str(exc), 2)
    click.echo(job_id)
    if not wait:
        return
    while True:
        status = _api(url, "GET", f"/jobs/{job_id}")
        if status["state"] in ("finished", "failed", "canceled"):
            break
        time.sleep(0.2)
    if status["state"] != "finished":
        _die(f"job {job_id} {status['state']}: {status['error']}", 1)
    click.echo(f"stashflow: job {job_id} finished in {status['elapsed_s']:.2f} s", err=True)


@cli.command()
@click.argument("job_id", required=False)
@_coordinator_option
def status(job_id: str | None, url: str) -> None:
    """Show every job, or one job's status and per-instance metrics as JSON."""
    try:
        data = _api(url, "GET", f"/jobs/{job_id}" if job_id else "/jobs")
    except CoordinatorError as exc:
        _die(str(exc), 2)
    click.echo(json.dumps(data, indent=2, sort_keys=True))


@cli.command()
@click.argument("job_id")
@_coordinator_option
def cancel(job_id: str, url: str) -> None:
    """Cancel a running job."""
    try:
        data = _api(url, "POST", f"/jobs/{job_id}/cancel")
    except CoordinatorError as exc:
        _die(str(exc), 2)
    click.echo(f"{job_id}: {data['state']}")


def main() -> None:
    cli(prog_name="stashflow")
