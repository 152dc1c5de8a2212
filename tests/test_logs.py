"""Structured, instance-tagged logs (engine/logs.py): formats, tags, set-up errors, and a real run.

Unit tests log through real ``stashflow.*`` loggers after :func:`setup_logging` and read what reached
stderr (``capsys``); the set-up of the ``stashflow`` and ``engine`` loggers is restored after each test.
The in-process run checks that lines logged by an instance's code (a user function, the worker's
instance task, the lineage runtime) name that instance although their calls do not; the end-to-end
run checks that a local cluster's every process logs JSON lines, and that a killed instance's loss
and recovery are lines with numeric fields.
"""

from __future__ import annotations

import asyncio
import calendar
import json
import logging
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import ROOT

from connectors import CollectSink, ListSource
from engine import Job, logs
from engine.errors import ParameterError
from engine.logs import StderrHandler, setup_logging
from engine.plan import Plan
from engine.testing import arun

TS = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"
TEXT_LINE = re.compile(rf"^{TS} (DEBUG|INFO|WARNING|ERROR|CRITICAL) ")


@pytest.fixture(autouse=True)
def restore_logging(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    saved = {}
    for name in ("stashflow", "engine"):
        logger = logging.getLogger(name)
        saved[name] = (list(logger.handlers), logger.level)
    monkeypatch.setattr(logs, "_configured", None)
    monkeypatch.setattr(logs, "_process_tags", (None, None))
    yield
    for name, (handlers, level) in saved.items():
        logger = logging.getLogger(name)
        logger.handlers[:] = handlers
        logger.setLevel(level)


def err_lines(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return capsys.readouterr().err.splitlines()


def json_lines(capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in err_lines(capsys)]


# -- text --------------------------------------------------------------------------------------------


def test_a_text_line_without_tags_or_fields(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("info")
    before = time.time()
    logging.getLogger("stashflow.coordinator").info("coordinator listening on %s", "http://127.0.0.1:1")
    [line] = err_lines(capsys)
    ts, rest = line.split(" ", 1)
    assert rest == f"INFO coordinator pid={_pid()} coordinator listening on http://127.0.0.1:1"
    assert re.fullmatch(TS, ts)
    logged = calendar.timegm(time.strptime(ts[:19], "%Y-%m-%dT%H:%M:%S"))  # the time is UTC
    assert before - 1 <= logged + int(ts[20:23]) / 1000 <= time.time() + 1


def test_a_text_line_with_tags_and_fields_quotes_what_has_spaces(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("INFO")
    extra = {
        "job": "wc-1a2b3c",
        "instance": "count/1",
        "reason": 'worker w-1 went away, "exit code -9"',
        "detected_s": 0.0125,
        "incarnation": 2,
        "nothing": None,
        "consumed": {"0": 5},
        "empty": "",
        "multi": "two\nlines",
        "equals": "a=b",
        "ok": True,
    }
    logging.getLogger("stashflow.recovery").warning("instance %s lost", "count/1", extra=extra)
    [line] = err_lines(capsys)
    assert line.split(" ", 1)[1] == (
        f"WARNING recovery pid={_pid()} job=wc-1a2b3c instance=count/1 instance count/1 lost "
        'reason="worker w-1 went away, \\"exit code -9\\"" detected_s=0.0125 incarnation=2 '
        'consumed={"0":5} empty="" multi="two\\nlines" equals="a=b" ok=true'
    )


def test_a_text_traceback_and_further_message_lines_follow_indented(
    capsys: pytest.CaptureFixture[str],
) -> None:
    setup_logging("WARNING")
    log = logging.getLogger("stashflow.worker")
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("instance %s failed\nsecond line", "count/1", extra={"instance": "count/1"})
    first, *more = err_lines(capsys)
    assert first.endswith(f"ERROR worker pid={_pid()} instance=count/1 instance count/1 failed")
    assert more[0] == "    second line"
    assert more[1] == "    Traceback (most recent call last):"
    assert more[-1] == "    ValueError: boom"
    assert all(line.startswith("    ") for line in more)


# -- JSON --------------------------------------------------------------------------------------------


def test_a_json_line_has_the_base_keys_then_the_fields(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("INFO", "json")
    log = logging.getLogger("stashflow.recovery")
    log.info("job %s running", "wc-1", extra={"job": "wc-1", "instances": 6, "nothing": None})
    log.info("plain")
    lines = err_lines(capsys)
    assert len(lines) == 2
    first, plain = (json.loads(line) for line in lines)
    assert list(first) == ["ts", "level", "logger", "pid", "job", "instance", "msg", "instances", "nothing"]
    assert re.fullmatch(TS, first["ts"])
    assert first | {"ts": None} == {
        "ts": None, "level": "INFO", "logger": "recovery", "pid": _pid(), "job": "wc-1", "instance": None,
        "msg": "job wc-1 running", "instances": 6, "nothing": None,
    }  # fmt: skip
    assert (plain["job"], plain["instance"], plain["msg"]) == (None, None, "plain")


def test_a_json_event_stays_one_line_with_its_traceback_in_exc(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("INFO", "json")
    try:
        raise KeyError("gone")
    except KeyError:
        logging.getLogger("stashflow.worker").exception("deploying\nfailed")
    [line] = err_lines(capsys)
    obj = json.loads(line)
    assert obj["msg"] == "deploying\nfailed"
    assert obj["exc"].startswith("Traceback (most recent call last):")
    assert obj["exc"].endswith("KeyError: 'gone'")


def test_json_fields_never_hide_base_keys_nor_make_invalid_json(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("INFO", "json")
    log = logging.getLogger("stashflow.coordinator")
    log.info("odd", extra={"ts": "mine", "level": 3, "ratio": float("nan"), "when": {"t": float("inf")}})
    logs.event(log, "clashing", name="x", process=7, args=[1])
    odd, clashing = (json.loads(line, parse_constant=_no_constant) for line in err_lines(capsys))
    assert odd["ts"] != "mine" and odd["level"] == "INFO"
    assert (odd["ts_"], odd["level_"], odd["ratio"], odd["when"]) == ("mine", 3, "nan", {"t": "inf"})
    assert (clashing["name_"], clashing["process_"], clashing["args_"]) == ("x", 7, [1])
    assert clashing["logger"] == "coordinator" and clashing["pid"] == _pid()


def _no_constant(name: str) -> None:
    raise AssertionError(f"{name} is not JSON")


# -- set-up ------------------------------------------------------------------------------------------


def test_the_level_applies_to_stashflow_and_engine_loggers_but_not_the_root(
    capsys: pytest.CaptureFixture[str],
) -> None:
    root = logging.getLogger()
    root_handlers, root_level = list(root.handlers), root.level
    setup_logging("WARNING")
    logging.getLogger("stashflow.lineage").info("hidden")
    logging.getLogger("engine.output_log").warning("spilling")
    setup_logging("DEBUG", "json")
    logging.getLogger("stashflow.checkpoint").debug("shown")
    text, shown = err_lines(capsys)
    assert text.endswith(f"WARNING output_log pid={_pid()} spilling")
    assert (json.loads(shown)["logger"], json.loads(shown)["msg"]) == ("checkpoint", "shown")
    assert (root.handlers, root.level) == (root_handlers, root_level)
    assert (logs.current_level(), logs.current_format()) == ("DEBUG", "json")


def test_setting_up_twice_keeps_one_handler(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("INFO")
    setup_logging("INFO")
    setup_logging("INFO", "json")
    for name in ("stashflow", "engine"):
        assert [type(h) for h in logging.getLogger(name).handlers if isinstance(h, StderrHandler)] == [
            StderrHandler
        ]
    logging.getLogger("stashflow.worker").info("once")
    [line] = err_lines(capsys)
    assert json.loads(line)["msg"] == "once"


@pytest.mark.parametrize(
    ("level", "fmt", "message"),
    [
        (
            "verbose",
            "text",
            "unknown log level 'verbose': use one of DEBUG, INFO, WARNING, ERROR, CRITICAL (any case) with "
            "--log-level or STASHFLOW_LOG_LEVEL",
        ),
        (
            "INFO",
            "yaml",
            "unknown log format 'yaml': use text or json with --log-format or STASHFLOW_LOG_FORMAT",
        ),
    ],
)
def test_a_bad_level_or_format_is_one_line_naming_the_choices_and_changes_nothing(
    capsys: pytest.CaptureFixture[str], level: str, fmt: str, message: str
) -> None:
    setup_logging("INFO", "json")
    with pytest.raises(ParameterError) as info:
        setup_logging(level, fmt)
    assert str(info.value) == message
    logging.getLogger("stashflow.worker").info("still json")
    assert json_lines(capsys)[0]["msg"] == "still json"
    assert (logs.current_level(), logs.current_format()) == ("INFO", "json")


# -- tags --------------------------------------------------------------------------------------------


async def test_tags_follow_each_instance_task_and_the_tasks_it_creates(
    capsys: pytest.CaptureFixture[str],
) -> None:
    setup_logging("INFO", "json")
    log = logging.getLogger("stashflow.instance")
    both_bound = asyncio.Barrier(2)

    async def helper(inst: str) -> None:
        await asyncio.sleep(0)
        log.info("helper of %s", inst)

    async def instance(job: str, inst: str) -> None:
        logs.bind(job, inst)
        await both_bound.wait()  # both are bound before either logs: their lines interleave
        log.info("instance %s", inst)
        await asyncio.create_task(helper(inst))
        with logs.tagged(None, "other/0"):
            log.info("block of %s", inst)
        log.info("after block of %s", inst)

    await asyncio.gather(instance("j1", "count/0"), instance("j2", "count/1"))
    log.info("creator")
    tags = {line["msg"]: (line["job"], line["instance"]) for line in json_lines(capsys)}
    assert tags == {
        "instance count/0": ("j1", "count/0"),
        "instance count/1": ("j2", "count/1"),
        "helper of count/0": ("j1", "count/0"),
        "helper of count/1": ("j2", "count/1"),
        "block of count/0": ("j1", "other/0"),
        "block of count/1": ("j2", "other/0"),
        "after block of count/0": ("j1", "count/0"),
        "after block of count/1": ("j2", "count/1"),
        "creator": (None, None),  # a binding never leaks to the task that created the bound one
    }


def test_extra_tags_win_over_bound_ones_and_process_tags_fill_in(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("INFO", "json")
    log = logging.getLogger("stashflow.coordinator")
    logs.bind_process("j1", "count/1")
    log.info("process")
    with logs.tagged("j2"):
        log.info("job bound")
        log.info("extra", extra={"instance": "merge/0"})
    logs.event(log, "event", level=logging.WARNING, job="j3", instance="split/1", resent=4)
    logs.bind_process(None)
    log.info("untagged")
    lines = json_lines(capsys)
    assert [(line["msg"], line["job"], line["instance"]) for line in lines] == [
        ("process", "j1", "count/1"),
        ("job bound", "j2", "count/1"),
        ("extra", "j2", "merge/0"),
        ("event", "j3", "split/1"),
        ("untagged", None, None),
    ]
    assert (lines[3]["level"], lines[3]["resent"]) == ("WARNING", 4)


async def test_an_instances_code_logs_lines_naming_it_in_process(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A user function, the worker's instance task and the lineage runtime log without naming the
    instance; their lines name it, and the coordinator's lines about it too (unpinned worker)."""
    setup_logging("INFO", "json")
    user = logging.getLogger("stashflow.user")

    def note(x: int) -> int:
        if x < 4:
            user.info("note saw %d", x)
        return x

    job = Job("tags")
    job.source("nums", ListSource(list(range(300)))).map("note", note).key_by(lambda x: x % 5).count(
        "count"
    ).sink("out", CollectSink())
    plan = Plan.of(job, 2)
    result = await arun(job, parallelism=2, timeout=30, kill_after={"count/1": 40})
    lines = json_lines(capsys)
    count1 = plan.task_of_step("count").instance(1)

    def tags(pred: Any) -> set[tuple[str | None, str | None]]:
        return {(line["job"], line["instance"]) for line in lines if pred(line)}

    for x in range(4):
        assert tags(lambda line, x=x: line["msg"] == f"note saw {x}") == {
            (result.job_id, plan.task_of_step("note").instance(x % 2))
        }
    assert tags(lambda line: "injected crash" in line["msg"]) == {(result.job_id, count1)}
    assert tags(lambda line: "replay done" in line["msg"]) == {(result.job_id, count1)}
    [live] = [line for line in lines if line["logger"] == "recovery" and "live again" in line["msg"]]
    assert (live["job"], live["instance"], live["logger"]) == (result.job_id, count1, "recovery")
    assert isinstance(live["live_s"], float) and live["replayed_batches"] >= 0
    assert tags(lambda line: line["msg"].startswith(f"job {result.job_id} finished")) == {
        (result.job_id, None)
    }


# -- end to end ----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_local_run_logs_json_lines_and_the_recovery_of_a_killed_instance(tmp_path: Path) -> None:
    args = [sys.executable, "-m", "engine", "--log-level", "INFO", "--log-format", "json", "run"]
    args += ["jobs/union_count.py", "--parallelism", "2", "-P", "sentences=6000", "-P", "rate=6000"]
    args += ["-P", f"output={tmp_path / 'out'}", "--checkpoint-interval", "0.3", "--kill", "count/1@0.5"]
    args += ["--no-dashboard", "--timeout", "40"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()  # its workers exit once their coordinator is gone
        proc.communicate()
        raise
    assert proc.returncode == 0, err[-3000:]
    stderr = err.splitlines()
    assert not [line for line in stderr if TEXT_LINE.match(line) or line.startswith("    ")], stderr[:20]
    lines = [json.loads(line) for line in stderr if line.startswith("{")]
    [job_id] = {line["job"] for line in lines if line["job"] is not None}
    workers = [line for line in lines if line["pid"] != proc.pid]
    assert workers, "no line came from a worker process"
    untagged = [line for line in workers if line["instance"] is None or line["job"] != job_id]
    assert not untagged, untagged[:5]
    assert {line["instance"] for line in workers} >= {"count/0", "count/1", "left/0", "right/1"}
    recovery = [line for line in lines if line["logger"] == "recovery" and line["instance"] == "count/1"]
    [lost] = [line for line in recovery if " lost (" in line["msg"]]
    [live] = [line for line in recovery if "live again" in line["msg"]]
    assert lost["logger"] == live["logger"] == "recovery" and lost["pid"] == live["pid"] == proc.pid
    assert isinstance(lost["detected_s"], float) and 0 <= lost["detected_s"] < 10
    assert isinstance(live["live_s"], float) and lost["detected_s"] <= live["live_s"] < 20
    assert isinstance(live["replayed_batches"], int) and live["incarnation"] == lost["incarnation"] == 1
    assert any(line["msg"].startswith(f"job {job_id} finished in ") for line in lines)


def _pid() -> int:
    return os.getpid()
