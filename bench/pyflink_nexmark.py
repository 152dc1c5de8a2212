"""Nexmark Q5 (hot items) on PyFlink's Python DataStream API: the baseline for stashflow's Q5 job.

Q5: for every sliding event-time window of 10 s every 2 s, the auction(s) with the most bids;
one ``(window_start, window_end, auction, count)`` per auction tied at the window's largest count,
exactly as ``jobs/nexmark/reference.py``'s ``q5`` defines it. The events are the first ``--events``
of stashflow's generator (``connectors.nexmark``, default config), and the result is checked
against ``q5`` over the same events.

Every step is a Python UDF, run by PyFlink in its Python workers (``python.execution-mode``
``process``, the default), on the local mini-cluster (one TaskManager, one slot per parallel
instance) that ``StreamExecutionEnvironment.get_execution_environment()`` starts:

1. source (``--source sequence``, the default and the fair one): PyFlink 2.x has no Python source
   function, so a Java ``NumberSequenceSource(0, N - 1)`` hands each of the ``--parallelism``
   readers a contiguous range of event numbers, and a Python ``flat_map`` turns number ``n`` into
   ``connectors.nexmark.event(n)`` and keeps bids as ``(auction, date_time)``: event generation is
   inside the timed part and runs in parallel, like stashflow's ``NexmarkSource``.
   ``--source collection`` generates the bids up front in this process (outside the timed part) and
   feeds them with ``env.from_collection`` (a non-parallel source): the pipeline alone.
2. ``assign_timestamps_and_watermarks``: bounded out-of-orderness of the generator's
   ``max_out_of_order_ms`` (0 by default: each reader's range is in event-time order), timestamp
   assigner on ``date_time``.
3. ``key_by(auction)`` -> ``SlidingEventTimeWindows.of(10 s, 2 s)`` -> ``aggregate`` (incremental
   count) with a ``ProcessWindowFunction`` that adds the window bounds.
4. ``key_by(window_start)`` -> ``KeyedProcessFunction`` that keeps the top count and its auctions
   per window and emits them on an event-time timer at ``window_end - 1`` (the timestamp Flink gives
   the window's results, so the timer fires once every count of that window has arrived).
5. ``execute_and_collect`` brings the results back to this process.

Flink's window semantics are the reference's: ``TimeWindow`` is ``[start, end)``, windows start at
multiples of the slide (offset 0, epoch-aligned), an element at ``t`` is in every window with
``t - size < start <= t``; a window fires when the watermark reaches ``end - 1``, and the bounded
input ends with a ``MAX_WATERMARK`` that fires the rest. No adjustment is needed to compare.

Set up the venv once (PyFlink 2.3.0 on CPython 3.11; Java 11/17 on PATH), then run from the repo::

    bash bench/setup_pyflink.sh
    bench/.venv-pyflink/bin/python bench/pyflink_nexmark.py --events 1000000 --parallelism 2 \\
        --out bench/results/pyflink-q5.json

``wall_s`` (and ``events_per_s``) is the time from ``execute_and_collect`` to the last result: job
submission, mini-cluster and Python worker start-up, and the run; ``total_s`` adds the JVM gateway
launch and the graph building before it. The check (``q5`` over ``events(N)``) runs after the timed
part. Prints one summary line; ``--out`` also writes it all as JSON.

It is slow: on the 2-core machine (load ~2 from other work) the default ``process`` mode ran
~900 events/s (200,000 events in 218 s: about 1 ms per event, mostly the Python window operator's
state requests to the JVM; the workers log "Retrieving state ... costed 60 seconds"), so 1,000,000
events take ~18 min. ``--conf python.execution-mode=thread`` (UDFs in a Python embedded in the JVM,
state calls without gRPC) ran ~3,200 events/s (400,000 events in 126 s). Start-up is ~8 s (process)
and ~5 s (thread) of ``wall_s``. ``python.state.cache-size=100000`` changed nothing.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import site
import sys
import time
from pathlib import Path
from typing import Any

from _harness import REPO, machine_info, write_json
from pyflink.common import Configuration, Duration, Time, Types, WatermarkStrategy
from pyflink.common.watermark_strategy import TimestampAssigner
from pyflink.datastream import StreamExecutionEnvironment
from pyflink.datastream.connectors.number_seq import NumberSequenceSource
from pyflink.datastream.functions import (
    AggregateFunction,
    FlatMapFunction,
    KeyedProcessFunction,
    ProcessWindowFunction,
    RuntimeContext,
)
from pyflink.datastream.state import ValueStateDescriptor
from pyflink.datastream.window import SlidingEventTimeWindows
from pyflink.java_gateway import get_gateway

# connectors.nexmark and the reference live in the repo, which is not installed in this venv; the
# Python workers import it in FlatMapFunction.open() (they do not run this module's top level).
sys.path.insert(0, str(REPO))

from connectors import nexmark
from jobs.nexmark import reference

SIZE_MS = 10_000
SLIDE_MS = 2_000
BID = Types.TUPLE([Types.LONG(), Types.LONG()])  # (auction, date_time)
RESULT = Types.TUPLE([Types.LONG(), Types.LONG(), Types.LONG(), Types.LONG()])  # (start, end, auction, count)


class GenerateBids(FlatMapFunction):
    """Event number -> ``(auction, date_time)`` when that event is a bid, nothing otherwise."""

    def __init__(self, repo: str) -> None:
        self.repo = repo
        self.event: Any = None

    def open(self, runtime_context: RuntimeContext) -> None:
        if self.repo not in sys.path:
            sys.path.insert(0, self.repo)
        from connectors.nexmark import event

        self.event = event

    def flat_map(self, value: int) -> Any:
        e = self.event(value)
        if e["type"] == "bid":
            yield e["auction"], e["date_time"]


class BidTime(TimestampAssigner):
    def extract_timestamp(self, value: tuple[int, int], record_timestamp: int) -> int:
        return value[1]


class Count(AggregateFunction):
    def create_accumulator(self) -> int:
        return 0

    def add(self, value: tuple[int, int], accumulator: int) -> int:
        return accumulator + 1

    def get_result(self, accumulator: int) -> int:
        return accumulator

    def merge(self, a: int, b: int) -> int:
        return a + b


class WithWindow(ProcessWindowFunction):
    """The count of one auction in one window -> ``(window_start, window_end, auction, count)``."""

    def process(self, key: int, context: ProcessWindowFunction.Context, elements: Any) -> Any:
        window = context.window()
        for count in elements:
            yield window.start, window.end, key, count


class HotItems(KeyedProcessFunction):
    """Per window (the key is its start): the auctions at the largest count, once all counts are in."""

    def open(self, runtime_context: RuntimeContext) -> None:
        # (top count, auctions with that count), pickled: one small value per open window.
        self.top = runtime_context.get_state(ValueStateDescriptor("top", Types.PICKLED_BYTE_ARRAY()))

    def process_element(self, value: tuple[int, int, int, int], ctx: KeyedProcessFunction.Context) -> None:
        _start, end, auction, count = value
        top = self.top.value()
        if top is None:
            # The window operator stamps a window's results with end - 1, and the watermark passes
            # end - 1 only after all of them: the timer fires once the window is complete.
            ctx.timer_service().register_event_time_timer(end - 1)
            top = (count, [auction])
        elif count > top[0]:
            top = (count, [auction])
        elif count == top[0]:
            top[1].append(auction)
        self.top.update(top)

    def on_timer(self, timestamp: int, ctx: KeyedProcessFunction.OnTimerContext) -> Any:
        count, auctions = self.top.value()
        self.top.clear()
        start = ctx.get_current_key()
        for auction in auctions:
            yield start, start + SIZE_MS, auction, count


def build(
    env: StreamExecutionEnvironment, events: int, source: str, bids: list[tuple[int, int]] | None
) -> Any:
    """The Q5 dataflow over the first ``events`` Nexmark events; returns the result stream."""
    config = nexmark.NexmarkConfig()
    if source == "sequence":
        numbers = env.from_source(
            NumberSequenceSource(0, events - 1), WatermarkStrategy.no_watermarks(), "numbers"
        )
        stream = numbers.flat_map(GenerateBids(str(REPO)), output_type=BID).name("generate-bids")
    else:
        stream = env.from_collection(bids, type_info=BID)
    watermarks = WatermarkStrategy.for_bounded_out_of_orderness(
        Duration.of_millis(config.max_out_of_order_ms)
    ).with_timestamp_assigner(BidTime())
    counts = (
        stream.assign_timestamps_and_watermarks(watermarks)
        .key_by(lambda bid: bid[0], key_type=Types.LONG())
        .window(SlidingEventTimeWindows.of(Time.milliseconds(SIZE_MS), Time.milliseconds(SLIDE_MS)))
        .aggregate(Count(), WithWindow(), accumulator_type=Types.LONG(), output_type=RESULT)
        .name("count-per-window")
    )
    return (
        counts.key_by(lambda r: r[0], key_type=Types.LONG())
        .process(HotItems(), output_type=RESULT)
        .name("hot-items")
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--events", type=int, default=1_000_000, help="how many Nexmark events (default 1,000,000)"
    )
    parser.add_argument("--parallelism", type=int, default=2)
    parser.add_argument(
        "--source",
        choices=("sequence", "collection"),
        default="sequence",
        help="sequence: generate events inside the job (timed); collection: generate bids first (untimed)",
    )
    parser.add_argument(
        "--conf",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a Flink option for the environment, e.g. python.state.cache-size=100000 (repeatable)",
    )
    parser.add_argument("--out", type=Path, help="write the figures and the check as JSON here")
    args = parser.parse_args(argv)
    conf = dict(item.partition("=")[::2] for item in args.conf)
    if any(not key or not value for key, value in conf.items()):
        parser.error(f"--conf takes KEY=VALUE, got {args.conf}")
    if args.events < 1 or args.parallelism < 1:
        parser.error(f"--events and --parallelism must be >= 1, got {args.events} and {args.parallelism}")

    info = machine_info()
    bids = None
    generate_s = None
    if args.source == "collection":
        t = time.perf_counter()
        bids = [(e["auction"], e["date_time"]) for e in nexmark.events(args.events) if e["type"] == "bid"]
        generate_s = time.perf_counter() - t

    t0 = time.perf_counter()
    if conf.get("python.execution-mode") == "thread":
        # Thread mode runs the UDFs in a Python embedded in the TaskManager JVM (pemja), whose
        # sys.path lacks this venv's site-packages: without them it fails with "No module named
        # 'pemja'". The JVM, launched below, passes its environment on.
        paths = [*site.getsitepackages(), os.environ.get("PYTHONPATH", "")]
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    configuration = Configuration()
    for key, value in conf.items():
        configuration.set_string(key, value)
    env = StreamExecutionEnvironment.get_execution_environment(configuration)
    env.set_parallelism(args.parallelism)
    # The workers must run this venv's Python (the default is whatever "python" is on PATH).
    env.set_python_executable(sys.executable)
    result = build(env, args.events, args.source, bids)
    t1 = time.perf_counter()
    with result.execute_and_collect("nexmark-q5") as rows:
        got = sorted(tuple(r) for r in rows)
    t2 = time.perf_counter()

    expected = reference.q5(nexmark.events(args.events), SIZE_MS, SLIDE_MS)
    matches = got == expected
    check = {
        "matches_reference": matches,
        "rows": len(got),
        "expected_rows": len(expected),
        "missing": [list(r) for r in sorted(set(expected) - set(got))[:5]],
        "unexpected": [list(r) for r in sorted(set(got) - set(expected))[:5]],
    }
    jvm = get_gateway().jvm.System
    report = {
        "query": "q5",
        "engine": "pyflink",
        "pyflink_version": importlib.metadata.version("apache-flink"),
        "java_version": f"{jvm.getProperty('java.vendor')} {jvm.getProperty('java.version')}",
        "events": args.events,
        "parallelism": args.parallelism,
        "source": args.source,
        "conf": conf,
        "generation_timed": args.source == "sequence",
        "generate_s": generate_s,
        "wall_s": round(t2 - t1, 3),
        "total_s": round(t2 - t0, 3),
        "events_per_s": round(args.events / (t2 - t1)),
        "check": check,
        "machine": info,
    }
    if args.out:
        write_json(args.out, report)
    print(
        f"pyflink {report['pyflink_version']} q5 events={args.events} p={args.parallelism} source={args.source}: "
        f"{' '.join(args.conf) + ': ' if args.conf else ''}{report['wall_s']:.1f} s, {report['events_per_s']:,} events/s (total {report['total_s']:.1f} s); "
        f"check {'OK' if matches else 'MISMATCH'} ({len(got)} rows, expected {len(expected)}); "
        f"load {info['loadavg_at_start'][0]:.2f}"
    )
    return 0 if matches else 1


if __name__ == "__main__":
    sys.exit(main())
