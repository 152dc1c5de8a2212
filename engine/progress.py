"""What ``stashflow run`` shows in the terminal while its job runs.

``stashflow run`` hosts the coordinator in its own process, so the view reads the job monitor directly
(:meth:`engine.monitor.JobMonitor.view`, no HTTP) after every sample of it (0.5 s). Modes:

* ``live``, when stdout is an interactive terminal: a rich ``Live`` area redrawn in place, with a table
  of the steps (instances and their states, records in and out, records/s, backpressure), a bar per
  bounded source step (its instances' progress summed) with the percentage and an ETA, and the job
  line (elapsed time, source and sink records/s, ``--ft`` mode, the dashboard's address). Recoveries
  and job state changes are printed above the area as they happen, one line each.
* ``plain``, when stdout is a pipe or a file: the same event lines on stderr as they happen, and one
  progress line every ``interval_s`` seconds.

(``--quiet`` shows no view at all: the command prints only errors and the final summary.)

Why a live view captures what the workers write. A live area is redrawn by moving the cursor up
over the lines drawn last time. The workers are other processes writing log lines to the same
terminal (on stderr; on stdout too when a job prints): a line written between two redraws shifts the
area, and the next redraw overwrites the wrong lines. Keeping the view on stdout and the logs on
stderr does not help when both are the same terminal, and rich's own redirection only reaches this
process's ``sys.stdout``. So while the view is live, file descriptors 1 and 2 of this process (2
only when it is a terminal: a log file stays a log file) point at a pipe that every worker it
starts inherits, and a thread prints what comes out of it through the view's console, above the
live area, whole lines at a time; this process's own log lines take the same path. The view writes
to a duplicate of the original stdout. Both descriptors are restored when the view stops, which
``stashflow run`` does after its workers have exited.
"""

from __future__ import annotations

import math
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any

from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from engine.job_run import TERMINAL

if TYPE_CHECKING:
    from engine.monitor import JobMonitor

__all__ = [
    "ProgressView",
    "SourceBar",
    "SourceRates",
    "StepRow",
    "eta_s",
    "event_line",
    "human",
    "human_duration",
    "plain_line",
    "render",
    "state_summary",
    "stdout_is_live",
    "step_rows",
]

#: how instance states are listed in a summary: the healthy ones first, then what needs attention
STATE_ORDER = ("deploying", "running", "replaying", "recovering", "finished", "failed", "unknown")

_STATE_STYLE = {"replaying": "yellow", "recovering": "yellow", "failed": "bold red", "finished": "green"}
_EVENT_STYLE = {
    "killed": "red",
    "detected": "yellow",
    "deployed": "yellow",
    "live": "green",
    "finished": "green",
    "failed": "bold red",
    "canceled": "red",
}


# -- numbers ------------------------------------------------------------------------------------------


def human(value: float) -> str:
    """Three significant digits and a metric suffix.

    >>> [human(v) for v in (0, 7.5, 999, 1000, 12345, 123456, 999_999, 2.5e9)]
    ['0', '7.5', '999', '1.00k', '12.3k', '123k', '1.00M', '2.50G']
    """
    sign = "-" if value < 0 else ""
    v = abs(float(value))
    if v < 999.5:
        if v < 9.95 and v != int(v):
            return f"{sign}{v:.1f}"
        return f"{sign}{v:.0f}"
    for suffix in ("k", "M", "G", "T"):
        v /= 1000.0
        # the digits are chosen after rounding: 999.96k is shown as 1.00M, not as 1000k
        for digits, limit in ((2, 9.995), (1, 99.95), (0, 999.5)):
            if v < limit:
                return f"{sign}{v:.{digits}f}{suffix}"
    return f"{sign}{v:.0f}T"


def human_duration(seconds: float) -> str:
    """A duration rounded up to what a reader of an ETA needs.

    >>> [human_duration(s) for s in (0, 0.2, 59.1, 61, 3599, 7322)]
    ['0 s', '1 s', '60 s', '1 min 01 s', '59 min 59 s', '2 h 03 min']
    """
    s = math.ceil(max(0.0, seconds))
    if s <= 60:
        return f"{s} s"
    if s <= 3600:
        return f"{s // 60} min {s % 60:02d} s"
    m = math.ceil(s / 60)
    return f"{m // 60} h {m % 60:02d} min"


def eta_s(done: int, total: int, rate: float | None) -> float | None:
    """Seconds until ``done`` reaches ``total`` at ``rate`` units/s; None when the rate says nothing.

    >>> eta_s(250, 1000, 50.0), eta_s(1000, 1000, None), eta_s(10, 1000, 0.0)
    (15.0, 0.0, None)
    """
    if done >= total:
        return 0.0
    if rate is None or rate <= 0:
        return None
    return (total - done) / rate


def state_summary(states: Iterable[str]) -> str:
    """How many instances are in each state, in :data:`STATE_ORDER`.

    >>> state_summary(["running", "recovering", "running"])
    '2 running, 1 recovering'
    """
    counts: dict[str, int] = {}
    for s in states:
        counts[s] = counts.get(s, 0) + 1
    rank = {s: i for i, s in enumerate(STATE_ORDER)}
    ordered = sorted(counts, key=lambda s: (rank.get(s, len(rank)), s))
    return ", ".join(f"{counts[s]} {s}" for s in ordered)


# -- what a view dict says, per step --------------------------------------------------------------------


@dataclass(frozen=True)
class StepRow:
    """One step of a job view: its instances summed."""

    step: str
    kind: str
    instances: int
    states: str
    records_in: int
    records_out: int
    in_per_s: float
    out_per_s: float
    #: the largest share of the last interval one of its instances spent blocked on credit
    backpressure: float


def _steps_in_order(view: dict[str, Any]) -> list[str]:
    """The steps in the plan's order (task by task), then any the graph does not name."""
    order = [s["name"] for task in view.get("graph", ()) for s in task["steps"]]
    for inst in view["instances"].values():
        if inst["step"] not in order:
            order.append(inst["step"])
    return order


def step_rows(view: dict[str, Any]) -> list[StepRow]:
    """A :class:`StepRow` per step of ``view`` (a :meth:`JobMonitor.view`), in the plan's order."""
    by_step: dict[str, list[dict[str, Any]]] = {}
    for inst in view["instances"].values():
        by_step.setdefault(inst["step"], []).append(inst)
    rows = []
    for step in _steps_in_order(view):
        insts = by_step.get(step)
        if not insts:
            continue
        rows.append(
            StepRow(
                step=step,
                kind=insts[0]["kind"],
                instances=len(insts),
                states=state_summary(i["state"] for i in insts),
                records_in=sum(i.get("records_in", 0) for i in insts),
                records_out=sum(i.get("records_out", 0) for i in insts),
                in_per_s=round(sum(i["in_per_s"] for i in insts), 1),
                out_per_s=round(sum(i["out_per_s"] for i in insts), 1),
                backpressure=max(i["backpressure"] for i in insts),
            )
        )
    return rows


@dataclass(frozen=True)
class SourceBar:
    """A bounded source step's progress: its instances' ``(done, total)`` summed, in the reader's unit."""

    step: str
    done: int
    total: int
    #: units per second over the last few seconds; None until two samples are apart
    rate: float | None

    @property
    def fraction(self) -> float:
        return 1.0 if self.total <= 0 else min(1.0, max(0.0, self.done / self.total))

    @property
    def eta_s(self) -> float | None:
        return eta_s(self.done, self.total, self.rate)


@dataclass
class SourceRates:
    """Turns successive views into :class:`SourceBar` s, the rate measured over the last ``window_s``.

    The rate is measured in the progress's own unit (a file source's bytes are not its records), from
    the ``progress`` the source instances report. Progress that went back (an instance restarted
    from a checkpoint re-reads from there) starts the measurement afresh.
    """

    window_s: float = 3.0
    _seen: dict[str, deque[tuple[float, int]]] = field(default_factory=dict)

    def bars(self, view: dict[str, Any]) -> list[SourceBar]:
        now = float(view["time"])
        sums: dict[str, list[int]] = {}
        for inst in view["instances"].values():
            progress = inst.get("progress")
            if inst["kind"] == "source" and progress is not None:
                acc = sums.setdefault(inst["step"], [0, 0])
                acc[0] += int(progress[0])
                acc[1] += int(progress[1])
        bars = []
        for step in _steps_in_order(view):
            if step not in sums:
                continue
            done, total = sums[step]
            seen = self._seen.setdefault(step, deque())
            if seen and (done < seen[-1][1] or now < seen[-1][0]):
                seen.clear()
            if not seen or now > seen[-1][0]:
                seen.append((now, done))
            while len(seen) > 2 and now - seen[1][0] >= self.window_s:
                seen.popleft()
            t0, d0 = seen[0]
            rate = (done - d0) / (now - t0) if now > t0 else None
            bars.append(SourceBar(step, done, total, rate))
        return bars


def job_start(view: dict[str, Any]) -> float:
    """When the job started running (its ``running`` event), for the times of the event lines.

    Before that (or when it never ran), what ``elapsed_s`` counts from: its submission.
    """
    events = view["events"]
    for event in events:
        if event["kind"] == "running":
            return float(event["t"])
    end = float(view["time"])
    if view["state"] in TERMINAL:  # elapsed_s stopped growing when the job ended
        end = next((float(e["t"]) for e in reversed(events) if e["kind"] == view["state"]), end)
    return end - float(view["elapsed_s"])


def event_line(event: dict[str, Any], start: float) -> str:
    """One line per event, timed from the job's start.

    >>> event_line({"t": 12.5, "kind": "live", "instance": "count/1", "text": "count/1 live again"}, 10.0)
    'stashflow: [2.50 s] count/1 live again'
    """
    at = float(event["t"]) - start
    return f"stashflow: [{0.0 if abs(at) < 0.005 else at:.2f} s] {event['text']}"


def _task_states(view: dict[str, Any]) -> list[str]:
    """One state per task instance (chained steps share theirs)."""
    states: dict[str, str] = {}
    for name, inst in view["instances"].items():
        states.setdefault(inst.get("task", name), inst["state"])
    return list(states.values())


def _bar_text(bar: SourceBar) -> str:
    eta = bar.eta_s
    eta_text = "done" if bar.done >= bar.total else "ETA -" if eta is None else f"ETA {human_duration(eta)}"
    return f"{bar.fraction * 100:.0f}% {eta_text}"


def plain_line(view: dict[str, Any], bars: list[SourceBar]) -> str:
    """The periodic progress line of the plain mode.

    >>> v = {"state": "running", "elapsed_s": 5.04, "source_per_s": 4000.0, "sink_per_s": 3900.0,
    ...      "instances": {"a/0": {"task": "a/0", "state": "running"}}}
    >>> plain_line(v, [SourceBar("a", 600, 1000, 100.0)])
    'stashflow: [5.0 s] running: source 4.00k records/s, sink 3.90k records/s; a 60% ETA 4 s; 1 running'
    """
    parts = [
        f"stashflow: [{view['elapsed_s']:.1f} s] {view['state']}: source {human(view['source_per_s'])} "
        f"records/s, sink {human(view['sink_per_s'])} records/s",
        *(f"{b.step} {_bar_text(b)}" for b in bars),
        state_summary(_task_states(view)),
    ]
    return "; ".join(parts)


# -- the live area ------------------------------------------------------------------------------------


def _styled_states(summary: str) -> Text:
    text = Text()
    for i, part in enumerate(summary.split(", ")):
        if i:
            text.append(", ")
        text.append(part, style=_STATE_STYLE.get(part.partition(" ")[2], ""))
    return text


def render(view: dict[str, Any], bars: list[SourceBar], dashboard_url: str | None = None) -> RenderableType:
    """The live area: the steps' table, the source bars and the job line.

    Once the job ended, the rates of its last interval say nothing: the table shows none, and the job
    line the source records and their rate over the whole run.
    """
    ended = view["state"] in TERMINAL
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    table.add_column("step", no_wrap=True)
    table.add_column("inst", justify="right")
    table.add_column("state", no_wrap=True)
    for header in ("in", "out", "in/s", "out/s", "backpr."):
        table.add_column(header, justify="right", no_wrap=True)
    for row in step_rows(view):
        table.add_row(
            row.step,
            str(row.instances),
            _styled_states(row.states),
            "-" if row.kind == "source" else human(row.records_in),
            "-" if row.kind == "sink" else human(row.records_out),
            "-" if row.kind == "source" or ended else human(row.in_per_s),
            "-" if row.kind == "sink" or ended else human(row.out_per_s),
            f"{row.backpressure * 100:.0f}%",
        )
    parts: list[RenderableType] = [table]
    if bars:
        grid = Table.grid(padding=(0, 1))
        for _ in range(4):
            grid.add_column(no_wrap=True)
        for bar in bars:
            grid.add_row(
                bar.step,
                ProgressBar(total=1.0, completed=bar.fraction, width=30),
                f"{human(bar.done)}/{human(bar.total)}",
                _bar_text(bar),
            )
        parts.append(grid)
    state, elapsed = view["state"], view["elapsed_s"]
    if ended:
        average = view["source_records"] / elapsed if elapsed > 0 else 0.0
        rates = f"{human(view['source_records'])} source records, {human(average)}/s"
    else:
        rates = f"source {human(view['source_per_s'])} records/s  sink {human(view['sink_per_s'])} records/s"
    line = Text.assemble(
        (f"{view['name']} ", "bold"),
        (state, _STATE_STYLE.get(state, "cyan")),
        f"  {elapsed:.1f} s  {rates}  --ft {view['ft']}",
    )
    if dashboard_url:
        line.append(f"  dashboard {dashboard_url}")
    parts.append(line)
    return Group(*parts)


def stdout_is_live() -> bool:
    """Whether stdout is an interactive terminal a live area can be redrawn on."""
    return sys.stdout.isatty() and os.environ.get("TERM", "").lower() not in ("dumb", "unknown")


# -- the view -----------------------------------------------------------------------------------------


class ProgressView:
    """Follows one job's :meth:`JobMonitor.view`: ``start()``, then ``update(view)`` (or ``follow``),
    then ``stop(final_view)``. ``mode`` is ``"live"`` or ``"plain"`` (see the module doc); ``err`` is
    where the plain mode writes (default: ``sys.stderr``)."""

    def __init__(
        self,
        mode: str,
        *,
        dashboard_url: str | None = None,
        interval_s: float = 5.0,
        err: IO[str] | None = None,
    ):
        if mode not in ("live", "plain"):
            raise ValueError(f"ProgressView mode must be 'live' or 'plain', got {mode!r}")
        if not interval_s > 0:
            raise ValueError(f"ProgressView interval_s must be > 0, got {interval_s!r}")
        self.mode = mode
        self.dashboard_url = dashboard_url
        self.interval_s = interval_s
        self._err = err
        self._rates = SourceRates()
        self._printed: set[tuple[Any, ...]] = set()
        self._next_line_at = 0.0
        self._console: Console | None = None
        self._live: Live | None = None
        self._capture: _Capture | None = None
        self._terminal: IO[str] | None = None
        self._started = self._stopped = False

    def start(self) -> None:
        """Begin: in live mode, capture the workers' output and draw the (empty) live area."""
        if self._started:
            return
        self._started = True
        self._next_line_at = time.monotonic() + self.interval_s
        if self.mode != "live":
            return
        sys.stdout.flush()
        self._terminal = os.fdopen(os.dup(sys.stdout.fileno()), "w", encoding="utf-8", errors="replace")
        console = Console(file=self._terminal, force_terminal=True, force_interactive=True, highlight=False)
        self._console = console
        self._fit()
        fds = [1] + ([2] if os.isatty(2) else [])
        self._capture = _Capture(fds, lambda text: console.out(text, highlight=False, end=""))
        self._capture.start()
        self._live = Live(
            Text(""), console=console, auto_refresh=False, redirect_stdout=False, redirect_stderr=False
        )
        self._live.start()

    def update(self, view: dict[str, Any]) -> None:
        """Show ``view``: print its new events, then redraw (live) or, when due, a progress line (plain)."""
        if not self._started or self._stopped:
            return
        bars = self._rates.bars(view)
        start = job_start(view)
        for event in view["events"]:
            key = (event["t"], event["kind"], event["instance"], event["text"])
            if key not in self._printed:
                self._printed.add(key)
                self._say(event_line(event, start), _EVENT_STYLE.get(event["kind"], ""))
        if self._live is not None:
            self._fit()
            self._live.update(render(view, bars, self.dashboard_url), refresh=True)
        elif view["state"] not in TERMINAL and time.monotonic() >= self._next_line_at:
            self._next_line_at = time.monotonic() + self.interval_s
            self._say(plain_line(view, bars), "")

    async def follow(self, monitor: JobMonitor, job_id: str) -> None:
        """Update after every sample of ``monitor`` until cancelled (or the job is forgotten)."""
        while True:
            await monitor.changed(timeout=1.0)
            view = monitor.view(job_id)
            if view is None:
                return
            self.update(view)

    def stop(self, view: dict[str, Any] | None = None) -> None:
        """Show ``view`` a last time, stop redrawing, restore stdout and stderr. Safe to call again."""
        if self._stopped:
            return
        try:
            if view is not None:
                self.update(view)
        finally:
            self._stopped = True
            if self._live is not None:
                self._live.stop()
            if self._capture is not None:
                self._capture.stop()
                if self._capture.error is not None:
                    sys.stderr.write(
                        f"stashflow: warning: {self._capture.lost} bytes the workers wrote could not be shown "
                        f"above the live view: {type(self._capture.error).__name__}: {self._capture.error}\n"
                    )
            if self._terminal is not None and (self._capture is None or self._capture.drained):
                self._terminal.close()

    def _say(self, line: str, style: str) -> None:
        if self._console is not None:
            self._console.print(Text(line, style=style), soft_wrap=True)
        else:
            err = self._err or sys.stderr
            err.write(line + "\n")
            err.flush()

    def _fit(self) -> None:
        """Follow the terminal's size (rich asks descriptors 0-2, which may be captured)."""
        assert self._console is not None and self._terminal is not None
        try:
            width, height = os.get_terminal_size(self._terminal.fileno())
        except OSError:
            width = height = 0
        self._console.size = (width if width > 0 else 80, height if height > 0 else 25)


class _Capture:
    """Points file descriptors at a pipe; a thread hands what comes out of it to ``write``, whole lines.

    The pipe is read by a thread, not by the event loop: this process writes to it too (its log
    lines), and a loop blocked on a full pipe it should be reading would never wake up.
    """

    def __init__(self, fds: list[int], write: Callable[[str], None]):
        self.fds = fds
        self.write = write
        self.drained = False
        #: bytes ``write`` failed on, and its first exception (reported once the view stops)
        self.lost = 0
        self.error: Exception | None = None
        self._saved: dict[int, int] = {}
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        read_end, write_end = os.pipe()
        sys.stdout.flush()
        sys.stderr.flush()
        for fd in self.fds:
            self._saved[fd] = os.dup(fd)
            os.dup2(write_end, fd)  # inheritable: the workers started from now on write here
        os.close(write_end)
        self._thread = threading.Thread(
            target=self._pump, args=(read_end,), name="stashflow-output", daemon=True
        )
        self._thread.start()

    def _pump(self, fd: int) -> None:
        pending = b""
        try:
            while data := os.read(fd, 65536):
                head, newline, pending = (pending + data).rpartition(b"\n")
                if newline:
                    self._write(head + newline)
            if pending:
                self._write(pending + b"\n")
        finally:
            os.close(fd)
            self.drained = True

    def _write(self, data: bytes) -> None:
        # the pipe must keep being read whatever happens here: its writers would block on it
        try:
            self.write(data.decode("utf-8", "replace"))
        except Exception as exc:
            self.lost += len(data)
            self.error = self.error or exc

    def stop(self, timeout: float = 2.0) -> None:
        """Restore the descriptors; wait (``timeout``) for the pipe to empty, i.e. for every writer to close it.

        A process still holding the pipe after that (one not started by us) keeps the thread reading,
        so that its writes do not fail.
        """
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, saved in self._saved.items():
            os.dup2(saved, fd)
            os.close(saved)
        self._saved = {}
        if self._thread is not None:
            self._thread.join(timeout)
