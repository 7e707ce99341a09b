# `make run` serves the API locally; `make test` runs the whole suite. Both set up .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test lint check clean startup lock rename migration
# The whole suite with coverage (floor: 90 % of app/, set in pyproject.toml). For a subset, drop the
# floor: make test PYTEST_ARGS=tests/test_tasks.py COVERAGE=
COVERAGE ?= --cov --cov-report=term-missing:skip-covered
# Two workers (pytest-xdist), each with its own embedded PostgreSQL: most of the suite waits on
# servers and subprocesses, so two CPUs finish it in about two thirds of the time. WORKERS=0: one process.
WORKERS ?= 2

# uv makes .venv and installs exactly what uv.lock pins (the runtime and the dev group), from PyPI.
# The uv on your PATH is used; without one, UV_VERSION is fetched once with pip into .uv/.
UV_VERSION := 0.13.9
UV ?= $(or $(shell command -v uv 2>/dev/null),$(CURDIR)/.uv/bin/uv)
export UV

$(BIN)/.installed: pyproject.toml uv.lock | $(UV)
	@echo "installing uv.lock into $(VENV) with $(UV)"
	@$(UV) sync --locked --quiet --compile-bytecode --python $(PYTHON)
	@touch $@

$(CURDIR)/.uv/bin/uv:
	@echo "no uv on PATH: fetching uv $(UV_VERSION) from PyPI into .uv/"
	@$(PYTHON) -m pip install --quiet --quiet --disable-pip-version-check --root-user-action=ignore \
		--no-warn-script-location --target=.uv uv==$(UV_VERSION)

run: $(BIN)/.installed
	$(BIN)/python scripts/run_local.py

# WORKERS given on make's command line is also exported to the recipe, where every server the tests
# start would read it as functions-framework's worker count: WORKERS=0 would serve nothing.
test: $(BIN)/.installed
	env -u WORKERS $(BIN)/python -m pytest -n $(WORKERS) $(COVERAGE) $(PYTEST_ARGS)

lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

check: lint test

clean:
	rm -rf $(VENV) .uv .data .pytest_cache .mypy_cache .ruff_cache .coverage htmlcov

# After editing the dependencies in pyproject.toml: re-resolve uv.lock, export its runtime part to
# requirements.txt (what the function's build installs) and, with hashes, to requirements-locked.txt
# (what the deploy build's migrator installs, --require-hashes), reinstall. LOCK_ARGS=--upgrade also moves every
# pin pyproject.toml leaves free to its newest release.
lock: | $(UV)
	$(UV) lock --quiet --python $(PYTHON) $(LOCK_ARGS)
	$(UV) export --frozen --quiet --no-dev --no-hashes --no-emit-project --output-file=requirements.txt
	$(UV) export --frozen --quiet --no-dev --no-emit-project --output-file=requirements-locked.txt
	$(UV) sync --locked --quiet --compile-bytecode --python $(PYTHON)
	@touch $(BIN)/.installed

# Autogenerate the next migration from the tables in app/<resource>/models.py: make migration NAME="add comments"
migration: $(BIN)/.installed
	$(BIN)/python scripts/new_migration.py "$(NAME)"

# Give the service your name in every place that carries it: make rename NAME=orders-api
rename:
	$(PYTHON) scripts/rename.py $(NAME)

startup: $(BIN)/.installed
	$(BIN)/python scripts/measure_startup.py

# `make replay`: every gcloud call of the deploy tests through the released Google Cloud CLI, offline,
# and the release it used (must be cloudbuild.yaml's _GCLOUD_VERSION). Needs the CLI unpacked in
# GCLOUD_SDK (docs/operations.md, "Bumping the pinned images"); not part of `make test`.
GCLOUD_SDK ?= /tmp/gcloud-sdk
GCLOUD_REPLAY ?= ../shared/tools/gcloud_replay.py
.PHONY: replay
replay: $(BIN)/.installed
	env -u WORKERS GCLOUD_SDK=$(GCLOUD_SDK) GCLOUD_REPLAY=$(GCLOUD_REPLAY) $(BIN)/python tests/replay.py

# `make bench`: this service against four peers, three runs, medians, targets and a profile (docs/benchmarks.md).
# Quick look: make bench BENCH_RUNS=1 BENCH_DURATION_S=2 (every knob: docs/benchmarks.md).
.PHONY: bench
bench: $(BIN)/.installed
	$(UV) pip install --quiet --python=$(BIN)/python -r bench/requirements.txt
	$(BIN)/python bench/run.py

# `make instructions`: instructions per request under callgrind, steadier than timings (bench/instructions.py).
.PHONY: instructions
instructions: $(BIN)/.installed
	$(UV) pip install --quiet --python=$(BIN)/python -r bench/requirements.txt
	$(BIN)/python bench/instructions.py

# `make scale`: many instances against too few connection slots; the 503 rate at twice the budget (docs/scaling.md).
.PHONY: scale
scale: $(BIN)/.installed
	$(BIN)/python bench/scale.py

# `make soak`: 60 s at 64 connections, mixed reads and writes; fails on any error or memory growth.
.PHONY: soak
soak: $(BIN)/.installed
	$(UV) pip install --quiet --python=$(BIN)/python -r bench/requirements.txt
	$(BIN)/python bench/soak.py
