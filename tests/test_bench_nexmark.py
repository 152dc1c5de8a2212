"""The Nexmark benchmark (bench/nexmark_bench.py): its output check, and a quick run of every query in both modes.

The quick run (marked ``bench``: ``-m bench`` selects it, ``-m 'not bench'`` skips it) checks that every
query ran in both ``--ft`` modes, was verified against its reference and has a figure; it asserts no
performance threshold: CI machines are noisy.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))  # for its ``_harness`` import

# Loaded under a name of its own: "nexmark" is also jobs/nexmark, a package on the test path.
_spec = importlib.util.spec_from_file_location("bench_nexmark", ROOT / "bench" / "nexmark_bench.py")
assert _spec and _spec.loader
bench_nexmark = importlib.util.module_from_spec(_spec)
sys.modules["bench_nexmark"] = bench_nexmark  # dataclasses look their module up there
_spec.loader.exec_module(bench_nexmark)

QUERIES = ["q1", "q2", "q5", "q7", "q8"]


def test_output_check_compares_multisets_or_sorted_rows_and_says_what_differs_in_one_line():
    check, wrong = bench_nexmark.check_output, bench_nexmark.WrongResult
    check("q1", [(2, 0), (1, 0), (1, 0)], [(1, 0), (1, 0), (2, 0)])  # q1: any order
    check("q7", [(0, 10, 3, 4, 5), (0, 10, 1, 2, 5)], [(0, 10, 1, 2, 5), (0, 10, 3, 4, 5)])
    with pytest.raises(wrong, match=r"^q1: 2 rows, expected 2 \(as a multiset\); 1 missing, e\.g\. \[\(2,\)\]; "
                       r"1 not in the reference, e\.g\. \[\(1,\)\]$"):  # fmt: skip
        check("q1", [(1,), (1,)], [(1,), (2,)])
    with pytest.raises(wrong, match=r"^q8: 1 rows, expected 2 \(sorted\); 1 missing") as info:
        check("q8", [(1, None, 0, 10)], [(1, None, 0, 10), (2, "Kate Smith", 0, 10)])
    assert "\n" not in str(info.value)


@pytest.mark.bench
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_quick_run_verifies_and_measures_every_query_in_both_modes(tmp_path: Path):
    out = tmp_path / "nexmark.json"
    command = [
        sys.executable, "bench/nexmark_bench.py", "--quick", "--events", "5000", "--no-pyflink",
        "--quiet-wait", "0", "--out", str(out),
    ]  # fmt: skip
    proc = subprocess.run(command, capture_output=True, text=True, timeout=280, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["events"] == 5000 and report["rounds"] == 1
    assert list(report["queries"]) == QUERIES
    for name, query in report["queries"].items():
        assert query["expected_rows"] > 0, f"{name}: an empty reference verifies nothing"
        for ft in ("none", "lineage"):
            mode = query["modes"][ft]
            assert mode["status"] == "ok", f"{name} --ft {ft}: {mode.get('reason')}"
            assert mode["verified_runs"] == 1 and len(mode["runs"]) == 1
            run = mode["runs"][0]
            assert run["verified"] and run["ft"] == ft and run["rows"] == query["expected_rows"]
            assert run["events_per_s"] > 0 and mode["events_per_s"]["median"] == run["events_per_s"]
        ratio = query["lineage_over_none"]
        assert ratio["lineage_over_none_per_round"]["median"] > 0 and ratio["met"] in (True, False)
    assert report["pyflink"]["status"] == "skipped" and "--no-pyflink" in report["pyflink"]["reason"]
    table = out.with_suffix(".md").read_text()
    assert all(f"| {q} | " in table for q in QUERIES) and "verified, " in table


def test_ab_runs_each_configuration_per_round_and_prints_ratios_and_cpu():
    """bench/nexmark_ab.py: a tree and --ft per configuration, ratios to the first, CPU by process."""
    command = [sys.executable, "bench/nexmark_ab.py", "q2", "3000", "2", "none=.:none",
               "lin=.:lineage:--spare-workers 0"]  # fmt: skip
    proc = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert [line.split(":")[0] for line in lines[:2]] == ["round 1", "round 2"]
    none, lineage = lines[2], lines[3]
    assert none.startswith("none ") and "/none median 1.000 [1.00, 1.00]" in none
    assert lineage.startswith("lin ") and "'events/0'" in lineage and "'coordinator'" in lineage
    assert "~spare" not in lineage  # its ARGS reached the run


def test_ab_refuses_a_configuration_it_cannot_run_in_one_line():
    proc = subprocess.run([sys.executable, "bench/nexmark_ab.py", "q2", "10", "1", "x=/nonexistent:none"],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)  # fmt: skip
    assert proc.returncode == 2
    assert "/nonexistent has no engine/ (a checkout or worktree of stashflow)" in proc.stderr
