"""Windowing core (operators/windows.py): assigners, aggregates and WindowBuffer against a brute force."""

from __future__ import annotations

import operator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.codec import pack, unpack
from engine.errors import JobDefinitionError, ParameterError
from operators.windows import (
    MIN_WATERMARK,
    Late,
    Result,
    Session,
    Sliding,
    Tumbling,
    WindowAggregate,
    WindowBuffer,
)

# -- assigners ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("assigner", "ts", "windows"),
    [
        (Tumbling(10), 0, ((0, 10),)),
        (Tumbling(10), 9, ((0, 10),)),
        (Tumbling(10), 10, ((10, 20),)),
        (Tumbling(10), -1, ((-10, 0),)),
        (Tumbling(10), -10, ((-10, 0),)),
        (Tumbling(10), -11, ((-20, -10),)),
        (Tumbling(10, offset_ms=3), 3, ((3, 13),)),
        (Tumbling(10, offset_ms=3), 2, ((-7, 3),)),
        (Tumbling(10, offset_ms=3), 13, ((13, 23),)),
        (Tumbling(10, offset_ms=-3), 0, ((-3, 7),)),
        (Tumbling(10, offset_ms=-3), -13, ((-13, -3),)),
        (Sliding(10, 5), 0, ((-5, 5), (0, 10))),
        (Sliding(10, 5), 4, ((-5, 5), (0, 10))),
        (Sliding(10, 5), 5, ((0, 10), (5, 15))),
        (Sliding(10, 5), -1, ((-10, 0), (-5, 5))),
        (Sliding(10, 3), 0, ((-9, 1), (-6, 4), (-3, 7), (0, 10))),
        (Sliding(10, 3), 1, ((-6, 4), (-3, 7), (0, 10))),
        (Sliding(10, 10), 10, ((10, 20),)),
        (Sliding(10, 5, offset_ms=2), 2, ((-3, 7), (2, 12))),
        (Sliding(10, 5, offset_ms=2), 1, ((-8, 2), (-3, 7))),
        (Session(30), -5, ((-5, 25),)),
    ],
)
def test_assign_at_boundaries_negative_times_and_offsets(assigner, ts, windows):
    assert assigner.assign(ts) == windows


@given(
    size=st.integers(1, 40),
    data=st.data(),
    ts=st.integers(-1000, 1000),
)
def test_sliding_assigns_every_window_holding_ts(size, data, ts):
    slide = data.draw(st.integers(1, size))
    offset = data.draw(st.integers(-slide + 1, slide - 1))
    windows = Sliding(size, slide, offset).assign(ts)
    brute = tuple((s, s + size) for s in range(ts - size + 1, ts + 1) if (s - offset) % slide == 0)
    assert windows == brute
    assert len(windows) in (size // slide, -(-size // slide))
    if size % slide == 0:
        assert len(windows) == size // slide


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Tumbling(0), "Tumbling: size_ms must be an int > 0 (milliseconds), got 0"),
        (lambda: Tumbling(10.0), "Tumbling: size_ms must be an int > 0 (milliseconds), got 10.0"),
        (lambda: Tumbling(True), "Tumbling: size_ms must be an int > 0 (milliseconds), got True"),
        (
            lambda: Tumbling(10, offset_ms=10),
            "Tumbling: offset_ms must be an int with abs(offset_ms) < size_ms (10), got 10",
        ),
        (lambda: Sliding(-1, 1), "Sliding: size_ms must be an int > 0 (milliseconds), got -1"),
        (
            lambda: Sliding(10, 20),
            "Sliding: slide_ms must be an int with 0 < slide_ms <= size_ms (10), got 20",
        ),
        (lambda: Sliding(10, 0), "Sliding: slide_ms must be an int with 0 < slide_ms <= size_ms (10), got 0"),
        (
            lambda: Sliding(10, 3, offset_ms=-3),
            "Sliding: offset_ms must be an int with abs(offset_ms) < slide_ms (3), got -3",
        ),
        (lambda: Session(0), "Session: gap_ms must be an int > 0 (milliseconds), got 0"),
        (lambda: Session("5s"), "Session: gap_ms must be an int > 0 (milliseconds), got '5s'"),
        (
            lambda: WindowBuffer(Tumbling(10), WindowAggregate.count(), allowed_lateness_ms=-1),
            "WindowBuffer: allowed_lateness_ms must be an int >= 0 (milliseconds), got -1",
        ),
        (
            lambda: WindowBuffer(10, WindowAggregate.count()),
            "WindowBuffer: assigner must be Tumbling, Sliding or Session, got 10",
        ),
        (
            lambda: WindowBuffer(Tumbling(10), len),
            "WindowBuffer: aggregate must be a WindowAggregate (count(), reduce(fn) or aggregate(init, "
            "add, ...)), got <built-in function len>",
        ),
        (lambda: WindowAggregate.reduce(3), "WindowAggregate.reduce: fn must be a callable, got 3"),
        (
            lambda: WindowAggregate.aggregate(list, list.append, merge="x"),
            "WindowAggregate.aggregate: merge must be a callable or None, got 'x'",
        ),
    ],
)
def test_bad_parameters_name_parameter_value_and_allowed_range(make, message):
    with pytest.raises(ParameterError) as info:
        make()
    assert str(info.value) == message


def test_session_with_an_aggregate_without_merge_is_refused_at_construction():
    no_merge = WindowAggregate.aggregate(lambda: 0, operator.add)
    with pytest.raises(JobDefinitionError) as info:
        WindowBuffer(Session(100), no_merge)
    assert str(info.value) == (
        "WindowBuffer: Session(gap_ms=100) merges windows, so its aggregate needs a merge function; "
        "pass merge=(acc, acc) -> acc to WindowAggregate.aggregate"
    )
    WindowBuffer(Tumbling(100), no_merge)  # fine without merging
    WindowBuffer(Session(100), WindowAggregate.reduce(operator.add))  # reduce merges with its fn


# -- WindowBuffer by hand ----------------------------------------------------------------------------


def test_late_firing_then_cleanup_and_the_state_layout():
    buf = WindowBuffer(Tumbling(10), WindowAggregate.count(), allowed_lateness_ms=5)
    assert buf.meta() == {"watermark": MIN_WATERMARK, "seq": 0}
    assert buf.add("k", 3, "a", None) == []
    assert buf.state == {"k": (0, 10, 0, False, 1)}
    assert buf.advance(10) == [Result("k", 0, 10, 1)]
    assert buf.state == {"k": (0, 10, 0, True, 1)}  # fired, kept for late records
    assert buf.add("k", 4, "b", 12) == [Result("k", 0, 10, 2)]  # late firing, updated value
    assert buf.add("k", 14, "c", 12) == []
    assert buf.state == {"k": (0, 10, 0, True, 2, 10, 20, 1, False, 1)}
    assert buf.advance(15) == []
    assert buf.state == {"k": (10, 20, 1, False, 1)}  # [0, 10) dropped at end + lateness
    assert buf.add("k", 9, "d", 15) == [Late("k", 9, "d")]
    assert buf.flush() == [Result("k", 10, 20, 1)]
    assert buf.state == {}
    assert buf.meta() == {"watermark": 2**63 - 1, "seq": 2}


def test_windows_fire_by_end_then_start_then_creation_order():
    buf = WindowBuffer(Sliding(10, 5), WindowAggregate.count())
    for key, ts in [("b", 7), ("a", 7), ("a", 12), ("c", 1)]:
        assert buf.add(key, ts, None, None) == []
    assert buf.advance(15) == [
        Result("c", -5, 5, 1),
        Result("b", 0, 10, 1),  # b's window [0, 10) was created before a's
        Result("a", 0, 10, 1),
        Result("c", 0, 10, 1),
        Result("b", 5, 15, 1),
        Result("a", 5, 15, 2),
    ]
    assert buf.state == {"a": (10, 20, 4, False, 1)}


def test_keys_of_mixed_types_are_never_ordered():
    buf = WindowBuffer(Session(10), WindowAggregate.count(), allowed_lateness_ms=10)
    for key in ("a", 1, None, (2, "b")):
        buf.add(key, 0, None, None)
    assert [r.key for r in buf.advance(10)] == ["a", 1, None, (2, "b")]  # creation order
    assert buf.advance(20) == [] and buf.state == {}


def test_a_watermark_given_to_add_advances_first_and_old_watermarks_are_ignored():
    buf = WindowBuffer(Tumbling(10), WindowAggregate.count())
    buf.add("k", 1, None, None)
    assert buf.add("k", 25, None, 10) == [Result("k", 0, 10, 1)]
    assert buf.advance(5) == [] and buf.watermark == 10
    assert buf.add("k", 9, None, 3) == [Late("k", 9, None)]  # judged by the buffer's watermark, 10


def test_session_bridging_merge_fires_late_at_once_and_keeps_one_window():
    buf = WindowBuffer(Session(100), WindowAggregate.count(), allowed_lateness_ms=1000)
    buf.add("u", 0, None, None)
    buf.add("u", 180, None, None)
    assert buf.advance(300) == [Result("u", 0, 100, 1), Result("u", 180, 280, 1)]
    # [90, 190) touches [0, 100) and overlaps [180, 280): one session, already past its end
    assert buf.add("u", 90, None, 300) == [Result("u", 0, 280, 3)]
    assert buf.state == {"u": (0, 280, 0, True, 3)}
    assert buf.add("u", 250, None, 300) == []  # [250, 350): the session grows past the watermark
    assert buf.state == {"u": (0, 350, 0, False, 4)}
    assert buf.add("u", 100, None, 300) == []  # inside: no new bounds
    assert buf.advance(350) == [Result("u", 0, 350, 5)]
    assert buf.advance(1350) == [] and buf.state == {}  # stale index entries of merged windows: skipped


def test_session_touching_windows_merge_and_distant_ones_do_not():
    buf = WindowBuffer(Session(10), WindowAggregate.reduce(operator.add))
    for ts in (0, 10, 31, -20):
        buf.add("k", ts, ts, None)
    assert buf.flush() == [Result("k", -20, -10, -20), Result("k", 0, 20, 10), Result("k", 31, 41, 31)]


def test_rebuild_from_the_mapping_alone():
    state = {"a": (0, 10, 0, True, 2, 10, 20, 3, False, 1), "b": (10, 20, 1, False, 4)}
    buf = WindowBuffer(Tumbling(10), WindowAggregate.count(), 5, state=state, meta={"watermark": 12})
    assert buf.meta() == {"watermark": 12, "seq": 4}
    assert buf.add("a", 5, None, 12) == [Result("a", 0, 10, 3)]
    assert buf.advance(20) == [Result("b", 10, 20, 4), Result("a", 10, 20, 1)]
    assert buf.state == {"a": (10, 20, 3, True, 1), "b": (10, 20, 1, True, 4)}


def test_a_raising_user_function_leaves_the_buffer_unchanged():
    def add(acc, value):
        if value == "boom":
            raise ValueError(value)
        return acc + value

    buf = WindowBuffer(Sliding(10, 5), WindowAggregate.aggregate(lambda: "", add))
    buf.add("k", 7, "x", None)
    before = dict(buf.state), buf.meta()
    with pytest.raises(ValueError, match="boom"):
        buf.add("k", 8, "boom", None)  # the second window is new: its first() raises after the first add
    assert (dict(buf.state), buf.meta()) == before
    assert buf.flush() == [Result("k", 0, 10, "x"), Result("k", 5, 15, "x")]


# -- against a brute force ---------------------------------------------------------------------------


class Reference:
    """Every window keeps the list of its records; nothing incremental, no index, no accumulators."""

    def __init__(self, assigner: Any, lateness: int, result: Any):
        self.assigner, self.lateness, self.result = assigner, lateness, result
        self.windows: dict[tuple[Any, int, int], list[Any]] = {}  # -> [values, fired, creation seq]
        self.wm: int | None = None
        self.seq = 0

    def windows_of(self, ts: int) -> list[tuple[int, int]]:
        a = self.assigner
        if isinstance(a, Session):
            return [(ts, ts + a.gap_ms)]
        slide = a.slide_ms if isinstance(a, Sliding) else a.size_ms
        return [
            (s, s + a.size_ms) for s in range(ts - a.size_ms + 1, ts + 1) if (s - a.offset_ms) % slide == 0
        ]

    def passed(self, t: int) -> bool:
        return self.wm is not None and t <= self.wm

    def fire(self, key: Any, start: int, end: int) -> Result:
        return Result(key, start, end, self.result(self.windows[key, start, end][0]))

    def advance(self, wm: int | None) -> list[Any]:
        if wm is None or (self.wm is not None and wm <= self.wm):
            return []
        self.wm = wm
        due = sorted((end, start, w[2], key) for (key, start, end), w in self.windows.items() if not w[1])
        out = [self.fire(key, start, end) for end, start, _, key in due if end <= wm]
        for (key, start, end), w in list(self.windows.items()):
            w[1] = w[1] or end <= wm
            if end + self.lateness <= wm:
                del self.windows[key, start, end]
        return out

    def add(self, key: Any, ts: int, value: Any, wm: int | None) -> list[Any]:
        out = self.advance(wm)
        if isinstance(self.assigner, Session):
            ((start, end),) = self.windows_of(ts)
            hits = sorted(w for w in self.windows if w[0] == key and w[1] <= end and w[2] >= start)
            if not hits and self.passed(end + self.lateness):
                return [*out, Late(key, ts, value)]
            parts = [self.windows.pop(w) for w in hits]
            start = min([start] + [w[1] for w in hits])
            end = max([end] + [w[2] for w in hits])
            if parts:  # a merged session is as old as its oldest part
                seq = min(part[2] for part in parts)
            else:
                seq, self.seq = self.seq, self.seq + 1
            values = [v for part in parts for v in part[0]]
            self.windows[key, start, end] = [[*values, value], self.passed(end), seq]
            return out + ([self.fire(key, start, end)] if self.passed(end) else [])
        live = [(s, e) for s, e in self.windows_of(ts) if not self.passed(e + self.lateness)]
        if not live:
            return [*out, Late(key, ts, value)]
        for start, end in live:
            if (key, start, end) not in self.windows:
                self.windows[key, start, end] = [[], self.passed(end), self.seq]
                self.seq += 1
            self.windows[key, start, end][0].append(value)
            if self.passed(end):
                out.append(self.fire(key, start, end))
        return out

    def flush(self) -> list[Any]:
        return self.advance(2**63 - 1)


AGGREGATES = {
    "count": (WindowAggregate.count(), len),
    "reduce": (WindowAggregate.reduce(operator.add), sum),
    "aggregate": (
        WindowAggregate.aggregate(
            tuple,
            lambda acc, v: tuple(sorted((*acc, v))),
            lambda a, b: tuple(sorted(a + b)),
            lambda acc: "|".join(map(str, acc)),
        ),
        lambda values: "|".join(map(str, sorted(values))),
    ),
}

ASSIGNERS = {
    "tumbling": st.builds(
        lambda size, off: Tumbling(size, off % size), st.integers(1, 20), st.integers(0, 19)
    ),
    "sliding": st.integers(1, 20).flatmap(
        lambda size: st.integers(1, size).flatmap(
            lambda slide: st.builds(
                Sliding, st.just(size), st.just(slide), st.integers(-slide + 1, slide - 1)
            )
        )
    ),
    "session": st.builds(Session, st.integers(1, 15)),
}

# an add moves the clock forward and takes a timestamp up to 25 ms behind it (bounded out of order); a
# watermark step sets the watermark some lag behind the clock (it may not advance); add_wm hands a new
# watermark to add only
STEPS = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.integers(0, 3), st.integers(0, 6), st.integers(0, 25)),
        st.tuples(st.just("wm"), st.integers(0, 30)),
        st.tuples(
            st.just("add_wm"), st.integers(0, 3), st.integers(0, 6), st.integers(0, 25), st.integers(0, 30)
        ),
    ),
    max_size=60,
)


def concrete(steps: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """``("add", key, ts, value, watermark)`` and ``("advance", watermark)``, from -40 ms on."""
    now, wm, events = -40, None, []
    for n, step in enumerate(steps):
        if step[0] == "wm":
            events.append(("advance", now - step[1]))
            wm = max(wm if wm is not None else now - step[1], now - step[1])
            continue
        now += step[2]
        if step[0] == "add_wm":
            wm = max(wm if wm is not None else now - step[4], now - step[4])
        events.append(("add", f"k{step[1]}", now - step[3], n, wm))
    return events


def feed(buf: Any, events: list[tuple[Any, ...]]) -> list[Any]:
    out: list[Any] = []
    for event in events:
        out.append(buf.add(*event[1:]) if event[0] == "add" else buf.advance(event[1]))
        if isinstance(buf, WindowBuffer):
            horizon = buf.watermark - buf.allowed_lateness_ms
            assert all(end > horizon for entries in buf.state.values() for end in entries[1::5])
    return out


class EngineState(dict):
    """A mapping that stores what RocksDB would give back (msgpack: lists become tuples)."""

    def __setitem__(self, key: Any, value: Any) -> None:
        super().__setitem__(key, unpack(pack(value)))


@pytest.mark.parametrize("aggregate", sorted(AGGREGATES))
@pytest.mark.parametrize("kind", sorted(ASSIGNERS))
@settings(max_examples=120, deadline=None)
@given(data=st.data(), steps=STEPS, lateness=st.integers(0, 15))
def test_matches_brute_force_is_deterministic_and_survives_a_restore(kind, aggregate, data, steps, lateness):
    assigner = data.draw(ASSIGNERS[kind])
    agg, result = AGGREGATES[aggregate]
    events = concrete(steps)
    buf = WindowBuffer(assigner, agg, lateness)
    outputs = feed(buf, events)
    outputs.append(buf.flush())
    assert buf.state == {}
    ref = Reference(assigner, lateness, result)
    expected = [*feed(ref, events), ref.flush()]
    assert outputs == expected

    again = WindowBuffer(assigner, agg, lateness)
    assert [*feed(again, events), again.flush()] == outputs

    cut = data.draw(st.integers(0, len(events)))
    first = WindowBuffer(assigner, agg, lateness, state=EngineState())
    before = feed(first, events[:cut])
    restored = WindowBuffer(
        assigner, agg, lateness, state=EngineState(unpack(pack(first.state))), meta=unpack(pack(first.meta()))
    )
    assert [*before, *feed(restored, events[cut:]), restored.flush()] == outputs
