# Slimline: `make run` runs the pipeline on the packaged MNIST digits, `make test` tests it.
# Every target sets itself up: a venv in .venv with the exact versions in constraints.txt.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 4200
# Server state (SQLite) stays inside the repo, in the ignored .prefect/.
export PREFECT_HOME ?= $(CURDIR)/.prefect
export PREFECT_API_URL ?= http://$(HOST):$(PORT)/api
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export DVC_NO_ANALYTICS := 1

.PHONY: setup run test server server-stop bench clean-resume

setup: $(STAMP)

# torch first, alone: a looser resolve could pull a multi-GB CUDA build on a CPU machine.
# For a GPU machine, see README ("GPU machines").
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0 $(TORCH_INDEX)
	$(PY) -m pip install -q -c constraints.txt -e ".[dev]"
	touch $@

# Start the local dashboard server in the background, or reuse a running one.
server: setup
	@if $(VENV)/bin/prefect server status >/dev/null 2>&1; then \
		echo "Prefect server already running at $(PREFECT_API_URL)"; \
	else \
		$(VENV)/bin/prefect server start --background --host $(HOST) --port $(PORT) --analytics-off \
		&& $(VENV)/bin/prefect server status --wait --timeout 180; \
	fi

server-stop: setup
	$(VENV)/bin/prefect server stop

run: server
	$(PY) -m tasks.params
	$(PY) -m flows.pipeline

test: setup
	$(PY) -m pytest -q

bench: setup
	$(PY) -m benchmarks.train_loop

# Drop interrupted-run checkpoints (they are also removed after every successful run).
clean-resume:
	rm -rf .slimline/resume
