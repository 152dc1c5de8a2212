"""Warm spare workers in local mode: a restarted instance runs in an idle process started beforehand.

The in-process tests drive the coordinator and its :class:`~engine.launcher.LocalLauncher` as
``stashflow run`` does (real worker processes, loopback only) and read the launcher's bookkeeping:
which spare hosted which instance, and when the idle ones went away. The CLI tests check the flag.
Every process is started by the launcher or here, bounded in time, and signalled by pid only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from support import ROOT, read_jsonl
from test_recovery import assert_exactly_once, restarted, run_killing

from engine.config import JobConfig
from engine.coordinator import Coordinator
from engine.job_run import JobRun
from engine.launcher import SPARE_NICE, LocalLauncher, _can_restore_priority
from engine.loader import JobRef

TOKEN = "spare-test-token"
RATE = 6000  # sentences per second and source, as in test_recovery: kills land while the job is busy


async def run_local(
    tmp_path: Path,
    *,
    ft: str,
    spares: int,
    n: int,
    kills: tuple[tuple[str, float], ...] = (),
    probe: Callable[[JobRun, LocalLauncher], None] | None = None,
) -> tuple[JobRun, LocalLauncher, dict[str, list[int]]]:
    """Run jobs/union_count.py on a local cluster with ``kills`` (instance, seconds after the start).

    Returns the run, the launcher, and the pids of the job's spares seen while it ran, by spare name.
    ``probe(run, launcher)`` is called every 10 ms while the job runs.
    """
    launcher = LocalLauncher(token=TOKEN, spares=spares)
    params = {"sentences": str(n), "rate": str(RATE), "output": str(tmp_path / "out")}
    config = JobConfig(parallelism=2, ft=ft, checkpoint_interval=0.3)
    seen: dict[str, list[int]] = {}
    coord = Coordinator(port=0, launcher=launcher, token=TOKEN)
    async with coord:
        run = coord.submit(JobRef.parse(str(ROOT / "jobs" / "union_count.py")), params, config)

        async def watch_spares() -> None:
            while True:
                for (job, name), proc in launcher.spare_procs.items():
                    if job == run.job_id and proc.pid not in seen.setdefault(name, []):
                        seen[name].append(proc.pid)
                if probe is not None:
                    probe(run, launcher)
                await asyncio.sleep(0.01)

        async def kill_later(inst: str, seconds: float) -> None:
            while run.started_at is None:
                await asyncio.sleep(0.01)
            await asyncio.sleep(max(0.0, run.started_at + seconds - time.time()))
            await coord.kill(run.job_id, inst)

        tasks = [asyncio.create_task(watch_spares())]
        tasks += [asyncio.create_task(kill_later(i, s)) for i, s in kills]
        try:
            await coord.wait(run.job_id, 90)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    return run, launcher, seen


def worker_pid(run: JobRun, inst: str) -> int:
    """The pid of the worker the coordinator placed ``inst`` on (worker ids are ``worker-PID-xxxxxx``)."""
    return int(run.placement[inst].split("-")[1])


async def test_a_lineage_recovery_runs_in_the_spare_and_a_replacement_is_started(tmp_path: Path):
    # killed twice: the second recovery takes the spare started after the first one was over
    n = 18000
    run, launcher, seen = await run_local(
        tmp_path, ft="lineage", spares=1, n=n, kills=(("count/1", 0.4), ("count/1", 2.0))
    )
    assert run.state == "finished", run.error
    assert_exactly_once(read_jsonl(tmp_path / "out"), n)
    assert restarted(run.instance_metrics()) == {"count/1"}
    assert run.instance_metrics()["count/1"]["restarts"] == 2
    first, second = seen["~spare-1"][0], seen["~spare-2"][0]
    assert launcher.adopted == [
        (run.job_id, "~spare-1", "count/1", first),
        (run.job_id, "~spare-2", "count/1", second),
    ]
    assert worker_pid(run, "count/1") == second  # the coordinator placed the last incarnation there
    assert set(seen) == {"~spare-1", "~spare-2", "~spare-3"}  # one idle spare again after each recovery


def thread_nices(pid: int) -> set[int]:
    """The nice values of the threads of process ``pid`` (none once it exited)."""
    nices = set()
    for tid in os.listdir(f"/proc/{pid}/task") if os.path.exists(f"/proc/{pid}/task") else ():
        with contextlib.suppress(OSError):
            nices.add(os.getpriority(os.PRIO_PROCESS, int(tid)))
    return nices


@pytest.mark.skipif(not _can_restore_priority(), reason="this user cannot lower a nice value again")
async def test_a_spare_starts_at_low_priority_and_gets_the_jobs_once_adopted(tmp_path: Path):
    idle: set[int] = set()
    adopted: set[int] = set()

    def probe(run: JobRun, launcher: LocalLauncher) -> None:
        for (job, _), proc in launcher.spare_procs.items():
            if job == run.job_id and proc.returncode is None:
                idle.update(thread_nices(proc.pid))
        for _, _, _, pid in launcher.adopted:
            adopted.update(thread_nices(pid))

    n = 12000
    run, launcher, _ = await run_local(
        tmp_path, ft="lineage", spares=1, n=n, kills=(("count/1", 0.8),), probe=probe
    )
    assert run.state == "finished", run.error
    assert_exactly_once(read_jsonl(tmp_path / "out"), n)
    assert len(launcher.adopted) == 1
    assert idle == {SPARE_NICE}  # its start-up took only CPU the job left idle
    assert adopted == {os.getpriority(os.PRIO_PROCESS, 0)}  # every thread of it, once it hosts count/1


async def test_a_checkpoint_rollback_puts_the_lost_instance_in_the_spare(tmp_path: Path):
    n = 6000
    run, launcher, seen = await run_local(tmp_path, ft="checkpoint", spares=1, n=n, kills=(("count/1", 0.5),))
    assert run.state == "finished", run.error
    assert_exactly_once(read_jsonl(tmp_path / "out"), n)
    assert {m["restarts"] for m in run.instance_metrics().values()} == {1}  # everyone rolled back
    spare = seen["~spare-1"][0]
    assert launcher.adopted == [(run.job_id, "~spare-1", "count/1", spare)]
    assert worker_pid(run, "count/1") == spare


async def test_without_spares_a_recovery_launches_a_process(tmp_path: Path):
    n = 6000
    run, launcher, seen = await run_local(tmp_path, ft="lineage", spares=0, n=n, kills=(("count/1", 0.5),))
    assert run.state == "finished", run.error
    assert_exactly_once(read_jsonl(tmp_path / "out"), n)
    assert run.instance_metrics()["count/1"]["restarts"] == 1
    assert seen == {} and launcher.adopted == []


async def test_idle_spares_are_terminated_when_the_job_ends(tmp_path: Path):
    """A spare hosts nothing and hears of no job end: the launcher terminates it at once, so that
    neither the job's end nor the coordinator's close waits out reap's 2 s grace for it."""
    launcher = LocalLauncher(token=TOKEN, spares=2)
    params = {"sentences": "2000", "rate": str(RATE), "output": str(tmp_path / "out")}
    async with Coordinator(port=0, launcher=launcher, token=TOKEN) as coord:
        run = coord.submit(
            JobRef.parse(str(ROOT / "jobs" / "union_count.py")), params, JobConfig(parallelism=2)
        )
        await coord.wait(run.job_id, 90)
        ended = time.monotonic()
        spares = [p for (job, _), p in launcher.spare_procs.items() if job == run.job_id]
        assert len(spares) == 2
        await asyncio.wait_for(asyncio.gather(*(p.wait() for p in spares)), 1.0)
        assert time.monotonic() - ended < 1.0
        assert [p.returncode for p in spares] == [-signal.SIGTERM] * 2  # terminated, not killed after grace
        closing = time.monotonic()
    assert time.monotonic() - closing < 1.9  # the instances' processes exit on the job's cancel
    assert run.state == "finished" and launcher.adopted == []
    assert not launcher.spare_procs and not launcher.procs


async def test_no_spares_for_a_job_that_does_not_recover(tmp_path: Path):
    run, launcher, seen = await run_local(tmp_path, ft="none", spares=1, n=2000)
    assert run.state == "finished", run.error
    assert seen == {} and launcher.adopted == []


def test_launcher_refuses_a_negative_spare_count():
    with pytest.raises(ValueError, match="spares must be an integer >= 0, got -1"):
        LocalLauncher(spares=-1)


# -- the command line -----------------------------------------------------------------------------------


def stashflow(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "engine", *args], capture_output=True, text=True, timeout=120, cwd=ROOT
    )


def test_run_with_zero_spares_still_recovers(tmp_path: Path):
    result = run_killing(tmp_path, ["count/1@0.5"], "--spare-workers", "0")
    assert restarted(result["instances"]) == {"count/1"}
    assert "recovered alone" in result["stderr"]


def test_run_recovers_in_the_spare(tmp_path: Path):
    out, metrics = tmp_path / "out", tmp_path / "metrics.json"
    args = [
        "--log-level",
        "INFO",
        "run",
        "jobs/union_count.py",
        "--parallelism",
        "2",
        "--kill",
        "count/1@0.5",
    ]
    args += [
        "-P",
        "sentences=6000",
        "-P",
        f"rate={RATE}",
        "-P",
        f"output={out}",
        "--checkpoint-interval",
        "0.3",
    ]
    proc = stashflow(*args, "--metrics-out", str(metrics), "--timeout", "90")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_exactly_once(read_jsonl(out), 6000)
    instances = json.loads(metrics.read_text())["instances"]
    assert restarted(instances) == {"count/1"}
    adopted = [line for line in proc.stderr.splitlines() if "restarts in spare worker ~spare-1 (pid " in line]
    assert len(adopted) == 1, proc.stderr[-3000:]
    pid = int(adopted[0].split("(pid ")[1].split(",")[0])
    assert instances["count/1"]["worker"].startswith(f"worker-{pid}-")  # the spare's process hosts it


def test_negative_spare_workers_exit_2():
    proc = stashflow("run", "jobs/union_count.py", "--spare-workers", "-1")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "stashflow: error: --spare-workers must be 0 or more (idle worker processes per job), got -1"
    ]


def test_spare_workers_is_documented_in_help():
    out = " ".join(stashflow("run", "--help").stdout.split())
    text = out[out.index("--spare-workers N") : out.index("-h, --help")]
    assert "new Python process" in text and "[default: 1]" in text


async def test_the_job_starts_with_its_spare_registered(tmp_path: Path):
    """The deployment waits for the spare launched with the workers: its start-up (imports, at nice 19)
    does not take CPU from the job's first second, and a failure then already finds it warm."""
    launcher = LocalLauncher(token=TOKEN, spares=1)
    params = {"sentences": "3000", "rate": str(RATE), "output": str(tmp_path / "out")}
    spare_at_start: bool | None = None
    async with Coordinator(port=0, launcher=launcher, token=TOKEN) as coord:
        run = coord.submit(
            JobRef.parse(str(ROOT / "jobs" / "union_count.py")),
            params,
            JobConfig(parallelism=2, ft="lineage"),
        )
        async with asyncio.timeout(60):
            while run.started_at is None and run.state == "deploying":
                await asyncio.sleep(0.001)
            pins = [w.pin for w in coord.workers.values()]
            spare_at_start = any(p and p.startswith(f"{run.job_id}:~spare-") for p in pins)
            await coord.wait(run.job_id, 60)
    assert run.state == "finished", run.error
    assert spare_at_start, pins
