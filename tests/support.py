"""Test support: run a job file in-process or as a local multi-process cluster; read sink output."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.loader import JobRef, load_job
from engine.testing import run

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Outcome:
    returncode: int
    stderr: str
    metrics: dict[str, Any] | None


class JobRunner:
    """Runs ``jobs/<file>`` with parameters, either in this process or via ``stashflow run``."""

    def __init__(self, mode: str, tmp_path: Path):
        self.mode = mode
        self.tmp_path = tmp_path

    def __call__(
        self, job_file: str, params: dict[str, str], parallelism: int = 2, timeout: float = 90
    ) -> Outcome:
        path = str(ROOT / job_file)
        if self.mode == "in-process":
            job = load_job(JobRef.parse(path), params)
            result = run(job, parallelism=parallelism, timeout=timeout, raise_on_failure=False)
            code = 0 if result.state == "finished" else 1
            return Outcome(code, result.error or "", {"instances": result.instances, "state": result.state})
        metrics = self.tmp_path / "metrics.json"
        args = [sys.executable, "-m", "engine", "run", path, "--parallelism", str(parallelism)]
        args += ["--metrics-out", str(metrics)]
        for k, v in params.items():
            args += ["-P", f"{k}={v}"]
        proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
        data = json.loads(metrics.read_text()) if metrics.exists() else None
        return Outcome(proc.returncode, proc.stderr, data)


def read_jsonl(directory: Path) -> list[Any]:
    """Every record of every ``part-*.jsonl`` file of a FileSink directory, parts in index order."""
    records: list[Any] = []
    for part in sorted(directory.glob("part-*.jsonl"), key=lambda p: int(p.stem.split("-")[1])):
        with open(part, encoding="utf-8") as f:
            records.extend(json.loads(line) for line in f if line.strip())
    return records


async def read_all(reader: Any, batch: int = 1000) -> list[Any]:
    """Every record a source reader returns until its end, ``batch`` at most per read (checked)."""
    out: list[Any] = []
    while (chunk := await reader.read(batch)) is not None:
        assert len(chunk) <= batch
        out.extend(chunk)
    return out
