# Entry points, each self-contained on a fresh machine (Python >= 3.10, nothing installed):
#   make demo        set up .venv, then embed real text offline and print/write the report
#   make test        set up .venv, then run the whole test suite (what .ci/run calls)
#   make test-fast   the suite without the tests marked slow, for local loops
#   make test-under-load  the whole suite 3 times in a row with every core kept busy by another
#                    process: no test may depend on a quiet machine
#   make lint        ruff check and format check
# TORCH_SPEC pins the CPU build that the project's machines carry; elsewhere install torch as
# PyTorch documents for your hardware, e.g. `make TORCH_SPEC=torch test`.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: demo test test-fast test-under-load lint setup

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install -q --disable-pip-version-check "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q --disable-pip-version-check -e ".[test,ray]"
	touch $@

setup: $(BIN)/.installed

demo: setup
	HF_HUB_OFFLINE=1 $(BIN)/python examples/demo.py --out out

# --durations=15: the slowest tests are printed on every run, so that drift shows.
test: setup
	HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false $(BIN)/python -m pytest -q -p no:cacheprovider --durations=15

test-fast: setup
	HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false $(BIN)/python -m pytest -q -p no:cacheprovider -m "not slow"

# One busy loop per core for the whole time; they are killed however the runs end.
test-under-load: setup
	@set -e; pids=""; \
	for core in $$(seq $$(nproc)); do $(BIN)/python -c 'while True: pass' & pids="$$pids $$!"; done; \
	trap 'kill $$pids' EXIT; \
	for run in 1 2 3; do \
		echo "== run $$run of 3, $$(nproc) busy loops beside it"; \
		start=$$(date +%s); $(MAKE) --no-print-directory test; \
		echo "== run $$run passed in $$(( $$(date +%s) - start )) s"; \
	done

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check .
