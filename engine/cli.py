"""The ``stashflow`` command line.

Exit codes: 0 the job finished; 1 the job failed (a user function raised, an instance could not be
recovered); 2 bad input (job file, parameter, setting, usage), with one line on stderr naming the problem;
130 interrupted (Ctrl-C).

``stashflow run`` shows its job as it runs (:mod:`engine.progress`): a live view when stdout is a
terminal, plain lines on stderr otherwise, nothing but errors and the final summary with ``--quiet``.
Its coordinator serves the dashboard at http://127.0.0.1:8081/ (another free port when that one is
taken, unless ``--dashboard-port`` asked for it).
"""

from __future__ import annotations

import asyncio
import faulthandler
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn

import aiohttp
import click
from click.core import ParameterSource

from engine import allocator
from engine.config import FT_MODES, JobConfig
from engine.diagnostics import with_stack_dumps
from engine.errors import CoordinatorError, JobDefinitionError, JobLoadError, ParameterError, StashflowError
from engine.loader import JobRef, load_job, parse_params
from engine.logs import LOG_FORMATS, LOG_LEVELS, format_name, level_name, setup_logging
from engine.plan import Plan

if TYPE_CHECKING:
    from engine.local_run import DashboardSettings

# The coordinator (aiohttp's server, the dashboard), the local runner and the progress view (rich) are
# imported by the commands that use them: a worker process, of which `stashflow run` starts one per
# instance, starts 0.15 CPU-s sooner without them.

__all__ = ["main"]

log = logging.getLogger("stashflow.cli")

BAD_INPUT = (JobLoadError, ParameterError, JobDefinitionError)

#: ``stashflow run``'s dashboard port, when --dashboard-port does not name one
DASHBOARD_PORT = 8081


def _die(message: str, code: int) -> NoReturn:
    click.echo(f"stashflow: error: {message}", err=True)
    sys.exit(code)


def _job_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The settings of a job run: every option is a :class:`~engine.config.JobConfig` field."""
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
            "--ft",
            type=click.Choice(FT_MODES),
            default=FT_MODES[0],
            show_default=True,
            help="fault tolerance",
        ),
        click.option(
            "--ft-depth",
            type=int,
            default=1,
            show_default=True,
            help="lineage forwarding depth f; -1: unbounded",
        ),
        click.option(
            "--checkpoint-interval",
            type=float,
            default=JobConfig.checkpoint_interval,
            show_default=True,
            help="seconds between checkpoints",
        ),
        click.option(
            "--gcs-delay-ms", type=float, default=0.0, show_default=True, help="artificial GCS write latency"
        ),
        click.option(
            "--log-flush-ms",
            type=float,
            default=JobConfig.log_flush_ms,
            show_default=True,
            help="how long determinants gather before they are shipped to the GCS (at most 1 ms while a sink's "
            "output waits for them)",
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _parse_kills(specs: tuple[str, ...], plan: Plan) -> list[tuple[str, float]]:
    """``STEP/I@SECONDS`` pairs: kill the process hosting that instance that long after the start."""
    kills = []
    for spec in specs:
        instance, sep, when = spec.partition("@")
        step, slash, index = instance.rpartition("/")
        try:
            seconds = float(when)
        except ValueError:
            seconds = -1.0
        if not sep or not slash or not step or not index.isdigit() or seconds < 0:
            raise ParameterError(f"--kill {spec!r} is not STEP/INDEX@SECONDS; write e.g. --kill count/1@2.5")
        task = plan.task_of_step(step)
        if int(index) >= task.parallelism:
            raise ParameterError(f"--kill {spec}: step {step!r} has instances 0..{task.parallelism - 1}")
        kills.append((instance, seconds))
    return kills


def _log_level(value: str, option: str) -> str:
    level = level_name(value)
    if level is None:
        _die(f"{option} {value!r} is not a log level; give one of {', '.join(LOG_LEVELS)}", 2)
    return level


def _log_format(value: str, option: str) -> str:
    fmt = format_name(value)
    if fmt is None:
        _die(f"{option} {value!r} is not a log format; give one of {', '.join(LOG_FORMATS)}", 2)
    return fmt


@dataclass(frozen=True)
class _Logging:
    """The process's log settings (``ctx.obj`` of the group), and whether the level was asked for."""

    level: str
    fmt: str
    level_given: bool


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--log-level",
    default="WARNING",
    envvar="STASHFLOW_LOG_LEVEL",
    show_default=True,
    metavar="LEVEL",
    help=f"least severe log lines shown: {', '.join(LOG_LEVELS)}",
)
@click.option(
    "--log-format",
    default=LOG_FORMATS[0],
    envvar="STASHFLOW_LOG_FORMAT",
    show_default=True,
    metavar="FORMAT",
    help=f"log lines as {' or '.join(LOG_FORMATS)} (one JSON object a line)",
)
@click.pass_context
def cli(ctx: click.Context, log_level: str, log_format: str) -> None:
    """stashflow: stream processing whose failed operators recover alone (the lineage stash)."""
    allocator.tune()
    level = _log_level(log_level, "--log-level")
    fmt = _log_format(log_format, "--log-format")
    setup_logging(level, fmt)
    given = ctx.get_parameter_source("log_level") not in (ParameterSource.DEFAULT, None)
    ctx.obj = _Logging(level, fmt, given)


@cli.command()
@click.argument("job")
@_job_options
@click.option(
    "--metrics-out", type=click.Path(dir_okay=False), default=None, help="write run metrics as JSON"
)
@click.option("--timeout", type=float, default=None, help="fail the run after this many seconds")
@click.option(
    "--kill", "kills", multiple=True, metavar="STEP/I@SECONDS", help="SIGKILL that instance's process then"
)
@click.option(
    "--spare-workers",
    type=int,
    default=1,
    show_default=True,
    metavar="N",
    help="idle worker processes kept per job (not with --ft none), so that a restarted instance need not "
    "wait for a new Python process to start; each costs one idle process; 0: start one at the failure",
)
@click.option(
    "--dashboard-port",
    default=None,
    metavar="PORT",
    help=f"where the dashboard is served; 0: any free port  [default: {DASHBOARD_PORT}, or a free port when "
    "that one is taken]",
)
@click.option("--no-dashboard", is_flag=True, help="serve no dashboard")
@click.option(
    "--allow-kill",
    is_flag=True,
    help="let the dashboard's Kill button (and POST /jobs/{id}/kill) kill an instance's process",
)
@click.option("-q", "--quiet", is_flag=True, help="print only errors and the final summary")
@click.option(
    "--progress-interval",
    type=float,
    default=5.0,
    show_default=True,
    metavar="SECONDS",
    help="seconds between progress lines when stdout is not a terminal",
)
@click.option(
    "--log-level",
    "run_log_level",
    default=None,
    metavar="LEVEL",
    help="this run's log level (wins over stashflow --log-level)",
)
@click.option(
    "--log-format",
    "run_log_format",
    default=None,
    metavar="FORMAT",
    help="this run's log format (wins over stashflow --log-format)",
)
@click.pass_context
def run(
    ctx: click.Context,
    /,
    job: str,
    params: tuple[str, ...],
    metrics_out: str | None,
    timeout: float | None,
    kills: tuple[str, ...],
    spare_workers: int,
    dashboard_port: str | None,
    no_dashboard: bool,
    allow_kill: bool,
    quiet: bool,
    progress_interval: float,
    run_log_level: str | None,
    run_log_format: str | None,
    **settings: Any,
) -> None:
    """Run JOB (a .py file or module:attr) on a local cluster: one process per instance.

    Shows the job as it runs: a live view when stdout is a terminal, progress lines on stderr
    otherwise (--quiet: neither). The dashboard is at http://127.0.0.1:8081/ (printed at the start).
    """
    from engine.local_run import LocalRun, recovery_lines, write_metrics
    from engine.progress import ProgressView, stdout_is_live

    if spare_workers < 0:
        _die(f"--spare-workers must be 0 or more (idle worker processes per job), got {spare_workers}", 2)
    if not progress_interval > 0:
        _die(f"--progress-interval must be a positive number of seconds, got {progress_interval:g}", 2)
    dashboard = _dashboard_options(dashboard_port, no_dashboard, allow_kill)
    logs = _run_logging(ctx, run_log_level, run_log_format, quiet)
    try:
        ref = JobRef.parse(job)
        param_dict = parse_params(params)
        config = JobConfig(**settings)
        plan = Plan.of(load_job(ref, param_dict), config.parallelism)
        kill_plan = _parse_kills(kills, plan)
        if kill_plan and config.ft == "none":
            raise ParameterError("--kill with --ft none can only fail the job; run with --ft lineage")
    except BAD_INPUT as exc:
        _die(str(exc), 2)
    if not quiet:
        click.echo(
            f"stashflow: running job {plan.job.name!r}: {len(plan.tasks)} tasks, {len(plan.instances())} "
            f"instances (--ft {config.ft})",
            err=True,
        )
    view = (
        None if quiet else ProgressView("live" if stdout_is_live() else "plain", interval_s=progress_interval)
    )
    local = LocalRun(
        ref, param_dict, config, timeout, kill_plan, spare_workers, logs.level, logs.fmt, dashboard, view
    )
    error: tuple[str, int] | None = None
    try:
        result = asyncio.run(with_stack_dumps(local.run()))
        faulthandler.cancel_dump_traceback_later()  # shut down in time (LocalRun's watchdog)
    except StashflowError as exc:
        error = (str(exc), 2 if isinstance(exc, BAD_INPUT) else 1)
    except KeyboardInterrupt:
        error = (
            f"interrupted (Ctrl-C): job {local.job_id or '(not started)'} canceled, its workers stopped",
            130,
        )
    finally:
        if view is not None:
            view.stop()  # the terminal is restored before anything else is printed, whatever happened
    if error is not None:
        _die(*error)
    status = result.status()
    if metrics_out:
        write_metrics(metrics_out, status)
    for line in recovery_lines(status):
        click.echo(f"stashflow: {line}", err=True)
    if result.state != "finished":
        _die(f"job {result.job_id} {result.state}: {result.error}", 1)
    click.echo(
        f"stashflow: job {result.job_id} finished in {status['elapsed_s']:.2f} s, "
        f"{status['source_records']} source records ({status['records_per_s']:.0f}/s)",
        err=True,
    )


def _dashboard_options(port: str | None, off: bool, allow_kill: bool) -> DashboardSettings:
    from engine.local_run import DashboardSettings

    if off:
        if port is not None:
            _die(f"--dashboard-port {port} and --no-dashboard contradict each other: drop one of them", 2)
        return DashboardSettings(enabled=False, port=0, fallback=False, allow_kill=allow_kill)
    if port is None:
        return DashboardSettings(enabled=True, port=DASHBOARD_PORT, fallback=True, allow_kill=allow_kill)
    number = int(port) if port.strip().isdigit() else -1
    if not 0 <= number <= 65535:
        _die(f"--dashboard-port {port!r} is not a TCP port: give 1..65535, or 0 for any free port", 2)
    return DashboardSettings(enabled=True, port=number, fallback=False, allow_kill=allow_kill)


def _run_logging(ctx: click.Context, level: str | None, fmt: str | None, quiet: bool) -> _Logging:
    """This run's log settings: ``run``'s own options win over the group's; ``--quiet`` alone means ERROR.

    The workers the launcher starts log alike (it passes them the level and ``STASHFLOW_LOG_FORMAT``).
    """
    base = ctx.find_object(_Logging) or _Logging("WARNING", LOG_FORMATS[0], level_given=False)
    if level is not None:
        eff_level = _log_level(level, "--log-level")
    else:
        eff_level = "ERROR" if quiet and not base.level_given else base.level
    eff_fmt = _log_format(fmt, "--log-format") if fmt is not None else base.fmt
    if (eff_level, eff_fmt) != (base.level, base.fmt):
        setup_logging(eff_level, eff_fmt)
    return _Logging(eff_level, eff_fmt, level_given=level is not None or base.level_given)


@cli.command()
@click.option("--host", default="127.0.0.1", envvar="STASHFLOW_HOST", show_default=True)
@click.option("--port", default=8081, type=int, envvar="STASHFLOW_PORT", show_default=True)
@click.option("--data-dir", default=None, envvar="STASHFLOW_DATA_DIR", help="where the GCS keeps its files")
@click.option(
    "--gcs-delay-ms", type=float, default=0.0, envvar="STASHFLOW_GCS_DELAY_MS", help="artificial GCS latency"
)
@click.option(
    "--heartbeat-timeout",
    type=float,
    default=3.0,
    envvar="STASHFLOW_HEARTBEAT_TIMEOUT",
    show_default=True,
    help="seconds of silence after which a worker is declared dead and its instances recover",
)
@click.option(
    "--token", default=None, envvar="STASHFLOW_TOKEN", help="secret workers and clients must present"
)
@click.option("--no-dashboard", is_flag=True, help="serve no dashboard at --port")
@click.option(
    "--allow-kill",
    is_flag=True,
    envvar="STASHFLOW_ALLOW_KILL",
    help="let the dashboard's Kill button (and POST /jobs/{id}/kill) kill an instance",
)
def coordinator(
    host: str,
    port: int,
    data_dir: str | None,
    gcs_delay_ms: float,
    heartbeat_timeout: float,
    token: str | None,
    no_dashboard: bool,
    allow_kill: bool,
) -> None:
    """Run the coordinator (HTTP API, worker control, the GCS, the dashboard) until interrupted."""
    from engine.coordinator import Coordinator

    if not 0 <= port <= 65535:
        _die(f"--port {port} is not a TCP port: give 1..65535, or 0 for any free port", 2)
    if data_dir:
        os.makedirs(data_dir, exist_ok=True)
    if token is None and host not in ("127.0.0.1", "localhost", "::1"):
        click.echo(
            f"stashflow: warning: the coordinator listens on {host} without --token: anyone who reaches it "
            "can register a worker or submit jobs; set --token or STASHFLOW_TOKEN",
            err=True,
        )

    async def serve() -> None:
        async with Coordinator(
            host=host,
            port=port,
            data_dir=data_dir,
            gcs_delay_ms=gcs_delay_ms,
            heartbeat_timeout=heartbeat_timeout,
            token=token,
            dashboard=not no_dashboard,
            allow_kill=allow_kill,
        ) as coord:
            click.echo(f"stashflow: coordinator at {coord.url}", err=True)
            if not no_dashboard:
                hint = " (the Kill button needs the token: add #token=<--token> to the address)"
                click.echo(
                    f"stashflow: dashboard at {coord.url}/{hint if allow_kill and token else ''}", err=True
                )
            await asyncio.Event().wait()

    try:
        asyncio.run(with_stack_dumps(serve()))
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
@click.option(
    "--data-dir", default=None, envvar="STASHFLOW_DATA_DIR", help="checkpoints: shared by all workers"
)
@click.option("--pin", default=None, hidden=True, help="JOB:INSTANCE to host (local mode)")
@click.option(
    "--connect-timeout", default=30.0, type=float, envvar="STASHFLOW_CONNECT_TIMEOUT", show_default=True
)
@click.option("--token", default=None, envvar="STASHFLOW_TOKEN", help="the coordinator's --token")
@click.option(
    "--heartbeat-s",
    default=0.5,
    type=click.FloatRange(min=0.01),
    envvar="STASHFLOW_HEARTBEAT_S",
    show_default=True,
    help="seconds between statistics reports to the coordinator (well under its --heartbeat-timeout)",
)
@click.option("--exit-when-done", is_flag=True, hidden=True)
def worker(url: str, slots: int, **options: Any) -> None:
    """Run a worker that hosts instances for the coordinator at URL."""
    from engine.worker import Worker

    if slots < 1:
        _die(f"--slots must be at least 1, got {slots}", 2)
    try:
        asyncio.run(with_stack_dumps(Worker(url, slots=slots, **options).run()))
    except KeyboardInterrupt:
        pass
    except StashflowError as exc:
        _die(str(exc), 1)


def _api(url: str, method: str, path: str, body: Any = None, token: str | None = None) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else None

    async def call() -> Any:
        async with aiohttp.ClientSession() as session:
            try:
                async with session.request(
                    method, url.rstrip("/") + path, json=body, headers=headers
                ) as resp:
                    data = await resp.json()
                    if resp.status >= 400:
                        raise CoordinatorError(data.get("error", f"HTTP {resp.status}"))
                    return data
            except aiohttp.ClientError as exc:
                raise CoordinatorError(f"cannot reach the coordinator at {url}: {exc}") from None

    return asyncio.run(call())


def _coordinator_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``--coordinator URL`` and ``--token``, for the commands that talk to a running coordinator."""
    fn = click.option("--token", default=None, envvar="STASHFLOW_TOKEN", help="the coordinator's --token")(fn)
    return click.option(
        "--coordinator",
        "url",
        default="http://127.0.0.1:8081",
        envvar="STASHFLOW_COORDINATOR",
        show_default=True,
    )(fn)


@cli.command()
@click.argument("job")
@_job_options
@_coordinator_option
@click.option("--wait/--detach", default=True, show_default=True, help="wait for the job to end")
def submit(
    job: str, params: tuple[str, ...], url: str, token: str | None, wait: bool, **settings: Any
) -> None:
    """Submit JOB to a running coordinator (the job file's text is sent along)."""
    from engine.local_run import recovery_lines

    try:
        ref = JobRef.parse(job)
        body = {
            "ref": ref.to_dict(),
            "params": parse_params(params),
            "config": JobConfig(**settings).to_dict(),
        }
        job_id = _api(url, "POST", "/jobs", body, token)["job"]
    except (*BAD_INPUT, CoordinatorError) as exc:
        _die(str(exc), 2)
    click.echo(job_id)
    if not wait:
        return
    while True:
        status = _api(url, "GET", f"/jobs/{job_id}", token=token)
        if status["state"] in ("finished", "failed", "canceled"):
            break
        time.sleep(0.2)
    for line in recovery_lines(status):
        click.echo(f"stashflow: {line}", err=True)
    if status["state"] != "finished":
        _die(f"job {job_id} {status['state']}: {status['error']}", 1)
    click.echo(f"stashflow: job {job_id} finished in {status['elapsed_s']:.2f} s", err=True)


@cli.command()
@click.argument("job_id", required=False)
@_coordinator_option
def status(job_id: str | None, url: str, token: str | None) -> None:
    """Show every job, or one job's status and per-instance metrics as JSON."""
    try:
        data = _api(url, "GET", f"/jobs/{job_id}" if job_id else "/jobs", token=token)
    except CoordinatorError as exc:
        _die(str(exc), 2)
    click.echo(json.dumps(data, indent=2, sort_keys=True))


@cli.command()
@click.argument("job_id")
@_coordinator_option
def cancel(job_id: str, url: str, token: str | None) -> None:
    """Cancel a running job."""
    try:
        data = _api(url, "POST", f"/jobs/{job_id}/cancel", token=token)
    except CoordinatorError as exc:
        _die(str(exc), 2)
    click.echo(f"{job_id}: {data['state']}")


@cli.command()
@click.argument("instance")
@click.option("--job", "job_id", required=True, help="the job id (`stashflow status` lists them)")
@_coordinator_option
def kill(instance: str, job_id: str, url: str, token: str | None) -> None:
    """Kill the process hosting step instance INSTANCE (e.g. count/1) of a running job."""
    try:
        data = _api(url, "POST", f"/jobs/{job_id}/kill", {"instance": instance}, token)
    except CoordinatorError as exc:
        _die(str(exc), 2)
    click.echo(data["message"])


# -- benchmarks: they live in the source tree (bench/), not in the installed package -----------------------


@cli.group()
def bench() -> None:
    """Benchmarks of the engine, from a source checkout (bench/)."""


@bench.command("ft", context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.option("--quick", is_flag=True, help="the smoke test: short phases, under 90 s")
@click.option(
    "--out", type=click.Path(file_okay=False), default=None, help="where results go [default: bench/out]"
)
@click.option(
    "--modes", multiple=True, help="--ft modes, comma-separated or repeated [default: every mode, none first]"
)
@click.pass_context
def bench_ft(ctx: click.Context, quick: bool, out: str | None, modes: tuple[str, ...]) -> None:
    """Fault tolerance per --ft mode: throughput, latency, recovery from a kill (bench/ft.py).

    Writes ft.json, ft.md and PNG plots into --out. Other options pass through to bench/ft.py
    (python bench/ft.py --help lists them). Exit code 1 when a mode's run failed or missed a check.
    """
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "bench" / "ft.py"
    spec = importlib.util.spec_from_file_location("stashflow_bench_ft", path)
    if not path.is_file() or spec is None or spec.loader is None:
        _die(f"stashflow bench ft runs from a source checkout of stashflow: there is no {path}", 2)
    argv = ["--quick"] if quick else []
    argv += ["--out", out] if out else []
    argv += ["--modes", ",".join(modes)] if modes else []
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    sys.path.insert(0, str(path.parent))  # its sibling modules, as when run as a script
    spec.loader.exec_module(module)
    sys.exit(module.main([*argv, *ctx.args]))


def main() -> None:
    cli(prog_name="stashflow")
