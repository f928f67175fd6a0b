# The two entry points of the README: `make repro` (the whole pipeline on the embedded default) and
# `make test` (the test suite). Both create or reuse the virtual environment in $(VENV) first.
VENV ?= .venv
PYTHON ?= python3
EXTRAS ?= cpu,dev
comma := ,
BIN := $(abspath $(VENV))/bin
STAMP := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))

# No model hub is needed by the default params; set HF_HUB_OFFLINE=0 to download hub checkpoints.
export HF_HUB_OFFLINE ?= 1
export PATH := $(BIN):$(PATH)

.PHONY: install repro test

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[$(EXTRAS)]"
	touch $@

repro: install
	$(BIN)/dvc repro

test: install
	$(BIN)/python -m pytest -q
