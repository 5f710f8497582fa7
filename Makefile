# `make demo` and `make test` work on a fresh machine: they create .venv, install, then run.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# CPU torch first: a bare `torch` requirement would pull a multi-GB CUDA build.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/lightning-green fit

test: $(STAMP)
	$(VENV)/bin/ruff check lightning_green tests benchmarks examples
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check lightning_green tests benchmarks examples

bench: $(STAMP)
	$(PY) benchmarks/energy_overhead.py
	$(PY) benchmarks/amp_schedule.py
	$(PY) benchmarks/pruning.py
	$(PY) benchmarks/power_limit.py
	$(PY) benchmarks/green_recipe.py

clean:
	rm -rf $(VENV) lightning_logs
