"""The dashboard: a page the coordinator serves to watch jobs run, fail and recover.

Served when the coordinator is started with ``dashboard`` (``stashflow run`` does, at
http://127.0.0.1:8081/ by default). Every route is a GET that anyone who can reach the coordinator may
read, like Flink's web UI; the page kills an instance through the token-guarded
``POST /jobs/{id}/kill``, which is off unless the coordinator runs with ``allow_kill``.

==============================  ====================================================================
``GET /``                       the page (``engine/static/dashboard/index.html``)
``GET /static/dashboard/{f}``   its script, style sheet and icon: only the files shipped in the package
``GET /api/config``             ``{"allow_kill": bool, "version": "0.1.0"}``
``GET /api/jobs``               every job, newest first (:meth:`JobMonitor.jobs`)
``GET /api/jobs/{id}``          one job as the page draws it (:meth:`JobMonitor.view`); 404 if unknown
``GET /api/jobs/{id}/stream``   server-sent events: a ``view`` event now and after every sample of the
                                monitor; the stream ends after the view of a job that ended
==============================  ====================================================================

The page is plain JavaScript and SVG with no build step and nothing fetched from elsewhere: it works
on a machine without internet access. All its data comes from :attr:`Coordinator.monitor`.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
import logging
from importlib import resources
from importlib.resources.abc import Traversable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from engine.job_run import TERMINAL

if TYPE_CHECKING:
    from engine.coordinator import Coordinator
    from engine.monitor import JobMonitor

__all__ = ["is_public", "routes"]

log = logging.getLogger("stashflow.dashboard")

#: the shipped files, by suffix: what may be served and as what
_CONTENT_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}
#: a stream with nothing to send checks this often that its client and the coordinator are still there
_POLL_S = 1.0
#: a comment line this often keeps proxies and the browser from timing out a quiet stream
_KEEPALIVE_S = 15.0
#: how long the browser waits before it reconnects a broken stream (the SSE ``retry`` field), ms
_RETRY_MS = 2000
#: the page loads only its own files and talks only to its own coordinator
_PAGE_HEADERS = {
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'",
}


def routes(coord: Coordinator) -> list[web.RouteDef]:
    """The dashboard's routes on ``coord`` (the coordinator adds them when started with ``dashboard``)."""
    ui = _Dashboard(coord)
    return [
        web.get("/", ui.page),
        web.get("/static/dashboard/{name}", ui.asset),
        web.get("/api/config", ui.config),
        web.get("/api/jobs", ui.jobs),
        web.get("/api/jobs/{id}", ui.job),
        web.get("/api/jobs/{id}/stream", ui.stream, allow_head=False),
    ]


def is_public(path: str) -> bool:
    """The dashboard's paths: readable without the token (the coordinator exempts GETs only).

    >>> [is_public(p) for p in ("/", "/api/jobs", "/static/dashboard/dashboard.js", "/jobs", "/ws/worker")]
    [True, True, True, False, False]
    """
    return path == "/" or path.startswith(("/static/dashboard/", "/api/"))


def shipped_files() -> dict[str, Traversable]:
    """The page's files in the package (``engine/static/dashboard``), by name."""
    folder = resources.files("engine").joinpath("static", "dashboard")
    return {
        f.name: f
        for f in folder.iterdir()
        if f.is_file() and "." + f.name.rpartition(".")[2] in _CONTENT_TYPES
    }


class _Dashboard:
    """The request handlers, bound to one coordinator."""

    def __init__(self, coord: Coordinator):
        self.coord = coord
        self.files = shipped_files()
        try:
            self.version = importlib.metadata.version("stashflow")
        except importlib.metadata.PackageNotFoundError:  # run from a source tree that was never installed
            self.version = "unknown"

    # -- the page and its files ---------------------------------------------------------------------

    async def page(self, request: web.Request) -> web.Response:
        return self._file("index.html")

    async def asset(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in self.files:
            shipped = ", ".join(sorted(self.files))
            return web.json_response(
                {"error": f"no dashboard file {name!r}; the dashboard ships {shipped}"}, status=404
            )
        return self._file(name)

    def _file(self, name: str) -> web.Response:
        content_type = _CONTENT_TYPES["." + name.rpartition(".")[2]]
        body = self.files[name].read_bytes()
        return web.Response(body=body, content_type=content_type, charset="utf-8", headers=_PAGE_HEADERS)

    # -- the API ------------------------------------------------------------------------------------

    async def config(self, request: web.Request) -> web.Response:
        return web.json_response({"allow_kill": self.coord.allow_kill, "version": self.version})

    async def jobs(self, request: web.Request) -> web.Response:
        return web.json_response(self.coord.monitor.jobs())

    async def job(self, request: web.Request) -> web.Response:
        job_id = request.match_info["id"]
        view = self.coord.monitor.view(job_id)
        if view is None:
            return _no_job(job_id)
        return web.json_response(view)

    async def stream(self, request: web.Request) -> web.StreamResponse:
        job_id = request.match_info["id"]
        if self.coord.monitor.view(job_id) is None:
            return _no_job(job_id)
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        try:
            await response.write(f"retry: {_RETRY_MS}\n\n".encode())
            await self._feed(request, response, job_id)
        except ConnectionError:  # the browser went away (tab closed, page reloaded) while we wrote
            log.debug("dashboard: stream of job %s ended: the client went away", job_id)
        return response

    async def _feed(self, request: web.Request, response: web.StreamResponse, job_id: str) -> None:
        """Send a view now and after every monitor sample until the job has ended, the client has gone
        or the coordinator is closing (aiohttp waits for open handlers before it shuts down)."""
        monitor = self.coord.monitor
        loop = asyncio.get_running_loop()
        last_write = loop.time()
        last_chance = False
        while (view := monitor.view(job_id)) is not None:
            await response.write(_event("view", view))
            last_write = loop.time()
            if view["state"] in TERMINAL:
                # the monitor adds the job's last event at its next sample: wait for it, once
                if last_chance or any(e["kind"] == view["state"] for e in view["events"]):
                    return
                last_chance = True
            while not await _next_sample(monitor):
                run = self.coord.jobs.get(job_id)
                if run is not None and run.state != view["state"]:
                    break  # it changed between samples (canceled as the coordinator closes): tell now
                if _gone(request) or self._closing():
                    reason = "the client went away" if _gone(request) else "the coordinator is closing"
                    log.debug("dashboard: stream of job %s ended: %s", job_id, reason)
                    return
                if loop.time() - last_write >= _KEEPALIVE_S:
                    await response.write(b": keep-alive\n\n")
                    last_write = loop.time()

    def _closing(self) -> bool:
        """The coordinator is closing (and waits for this handler)."""
        return self.coord.closing.is_set()


async def _next_sample(monitor: JobMonitor) -> bool:
    """True after the monitor's next sample, False if none came within ``_POLL_S``."""
    try:
        async with asyncio.timeout(_POLL_S):  # not wait_for: 3.11's could swallow a cancel
            await monitor.changed()
    except TimeoutError:
        return False
    return True


def _gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


def _event(kind: str, data: Any) -> bytes:
    """One server-sent event: the JSON is on one line (a data line must not hold a newline)."""
    return f"event: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def _no_job(job_id: str) -> web.Response:
    return web.json_response({"error": f"no job {job_id!r}; GET /api/jobs lists them"}, status=404)
