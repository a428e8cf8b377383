# The two Quickstart commands are `make demo` and `make test`; both create/reuse ./.venv.
export RAY_USAGE_STATS_ENABLED := 0
export MLFLOW_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := 1
VENV := .venv/bin
# Test files run on this many pytest-xdist workers (a file stays on one worker, so module
# fixtures such as a Ray head start once). Most test time is spent waiting for Ray processes
# to start, so 2 workers help even on 2 cores; each worker starts its own local Ray instance.
TEST_WORKERS ?= 2

.PHONY: venv demo test test-unit lint format bench

venv:
	@bash scripts/setup-venv.sh

demo: venv
	$(VENV)/bratslab demo

test: venv
	$(VENV)/python -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder tests

test-unit: venv
	$(VENV)/python -m pytest tests/unit

lint: venv
	$(VENV)/ruff check . && $(VENV)/ruff format --check .

format: venv
	$(VENV)/ruff format . && $(VENV)/ruff check --fix .

bench: venv
	$(VENV)/python benchmarks/run_all.py
