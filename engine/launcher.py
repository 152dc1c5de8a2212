"""Local mode's resource manager: one worker OS process per task instance, plus warm spares.

``stashflow run`` starts the coordinator in-process with a :class:`LocalLauncher`. For every task
instance of a job it starts ``python -m engine worker --pin JOB:INSTANCE``, so that the process is the
failure unit of exactly one instance (DESIGN.md §2): killing it kills that instance and nothing else.

**Spares.** A job whose instances recover (every ``--ft`` mode but ``none``) also gets ``spares`` idle
workers, pinned to ``JOB:~spare-N`` (no instance is named like that: instance names are
``step/index``, and ``~`` is not allowed in a step name). A restarted instance need not wait for a new
interpreter to start and import the engine (about half a CPU-second, most of a lineage recovery): the
coordinator *adopts* a registered spare instead (:meth:`adopt` re-keys its process under the
instance, so :meth:`kill`, :meth:`returncode`, :meth:`exit_code` and :meth:`reap` treat it as the
instance's process from then on), and asks for a replacement (:meth:`replenish`) once the recovery is
over. A spare hosts nothing, so it hears of no job end: :meth:`stop_spares` terminates the job's idle
spares at once when the job ends.

**Logs.** A worker process logs at the launcher's ``log_level`` in its ``log_format`` (by default
those :func:`engine.logs.setup_logging` set in this process), to the stderr it shares with the
coordinator's process; the level goes as ``--log-level``, the format as ``STASHFLOW_LOG_FORMAT``.

The launcher only ever signals processes it started, by pid.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
import signal
import sys

from engine import logs

__all__ = ["SPARE_PREFIX", "LocalLauncher"]

log = logging.getLogger("stashflow.launcher")

#: a spare's pin is ``JOB:~spare-N``: never an instance name (those are ``step/index``)
SPARE_PREFIX = "~spare-"


#: the nice value an idle spare worker runs at (where the launcher may restore it on adoption)
SPARE_NICE = 19


def _can_restore_priority() -> bool:
    """Whether this process may lower a nice value again: only then are spares started at SPARE_NICE
    (root, or an RLIMIT_NICE that allows it; otherwise an adopted spare would stay at SPARE_NICE)."""
    if not hasattr(os, "setpriority"):
        return False
    if os.geteuid() == 0:
        return True
    soft = resource.getrlimit(resource.RLIMIT_NICE)[0]
    return soft == resource.RLIM_INFINITY or 20 - soft <= os.getpriority(os.PRIO_PROCESS, 0)


def _set_priority(pid: int, nice: int) -> None:
    """Set the nice value of every thread of process ``pid`` (Linux nice values are per thread)."""
    try:
        threads = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        threads = [pid]
    for tid in threads:
        with contextlib.suppress(OSError):  # a thread that just ended; a process that just died
            os.setpriority(os.PRIO_PROCESS, tid, nice)


class LocalLauncher:
    """Starts, kills and reaps pinned worker processes on this machine; keeps ``spares`` idle ones per job."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        log_level: str | None = None,
        log_format: str | None = None,
        data_dir: str | None = None,
        token: str | None = None,
        spares: int = 1,
    ):
        if not isinstance(spares, int) or isinstance(spares, bool) or spares < 0:
            raise ValueError(f"spares must be an integer >= 0, got {spares!r}")
        self.host = host
        #: the workers' log level and format; None: this process's (engine.logs), when a worker starts
        self.log_level = log_level
        self.log_format = log_format
        self.data_dir = data_dir
        self.token = token
        #: idle spare workers kept per job that recovers (0: a restarted instance gets a new process)
        self.spares = spares
        #: (job, instance) -> the process hosting it (an adopted spare's, once adopted)
        self.procs: dict[tuple[str, str], asyncio.subprocess.Process] = {}
        #: (job, spare name) -> an idle spare's process, in start order
        self.spare_procs: dict[tuple[str, str], asyncio.subprocess.Process] = {}
        #: every adoption, in order: (job, spare name, instance, pid)
        self.adopted: list[tuple[str, str, str, int]] = []
        self._spare_serial: dict[str, int] = {}  # job -> spares named so far
        self._spares_starting: dict[str, int] = {}  # job -> spares whose process is being created
        self._ended: set[str] = set()  # jobs whose spares were stopped: no new ones

    async def launch(
        self, coordinator_url: str, job_id: str, instances: list[str], *, spares: bool = False
    ) -> None:
        """Start one pinned worker per instance (concurrently: interpreter start-up dominates).

        ``spares``: also start the job's spare workers (the coordinator asks at deployment, for jobs
        that recover). A spare that fails to start only costs a later recovery its head start.
        """
        names = self._reserve_spares(job_id) if spares else []
        await asyncio.gather(
            *(self._start(coordinator_url, job_id, inst) for inst in instances),
            *(self._start_spare(coordinator_url, job_id, name) for name in names),
        )

    async def _start(self, url: str, job_id: str, inst: str) -> None:
        proc = await self._spawn(url, f"{job_id}:{inst}")
        self.procs[(job_id, inst)] = proc
        log.debug("started worker pid %d for %s", proc.pid, inst,
                  extra={"job": job_id, "instance": inst, "worker_pid": proc.pid})  # fmt: skip

    async def _spawn(self, url: str, pin: str) -> asyncio.subprocess.Process:
        env = dict(os.environ)
        # the worker must import the same engine as we do, whatever its cwd
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        if self.token:
            env["STASHFLOW_TOKEN"] = self.token  # in the environment, not on a command line `ps` shows
        env["STASHFLOW_LOG_FORMAT"] = self.log_format or logs.current_format()
        return await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "engine",
            "--log-level",
            self.log_level or logs.current_level(),
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
            pin,
            "--exit-when-done",
            *(["--data-dir", self.data_dir] if self.data_dir else []),
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
        )

    # -- spares ---------------------------------------------------------------------------------------

    def _reserve_spares(self, job_id: str) -> list[str]:
        """Names for the spares ``job_id`` lacks; counted as starting before any ``await``, so that two
        concurrent top-ups do not both start the missing one."""
        if job_id in self._ended:
            return []
        have = len(self.idle_spares(job_id)) + self._spares_starting.get(job_id, 0)
        names = []
        for _ in range(self.spares - have):
            serial = self._spare_serial.get(job_id, 0) + 1
            self._spare_serial[job_id] = serial
            names.append(f"{SPARE_PREFIX}{serial}")
        self._spares_starting[job_id] = self._spares_starting.get(job_id, 0) + len(names)
        return names

    async def _start_spare(self, url: str, job_id: str, name: str) -> None:
        spawn = asyncio.ensure_future(self._spawn(url, f"{job_id}:{name}"))
        # booked when the process exists, even if whoever waits here is cancelled meanwhile (the
        # coordinator closing): a spare created then is still terminated and reaped, never left behind
        spawn.add_done_callback(lambda done: self._spare_started(job_id, name, done))
        with contextlib.suppress(OSError):  # logged by _spare_started
            await asyncio.shield(spawn)

    def _spare_started(
        self, job_id: str, name: str, spawn: asyncio.Future[asyncio.subprocess.Process]
    ) -> None:
        self._spares_starting[job_id] -= 1
        if spawn.cancelled() or spawn.exception() is not None:
            log.warning("job %s: could not start spare worker %s: %s", job_id, name,
                        "cancelled" if spawn.cancelled() else spawn.exception(),
                        extra={"job": job_id, "spare": name})  # fmt: skip
            return
        proc = spawn.result()
        self.spare_procs[(job_id, name)] = proc
        if job_id in self._ended:  # the job ended while the process was being created
            self._terminate(proc)
        elif _can_restore_priority():
            # its start-up (~0.5 CPU-s of imports) takes only CPU the job leaves idle; adopt() restores it
            _set_priority(proc.pid, SPARE_NICE)
        log.debug("started spare worker pid %d (%s) for job %s", proc.pid, name, job_id,
                  extra={"job": job_id, "spare": name, "worker_pid": proc.pid})  # fmt: skip

    async def replenish(self, coordinator_url: str, job_id: str) -> None:
        """Start spares until ``job_id`` has ``spares`` idle ones again (none once the job ended)."""
        names = self._reserve_spares(job_id)
        await asyncio.gather(*(self._start_spare(coordinator_url, job_id, name) for name in names))

    def idle_spares(self, job_id: str) -> list[str]:
        """The names of ``job_id``'s spares whose process runs and hosts nothing yet, oldest first."""
        return [n for (j, n), p in self.spare_procs.items() if j == job_id and p.returncode is None]

    def adopt(self, job_id: str, spare: str, inst: str) -> int:
        """Spare ``spare`` now hosts ``inst``: its process is the instance's from now on. Returns its pid.

        The instance's previous (dead) process is forgotten, as when a new one is launched for it.
        """
        proc = self.spare_procs.pop((job_id, spare))
        self.procs[(job_id, inst)] = proc
        if _can_restore_priority():
            _set_priority(proc.pid, os.getpriority(os.PRIO_PROCESS, 0))  # the job's priority, every thread
        self.adopted.append((job_id, spare, inst, proc.pid))
        log.info("job %s: spare worker %s (pid %d) hosts %s", job_id, spare, proc.pid, inst,
                 extra={"job": job_id, "instance": inst, "spare": spare, "worker_pid": proc.pid})  # fmt: skip
        return proc.pid

    def stop_spares(self, job_id: str) -> None:
        """The job ended: terminate its idle spares now (they host nothing: there is nothing to wait
        for) and start no more. :meth:`reap` collects them."""
        self._ended.add(job_id)
        for (j, _), proc in self.spare_procs.items():
            if j == job_id:
                self._terminate(proc)

    @staticmethod
    def _terminate(proc: asyncio.subprocess.Process) -> None:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()

    # -- instance processes ---------------------------------------------------------------------------

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
            async with asyncio.timeout(wait):  # not wait_for: 3.11's could swallow a cancel
                await proc.wait()
        return proc.returncode

    async def reap(self, job_id: str, grace: float = 2.0) -> None:
        """Wait up to ``grace`` seconds for a job's workers to exit, then kill the rest.

        Its idle spares are terminated first, so they are gone within milliseconds, not after ``grace``.
        """
        self.stop_spares(job_id)
        procs = [p for (j, _), p in [*self.procs.items(), *self.spare_procs.items()] if j == job_id]
        if procs:
            waits = [asyncio.ensure_future(p.wait()) for p in procs]
            await asyncio.wait(waits, timeout=grace)
            for p in procs:
                if p.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        p.kill()
            await asyncio.gather(*waits)
        for table in (self.procs, self.spare_procs):
            for key in [k for k in table if k[0] == job_id]:
                del table[key]

    async def aclose(self) -> None:
        for job_id in {j for j, _ in self.procs} | {j for j, _ in self.spare_procs}:
            await self.reap(job_id, grace=2.0)
