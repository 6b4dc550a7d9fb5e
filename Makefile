# Every target creates .venv on first use: plain `python3 -m venv`, then the locked set via uv.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
UV_VERSION := 0.13.9

.PHONY: run api worker cluster test browser screenshots psql dbos audit chaos bench lint format lock clean

run: $(VENV)/.synced
	$(PY) -m api

# Split mode: API processes that only enqueue, and workers that run the sagas (docs/SCALING.md).
api: $(VENV)/.synced
	PROCESS_ROLE=api $(PY) -m api

worker: $(VENV)/.synced
	@test -n "$(ID)" || { echo "usage: make worker ID=w1 (a unique, stable executor id)"; exit 2; }
	PROCESS_ROLE=worker EXECUTOR_ID=$(ID) PORT=$(or $(PORT),0) $(PY) -m api

cluster: $(VENV)/.synced
	WORKERS=$(or $(WORKERS),2) $(PY) -m runtime.cluster

test: $(VENV)/.synced browser
	$(PY) -m pytest $(PYTEST_ARGS)

# The console's browser tests run in Debian's Chromium; installed here when missing and
# this is root (CI on a fresh machine), else how to install it is printed.
browser:
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing chromium and chromium-driver (the browser tests)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	      apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null; \
	  else \
	    echo "the browser tests need Chromium: sudo apt-get install chromium chromium-driver"; \
	    exit 1; \
	  fi; \
	fi

# The README's screenshots of the console, taken by its browser tests.
screenshots: $(VENV)/.synced browser
	SCREENSHOTS_DIR=docs $(PY) -m pytest tests/console/test_browser.py -n 0 -q

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
	$(VENV)/bin/uv sync --frozen --quiet --compile-bytecode
	$(PY) -m compileall -q -j 0 api bench chaos cli console migrations orders runtime services steps workflows >/dev/null
	@touch $@

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
