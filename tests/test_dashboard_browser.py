"""End to end in headless Chromium: the dashboard during a running job, an instance killed with its button.

Debian's chromium (/usr/bin/chromium) driven by Playwright through ``executable_path``: no browser is
downloaded. The machine's network is closed, so Chromium runs with everything that would reach out
switched off, on a fresh profile. The job is a rate-limited union word count on a local cluster without
spare workers (a restarted instance waits for a new process, so "recovering" lasts long enough to be
seen). The screenshot is a test artifact: ``$STASHFLOW_TEST_ARTIFACTS/dashboard.png``, else
``test-artifacts/dashboard.png`` in the repository (git-ignored).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest
from support import ROOT

from engine.config import JobConfig
from engine.coordinator import Coordinator
from engine.launcher import LocalLauncher
from engine.loader import JobRef

try:
    from playwright.async_api import Page, async_playwright, expect
except ImportError:  # the dev extra is not installed
    async_playwright = None

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
JOB = ROOT / "jobs" / "union_count.py"
TOKEN = "dashboard-browser-token"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(60),
    pytest.mark.skipif(
        async_playwright is None,
        reason="playwright is not installed: `make venv` (or .venv/bin/pip install 'playwright>=1.45')",
    ),
    pytest.mark.skipif(
        not os.access(CHROMIUM, os.X_OK), reason=f"no Chromium at {CHROMIUM}: apt-get install chromium"
    ),
]

#: count/1's states so far include "recovering" followed later by "running"
RECOVERED = """() => {
    const row = document.querySelector('tr[data-instance="count/1"]');
    const states = (row.dataset.stateHistory || "").split(" ");
    const at = states.indexOf("recovering");
    return at > 0 && states.slice(at + 1).includes("running");
}"""


def artifact_path() -> Path:
    folder = Path(os.environ.get("STASHFLOW_TEST_ARTIFACTS") or ROOT / "test-artifacts")
    folder.mkdir(parents=True, exist_ok=True)
    return folder / "dashboard.png"


def watch_errors(page: Page, errors: list[str]) -> None:
    page.on("pageerror", lambda exc: errors.append(f"page error: {exc}"))
    page.on("console", lambda msg: errors.append(f"console: {msg.text}") if msg.type == "error" else None)


async def launch(pw: Any, tmp_path: Path) -> Any:
    """Chromium on a fresh profile, nothing reaching out (the machine's network is closed)."""
    return await pw.chromium.launch_persistent_context(
        str(tmp_path / "chromium-profile"),
        executable_path=CHROMIUM,
        headless=True,
        args=CHROMIUM_ARGS,
        viewport={"width": 1360, "height": 1000},
    )


async def test_the_page_draws_the_graph_and_keeps_the_kill_button_off_without_allow_kill(tmp_path: Path):
    errors: list[str] = []
    async with Coordinator(port=0, dashboard=True) as coord, async_playwright() as pw:
        browser = await launch(pw, tmp_path)
        try:
            page = await browser.new_page()
            watch_errors(page, errors)
            await page.goto(coord.url)
            await expect(page.locator("#message")).to_contain_text("No jobs yet")
            run = coord.submit(JobRef.parse(str(JOB)), {}, JobConfig(parallelism=2))  # no launcher: deploying
            await expect(page.locator("#job-name")).to_have_text("union_count", timeout=10_000)
            await expect(page.locator("#message")).to_be_hidden()
            await expect(page.locator("#job-picker")).to_have_value(run.job_id)
            # one box per task (chained steps inside), edges labelled with their partitioning
            tasks = page.locator("#graph g.task")
            assert await tasks.evaluate_all("gs => gs.map(g => g.dataset.task)") == [
                "left",
                "right",
                "merge",
                "count",
            ]
            assert await page.locator("#graph g.task[data-task='merge'] .step-line").all_text_contents() == [
                "merge  union",
                "split  flat_map",
            ]
            labels = await page.locator("#graph .edge-label").all_text_contents()
            assert sorted(labels) == ["forward", "forward", "hash"]
            await expect(page.locator("#graph g.instance")).to_have_count(8)
            await expect(page.locator("#instances tbody tr")).to_have_count(12)
            row = page.locator('tr[data-instance="count/1"]')
            await expect(row).to_have_attribute("data-state", "deploying")
            button = row.locator("button.kill")
            await expect(button).to_be_disabled()
            await expect(button).to_have_attribute(
                "title", re.compile(r"start the coordinator with --allow-kill")
            )
            assert await page.locator('tr[data-instance="write/1"] button.kill').count() == 0
            await page.locator("#graph g.instance[data-instance='count/1']").click()
            await expect(page.locator("#instances tr.selected")).to_have_count(2)  # count/1 and write/1
        finally:
            await browser.close()
    assert not errors, errors


async def test_an_instance_killed_with_its_button_recovers_on_the_page(tmp_path: Path):
    assert async_playwright is not None
    launcher = LocalLauncher(token=TOKEN, spares=0)
    params = {"sentences": "36000", "rate": "4000", "output": str(tmp_path / "out")}  # ~9 s of input
    config = JobConfig(parallelism=2, ft="lineage", checkpoint_interval=0.5)
    errors: list[str] = []
    async with (
        Coordinator(port=0, launcher=launcher, token=TOKEN, dashboard=True, allow_kill=True) as coord,
        async_playwright() as pw,
    ):
        run = coord.submit(JobRef.parse(str(JOB)), params, config)
        browser = await launch(pw, tmp_path)
        try:
            await check_bad_inputs(browser, coord, run.job_id, errors)
            page = await browser.new_page()
            watch_errors(page, errors)
            await page.goto(f"{coord.url}/#token={TOKEN}")
            # the token is kept for this tab and taken out of the address bar
            await expect(page).to_have_url(f"{coord.url}/")
            assert await page.evaluate("sessionStorage.getItem('stashflow.token')") == TOKEN
            await expect(page.locator("#job-name")).to_have_text("union_count")

            row = page.locator('tr[data-instance="count/1"]')
            await expect(row).to_have_attribute("data-state", "running", timeout=25_000)
            await expect(page.locator("#graph g.instance[data-instance='count/1']")).to_have_attribute(
                "data-state", "running"
            )
            await row.locator("button.kill").click()
            await expect(page.locator("#message")).to_contain_text("killed count/1 (pid")
            await page.wait_for_function(RECOVERED, timeout=20_000)
            history = await row.get_attribute("data-state-history")
            assert history is not None and history.split()[0] in ("deploying", "running"), history

            events = page.locator("#events")
            await expect(events.locator('li[data-kind="killed"][data-instance="count/1"]')).to_have_count(1)
            await expect(events.locator('li[data-kind="live"][data-instance="count/1"]')).to_have_count(1)
            await expect(page.locator('#timeline line.marker[data-kind="killed"]')).to_have_count(1)
            assert await page.locator("#timeline polyline.series.sink").count() == 1

            shot = artifact_path()
            await page.screenshot(path=str(shot), full_page=True)
            data = shot.read_bytes()
            assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 10_000

            await coord.wait(run.job_id, 40)
            assert run.state == "finished", run.error
            await expect(page.locator("#job-state")).to_have_text("finished", timeout=5_000)
            # the page closed its event stream once the job ended (it would otherwise reconnect)
            await expect(page.locator("#connection")).to_have_text("job finished")
            await expect(row).to_have_attribute("data-state", "finished")
        finally:
            await browser.close()
    assert not errors, errors


async def check_bad_inputs(browser: Any, coord: Coordinator, job_id: str, errors: list[str]) -> None:
    """An unknown job in the address, and a kill from a tab without the token: one readable line each."""
    page = await browser.new_page()
    seen: list[str] = []
    watch_errors(page, seen)
    await page.goto(f"{coord.url}/?job=nope")
    await expect(page.locator("#message")).to_have_text("no job 'nope'; GET /api/jobs lists them")
    await page.goto(f"{coord.url}/?job={job_id}")  # a new tab has no token in its sessionStorage
    kill_button = page.locator('tr[data-instance="count/0"] button.kill')
    await expect(kill_button).to_be_enabled(timeout=25_000)
    await kill_button.click()
    await expect(page.locator("#message")).to_contain_text(
        f"Kill count/0 refused (401): coordinator refused POST /jobs/{job_id}/kill: no token"
    )
    await expect(page.locator("#message")).to_contain_text("this page has no token")
    await page.close()
    # the console reports the refused requests (404, 401), which were the point; nothing else
    errors.extend(e for e in seen if "Failed to load resource" not in e)
