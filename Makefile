# qedu: the two commands a newcomer needs.
#   make lab    create .venv if needed and open JupyterLab at lesson 00
#   make test   create .venv if needed and run the whole test suite
# Override the interpreter with `make lab PYTHON=python3.12`, the torch requirement with
# `make lab TORCH=torch` (e.g. to let pip pick a build for your platform).

PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.qedu-installed
PORT ?= 8888
PYTEST_ARGS ?=

.PHONY: lab test bench venv exercises html strip clean-venv help

help:
	@echo "make lab        open JupyterLab at lessons/00_welcome.ipynb (creates .venv first)"
	@echo "make test       run the whole test suite (creates .venv first)"
	@echo "make exercises  regenerate exercises/, solutions/ and nbgrader/source/ from exercise_sources/"
	@echo "make html       run every lesson and write a static, offline site to build/html/"
	@echo "make strip      strip outputs from every notebook"
	@echo "make bench      run the benchmark suite (writes benchmarks/results/)"

venv: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' || \
	  { echo "qedu needs Python 3.10 or newer; run e.g. 'make lab PYTHON=python3.11'"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install "$(TORCH)"
	$(BIN)/python -m pip install -e ".[test,browser,ref,teacher]"
	@# JupyterHub's proxy comes from npm (tests/test_classroom.py runs a real hub on 127.0.0.1)
	@if command -v npm >/dev/null 2>&1; then \
	  npm install --silent --no-audit --no-fund --prefix $(VENV)/node configurable-http-proxy@5.3.0; \
	else echo "npm not found: the JupyterHub test will skip (install Node.js to run it)"; fi
	touch $(STAMP)

lab: $(STAMP)
	@echo "Starting JupyterLab on http://127.0.0.1:$(PORT)/ - if no browser opens, copy the URL with the token printed below."
	$(BIN)/jupyter lab $(if $(filter 0,$(shell id -u)),--allow-root) --ServerApp.ip=127.0.0.1 --ServerApp.port=$(PORT) \
	  --ServerApp.root_dir=. --LabApp.default_url=/lab/tree/lessons/00_welcome.ipynb

test: $(STAMP)
	$(BIN)/python -m pytest -n 2 --dist loadfile $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python benchmarks/widgets.py
	$(BIN)/python benchmarks/quantizer_throughput.py
	$(BIN)/python benchmarks/gptq_speed.py
	$(BIN)/python benchmarks/lessons.py
	$(BIN)/python benchmarks/mixed_precision.py --quick
	$(BIN)/python benchmarks/browser_latency.py
	$(BIN)/python scripts/update_readme_map.py  # before the suite: a test checks README's table is current
	$(BIN)/python benchmarks/suite.py
	$(BIN)/python scripts/update_readme_map.py  # again, with the suite's time

exercises: $(STAMP)
	$(BIN)/python scripts/build_exercises.py

# Executes every lesson (a few minutes on 2 cores); the pages load scripts only from build/html/vendor/.
html: $(STAMP)
	$(BIN)/python scripts/build_html.py --out build/html

strip: $(STAMP)
	$(BIN)/python scripts/strip_notebooks.py

clean-venv:
	rm -rf $(VENV)
