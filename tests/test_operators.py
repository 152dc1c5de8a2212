"""Operators: exact output of every step kind, and user-function errors that name step/instance/function/record."""

from __future__ import annotations

import pytest

from connectors import CollectSink, GeneratorSource, ListSource
from engine import Job
from engine.errors import JobFailed
from engine.testing import run


def bad_int(x):
    return int(x)


def explode_late(x):
    yield x
    raise ValueError("late")


def test_every_operator_kind_exact_output():
    job = Job("all")
    outs = {name: CollectSink() for name in ("map", "flat", "filter", "count", "reduce", "cf", "rf", "union")}
    nums = job.source("nums", ListSource([3, 1, 2, 3, 3]))
    more = job.source("more", ListSource([10]))
    nums.map("m", lambda x: x * 10).sink("o_map", outs["map"])
    nums.flat_map("fm", lambda x: [x] * x).sink("o_flat", outs["flat"])
    nums.filter("f", lambda x: x != 3).sink("o_filter", outs["filter"])
    nums.key_by(lambda x: x).count("c").sink("o_count", outs["count"])
    nums.key_by(lambda x: x % 2).reduce("r", lambda a, b: a + b).sink("o_reduce", outs["reduce"])
    nums.key_by(lambda x: x).count_final("cf").sink("o_cf", outs["cf"])
    nums.key_by(lambda x: x % 2).reduce_final("rf", lambda a, b: a + b).sink("o_rf", outs["rf"])
    nums.union("u", more).sink("o_union", outs["union"])
    run(job)
    assert outs["map"].records == [30, 10, 20, 30, 30]
    assert outs["flat"].records == [3, 3, 3, 1, 2, 2, 3, 3, 3, 3, 3, 3]
    assert outs["filter"].records == [1, 2]
    assert outs["count"].records == [(3, 1), (1, 1), (2, 1), (3, 2), (3, 3)]
    assert outs["reduce"].records == [(1, 3), (1, 4), (0, 2), (1, 7), (1, 10)]
    assert sorted(outs["cf"].records) == [(1, 1), (2, 1), (3, 3)]
    assert sorted(outs["rf"].records) == [(0, 2), (1, 10)]
    assert sorted(outs["union"].records) == [1, 2, 3, 3, 3, 10]


@pytest.mark.parametrize("parallelism", [1, 2])
def test_keyed_results_do_not_depend_on_parallelism(parallelism):
    words = [f"w{(i * 7) % 13}" for i in range(500)]
    job = Job("kp")
    out = CollectSink()
    job.source("words", ListSource(words)).key_by(lambda w: w).count_final("cf").sink("o", out)
    run(job, parallelism=parallelism)
    assert sorted(out.records) == sorted((w, words.count(w)) for w in set(words))


def failing(build) -> str:
    job = Job("fails")
    build(job)
    result = run(job, raise_on_failure=False)
    assert result.state == "failed"
    return result.error


def test_map_error_names_step_instance_function_and_record():
    error = failing(
        lambda j: j.source("s", ListSource(["1", "x", "3"])).map("parse", bad_int).sink("o", CollectSink())
    )
    assert error.startswith(
        "instance s/0: step 'parse' (instance parse/0): user function bad_int (test_operators.py:"
    )
    assert "raised ValueError: invalid literal for int() with base 10: 'x' on record 'x'" in error


def test_flat_map_error_raised_while_iterating_is_located():
    error = failing(
        lambda j: j.source("s", ListSource([1, 2])).flat_map("fm", explode_late).sink("o", CollectSink())
    )
    assert "step 'fm' (instance fm/0): user function explode_late" in error
    assert "raised ValueError: late on record 1" in error


def test_filter_and_key_and_reduce_errors():
    error = failing(
        lambda j: j.source("s", ListSource([1, 0])).filter("f", lambda x: 1 / x).sink("o", CollectSink())
    )
    assert (
        "step 'f' (instance f/0): user function test_filter_and_key_and_reduce_errors.<locals>.<lambda>"
        in error
    )
    assert "ZeroDivisionError: division by zero on record 0" in error
    long_record = "y" * 500
    error = failing(
        lambda j: (
            j.source("s", ListSource(["a", long_record]))
            .key_by(lambda w: w[3])
            .count("c")
            .sink("o", CollectSink())
        )
    )
    assert (
        "step 'c' (instance c/0)" in error and "IndexError: string index out of range on record 'a'" in error
    )
    error = failing(
        lambda j: (
            j.source("s", ListSource([1, "b"]))
            .key_by(lambda x: 0)
            .reduce("r", lambda a, b: a + b)
            .sink("o", CollectSink())
        )
    )
    assert "step 'r' (instance r/0)" in error and "TypeError" in error and "on record 'b'" in error


def test_key_function_error_while_routing_names_the_keyed_step():
    job = Job("route", parallelism=2)
    job.source("s", ListSource(["ab", "c"])).key_by(lambda w: w[1]).count("c").sink("o", CollectSink())
    result = run(job, raise_on_failure=False)
    assert "step 'c' (instance s/" in result.error and ", routing): user function" in result.error
    assert "IndexError: string index out of range on record 'c'" in result.error


def test_long_records_are_truncated_in_errors():
    record = "z" * 1000
    error = failing(lambda j: j.source("s", ListSource([record])).map("m", bad_int).sink("o", CollectSink()))
    assert "on record 'zzzz" in error and "..." in error and len(error) < 600


def test_source_function_error_names_the_user_function():
    def gen(i):
        return 10 // (5 - i)

    error = failing(lambda j: j.source("src", GeneratorSource(gen, count=10)).sink("o", CollectSink()))
    assert "step 'src' (instance src/0): user function gen (test_operators.py:" in error
    assert "ZeroDivisionError" in error and "while reading the batch after offset 0" in error


def test_unserializable_record_names_the_step():
    job = Job("ser")
    job.source("s", ListSource([1, 2])).map("m", lambda x: {x}).rebalance().map("n", str).sink(
        "o", CollectSink()
    )
    with pytest.raises(
        JobFailed,
        match=r"step 'm' \(instance m/0\) emitted a record for step 'n' that cannot cross a channel.*type set",
    ):
        run(job)
