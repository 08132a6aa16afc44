# Two commands a newcomer needs: `make run` and `make test`. Both install first (idempotent).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.metastream-installed
PYTEST_ARGS ?=
BENCH_ARGS ?=

.PHONY: setup run test lint bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml requirements/constraints.txt requirements/metagpt-runtime.txt scripts/setup.sh
	@PY=$(PY) bash scripts/setup.sh
	@touch $(STAMP)

run: setup
	@echo "==> starting bus, supervisor and gateway (honcho start); Ctrl-C stops everything"
	@$(BIN)/honcho start

test: setup
	@echo "==> running the test suite"
	@$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: setup
	@$(BIN)/ruff format --check .
	@$(BIN)/ruff check .
	@$(BIN)/mypy

bench: setup
	@$(BIN)/python -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) var
