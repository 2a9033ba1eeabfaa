# Entry points, each self-contained on a fresh machine (Python >= 3.10, nothing installed):
#   make demo        set up .venv, then embed real text offline and print/write the report
#   make test        set up .venv, then run the whole test suite (what .ci/run calls)
#   make test-fast   the suite without the tests marked slow, for local loops
#   make lint        ruff check and format check
# TORCH_SPEC pins the CPU build that the project's machines carry; elsewhere install torch as
# PyTorch documents for your hardware, e.g. `make TORCH_SPEC=torch test`.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: demo test test-fast lint setup

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install -q --disable-pip-version-check "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q --disable-pip-version-check -e ".[test,ray]"
	touch $@

setup: $(BIN)/.installed

demo: setup
	HF_HUB_OFFLINE=1 $(BIN)/python examples/demo.py --out out

test: setup
	HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false $(BIN)/python -m pytest -q -p no:cacheprovider

test-fast: setup
	HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false $(BIN)/python -m pytest -q -p no:cacheprovider -m "not slow"

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check .
