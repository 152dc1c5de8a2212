"""Event time in running jobs: timestamps, watermarks, windows, late data, idleness, and kills.

Window semantics are checked against plain Python over the same events (a brute force for on-time
data, a sequential simulation of Flink's rules for late data); under ``--ft lineage`` a killed window
instance must fire the same windows with the same contents as a run without the kill.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any

import pytest

from connectors import CollectSink, GeneratorSource, ListSource
from engine import BoundedOutOfOrderness, Job, JobDefinitionError, ParameterError, Session, Sliding, Tumbling
from engine.connector import Source, SourceReader
from engine.testing import run
from operators.process import Context, KeyedProcessFunction

KEYS = 7


def event(i: int) -> tuple[str, int, int]:
    """Event i: (key, event time in ms, value); times go up ~10 ms per event, up to 400 ms out of order."""
    return (f"k{(i * 31) % KEYS}", i * 10 - (i * 7919) % 41 * 10, i)


def windows_of(assigner: Any, ts: int) -> tuple[tuple[int, int], ...]:
    return tuple(assigner.assign(ts))


def brute_force(events: Sequence[tuple[str, int, int]], assigner: Any) -> Counter[tuple[Any, ...]]:
    """(key, start, end, count) of every window, all data on time."""
    if isinstance(assigner, Session):
        by_key: dict[str, list[int]] = defaultdict(list)
        for k, ts, _ in events:
            by_key[k].append(ts)
        out: Counter[tuple[Any, ...]] = Counter()
        for k, stamps in by_key.items():
            stamps.sort()
            start, end, n = stamps[0], stamps[0] + assigner.gap_ms, 0
            for ts in stamps:
                if ts > end:  # touching sessions merge: [a, a+gap) and [a+gap, ...) are one
                    out[(k, start, end, n)] += 1
                    start, n = ts, 0
                end, n = max(end, ts + assigner.gap_ms), n + 1
            out[(k, start, end, n)] += 1
        return out
    counts: Counter[tuple[str, int, int]] = Counter()
    for k, ts, _ in events:
        for start, end in windows_of(assigner, ts):
            counts[(k, start, end)] += 1
    return Counter((k, s, e, n) for (k, s, e), n in counts.items())


def window_job(
    events: list[tuple[str, int, int]],
    assigner: Any,
    out: CollectSink,
    *,
    parallelism: int = 2,
    bound: int = 1000,
) -> Job:
    job = Job("windows", parallelism=parallelism)
    stream = job.source(
        "events", ListSource(events), timestamp=lambda e: e[1], watermark=BoundedOutOfOrderness(bound)
    )
    stream.key_by(lambda e: e[0]).window("per_key", assigner).count().sink("out", out)
    return job


ASSIGNERS = [Tumbling(500), Sliding(1000, 300), Session(120)]


@pytest.mark.parametrize("assigner", ASSIGNERS, ids=["tumbling", "sliding", "session"])
@pytest.mark.parametrize("ft", ["none", "lineage"])
def test_windows_match_plain_python(assigner: Any, ft: str) -> None:
    events = [event(i) for i in range(3000)]
    out = CollectSink()
    result = run(window_job(events, assigner, out), ft=ft, batch_size=50)
    assert result.state == "finished", result.error
    assert Counter(out.records) == brute_force(events, assigner)


@pytest.mark.parametrize("assigner", [Tumbling(500), Sliding(1000, 300)], ids=["tumbling", "sliding"])
def test_killed_window_instance_fires_the_same_windows(assigner: Any) -> None:
    """The window instance dies twice mid-stream (once during its own replay); only it restarts."""
    events = [event(i) for i in range(4000)]
    out = CollectSink()
    result = run(
        window_job(events, assigner, out),
        ft="lineage",
        batch_size=50,
        checkpoint_interval=0.05,
        kill_after={"per_key/1": [1200, 500]},
    )
    assert result.state == "finished", result.error
    assert Counter(out.records) == brute_force(events, assigner)
    assert result.instances["per_key/1"]["restarts"] == 2
    assert result.instances["per_key/0"]["restarts"] == 0
    assert result.instances["events/0"]["restarts"] == 0


def simulate_tumbling(
    events: Sequence[tuple[str, int, int]], size: int, bound: int, lateness: int
) -> tuple[list[tuple[Any, ...]], list[tuple[str, int, int]]]:
    """Flink's rules, one record at a time: the watermark before record i is max(ts of 0..i-1) - bound."""
    windows: dict[tuple[str, int], list[Any]] = {}  # (key, start) -> [count, fired]
    results: list[tuple[Any, ...]] = []
    late: list[tuple[str, int, int]] = []
    watermark: int | None = None
    newest: int | None = None

    def advance(w: int) -> None:
        for (k, start), state in sorted(windows.items(), key=lambda kv: (kv[0][1], kv[0][0])):
            end = start + size
            if end <= w and not state[1]:
                results.append((k, start, end, state[0]))
                state[1] = True
            if end + lateness <= w:
                del windows[(k, start)]

    for e in events:
        k, ts, _ = e
        if watermark is not None:
            advance(watermark)
        start = ts - ts % size
        if watermark is not None and start + size + lateness <= watermark:
            late.append(e)
        else:
            state = windows.setdefault((k, start), [0, False])
            state[0] += 1
            if watermark is not None and start + size <= watermark:
                results.append((k, start, start + size, state[0]))  # a late firing
        newest = ts if newest is None else max(newest, ts)
        watermark = newest - bound
    advance(2**63 - 1)
    return results, late


@pytest.mark.parametrize("lateness", [0, 300])
def test_late_records_go_to_the_late_output_and_allowed_lateness_refires(lateness: int) -> None:
    events = [("a", 100, 0), ("b", 900, 1), ("a", 1200, 2), ("a", 300, 3), ("b", 1100, 4), ("a", 990, 5)]
    events += [("b", 1400, 6), ("a", 950, 7), ("a", 2600, 8), ("b", 1300, 9), ("a", 2700, 10)]
    job = Job("late")
    results, late = CollectSink(), CollectSink()
    stream = job.source(
        "events", ListSource(events), timestamp=lambda e: e[1], watermark=BoundedOutOfOrderness(100)
    )
    windowed = stream.key_by(lambda e: e[0]).window("w", Tumbling(1000), allowed_lateness=lateness).count()
    windowed.map("tag", lambda r: ("window", *r)).sink("out", results)  # chained after the window
    windowed.late().sink("late", late)
    result = run(job, batch_size=1, ft="lineage")
    assert result.state == "finished", result.error
    expected, expected_late = simulate_tumbling(events, 1000, 100, lateness)
    assert sorted(results.records) == sorted(("window", *r) for r in expected)
    assert sorted(late.records) == sorted(expected_late)
    assert expected_late, "the events must include late records for this test to mean anything"
    assert result.instances["w/0"]["late"] == len(expected_late)


def test_timestamps_survive_stateless_steps_and_running_counts() -> None:
    """filter/flat_map/map/count keep event time: a window after them sees the source's times."""
    events = [event(i) for i in range(2000)]
    job = Job("through", parallelism=2)
    out = CollectSink()
    stream = job.source(
        "events", ListSource(events), timestamp=lambda e: e[1], watermark=BoundedOutOfOrderness(1000)
    )
    kept = stream.filter("odd", lambda e: e[2] % 2 == 1).flat_map("twice", lambda e: [e, e])
    running = (
        kept.map("key", lambda e: e[0]).key_by(lambda k: k).count("running")
    )  # (key, n) at the record's time
    running.key_by(lambda kc: kc[0]).window("w", Tumbling(1000)).count().sink("out", out)
    result = run(job, batch_size=64)
    assert result.state == "finished", result.error
    doubled = [e for e in events if e[2] % 2 for _ in range(2)]
    assert Counter(out.records) == brute_force(doubled, Tumbling(1000))


def test_processing_time_windows_count_every_record_once_across_a_kill() -> None:
    n = 3000
    job = Job("proc_time", parallelism=2)
    out = CollectSink()
    source = GeneratorSource(lambda i: f"k{i % 5}", count=n, rate=6000)
    windowed = source_stream = job.source("gen", source)
    windowed = source_stream.key_by(lambda k: k).window("w", Tumbling(100), time="processing").count()
    windowed.sink("out", out)
    result = run(job, ft="lineage", batch_size=50, checkpoint_interval=0.1, kill_after={"w/1": [900]})
    assert result.state == "finished", result.error
    assert result.instances["w/1"]["restarts"] == 1
    per_key = Counter()
    seen = set()
    for key, start, end, count in out.records:
        assert end - start == 100 and start % 100 == 0
        assert (key, start) not in seen, f"window {key} [{start}, {end}) fired twice"
        seen.add((key, start))
        per_key[key] += count
    assert per_key == Counter(f"k{i % 5}" for i in range(n))


class QuietSource(Source):
    """Instance 0 yields timed events; instance 1 yields nothing until the sink holds a window result
    (or ``patience`` seconds pass), then ends: without idleness its silence would stall every window."""

    bounded = True

    def __init__(self, events: list[tuple[str, int, int]], sink: CollectSink, patience: float):
        self.events, self.sink, self.patience = events, sink, patience
        self.waited: float | None = None

    def open(self, index: int, parallelism: int) -> SourceReader:
        return _QuietReader(self, index)


class _QuietReader(SourceReader):
    def __init__(self, source: QuietSource, index: int):
        self.source, self.index, self.pos = source, index, 0

    async def read(self, max_records: int) -> Sequence[Any] | None:
        if self.index == 1:
            if self.pos:
                return None
            started = time.monotonic()
            while not self.source.sink.records and time.monotonic() - started < self.source.patience:
                await asyncio.sleep(0.01)
            self.source.waited = time.monotonic() - started
            self.pos = 1
            return None
        if self.pos >= len(self.source.events):
            return None
        await asyncio.sleep(0.002)
        out = self.source.events[self.pos : self.pos + 10]
        self.pos += len(out)
        return out

    def offset(self) -> int:
        return self.pos

    def seek(self, offset: Any) -> None:
        self.pos = offset


@pytest.mark.parametrize("ft", ["none", "lineage"])
def test_an_idle_source_instance_does_not_stall_the_windows(ft: str) -> None:
    events = [("a", i * 10, i) for i in range(300)]
    out = CollectSink()
    source = QuietSource(events, out, patience=20.0)
    job = Job("idle", parallelism=2)
    stream = job.source(
        "events", source, timestamp=lambda e: e[1], watermark=BoundedOutOfOrderness(0, idle_timeout_ms=100)
    )
    stream.key_by(lambda e: e[0]).window("w", Tumbling(500), parallelism=1).count().sink(
        "out", out, parallelism=1
    )
    result = run(job, ft=ft, batch_size=10, timeout=30)
    assert result.state == "finished", result.error
    assert source.waited is not None and source.waited < 10, "windows waited for the idle instance"
    assert sorted(out.records) == [("a", s, s + 500, 50) for s in range(0, 3000, 500)]


def test_a_bad_timestamp_names_the_function_and_the_record() -> None:
    job = Job("bad_ts")
    job.source("events", ListSource([("a", 1.5)]), timestamp=lambda e: e[1]).sink("out", CollectSink())
    result = run(job, raise_on_failure=False)
    assert result.state == "failed"
    assert "step 'events'" in result.error and "returned 1.5 (float); an event time is an int" in result.error
    assert "('a', 1.5)" in result.error


def test_definition_errors_say_how_to_fix_them() -> None:
    job = Job("errors")
    plain = job.source("plain", ListSource([1]))
    timed = job.source("timed", ListSource([1]), timestamp=lambda x: x)
    with pytest.raises(
        JobDefinitionError,
        match=r"step 'w': an event-time window needs records with event time.*"
        r"give its source timestamp=fn",
    ):
        plain.key_by(lambda x: x).window("w", Tumbling(10))
    with pytest.raises(JobDefinitionError, match=r"union of a stream with event time and one without"):
        timed.union("u", plain)
    with pytest.raises(
        JobDefinitionError, match=r"a watermark strategy needs event times: pass timestamp=fn"
    ):
        job.source("wm_only", ListSource([1]), watermark=BoundedOutOfOrderness(5))
    with pytest.raises(JobDefinitionError, match=r"window expects engine.Tumbling"):
        timed.key_by(lambda x: x).window("w2", 10)  # type: ignore[arg-type]
    with pytest.raises(ParameterError, match=r"allowed_lateness must be an int >= 0"):
        timed.key_by(lambda x: x).window("w3", Tumbling(10), allowed_lateness=-1)
    with pytest.raises(JobDefinitionError, match=r"merges windows, so the aggregate needs a merge function"):
        timed.key_by(lambda x: x).window("w4", Session(10)).aggregate(lambda: 0, lambda a, x: a + 1)
    with pytest.raises(JobDefinitionError, match=r"watermark expects engine.BoundedOutOfOrderness"):
        job.source("wm_bad", ListSource([1]), timestamp=lambda x: x, watermark=5)  # type: ignore[arg-type]
    late = timed.key_by(lambda x: x).window("w5", Tumbling(10)).count().late()
    assert late.timed and not plain.timed


class CountUntilQuiet(KeyedProcessFunction):
    """Counts a key's records and emits the count from a processing-time timer 30 ms after the first."""

    def process_element(self, value: Any, ctx: Context) -> None:
        count = ctx.value_state("count")
        if count.value() is None:
            ctx.timers.register_processing_time(ctx.processing_time() + 30)
        count.update(count.value(0) + 1)

    def on_timer(self, timestamp: int, ctx: Context) -> Any:
        count = ctx.value_state("count")
        n = count.value()
        count.clear()
        return [(ctx.key, n)]


def test_process_function_timers_replay_exactly_once_across_a_kill() -> None:
    n = 3000
    job = Job("timers", parallelism=2)
    out = CollectSink()
    source = GeneratorSource(lambda i: f"k{i % 5}", count=n, rate=6000)
    counted = job.source("gen", source).key_by(lambda k: k).process("count", CountUntilQuiet())
    counted.sink("out", out)
    result = run(job, ft="lineage", batch_size=50, checkpoint_interval=0.1, kill_after={"count/1": [700]})
    assert result.state == "finished", result.error
    assert result.instances["count/1"]["restarts"] == 1
    per_key: Counter[str] = Counter()
    for key, count in out.records:
        per_key[key] += count
    # the last counts of each key are still waiting for their timer at the end (processing-time timers do
    # not fire at the end of input, as in Flink): never more than emitted, and nothing twice
    expected = Counter(f"k{i % 5}" for i in range(n))
    assert all(per_key[k] <= expected[k] for k in expected)
    assert sum(per_key.values()) >= n // 2, "most counts must have been emitted by processing-time timers"


def test_process_definition_errors() -> None:
    job = Job("bad_process")
    keyed = job.source("src", ListSource([1])).key_by(lambda x: x)
    with pytest.raises(JobDefinitionError, match=r"step 'p': .*pass CountUntilQuiet\(\) instead"):
        keyed.process("p", CountUntilQuiet)
    with pytest.raises(JobDefinitionError, match=r"step 'q': .*must be a KeyedProcessFunction or a callable"):
        keyed.process("q", 42)


def join_job(kind: str, out: CollectSink) -> tuple[Job, list[Any], list[Any]]:
    lefts = [event(i) for i in range(0, 3000, 2)]
    rights = [(k, ts + 37, v) for k, ts, v in (event(i) for i in range(1, 3000, 3))]
    job = Job(f"{kind}_join", parallelism=2)
    bound = BoundedOutOfOrderness(1000)
    left = job.source("left", ListSource(lefts), timestamp=lambda e: e[1], watermark=bound)
    right = job.source("right", ListSource(rights), timestamp=lambda e: e[1], watermark=bound)

    def pair(a: Any, b: Any) -> tuple[int, int]:
        return (a[2], b[2])

    if kind == "interval":
        joined = left.key_by(lambda e: e[0]).interval_join(
            "join", right.key_by(lambda e: e[0]), -50, 100, pair
        )
    else:
        joined = left.key_by(lambda e: e[0]).window_join(
            "join", right.key_by(lambda e: e[0]), Tumbling(500), pair
        )
    joined.sink("out", out)
    return job, lefts, rights


def brute_force_join(kind: str, lefts: list[Any], rights: list[Any]) -> Counter[tuple[int, int]]:
    if kind == "interval":
        return Counter(
            (lv, rv)
            for lk, lt, lv in lefts
            for rk, rt, rv in rights
            if lk == rk and lt - 50 <= rt <= lt + 100
        )
    return Counter(
        (lv, rv) for lk, lt, lv in lefts for rk, rt, rv in rights if lk == rk and lt // 500 == rt // 500
    )


@pytest.mark.parametrize("kind", ["interval", "window"])
def test_joins_match_plain_python_and_survive_a_kill(kind: str) -> None:
    out = CollectSink()
    job, lefts, rights = join_job(kind, out)
    expected = brute_force_join(kind, lefts, rights)
    assert len(expected) > 100
    result = run(job, ft="none", batch_size=50)
    assert result.state == "finished", result.error
    assert Counter(out.records) == expected
    out2 = CollectSink()
    job, _, _ = join_job(kind, out2)
    result = run(job, ft="lineage", batch_size=50, checkpoint_interval=0.05, kill_after={"join/1": [700]})
    assert result.state == "finished", result.error
    assert Counter(out2.records) == expected
    assert result.instances["join/1"]["restarts"] == 1 and result.instances["join/0"]["restarts"] == 0


def test_join_definition_errors() -> None:
    job = Job("bad_joins")
    timed = job.source("t", ListSource([1]), timestamp=lambda x: x).key_by(lambda x: x)
    plain = job.source("p", ListSource([1])).key_by(lambda x: x)
    with pytest.raises(
        JobDefinitionError, match=r"step 'j1': a join needs records with event time.*step 'p'"
    ):
        timed.interval_join("j1", plain, 0, 10, lambda a, b: a)
    with pytest.raises(JobDefinitionError, match=r"step 'j2': a join needs the other stream keyed too"):
        timed.interval_join(
            "j2", job.source("t2", ListSource([1]), timestamp=lambda x: x), 0, 10, lambda a, b: a
        )
    with pytest.raises(ParameterError, match=r"step 'j3': .*lower"):
        timed.interval_join("j3", timed, 10, 0, lambda a, b: a)
    with pytest.raises(JobDefinitionError, match=r"step 'j4': .*Session"):
        timed.window_join("j4", timed, Session(10), lambda a, b: a)


@pytest.mark.parametrize("lateness", [0, 200])
@pytest.mark.parametrize(
    "assigner", [Tumbling(300), Sliding(400, 150), Session(90)], ids=["tumbling", "sliding", "session"]
)
def test_late_data_for_every_assigner_matches_the_plain_python_reference(
    assigner: Any, lateness: int
) -> None:
    """Out-of-order and late data through a running job, record by record (batch_size=1), against the
    brute-force reference of the window core's tests fed the same records and watermarks."""
    from test_windows_core import Reference

    from operators.windows import Late, Result

    rng = random.Random(7)
    events, now = [], 0
    for i in range(400):
        now += rng.randint(0, 20)
        behind = rng.choice([0, 0, 0, 50, 120, 400, 900])  # mostly in order, some late
        events.append((f"k{rng.randint(0, 3)}", now - behind, i))
    bound = 100
    reference = Reference(assigner, lateness, sum)
    expected: list[Any] = []
    newest: int | None = None
    for key, ts, value in events:
        watermark = None if newest is None else newest - bound
        expected += reference.add(key, ts, value, watermark)
        newest = ts if newest is None else max(newest, ts)
    expected += reference.flush()
    want_results = Counter((r.key, r.start, r.end, r.value) for r in expected if isinstance(r, Result))
    want_late = Counter(r.value for r in expected if isinstance(r, Late))
    assert want_late, "the events must hold late records"

    job = Job("late_every")
    results, late = CollectSink(), CollectSink()
    stream = job.source(
        "events", ListSource(events), timestamp=lambda e: e[1], watermark=BoundedOutOfOrderness(bound)
    )
    windowed = stream.key_by(lambda e: e[0]).window("w", assigner, allowed_lateness=lateness)
    summed = windowed.aggregate(lambda: 0, lambda acc, e: acc + e[2], merge=lambda a, b: a + b)
    summed.sink("out", results)
    summed.late().sink("late", late)
    result = run(job, batch_size=1)
    assert result.state == "finished", result.error
    assert Counter(results.records) == want_results
    assert Counter(v for _, _, v in late.records) == want_late
