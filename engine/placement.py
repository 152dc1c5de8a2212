"""Placement: which worker hosts which instance; in local mode, launching and adopting their processes.

A worker pinned to an instance (local mode) gets exactly that one; otherwise instances go round-robin
to registered workers with free slots. In local mode a running job's restarted instances first adopt
the job's idle spare workers (pinned ``JOB:~spare-N``, :mod:`engine.launcher`): re-pinned here, they
host the instance without a new process having to start. A worker lost before its job started took
nothing that ran with it: its instances are placed and deployed again (:meth:`Placement.lost_before_start`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

from engine.job_run import TERMINAL, JobRun, WorkerConn
from engine.launcher import SPARE_PREFIX

if TYPE_CHECKING:
    from engine.coordinator import Coordinator

__all__ = ["Placement"]

log = logging.getLogger("stashflow.coordinator")

#: the longest a job's deployment waits for its spare workers to register (local mode)
SPARE_WAIT_S = 5.0


class Placement:
    """The coordinator's placement of instances on its workers (:attr:`Coordinator.placement`)."""

    def __init__(self, coord: Coordinator):
        self.coord = coord
        #: notified whenever a worker registers: placements waiting for one look again
        self.changed = asyncio.Condition()
        #: local mode: pin a spare registers with -> the instance pin it was adopted for meanwhile
        self._repins: dict[str, str] = {}
        #: local mode: pins of spares whose connection closed before they were adopted (dead)
        self._lost_spares: set[str] = set()

    async def deploy(self, run: JobRun, instances: list[str] | None = None) -> None:
        """Place and deploy ``instances`` (all of the plan's by default) of a job not started yet.

        A worker lost meanwhile is skipped: its instances are placed again when its loss is handled
        (:meth:`lost_before_start`), after this deployment, which holds the job's deploy lock.
        """
        instances = run.plan.instances() if instances is None else instances
        async with run.deploy_lock:
            if run.state != "deploying" or not await self.place_all(run, instances):
                return
            await self._spares_registered(run)
            by_worker: dict[str, list[str]] = {}
            for inst in instances:
                if inst in run.placement:  # not if its worker was lost meanwhile
                    by_worker.setdefault(run.placement[inst], []).append(inst)
            for wid, insts in by_worker.items():
                w = self.coord.workers.get(wid)
                if w is not None:
                    await w.send(self.coord.deploy_message(run, insts))

    async def _spares_registered(self, run: JobRun) -> None:
        """Local mode: wait (at most :data:`SPARE_WAIT_S`) until the job's spares, launched with its
        workers, have registered, so that the job starts with them idle. A spare still starting
        during the first second of the job took CPU from it (at nice 19 too: ~0.2 CPU-s of imports),
        and a failure then found no warm spare. A spare that has not started by then is not waited
        for: the job runs without it."""
        launcher = self.coord.launcher
        if launcher is None or not run.recovers:
            return

        def ready() -> bool:
            return len(self._registered_spares(run.job_id)) >= len(launcher.idle_spares(run.job_id))

        loop = asyncio.get_running_loop()
        deadline = loop.time() + SPARE_WAIT_S
        async with self.changed:
            # registrations notify; a spare that exits instead is seen at the next look (0.1 s)
            while not ready() and (left := deadline - loop.time()) > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(left, 0.1)):
                        await self.changed.wait()

    async def lost_before_start(self, run: JobRun, insts: list[str], conn: WorkerConn) -> None:
        """Instances whose worker went away before the job started: nothing of theirs ran, so there is
        nothing to recover. In a cluster they are placed again, on the workers left; a local worker
        process (one per instance) that exits before the start crashed: the job fails with its exit code."""
        if self.coord.launcher is not None:
            code = await self.coord.launcher.exit_code(run.job_id, insts[0], wait=1.0)
            exit_info = f", exit code {code}" if code is not None else ""
            await self.coord.fail_job(run, insts[0], f"instance {insts[0]}: its worker process (pid {conn.pid}"
                                      f"{exit_info}) exited before the job started; its error is printed above")  # fmt: skip
            return
        log.warning("job %s: worker %s (pid %s) went away before the job started; placing %s again",
                    run.job_id, conn.worker_id, conn.pid, ", ".join(insts),
                    extra={"job": run.job_id, "worker": conn.worker_id, "worker_pid": conn.pid,
                           "instances": insts})  # fmt: skip
        self.coord.spawn(self.deploy(run, insts))

    async def place_all(self, run: JobRun, instances: list[str]) -> bool:
        """Place ``instances`` (launching their processes in local mode); fail the job if that fails."""
        try:
            watch: asyncio.Future[Any]
            if self.coord.launcher is not None:
                deploying = run.state == "deploying"
                # a restart takes a warm spare where the job has one; its replacement starts once the
                # recovery is over (see "recovered"), not while the restarted instance needs the CPU
                fresh = instances if deploying else self._adopt_spares(run, instances)
                await self.coord.launcher.launch(
                    self.coord.url, run.job_id, fresh, spares=deploying and run.recovers
                )
                watch = asyncio.ensure_future(self._watch_launch(run, instances))
            else:
                watch = asyncio.ensure_future(asyncio.Event().wait())
            place = asyncio.ensure_future(self._place(run, instances))
            try:
                done, _ = await asyncio.wait(
                    {place, watch}, timeout=self.coord.deploy_timeout, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                for fut in (place, watch):
                    fut.cancel()
            if place in done:
                place.result()
                return True
            if watch in done:
                await self.coord.fail_job(run, None, watch.result())
                return False
            await self.coord.fail_job(run, None, self._placement_problem(run, instances))
        except Exception as exc:
            await self.coord.fail_job(run, None, f"deploying job {run.job_id} failed: {exc}")
        return False

    def _registered_spares(self, job_id: str) -> dict[str, WorkerConn]:
        """The job's spare workers that have registered, by pin (``JOB:~spare-N``)."""
        prefix = f"{job_id}:{SPARE_PREFIX}"
        return {w.pin: w for w in self.coord.workers.values() if w.pin and w.pin.startswith(prefix)}

    def _adopt_spares(self, run: JobRun, instances: list[str]) -> list[str]:
        """Give ``instances`` of running ``run`` its idle spare workers; returns those left without one.

        Registered spares go first (they are ready); one still starting goes next: it began before any
        process launched now would. A spare is re-pinned here, on the coordinator's side only (a pinned
        worker uses its pin to register, and only registers once); one not registered yet is re-pinned
        when it registers. The launcher re-keys its process under the instance.
        """
        assert self.coord.launcher is not None
        job_id = run.job_id
        registered = self._registered_spares(job_id)
        spares = [
            name
            for name in self.coord.launcher.idle_spares(job_id)
            if f"{job_id}:{name}" not in self._lost_spares
        ]
        spares.sort(key=lambda name: f"{job_id}:{name}" not in registered)  # stable: oldest first
        left = list(instances)
        while left and spares:
            inst, name = left.pop(0), spares.pop(0)
            spare_pin, pin = f"{job_id}:{name}", f"{job_id}:{inst}"
            pid = self.coord.launcher.adopt(job_id, name, inst)
            w = registered.get(spare_pin)
            if w is not None:
                w.pin = pin
            else:
                self._repins[spare_pin] = pin
            log.info("job %s: instance %s restarts in spare worker %s (pid %d, %s)", job_id, inst, name,
                     pid, "registered" if w is not None else "still starting",
                     extra={"job": job_id, "instance": inst, "spare": name, "worker_pid": pid})  # fmt: skip
        return left

    async def replenish_spares(self, run: JobRun) -> None:
        """After a recovery: start the spares the job used, off the recovery's critical path."""
        if self.coord.launcher is not None and run.state == "running" and run.recovers and not run.recovering:
            await self.coord.launcher.replenish(self.coord.url, run.job_id)

    async def _watch_launch(self, run: JobRun, instances: list[str]) -> str:
        """Returns a message as soon as a launched worker process exits before it registered."""
        assert self.coord.launcher is not None
        while True:
            for inst in instances:
                code = self.coord.launcher.returncode(run.job_id, inst)
                if code is not None and inst not in run.placement:
                    return (
                        f"the worker process for instance {inst} exited with code {code} before it registered; "
                        "its error is printed above (run with --log-level INFO for more)"
                    )
            await asyncio.sleep(0.05)

    def _placement_problem(self, run: JobRun, instances: list[str]) -> str:
        free = sum(w.slots - len(w.instances) for w in self.coord.workers.values() if w.pin is None)
        where = f"{free} free slots on {len(self.coord.workers)} workers"
        if run.state == "running":  # a recovery
            return (
                f"instance {', '.join(instances)} of job {run.job_id} cannot be restarted: no worker took it "
                f"within {self.coord.deploy_timeout:.0f} s ({where}); keep spare slots in a cluster (--slots) so that "
                "a dead worker's instances fit on the others"
            )
        return (
            f"job {run.job_id} needs {len(instances)} instance slots; {len(run.placement)} were placed within "
            f"{self.coord.deploy_timeout:.0f} s ({where}); start more workers or raise --slots"
        )

    async def _place(self, run: JobRun, instances: list[str]) -> None:
        pending = list(instances)
        async with self.changed:
            while True:
                for w in self.coord.workers.values():
                    if w.pin is not None:
                        job_id, _, inst = w.pin.partition(":")
                        if job_id == run.job_id and inst in pending:
                            self._assign(run, inst, w)
                            pending.remove(inst)
                if self.coord.launcher is None:
                    free = sorted(
                        (
                            w
                            for w in self.coord.workers.values()
                            if w.pin is None and len(w.instances) < w.slots
                        ),
                        key=lambda w: (len(w.instances), w.worker_id),
                    )
                    while pending and free:
                        w = free.pop(0)
                        self._assign(run, pending.pop(0), w)
                        if len(w.instances) < w.slots:
                            free.append(w)
                            free.sort(key=lambda w: (len(w.instances), w.worker_id))
                if not pending:
                    return
                await self.changed.wait()

    def _assign(self, run: JobRun, inst: str, w: WorkerConn) -> None:
        run.placement[inst] = w.worker_id
        run.addresses[inst] = w.address
        w.instances.add((run.job_id, inst))
        log.info("job %s: instance %s placed on worker %s (pid %s)", run.job_id, inst, w.worker_id, w.pid,
                 extra={"job": run.job_id, "instance": inst, "worker": w.worker_id,
                        "worker_pid": w.pid})  # fmt: skip

    # -- the spares' side of worker registration --------------------------------------------------------

    def pin_at_registration(self, pin: Any) -> Any:
        """The pin a registering worker gets: a spare adopted while it was starting gets its instance's."""
        return self._repins.pop(pin, pin) if isinstance(pin, str) else pin

    def connection_lost(self, conn: WorkerConn) -> None:
        """A worker's connection closed: an idle spare of a live job is never adopted (it would not
        register again)."""
        if conn.pin is not None and f":{SPARE_PREFIX}" in conn.pin:
            run = self.coord.jobs.get(conn.pin.partition(":")[0])
            if run is not None and run.state not in TERMINAL:
                self._lost_spares.add(conn.pin)

    def forget_spares(self, job_id: str) -> None:
        """The job ended: drop what was kept about its spares."""
        prefix = f"{job_id}:"
        for pin in [p for p in self._repins if p.startswith(prefix)]:
            del self._repins[pin]
        self._lost_spares = {p for p in self._lost_spares if not p.startswith(prefix)}
