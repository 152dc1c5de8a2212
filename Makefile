# stashflow developer tasks. `make help` lists them.
#
# Everything runs from the project's own virtualenv (.venv), which `make venv` creates and keeps in sync
# with pyproject.toml: a stamp file records the last install, so the (slow) pip step re-runs only when
# pyproject.toml changed. Works on a fresh clone on Debian with Python >= 3.11.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
.DELETE_ON_ERROR:
MAKEFLAGS += --no-builtin-rules

VENV := .venv
VENV_PY := $(VENV)/bin/python
VENV_BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# The interpreter that creates .venv: the first of these that is Python >= 3.11. Override with
# `make venv PYTHON=/path/to/python3.12`. Lazily expanded, so only targets that create .venv look for it.
PYTHON ?= $(shell for py in python3.13 python3.12 python3.11 python3; do \
	"$$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1 && { echo "$$py"; break; }; \
	done; true)

# `make demo`: a small corpus, the word-count job on two instances per step, the 10 most frequent words.
DEMO_WORDS := 300000
DEMO_CORPUS := demo-data/corpus
DEMO_OUT := demo-out/wordcount

# Extra arguments for pytest, e.g. `make test PYTEST_ARGS='-k codec -x'`, and for both benchmarks.
PYTEST_ARGS ?=
BENCH_ARGS ?=

.PHONY: help venv demo test lint bench bench-ft clean distclean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

venv: $(STAMP) ## create .venv and install stashflow with its dev extras (again only if pyproject.toml changed)

$(STAMP): pyproject.toml
	@if ! "$(VENV_PY)" -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1; then \
		py="$(PYTHON)"; \
		if [[ -z "$$py" ]] || ! "$$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1; then \
			echo "make venv: no Python >= 3.11 found (PYTHON='$$py'; tried python3.13, python3.12, python3.11," \
				"python3); install one (Debian: apt-get install python3 python3-venv) or pass PYTHON=/path/to/python" >&2; \
			exit 1; \
		fi; \
		echo "make venv: creating $(VENV) with $$py ($$("$$py" -c 'import sys; print(sys.version.split()[0])'))"; \
		if ! "$$py" -m venv --clear $(VENV); then \
			echo "make venv: '$$py -m venv' failed; on Debian the venv module is a separate package:" \
				"apt-get install python3-venv" >&2; \
			exit 1; \
		fi; \
	fi
	@echo "make venv: installing stashflow (editable) with its dev extras into $(VENV)"
	$(VENV_PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $@

demo: venv $(DEMO_CORPUS)/manifest.json ## run jobs/wordcount.py on a generated corpus and print the top 10 words
	rm -rf $(DEMO_OUT)
	$(VENV_BIN)/stashflow run jobs/wordcount.py -P input='$(DEMO_CORPUS)/*.txt' -P output=$(DEMO_OUT) --parallelism 2
	$(VENV_PY) scripts/top_words.py '$(DEMO_OUT)/part-*.jsonl' --top 10

# corpus.py writes its manifest last, so the manifest is there only once the corpus is complete: an
# interrupted run is redone (and corpus.py replaces its partial files).
$(DEMO_CORPUS)/manifest.json: | $(STAMP)
	$(VENV_PY) bench/corpus.py --words $(DEMO_WORDS) --out $(DEMO_CORPUS)

# docker-compose only serves tests/test_deployment.py and Chromium tests/test_dashboard_browser.py; each
# skips without it: installing them is best effort and never fails the target (as root, with apt-get).
# --no-install-recommends: the compose CLI, not the Docker engine. Playwright drives Debian's Chromium
# (/usr/bin/chromium); it never downloads a browser of its own.
test: venv ## run the test suite (installs Debian's docker-compose and chromium first when missing and possible)
	@missing=""; \
	if ! command -v docker-compose >/dev/null 2>&1 && ! docker compose version >/dev/null 2>&1; then \
		missing=" docker-compose"; fi; \
	if [[ ! -x /usr/bin/chromium ]]; then missing="$$missing chromium"; fi; \
	if [[ -n "$$missing" ]] && command -v apt-get >/dev/null 2>&1 && [[ "$$(id -u)" == 0 ]]; then \
		echo "make test: installing Debian's$$missing for tests/test_deployment.py and tests/test_dashboard_browser.py"; \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
			$$missing; } >/dev/null 2>&1 \
			|| echo "make test: could not install$$missing; the tests that need it will skip"; \
	fi
	$(VENV_BIN)/pytest -q -p no:cacheprovider $(PYTEST_ARGS)

# All three run even when one fails, so a single pass shows everything to fix.
lint: venv ## ruff check, ruff format --check, mypy
	@status=0; \
	for cmd in "ruff check ." "ruff format --check ." "mypy"; do \
		echo "$(VENV_BIN)/$$cmd"; $(VENV_BIN)/$$cmd || status=1; \
	done; \
	exit $$status

# The Bytewax baseline lives in a venv of its own; without it bench/wordcount.py reports Bytewax skipped.
bench: venv ## run the benchmarks: bench/wordcount.py, then bench/pipeline.py (BENCH_ARGS=--quick: 1M)
	bash bench/setup_bytewax.sh || echo "make bench: no Bytewax baseline; bench/wordcount.py will skip it" >&2
	$(VENV_PY) bench/wordcount.py $(BENCH_ARGS)
	$(VENV_PY) bench/pipeline.py $(BENCH_ARGS)

# One job under every --ft mode: throughput, latency at GCS delay 0 and 5 ms, a killed instance's recovery;
# ft.json, ft.md and plots in bench/out. Its --quick form is a test of `make test` (tests/test_bench_ft.py).
bench-ft: venv ## the fault-tolerance evaluation, every --ft mode (~5 min; BENCH_ARGS=--quick: ~75 s)
	$(VENV_BIN)/stashflow bench ft $(BENCH_ARGS)

clean: ## remove generated data, build output and caches (keeps .venv)
	rm -rf demo-data demo-out bench/out bench/data build dist
	rm -rf .pytest_cache .mypy_cache .ruff_cache .hypothesis
	find . \( -path ./.git -o -path ./$(VENV) -o -path ./bench/.venv-bytewax \) -prune \
		-o \( -name __pycache__ -o -name '*.egg-info' \) -type d -prune -exec rm -rf {} +

distclean: clean ## clean, and remove .venv and the Bytewax baseline's bench/.venv-bytewax too
	rm -rf $(VENV) bench/.venv-bytewax
