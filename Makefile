# Two commands a newcomer needs: `make run` and `make test`. Both install first (idempotent).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.metastream-installed
PYTEST_ARGS ?=
BENCH_ARGS ?=

.PHONY: setup run test test-slow test-postgres lint bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml requirements/constraints.txt requirements/metagpt-runtime.txt scripts/setup.sh
	@PY=$(PY) bash scripts/setup.sh
	@touch $(STAMP)

run: setup
	@echo "==> starting bus, supervisor and gateway (honcho start); Ctrl-C stops everything"
	@$(BIN)/honcho start

test: setup
	@echo "==> running the test suite (CI also runs make test-slow and make test-postgres)"
	@$(BIN)/python -m pytest -m "not postgres and not slow" $(PYTEST_ARGS)

# The long end-to-end runs (100,000 events through three clients, the bench and curve smoke runs,
# a MetaGPT task from the browser, zygote death): minutes each, kept apart so that `make test`
# stays under ~20 minutes on two cores.
test-slow: setup
	@echo "==> running the slow end-to-end tests"
	@$(BIN)/python -m pytest -m "slow and not postgres" $(PYTEST_ARGS)

# The store, event-log, log-reader, outbox and end-to-end tests again on a real PostgreSQL
# server the session starts itself (kept apart so that `make test` stays under ~20 minutes).
test-postgres: setup
	@echo "==> running the PostgreSQL tests"
	@$(BIN)/python -m pytest -m postgres $(PYTEST_ARGS)

lint: setup
	@$(BIN)/ruff format --check .
	@$(BIN)/ruff check .
	@$(BIN)/mypy

bench: setup
	@$(BIN)/python -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) var
