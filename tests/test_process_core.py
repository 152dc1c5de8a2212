"""Keyed process functions (operators/process.py): state, timers, TTL, atomicity, restore, a reference model."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nexmark.reference import Q3_CATEGORY, Q3_STATES, q3

from connectors.nexmark import events as nexmark_events
from engine.codec import pack, unpack
from engine.errors import JobDefinitionError, ParameterError, SerializationError, StateError
from operators.process import (
    MAX_WATERMARK,
    MIN_WATERMARK,
    KeyedProcessFunction,
    Output,
    ProcessRunner,
)


class EngineState(dict):
    """A mapping that keeps what RocksDB would give back: keys and values through msgpack."""

    def __setitem__(self, key: Any, value: Any) -> None:
        super().__setitem__(unpack(pack(key)), unpack(pack(value)))


def restored(runner: ProcessRunner, function: Any) -> ProcessRunner:
    """A new runner from a copy of ``runner``'s mapping and meta, as the engine restores a checkpoint."""
    copy = EngineState(unpack(pack(list(runner.state.items()))))
    return ProcessRunner(function, state=copy, meta=unpack(pack(runner.meta())))


class Calls(KeyedProcessFunction):
    """Runs ``value(ctx)`` for each record and ``timer(t, ctx)`` for each timer: tests in a line."""

    def __init__(self, timer: Any = None):
        self.timer = timer

    def process_element(self, value: Any, ctx: Any) -> Any:
        return value(ctx)

    def on_timer(self, timestamp: int, ctx: Any) -> Any:
        return self.timer(timestamp, ctx) if self.timer else [(ctx.time_domain, ctx.key, timestamp)]


def run(runner: ProcessRunner, key: Any, fn: Any, ts: int | None = None, wm: int | None = None, now: int = 0):
    return runner.process(key, ts, fn, wm, now)


def values(outputs: list[Output]) -> list[Any]:
    return [o.value for o in outputs]


# -- state -------------------------------------------------------------------------------------------


def test_value_state_is_per_key_normalized_and_update_none_clears():
    r = ProcessRunner(Calls())

    def read(key: str, default: Any = None) -> Any:
        return values(run(r, key, lambda c: [c.value_state("s").value(default)]))[0]

    assert (read("a"), read("a", 7)) == (None, 7)
    run(r, "a", lambda c: c.value_state("s").update([1, [2]]))
    assert read("a") == (1, (2,))  # lists come back as tuples, from a dict too
    assert read("b", "none") == "none"  # isolation per key
    assert r.state == {("v", "a", "s"): ((1, (2,)), None)}
    run(r, "a", lambda c: c.value_state("s").update(None))
    assert r.state == {}
    run(
        r,
        "a",
        lambda c: [c.value_state("s").update(0), c.value_state("s").clear(), c.value_state("s").clear()],
    )
    assert r.state == {}


def test_list_state_add_update_clear():
    r = ProcessRunner(Calls())
    run(r, "a", lambda c: [c.list_state("l").add(x) for x in (1, [2], None)])
    run(r, "b", lambda c: c.list_state("l").add("b"))
    assert values(run(r, "a", lambda c: c.list_state("l").get())) == [1, (2,), None]
    assert r.state[("l", "a", "l")] == ((1, (2,), None), None)
    run(r, "a", lambda c: c.list_state("l").update(x for x in "xy"))
    assert values(run(r, "a", lambda c: c.list_state("l").get())) == ["x", "y"]
    run(r, "a", lambda c: c.list_state("l").update([]))
    assert values(run(r, "a", lambda c: [c.list_state("l").get()])) == [()]
    run(r, "b", lambda c: c.list_state("l").clear())
    assert r.state == {}


def test_map_state_iterates_in_encoded_key_order_and_sees_its_own_writes():
    r = ProcessRunner(Calls())
    for k in (300, 2, "a", -1, (1, "t")):
        run(r, "u", lambda c, k=k: c.map_state("m").put(k, str(k)))
    run(r, "v", lambda c: c.map_state("m").put(9, "other key"))
    # msgpack: 2 is 0x02, (1, "t") 0x92..., "a" 0xa1..., 300 0xcd..., -1 0xff: neither insertion nor Python order
    assert values(run(r, "u", lambda c: c.map_state("m").keys())) == [2, (1, "t"), "a", 300, -1]

    def edit(c: Any) -> list[Any]:
        m = c.map_state("m")
        m.remove(300)
        m.remove("absent")
        m.put(1, "one")
        m.put(2, "two")
        return [m.items(), m.get(300, "gone"), 1 in m, 300 in m, m.values()[0], m.is_empty()]

    items, *rest = values(run(r, "u", edit))
    assert items == [(1, "one"), (2, "two"), ((1, "t"), "(1, 't')"), ("a", "a"), (-1, "-1")]
    assert rest == ["gone", True, False, "one", False]
    assert values(run(r, "u", lambda c: c.map_state("m").items())) == items  # committed as seen
    assert values(run(r, "u", lambda c: [c.map_state("m").clear(), c.map_state("m").is_empty()])) == [
        None,
        True,
    ]
    assert r.state == {("m", "v", "m", 9): ("other key", None)}
    assert r._maps == {("v", "m"): {9: pack(9)}}  # the index follows the mapping


def test_a_state_name_keeps_its_kind_and_ttl_even_after_a_restore():
    fn = Calls()
    r = ProcessRunner(fn)
    run(r, "a", lambda c: c.value_state("x").update(1))
    with pytest.raises(JobDefinitionError) as info:
        run(r, "a", lambda c: c.list_state("x").add(1))
    assert str(info.value) == (
        "Calls: state 'x' is value state with ttl_ms=None, now used as list state with ttl_ms=None; declare "
        "each state the same way every time, and give each state its own name"
    )
    with pytest.raises(
        JobDefinitionError, match="'x' is value state with ttl_ms=None, now used as value state with ttl_ms=5"
    ):
        run(r, "a", lambda c: c.value_state("x", ttl_ms=5))
    again = restored(r, fn)
    with pytest.raises(JobDefinitionError, match="now used as map state"):
        run(again, "b", lambda c: c.map_state("x"))


# -- timers ------------------------------------------------------------------------------------------


def test_timers_dedupe_delete_and_fire_by_time_then_registration():
    r = ProcessRunner(Calls())

    def register(*times: int, delete: tuple[int, ...] = ()) -> Any:
        def body(c: Any) -> None:
            for t in times:
                c.timers.register_event_time(t)
            for t in delete:
                c.timers.delete_event_time(t)

        return body

    run(r, "b", register(20, 10, 10))
    run(r, "a", register(10, 30, 40, delete=(30, 99)))
    run(r, "c", register(20))
    run(r, "b", register(20))  # already registered: keeps its place
    assert r.meta()["seq"] == 6  # numbers 0-5, the duplicate took none
    assert values(r.advance_watermark(25)) == [
        ("event", "b", 10),
        ("event", "a", 10),
        ("event", "b", 20),
        ("event", "c", 20),
    ]
    assert r.advance_watermark(25) == [] and r.watermark == 25
    assert r.advance_watermark(3) == [] and r.watermark == 25  # never goes back
    run(r, "late", register(5))  # already passed: fires at the next advance, even one that does not advance
    assert values(r.advance_watermark(1)) == [("event", "late", 5)]
    assert values(r.flush()) == [("event", "a", 40)]
    assert r.watermark == MAX_WATERMARK and r.state == {}


def test_outputs_of_on_timer_carry_its_time_and_a_record_watermark_fires_first():
    r = ProcessRunner(Calls(lambda t, c: [(c.key, t, c.timestamp, c.watermark)]))
    run(r, "k", lambda c: c.timers.register_event_time(10), ts=1)
    outputs = run(r, "k", lambda c: [("record", c.watermark)], ts=12, wm=11)
    assert outputs == [Output(None, 10, ("k", 10, 10, 11)), Output(None, 12, ("record", 11))]


def test_timers_registered_by_on_timer_fire_in_the_same_advance_when_due():
    def chain(t: int, c: Any) -> list[Any]:
        if t == 10:
            c.timers.register_event_time(5)  # before the timer firing: fires next, as in Flink
            c.timers.register_event_time(15)  # <= watermark 20: this call too
            c.timers.register_event_time(25)  # later
        return [t]

    r = ProcessRunner(Calls(chain))
    run(r, "k", lambda c: c.timers.register_event_time(10))
    assert values(r.advance_watermark(20)) == [10, 5, 15]
    assert values(r.advance_watermark(30)) == [25]


def test_re_registering_the_firing_timer_at_a_passed_time_is_refused():
    r = ProcessRunner(Calls(lambda t, c: c.timers.register_event_time(t)))
    run(r, "k", lambda c: c.timers.register_event_time(10))
    with pytest.raises(JobDefinitionError) as info:
        r.advance_watermark(10)
    assert str(info.value) == (
        "Calls.on_timer: re-registering the timer at 10 that is firing would fire it again at once, "
        "forever (the watermark is 10); register a later time"
    )
    assert r._timers == {("t", "e", 10, "k"): 0} and r.watermark == MIN_WATERMARK  # still pending


def test_processing_time_timers_fire_on_advance_only_and_not_at_the_end():
    def on_timer(t: int, c: Any) -> list[Any]:
        return [(c.time_domain, c.key, t, c.processing_time())]

    r = ProcessRunner(Calls(on_timer))
    assert r.next_processing_timer() is None
    run(r, "a", lambda c: [c.timers.register_processing_time(t) for t in (150, 120, 130)], now=100)
    run(r, "a", lambda c: c.timers.delete_processing_time(120), now=140)  # process fires nothing
    assert r.next_processing_timer() == 130
    assert values(r.advance_processing_time(140)) == [("processing", "a", 130, 140)]
    assert r.advance_processing_time(120) == [] and r.processing_time == 140  # never goes back
    assert r.next_processing_timer() == 150
    assert r.flush() == [] and r.next_processing_timer() == 150  # Flink: no processing time after the end
    assert values(r.advance_processing_time(1000)) == [("processing", "a", 150, 1000)]


def test_deleted_timers_and_ttl_entries_do_not_pile_up_in_the_heaps():
    def timeout(c: Any) -> None:  # a session timeout: move the key's timer at every record
        last = c.value_state("last", ttl_ms=50)
        if last.value() is not None:
            c.timers.delete_processing_time(last.value() + 1000)
        last.update(c.processing_time())
        c.timers.register_processing_time(c.processing_time() + 1000)
        c.map_state("latest", ttl_ms=50).clear()  # and a new TTL'd map entry per record
        c.map_state("latest", ttl_ms=50).put(c.processing_time(), 1)

    r = ProcessRunner(Calls())
    for now in range(5000):
        run(r, now % 10, timeout, now=now)
    assert len(r._timers) == 10 and len(r._heaps["p"]) <= 2 * 10 + 64
    assert len(r._ttl) == 20 and len(r._ttl_heap) <= 2 * 20 + 64
    assert values(r.advance_processing_time(6000)) == [("processing", k, 4990 + k + 1000) for k in range(10)]


# -- TTL ---------------------------------------------------------------------------------------------


def test_ttl_value_visible_before_expiry_invisible_at_it_reads_do_not_extend_writes_do():
    r = ProcessRunner(Calls())

    def read(c: Any) -> list[Any]:
        return [c.value_state("s", ttl_ms=100).value("expired")]

    run(r, "k", lambda c: c.value_state("s", ttl_ms=100).update("v"), now=1000)
    assert r.state == {("v", "k", "s"): ("v", 1100)}
    assert values(run(r, "k", read, now=1099)) == ["v"]  # the read at 1099 does not extend it
    assert values(run(r, "k", read, now=1100)) == ["expired"]
    assert r.state == {}  # removed by the read
    run(r, "k", lambda c: c.value_state("s", ttl_ms=100).update("v"), now=1200)
    run(r, "k", lambda c: c.value_state("s", ttl_ms=100).update("w"), now=1250)  # a write restarts it
    assert values(run(r, "k", read, now=1349)) == ["w"]


def test_ttl_list_elements_and_map_entries_expire_one_by_one():
    r = ProcessRunner(Calls())
    run(r, "k", lambda c: [c.list_state("l", 10).add("old"), c.map_state("m", 10).put("old", 1)], now=0)
    run(r, "k", lambda c: [c.list_state("l", 10).add("new"), c.map_state("m", 10).put("new", 2)], now=5)

    def view(c: Any) -> list[Any]:
        return [c.list_state("l", 10).get(), c.map_state("m", 10).items(), "old" in c.map_state("m", 10)]

    assert values(run(r, "k", view, now=9)) == [("old", "new"), [("new", 2), ("old", 1)], True]
    assert values(run(r, "k", view, now=10)) == [("new",), [("new", 2)], False]
    assert r.state == {("l", "k", "l"): (("new",), (15,)), ("m", "k", "m", "new"): (2, 15)}
    assert values(run(r, "k", lambda c: [c.map_state("m", 10).is_empty()], now=15)) == [True]
    assert values(run(r, "k", view, now=15)) == [(), [], False] and r.state == {}


def test_the_expire_sweep_removes_without_scanning_and_advances_processing_time():
    r = ProcessRunner(Calls())
    for key, now in (("a", 0), ("b", 50)):
        run(r, key, lambda c: [c.value_state("v", 100).update(1), c.list_state("l", 100).add(1)], now=now)
        run(r, key, lambda c: [c.map_state("m", 100).put(i, i) for i in range(3)], now=now)
    run(r, "a", lambda c: c.list_state("l", 100).add(2), now=60)  # the list of a: one element at 160
    run(r, "a", lambda c: c.value_state("v", 100).update(2), now=90)  # rewritten: now expires at 190
    run(r, "c", lambda c: c.value_state("forever").update(0), now=90)
    assert r.expire(99) == 0
    assert r.expire(100) == 4  # a's list element and 3 map entries; a's value moved to 190
    assert ("v", "a", "v") in r.state and r.state[("l", "a", "l")] == ((2,), (160,))
    assert r.expire() == 0 and r.processing_time == 100
    assert r.expire(1000) == 2 + 2 + 3  # a: value, list; b: value, list, 3 map entries
    assert r.state == {("v", "c", "forever"): (0, None)} and r._ttl == {} and r._maps == {}
    assert values(run(r, "a", lambda c: [c.value_state("v", 100).value()], now=0)) == [None]  # now 1000


def test_restore_keeps_ttl_and_timers_indexed():
    fn = Calls()
    r = ProcessRunner(fn)
    run(r, "k", lambda c: [c.map_state("m", 10).put("x", 1), c.timers.register_processing_time(50)], now=0)
    again = restored(r, fn)
    assert again.next_processing_timer() == 50 and again.meta() == r.meta()
    assert again.expire(10) == 1 and again.state == {("t", "p", 50, "k"): 0}


# -- outputs, errors, atomicity ----------------------------------------------------------------------


def test_side_outputs_interleave_with_a_generators_items_and_carry_the_record_ts():
    def gen(value: Any, ctx: Any) -> Any:
        ctx.output("side", "first")
        yield "main 1"
        ctx.output("other", "second")
        yield "main 2"

    r = ProcessRunner(gen)
    assert r.process("k", 7, None, None, 0) == [
        Output("side", 7, "first"),
        Output(None, 7, "main 1"),
        Output("other", 7, "second"),
        Output(None, 7, "main 2"),
    ]


def test_a_raising_call_changes_nothing_and_the_next_one_proceeds():
    r = ProcessRunner(Calls(lambda t, c: 1 / 0))
    run(r, "k", lambda c: [c.value_state("v").update(1), c.map_state("m").put("a", 1)], now=5)
    before = dict(r.state), r.meta(), dict(r._maps), dict(r._timers)

    def fail(c: Any) -> Any:
        c.value_state("v").update(2)
        c.value_state("new").update(2)
        c.list_state("l").add(1)
        c.map_state("m").put("b", 2)
        c.map_state("m").remove("a")
        c.timers.register_event_time(10)
        c.output("side", 1)
        yield 1
        raise KeyError("boom")

    with pytest.raises(KeyError, match="boom"):
        run(r, "k", fail, now=9)
    assert (dict(r.state), r.meta(), dict(r._maps), dict(r._timers)) == before
    with pytest.raises(JobDefinitionError) as info:
        run(r, "k", lambda c: [c.value_state("v").update(3), c.timers.register_event_time(10)] and 42)
    assert str(info.value) == (
        "Calls.process_element: its result must be an iterable such as a list or a generator, got 42 "
        "(type int); wrap a single value in a list: [value]"
    )
    assert (dict(r.state), r.meta()) == before[:2]
    run(r, "k", lambda c: c.timers.register_event_time(10))
    with pytest.raises(ZeroDivisionError):
        r.advance_watermark(10)
    assert r.watermark == MIN_WATERMARK and r._timers == {("t", "e", 10, "k"): 0}


def test_a_failing_on_timer_leaves_the_timers_fired_before_it_fired():
    def on_timer(t: int, c: Any) -> list[Any]:
        if t == 2:
            raise ValueError("second")
        c.value_state("fired").update(t)
        return [t]

    r = ProcessRunner(Calls(on_timer))
    run(r, "k", lambda c: [c.timers.register_event_time(t) for t in (1, 2, 3)])
    with pytest.raises(ValueError, match="second"):
        r.advance_watermark(5)
    assert r.watermark == MIN_WATERMARK and sorted(t for _, _, t, _ in r._timers) == [2, 3]
    assert r.state[("v", "k", "fired")] == (1, None)


def plain_with_timer(value: Any, ctx: Any) -> None:
    ctx.timers.register_event_time(1)


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda: ProcessRunner(3), JobDefinitionError, "ProcessRunner: function must be a KeyedProcessFunction or a callable fn(value, ctx), got 3"),
        (lambda: ProcessRunner(Calls), JobDefinitionError, "ProcessRunner: function must be an instance or a plain function, got the class Calls; pass Calls() instead"),
        (lambda: ProcessRunner(KeyedProcessFunction()), JobDefinitionError, "ProcessRunner: KeyedProcessFunction does not define process_element(value, ctx); every KeyedProcessFunction must"),
        (lambda: run(ProcessRunner(Calls()), "k", lambda c: c.timers.register_event_time(1.5)), ParameterError, "ctx.timers.register_event_time: time must be an int (milliseconds, 64-bit), got 1.5"),
        (lambda: run(ProcessRunner(Calls()), "k", lambda c: c.timers.delete_processing_time(True)), ParameterError, "ctx.timers.delete_processing_time: time must be an int (milliseconds, 64-bit), got True"),
        (lambda: run(ProcessRunner(Calls()), "k", lambda c: c.timers.register_event_time(2**63)), ParameterError, "ctx.timers.register_event_time: time must be an int (milliseconds, 64-bit), got 9223372036854775808"),
        (lambda: ProcessRunner(plain_with_timer).process("k", 0, 0, None, 0), JobDefinitionError, "ctx.timers.register_event_time: plain_with_timer has no on_timer(timestamp, ctx) to call; subclass KeyedProcessFunction and define on_timer"),
        (lambda: run(ProcessRunner(Calls()), "k", lambda c: c.value_state("v", ttl_ms=0)), ParameterError, "ctx.value_state('v'): ttl_ms must be None or an int > 0 (milliseconds), got 0"),
        (lambda: run(ProcessRunner(Calls()), "k", lambda c: c.map_state("m", ttl_ms=1.5)), ParameterError, "ctx.map_state('m'): ttl_ms must be None or an int > 0 (milliseconds), got 1.5"),
        (lambda: run(ProcessRunner(Calls()), "k", lambda c: c.list_state(("l",))), ParameterError, "ctx.list_state: name must be a non-empty str, got ('l',)"),
        (lambda: run(ProcessRunner(Calls()), "k", lambda c: c.list_state("l").update(5)), ParameterError, "list_state('l').update: values must be an iterable such as a list or a generator, got 5 (type int); wrap a single value in a list: [value]"),
        (lambda: run(ProcessRunner(Calls()), "k", lambda c: c.map_state("m").put([1], 1)), ParameterError, "map_state('m').put: map keys must be hashable (str, int, tuple...), got [1]"),
        (lambda: run(ProcessRunner(Calls()), "k", lambda c: c.output(None, 1)), ParameterError, "ctx.output: tag must be a non-empty str (the side output's name), got None"),
        (lambda: run(ProcessRunner(Calls()), "k", lambda c: "abc"), JobDefinitionError, "Calls.process_element: its result must be an iterable such as a list or a generator, got 'abc' (type str); wrap a single value in a list: [value]"),
        (lambda: run(ProcessRunner(Calls()), "k", lambda c: {"b", "a"} and {"a"}), JobDefinitionError, "Calls.process_element: its result must have a deterministic order, got a set {'a'}, whose order changes with the hash seed; use sorted(...) or a list"),
        (lambda: run(ProcessRunner(Calls()), "k", lambda c: c.list_state("l").update(frozenset())), ParameterError, "list_state('l').update: values must have a deterministic order, got a frozenset frozenset(), whose order changes with the hash seed; use sorted(...) or a list"),
        (lambda: ProcessRunner(Calls()).process("k", 0, None, None, None), ParameterError, "ProcessRunner.process: now must be an int (processing time in ms), got None"),
        (lambda: ProcessRunner(Calls()).advance_watermark("5"), ParameterError, "ProcessRunner.advance_watermark: watermark must be an int (ms), got '5'"),
        (lambda: ProcessRunner(Calls(), state={"alien": 1}), StateError, "ProcessRunner(Calls): the state mapping holds 'alien', which is not process state; give each process step a mapping of its own"),
    ],
)  # fmt: skip
def test_bad_definitions_and_arguments_say_what_and_how_to_fix(call, error, message):
    with pytest.raises(error) as info:
        call()
    assert str(info.value) == message


def test_unencodable_values_fail_inside_the_call_and_handles_only_work_during_one():
    r = ProcessRunner(Calls())
    with pytest.raises(SerializationError, match=r"value is a value of type object"):
        run(r, "k", lambda c: c.map_state("m").put(object(), 1))
    with pytest.raises(SerializationError):
        run(r, "k", lambda c: c.value_state("v").update({1, 2}))
    assert r.state == {}
    kept = values(run(r, "k", lambda c: [c.value_state("v")]))[0]
    with pytest.raises(JobDefinitionError, match="Calls: ctx and state handles work only during a call"):
        kept.value()


# -- restore and msgpack -----------------------------------------------------------------------------


class Sessionize(KeyedProcessFunction):
    """Collects a key's values until 10 ms without one (event time), with all three kinds of state."""

    def process_element(self, value: Any, ctx: Any) -> Any:
        last = ctx.value_state("last")
        if last.value() is not None:
            ctx.timers.delete_event_time(last.value() + 10)
        last.update(ctx.timestamp)
        ctx.timers.register_event_time(ctx.timestamp + 10)
        ctx.list_state("values").add([value, ctx.timestamp])
        stats = ctx.map_state("stats", ttl_ms=1000)
        stats.put(value, stats.get(value, 0) + 1)
        return [(ctx.key, "seen", stats.items())]

    def on_timer(self, timestamp: int, ctx: Any) -> Any:
        yield (ctx.key, "session", ctx.list_state("values").get())
        ctx.list_state("values").clear()
        ctx.value_state("last").clear()


RECORDS = [("u", t, v) for t, v in ((0, "a"), (4, "b"), (30, "a"))] + [
    ("w", t, v) for t, v in ((2, "x"), (8, "x"), (9, "y"), (25, "x"))
]
RECORDS.sort(key=lambda r: r[1])


def drive(runner: ProcessRunner, records: list[Any]) -> list[Any]:
    out = []
    for key, ts, value in records:
        out += runner.process(key, ts, value, ts - 3, ts * 100)
    return out


def test_restore_mid_stream_gives_the_outputs_of_an_uninterrupted_run():
    whole = ProcessRunner(Sessionize(), state=EngineState())
    expected = drive(whole, RECORDS) + whole.flush()
    assert [o for o in expected if o.value[1] == "session"] == [
        Output(None, 14, ("u", "session", (("a", 0), ("b", 4)))),
        Output(None, 19, ("w", "session", (("x", 2), ("x", 8), ("y", 9)))),
        Output(None, 35, ("w", "session", (("x", 25),))),
        Output(None, 40, ("u", "session", (("a", 30),))),
    ]
    for cut in range(len(RECORDS) + 1):
        first = ProcessRunner(Sessionize(), state=EngineState())
        before = drive(first, RECORDS[:cut])
        second = restored(first, Sessionize())
        assert before + drive(second, RECORDS[cut:]) + second.flush() == expected


def test_msgpack_state_gives_the_same_outputs_as_a_dict():
    plain = ProcessRunner(Sessionize())
    packed = ProcessRunner(Sessionize(), state=EngineState())
    assert drive(plain, RECORDS) + plain.flush() == drive(packed, RECORDS) + packed.flush()
    assert plain.state == packed.state
    assert unpack(pack(plain.meta())) == plain.meta()


# -- against a reference model -----------------------------------------------------------------------

TTL = 7


class Model(KeyedProcessFunction):
    """Counters per key, TTL'd value, map and list state, event and processing timers, timers set by
    on_timer."""

    def process_element(self, value: Any, ctx: Any) -> Any:
        delta, timer_at, cancel_at, ptimer_at = value
        count = ctx.value_state("count")
        n = count.value(0) + delta
        count.update(n)
        seen = ctx.value_state("seen", ttl_ms=TTL)
        recent = seen.value()
        seen.update(ctx.processing_time())
        if timer_at is not None:
            ctx.timers.register_event_time(timer_at)
        if cancel_at is not None:
            ctx.timers.delete_event_time(cancel_at)
        if ptimer_at is not None:
            ctx.timers.register_processing_time(ptimer_at)
        if n % 3 == 0:
            ctx.output("threes", n)
        deltas, stamps = ctx.map_state("deltas", ttl_ms=TTL), ctx.list_state("stamps", ttl_ms=TTL)
        deltas.put(delta, deltas.get(delta, 0) + 1)
        stamps.add(ctx.timestamp)
        return [("count", ctx.key, n, recent, deltas.items(), stamps.get())]

    def on_timer(self, timestamp: int, ctx: Any) -> Any:
        count = ctx.value_state("count")
        n = count.value(0)
        if ctx.time_domain == "event":
            count.update(n // 2)
            if n > 4:  # halves every time: the chain ends
                ctx.timers.register_event_time(timestamp - 1 if n % 2 else timestamp + 1)
            stamps = ctx.list_state("stamps", ttl_ms=TTL)
            stamps.update(t for t in stamps.get() if t % 2)
        elif n % 2:
            ctx.map_state("deltas", ttl_ms=TTL).clear()
        else:
            ctx.map_state("deltas", ttl_ms=TTL).remove(n % 4)
        return [(ctx.time_domain, ctx.key, timestamp, n)]


class Reference:
    """The model by brute force: dicts of counters, expiry times and timers (scanned for the minimum)."""

    def __init__(self) -> None:
        self.counts: dict[Any, int] = {}
        self.seen: dict[Any, tuple[int, int]] = {}
        self.deltas: dict[Any, dict[int, tuple[int, int]]] = {}  # key -> delta -> (count, expiry)
        self.stamps: dict[Any, list[tuple[int, int]]] = {}  # key -> [(ts, expiry)]
        self.timers: dict[tuple[str, int, Any], int] = {}
        self.seq, self.wm, self.now = 0, MIN_WATERMARK, MIN_WATERMARK

    def register(self, domain: str, t: int, key: Any) -> None:
        if (domain, t, key) not in self.timers:
            self.timers[domain, t, key] = self.seq
            self.seq += 1

    def fire(self, domain: str, limit: int) -> list[Output]:
        out = []
        while due := [(t, s, k) for (d, t, k), s in self.timers.items() if d == domain and t <= limit]:
            t, _, key = min(due)
            del self.timers[domain, t, key]
            n = self.counts.get(key, 0)
            if domain == "e":
                self.counts[key] = n // 2
                if n > 4:
                    self.register("e", t - 1 if n % 2 else t + 1, key)
                self.stamps[key] = [(ts, self.now + TTL) for ts, _ in self.live_stamps(key) if ts % 2]
            elif n % 2:
                self.deltas[key] = {}
            else:
                self.deltas.get(key, {}).pop(n % 4, None)
            out.append(Output(None, t, ("event" if domain == "e" else "processing", key, t, n)))
        return out

    def advance_watermark(self, wm: int) -> list[Output]:
        self.wm = max(self.wm, wm)
        return self.fire("e", self.wm)

    def process(self, key: Any, ts: Any, value: Any, wm: Any, now: int) -> list[Output]:
        self.now = max(self.now, now)  # before the advance: its timers see this call's processing time
        out = self.advance_watermark(wm) if wm is not None and wm > self.wm else []
        delta, timer_at, cancel_at, ptimer_at = value
        n = self.counts[key] = self.counts.get(key, 0) + delta
        seen = self.seen.get(key)
        recent = seen[0] if seen is not None and seen[1] > self.now else None
        self.seen[key] = (self.now, self.now + TTL)
        if timer_at is not None:
            self.register("e", timer_at, key)
        if cancel_at is not None:
            self.timers.pop(("e", cancel_at, key), None)
        if ptimer_at is not None:
            self.register("p", ptimer_at, key)
        if n % 3 == 0:
            out.append(Output("threes", ts, n))
        deltas = self.deltas.setdefault(key, {})
        seen_delta = deltas.get(delta)
        deltas[delta] = (seen_delta[0] + 1 if seen_delta and seen_delta[1] > self.now else 1, self.now + TTL)
        items = sorted(((d, c) for d, (c, exp) in deltas.items() if exp > self.now), key=lambda i: pack(i[0]))
        self.stamps[key] = [*self.live_stamps(key), (ts, self.now + TTL)]
        stamps = tuple(t for t, _ in self.stamps[key])
        return [*out, Output(None, ts, ("count", key, n, recent, items, stamps))]

    def live_stamps(self, key: Any) -> list[tuple[int, int]]:
        return [(t, exp) for t, exp in self.stamps.get(key, []) if exp > self.now]

    def advance_processing_time(self, now: int) -> list[Output]:
        self.now = max(self.now, now)
        return self.fire("p", self.now)

    def expire(self, now: int) -> int:
        self.now = max(self.now, now)
        return 0

    def flush(self) -> list[Output]:
        return self.advance_watermark(MAX_WATERMARK)


OPTIONAL_TIME = st.none() | st.integers(0, 20)  # few distinct times: keys share them
STEPS = st.lists(
    st.one_of(
        st.tuples(
            st.just("rec"),
            st.integers(0, 3),  # key
            st.integers(0, 40),  # ts
            st.integers(-2, 5),  # delta
            OPTIONAL_TIME,  # event timer
            OPTIONAL_TIME,  # event timer to delete
            st.none() | st.integers(0, 15),  # processing timer, ahead of the clock
            st.integers(-3, 4),  # clock step: a clock may step back; the runner's never does
            st.none() | st.integers(0, 60),  # a watermark with the record
        ),
        st.tuples(st.just("wm"), st.integers(0, 60)),
        st.tuples(st.just("pt"), st.integers(0, 10)),
        st.tuples(st.just("sweep"), st.integers(0, 10)),
    ),
    max_size=50,
)


def concrete(steps: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """``(method, *args)`` calls on a runner."""
    now, calls = 0, []
    for step in steps:
        if step[0] == "rec":
            _, key, ts, delta, timer_at, cancel_at, ptimer, dt, wm = step
            now += dt
            value = (delta, timer_at, cancel_at, None if ptimer is None else now + ptimer)
            calls.append(("process", key, ts, value, wm, now))
        elif step[0] == "wm":
            calls.append(("advance_watermark", step[1]))
        else:
            now += step[1]
            calls.append(("advance_processing_time" if step[0] == "pt" else "expire", now))
    return calls


def swept(state: dict[Any, Any], now: int) -> tuple[dict[Any, Any], int]:
    """``state`` without what expired at ``now``, and how many values, elements and map entries went."""
    kept, removed = {}, 0
    for k, v in state.items():
        if k[0] == "l" and v[1] is not None:
            live = [(x, e) for x, e in zip(*v, strict=True) if e > now]
            removed += len(v[0]) - len(live)
            if live:
                kept[k] = tuple(zip(*live, strict=True))
        elif k[0] == "t" or v[1] is None or v[1] > now:
            kept[k] = v
        else:
            removed += 1
    return kept, removed


def replay(runner: Any, calls: list[tuple[Any, ...]]) -> list[Any]:
    out = []
    for method, *args in calls:
        before = dict(getattr(runner, "state", {}))
        result = getattr(runner, method)(*args)
        out.append(None if method == "expire" else result)
        if isinstance(runner, ProcessRunner) and method == "expire":  # removes exactly the expired entries
            assert (runner.state, result) == swept(before, runner.processing_time)
    return out


@settings(max_examples=300, deadline=None)
@given(steps=STEPS, data=st.data())
def test_matches_a_reference_model_and_survives_a_restore_anywhere(steps, data):
    calls = concrete(steps)
    runner = ProcessRunner(Model(), state=EngineState())
    outputs = [*replay(runner, calls), runner.flush()]
    ref = Reference()
    assert outputs == [*replay(ref, calls), ref.flush()]
    assert {k[1]: v[0] for k, v in runner.state.items() if k[2] == "count"} == ref.counts
    assert {(k[1], k[2], k[3]) for k in runner.state if k[0] == "t"} == set(ref.timers)  # processing ones
    assert runner.meta()["seq"] == ref.seq

    cut = data.draw(st.integers(0, len(calls)))
    first = ProcessRunner(Model(), state=EngineState())
    before = replay(first, calls[:cut])
    second = restored(first, Model())
    assert [*before, *replay(second, calls[cut:]), second.flush()] == outputs
    assert second.meta() == runner.meta() and second.state == runner.state


# -- Nexmark Q3 as a process function ----------------------------------------------------------------


class IncrementalJoin(KeyedProcessFunction):
    """Nexmark Q3 keyed by person id: a seller of the wanted states joined with their category-10
    auctions, whichever comes first; auctions wait in list state until their seller is known."""

    def process_element(self, event: dict[str, Any], ctx: Any) -> Any:
        person, waiting = ctx.value_state("person"), ctx.list_state("auctions")
        if event["type"] == "person":
            if event["state"] not in Q3_STATES:
                return None
            person.update((event["name"], event["city"], event["state"]))
            matched = [(event["name"], event["city"], event["state"], a) for a in waiting.get()]
            waiting.clear()
            return matched
        if event["category"] != Q3_CATEGORY:
            return None
        seller = person.value()
        if seller is None:
            waiting.add(event["id"])
            return None
        return [(*seller, event["id"])]


def join(events: list[dict[str, Any]], runner: ProcessRunner) -> list[Any]:
    out = []
    for e in events:
        if e["type"] in ("person", "auction"):
            key = e["id"] if e["type"] == "person" else e["seller"]
            out += runner.process(key, e["date_time"], e, None, 0)
    return values(out)


def test_nexmark_q3_as_an_incremental_join():
    def person(id_: int, name: str, state: str) -> dict[str, Any]:
        return {"type": "person", "id": id_, "name": name, "city": "Bend", "state": state, "date_time": id_}

    def auction(id_: int, seller: int, category: int = Q3_CATEGORY) -> dict[str, Any]:
        return {"type": "auction", "id": id_, "seller": seller, "category": category, "date_time": id_}

    stream = [
        auction(100, 1),  # before its seller: waits
        auction(101, 1),
        auction(102, 2, category=3),  # another category
        person(1, "Ann", "OR"),  # releases 100 and 101
        person(2, "Bob", "OR"),
        person(3, "Cid", "WA"),  # another state: never joins
        auction(103, 3),
        auction(104, 2),  # after its seller: at once
        {"type": "bid", "auction": 104, "date_time": 9},
    ]
    runner = ProcessRunner(IncrementalJoin(), state=EngineState())
    assert join(stream, runner) == [
        ("Ann", "Bend", "OR", 100),
        ("Ann", "Bend", "OR", 101),
        ("Bob", "Bend", "OR", 104),
    ]
    assert runner.state[("l", 3, "auctions")] == ((103,), None)  # waits for a seller that never matches

    generated = nexmark_events(20_000)
    assert sorted(join(generated, ProcessRunner(IncrementalJoin()))) == q3(generated) != []
