"""engine.allocator: glibc's trim threshold and top pad, set unless the operator set their own."""

import subprocess
import sys

import pytest
from support import ROOT

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc tuning is Linux-only")


def _tune_in_child(env: dict[str, str]) -> str:
    code = "from engine import allocator; print(allocator.tune())"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env={"PATH": "/usr/bin:/bin", **env},
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    return done.stdout.strip()


def test_tune_sets_the_allocator_on_glibc():
    # a fresh interpreter: the test process's own allocator stays as it is
    assert _tune_in_child({}) == "True"


def test_the_operators_own_malloc_settings_win():
    assert _tune_in_child({"MALLOC_TOP_PAD_": "1048576"}) == "False"
    assert _tune_in_child({"MALLOC_TRIM_THRESHOLD_": "1048576"}) == "False"
