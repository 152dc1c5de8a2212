"""Planning: chaining rules and channel numbering (the numbers the causal log records)."""

from connectors import CollectSink, ListSource
from engine import Job
from engine.plan import ChannelId, Plan


def chains(plan: Plan):
    return [(t.name, [s.name for s in t.steps], t.parallelism) for t in plan.tasks]


def test_forward_steps_of_equal_parallelism_chain():
    job = Job("j", parallelism=2)
    job.source("r", ListSource([])).map("m", str).filter("f", bool).sink("w", CollectSink())
    assert chains(Plan.of(job)) == [("r", ["r", "m", "f", "w"], 2)]


def test_key_by_rebalance_parallelism_change_and_fan_out_break_chains():
    job = Job("j", parallelism=2)
    s = job.source("r", ListSource([]))
    s.rebalance().map("m", str).key_by(str).count("c").map("p", str, parallelism=3).sink(
        "w", CollectSink(), parallelism=3
    )
    assert chains(Plan.of(job)) == [("r", ["r"], 2), ("m", ["m"], 2), ("c", ["c"], 2), ("p", ["p", "w"], 3)]
    job2 = Job("k")
    t = job2.source("r", ListSource([]))
    t.map("a", str).sink("wa", CollectSink())
    t.map("b", str).sink("wb", CollectSink())
    assert chains(Plan.of(job2)) == [("r", ["r"], 1), ("a", ["a", "wa"], 1), ("b", ["b", "wb"], 1)]


def test_union_channels_are_numbered_by_input_then_upstream_instance():
    job = Job("j", parallelism=2)
    left = job.source("left", ListSource([]))
    right = job.source("right", ListSource([]))
    left.union("u", right).key_by(str).count("c").sink("w", CollectSink())
    plan = Plan.of(job)
    assert plan.inputs_of("u", 1) == [ChannelId("left/1", "u/1", 0), ChannelId("right/1", "u/1", 1)]
    assert plan.inputs_of("c", 0) == [ChannelId("u/0", "c/0", 0), ChannelId("u/1", "c/0", 1)]
    assert plan.outputs_of("u", 1) == [[ChannelId("u/1", "c/0", 1), ChannelId("u/1", "c/1", 1)]]


def test_parallelism_override_and_step_instances():
    job = Job("j")
    job.source("r", ListSource([])).key_by(str).count("c").sink("w", CollectSink())
    plan = Plan.of(job, default_parallelism=3)
    assert plan.instances() == ["r/0", "r/1", "r/2", "c/0", "c/1", "c/2"]
    assert "w/2" in plan.step_instances()
    assert plan.task_of_step("w").name == "c"
