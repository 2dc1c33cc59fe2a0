# Quickstart: `make run` (set up + dvc repro on the default data), `make test` (set up + the test suite).
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
export PATH := $(abspath $(BIN)):$(PATH)
export DVC_NO_ANALYTICS := 1

.PHONY: setup run test test-fast lint

$(BIN)/dvc: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[tests]'
	touch $@

setup: $(BIN)/dvc

run: setup
	dvc repro

test: setup
	pytest

test-fast: setup
	pytest -m "not slow"

lint: setup
	ruff check tasks flows tests benchmarks
