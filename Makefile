# Two commands do all set-up on a fresh machine:
#   make run    installs evomerge into .venv and runs the main job on the embedded default
#   make test   installs evomerge (with the test extra) into .venv and runs the test suite
# The CPU build of torch 2.13.0 is installed first so pip never pulls a CUDA build.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: run test install
install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

RUN := runs/cross_arch-$(shell date +%Y%m%d-%H%M%S)

run: $(STAMP)
	$(BIN)/evomerge search --space search_spaces/cross_arch.yaml --run-dir $(RUN)
	$(BIN)/evomerge export $(RUN) --out $(RUN)/model
	$(BIN)/evomerge evaluate $(RUN)/model

test: $(STAMP)
	$(BIN)/python -m pytest -q
