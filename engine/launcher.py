"""Local mode's resource manager: one worker OS process per task instance.

``stashflow run`` starts the coordinator in-process with a :class:`LocalLauncher`. For every task
instance of a job it starts ``python -m engine worker --pin JOB:INSTANCE``, so that the process is the
failure unit of exactly one instance (DESIGN.md §2): killing it kills that instance and nothing else.
The launcher only ever signals processes it started, by pid.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys

__all__ = ["LocalLauncher"]

log = logging.getLogger("stashflow.launcher")


class LocalLauncher:
    """Starts, kills and reaps pinned worker processes on this machine."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        log_level: str = "WARNING",
        data_dir: str | None = None,
        token: str | None = None,
    ):
        self.host = host
        self.log_level = log_level
        self.data_dir = data_dir
        self.token = token
        self.procs: dict[tuple[str, str], asyncio.subprocess.Process] = {}

    async def launch(self, coordinator_url: str, job_id: str, instances: list[str]) -> None:
        """Start one pinned worker per instance (concurrently: interpreter start-up dominates)."""
        await asyncio.gather(*(self._start(coordinator_url, job_id, inst) for inst in instances))

    async def _start(self, url: str, job_id: str, inst: str) -> None:
        env = dict(os.environ)
        # the worker must import the same engine as we do, whatever its cwd
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        if self.token:
            env["STASHFLOW_TOKEN"] = self.token  # in the environment, not on a command line `ps` shows
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "engine",
            "--log-level",
            self.log_level,
            "worker",
            "--coordinator",
            url,
            "--host",
            self.host,
            "--data-port",
            "0",
            "--slots",
            "1",
            "--pin",
            f"{job_id}:{inst}",
            "--exit-when-done",
            *(["--data-dir", self.data_dir] if self.data_dir else []),
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
        )
        self.procs[(job_id, inst)] = proc
        log.debug("started worker pid %d for %s", proc.pid, inst)

    def pid(self, job_id: str, inst: str) -> int | None:
        proc = self.procs.get((job_id, inst))
        return proc.pid if proc else None

    def returncode(self, job_id: str, inst: str) -> int | None:
        """The exit code of the process hosting ``inst``, or ``None`` while it runs (or is unknown)."""
        proc = self.procs.get((job_id, inst))
        return proc.returncode if proc else None

    def kill(self, job_id: str, inst: str) -> int:
        """SIGKILL the process hosting ``inst``; returns its pid."""
        proc = self.procs[(job_id, inst)]
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGKILL)
        return proc.pid

    async def exit_code(self, job_id: str, inst: str, wait: float = 0.0) -> int | None:
        proc = self.procs.get((job_id, inst))
        if proc is None:
            return None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), wait)
        return proc.returncode

    async def reap(self, job_id: str, grace: float = 2.0) -> None:
        """Wait up to ``grace`` seconds for a job's workers to exit, then kill the rest."""
        procs = [p for (j, _), p in self.procs.items() if j == job_id]
        if procs:
            waits = [asyncio.ensure_future(p.wait()) for p in procs]
            await asyncio.wait(waits, timeout=grace)
            for p in procs:
                if p.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        p.kill()
            await asyncio.gather(*waits)
        for key in [k for k in self.procs if k[0] == job_id]:
            del self.procs[key]

    async def aclose(self) -> None:
        for job_id in {j for j, _ in self.procs}:
            await self.reap(job_id, grace=2.0)
