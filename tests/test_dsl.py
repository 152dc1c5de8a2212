"""Job graph validation: every mistake is caught when the graph is built, naming the offenders."""

import pytest

from connectors import CollectSink, ListSource
from engine import Job, JobDefinitionError
from engine.errors import DuplicateStepError
from engine.plan import Plan


def source(job: Job, name: str = "read"):
    return job.source(name, ListSource(["a b", "c"]))


def test_duplicate_step_names_name_both_steps():
    job = Job("j")
    s = source(job)
    s.map("x", str.upper)
    with pytest.raises(
        DuplicateStepError,
        match=r"step name 'x' is used twice in job 'j': by a map step and by a filter step",
    ):
        s.filter("x", bool)


@pytest.mark.parametrize("bad", ["", "a/b", "1abc", "has space", None])
def test_invalid_step_names(bad):
    job = Job("j")
    with pytest.raises(JobDefinitionError, match="is invalid"):
        job.source(bad, ListSource([]))


def test_invalid_job_name():
    with pytest.raises(JobDefinitionError, match=r"job name 'a b' is invalid"):
        Job("a b")


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_parallelism_must_be_positive_int(bad):
    with pytest.raises(JobDefinitionError, match="parallelism must be a positive integer"):
        Job("j", parallelism=bad)
    job = Job("j")
    with pytest.raises(JobDefinitionError, match=r"step 'm': parallelism must be a positive integer"):
        source(job).map("m", str, parallelism=bad)


def test_stream_from_another_job_is_rejected():
    a, b = Job("a"), Job("b")
    sa, sb = source(a), source(b)
    with pytest.raises(JobDefinitionError, match=r"stream of step 'read' belongs to job 'b', not to job 'a'"):
        sa.union("u", sb)


def test_non_callable_functions_are_rejected():
    job = Job("j")
    with pytest.raises(JobDefinitionError, match=r"step 'm': map expects a callable, got str"):
        source(job).map("m", "upper")
    with pytest.raises(JobDefinitionError, match="key_by expects a callable"):
        source(Job("k")).key_by(3)


def test_source_and_sink_types_are_checked():
    job = Job("j")
    with pytest.raises(JobDefinitionError, match=r"step 'r': source expects an engine.connector.Source"):
        job.source("r", ["a"])
    with pytest.raises(JobDefinitionError, match=r"step 'w': sink expects an engine.connector.Sink"):
        source(job).sink("w", print)


def test_keyed_stream_only_feeds_keyed_steps():
    job = Job("j")
    with pytest.raises(JobDefinitionError, match="map after key_by on step 'read'"):
        source(job).key_by(str).map("m", str)


def test_union_needs_other_streams():
    job = Job("j")
    with pytest.raises(JobDefinitionError, match="union needs at least one other stream"):
        source(job).union("u")


def test_dangling_output_is_reported_at_planning():
    job = Job("j")
    source(job).map("m", str)
    with pytest.raises(JobDefinitionError, match=r"the output of step\(s\) 'm' goes nowhere"):
        Plan.of(job)


def test_job_without_source():
    with pytest.raises(JobDefinitionError, match="has no source step"):
        Plan.of(Job("empty"))


def test_steps_keep_order_and_kinds():
    job = Job("j")
    s = source(job)
    s.flat_map("split", str.split).key_by(str).count("count").sink("out", CollectSink())
    assert [(st.name, st.kind) for st in job.steps] == [
        ("read", "source"),
        ("split", "flat_map"),
        ("count", "count"),
        ("out", "sink"),
    ]
    assert job.step("count").inputs[0].partitioning == "hash"
