"""The cluster topology of docker-compose.yml, as local processes on distinct loopback addresses.

A coordinator on 127.0.0.1 and three workers on 127.0.0.2-4 (each its own address, as containers
would have), a job submitted with ``stashflow submit``, its instances spread over the workers; a stray
client sending garbage and a forged handshake to a worker's data port while the job runs must not harm
it. Every process is started here, bounded in time and killed by pid.
"""

from __future__ import annotations

import json
import socket
import struct
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import union_count
from support import ROOT, read_jsonl

WORKER_HOSTS = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def loopback_alias_works() -> bool:
    try:
        free_port("127.0.0.2")
    except OSError:
        return False
    return True


def stashflow(*args: str) -> list[str]:
    return [sys.executable, "-m", "engine", *args]


def wait_http(url: str, deadline: float) -> None:
    import urllib.request

    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "/health", timeout=1) as resp:
                if json.load(resp)["workers"] == len(WORKER_HOSTS):
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"coordinator at {url} did not see {len(WORKER_HOSTS)} workers in time")


@pytest.mark.skipif(not loopback_alias_works(), reason="127.0.0.2 is not bindable on this machine")
def test_coordinator_and_three_workers_on_distinct_addresses(tmp_path: Path):
    port = free_port("127.0.0.1")
    url = f"http://127.0.0.1:{port}"
    data_ports = {host: free_port(host) for host in WORKER_HOSTS}
    procs: list[subprocess.Popen[bytes]] = []
    logs = tmp_path / "logs"
    logs.mkdir()
    files = []

    def log_file(name: str):
        f = open(logs / name, "wb")  # noqa: SIM115 - closed in the finally below
        files.append(f)
        return f

    try:
        procs.append(
            subprocess.Popen(
                stashflow("coordinator", "--host", "127.0.0.1", "--port", str(port)),
                stdout=subprocess.DEVNULL,
                stderr=log_file("coordinator.log"),
                cwd=ROOT,
            )
        )
        for host in WORKER_HOSTS:
            procs.append(
                subprocess.Popen(
                    stashflow("worker", "--host", host, "--data-port", str(data_ports[host]), "--slots", "4"),
                    env={**_env(), "STASHFLOW_COORDINATOR": url},  # the env var form of --coordinator
                    stdout=subprocess.DEVNULL,
                    stderr=log_file(f"worker-{host}.log"),
                    cwd=ROOT,
                )
            )
        wait_http(url, time.monotonic() + 30)

        out = tmp_path / "out"
        n = 4000
        submit = subprocess.Popen(
            stashflow(
                "submit",
                "jobs/union_count.py",
                "--coordinator",
                url,
                "--parallelism",
                "3",
                "-P",
                f"sentences={n}",
                "-P",
                f"output={out}",
                "-P",
                "rate=8000",
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=ROOT,
        )
        time.sleep(1.0)  # the job is running (about 1 s of rate-limited input left)
        _attack(WORKER_HOSTS[0], data_ports[WORKER_HOSTS[0]])
        stdout, stderr = submit.communicate(timeout=60)
        assert submit.returncode == 0, stderr.decode()
        job_id = stdout.decode().strip().splitlines()[0]

        expected = Counter(
            w for salt in (1, 2) for i in range(n) for w in union_count.sentence(i, salt).split()
        )
        got: dict[str, list[int]] = {}
        for word, count in read_jsonl(out):
            got.setdefault(word, []).append(count)
        assert got == {w: list(range(1, c + 1)) for w, c in expected.items()}

        status = json.loads(
            subprocess.run(
                stashflow("status", job_id, "--coordinator", url), capture_output=True, timeout=30, cwd=ROOT
            ).stdout
        )
        assert status["state"] == "finished"
        workers = {m["worker"] for m in status["instances"].values()}
        assert len(workers) == 3, f"instances were not spread over the 3 workers: {workers}"
        worker_log = (logs / f"worker-{WORKER_HOSTS[0]}.log").read_text()
        assert "dropped connection from" in worker_log
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait(timeout=10)
        for f in files:
            f.close()


def _attack(host: str, port: int) -> None:
    """Garbage bytes, an oversized frame and a forged HELLO at a worker's data port."""
    for payload in (b"GET / HTTP/1.1\r\n\r\n", struct.pack(">I", 0x7FFFFFFF) + b"x" * 16):
        with socket.create_connection((host, port), timeout=5) as s:
            s.sendall(payload)
            s.settimeout(5)
            try:
                while s.recv(4096):
                    pass
            except OSError:
                pass


def _env() -> dict[str, str]:
    import os

    return dict(os.environ)
