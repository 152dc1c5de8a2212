"""docker-compose.yml describes the cluster the README documents: a coordinator and three workers.

The file is checked by Compose itself, ``config``, which validates it against the Compose schema and
prints it resolved (anchors merged, paths absolute) without needing a Docker engine. Debian's
``docker-compose`` (v1, prints YAML) is tried first, then the ``docker compose`` plugin (v2, prints
JSON); the tests skip, saying so, when neither is installed. ``make test`` installs the former.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
COMPOSE_FILE = REPO / "docker-compose.yml"

WORKERS = ("worker-1", "worker-2", "worker-3")
#: every service built from the repository's Dockerfile
STASHFLOW_SERVICES = ("coordinator", *WORKERS, "submit")
COORDINATOR_URL = "http://coordinator:8081"


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    # COMPOSE_* variables (COMPOSE_FILE, COMPOSE_PROFILES, ...) would change what is read: drop them.
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMPOSE_")}
    return subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False)


def _compose_config() -> dict[str, Any]:
    """The compose file as Compose resolves it; skips the test when no Compose CLI is available."""
    common = ["-f", str(COMPOSE_FILE), "--project-directory", str(REPO), "--profile", "tools"]
    if shutil.which("docker-compose"):
        # v1 prints only YAML. A missing PyYAML is a skip, not an error, so a bare `pytest` still runs.
        yaml = pytest.importorskip(
            "yaml", reason="PyYAML parses `docker-compose config`: pip install -e '.[dev]'"
        )
        argv, parse = ["docker-compose", *common, "config"], yaml.safe_load
    elif shutil.which("docker") and _run(["docker", "compose", "version"]).returncode == 0:
        argv, parse = ["docker", "compose", *common, "config", "--format", "json"], json.loads
    else:
        pytest.skip(
            "neither `docker-compose` nor the `docker compose` plugin is installed, so docker-compose.yml "
            "cannot be validated; `make test` installs Debian's docker-compose when run as root"
        )
    proc = _run(argv)
    assert proc.returncode == 0, f"`{' '.join(argv)}` rejected docker-compose.yml:\n{proc.stderr}"
    parsed = parse(proc.stdout)
    assert isinstance(parsed, dict), f"`{' '.join(argv)}` printed no mapping:\n{proc.stdout[:500]}"
    return parsed


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return _compose_config()


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    result: dict[str, dict[str, Any]] = compose["services"]
    return result


def _ports(service: dict[str, Any]) -> set[tuple[int, int]]:
    """``{(published, target)}``, from either the short ``"8081:8081"`` or the long form."""
    result = set()
    for port in service.get("ports", []):
        if isinstance(port, str):
            published, _, target = port.partition("/")[0].rpartition(":")
            result.add((int(published), int(target)))
        else:
            result.add((int(port["published"]), int(port["target"])))
    return result


def _mounts(service: dict[str, Any]) -> set[tuple[str, str, bool]]:
    """``{(source, target, read_only)}``, from either the short ``"src:dst:ro"`` or the long form."""
    result = set()
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, target, *mode = volume.split(":")
            result.add((source, target, "ro" in mode[0].split(",") if mode else False))
        else:
            result.add((volume["source"], volume["target"], bool(volume.get("read_only", False))))
    return result


def test_services_are_a_coordinator_three_workers_and_an_on_demand_submit(services: dict[str, Any]) -> None:
    assert set(services) == {"coordinator", *WORKERS, "submit"}
    started_by_up = {name for name, service in services.items() if not service.get("profiles")}
    assert started_by_up == {"coordinator", *WORKERS}


def test_every_service_runs_the_image_built_from_this_repository(services: dict[str, Any]) -> None:
    for name in STASHFLOW_SERVICES:
        service = services[name]
        assert Path(service["build"]["context"]) == REPO, name
        assert service["image"] == "stashflow:latest", name
        assert service["init"] is True, f"{name}: without an init, SIGTERM does not reach stashflow"
    assert (REPO / "Dockerfile").is_file()


def test_every_service_mounts_the_data_volume_and_the_jobs_read_only(
    compose: dict[str, Any], services: dict[str, Any]
) -> None:
    assert "data" in compose["volumes"]
    expected = {("data", "/data", False), (str(REPO / "jobs"), "/jobs", True)}
    for name in STASHFLOW_SERVICES:
        assert _mounts(services[name]) == expected, name


def test_coordinator_is_configured_by_flags_and_publishes_its_http_port(services: dict[str, Any]) -> None:
    coordinator = services["coordinator"]
    assert coordinator["command"] == [
        "coordinator",
        "--host",
        "0.0.0.0",
        "--port",
        "8081",
        "--data-dir",
        "/data",
    ]
    assert _ports(coordinator) == {(8081, 8081)}


def test_coordinator_healthcheck_asks_for_health(services: dict[str, Any]) -> None:
    healthcheck = services["coordinator"]["healthcheck"]
    test = healthcheck["test"]
    assert test[0] == "CMD"
    assert "http://127.0.0.1:8081/health" in " ".join(test)
    assert healthcheck["retries"] >= 1


@pytest.mark.parametrize("name", WORKERS)
def test_worker_is_configured_by_environment(services: dict[str, Any], name: str) -> None:
    worker = services[name]
    assert worker["command"] == ["worker"]
    assert worker["environment"] == {
        "STASHFLOW_COORDINATOR": COORDINATOR_URL,
        "STASHFLOW_HOST": "0.0.0.0",
        # peers connect to the address a worker advertises: in Compose, its service name
        "STASHFLOW_ADVERTISE": name,
        "STASHFLOW_DATA_PORT": "6100",
        "STASHFLOW_SLOTS": "4",
        "STASHFLOW_DATA_DIR": "/data",
        "STASHFLOW_TOKEN": "change-me",
    }
    assert [str(port) for port in worker["expose"]] == ["6100"]
    assert not worker.get("ports"), "workers talk over the compose network; nothing is published"


@pytest.mark.parametrize("name", WORKERS)
def test_worker_restarts_and_waits_for_a_healthy_coordinator(services: dict[str, Any], name: str) -> None:
    worker = services[name]
    assert worker["restart"] == "unless-stopped"
    assert set(worker["depends_on"]) == {"coordinator"}
    assert worker["depends_on"]["coordinator"]["condition"] == "service_healthy"


def test_submit_sends_the_wordcount_job_to_the_coordinator(services: dict[str, Any]) -> None:
    submit = services["submit"]
    assert submit["profiles"] == ["tools"]
    assert (
        submit["command"]
        == (
            f"submit /jobs/wordcount.py --coordinator {COORDINATOR_URL} -P input=/data/corpus/*.txt -P output=/data/out"
        ).split()
    )
