"""Stack dumps on a signal (engine.diagnostics): ``kill -USR1`` lists a process's asyncio tasks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from support import ROOT


def wait_for_handler(pid: int, signum: int, timeout: float = 60.0) -> None:
    """Wait until process ``pid`` catches ``signum`` (its SigCgt mask in /proc), e.g. after its imports."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open(f"/proc/{pid}/status") as status:
            caught = next(int(line.split()[1], 16) for line in status if line.startswith("SigCgt:"))
        if caught & (1 << (signum - 1)):
            return
        time.sleep(0.05)
    raise AssertionError(f"process {pid} did not install a handler for signal {signum} in {timeout} s")


def test_sigusr1_makes_a_worker_print_its_tasks_and_go_on() -> None:
    # a worker whose coordinator is not there yet: it keeps retrying, its loop alive
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "engine",
            "worker",
            "--coordinator",
            "http://127.0.0.1:9",
            "--connect-timeout",
            "20",
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for_handler(proc.pid, signal.SIGUSR1)  # sent earlier, SIGUSR1 would end the process
        os.kill(proc.pid, signal.SIGUSR1)
        time.sleep(1.0)
        assert proc.poll() is None  # a dump does not stop the process
        os.kill(proc.pid, signal.SIGUSR2)
        time.sleep(0.5)
        assert proc.poll() is None
    finally:
        proc.kill()
        _, err = proc.communicate(timeout=10)
    assert "asyncio tasks ---" in err, err
    assert "Worker.run" in err or "_connect" in err, err  # the task's stack names where it waits
    assert "Current thread" in err or "Thread 0x" in err, err  # SIGUSR2: faulthandler's thread stacks
