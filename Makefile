# Two entry points for a fresh machine: `make demo` and `make test`.
# Everything they need is installed into ./.venv from PyPI by this file: `make demo` (and `make install`)
# only the runtime dependencies, `make test` and the other developer targets the test toolchain on top.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# the runtime install (`pip install -e .`) and the test toolchain (`.[test]`), each remembered by a stamp
RUNTIME_STAMP := $(VENV)/.installed-runtime
STAMP := $(VENV)/.installed

.PHONY: demo test lint unit install clean bench

$(VENV)/bin/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(RUNTIME_STAMP): pyproject.toml | $(VENV)/bin/python
	$(BIN)/pip install --quiet -e .
	touch $(RUNTIME_STAMP)

$(STAMP): pyproject.toml | $(VENV)/bin/python
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

## Install what `provisioner` needs to run (the demo, the operator commands); no test toolchain.
install: $(RUNTIME_STAMP)

## Run the provisioner against the embedded simulated Vast.ai (no API key, no Redis, no root).
demo: $(RUNTIME_STAMP)
	$(BIN)/provisioner demo

## Lint, type-check, check the import rules and run the whole test suite (unit and integration) with
## branch coverage printed.
test: $(STAMP)
	$(BIN)/ruff check provisioner tests bench
	$(BIN)/ruff format --check provisioner tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/pytest -q -p no:cacheprovider -n 4 --cov=provisioner --cov-branch --cov-report=term:skip-covered

## The benchmarks of docs/performance.md (about 45 minutes, most of it bench 4's fleet sweep; prints tables, saves plots under docs/img).
bench: $(STAMP)
	$(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/python -m bench

lint: $(STAMP)
	$(BIN)/ruff check provisioner tests bench
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest -q tests/unit

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
