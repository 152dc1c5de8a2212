"""Word count, side by side: a plain ``collections.Counter``, Bytewax 0.21 and stashflow on one corpus.

::

    .venv/bin/python bench/wordcount.py [--words 10000000 | --quick] [--rounds 3]
        [--systems counter,bytewax,stashflow-none,stashflow-lineage] [--parallelism 2]
        [--out bench/out/wordcount.json]

Per round and system it measures the wall time as a user experiences it (for Bytewax and stashflow,
from starting the processes to the last one's exit: interpreter start-up, job deployment, the work
and the sink's files) and the words per second that gives. A second, tiny run (1,000 words) of each
process-based system measures its fixed cost (``startup_s``), reported beside it, so that small corpora
can be read without it taking the figures over.

Before each measured run the benchmark waits (``--quiet-wait``, 60 s at most) for other work on the
machine to stop, and it reports per round the CPU time other processes used meanwhile
(``cpu_s_by_others``): on 2 cores, a round during which that is large is not one to quote.

Every system's output is checked, word by word, against the Counter of the corpus; a run whose
output differs is reported as an error with what differed, never as a figure. A system that is not
there (the Bytewax venv not made, the engine CLI not written yet) is reported as skipped.

- ``counter``: one process, reads every file line by line, ``Counter.update(line.split())``.
- ``bytewax``: ``bench/bytewax_wordcount.py``, one ``bytewax.run`` process per ``--parallelism``, one
  worker each, over loopback; needs ``bench/setup_bytewax.sh``.
- ``stashflow-none`` and ``stashflow-lineage``: ``python -m engine run jobs/wordcount.py --ft none``
  (no fault tolerance) and ``--ft lineage`` (the lineage stash), ``--parallelism N --metrics-out ...``;
  the engine's own ``records_per_s`` and ``elapsed_s`` from the metrics file are reported too. The two
  run back to back in every round, in alternating order (none first in odd rounds, lineage first in
  even ones), so a drift in the machine's speed does not favour either. ``stashflow`` selects both.

The cost of fault tolerance: ``lineage/none``, the ratio of the two modes' median words/s (and the
median of the per-round ratios, each from two back-to-back runs), whose target is at least 0.9. From
the lineage run's metrics: the lineage delta piggybacked on every batch (``delta_bytes_mean`` over the
frames the sending task instances sent) against the mean size of those batches (``bytes_out /
batches_out``, frames with their deltas), as a percentage (target under 5%), and the GCS commit lag
(``gcs_commit_lag`` p50 and p99).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import shutil
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _harness import (
    LOOPBACK,
    REPO,
    GroupFailed,
    OtherWork,
    free_loopback_port,
    machine_info,
    read_pairs,
    run_group,
    summarize,
    tail,
    wait_until_quiet,
    write_json,
)
from corpus import CorpusSpec, corpus_files, ensure_corpus

BYTEWAX_PYTHON = REPO / "bench" / ".venv-bytewax" / "bin" / "python"
ENGINE_PYTHON = REPO / ".venv" / "bin" / "python"
ENGINE_MAIN = REPO / "engine" / "__main__.py"
WORDCOUNT_JOB = REPO / "jobs" / "wordcount.py"
STARTUP_WORDS = 1_000
FT_MODES = ("none", "lineage")
STASHFLOW_SYSTEMS = tuple(f"stashflow-{mode}" for mode in FT_MODES)
SYSTEMS = ("counter", "bytewax", *STASHFLOW_SYSTEMS)
#: Targets for the cost of fault tolerance (README.md): lineage/none words/s, delta/batch bytes.
TARGET_LINEAGE_RATIO = 0.9
TARGET_DELTA_PCT = 5.0


class Skipped(Exception):
    """The system is not available here; the message says why and how to make it so."""


class WrongResult(Exception):
    """The system ran but its output differs from the reference count."""


@dataclass
class Corpus:
    directory: Path
    words: int
    files: list[Path]

    @property
    def glob(self) -> str:
        return str(self.directory / "corpus-*.txt")


@dataclass
class Outcome:
    """What one system did over all rounds."""

    status: str = "ok"  # ok | skipped | error
    reason: str | None = None
    wall_s: list[float] = field(default_factory=list)
    startup_s: list[float] = field(default_factory=list)
    cpu_s_by_others: list[float | None] = field(default_factory=list)  # per round: see _harness.OtherWork
    cpu_s: list[float | None] = field(default_factory=list)  # per round: the system's own CPU time
    engine: list[dict[str, Any]] = field(default_factory=list)  # stashflow's metrics file, per round

    def report(self, words: int) -> dict[str, Any]:
        """The system's figures; a system that failed in any round gets none, only its completed rounds."""
        out: dict[str, Any] = {"status": self.status}
        if self.reason:
            out["reason"] = self.reason
        rounds: dict[str, Any] = {
            "wall_s": self.wall_s,
            "startup_s": self.startup_s,
            "cpu_s_by_others": self.cpu_s_by_others,
            "cpu_s": self.cpu_s,
        }
        if self.engine:
            rounds["engine_metrics"] = self.engine
        if self.status != "ok":
            if self.wall_s:
                out["completed_rounds"] = rounds  # for diagnosis, not figures
            return out
        wall = summarize(self.wall_s)
        if wall is None:
            return out
        out.update(
            wall_s=wall, words_per_s=words / wall["median"], rounds={k: v for k, v in rounds.items() if v}
        )
        cpu = summarize(_known(self.cpu_s))
        if cpu:
            out["cpu_s"] = cpu
            out["words_per_cpu_s"] = words / cpu["median"]
        startup = summarize(self.startup_s)
        if startup:
            out["startup_s"] = startup
            if wall["median"] > startup["median"]:
                out["words_per_s_excl_startup"] = words / (wall["median"] - startup["median"])
        if self.engine:
            for key in ("elapsed_s", "records_per_s"):
                out[f"engine_{key}"] = summarize([m[key] for m in self.engine if m.get(key) is not None])
            out["ft"] = self.engine[-1].get("ft")
            if out["ft"] == "lineage":
                out["lineage"] = lineage_summary(self.engine)
        return out


# --- the cost of the lineage stash, from the engine's metrics -------------------------------------


def lineage_overhead(metrics: dict[str, Any]) -> dict[str, Any]:
    """One lineage run's piggybacked delta bytes against its batch bytes, and its GCS commit lag.

    ``instances`` has one entry per step instance; chained steps repeat their task's figures, so each
    task instance (``task``) is counted once. Senders are the task instances that sent frames. The
    mean delta per batch is weighted by frames (``delta_bytes_mean * frames_sent`` summed, over the
    frames summed); the mean batch is ``bytes_out / batches_out`` summed the same way.
    """
    tasks: dict[str, dict[str, Any]] = {}
    for name, inst in metrics.get("instances", {}).items():
        tasks.setdefault(inst.get("task", name), inst)
    senders = {t: m for t, m in tasks.items() if m.get("frames_sent")}
    frames = sum(m["frames_sent"] for m in senders.values())
    delta_bytes = sum(m["delta_bytes_mean"] * m["frames_sent"] for m in senders.values())
    batches = sum(m["batches_out"] for m in senders.values())
    batch_bytes = sum(m["bytes_out"] for m in senders.values())
    delta_mean = delta_bytes / frames if frames else None
    batch_mean = batch_bytes / batches if batches else None
    pct = 100 * delta_mean / batch_mean if delta_mean is not None and batch_mean else None
    lag = metrics.get("gcs_commit_lag") or {}
    return {
        "senders": {
            t: {k: m.get(k) for k in ("frames_sent", "delta_bytes_mean", "batches_out", "bytes_out")}
            for t, m in sorted(senders.items())
        },
        "frames_sent": frames,
        "delta_bytes_per_batch": delta_mean,
        "bytes_per_batch": batch_mean,
        "delta_pct_of_batch": pct,
        "gcs_commit_lag_p50_ms": lag.get("p50_ms"),
        "gcs_commit_lag_p99_ms": lag.get("p99_ms"),
    }


def lineage_summary(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-round :func:`lineage_overhead` and the median (min, max) of each figure over the rounds."""
    per_round = [lineage_overhead(m) for m in rounds]
    keys = (
        "delta_bytes_per_batch", "bytes_per_batch", "delta_pct_of_batch",
        "gcs_commit_lag_p50_ms", "gcs_commit_lag_p99_ms",
    )  # fmt: skip
    out: dict[str, Any] = {k: summarize([r[k] for r in per_round if r[k] is not None]) for k in keys}
    out["rounds"] = per_round
    return out


# --- the reference ----------------------------------------------------------------------------------


def count_with_counter(files: list[Path]) -> Counter[str]:
    """The plain single-process word count: the reference every system is checked against."""
    counts: Counter[str] = Counter()
    for path in files:
        with path.open(encoding="ascii") as lines:
            for line in lines:
                counts.update(line.split())
    return counts


def check_output(out_dir: Path, reference: Counter[str]) -> None:
    """Raise :class:`WrongResult` unless the ``part-*.jsonl`` files hold exactly ``reference``."""
    got: dict[str, int] = {}
    repeated = []
    for word, count in read_pairs(out_dir, WrongResult):
        if word in got:
            repeated.append(word)
        got[word] = got.get(word, 0) + count
    problems = []
    if repeated:
        problems.append(f"{len(repeated)} words written more than once, e.g. {repeated[:5]}")
    missing = [w for w in reference if w not in got]
    extra = [w for w in got if w not in reference]
    wrong = [(w, got[w], n) for w, n in reference.items() if w in got and got[w] != n]
    if missing:
        problems.append(f"{len(missing)} words missing, e.g. {missing[:5]}")
    if extra:
        problems.append(f"{len(extra)} words not in the corpus, e.g. {extra[:5]}")
    if wrong:
        sample = ", ".join(f"{w!r}: {g} instead of {n}" for w, g, n in wrong[:5])
        problems.append(f"{len(wrong)} words with wrong counts, e.g. {sample}")
    if problems:
        total = sum(got.values())
        raise WrongResult(
            f"output differs from the Counter ({total:,} vs {reference.total():,} words): "
            + "; ".join(problems)
        )


# --- the systems ----------------------------------------------------------------------------------


def fresh_dir(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


async def run_bytewax(
    corpus: Corpus, out_dir: Path, parallelism: int, timeout: float
) -> tuple[float, dict | None]:
    if not BYTEWAX_PYTHON.exists():
        raise Skipped(f"Bytewax is not installed: {BYTEWAX_PYTHON} is missing; run bench/setup_bytewax.sh")
    ports = [free_loopback_port() for _ in range(parallelism)]
    addresses = ";".join(f"{LOOPBACK}:{port}" for port in ports)
    flow = f"bench/bytewax_wordcount.py:build({str(corpus.directory)!r}, {str(out_dir)!r})"
    commands = [
        [str(BYTEWAX_PYTHON), "-m", "bytewax.run", "-i", str(i), "-a", addresses, flow]
        for i in range(parallelism)
    ]
    started = time.perf_counter()
    await run_group(commands, timeout=timeout)
    return time.perf_counter() - started, None


async def run_stashflow(
    corpus: Corpus, out_dir: Path, parallelism: int, timeout: float, *, ft: str
) -> tuple[float, dict | None]:
    missing = [str(p.relative_to(REPO)) for p in (ENGINE_MAIN, WORDCOUNT_JOB) if not p.exists()]
    if missing:
        raise Skipped(f"the engine is not there yet: {', '.join(missing)} missing")
    metrics_file = out_dir.parent / f"{out_dir.name}.metrics.json"
    metrics_file.unlink(missing_ok=True)
    command = [
        str(ENGINE_PYTHON), "-m", "engine", "run", str(WORDCOUNT_JOB),
        "-P", f"input={corpus.glob}",
        "-P", f"output={out_dir}",
        "--parallelism", str(parallelism),
        "--ft", ft,
        "--metrics-out", str(metrics_file),
    ]  # fmt: skip
    started = time.perf_counter()
    await run_group([command], timeout=timeout)
    wall = time.perf_counter() - started
    try:
        metrics = json.loads(metrics_file.read_text())
    except (OSError, ValueError) as exc:
        raise WrongResult(f"no readable metrics in {metrics_file}: {exc}") from exc
    if metrics.get("ft") != ft:
        raise WrongResult(f"ran with --ft {ft} but the metrics say ft={metrics.get('ft')!r}")
    restarted = sorted(n for n, m in metrics.get("instances", {}).items() if m.get("restarts"))
    if restarted:  # nothing was killed: a restart is a failure the figures would hide
        raise WrongResult(f"instances restarted during the run: {', '.join(restarted)}")
    return wall, metrics


#: (corpus, output directory, parallelism, timeout) -> (wall seconds, the engine's metrics or None)
Runner = Callable[[Corpus, Path, int, float], Awaitable[tuple[float, dict | None]]]
RUNNERS: dict[str, Runner] = {
    "bytewax": run_bytewax,
    **{f"stashflow-{mode}": functools.partial(run_stashflow, ft=mode) for mode in FT_MODES},
}


async def measure_process_system(
    name: str, corpus: Corpus, probe: Corpus, reference: Counter[str], probe_reference: Counter[str],
    outcome: Outcome, args: argparse.Namespace,
) -> None:  # fmt: skip
    """One round of a process-based system: the tiny probe run (fixed cost), then the real one."""
    runner = RUNNERS[name]
    out_root = args.work / name
    try:
        probe_out = fresh_dir(out_root / "startup")
        startup, _ = await runner(probe, probe_out, args.parallelism, args.timeout)
        check_output(probe_out, probe_reference)
        out_dir = fresh_dir(out_root / "output")
        await wait_until_quiet(args.quiet_wait)
        with OtherWork() as others:
            wall, metrics = await runner(corpus, out_dir, args.parallelism, args.timeout)
        check_output(out_dir, reference)
    except Skipped as exc:
        outcome.status, outcome.reason = "skipped", str(exc)
        return
    except GroupFailed as exc:
        details = "\n".join(
            f"--- {' '.join(f.argv)}\n{tail(f.stderr) or tail(f.stdout)}" for f in exc.finished
        )
        outcome.status, outcome.reason = "error", f"{exc}\n{details}"
        return
    except WrongResult as exc:
        outcome.status, outcome.reason = "error", f"wrong result: {exc}"
        return
    outcome.startup_s.append(startup)
    outcome.wall_s.append(wall)
    outcome.cpu_s_by_others.append(others.cpu_s)
    outcome.cpu_s.append(others.own_cpu_s)
    if metrics is not None:
        outcome.engine.append(metrics)


# --- main -------------------------------------------------------------------------------------------


def bytewax_version() -> str | None:
    dist = list((REPO / "bench" / ".venv-bytewax").glob("lib/python*/site-packages/bytewax-*.dist-info"))
    return dist[0].name.removeprefix("bytewax-").removesuffix(".dist-info") if dist else None


def ratio(report: dict[str, dict[str, Any]], a: str, b: str) -> float | None:
    x, y = report[a].get("words_per_s"), report[b].get("words_per_s")
    return x / y if x and y else None


def paired_ratios(outcomes: dict[str, Outcome], a: str, b: str, what: str = "wall_s") -> list[float]:
    """Per round, ``what`` (``wall_s`` or ``cpu_s``) of ``b`` over that of ``a``: for wall time, the words/s
    of ``a`` over ``b``; for CPU time, the words per CPU-second. Each from two back-to-back runs."""
    if outcomes[a].status != "ok" or outcomes[b].status != "ok":
        return []
    pairs = zip(getattr(outcomes[a], what), getattr(outcomes[b], what), strict=True)
    return [vb / va for va, vb in pairs if va and vb]


def _known(values: list[float | None] | None) -> list[float]:
    return [v for v in values or () if v is not None]


def print_table(report: dict[str, Any]) -> None:
    print(f"\nword count, {report['corpus']['words']:,} words ({report['corpus']['distinct_words']:,} distinct), "
          f"{report['rounds']} round(s), parallelism {report['parallelism']}, medians")  # fmt: skip
    print(
        f"{'system':<18} {'status':<8} {'wall s':>8} {'words/s':>12} {'startup s':>10} {'words/s excl. startup':>22}"
        f" {'CPU-s':>7} {'others CPU-s':>13}"
    )
    for name, r in report["systems"].items():
        wall, startup = r.get("wall_s"), r.get("startup_s")
        cells = [
            f"{wall['median']:8.2f}" if wall else f"{'-':>8}",
            f"{r['words_per_s']:12,.0f}" if "words_per_s" in r else f"{'-':>12}",
            f"{startup['median']:10.2f}" if startup else f"{'-':>10}",
            f"{r['words_per_s_excl_startup']:22,.0f}" if "words_per_s_excl_startup" in r else f"{'-':>22}",
            f"{r['cpu_s']['median']:7.2f}" if "cpu_s" in r else f"{'-':>7}",
            f"{max(others):13.2f}"
            if (others := _known(r.get("rounds", {}).get("cpu_s_by_others")))
            else f"{'-':>13}",
        ]
        print(f"{name:<18} {r['status']:<8} {' '.join(cells)}")
    for name, r in report["systems"].items():
        if r.get("reason"):
            print(f"\n{name} {r['status']}: {r['reason']}")
    print(
        "(CPU-s: the system's own CPU time in a run, all its processes; others CPU-s: the most CPU time other\n"
        " processes used during one round; see README.md)\n"
    )
    for key, value in report["ratios"].items():
        print(f"{key:<38} {'-' if value is None else f'{value:.3f}x'}")
    ft = report.get("fault_tolerance_cost")
    if ft:
        print("\ncost of --ft lineage against --ft none (medians over rounds; min-max in brackets)")

        def fmt(summary: dict[str, float] | None, unit: str, digits: int = 3) -> str:
            if not summary:
                return "-"
            return f"{summary['median']:.{digits}f}{unit} ({summary['min']:.{digits}f}-{summary['max']:.{digits}f})"

        target = f"target >= {TARGET_LINEAGE_RATIO}"
        print(f"  words/s lineage/none, of the medians   {_num(ft['lineage_over_none'], 'x')}  ({target})")
        print(f"  words/s lineage/none, per round        {fmt(ft['lineage_over_none_per_round'], 'x')}")
        print(f"  words/CPU-s lineage/none, of medians   {_num(ft['cpu_lineage_over_none'], 'x')}")
        print(f"  words/CPU-s lineage/none, per round    {fmt(ft['cpu_lineage_over_none_per_round'], 'x')}")
        lineage = ft.get("lineage") or {}
        print(f"  lineage delta per batch, bytes         {fmt(lineage.get('delta_bytes_per_batch'), '', 1)}")
        print(f"  batch (frame) bytes                    {fmt(lineage.get('bytes_per_batch'), '', 0)}")
        print(
            f"  delta / batch                          {fmt(lineage.get('delta_pct_of_batch'), '%', 2)}"
            f"  (target < {TARGET_DELTA_PCT:g}%)"
        )
        print(f"  GCS commit lag p50, ms                 {fmt(lineage.get('gcs_commit_lag_p50_ms'), '', 2)}")
        print(f"  GCS commit lag p99, ms                 {fmt(lineage.get('gcs_commit_lag_p99_ms'), '', 2)}")


def _num(value: float | None, unit: str) -> str:
    return "-" if value is None else f"{value:.3f}{unit}"


async def main_async(args: argparse.Namespace) -> int:
    machine = machine_info()
    label = f"{args.words // 1_000_000}M" if args.words % 1_000_000 == 0 else str(args.words)
    spec = CorpusSpec(words=args.words, files=args.files, seed=args.seed)
    manifest = ensure_corpus(args.data / f"corpus-{label}", spec)
    corpus = Corpus(args.data / f"corpus-{label}", args.words, corpus_files(args.data / f"corpus-{label}"))
    probe_dir = args.data / "corpus-startup"
    ensure_corpus(probe_dir, CorpusSpec(words=STARTUP_WORDS, files=args.files, seed=args.seed))
    probe = Corpus(probe_dir, STARTUP_WORDS, corpus_files(probe_dir))
    probe_reference = count_with_counter(probe.files)

    outcomes = {name: Outcome() for name in args.systems}
    reference: Counter[str] | None = None
    for round_ in range(1, args.rounds + 1):
        print(f"round {round_}/{args.rounds}", file=sys.stderr)
        await wait_until_quiet(args.quiet_wait)
        with OtherWork() as others:
            started = time.perf_counter()
            counts = count_with_counter(corpus.files)
            elapsed = time.perf_counter() - started
        if reference is None:
            reference = counts
            if reference.total() != corpus.words:
                raise SystemExit(
                    f"corpus {corpus.directory} holds {reference.total():,} words, expected {corpus.words:,}"
                )
        elif counts != reference:
            raise SystemExit("the Counter gave different results in two rounds: the corpus changed under us")
        if "counter" in outcomes:
            outcomes["counter"].wall_s.append(elapsed)
            outcomes["counter"].cpu_s_by_others.append(others.cpu_s)
            outcomes["counter"].cpu_s.append(others.own_cpu_s)
        for name in round_order(args.systems, round_):
            if name != "counter" and outcomes[name].status == "ok":
                await measure_process_system(
                    name, corpus, probe, reference, probe_reference, outcomes[name], args
                )
                print(f"  {name}: {outcomes[name].status} {outcomes[name].wall_s[-1:]}", file=sys.stderr)

    assert reference is not None
    systems = {name: outcome.report(corpus.words) for name, outcome in outcomes.items()}
    if "bytewax" in systems:
        systems["bytewax"].update(
            version=bytewax_version(), processes=args.parallelism, workers_per_process=1
        )
    present = [s for s in SYSTEMS if s in systems]
    pairs = [(a, b) for a in STASHFLOW_SYSTEMS for b in ("bytewax", "counter")]
    pairs += [("bytewax", "counter"), ("stashflow-lineage", "stashflow-none")]
    report = {
        "benchmark": "wordcount",
        "corpus": {
            "directory": str(corpus.directory),
            "words": corpus.words,
            "distinct_words": len(reference),
            "bytes": manifest["total_bytes"],
            **{k: manifest["spec"][k] for k in ("files", "seed", "vocab", "zipf_s")},
        },
        "rounds": args.rounds,
        "parallelism": args.parallelism,
        "machine": machine,
        "systems": systems,
        "ratios": {f"{a}/{b}": ratio(systems, a, b) for a, b in pairs if a in present and b in present},
    }
    if all(s in present for s in STASHFLOW_SYSTEMS):
        per_round = paired_ratios(outcomes, "stashflow-lineage", "stashflow-none")
        per_round_cpu = paired_ratios(outcomes, "stashflow-lineage", "stashflow-none", "cpu_s")
        cpu_l, cpu_n = (systems[s].get("words_per_cpu_s") for s in ("stashflow-lineage", "stashflow-none"))
        report["fault_tolerance_cost"] = {
            "lineage_over_none": ratio(systems, "stashflow-lineage", "stashflow-none"),
            "lineage_over_none_per_round": summarize(per_round),
            "lineage_over_none_rounds": per_round,
            "cpu_lineage_over_none": cpu_l / cpu_n if cpu_l and cpu_n else None,
            "cpu_lineage_over_none_per_round": summarize(per_round_cpu),
            "cpu_lineage_over_none_rounds": per_round_cpu,
            "target_lineage_over_none": TARGET_LINEAGE_RATIO,
            "lineage": systems["stashflow-lineage"].get("lineage"),
            "target_delta_pct_of_batch": TARGET_DELTA_PCT,
        }
    print_table(report)
    write_json(args.out, report)
    return 1 if any(r["status"] == "error" for r in systems.values()) else 0


def round_order(systems: list[str], round_: int) -> list[str]:
    """The systems in the order round ``round_`` (from 1) runs them: the stashflow modes swap places
    every round, so over an even number of rounds each goes first as often as the other."""
    order = list(systems)
    slots = [i for i, name in enumerate(order) if name in STASHFLOW_SYSTEMS]
    if round_ % 2 == 0 and len(slots) == 2:
        i, j = slots
        order[i], order[j] = order[j], order[i]
    return order


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--words", type=int, default=10_000_000, help="corpus size in words (default 10M)")
    parser.add_argument("--quick", action="store_const", dest="words", const=1_000_000, help="1M words")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument(
        "--systems",
        default=",".join(SYSTEMS),
        help=f"comma-separated subset of {','.join(SYSTEMS)} (stashflow: both modes)",
    )
    parser.add_argument("--parallelism", type=int, default=2, help="processes for Bytewax and stashflow")
    parser.add_argument("--files", type=int, default=4, help="corpus files (the unit of source parallelism)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=900, help="seconds one run of one system may take")
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=60,
        help="seconds to wait, before each run, for other work to stop",
    )
    parser.add_argument("--data", type=Path, default=REPO / "bench" / "data")
    parser.add_argument(
        "--work", type=Path, default=REPO / "bench" / "out" / "wordcount", help="systems' outputs"
    )
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "out" / "wordcount.json")
    args = parser.parse_args(argv)
    names = [s.strip() for s in args.systems.split(",") if s.strip()]
    # "stashflow" is both modes, none then lineage
    expanded = [x for s in names for x in (STASHFLOW_SYSTEMS if s == "stashflow" else (s,))]
    args.systems = list(dict.fromkeys(expanded))
    unknown = sorted(set(args.systems) - set(SYSTEMS))
    if unknown:
        parser.error(f"unknown system(s) {unknown}; choose from {', '.join(SYSTEMS)}")
    if args.rounds < 1 or args.parallelism < 1:
        parser.error("--rounds and --parallelism must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    return asyncio.run(main_async(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
