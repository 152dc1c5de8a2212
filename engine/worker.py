"""The worker: a process that hosts task instances for the coordinator.

A worker keeps one websocket to the coordinator (the control plane: msgpack messages, below) and one
:class:`~engine.data_server.DataServer` for the data channels of the instances it hosts. It registers,
then follows the coordinator's orders:

================  =====================================================================================
coordinator ->    ``deploy`` (job ref, params, config, secret, instance names): load the job, create the
                  instances and their input channels, answer ``deployed``;
                  ``start`` (instance -> data address table): connect outputs, run;
                  ``cancel``: stop the job's instances; ``shutdown``: exit.
-> coordinator    ``register``, ``deployed``, ``finished`` (final statistics), ``failed`` (one-line
                  error), ``heartbeat`` (statistics of every hosted instance, every ``heartbeat_s``).
================  =====================================================================================

In local mode (``stashflow run``) the coordinator launches one worker process per task instance,
*pinned* to it, so that killing the process kills exactly that instance (DESIGN.md §2); the worker
exits once its instance is done. A warm *spare* is such a worker pinned to ``JOB:~spare-N``: it waits
idle until the coordinator re-pins it (on its side) to a restarted instance and deploys that instance
here. The worker itself needs no word of it: it reports its pin once, at registration, and otherwise
only uses it as the mark of a local-mode process (it exits when its coordinator is gone; an injected
crash kills the process).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import signal
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from engine import logs
from engine.causal_log import decode as decode_log
from engine.causal_log import encode as encode_log
from engine.channel import Address
from engine.checkpoint import CheckpointRecord, CheckpointStore, checkpoint_name
from engine.codec import pack, unpack
from engine.config import JobConfig
from engine.data_server import DataServer
from engine.errors import StashflowError
from engine.fault_tolerance import FaultTolerance
from engine.global_checkpoint import BarrierServices, CheckpointFT
from engine.instance import InjectedCrash, TaskInstance
from engine.launcher import SPARE_PREFIX
from engine.lineage import LineageFT, LineageServices, Recovery, WalFT
from engine.loader import JobRef, load_job
from engine.plan import Plan

__all__ = ["Worker"]

log = logging.getLogger("stashflow.worker")


@dataclass
class HostedJob:
    job_id: str
    plan: Plan
    secret: bytes
    config: JobConfig
    services: LineageServices | None = None
    barriers: BarrierServices | None = None
    instances: dict[str, TaskInstance] = field(default_factory=dict)
    tasks: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    background: set[asyncio.Task[Any]] = field(default_factory=set)

    def lineage(self, instance: str | None = None) -> list[LineageFT]:
        """The lineage runtimes of the hosted instances (of one instance if named)."""
        insts = (
            self.instances.values() if instance is None else [i for i in [self.instances.get(instance)] if i]
        )
        return [i.ft for i in insts if isinstance(i.ft, LineageFT)]

    def global_checkpoints(self, instance: str | None = None) -> list[CheckpointFT]:
        """The global-checkpoint runtimes of the hosted instances (of one instance if named)."""
        insts = self.instances.values() if instance is None else [self.instances.get(instance)]
        return [i.ft for i in insts if i is not None and isinstance(i.ft, CheckpointFT)]

    @property
    def store(self) -> CheckpointStore | None:
        holder = self.services or self.barriers
        return holder.store if holder is not None else None

    def spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self.background.add(task)
        task.add_done_callback(self.background.discard)


def _recovery(data: dict[str, Any] | None) -> Recovery | None:
    if data is None:
        return None
    record = CheckpointRecord.from_bytes(data["record"]) if data.get("record") else None
    return Recovery(record, decode_log(data["entries"]) if data.get("entries") else [], int(data["restarts"]))


class Worker:
    """Hosts instances; ``await worker.run()`` until the coordinator says stop (or the pin is done)."""

    def __init__(
        self,
        coordinator_url: str,
        *,
        host: str = "127.0.0.1",
        advertise: str | None = None,
        data_port: int = 0,
        slots: int = 4,
        pin: str | None = None,
        exit_when_done: bool = False,
        heartbeat_s: float = 0.5,
        worker_id: str | None = None,
        connect_timeout: float = 30.0,
        data_dir: str | None = None,
        token: str | None = None,
    ):
        self.coordinator_url = coordinator_url.rstrip("/")
        self.host = host
        self.advertise = advertise or host
        self.data_port = data_port
        self.slots = slots
        self.pin = pin
        self.exit_when_done = exit_when_done
        self.heartbeat_s = heartbeat_s
        self.connect_timeout = connect_timeout
        self.token = token
        #: where checkpoints and spilled output logs go; a restarted instance must be able to read its
        #: predecessor's checkpoints here, so in a cluster this is a shared volume
        self.data_dir = data_dir or os.path.join(tempfile.gettempdir(), "stashflow")
        self.worker_id = worker_id or f"worker-{os.getpid()}-{secrets.token_hex(3)}"
        self.jobs: dict[str, HostedJob] = {}
        self.server = DataServer(self._secret_for)
        self.data_address: Address | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._send_lock = asyncio.Lock()
        self._stop = asyncio.Event()

    def _secret_for(self, job_id: str) -> bytes | None:
        job = self.jobs.get(job_id)
        return job.secret if job else None

    async def run(self) -> None:
        """Serve data channels and follow the coordinator until told to stop.

        The coordinator may start after its workers (docker-compose starts them together) or restart:
        a worker retries for ``connect_timeout`` seconds, and a cluster worker whose coordinator
        connection drops cancels its instances and registers again. A pinned local-mode worker exits
        instead: its coordinator is gone for good.
        """
        if self.pin is not None:
            # a pinned worker is the process of one instance (or a spare, until one is deployed here):
            # every line it logs is about that instance, whichever task logs it
            job_id, _, inst = self.pin.partition(":")
            logs.bind_process(job_id, None if inst.startswith(SPARE_PREFIX) else inst)
        bound = await self.server.start(("tcp", self.host, self.data_port))
        # peers connect to the advertised name (a container's service name), on the bound port
        self.data_address = ("tcp", self.advertise, int(bound[-1]))
        try:
            async with aiohttp.ClientSession() as session:
                while not self._stop.is_set():
                    ws = await self._connect(session)
                    self._ws = ws
                    await self._send(
                        {
                            "type": "register",
                            "worker": self.worker_id,
                            "address": list(self.data_address),
                            "slots": self.slots,
                            "pin": self.pin,
                            "pid": os.getpid(),
                        }
                    )
                    beat = asyncio.create_task(self._heartbeats())
                    try:
                        await self._serve(ws)
                    finally:
                        beat.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await beat
                    for job_id in list(self.jobs):
                        await self._cancel(job_id)
                    if self.exit_when_done or self.pin is not None:
                        break
        finally:
            for job_id in list(self.jobs):
                await self._cancel(job_id)
            await self.server.aclose()
            if self.pin is not None:
                logs.bind_process(None)

    async def _connect(self, session: aiohttp.ClientSession) -> aiohttp.ClientWebSocketResponse:
        url = self.coordinator_url + "/ws/worker"
        deadline = time.monotonic() + self.connect_timeout
        delay = 0.05
        while True:
            try:
                headers = {"Authorization": f"Bearer {self.token}"} if self.token else None
                return await session.ws_connect(
                    url, heartbeat=10.0, max_msg_size=64 * 1024 * 1024, headers=headers
                )
            except aiohttp.WSServerHandshakeError as exc:
                if exc.status == 401:
                    raise StashflowError(
                        f"worker {self.worker_id}: the coordinator at {self.coordinator_url} refused our "
                        f"{'token' if self.token else 'registration without a token'}; pass the coordinator's "
                        "--token (or STASHFLOW_TOKEN)"
                    ) from None
                raise
            except (aiohttp.ClientError, OSError) as exc:
                if time.monotonic() + delay > deadline:
                    raise StashflowError(
                        f"worker {self.worker_id}: cannot reach the coordinator at {self.coordinator_url} "
                        f"within {self.connect_timeout:.0f} s ({exc}); is it running? (stashflow coordinator)"
                    ) from None
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)

    async def _serve(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        """Handle the coordinator's messages, in order, until the connection ends or the worker stops.

        Messages already received are handled back to back: ``ws.receive`` returns a buffered message
        without waiting. Waiting for each one together with the stop event (one wake-up per event-loop
        round, while busy instances take their turns) handled a sink's commits, which come every few
        milliseconds, slower than they came: they queued up for whole seconds and held output back.
        A stop waits for the message being handled, if any, then closes the connection.
        """
        waiting = asyncio.Event()  # set while the reader waits for a message

        async def read() -> None:
            while not self._stop.is_set():
                waiting.set()
                msg = await ws.receive()
                waiting.clear()
                if msg.type != aiohttp.WSMsgType.BINARY:
                    log.info("worker %s: coordinator connection closed (%s)", self.worker_id, msg.type.name)
                    return
                await self._handle(unpack(msg.data))

        reader = asyncio.create_task(read())
        stop = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait({reader, stop}, return_when=asyncio.FIRST_COMPLETED)
            if reader.done() or not waiting.is_set():
                await reader  # what broke it; or the message it handles, after which it ends
        finally:
            stop.cancel()
            # close before cancelling: a receive() cancelled first marks the connection aborted, and
            # close() then leaves its socket open; a reader waiting for a message gets the close instead
            await ws.close()
            reader.cancel()
            await asyncio.wait({reader})

    async def _send(self, message: dict[str, Any]) -> None:
        if self._ws is None or self._ws.closed:
            return
        async with self._send_lock:
            with contextlib.suppress(ConnectionError, aiohttp.ClientError):
                await self._ws.send_bytes(pack(message))

    async def _handle(self, msg: dict[str, Any]) -> None:
        kind = msg["type"]
        hosted = self.jobs.get(msg.get("job", ""))
        if kind == "deploy":
            await self._deploy(msg)
        elif kind == "start":
            self._start(msg["job"], {k: tuple(v) for k, v in msg["addresses"].items()})
        elif kind == "cancel":
            await self._cancel(msg["job"], ended=True)
        elif kind == "shutdown":
            self._stop.set()
        elif kind == "stash_query" and hosted is None:
            # a job deployed here later, or ended here: nothing held; the recovery need not wait for us
            await self._send(
                {"type": "stash_reply", "job": msg["job"], "query": msg["query"], "holdings": []}
            )
        elif hosted is None:
            return  # a message about a job this worker no longer hosts (it ended here)
        elif kind == "commit":
            for ft in hosted.lineage():
                ft.on_commit(msg["positions"])
        elif kind == "checkpoint_complete":
            for ft in hosted.lineage(msg["instance"]):
                ft.on_checkpoint_complete(msg["checkpoint_id"])
            for cft in hosted.global_checkpoints(msg.get("instance")):
                cft.on_checkpoint_complete(msg["checkpoint_id"])
        elif kind == "trigger":
            for cft in hosted.global_checkpoints(msg["instance"]):
                cft.on_trigger(msg["checkpoint_id"])
        elif kind == "restart":
            await self._restart(hosted, msg)
        elif kind == "trim":
            for ft in hosted.lineage(msg["instance"]):
                ft.on_trim(msg["channel"], msg["upto"])
        elif kind == "kill":
            inst = hosted.instances.get(msg["instance"])
            task = hosted.tasks.get(msg["instance"])
            if inst is not None and task is not None:
                inst.kill_requested = True
                task.cancel()
        elif kind == "peer_moved":
            await self._peer_moved(hosted, msg["instance"], tuple(msg["address"]))
        elif kind == "stash_query":
            await self._drain_lost_sender(hosted, msg["instance"])
            holdings = []
            for ft in hosted.lineage():
                held = ft.holdings(msg["instance"])
                if held is not None and held[1]:
                    holdings.append([ft.instance.name, held[0], len(held[1]), encode_log(held[1])])
            await self._send(
                {"type": "stash_reply", "job": msg["job"], "query": msg["query"], "holdings": holdings}
            )
        else:
            log.warning("worker %s: ignoring unknown control message %r", self.worker_id, kind)

    async def _drain_lost_sender(self, hosted: HostedJob, sender: str, timeout: float = 0.5) -> None:
        """Let our channels from a dead sender read what it sent before it died (until they see EOF).

        Those bytes are batches we will process; their lineage must count in the holdings we report.
        """
        channels = [
            c for inst in hosted.instances.values() for c in inst.inputs if c.channel_id.src == sender
        ]
        deadline = time.monotonic() + timeout
        while any(c.broken is None and not c.finished for c in channels) and time.monotonic() < deadline:
            await asyncio.sleep(0.005)

    async def _peer_moved(self, hosted: HostedJob, instance: str, address: Address) -> None:
        if hosted.services is None:
            return
        await hosted.services.peer_moved(instance, address)
        for ft in hosted.lineage():
            with logs.tagged(hosted.job_id, ft.instance.name):  # the task inherits the instance's tags
                hosted.spawn(ft.on_peer_moved())

    async def _deploy(self, msg: dict[str, Any]) -> None:
        job_id = msg["job"]
        recoveries = msg.get("recovery") or {}
        try:
            hosted = self.jobs.get(job_id)
            if hosted is None:
                config = JobConfig.from_dict(msg["config"])
                job = load_job(JobRef.from_dict(msg["ref"]), msg["params"])
                plan = Plan.of(job, config.parallelism)
                hosted = HostedJob(job_id, plan, msg["secret"], config)
                if config.ft in ("lineage", "wal"):
                    hosted.services = LineageServices(
                        job_id=job_id,
                        store=CheckpointStore(self.data_dir),
                        send=self._send,
                        depth=config.ft_depth,
                        checkpoint_interval=config.checkpoint_interval,
                        # write-first ships each determinant at once: batches wait for it
                        log_flush_s=0.0 if config.ft == "wal" else config.log_flush_ms / 1000.0,
                    )
                elif config.ft == "checkpoint":
                    hosted.barriers = BarrierServices(job_id, CheckpointStore(self.data_dir), self._send)
                self.jobs[job_id] = hosted
            for name, address in (msg.get("addresses") or {}).items():
                if hosted.services is not None:
                    hosted.services.addresses.setdefault(name, (0, tuple(address)))
            if self.pin is not None and len(msg["instances"]) == 1:
                logs.bind_process(job_id, msg["instances"][0])  # a spare hosts an instance from now on
            for name in msg["instances"]:
                with logs.tagged(job_id, name):
                    recovery = _recovery(recoveries.get(name))
                    inst = self._create_instance(hosted, name, recovery)
                    hosted.instances[name] = inst
                    inst.prepare(consumed=recovery.record.consumed if recovery and recovery.record else None)
                    _log_deployed(self.worker_id, name, recovery)
        except Exception as exc:
            log.exception("worker %s: deploying job %s failed", self.worker_id, job_id, extra={"job": job_id})
            await self._send({"type": "failed", "job": job_id, "instance": None, "error": _one_line(exc)})
            return
        await self._send({"type": "deployed", "job": job_id, "instances": list(msg["instances"])})

    def _create_instance(self, hosted: HostedJob, name: str, recovery: Recovery | None) -> TaskInstance:
        task_name, _, index = name.rpartition("/")
        services, barriers = hosted.services, hosted.barriers
        factory: Any = FaultTolerance
        if services is not None:
            mode = WalFT if hosted.config.ft == "wal" else LineageFT

            def factory(inst: TaskInstance) -> FaultTolerance:
                return mode(inst, services, recovery)

        elif barriers is not None:

            def factory(inst: TaskInstance) -> FaultTolerance:
                return CheckpointFT(inst, barriers, recovery)

        inst = TaskInstance(
            job_id=hosted.job_id,
            plan=hosted.plan,
            task=hosted.plan.task(task_name),
            index=int(index),
            config=hosted.config,
            secret=hosted.secret,
            server=self.server,
            ft_factory=factory,
        )
        incarnation = recovery.restarts if recovery else 0
        inst.arm_crash(hosted.config.kill_after, incarnation, self._crash if self.pin else None)
        return inst

    def _crash(self, inst: TaskInstance) -> None:
        """Failure injection in a pinned worker: die for real, as a killed process would."""
        log.warning("instance %s: injected crash (kill_after), killing pid %d", inst.name, os.getpid())
        os.kill(os.getpid(), signal.SIGKILL)

    def _start(self, job_id: str, addresses: dict[str, Address]) -> None:
        hosted = self.jobs.get(job_id)
        if hosted is None:
            return
        if hosted.services is not None:
            # this table is where the job starts: an instance placed again before the start (its worker
            # was lost while the job deployed) is not where deploy messages said; a moved one keeps its own
            for name, address in addresses.items():
                if hosted.services.addresses.get(name, (0, None))[0] == 0:
                    hosted.services.addresses[name] = (0, address)
        for name, inst in hosted.instances.items():
            if name not in hosted.tasks:
                hosted.tasks[name] = asyncio.create_task(
                    self._run_instance(hosted, inst, addresses), name=name
                )

    async def _run_instance(
        self, hosted: HostedJob, inst: TaskInstance, addresses: dict[str, Address]
    ) -> None:
        # this task runs the instance: what it logs, and every task it creates, is tagged with it
        logs.bind(hosted.job_id, inst.name)
        current = (
            {k: hosted.services.addresses.get(k, (0, v))[1] for k, v in addresses.items()}
            if hosted.services
            else addresses
        )
        try:
            await inst.connect(current)
            await inst.run()
        except asyncio.CancelledError:
            if not inst.kill_requested:
                await inst.aclose()
                raise
            await self._lost(hosted, inst, "killed on request")
            return
        except InjectedCrash:
            # an in-process stand-in for a killed process: vanish without an end of stream
            log.warning("instance %s: injected crash (kill_after)", inst.name)
            await self._lost(hosted, inst, "injected crash (kill_after)")
            return
        except Exception as exc:
            if not isinstance(exc, StashflowError):
                log.exception("instance %s failed", inst.name)
            await self._send(
                {
                    "type": "failed",
                    "job": hosted.job_id,
                    "instance": inst.name,
                    "error": _one_line(exc),
                    "stats": inst.statistics().to_dict(),
                    "incarnation": inst.ft.incarnation,
                }
            )
            await inst.aclose()
            self._maybe_exit(hosted)
            return
        stats = inst.statistics().to_dict()  # before aclose(), which releases the channels it counts
        _log_finished(inst.name, stats)
        await self._send({
            "type": "finished", "job": hosted.job_id, "instance": inst.name, "stats": stats,
            "incarnation": inst.ft.incarnation,
        })  # fmt: skip
        if hosted.config.ft != "none":
            # lineage: keep the output logs, a receiver that restarts later needs them; checkpoint: a
            # rollback restarts this instance here. The job's end (cancel) ends us
            return
        await inst.aclose()
        self._maybe_exit(hosted)

    async def _lost(self, hosted: HostedJob, inst: TaskInstance, reason: str) -> None:
        """An in-process stand-in for a killed process: the instance vanishes without an end of stream."""
        await inst.abort()
        hosted.instances.pop(inst.name, None)
        hosted.tasks.pop(inst.name, None)
        await self._send({
            "type": "lost", "job": hosted.job_id, "instance": inst.name, "reason": reason,
            "incarnation": inst.ft.incarnation,
        })  # fmt: skip

    async def _restart(self, hosted: HostedJob, msg: dict[str, Any]) -> None:
        """Global rollback (``--ft checkpoint``): drop this job's instances here, deploy them afresh.

        They vanish as killed ones would (no end of stream: their receivers are being restarted too),
        but this process stays: the new incarnations are deployed in it, from the checkpoint named in
        the message, and run once the coordinator says ``start``.
        """
        # cancelled, they close their channels without an end of stream
        await self._stop_tasks(list(hosted.tasks.values()), timeout=2.0, why="the rollback")
        for inst in hosted.instances.values():
            with contextlib.suppress(Exception):
                await inst.abort()
        hosted.instances.clear()
        hosted.tasks.clear()
        await self._deploy(msg)

    async def _stop_tasks(
        self, tasks: list[asyncio.Task[Any]], timeout: float | None = None, why: str = "the job's end"
    ) -> None:
        """Cancel ``tasks`` and wait for them, at most ``timeout`` seconds: one still running then is
        logged and dropped. Their errors are retrieved and dropped: the instances are going away."""
        for task in tasks:
            task.cancel()
        if not tasks:
            return
        done, stuck = await asyncio.wait(tasks, timeout=timeout)
        for task in done:
            if not task.cancelled():
                task.exception()  # retrieved: no "exception was never retrieved" at collection
        for task in stuck:
            log.warning("worker %s: %s did not stop within %g s of %s; dropping it",
                        self.worker_id, task.get_name(), timeout, why)  # fmt: skip

    def _maybe_exit(self, hosted: HostedJob) -> None:
        if self.exit_when_done and all(
            t.done() or t is asyncio.current_task() for t in hosted.tasks.values()
        ):
            self._stop.set()

    async def _cancel(self, job_id: str, ended: bool = False) -> None:
        """Stop the job's instances here. ``ended``: the coordinator says the job is over, so its
        checkpoints and spilled output logs can go; after a lost coordinator connection they stay,
        since the instances may be recovering elsewhere from them."""
        hosted = self.jobs.pop(job_id, None)
        if hosted is None:
            return
        await self._stop_tasks([*hosted.tasks.values(), *hosted.background])
        for inst in hosted.instances.values():
            await inst.aclose()
        if ended and hosted.store is not None:
            hosted.store.remove_job(job_id, hosted.instances)
        if self.exit_when_done:
            self._stop.set()

    async def _heartbeats(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_s)
            stats = {
                job_id: {name: inst.statistics().to_dict() for name, inst in hosted.instances.items()}
                for job_id, hosted in self.jobs.items()
            }
            await self._send(
                {"type": "heartbeat", "worker": self.worker_id, "time": time.time(), "stats": stats}
            )


def _log_deployed(worker_id: str, name: str, recovery: Recovery | None) -> None:
    if recovery is None:
        logs.event(log, "instance %s deployed on worker %s", name, worker_id, worker=worker_id)
        return
    checkpoint = recovery.record.checkpoint_id if recovery.record else None
    logs.event(
        log,
        "instance %s deployed on worker %s (incarnation %d): restarts from %s, replays %d log entries",
        name, worker_id, recovery.restarts, checkpoint_name(checkpoint),
        len(recovery.entries),
        worker=worker_id, incarnation=recovery.restarts, checkpoint_id=checkpoint,
        log_entries=len(recovery.entries),
    )  # fmt: skip


def _log_finished(name: str, stats: dict[str, Any]) -> None:
    started, finished = stats.get("started_at"), stats.get("finished_at")
    elapsed = round(finished - started, 3) if started is not None and finished is not None else None
    logs.event(
        log, "instance %s finished", name,
        elapsed_s=elapsed, batches_in=stats.get("batches_in"), batches_out=stats.get("batches_out"),
    )  # fmt: skip


def _one_line(exc: BaseException) -> str:
    text = str(exc).replace("\n", " ").strip() or type(exc).__name__
    if not isinstance(exc, StashflowError):
        text = f"{type(exc).__name__}: {text}"
    return text
