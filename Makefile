# Two commands do all the set-up: `make run` and `make test` (see README.md).
PYTHON ?= python3
VENV ?= .venv
BIN := $(abspath $(VENV))/bin
export PATH := $(BIN):$(PATH)

.PHONY: run test install generate check-generated check-contracts contracts-baseline lint typecheck pytest bench clean

# The stubs' distribution (clients/python-protos, tally-protos) first: it is on no package index,
# so pip must find it installed when it resolves the server's and the client's dependency on it.
$(VENV)/.installed: pyproject.toml clients/python-protos/pyproject.toml clients/python/pyproject.toml
	@echo "==> installing Tally, its stubs, its Python client and the dev tools into $(VENV)"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --editable clients/python-protos
	$(BIN)/python -m pip install --quiet --editable '.[dev]'
	$(BIN)/python -m pip install --quiet --editable clients/python
	@touch $@

# buf resolves the Google imports from build/proto-deps (git-ignored, buf.yaml's second module),
# staged from the installed googleapis-common-protos: after `make install`, plain `buf lint` works.
PROTO_DEPS_DIR := build/proto-deps
PROTO_DEPS := $(PROTO_DEPS_DIR)/google/api/annotations.proto
# Order-only: staged once (gen_protos.py restages on every generation and check anyway).
$(PROTO_DEPS): | $(VENV)/.installed
	$(BIN)/python tools/gen_protos.py --stage $(PROTO_DEPS_DIR)

install: $(VENV)/.installed $(PROTO_DEPS)

## run: serve Tally on the embedded default (SQLite in .tally/, gRPC on 127.0.0.1:50051)
run: install
	$(BIN)/tally serve

## test: every check CI runs: fresh generated code, the contract baseline, buf lint, ruff, mypy, pytest
test: check-generated check-contracts lint typecheck pytest

## generate: regenerate generated/ from protos/ (commit the result)
generate: install
	$(BIN)/python tools/gen_protos.py

check-generated: install
	$(BIN)/python tools/gen_protos.py --check

## check-contracts: fail when protos/ breaks protos/baseline.txtpb, or changed without a new baseline
check-contracts: install
	$(BIN)/python tools/contracts.py check

## contracts-baseline: rewrite protos/baseline.txtpb (a break needs BREAK=1); commit it with the change
contracts-baseline: install
	$(BIN)/python tools/contracts.py baseline $(if $(BREAK),--allow-break)

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

# Worker processes for pytest (pytest-xdist; 0 runs it in one process). Whole files go to one
# worker, in the order tests/conftest.py puts them (longest first); a crashed worker fails the run
# instead of being replaced. Tests marked `alone` run afterwards, in one process.
PYTEST_WORKERS ?= 4

pytest: install
	@echo "==> pytest ($(PYTEST_WORKERS) workers)"
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder --max-worker-restart 0 \
		-m "not alone" $(PYTEST_ARGS)
	@echo "==> pytest: the tests marked alone"
	$(BIN)/python -m pytest -m alone $(PYTEST_ARGS) || [ $$? -eq 5 ]  # 5: PYTEST_ARGS left none of them

## bench: throughput and latency against loopback (needs h2load: apt-get install nghttp2-client)
bench: install $(VENV)/.bench-installed
	$(BIN)/python bench/run.py

# The bench's own extra (the FastAPI baseline); `make run` and `make test` do not need it.
$(VENV)/.bench-installed: pyproject.toml | $(VENV)/.installed
	$(BIN)/python -m pip install --quiet --editable '.[dev,bench]'
	@touch $@

clean:
	rm -rf $(VENV) build .tally .pytest_cache .mypy_cache .ruff_cache
