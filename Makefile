# Quickstart: `make run` (set up + dvc repro on the default data), `make test` (set up + the test suite).
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
export PATH := $(abspath $(BIN)):$(PATH)
export DVC_NO_ANALYTICS := 1

.PHONY: setup run test test-fast lint plots-template services-up services-down

# what the pipeline needs
$(BIN)/dvc: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e .
	touch $@

# and what only the tests need (pytest, Hypothesis, ruff, the JAX and PyTorch Keras backends)
$(BIN)/pytest: $(BIN)/dvc
	$(BIN)/pip install --quiet -c constraints.txt -e '.[tests]'
	touch $@

setup: $(BIN)/dvc

run: setup
	dvc repro

test: $(BIN)/pytest
	pytest

test-fast: $(BIN)/pytest
	pytest -m "not slow"

lint: $(BIN)/pytest
	ruff check tasks flows services tests benchmarks architectures

# `dvc plots show`'s offline page template (.dvc/plots/offline.html, committed): remade from the pinned package only
# when vl-convert-python is upgraded
plots-template: $(BIN)/dvc
	$(BIN)/pip install --quiet -c constraints.txt -e '.[plots-template]'
	$(BIN)/python -m tasks.plots_template

# the shared services on loopback (docs/remote-services.md): PostgreSQL, an MLflow tracking server, a Prefect server
# with a work pool of two workers, an SSH DVC remote; all state in .services/. Prints the variables to export.
services-up: $(BIN)/dvc
	$(BIN)/pip install --quiet -c constraints.txt -e '.[services]'
	$(BIN)/python -m services.stack up

# stops all of it and checks nothing is left running (the data stays in .services/ for the next services-up)
services-down:
	$(BIN)/python -m services.stack down
