"""The dashboard's server side (engine/dashboard.py): page and files, JSON API, live stream, killing.

Most tests run an in-process coordinator with a job that stays ``deploying`` (no launcher: no worker
ever comes); the stream and kill tests run the union word count on a local cluster (LocalLauncher:
loopback only, the launcher's own processes).
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
import logging
import re
import time
from collections.abc import AsyncIterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from support import ROOT
from yarl import URL

from engine.config import JobConfig
from engine.coordinator import Coordinator
from engine.dashboard import is_public, shipped_files
from engine.job_run import JobRun
from engine.launcher import LocalLauncher
from engine.loader import JobRef

JOB = ROOT / "jobs" / "union_count.py"
TOKEN = "dashboard-test-token"
STATIC = ROOT / "engine" / "static" / "dashboard"


def submit(coord: Coordinator, params: dict[str, str] | None = None, ft: str = "lineage") -> JobRun:
    config = JobConfig(parallelism=2, ft=ft, checkpoint_interval=0.3)
    return coord.submit(JobRef.parse(str(JOB)), params or {}, config)


async def get(session: aiohttp.ClientSession, url: str | URL) -> tuple[int, Any]:
    async with session.get(url) as resp:
        return resp.status, await resp.json()


async def kill(
    session: aiohttp.ClientSession, coord: Coordinator, job_id: str, instance: str, token: str | None
) -> tuple[int, dict[str, Any]]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    url = f"{coord.url}/jobs/{job_id}/kill"
    async with session.post(url, json={"instance": instance}, headers=headers) as resp:
        return resp.status, await resp.json()


async def sse_events(resp: aiohttp.ClientResponse) -> AsyncIterator[tuple[str, Any]]:
    """The (event, data) pairs of a server-sent event stream, until the server ends it."""
    kind, data = "message", ""
    async for raw in resp.content:
        line = raw.decode().rstrip("\n")
        if not line:
            if data:
                yield kind, json.loads(data)
            kind, data = "message", ""
        elif line.startswith(":"):
            continue  # a keep-alive comment
        else:
            field, _, value = line.partition(": ")
            if field == "event":
                kind = value
            elif field == "data":
                data += value


class References(HTMLParser):
    """Every src/href of a page, with its tag; every id."""

    def __init__(self) -> None:
        super().__init__()
        self.refs: list[tuple[str, str]] = []
        self.ids: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("src", "href") and value is not None:
                self.refs.append((tag, value))
            if name == "id" and value is not None:
                self.ids.add(value)


def test_the_dashboards_paths_are_public_and_nothing_else():
    for path in ("/", "/api/jobs", "/api/jobs/x/stream", "/api/config", "/static/dashboard/dashboard.js"):
        assert is_public(path), path
    for path in ("/jobs", "/jobs/x/kill", "/ws/worker", "/static/other.js", "/index.html", "/apix"):
        assert not is_public(path), path


async def test_the_page_and_its_files_are_served_and_complete():
    async with Coordinator(port=0, token=TOKEN, dashboard=True) as coord, aiohttp.ClientSession() as s:
        async with s.get(coord.url + "/") as resp:  # no token: the page is public
            assert resp.status == 200
            assert resp.content_type == "text/html" and resp.charset == "utf-8"
            assert resp.headers["Cache-Control"] == "no-cache"
            assert "default-src 'self'" in resp.headers["Content-Security-Policy"]
            html = await resp.text()
        assert html == (STATIC / "index.html").read_text()
        page = References()
        page.feed(html)
        assets = {v for tag, v in page.refs if tag in ("script", "link", "img")}
        assert assets == {
            f"/static/dashboard/{name}" for name in ("dashboard.js", "dashboard.css", "favicon.svg")
        }
        # every other reference is a link to this coordinator
        assert [v for tag, v in page.refs if tag == "a"] == ["/metrics"]
        types = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}
        texts = {"index.html": html}
        for path in sorted(assets):
            name = path.rpartition("/")[2]
            async with s.get(coord.url + path) as resp:
                assert resp.status == 200, path
                assert resp.content_type == types[Path(name).suffix], path
                assert resp.headers["Cache-Control"] == "no-cache"
                texts[name] = await resp.text()
            assert texts[name] == (STATIC / name).read_text()
        assert set(texts) == set(shipped_files())  # all of the shipped files, and nothing else
    # nothing is fetched from elsewhere: the only absolute URL is the SVG namespace
    for name, text in texts.items():
        urls = set(re.findall(r"https?://[^\s\"'`)]+", text))
        assert urls <= {"http://www.w3.org/2000/svg"}, (name, urls)
    # the script finds every element it looks up by id
    looked_up = set(re.findall(r'\$\("([\w-]+)"\)', texts["dashboard.js"]))
    assert looked_up and looked_up <= page.ids, looked_up - page.ids


@pytest.mark.parametrize(
    "path",
    [
        "/static/dashboard/nope.js",
        "/static/dashboard/dashboard.py",
        "/static/dashboard/..%2Fdashboard.py",
        "/static/dashboard/%2E%2E%2F%2E%2E%2Fpyproject.toml",
        "/static/dashboard/../dashboard.py",
        "/static/dashboard/..",
    ],
)
async def test_a_file_that_was_not_shipped_is_not_found(path: str):
    async with Coordinator(port=0, dashboard=True) as coord, aiohttp.ClientSession() as s:
        async with s.get(URL(coord.url + path, encoded=True)) as resp:
            body = await resp.text()
            assert resp.status == 404, body
        assert "def routes" not in body and "[project]" not in body
        if body.startswith("{"):  # it reached the dashboard (a path aiohttp normalized may not)
            assert json.loads(body)["error"].startswith("no dashboard file ")
        if path == "/static/dashboard/nope.js":
            assert json.loads(body)["error"] == (
                "no dashboard file 'nope.js'; the dashboard ships dashboard.css, dashboard.js, favicon.svg, "
                "index.html"
            )


async def test_the_api_lists_jobs_and_their_views_and_names_an_unknown_job():
    async with Coordinator(port=0, token=TOKEN, dashboard=True) as coord, aiohttp.ClientSession() as s:
        version = importlib.metadata.version("stashflow")
        assert await get(s, coord.url + "/api/config") == (200, {"allow_kill": False, "version": version})
        assert await get(s, coord.url + "/api/jobs") == (200, [])
        run = submit(coord)  # no launcher: it stays deploying
        status, jobs = await get(s, coord.url + "/api/jobs")
        assert (status, jobs) == (200, [{"job": run.job_id, "name": "union_count", "state": "deploying",
                                         "error": None}])  # fmt: skip
        status, view = await get(s, f"{coord.url}/api/jobs/{run.job_id}")
        assert status == 200 and view["job"] == run.job_id and view["ft"] == "lineage"
        assert [t["task"] for t in view["graph"]] == ["left", "right", "merge", "count"]
        assert view["instances"]["count/1"]["state"] == "deploying"
        assert view["instances"]["write/1"]["task"] == "count/1"
        for path in ("/api/jobs/nope", "/api/jobs/nope/stream"):
            status, body = await get(s, coord.url + path)
            assert (status, body) == (404, {"error": "no job 'nope'; GET /api/jobs lists them"}), path
        # the dashboard opens its own paths only: the rest of the API still wants the token
        assert (await get(s, coord.url + "/jobs"))[0] == 401


async def test_without_the_dashboard_there_is_no_page():
    async with Coordinator(port=0) as coord, aiohttp.ClientSession() as s:
        for path in ("/", "/static/dashboard/dashboard.js", "/api/config", "/api/jobs"):
            async with s.get(coord.url + path) as resp:
                assert resp.status == 404, path
    async with Coordinator(port=0, token=TOKEN) as coord, aiohttp.ClientSession() as s:
        assert (await get(s, coord.url + "/api/jobs"))[0] == 401  # not public without the dashboard


async def test_a_stream_ends_when_its_client_goes_away(caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.DEBUG, "stashflow.dashboard")
    async with Coordinator(port=0, dashboard=True) as coord:
        coord.monitor.interval_s = 0.1
        run = submit(coord)
        async with aiohttp.ClientSession() as s:
            resp = await s.get(f"{coord.url}/api/jobs/{run.job_id}/stream")
            assert resp.status == 200 and resp.content_type == "text/event-stream"
            kind, view = await anext(aiter(sse_events(resp)))
            assert kind == "view" and view["state"] == "deploying"
            resp.close()  # the browser tab is closed
        deadline = time.monotonic() + 5
        needle = f"stream of job {run.job_id} ended: the client went away"
        while needle not in caplog.text and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert needle in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


async def test_an_open_stream_does_not_hold_up_the_coordinators_shutdown():
    coord = Coordinator(port=0, dashboard=True)
    await coord.start()
    closing: asyncio.Task[None] | None = None
    try:
        run = submit(coord)
        async with aiohttp.ClientSession() as s, s.get(f"{coord.url}/api/jobs/{run.job_id}/stream") as resp:
            events = sse_events(resp)
            assert (await anext(events))[1]["state"] == "deploying"
            started = time.monotonic()
            closing = asyncio.create_task(coord.aclose())
            rest = [view async for _, view in events]  # the server ends the stream
            await asyncio.wait_for(closing, 10)
            took = time.monotonic() - started
    finally:
        if closing is None:
            await coord.aclose()
    assert took < 5, f"closing took {took:.1f} s"
    assert rest and rest[-1]["state"] == "canceled"


async def test_the_stream_follows_a_running_job_and_ends_after_it_finished(tmp_path: Path):
    launcher = LocalLauncher(token=TOKEN, spares=0)
    params = {"sentences": "8000", "rate": "4000", "output": str(tmp_path / "out")}
    async with (
        Coordinator(port=0, launcher=launcher, token=TOKEN, dashboard=True) as coord,
        aiohttp.ClientSession() as s,
    ):
        run = submit(coord, params)
        views: list[dict[str, Any]] = []
        refusals: list[tuple[int, dict[str, Any]]] = []
        async with s.get(f"{coord.url}/api/jobs/{run.job_id}/stream") as resp:
            assert resp.headers["Cache-Control"] == "no-cache"
            async with asyncio.timeout(30):
                async for kind, view in sse_events(resp):
                    assert kind == "view"
                    views.append(view)
                    if view["state"] == "running" and not refusals:
                        # killing is off (no allow_kill): refused even with the right token
                        refusals.append(await kill(s, coord, run.job_id, "count/1", TOKEN))
                        refusals.append(await kill(s, coord, run.job_id, "count/1", "guess"))
        assert run.state == "finished", run.error
    states = [v["state"] for v in views]
    assert len(views) >= 2 and "running" in states and states[-1] == "finished", states
    assert views[-1]["events"][-1]["kind"] == "finished"  # the job's last event made it into the stream
    assert max(h[1] for h in views[-1]["history"]) > 0
    assert refusals[0] == (403, {"error": "killing instances is off on this coordinator; start it with "
                                          "--allow-kill (stashflow run --allow-kill, or stashflow "
                                          "coordinator --allow-kill)"})  # fmt: skip
    assert refusals[1][0] == 401
    assert refusals[1][1]["error"].startswith(
        f"coordinator refused POST /jobs/{run.job_id}/kill: wrong token"
    )


async def test_a_kill_with_the_token_makes_the_instance_recover(tmp_path: Path):
    launcher = LocalLauncher(token=TOKEN, spares=1)
    params = {"sentences": "12000", "rate": "4000", "output": str(tmp_path / "out")}
    async with (
        Coordinator(port=0, launcher=launcher, token=TOKEN, dashboard=True, allow_kill=True) as coord,
        aiohttp.ClientSession() as s,
    ):
        assert (await get(s, coord.url + "/api/config"))[1]["allow_kill"] is True
        run = submit(coord, params)
        answers: list[tuple[int, dict[str, Any]]] = []
        views: list[dict[str, Any]] = []
        async with s.get(f"{coord.url}/api/jobs/{run.job_id}/stream") as resp:
            async with asyncio.timeout(30):
                async for _, view in sse_events(resp):
                    views.append(view)
                    running = (
                        view["state"] == "running" and view["instances"]["count/1"]["state"] == "running"
                    )
                    if running and not answers and view["source_records"] > 0:
                        answers.append(await kill(s, coord, run.job_id, "count/9", TOKEN))
                        answers.append(await kill(s, coord, run.job_id, "count/1", None))
                        answers.append(await kill(s, coord, run.job_id, "count/1", TOKEN))
        assert run.state == "finished", run.error
    assert answers[0] == (400, {"error": "step 'count' has instances 0..1, not 9"})
    assert answers[1][0] == 401 and "no token" in answers[1][1]["error"]
    assert answers[2][0] == 200 and re.fullmatch(r"killed count/1 \(pid \d+\)", answers[2][1]["message"])
    events = [(e["kind"], e["instance"]) for e in views[-1]["events"]]
    recovery = [kind for kind, inst in events if inst == "count/1"]
    assert recovery == ["killed", "detected", "deployed", "live"], events
    # the stream showed the instance again running after the kill
    assert views[-1]["instances"]["count/1"]["restarts"] == 1
