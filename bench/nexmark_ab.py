"""Nexmark A/B: builds and settings of the engine side by side, round-robin, with per-process CPU.

::

    .venv/bin/python bench/nexmark_ab.py QUERY EVENTS ROUNDS LABEL=TREE:FT[:ARGS] ...

    # the build before a change (a worktree) against this one, --ft none as the baseline
    git worktree add /tmp/wt-base <commit> && ln -s "$PWD/.venv" /tmp/wt-base/.venv
    .venv/bin/python bench/nexmark_ab.py q8 1000000 6 none=.:none base=/tmp/wt-base:lineage new=.:lineage
    # an ablation: the same build with a setting changed
    .venv/bin/python bench/nexmark_ab.py q8 200000 8 none=.:none lin=.:lineage "nospare=.:lineage:--spare-workers 0"

Each configuration runs ``python -m engine run TREE/jobs/nexmark/QUERY.py`` with ``TREE`` on
``PYTHONPATH`` (so a git worktree of another commit runs its own engine), parallelism 2, ``--ft FT``
and the extra ``ARGS``; one run of each per round, the order reversed every other round, so that
the machine's slow and fast spells fall on both sides. Events/s is the engine's (source records over
``elapsed_s``); the ratio to the first configuration is taken per round and its median printed,
with the median CPU-seconds of every process of the run (the coordinator, each instance's worker by
its pin, the spare), read from ``/proc`` every 20 ms. The figures to compare are the ratios: a
machine shared with others moves absolute rates by up to 2x.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable  # the interpreter running this script has the engine's dependencies
_TICK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Config:
    label: str
    tree: Path
    ft: str
    args: tuple[str, ...]


def parse_config(text: str) -> Config:
    """``LABEL=TREE:FT[:ARGS]``; raises argparse.ArgumentTypeError naming what is wrong."""
    label, sep, rest = text.partition("=")
    parts = rest.split(":", 2)
    if not sep or not label or len(parts) < 2:
        raise argparse.ArgumentTypeError(f"{text!r}: expected LABEL=TREE:FT[:ARGS], e.g. new=.:lineage")
    tree = Path(parts[0]).resolve()
    if not (tree / "engine").is_dir():
        raise argparse.ArgumentTypeError(
            f"{text!r}: {tree} has no engine/ (a checkout or worktree of stashflow)"
        )
    return Config(label, tree, parts[1], tuple(shlex.split(parts[2])) if len(parts) > 2 else ())


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            kids.setdefault(int(stat[stat.rindex(")") + 2 :].split()[1]), []).append(int(entry))
    return kids


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text()
    rest = fields[fields.rindex(")") + 2 :].split()
    return (int(rest[11]) + int(rest[12])) / _TICK


def _label(pid: int) -> str:
    argv = Path(f"/proc/{pid}/cmdline").read_text().split("\0")
    if "--pin" in argv:
        return argv[argv.index("--pin") + 1].split(":", 1)[1]
    return "coordinator" if "run" in argv else " ".join(argv[:3])


def run_once(config: Config, query: str, events: int) -> tuple[float, dict[str, float]]:
    """One run: (events/s, CPU-seconds by process label). Raises RuntimeError if the run failed."""
    with tempfile.TemporaryDirectory(prefix="nexmark-ab-") as work:
        metrics = Path(work) / "metrics.json"
        argv = [
            PYTHON, "-m", "engine", "run", str(config.tree / "jobs" / "nexmark" / f"{query}.py"),
            "-P", f"events={events}", "-P", f"output={work}/out", "--parallelism", "2", "--ft", config.ft,
            "--metrics-out", str(metrics), "--no-dashboard", "-q", *config.args,
        ]  # fmt: skip
        env = dict(os.environ, PYTHONPATH=str(config.tree))
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        seen: dict[int, tuple[str, float]] = {}
        while proc.poll() is None:
            kids, stack = _children(), [proc.pid]
            while stack:
                pid = stack.pop()
                with contextlib.suppress(OSError):  # it exited meanwhile: its last reading stands
                    seen[pid] = (seen[pid][0] if pid in seen else _label(pid), _cpu_s(pid))
                stack.extend(kids.get(pid, []))
            time.sleep(0.02)
        error = proc.stderr.read().decode() if proc.stderr else ""
        if proc.returncode != 0 or not metrics.exists():
            raise RuntimeError(f"{config.label}: run failed (exit {proc.returncode}): {error.strip()[-500:]}")
        m = json.loads(metrics.read_text())
    cpu: dict[str, float] = {}
    for label, seconds in seen.values():
        cpu[label] = cpu.get(label, 0.0) + seconds
    return m["source_records"] / m["elapsed_s"], cpu


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("query", choices=["q0", "q1", "q2", "q3", "q4", "q5", "q7", "q8"])
    parser.add_argument("events", type=int)
    parser.add_argument("rounds", type=int)
    parser.add_argument("configs", nargs="+", type=parse_config, metavar="LABEL=TREE:FT[:ARGS]")
    args = parser.parse_args(argv)
    rates: dict[str, list[float]] = {c.label: [] for c in args.configs}
    cpus: dict[str, list[dict[str, float]]] = {c.label: [] for c in args.configs}
    for r in range(args.rounds):
        for config in args.configs if r % 2 == 0 else args.configs[::-1]:
            rate, cpu = run_once(config, args.query, args.events)
            rates[config.label].append(rate)
            cpus[config.label].append(cpu)
        print(f"round {r + 1}: " + "  ".join(f"{k}={v[-1]:,.0f}" for k, v in rates.items()), flush=True)
    base = args.configs[0].label
    for label, values in rates.items():
        ratios = [a / b for a, b in zip(values, rates[base], strict=True)]
        keys = sorted({k for c in cpus[label] for k in c})
        cpu = {k: round(statistics.median(c.get(k, 0.0) for c in cpus[label]), 2) for k in keys}
        print(f"{label:12s} events/s {statistics.median(values):>9,.0f}  /{base} median "
              f"{statistics.median(ratios):.3f} [{', '.join(f'{x:.2f}' for x in ratios)}]  "
              f"CPU-s {cpu} total {sum(cpu.values()):.2f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
