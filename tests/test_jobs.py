"""Every example job, in-process and multi-process, against a reference computed in plain Python."""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

import clicks
import union_count
from support import read_jsonl


def test_wordcount(job_runner, tmp_path: Path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    lines = [" ".join(f"w{(i * j) % 37}" for j in range(1, 1 + i % 9)) for i in range(3000)]
    (corpus / "a.txt").write_text("\n".join(lines[:1700]) + "\n")
    (corpus / "b.txt").write_text("\n".join(lines[1700:]))  # no final newline
    out = tmp_path / "out"
    outcome = job_runner("jobs/wordcount.py", {"input": str(corpus / "*.txt"), "output": str(out)})
    assert outcome.returncode == 0, outcome.stderr
    expected = Counter(w for line in lines for w in line.split())
    got = read_jsonl(out)
    assert len(got) == len(expected)
    assert {w: c for w, c in got} == expected
    metrics = outcome.metrics["instances"]
    assert sum(metrics[f"read/{i}"]["records_out"] for i in range(2)) == len(lines)
    assert sum(metrics[f"count/{i}"]["records_in"] for i in range(2)) == sum(expected.values())
    assert set(metrics) == {f"{s}/{i}" for s in ("read", "split", "count", "write") for i in range(2)}


def test_union_count_running_counts_are_exact(job_runner, tmp_path: Path):
    out = tmp_path / "out"
    n = 3000
    outcome = job_runner("jobs/union_count.py", {"sentences": str(n), "output": str(out)})
    assert outcome.returncode == 0, outcome.stderr
    expected = Counter(w for salt in (1, 2) for i in range(n) for w in union_count.sentence(i, salt).split())
    seen: dict[str, list[int]] = defaultdict(list)
    for word, count in read_jsonl(out):
        seen[word].append(count)
    # each word is owned by one instance, so its running counts appear in order, 1..N exactly once
    assert {w: cs for w, cs in seen.items()} == {w: list(range(1, c + 1)) for w, c in expected.items()}


def test_clicks(job_runner, tmp_path: Path):
    out = tmp_path / "out"
    n = 5000
    outcome = job_runner("jobs/clicks.py", {"events": str(n), "output": str(out)})
    assert outcome.returncode == 0, outcome.stderr
    expected: Counter[str] = Counter()
    for i in range(n):
        user, page, _ = clicks.event(i)
        if not user.endswith("3"):
            expected[user] += clicks.WEIGHT[page]
    got = {r["user"]: r["weight"] for r in read_jsonl(out)}
    assert got == dict(expected)
