# `make run` serves the API locally; `make test` runs the whole suite. Both set up .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test lint check clean startup lock rename migration
# The whole suite with coverage (floor: 90 % of app/, set in pyproject.toml). For a subset, drop the
# floor: make test PYTEST_ARGS=tests/test_tasks.py COVERAGE=
COVERAGE ?= --cov --cov-report=term-missing:skip-covered

$(BIN)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

run: $(BIN)/.installed
	$(BIN)/python scripts/run_local.py

test: $(BIN)/.installed
	$(BIN)/python -m pytest $(COVERAGE) $(PYTEST_ARGS)

lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

check: lint test

clean:
	rm -rf $(VENV) .data .pytest_cache .mypy_cache .ruff_cache .coverage htmlcov

# Re-pin requirements.txt (what Cloud Functions installs) from requirements.in, then reinstall.
lock: $(BIN)/.installed
	$(BIN)/pip-compile --quiet --strip-extras --allow-unsafe --no-emit-index-url --no-emit-find-links \
		--output-file=requirements.txt requirements.in
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt

# Autogenerate the next migration from app/models.py: make migration NAME="add comments"
migration: $(BIN)/.installed
	$(BIN)/python scripts/new_migration.py "$(NAME)"

# Give the service your name in every place that carries it: make rename NAME=orders-api
rename: $(BIN)/.installed
	$(BIN)/python scripts/rename.py $(NAME)

startup: $(BIN)/.installed
	$(BIN)/python scripts/measure_startup.py

# `make bench`: this service against four peers, three runs, medians, targets and a profile (docs/benchmarks.md).
# Quick look: make bench BENCH_RUNS=1 BENCH_DURATION_S=2 (every knob: docs/benchmarks.md).
.PHONY: bench
bench: $(BIN)/.installed
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r bench/requirements.txt
	$(BIN)/python bench/run.py

# `make scale`: many instances against too few connection slots; the 503 rate at twice the budget (docs/scaling.md).
.PHONY: scale
scale: $(BIN)/.installed
	$(BIN)/python bench/scale.py

# `make soak`: 60 s at 64 connections, mixed reads and writes; fails on any error or memory growth.
.PHONY: soak
soak: $(BIN)/.installed
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r bench/requirements.txt
	$(BIN)/python bench/soak.py
