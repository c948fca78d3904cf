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

.PHONY: setup setup-gpu run test lint test-fast verify-lock server server-stop deploy worker bench docs clean-resume s3-local

setup: $(STAMP)

# One resolve against the exact versions: torch 2.14.1 + torchvision 0.29.1 is one build
# for CPU and CUDA machines alike (docs/operations.md, "GPU machines").
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e ".[dev]"
	touch $@

# ONNX Runtime's CUDA and TensorRT providers (evaluate.runtimes: onnxruntime-cuda,
# onnxruntime-tensorrt) on a GPU machine. onnxruntime-gpu installs the same `onnxruntime` module
# as the CPU build, so it replaces it; `make setup` after a pyproject change brings the CPU build
# back, and this target swaps it again (docs/operations.md, "GPU machines").
setup-gpu: setup
	$(PY) -m pip uninstall -q -y onnxruntime onnxruntime-gpu
	$(PY) -m pip install -q --no-deps -c constraints.txt onnxruntime-gpu
	$(PY) -c "import onnxruntime as o; print('ONNX Runtime', o.__version__, o.get_available_providers())"

# Start the local dashboard server in the background, or reuse a running one. `server stop`
# first clears a PID file left by a server that died (reboot, kill), which would block the start.
server: setup
	@if $(VENV)/bin/prefect server status >/dev/null 2>&1; then \
		echo "Prefect server already running at $(PREFECT_API_URL)"; \
	else \
		$(VENV)/bin/prefect server stop >/dev/null 2>&1 || true; \
		$(VENV)/bin/prefect server start --background --host $(HOST) --port $(PORT) --analytics-off \
		&& $(VENV)/bin/prefect server status --wait --timeout 180; \
	fi

server-stop: setup
	$(VENV)/bin/prefect server stop

# --write-deps: new data or a model file of your own becomes a dvc.yaml dep (printed).
run: server
	$(VENV)/bin/slimline check --write-deps
	$(VENV)/bin/slimline run

# Work pools (cpu, gpu), the crash automation and the deployments in prefect.yaml,
# on the server at PREFECT_API_URL (`make server` for a local one). Idempotent.
deploy: setup
	$(VENV)/bin/slimline deploy

# A process worker for one pool. One per GPU: CUDA_VISIBLE_DEVICES=0 make worker POOL=gpu,
# CUDA_VISIBLE_DEVICES=1 make worker POOL=gpu, ... Each worker checks runs out into its
# own workspaces folder, so two workers on one machine never share a checkout, and takes
# one run at a time (--limit 1): one GPU, and no two runs of a deployment in one checkout.
POOL ?= cpu
WORKSPACES ?= $(HOME)/.slimline/workspaces/$(POOL)$(if $(CUDA_VISIBLE_DEVICES),-gpu$(CUDA_VISIBLE_DEVICES))
worker: setup
	SLIMLINE_WORKSPACES=$(WORKSPACES) PREFECT_FLOWS_HEARTBEAT_FREQUENCY=30 \
		$(VENV)/bin/prefect worker start --pool $(POOL) --type process --limit 1

# Two pytest workers (pytest-xdist), a test file each at a time: most end-to-end tests
# run on one core, and many wait on servers and subprocesses. The 15 slowest tests are
# listed at the end, so every run shows where the time goes.
# Lint first (a second), so that a style slip fails before minutes of tests.
test: setup lint
	$(PY) -m pytest -q -n 2 --dist loadfile --durations=15

lint: setup
	$(VENV)/bin/ruff check .

# The unit tests only (tests/unit): no DVC pipeline, no Prefect server; under a minute.
test-fast: setup
	$(PY) -m pytest -q -n 2 --dist loadfile tests/unit

# Does the committed dvc.lock reproduce on this CPU? Reruns the default chain up to quantize
# (prepare, train_baseline, distill, prune@*, quantize) in a fresh temporary copy and compares
# every data/ and models/ hash with dvc.lock, models/onnx included; exits non-zero on any
# difference. It is its own target, not a test, because the default chain takes minutes:
# tests/e2e/test_committed_lock.py covers prepare and train_baseline within `make test`, and
# the later stages' portability rests on this check (CI runs it after the tests).
verify-lock: setup
	$(PY) -m benchmarks.verify_lock

bench: setup
	$(PY) -m benchmarks.train_loop

# docs/params.md from the schema's descriptions, and docs/design.md's table of the stages
# each library file reruns from the import closures; a test fails when either is stale.
docs: setup
	$(PY) -m slimline.params_doc --write
	$(PY) -m slimline.codedeps_doc --write

# Drop interrupted-run checkpoints (they are also removed after every successful run).
clean-resume:
	rm -rf .slimline/resume

# A local S3-compatible server (moto) on 127.0.0.1 for trying the DVC remote; production
# uses AWS S3 or any S3-compatible store: run `slimline s3 bootstrap` with its --endpoint-url instead.
S3_PORT ?= 5555
S3_BUCKET ?= slimline
s3-local: setup
	@mkdir -p .slimline
	@if ! curl -fs http://127.0.0.1:$(S3_PORT)/moto-api/ >/dev/null 2>&1; then \
		nohup $(VENV)/bin/moto_server -H 127.0.0.1 -p $(S3_PORT) > .slimline/moto.log 2>&1 & \
		echo $$! > .slimline/moto.pid; \
		for i in $$(seq 50); do curl -fs http://127.0.0.1:$(S3_PORT)/moto-api/ >/dev/null 2>&1 && break; sleep 0.2; done; \
	fi
	AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing \
		$(VENV)/bin/slimline s3 bootstrap --bucket $(S3_BUCKET) --endpoint-url http://127.0.0.1:$(S3_PORT)
	$(VENV)/bin/dvc remote add -d --local -f storage s3://$(S3_BUCKET)/dvc
	$(VENV)/bin/dvc remote modify --local storage endpointurl http://127.0.0.1:$(S3_PORT)
	$(VENV)/bin/dvc remote modify --local storage access_key_id testing
	$(VENV)/bin/dvc remote modify --local storage secret_access_key testing
# Re-hash downloads: without it dvc pull checks out a corrupted object silently.
	$(VENV)/bin/dvc remote modify --local storage verify true
	@echo "DVC remote 'storage' -> s3://$(S3_BUCKET)/dvc on the local server (in .dvc/config.local, not in git)."
	@echo "Try: .venv/bin/dvc push   |   stop the server: kill \$$(cat .slimline/moto.pid)"
