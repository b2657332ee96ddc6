# Two commands do all set-up on a fresh machine:
#   make run    installs evomerge into .venv and runs the main job on the embedded default
#   make test   installs evomerge (with the test extra) into .venv and runs the test suite
# Both install exactly the versions in constraints.txt (the lock CI last tested).
# The CPU build of torch 2.13.0 is installed first so pip never pulls a CUDA build.
#   make lock         rewrites constraints.txt from a fresh venv with today's newest versions
#   make test-latest  installs the newest versions (no lock) into .venv-latest and runs the
#                     engine and resume tests, to see what the next lock would break

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
LOCK_VENV   ?= $(or $(TMPDIR),/tmp)/evomerge-lock-venv
LATEST_VENV ?= .venv-latest
LATEST_TESTS := tests/test_engines.py tests/test_runner.py tests/test_resume.py
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: run test install lock test-latest
install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

RUN := runs/cross_arch-$(shell date +%Y%m%d-%H%M%S)

run: $(STAMP)
	$(BIN)/evomerge search --space search_spaces/cross_arch.yaml --run-dir $(RUN)
	$(BIN)/evomerge export $(RUN) --out $(RUN)/model
	$(BIN)/evomerge evaluate $(RUN)/model

test: $(STAMP)
	$(BIN)/python -m pytest -q

# A fresh venv, newest versions of everything, frozen (evomerge itself left out).
lock:
	rm -rf $(LOCK_VENV)
	$(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/pip install --quiet --upgrade pip
	$(LOCK_VENV)/bin/pip install --quiet torch==2.13.0
	$(LOCK_VENV)/bin/pip install --quiet -e '.[dev]'
	{ echo "# The lock: every package 'make test' and 'make run' install. Rewrite it with 'make lock'."; \
	  $(LOCK_VENV)/bin/pip freeze --exclude evomerge | sed 's/^torch==.*/torch==2.13.0/'; } > constraints.txt.new
	mv constraints.txt.new constraints.txt
	rm -rf $(LOCK_VENV)

test-latest:
	rm -rf $(LATEST_VENV)
	$(PYTHON) -m venv $(LATEST_VENV)
	$(LATEST_VENV)/bin/pip install --quiet --upgrade pip
	$(LATEST_VENV)/bin/pip install --quiet torch==2.13.0
	$(LATEST_VENV)/bin/pip install --quiet -e '.[dev]'
	$(LATEST_VENV)/bin/pip list --format=freeze | grep -iE '^(optuna|deap|ray|transformers|pydantic|numpy)=='
	$(LATEST_VENV)/bin/python -m pytest -q $(LATEST_TESTS)
