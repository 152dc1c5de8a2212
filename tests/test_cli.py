"""The command line: exit codes and one-line errors for every kind of bad input."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from support import ROOT


def stashflow(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "engine", *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT
    )


def last_line(proc: subprocess.CompletedProcess[str]) -> str:
    return proc.stderr.strip().splitlines()[-1]


def job_file(tmp_path: Path, body: str) -> str:
    path = tmp_path / "job.py"
    path.write_text(textwrap.dedent(body))
    return str(path)


def test_missing_job_file_exits_2():
    proc = stashflow("run", "no/such/job.py")
    assert proc.returncode == 2
    assert last_line(proc).startswith("stashflow: error: job file 'no/such/job.py' not found")


def test_file_without_job_exits_2(tmp_path):
    proc = stashflow("run", job_file(tmp_path, "x = 1\n"))
    assert proc.returncode == 2
    assert "defines neither `job` (an engine.Job) nor `build(**params)`" in last_line(proc)


def test_unknown_param_exits_2():
    proc = stashflow("run", "jobs/wordcount.py", "-P", "inptu=x")
    assert proc.returncode == 2
    assert "unknown parameter(s) inptu for build() in" in last_line(proc)
    assert "it accepts: input, output" in last_line(proc)


def test_duplicate_step_names_exit_2(tmp_path):
    path = job_file(
        tmp_path,
        """
        from engine import Job
        from connectors import ListSource, StdoutSink
        job = Job("dup")
        s = job.source("read", ListSource([1]))
        s.map("read", str).sink("out", StdoutSink())
        """,
    )
    proc = stashflow("run", path)
    assert proc.returncode == 2
    assert "step name 'read' is used twice in job 'dup': by a source step and by a map step" in last_line(
        proc
    )


def test_stream_of_another_job_exits_2(tmp_path):
    path = job_file(
        tmp_path,
        """
        from engine import Job
        from connectors import ListSource
        other = Job("other").source("a", ListSource([1]))
        job = Job("main")
        job.source("b", ListSource([2])).union("u", other)
        """,
    )
    proc = stashflow("run", path)
    assert proc.returncode == 2
    assert "stream of step 'a' belongs to job 'other', not to job 'main'" in last_line(proc)


@pytest.mark.parametrize("flag", [["--batch-size", "0"], ["--parallelism", "-1"]])
def test_bad_settings_exit_2(flag):
    proc = stashflow("run", "jobs/wordcount.py", *flag)
    assert proc.returncode == 2
    assert "must be a positive" in last_line(proc)


def test_user_function_error_exits_1_naming_step_instance_function_record(tmp_path):
    path = job_file(
        tmp_path,
        """
        from engine import Job
        from connectors import ListSource, StdoutSink

        def parse(x):
            return 100 // int(x)

        job = Job("fragile")
        job.source("read", ListSource(["5", "4", "0", "2"])).map("parse", parse).sink("out", StdoutSink())
        """,
    )
    proc = stashflow("run", path, "--parallelism", "1", "--timeout", "60")
    assert proc.returncode == 1, proc.stderr
    line = last_line(proc)
    assert "step 'parse' (instance parse/0): user function parse (job.py:5) raised ZeroDivisionError" in line
    assert "on record '0'" in line


def test_run_writes_metrics(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("a b a\nc a\n")
    metrics = tmp_path / "m.json"
    proc = stashflow(
        "run",
        "jobs/wordcount.py",
        "-P",
        f"input={corpus}",
        "-P",
        f"output={tmp_path / 'out'}",
        "--metrics-out",
        str(metrics),
    )
    assert proc.returncode == 0, proc.stderr
    import json

    data = json.loads(metrics.read_text())
    assert data["job"] == "wordcount" and data["ft"] == "lineage" and data["elapsed_s"] > 0
    assert data["instances"]["count/0"]["records_in"] == 5
    assert data["instances"]["count/0"]["restarts"] == 0
    assert set(data["instances"]) == {"read/0", "split/0", "count/0", "write/0"}
