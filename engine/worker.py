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
exits once its instance is done.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from engine.channel import Address
from engine.codec import pack, unpack
from engine.config import JobConfig
from engine.data_server import DataServer
from engine.errors import StashflowError
from engine.instance import TaskInstance
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
    instances: dict[str, TaskInstance] = field(default_factory=dict)
    tasks: dict[str, asyncio.Task[None]] = field(default_factory=dict)


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
        self.worker_id = worker_id or f"worker-{os.getpid()}-{secrets.token_hex(3)}"
        self.jobs: dict[str, HostedJob] = {}
        self.server = DataServer(self._secret_for)
        self.data_address: Address | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._send_lock = asyncio.Lock()
        self._stop = asyncio.Event()
        self._hosted_any = False

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

    async def _connect(self, session: aiohttp.ClientSession) -> aiohttp.ClientWebSocketResponse:
        url = self.coordinator_url + "/ws/worker"
        deadline = time.monotonic() + self.connect_timeout
        delay = 0.05
        while True:
            try:
                return await session.ws_connect(url, heartbeat=10.0, max_msg_size=64 * 1024 * 1024)
            except (aiohttp.ClientError, OSError) as exc:
                if time.monotonic() + delay > deadline:
                    raise StashflowError(
                        f"worker {self.worker_id}: cannot reach the coordinator at {self.coordinator_url} "
                        f"within {self.connect_timeout:.0f} s ({exc}); is it running? (stashflow coordinator)"
                    ) from None
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)

    async def _serve(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        receive = asyncio.ensure_future(ws.receive())
        stop = asyncio.ensure_future(self._stop.wait())
        try:
            while True:
                done, _ = await asyncio.wait({receive, stop}, return_when=asyncio.FIRST_COMPLETED)
                if stop in done:
                    return
                msg = receive.result()
                if msg.type != aiohttp.WSMsgType.BINARY:
                    log.info("worker %s: coordinator connection closed (%s)", self.worker_id, msg.type.name)
                    return
                receive = asyncio.ensure_future(ws.receive())
                await self._handle(unpack(msg.data))
        finally:
            for fut in (receive, stop):
                fut.cancel()
            await ws.close()

    async def _send(self, message: dict[str, Any]) -> None:
        if self._ws is None or self._ws.closed:
            return
        async with self._send_lock:
            with contextlib.suppress(ConnectionError, aiohttp.ClientError):
                await self._ws.send_bytes(pack(message))

    async def _handle(self, msg: dict[str, Any]) -> None:
        kind = msg["type"]
        if kind == "deploy":
            await self._deploy(msg)
        elif kind == "start":
            self._start(msg["job"], {k: tuple(v) for k, v in msg["addresses"].items()})
        elif kind == "cancel":
            await self._cancel(msg["job"])
        elif kind == "shutdown":
            self._stop.set()
        else:
            log.warning("worker %s: ignoring unknown control message %r", self.worker_id, kind)

    async def _deploy(self, msg: dict[str, Any]) -> None:
        job_id = msg["job"]
        try:
            config = JobConfig.from_dict(msg["config"])
            job = load_job(JobRef.from_dict(msg["ref"]), msg["params"])
            plan = Plan.of(job, config.parallelism)
            hosted = HostedJob(job_id, plan, msg["secret"], config)
            self.jobs[job_id] = hosted
            for name in msg["instances"]:
                task_name, _, index = name.rpartition("/")
                inst = TaskInstance(
                    job_id=job_id,
                    plan=plan,
                    task=plan.task(task_name),
                    index=int(index),
                    config=config,
                    secret=hosted.secret,
                    server=self.server,
                )
                hosted.instances[name] = inst
                inst.prepare()
        except Exception as exc:
            log.exception("worker %s: deploying job %s failed", self.worker_id, job_id)
            await self._send({"type": "failed", "job": job_id, "instance": None, "error": _one_line(exc)})
            return
        self._hosted_any = True
        await self._send({"type": "deployed", "job": job_id, "instances": list(msg["instances"])})

    def _start(self, job_id: str, addresses: dict[str, Address]) -> None:
        hosted = self.jobs.get(job_id)
        if hosted is None:
            return
        for name, inst in hosted.instances.items():
            hosted.tasks[name] = asyncio.create_task(self._run_instance(hosted, inst, addresses), name=name)

    async def _run_instance(
        self, hosted: HostedJob, inst: TaskInstance, addresses: dict[str, Address]
    ) -> None:
        try:
            await inst.connect(addresses)
            await inst.run()
        except asyncio.CancelledError:
            await inst.aclose()
            raise
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
                }
            )
            await inst.aclose()
            self._maybe_exit(hosted)
            return
        stats = inst.statistics().to_dict()  # before aclose(), which releases the channels it counts
        await inst.aclose()
        await self._send({"type": "finished", "job": hosted.job_id, "instance": inst.name, "stats": stats})
        self._maybe_exit(hosted)

    def _maybe_exit(self, hosted: HostedJob) -> None:
        if self.exit_when_done and all(
            t.done() or t is asyncio.current_task() for t in hosted.tasks.values()
        ):
            self._stop.set()

    async def _cancel(self, job_id: str) -> None:
        hosted = self.jobs.pop(job_id, None)
        if hosted is None:
            return
        for task in hosted.tasks.values():
            task.cancel()
        for task in hosted.tasks.values():
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for inst in hosted.instances.values():
            await inst.aclose()
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


def _one_line(exc: BaseException) -> str:
    text = str(exc).replace("\n", " ").strip() or type(exc).__name__
    if not isinstance(exc, StashflowError):
        text = f"{type(exc).__name__}: {text}"
    return text
