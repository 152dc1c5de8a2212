"""engine.event_time: source watermark strategies and the watermark of a multi-input instance."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.errors import ParameterError
from engine.event_time import MAX_WATERMARK, BoundedOutOfOrderness, InputWatermarks


def test_bounded_out_of_orderness_follows_the_newest_timestamp_minus_the_bound():
    s = BoundedOutOfOrderness(100)
    assert s.advance(None, []) is None  # nothing seen: no watermark yet
    assert s.advance(None, [1_000, 1_300, 1_200]) == 1_200
    assert s.advance(1_200, [1_250]) == 1_200  # within the bound: no progress, never backwards
    assert s.advance(1_200, [2_000]) == 1_900
    assert BoundedOutOfOrderness(0).advance(None, [5, 3]) == 5


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"max_out_of_order_ms": -1},
            "BoundedOutOfOrderness: max_out_of_order_ms must be an int >= 0 (milliseconds), got -1",
        ),
        (
            {"max_out_of_order_ms": 1.5},
            "BoundedOutOfOrderness: max_out_of_order_ms must be an int >= 0 (milliseconds), got 1.5",
        ),
        (
            {"max_out_of_order_ms": True},
            "BoundedOutOfOrderness: max_out_of_order_ms must be an int >= 0 (milliseconds), got True",
        ),
        (
            {"max_out_of_order_ms": 10, "idle_timeout_ms": 0},
            "BoundedOutOfOrderness: idle_timeout_ms must be an int > 0 (milliseconds) or None, got 0",
        ),
    ],
)
def test_bad_strategy_parameters_are_one_line_errors(kwargs, message):
    with pytest.raises(ParameterError) as info:
        BoundedOutOfOrderness(**kwargs)
    assert str(info.value) == message


def test_the_slowest_active_input_holds_the_watermark():
    w = InputWatermarks(3)
    assert w.update(0, 50) is None and w.update(1, 70) is None  # input 2 has said nothing yet
    assert w.current is None
    assert w.update(2, 60) == 50
    assert w.update(0, 80) == 60
    assert w.update(0, 90) is None and w.current == 60  # input 2 still at 60
    assert w.update(2, None) is None  # a batch without a watermark changes nothing


def test_an_ended_input_stops_holding_the_others_back_and_all_ended_is_the_maximum():
    w = InputWatermarks(2)
    w.update(0, 10)
    w.update(1, 5)
    assert w.current == 5
    assert w.ended(1) == 10
    assert w.ended(1) is None  # idempotent
    assert w.ended(0) == MAX_WATERMARK


def test_an_idle_input_is_left_out_until_it_sends_again_and_the_watermark_never_goes_back():
    w = InputWatermarks(2)
    w.update(0, 100)
    assert w.current is None  # input 1 silent from the start
    assert w.idle(1) == 100
    assert w.update(0, 150) == 150
    # input 1 wakes up far behind: it counts again, but the watermark already promised stays
    assert w.update(1, 20) is None and w.current == 150
    assert w.update(1, 120) is None and w.current == 150
    assert w.update(1, 200) is None and w.current == 150  # min(150, 200) is not progress
    assert w.update(0, 180) == 180
    assert w.idle(0) == 200 and w.idle(1) is None  # every input idle: nothing new is known


ops = st.lists(
    st.one_of(
        st.tuples(st.just("update"), st.integers(0, 2), st.one_of(st.none(), st.integers(0, 1000))),
        st.tuples(st.just("ended"), st.integers(0, 2), st.none()),
        st.tuples(st.just("idle"), st.integers(0, 2), st.none()),
    ),
    max_size=40,
)


@settings(max_examples=200, deadline=None)
@given(ops=ops)
def test_the_watermark_is_monotone_and_the_minimum_over_the_active_inputs(ops):
    w = InputWatermarks(3)
    seen: dict[int, int] = {}
    ended: set[int] = set()
    idle: set[int] = set()
    ever_idle = False
    for op, index, value in ops:
        before = w.current
        if op == "update":
            moved = w.update(index, value)
            idle.discard(index)
            if value is not None:
                seen[index] = max(seen.get(index, value), value)
        elif op == "ended":
            moved = w.ended(index)
            ended.add(index)
            idle.discard(index)
        else:
            moved = w.idle(index)
            if index not in ended:
                idle.add(index)
                ever_idle = True
        # monotone, and a returned value is the new current one
        assert before is None or (w.current is not None and w.current >= before)
        assert moved is None or (moved == w.current and (before is None or moved > before))
        active = [i for i in range(3) if i not in ended and i not in idle]
        if len(ended) == 3:
            assert w.current == MAX_WATERMARK
        elif active and all(i in seen for i in active):
            # once every active input has spoken, the watermark is their minimum; an input back from
            # idleness may be behind a value promised while it was left out, which stays
            low = min(seen[i] for i in active)
            assert w.current == low if not ever_idle else (w.current is not None and w.current >= low)
        elif active and not ever_idle:
            assert w.current is None  # an input that never spoke holds everything back
