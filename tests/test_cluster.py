"""The cluster topology of docker-compose.yml, as local processes on distinct loopback addresses.

A coordinator on 127.0.0.1 and three workers on 127.0.0.2-4 (each its own address, as containers
would have), jobs submitted with ``stashflow submit``, instances spread over the workers. A stray
client sending garbage to a worker's data port must not harm a running job; a worker that dies
(killed, or frozen and so silent past the heartbeat timeout) loses its instances, which recover alone
on the surviving workers. Every process is started here, bounded in time and killed by pid.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import pytest
import union_count
from support import ROOT, read_jsonl

WORKER_HOSTS = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
TOKEN = "cluster-test-token"


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


pytestmark = pytest.mark.skipif(
    not loopback_alias_works(), reason="127.0.0.2 is not bindable on this machine"
)


def stashflow(*args: str) -> list[str]:
    return [sys.executable, "-m", "engine", *args]


@dataclass
class Cluster:
    url: str
    logs: Path
    data_ports: dict[str, int]
    workers: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    #: the submits started: one a failed test left running is killed with the cluster
    submits: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def submit(self, out: Path, n: int, rate: int, *extra: str) -> subprocess.Popen[bytes]:
        args = [
            "submit",
            "jobs/union_count.py",
            "--coordinator",
            self.url,
            "--token",
            TOKEN,
            "--parallelism",
            "3",
        ]
        args += [
            "-P",
            f"sentences={n}",
            "-P",
            f"output={out}",
            "-P",
            f"rate={rate}",
            "--checkpoint-interval",
            "0.5",
            *extra,
        ]
        proc = subprocess.Popen(stashflow(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
        self.submits.append(proc)
        return proc

    def wait_running(self, submit: subprocess.Popen[bytes], timeout: float = 60) -> str:
        """The id of the job ``submit`` sent, once it runs (its instances deployed and started)."""
        assert submit.stdout is not None
        job_id = submit.stdout.readline().decode().strip()  # printed at once, before it waits for the end
        assert job_id, f"submit printed no job id: {submit.communicate(timeout=30)[1].decode()[-2000:]}"
        deadline = time.monotonic() + timeout
        while (state := self.state(job_id)) == "deploying" and time.monotonic() < deadline:
            time.sleep(0.02)
        assert state == "running", f"job {job_id} is {state}"
        return job_id

    def state(self, job_id: str) -> str:
        """The job's state, straight from the API (``stashflow status`` takes a second to start)."""
        req = urllib.request.Request(
            f"{self.url}/jobs/{job_id}", headers={"Authorization": f"Bearer {TOKEN}"}
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.load(resp)["state"]

    def status(self, job_id: str) -> dict:
        proc = subprocess.run(
            stashflow("status", job_id, "--coordinator", self.url, "--token", TOKEN),
            capture_output=True,
            timeout=30,
            cwd=ROOT,
        )
        return json.loads(proc.stdout)


def wait_workers(url: str, count: int, deadline: float) -> None:
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "/health", timeout=1) as resp:
                if json.load(resp)["workers"] == count:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"coordinator at {url} did not see {count} workers in time")


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    port = free_port("127.0.0.1")
    c = Cluster(f"http://127.0.0.1:{port}", tmp_path / "logs", {h: free_port(h) for h in WORKER_HOSTS})
    c.logs.mkdir()
    files: list[IO[bytes]] = []
    procs: list[subprocess.Popen[bytes]] = []

    def log_file(name: str) -> IO[bytes]:
        f = open(c.logs / name, "wb")  # noqa: SIM115 - closed below
        files.append(f)
        return f

    try:
        procs.append(
            subprocess.Popen(
                stashflow(
                    "coordinator",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                    "--heartbeat-timeout",
                    "1.5",
                    "--token",
                    TOKEN,
                ),
                stdout=subprocess.DEVNULL,
                stderr=log_file("coordinator.log"),
                cwd=ROOT,
            )
        )
        for host in WORKER_HOSTS:
            proc = subprocess.Popen(
                stashflow("worker", "--host", host, "--data-port", str(c.data_ports[host]), "--slots", "6"),
                # the env var forms of --coordinator, --data-dir and --token
                env={
                    **os.environ,
                    "STASHFLOW_COORDINATOR": c.url,
                    "STASHFLOW_DATA_DIR": str(tmp_path / "data"),
                    "STASHFLOW_TOKEN": TOKEN,
                },
                stdout=subprocess.DEVNULL,
                stderr=log_file(f"worker-{host}.log"),
                cwd=ROOT,
            )
            c.workers[host] = proc
            procs.append(proc)
        wait_workers(c.url, len(WORKER_HOSTS), time.monotonic() + 30)
        yield c
    finally:
        for p in c.submits:
            if p.poll() is None:
                p.kill()
            p.communicate(timeout=10)  # and close its pipes
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGCONT)  # a frozen worker must be able to die
                p.kill()
        for p in procs:
            p.wait(timeout=10)
        for f in files:
            f.close()


def check_output(out: Path, n: int) -> None:
    expected = Counter(w for salt in (1, 2) for i in range(n) for w in union_count.sentence(i, salt).split())
    got: dict[str, list[int]] = {}
    for word, count in read_jsonl(out):
        got.setdefault(word, []).append(count)
    assert {w: sorted(c) for w, c in got.items()} == {w: list(range(1, c + 1)) for w, c in expected.items()}


def test_instances_spread_over_three_workers_and_strays_are_dropped(cluster: Cluster, tmp_path: Path):
    out, n = tmp_path / "out", 4000
    submit = cluster.submit(out, n, rate=8000)
    time.sleep(1.0)  # the job is running (about 1 s of rate-limited input left)
    _attack(WORKER_HOSTS[0], cluster.data_ports[WORKER_HOSTS[0]])
    stdout, stderr = submit.communicate(timeout=60)
    assert submit.returncode == 0, stderr.decode()
    job_id = stdout.decode().strip().splitlines()[0]
    check_output(out, n)
    status = cluster.status(job_id)
    assert status["state"] == "finished"
    workers = {m["worker"] for m in status["instances"].values()}
    assert len(workers) == 3, f"instances were not spread over the 3 workers: {workers}"
    assert "dropped connection from" in (cluster.logs / f"worker-{WORKER_HOSTS[0]}.log").read_text()
    # the job is over: its checkpoints leave the shared data directory (the workers remove them)
    job_dir = tmp_path / "data" / job_id
    deadline = time.monotonic() + 10
    while job_dir.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not job_dir.exists(), sorted(p.name for p in job_dir.iterdir())


@pytest.mark.parametrize("how", ["killed", "frozen"])
def test_a_dead_worker_s_instances_recover_on_the_others(cluster: Cluster, tmp_path: Path, how: str):
    out, n = tmp_path / "out", 12000
    submit = cluster.submit(out, n, rate=6000)  # ~2 s of input
    job_id = cluster.wait_running(submit)
    time.sleep(0.2)
    victim = cluster.workers[WORKER_HOSTS[1]]
    victim.send_signal(signal.SIGKILL if how == "killed" else signal.SIGSTOP)
    _, stderr = submit.communicate(timeout=90)
    assert submit.returncode == 0, stderr.decode()[-3000:]
    check_output(out, n)
    status = cluster.status(job_id)
    restarted = {m["task"] for m in status["instances"].values() if m["restarts"]}
    assert restarted, "the dead worker hosted no instance"
    assert "recovered alone" in stderr.decode()
    if how == "frozen":
        assert "declaring it dead" in (cluster.logs / "coordinator.log").read_text()


def test_a_dead_worker_is_one_global_rollback_under_checkpoint_mode(cluster: Cluster, tmp_path: Path):
    """The worker hosted several instances: their losses are one rollback of every instance, not several."""
    out, n = tmp_path / "out", 12000
    submit = cluster.submit(out, n, 6000, "--ft", "checkpoint")
    job_id = cluster.wait_running(submit)
    time.sleep(0.5)
    cluster.workers[WORKER_HOSTS[2]].send_signal(signal.SIGKILL)
    _, stderr = submit.communicate(timeout=90)
    assert submit.returncode == 0, stderr.decode()[-3000:]
    check_output(out, n)
    status = cluster.status(job_id)
    assert {m["restarts"] for m in status["instances"].values()} == {1}, stderr.decode()[-2000:]


def _attack(host: str, port: int) -> None:
    """Garbage bytes and an oversized frame at a worker's data port."""
    for payload in (b"GET / HTTP/1.1\r\n\r\n", struct.pack(">I", 0x7FFFFFFF) + b"x" * 16):
        with socket.create_connection((host, port), timeout=5) as s:
            s.sendall(payload)
            s.settimeout(5)
            try:
                while s.recv(4096):
                    pass
            except OSError:
                pass
