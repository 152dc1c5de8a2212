"""What the benchmarks share: running bounded groups of processes, picking loopback ports, summaries.

Every process a benchmark starts gets its own session (``start_new_session``), so the benchmark can
end it *and the processes it started in turn* (engine workers, Bytewax peers) by that one process
group id, and never touches anything else. Every run has a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import resource
import signal
import socket
import statistics
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "REPO",
    "Finished",
    "GroupFailed",
    "OtherWork",
    "cpu_busy",
    "free_loopback_port",
    "kill_group",
    "machine_info",
    "run_group",
    "start",
    "summarize",
    "supervise",
    "tail",
    "wait_until_quiet",
    "write_json",
]

REPO = Path(__file__).resolve().parent.parent
LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class Finished:
    """A process that ran to its end: its exit status, output and wall time since the group started."""

    argv: Sequence[str]
    returncode: int
    stdout: str
    stderr: str
    elapsed_s: float


class GroupFailed(Exception):
    """A process of a group failed or the group missed its deadline; ``finished`` has every process's output."""

    def __init__(self, message: str, finished: list[Finished]):
        super().__init__(message)
        self.finished = finished


def tail(text: str, lines: int = 15) -> str:
    """The last ``lines`` lines of ``text``, for error reports."""
    return "\n".join(text.rstrip().splitlines()[-lines:])


def free_loopback_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for programs that cannot take port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


async def start(
    argv: Sequence[str], *, cwd: Path = REPO, env: Mapping[str, str] | None = None
) -> asyncio.subprocess.Process:
    """Start ``argv`` in a session of its own, with piped stdout/stderr and no stdin."""
    return await asyncio.create_subprocess_exec(
        *argv,
        cwd=cwd,
        env=None if env is None else {**os.environ, **env},
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )


def kill_group(proc: asyncio.subprocess.Process) -> None:
    """SIGKILL the process group of ``proc``, a process this module started as a session leader.

    Also after ``proc`` has exited: its children may live on (an engine worker orphaned by a crashed
    coordinator) and still belong to the group. Linux does not reuse a pid as long as a group with
    that id exists, so the id cannot name anyone else's processes.
    """
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


async def run_group(
    commands: Sequence[Sequence[str]],
    *,
    timeout: float,
    cwd: Path = REPO,
    env: Mapping[str, str] | None = None,
) -> list[Finished]:
    """Start all ``commands`` at once and wait until every one has exited.

    Returns their results when all exited with status 0. Raises :class:`GroupFailed` when one exits
    non-zero (its peers are killed at once: they may wait forever for it) or when ``timeout`` seconds
    pass first (all are killed).
    """
    started = time.perf_counter()
    procs: list[asyncio.subprocess.Process] = []
    try:
        for argv in commands:
            procs.append(await start(argv, cwd=cwd, env=env))
    except BaseException:
        for proc in procs:
            kill_group(proc)
        raise
    return await supervise(procs, commands, timeout=timeout, started=started)


async def supervise(
    procs: Sequence[asyncio.subprocess.Process],
    commands: Sequence[Sequence[str]],
    *,
    timeout: float,
    started: float,
) -> list[Finished]:
    """Wait for ``procs`` (started from ``commands`` by :func:`start`) as :func:`run_group` does.

    ``started`` is the ``time.perf_counter()`` the elapsed times count from. Output a caller already
    read from a process's stdout is not in its :class:`Finished`.
    """

    async def collect(proc: asyncio.subprocess.Process) -> tuple[bytes, bytes, float]:
        out, err = await proc.communicate()
        return out, err, time.perf_counter() - started

    tasks = [asyncio.create_task(collect(proc)) for proc in procs]
    problem = None
    try:
        async with asyncio.timeout(timeout):
            pending: set[asyncio.Task[tuple[bytes, bytes, float]]] = set(tasks)
            while pending and problem is None:
                _, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                failed = [p for p in procs if p.returncode not in (None, 0)]
                if failed:
                    problem = f"{' '.join(commands[procs.index(failed[0])])!r} exited with status {failed[0].returncode}"
    except TimeoutError:
        problem = f"did not finish within {timeout:g} s; killed"
    finally:
        for proc in procs:
            kill_group(proc)
        results = await asyncio.gather(*tasks, return_exceptions=True)
    finished = []
    for argv, proc, result in zip(commands, procs, results, strict=True):
        out, err, elapsed = result if isinstance(result, tuple) else (b"", str(result).encode(), float("nan"))
        code = proc.returncode if proc.returncode is not None else -signal.SIGKILL
        finished.append(
            Finished(argv, code, out.decode(errors="replace"), err.decode(errors="replace"), elapsed)
        )
    if problem is not None:
        raise GroupFailed(problem, finished)
    return finished


def summarize(values: Sequence[float]) -> dict[str, float] | None:
    """Median, min and max of per-round values (``None`` when there are none)."""
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


#: A 1-minute load average above this when a benchmark starts means others are using the CPUs.
BUSY_LOAD = 0.5


def _cpu_jiffies() -> tuple[int, int] | None:
    """(busy, total) CPU time of the whole machine so far, from /proc/stat; None where there is none."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


class OtherWork:
    """Measures how much CPU time processes *other than ours* used while a measurement ran.

    ``with OtherWork() as other: ...`` then ``other.cpu_s``: the machine's busy CPU time over the
    block (from /proc/stat) less what this process and its waited-for descendants used (getrusage).
    On a 2-core machine a figure taken while others used a good part of a core is not one to quote.
    ``None`` where /proc/stat is missing. Resolution: one clock tick (10 ms).

    ``own_cpu_s`` is the other half: the CPU time this process and its waited-for descendants used
    over the block (processes reaped by a child that was itself reaped count; orphans do not). For a
    block that runs one measured command it is that command's CPU cost, which other work on the
    machine disturbs much less than the wall time.
    """

    def __init__(self) -> None:
        self.cpu_s: float | None = None
        self.own_cpu_s: float | None = None

    @staticmethod
    def _ours() -> float:
        own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime

    def __enter__(self) -> OtherWork:
        self._jiffies = _cpu_jiffies()
        self._ours_before = self._ours()
        return self

    def __exit__(self, *exc_info: object) -> None:
        after = _cpu_jiffies()
        ours = self._ours() - self._ours_before
        self.own_cpu_s = round(ours, 2)
        if self._jiffies is None or after is None:
            return
        busy_s = (after[0] - self._jiffies[0]) / os.sysconf("SC_CLK_TCK")
        self.cpu_s = round(max(0.0, busy_s - ours), 2)


async def cpu_busy(window: float = 0.5) -> float | None:
    """The fraction of all CPUs' time spent busy over the next ``window`` seconds (None: unknown)."""
    before = _cpu_jiffies()
    await asyncio.sleep(window)
    after = _cpu_jiffies()
    if before is None or after is None or after[1] == before[1]:
        return None
    return (after[0] - before[0]) / (after[1] - before[1])


async def wait_until_quiet(limit_s: float, threshold: float = 0.1) -> float | None:
    """Wait, at most ``limit_s`` seconds, until the CPUs are less than ``threshold`` busy.

    Other work on a 2-core machine halves a benchmark's figures. Returns the last busy fraction
    measured, so reports can say how busy the machine was when a round started; warns when the
    machine stayed busy.
    """
    deadline = time.monotonic() + limit_s
    busy = await cpu_busy()
    while busy is not None and busy >= threshold and time.monotonic() < deadline:
        busy = await cpu_busy(1.0)
    if busy is not None and busy >= threshold:
        print(f"warning: the CPUs are {busy:.0%} busy with other work; going ahead anyway", file=sys.stderr)
    return busy


def machine_info() -> dict[str, Any]:
    """What the figures were measured on, including how busy the machine was when they started."""
    info: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg_at_start": os.getloadavg(),
    }
    if info["loadavg_at_start"][0] > BUSY_LOAD:
        print(
            f"warning: load average {info['loadavg_at_start'][0]:.2f} before the start: other processes are "
            "using the CPUs, so the figures will be low and noisy",
            file=sys.stderr,
        )
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    return info


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")
    print(f"wrote {path}", file=sys.stderr)


def read_pairs(out_dir: Path, error: type[Exception]) -> Iterator[tuple[Any, Any]]:
    """Every ``[a, b]`` line of a FileSink directory's ``part-*.jsonl`` files, parts in name order.

    Raises ``error`` naming the file and line for a line that is not a JSON pair, and when there is
    no part file at all.
    """
    parts = sorted(out_dir.glob("part-*.jsonl"))
    if not parts:
        raise error(f"no part-*.jsonl files in {out_dir}")
    for part in parts:
        with part.open(encoding="utf-8") as lines:
            for number, line in enumerate(lines, 1):
                try:
                    a, b = json.loads(line)
                except ValueError as exc:
                    raise error(
                        f"{part}:{number}: expected a JSON [key, value] pair, got {line[:80]!r}"
                    ) from exc
                yield a, b
