"""The fault-tolerance evaluation: one job under every ``--ft`` mode, in normal operation and through a failure.

::

    stashflow bench ft [--quick] [--out bench/out] [--modes none,lineage,wal,checkpoint]
    .venv/bin/python bench/ft.py [the same options]   # --help lists the rest

The job is ``--job`` (:class:`JobSpec` says what it must take), by default the union word count of the
lineage-stash tests (``jobs/union_count.py``): two
rate-limited generators of 5-word sentences -> ``union`` -> ``flat_map(split)`` -> ``key_by`` -> running
``count`` -> ``FileSink``, ``--parallelism 2``. The sink runs as one instance in a task of its own
(``sink_parallelism=1``, a parallelism that does not chain it to ``count``): killing ``count/1`` then
kills that step instance alone, and the sink, whose timeline is the measurement, keeps running and shows
what the world sees of the failure; a sink chained to the victim would die with it and take its own
unreported timeline buckets along. Every mode of ``engine.config.FT_MODES`` runs (``checkpoint`` as soon
as the engine has it), each through the CLI (``python -m engine run``) in a session of its own, killed
by process group on a deadline, on 127.0.0.1 only, with the same ``--checkpoint-interval`` (1 s) and workers
reporting every 0.1 s (``STASHFLOW_HEARTBEAT_S``). Phases, ``none`` first since its maximum sets the rate:

1. **throughput**: sources without a rate limit; records/s is the engine's ``records_per_s`` (source
   sentences over the time from the job's start to its end). Three rounds (``--quick``: one), the
   modes alternating in order; a mode's figure is the median of its rounds, and its ratio to ``none``
   the median of the ratios within each round.
2. **latency**: sources at the *offered rate*, half of ``none``'s maximum, with ``--gcs-delay-ms`` 0
   and 5 (``none`` has no GCS: 0 only); p50/p99/p99.9 of the per-batch latency from source ingestion
   (when the batch's newest record was offered, by the generator's schedule) to sink write (a stamp in
   the batch header, :mod:`engine.metrics`), from the sink's timeline after
   a warm-up (1 s of output; ``--quick`` 0.8 s). Also (not ``--quick``) at half that rate, a quarter of
   ``none``'s maximum, GCS delay 0 (``light``): on 2 cores the offered rate leaves little headroom,
   and at it latencies are mostly queueing.
3. **failure**: the same rate, ``--kill count/1@T``. From the sink's timeline (records and p99 per
   100 ms): the steady p99 before the kill and the *recovery time*, from the kill until, after the
   output was disturbed, the output rate is back to >= 90% of offered and the p99 under 2x steady, over
   1 s windows (``--quick``: 0.5 s; for ``checkpoint``, whose sink writes in bursts as checkpoints complete,
   at least a checkpoint interval) and for as long again (:func:`recovery_s`; a dip that comes only after
   the output held that long from the kill on is not the failure's: 0); the longest stretch of zero
   output after the kill; which instances rolled back (``restarts`` > 0). The generator keeps to its schedule
   like a log that keeps filling: records that fell due while the job stalled are read as soon as it
   reads again, and a rollback re-reads records offered long ago, each batch stamped with the time its
   newest record was offered; the recovery time therefore includes catching up on the backlog, as a
   job reading a broker must. ``none`` cannot recover:
   the harness SIGKILLs ``count/1``'s worker itself (``--kill`` refuses ``--ft none``), the job fails,
   the harness reruns it from scratch as soon as the failed run has exited, and recovery runs from the kill
   to the rerun reaching
   the same criterion; every instance rolled back.
4. **lineage stash**: the stash's bytes and the bytes piggybacked on batches over time, sampled by the
   coordinator from every report (the failure run; also summed up for the latency runs).

``--quick`` (the CI smoke test, well under 90 s) runs much shorter phases and takes the latency at GCS
delay 0 from the failure run's steady part before the kill instead of a run of its own.

Outputs of modes that promise exactly-once (all but ``none``) are checked line by line after the failure
runs: for the default job, each word ``w`` the sources produce ``N_w`` times must appear as
``[w, 1] .. [w, N_w]``, each once, and nothing else; for another job, the lines must be those of a run
of the same records without a failure (``--no-output-check``: not at all); and in a run without a kill
the sink's timeline must count every record written (a record lost or written twice changes that
count). A run that fails, misses a check or does not show its kill is reported in one line naming the
mode, the phase and the error; that mode gets no figures and the harness exits 1. Written to ``--out``:
``ft.json`` (every figure, per mode ``throughput``, ``p50_ms``, ``p99_ms``, ``recovery_s``,
``rolled_back``...), ``ft.md`` (tables and the targets, met or missed) and PNG plots (``ft_report``);
each run's metrics and stderr under ``ft-runs/`` (outputs are removed once checked).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import statistics
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _harness import REPO, OtherWork, kill_group, machine_info, start, tail, wait_until_quiet
from ft_analysis import (
    P99_FACTOR,
    RATE_SHARE,
    VICTIM,
    check_exactly_once,
    compare_outputs,
    latency_figures,
    longest_zero_s,
    output_lines,
    output_span,
    recovery_s,
    series,
    sink_split,
    sink_timeline,
    stash_series,
    stash_summary,
    targets,
    window,
    words_per_sentence,
)

from engine.config import FT_MODES
from engine.errors import StashflowError
from engine.loader import JobRef, load_job, parse_params
from engine.metrics import BUCKET_MS, Timeline
from engine.plan import Plan

__all__ = ["JobSpec", "PhaseFailed", "main", "recovery_s"]

JOB = REPO / "jobs" / "union_count.py"
#: every run's parallelism (the sink's may differ: the default job's is 1)
PARALLELISM = 2


class PhaseFailed(Exception):
    """A run of ``mode`` in ``phase`` failed or missed a check; the message says what and how."""

    def __init__(self, mode: str, phase: str, error: str):
        super().__init__(f"mode {mode}, phase {phase}: {error}")
        self.mode, self.phase, self.error = mode, phase, error


@dataclass(frozen=True)
class JobSpec:
    """The job under test and how the harness drives it (``--job`` and the options beside it).

    Any job file will do whose ``build`` takes a number of records per source step (``count_param``), an
    offered rate in records/s per source step (``rate_param``; its sources must keep to it, as
    ``GeneratorSource(rate=...)`` does) and an ``output`` directory its sink writes files into, and
    whose sink runs in a task of its own (not chained to the instance killed). ``params``: further
    ``-P`` values, every run alike.
    """

    path: Path
    count_param: str
    rate_param: str
    victim: str
    params: dict[str, str]
    sources: int  # source steps: the offered rate is split evenly over them
    sink_steps: tuple[str, ...]

    @property
    def default(self) -> bool:
        """The union word count, whose output is checked word by word and counted in words."""
        return self.path == JOB

    @property
    def unit(self) -> str:
        return "sentences" if self.default else "records"

    def display(self) -> str:
        return str(self.path.relative_to(REPO)) if self.path.is_relative_to(REPO) else str(self.path)

    @classmethod
    def load(
        cls, path: Path, count_param: str, rate_param: str, victim: str, params: dict[str, str]
    ) -> JobSpec:
        """Build the job once, as the runs will, and check that the harness can drive it.

        Raises:
            ValueError: one line naming what is wrong and how to fix it (the job does not load or lacks
                a parameter the harness sets, the victim is not an instance of it, or a sink would die
                with the victim).
        """
        path = path.resolve()
        where = f"--job {path}"
        if count_param == rate_param:
            raise ValueError(
                f"--count-param and --rate-param are both {count_param!r}: the job needs one of each"
            )
        if not path.is_file():
            raise ValueError(f"{where}: no such file; give the path of a job file (e.g. jobs/union_count.py)")
        trial = {
            count_param: "10",
            rate_param: "100",
            "output": str(REPO / "bench" / "out" / "ft-check"),
            **params,
        }
        try:
            plan = Plan.of(load_job(JobRef.parse(str(path)), trial), PARALLELISM)
        except StashflowError as exc:
            raise ValueError(
                f"{where} with -P {count_param}=N -P {rate_param}=R -P output=DIR (--count-param, --rate-param "
                f"name the first two): {exc}"
            ) from None
        steps = {s.name: s for s in plan.job.steps}
        step, _, index = victim.rpartition("/")
        if step not in steps or not index.isdigit():
            inner = [name for name, st in steps.items() if st.kind not in ("source", "sink")]
            raise ValueError(
                f"--victim {victim}: job {plan.job.name!r} has no such instance; name one as STEP/INDEX, "
                f"e.g. --victim {(inner or list(steps))[-1]}/1 (steps: {', '.join(steps)})"
            )
        task = plan.task_of_step(step)
        if int(index) >= task.parallelism:
            raise ValueError(f"--victim {victim}: step {step!r} has instances 0..{task.parallelism - 1}")
        sinks = tuple(s for s in steps if steps[s].kind == "sink")
        chained = [s.name for s in task.steps if s.kind == "sink"]
        if chained:
            raise ValueError(
                f"--victim {victim}: sink {chained[0]!r} runs in the same task and would die with it, taking "
                "the timeline the harness measures; give the sink a parallelism of its own "
                "(.sink(name, sink, parallelism=1)) or pick another victim"
            )
        sources = sum(1 for s in steps.values() if s.kind == "source")
        return cls(path, count_param, rate_param, victim, dict(params), sources, sinks)


# --- running the engine ------------------------------------------------------------------------------


@dataclass
class Settings:
    """Sizes of the phases: the full run, or ``--quick``."""

    throughput_records: int  # per source step, no rate limit
    throughput_rounds: int  # runs per mode, modes alternating; the median counts
    latency_s: float
    failure_s: float
    kill_at: float
    rerun_s: float
    warmup_s: float
    hold_s: float

    @classmethod
    def of(cls, quick: bool) -> Settings:
        if quick:
            return cls(20_000, 1, 1.2, 4.5, 2.0, 2.0, 0.8, 0.5)
        return cls(300_000, 3, 6.0, 14.0, 5.0, 4.0, 1.0, 1.0)


@dataclass
class EngineRun:
    """One ``stashflow run`` and what came of it."""

    argv: list[str]
    returncode: int
    stderr: str
    wall_s: float
    killed_at: float | None  # seconds since the epoch
    metrics: dict[str, Any]
    out_dir: Path
    cpu_s_by_others: float | None

    def summary(self) -> dict[str, Any]:
        return {
            "wall_s": round(self.wall_s, 2),
            "engine_elapsed_s": self.metrics.get("elapsed_s"),
            "source_records": self.metrics.get("source_records"),
            "cpu_s_by_others": self.cpu_s_by_others,
            "command": " ".join(self.argv[1:]),
        }

    def error_line(self) -> str:
        lines = [x for x in self.stderr.splitlines() if x.startswith("stashflow: error:")]
        return lines[-1] if lines else tail(self.stderr, 3).replace("\n", " | ")


def find_pinned_worker(session: int, instance: str) -> int | None:
    """The pid of the worker pinned to ``instance`` among the processes of ``session`` (Linux /proc)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            stat = (entry / "stat").read_text()
            if int(stat.rpartition(")")[2].split()[3]) != session:
                continue
            args = (entry / "cmdline").read_bytes().split(b"\0")
            if b"--pin" in args and args[args.index(b"--pin") + 1].decode().endswith(":" + instance):
                return int(entry.name)
    return None


class Bench:
    """Runs the phases of every mode and keeps their figures."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.s: Settings = args.settings
        self.runs_dir: Path = args.out / "ft-runs"
        self.job: JobSpec = args.job
        #: sink records per source record: the default job's words per sentence; another job's as its
        #: first run without a kill wrote them
        self.fanout: float | None = words_per_sentence() if self.job.default else None
        self.offered: float | None = args.offered_rate  # source records/s, all sources together
        self.modes: dict[str, dict[str, Any]] = {m: {} for m in args.modes}
        self.failed: dict[str, PhaseFailed] = {}
        self._reference: dict[int, Counter[str]] = {}  # records per source -> a failure-free run's output

    @property
    def offered_sink(self) -> float:
        assert self.offered is not None and self.fanout is not None
        return self.offered * self.fanout

    async def engine(
        self,
        mode: str,
        phase: str,
        records: int,
        *,
        rate: float | None = None,
        gcs_delay_ms: float = 0.0,
        kill_at: float | None = None,
        self_kill_at: float | None = None,
    ) -> EngineRun:
        """Run the job once, ``records`` per source step at ``rate`` records/s per source step (``None``:
        no limit); ``kill_at``: ``--kill VICTIM@T``; ``self_kill_at``: SIGKILL the victim's worker
        ourselves T s after the first output (``--ft none``, which ``--kill`` refuses)."""
        job, victim = self.job, self.job.victim
        work = self.runs_dir / f"{mode}-{phase}"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        out, metrics_file = work / "output", work / "metrics.json"
        load_s = records / rate if rate else 60.0
        timeout = load_s + 60
        params = {job.count_param: str(records), "output": str(out), **job.params}
        if rate:
            params[job.rate_param] = f"{rate:.1f}"
        argv = [
            sys.executable, "-m", "engine", "run", str(job.path),
            *(a for k, v in params.items() for a in ("-P", f"{k}={v}")),
            "--parallelism", str(PARALLELISM), "--ft", mode,
            "--checkpoint-interval", f"{self.args.checkpoint_interval:g}",
            *(["--batch-size", str(self.args.batch_size)] if self.args.batch_size else []),
            "--gcs-delay-ms", f"{gcs_delay_ms:g}",
            "--timeout", f"{timeout:g}", "--metrics-out", str(metrics_file),
            *(["--kill", f"{victim}@{kill_at:g}"] if kill_at is not None else []),
        ]  # fmt: skip
        env = {"STASHFLOW_HEARTBEAT_S": f"{self.args.heartbeat_s:g}"}
        killed_at: float | None = None
        chunks: list[bytes] = []
        print(f"ft: {mode:<10} {phase:<13} {records:>9,} {job.unit}/source"
              + (f" at {rate * job.sources:,.0f}/s" if rate else ", no rate limit"), file=sys.stderr)  # fmt: skip
        with OtherWork() as others:
            began = time.perf_counter()
            proc = await start(argv, env=env)

            async def read_stderr() -> None:
                nonlocal killed_at
                assert proc.stderr is not None
                marker = f"--kill {victim}@".encode()
                while chunk := await proc.stderr.read(65536):
                    if killed_at is None and marker in chunk and b": killed " in chunk:
                        killed_at = time.time()  # the CLI prints it right after the SIGKILL
                    chunks.append(chunk)

            async def drain_stdout() -> None:
                assert proc.stdout is not None
                while await proc.stdout.read(65536):
                    pass

            async def kill_victim(after_s: float) -> None:
                nonlocal killed_at
                while not any(p.is_file() and p.stat().st_size > 0 for p in out.rglob("*")):
                    await asyncio.sleep(0.01)
                await asyncio.sleep(after_s)
                pid = find_pinned_worker(proc.pid, victim)
                if pid is not None:
                    os.kill(pid, signal.SIGKILL)
                    killed_at = time.time()

            readers = [asyncio.create_task(read_stderr()), asyncio.create_task(drain_stdout())]
            killer = asyncio.create_task(kill_victim(self_kill_at)) if self_kill_at is not None else None
            try:
                await asyncio.wait_for(proc.wait(), timeout + 30)
            except TimeoutError:
                raise PhaseFailed(
                    mode, phase, f"the CLI did not end within {timeout + 30:g} s; killed"
                ) from None
            finally:
                if killer is not None:
                    killer.cancel()
                kill_group(proc)  # workers the CLI left behind
                await asyncio.wait(readers, timeout=5)
                for r in readers:
                    r.cancel()
            wall = time.perf_counter() - began
        stderr = b"".join(chunks).decode(errors="replace")
        (work / "stderr.txt").write_text(stderr)
        try:
            metrics = json.loads(metrics_file.read_text())
        except (OSError, ValueError) as exc:
            raise PhaseFailed(
                mode, phase, f"no metrics (exit code {proc.returncode}): {exc}; CLI said: {tail(stderr, 3)}"
            ) from None
        return EngineRun(argv, proc.returncode or 0, stderr, wall, killed_at, metrics, out, others.cpu_s)

    async def finished(self, mode: str, phase: str, run: EngineRun, records: int) -> None:
        """The run must have finished, its sink's timeline must count every record written (without a
        kill, no report can have been lost, and a record lost or written twice changes the count), and
        under a mode that promises it the output of the failure run must be exactly once (reading 3-10M
        lines takes longer than the run itself: 5-18 s, which on every run made the default evaluation
        last 7.5 minutes instead of under 6)."""
        if run.returncode != 0 or run.metrics.get("state") != "finished":
            raise PhaseFailed(
                mode, phase, f"the job did not finish (exit code {run.returncode}): {run.error_line()}"
            )
        written = sum(r for r, _, _ in sink_timeline(run.metrics).buckets.values())
        if run.killed_at is None:
            if self.job.default:  # known in advance: every word of every sentence
                expected = self.job.sources * records * words_per_sentence()
            else:  # what the sink instances took in (a record lost or doubled on the way shows at the end)
                expected = sum(
                    m.get("records_in", 0)
                    for name, m in run.metrics["instances"].items()
                    if name.rpartition("/")[0] in self.job.sink_steps
                )
                if self.fanout is None and expected:
                    self.fanout = expected / (self.job.sources * records)
            if written != expected:
                raise PhaseFailed(
                    mode, phase, f"the sink's timeline counts {written:,} records written, the job wrote "
                    f"{expected:,}: reports were lost"
                )  # fmt: skip
        if mode != "none" and phase == "failure":
            await self.check_output(mode, run, records)
        shutil.rmtree(run.out_dir, ignore_errors=True)  # checked: only the metrics are worth keeping

    async def check_output(self, mode: str, run: EngineRun, records: int) -> None:
        """Exactly once after a kill: the default job's output line by line (``[w, 1] .. [w, N_w]`` per
        word); another job's against the output of a run of the same records without a failure
        (``--ft none``, no rate limit, once per size), unless ``--no-output-check``."""
        try:
            if self.job.default:
                check_exactly_once(run.out_dir, records)
            elif self.args.output_check:
                if records not in self._reference:
                    ref = await self.engine("none", "reference", records)
                    if ref.returncode != 0 or ref.metrics.get("state") != "finished":
                        raise PhaseFailed(
                            mode, "reference", f"the failure-free run of {records:,} {self.job.unit} per source "
                            f"did not finish (exit code {ref.returncode}): {ref.error_line()}"
                        )  # fmt: skip
                    self._reference[records] = output_lines(ref.out_dir)
                    shutil.rmtree(ref.out_dir, ignore_errors=True)
                compare_outputs(output_lines(run.out_dir), self._reference[records])
        except ValueError as exc:
            raise PhaseFailed(mode, "failure", str(exc)) from None

    # --- phases ----------------------------------------------------------------------------------------

    async def throughput(self, mode: str, round_: int) -> None:
        n = self.s.throughput_records
        phase = "throughput" if self.s.throughput_rounds == 1 else f"throughput-{round_ + 1}"
        run = await self.engine(mode, phase, n)
        await self.finished(mode, phase, run, n)
        self.modes[mode].setdefault("throughput_runs", []).append(run.metrics["records_per_s"])
        self.modes[mode].setdefault("runs", {})[phase] = run.summary()

    def throughput_figures(self) -> None:
        """Per mode the median of its rounds; and the median of its ratios to ``none`` round by round
        (runs side by side share the machine's mood: a ratio within a round is steadier than one of
        medians when the machine's speed drifts)."""
        none = self.modes.get("none", {}).get("throughput_runs")
        for mode, figures in self.modes.items():
            runs = figures.get("throughput_runs")
            if not runs or mode in self.failed:
                continue
            figures["throughput"] = statistics.median(runs)
            if none and mode != "none" and len(none) == len(runs):
                figures["throughput_ratio_runs"] = [round(a / b, 3) for a, b in zip(runs, none, strict=True)]
                figures["throughput_vs_none"] = round(statistics.median(figures["throughput_ratio_runs"]), 3)

    async def latency(self, mode: str, gcs_delay_ms: float, *, light: bool = False) -> None:
        """Latency at the offered rate (``light``: at half of it, a quarter of none's maximum)."""
        phase = "latency-light" if light else "latency" if gcs_delay_ms == 0 else "latency-gcs5"
        assert self.offered is not None
        offered = self.offered / 2 if light else self.offered
        per_source = offered / self.job.sources
        n = round(per_source * self.s.latency_s)
        run = await self.engine(mode, phase, n, rate=per_source, gcs_delay_ms=gcs_delay_ms)
        await self.finished(mode, phase, run, n)
        tl = sink_timeline(run.metrics)
        warmup_ms = int(self.s.warmup_s * 1000)
        figures: dict[str, Any] = latency_figures(tl, warmup_ms)
        if figures["p99_ms"] is None:
            # a short (--quick) run of a mode whose sink writes in bursts (checkpoint: at checkpoint
            # completion) may have written everything within the warm-up: then every batch counts
            warmup_ms = 0
            figures = latency_figures(tl, warmup_ms)
        figures["warmup_ms"] = warmup_ms
        figures.update(sink_split(run.metrics))
        span = output_span(tl)
        if figures["p99_ms"] is None or span is None:
            raise PhaseFailed(mode, phase, "the sink's timeline has no stamped batches")
        start = span[0] + warmup_ms
        figures["output_share"] = round(
            window(tl, start, span[0] + int(self.s.latency_s * 1000))[0] / (offered * self.fanout), 3
        )
        if light:
            figures["offered_rate"] = offered
            self.modes[mode]["light"] = figures
            self.modes[mode].setdefault("runs", {})[phase] = run.summary()
            return
        if mode in ("lineage", "wal"):
            figures["stash"] = stash_summary(run.metrics)
        if gcs_delay_ms == 0:
            self.modes[mode].update(figures)
        else:
            self.modes[mode]["gcs5"] = figures
        self.modes[mode].setdefault("runs", {})[phase] = run.summary()

    async def failure(self, mode: str) -> None:
        assert self.offered is not None
        victim = self.job.victim
        rate = self.offered / self.job.sources
        n = round(rate * self.s.failure_s)
        if mode == "none":
            run = await self.engine(mode, "failure", n, rate=rate, self_kill_at=self.s.kill_at)
            if run.metrics.get("state") != "failed" or run.killed_at is None:
                raise PhaseFailed(
                    mode, "failure", f"expected the kill to fail the job; it is {run.metrics.get('state')!r} "
                    f"(killed: {run.killed_at is not None}): {run.error_line()}"
                )  # fmt: skip
            rerun_n = round(rate * self.s.rerun_s)
            rerun = await self.engine(mode, "rerun", rerun_n, rate=rate)
            await self.finished(mode, "rerun", rerun, rerun_n)
            shutil.rmtree(run.out_dir, ignore_errors=True)
            rolled_back = sorted(run.metrics["instances"])
            rerun_span = output_span(sink_timeline(rerun.metrics))
            if rerun_span is None:
                raise PhaseFailed(mode, "rerun", "the rerun wrote no output")
            tl = Timeline.combine([sink_timeline(run.metrics), sink_timeline(rerun.metrics)])
            self.modes[mode].setdefault("runs", {})["rerun"] = rerun.summary()
        else:
            run = await self.engine(mode, "failure", n, rate=rate, kill_at=self.s.kill_at)
            await self.finished(mode, "failure", run, n)
            if run.killed_at is None:
                raise PhaseFailed(
                    mode, "failure", f"the CLI never reported killing {victim}: {run.error_line()}"
                )
            instances = run.metrics["instances"]
            rolled_back = sorted(name for name, m in instances.items() if m.get("restarts"))
            if victim not in rolled_back:
                raise PhaseFailed(mode, "failure", f"{victim} was killed but did not restart: {rolled_back}")
            tl = sink_timeline(run.metrics)
        self.modes[mode].setdefault("runs", {})["failure"] = run.summary()
        kill_ms = run.killed_at * 1000
        span = output_span(sink_timeline(run.metrics))
        if span is None or span[0] + self.s.warmup_s * 1000 >= kill_ms:
            raise PhaseFailed(mode, "failure", "no output before the kill to measure the steady state on")
        # the sources offer their load until their last sentence, later than planned if the job stalled
        until_ms = max(k for k, (r, _, _) in tl.buckets.items() if r) + BUCKET_MS
        kill_bucket = int(kill_ms) // BUCKET_MS * BUCKET_MS
        steady = latency_figures(tl, int(self.s.warmup_s * 1000), kill_bucket)
        if steady["p99_ms"] is None:
            # --quick kills early: a mode whose sink writes in bursts (checkpoint: one per completed
            # checkpoint) may have written only within the warm-up; then every batch before the kill counts
            steady = latency_figures(tl, 0, kill_bucket)
        if steady["p99_ms"] is None:
            raise PhaseFailed(mode, "failure", "no stamped batches before the kill")
        steady_start = span[0] + int(self.s.warmup_s * 1000)
        steady["output_share"] = round(window(tl, steady_start, int(kill_ms))[0] / self.offered_sink, 3)
        if self.args.quick:  # the latency at GCS delay 0 comes from the steady part of this run
            self.modes[mode].update(steady)
        # under checkpoint, output comes in bursts as checkpoints complete: no window may fall between two
        hold = int(self.s.hold_s * 1000)
        if mode == "checkpoint":
            hold = max(hold, int(self.args.checkpoint_interval * 1000))
        recovery = recovery_s(
            tl, kill_ms, self.offered_sink, steady["p99_ms"], until_ms=until_ms, hold_ms=hold
        )
        victim_metrics = run.metrics["instances"].get(victim, {})
        self.modes[mode].update(
            {
                "recovery_s": recovery,
                "rolled_back": rolled_back,
                "steady_p99_ms": steady["p99_ms"],
                "steady_output_share": steady["output_share"],
                "recovery_window_s": hold / 1000,
                "zero_output_max_s": longest_zero_s(tl, kill_ms, until_ms),
                "kill_after_s": round((kill_ms - span[0]) / 1000, 3),
                "live_s": [r.get("live_s") for r in victim_metrics.get("recoveries", [])],
                "timeline": series(tl, kill_ms),
            }
        )
        if mode == "lineage":
            s = stash_series(run.metrics)
            self.modes[mode]["stash_timeline"] = {
                "t_s": [round((t - kill_ms) / 1000, 3) for t in s["t_ms"]],
                "stash_bytes": s["stash_bytes"],
                "piggybacked_per_s": s["piggybacked_per_s"],
            }

    async def phase(self, mode: str, name: str, step: Any) -> None:
        if mode in self.failed:
            return
        try:
            await step
        except PhaseFailed as exc:
            self.failed[mode] = exc
            print(f"ft: FAILED: {exc}", file=sys.stderr)
        finally:
            step.close()  # a step skipped above was never awaited

    async def run(self) -> None:
        order = list(self.modes)
        for round_ in range(self.s.throughput_rounds):
            # alternate the order, so that no mode always runs right after the same one
            for mode in order if round_ % 2 == 0 else order[::-1]:
                await self.phase(mode, "throughput", self.throughput(mode, round_))
        self.throughput_figures()
        if self.offered is None:
            if "none" in self.modes and "throughput" in self.modes["none"]:
                self.offered = self.modes["none"]["throughput"] / 2
            else:
                for mode in order:
                    self.failed.setdefault(
                        mode, PhaseFailed(mode, "latency", "no offered rate: none's throughput run failed")
                    )
                return
        for mode in order:
            if not self.args.quick:
                await self.phase(mode, "latency", self.latency(mode, 0.0))
                await self.phase(mode, "latency-light", self.latency(mode, 0.0, light=True))
            if mode != "none":
                await self.phase(mode, "latency-gcs5", self.latency(mode, 5.0))
        for mode in order:
            await self.phase(mode, "failure", self.failure(mode))
        for mode in order:
            if mode != "none" and mode not in self.failed and "gcs5" not in self.modes[mode]:
                self.modes[mode]["gcs5"] = None
            if mode == "none":
                self.modes[mode]["gcs5"] = None  # no GCS in --ft none

    def report(self, machine: dict[str, Any], started: float) -> dict[str, Any]:
        modes: dict[str, Any] = {}
        for mode, figures in self.modes.items():
            if mode in self.failed:
                exc = self.failed[mode]
                modes[mode] = {"error": exc.error, "phase": exc.phase}
            else:
                modes[mode] = figures
        ok = {m: f for m, f in modes.items() if "error" not in f}
        return {
            "benchmark": "ft",
            "quick": self.args.quick,
            "config": {
                "job": self.job.display(),
                "params": self.job.params,
                "unit": self.job.unit,
                "sink_unit": "words" if self.job.default else "records",
                "parallelism": PARALLELISM,
                "victim": self.job.victim,
                "checkpoint_interval_s": self.args.checkpoint_interval,
                "batch_size": self.args.batch_size,
                "heartbeat_s": self.args.heartbeat_s,
                "sink_records_per_source_record": self.fanout,
                "output_check": "word by word"
                if self.job.default
                else ("against a failure-free run" if self.args.output_check else "off"),
                **{k: v for k, v in vars(self.s).items()},
                "recovery_rule": f"rate >= {RATE_SHARE:g} x offered and p99 < {P99_FACTOR:g} x steady, "
                f"over {self.s.hold_s:g} s windows (checkpoint: at least the checkpoint interval), held as long",
            },
            "offered_rate": self.offered,
            "offered_sink_rate": self.offered_sink if self.offered else None,
            "machine": machine,
            "wall_s": round(time.perf_counter() - started, 1),
            "modes": modes,
            "targets": targets(ok, self.job.victim),
        }


# --- the command line ----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="stashflow bench ft", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the smoke test: short phases, under 90 s")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "out", help="where the results go")
    parser.add_argument(
        "--modes",
        default=",".join(["none", *(m for m in FT_MODES if m != "none")]),
        help=f"comma-separated --ft modes (default: all of this build's, none first: {', '.join(FT_MODES)})",
    )
    parser.add_argument(
        "--offered-rate",
        type=float,
        default=None,
        help="source records/s, all sources together, for the latency and failure runs (default: half of none's max)",
    )
    parser.add_argument(
        "--job",
        type=Path,
        default=JOB,
        help="the job file to run (default: jobs/union_count.py); see --count-param, --rate-param, --victim",
    )
    parser.add_argument(
        "-P",
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a parameter of the job for every run (repeatable); the default job gets sink_parallelism=1",
    )
    parser.add_argument(
        "--count-param",
        default="sentences",
        help="the job's parameter for records per source step (default: sentences)",
    )
    parser.add_argument(
        "--rate-param",
        default="rate",
        help="the job's parameter for records/s per source step (default: rate)",
    )
    parser.add_argument(
        "--victim", default=VICTIM, help=f"the instance the failure runs kill, STEP/INDEX (default: {VICTIM})"
    )
    parser.add_argument(
        "--no-output-check",
        dest="output_check",
        action="store_false",
        help="a job other than the default one: skip comparing a failure run's output with a failure-free "
        "run's (for jobs whose output depends on arrival order)",
    )
    parser.add_argument(
        "--records",
        type=int,
        default=None,
        help="records per source step in a throughput run (default 300,000; --quick 20,000): a few seconds' worth",
    )
    parser.add_argument("--checkpoint-interval", type=float, default=1.0, help="seconds, every mode alike")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="records per batch, every mode alike (default: the engine's)",
    )
    parser.add_argument("--heartbeat-s", type=float, default=0.1, help="seconds between workers' reports")
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=None,
        help="seconds to wait for other work to stop (default 20; quick 0)",
    )
    args = parser.parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in modes if m not in FT_MODES]
    if unknown or not modes:
        parser.error(
            f"--modes {args.modes!r}: this build has {', '.join(FT_MODES)}; not {', '.join(unknown)}"
        )
    if "none" not in modes and args.offered_rate is None:
        parser.error("without mode none, give the offered rate: --offered-rate RECORDS_PER_S")
    args.modes = sorted(dict.fromkeys(modes), key=lambda m: (m != "none", modes.index(m)))
    if args.offered_rate is not None and args.offered_rate <= 0:
        parser.error("--offered-rate must be positive")
    if args.checkpoint_interval <= 0 or args.heartbeat_s <= 0:
        parser.error("--checkpoint-interval and --heartbeat-s must be positive")
    if args.batch_size is not None and args.batch_size <= 0:
        parser.error(f"--batch-size must be a positive number of records, got {args.batch_size}")
    try:
        params = parse_params(args.param)
        if args.job.resolve() == JOB:
            params = {"sink_parallelism": "1", **params}
        args.job = JobSpec.load(args.job, args.count_param, args.rate_param, args.victim, params)
    except ValueError as exc:
        parser.error(str(exc))
    if args.quiet_wait is None:
        args.quiet_wait = 0.0 if args.quick else 20.0
    if args.records is not None and args.records <= 0:
        parser.error(f"--records must be a positive number of records per source step, got {args.records}")
    args.settings = Settings.of(args.quick)
    if args.records is not None:
        args.settings.throughput_records = args.records
    args.out = args.out.resolve()
    return args


async def main_async(args: argparse.Namespace, report_module: Any) -> int:
    started = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.quiet_wait > 0:
        await wait_until_quiet(args.quiet_wait)
    machine = machine_info()
    bench = Bench(args)
    await bench.run()
    report = bench.report(machine, started)
    path = args.out / "ft.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    report_module.write_markdown(report, args.out / "ft.md")
    written = [path, args.out / "ft.md", *report_module.write_plots(report, args.out)]
    print(f"ft: wrote {', '.join(str(p) for p in written)} in {report['wall_s']:g} s", file=sys.stderr)
    for exc in bench.failed.values():
        print(f"ft: FAILED: {exc}", file=sys.stderr)
    return 1 if bench.failed else 0


def main(argv: list[str] | None = None) -> int:
    """``stashflow bench ft``: 0 when every mode ran and passed its checks, 1 otherwise, 2 on bad usage."""
    args = parse_args(argv)
    try:
        import ft_report
    except ImportError as exc:
        print(f"ft: error: the plots need matplotlib ({exc}); pip install -e '.[bench]'", file=sys.stderr)
        return 2
    return asyncio.run(main_async(args, ft_report))


if __name__ == "__main__":
    sys.exit(main())
