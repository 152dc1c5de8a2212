"""The coordinator's side of the lineage stash: commits, checkpoint completion, recovery (DESIGN.md §5-§7).

:class:`LineageCoordinator` serves the jobs that run with ``--ft lineage``:

* **Commits (§5.3).** Instances ship new determinants (``log`` messages); the coordinator stores those
  of a job that arrive in one turn of its event loop as one GCS request (no task per message: at
  saturation they come by the thousand per second), the GCS stores them with group commit and
  acknowledges a committed position; the coordinator publishes the new positions to every worker of
  the job (``commit``), coalescing bursts into one message. Stashes drop what is committed; sinks
  release output whose causal past is now covered.
* **Checkpoint completion (§6).** An instance's checkpoint record (``checkpoint``) is stored at once and
  becomes *complete* when every position in its causal past (its ``requirements``) is committed. Then
  the instance may prune its log, and each upstream sender may trim its output log up to the seqs the
  checkpoint consumed (``trim``).
* **Recovery (§7).** When an instance's process is lost, only that instance is restarted: from its latest
  complete checkpoint, with its causal log after it gathered from the GCS (the committed part) and from
  the stashes of live instances (the uncommitted tail: the longest copy wins). The new incarnation is
  placed, deployed with that log, started, and every worker of the job learns its new address
  (``peer_moved``) so that senders reconnect and resend from their output logs. Nobody else restarts.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from engine.causal_log import Determinant, decode, encode
from engine.checkpoint import CheckpointRecord, checkpoint_name
from engine.codec import pack
from engine.errors import ProtocolError, short_repr
from engine.gcs import GCS, GCSError
from engine.job_run import TERMINAL

if TYPE_CHECKING:
    from engine.coordinator import Coordinator
    from engine.job_run import JobRun

__all__ = ["InstanceRecovery", "LineageCoordinator"]

log = logging.getLogger("stashflow.recovery")


@dataclass
class InstanceRecovery:
    """One recovery of one task instance, as the metrics report it."""

    instance: str
    incarnation: int
    killed_at: float | None
    detected_at: float
    reason: str
    checkpoint_id: int | None = None
    log_entries: int = 0
    from_stash: int = 0
    deployed_at: float | None = None
    live_at: float | None = None
    replayed_batches: int = 0

    def to_dict(self) -> dict[str, Any]:
        origin = self.killed_at or self.detected_at
        return {
            "incarnation": self.incarnation,
            "reason": self.reason,
            "checkpoint_id": self.checkpoint_id,
            "log_entries": self.log_entries,
            "log_entries_from_stashes": self.from_stash,
            "detected_s": round(self.detected_at - self.killed_at, 4) if self.killed_at else None,
            "live_s": round(self.live_at - origin, 4) if self.live_at else None,
            "replayed_batches": self.replayed_batches,
            # wall-clock times (s since the epoch), for timelines: the kill (if the coordinator made it),
            # its detection, the new incarnation's deployment and the moment it was live again
            "killed_at": _at(self.killed_at),
            "detected_at": _at(self.detected_at),
            "deployed_at": _at(self.deployed_at),
            "live_at": _at(self.live_at),
        }


def _at(t: float | None) -> float | None:
    return round(t, 3) if t is not None else None


@dataclass(slots=True)
class _LogMessage:
    """The fields of one ``log`` message, checked (:func:`_log_message`)."""

    instance: str
    incarnation: int
    start: int
    count: int
    entries: bytes
    sent_at: float | None


@dataclass
class _JobLineage:
    committed: dict[str, int] = field(default_factory=dict)
    pending: dict[tuple[str, int], dict[str, Any]] = field(default_factory=dict)  # (instance, id) -> info
    incarnation: dict[str, int] = field(default_factory=dict)
    recoveries: dict[str, list[InstanceRecovery]] = field(default_factory=dict)
    locks: dict[str, asyncio.Lock] = field(default_factory=dict)
    broadcast_scheduled: bool = False
    trim_scheduled: bool = False
    lag_ms: list[float] = field(default_factory=list)
    #: log messages taken since the last flush to the GCS, in arrival order
    inbox: list[_LogMessage] = field(default_factory=list)
    flush_scheduled: bool = False
    #: flushes to the GCS (each one request, one group) and the log messages they stored
    log_batches: int = 0
    log_messages: int = 0
    #: task instance -> when its latest checkpoint became complete (wall clock)
    checkpointed_at: dict[str, float] = field(default_factory=dict)
    #: instances whose output waits for commits (as their latest log or ``waiting`` message said):
    #: their workers hear of commits at once, the others every ``trim_publish_s``
    waiting: set[str] = field(default_factory=set)


#: how often the workers of instances whose output does not wait for commits hear of them (their stashes
#: trim; nothing waits on it). Publication was 10% of the coordinator's busy samples with 25 ms (py-spy,
#: union word count, 11 instances); at 100 ms its CPU fell ~10% and the piggybacked lineage grew ~1 byte
#: per batch
TRIM_PUBLISH_S = 0.1


class LineageCoordinator:
    """Commits, checkpoint completion and single-instance recovery for the coordinator's lineage jobs."""

    def __init__(
        self, coordinator: Coordinator, gcs: GCS, *, stash_query_timeout: float = 2.0, publish_ms: float = 0.0
    ):
        self.coord = coordinator
        self.gcs = gcs
        self.publish_s = publish_ms / 1000.0
        #: how often workers whose output does not wait hear of commits (their stashes trim)
        self.trim_publish_s = max(self.publish_s, TRIM_PUBLISH_S)
        self.stash_query_timeout = stash_query_timeout
        self.jobs: dict[str, _JobLineage] = {}
        self._queries: dict[int, tuple[asyncio.Future[None], list[Any], set[str]]] = {}
        self._query_ids = itertools.count(1)

    def job(self, job_id: str) -> _JobLineage:
        return self.jobs.setdefault(job_id, _JobLineage())

    # -- commits (§5.3) -----------------------------------------------------------------------------

    def on_log(self, run: JobRun, msg: dict[str, Any]) -> None:
        """Take a ``log`` message (new determinants of one instance) to store in the job's next batch.

        Cheap and synchronous: the message is checked, dropped if its job is over or its incarnation
        dead, and queued; the first message queued schedules a flush (:meth:`_flush_logs`) at the end
        of this turn of the event loop, so every message that arrives meanwhile (a burst read from the
        workers' connections) is stored with it, as one GCS request in one group, and the commit
        positions, their publication and checkpoint completion are then updated once for them all.

        Raises:
            ProtocolError: the message lacks a field or a field has the wrong type (the coordinator
                drops the worker's connection, as for any malformed control message). A bad span is
                the GCS's to refuse: it fails the job, naming the instance.
        """
        entry = _log_message(msg)
        if run.state in TERMINAL:
            return  # the job is over and its GCS state dropped
        lineage = self.job(run.job_id)
        if entry.incarnation < lineage.incarnation.get(entry.instance, 0):
            return  # a dead incarnation's last words: its positions are being decided afresh
        _note_waiting(lineage, entry.instance, msg)
        lineage.inbox.append(entry)
        if not lineage.flush_scheduled:
            lineage.flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush_logs, run, lineage)

    def _flush_logs(self, run: JobRun, lineage: _JobLineage) -> None:
        """Store the job's queued log messages as one GCS request (a callback: never raises).

        The request is not awaited: the next flush may go out while this one waits for its
        acknowledgment (the GCS pipelines acknowledgments), so a batch never waits for the previous
        one's ``--gcs-delay-ms``, and the commit lag stays one GCS round trip. Segments of one instance
        reach the GCS in the order they arrived: the inbox, the flushes and the GCS queue are FIFO.
        """
        lineage.flush_scheduled = False
        batch, lineage.inbox = lineage.inbox, []
        if run.state in TERMINAL:
            return
        # A recovery may have begun since they arrived: drop a dead incarnation's messages here, in the
        # same step as queueing the rest, so that none is queued after the recovery's discard_uncommitted
        # (which it queues after raising the incarnation) and joins the new incarnation's log.
        incarnation = lineage.incarnation
        batch = [m for m in batch if m.incarnation >= incarnation.get(m.instance, 0)]
        if not batch:
            return
        segments = [(m.instance, m.start, m.entries, m.count) for m in batch]
        try:
            stored = self.gcs.append_logs(run.job_id, segments)
        except GCSError as exc:  # closed or broken: nothing stored
            self._refused(run, batch[0].instance, exc)
            return
        lineage.log_batches += 1
        lineage.log_messages += len(batch)
        stored.add_done_callback(lambda done: self._logs_stored(run, lineage, batch, done))

    def _logs_stored(
        self,
        run: JobRun,
        lineage: _JobLineage,
        batch: list[_LogMessage],
        stored: asyncio.Future[list[int | Exception]],
    ) -> None:
        """A flush is acknowledged: move the commit positions, once for the whole batch (a callback)."""
        if stored.cancelled() or run.state in TERMINAL:
            return
        if (error := stored.exception()) is not None:  # the store broke meanwhile: nothing stored
            self._refused(run, batch[0].instance, error)
            return
        now = time.time()
        advanced: dict[str, int] = {}
        refused: tuple[str, Exception] | None = None
        for m, result in zip(batch, stored.result(), strict=True):
            if isinstance(result, Exception):
                refused = refused or (m.instance, result)
                continue
            if m.sent_at:
                lineage.lag_ms.append((now - m.sent_at) * 1000)
            if result > lineage.committed.get(m.instance, 0):
                lineage.committed[m.instance] = advanced[m.instance] = result
        del lineage.lag_ms[:-2000]
        if advanced:
            if run.config.ft == "wal":  # each writer is waiting for exactly this acknowledgment
                self.coord.spawn(self._send_commits(run, advanced))
            self._schedule_broadcast(run, lineage)
            done = self._completable(lineage)
            if done:
                # in a task of its own: it waits for the recovery locks of the instances concerned,
                # held for as long as a recovery takes, and commits must not wait that long
                self.coord.spawn(self._finish_checkpoints(run, lineage, done))
        if refused is not None:
            self._refused(run, *refused)

    def _refused(self, run: JobRun, inst: str, exc: BaseException) -> None:
        self.coord.spawn(self.coord.fail_job(run, inst, f"instance {inst}: the GCS refused its log: {exc}"))

    async def _send_commits(self, run: JobRun, positions: dict[str, int]) -> None:
        for inst, committed in positions.items():
            await self.coord.send_to_instance(
                run, inst, {"type": "commit", "job": run.job_id, "positions": {inst: committed}}
            )

    def _schedule_broadcast(self, run: JobRun, lineage: _JobLineage) -> None:
        """Publish commit positions: to the workers of instances whose output waits for commits every
        ``publish_s`` (default 0: at the end of the event-loop turn that stored them, so the
        acknowledgments of one turn make one message), to the rest every ``trim_publish_s``.

        Coalescing bounds the control traffic (each flush of each instance would otherwise cost one
        message to every worker of the job). Only a sink's held output waits for commits (the
        output-commit rule), so only its worker gets them fast, while it holds some (its log messages
        say so, :meth:`on_waiting`); elsewhere commits merely trim stashes, which can wait a little longer.
        """
        if not lineage.broadcast_scheduled:
            lineage.broadcast_scheduled = True
            self.coord.spawn(self._publish(run, lineage, sinks=True))
        if not lineage.trim_scheduled:
            lineage.trim_scheduled = True
            self.coord.spawn(self._publish(run, lineage, sinks=False))

    def on_waiting(self, run: JobRun, msg: dict[str, Any]) -> None:
        """A sink's output started waiting for commits (or stopped) with no new determinants to ship:
        its worker hears of the commit positions at once (they may cover the output already)."""
        if run.state in TERMINAL:
            return
        lineage = self.job(run.job_id)
        instance = msg["instance"]
        if type(instance) is not str or type(msg.get("waiting")) is not bool:
            raise ProtocolError(f"malformed waiting message: {short_repr(msg, 120)}")
        if msg.get("incarnation", 0) < lineage.incarnation.get(instance, 0):
            return
        _note_waiting(lineage, instance, msg)
        if msg["waiting"]:
            self._schedule_broadcast(run, lineage)

    async def _publish(self, run: JobRun, lineage: _JobLineage, *, sinks: bool) -> None:
        await asyncio.sleep(self.publish_s if sinks else self.trim_publish_s)
        if sinks:
            lineage.broadcast_scheduled = False
        else:
            lineage.trim_scheduled = False
        placement = run.placement
        waiting = {wid for inst in lineage.waiting if (wid := placement.get(inst)) is not None}
        if sinks and not waiting:
            return
        data = pack({"type": "commit", "job": run.job_id, "positions": lineage.committed})
        for w in self.coord.workers_of(run):
            if (w.worker_id in waiting) == sinks:
                await w.send_packed(data)

    # -- checkpoints (§6) ---------------------------------------------------------------------------

    async def on_checkpoint(self, run: JobRun, msg: dict[str, Any]) -> None:
        lineage = self.job(run.job_id)
        inst, cid = msg["instance"], int(msg["checkpoint_id"])
        incarnation = msg.get("incarnation", 0)
        if run.state in TERMINAL or incarnation < lineage.incarnation.get(inst, 0):
            return
        await self.gcs.put_checkpoint(run.job_id, inst, cid, msg["record"])
        if incarnation < lineage.incarnation.get(inst, 0):
            return  # the instance died meanwhile and its recovery chose a checkpoint without this one
        lineage.pending[(inst, cid)] = {
            "incarnation": incarnation,
            "requirements": dict(msg["requirements"]),
            "consumed": {int(k): int(v) for k, v in msg["consumed"].items()},
            "log_position": CheckpointRecord.from_bytes(msg["record"]).log_position,
        }
        await self._complete_checkpoints(run, lineage)

    async def _complete_checkpoints(self, run: JobRun, lineage: _JobLineage) -> None:
        await self._finish_checkpoints(run, lineage, self._completable(lineage))

    def _completable(self, lineage: _JobLineage) -> dict[tuple[str, int], dict[str, Any]]:
        """Take the pending checkpoints whose causal past is committed out of ``pending``, by id."""
        committed = lineage.committed
        done = [
            key
            for key, info in lineage.pending.items()
            if all(committed.get(i, 0) >= p for i, p in info["requirements"].items())
        ]
        # taken out before any await: a concurrent call must not complete them a second time
        return {key: lineage.pending.pop(key) for key in sorted(done, key=lambda k: k[1])}

    async def _finish_checkpoints(
        self, run: JobRun, lineage: _JobLineage, infos: dict[tuple[str, int], dict[str, Any]]
    ) -> None:
        for (inst, cid), info in infos.items():
            if run.state in TERMINAL:
                return
            # under the instance's recovery lock: a recovery picks its checkpoint either after this one
            # is complete, or before it, and then this one (of a dead incarnation) is never completed;
            # senders must not trim their output logs past the checkpoint a recovery restarts from
            async with self.lock(run, inst):
                if info["incarnation"] != lineage.incarnation.get(inst, 0):
                    continue
                await self.gcs.mark_checkpoint_complete(run.job_id, inst, cid)
                lineage.checkpointed_at[inst] = time.time()
                log.debug("job %s: checkpoint %d of %s complete", run.job_id, cid, inst,
                          extra={"job": run.job_id, "instance": inst, "checkpoint_id": cid,
                                 "log_position": info["log_position"]})  # fmt: skip
            with contextlib.suppress(GCSError):
                await self.gcs.prune_log(run.job_id, inst, info["log_position"])
            await self.coord.send_to_instance(
                run,
                inst,
                {"type": "checkpoint_complete", "job": run.job_id, "instance": inst, "checkpoint_id": cid},
            )
            task_name, _, index = inst.rpartition("/")
            for cid_ in run.plan.inputs_of(task_name, int(index)):
                upto = info["consumed"].get(cid_.index)
                if upto:
                    await self.coord.send_to_instance(run, cid_.src, {
                        "type": "trim", "job": run.job_id, "instance": cid_.src,
                        "channel": f"{cid_.dst}#{cid_.index}", "upto": upto,
                    })  # fmt: skip

    # -- recovery (§7) ------------------------------------------------------------------------------

    def lock(self, run: JobRun, inst: str) -> asyncio.Lock:
        return self.job(run.job_id).locks.setdefault(inst, asyncio.Lock())

    async def recover(
        self, run: JobRun, inst: str, reason: str, place: Callable[[str, dict[str, Any]], Awaitable[None]]
    ) -> None:
        """Restart ``inst`` alone from its latest complete checkpoint and its gathered causal log."""
        lineage = self.job(run.job_id)
        detected = time.time()
        async with self.lock(run, inst):
            incarnation = lineage.incarnation.get(inst, 0) + 1
            lineage.incarnation[inst] = incarnation
            # checkpoints the dead incarnation took but did not see complete may depend on decisions
            # that died with it (positions past what survives): never complete them
            for key in [k for k in lineage.pending if k[0] == inst]:
                del lineage.pending[key]
            rec = InstanceRecovery(inst, incarnation, run.kill_times.pop(inst, None), detected, reason)
            lineage.recoveries.setdefault(inst, []).append(rec)
            log.warning("job %s: instance %s lost (%s); recovering it alone (incarnation %d)",
                        run.job_id, inst, reason, incarnation,
                        extra={"job": run.job_id, "instance": inst, "reason": reason, "incarnation": incarnation,
                               "detected_s": rec.to_dict()["detected_s"]})  # fmt: skip
            # 1. the latest complete checkpoint, if any: a first failure may come before one
            data = await self.gcs.latest_checkpoint(run.job_id, inst)
            record = CheckpointRecord.from_bytes(data) if data else None
            start = record.log_position if record else 0
            rec.checkpoint_id = record.checkpoint_id if record else None
            # 2. the causal log after it: the committed part, then the longest uncommitted tail a live
            #    instance holds in its stash; positions the dead incarnation flushed beyond those are
            #    decided afresh, so the GCS forgets them before the new incarnation flushes
            entries = await self._committed_log(run, inst, start)
            committed_end = start + len(entries)
            tail_start, tail = await self._stash_tail(run, inst)
            if tail and tail_start <= committed_end < tail_start + len(tail):
                extra = tail[committed_end - tail_start :]
                entries.extend(extra)
                rec.from_stash = len(extra)
            rec.log_entries = len(entries)
            log.info("job %s: %s restarts from %s (log position %d, consumed %s) with %d log entries "
                     "(%d from stashes)", run.job_id, inst, checkpoint_name(rec.checkpoint_id), start,
                     record.consumed if record else {}, len(entries), rec.from_stash,
                     extra={"job": run.job_id, "instance": inst, "incarnation": incarnation,
                            "checkpoint_id": rec.checkpoint_id, "log_position": start,
                            "log_entries": len(entries), "from_stashes": rec.from_stash})  # fmt: skip
            with contextlib.suppress(GCSError):
                await self.gcs.discard_uncommitted(run.job_id, inst)
            payload = {
                "record": data,
                "entries": encode(entries) if entries else None,
                "restarts": incarnation,
            }
            # 3. place, deploy, start; senders learn the new address when it is deployed
            await place(inst, payload)
            rec.deployed_at = time.time()

    async def _committed_log(self, run: JobRun, inst: str, start: int) -> list[Determinant]:
        out: list[Determinant] = []
        position = start
        for seg_start, data, count in await self.gcs.read_log(run.job_id, inst, start):
            if seg_start + count <= position:
                continue
            if seg_start > position:
                break  # cannot happen below the committed position; be safe
            dets = decode(data)
            out.extend(dets[position - seg_start :])
            position = seg_start + count
        return out

    async def _stash_tail(self, run: JobRun, inst: str) -> tuple[int, list[Determinant]]:
        """Ask every live worker of the job what its instances hold of ``inst``'s log; keep the longest."""
        workers = self.coord.workers_of(run, exclude_instance=inst)
        if not workers:
            return 0, []
        qid = next(self._query_ids)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        replies: list[Any] = []
        waiting = {w.worker_id for w in workers}
        self._queries[qid] = (done, replies, waiting)
        for w in workers:
            await w.send({"type": "stash_query", "job": run.job_id, "instance": inst, "query": qid})
        try:
            async with asyncio.timeout(
                self.stash_query_timeout
            ):  # not wait_for: 3.11's could swallow a cancel
                await asyncio.shield(done)
        except TimeoutError:
            log.warning("job %s: %d worker(s) did not answer the stash query for %s in time",
                        run.job_id, len(waiting), inst,
                        extra={"job": run.job_id, "instance": inst, "workers": sorted(waiting)})  # fmt: skip
        finally:
            del self._queries[qid]
        best: tuple[int, list[Determinant]] = (0, [])
        for _holder, start, count, data in replies:
            if not best[1] or start + count > best[0] + len(best[1]):
                best = (int(start), decode(data))
        return best

    def on_stash_reply(self, worker_id: str, msg: dict[str, Any]) -> None:
        query = self._queries.get(msg["query"])
        if query is None:
            return
        done, replies, waiting = query
        replies.extend(msg["holdings"])
        waiting.discard(worker_id)
        if not waiting and not done.done():
            done.set_result(None)

    def on_worker_gone(self, worker_id: str) -> None:
        for done, _, waiting in self._queries.values():
            waiting.discard(worker_id)
            if not waiting and not done.done():
                done.set_result(None)

    def on_recovered(self, run: JobRun, msg: dict[str, Any]) -> None:
        recs = self.job(run.job_id).recoveries.get(msg["instance"])
        if recs:
            recs[-1].live_at = float(msg["time"])
            recs[-1].replayed_batches = int(msg["replayed_batches"])
            rec = recs[-1].to_dict()
            log.warning("job %s: instance %s live again %.3f s after it was %s (incarnation %d, %d batches "
                        "replayed from %s)", run.job_id, msg["instance"], rec["live_s"],
                        "killed" if recs[-1].killed_at else "found lost", rec["incarnation"],
                        rec["replayed_batches"], checkpoint_name(rec["checkpoint_id"]),
                        extra={"job": run.job_id, "instance": msg["instance"], "incarnation": rec["incarnation"],
                               "live_s": rec["live_s"], "detected_s": rec["detected_s"],
                               "replayed_batches": rec["replayed_batches"], "log_entries": rec["log_entries"],
                               "checkpoint_id": rec["checkpoint_id"], "reason": rec["reason"]})  # fmt: skip

    # -- metrics ------------------------------------------------------------------------------------

    def metrics(self, job_id: str, inst: str) -> dict[str, Any]:
        lineage = self.jobs.get(job_id)
        recs = lineage.recoveries.get(inst, []) if lineage else []
        return {
            "restarts": len(recs),
            "recoveries": [r.to_dict() for r in recs],
            "committed": lineage.committed.get(inst, 0) if lineage else 0,
            "checkpoint_at": _at(lineage.checkpointed_at.get(inst)) if lineage else None,
        }

    def commit_lag(self, job_id: str) -> dict[str, float | None]:
        lineage = self.jobs.get(job_id)
        lags = sorted(lineage.lag_ms) if lineage else []
        if not lags:
            return {"p50_ms": None, "p99_ms": None}
        return {
            "p50_ms": round(lags[len(lags) // 2], 3),
            "p99_ms": round(lags[min(len(lags) - 1, int(len(lags) * 0.99))], 3),
        }


def _log_message(msg: dict[str, Any]) -> _LogMessage:
    """The fields of a ``log`` message, type-checked; the GCS checks the span (DESIGN.md §5.3)."""
    try:
        m = _LogMessage(
            msg["instance"], msg.get("incarnation", 0), msg["start"], msg["count"], msg["entries"],
            msg.get("sent_at"),
        )  # fmt: skip
    except KeyError as exc:
        raise ProtocolError(
            f"malformed log message: no field {exc}; expected instance, start, count, entries "
            "(and optionally incarnation, sent_at)"
        ) from None
    if (
        type(m.instance) is str
        and type(m.incarnation) is int
        and type(m.start) is int
        and type(m.count) is int
        and type(m.entries) is bytes
        and (m.sent_at is None or type(m.sent_at) in (float, int))
    ):
        return m
    for name, value, kinds, what in (
        ("instance", m.instance, (str,), "a string"),
        ("incarnation", m.incarnation, (int,), "an integer"),
        ("start", m.start, (int,), "an integer"),
        ("count", m.count, (int,), "an integer"),
        ("entries", m.entries, (bytes,), "bytes"),
        ("sent_at", m.sent_at, (float, int, type(None)), "a number"),
    ):
        if type(value) not in kinds:
            raise ProtocolError(
                f"malformed log message of instance {short_repr(m.instance, 60)}: {name} must be {what}, "
                f"got {short_repr(value, 60)}"
            )
    raise AssertionError("unreachable")  # pragma: no cover


def _note_waiting(lineage: _JobLineage, instance: str, msg: dict[str, Any]) -> None:
    """Record whether ``instance``'s output waits for commits, as its message says (an older worker
    that does not say is taken as waiting: its sinks then hear of every commit at once, as before)."""
    if msg.get("waiting", True):
        lineage.waiting.add(instance)
    else:
        lineage.waiting.discard(instance)
