"""The lineage stash end to end: kill instances of a running job; only they restart; output is exactly-once.

The job (jobs/union_count.py) merges two generated sources with ``union`` (so the order in which
``merge`` receives their batches is truly nondeterministic), splits sentences into words, keys by word
and keeps a running ``count`` written to a FileSink: for every word w seen N_w times the output must
hold the records (w, 1) .. (w, N_w), each exactly once, whatever was killed and when.
"""

from __future__ import annotations

import itertools
import json
import random
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

import pytest
import union_count
from support import ROOT, read_jsonl

from connectors import CollectSink, GeneratorSource, ListSource
from engine import Job
from engine.testing import run

SENTENCES = 6000
RATE = 6000  # per source: the job runs ~1 s, so kills land while it is busy


def expected_counts(n: int) -> Counter[str]:
    return Counter(w for salt in (1, 2) for i in range(n) for w in union_count.sentence(i, salt).split())


def assert_exactly_once(records: list, n: int) -> None:
    seen: dict[str, list[int]] = defaultdict(list)
    for word, count in records:
        seen[word].append(count)
    expected = expected_counts(n)
    problems = {
        w: (sorted(seen.get(w, [])) if len(seen.get(w, [])) < 8 else f"{len(seen.get(w, []))} records", c)
        for w, c in expected.items()
        if sorted(seen.get(w, [])) != list(range(1, c + 1))
    }
    assert not problems, f"{len(problems)} words without exactly 1..N: {dict(list(problems.items())[:3])}"
    assert set(seen) == set(expected)


def run_killing(tmp_path: Path, kills: list[str], *extra: str, n: int = SENTENCES) -> dict:
    out = tmp_path / "out"
    metrics = tmp_path / "metrics.json"
    args = [sys.executable, "-m", "engine", "run", "jobs/union_count.py", "--parallelism", "2"]
    args += ["-P", f"sentences={n}", "-P", f"rate={RATE}", "-P", f"output={out}", *extra]
    args += ["--checkpoint-interval", "0.3", "--metrics-out", str(metrics), "--timeout", "90"]
    for k in kills:
        args += ["--kill", k]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_exactly_once(read_jsonl(out), n)
    data = json.loads(metrics.read_text())["instances"]
    return {"instances": data, "stderr": proc.stderr}


def restarted(instances: dict) -> set[str]:
    return {m["task"] for m in instances.values() if m["restarts"]}


@pytest.mark.parametrize("step", ["left", "right", "merge", "count"])
@pytest.mark.parametrize("seed", [1, 2])
def test_kill_one_instance_of_each_step(tmp_path: Path, step: str, seed: int):
    rng = random.Random(f"{step}-{seed}")
    index, when = rng.randrange(2), round(rng.uniform(0.2, 0.8), 2)
    result = run_killing(tmp_path, [f"{step}/{index}@{when}"])
    assert restarted(result["instances"]) == {f"{step}/{index}"}, result["stderr"][-2000:]
    rec = result["instances"][f"{step}/{index}"]["recoveries"][0]
    assert rec["live_s"] is not None and rec["live_s"] < 10
    assert "recovered alone" in result["stderr"]


def test_kill_two_instances_at_once(tmp_path: Path):
    result = run_killing(tmp_path, ["merge/0@0.5", "count/1@0.5"])
    assert restarted(result["instances"]) == {"merge/0", "count/1"}


def test_kill_the_sink_alone(tmp_path: Path):
    result = run_killing(tmp_path, ["write/0@0.6"], "-P", "sink_parallelism=1")
    assert restarted(result["instances"]) == {"write/0"}


def test_kill_the_same_instance_twice(tmp_path: Path):
    result = run_killing(tmp_path, ["count/0@0.3", "count/0@2.0"], n=18000)
    assert restarted(result["instances"]) == {"count/0"}
    assert result["instances"]["count/0"]["restarts"] == 2


def test_write_first_mode_recovers_exactly_once(tmp_path: Path):
    result = run_killing(tmp_path, ["merge/0@0.5"], "--ft", "wal")
    assert restarted(result["instances"]) == {"merge/0"}
    rec = result["instances"]["merge/0"]["recoveries"][0]
    assert rec["log_entries_from_stashes"] == 0  # write-first: the GCS holds everything anyone depends on


def test_unbounded_forwarding_depth(tmp_path: Path):
    result = run_killing(tmp_path, ["merge/1@0.5"], "--ft-depth", "-1")
    assert restarted(result["instances"]) == {"merge/1"}


# -- in-process, deterministic: engine.testing's kill_after -------------------------------------------


def union_job(n: int, sink: CollectSink) -> Job:
    job = Job("union_inproc", parallelism=2)
    left = job.source("left", GeneratorSource(lambda i: union_count.sentence(i, 1), count=n))
    right = job.source("right", GeneratorSource(lambda i: union_count.sentence(i, 2), count=n))
    words = left.union("merge", right).flat_map("split", str.split)
    words.key_by(lambda w: w).count("count").sink("write", sink)
    return job


@pytest.mark.parametrize(
    "kill_after",
    [
        {"count/0": 3000},
        {"merge/1": 400},
        {"left/0": 500},
        {"count/1": 2500, "merge/0": 300},
        {"count/0": [2000, 500]},  # killed again 500 records into its own recovery (during replay)
        {"count/1": [1500, 4000, 100]},
    ],
)
def test_in_process_kills_are_exactly_once(kill_after: dict):
    sink = CollectSink()
    n = 3000
    result = run(union_job(n, sink), batch_size=50, checkpoint_interval=0.05, kill_after=kill_after)
    assert_exactly_once(sink.records, n)
    killed = {name: (len(v) if isinstance(v, list) else 1) for name, v in kill_after.items()}
    for name, m in result.instances.items():
        expected = killed.get(name, 0)
        if name.startswith("write/") or name.startswith("split/"):
            continue  # chained: they share count's / merge's task
        assert m["restarts"] == expected, (name, m["restarts"], expected)


@pytest.mark.parametrize("ft", ["lineage", "wal"])
def test_in_process_kill_in_each_recovering_mode(ft: str):
    sink = CollectSink()
    result = run(
        union_job(2000, sink), ft=ft, batch_size=50, checkpoint_interval=0.05, kill_after={"count/1": 1500}
    )
    assert_exactly_once(sink.records, 2000)
    assert result.instances["count/1"]["restarts"] == 1


def test_write_first_waits_for_storage_and_lineage_does_not():
    """--ft wal puts a GCS round trip before every batch leaves; the lineage stash puts none."""
    waits = {}
    for ft in ("wal", "lineage"):
        job = Job(f"wait_{ft}")
        job.source("nums", ListSource(list(range(2000)))).map("inc", lambda x: x + 1).rebalance().sink(
            "out", CollectSink()
        )
        result = run(job, ft=ft, batch_size=100, gcs_delay_ms=10)
        waits[ft] = result.instances["inc/0"]["commit_wait_s"]
    # 20 batches sent, each after a >= 10 ms acknowledgment (group commit may share some)
    assert waits["wal"] >= 0.1, waits
    assert waits["lineage"] == 0.0, waits


def test_replay_recovers_nondeterministic_ctx_values():
    """ctx.random() is logged: a replayed instance rebuilds the state its released output came from.

    The reduce function folds a random draw into the state and emits (total, draw). If the replay drew
    fresh values, the totals written after the recovery would not continue the ones written before it.
    """
    from engine import ctx

    def fold(acc, x):
        r = ctx.random().randrange(1000)
        return (acc[0] + r, r)

    sink = CollectSink()
    job = Job("ctx", parallelism=1)
    # paced, so that output released before the crash depends on draws the replay must reproduce
    nums = job.source("nums", GeneratorSource(lambda i: (i % 10, 0, 0), count=2000, rate=5000))
    nums.key_by(lambda t: t[0]).reduce("fold", lambda acc, t: (acc[0], *fold(acc[1:], t))).sink("out", sink)
    result = run(job, batch_size=100, checkpoint_interval=60, kill_after={"fold/0": 1250})
    assert result.instances["fold/0"]["restarts"] == 1
    by_key: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for key, (_, total, last) in sink.records:
        by_key[key].append((total, last))
    assert sorted(by_key) == list(range(10))
    for outputs in by_key.values():
        assert len(outputs) == 200
        assert outputs[0] == (0, 0)  # the first record of a key is the start value
        for (prev, _), (total, last) in itertools.pairwise(outputs):
            assert total == prev + last
