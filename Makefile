# Attribution engine. `make help` lists the targets.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
UV := $(VENV)/bin/uv
STAMP := $(VENV)/.installed
EXTRAS ?= all,dev
PYTEST_ARGS ?=
# Test files run two at a time: most wait on servers and processes, and each worker has its own.
PYTEST_WORKERS ?= 2
LIVE_ARGS ?=

export PYSPARK_PYTHON := $(abspath $(PY))
export PYSPARK_DRIVER_PYTHON := $(abspath $(PY))
export SPARK_LOCAL_IP := 127.0.0.1

.DEFAULT_GOAL := help
.PHONY: help setup demo live test test-unit lint format typecheck bench lock clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml constraints.txt scripts/system-deps.sh
	./scripts/system-deps.sh
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade uv
	$(UV) pip install --python $(PY) -c constraints.txt -e '.[$(EXTRAS)]'
	touch $(STAMP)

# The class-data archive Spark's drivers start from (batch/cds.py: about half a JVM's start-up CPU),
# recorded once (about a minute) before the suite, which starts dozens of Spark drivers; the demo
# does not wait for it. Only an optimisation: when it cannot be recorded, say so and go on.
ARCHIVE := $(VENV)/.spark-class-archive
$(ARCHIVE): $(STAMP)
	$(VENV)/bin/attribution batch class-archive || echo "warning: no Spark class-data archive (Spark starts without it)"
	touch $(ARCHIVE)

setup: $(STAMP) ## create .venv and install the project, its extras and system packages

demo: setup ## run the end-to-end demo on the embedded default and print the ROAS report
	$(VENV)/bin/attribution demo

live: setup ## run the production loop on this machine (broker, Redis, worker, lake sink, API, live traffic); Ctrl-C stops it
	$(VENV)/bin/attribution live $(LIVE_ARGS)

test: setup $(ARCHIVE) ## run the whole test suite (unit, integration, peer, e2e), PYTEST_WORKERS files side by side
	$(PY) -m pytest -n $(PYTEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

test-unit: setup ## run the fast pure tests only
	$(PY) -m pytest -m unit $(PYTEST_ARGS)

lint: setup ## ruff lint and format check, and the import layers (import-linter)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

format: setup ## apply ruff's formatting and safe fixes
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

typecheck: setup ## mypy strict on the packages
	$(VENV)/bin/mypy

bench: setup ## run the benchmarks; each prints its figure and a ratio against a baseline
	$(PY) -m benchmarks $(BENCH)

lock: ## refreeze constraints.txt from the current environment
	$(UV) pip freeze --python $(PY) --exclude-editable | grep -v '^attribution-engine' > constraints.txt

clean: ## remove the virtualenv and caches
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis var
