# The two entry points of the README: `make repro` (the whole pipeline on the embedded default) and
# `make test` (the test suite). Both create or reuse the virtual environment in $(VENV) first.
VENV ?= .venv
PYTHON ?= python3
EXTRAS ?= cpu,dev
comma := ,
BIN := $(abspath $(VENV))/bin
STAMP := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))
# The recipes take these from the environment ("$$BIN"), so no shell ever parses a path: the name of a checkout's
# folder, spaces, quotes or $ in it, reaches every command intact (tests/test_makefile.py). DVC runs as
# `python -m dvc`, not through pip's launcher script, whose exec line breaks on a " or $ in the path.
export VENV PYTHON EXTRAS BIN STAMP

# No model hub is needed by the default params; set HF_HUB_OFFLINE=0 to download hub checkpoints.
export HF_HUB_OFFLINE ?= 1
export PATH := $(BIN):$(PATH)

.PHONY: install browser repro test

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x "$$BIN/python" || "$$PYTHON" -m venv "$$VENV"
	"$$BIN/python" -m pip install --quiet --upgrade pip
	"$$BIN/python" -m pip install --quiet -e ".[$$EXTRAS]"
	touch "$$STAMP"

# The params file is checked before DVC reads it: DVC hangs on a file of nested YAML aliases that this refuses.
repro: install
	"$$BIN/python" -m pipeline.cli.main check-params
	"$$BIN/python" -m dvc repro

# The plots page test drives a headless Chromium: Debian's packages, installed when missing.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
BROWSER_PACKAGES := chromium chromium-driver
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
	  export DEBIAN_FRONTEND=noninteractive; \
	  $(SUDO) apt-get install -y -q $(BROWSER_PACKAGES) >/dev/null || \
	  { $(SUDO) apt-get update -q >/dev/null && $(SUDO) apt-get install -y -q $(BROWSER_PACKAGES) >/dev/null; }; }

test: install browser
	"$$BIN/python" -m pytest -q
