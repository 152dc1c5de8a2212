"""The coordinator's side of ``--ft checkpoint``: triggering, completing and rolling back to global checkpoints.

The Flink-style baseline of DESIGN.md §8, next to the lineage stash's :mod:`engine.recovery`:

* **Trigger.** Every ``checkpoint_interval`` the coordinator asks every source instance to inject the
  barrier of checkpoint ``n`` (at most one checkpoint in flight, as Flink's default). No new
  checkpoint is triggered once a source reached the end of its input.
* **Completion.** Each instance acknowledges its snapshot (``barrier_ack``, with its
  :class:`~engine.checkpoint.CheckpointRecord`); the record goes to the GCS at once. When every instance
  of the job acknowledged ``n``, it is marked complete for all of them in the GCS, and every worker
  hears ``checkpoint_complete``: sinks write the output ``n`` pre-committed, stores drop older snapshots.
  The *final* checkpoint (:data:`~engine.global_checkpoint.FINAL_CHECKPOINT` + epoch), taken by each instance
  at the end of its input, completes the same way and lets the sinks write the rest.
* **Rollback.** When any instance is lost, *every* instance of the job restarts from the last complete
  checkpoint: in place where its worker process lives (the way Flink redeploys tasks into running
  TaskManagers), on a new one where it died. The job's epoch (the instances' incarnation) goes up by
  one; acknowledgments and reports of an older epoch are ignored. Every instance's metrics show the
  restart (``restarts``, ``recoveries``), so a comparison with the lineage stash sees what rolled back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from engine.checkpoint import CheckpointRecord
from engine.gcs import GCS, GCSError
from engine.global_checkpoint import FINAL_CHECKPOINT
from engine.job_run import TERMINAL
from engine.recovery import InstanceRecovery

if TYPE_CHECKING:
    from engine.coordinator import Coordinator
    from engine.job_run import JobRun

__all__ = ["GlobalCheckpointCoordinator"]

log = logging.getLogger("stashflow.checkpoint")


@dataclass
class _JobCheckpoints:
    epoch: int = 0
    next_id: int = 1
    complete: int | None = None
    #: when ``complete`` became complete (wall clock)
    completed_at: float | None = None
    #: checkpoint id -> instances that acknowledged it (in the current epoch)
    acks: dict[int, set[str]] = field(default_factory=dict)
    triggered_at: dict[int, float] = field(default_factory=dict)
    sources_done: bool = False
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    recoveries: dict[str, list[InstanceRecovery]] = field(default_factory=dict)
    all_deployed: asyncio.Event = field(default_factory=asyncio.Event)
    durations_ms: list[float] = field(default_factory=list)


class GlobalCheckpointCoordinator:
    """Global checkpoints and global rollback for the coordinator's ``--ft checkpoint`` jobs."""

    def __init__(self, coordinator: Coordinator, gcs: GCS, *, timeout_s: float = 600.0):
        self.coord = coordinator
        self.gcs = gcs
        #: a checkpoint not complete after this long is abandoned, and the next one triggered
        self.timeout_s = timeout_s
        self.jobs: dict[str, _JobCheckpoints] = {}

    def job(self, job_id: str) -> _JobCheckpoints:
        return self.jobs.setdefault(job_id, _JobCheckpoints())

    def epoch(self, job_id: str) -> int:
        return self.job(job_id).epoch

    # -- trigger -----------------------------------------------------------------------------------

    def watch(self, run: JobRun) -> None:
        """Trigger ``run``'s checkpoints every ``checkpoint_interval`` until it ends."""
        self.coord.spawn(self._trigger_loop(run))

    async def _trigger_loop(self, run: JobRun) -> None:
        job = self.job(run.job_id)
        sources = [t.instance(i) for t in run.plan.tasks if t.is_source for i in range(t.parallelism)]
        while run.state not in TERMINAL:
            await asyncio.sleep(run.config.checkpoint_interval)
            if run.state != "running" or run.recovering or job.sources_done:
                continue
            now = time.time()
            stale = [c for c, t in job.triggered_at.items() if now - t > self.timeout_s]
            for cid in stale:
                log.warning(
                    "job %s: checkpoint %d not complete after %.0f s: abandoned",
                    run.job_id,
                    cid,
                    self.timeout_s,
                    extra={"job": run.job_id, "checkpoint_id": cid},
                )
                job.acks.pop(cid, None)
                job.triggered_at.pop(cid, None)
            if job.triggered_at:
                continue  # one checkpoint in flight at a time
            cid = job.next_id
            job.next_id += 1
            job.acks[cid] = set()
            job.triggered_at[cid] = now
            for inst in sources:
                await self.coord.send_to_instance(
                    run, inst, {"type": "trigger", "job": run.job_id, "instance": inst, "checkpoint_id": cid}
                )

    # -- completion --------------------------------------------------------------------------------

    async def on_ack(self, run: JobRun, msg: dict[str, Any]) -> None:
        job = self.job(run.job_id)
        inst, cid, epoch = msg["instance"], int(msg["checkpoint_id"]), int(msg.get("incarnation", 0))
        if run.state in TERMINAL or epoch != job.epoch:
            return  # an acknowledgment from before a rollback
        if cid >= FINAL_CHECKPOINT:
            job.acks.setdefault(cid, set())
            if run.plan.task(inst.rpartition("/")[0]).is_source:
                job.sources_done = True
        elif cid not in job.acks:
            return  # abandoned
        try:
            await self.gcs.put_checkpoint(run.job_id, inst, cid, msg["record"])
        except GCSError as exc:
            await self.coord.fail_job(run, inst, f"instance {inst}: the GCS refused checkpoint {cid}: {exc}")
            return
        acks = job.acks.get(cid)
        if epoch != job.epoch or acks is None:
            return
        acks.add(inst)
        if len(acks) == len(run.plan.instances()):
            await self._complete(run, job, cid, epoch)

    async def _complete(self, run: JobRun, job: _JobCheckpoints, cid: int, epoch: int) -> None:
        async with job.lock:  # a rollback picks its checkpoint before or after this one, not halfway
            if epoch != job.epoch or run.state in TERMINAL:
                return
            for inst in run.plan.instances():
                await self.gcs.mark_checkpoint_complete(run.job_id, inst, cid)
            job.complete = cid
            job.completed_at = time.time()
            job.acks.pop(cid, None)
            began = job.triggered_at.pop(cid, None)
            if began is not None:
                job.durations_ms.append((time.time() - began) * 1000)
                del job.durations_ms[:-1000]
        log.info("job %s: checkpoint %s complete", run.job_id, "final" if cid >= FINAL_CHECKPOINT else cid,
                 extra={"job": run.job_id, "checkpoint_id": "final" if cid >= FINAL_CHECKPOINT else cid,
                        "duration_ms": round(job.durations_ms[-1], 1) if began is not None else None})  # fmt: skip
        await self.coord.broadcast(
            run, {"type": "checkpoint_complete", "job": run.job_id, "instance": None, "checkpoint_id": cid}
        )

    # -- rollback ----------------------------------------------------------------------------------

    async def rollback(self, run: JobRun, lost: str, reason: str, epoch: int | None) -> None:
        """Restart every instance of ``run`` from its last complete checkpoint; ``lost`` was lost in ``epoch``."""
        job = self.job(run.job_id)
        async with job.lock:
            if run.state in TERMINAL or (epoch is not None and epoch < job.epoch):
                return  # reported by an incarnation a rollback already replaced
            while not await self._rollback_once(run, job, lost, reason):
                if run.state in TERMINAL:
                    return
                reason = f"a worker went away during the rollback after {lost} was lost"

    async def _rollback_once(self, run: JobRun, job: _JobCheckpoints, lost: str, reason: str) -> bool:
        """One attempt; False if a worker it counted on went away meanwhile (then it starts over)."""
        coord = self.coord
        job.epoch += 1
        epoch = job.epoch
        job.acks.clear()
        job.triggered_at.clear()
        job.sources_done = False
        detected = time.time()
        killed_at = run.kill_times.pop(lost, None)
        insts = run.plan.instances()
        cid = job.complete
        records: dict[str, bytes | None] = {}
        for inst in insts:
            data = await self.gcs.latest_checkpoint(run.job_id, inst) if cid is not None else None
            if data is not None and CheckpointRecord.from_bytes(data).checkpoint_id != cid:
                raise RuntimeError(
                    f"instance {inst}: its latest complete checkpoint is not global checkpoint {cid}"
                )
            records[inst] = data
        log.warning("job %s: instance %s lost (%s); rolling every instance back to checkpoint %s (epoch %d)",
                    run.job_id, lost, reason, cid, epoch,
                    extra={"job": run.job_id, "instance": lost, "reason": reason, "checkpoint_id": cid,
                           "epoch": epoch, "instances": len(insts),
                           "detected_s": round(detected - killed_at, 4) if killed_at else None})  # fmt: skip
        for inst in insts:
            why = reason if inst == lost else f"rolled back with the job: {lost} was lost"
            rec = InstanceRecovery(inst, epoch, killed_at, detected, why, checkpoint_id=cid)
            job.recoveries.setdefault(inst, []).append(rec)
        run.recovering = set(insts)
        run.deployed.clear()
        run.finished.clear()
        job.all_deployed = asyncio.Event()
        recovery = {i: {"record": records[i], "entries": None, "restarts": epoch} for i in insts}
        # in place where the worker lives; anew where it died
        gone = [i for i in insts if run.placement.get(i) not in coord.workers]
        for inst in gone:
            run.placement.pop(inst, None)
            for w in coord.workers.values():
                w.instances.discard((run.job_id, inst))
        by_worker: dict[str, list[str]] = {}
        for inst, wid in run.placement.items():
            by_worker.setdefault(wid, []).append(inst)
        await asyncio.gather(*(  # at once: a worker slow to stop its instances must not delay the others
            coord.workers[wid].send(
                {**coord.deploy_message(run, names, {i: recovery[i] for i in names}), "type": "restart"}
            )
            for wid, names in by_worker.items()
        ))  # fmt: skip
        if gone:
            if not await coord.placement.place_all(run, gone):
                return True  # the job failed, with the reason
            for inst in gone:
                message = coord.deploy_message(run, [inst], {inst: recovery[inst]})
                await coord.workers[run.placement[inst]].send(message)
        deadline = time.monotonic() + coord.deploy_timeout
        while not job.all_deployed.is_set():
            if any(run.placement.get(i) not in coord.workers for i in insts):
                return False
            if time.monotonic() > deadline:
                await coord.fail_job(run, lost, f"job rollback after {lost} was lost: the instances were not "
                                     f"redeployed within {coord.deploy_timeout:.0f} s")  # fmt: skip
                return True
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.1):  # not wait_for: 3.11's could swallow a cancel
                    await job.all_deployed.wait()
        addresses = {k: list(v) for k, v in run.addresses.items()}
        now = time.time()
        for rec_list in job.recoveries.values():
            rec_list[-1].deployed_at = now
        run.recovering.clear()
        workers = [coord.workers.get(wid) for wid in sorted(set(run.placement.values()))]
        if any(w is None for w in workers):
            return False
        start = {"type": "start", "job": run.job_id, "addresses": addresses}
        await asyncio.gather(*(w.send(start) for w in workers if w is not None))
        return True

    def on_deployed(self, run: JobRun) -> None:
        if set(run.plan.instances()) <= run.deployed:
            self.job(run.job_id).all_deployed.set()

    def on_recovered(self, run: JobRun, msg: dict[str, Any]) -> None:
        recs = self.job(run.job_id).recoveries.get(msg["instance"])
        if recs and recs[-1].incarnation == int(msg.get("incarnation", 0)):
            recs[-1].live_at = float(msg["time"])
            rec = recs[-1].to_dict()
            # the lost instance's line shows at the default level; the others rolled back with it
            log.log(logging.INFO if rec["reason"].startswith("rolled back with the job") else logging.WARNING,
                    "job %s: instance %s live again %.3f s after the loss (epoch %d, from global checkpoint %s)",
                    run.job_id, msg["instance"], rec["live_s"], rec["incarnation"], rec["checkpoint_id"],
                    extra={"job": run.job_id, "instance": msg["instance"], "epoch": rec["incarnation"],
                           "live_s": rec["live_s"], "detected_s": rec["detected_s"],
                           "checkpoint_id": rec["checkpoint_id"], "reason": rec["reason"]})  # fmt: skip

    # -- metrics -----------------------------------------------------------------------------------

    def metrics(self, job_id: str, inst: str) -> dict[str, Any]:
        job = self.jobs.get(job_id)
        recs = job.recoveries.get(inst, []) if job else []
        return {
            "restarts": len(recs),
            "recoveries": [r.to_dict() for r in recs],
            # every instance's checkpoint is the global one: its age is the job's
            "checkpoint_at": round(job.completed_at, 3) if job and job.completed_at else None,
        }

    def summary(self, job_id: str) -> dict[str, Any]:
        job = self.jobs.get(job_id)
        if job is None:
            return {}
        durations = sorted(job.durations_ms)
        return {
            "complete": job.complete,
            "epoch": job.epoch,
            "completed": len(durations),
            "duration_p50_ms": round(durations[len(durations) // 2], 2) if durations else None,
        }
