"""Shared fixtures: every job-level test runs in-process and multi-process from one fixture."""

from __future__ import annotations

from pathlib import Path

import pytest
from support import JobRunner


@pytest.fixture(params=["in-process", "multi-process"])
def job_runner(request: pytest.FixtureRequest, tmp_path: Path) -> JobRunner:
    return JobRunner(request.param, tmp_path)
