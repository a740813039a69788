# The README's two commands: `make demo` and `make test`. Each sets up what it needs
# itself on a fresh machine (virtualenv, packages, CPython 3.14, Go's pprof).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: demo test test-fast test-unit soak lint provision clean bench

$(STAMP): pyproject.toml setup.py $(wildcard Cargo-free/*.c Cargo-free/*.h)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

provision: $(STAMP)
	$(PY) tools/provision.py

demo: $(STAMP)
	$(PY) -m heapspy demo

# Everything but the soak versions of the stress tests: about 26 minutes on 2 cores.
test: provision lint
	$(PY) -m pytest -m 'not soak' $(PYTEST_ARGS)

# The quick loop while developing: no cycle or soak tests.
test-fast: provision lint
	$(PY) -m pytest -m 'not slow and not soak' $(PYTEST_ARGS)

# The stress tests at full length (100 racing attaches, 2,100 forks per interpreter...).
soak: provision lint
	$(PY) -m pytest -m soak $(PYTEST_ARGS)

# The pure parts alone (aggregator, top's view, rules, units, the pprof writer): seconds,
# no process started.
test-unit: $(STAMP)
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

# Overhead of an attached heapspy on pyperformance workloads (ratios; ~8 minutes).
bench: provision
	$(PY) benchmarks/overhead.py $(BENCH_ARGS)

lint: $(STAMP)
	$(PY) -m ruff check heapspy agent tests tools benchmarks setup.py
	$(PY) -m mypy

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache agent/heapspy_agent/_heapspy_shim*.so
