# Two commands do all the set-up: `make run` and `make test` (see README.md).
PYTHON ?= python3
VENV ?= .venv
BIN := $(abspath $(VENV))/bin
export PATH := $(BIN):$(PATH)

.PHONY: run test install generate check-generated lint typecheck pytest bench clean

$(VENV)/.installed: pyproject.toml
	@echo "==> installing Tally and its dev tools into $(VENV)"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --editable '.[dev]'
	@touch $@

install: $(VENV)/.installed

## run: serve Tally on the embedded default (SQLite in .tally/, gRPC on 127.0.0.1:50051)
run: install
	$(BIN)/tally serve

## test: every check CI runs: fresh generated code, buf lint, ruff, mypy, then pytest
test: check-generated lint typecheck pytest

## generate: regenerate generated/ from protos/ (commit the result)
generate: install
	$(BIN)/python tools/gen_protos.py

check-generated: install
	$(BIN)/python tools/gen_protos.py --check

lint: check-generated
	@echo "==> buf lint"
	$(BIN)/buf lint
	@echo "==> ruff"
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	@echo "==> import-linter (layers)"
	$(BIN)/lint-imports --no-cache

typecheck: install
	@echo "==> mypy"
	$(BIN)/mypy

pytest: install
	@echo "==> pytest"
	$(BIN)/python -m pytest $(PYTEST_ARGS)

## bench: throughput and latency against loopback (needs h2load: apt-get install nghttp2-client)
bench: install
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) build .tally .pytest_cache .mypy_cache .ruff_cache
