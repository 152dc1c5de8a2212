"""Recovery time of one killed keyed-count instance under steady load, with the lineage stash.

::

    .venv/bin/python bench/recovery.py [--rounds 3 | --quick] [--rate 50000] [--duration 10]
        [--keys 100000] [--kill-at 6] [--checkpoint-interval 1] [--victim count/1]
        [--sink separate|chained] [--out bench/out/recovery.json]

Each round runs ``bench/jobs/keyed_load.py`` through the CLI (``--ft lineage``, ``--parallelism 2``):
a rate-limited generator (``--rate`` records/s for ``--duration`` s, keys ``k0 .. k<keys-1>`` in
turn, so every key has state after ``keys / rate`` s) -> ``key_by`` -> ``count`` (a running count:
keyed state) -> a ``FileSink``. ``--kill count/1@T`` SIGKILLs the process of ``count/1`` ``--kill-at``
seconds after the job started, with a checkpoint every ``--checkpoint-interval`` s before it. From the
metrics file (``--metrics-out``) it reports, for that recovery: ``detected_s`` (kill to the
coordinator noticing), ``live_s`` (kill to the end of the replay: the instance is live again),
``replayed_batches``, the checkpoint it restarted from, and the restarts of every instance.

Every round is checked, and a round that fails a check is an error, never a figure:

- the job finished, in mode ``lineage``;
- the victim restarted exactly once, from a complete checkpoint (``checkpoint_id`` set), and no other
  task instance restarted (with ``--sink chained`` the sink instance in the victim's task goes down
  with it and is allowed to);
- the output is exactly once: the part files hold ``(k, n)`` for ``n = 1 .. N_k`` exactly once for
  every key ``k`` seen ``N_k`` times by the source, and nothing else.

Also reported per round: ``records_before_checkpoint``, how many records the victim had counted when
it took the checkpoint it restarted from (the records its key partition gets in the whole run, less
those the new incarnation processed: the metrics' counters start at zero in a new incarnation), and
``checkpoint_key_cycles``, that over the number of keys the victim owns. Keys come in turn, so at 1
or more the restored state is very likely to hold every key of the victim (``--kill-at`` is too early
otherwise, and the round says so).

Before each round it waits (``--quiet-wait``) for other work on the machine to stop, and reports the
CPU time other processes used during the round (``cpu_s_by_others``), as the other benchmarks do. The
CLI runs in a session of its own and is killed with its workers, by that process group, if it is not
done in ``--timeout`` seconds; all traffic is on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import time
import zlib
from collections import Counter
from pathlib import Path
from typing import Any

from _harness import (
    REPO,
    GroupFailed,
    OtherWork,
    machine_info,
    read_pairs,
    run_group,
    summarize,
    tail,
    wait_until_quiet,
    write_json,
)

ENGINE_PYTHON = REPO / ".venv" / "bin" / "python"
JOB = REPO / "bench" / "jobs" / "keyed_load.py"
#: Target for ``live_s`` (kill -> live again), README.md.
TARGET_LIVE_S = 2.0
FIGURES = ("detected_s", "live_s", "replayed_batches")


class CheckFailed(Exception):
    """The round ran but one of its checks failed; the message says which and how."""


# --- what the source produced, and who owns which key ---------------------------------------------


def key_counts(records: int, keys: int) -> list[int]:
    """``N_j``, how many of the records ``0 .. records-1`` have key ``k<j>`` (record ``i`` has ``i % keys``)."""
    full, rest = divmod(records, keys)
    return [full + (1 if j < rest else 0) for j in range(keys)]


def owner(key: str, parallelism: int) -> int:
    """The ``count`` instance that owns ``key``: ``engine.partition``'s stable hash (CRC-32 of UTF-8)."""
    return zlib.crc32(key.encode("utf-8")) % parallelism


def check_output(out_dir: Path, expected: list[int]) -> int:
    """Raise :class:`CheckFailed` unless the part files hold each ``["k<j>", n]``, n = 1..N_j, exactly once.

    Returns the number of lines read.
    """
    seen: dict[str, list[int]] = {}
    lines = 0
    for key, n in read_pairs(out_dir, CheckFailed):
        seen.setdefault(key, []).append(n)
        lines += 1
    duplicated: list[tuple[str, int]] = []
    missing: list[tuple[str, int]] = []
    wrong: list[tuple[str, int]] = []
    for j, total in enumerate(expected):
        key = f"k{j}"
        got = Counter(seen.pop(key, ()))
        if len(got) == total and all(got[n] == 1 for n in range(1, total + 1)):
            continue  # the common case, quickly
        duplicated += [(key, n) for n, c in got.items() if c > 1]
        missing += [(key, n) for n in range(1, total + 1) if n not in got]
        wrong += [(key, n) for n in got if not 1 <= n <= total]
    wrong += [(key, n) for key, ns in seen.items() for n in ns]  # keys the source never produced
    problems = [
        f"{len(found)} (key, n) {what}, e.g. {found[:3]}"
        for found, what in (
            (duplicated, "written more than once"),
            (missing, "missing"),
            (wrong, "that the source cannot have caused"),
        )
        if found
    ]
    if problems:
        raise CheckFailed(
            f"output is not exactly once ({lines:,} lines for {sum(expected):,} records): "
            + "; ".join(problems)
        )
    return lines


# --- one round -------------------------------------------------------------------------------------


def _task_restarts(instances: dict[str, dict[str, Any]]) -> dict[str, int]:
    """Restarts per task instance (chained steps repeat their task's figures)."""
    return {m.get("task", name): m.get("restarts", 0) for name, m in instances.items()}


def analyse(
    metrics: dict[str, Any],
    args: argparse.Namespace,
    expected: list[int],
    victim_records: int,
    victim_keys: int,
) -> dict[str, Any]:
    """The round's figures from the metrics file, after checking what must hold (:class:`CheckFailed`)."""
    if metrics.get("state") != "finished":
        raise CheckFailed(
            f"the job did not finish: state {metrics.get('state')!r}, error {metrics.get('error')!r}"
        )
    if metrics.get("ft") != "lineage":
        raise CheckFailed(f"the metrics say ft={metrics.get('ft')!r}, not lineage")
    instances: dict[str, dict[str, Any]] = metrics["instances"]
    if args.victim not in instances:
        raise CheckFailed(
            f"no instance {args.victim} in the metrics; instances: {', '.join(sorted(instances))}"
        )
    victim = instances[args.victim]
    victim_task = victim.get("task", args.victim)
    restarts = {name: m.get("restarts", 0) for name, m in sorted(instances.items())}
    others = {n: r for n, r in restarts.items() if r and instances[n].get("task", n) != victim_task}
    if others:
        raise CheckFailed(f"instances other than {victim_task} restarted: {others}")
    recoveries = victim.get("recoveries") or []
    if victim.get("restarts") != 1 or len(recoveries) != 1:
        raise CheckFailed(
            f"{args.victim} restarted {victim.get('restarts')} times ({len(recoveries)} recoveries), expected "
            "exactly 1: the kill did not happen (the job ended first?) or a recovery failed"
        )
    rec = recoveries[0]
    if rec.get("checkpoint_id") is None:
        raise CheckFailed(
            f"{args.victim} restarted from no checkpoint (from the start of the stream): no checkpoint was complete "
            f"at the kill ({args.kill_at:g} s, --checkpoint-interval {args.checkpoint_interval:g}); kill later"
        )
    missing = [k for k in FIGURES if rec.get(k) is None]
    if missing:
        raise CheckFailed(f"the recovery record lacks {', '.join(missing)}: {rec}")
    before = victim_records - victim["records_in"]
    figures = {k: rec[k] for k in FIGURES}
    return {
        **figures,
        "recovery": rec,
        "restarts": restarts,
        "victim_task": victim_task,
        "records_before_checkpoint": before,
        "checkpoint_key_cycles": round(before / victim_keys, 3) if victim_keys else None,
        "victim_keys": victim_keys,
        "checkpoints": {n: m.get("checkpoints") for n, m in sorted(instances.items())},
        "checkpoint_ms_last": {n: m.get("checkpoint_ms") for n, m in sorted(instances.items())},
        "gcs_commit_lag": metrics.get("gcs_commit_lag"),
        "engine_elapsed_s": metrics.get("elapsed_s"),
        "engine_records_per_s": metrics.get("records_per_s"),
        "source_records": metrics.get("source_records"),
    }


async def run_round(
    number: int, args: argparse.Namespace, expected: list[int], victim_records: int, victim_keys: int
) -> dict[str, Any]:
    work = args.work / f"round-{number}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    metrics_file = work / "metrics.json"
    command = [
        str(ENGINE_PYTHON), "-m", "engine", "run", str(JOB),
        "-P", f"records={args.records}",
        "-P", f"rate={args.rate:g}",
        "-P", f"keys={args.keys}",
        "-P", f"output={work / 'output'}",
        "-P", f"sink={args.sink}",
        "--parallelism", str(args.parallelism),
        "--ft", "lineage",
        "--checkpoint-interval", f"{args.checkpoint_interval:g}",
        "--kill", f"{args.victim}@{args.kill_at:g}",
        "--timeout", f"{args.timeout:g}",
        "--metrics-out", str(metrics_file),
    ]  # fmt: skip
    result: dict[str, Any] = {"round": number, "command": command}
    busy = await wait_until_quiet(args.quiet_wait)
    result["cpu_busy_at_start"] = busy
    started = time.perf_counter()
    try:
        with OtherWork() as others:
            # the CLI's own --timeout ends the job; this deadline is for a CLI that hangs regardless
            finished = await run_group([command], timeout=args.timeout + 30)
        result["wall_s"] = time.perf_counter() - started
        result["cpu_s_by_others"] = others.cpu_s
        result["cli_stderr_tail"] = tail(finished[0].stderr, 8)
        try:
            metrics = json.loads(metrics_file.read_text())
        except (OSError, ValueError) as exc:
            raise CheckFailed(f"no readable metrics in {metrics_file}: {exc}") from exc
        result.update(analyse(metrics, args, expected, victim_records, victim_keys))
        result["output_lines"] = check_output(work / "output", expected)
        result["status"] = "ok"
    except GroupFailed as exc:
        result["status"] = "error"
        result["error"] = f"{exc}\n" + "\n".join(
            f"--- {' '.join(f.argv)}\n{tail(f.stderr, 25) or tail(f.stdout, 25)}" for f in exc.finished
        )
    except CheckFailed as exc:
        result["status"] = "error"
        result["error"] = str(exc)
    return result


# --- report ----------------------------------------------------------------------------------------


def _cell(value: Any, width: int, fmt: str) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width}{fmt}}"


def print_table(report: dict[str, Any]) -> None:
    cfg = report["config"]
    print(
        f"\nrecovery of {cfg['victim']} killed at {cfg['kill_at']:g} s: {cfg['rate']:,.0f} records/s for "
        f"{cfg['duration']:g} s over {cfg['keys']:,} keys, parallelism {cfg['parallelism']}, checkpoint every "
        f"{cfg['checkpoint_interval']:g} s, sink {cfg['sink']}, --ft lineage"
    )
    print(
        f"{'round':>5} {'status':<6} {'detected s':>10} {'live s':>8} {'replayed':>9} {'ckpt':>5}"
        f" {'log from GCS/stash':>18} {'key cycles':>10} {'others CPU-s':>12}  restarts"
    )
    for r in report["rounds"]:
        rec = r.get("recovery") or {}
        log = (
            f"{rec['log_entries'] - rec.get('log_entries_from_stashes', 0)}/{rec.get('log_entries_from_stashes', 0)}"
            if "log_entries" in rec
            else "-"
        )
        restarted = {n: c for n, c in (r.get("restarts") or {}).items() if c}
        print(
            f"{r['round']:>5} {r['status']:<6} {_cell(r.get('detected_s'), 10, '.3f')} {_cell(r.get('live_s'), 8, '.3f')}"
            f" {_cell(r.get('replayed_batches'), 9, 'd')} {_cell(rec.get('checkpoint_id'), 5, 'd')} {log:>18}"
            f" {_cell(r.get('checkpoint_key_cycles'), 10, '.2f')} {_cell(r.get('cpu_s_by_others'), 12, '.2f')}"
            f"  {', '.join(f'{n}: {c}' for n, c in restarted.items()) or ('-' if r['status'] != 'ok' else 'none')}"
            + (" (others: 0)" if restarted else "")
        )
    summary = report["summary"]
    if summary:
        print("\nmedian (min-max) over the rounds that passed their checks:")
        for key in FIGURES:
            s = summary.get(key)
            if s:
                digits = "d" if key == "replayed_batches" else ".3f"
                print(f"  {key:<17} {s['median']:{digits}} ({s['min']:{digits}}-{s['max']:{digits}})")
        if summary.get("live_s"):
            met = "met" if summary["live_s"]["max"] < TARGET_LIVE_S else "NOT met"
            print(
                f"  target live_s < {TARGET_LIVE_S:g} s: {met} (worst round {summary['live_s']['max']:.3f} s)"
            )
    for r in report["rounds"]:
        if r["status"] != "ok":
            print(f"\nround {r['round']} error: {r['error']}")
        elif r.get("checkpoint_key_cycles") is not None and r["checkpoint_key_cycles"] < 1:
            print(
                f"\nround {r['round']}: the restored checkpoint held {r['records_before_checkpoint']:,} records of the "
                f"victim's {r['victim_keys']:,} keys: not every key can have had state; kill later (--kill-at)"
            )


async def main_async(args: argparse.Namespace) -> int:
    machine = machine_info()
    expected = key_counts(args.records, args.keys)
    index = int(args.victim.rpartition("/")[2])
    owned = [j for j in range(args.keys) if owner(f"k{j}", args.parallelism) == index]
    victim_records = sum(expected[j] for j in owned)
    rounds = []
    for number in range(1, args.rounds + 1):
        print(f"round {number}/{args.rounds}", file=sys.stderr)
        r = await run_round(number, args, expected, victim_records, len(owned))
        print(
            f"  {r['status']}: "
            + (
                ", ".join(f"{k} {r[k]}" for k in FIGURES)
                if r["status"] == "ok"
                else r["error"].splitlines()[0]
            ),
            file=sys.stderr,
        )
        rounds.append(r)
    ok = [r for r in rounds if r["status"] == "ok"]
    summary = {k: summarize([r[k] for r in ok]) for k in FIGURES} if ok else {}
    report = {
        "benchmark": "recovery",
        "config": {
            "job": str(JOB.relative_to(REPO)),
            "victim": args.victim,
            "kill_at": args.kill_at,
            "rate": args.rate,
            "duration": args.duration,
            "records": args.records,
            "keys": args.keys,
            "victim_keys": len(owned),
            "victim_records": victim_records,
            "parallelism": args.parallelism,
            "checkpoint_interval": args.checkpoint_interval,
            "sink": args.sink,
            "timeout": args.timeout,
        },
        "machine": machine,
        "target_live_s": TARGET_LIVE_S,
        "summary": summary,
        "rounds": rounds,
    }
    print_table(report)
    write_json(args.out, report)
    return 0 if len(ok) == len(rounds) else 1


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="1 round of 6 s, the kill at 4 s (unless --rounds, --duration or --kill-at say otherwise)",
    )
    parser.add_argument("--rate", type=float, default=50_000, help="records/s offered by the source in all")
    parser.add_argument(
        "--duration", type=float, default=None, help="seconds of load (default 10; --quick 6)"
    )
    parser.add_argument("--keys", type=int, default=100_000, help="distinct keys")
    parser.add_argument(
        "--kill-at", type=float, default=None, help="seconds after the start (default 6; --quick 4)"
    )
    parser.add_argument("--checkpoint-interval", type=float, default=1.0)
    parser.add_argument("--victim", default="count/1", help="the count instance to kill (count/I)")
    parser.add_argument("--parallelism", type=int, default=2)
    parser.add_argument(
        "--sink",
        choices=("separate", "chained"),
        default="separate",
        help="the sink in a task of its own (default) or chained into count's task",
    )
    parser.add_argument(
        "--timeout", type=float, default=None, help="seconds a round may take (default duration + 60)"
    )
    parser.add_argument("--quiet-wait", type=float, default=60, help="seconds to wait for other work to stop")
    parser.add_argument(
        "--work", type=Path, default=REPO / "bench" / "out" / "recovery", help="rounds' files"
    )
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "out" / "recovery.json")
    args = parser.parse_args(argv)
    explicit_rounds = any(a == "--rounds" or a.startswith("--rounds=") for a in (argv or sys.argv[1:]))
    if args.quick and not explicit_rounds:
        args.rounds = 1
    if args.duration is None:
        args.duration = 6.0 if args.quick else 10.0
    if args.kill_at is None:
        args.kill_at = 4.0 if args.quick else 6.0
    if args.timeout is None:
        args.timeout = args.duration + 60
    step, _, index = args.victim.rpartition("/")
    if step != "count" or not index.isdigit() or int(index) >= args.parallelism:
        parser.error(
            f"--victim must be count/I with I < --parallelism ({args.parallelism}), got {args.victim!r}"
        )
    if args.rounds < 1 or args.parallelism < 1 or args.keys < 1 or args.rate <= 0 or args.duration <= 0:
        parser.error("--rounds, --parallelism, --keys, --rate and --duration must be positive")
    if args.kill_at >= args.duration:
        parser.error(
            f"--kill-at {args.kill_at:g} must come before the load ends (--duration {args.duration:g})"
        )
    args.records = round(args.rate * args.duration)
    if args.kill_at < args.keys / args.rate + args.checkpoint_interval:
        print(
            f"warning: --kill-at {args.kill_at:g} s: every key has state only after {args.keys / args.rate:g} s and a "
            f"checkpoint comes every {args.checkpoint_interval:g} s; the restored state may lack keys",
            file=sys.stderr,
        )
    return args


def main(argv: list[str] | None = None) -> int:
    return asyncio.run(main_async(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
