"""Join core (operators/joins.py): both join buffers by hand, and against brute forces with hypothesis."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.codec import pack, unpack
from engine.errors import JobDefinitionError, ParameterError
from operators.joins import LEFT, RIGHT, IntervalJoinBuffer, Joined, Late, WindowJoinBuffer
from operators.windows import MAX_WATERMARK, MIN_WATERMARK, Session, Sliding, Tumbling


def pair(left: Any, right: Any) -> tuple[Any, Any]:
    return (left, right)


def records(buf: Any) -> set[tuple[Any, ...]]:
    """The buffered records as ``(key, side, ts, value)``."""
    return {(key, side, ts, value) for (key, side, _), (ts, value) in buf.state.items()}


class EngineState(dict):
    """A mapping that stores what RocksDB would give back (msgpack: lists become tuples)."""

    def __setitem__(self, key: Any, value: Any) -> None:
        super().__setitem__(key, unpack(pack(value)))


class CountingState(dict):
    """A dict that counts puts, and refuses to overwrite an entry."""

    puts = 0

    def __setitem__(self, key: Any, value: Any) -> None:
        assert key not in self, f"{key} rewritten"
        self.puts += 1
        super().__setitem__(key, value)


# -- IntervalJoinBuffer by hand ----------------------------------------------------------------------


@pytest.mark.parametrize("left_first", [True, False])
@pytest.mark.parametrize(
    ("lower", "upper", "joined", "not_joined"),
    [
        (-5, 10, [95, 100, 110], [94, 111]),
        (-10, -2, [90, 95, 98], [89, 99, 100]),  # the right record must come before the left one
        (3, 7, [103, 107], [100, 102, 108]),
        (0, 0, [100], [99, 101]),
        (-4, -4, [96], [95, 97]),
    ],
)
def test_interval_bounds_are_inclusive_whichever_side_arrives_first(
    lower, upper, joined, not_joined, left_first
):
    buf = IntervalJoinBuffer(lower, upper, pair)
    rights = sorted(joined + not_joined)
    if left_first:
        assert buf.add_left("k", 100, "l", None) == []
        out = [o for ts in rights for o in buf.add_right("k", ts, f"r{ts}", None)]
    else:
        assert all(buf.add_right("k", ts, f"r{ts}", None) == [] for ts in rights)
        out = buf.add_left("k", 100, "l", None)
    assert out == [Joined("k", max(100, ts), ("l", f"r{ts}")) for ts in joined]


def test_interval_keys_do_not_meet():
    buf = IntervalJoinBuffer(0, 10, pair)
    buf.add_left("a", 0, "l", None)
    assert buf.add_right("b", 5, "r", None) == []
    assert buf.add_right("a", 5, "r", None) == [Joined("a", 5, ("l", "r"))]


def test_interval_outputs_follow_the_arrival_order_of_the_other_side():
    buf = IntervalJoinBuffer(-100, 100, pair)
    for ts, value in [(50, "r1"), (10, "r2"), (30, "r3"), (10, "r4")]:
        buf.add_right("k", ts, value, None)
    assert buf.add_left("k", 20, "l", None) == [
        Joined("k", 50, ("l", "r1")),
        Joined("k", 20, ("l", "r2")),
        Joined("k", 30, ("l", "r3")),
        Joined("k", 20, ("l", "r4")),
    ]


def test_interval_late_records_change_nothing_and_a_timestamp_at_the_watermark_is_on_time():
    buf = IntervalJoinBuffer(-5, 5, pair)
    buf.add_right("k", 100, "r", None)
    before = dict(buf.state), buf.meta()
    assert buf.add_left("k", 99, "l", 100) == [Late("k", 99, "l", "left")]
    assert buf.add_right("k", 99, "r2", None) == [Late("k", 99, "r2", "right")]
    assert (dict(buf.state), buf.meta()) == (before[0], {"watermark": 100, "seq": 1})
    assert buf.add_left("k", 100, "l", 100) == [Joined("k", 100, ("l", "r"))]


def test_interval_expiry_at_the_exact_watermarks_and_the_state_layout():
    buf = IntervalJoinBuffer(-5, 10, pair)
    assert buf.meta() == {"watermark": MIN_WATERMARK, "seq": 0}
    buf.add_left("k", 100, "l", None)
    buf.add_right("k", 100, "r", None)
    assert buf.state == {("k", LEFT, 0): (100, "l"), ("k", RIGHT, 1): (100, "r")}
    buf.advance(105)  # right: ts - lower = 105, a left record at 105 still meets it
    assert records(buf) == {("k", LEFT, 100, "l"), ("k", RIGHT, 100, "r")}
    buf.advance(106)
    assert records(buf) == {("k", LEFT, 100, "l")}
    buf.advance(110)  # left: ts + upper = 110, a right record at 110 still meets it
    assert records(buf) == {("k", LEFT, 100, "l")}
    assert buf.add_right("k", 110, "edge", None) == [Joined("k", 110, ("l", "edge"))]
    buf.advance(111)
    assert records(buf) == {("k", RIGHT, 110, "edge")}
    assert buf.advance(116) == [] and buf.state == {}
    assert buf.meta() == {"watermark": 116, "seq": 3}


def test_interval_pair_at_the_watermark_edge_is_emitted_where_flink_drops_its_left_record():
    # Flink removes the left record at W = ts_l + upper, then accepts a right record at ts_r = W
    buf = IntervalJoinBuffer(0, 10, pair)
    buf.add_left("k", 0, "l", None)
    assert buf.add_right("k", 10, "r", 10) == [Joined("k", 10, ("l", "r"))]


def test_interval_a_record_that_can_no_longer_match_is_joined_but_not_stored():
    buf = IntervalJoinBuffer(-10, -5, pair)
    buf.add_right("k", 92, "r", None)
    # on time (100 >= 98) but its interval [90, 95] is below the watermark: nothing can join it later
    assert buf.add_left("k", 100, "l", 98) == [Joined("k", 100, ("l", "r"))]
    assert records(buf) == {("k", RIGHT, 92, "r")}
    assert buf.meta()["seq"] == 1
    lower_positive = IntervalJoinBuffer(5, 10, pair)
    assert lower_positive.add_right("k", 102, "r", 100) == []  # its lefts are at [92, 97] < 100
    assert lower_positive.state == {}


def test_interval_rebuild_from_the_mapping_alone():
    state = {("k", LEFT, 3): (100, "l3"), ("k", RIGHT, 7): (104, "r7"), ("k", LEFT, 1): (102, "l1")}
    buf = IntervalJoinBuffer(-5, 5, pair, state=state, meta={"watermark": 100, "seq": 5})
    assert buf.meta() == {"watermark": 100, "seq": 8}  # past every stored seq
    assert buf.add_right("k", 101, "r", None) == [  # by seq: l1 arrived before l3
        Joined("k", 102, ("l1", "r")),
        Joined("k", 101, ("l3", "r")),
    ]
    buf.advance(106)  # 100 + 5 < 106: l3 leaves; l1 stays until W > 107
    assert records(buf) == {("k", LEFT, 102, "l1"), ("k", RIGHT, 104, "r7"), ("k", RIGHT, 101, "r")}
    assert buf.flush() == [] and buf.state == {}


def test_interval_a_raising_fn_leaves_the_buffer_unchanged():
    def fn(left, right):
        if right == "boom":
            raise ValueError(right)
        return left + right

    buf = IntervalJoinBuffer(-10, 10, fn)
    buf.add_right("k", 0, "x", None)
    buf.add_right("k", 1, "boom", None)
    before = dict(buf.state), buf.meta()
    with pytest.raises(ValueError, match="boom"):
        buf.add_left("k", 2, "l", None)  # joins x first, then raises on boom
    assert (dict(buf.state), buf.meta()) == before
    assert buf.add_right("k", 3, "y", None) == []  # the failed left record was not buffered


def test_interval_flush_drops_everything_even_near_the_maximum():
    buf = IntervalJoinBuffer(0, 10, pair)
    buf.add_left("k", MAX_WATERMARK - 3, "l", None)
    buf.add_right("k", 5, "r", None)
    assert buf.flush() == [] and buf.state == {}
    assert buf.add_right("k", 6, "r", None) == [Late("k", 6, "r", "right")]


def test_a_hot_key_costs_one_put_per_record_and_never_rewrites_one():
    buf = IntervalJoinBuffer(-1000, 1000, pair, state=CountingState())
    for ts in range(300):
        buf.add_left("hot", ts, ts, None)
        buf.add_right("hot", ts, ts, None)
    assert buf.state.puts == 600 and len(buf.state) == 600
    windows = WindowJoinBuffer(Sliding(1000, 100), pair, state=CountingState())
    for ts in range(300):
        windows.add_left("hot", ts, ts, None)
    assert windows.state.puts == 300  # once per record, not once per window


# -- WindowJoinBuffer by hand ------------------------------------------------------------------------


def test_window_tumbling_fires_every_pair_at_the_end_and_drops_the_window():
    buf = WindowJoinBuffer(Tumbling(10), pair)
    assert buf.add_left("k", 3, "l1", None) == []
    assert buf.add_right("k", 9, "r1", None) == []
    assert buf.add_left("k", 0, "l2", None) == []
    assert buf.add_right("k", 10, "r-next", None) == []
    assert buf.add_right("k", 5, "r2", None) == []
    assert buf.state == {
        ("k", LEFT, 0): (3, "l1"),
        ("k", RIGHT, 1): (9, "r1"),
        ("k", LEFT, 2): (0, "l2"),
        ("k", RIGHT, 3): (10, "r-next"),
        ("k", RIGHT, 4): (5, "r2"),
    }
    assert buf.advance(9) == []
    assert buf.advance(10) == [
        Joined("k", 9, ("l1", "r1")),
        Joined("k", 9, ("l1", "r2")),
        Joined("k", 9, ("l2", "r1")),
        Joined("k", 9, ("l2", "r2")),
    ]
    assert buf.state == {("k", RIGHT, 3): (10, "r-next")}
    assert buf.add_left("k", 9, "late", 12) == [Late("k", 9, "late", "left")]
    assert buf.add_left("k", 11, "l3", None) == []  # behind the watermark, but its window is open
    assert buf.flush() == [Joined("k", 19, ("l3", "r-next"))]
    assert buf.state == {} and buf.meta() == {"watermark": MAX_WATERMARK, "seq": 6}


def test_window_sliding_stores_a_record_once_and_joins_it_in_each_window():
    buf = WindowJoinBuffer(Sliding(10, 5), pair)
    buf.add_left("k", 7, "l", None)  # windows [0, 10) and [5, 15)
    buf.add_right("k", 3, "r3", None)  # [-5, 5) and [0, 10)
    buf.add_right("k", 12, "r12", None)  # [5, 15) and [10, 20)
    assert len(buf.state) == 3
    assert buf.advance(10) == [Joined("k", 9, ("l", "r3"))]
    assert records(buf) == {("k", LEFT, 7, "l"), ("k", RIGHT, 12, "r12")}
    # a record at 6 is late for [0, 10) but joins in [5, 15)
    assert buf.add_right("k", 6, "r6", None) == []
    assert buf.advance(15) == [Joined("k", 14, ("l", "r12")), Joined("k", 14, ("l", "r6"))]
    assert records(buf) == {("k", RIGHT, 12, "r12")}
    assert buf.add_left("k", 4, "x", None) == [Late("k", 4, "x", "left")]
    assert buf.flush() == [] and buf.state == {}


def test_window_fires_by_end_then_start_then_creation_order():
    buf = WindowJoinBuffer(Sliding(10, 5), pair)
    for key, ts in [("b", 7), ("a", 7), ("a", 12), ("c", 1)]:
        buf.add_left(key, ts, f"{key}{ts}", None)
        buf.add_right(key, ts, ts, None)
    assert buf.advance(15) == [
        Joined("c", 4, ("c1", 1)),
        Joined("b", 9, ("b7", 7)),  # b's window [0, 10) was created before a's
        Joined("a", 9, ("a7", 7)),
        Joined("c", 9, ("c1", 1)),
        Joined("b", 14, ("b7", 7)),
        Joined("a", 14, ("a7", 7)),
        Joined("a", 14, ("a7", 12)),
        Joined("a", 14, ("a12", 7)),
        Joined("a", 14, ("a12", 12)),
    ]
    assert records(buf) == {("a", LEFT, 12, "a12"), ("a", RIGHT, 12, 12)}


def test_window_a_raising_fn_leaves_the_window_pending():
    calls = []

    def fn(left, right):
        calls.append((left, right))
        if len(calls) == 2:
            raise ValueError("boom")
        return left + right

    buf = WindowJoinBuffer(Tumbling(10), fn)
    buf.add_left("k", 1, "a", None)
    buf.add_right("k", 2, "x", None)
    buf.add_right("k", 3, "y", None)
    before = dict(buf.state), buf.meta()
    with pytest.raises(ValueError, match="boom"):
        buf.advance(10)
    assert (dict(buf.state), buf.meta()) == before
    assert buf.advance(10) == [Joined("k", 9, "ax"), Joined("k", 9, "ay")]


def test_keys_of_mixed_types_are_never_ordered():
    buf = WindowJoinBuffer(Tumbling(10), pair)
    interval = IntervalJoinBuffer(0, 0, pair)
    for key in ("a", 1, None, (2, "b")):
        buf.add_left(key, 0, "l", None)
        buf.add_right(key, 0, "r", None)
        interval.add_left(key, 0, "l", None)
        assert interval.add_right(key, 0, "r", None) == [Joined(key, 0, ("l", "r"))]
    assert [j.key for j in buf.advance(10)] == ["a", 1, None, (2, "b")]  # creation order
    interval.advance(1)
    assert buf.state == {} and interval.state == {}


def test_a_watermark_given_to_add_advances_first_and_old_watermarks_are_ignored():
    buf = WindowJoinBuffer(Tumbling(10), pair)
    buf.add_left("k", 1, "l", None)
    buf.add_right("k", 2, "r", None)
    assert buf.add_left("k", 25, "l2", 10) == [Joined("k", 9, ("l", "r"))]
    assert buf.advance(5) == [] and buf.watermark == 10
    assert buf.add_right("k", 9, "r", 3) == [Late("k", 9, "r", "right")]  # judged by the buffer's, 10
    interval = IntervalJoinBuffer(0, 5, pair)
    interval.add_left("k", 1, "l", 1)
    assert interval.advance(0) == [] and interval.watermark == 1
    assert interval.add_right("k", 1, "r", 0) == [Joined("k", 1, ("l", "r"))]


@pytest.mark.parametrize("reverse", [False, True])
def test_window_rebuild_from_the_mapping_alone_in_any_order(reverse):
    entries = [
        (("k", LEFT, 0), (7, "l7")),
        (("k", RIGHT, 4), (12, "r12")),
        (("j", RIGHT, 9), (8, "jr")),
        (("j", LEFT, 2), (7, "jl")),
    ]
    state = dict(reversed(entries) if reverse else entries)
    buf = WindowJoinBuffer(Sliding(10, 5), pair, state=state, meta={"watermark": 10, "seq": 3})
    assert buf.meta() == {"watermark": 10, "seq": 10}
    # [0, 10) has fired (end <= 10); [5, 15) of k was created by seq 0, that of j by seq 2
    assert buf.flush() == [
        Joined("k", 14, ("l7", "r12")),
        Joined("j", 14, ("jl", "jr")),
    ]
    assert buf.state == {}


# -- errors ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        (
            lambda: IntervalJoinBuffer(5, 3, pair),
            ParameterError,
            "IntervalJoinBuffer: lower_ms must be <= upper_ms, got lower_ms=5 > upper_ms=3; a right record "
            "joins a left one when left.ts + lower_ms <= right.ts <= left.ts + upper_ms",
        ),
        (
            lambda: IntervalJoinBuffer(1.5, 3, pair),
            ParameterError,
            "IntervalJoinBuffer: lower_ms must be an int (milliseconds), got 1.5",
        ),
        (
            lambda: IntervalJoinBuffer(0, True, pair),
            ParameterError,
            "IntervalJoinBuffer: upper_ms must be an int (milliseconds), got True",
        ),
        (
            lambda: IntervalJoinBuffer(0, 1, "f"),
            ParameterError,
            "IntervalJoinBuffer: fn must be a callable (left, right) -> value, got 'f'",
        ),
        (
            lambda: WindowJoinBuffer(10, pair),
            ParameterError,
            "WindowJoinBuffer: assigner must be Tumbling or Sliding, got 10",
        ),
        (
            lambda: WindowJoinBuffer(Tumbling(10), None),
            ParameterError,
            "WindowJoinBuffer: fn must be a callable (left, right) -> value, got None",
        ),
        (
            lambda: WindowJoinBuffer(Session(100), pair),
            JobDefinitionError,
            "WindowJoinBuffer: Session(gap_ms=100) is not supported: a windowed join takes Tumbling or "
            "Sliding windows; to join records at most gap_ms apart, use an interval join with bounds "
            "(-gap_ms, gap_ms)",
        ),
    ],
)
def test_bad_parameters_are_refused_with_one_line_messages(make, error, message):
    with pytest.raises(error) as info:
        make()
    assert str(info.value) == message


# -- msgpack -----------------------------------------------------------------------------------------


def test_state_and_meta_round_trip_through_msgpack_and_values_come_back_as_stored():
    buf = IntervalJoinBuffer(0, 10, pair, state=EngineState())
    buf.add_left(("user", 7), 0, [1, [2, 3]], None)
    assert buf.add_right(("user", 7), 5, {"x": [4]}, None) == [
        Joined(("user", 7), 5, ((1, (2, 3)), {"x": [4]}))
    ]
    state, meta = unpack(pack(dict(buf.state))), unpack(pack(buf.meta()))
    assert state == dict(buf.state) and meta == buf.meta()
    restored = IntervalJoinBuffer(0, 10, pair, state=EngineState(state), meta=meta)
    assert restored.add_right(("user", 7), 6, "r", None) == [Joined(("user", 7), 6, ((1, (2, 3)), "r"))]
    windows = WindowJoinBuffer(Tumbling(10), pair, state=EngineState())
    windows.add_left(1, 0, [1], None)
    windows.add_right(1, 0, [2], None)
    assert unpack(pack(dict(windows.state))) == dict(windows.state)
    assert windows.flush() == [Joined(1, 9, ((1,), (2,)))]


# -- against brute forces ----------------------------------------------------------------------------

SIDES = ("left", "right")


class IntervalReference:
    """Every on-time record is kept forever; a new one is checked against all of the other side's."""

    def __init__(self, lower: int, upper: int):
        self.lower, self.upper = lower, upper
        self.kept: list[tuple[str, Any, int, Any]] = []
        self.wm: int | None = None

    def advance(self, wm: int | None) -> list[Any]:
        if wm is not None and (self.wm is None or wm > self.wm):
            self.wm = wm
        return []

    def add(self, side: str, key: Any, ts: int, value: Any, wm: int | None) -> list[Any]:
        self.advance(wm)
        if self.wm is not None and ts < self.wm:
            return [Late(key, ts, value, side)]
        out = []
        for s, k, t, v in self.kept:
            if s == side or k != key:
                continue
            left_ts, right_ts = (ts, t) if side == "left" else (t, ts)
            if left_ts + self.lower <= right_ts <= left_ts + self.upper:
                out.append(Joined(key, max(ts, t), (value, v) if side == "left" else (v, value)))
        self.kept.append((side, key, ts, value))
        return out

    def flush(self) -> list[Any]:
        return self.advance(MAX_WATERMARK)

    def live(self) -> set[tuple[Any, ...]]:
        """The records that an on-time record could still meet."""
        wm = MIN_WATERMARK if self.wm is None else self.wm
        return {
            (k, SIDES.index(s), t, v)
            for s, k, t, v in self.kept
            if (t + self.upper if s == "left" else t - self.lower) >= wm
        }


class WindowReference:
    """Every window is recomputed from all records at each watermark; nothing incremental."""

    def __init__(self, assigner: Tumbling | Sliding):
        self.size = assigner.size_ms
        self.slide = assigner.slide_ms if isinstance(assigner, Sliding) else assigner.size_ms
        self.offset = assigner.offset_ms
        self.kept: list[tuple[str, Any, int, Any, int, list[int]]] = []  # ..., seq, live window starts
        self.fired: set[tuple[Any, int]] = set()
        self.wm: int | None = None

    def advance(self, wm: int | None) -> list[Any]:
        if wm is None or (self.wm is not None and wm <= self.wm):
            return []
        self.wm = wm
        created: dict[tuple[Any, int], int] = {}
        for _, key, _, _, seq, starts in self.kept:
            for start in starts:
                created.setdefault((key, start), seq)
        due = sorted(
            (start + self.size, start, seq, key)
            for (key, start), seq in created.items()
            if (key, start) not in self.fired and start + self.size <= wm
        )
        out = []
        for end, start, _, key in due:
            members = [(s, v) for s, k, _, v, _, starts in self.kept if k == key and start in starts]
            lefts = [v for s, v in members if s == "left"]
            rights = [v for s, v in members if s == "right"]
            out += [Joined(key, end - 1, (lv, rv)) for lv in lefts for rv in rights]
            self.fired.add((key, start))
        return out

    def add(self, side: str, key: Any, ts: int, value: Any, wm: int | None) -> list[Any]:
        out = self.advance(wm)
        starts = [
            s
            for s in range(ts - self.size + 1, ts + 1)
            if (s - self.offset) % self.slide == 0 and (self.wm is None or s + self.size > self.wm)
        ]
        if not starts:
            return [*out, Late(key, ts, value, side)]
        self.kept.append((side, key, ts, value, len(self.kept), starts))
        return out

    def flush(self) -> list[Any]:
        return self.advance(MAX_WATERMARK)

    def live(self) -> set[tuple[Any, ...]]:
        return {
            (k, SIDES.index(s), t, v)
            for s, k, t, v, _, starts in self.kept
            if any((k, start) not in self.fired for start in starts)
        }


# an add moves the clock forward and takes a timestamp up to 25 ms behind it (bounded out of order); a
# watermark step sets the watermark some lag behind the clock (it may not advance); add_wm hands a new
# watermark to the add only. Adds are drawn three times as often as the others, over two keys.
ADD = st.tuples(st.just("add"), st.booleans(), st.integers(0, 1), st.integers(0, 6), st.integers(0, 25))
STEPS = st.lists(
    st.one_of(
        ADD,
        ADD,
        ADD,
        st.tuples(st.just("wm"), st.integers(0, 40)),
        st.tuples(
            st.just("add_wm"),
            st.booleans(),
            st.integers(0, 1),
            st.integers(0, 6),
            st.integers(0, 25),
            st.integers(0, 40),
        ),
    ),
    min_size=8,
    max_size=60,
)


def concrete(steps: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """``(side, key, ts, value, watermark)`` and ``("advance", watermark)``, from -40 ms on."""
    now, wm, events = -40, None, []
    for n, step in enumerate(steps):
        if step[0] == "wm":
            events.append(("advance", now - step[1]))
            wm = max(wm if wm is not None else now - step[1], now - step[1])
            continue
        now += step[3]
        if step[0] == "add_wm":
            wm = max(wm if wm is not None else now - step[5], now - step[5])
        side = "left" if step[1] else "right"
        events.append((side, f"k{step[2]}", now - step[4], f"{side[0]}{n}", wm))
    return events


def apply(target: Any, event: tuple[Any, ...]) -> list[Any]:
    if event[0] == "advance":
        return target.advance(event[1])
    if isinstance(target, IntervalReference | WindowReference):
        return target.add(*event)
    add = target.add_left if event[0] == "left" else target.add_right
    return add(*event[1:])


def feed(buf: Any, events: list[tuple[Any, ...]], reference: Any = None) -> list[Any]:
    out: list[Any] = []
    for event in events:
        out.append(apply(buf, event))
        if reference is not None:
            assert out[-1] == apply(reference, event)
            assert records(buf) == reference.live()  # exactly the records that can still join
    return out


def check(make: Any, reference: Any, events: list[tuple[Any, ...]], cut: int) -> None:
    """``make(**kwargs)`` builds the buffer under test, ``reference`` is a fresh brute force."""
    buf = make()
    outputs = feed(buf, events, reference)
    outputs.append(buf.flush())
    assert outputs[-1] == reference.flush()
    assert buf.state == {}

    again = make()
    assert [*feed(again, events), again.flush()] == outputs

    first = make(state=EngineState())
    before = feed(first, events[:cut])
    restored = make(state=EngineState(unpack(pack(dict(first.state)))), meta=unpack(pack(first.meta())))
    assert [*before, *feed(restored, events[cut:]), restored.flush()] == outputs


@settings(max_examples=500, deadline=None)
@given(data=st.data(), steps=STEPS, lower=st.integers(-15, 15), width=st.integers(0, 20))
def test_interval_join_matches_brute_force_is_deterministic_and_survives_a_restore(data, steps, lower, width):
    upper = lower + width
    events = concrete(steps)
    cut = data.draw(st.integers(0, len(events)))

    def make(**kwargs: Any) -> IntervalJoinBuffer:
        return IntervalJoinBuffer(lower, upper, pair, **kwargs)

    check(make, IntervalReference(lower, upper), events, cut)


ASSIGNERS = st.one_of(
    st.builds(lambda size, off: Tumbling(size, off % size), st.integers(1, 20), st.integers(0, 19)),
    st.integers(1, 20).flatmap(
        lambda size: st.integers(1, size).flatmap(
            lambda slide: st.builds(
                Sliding, st.just(size), st.just(slide), st.integers(-slide + 1, slide - 1)
            )
        )
    ),
)


@settings(max_examples=500, deadline=None)
@given(data=st.data(), steps=STEPS, assigner=ASSIGNERS)
def test_window_join_matches_brute_force_is_deterministic_and_survives_a_restore(data, steps, assigner):
    events = concrete(steps)
    cut = data.draw(st.integers(0, len(events)))

    def make(**kwargs: Any) -> WindowJoinBuffer:
        return WindowJoinBuffer(assigner, pair, **kwargs)

    check(make, WindowReference(assigner), events, cut)
