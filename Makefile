# The two commands of the README:
#   make run   - create .venv if missing, install the pinned environment, run the embedded demo
#   make test  - the test suite, in the same environment plus the test, dvc and tracking extras
# Both are idempotent: a second `make run` installs nothing and Snakemake has nothing to do.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
STAMP := $(VENV)/.seemrl-installed
TEST_STAMP := $(VENV)/.seemrl-test-installed
SNAKEMAKE_ARGS ?=

# Jobs and tests find the venv's tools; caches stay inside the project, never in $HOME.
export PATH := $(BIN):$(PATH)
export XDG_CACHE_HOME := $(CURDIR)/.cache
export MPLCONFIGDIR := $(CURDIR)/.cache/matplotlib

.PHONY: run test install dry-run clean-results
run: $(STAMP)
	$(BIN)/snakemake --cores all $(SNAKEMAKE_ARGS)

# the test suite (with the workflow's lint and format checks among its tests)
test: $(TEST_STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

install: $(STAMP)

dry-run: $(STAMP)
	$(BIN)/snakemake --cores all -n

$(STAMP): envs/requirements-cpu.txt envs/requirements-gpu.txt envs/install.sh pyproject.toml
	PYTHON=$(PYTHON) VENV=$(VENV) bash envs/install.sh
	touch $@

# the tracking, dvc and test extras (pyproject.toml), pinned
$(TEST_STAMP): $(STAMP) envs/requirements-extras.txt
	$(BIN)/python -m pip install -r envs/requirements-extras.txt
	touch $@

clean-results:
	rm -rf results resources/datasets resources/minari resources/behaviour .snakemake
