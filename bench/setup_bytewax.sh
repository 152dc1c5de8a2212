#!/usr/bin/env bash
# Create bench/.venv-bytewax with Bytewax 0.21.1, the baseline of bench/wordcount.py.
#
# Idempotent: does nothing when the venv already imports the pinned version. Kept apart from the
# project's .venv so that Bytewax's dependencies never leak into the engine's environment.
set -euo pipefail

BYTEWAX_VERSION="0.21.1"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$here/.venv-bytewax"
python="${PYTHON:-python3}"

if [[ -x "$venv/bin/python" ]] \
    && "$venv/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('bytewax') != '$BYTEWAX_VERSION')" 2>/dev/null; then
    echo "bytewax $BYTEWAX_VERSION already installed in $venv"
    exit 0
fi

"$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet "bytewax==$BYTEWAX_VERSION"
"$venv/bin/python" -c "import bytewax, importlib.metadata as m; print('installed bytewax', m.version('bytewax'), 'in', '$venv')"
