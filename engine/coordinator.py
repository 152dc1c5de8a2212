"""The coordinator: accepts jobs, places instances on workers, watches them, reports.

HTTP API (aiohttp), JSON bodies:

=========================  ==========================================================================
``GET  /health``           ``{"ok": true}``
``POST /jobs``             ``{"ref": {...}, "params": {...}, "config": {...}}`` -> ``{"job": id}``;
                           400 with ``{"error": "..."}`` for a bad job, parameter or setting
``GET  /jobs``             every job's summary
``GET  /jobs/{id}``        status and per-instance metrics (see :meth:`JobRun.status`)
``POST /jobs/{id}/cancel`` cancel a running job
``POST /jobs/{id}/kill``   ``{"instance": "count/1"}``: kill the process hosting that instance (a test of
                           recovery); 403 unless the coordinator was started with ``allow_kill``
``GET  /metrics``          every job's per-instance counters and gauges for Prometheus
                           (:mod:`engine.prometheus`)
``GET  /``, ``/api/...``   the dashboard (:mod:`engine.dashboard`), when started with ``dashboard``
``GET  /ws/worker``        the control websocket of workers (see :mod:`engine.worker`)
=========================  ==========================================================================

With a token, every endpoint needs it (``Authorization: Bearer``) but the read-only ones: ``/health``,
``/metrics`` (Prometheus scrapes it, as Flink's reporters are scraped) and the dashboard's pages and
views (like Flink's web UI). Killing from the dashboard needs the token too: ``stashflow run`` prints
the dashboard's address with it in the fragment (never sent to the server but by the page's script).

Job lifecycle: ``deploying`` (instances placed, workers load the job and open their input channels)
-> ``running`` (every worker got the address table) -> ``finished`` | ``failed`` | ``canceled``.
Which worker hosts which instance is :mod:`engine.placement`'s business.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import secrets
import shutil
import tempfile
import time
from collections.abc import Coroutine
from typing import Any

from aiohttp import WSMsgType, web

from engine import dashboard as dashboard_ui
from engine import prometheus
from engine.codec import unpack
from engine.config import JobConfig
from engine.errors import CoordinatorError, JobDefinitionError, JobLoadError, ParameterError, ProtocolError
from engine.gcs_backends import RocksGCS
from engine.global_rollback import GlobalCheckpointCoordinator
from engine.job_run import TERMINAL, JobRun, WorkerConn
from engine.launcher import LocalLauncher
from engine.loader import JobRef, load_job
from engine.monitor import JobMonitor
from engine.placement import Placement
from engine.plan import Plan
from engine.recovery import LineageCoordinator

__all__ = ["Coordinator"]

log = logging.getLogger("stashflow.coordinator")


class Coordinator:
    """Run with ``async with Coordinator(...) as c:``; ``c.url`` is where workers and clients connect."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 8081,
        launcher: LocalLauncher | None = None,
        deploy_timeout: float = 60.0,
        data_dir: str | None = None,
        gcs_delay_ms: float = 0.0,
        heartbeat_timeout: float = 3.0,
        token: str | None = None,
        dashboard: bool = False,
        allow_kill: bool = False,
        port_fallback: bool = False,
    ):
        self.host = host
        self.port = port
        #: listen on any free port when ``port`` is taken (``stashflow run``'s default dashboard port)
        self.port_fallback = port_fallback
        #: serve the dashboard (``/``); ``allow_kill``: ``POST /jobs/{id}/kill`` (and its button) works
        self.dashboard = dashboard
        self.allow_kill = allow_kill
        self.launcher = launcher
        self.deploy_timeout = deploy_timeout
        self._own_data_dir = data_dir is None
        #: the GCS's files (and, in local mode, the workers' checkpoints) live here
        self.data_dir = os.path.abspath(data_dir) if data_dir else tempfile.mkdtemp(prefix="stashflow-")
        self.gcs_delay_ms = gcs_delay_ms
        #: a worker silent for this long is declared dead (its process may be alive but cut off)
        self.heartbeat_timeout = heartbeat_timeout
        #: the shared secret workers and clients present (``Authorization: Bearer``); None: no check
        self.token = token
        self.gcs: RocksGCS | None = None
        self.lineage: LineageCoordinator | None = None
        self.checkpoints: GlobalCheckpointCoordinator | None = None
        self.jobs: dict[str, JobRun] = {}
        self.workers: dict[str, WorkerConn] = {}
        self.placement = Placement(self)
        #: rates, throughput history and failure timeline of every job (the dashboard's and the terminal's)
        self.monitor = JobMonitor(self)
        self._runner: web.AppRunner | None = None
        #: set when the coordinator begins to close: long-lived handlers (the dashboard's streams) end
        self.closing = asyncio.Event()
        self._bg: set[asyncio.Task[Any]] = set()
        self.app = web.Application(middlewares=[self._authenticate])
        self.app.add_routes(
            [
                web.get("/health", self._h_health),
                web.get("/jobs", self._h_jobs),
                web.post("/jobs", self._h_submit),
                web.get("/jobs/{id}", self._h_job),
                web.post("/jobs/{id}/cancel", self._h_cancel),
                web.post("/jobs/{id}/kill", self._h_kill),
                web.get("/ws/worker", self._h_worker),
                *prometheus.routes(self),
                *(dashboard_ui.routes(self) if dashboard else ()),
            ]
        )

    def _is_public(self, request: web.Request) -> bool:
        """The read-only endpoints anyone who can reach the coordinator may use (see the module doc)."""
        if request.method not in ("GET", "HEAD"):
            return False
        path = request.path
        return path in ("/health", "/metrics") or (self.dashboard and dashboard_ui.is_public(path))

    # -- authentication -------------------------------------------------------------------------------

    @web.middleware
    async def _authenticate(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """Every endpoint but ``/health`` needs the token: a stray client must not register as a worker
        (it would receive job code and channel secrets) nor submit, cancel or kill jobs."""
        if self.token is None or self._is_public(request):
            response: web.StreamResponse = await handler(request)
            return response
        given = request.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {self.token}".encode()):
            peer = request.remote or "?"
            log.warning("coordinator: refused %s %s from %s: %s", request.method, request.path, peer,
                        "no token" if not given else "wrong token")  # fmt: skip
            return web.json_response(
                {"error": f"coordinator refused {request.method} {request.path}: "
                          f"{'no' if not given else 'wrong'} token; pass --token or set STASHFLOW_TOKEN "
                          "to the coordinator's"},
                status=401,
            )  # fmt: skip
        response = await handler(request)
        return response

    # -- lifecycle -----------------------------------------------------------------------------------

    async def __aenter__(self) -> Coordinator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def start(self) -> None:
        self.gcs = RocksGCS(os.path.join(self.data_dir, "gcs"), delay_ms=self.gcs_delay_ms)
        if self.launcher is not None and self.launcher.data_dir is None:
            self.launcher.data_dir = os.path.join(self.data_dir, "workers")
        self.lineage = LineageCoordinator(self, self.gcs)
        self.checkpoints = GlobalCheckpointCoordinator(self, self.gcs)
        self._spawn(self._watch_heartbeats())
        self._spawn(self.monitor.run())
        # at shutdown, handlers still open get this long to end (aiohttp's default is 60 s): the workers
        # have exited by then and the dashboard's streams end when ``closing`` is set
        self._runner = web.AppRunner(self.app, handle_signals=False, access_log=None, shutdown_timeout=5.0)
        await self._runner.setup()
        try:
            await web.TCPSite(self._runner, self.host, self.port).start()
        except OSError as exc:
            if not self.port_fallback:
                await self._runner.cleanup()
                raise CoordinatorError(
                    f"coordinator cannot listen on {self.host}:{self.port}: {exc.strerror}; pick another port"
                ) from None
            log.warning("port %d on %s is taken (%s); listening on a free port instead",
                        self.port, self.host, exc.strerror)  # fmt: skip
            self.port = 0
            await web.TCPSite(self._runner, self.host, 0).start()
        if self.port == 0:
            self.port = int(self._runner.addresses[0][1])
        log.info("coordinator listening on %s", self.url)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def aclose(self) -> None:
        self.closing.set()
        for job in self.jobs.values():
            if job.state not in TERMINAL:
                await self.cancel(job.job_id)
        for w in list(self.workers.values()):
            await w.send({"type": "shutdown"})
        if self.launcher is not None:
            await self.launcher.aclose()
        for t in list(self._bg):
            t.cancel()
        if self._runner is not None:
            await self._runner.cleanup()
        if self.gcs is not None:
            await self.gcs.aclose()
        if self._own_data_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    # -- jobs ----------------------------------------------------------------------------------------

    def submit(self, ref: JobRef, params: dict[str, str], config: JobConfig) -> JobRun:
        """Validate and plan the job, then deploy it in the background; errors raise before anything starts."""
        job = load_job(ref, params)
        plan = Plan.of(job, config.parallelism)
        job_id = f"{job.name}-{secrets.token_hex(3)}"
        run = JobRun(job_id, job.name, ref, params, config, plan, secrets.token_bytes(32))
        if config.ft in ("lineage", "wal"):
            run.lineage = self.lineage
        elif config.ft == "checkpoint":
            assert self.checkpoints is not None
            run.checkpoints = self.checkpoints
            self.checkpoints.watch(run)
        self.jobs[job_id] = run
        log.info("job %s submitted: %d tasks, %d instances (--ft %s)", job_id, len(plan.tasks),
                 len(plan.instances()), config.ft,
                 extra={"job": job_id, "instances": len(plan.instances()), "ft": config.ft})  # fmt: skip
        self._spawn(self.placement.deploy(run))
        return run

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run ``coro`` in the background, tied to the coordinator's lifetime."""
        self._spawn(coro)

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.create_task(coro, name=getattr(coro, "__qualname__", None))
        self._bg.add(task)
        task.add_done_callback(self._background_done)

    def _background_done(self, task: asyncio.Task[Any]) -> None:
        """A background task that raised is a bug: say so, with its traceback, rather than hang quietly."""
        self._bg.discard(task)
        exc = None if task.cancelled() else task.exception()
        if exc is not None:
            log.error("coordinator: background task %s failed: %s: %s (a bug; please report it with this log)",
                      task.get_name(), type(exc).__name__, exc, exc_info=exc)  # fmt: skip

    async def wait(self, job_id: str, timeout: float | None = None) -> JobRun:
        run = self.jobs[job_id]
        async with asyncio.timeout(timeout):  # not wait_for: 3.11's could swallow a cancel
            await run.done.wait()
        return run

    def deploy_message(
        self, run: JobRun, insts: list[str], recovery: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """The ``deploy`` message that starts ``insts`` of ``run`` on a worker; ``recovery``: per instance,
        what it restarts from (placement deploys, recoveries and global rollbacks all send it)."""
        return {
            "type": "deploy",
            "job": run.job_id,
            "ref": run.ref.to_dict(),
            "params": run.params,
            "config": run.config.to_dict(),
            "secret": run.secret,
            "instances": insts,
            "recovery": recovery,
            "addresses": {k: list(v) for k, v in run.addresses.items()},
        }

    async def _on_deployed(self, run: JobRun, insts: list[str]) -> None:
        run.deployed.update(insts)
        if run.checkpoints is not None and run.recovering:
            run.checkpoints.on_deployed(run)  # a global rollback starts them all at once
            return
        restarted = [i for i in insts if i in run.recovering]
        if restarted and run.state == "running":
            addresses = {k: list(v) for k, v in run.addresses.items()}
            for inst in restarted:
                await self.workers[run.placement[inst]].send(
                    {"type": "start", "job": run.job_id, "addresses": addresses}
                )
                run.recovering.discard(inst)
                # every sender to the new incarnation reconnects and resends what it lacks (§7.3)
                await self.broadcast(
                    run,
                    {"type": "peer_moved", "job": run.job_id, "instance": inst, "address": addresses[inst]},
                )
            return
        if run.state == "deploying" and len(run.deployed) == len(run.placement) == len(run.plan.instances()):
            run.state = "running"
            run.started_at = time.time()
            addresses = {k: list(v) for k, v in run.addresses.items()}
            for wid in sorted(set(run.placement.values())):
                w = self.workers.get(wid)  # one lost meanwhile: its instances recover (the job runs now)
                if w is not None:
                    await w.send({"type": "start", "job": run.job_id, "addresses": addresses})
            log.info("job %s running: %d instances", run.job_id, len(run.placement),
                     extra={"job": run.job_id, "instances": len(run.placement),
                            "deploy_s": round(run.started_at - run.submitted_at, 3)})  # fmt: skip

    # -- what the lineage coordinator uses ----------------------------------------------------------

    def workers_of(self, run: JobRun, exclude_instance: str | None = None) -> list[WorkerConn]:
        """The live workers hosting instances of ``run`` (but not only ``exclude_instance``)."""
        ids = {wid for inst, wid in run.placement.items() if inst != exclude_instance}
        return [self.workers[wid] for wid in sorted(ids) if wid in self.workers]

    async def broadcast(self, run: JobRun, message: dict[str, Any]) -> None:
        for w in self.workers_of(run):
            await w.send(message)

    async def send_to_instance(self, run: JobRun, inst: str, message: dict[str, Any]) -> None:
        w = self.workers.get(run.placement.get(inst, ""))
        if w is not None:
            await w.send(message)

    async def fail_job(self, run: JobRun, inst: str | None, error: str) -> None:
        await self._fail(run, inst, error)

    async def _recover(self, run: JobRun, inst: str, reason: str, incarnation: int | None = None) -> None:
        """Restart one lost instance alone (DESIGN.md §7); the job fails only if that is impossible.

        Under ``--ft checkpoint`` every instance restarts instead (:mod:`engine.global_rollback`).
        """
        if run.checkpoints is not None:
            try:
                await run.checkpoints.rollback(run, inst, reason, incarnation)
            except Exception as exc:
                log.exception(
                    "rollback after %s was lost failed", inst, extra={"job": run.job_id, "instance": inst}
                )
                await self._fail(
                    run, inst, f"instance {inst}: the job rollback failed: {type(exc).__name__}: {exc}"
                )
            return
        if run.state in TERMINAL or run.lineage is None or inst in run.recovering:
            return
        run.recovering.add(inst)
        run.deployed.discard(inst)
        for w in self.workers.values():
            w.instances.discard((run.job_id, inst))
        run.placement.pop(inst, None)
        try:
            await run.lineage.recover(run, inst, reason, lambda i, payload: self._redeploy(run, i, payload))
        except Exception as exc:
            log.exception("recovery of %s failed", inst, extra={"job": run.job_id, "instance": inst})
            await self._fail(run, inst, f"instance {inst}: recovery failed: {type(exc).__name__}: {exc}")

    async def _redeploy(self, run: JobRun, inst: str, payload: dict[str, Any]) -> None:
        if not await self.placement.place_all(run, [inst]):
            return
        message = self.deploy_message(run, [inst], {inst: payload})
        await self.workers[run.placement[inst]].send(message)

    async def kill(self, job_id: str, instance: str) -> str:
        """Kill the process (local mode) or the instance (cluster) hosting step instance ``instance``."""
        run = self.jobs.get(job_id)
        if run is None:
            raise CoordinatorError(f"no job {job_id!r}; `stashflow status` lists the jobs")
        step, _, index = instance.rpartition("/")
        if not index.isdigit():
            raise CoordinatorError(f"{instance!r} is not a step instance like 'count/1'")
        task = run.plan.task_of_step(step)
        if int(index) >= task.parallelism:
            raise CoordinatorError(f"step {step!r} has instances 0..{task.parallelism - 1}, not {index}")
        inst = task.instance(int(index))
        if run.state != "running" or inst in run.recovering:
            raise CoordinatorError(f"job {job_id} is {run.state}; instance {inst} cannot be killed now")
        run.kill_times[inst] = time.time()
        if self.launcher is not None and self.launcher.pid(job_id, inst) is not None:
            pid = self.launcher.kill(job_id, inst)
            log.warning("job %s: killed instance %s (pid %d)", job_id, inst, pid,
                        extra={"job": job_id, "instance": inst, "worker_pid": pid})  # fmt: skip
            return f"killed {inst} (pid {pid})"
        await self.send_to_instance(run, inst, {"type": "kill", "job": job_id, "instance": inst})
        return f"killed {inst}"

    async def _on_finished(self, run: JobRun, inst: str, stats: dict[str, Any]) -> None:
        run.stats[inst] = stats
        run.finished.add(inst)
        # every instance of the plan: one being recovered is not placed, and the others may finish first
        if run.state == "running" and not run.recovering and set(run.plan.instances()) <= run.finished:
            run.state = "finished"
            run.finished_at = time.time()
            await self._stop_job(run)  # lineage instances stay up for resends until the job ends
            run.done.set()
            log.info("job %s finished in %.2f s", run.job_id, run.elapsed_s,
                     extra={"job": run.job_id, "elapsed_s": round(run.elapsed_s, 3),
                            "records": run.source_records()})  # fmt: skip

    async def _fail(self, run: JobRun, inst: str | None, error: str) -> None:
        if run.state in TERMINAL:
            return
        run.state = "failed"
        run.error = error
        run.failed_instance = inst
        run.finished_at = time.time()
        log.error("job %s failed: %s", run.job_id, error,
                  extra={"job": run.job_id, "instance": inst, "elapsed_s": round(run.elapsed_s, 3),
                         "records": run.source_records()})  # fmt: skip
        await self._stop_job(run)
        run.done.set()

    async def cancel(self, job_id: str) -> JobRun:
        run = self.jobs.get(job_id)
        if run is None:
            raise CoordinatorError(f"no job {job_id!r}; `stashflow status` lists the jobs")
        if run.state not in TERMINAL:
            run.state = "canceled"
            run.finished_at = time.time()
            log.info("job %s canceled after %.2f s", run.job_id, run.elapsed_s,
                     extra={"job": run.job_id, "elapsed_s": round(run.elapsed_s, 3),
                            "records": run.source_records()})  # fmt: skip
            await self._stop_job(run)
            run.done.set()
        return run

    async def _stop_job(self, run: JobRun) -> None:
        if run.recovers and self.gcs is not None:
            self._spawn(self._drop_job_state(run.job_id))
        for wid in set(run.placement.values()):
            w = self.workers.get(wid)
            if w is not None:
                await w.send({"type": "cancel", "job": run.job_id})
        self._release(run)
        if self.launcher is not None:
            # idle spares host nothing and get no cancel: they go now, not after reap's grace
            self.launcher.stop_spares(run.job_id)
            self.placement.forget_spares(run.job_id)
            self._spawn(self.launcher.reap(run.job_id, grace=2.0))

    async def _drop_job_state(self, job_id: str) -> None:
        """The job is over: its determinants and checkpoint records need not stay in the GCS."""
        assert self.gcs is not None
        try:
            await self.gcs.drop_job(job_id)
        except Exception as exc:  # the job's result stands; only disk space is at stake
            log.warning("job %s: could not drop its GCS state: %s", job_id, exc, extra={"job": job_id})

    def _release(self, run: JobRun) -> None:
        for w in self.workers.values():
            w.instances = {(j, i) for (j, i) in w.instances if j != run.job_id}

    # -- worker control ------------------------------------------------------------------------------

    async def _watch_heartbeats(self) -> None:
        """Failure detection in a cluster: a worker whose messages stop (heartbeats come every 0.5 s) is
        dropped after ``heartbeat_timeout``, and its instances recover elsewhere; a process that exits is
        seen at once, when its connection closes."""
        while True:
            await asyncio.sleep(self.heartbeat_timeout / 4)
            now = time.monotonic()
            for conn in list(self.workers.values()):
                if now - conn.last_seen > self.heartbeat_timeout and not conn.ws.closed:
                    log.warning("worker %s (pid %s) sent nothing for %.1f s (--heartbeat-timeout %.1f): declaring it dead",
                                conn.worker_id, conn.pid, now - conn.last_seen, self.heartbeat_timeout,
                                extra={"worker": conn.worker_id, "worker_pid": conn.pid,
                                       "silent_s": round(now - conn.last_seen, 3)})  # fmt: skip
                    await conn.ws.close()

    async def _h_worker(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(heartbeat=10.0, max_msg_size=64 * 1024 * 1024)
        await ws.prepare(request)
        conn: WorkerConn | None = None
        try:
            async for msg in ws:
                if msg.type != WSMsgType.BINARY:
                    continue
                try:
                    data = unpack(msg.data)
                    kind = data["type"]
                except (ProtocolError, KeyError, TypeError) as exc:
                    log.warning("coordinator: dropped control connection from %s: malformed message (%s)",
                                request.remote, exc)  # fmt: skip
                    break
                if kind == "register":
                    pin = data.get("pin")
                    conn = WorkerConn(
                        data["worker"],
                        ws,
                        tuple(data["address"]),
                        int(data["slots"]),
                        self.placement.pin_at_registration(pin),
                        data.get("pid"),
                    )
                    self.workers[conn.worker_id] = conn
                    log.info("worker %s registered (data %s, pid %s)", conn.worker_id, conn.address, conn.pid,
                             extra={"worker": conn.worker_id, "worker_pid": conn.pid, "slots": conn.slots,
                                    "pin": conn.pin})  # fmt: skip
                    async with self.placement.changed:
                        self.placement.changed.notify_all()
                elif conn is not None:
                    conn.last_seen = time.monotonic()
                    try:
                        await self._on_worker_message(conn, data)
                    except (KeyError, TypeError, ValueError) as exc:
                        log.warning("coordinator: dropped worker %s: malformed %r message (%s: %s)",
                                    conn.worker_id, kind, type(exc).__name__, exc)  # fmt: skip
                        break
        finally:
            if conn is not None:
                self.workers.pop(conn.worker_id, None)
                self.placement.connection_lost(conn)
                await self._on_worker_lost(conn)
        return ws

    async def _on_worker_message(self, conn: WorkerConn, data: dict[str, Any]) -> None:
        kind = data["type"]
        if kind == "heartbeat":
            for job_id, insts in data["stats"].items():
                run = self.jobs.get(job_id)
                if run is not None:
                    for name, st in insts.items():
                        run.absorb(name, st)  # timeline increments count even after the instance finished
                        if name not in run.finished:
                            run.stats[name] = st
            return
        run = self.jobs.get(data.get("job", ""))
        if run is None:
            return
        if kind == "recovered" and self.launcher is not None:
            self._spawn(self.placement.replenish_spares(run))
        if kind == "log" and run.lineage is not None:
            run.lineage.on_log(run, data)  # checked now; stored with the others of this loop turn
            return
        if kind == "waiting" and run.lineage is not None:
            run.lineage.on_waiting(run, data)
            return
        if kind == "checkpoint" and run.lineage is not None:
            self._spawn(run.lineage.on_checkpoint(run, data))
            return
        if kind == "stash_reply" and self.lineage is not None:
            self.lineage.on_stash_reply(conn.worker_id, data)
            return
        if kind == "recovered" and run.lineage is not None:
            run.lineage.on_recovered(run, data)
            return
        if run.checkpoints is not None:
            if kind == "barrier_ack":
                self._spawn(run.checkpoints.on_ack(run, data))
                return
            if kind == "recovered":
                run.checkpoints.on_recovered(run, data)
                return
            if kind in ("finished", "failed", "lost") and data.get("incarnation", 0) < run.checkpoints.epoch(
                run.job_id
            ):
                return  # an instance a rollback replaced
        if kind == "lost":
            if run.recovers:
                incarnation = data.get("incarnation")
                self._spawn(self._recover(run, data["instance"], data.get("reason", "lost"), incarnation))
            else:
                await self._fail(
                    run, data["instance"], f"instance {data['instance']}: {data.get('reason', 'lost')}"
                )
            return
        if kind == "deployed":
            await self._on_deployed(run, list(data["instances"]))
        elif kind == "finished":
            run.absorb(data["instance"], data["stats"])
            await self._on_finished(run, data["instance"], data["stats"])
        elif kind == "failed":
            if data.get("stats"):
                run.absorb(data["instance"], data["stats"])
                run.stats[data["instance"]] = data["stats"]
            where = f"instance {data['instance']}: " if data.get("instance") else ""
            await self._fail(run, data.get("instance"), where + data["error"])

    async def _on_worker_lost(self, conn: WorkerConn) -> None:
        log.info("worker %s (pid %s) disconnected, hosting %d instance(s)", conn.worker_id, conn.pid,
                 len(conn.instances), extra={"worker": conn.worker_id, "worker_pid": conn.pid,
                                             "instances": sorted(i for _, i in conn.instances)})  # fmt: skip
        if self.lineage is not None:
            self.lineage.on_worker_gone(conn.worker_id)
        unstarted: dict[str, list[str]] = {}
        for job_id, inst in sorted(conn.instances):
            run = self.jobs.get(job_id)
            if run is None or run.state in TERMINAL:
                continue
            if run.state == "deploying":
                # unplaced at once, before any await: the job must not start counting on them
                run.placement.pop(inst, None)
                run.addresses.pop(inst, None)
                run.deployed.discard(inst)
                unstarted.setdefault(job_id, []).append(inst)
                continue
            if run.recovers:
                code = None
                if self.launcher is not None:
                    code = await self.launcher.exit_code(job_id, inst, wait=0.5)
                reason = f"worker {conn.worker_id} (pid {conn.pid}) went away" + (
                    f", exit code {code}" if code is not None else ""
                )
                # the epoch it was lost in: a worker with several instances is one rollback, not several
                epoch = run.checkpoints.epoch(run.job_id) if run.checkpoints is not None else None
                self._spawn(self._recover(run, inst, reason, epoch))
                continue
            if inst in run.finished:
                continue
            exit_info = ""
            if self.launcher is not None:
                code = await self.launcher.exit_code(job_id, inst, wait=1.0)
                exit_info = f", exit code {code}" if code is not None else ""
            await self._fail(
                run,
                inst,
                f"instance {inst}: its worker {conn.worker_id} (pid {conn.pid}{exit_info}) went away; "
                "this fault-tolerance mode (--ft none) does not recover instances",
            )
        for job_id, insts in unstarted.items():
            await self.placement.lost_before_start(self.jobs[job_id], insts, conn)

    # -- HTTP ----------------------------------------------------------------------------------------

    async def _h_health(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True, "workers": len(self.workers), "jobs": len(self.jobs)})

    async def _h_jobs(self, request: web.Request) -> web.Response:
        return web.json_response(
            [
                {"job": r.job_id, "name": r.name, "state": r.state, "error": r.error}
                for r in self.jobs.values()
            ]
        )

    async def _h_submit(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
            ref = JobRef.from_dict(body["ref"])
            params = {str(k): str(v) for k, v in (body.get("params") or {}).items()}
            config = JobConfig.from_dict(body.get("config") or {})
            run = self.submit(ref, params, config)
        except (JobLoadError, ParameterError, JobDefinitionError) as exc:
            return web.json_response({"error": str(exc), "kind": type(exc).__name__}, status=400)
        except (KeyError, TypeError, ValueError) as exc:
            return web.json_response({"error": f"malformed submission: {exc}"}, status=400)
        return web.json_response({"job": run.job_id})

    async def _h_job(self, request: web.Request) -> web.Response:
        run = self.jobs.get(request.match_info["id"])
        if run is None:
            return web.json_response({"error": f"no job {request.match_info['id']!r}"}, status=404)
        return web.json_response(run.status())

    async def _h_kill(self, request: web.Request) -> web.Response:
        if not self.allow_kill:
            return web.json_response(
                {"error": "killing instances is off on this coordinator; start it with --allow-kill "
                          "(stashflow run --allow-kill, or stashflow coordinator --allow-kill)"},
                status=403,
            )  # fmt: skip
        try:
            body = await request.json()
            text = await self.kill(request.match_info["id"], str(body["instance"]))
        except CoordinatorError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        except (KeyError, TypeError, ValueError) as exc:
            return web.json_response(
                {"error": f'malformed kill request: {exc}; send {{"instance": "count/1"}}'}, status=400
            )
        return web.json_response({"ok": True, "message": text})

    async def _h_cancel(self, request: web.Request) -> web.Response:
        try:
            run = await self.cancel(request.match_info["id"])
        except CoordinatorError as exc:
            return web.json_response({"error": str(exc)}, status=404)
        return web.json_response(run.status())
