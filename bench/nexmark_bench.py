"""Nexmark, side by side: events/s of Q1, Q2, Q5, Q7 and Q8 with ``--ft none`` and ``--ft lineage``,
and Q5 against PyFlink's Python DataStream API.

::

    .venv/bin/python bench/nexmark_bench.py [--events 200000 | --quick] [--rounds 3]
        [--queries q1,q2,q5,q7,q8] [--parallelism 2] [--out-of-order-ms 2000]
        [--pyflink | --no-pyflink] [--pyflink-mode process|thread] [--out bench/out/nexmark.json]

Per round and query, ``python -m engine run jobs/nexmark/<q>.py --ft none`` and ``--ft lineage`` run
back to back as fresh processes (``none`` first in odd rounds, ``lineage`` first in even ones, so a
drift in the machine's speed favours neither), each with ``--parallelism N --metrics-out ...`` and
``-P events=N -P seed=S -P out_of_order_ms=D -P events_per_second=E -P output=DIR``. Events/s is the
engine's own figure from the metrics file: ``source_records / elapsed_s``, where ``elapsed_s`` runs
from the job's start (every instance deployed) to its end. Beside it, the wall time of the process
(interpreter start-up, the local coordinator and workers, deployment, the run) and the events/s that
gives, the process's CPU time, and the CPU time other processes used meanwhile
(``cpu_s_by_others``): before each run the benchmark waits (``--quiet-wait``, 60 s at most) for the
machine to be quiet, and on 2 cores a run during which others used a good part of a core is not one
to quote.

Every run's output is checked against ``jobs/nexmark/reference.py`` over the same events
(``connectors.nexmark.events(N, NexmarkConfig(seed, events_per_second, max_out_of_order_ms))``): q1
and q2 as multisets (a parallel job keeps no global order), q5, q7 and q8 sorted, exactly (JSON
arrays read back as tuples). A run whose output differs, that fails, that reports another ``ft`` or
other than N source records, or in which an instance restarted (nothing is killed here) is an error
with a one-line description, never a figure; that query and mode then run no further rounds.

The cost of fault tolerance, per query: lineage/none as the median of the per-round ratios (each from
two back-to-back runs; the target, >= 0.9x, is judged on it) and as the ratio of the two modes' median
events/s.

PyFlink (``--pyflink``, the default when ``bench/.venv-pyflink`` exists; ``bash bench/setup_pyflink.sh``
makes it): ``bench/pyflink_nexmark.py --events N --parallelism P`` (``--pyflink-mode thread`` adds
``--conf python.execution-mode=thread``), ``--pyflink-rounds`` times (1: it runs ~1 ms per event in
its default process mode) after the stashflow rounds. It checks its own output against
``reference.q5``; a mismatch is an error. Its events are the generator's defaults
(``NexmarkConfig()``: seed 0, 10,000 events/s of event time, in event-time order), so when this
benchmark's config differs (``--out-of-order-ms`` is 2000 by default) every round also runs
stashflow's Q5 in both modes over PyFlink's events (``q5-pyflink-events``, checked the same way) and
the ratios use those runs. Two ratios per mode: the engines' own figures (stashflow's
``source_records / elapsed_s`` over PyFlink's ``events / wall_s``; PyFlink's ``wall_s`` counts from
``execute_and_collect``, so it includes job submission and the mini-cluster's and Python workers'
start-up, ~5-8 s, that stashflow's ``elapsed_s`` leaves out) and from start-up (stashflow's process
wall time over PyFlink's ``total_s``, JVM launch included).

Writes ``--out`` (JSON, every run) and a Markdown table beside it (``nexmark.md``); prints the table.
Exit status 1 when any run was an error.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import shutil
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _harness import (
    REPO,
    GroupFailed,
    OtherWork,
    machine_info,
    run_group,
    summarize,
    tail,
    wait_until_quiet,
    write_json,
)

# The references (jobs/nexmark/reference.py) are not installed: import them from the repo.
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from connectors.nexmark import NexmarkConfig, events
from jobs.nexmark import reference

ENGINE_PYTHON = REPO / ".venv" / "bin" / "python"
JOBS = REPO / "jobs" / "nexmark"
PYFLINK_VENV = REPO / "bench" / ".venv-pyflink"
PYFLINK_PYTHON = PYFLINK_VENV / "bin" / "python"
PYFLINK_SCRIPT = REPO / "bench" / "pyflink_nexmark.py"
QUERIES = ("q1", "q2", "q5", "q7", "q8")
#: Queries whose output order is the input's: a parallel run is compared as a multiset.
UNORDERED = frozenset({"q0", "q1", "q2"})
FT_MODES = ("none", "lineage")
TARGET_LINEAGE_RATIO = 0.9
#: The events bench/pyflink_nexmark.py generates: the generator's defaults.
PYFLINK_EVENTS = NexmarkConfig()
PYFLINK_CASE = "q5-pyflink-events"
QUICK_EVENTS = 20_000


class WrongResult(Exception):
    """A run finished but its output or its metrics are not what they must be (one line)."""


class Skipped(Exception):
    """PyFlink is not available here; the message says why and how to make it so."""


@dataclass(frozen=True)
class Case:
    """One query over one event stream: ``name`` is the query, or ``q5-pyflink-events``."""

    name: str
    query: str
    config: NexmarkConfig


@dataclass
class Mode:
    """What one query did in one ``--ft`` mode over all rounds."""

    status: str = "ok"  # ok | error
    reason: str | None = None
    runs: list[dict[str, Any]] = field(default_factory=list)  # per round, in order

    def report(self) -> dict[str, Any]:
        out: dict[str, Any] = {"status": self.status}
        if self.reason:
            out["reason"] = self.reason
        if self.status == "ok" and self.runs:
            out["verified_runs"] = sum(1 for r in self.runs if r["verified"])
            for key in ("events_per_s", "elapsed_s", "wall_s", "wall_events_per_s", "cpu_s"):
                out[key] = summarize([r[key] for r in self.runs if r.get(key) is not None])
        out["runs"] = self.runs  # a failed mode keeps its completed rounds, for diagnosis, not figures
        return out


# --- the references -----------------------------------------------------------------------------------


def as_tuples(value: Any) -> Any:
    """JSON arrays, read back, as the tuples the references return (nested ones too)."""
    return tuple(as_tuples(v) for v in value) if isinstance(value, list) else value


def expected_output(cases: list[Case], count: int) -> dict[str, list[Any]]:
    """Each case's reference output, sorted; the events of each config are generated once."""
    out: dict[str, list[Any]] = {}
    for config in dict.fromkeys(c.config for c in cases):
        stream = events(count, config)
        for case in (c for c in cases if c.config == config):
            out[case.name] = sorted(getattr(reference, case.query)(stream))
        del stream
    return out


def read_rows(out_dir: Path) -> list[Any]:
    parts = sorted(out_dir.glob("part-*.jsonl"))
    if not parts:
        raise WrongResult(f"no part-*.jsonl files in {out_dir}")
    rows = []
    for part in parts:
        with part.open(encoding="utf-8") as lines:
            for number, line in enumerate(lines, 1):
                try:
                    rows.append(as_tuples(json.loads(line)))
                except ValueError:
                    raise WrongResult(f"{part}:{number}: not a JSON line: {line[:80]!r}") from None
    return rows


def check_output(query: str, got: list[Any], expected: list[Any]) -> None:
    """Raise :class:`WrongResult`, in one line, unless ``got`` is ``expected`` (sorted, see the docstring)."""
    if query in UNORDERED:
        same = Counter(got) == Counter(expected)
    else:
        try:
            same = sorted(got) == expected
        except TypeError:  # rows of another shape than the reference's do not sort with them
            same = False
    if same:
        return
    got_n, expected_n = Counter(got), Counter(expected)
    missing, extra = expected_n - got_n, got_n - expected_n
    how = "as a multiset" if query in UNORDERED else "sorted"
    detail = [f"{query}: {len(got):,} rows, expected {len(expected):,} ({how})"]
    if missing:
        detail.append(f"{missing.total():,} missing, e.g. {list(missing)[:3]}")
    if extra:
        detail.append(f"{extra.total():,} not in the reference, e.g. {list(extra)[:3]}")
    raise WrongResult("; ".join(detail))


# --- one stashflow run --------------------------------------------------------------------------------


def fresh_dir(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


async def run_stashflow(case: Case, ft: str, expected: list[Any], args: argparse.Namespace) -> dict[str, Any]:
    """One ``engine run`` of ``case`` with ``--ft ft``, checked; its figures. Raises WrongResult, GroupFailed."""
    out_dir = fresh_dir(args.work / case.name / ft)
    metrics_file = out_dir.parent / f"{ft}.metrics.json"
    metrics_file.unlink(missing_ok=True)
    command = [
        str(ENGINE_PYTHON), "-m", "engine", "run", str(JOBS / f"{case.query}.py"),
        "--ft", ft,
        "--parallelism", str(args.parallelism),
        "--metrics-out", str(metrics_file),
        "-P", f"events={args.events}",
        "-P", f"seed={case.config.seed}",
        "-P", f"out_of_order_ms={case.config.max_out_of_order_ms}",
        "-P", f"events_per_second={case.config.events_per_second}",
        "-P", f"output={out_dir}",
    ]  # fmt: skip
    busy = await wait_until_quiet(args.quiet_wait)
    with OtherWork() as others:
        started = time.perf_counter()
        await run_group([command], timeout=args.timeout)
        wall = time.perf_counter() - started
    try:
        metrics = json.loads(metrics_file.read_text())
    except (OSError, ValueError) as exc:
        raise WrongResult(f"no readable metrics in {metrics_file}: {exc}") from exc
    if metrics.get("ft") != ft:
        raise WrongResult(f"ran with --ft {ft} but the metrics say ft={metrics.get('ft')!r}")
    if metrics.get("source_records") != args.events:
        raise WrongResult(f"{metrics.get('source_records')} source records, expected {args.events}")
    restarted = sorted(n for n, m in metrics.get("instances", {}).items() if m.get("restarts"))
    if restarted:  # nothing was killed: a restart is a failure the figures would hide
        raise WrongResult(f"instances restarted during the run: {', '.join(restarted)}")
    rows = read_rows(out_dir)
    check_output(case.query, rows, expected)
    elapsed = metrics["elapsed_s"]
    return {
        "ft": ft,
        "verified": True,
        "rows": len(rows),
        "events_per_s": args.events / elapsed if elapsed else None,
        "engine_records_per_s": metrics.get("records_per_s"),
        "elapsed_s": elapsed,
        "wall_s": round(wall, 3),
        "wall_events_per_s": args.events / wall,
        "cpu_s": others.own_cpu_s,
        "cpu_s_by_others": others.cpu_s,
        "busy_before": busy,
    }


async def measure(case: Case, ft: str, mode: Mode, expected: list[Any], args: argparse.Namespace) -> None:
    try:
        run = await run_stashflow(case, ft, expected, args)
    except GroupFailed as exc:
        details = "\n".join(tail(f.stderr) or tail(f.stdout) for f in exc.finished)
        mode.status, mode.reason = "error", f"{case.name} --ft {ft}: {exc}\n{details}".rstrip()
    except WrongResult as exc:
        mode.status, mode.reason = "error", f"{case.name} --ft {ft}: wrong result: {exc}"
    else:
        mode.runs.append(run)
    last = f"{mode.runs[-1]['events_per_s']:,.0f} events/s" if mode.status == "ok" else mode.status
    print(f"  {case.name} --ft {ft}: {last}", file=sys.stderr)


def round_order(round_: int) -> tuple[str, ...]:
    """``none`` first in odd rounds (from 1), ``lineage`` first in even ones."""
    return FT_MODES if round_ % 2 else FT_MODES[::-1]


# --- PyFlink ------------------------------------------------------------------------------------------


async def run_pyflink(args: argparse.Namespace) -> dict[str, Any]:
    """One run of bench/pyflink_nexmark.py; its report plus our wall time. Raises Skipped, WrongResult, GroupFailed."""
    if not PYFLINK_PYTHON.exists():
        raise Skipped(
            f"PyFlink is not installed: {PYFLINK_PYTHON} is missing; run bash bench/setup_pyflink.sh"
        )
    out = args.work / "pyflink-q5.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
    command = [
        str(PYFLINK_PYTHON), str(PYFLINK_SCRIPT),
        "--events", str(args.events), "--parallelism", str(args.parallelism), "--out", str(out),
    ]  # fmt: skip
    if args.pyflink_mode == "thread":
        command += ["--conf", "python.execution-mode=thread"]
    busy = await wait_until_quiet(args.quiet_wait)
    failed: GroupFailed | None = None
    with OtherWork() as others:
        started = time.perf_counter()
        try:
            await run_group([command], timeout=args.pyflink_timeout)
        except GroupFailed as exc:  # exit status 1 is also its output differing from reference.q5
            failed = exc
        wall = time.perf_counter() - started
    try:
        report = json.loads(out.read_text())
    except (OSError, ValueError):
        if failed:
            raise failed from None
        raise WrongResult(f"pyflink_nexmark.py wrote no readable {out}") from None
    check = report.get("check", {})
    if not check.get("matches_reference"):
        raise WrongResult(
            f"q5 on PyFlink: {check.get('rows')} rows, expected {check.get('expected_rows')}; "
            f"missing e.g. {check.get('missing')}, not in the reference e.g. {check.get('unexpected')}"
        )
    if failed:
        raise failed
    report.pop("machine", None)
    return {**report, "process_wall_s": round(wall, 3), "cpu_s_by_others": others.cpu_s, "busy_before": busy}


async def pyflink_block(args: argparse.Namespace) -> dict[str, Any]:
    """PyFlink's Q5 runs, or why there are none."""
    mode = {"mode": args.pyflink_mode, "events": args.events, "parallelism": args.parallelism}
    missing = f"PyFlink is not installed: {PYFLINK_PYTHON} is missing; run bash bench/setup_pyflink.sh"
    if not args.pyflink:
        why = "not asked for (--no-pyflink)" if args.pyflink_asked else missing
        return {"status": "skipped", "reason": why, **mode}
    runs = []
    for i in range(args.pyflink_rounds):
        print(f"pyflink q5 {i + 1}/{args.pyflink_rounds} ({args.pyflink_mode} mode)", file=sys.stderr)
        try:
            runs.append(await run_pyflink(args))
        except Skipped as exc:
            return {"status": "skipped", "reason": str(exc), **mode}
        except WrongResult as exc:
            return {"status": "error", "reason": f"wrong result: {exc}", "runs": runs, **mode}
        except GroupFailed as exc:
            details = "\n".join(tail(f.stderr) or tail(f.stdout) for f in exc.finished)
            return {"status": "error", "reason": f"{exc}\n{details}".rstrip(), "runs": runs, **mode}
        print(f"  pyflink q5: {runs[-1]['events_per_s']:,} events/s", file=sys.stderr)
    return {
        "status": "ok",
        **mode,
        "version": runs[-1].get("pyflink_version"),
        "java": runs[-1].get("java_version"),
        "events_per_s": summarize([r["events_per_s"] for r in runs]),
        "wall_s": summarize([r["wall_s"] for r in runs]),
        "total_s": summarize([r["total_s"] for r in runs]),
        "runs": runs,
    }


# --- the report ---------------------------------------------------------------------------------------


def _median(summary: dict[str, float] | None) -> float | None:
    return summary["median"] if summary else None


def fault_tolerance_cost(modes: dict[str, Mode]) -> dict[str, Any]:
    """lineage/none per round (paired back-to-back runs) and of the medians, and the target."""
    none, lineage = modes["none"], modes["lineage"]
    per_round: list[float] = []
    if none.status == lineage.status == "ok":
        pairs = zip(none.runs, lineage.runs, strict=True)
        per_round = [
            b["events_per_s"] / a["events_per_s"] for a, b in pairs if a["events_per_s"] and b["events_per_s"]
        ]
    of_medians = None
    if none.status == lineage.status == "ok":
        eps_l, eps_n = (_median(summarize([r["events_per_s"] for r in m.runs])) for m in (lineage, none))
        of_medians = eps_l / eps_n if eps_l and eps_n else None
    per_round_summary = summarize(per_round)
    judged = _median(per_round_summary)
    return {
        "lineage_over_none_per_round": per_round_summary,
        "lineage_over_none_rounds": per_round,
        "lineage_over_none_of_medians": of_medians,
        "target": TARGET_LINEAGE_RATIO,
        "met": None if judged is None else judged >= TARGET_LINEAGE_RATIO,
    }


def pyflink_ratios(pyflink: dict[str, Any], q5: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Stashflow's Q5 (each mode) over PyFlink's, from the engines' own figures and from start-up."""
    out: dict[str, Any] = {}
    flink_eps = _median(pyflink.get("events_per_s"))
    flink_total = _median(pyflink.get("total_s"))
    for ft, mode in q5.items():
        eps, wall = _median(mode.get("events_per_s")), _median(mode.get("wall_s"))
        out[f"{ft}/pyflink"] = eps / flink_eps if eps and flink_eps else None
        out[f"{ft}/pyflink_from_startup"] = flink_total / wall if wall and flink_total else None
    return out


def _num(value: float | None, fmt: str = ",.0f", unit: str = "") -> str:
    return "-" if value is None else f"{value:{fmt}}{unit}"


def _ratio_cell(cost: dict[str, Any]) -> str:
    s = cost["lineage_over_none_per_round"]
    if not s:
        return "-"
    return (
        f"{s['median']:.3f}x ({s['min']:.3f}-{s['max']:.3f})"
        if s["min"] != s["max"]
        else f"{s['median']:.3f}x"
    )


def markdown(report: dict[str, Any]) -> str:
    c = report["config"]
    lines = [
        f"# Nexmark: stashflow `--ft none` vs `--ft lineage`{' and PyFlink' if report['pyflink']['status'] == 'ok' else ''}",
        "",
        f"{report['events']:,} events (seed {c['seed']}, {c['events_per_second']:,} events/s of event time, "
        f"out of order by up to {c['out_of_order_ms']} ms), parallelism {report['parallelism']}, "
        f"{report['rounds']} round(s); medians; events/s = source records / the engine's `elapsed_s`.",
        "",
        "| query | none events/s | lineage events/s | lineage/none per round | of medians | target | met "
        "| none wall s | lineage wall s | output |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, q in report["queries"].items():
        none, lineage, cost = q["modes"]["none"], q["modes"]["lineage"], q["lineage_over_none"]
        errors = [m for m in (none, lineage) if m["status"] != "ok"]
        output = (
            "error: " + errors[0]["reason"].splitlines()[0]
            if errors
            else f"verified, {q['expected_rows']:,} row{'' if q['expected_rows'] == 1 else 's'}"
        )
        met = {True: "met", False: "missed", None: "-"}[cost["met"]]
        lines.append(
            f"| {name} | {_num(_median(none.get('events_per_s')))} | {_num(_median(lineage.get('events_per_s')))} "
            f"| {_ratio_cell(cost)} | {_num(cost['lineage_over_none_of_medians'], '.3f', 'x')} "
            f"| >= {cost['target']}x | {met} | {_num(_median(none.get('wall_s')), '.2f')} "
            f"| {_num(_median(lineage.get('wall_s')), '.2f')} | {output} |"
        )
    others = [
        r["cpu_s_by_others"]
        for q in report["queries"].values()
        for m in q["modes"].values()
        for r in m["runs"]
    ]
    known = summarize([o for o in others if o is not None])
    if known:
        lines += [
            "",
            f"Other processes used up to {known['max']:.2f} CPU-s during one run (median {known['median']:.2f}): "
            "a run with more than a few tenths is not one to quote.",
        ]
    pf = report["pyflink"]
    lines += ["", "## Q5 against PyFlink", ""]
    if pf["status"] != "ok":
        lines.append(f"PyFlink {pf['status']}: {pf['reason'].splitlines()[0]}")
        return "\n".join(lines) + "\n"
    s = pf["stashflow_q5"]
    lines += [
        f"PyFlink {pf['version']} ({pf['java']}), `{pf['mode']}` mode, {pf['events']:,} events, parallelism "
        f"{pf['parallelism']}, {len(pf['runs'])} run(s); stashflow's Q5 over the same events ({s['case']}).",
        "",
        "| system | events/s (engine's figure) | / PyFlink | from start-up: wall s | / PyFlink |",
        "|---|---|---|---|---|",
        f"| PyFlink `{pf['mode']}` | {_num(_median(pf['events_per_s']))} | 1 | {_num(_median(pf['total_s']), '.2f')} | 1 |",
    ]
    for ft in FT_MODES:
        m = s["modes"][ft]
        lines.append(
            f"| stashflow `--ft {ft}` | {_num(_median(m.get('events_per_s')))} "
            f"| {_num(s['ratios'][f'{ft}/pyflink'], '.2f', 'x')} | {_num(_median(m.get('wall_s')), '.2f')} "
            f"| {_num(s['ratios'][f'{ft}/pyflink_from_startup'], '.2f', 'x')} |"
        )
    lines += [
        f"\nstashflow `--ft {ft}` error: {m['reason'].splitlines()[0]}"
        for ft, m in s["modes"].items()
        if m["status"] != "ok"
    ]
    lines += [
        "",
        "PyFlink's events/s counts from `execute_and_collect` (job submission and mini-cluster start-up "
        "included); stashflow's from the job's start (deployment excluded). From start-up: PyFlink's "
        "`total_s` (JVM launch on) against stashflow's process wall time.",
    ]
    return "\n".join(lines) + "\n"


# --- main ---------------------------------------------------------------------------------------------


async def main_async(args: argparse.Namespace) -> int:
    machine = machine_info()
    config = NexmarkConfig(
        seed=args.seed, events_per_second=args.events_per_second, max_out_of_order_ms=args.out_of_order_ms
    )
    cases = [Case(q, q, config) for q in args.queries]
    q5_for_pyflink = next((c for c in cases if c.query == "q5" and c.config == PYFLINK_EVENTS), None)
    if args.pyflink and PYFLINK_PYTHON.exists() and q5_for_pyflink is None:
        q5_for_pyflink = Case(PYFLINK_CASE, "q5", PYFLINK_EVENTS)
        cases.append(q5_for_pyflink)
    print(f"references over {args.events:,} events", file=sys.stderr)
    expected = expected_output(cases, args.events)
    modes = {c.name: {ft: Mode() for ft in FT_MODES} for c in cases}
    for round_ in range(1, args.rounds + 1):
        print(f"round {round_}/{args.rounds}", file=sys.stderr)
        for case in cases:
            for ft in round_order(round_):
                if modes[case.name][ft].status == "ok":
                    await measure(case, ft, modes[case.name][ft], expected[case.name], args)
    pyflink = await pyflink_block(args)

    def query_report(case: Case) -> dict[str, Any]:
        return {
            "query": case.query,
            "expected_rows": len(expected[case.name]),
            "modes": {ft: modes[case.name][ft].report() for ft in FT_MODES},
            "lineage_over_none": fault_tolerance_cost(modes[case.name]),
        }

    queries = {c.name: query_report(c) for c in cases if c.name != PYFLINK_CASE}
    if pyflink["status"] == "ok" and q5_for_pyflink is not None:
        q5 = query_report(q5_for_pyflink)
        pyflink["stashflow_q5"] = {
            "case": q5_for_pyflink.name,
            "config": dataclasses.asdict(q5_for_pyflink.config),
            **q5,
            "ratios": pyflink_ratios(pyflink, q5["modes"]),
        }
    report = {
        "benchmark": "nexmark",
        "events": args.events,
        "config": {
            "seed": args.seed,
            "events_per_second": args.events_per_second,
            "out_of_order_ms": args.out_of_order_ms,
        },
        "rounds": args.rounds,
        "parallelism": args.parallelism,
        "machine": machine,
        "queries": queries,
        "pyflink": pyflink,
    }
    if PYFLINK_CASE in modes and pyflink["status"] != "ok":  # ran for a comparison that did not happen
        report["q5_pyflink_events"] = query_report(next(c for c in cases if c.name == PYFLINK_CASE))
    table = markdown(report)
    print("\n" + table)
    write_json(args.out, report)
    args.out.with_suffix(".md").write_text(table)
    print(f"wrote {args.out.with_suffix('.md')}", file=sys.stderr)
    errors = [m for per_case in modes.values() for m in per_case.values() if m.status == "error"]
    for m in errors:
        print(f"error: {m.reason}", file=sys.stderr)
    return 1 if errors or pyflink["status"] == "error" else 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--events", type=int, help="Nexmark events per run (default 200,000; --quick: 20,000)"
    )
    parser.add_argument(
        "--rounds", type=int, help="rounds of every query in both modes (default 3; --quick: 1)"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"{QUICK_EVENTS:,} events, 1 round, 2 s quiet wait: a check, not figures",
    )
    parser.add_argument(
        "--queries", default=",".join(QUERIES), help=f"comma-separated subset of {','.join(QUERIES)}"
    )
    parser.add_argument("--parallelism", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--events-per-second", type=int, default=10_000, help="of event time (the generator's default)"
    )
    parser.add_argument(
        "--out-of-order-ms",
        type=int,
        default=2000,
        help="how far event times go back; the watermark allows for it",
    )
    parser.add_argument(
        "--pyflink",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="run Q5 on PyFlink too (default: when bench/.venv-pyflink exists)",
    )
    parser.add_argument(
        "--pyflink-mode",
        choices=("process", "thread"),
        default="process",
        help="python.execution-mode of PyFlink (process: its default)",
    )
    parser.add_argument("--pyflink-rounds", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=900, help="seconds one stashflow run may take")
    parser.add_argument(
        "--pyflink-timeout", type=float, default=3600, help="seconds one PyFlink run may take"
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        help="seconds to wait, before each run, for other work to stop (60; --quick: 2)",
    )
    parser.add_argument(
        "--work", type=Path, help="runs' outputs and metrics (default: nexmark/ beside --out)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=REPO / "bench" / "out" / "nexmark.json",
        help="the JSON report (a directory: nexmark.json in it); the tables go beside it as nexmark.md",
    )
    args = parser.parse_args(argv)
    if args.out.is_dir():
        args.out = args.out / "nexmark.json"
    if args.events is None:
        args.events = QUICK_EVENTS if args.quick else 200_000
    if args.rounds is None:
        args.rounds = 1 if args.quick else 3
    if args.quiet_wait is None:
        args.quiet_wait = 2 if args.quick else 60
    args.pyflink_asked = args.pyflink is not None
    if args.pyflink is None:  # neither --pyflink nor --no-pyflink: run it where it is installed
        args.pyflink = PYFLINK_PYTHON.exists()
    if args.work is None:
        args.work = args.out.parent / args.out.stem
    args.queries = list(dict.fromkeys(q.strip() for q in args.queries.split(",") if q.strip()))
    unknown = sorted(set(args.queries) - set(QUERIES))
    if unknown or not args.queries:
        parser.error(f"--queries: unknown or none {unknown}; choose from {', '.join(QUERIES)}")
    if min(args.events, args.rounds, args.parallelism, args.pyflink_rounds, args.events_per_second) < 1:
        parser.error(
            "--events, --rounds, --parallelism, --pyflink-rounds and --events-per-second must be >= 1"
        )
    if args.seed < 0 or args.out_of_order_ms < 0:
        parser.error("--seed and --out-of-order-ms must be >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    return asyncio.run(main_async(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
