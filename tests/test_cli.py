"""The command line: exit codes and one-line errors for every kind of bad input."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support import ROOT, read_jsonl


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


# -- the dashboard, the log options and --quiet of `stashflow run` -------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http(
    url: str, method: str = "GET", body: bytes | None = None, token: str | None = None
) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, method=method)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


SLOW_JOB = ["jobs/union_count.py", "--parallelism", "1", "-P", "sentences=4000", "-P", "rate=2000"]


class RunningJob:
    """``stashflow run`` in the background (stdout a pipe: plain lines); read its stderr as it comes."""

    def __init__(self, tmp_path: Path, *args: str):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "engine", "run", *SLOW_JOB, "-P", f"output={tmp_path / 'out'}", *args],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=ROOT,
        )  # fmt: skip
        self.lines: list[str] = []

    def line_matching(self, pattern: str, timeout: float = 20.0) -> re.Match[str]:
        """The first line (from here on) that ``pattern`` matches at its start."""
        assert self.proc.stderr is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                break
            self.lines.append(line.rstrip("\n"))
            if match := re.match(pattern, self.lines[-1]):
                return match
        raise AssertionError(f"no line matching {pattern!r} in: {self.lines}")

    def finish(self, timeout: float = 30.0) -> tuple[int, list[str]]:
        _, rest = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, self.lines + rest.splitlines()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()  # by pid; its workers exit once their coordinator is gone
        self.proc.communicate()


@pytest.fixture
def running_job(tmp_path: Path) -> Iterator[Callable[..., RunningJob]]:
    jobs: list[RunningJob] = []

    def start(*args: str) -> RunningJob:
        jobs.append(RunningJob(tmp_path, *args))
        return jobs[-1]

    yield start
    for job in jobs:
        job.close()


def check_dashboard_serves(base: str) -> None:
    """/health answers, and the dashboard's page is served without a token."""
    status, body = http(base + "health")
    assert status == 200, body
    status, body = http(base)
    assert status == 200 and b"<html" in body.lower(), (status, body[:200])


def test_run_prints_the_dashboard_url_and_serves_it_while_the_job_runs(running_job):
    port = free_port()
    job = running_job("--dashboard-port", str(port))
    line = job.line_matching("stashflow: dashboard at ").string
    assert line == f"stashflow: dashboard at http://127.0.0.1:{port}/"  # no token: nobody can kill
    check_dashboard_serves(f"http://127.0.0.1:{port}/")
    assert json.loads(http(f"http://127.0.0.1:{port}/api/config")[1])["allow_kill"] is False
    code, lines = job.finish()
    assert code == 0, lines
    assert lines[-1].startswith("stashflow: job union_count-") and "finished in" in lines[-1]


def test_allow_kill_prints_the_token_that_kills_from_the_dashboard(running_job):
    port = free_port()
    job = running_job("--dashboard-port", str(port), "--allow-kill")
    match = job.line_matching(rf"stashflow: dashboard at http://127.0.0.1:{port}/#token=([0-9a-f]{{32}})$")
    token = match.group(1)
    base = f"http://127.0.0.1:{port}"
    assert json.loads(http(base + "/api/config")[1])["allow_kill"] is True
    status, body = http(base + "/jobs", token=token)
    assert status == 200, body
    (listed,) = json.loads(body)
    job_id = listed["job"]
    job.line_matching(r"stashflow: \[[\d.]+ s\] job running$")
    kill = json.dumps({"instance": "count/0"}).encode()
    assert http(f"{base}/jobs/{job_id}/kill", "POST", kill)[0] == 401  # the token is still needed
    status, body = http(f"{base}/jobs/{job_id}/kill", "POST", kill, token=token)
    assert status == 200, body
    code, lines = job.finish()
    assert code == 0, lines
    assert any(s.startswith("stashflow: instance count/0 recovered alone (restart 1") for s in lines), lines


def test_the_default_dashboard_port_falls_back_to_a_free_one_when_8081_is_taken(running_job):
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as aiohttp: TIME_WAIT does not block
    blocker: socket.socket | None = sock
    try:
        sock.bind(("127.0.0.1", 8081))
        sock.listen()
    except OSError:  # another program listens there (another run's dashboard?): taken all the same
        sock.close()
        blocker = None
    try:
        job = running_job()
        match = job.line_matching(r"stashflow: dashboard at http://127.0.0.1:(\d+)/$")
        if blocker is None and match.group(1) == "8081":
            pytest.skip("the other program let 127.0.0.1:8081 go before the run started")
        assert match.group(1) != "8081", match.string
        check_dashboard_serves(f"http://127.0.0.1:{match.group(1)}/")
        code, lines = job.finish()
    finally:
        if blocker is not None:
            blocker.close()
    assert code == 0, lines
    assert any("port 8081 on 127.0.0.1 is taken" in s for s in lines), lines


def test_an_explicit_dashboard_port_that_is_taken_exits_2(tmp_path):
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        proc = stashflow(
            "run", "jobs/union_count.py", "-P", f"output={tmp_path}", "--dashboard-port", str(port)
        )
    assert proc.returncode == 2, proc.stderr
    assert re.fullmatch(
        rf"stashflow: error: --dashboard-port {port}: coordinator cannot listen on 127.0.0.1:{port}: "
        r"[^;]+; pick another port",
        last_line(proc),
    ), last_line(proc)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--dashboard-port", "70000"], "--dashboard-port '70000' is not a TCP port: give 1..65535, or 0 for any free port"),
        (["--dashboard-port", "-1"], "--dashboard-port '-1' is not a TCP port: give 1..65535, or 0 for any free port"),
        (["--dashboard-port", "web"], "--dashboard-port 'web' is not a TCP port: give 1..65535, or 0 for any free port"),
        (["--dashboard-port", "9000", "--no-dashboard"],
         "--dashboard-port 9000 and --no-dashboard contradict each other: drop one of them"),
        (["--progress-interval", "0"], "--progress-interval must be a positive number of seconds, got 0"),
        (["--log-level", "LOUD"], "--log-level 'LOUD' is not a log level; give one of DEBUG, INFO, WARNING, ERROR, CRITICAL"),
        (["--log-format", "xml"], "--log-format 'xml' is not a log format; give one of text, json"),
    ],
)  # fmt: skip
def test_bad_run_options_exit_2_with_one_line(args, message):
    proc = stashflow("run", "jobs/wordcount.py", *args)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [f"stashflow: error: {message}"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--log-level", "chatty"], "--log-level 'chatty' is not a log level; give one of DEBUG, INFO, WARNING, ERROR, CRITICAL"),
        (["--log-format", "yaml"], "--log-format 'yaml' is not a log format; give one of text, json"),
    ],
)  # fmt: skip
def test_bad_log_options_of_stashflow_exit_2_with_one_line(args, message):
    proc = stashflow(*args, "run", "jobs/wordcount.py")
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [f"stashflow: error: {message}"]


LOG_PROBE_JOB = """
import logging, os
from engine import Job
from connectors import FileSink, ListSource

def probe(x):
    logging.getLogger("stashflow.probe").info("probe %s in pid %d", x, os.getpid())
    return os.environ.get("STASHFLOW_LOG_FORMAT")

job = Job("probe")
job.source("read", ListSource([1])).map("probe", probe).sink("write", FileSink({out!r}))
"""


@pytest.mark.parametrize("run_level", [None, "INFO"])
def test_the_log_options_of_run_win_and_reach_the_workers(tmp_path, run_level):
    out = tmp_path / "out"
    path = job_file(tmp_path, LOG_PROBE_JOB.format(out=str(out)))
    args = [
        "--log-level",
        "ERROR",
        "--log-format",
        "text",
        "run",
        path,
        "--no-dashboard",
        "--log-format",
        "json",
    ]
    proc = stashflow(*args, *(["--log-level", run_level] if run_level else []))
    assert proc.returncode == 0, proc.stderr
    assert read_jsonl(out) == ["json"]  # the worker's environment
    probes = [line for line in proc.stderr.splitlines() if "probe 1 in pid" in line]
    if run_level is None:
        assert probes == [], proc.stderr  # the group's ERROR holds
    else:
        assert len(probes) == 1, proc.stderr  # logged at INFO by the worker


def test_quiet_alone_silences_warnings_but_not_an_explicit_level(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("a b\n")
    job = [
        "run",
        "jobs/wordcount.py",
        "-P",
        f"input={corpus}",
        "-P",
        f"output={tmp_path / 'o'}",
        "--no-dashboard",
    ]
    quiet = stashflow(*job, "--quiet")
    assert quiet.returncode == 0, quiet.stderr
    assert len(quiet.stderr.splitlines()) == 1 and "finished in" in quiet.stderr
    chatty = stashflow("--log-level", "INFO", *job, "--quiet")
    assert chatty.returncode == 0, chatty.stderr
    assert "coordinator listening on http://127.0.0.1:" in chatty.stderr
    assert "stashflow: running job" not in chatty.stderr


def test_coordinator_serves_the_dashboard_unless_told_not_to(tmp_path):
    for extra, served in (([], True), (["--no-dashboard"], False)):
        port = free_port()
        proc = subprocess.Popen(
            [sys.executable, "-m", "engine", "coordinator", "--port", str(port), "--data-dir", str(tmp_path / "gcs"), *extra],
            stderr=subprocess.PIPE, text=True, cwd=ROOT,
        )  # fmt: skip
        try:
            assert proc.stderr is not None
            assert proc.stderr.readline().strip() == f"stashflow: coordinator at http://127.0.0.1:{port}"
            if served:
                assert proc.stderr.readline().strip() == f"stashflow: dashboard at http://127.0.0.1:{port}/"
                check_dashboard_serves(f"http://127.0.0.1:{port}/")
            else:
                assert http(f"http://127.0.0.1:{port}/health")[0] == 200
                assert http(f"http://127.0.0.1:{port}/")[0] == 404
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                _, rest = proc.communicate(timeout=15)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        assert proc.returncode == 0 and "dashboard at" not in rest


def test_coordinator_rejects_a_port_out_of_range():
    proc = stashflow("coordinator", "--port", "70000")
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        "stashflow: error: --port 70000 is not a TCP port: give 1..65535, or 0 for any free port"
    ]
