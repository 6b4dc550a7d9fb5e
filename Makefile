# Every target creates .venv on first use: plain `python3 -m venv`, then the locked set via uv.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
UV_VERSION := 0.13.9

.PHONY: run api worker cluster test psql dbos audit chaos bench lint format lock clean

run: $(VENV)/.synced
	$(PY) -m api

# Split mode: API processes that only enqueue, and workers that run the sagas (README).
api: $(VENV)/.synced
	PROCESS_ROLE=api $(PY) -m api

worker: $(VENV)/.synced
	@test -n "$(ID)" || { echo "usage: make worker ID=w1 (a unique, stable executor id)"; exit 2; }
	PROCESS_ROLE=worker EXECUTOR_ID=$(ID) PORT=$(or $(PORT),0) $(PY) -m api

cluster: $(VENV)/.synced
	WORKERS=$(or $(WORKERS),2) $(PY) -m runtime.cluster

test: $(VENV)/.synced
	$(PY) -m pytest $(PYTEST_ARGS)

psql: $(VENV)/.synced
	$(PY) -m runtime.psql

# DBOS's own CLI on the database in use, e.g. make dbos ARGS="workflow list"
dbos: $(VENV)/.synced
	$(PY) -m runtime.dbos_cli $(ARGS)

audit: $(VENV)/.synced
	$(PY) -m orders.audit

chaos: $(VENV)/.synced
	$(PY) -m chaos

bench: $(VENV)/.synced
	$(PY) -m bench

lint: $(VENV)/.synced
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

format: $(VENV)/.synced
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

lock: $(VENV)/.synced
	$(VENV)/bin/uv lock

$(VENV)/.synced: pyproject.toml uv.lock
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11) and "Python 3.11+ is required (set PYTHON=...)")'
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	@test -x $(VENV)/bin/uv || $(VENV)/bin/python -m pip install --quiet uv==$(UV_VERSION)
	$(VENV)/bin/uv sync --frozen --quiet
	@touch $@

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
