"""What ``stashflow run`` shows in the terminal (engine/progress.py).

Unit tests render hand-made monitor views (the shape of :meth:`JobMonitor.view`). The end-to-end tests
run the union word count with ``count/1`` killed mid-run through ``python -m engine run``: with stdout
a pseudo-terminal (the live view), a pipe (plain lines) and ``--quiet``, and stop a live run by its
timeout and by Ctrl-C. Processes: the command and its workers, loopback only, killed by pid.
"""

from __future__ import annotations

import fcntl
import io
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from support import ROOT

from engine.progress import (
    ProgressView,
    SourceBar,
    SourceRates,
    eta_s,
    event_line,
    human,
    human_duration,
    job_start,
    plain_line,
    render,
    state_summary,
    step_rows,
)

# -- hand-made views ----------------------------------------------------------------------------------


def inst(step: str, index: int, kind: str, state: str = "running", **extra: Any) -> dict[str, Any]:
    return {
        "step": step,
        "index": index,
        "task": f"{step}/{index}",
        "kind": kind,
        "state": state,
        "in_per_s": 0.0,
        "out_per_s": 0.0,
        "backpressure": 0.0,
        "records_in": 0,
        "records_out": 0,
        **extra,
    }


def make_view(t: float = 1000.0, **over: Any) -> dict[str, Any]:
    view: dict[str, Any] = {
        "job": "union_count-abc123",
        "name": "union_count",
        "state": "running",
        "ft": "lineage",
        "elapsed_s": 4.0,
        "source_records": 10000,
        "source_per_s": 2500.0,
        "sink_per_s": 2400.0,
        "graph": [
            {"task": "left", "steps": [{"name": "left", "kind": "source"}]},
            {
                "task": "count",
                "steps": [{"name": "count", "kind": "count"}, {"name": "write", "kind": "sink"}],
            },
        ],
        "instances": {
            "left/0": inst("left", 0, "source", out_per_s=1250.0, records_out=5000, progress=[5000, 10000]),
            "left/1": inst("left", 1, "source", out_per_s=1250.0, records_out=5000, progress=[5000, 10000]),
            "count/0": inst(
                "count",
                0,
                "count",
                in_per_s=1200.0,
                out_per_s=1200.0,
                records_in=4800,
                records_out=4800,
                backpressure=0.25,
            ),
            "count/1": inst("count", 1, "count", state="recovering", records_in=100, records_out=100),
            "write/0": inst("write", 0, "sink", in_per_s=1200.0, records_in=4800, task="count/0"),
            "write/1": inst("write", 1, "sink", state="recovering", records_in=100, task="count/1"),
        },
        "events": [
            {"t": 996.0, "kind": "running", "instance": None, "text": "job running"},
            {"t": 998.5, "kind": "killed", "instance": "count/1", "text": "count/1 killed"},
        ],
        "time": t,
    }
    view.update(over)
    return view


def test_human_numbers():
    assert [human(v) for v in (0, 5, 9.96, 999.4, 999.6, 1500, 99_949, 99_951, 1_234_567)] == [
        "0", "5", "10", "999", "1.00k", "1.50k", "99.9k", "100k", "1.23M",
    ]  # fmt: skip
    assert human(-2500) == "-2.50k"
    assert human(3.2e12) == "3.20T" and human(5e15) == "5000T"


def test_human_durations_round_up():
    assert [human_duration(s) for s in (-1, 0.01, 59.5, 60, 60.2, 125, 3600, 3601)] == [
        "0 s", "1 s", "60 s", "60 s", "1 min 01 s", "2 min 05 s", "60 min 00 s", "1 h 01 min",
    ]  # fmt: skip


def test_eta_is_what_is_left_over_the_rate():
    assert eta_s(0, 1000, 100.0) == 10.0
    assert eta_s(900, 1000, 25.0) == 4.0
    assert eta_s(1000, 1000, 0.0) == 0.0  # done: no rate needed
    assert eta_s(1200, 1000, None) == 0.0
    assert eta_s(10, 1000, None) is None and eta_s(10, 1000, 0.0) is None and eta_s(10, 1000, -5.0) is None


def test_state_summaries_count_in_a_fixed_order():
    assert state_summary([]) == ""
    assert state_summary(["finished", "running", "failed", "running"]) == "2 running, 1 finished, 1 failed"
    assert state_summary(["recovering", "replaying", "deploying"]) == "1 deploying, 1 replaying, 1 recovering"
    assert state_summary(["odd", "running"]) == "1 running, 1 odd"  # unknown states last


def test_step_rows_sum_the_instances_of_each_step_in_plan_order():
    rows = {r.step: r for r in step_rows(make_view())}
    assert list(rows) == ["left", "count", "write"]
    left, count, write = rows["left"], rows["count"], rows["write"]
    assert (left.instances, left.states, left.records_out, left.out_per_s) == (2, "2 running", 10000, 2500.0)
    assert (count.states, count.records_in, count.in_per_s, count.backpressure) == (
        "1 running, 1 recovering", 4900, 1200.0, 0.25,
    )  # fmt: skip
    assert (write.kind, write.records_in) == ("sink", 4900)


def test_source_bars_sum_progress_and_measure_the_rate_over_a_window():
    rates = SourceRates(window_s=3.0)
    (bar,) = rates.bars(make_view(t=1000.0))
    assert (bar.step, bar.done, bar.total, bar.rate, bar.fraction) == ("left", 10000, 20000, None, 0.5)
    assert bar.eta_s is None  # one sample says nothing about the rate
    view = make_view(t=1002.0)
    for name in ("left/0", "left/1"):
        view["instances"][name]["progress"] = [6000, 10000]
    (bar,) = rates.bars(view)
    assert bar.rate == 1000.0 and bar.eta_s == 8.0  # 8000 left at 2000 in 2 s
    view = make_view(t=1006.0)
    for name in ("left/0", "left/1"):
        view["instances"][name]["progress"] = [9000, 10000]
    (bar,) = rates.bars(view)
    assert bar.rate == 1500.0  # (18000 - 12000) / 4 s: the t=1000 sample left the 3 s window
    # an instance restarted from its checkpoint re-reads: progress goes back, the rate is measured anew
    view = make_view(t=1007.0)
    view["instances"]["left/0"]["progress"] = [9000, 10000]
    view["instances"]["left/1"]["progress"] = [2000, 10000]
    (bar,) = rates.bars(view)
    assert (bar.done, bar.rate, bar.eta_s) == (11000, None, None)


def test_unbounded_sources_and_empty_ones_get_no_eta_trouble():
    view = make_view()
    for name in ("left/0", "left/1"):
        del view["instances"][name]["progress"]
    assert SourceRates().bars(view) == []
    empty = SourceBar("s", 0, 0, None)
    assert empty.fraction == 1.0 and empty.eta_s == 0.0


def test_event_lines_are_timed_from_the_job_start():
    view = make_view()
    assert job_start(view) == 996.0
    assert event_line(view["events"][1], job_start(view)) == "stashflow: [2.50 s] count/1 killed"
    assert event_line(view["events"][0], 996.003) == "stashflow: [0.00 s] job running"  # never -0.00
    assert event_line(view["events"][0], 997.5) == "stashflow: [-1.50 s] job running"
    # before the job runs there is no running event: elapsed_s counts from the submission
    assert job_start(make_view(events=[], time=50.0, elapsed_s=1.5)) == 48.5
    timed_out = {"t": 45.0, "kind": "failed", "instance": None, "text": "job failed: timed out"}
    assert job_start(make_view(state="failed", events=[timed_out], time=50.0, elapsed_s=3.0)) == 42.0


def test_plain_line_has_the_rates_the_bars_and_the_states():
    view = make_view()
    line = plain_line(view, [SourceBar("left", 10000, 20000, 2000.0)])
    assert line == (
        "stashflow: [4.0 s] running: source 2.50k records/s, sink 2.40k records/s; left 50% ETA 5 s; "
        "3 running, 1 recovering"
    )
    assert "left 100% done" in plain_line(view, [SourceBar("left", 5, 5, None)])
    assert "left 10% ETA -" in plain_line(view, [SourceBar("left", 1, 10, 0.0)])


def test_the_live_area_renders_steps_bars_and_the_job_line():
    console = Console(file=io.StringIO(), width=130, record=True, color_system=None)
    console.print(render(make_view(), [SourceBar("left", 10000, 20000, 2000.0)], "http://127.0.0.1:8081/"))
    text = console.export_text()
    for needle in ("step", "in/s", "backpr.", "left", "count", "write", "1 running, 1 recovering", "4.90k",
                   "25%", "10.0k/20.0k", "50% ETA 5 s", "━", "union_count running", "4.0 s",
                   "source 2.50k records/s", "sink 2.40k records/s", "--ft lineage",
                   "dashboard http://127.0.0.1:8081/"):  # fmt: skip
        assert needle in text, (needle, text)


def test_the_live_area_of_an_ended_job_shows_totals_not_the_last_rates():
    console = Console(file=io.StringIO(), width=130, record=True, color_system=None)
    view = make_view(state="finished", elapsed_s=2.5, source_records=20000)
    console.print(render(view, [SourceBar("left", 20000, 20000, 0.0)]))
    text = console.export_text()
    assert "union_count finished  2.5 s  20.0k source records, 8.00k/s  --ft lineage" in text, text
    assert "100% done" in text and "records/s" not in text and "dashboard" not in text
    count_row = next(line for line in text.splitlines() if line.startswith("count"))
    assert count_row.split()[-3:] == ["-", "-", "25%"]


def test_plain_view_prints_each_event_once_and_progress_lines_when_due():
    err = io.StringIO()
    view = ProgressView("plain", interval_s=3600.0, err=err)
    view.update(make_view())  # not started: nothing
    assert err.getvalue() == ""
    view.start()
    view.update(make_view())
    view.update(make_view(t=1000.5))
    assert err.getvalue().splitlines() == [
        "stashflow: [0.00 s] job running",
        "stashflow: [2.50 s] count/1 killed",
    ]
    view.interval_s = 1e-6
    view._next_line_at = 0.0
    later = make_view(t=1001.0)
    later["events"] = [*later["events"], {"t": 1000.9, "kind": "live", "instance": "count/1", "text": "back"}]
    view.update(later)
    lines = err.getvalue().splitlines()
    assert lines[2] == "stashflow: [4.90 s] back" and lines[3].startswith(
        "stashflow: [4.0 s] running: source"
    )
    view.stop(make_view(state="finished", t=1002.0))  # a finished job gets no progress line
    view.stop(make_view(t=1003.0))  # a second stop does nothing
    assert len(err.getvalue().splitlines()) == 4


def test_progress_view_rejects_bad_settings():
    with pytest.raises(ValueError, match="mode must be 'live' or 'plain', got 'fancy'"):
        ProgressView("fancy")
    with pytest.raises(ValueError, match="interval_s must be > 0, got 0"):
        ProgressView("plain", interval_s=0)


# -- stashflow run, end to end ------------------------------------------------------------------------

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def run_args(tmp_path: Path, *extra: str, sentences: int = 6000, rate: int = 3000) -> list[str]:
    """The union word count, two bounded rate-limited sources of ``sentences`` (~2 s), count/1 killed."""
    return [
        sys.executable, "-m", "engine", "run", "jobs/union_count.py", "--parallelism", "2",
        "-P", f"sentences={sentences}", "-P", f"rate={rate}", "-P", f"output={tmp_path / 'out'}",
        "--no-dashboard", "--timeout", "60", *extra,
    ]  # fmt: skip


def run_in_pty(
    args: list[str],
    timeout: float = 40.0,
    on_output: Callable[[str, subprocess.Popen[bytes]], None] | None = None,
) -> tuple[int, str]:
    """Run ``args`` with stdout and stderr a 140x40 pseudo-terminal; return its exit code and output."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 140, 0, 0))
    env = {**os.environ, "TERM": "xterm-256color"}
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave, cwd=ROOT, env=env)
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.1)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: nobody holds the terminal any more
                    break
                if not data:
                    break
                chunks.append(data)
                if on_output is not None:
                    on_output(b"".join(chunks).decode("utf-8", "replace"), proc)
        else:
            raise AssertionError(f"stashflow run did not end within {timeout} s")
        return proc.wait(timeout=10), b"".join(chunks).decode("utf-8", "replace")
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def plain(output: str) -> str:
    return ANSI.sub("", output).replace("\r", "")


def test_live_view_in_a_terminal_shows_steps_rates_bars_recoveries_and_the_summary(tmp_path):
    code, out = run_in_pty(run_args(tmp_path, "--kill", "count/1@1.2", "--log-level", "INFO"))
    text = plain(out)
    assert code == 0, text[-3000:]
    assert re.search(r"\x1b\[\d*A", out), "the live area is redrawn in place (cursor up)"
    # the log lines of the command and its workers (other processes) come out whole, each at the
    # start of a line: before the live area, or above it (after the escape codes that erase it)
    logged = list(re.finditer(r"\d{4}-\d\d-\d\dT[\d:.]+Z INFO \w+ pid=(\d+)[^\r\n]*", out))
    assert len({m.group(1) for m in logged}) >= 3, [m.group() for m in logged]
    for m in logged:
        before = out[max(0, m.start() - 12) : m.start()]
        assert "\x1b" not in m.group() and re.search(r"(\n|\x1b\[[0-9;?]*[A-Za-z])$", before), repr(before)
    assert out.count("\x1b[?25l") >= 1 and out.rfind("\x1b[?25h") > out.rfind("\x1b[?25l"), (
        "cursor shown again"
    )
    for step in ("left", "right", "merge", "split", "count", "write"):
        assert re.search(rf"^\s*{step}\s+2\s", text, re.M), step
    assert re.search(r"source \d[\d.]*k records/s", text)
    assert re.search(r"^left\s+━.*\d+% ETA \d+ s", text, re.M), text
    assert re.search(r"^right\s+.*100% done", text, re.M)
    assert re.search(r"\[\d+\.\d\d s\] count/1 killed", text)
    assert re.search(r"\[\d+\.\d\d s\] count/1 lost", text)
    assert re.search(r"\[\d+\.\d\d s\] count/1 live again [\d.]+ s after the failure", text)
    lines = text.strip().splitlines()
    assert "stashflow: instance count/1 recovered alone (restart 1" in text
    assert re.match(r"stashflow: job union_count-\w+ finished in [\d.]+ s, 12000 source records", lines[-1])
    # the summary comes after the live area's last drawing, which shows the job finished
    assert text.rfind("union_count finished") < text.rfind("recovered alone")


def test_plain_lines_when_stdout_is_a_pipe(tmp_path):
    proc = subprocess.run(
        run_args(tmp_path, "--kill", "count/1@1.2", "--progress-interval", "0.5"),
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "\x1b[" not in proc.stdout + proc.stderr
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert any(re.fullmatch(r"stashflow: \[\d+\.\d\d s\] count/1 killed", line) for line in lines)
    assert any(re.match(r"stashflow: \[\d+\.\d\d s\] count/1 live again", line) for line in lines)
    progress = [line for line in lines if re.match(r"stashflow: \[\d+\.\d s\] running: source", line)]
    assert progress, proc.stderr
    assert any(re.search(r"; left \d+% (ETA \d+ s|ETA -|done); right", line) for line in progress)
    assert lines[-1].startswith("stashflow: job union_count-") and "finished in" in lines[-1]


def test_quiet_prints_only_the_final_summary(tmp_path):
    proc = subprocess.run(
        run_args(tmp_path, "--kill", "count/1@1.2", "--quiet"),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 2, proc.stderr  # no start lines, events, progress, --kill line nor warnings
    assert lines[0].startswith("stashflow: instance count/1 recovered alone (restart 1")
    assert re.match(r"stashflow: job union_count-\w+ finished in", lines[1])


def test_live_view_stops_cleanly_on_timeout(tmp_path):
    args = run_args(tmp_path, sentences=100_000, rate=2000)
    args[args.index("--timeout") + 1] = "3"
    code, out = run_in_pty(args)
    text = plain(out)
    assert code == 1, text[-3000:]
    assert out.rfind("\x1b[?25h") > out.rfind("\x1b[?25l")
    assert re.search(r"\[\d+\.\d\d s\] job failed: timed out after 3.0 s \(--timeout\)", text), text
    lines = text.strip().splitlines()
    # the live area's last drawing shows the job failed (deploying or running when the time was up)
    assert re.match(r"union_count failed  [\d.]+ s  \d", lines[-2]), lines[-2]
    assert lines[-1].endswith("failed: timed out after 3.0 s (--timeout)")


def test_live_view_stops_cleanly_on_ctrl_c(tmp_path):
    sent: list[bool] = []

    def interrupt_once_drawn(output: str, proc: subprocess.Popen[bytes]) -> None:
        if not sent and "ETA" in output:
            sent.append(True)
            os.kill(proc.pid, signal.SIGINT)  # only the command: its workers are stopped by it

    code, out = run_in_pty(run_args(tmp_path, sentences=100_000, rate=2000), on_output=interrupt_once_drawn)
    text = plain(out)
    assert sent and code == 130, text
    assert out.rfind("\x1b[?25h") > out.rfind("\x1b[?25l")
    last = text.strip().splitlines()[-1]
    assert re.fullmatch(
        r"stashflow: error: interrupted \(Ctrl-C\): job union_count-\w+ canceled, its workers stopped", last
    )
