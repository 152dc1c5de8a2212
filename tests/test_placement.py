"""A worker lost while its job is still being deployed: nothing of its instances ran, so they are
placed again on the workers left, and the job runs as if that worker had never been there.

In process: a coordinator, real workers, and a fake worker (a bare control connection) that takes
instances and then goes away before the job starts: while the placement waits for slots, or once
it has its deploy message (the other workers then have its address). A cluster under load did both:
the deployment stopped at the lost worker, or the job started with senders connecting to the lost
worker's address, and it never ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import aiohttp
import pytest
from test_recovery import assert_exactly_once, union_job, until

from connectors import CollectSink
from engine.codec import pack, unpack
from engine.config import JobConfig
from engine.coordinator import Coordinator
from engine.loader import register_in_process
from engine.worker import Worker

TOKEN = "placement-test-token"
N = 300


async def start_worker(coord: Coordinator, tmp: str, slots: int) -> tuple[Worker, asyncio.Task[None]]:
    worker = Worker(coord.url, slots=slots, heartbeat_s=0.2, data_dir=tmp, token=TOKEN)
    return worker, asyncio.create_task(worker.run())


@pytest.mark.parametrize("ft", ["lineage", "checkpoint", "none"])
@pytest.mark.parametrize("when", ["placing", "deployed"])
async def test_a_worker_lost_before_the_job_starts_has_its_instances_placed_again(
    tmp_path: Any, caplog: pytest.LogCaptureFixture, ft: str, when: str
) -> None:
    """``placing``: lost while the placement waits for slots; ``deployed``: lost once its deploy message
    came, so the others were told its address (the job must start with the new one)."""
    caplog.set_level(logging.INFO, "stashflow")
    sink = CollectSink()
    job = union_job(N, sink)
    instances = 8  # 4 tasks (the sink runs in count's) x parallelism 2
    workers: list[tuple[Worker, asyncio.Task[None]]] = []
    async with Coordinator(port=0, token=TOKEN) as coord:
        try:
            # placing: 3 + 3 slots for 8 instances, the placement waits for more; deployed: room for all
            workers.append(
                await start_worker(coord, str(tmp_path / "w1"), slots=3 if when == "placing" else 8)
            )
            await until(lambda: len(coord.workers) == 1, 10)
            headers = {"Authorization": f"Bearer {TOKEN}"}
            async with aiohttp.ClientSession() as session:
                fake = await session.ws_connect(coord.url + "/ws/worker", headers=headers)
                register = {"type": "register", "worker": "a-fake", "address": ["tcp", "127.0.0.1", 9]}
                await fake.send_bytes(pack({**register, "slots": 3, "pin": None, "pid": 0}))
                await until(lambda: "a-fake" in coord.workers, 10)
                run = coord.submit(register_in_process(job), {}, JobConfig(ft=ft, checkpoint_interval=0.2))
                if when == "placing":
                    await until(lambda: len(run.placement) == 6, 10)
                else:
                    async with asyncio.timeout(10):
                        while unpack((await fake.receive()).data)["type"] != "deploy":
                            pass
                on_fake = sorted(i for i, w in run.placement.items() if w == "a-fake")
                assert len(on_fake) == 3 and run.state == "deploying"
                await fake.close()
                await until(lambda: "a-fake" not in coord.workers, 10)
                if when == "placing":
                    workers.append(await start_worker(coord, str(tmp_path / "w2"), slots=8))
                await coord.wait(run.job_id, timeout=30)
        finally:
            for worker, task in workers:
                worker._stop.set()
                with contextlib.suppress(asyncio.CancelledError):
                    async with asyncio.timeout(10):
                        await task
    assert run.state == "finished", run.error
    assert len(run.placement) == instances and "a-fake" not in run.placement.values()
    assert all(not st.get("restarts") for st in run.stats.values()), run.stats
    assert_exactly_once(sink.records, N)
    assert f"worker a-fake (pid 0) went away before the job started; placing {', '.join(on_fake)} again" in (
        caplog.text
    )
    assert "background task" not in caplog.text


async def test_a_stash_query_about_a_job_not_hosted_is_answered_at_once() -> None:
    """A worker the job was not deployed to (yet) holds none of its log: it says so rather than leave
    the recovery waiting for its timeout."""
    worker = Worker("http://127.0.0.1:9", token=TOKEN)
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    worker._send = send  # type: ignore[method-assign]
    await worker._handle({"type": "stash_query", "job": "elsewhere-1", "instance": "count/0", "query": 7})
    assert sent == [{"type": "stash_reply", "job": "elsewhere-1", "query": 7, "holdings": []}]
