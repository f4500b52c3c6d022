# fedagg: `make demo` runs the main job, `make test` runs every check. Both set up what they need.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck protos bench bench-aggregation image system-deps clean dist

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[server,dev]'
	touch $@

demo: $(STAMP)
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
