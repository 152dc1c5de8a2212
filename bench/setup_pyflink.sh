#!/usr/bin/env bash
# Create bench/.venv-pyflink with PyFlink (apache-flink) 2.3.0, the baseline of bench/pyflink_nexmark.py.
#
# Idempotent: does nothing when the venv already imports the pinned version. Kept apart from the
# project's .venv so that PyFlink's heavy dependencies (apache-beam, pyarrow, pandas, pemja, ...)
# never leak into the engine's environment. apache-flink 2.3.0 ships wheels for CPython 3.9-3.12
# only, so the venv is made with python3.11 (override with PYTHON=...). PyFlink runs its mini-cluster
# on a JVM: `java` (11 or 17) must be on PATH or JAVA_HOME set; this script only checks that.
# stashflow itself is installed there too (editable, with its runtime dependencies): the benchmark's
# PyFlink job generates its events with connectors/nexmark.py and checks them with jobs/nexmark/reference.py,
# which import the engine.
set -euo pipefail

FLINK_VERSION="2.3.0"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$here/.venv-pyflink"
python="${PYTHON:-python3.11}"

if ! command -v java >/dev/null && [[ -z "${JAVA_HOME:-}" ]]; then
    echo "warning: no java on PATH and no JAVA_HOME: PyFlink installs but cannot run" >&2
fi

if [[ -x "$venv/bin/python" ]] \
    && "$venv/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('apache-flink') != '$FLINK_VERSION')" 2>/dev/null \
    && (cd / && "$venv/bin/python" -c "import connectors.nexmark") 2>/dev/null; then
    echo "apache-flink $FLINK_VERSION and stashflow already installed in $venv"
    exit 0
fi

[[ -x "$venv/bin/python" ]] || "$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet "apache-flink==$FLINK_VERSION"
"$venv/bin/python" -m pip install --quiet -e "$here/.."
"$venv/bin/python" -c "import pyflink, importlib.metadata as m; print('installed apache-flink', m.version('apache-flink'), 'in', '$venv')"
