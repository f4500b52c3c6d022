# fedagg: `make demo` runs the main job, `make test` runs every check. Both set up what they need.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The demo needs the aggregator (the server extra) only, not the dev tools: its own stamp in the same venv.
DEMO_STAMP := $(VENV)/.installed-server

.PHONY: demo test lint typecheck protos bench bench-aggregation image system-deps clean dist

$(BIN)/python:
	@echo "creating the virtual environment $(VENV)"
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[server,dev]'
	touch $@

$(DEMO_STAMP): pyproject.toml constraints.txt | $(BIN)/python
	@echo "installing fedagg and its server extra (what the demo needs, pinned by constraints.txt) into $(VENV)"
	$(BIN)/python -m pip install --progress-bar off -c constraints.txt -e '.[server]'
	touch $@

demo: $(DEMO_STAMP)
	$(BIN)/fedagg demo

# The wheel to install fedagg from until a release is published (built with the venv's setuptools, offline):
# pip install dist/fedagg-*.whl on collaborator sites, 'fedagg[server] @ file://...' or the wheel plus
# the server extra's packages for the aggregator (see README, Quick start).
dist: $(STAMP)
	rm -rf dist build
	$(BIN)/python -m pip wheel --quiet --no-deps --no-build-isolation --wheel-dir dist .
	rm -rf build
	ls dist/*.whl

system-deps:
	bash scripts/install-system-deps
	bash scripts/install-container-tools

image: $(STAMP)
	bash scripts/build-image

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

test: $(STAMP) system-deps lint typecheck
	$(BIN)/python -m pytest

protos: $(STAMP)
	$(BIN)/python scripts/gen-protos

bench: $(STAMP)
	$(BIN)/python -m bench

# Peak server memory with each aggregation method, 16 collaborators x 64 MiB (bench/aggregation.md).
bench-aggregation: $(STAMP)
	$(BIN)/python -m bench.aggregation

clean:
	rm -rf $(VENV) .venv-openfl .venv-openfl-* .venv-flower .venv-dp-accounting .mypy_cache .ruff_cache .pytest_cache
