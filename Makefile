# Two commands a newcomer needs: `make run` and `make test`. Both install first (idempotent).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.metastream-installed
PYTEST_ARGS ?=
BENCH_ARGS ?=

.PHONY: setup run cluster test test-slow test-postgres test-cluster lint bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml requirements/constraints.txt requirements/metagpt-runtime.txt scripts/setup.sh
	@PY=$(PY) bash scripts/setup.sh
	@touch $(STAMP)

run: setup
	@echo "==> starting bus, supervisor and gateway (honcho start); Ctrl-C stops everything"
	@$(BIN)/honcho start

# Two nodes on this machine (PostgreSQL, one CURVE bus on tcp, supervisors a and b, gateways on
# :8001 and :8002), see docs/deploy.md; state under var/cluster.
cluster: setup
	@$(BIN)/python -m bench.cluster_dev prepare var/cluster
	@echo "==> gateways at http://127.0.0.1:8001 (node a) and http://127.0.0.1:8002 (node b)"
	@$(BIN)/honcho -f Procfile.cluster -e var/cluster/cluster.env start

test: setup
	@echo "==> running the test suite (CI also runs make test-slow, test-postgres, test-cluster)"
	@$(BIN)/python -m pytest -m "not postgres and not slow and not cluster" $(PYTEST_ARGS)

# The long end-to-end runs (100,000 events through three clients, the bench and curve smoke runs,
# a MetaGPT task from the browser, zygote death): minutes each, kept apart so that `make test`
# stays under ~20 minutes on two cores.
test-slow: setup
	@echo "==> running the slow end-to-end tests"
	@$(BIN)/python -m pytest -m "slow and not postgres and not cluster" $(PYTEST_ARGS)

# The store, event-log, log-reader, outbox and end-to-end tests again on a real PostgreSQL
# server the session starts itself (kept apart so that `make test` stays under ~20 minutes).
test-postgres: setup
	@echo "==> running the PostgreSQL tests"
	@$(BIN)/python -m pytest -m "postgres and not cluster" $(PYTEST_ARGS)

# Several nodes as real processes (one PostgreSQL, a CURVE bus on tcp, two supervisors and two
# gateways): claims, node death, fencing, cross-node cancel (tests/cluster, docs/deploy.md).
test-cluster: setup
	@echo "==> running the cluster tests"
	@$(BIN)/python -m pytest -m cluster $(PYTEST_ARGS)

lint: setup
	@$(BIN)/ruff format --check .
	@$(BIN)/ruff check .
	@$(BIN)/mypy

bench: setup
	@$(BIN)/python -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) var
