"""Loading job files and parameters: every bad input is one clear line."""

import textwrap

import pytest

from engine import Job
from engine.errors import JobLoadError, ParameterError
from engine.loader import JobRef, load_job, parse_params


def write(tmp_path, text, name="job.py"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


GOOD = """
from engine import Job
from connectors import ListSource, CollectSink

def build(words="a b", copies="1"):
    job = Job("good")
    job.source("r", ListSource(words.split() * int(copies))).sink("w", CollectSink())
    return job
"""


def test_build_receives_params_as_strings(tmp_path):
    job = load_job(JobRef.parse(write(tmp_path, GOOD)), {"words": "x y z", "copies": "2"})
    assert isinstance(job, Job) and job.name == "good"


def test_missing_file():
    with pytest.raises(JobLoadError, match=r"job file 'nope/missing.py' not found"):
        JobRef.parse("nope/missing.py")


def test_syntax_error_names_line(tmp_path):
    path = write(tmp_path, "x = 1\ndef broken(:\n")
    with pytest.raises(JobLoadError, match=r"job\.py' line 2: SyntaxError"):
        load_job(JobRef.parse(path))


def test_exception_while_loading_names_line(tmp_path):
    path = write(tmp_path, "x = 1\nraise RuntimeError('boom')\n")
    with pytest.raises(JobLoadError, match=r"line 2 raised RuntimeError: boom while loading"):
        load_job(JobRef.parse(path))


def test_no_job_or_build(tmp_path):
    path = write(tmp_path, "x = 1\n")
    with pytest.raises(
        JobLoadError, match=r"defines neither `job` \(an engine.Job\) nor `build\(\*\*params\)`"
    ):
        load_job(JobRef.parse(path))


def test_unknown_param_lists_accepted_ones(tmp_path):
    path = write(tmp_path, GOOD)
    with pytest.raises(
        ParameterError, match=r"unknown parameter\(s\) colour for build\(\) in .*; it accepts: words, copies"
    ):
        load_job(JobRef.parse(path), {"colour": "red"})


def test_param_to_a_plain_job(tmp_path):
    path = write(
        tmp_path,
        """
        from engine import Job
        from connectors import ListSource, CollectSink
        job = Job("plain")
        job.source("r", ListSource([1])).sink("w", CollectSink())
        """,
    )
    assert load_job(JobRef.parse(path)).name == "plain"
    with pytest.raises(ParameterError, match=r"defines `job`, which takes no parameters"):
        load_job(JobRef.parse(path), {"x": "1"})


def test_missing_required_param(tmp_path):
    path = write(tmp_path, "def build(input):\n    raise AssertionError\n")
    with pytest.raises(ParameterError, match=r"requires parameter\(s\) input; pass -P input=\.\.\."):
        load_job(JobRef.parse(path))


def test_build_returning_wrong_type(tmp_path):
    path = write(tmp_path, "def build():\n    return 42\n")
    with pytest.raises(JobLoadError, match=r"returned int, expected an engine.Job"):
        load_job(JobRef.parse(path))


def test_module_attr_spec():
    with pytest.raises(JobLoadError, match=r"job module 'no_such_module_x' cannot be imported"):
        load_job(JobRef.parse("no_such_module_x:job"))


@pytest.mark.parametrize("bad", ["novalue", "=v"])
def test_malformed_params(bad):
    with pytest.raises(ParameterError, match="is not key=value"):
        parse_params([bad])
    assert parse_params(["a=1", "b=x=y"]) == {"a": "1", "b": "x=y"}
