# The workbench's commands. `make setup` is idempotent; `run` and `test` call it first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
USERS ?= 25
PROFILE ?= moksha
OUT ?= outputs

.PHONY: setup run test lint bench clean stack flow

setup: $(VENV)/.installed node_modules/.installed .cache/contracts/.built

# requirements.lock pins every Python package (all platforms, Python 3.11+); pip checks it
# against pyproject.toml in the same resolve.
$(VENV)/.installed: pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.lock -e '.[dev]'
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $@

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund
	touch $@

# Compiles the Solidity contracts with npm solc; cached by source hash under .cache/contracts.
.cache/contracts/.built: $(VENV)/.installed node_modules/.installed $(wildcard workbench/stack/contracts/*.sol)
	$(BIN)/python -m workbench.stack.compile
	mkdir -p .cache/contracts && touch $@

run: setup
	$(BIN)/python -m workbench notebook notebooks/run.ipynb --users $(USERS) --profile $(PROFILE) --output-dir $(OUT)

# The seed's 5-10 minute configuration (params/run-ms03.yaml): about 6 minutes.
.PHONY: run-ms03
run-ms03: setup
	$(BIN)/python -m workbench notebook notebooks/run.ipynb -f params/run-ms03.yaml --output-dir $(OUT)

test: setup
	$(BIN)/python -m pytest -q

# JupyterLab on 127.0.0.1 with the project's kernel (.venv, installed by setup); as root (a
# container) it needs --allow-root, which is passed only then.
.PHONY: lab
lab: setup
	$(BIN)/jupyter lab --ip=127.0.0.1 --no-browser $(if $(filter 0,$(shell id -u)),--allow-root)

# The same checks as .pre-commit-config.yaml: ruff (lint + format) and mypy on workbench/.
lint: setup
	$(BIN)/ruff check workbench tests benchmarks
	$(BIN)/ruff format --check workbench tests benchmarks
	$(BIN)/mypy

bench: setup
	$(BIN)/python benchmarks/flow.py
	$(BIN)/python benchmarks/driver.py
	$(BIN)/python benchmarks/sampler.py

# Re-pins requirements.lock after a change to pyproject.toml's dependencies (needs PyPI).
.PHONY: lock
lock:
	test -x $(BIN)/uv || $(BIN)/python -m pip install -q uv
	$(BIN)/uv pip compile -q --universal --python-version 3.11 pyproject.toml --extra dev -o requirements.lock

clean:
	rm -rf .cache outputs/*/ 
