"""The fault-tolerance evaluation harness (bench/ft.py): its figures from synthetic timelines, and a quick run.

The quick run (``stashflow bench ft --quick``, marked ``bench``: ``-m bench`` selects it, ``-m 'not bench'``
skips it) checks that every file is written and every mode has every figure; it asserts no performance
threshold: CI machines are noisy.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from engine.config import FT_MODES
from engine.metrics import Timeline

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from ft import JobSpec, parse_args  # noqa: E402
from ft_analysis import (  # noqa: E402
    compare_outputs,
    longest_zero_s,
    output_lines,
    recovery_s,
    sink_split,
    stash_series,
    targets,
)

T0 = 1_000_000  # ms since the epoch of the first bucket
OFFERED = 10_000  # records/s: 1000 per 100 ms bucket


def synthetic(buckets: list[tuple[int, float | None]], batches: int = 10) -> Timeline:
    """One bucket per (records, latency ms) from T0 on, each of ``batches`` batches of that latency."""
    t = Timeline()
    for i, (records, latency_ms) in enumerate(buckets):
        for _ in range(batches if records else 0):
            ns = (T0 + i * 100) * 1_000_000 + 1
            t.add(ns, records // batches, None if latency_ms is None else int(latency_ms * 1e6))
    return t


def steady(n: int) -> list[tuple[int, float | None]]:
    return [(1000, 10.0)] * n


def test_recovery_ends_when_rate_and_p99_are_back_and_hold():
    # killed 50 ms into bucket 30: nothing for 0.8 s, then a catch-up with old batches, then steady
    tl = synthetic(steady(30) + [(0, None)] * 8 + [(1500, 50.0)] * 3 + steady(40))
    kill = T0 + 30 * 100 + 50
    assert recovery_s(tl, kill, OFFERED, 10.0, until_ms=T0 + 81 * 100, hold_ms=500) == pytest.approx(1.05)
    assert longest_zero_s(tl, kill, T0 + 81 * 100) == pytest.approx(0.8)


def test_batches_in_flight_at_the_kill_do_not_count_as_recovered():
    # output goes on for 0.2 s after the kill (batches already on their way), then stops for 1 s
    tl = synthetic(steady(32) + [(0, None)] * 10 + steady(40))
    kill = T0 + 30 * 100
    assert recovery_s(tl, kill, OFFERED, 10.0, until_ms=T0 + 82 * 100, hold_ms=500) == pytest.approx(1.2)


def test_a_burst_after_the_dip_is_not_recovery_until_it_holds():
    # a burst of held-back output, a second gap, then steady: recovered after the second gap
    tl = synthetic(steady(30) + [(0, None)] * 3 + [(6000, 12.0)] * 2 + [(0, None)] * 6 + steady(40))
    kill = T0 + 30 * 100
    assert recovery_s(tl, kill, OFFERED, 10.0, until_ms=T0 + 81 * 100, hold_ms=500) == pytest.approx(1.1)


def test_a_failure_that_does_not_show_takes_no_time_and_one_that_never_ends_has_no_figure():
    tl = synthetic(steady(60))
    assert recovery_s(tl, T0 + 3000, OFFERED, 10.0, until_ms=T0 + 6000, hold_ms=500) == 0.0
    slow = synthetic(steady(30) + [(800, 10.0)] * 30)  # 80% of the offered rate from the kill on
    assert recovery_s(slow, T0 + 3000, OFFERED, 10.0, until_ms=T0 + 6000, hold_ms=500) is None
    late = synthetic(steady(30) + [(1000, 25.0)] * 30)  # the rate is back, the p99 never is
    assert recovery_s(late, T0 + 3000, OFFERED, 10.0, until_ms=T0 + 6000, hold_ms=500) is None


def test_a_dip_long_after_the_kill_is_not_the_failure():
    # the output holds for 1.5 s after the kill, then one window falls short (a burst cut in two)
    tl = synthetic(steady(45) + [(500, 10.0)] * 2 + steady(40))
    kill = T0 + 30 * 100
    assert recovery_s(tl, kill, OFFERED, 10.0, until_ms=T0 + 87 * 100, hold_ms=500) == 0.0
    # the same dip within the settle time after the kill is the failure's: recovered after it
    early = synthetic(steady(33) + [(500, 10.0)] * 2 + steady(40))
    # (the window from bucket 34 on holds 90% of the offered records again)
    assert recovery_s(early, kill, OFFERED, 10.0, until_ms=T0 + 75 * 100, hold_ms=500) == pytest.approx(0.4)


def test_stash_series_sums_instances_and_survives_a_restart():
    def gauges(stash: list[int], piggy: list[int]) -> dict:
        return {
            "t_ms": [T0 + 100 * i for i in range(len(stash))],
            "stash_bytes": stash,
            "piggybacked_bytes": piggy,
        }

    metrics = {
        "instances": {
            "count/1": {"task": "count/1", "gauges": gauges([10, 20, 0, 5], [100, 300, 40, 90])},  # restarted
            "merge/0": {"task": "merge/0", "gauges": gauges([1, 1, 1, 1], [0, 50, 100, 150])},
            "split/0": {
                "task": "merge/0",
                "gauges": gauges([1, 1, 1, 1], [0, 50, 100, 150]),
            },  # chained: once
        }
    }
    s = stash_series(metrics)
    assert s["stash_bytes"] == [11, 21, 1, 6]
    assert s["piggybacked_per_s"] == [1000, 2500, 900, 1000]  # per 100 ms: 100, 200+50, 40+50, 50+50


def test_targets_are_met_missed_or_not_applicable():
    modes = {
        "none": {"throughput": 100.0, "p99_ms": 10.0},
        "lineage": {
            "throughput": 95.0,
            "p99_ms": 11.0,
            "gcs5": {"p99_ms": 12.0},
            "recovery_s": 0.5,
            "rolled_back": ["count/1"],
            "zero_output_max_s": 0.3,
        },
        "wal": {"gcs5": {"p99_ms": 40.0}},
    }
    met = {t["target"]: t["met"] for t in targets(modes)}
    assert met["lineage throughput / none"] is True
    assert met["checkpoint throughput / none"] is None  # no checkpoint run
    assert met["wal p99 / lineage p99 (GCS delay 5 ms)"] is True
    assert met["lineage: instances rolled back"] is True
    modes["lineage"]["rolled_back"] = ["count/1", "write/0"]
    assert {t["target"]: t["met"] for t in targets(modes)}["lineage: instances rolled back"] is False
    # recovery against checkpoint's: a ratio; a checkpoint failure that did not show leaves none to meet
    modes["checkpoint"] = {"recovery_s": 2.0}
    row = next(t for t in targets(modes) if t["target"] == "lineage recovery / checkpoint recovery")
    assert (row["value"], row["met"]) == (0.25, True)
    modes["checkpoint"] = {"recovery_s": 0.0}
    row = next(t for t in targets(modes) if t["target"] == "lineage recovery / checkpoint recovery")
    assert (row["value"], row["met"]) == ("checkpoint 0 s", False)


@pytest.mark.bench
@pytest.mark.slow
@pytest.mark.timeout(200)
def test_quick_run_writes_every_file_with_every_figure(tmp_path: Path):
    proc = subprocess.run(
        [sys.executable, "-m", "engine", "bench", "ft", "--quick", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=ROOT,
    )
    failures = [line for line in proc.stderr.splitlines() if line.startswith("ft: FAILED")]
    assert proc.returncode == 0, "\n".join(failures) or proc.stderr[-3000:]
    report = json.loads((tmp_path / "ft.json").read_text())
    assert list(report["modes"]) == ["none", *(m for m in FT_MODES if m != "none")]
    for mode, figures in report["modes"].items():
        missing = {"throughput", "p50_ms", "p99_ms", "recovery_s", "rolled_back", "gcs5", "timeline"} - set(
            figures
        )
        assert not missing, f"{mode} lacks {missing}"
        assert figures["throughput"] > 0 and figures["p99_ms"] > 0 and "count/1" in figures["rolled_back"]
        assert (tmp_path / f"ft-timeline-{mode}.png").stat().st_size > 0
    assert report["modes"]["lineage"]["rolled_back"] == ["count/1"]  # alone: not a threshold, the design
    for name in ("ft.md", "ft-latency.png", "ft-lineage-stash.png"):
        assert (tmp_path / name).stat().st_size > 0
    assert "| lineage |" in (tmp_path / "ft.md").read_text()


#: a user's job, as `stashflow bench ft --job` takes it: records and rate per source step, an output directory,
#: and a sink in a task of its own
VISITS = """
from connectors import FileSink, GeneratorSource
from engine import Job


def build(events="1000", rate="", output="out/visits", chained=""):
    job = Job("visits")
    source = GeneratorSource(lambda i: f"page{(i * 7919) % 50}", count=int(events), rate=float(rate) if rate else None)
    counts = job.source("visits", source).key_by(lambda page: page).count("per_page")
    counts.sink("write", FileSink(output), parallelism=None if chained else 1)
    return job
"""


@pytest.fixture
def visits(tmp_path: Path) -> Path:
    path = tmp_path / "visits.py"
    path.write_text(VISITS)
    return path


def test_a_job_of_ones_own_is_checked_before_anything_runs(visits: Path):
    spec = JobSpec.load(visits, "events", "rate", "per_page/1", {})
    assert (spec.sources, spec.sink_steps, spec.default, spec.unit) == (1, ("write",), False, "records")
    default = parse_args([]).job
    assert default.default and default.sources == 2 and default.params == {"sink_parallelism": "1"}
    bad = {
        "no such file": (visits.with_name("nope.py"), "events", "rate", "per_page/1", {}),
        "unknown parameter(s) sentences": (visits, "sentences", "rate", "per_page/1", {}),
        "has no such instance; name one as STEP/INDEX, e.g. --victim per_page/1": (
            visits, "events", "rate", "count/1", {}
        ),
        "step 'per_page' has instances 0..1": (visits, "events", "rate", "per_page/2", {}),
        "sink 'write' runs in the same task and would die with it": (
            visits, "events", "rate", "per_page/1", {"chained": "1"}
        ),
        "both 'events'": (visits, "events", "events", "per_page/1", {}),
    }  # fmt: skip
    for message, args in bad.items():
        with pytest.raises(ValueError, match=re.escape(message)):
            JobSpec.load(*args)


def test_bad_harness_options_exit_with_one_line(visits: Path):
    for argv, message in [
        (["--job", str(visits)], "unknown parameter(s) sentences"),
        (["--job", str(visits), "--count-param", "events", "-P", "x"], "is not key=value"),
        (["--batch-size", "0"], "--batch-size must be a positive number"),
        (["--records", "-5"], "--records must be a positive number"),
    ]:
        proc = subprocess.run(
            [sys.executable, "bench/ft.py", *argv], capture_output=True, text=True, timeout=60, cwd=ROOT
        )
        assert proc.returncode == 2 and message in proc.stderr.splitlines()[-1], proc.stderr


def test_output_check_counts_missing_and_extra_lines(tmp_path: Path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "part-0.jsonl").write_text('["x", 1]\n["x", 2]\n')
    (tmp_path / "part-1.jsonl").write_text('["y", 1]\n')
    got = output_lines(tmp_path)
    compare_outputs(got, got.copy())
    reference = got.copy()
    reference['["x", 2]'] += 1  # one line lost
    del reference['["y", 1]']  # and one written that should not be
    with pytest.raises(ValueError, match=r"1 lines missing, 1 extra \(missing '\[\"x\", 2\]'; extra"):
        compare_outputs(got, reference)


@pytest.mark.bench
@pytest.mark.slow
@pytest.mark.timeout(200)
def test_quick_run_of_ones_own_job_checks_its_output_against_a_failure_free_run(tmp_path: Path, visits: Path):
    out = tmp_path / "out"
    proc = subprocess.run(
        [
            sys.executable, "-m", "engine", "bench", "ft", "--quick", "--out", str(out), "--modes", "none,lineage",
            "--job", str(visits), "--count-param", "events", "--victim", "per_page/1", "--records", "200000",
            "--batch-size", "500",
        ],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=ROOT,
    )  # fmt: skip
    failures = [line for line in proc.stderr.splitlines() if line.startswith("ft: FAILED")]
    assert proc.returncode == 0, "\n".join(failures) or proc.stderr[-3000:]
    assert "ft: none       reference" in proc.stderr  # the failure run's output was compared with it
    report = json.loads((out / "ft.json").read_text())
    cfg = report["config"]
    assert (cfg["victim"], cfg["unit"], cfg["batch_size"], cfg["sink_records_per_source_record"]) == (
        "per_page/1", "records", 500, 1.0
    )  # fmt: skip
    assert report["modes"]["lineage"]["rolled_back"] == ["per_page/1"]
    assert "--batch-size 500" in report["modes"]["lineage"]["runs"]["failure"]["command"]
    assert "max records/s" in (out / "ft.md").read_text()


def test_sink_split_separates_the_pipeline_from_the_commit_wait():
    sink = {"arrival_latency": {"p50_ms": 14.0, "p99_ms": 26.0}, "latency": {"p50_ms": 19.0, "p99_ms": 35.0}}
    other_sink = {
        "arrival_latency": {"p50_ms": 10.0, "p99_ms": 30.0},
        "latency": {"p50_ms": 12.0, "p99_ms": 31.0},
    }
    metrics = {"instances": {"write/0": sink, "write/1": other_sink, "count/0": {"state": "finished"}}}
    assert sink_split(metrics) == {
        "arrival_p50_ms": 14.0, "arrival_p99_ms": 30.0, "written_p50_ms": 19.0, "written_p99_ms": 35.0,
    }  # fmt: skip
    assert sink_split({"instances": {"count/0": {}}})["arrival_p99_ms"] is None
