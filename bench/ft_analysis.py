"""The fault-tolerance evaluation's figures (``bench/ft.py``): pure functions of a run's metrics.

A run's output over time is the sum of its sink instances' timelines (:class:`engine.metrics.Timeline`,
records and a latency histogram per 100 ms, in ``--metrics-out``). From it: latency percentiles after a
warm-up, the recovery time after a kill (:func:`recovery_s`), the longest stretch without output, and
the per-bucket series the plots draw; from the coordinator's samples of the lineage instances
(``gauges``), the stash's size and the bytes piggybacked over time. Also: the exactly-once check of the
job's output and the issue's targets.
"""

from __future__ import annotations

import functools
import importlib.util
from collections import Counter
from pathlib import Path
from typing import Any

from _harness import REPO, read_pairs

from engine.metrics import BUCKET_MS, Timeline, percentile_ms

VICTIM = "count/1"
#: recovery criterion: output rate back to this share of offered, with p99 under this multiple of steady
RATE_SHARE, P99_FACTOR = 0.9, 2.0


@functools.cache
def _job() -> Any:
    """``jobs/union_count.py``, the job the harness runs, for its ``sentence`` function."""
    spec = importlib.util.spec_from_file_location("ft_union_count", REPO / "jobs" / "union_count.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def words_per_sentence() -> int:
    return len(_job().sentence(0, 1).split())


def expected_counts(sentences: int) -> Counter[str]:
    """How many times each word comes out of the two sources of ``sentences`` sentences each."""
    sentence = _job().sentence
    return Counter(w for salt in (1, 2) for i in range(sentences) for w in sentence(i, salt).split())


def check_exactly_once(out_dir: Path, sentences: int) -> int:
    """Raise ``ValueError`` unless the part files hold ``[w, 1] .. [w, N_w]`` once each, and nothing else."""
    seen: dict[str, list[int]] = {}
    lines = 0
    for word, n in read_pairs(out_dir, ValueError):
        seen.setdefault(word, []).append(n)
        lines += 1
    problems = []
    for word, total in expected_counts(sentences).items():
        got = sorted(seen.pop(word, []))
        if got != list(range(1, total + 1)):
            dup = sorted(n for n, c in Counter(got).items() if c > 1)[:3]
            missing = sorted(set(range(1, total + 1)) - set(got))[:3]
            problems.append(f"{word}: {len(got)} lines for {total} (duplicated {dup}, missing {missing})")
    problems += [f"{word}: {len(ns)} lines, but the sources never produce it" for word, ns in seen.items()]
    if problems:
        raise ValueError(
            f"output is not exactly once: {len(problems)} words wrong, e.g. {'; '.join(problems[:3])}"
        )
    return lines


def output_lines(out_dir: Path) -> Counter[str]:
    """Every line of every file a sink wrote under ``out_dir`` (any depth), as a multiset."""
    lines: Counter[str] = Counter()
    for path in sorted(p for p in out_dir.rglob("*") if p.is_file()):
        with path.open(encoding="utf-8", errors="replace") as f:
            lines.update(line.rstrip("\n") for line in f)
    return lines


def compare_outputs(got: Counter[str], reference: Counter[str]) -> None:
    """Raise ``ValueError`` unless ``got`` holds the lines of ``reference``, each as often, and nothing else."""
    if got == reference:
        return
    missing, extra = reference - got, got - reference
    examples = [f"missing {line[:60]!r}" for line in list(missing)[:2]]
    examples += [f"extra {line[:60]!r}" for line in list(extra)[:2]]
    raise ValueError(
        f"output is not that of a failure-free run of the same records: {missing.total():,} lines missing, "
        f"{extra.total():,} extra ({'; '.join(examples)}); if the job's output depends on the order in which "
        "its inputs arrive (a running reduce over several inputs), that is no loss: pass --no-output-check"
    )


def sink_timeline(metrics: dict[str, Any]) -> Timeline:
    """The job's output over time: the sum of the timelines of its sink instances."""
    return Timeline.combine(
        Timeline.from_dict(m["timeline"]) for m in metrics["instances"].values() if m.get("timeline")
    )


def sink_split(metrics: dict[str, Any]) -> dict[str, float | None]:
    """Where a sink's latency comes from: ``arrival_p50_ms``/``arrival_p99_ms`` (ingestion to the sink's
    operator) beside ``written_p50_ms``/``written_p99_ms`` (to the write, after any output-commit wait),
    from the sink instance's own histograms (its last 20,000 batches, warm-up included; the worst sink
    instance when there are several)."""
    out: dict[str, float | None] = {}
    for key, name in (("arrival", "arrival_latency"), ("written", "latency")):
        for q in ("p50_ms", "p99_ms"):
            values = [
                m[name][q] for m in metrics["instances"].values() if (m.get(name) or {}).get(q) is not None
            ]
            out[f"{key}_{q}"] = max(values) if values else None
    return out


def output_span(tl: Timeline) -> tuple[int, int] | None:
    """(first, last) bucket start with output, in ms since the epoch."""
    keys = [k for k, (records, _, _) in tl.buckets.items() if records]
    return (min(keys), max(keys)) if keys else None


def window(tl: Timeline, start_ms: int, end_ms: int) -> tuple[float, float | None]:
    """Records/s and p99 (ms) of the buckets starting in ``[start_ms, end_ms)``."""
    records = sum(r for k, (r, _, _) in tl.buckets.items() if start_ms <= k < end_ms)
    return records * 1000 / (end_ms - start_ms), percentile_ms(tl.histogram(start_ms, end_ms), 0.99)


def recovery_s(
    tl: Timeline,
    kill_ms: float,
    offered_per_s: float,
    steady_p99_ms: float,
    *,
    until_ms: int,
    hold_ms: int = 1000,
    settle_ms: int | None = None,
) -> float | None:
    """Seconds from the kill until the output is back, or ``None`` if it is not back by ``until_ms``.

    Windows of ``hold_ms`` start at each bucket from the one holding the kill; a window is *good* when
    its output rate is at least ``RATE_SHARE`` of ``offered_per_s`` and its p99 is under ``P99_FACTOR``
    times ``steady_p99_ms`` (empty windows are bad). The output is back at the start of the first window
    after a bad one from which every window starting within ``settle_ms`` (default ``hold_ms``) is good:
    the output held there, not just a burst of batches released at once. Bad windows are looked for from
    the kill on since batches in flight at the kill can make the first windows look good. The failure
    did not show (0) when no window is bad, or when the first bad one comes only after the output held
    good that long from the kill on: a later dip is the output's own unevenness (a sink that writes in
    bursts, one per checkpoint, has 1 s windows that catch one burst only in part), not the failure.
    Only windows that end by ``until_ms`` count (the end of the offered load: after it the output stops
    for good).
    """
    first = int(kill_ms) // BUCKET_MS * BUCKET_MS
    starts = range(first, until_ms - hold_ms + 1, BUCKET_MS)
    good = []
    for b in starts:
        rate, p99 = window(tl, b, b + hold_ms)
        good.append(
            rate >= RATE_SHARE * offered_per_s and p99 is not None and p99 < P99_FACTOR * steady_p99_ms
        )
    if all(good):
        return 0.0 if good else None
    span = (hold_ms if settle_ms is None else settle_ms) // BUCKET_MS
    first_bad = good.index(False)
    if first_bad > span:
        return 0.0
    for i in range(first_bad + 1, len(good) - span):
        if all(good[i : i + span + 1]):
            return round(max(0.0, starts[i] - kill_ms) / 1000, 3)
    return None


def longest_zero_s(tl: Timeline, from_ms: float, until_ms: int) -> float:
    """The longest run of buckets without output between ``from_ms`` and ``until_ms``, in seconds."""
    longest = run = 0
    for b in range(int(from_ms) // BUCKET_MS * BUCKET_MS, until_ms, BUCKET_MS):
        run = run + 1 if not tl.buckets.get(b, (0,))[0] else 0
        longest = max(longest, run)
    return longest * BUCKET_MS / 1000


def series(tl: Timeline, origin_ms: float) -> dict[str, list[Any]]:
    """Per bucket, gaps filled with zero output: seconds since ``origin_ms``, records/s, p99 ms."""
    span = output_span(tl)
    if span is None:
        return {"t_s": [], "records_per_s": [], "p99_ms": []}
    keys = range(span[0], span[1] + BUCKET_MS, BUCKET_MS)
    return {
        "t_s": [round((k - origin_ms) / 1000, 3) for k in keys],
        "records_per_s": [tl.buckets[k][0] * 1000 // BUCKET_MS if k in tl.buckets else 0 for k in keys],
        "p99_ms": [percentile_ms(tl.buckets[k][2], 0.99) if k in tl.buckets else None for k in keys],
    }


def stash_series(metrics: dict[str, Any]) -> dict[str, list[Any]]:
    """The lineage stash over time, over all task instances: bytes held, and bytes piggybacked per second.

    Each instance's samples are carried forward between its reports; its piggybacked total restarts
    from zero in a new incarnation, which the per-bucket increments allow for.
    """
    per_task = {m["task"]: m["gauges"] for m in metrics["instances"].values() if m.get("gauges")}
    if not per_task:
        return {"t_ms": [], "stash_bytes": [], "piggybacked_per_s": []}
    first = min(g["t_ms"][0] for g in per_task.values() if g["t_ms"])
    last = max(g["t_ms"][-1] for g in per_task.values() if g["t_ms"])
    grid = list(range(first, last + BUCKET_MS, BUCKET_MS))
    stash = [0] * len(grid)
    piggy = [0] * len(grid)
    for g in per_task.values():
        at = dict(zip(g["t_ms"], zip(g["stash_bytes"], g["piggybacked_bytes"], strict=True), strict=True))
        held, total = 0, 0
        for i, k in enumerate(grid):
            if k in at:
                held, now = at[k]
                piggy[i] += now - total if now >= total else now
                total = now
            stash[i] += held
    return {"t_ms": grid, "stash_bytes": stash, "piggybacked_per_s": [p * 1000 // BUCKET_MS for p in piggy]}


def stash_summary(metrics: dict[str, Any]) -> dict[str, Any]:
    """Peak and mean stash bytes, piggybacked bytes per second and per batch sent, of one lineage run."""
    s = stash_series(metrics)
    tasks = {m["task"]: m for m in metrics["instances"].values() if "stash_bytes" in m}
    frames = sum(m.get("frames_sent", 0) for m in tasks.values())
    piggy = sum(m.get("delta_bytes_mean", 0.0) * m.get("frames_sent", 0) for m in tasks.values())
    return {
        "stash_bytes_max": max(s["stash_bytes"], default=0),
        "stash_bytes_mean": round(sum(s["stash_bytes"]) / len(s["stash_bytes"]), 1)
        if s["stash_bytes"]
        else 0,
        "piggybacked_bytes_per_s_mean": round(sum(s["piggybacked_per_s"]) / len(s["piggybacked_per_s"]), 1)
        if s["piggybacked_per_s"]
        else 0,
        "piggybacked_bytes_per_batch": round(piggy / frames, 2) if frames else 0.0,
    }


def latency_figures(tl: Timeline, warmup_ms: int, end_ms: int | None = None) -> dict[str, float | None]:
    """p50/p99/p99.9 of the batches written from ``warmup_ms`` after the first output (to ``end_ms``)."""
    span = output_span(tl)
    if span is None:
        return {"p50_ms": None, "p99_ms": None, "p999_ms": None}
    hist = tl.histogram(span[0] + warmup_ms, end_ms)
    return {k: percentile_ms(hist, q) for k, q in (("p50_ms", 0.5), ("p99_ms", 0.99), ("p999_ms", 0.999))}


def targets(modes: dict[str, dict[str, Any]], victim: str = VICTIM) -> list[dict[str, Any]]:
    """The issue's targets, each with its value and whether it is met (``None``: a mode it needs is missing);
    ``victim``: the instance the failure runs killed."""

    def get(mode: str, *path: str) -> Any:
        value: Any = modes.get(mode) or {}
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        return value

    def ratio(a: Any, b: Any) -> float | None:
        return round(a / b, 3) if isinstance(a, int | float) and isinstance(b, int | float) and b else None

    rows = []

    def add(name: str, value: Any, goal: str, met: bool | None) -> None:
        rows.append({"target": name, "value": value, "goal": goal, "met": met})

    for mode in ("lineage", "checkpoint"):
        r = get(mode, "throughput_vs_none") or ratio(get(mode, "throughput"), get("none", "throughput"))
        add(f"{mode} throughput / none", r, ">= 0.9", None if r is None else r >= 0.9)
    r = ratio(get("lineage", "p99_ms"), get("none", "p99_ms"))
    add("lineage p99 / none p99 (same offered rate)", r, "<= 1.25", None if r is None else r <= 1.25)
    r = ratio(get("lineage", "light", "p99_ms"), get("none", "light", "p99_ms"))
    if r is not None:  # not an issue target: the same comparison where neither mode queues
        add("lineage p99 / none p99 at a quarter of none's max (informative)", r, "<= 1.25", r <= 1.25)
    r = ratio(get("wal", "gcs5", "p99_ms"), get("lineage", "gcs5", "p99_ms"))
    add("wal p99 / lineage p99 (GCS delay 5 ms)", r, ">= 2", None if r is None else r >= 2)
    r = ratio(get("lineage", "gcs5", "p99_ms"), get("lineage", "p99_ms"))
    add("lineage p99, GCS delay 5 ms / 0 ms", r, "<= 1.25", None if r is None else r <= 1.25)
    lin, chk = get("lineage", "recovery_s"), get("checkpoint", "recovery_s")
    r = ratio(lin, chk)
    if chk == 0 and isinstance(lin, int | float):  # checkpoint's failure did not show: no ratio to meet
        add("lineage recovery / checkpoint recovery", "checkpoint 0 s", "<= 0.333", lin == 0)
    else:
        add("lineage recovery / checkpoint recovery", r, "<= 0.333", None if r is None else r <= 1 / 3)
    rolled = get("lineage", "rolled_back")
    add(
        "lineage: instances rolled back",
        rolled,
        f"[{victim}] only",
        None if rolled is None else rolled == [victim],
    )
    zero = get("lineage", "zero_output_max_s")
    add(
        "lineage: longest zero-output stretch after the kill (s)",
        zero,
        "<= 1",
        None if zero is None else zero <= 1,
    )
    return rows
