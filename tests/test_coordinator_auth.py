"""The control plane: a token guards the coordinator; strays and malformed messages are refused, logged."""

from __future__ import annotations

import logging

import aiohttp
import pytest

from engine.coordinator import Coordinator
from engine.errors import StashflowError
from engine.worker import Worker

TOKEN = "s3cret-token"


async def get(url: str, token: str | None = None) -> tuple[int, dict]:
    headers = {"Authorization": f"Bearer {token}"} if token else None
    async with aiohttp.ClientSession() as session, session.get(url, headers=headers) as resp:
        return resp.status, await resp.json()


async def test_the_api_needs_the_token_but_health_does_not(caplog: pytest.LogCaptureFixture):
    async with Coordinator(port=0, token=TOKEN) as coord:
        assert (await get(coord.url + "/health"))[0] == 200
        status, body = await get(coord.url + "/jobs")
        assert status == 401
        assert body["error"] == (
            "coordinator refused GET /jobs: no token; pass --token or set STASHFLOW_TOKEN to the coordinator's"
        )
        status, body = await get(coord.url + "/jobs", token="guess")
        assert status == 401 and "wrong token" in body["error"]
        assert (await get(coord.url + "/jobs", token=TOKEN)) == (200, [])
    assert "refused GET /jobs from 127.0.0.1: wrong token" in caplog.text


async def test_a_worker_with_the_wrong_token_is_refused_with_a_clear_error():
    async with Coordinator(port=0, token=TOKEN) as coord:
        worker = Worker(coord.url, token="guess", connect_timeout=2)
        with pytest.raises(
            StashflowError, match=r"the coordinator at http://127\.0\.0\.1:\d+ refused our token"
        ):
            await worker.run()
        assert not coord.workers


async def test_a_malformed_control_message_drops_that_connection_only(caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.WARNING, "stashflow.coordinator")
    async with Coordinator(port=0, token=TOKEN) as coord:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        url = coord.url + "/ws/worker"
        async with aiohttp.ClientSession() as session, session.ws_connect(url, headers=headers) as ws:
            await ws.send_bytes(b"\xc1 not msgpack")
            msg = await ws.receive(timeout=5)
            closed = (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING)
            assert msg.type in closed
        assert "dropped control connection from 127.0.0.1: malformed message" in caplog.text
        assert (await get(coord.url + "/jobs", token=TOKEN))[0] == 200  # still serving
