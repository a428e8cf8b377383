# The two Quickstart commands are `make demo` and `make test`; both create/reuse ./.venv.
export RAY_USAGE_STATS_ENABLED := 0
export MLFLOW_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := 1
VENV := .venv/bin

.PHONY: venv demo test test-unit lint format bench

venv:
	@bash scripts/setup-venv.sh

demo: venv
	$(VENV)/bratslab demo

test: venv
	$(VENV)/python -m pytest tests

test-unit: venv
	$(VENV)/python -m pytest tests/unit

lint: venv
	$(VENV)/ruff check . && $(VENV)/ruff format --check .

format: venv
	$(VENV)/ruff format . && $(VENV)/ruff check --fix .

bench: venv
	$(VENV)/python benchmarks/run_all.py
